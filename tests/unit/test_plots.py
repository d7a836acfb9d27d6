"""Sweep plot: the title and the log-axis tick labels of every panel stay readable, however many keys."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from matplotlib.figure import Figure

from pipeline import plots


@pytest.fixture
def kept_figure(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Figure]]:
    """The figure ``objective_vs_params`` closes, kept for inspection (it is closed by the test)."""
    kept: list[Figure] = []
    close = plt.close  # the real one: this teardown runs while the patch is still in place
    monkeypatch.setattr(plots.plt, "close", kept.append)
    yield kept
    for fig in kept:
        close(fig)


# Sampled ranges as the benchmark's sweeps drew them: within a decade, across one power, and λs over two or more.
RANGES = {
    "lr, 0.7 decades": (4.3e-5, 2.1e-4),
    "lr, 1.2 decades": (2.6e-5, 3.9e-4),
    "lr, no power of ten inside": (2.2e-4, 5.5e-4),
    "lambda, 2.2 decades": (0.15, 24.4),
    "lambda, 3.2 decades": (0.11, 180.0),
}


@pytest.mark.parametrize("keys", [1, 2, 4])
@pytest.mark.parametrize("span", list(RANGES))
def test_objective_plot_labels_fit(tmp_path: Path, kept_figure: list[Figure], keys: int, span: str) -> None:
    low, high = RANGES[span]
    names = [f"key{i}" for i in range(keys)]
    rows = [
        {
            **{k: low * (high / low) ** (t / 7) for k in names},
            "val/objective": 0.52 + 0.01 * t,
            "completed": t == 2,
        }
        for t in range(8)
    ]
    plots.objective_vs_params(rows, names, "val/objective", tmp_path / "objective.png", set(names))
    assert (tmp_path / "objective.png").stat().st_size > 0
    (fig,) = kept_figure
    renderer = fig.canvas.get_renderer()
    title = fig._suptitle.get_window_extent(renderer)  # noqa: SLF001 - the only handle on the suptitle
    assert fig.bbox.x0 <= title.x0 and title.x1 <= fig.bbox.x1, "the title is clipped"
    for ax in fig.axes:
        labels = [t for t in ax.xaxis.get_ticklabels(which="both") if t.get_visible() and t.get_text()]
        boxes = [t.get_window_extent(renderer) for t in labels]
        # Ticks outside the view limits keep a label but are not drawn: only the ones under the axes count.
        boxes = sorted(
            (b for b in boxes if ax.bbox.x0 - 1 <= (b.x0 + b.x1) / 2 <= ax.bbox.x1 + 1), key=lambda b: b.x0
        )
        assert len(boxes) >= 2, f"{ax.get_xlabel()}: {len(boxes)} tick labels, too few to read"
        for left, right in itertools.pairwise(boxes):
            assert left.x1 <= right.x0, f"{ax.get_xlabel()}: x tick labels overlap"
