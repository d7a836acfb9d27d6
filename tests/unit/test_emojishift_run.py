"""EmojiShift runner: the run plan, the seed statistics, the table and the README block (no training here;
the runs themselves go through pipeline.train.run, which the pipeline tests cover)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import yaml

from benchmarks.emojishift import run as er


def test_plan_runs_every_method_with_equal_steps_and_seeds_first() -> None:
    size = er.Size(epochs=3, batch=32, seeds=3, rsa_samples=10, val_samples=10)
    plan = er.run_configs(size, id_rows=1600, extra=["tracking.uri=x"])
    keys = [(m.key, seed) for m, seed, _ in plan]
    first = [k for k, s in keys if s == 0]
    # seed 0 of every method before any extra seed (the shared-λ row waits for its own sweep; the ablations run
    # only when named)
    assert first == ["ft", "lpft", "flyp", "flyp_replay", "snd", "dive"]
    assert keys[len(first) :] == [("flyp", 1), ("dive", 1), ("flyp", 2), ("dive", 2)]
    for _method, seed, overrides in plan:
        assert "optim.epochs=3" in overrides and "optim.global_batch=32" in overrides
        assert "loss.lp_steps=75" in overrides  # 3 × ⌈1600/32⌉ = 150 steps, half of them probing
        assert f"optim.seed={seed}" in overrides
        assert overrides[-1] == "tracking.uri=x"  # the user's overrides win
        assert "eval.with_teacher=false" in overrides
    ablations = {m.key: m.overrides for m in er.METHODS}
    assert "loss.lambda_pvl=0" in ablations["dive_avl"] and "loss.lambda_avl=0" in ablations["dive_pvl"]


def test_plan_overrides_are_valid_config() -> None:
    from dive.config import load_config

    size = er.SIZES["quick"]
    for method, _, overrides in er.run_configs(size, id_rows=40, extra=[]):
        cfg = load_config(str(er.CONFIG), overrides)
        assert cfg.loss.method.value == method.overrides[0].split("=")[1]
        assert cfg.eval.with_teacher is False


def _row(key: str, seed: int, **metrics: float) -> dict:
    return {"key": key, "seed": seed, "metrics": metrics}


def test_aggregate_means_sample_std_and_table_order() -> None:
    rows = [
        _row("dive", 0, id_acc=0.5, ood_avg=0.2),
        _row("teacher", 0, id_acc=0.1, rsa_mean=1.0),
        _row("dive", 1, id_acc=0.7, ood_avg=0.4),
        _row("flyp", 0, id_acc=0.6),
    ]
    table = er.aggregate(rows)
    assert [e["key"] for e in table] == ["teacher", "flyp", "dive"]
    dive = table[2]
    assert dive["seeds"] == [0, 1] and dive["label"] == "DiVE"
    assert dive["id_acc"]["mean"] == pytest.approx(0.6)
    assert dive["id_acc"]["std"] == pytest.approx(statistics.stdev([0.5, 0.7]))
    assert dive["id_acc"]["n"] == 2
    assert table[1]["id_acc"]["std"] == 0.0


def test_markdown_table_cells() -> None:
    table = er.aggregate(
        [
            _row("flyp", 0, id_acc=0.5, train_s=100.4),
            _row("flyp", 1, id_acc=0.7, train_s=120.6),
            _row("teacher", 0, id_acc=0.25),
        ]
    )
    lines = er.markdown_table(table).splitlines()
    assert lines[0].startswith("| method | seeds | ID |") and lines[0].endswith("| train s |")
    assert len(lines[1].split("|")) == len(lines[0].split("|"))
    teacher, flyp = lines[2], lines[3]
    assert teacher.startswith("| zero-shot teacher | 1 | 0.250 | —")
    assert "| 0.600 ± 0.141 |" in flyp
    assert flyp.endswith("| 110 ± 14 |")


def test_update_readme_replaces_only_the_marked_block(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    start, end = er.MARKERS
    readme.write_text(f"intro\n{start}\nold table\n{end}\noutro\n")
    er.update_readme(readme, "new table")
    assert readme.read_text() == f"intro\n{start}\nnew table\n{end}\noutro\n"
    er.update_readme(readme, "newer")
    assert readme.read_text().count("newer") == 1 and "new table" not in readme.read_text()
    bare = tmp_path / "bare.md"
    bare.write_text("no markers")
    with pytest.raises(ValueError, match="markers"):
        er.update_readme(bare, "x")
    assert bare.read_text() == "no markers"  # nothing lost on bad input


def test_missing_data_and_teacher_are_built_by_their_commands(tmp_path: Path, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(er.subprocess, "run", lambda cmd, check: calls.append(cmd))
    er.ensure_data(tmp_path, quick=True)
    assert [Path(c[1]).name for c in calls] == ["prepare.py", "align.py"]
    assert calls[0][2:] == ["--cache", str(tmp_path), "--quick", "--far-zs"]  # the benchmark's build
    assert calls[1][2:] == ["--data", str(tmp_path), "--out", str(tmp_path / "teacher")]
    calls.clear()
    (tmp_path / "splits.json").write_text("{}")
    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "teacher.pt").write_bytes(b"")
    er.ensure_data(tmp_path, quick=False)
    assert calls == []  # both present: nothing rebuilt


def test_bad_seed_count_is_refused_before_anything_starts(tmp_path: Path, capsys) -> None:
    assert er.main(["--cache", str(tmp_path), "--seeds", "0", "--out", str(tmp_path / "out")]) == 2
    assert "--seeds must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_methods_subset_and_unknown_method(tmp_path: Path, capsys) -> None:
    size = er.Size(epochs=1, batch=8, seeds=2, rsa_samples=10, val_samples=10)
    plan = er.run_configs(size, id_rows=40, extra=[], methods=["dive", "snd"])
    assert [(m.key, s) for m, s, _ in plan] == [("snd", 0), ("dive", 0), ("dive", 1)]
    named = er.run_configs(size, id_rows=40, extra=[], methods=["dive_pvl", "dive_avl"])
    # an ablation runs when named
    assert [(m.key, s) for m, s, _ in named] == [("dive_avl", 0), ("dive_pvl", 0)]
    assert er.main(["--cache", str(tmp_path), "--methods", "dive,nope", "--out", str(tmp_path / "o")]) == 2
    assert "unknown ['nope']" in capsys.readouterr().err


def test_the_report_keeps_rows_an_earlier_invocation_left_in_the_folder(tmp_path: Path) -> None:
    for name, row in {"dive_avl-s0": _row("dive_avl", 0, id_acc=0.4), "flyp-s0": _row("flyp", 0, id_acc=0.9),
                      "teacher": _row("teacher", 0, id_acc=0.3)}.items():  # fmt: skip
        (tmp_path / f"{name}.json").write_text(json.dumps(row))
    planned = [_row("teacher", 0, id_acc=0.3), _row("flyp", 0, id_acc=0.9)]
    assert er.earlier_rows(tmp_path, planned) == [_row("dive_avl", 0, id_acc=0.4)]  # each row once
    assert er.earlier_rows(tmp_path / "none", planned) == []


def test_swept_values_reach_their_methods_and_the_ablations(tmp_path):
    tuned_file = tmp_path / "tuned.yaml"
    tuned_file.write_text(
        "dive: {loss.lambda_avl: 2.5, loss.lambda_pvl: 0.5, optim.lr: 3.0e-4}\nflyp: {optim.lr: 1.0e-4}\n"
        "_sweeps: {dive: {trials: 8}}\n"
    )
    tuned = er.load_tuned(tuned_file)
    assert set(tuned) == {"dive", "flyp"}  # the bookkeeping section is not a method
    size = er.SIZES["quick"]
    every = [m.key for m in er.METHODS]
    runs = er.run_configs(size, id_rows=40, extra=["optim.lr=9"], methods=every, tuned=tuned)
    plan = {m.key: o for m, _, o in runs}
    assert "dive_shared" not in plan  # no sweep of its own yet: no row
    assert "loss.lambda_avl=2.5" in plan["dive"] and "optim.lr=0.0003" in plan["dive"]
    avl = plan["dive_avl"]  # AVL only: DiVE's swept values, then its own λ_pvl = 0 wins
    assert avl.index("loss.lambda_pvl=0.5") < avl.index("loss.lambda_pvl=0")
    assert plan["flyp"][-1] == "optim.lr=9"  # command-line overrides still come last
    assert not [o for o in plan["snd"] if o.startswith("optim.lr=0.0")]  # unswept methods keep the config


def test_only_the_dive_variant_chosen_on_validation_runs_every_seed_and_wise_ft() -> None:
    size = er.Size(epochs=1, batch=8, seeds=3, rsa_samples=10, val_samples=10)
    tuned = {"dive": ["loss.lambda_avl=3"], "dive_shared": ["loss.lambda_avl=0.2", "loss.lambda_pvl=0.2"]}
    plan = er.run_configs(size, id_rows=40, extra=[], tuned=tuned, chosen="dive_shared")
    seeds = {}
    for method, seed, _ in plan:
        seeds.setdefault(method.key, []).append(seed)
    assert seeds["dive_shared"] == [0, 1, 2] and seeds["flyp"] == [0, 1, 2]
    assert seeds["dive"] == [0]  # the variant validation did not pick: checked on one seed
    wise = {m.key for m, _, _ in plan if m.wise}
    assert wise == {"flyp", "dive_shared"}
    assert er.LABELS["wise50_dive_shared"] == "WiSE-FT α=0.5 (DiVE, one shared λ)"
    # no sweep has chosen yet: DiVE (separate λs) keeps its seeds and WiSE-FT
    before = er.run_configs(size, id_rows=40, extra=[], tuned={}, chosen=None)
    assert [s for m, s, _ in before if m.key == "dive"] == [0, 1, 2]
    assert {m.key for m, _, _ in before if m.wise} == {"flyp", "dive"}


def test_above_curve_interpolates_and_holds_the_ends() -> None:
    curve = [(0.9, 0.3), (0.3, 0.2), (0.6, 0.4)]  # unsorted on purpose: (ID, metric)
    assert er.above_curve(curve, (0.45, 0.35)) == pytest.approx(0.05)  # curve at 0.45 is 0.30
    assert er.above_curve(curve, (0.75, 0.30)) == pytest.approx(-0.05)  # curve at 0.75 is 0.35
    # more ID than the fine-tune: its metric counts
    assert er.above_curve(curve, (0.95, 0.31)) == pytest.approx(0.01)
    assert er.above_curve(curve, (0.1, 0.1)) == pytest.approx(-0.1)  # less ID than the teacher: its metric


def _table(dive: dict[str, float], flyp_zs: float = 0.20, teacher_zs: float = 0.27) -> list[dict]:
    rows = [
        _row("teacher", 0, id_acc=0.35, ood_avg=0.27, zs_avg=teacher_zs, rsa_mean=1.0),
        _row("flyp", 0, id_acc=0.99, ood_avg=0.49, zs_avg=flyp_zs, rsa_mean=0.80),
        _row("dive", 0, **dive),
    ]
    points = [(0.7, 0.42, 0.28), (0.9, 0.5, 0.26), (0.97, 0.5, 0.23)]
    for a, (i, o, z) in zip(er.WISE_ALPHAS, points, strict=True):
        rows.append(_row(er.wise_key(a, "flyp"), 0, id_acc=i, ood_avg=o, zs_avg=z, rsa_mean=0.9))
    return er.aggregate(rows)


def test_goals_are_checked_on_the_table() -> None:
    table = _table({"id_acc": 0.986, "ood_avg": 0.53, "zs_avg": 0.27, "rsa_mean": 0.96})
    assert [e["key"] for e in table][:3] == ["teacher", "flyp", "dive"]  # WiSE rows sort after their methods
    got = {r["id"]: r for r in er.goals(table)}
    # no far sets scored (the v2 build): no far rows
    assert list(got) == ["id", "ood", "ood3", "zs", "rsa", "ood_curve", "zs_curve"]
    assert got["id"]["target"] == pytest.approx(0.985) and got["id"]["met"]
    assert got["ood"]["target"] == pytest.approx(0.49) and got["ood"]["met"]
    assert got["ood3"]["target"] == pytest.approx(0.52) and got["ood3"]["met"]
    # FLYP forgets 7 pt (< 8): the target is all of the teacher's ZS
    assert got["zs"]["target"] == pytest.approx(0.27) and got["zs"]["met"]
    assert got["rsa"]["met"] and got["ood_curve"]["met"] and got["zs_curve"]["met"]
    assert got["zs_curve"]["measured"] == pytest.approx(0.27 - (0.23 + (0.986 - 0.97) / 0.02 * (0.20 - 0.23)))
    # FLYP forgets 17 pt: FLYP + 8 pt is the target; a DiVE below it, with too little ID, fails both
    worse = er.goals(_table({"id_acc": 0.90, "ood_avg": 0.45, "zs_avg": 0.15, "rsa_mean": 0.9}, flyp_zs=0.1))
    got = {r["id"]: r for r in worse}
    assert got["zs"]["target"] == pytest.approx(0.18)
    assert [k for k, r in got.items() if r["met"]] == []
    assert er.goals(er.aggregate([_row("dive", 0, id_acc=0.5)])) == []  # nothing to compare with
    text = er.markdown_goals({"dive": worse})
    assert text.splitlines()[0] == "| goal | target | DiVE | met |" and "| no |" in text


def _far_table(dive_id: float, dive_far: float, teacher_digits: float = 0.6) -> list[dict]:
    """Teacher, FLYP, DiVE and FLYP's WiSE-FT with two far sets: digits (10 classes) and flags (20)."""

    def far(digits: float, flags: float) -> dict[str, float]:
        return {"zs_far/digits": digits, "zs_far/flags": flags, "zs_far_avg": (digits + flags) / 2}

    base = {"ood_avg": 0.4, "zs_avg": 0.27, "rsa_mean": 0.9}
    rows = [
        _row("teacher", 0, id_acc=0.35, **base, **far(teacher_digits, 0.2)),
        _row(
            "flyp", 0, id_acc=0.99, **base, **far(0.3, 0.1)
        ),  # forgets (0.4 − 0.2) = 20 pt with the teacher's 0.6
        _row("dive", 0, id_acc=dive_id, **base, **far(dive_far, dive_far)),
    ]
    for a, (i, f) in zip(er.WISE_ALPHAS, [(0.7, 0.35), (0.9, 0.3), (0.97, 0.25)], strict=True):
        rows.append(_row(er.wise_key(a, "flyp"), 0, id_acc=i, **base, **far(f, f)))
    return er.aggregate(rows)


def test_far_zero_shot_goals_teacher_knows_flyp_forgets_dive_keeps_at_matched_id() -> None:
    classes = {"digits": 10, "flags": 20}
    got = {r["id"]: r for r in er.goals(_far_table(dive_id=0.986, dive_far=0.37), "dive", classes)}
    assert ["far_teacher", "far_forgets", "far_kept"] == [k for k in got if k.startswith("far_")]
    assert (
        got["far_teacher"]["measured"] == pytest.approx(4.0) and got["far_teacher"]["met"]
    )  # flags 0.2 × 20
    assert got["far_forgets"]["measured"] == pytest.approx(0.2) and got["far_forgets"]["met"]
    assert got["far_kept"]["measured"] == pytest.approx(0.85) and got["far_kept"]["met"]  # (0.37 − 0.2) / 0.2
    assert got["zs_far_curve"]["met"]  # 0.37 against WiSE-FT's ≈ 0.21 at ID 0.986
    # Kept, but with ID 1.4 pt under FLYP's: not "at matched ID"
    unmatched = {r["id"]: r for r in er.goals(_far_table(dive_id=0.976, dive_far=0.37), "dive", classes)}
    assert unmatched["far_kept"]["measured"] == pytest.approx(0.85) and not unmatched["far_kept"]["met"]
    # A teacher at 2.5× chance on digits, who then has 5 pt less for FLYP to forget
    weak = {r["id"]: r for r in er.goals(_far_table(0.986, 0.37, teacher_digits=0.25), "dive", classes)}
    assert weak["far_teacher"]["measured"] == pytest.approx(2.5) and not weak["far_teacher"]["met"]
    assert weak["far_forgets"]["measured"] == pytest.approx(0.025) and not weak["far_forgets"]["met"]
    # Without class counts the far rows are not checked; the table still has the far columns.
    assert not [r for r in er.goals(_far_table(0.986, 0.37), "dive") if r["id"].startswith("far_")]
    header = er.markdown_table(_far_table(0.986, 0.37)).splitlines()[0]
    assert "| near ZS avg | digits | flags | far ZS avg | RSA |" in header


def test_each_dive_variant_is_checked_and_validation_alone_names_the_chosen_one(tmp_path: Path) -> None:
    table = _table({"id_acc": 0.90, "ood_avg": 0.45, "zs_avg": 0.15, "rsa_mean": 0.9})
    shared = er.aggregate([_row("dive_shared", 0, id_acc=0.986, ood_avg=0.53, zs_avg=0.27, rsa_mean=0.96)])
    both = {k: er.goals([*table, *shared], k) for k in er.DIVE_VARIANTS}
    assert [r["met"] for r in both["dive"]] == [False] * 7 and all(r["met"] for r in both["dive_shared"])
    lines = er.markdown_goals(both).splitlines()
    assert lines[0] == "| goal | target | DiVE | met | DiVE, one shared λ | met |"
    assert lines[2].endswith("| 0.900 | no | 0.986 | yes |")
    tuned = tmp_path / "tuned.yaml"
    assert er.chosen_dive(tuned) is None  # no sweep yet
    best = {"dive": 0.624, "dive_shared": 0.626, "flyp": 0.9}  # FLYP's higher score is not a DiVE variant's
    tuned.write_text(
        yaml.safe_dump({"_sweeps": {k: {"best": {"val/objective": v}} for k, v in best.items()}})
    )
    assert er.chosen_dive(tuned) == "dive_shared"


def test_wise_rows_have_a_label_per_alpha() -> None:
    assert er.wise_key(0.25, "dive") == "wise25_dive"
    assert er.LABELS["wise75_flyp"] == "WiSE-FT α=0.75 (FLYP)"
    assert [a for a in er.WISE_ALPHAS] == [0.25, 0.5, 0.75]


def test_a_resumed_benchmark_counts_the_time_of_every_invocation(tmp_path: Path) -> None:
    """The report's wall time is the sum over invocations (stopped ones too), not the last invocation's; a folder
    written before the ledger counts its report's time as one invocation."""
    (tmp_path / "report.json").write_text('{"date": "2026-12-01", "command": "first", "wall_s": 600.0}')
    first = er.Invocations(tmp_path, "second")
    first.close(finished=False)
    again = er.Invocations(tmp_path, "third")
    assert [e["command"] for e in again.entries()] == ["first", "second", "third"]
    assert [e["status"] for e in again.entries()] == ["finished", "stopped", "finished"]
    assert 600.0 < again.total_s() < 660.0
    assert again.summary().startswith(" over 3 invocations (10, 0, 0 min")
    again.close(finished=True)
    assert len(er.Invocations(tmp_path, "fourth").past) == 3
    assert er.Invocations(tmp_path / "runs", "alone").summary() == ""
