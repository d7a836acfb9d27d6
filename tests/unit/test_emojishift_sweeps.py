"""benchmarks/emojishift/sweeps.py: finished sweeps → copied tables, tuned.yaml, README block (fake sweep folders)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from benchmarks.emojishift import sweeps as sw

# What the benchmark's config.yaml selects by: sweeps run with it carry the same val section.
VAL = {
    "val": {"objective": "id_zs_far", "zs_far": {"digits": "d", "letters": "l", "people": "p", "flags": "f"}}
}


def _sweep(root: Path, name: str, rows: list[dict], best: dict, finished: bool = True) -> None:
    folder = root / f"emojishift-far-{name}"
    (folder / "trials").mkdir(parents=True)
    (folder / "sweep.json").write_text(json.dumps({"parent_run_id": "p", "finished": finished}))
    (folder / "trials" / "trials.json").write_text(json.dumps(rows))
    (folder / "trials" / "trials.md").write_text("| trial |\n")
    (folder / "best_config.yaml").write_text(yaml.safe_dump({**VAL, **best}))
    for i, seconds in enumerate((100.0, 50.0)):
        trial = folder / "tune" / f"_trial_{i}"
        trial.mkdir(parents=True)
        lines = [
            {"time_total_s": seconds / 2, "timestamp": 1000 + seconds / 2},
            {"time_total_s": seconds, "timestamp": 1000 + seconds},
        ]
        (trial / "result.json").write_text("\n".join(json.dumps(x) for x in lines))


def _row(objective: float, lr: float, completed: bool = True, **extra) -> dict:
    return {
        "val/objective": objective,
        "val/id_acc": 0.9,
        "val/zs_acc": 0.3,
        "val/zs_far_acc": objective * 3 - 1.2,
        "optim.lr": lr,
        "completed": completed,
        "pruned": not completed,
        **extra,
    }


def test_finished_sweeps_are_collected_into_tuned_values_and_the_readme(tmp_path, monkeypatch):
    here = tmp_path / "bench"
    here.mkdir()
    (here / "README.md").write_text("intro\n<!-- sweeps:start -->\nold\n<!-- sweeps:end -->\nrest\n")
    monkeypatch.setattr(sw, "HERE", here)
    monkeypatch.setattr(sw, "TUNED", here / "tuned.yaml")
    sweeps = tmp_path / "sweeps"
    rows = [_row(0.60, 1e-4), _row(0.55, 3e-4), _row(0.70, 1e-3, completed=False)]
    _sweep(sweeps, "flyp", rows, {"optim": {"lr": 1e-4}})
    dive_best = {
        "loss": {"lambda_avl": 3.0, "lambda_pvl": 3.0},
        "optim": {"lr": 2e-4},
        "data": {"ref_batch": 16},
    }
    _sweep(sweeps, "dive_shared", [_row(0.65, 2e-4)], dive_best)
    _sweep(
        sweeps, "snd", [_row(0.5, 1e-4)], {"optim": {"lr": 1e-4}}, finished=False
    )  # still running: left out
    assert sw.main(["--sweeps", str(sweeps), "--update-readme"]) == 0
    tuned = yaml.safe_load((here / "tuned.yaml").read_text())
    assert tuned["flyp"] == {"optim.lr": 1e-4}  # the best *completed* trial, not the pruned 0.70
    assert (
        tuned["dive_shared"]["loss.lambda_pvl"] == tuned["dive_shared"]["loss.lambda_avl"] == 3.0
    )  # the tie
    assert "snd" not in tuned
    assert tuned["_sweeps"]["flyp"]["trial_s"] == 150 and tuned["_sweeps"]["flyp"]["wall_s"] == 100
    assert (here / "sweeps" / "flyp" / "trials.md").is_file()
    readme = (here / "README.md").read_text()
    assert (
        "old" not in readme
        and "[flyp](sweeps/flyp/trials.md) | 3 (1) | 0.600 (0.900 / 0.300 / 0.600)" in readme
    )
    assert readme.startswith("intro\n") and readme.endswith("rest\n")
    # A later session collecting only another sweep keeps what was collected before.
    again = tmp_path / "later"
    _sweep(again, "ft", [_row(0.4, 1e-5)], {"optim": {"lr": 1e-5}})
    assert sw.main(["--sweeps", str(again)]) == 0
    tuned = yaml.safe_load((here / "tuned.yaml").read_text())
    assert set(tuned) == {"flyp", "dive_shared", "ft", "_sweeps"}


@pytest.mark.parametrize(
    "val",
    [
        {"objective": "id_zs", "zs_far": {}},  # a v2 sweep (near zero-shot only)
        {"objective": "id_zs_far", "zs_far": {"digits": "d"}},  # other far sets than the benchmark's
    ],
)
def test_a_sweep_selected_otherwise_than_the_config_is_refused(tmp_path, monkeypatch, val):
    here = tmp_path / "bench"
    here.mkdir()
    monkeypatch.setattr(sw, "HERE", here)
    monkeypatch.setattr(sw, "TUNED", here / "tuned.yaml")
    _sweep(tmp_path / "sweeps", "ft", [_row(0.6, 1e-4)], {"optim": {"lr": 1e-4}, "val": val})
    _sweep(
        tmp_path / "sweeps", "flyp", [_row(0.6, 1e-4)], {"optim": {"lr": 1e-4}}
    )  # a good one, collected first
    with pytest.raises(SystemExit, match=r"emojishift-far-ft/best_config.yaml: selected by .*expected"):
        sw.main(["--sweeps", str(tmp_path / "sweeps")])
    assert not (here / "tuned.yaml").exists() and not (here / "sweeps").exists()  # nothing written or copied
