"""Sweep plot: a one-key sweep's panel still holds its title and non-overlapping tick labels."""

from __future__ import annotations

import itertools
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from matplotlib.figure import Figure

from pipeline import plots


@pytest.fixture
def kept_figure(monkeypatch: pytest.MonkeyPatch) -> list[Figure]:
    """The figure ``objective_vs_params`` closes, kept for inspection (it is closed by the test)."""
    kept: list[Figure] = []
    close = plt.close  # the real one: this teardown runs while the patch is still in place
    monkeypatch.setattr(plots.plt, "close", kept.append)
    yield kept
    for fig in kept:
        close(fig)


def test_one_key_log_sweep_fits_title_and_labels(tmp_path: Path, kept_figure: list[Figure]) -> None:
    # An lr sweep within one decade, as the benchmark's FT / FLYP / LP-FT sweeps are: matplotlib labels minor ticks.
    lrs = [4.3e-5, 4.6e-5, 6.5e-5, 6.4e-5, 7.8e-5, 8.9e-5, 1.1e-4, 2.1e-4]
    rows = [
        {"optim.lr": lr, "val/objective": 0.52 + 0.01 * i, "completed": i == 2} for i, lr in enumerate(lrs)
    ]
    plots.objective_vs_params(rows, ["optim.lr"], "val/objective", tmp_path / "objective.png", {"optim.lr"})
    assert (tmp_path / "objective.png").stat().st_size > 0
    (fig,) = kept_figure
    renderer = fig.canvas.get_renderer()
    page = fig.bbox
    title = fig._suptitle.get_window_extent(renderer)  # noqa: SLF001 - the only handle on the suptitle
    assert page.x0 <= title.x0 and title.x1 <= page.x1, "the title is clipped"
    ax = fig.axes[0]
    ticks = [t for t in ax.xaxis.get_ticklabels(which="both") if t.get_visible() and t.get_text()]
    assert len(ticks) >= 2, "the log axis has too few labels to read"
    boxes = sorted((t.get_window_extent(renderer) for t in ticks), key=lambda b: b.x0)
    for left, right in itertools.pairwise(boxes):
        assert left.x1 <= right.x0, "x tick labels overlap"
