"""Collect the EmojiShift sweeps into the repository: trials tables, chosen values, README.

    python pipeline/tune.py --space tune_configs/emojishift/<method>.yaml --name emojishift-far-<method>   # each
    python benchmarks/emojishift/sweeps.py --sweeps outputs/sweeps --update-readme

For every finished sweep ``emojishift-far-<method>`` under ``--sweeps``: its trials table, objective plot and best
config are copied to ``benchmarks/emojishift/sweeps/<method>/``, the best trial's values of the searched keys
(and the keys tied to them) are written into ``benchmarks/emojishift/tuned.yaml`` — which ``run.py`` applies to
that method's runs — and the summary table goes into the README between the ``sweeps`` markers. Sweeps collected
earlier stay in ``tuned.yaml`` and the table, so sweeps run at different times add up.

A sweep is collected only if it selected with ``config.yaml``'s validation objective and far zero-shot sets (the
``-far-`` in its name keeps the far build's sweeps apart from the v2 build's, ``results/v2/sweeps``).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run by path: the repository root is importable
from benchmarks.common import ROOT  # noqa: E402

HERE = Path(__file__).resolve().parent

from pipeline.sweep.spec import load_spec  # noqa: E402

SPACES = ROOT / "tune_configs" / "emojishift"
CONFIG = HERE / "config.yaml"
TUNED = HERE / "tuned.yaml"
PREFIX = "emojishift-far-"
# sweep name → run.py method key
METHOD = {
    "flyp": "flyp",
    "dive": "dive",
    "dive_shared": "dive_shared",
    "snd": "snd",
    "replay": "flyp_replay",
    "ft": "ft",
    "lpft": "lpft",
}
BLOCK = re.compile(r"(<!-- sweeps:start -->\n).*?(<!-- sweeps:end -->)", re.S)


class _Plain(yaml.SafeDumper):
    """Plain YAML: no &anchors / *aliases where two entries hold equal values."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _get(cfg: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


def trial_seconds(sweep_dir: Path) -> tuple[float, float]:
    """(sum of every trial's own time, wall time from the first trial's start to the last result), from the
    trials' Tune ``result.json`` lines."""
    total, start, end = 0.0, float("inf"), 0.0
    for path in (sweep_dir / "tune").glob("*/result.json"):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if not lines:
            continue
        last = lines[-1]
        total += float(last.get("time_total_s", 0.0))
        start = min(start, float(last["timestamp"]) - float(last.get("time_total_s", 0.0)))
        end = max(end, float(last["timestamp"]))
    return total, (end - start if end else 0.0)


def selection(cfg: dict[str, Any]) -> dict[str, Any]:
    """What a sweep chose by: the validation objective and the far zero-shot validation sets' names."""
    val = cfg.get("val") or {}
    return {"val.objective": val.get("objective"), "val.zs_far": sorted(val.get("zs_far") or {})}


def check_selection(sweep_dir: Path, expected: dict[str, Any]) -> None:
    """Refuse a sweep that selected otherwise than ``config.yaml`` (``expected``: its :func:`selection`)."""
    best = sweep_dir / "best_config.yaml"
    got = selection(yaml.safe_load(best.read_text()))
    if got != expected:
        raise SystemExit(
            f"{best}: selected by {got}, expected {expected} ({CONFIG.name}); rerun the sweep with the "
            "benchmark's config"
        )


def collect(sweep_dir: Path, name: str) -> dict[str, Any]:
    """One finished sweep: copy its tables, return its summary (chosen values included)."""
    spec = load_spec(SPACES / f"{name}.yaml")
    rows = json.loads((sweep_dir / "trials" / "trials.json").read_text())
    best_cfg = yaml.safe_load((sweep_dir / "best_config.yaml").read_text())
    keys = [*spec.space, *spec.tie]
    chosen = {k: _get(best_cfg, k) for k in keys}
    dest = HERE / "sweeps" / name
    dest.mkdir(parents=True, exist_ok=True)
    for f in ("trials.md", "trials.csv", "objective.png"):
        if (sweep_dir / "trials" / f).is_file():
            shutil.copyfile(sweep_dir / "trials" / f, dest / f)
    shutil.copyfile(sweep_dir / "best_config.yaml", dest / "best_config.yaml")
    metric = spec.objective.metric
    done = [r for r in rows if r["completed"]]
    best = max(done, key=lambda r: r[metric])
    seconds, wall = trial_seconds(sweep_dir)
    return {
        "method": METHOD[name],
        "trials": len(rows),
        "completed": len(done),
        "pruned": sum(bool(r["pruned"]) for r in rows),
        "best": {k: best.get(k) for k in (metric, "val/id_acc", "val/zs_acc", "val/zs_far_acc")},
        "chosen": chosen,
        "trial_s": round(seconds),
        "wall_s": round(wall),
    }


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def table(summaries: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| sweep | trials (pruned) | best val/objective (id / zs / zs far) | chosen | trial time | wall |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in summaries.items():
        b = s["best"]
        chosen = ", ".join(f"`{k}={_fmt(v)}`" for k, v in s["chosen"].items())
        lines.append(
            f"| [{name}](sweeps/{name}/trials.md) | {s['trials']} ({s['pruned']}) | "
            f"{b['val/objective']:.3f} ({b['val/id_acc']:.3f} / {b['val/zs_acc']:.3f} / "
            f"{b['val/zs_far_acc']:.3f}) | {chosen} | "
            f"{s['trial_s'] / 60:.0f} min | {s['wall_s'] / 60:.0f} min |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweeps", type=Path, default=Path("outputs/sweeps"), help="tracking.output_dir/sweeps")
    p.add_argument("--update-readme", action="store_true", help="write the table into the benchmark README")
    args = p.parse_args(argv)
    tuned = yaml.safe_load(TUNED.read_text()) if TUNED.is_file() else {}
    summaries = tuned.pop("_sweeps", {})
    finished = {}
    for name in METHOD:
        sweep_dir = args.sweeps / f"{PREFIX}{name}"
        state = sweep_dir / "sweep.json"
        if state.is_file() and json.loads(state.read_text()).get("finished"):
            finished[name] = sweep_dir
    expected = selection(yaml.safe_load(CONFIG.read_text()))
    for sweep_dir in finished.values():  # every sweep checked before anything is copied
        check_selection(sweep_dir, expected)
    for name, sweep_dir in finished.items():
        summaries[name] = collect(sweep_dir, name)
        tuned[METHOD[name]] = summaries[name]["chosen"]
        print(f"{name}: chosen {summaries[name]['chosen']}")
    if not summaries:
        print(f"error: no finished {PREFIX}* sweep under {args.sweeps}", file=sys.stderr)
        return 2
    header = "# Written by benchmarks/emojishift/sweeps.py: each method's values chosen by its sweep (run.py applies them)\n"
    TUNED.write_text(header + yaml.dump({**tuned, "_sweeps": summaries}, Dumper=_Plain, sort_keys=False))
    text = table(summaries)
    print(text)
    if args.update_readme:
        readme = HERE / "README.md"
        body = readme.read_text()
        if not BLOCK.search(body):
            raise SystemExit(f"{readme}: no <!-- sweeps:start --> … <!-- sweeps:end --> block")
        readme.write_text(BLOCK.sub(lambda m: m.group(1) + text + m.group(2), body))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
