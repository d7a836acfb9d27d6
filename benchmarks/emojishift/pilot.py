"""EmojiShift far zero-shot pilot: how far FLYP falls below the teacher on each far zero-shot candidate set.

    python benchmarks/emojishift/pilot.py --cache .cache/emojishift-far                 # full size
    python benchmarks/emojishift/pilot.py --cache .cache/emojishift-far-quick --quick   # small, a smoke test

1. ``prepare.py --far-zs`` (v2 data plus the candidate sets) and ``align.py`` (the teacher), each when missing:
   the same commands as the table's, on their own cache.
2. FLYP at the values its v2 sweep chose (``results/v2/tuned.yaml``: the pilot decides which sets the far
   sweeps select on, so it comes before them), seed 0, the table's size, through ``pipeline/train.py``'s ``run()``.
3. The teacher and FLYP scored on every candidate's validation split (``zs_far_val_<set>``) and test split
   (``zs_far_<set>``), each with its own class names and templates; chance is 1 / classes.
4. A set is **kept** when, on its validation split, the teacher scores ≥ 3× chance and FLYP ≥ 5 points below the
   teacher (:func:`decide`): the test splits are reported, never used to choose.

Writes ``pilot.json`` and ``pilot.md`` (the table the benchmark README shows) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run by path: the repository root is importable

from benchmarks.emojishift import glyphs  # noqa: E402
from benchmarks.emojishift.prepare import FAR_EMOJI  # noqa: E402
from benchmarks.emojishift.run import (  # noqa: E402
    CONFIG,
    EPS,
    HERE,
    MIN_FORGOTTEN,  # FLYP must forget ≥ 5 points: the table's goal, the pilot's rule
    MIN_OVER_CHANCE,  # the teacher must know the task: ≥ 3× chance
    SIZES,
    ensure_data,
    load_tuned,
    log,
    run_configs,
)

V2_TUNED = HERE / "results" / "v2" / "tuned.yaml"  # FLYP's values as swept on the v2 build
CANDIDATES = (*FAR_EMOJI, *glyphs.GLYPH_SETS)
RULE = {"min_over_chance": MIN_OVER_CHANCE, "min_forgotten": MIN_FORGOTTEN, "decided_on": "validation"}


def decide(
    scores: Mapping[str, Mapping[str, float]], classes: Mapping[str, int]
) -> dict[str, dict[str, Any]]:
    """Per candidate, on validation and on test: classes, chance, teacher and FLYP accuracy, FLYP's drop; and
    whether the candidate is kept.

    ``scores``: model ("teacher", "flyp") → split name → accuracy; ``classes``: split name → number of classes
    (an emoji set's validation split has classes of its own, fewer than its test split). The decision reads the
    validation split only."""
    out = {}
    for name in CANDIDATES:
        splits = {"val": f"zs_far_val_{name}", "test": f"zs_far_{name}"}
        if not all(split in classes for split in splits.values()):
            continue
        row: dict[str, Any] = {}
        for part, split in splits.items():
            teacher, flyp = scores["teacher"][split], scores["flyp"][split]
            chance = 1 / classes[split]
            row[part] = {"classes": classes[split], "chance": chance, "teacher": teacher, "flyp": flyp}
            row[part]["drop"] = teacher - flyp
        val = row["val"]
        row["teacher_over_chance"] = val["teacher"] / val["chance"]
        # The tolerance: accuracies are image counts over a total, so 49/120 − 43/120 is 5 points however the
        # floats round.
        row["kept"] = (
            row["teacher_over_chance"] >= MIN_OVER_CHANCE - EPS and val["drop"] >= MIN_FORGOTTEN - EPS
        )
        out[name] = row
    return out


def markdown(decided: Mapping[str, Mapping[str, Any]]) -> str:
    lines = [
        "| candidate | classes val / test | chance val / test | teacher val | FLYP val | drop val | teacher test | "
        "FLYP test | drop test | kept |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
    for name, r in decided.items():
        v, t = r["val"], r["test"]
        cells = [name, f"{v['classes']} / {t['classes']}", f"{pct(v['chance'])} / {pct(t['chance'])}"]
        cells += [pct(v["teacher"]), pct(v["flyp"]), pct(v["drop"])]
        cells += [pct(t["teacher"]), pct(t["flyp"]), pct(t["drop"]), "**yes**" if r["kept"] else "no"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def far_suites(cache: Path) -> tuple[list[Any], dict[str, int]]:
    """Every candidate's validation and test split as zero-shot suites, and each split's number of classes."""
    from pipeline.data.format import LABELLED, check_dataset
    from pipeline.evaluate import Suite

    suites, classes = [], {}
    for name in CANDIDATES:
        for split in (f"zs_far_val_{name}", f"zs_far_{name}"):
            suites.append(Suite(split, "zs_far", str(cache / split)))
            classes[split] = len(check_dataset(str(cache / split), LABELLED).classnames)
    return suites, classes


def pilot(cache: Path, out: Path, quick: bool, overrides: Sequence[str]) -> dict[str, Any]:
    t0 = time.perf_counter()
    ensure_data(cache, quick)  # refuses a cache built without the far sets
    os.environ["EMOJISHIFT"] = str(cache)  # config.yaml's paths; set before any config is loaded
    from pipeline.data.format import LABELLED, check_dataset
    from pipeline.evaluate import evaluate_accuracy
    from pipeline.ray_env import init_ray
    from pipeline.train import prepare_config, run

    size = SIZES["quick" if quick else "full"]
    base = prepare_config(str(CONFIG), list(overrides))
    id_rows = check_dataset(base.data.id_train, LABELLED).num_rows
    plan = run_configs(size, id_rows, overrides, ["flyp"], load_tuned(V2_TUNED))
    (_, _, flyp_overrides), *_ = plan  # seed 0
    suites, classes = far_suites(cache)
    init_ray(base)
    log("training FLYP at its swept values, seed 0")
    t_train = time.perf_counter()
    result = run(prepare_config(str(CONFIG), flyp_overrides))
    train_s = time.perf_counter() - t_train
    models = {
        "teacher": base.model,
        "flyp": replace(base.model, name=f"local-dir:{result.export_dir}", pretrained=""),
    }
    log(f"scoring the teacher and FLYP on {len(suites)} far zero-shot splits")
    t_score = time.perf_counter()
    accuracy = evaluate_accuracy(models, suites, base)
    scores = {model: {r.name: r.accuracy for r in results} for model, results in accuracy.items()}
    decided = decide(scores, classes)
    report = {
        "cache": str(cache),
        "size": "quick" if quick else "full",
        "flyp_overrides": flyp_overrides,
        "flyp_run_id": result.run_id,
        "flyp_finetuned": result.report.get("finetuned", {}),
        "rule": RULE,
        "candidates": decided,
        "scores": scores,
        "classes": classes,
        "seconds": {
            "train": round(train_s, 1),
            "score": round(time.perf_counter() - t_score, 1),
            "total": round(time.perf_counter() - t0, 1),
        },
    }
    write(out, report)
    log(f"seconds: {report['seconds']}")
    return report


def write(out: Path, report: dict[str, Any]) -> None:
    """``pilot.json`` and ``pilot.md`` into ``out``; the table and the kept sets printed."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "pilot.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report["candidates"])
    (out / "pilot.md").write_text(table + "\n")
    print(table)
    kept = [n for n, r in report["candidates"].items() if r["kept"]]
    log(f"kept: {', '.join(kept) or 'none'}")


def redecide(out: Path) -> dict[str, Any]:
    """The keep rule applied again to the scores an earlier pilot stored in ``out/pilot.json`` (no training)."""
    path = out / "pilot.json"
    if not path.is_file():
        raise SystemExit(f"{path}: no pilot report to decide again (run the pilot first)")
    report = json.loads(path.read_text())
    report["rule"] = RULE
    report["candidates"] = decide(report["scores"], report["classes"])
    write(out, report)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--cache", type=Path, required=True, help="a cache for the far zero-shot build; built if empty"
    )
    p.add_argument("--quick", action="store_true", help="quick data and the quick size")
    p.add_argument("--out", type=Path, help="report folder (default: outputs/emojishift-pilot-<size>)")
    p.add_argument(
        "--redecide",
        action="store_true",
        help="apply the keep rule again to --out/pilot.json's scores; no training",
    )
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = p.parse_args(argv)
    out = args.out or Path("outputs") / f"emojishift-pilot-{'quick' if args.quick else 'full'}"
    if args.redecide:
        redecide(out.resolve())
    else:
        pilot(args.cache.expanduser().resolve(), out.resolve(), args.quick, args.overrides)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
