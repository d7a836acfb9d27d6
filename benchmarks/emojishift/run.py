"""EmojiShift benchmark: DiVE and its baselines fine-tuned through the pipeline, one report.

    python benchmarks/emojishift/run.py --cache .cache/emojishift-far                   # full, ≤ 2 h on 2 cores
    python benchmarks/emojishift/run.py --cache .cache/emojishift-far --methods dive_avl,dive_pvl  # + ablations
    python benchmarks/emojishift/run.py --cache .cache/emojishift-far-quick --quick     # small, ≤ 10 min
    python benchmarks/emojishift/run.py --cache … tracking.uri=http://mlflow:5000       # key=value: every run

What it does, skipping any step whose output already exists (so an interrupted benchmark resumes):
1. ``prepare.py --far-zs`` builds the data (with the far zero-shot sets) into ``--cache`` and ``align.py`` the LiT
   teacher into ``--cache/teacher``; a cache built without the far sets is refused.
2. The teacher's embeddings are cached into the reference set (DiVE / SnD then skip the teacher's pass).
3. One MLflow parent run; under it one child run per method and seed, each the same ``run()`` as
   ``pipeline/train.py`` with ``benchmarks/emojishift/config.yaml`` plus the method's overrides.
4. The teacher's zero-shot row and WiSE-FT (α = 0.25, 0.5, 0.75) of every FLYP and DiVE run are scored without
   training.
5. ``report.md`` / ``report.json`` (mean ± std over seeds, and the goals of the README checked against the table),
   ``bars.png``, ``scatter.png`` into ``--out`` and onto the parent run; ``--update-readme`` writes the table into
   ``benchmarks/emojishift/README.md``.

Hyper-parameters are each method's sweep's (``tuned.yaml``), chosen on ``id_val``, ``zs_val`` and the far sets'
``zs_far_val_*`` (the README says how), never on eval sets; a method not yet swept runs at the config's values, and
the report names it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run by path: the repository root is importable

CONFIG = HERE / "config.yaml"
README = HERE / "README.md"
MARKERS = ("<!-- results:start -->", "<!-- results:end -->")


@dataclass(frozen=True)
class Size:
    """How long each method trains and how much is scored. Every method gets the same steps and batch."""

    epochs: int
    batch: int
    seeds: int  # FLYP and DiVE (and their WiSE-FT) run this many seeds; the other methods seed 0 only
    rsa_samples: int
    val_samples: int


SIZES = {
    "full": Size(epochs=4, batch=32, seeds=3, rsa_samples=500, val_samples=400),
    "quick": Size(epochs=1, batch=8, seeds=1, rsa_samples=60, val_samples=60),
}


@dataclass(frozen=True)
class MethodRun:
    key: str
    label: str
    overrides: tuple[str, ...]
    seeded: bool = False  # runs Size.seeds seeds
    wise: bool = False  # also scored as WiSE-FT at every α of WISE_ALPHAS
    swept_only: bool = False  # runs only once its own sweep has chosen its values (tuned.yaml)
    # Runs only when --methods names it: no goal needs it, and leaving it out keeps the table run within 2 h.
    ablation: bool = False


METHODS = (
    MethodRun("ft", "FT", ("loss.method=ft",)),
    MethodRun("lpft", "LP-FT", ("loss.method=lpft",)),
    MethodRun("flyp", "FLYP", ("loss.method=flyp",), seeded=True, wise=True),
    MethodRun("flyp_replay", "FLYP + replay", ("loss.method=flyp_replay",)),
    MethodRun("snd", "SnD", ("loss.method=snd",)),
    MethodRun("dive", "DiVE", ("loss.method=dive",), seeded=True, wise=True),
    MethodRun("dive_avl", "DiVE, AVL only", ("loss.method=dive", "loss.lambda_pvl=0"), ablation=True),
    MethodRun("dive_pvl", "DiVE, PVL only", ("loss.method=dive", "loss.lambda_avl=0"), ablation=True),
    MethodRun(
        "dive_shared", "DiVE, one shared λ", ("loss.method=dive",), seeded=True, wise=True, swept_only=True
    ),
)
# The two ways DiVE is tuned (separate λ_avl / λ_pvl, one shared λ): each is checked against the goals, and the
# one whose sweep scored the higher best val/objective is DiVE as chosen on validation. Only that one runs every
# seed and WiSE-FT (see for_choice).
DIVE_VARIANTS = ("dive", "dive_shared")
# Which sweep's chosen values (tuned.yaml) a method's runs take: the ablations keep DiVE's other settings.
TUNED_FROM = {"dive_avl": "dive", "dive_pvl": "dive"}
TUNED = HERE / "tuned.yaml"


def chosen_dive(path: Path = TUNED) -> str | None:
    """The DiVE variant whose sweep has the higher best ``val/objective`` (``tuned.yaml``'s ``_sweeps``); None
    before either has run. Validation only: no test set enters the choice."""
    raw = yaml.safe_load(path.read_text()) if path.is_file() else {}
    scores = {
        key: sweep["best"]["val/objective"]
        for key, sweep in (raw or {}).get("_sweeps", {}).items()
        if key in DIVE_VARIANTS and sweep.get("best", {}).get("val/objective") is not None
    }
    return max(scores, key=scores.__getitem__) if scores else None


def for_choice(methods: Sequence[MethodRun], chosen: str | None) -> tuple[MethodRun, ...]:
    """``methods`` with the seeds and WiSE-FT of DiVE given to the variant ``chosen`` on validation alone; the
    other variant runs seed 0, enough to check it against the goals. Two seeds of the variant no one would pick
    are what keeps the table run within its 2 h. Without a choice (no sweep yet) the methods are unchanged."""
    if chosen is None:
        return tuple(methods)
    return tuple(
        replace(m, seeded=m.key == chosen, wise=m.key == chosen) if m.key in DIVE_VARIANTS else m
        for m in methods
    )


def load_tuned(path: Path = TUNED) -> dict[str, list[str]]:
    """Per method: the ``key=value`` overrides its sweep chose (``sweeps.py`` writes the file), or none."""
    from pipeline.sweep.spec import override

    raw = yaml.safe_load(path.read_text()) if path.is_file() else {}
    return {
        m: [override(k, v) for k, v in values.items()] for m, values in raw.items() if not m.startswith("_")
    }


# θ = (1−α)·θ_teacher + α·θ_ft: the curve from the teacher (α = 0) to the fine-tune (α = 1)
WISE_ALPHAS = (0.25, 0.5, 0.75)


def wise_key(alpha: float, method: str) -> str:
    return f"wise{round(alpha * 100):02d}_{method}"


LABELS = {
    "teacher": "zero-shot teacher",
    **{m.key: m.label for m in METHODS},
    **{wise_key(a, m.key): f"WiSE-FT α={a:g} ({m.label})" for m in METHODS if m.wise for a in WISE_ALPHAS},
}
OOD = ("twemoji", "openmoji", "openmoji_black", "fluent_3d", "fluent_flat")


# The averages the plots show, beside ID.
AVERAGES = (("id_acc", "ID"), ("ood_avg", "OOD avg"), ("zs_avg", "near ZS avg"), ("zs_far_avg", "far ZS avg"))


def far_sets(table: Sequence[dict[str, Any]]) -> list[str]:
    """The far zero-shot sets the table scored (``zs_far/<name>``), in first-seen order."""
    found = (m.split("/", 1)[1] for e in table for m in e if m.startswith("zs_far/"))
    return list(dict.fromkeys(found))


def columns(table: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """(metric, header) of the table: ID, each OOD style, near ZS, each far set, far ZS, RSA, train s."""
    far = far_sets(table)
    return [
        ("id_acc", "ID"),
        *((f"ood/{s}", s) for s in OOD),
        ("ood_avg", "OOD avg"),
        ("zs_avg", "near ZS avg"),
        *((f"zs_far/{s}", s) for s in far),
        *((("zs_far_avg", "far ZS avg"),) if far else ()),
        ("rsa_mean", "RSA"),
        ("train_s", "train s"),
    ]


def log(msg: str) -> None:
    print(f"[emojishift] {msg}", flush=True)


# ------------------------------------------------------------------------------------------------ preparation
def ensure_data(cache: Path, quick: bool) -> None:
    """Data (with the far zero-shot sets) and teacher, built by their own commands when missing (each is
    deterministic and cached). A cache built without the far sets (the v2 build) is refused before anything runs:
    its teacher is another, so no part of it can be reused."""
    classes = cache / "classes.json"
    if classes.is_file() and "far_zs" not in json.loads(classes.read_text()):
        raise SystemExit(
            f"{cache}: built without the far zero-shot sets (prepare.py --far-zs); use a new --cache"
        )
    if not (cache / "splits.json").is_file():
        log(f"no data in {cache}: running prepare.py")
        cmd = [
            sys.executable,
            str(HERE / "prepare.py"),
            "--cache",
            str(cache),
            *(["--quick"] if quick else []),
            "--far-zs",
        ]
        subprocess.run(cmd, check=True)
    if not (cache / "teacher" / "teacher.pt").is_file():
        log(f"no teacher in {cache / 'teacher'}: running align.py")
        cmd = [sys.executable, str(HERE / "align.py"), "--data", str(cache), "--out", str(cache / "teacher")]
        subprocess.run(cmd, check=True)


def ensure_teacher_cache(cfg: Any) -> None:
    """Teacher embeddings of the reference set: the frozen teacher's pass is then read, not recomputed."""
    from dive.models import build_model, teacher_fingerprint
    from pipeline.convert import cache_teacher
    from pipeline.data.format import CAPTIONED, check_dataset

    manifest = check_dataset(cfg.data.reference, CAPTIONED)
    if manifest.teacher_fingerprint != teacher_fingerprint(build_model(cfg.model)):  # absent or stale
        log(f"caching the teacher's embeddings into {cfg.data.reference}")
        cache_teacher(cfg.data.reference, cfg.model)


def run_configs(
    size: Size,
    id_rows: int,
    extra: Sequence[str],
    methods: Sequence[str] = (),
    tuned: dict[str, list[str]] | None = None,
    chosen: str | None = None,
) -> list[tuple[MethodRun, int, list[str]]]:
    """(method, seed, overrides) in run order: seed 0 of every method first, so a cut-short run still compares.

    ``methods`` keeps only those keys (all but the ablations when empty); ``tuned`` (:func:`load_tuned`) adds each
    method's swept values before its own overrides (so AVL-only still zeroes λ_pvl). A ``swept_only`` method runs
    only when its sweep exists. ``chosen`` (:func:`chosen_dive`) is the DiVE variant that runs every seed."""
    tuned = tuned or {}
    steps = size.epochs * (id_rows // size.batch)  # the loader drops the last partial batch
    common = [
        f"optim.epochs={size.epochs}",
        f"optim.global_batch={size.batch}",
        f"eval.rsa_samples={size.rsa_samples}",
        f"val.samples={size.val_samples}",
        "eval.with_teacher=false",
        f"loss.lp_steps={steps // 2}",  # LP-FT: half the steps probe, half fine-tune
    ]
    plan = []
    methods_now = for_choice(METHODS, chosen)
    for seed in range(size.seeds):
        for method in methods_now:
            if (method.key not in methods) if methods else method.ablation:
                continue
            if method.swept_only and method.key not in tuned:
                continue
            swept = tuned.get(TUNED_FROM.get(method.key, method.key), [])
            if seed == 0 or method.seeded:
                plan.append(
                    (method, seed, [*common, *swept, *method.overrides, f"optim.seed={seed}", *extra])
                )
    return plan


def earlier_rows(runs: Path, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Finished rows in ``runs`` that this invocation did not plan (an earlier one into the same folder, with
    other ``--methods``): the report keeps every row the folder holds, as a resumed benchmark keeps its own."""
    seen = {(r["key"], r["seed"]) for r in rows}
    found = (json.loads(p.read_text()) for p in sorted(runs.glob("*.json")))
    return [r for r in found if (r["key"], r["seed"]) not in seen]


# ------------------------------------------------------------------------------------------------ scoring
def score(cfg: Any, models: dict[str, Any], with_rsa: bool) -> dict[str, dict[str, float]]:
    """Accuracy on every suite (and RSA against the teacher) of models that need no training, scored in one
    pass over the suites (the teacher embedded once for RSA)."""
    from dive.metrics import summarize
    from pipeline.evaluate import evaluate_accuracy, evaluate_rsa_many, suites_from_config

    accuracy = evaluate_accuracy(models, suites_from_config(cfg), cfg)
    rsa = evaluate_rsa_many(cfg.model, models, cfg) if with_rsa else {name: {} for name in models}
    return {name: {**summarize(accuracy[name]), **rsa[name]} for name in models}


def wise_rows(cfg: Any, export_dir: str, alphas: Sequence[float], out: Path) -> dict[float, dict[str, float]]:
    """Accuracy and RSA of θ_α for every α."""
    from pipeline.wise import wise_exports

    folders = wise_exports(cfg, f"local-dir:{export_dir}", alphas, out)
    models = {f"{a:g}": replace(cfg.model, name=f"local-dir:{f}", pretrained="") for a, f in folders.items()}
    scored = score(cfg, models, with_rsa=True)
    return {a: scored[f"{a:g}"] for a in folders}


# ------------------------------------------------------------------------------------------------ report
def aggregate(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per method: mean, sample std (n > 1) and n of every metric over its seeds, in table order."""
    keys = list(dict.fromkeys(r["key"] for r in rows))
    order = {k: i for i, k in enumerate(LABELS)}
    out = []
    for key in sorted(keys, key=lambda k: order.get(k, len(order))):
        runs = [r for r in rows if r["key"] == key]
        metrics = sorted({m for r in runs for m in r["metrics"]})
        stats = {}
        for m in metrics:
            values = [r["metrics"][m] for r in runs if m in r["metrics"]]
            stats[m] = {
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "n": len(values),
            }
        out.append({"key": key, "label": LABELS.get(key, key), "seeds": [r["seed"] for r in runs], **stats})
    return out


def _cell(stat: dict[str, float] | None, metric: str) -> str:
    if stat is None:
        return "—"
    digits = 0 if metric == "train_s" else 3
    text = f"{stat['mean']:.{digits}f}"
    return text + (f" ± {stat['std']:.{digits}f}" if stat["n"] > 1 else "")


def markdown_table(table: Sequence[dict[str, Any]]) -> str:
    cols = columns(table)
    lines = [
        "| method | seeds | " + " | ".join(h for _, h in cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    for entry in table:
        cells = [_cell(entry.get(m), m) for m, _ in cols]
        lines.append(f"| {entry['label']} | {len(entry['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def above_curve(curve: Sequence[tuple[float, float]], point: tuple[float, float]) -> float:
    """How far ``point`` lies above a piecewise-linear curve of (ID, metric) points, at the point's ID.

    Beyond the curve's ID range the nearest end counts (a point with more ID than the fine-tune must also match
    its metric), so a positive gap always means no mix of teacher and fine-tune reaches the point."""
    xs, ys = zip(*sorted(curve), strict=True)
    x, y = point
    if x <= xs[0]:
        return y - ys[0]
    if x >= xs[-1]:
        return y - ys[-1]
    i = next(i for i in range(1, len(xs)) if x <= xs[i])
    t = (x - xs[i - 1]) / (xs[i] - xs[i - 1]) if xs[i] > xs[i - 1] else 1.0
    return y - (ys[i - 1] + t * (ys[i] - ys[i - 1]))


MIN_OVER_CHANCE = 3.0  # far ZS: the teacher must know every kept set (≥ 3× chance)
MIN_FORGOTTEN = 0.05  # far ZS: FLYP must forget ≥ 5 points, or there is nothing for DiVE to keep
MIN_KEPT = 0.8  # far ZS: DiVE keeps ≥ 80 % of what FLYP forgets, at matched ID
EPS = 1e-9  # a rate read off image counts (6/120 − 0 …) meets its threshold whatever the float rounding


def goals(
    table: Sequence[dict[str, Any]], dive: str = "dive", far_classes: Mapping[str, int] | None = None
) -> list[dict[str, Any]]:
    """The benchmark's goals (README, protocol item 6) for the DiVE row ``dive`` against FLYP and the teacher, each
    checked on the table's means. ``far_classes``: each far set's number of classes (its chance is 1 / classes).

    Near ZS: DiVE ≥ FLYP + 8 pt, or ≥ the teacher where FLYP forgets less than that (all of it kept). Far ZS: the
    teacher knows every set, FLYP forgets, DiVE keeps ≥ 80 % of what FLYP forgets while its ID is matched."""
    by_key = {e["key"]: e for e in table}
    if not {"teacher", "flyp", dive} <= set(by_key):
        return []

    def mean(key: str, metric: str) -> float:
        return by_key[key][metric]["mean"]

    id_target = mean("flyp", "id_acc") - 0.005
    zs_target = min(mean("flyp", "zs_avg") + 0.08, mean("teacher", "zs_avg"))
    out = [
        ("id", "ID matched: DiVE ≥ FLYP − 0.5 pt", id_target, mean(dive, "id_acc")),
        ("ood", "OOD avg: DiVE ≥ FLYP", mean("flyp", "ood_avg"), mean(dive, "ood_avg")),
        ("ood3", "OOD avg: DiVE ≥ FLYP + 3 pt", mean("flyp", "ood_avg") + 0.03, mean(dive, "ood_avg")),
        ("zs", "near ZS avg: DiVE ≥ min(FLYP + 8 pt, teacher)", zs_target, mean(dive, "zs_avg")),
        ("rsa", "RSA: DiVE ≥ 0.95", 0.95, mean(dive, "rsa_mean")),
    ]
    rows = [{"id": i, "goal": g, "target": t, "measured": m, "met": m >= t} for i, g, t, m in out]
    far = [s for s in far_sets([by_key["teacher"]]) if far_classes and s in far_classes]
    if far and "zs_far_avg" in by_key["flyp"] and "zs_far_avg" in by_key[dive]:
        times = min(mean("teacher", f"zs_far/{s}") * far_classes[s] for s in far)  # type: ignore[index]
        lost = mean("teacher", "zs_far_avg") - mean("flyp", "zs_far_avg")
        kept = (mean(dive, "zs_far_avg") - mean("flyp", "zs_far_avg")) / lost if lost > 0 else float("nan")
        rows += [
            {"id": "far_teacher", "goal": "far ZS: teacher ≥ 3× chance on every set (lowest ×)",
             "target": MIN_OVER_CHANCE, "measured": times, "met": times >= MIN_OVER_CHANCE - EPS},
            {"id": "far_forgets", "goal": "far ZS avg: FLYP forgets ≥ 5 pt (teacher − FLYP)",
             "target": MIN_FORGOTTEN, "measured": lost, "met": lost >= MIN_FORGOTTEN - EPS},
            {"id": "far_kept", "goal": "far ZS avg: DiVE keeps ≥ 80 % of FLYP's loss, ID matched",
             "target": MIN_KEPT, "measured": kept, "met": kept >= MIN_KEPT - EPS and rows[0]["met"]},
        ]  # fmt: skip
    curves = [
        ("ood", "ood_avg", "OOD avg"),
        ("zs", "zs_avg", "near ZS avg"),
        ("zs_far", "zs_far_avg", "far ZS avg"),
    ]
    for key, metric, name in curves:
        curve = wise_curve(table, "flyp", metric)
        if len(curve) > 2 and metric in by_key[dive]:
            gap = above_curve(curve, (mean(dive, "id_acc"), mean(dive, metric)))
            rows.append({"id": f"{key}_curve", "goal": f"{name}: DiVE above FLYP's WiSE-FT curve (gap)",
                         "target": 0.0, "measured": gap, "met": gap > 0})  # fmt: skip
    return rows


def markdown_goals(checked: dict[str, Sequence[dict[str, Any]]]) -> str:
    """One row per goal, a measured / met pair of columns per DiVE variant in ``checked`` (all hold the same goals)."""
    variants = [k for k, rows in checked.items() if rows]
    head = "".join(f" {LABELS.get(k, k)} | met |" for k in variants)
    lines = [f"| goal | target |{head}", "|---|---|" + "---|---|" * len(variants)]
    for i, first in enumerate(checked[variants[0]]):
        cells = "".join(
            f" {checked[k][i]['measured']:.3f} | {'yes' if checked[k][i]['met'] else 'no'} |"
            for k in variants
        )
        lines.append(f"| {first['goal']} | {first['target']:.3f} |{cells}")
    return "\n".join(lines)


def plot_bars(table: Sequence[dict[str, Any]], path: Path) -> None:
    """Grouped bars: ID, OOD avg, near and far ZS avg per method, with the seeds' std as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in AVERAGES if any(m[0] in e for e in table)]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(table)), 3.8))
    width = 0.8 / len(metrics)
    for i, (metric, label) in enumerate(metrics):
        xs = [j + (i - (len(metrics) - 1) / 2) * width for j in range(len(table))]
        means = [e[metric]["mean"] if metric in e else 0.0 for e in table]
        stds = [e[metric]["std"] if metric in e else 0.0 for e in table]
        ax.bar(xs, means, width, yerr=stds, capsize=2, label=label)
    ax.set_xticks(range(len(table)), [e["label"] for e in table], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("top-1 accuracy")
    ax.set_title("EmojiShift: ID, OOD and zero-shot accuracy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def wise_curve(table: Sequence[dict[str, Any]], method: str, metric: str) -> list[tuple[float, float]]:
    """(ID, metric) from the teacher through WiSE-FT α = 0.25 … 0.75 to the fine-tune, as far as measured."""
    by_key = {e["key"]: e for e in table}
    keys = ["teacher", *(wise_key(a, method) for a in WISE_ALPHAS), method]
    return [
        (by_key[k]["id_acc"]["mean"], by_key[k][metric]["mean"])
        for k in keys
        if k in by_key and "id_acc" in by_key[k] and metric in by_key[k]
    ]


def plot_scatter(table: Sequence[dict[str, Any]], path: Path) -> None:
    """ID vs OOD avg, near and far ZS avg; each WiSE-FT curve drawn from the teacher to its fine-tune."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wise_methods = [m.key for m in METHODS if m.wise]
    panels = [m for m in AVERAGES[1:] if any(m[0] in e for e in table)]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (metric, name) in zip(axes[0], panels, strict=True):
        for e in table:
            if "id_acc" not in e or metric not in e or e["key"].startswith("wise"):
                continue
            ax.errorbar(
                e["id_acc"]["mean"],
                e[metric]["mean"],
                xerr=e["id_acc"]["std"],
                yerr=e[metric]["std"],
                fmt="*" if e["key"] == "teacher" else "o",
                markersize=9 if e["key"] == "teacher" else 6,
                label=e["label"],
            )
        for method in wise_methods:
            curve = wise_curve(table, method, metric)
            if len(curve) > 2:
                xs, ys = zip(*curve, strict=True)
                ax.plot(xs, ys, "D:", lw=0.9, markersize=3, label=f"WiSE-FT ({LABELS[method]})")
        ax.set_xlabel("ID accuracy")
        ax.set_ylabel(name)
    axes[0][-1].legend(fontsize=7, loc="best")
    alphas = ", ".join(f"{a:g}" for a in WISE_ALPHAS)
    fig.suptitle(f"EmojiShift: robustness vs ID accuracy (dotted: WiSE-FT α = {alphas}, teacher → fine-tune)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


class Invocations:
    """The wall time of every invocation into one report folder (``invocations.json``).

    A benchmark interrupted and rerun resumes after its finished rows, so its time is the sum of its invocations,
    not the last one's. Each invocation is recorded however it ends (finished, failed or interrupted); a report
    folder from before the ledger counts as one invocation of its ``report.json``'s ``wall_s``.
    """

    def __init__(self, out: Path, command: str) -> None:
        self.path = out / "invocations.json"
        self.command = command
        self._started = time.perf_counter()
        self._date = date.today().isoformat()
        self.past: list[dict[str, Any]] = []
        if self.path.is_file():
            self.past = json.loads(self.path.read_text())
        elif (report := out / "report.json").is_file():
            old = json.loads(report.read_text())
            self.past = [
                {
                    "date": old["date"],
                    "command": old["command"],
                    "wall_s": old["wall_s"],
                    "status": "finished",
                }
            ]

    def elapsed_s(self) -> float:
        return time.perf_counter() - self._started

    def entries(self) -> list[dict[str, Any]]:
        """Every invocation so far, this one (finished) last."""
        me = {"date": self._date, "command": self.command, "wall_s": self.elapsed_s(), "status": "finished"}
        return [*self.past, me]

    def total_s(self) -> float:
        return sum(e["wall_s"] for e in self.entries())

    def summary(self) -> str:
        """`` over N invocations (a, b min)`` when resumed, else nothing."""
        entries = self.entries()
        if len(entries) == 1:
            return ""
        minutes = ", ".join(f"{e['wall_s'] / 60:.0f}" for e in entries)
        return f" over {len(entries)} invocations ({minutes} min)"

    def close(self, finished: bool) -> None:
        entry = {**self.entries()[-1], "status": "finished" if finished else "stopped"}
        self.path.write_text(json.dumps([*self.past, entry], indent=2))


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores ({cpu}), {gpu}, torch {torch.__version__}"


def update_readme(readme: Path, block: str) -> None:
    text = readme.read_text()
    start, end = MARKERS
    if start not in text or end not in text:
        raise ValueError(f"{readme}: expected the markers {start} … {end} around the results table")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{block}\n{end}{tail}")


# ------------------------------------------------------------------------------------------------ main
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--cache", type=Path, required=True, help="EmojiShift cache (prepare.py --cache); built if empty"
    )
    p.add_argument("--quick", action="store_true", help="the small size: quick data, 1 seed, fewer steps")
    p.add_argument("--out", type=Path, help="report folder (default: outputs/emojishift-<size>)")
    p.add_argument("--seeds", type=int, help="seeds for FLYP and DiVE (default: 3 full, 1 quick)")
    p.add_argument(
        "--methods",
        type=lambda s: [m for m in s.split(",") if m],
        default=[],
        help=f"comma-separated subset of {','.join(m.key for m in METHODS)} (default: all but the ablations "
        f"{','.join(m.key for m in METHODS if m.ablation)})",
    )
    p.add_argument("--update-readme", action="store_true", help=f"write the table into {README.name}")
    p.add_argument("overrides", nargs="*", help="key=value config overrides for every run")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    size_name = "quick" if args.quick else "full"
    size = SIZES[size_name]
    if args.seeds is not None:
        if args.seeds < 1:
            print("error: --seeds must be >= 1", file=sys.stderr)
            return 2
        size = replace(size, seeds=args.seeds)
    unknown = sorted(set(args.methods) - {m.key for m in METHODS})
    if unknown:
        print(
            f"error: --methods: unknown {unknown}; expected some of {[m.key for m in METHODS]}",
            file=sys.stderr,
        )
        return 2
    cache = args.cache.expanduser().resolve()
    out = (args.out or Path("outputs") / f"emojishift-{size_name}").resolve()
    (out / "runs").mkdir(parents=True, exist_ok=True)
    from dive.redact import mask_text

    # Kept in invocations.json, report.json and the README block: a tracking.uri=… override's password masked.
    command = mask_text(
        "python benchmarks/emojishift/run.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    )
    invocations = Invocations(out, command)
    rc = 1
    try:
        rc = _benchmark(args, size_name, size, cache, out, invocations)
        return rc
    finally:
        invocations.close(finished=rc == 0)


def _benchmark(
    args: argparse.Namespace, size_name: str, size: Size, cache: Path, out: Path, invocations: Invocations
) -> int:
    ensure_data(cache, args.quick)
    os.environ["EMOJISHIFT"] = str(cache)  # config.yaml's paths; set before any config is loaded
    # Ray Train's controller polls its workers every 2 s by default: up to 2 s lost at the end of each of the runs.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

    from dive.config import ConfigError
    from dive.redact import mask_text
    from pipeline import tracking
    from pipeline.data.format import LABELLED, DataError, check_dataset
    from pipeline.ray_env import init_ray
    from pipeline.train import prepare_config

    try:
        base = prepare_config(str(CONFIG), list(args.overrides))
        id_rows = check_dataset(base.data.id_train, LABELLED).num_rows
        tuned = load_tuned()
        chosen = chosen_dive()
        plan = run_configs(size, id_rows, args.overrides, args.methods, tuned, chosen)
        configs = [(m, seed, prepare_config(str(CONFIG), o)) for m, seed, o in plan]
        far_classes = {
            name: len(check_dataset(path, LABELLED).classnames) for name, path in base.eval.zs_far.items()
        }
    except (ConfigError, DataError, FileNotFoundError) as err:
        print(f"error: {mask_text(str(err))}", file=sys.stderr)
        return 2
    unswept = tuple(dict.fromkeys(m.key for m, _, _ in plan if TUNED_FROM.get(m.key, m.key) not in tuned))
    if unswept:
        log(f"not swept on this build yet, so at config.yaml's values: {', '.join(unswept)}")
    selection = Selection(chosen, unswept, far_classes)
    ensure_teacher_cache(base)
    init_ray(base)

    # Resume: the same parent run, finished rows are kept.
    mlparent, resumed = tracking.parent_run(
        base, out / "state.json", run_name=f"emojishift-{size_name}", tags={"dive.benchmark": "emojishift"}
    )
    if resumed:
        log(f"resuming into MLflow parent run {mlparent.run_id}")
    else:
        mlparent.log_dict({"size": size_name, **size.__dict__}, "benchmark/size.json")
    rows = _Rows(out / "runs", mlparent)
    rows.teacher(base)
    for method, seed, cfg in configs:
        rows.method(method, seed, cfg, out / "wise")
    # E.g. the ablations of an earlier --methods invocation.
    rows.rows.extend(earlier_rows(out / "runs", rows.rows))
    _report(args, size_name, size, out, invocations, base, mlparent, rows.rows, selection)
    return 0


@dataclass(frozen=True)
class Selection:
    """What the report states beside the rows: the DiVE variant chosen on validation, the methods that ran at
    the config's values for want of a sweep, and each far set's number of classes (its chance)."""

    chosen: str | None
    unswept: tuple[str, ...]
    far_classes: dict[str, int]


class _Rows:
    """The benchmark's result rows: one JSON file per finished row under ``runs/`` (what a resumed invocation
    skips), each logged to the MLflow parent run as well."""

    def __init__(self, folder: Path, mlparent: Any) -> None:
        self.folder, self.mlparent = folder, mlparent
        self.rows: list[dict[str, Any]] = []

    def done(self, name: str) -> dict[str, Any] | None:
        path = self.folder / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def record(self, name: str, row: dict[str, Any]) -> dict[str, Any]:
        (self.folder / f"{name}.json").write_text(json.dumps(row, indent=2))
        step = row["seed"]
        self.mlparent.log_metrics({f"{row['key']}/{k}": v for k, v in row["metrics"].items()}, step)
        return row

    def teacher(self, base: Any) -> None:
        """The zero-shot teacher's row."""
        if (row := self.done("teacher")) is None:
            log("scoring the zero-shot teacher")
            t0 = time.perf_counter()
            metrics = score(base, {"teacher": base.model}, with_rsa=False)["teacher"]
            metrics["rsa_mean"] = 1.0  # RSA of a model with itself
            row = self.record(
                "teacher",
                {"key": "teacher", "seed": 0, "metrics": metrics, "seconds": time.perf_counter() - t0},
            )
        self.rows.append(row)

    def method(self, method: Any, seed: int, cfg: Any, wise_dir: Path) -> None:
        """One method's run at one seed (and, for a method with WiSE-FT, its interpolations' rows)."""
        from pipeline.train import run

        name = f"{method.key}-s{seed}"
        if (row := self.done(name)) is None:
            log(f"training {method.label}, seed {seed}")
            result = run(cfg, parent_run_id=self.mlparent.run_id)
            metrics = {**result.report["finetuned"], "train_s": result.train_seconds}
            metrics.update({k: v for k, v in result.metrics.items() if k.startswith("val/")})  # last epoch's
            row = self.record(name, {
                "key": method.key, "seed": seed, "metrics": metrics, "run_id": result.run_id,
                "export": result.export_dir, "steps": result.steps, "seconds": result.seconds,
            })  # fmt: skip
        self.rows.append(row)
        if not method.wise:
            return
        names = {a: f"{wise_key(a, method.key)}-s{seed}" for a in WISE_ALPHAS}
        missing = [a for a, n in names.items() if self.done(n) is None]
        if missing:
            log(f"scoring WiSE-FT α={','.join(f'{a:g}' for a in missing)} of {method.label}, seed {seed}")
            for alpha, metrics in wise_rows(cfg, row["export"], missing, wise_dir / name).items():
                metrics["train_s"] = row["metrics"]["train_s"]  # no training of its own
                wise = {"key": wise_key(alpha, method.key), "seed": seed, "metrics": metrics}
                self.record(names[alpha], wise)
        self.rows.extend(self.done(n) for n in names.values())


def _report(
    args: argparse.Namespace,
    size_name: str,
    size: Size,
    out: Path,
    invocations: Invocations,
    base: Any,
    mlparent: Any,
    rows: list[dict[str, Any]],
    selection: Selection,
) -> None:
    """report.json, report.md and the plots, logged to the parent run (which ends FINISHED); the README block."""
    from dive.redact import mask_text
    from pipeline import tracking

    parent = mlparent.run_id
    table = aggregate(rows)
    wall = invocations.total_s()
    command = invocations.command
    meta = {
        "date": date.today().isoformat(),
        "machine": machine(),
        "command": command,
        "size": {"name": size_name, **size.__dict__},
        "wall_s": wall,
        "invocations": invocations.entries(),
        "mlflow_parent_run": parent,
        "tracking_uri": mask_text(tracking.tracking_uri(base)),
    }
    chosen = selection.chosen
    checked = {k: rows_ for k in DIVE_VARIANTS if (rows_ := goals(table, k, selection.far_classes))}
    (out / "report.json").write_text(
        json.dumps(
            {
                **meta,
                "table": table,
                "goals": checked,
                "dive_chosen_on_validation": chosen,
                "not_swept": list(selection.unswept),
                "far_classes": selection.far_classes,
                "runs": rows,
            },
            indent=2,
        )
    )
    seeded_dive = (
        f"{LABELS[chosen]} (chosen on validation; the other DiVE variant seed 0)" if chosen else "DiVE"
    )
    block = (
        f"Measured {meta['date']} on {meta['machine']}; `{command}`; {size.epochs} epochs of batch "
        f"{size.batch} per method, {size.seeds} seed(s) for FLYP and {seeded_dive}; whole benchmark {wall / 60:.0f} min"
        f"{invocations.summary()} (MLflow parent run `{parent}`). Mean ± sample std over seeds; OOD / near ZS avg are unweighted means over the "
        f"styles, far ZS avg over the far sets (test classes / fonts); RSA = mean of image/text/cross-modal RSA "
        f"against the teacher on `ref_val`; train s = `TorchTrainer.fit()` alone.\n\n{markdown_table(table)}"
    )
    if selection.unswept:
        labels = ", ".join(LABELS.get(k, k) for k in selection.unswept)
        block += f"\n\n**Not swept on this build yet, so at `config.yaml`'s values:** {labels}."
    if checked:
        block += f"\n\nThe goals (item 6 of the README's protocol), checked on the means above:\n\n{markdown_goals(checked)}"
        if chosen in checked:
            block += (
                f"\n\nDiVE as chosen on validation: **{LABELS[chosen]}** (its sweep's best `val/objective` is the "
                f"higher of the two DiVE sweeps'; `tuned.yaml`)."
            )
    (out / "report.md").write_text(f"# EmojiShift ({size_name})\n\n{block}\n")
    plot_bars(table, out / "bars.png")
    plot_scatter(table, out / "scatter.png")
    for name in ("report.md", "report.json", "bars.png", "scatter.png"):
        mlparent.log_artifact(out / name, "report")
    mlparent.log_metrics({"benchmark/wall_s": wall})
    mlparent.end("FINISHED")
    if args.update_readme:
        update_readme(README, block)
    print(markdown_table(table))
    log(
        f"done in {invocations.elapsed_s() / 60:.1f} min ({wall / 60:.1f} min in all{invocations.summary()}): "
        f"{out / 'report.md'} (MLflow parent run {parent})"
    )


if __name__ == "__main__":
    sys.exit(main())
