"""Report plots and tables (PNG / CSV) for MLflow artifacts. Matplotlib's Agg backend: no display needed."""

from __future__ import annotations

import csv
import itertools
import math
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402


def write_table_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    if not rows:
        path.write_text("")
        return
    with open(path, "w", newline="") as fh:
        fields = list(dict.fromkeys(k for row in rows for k in row))  # rows may differ (e.g. stopped trials)
        writer = csv.DictWriter(fh, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)


def accuracy_bars(report: Mapping[str, Any], path: Path) -> None:
    """Grouped bars: every eval set, teacher (zero-shot, when it was scored) vs fine-tuned."""
    rows = report["rows"]
    sets = list(dict.fromkeys(f"{r['kind']}:{r['name']}" for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(sets)), 3.5))
    width = 0.8 / max(len(models), 1)
    for i, model in enumerate(models):
        offset = (i - (len(models) - 1) / 2) * width
        acc = {f"{r['kind']}:{r['name']}": r["accuracy"] for r in rows if r["model"] == model}
        ax.bar([i + offset for i in range(len(sets))], [acc.get(s, 0.0) for s in sets], width, label=model)
    ax.set_xticks(range(len(sets)), sets, rotation=30, ha="right")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title("teacher (zero-shot) vs fine-tuned")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def loss_curves(history: Mapping[str, Sequence[tuple[int, float]]], path: Path) -> None:
    """Each loss term over steps (log scale: AVL/PVL start at 0 and live on another scale than L_cl)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, points in history.items():
        if points:
            steps, values = zip(*sorted(points), strict=False)
            ax.plot(steps, values, label=name.removeprefix("train/"))
    ax.set_xlabel("step")
    ax.set_yscale("symlog", linthresh=1e-4)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


class _SparseLogLabels(ticker.LogFormatterSciNotation):
    """Minor-tick labels of a log axis, as many as the axis has room for.

    Matplotlib labels the minor ticks (2×, 3×, 4×, 6× 10^k) of an axis spanning up to about two decades. A sweep's
    lr or λ axis in a 3-inch panel then gets labels on top of each other. This formatter labels the densest set of
    mantissas, from ``_MANTISSAS``, whose labels lie at least ``_LABEL_INCHES`` apart, and never fewer than two.
    """

    _MANTISSAS = ({1}, {1, 3}, {1, 2, 5}, {1, 2, 3, 5}, set(range(1, 10)))
    _LABEL_INCHES = 0.7  # "3×10⁻⁴" at 10 pt is 0.6 in wide

    def set_locs(self, locs: Any = None) -> None:
        vmin, vmax = sorted(self.axis.get_view_interval())
        if vmin <= 0:
            super().set_locs(locs)
            return
        axes = self.axis.axes
        inches_per_decade = axes.bbox.width / axes.figure.dpi / math.log10(vmax / vmin)
        low, high = math.floor(math.log10(vmin)), math.ceil(math.log10(vmax))

        def labelled(mantissas: set[int]) -> list[float]:
            marks = (math.log10(m) + e for e in range(low, high + 1) for m in sorted(mantissas))
            return [x for x in marks if vmin <= 10.0**x <= vmax]

        def fits(mantissas: set[int]) -> bool:
            gaps = [b - a for a, b in itertools.pairwise(labelled(mantissas))]
            return min(gaps, default=math.inf) * inches_per_decade >= self._LABEL_INCHES

        readable = [m for m in self._MANTISSAS if len(labelled(m)) >= 2]
        roomy = [m for m in readable if fits(m)]
        self._sublabels = (roomy[-1:] or readable[:1] or [self._MANTISSAS[-1]])[0]


def objective_vs_params(
    rows: Sequence[Mapping[str, Any]],
    params: Sequence[str],
    metric: str,
    path: Path,
    log_keys: Collection[str] = (),
) -> None:
    """One panel per searched key: each trial's objective against the sampled value (log x for λs and lr)."""
    # At least 5 inches wide: a one-key sweep's panel must still hold the title and its tick labels.
    fig, axes = plt.subplots(1, len(params), figsize=(max(5.0, 3.2 * len(params)), 3.2), squeeze=False)
    for ax, key in zip(axes[0], params, strict=True):
        points = [(r[key], r[metric]) for r in rows if isinstance(r.get(key), int | float)]
        points = [(x, y) for x, y in points if y == y]  # NaN: trial stopped before reporting
        done = [
            r.get("completed", True)
            for r in rows
            if isinstance(r.get(key), int | float) and r[metric] == r[metric]
        ]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.scatter(xs, ys, c=["tab:blue" if d else "tab:gray" for d in done])
            if key in log_keys:
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(_SparseLogLabels(labelOnlyBase=False))
        else:  # categorical (bools, choices): one column per value
            values = [str(r.get(key)) for r in rows]
            ax.scatter(values, [r[metric] for r in rows])
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
    fig.suptitle("objective per trial (grey: stopped early)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
