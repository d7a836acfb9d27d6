"""EmojiShift far zero-shot pilot (benchmarks/emojishift/pilot.py): the keep rule and the data it asks for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.emojishift import pilot
from benchmarks.emojishift import run as er


def scores(**splits: tuple[float, float]) -> dict[str, dict[str, float]]:
    """model → split → accuracy, from split=(teacher, flyp)."""
    return {m: {s: pair[i] for s, pair in splits.items()} for i, m in enumerate(("teacher", "flyp"))}


def test_a_set_is_kept_on_validation_when_the_teacher_knows_it_and_flyp_forgets() -> None:
    decided = pilot.decide(
        scores(
            zs_far_val_digits=(0.50, 0.30),  # 5× chance, 20 points forgotten: kept
            zs_far_digits=(0.10, 0.10),  # the test split is reported, never decides
            zs_far_val_letters=(0.10, 0.00),  # 2.6× chance: the teacher does not know it well enough
            zs_far_letters=(0.60, 0.10),
            zs_far_val_flags=(0.20, 0.16),  # 4× chance (20 classes), only 4 points forgotten
            zs_far_flags=(0.20, 0.05),
        ),
        {
            f"zs_far{v}_{n}": k
            for n, k in (("digits", 10), ("letters", 26), ("flags", 40))
            for v in ("", "_val")
        }
        | {"zs_far_val_flags": 20},  # an emoji set's validation classes are its own, fewer
    )
    assert list(decided) == ["flags", "digits", "letters"]  # candidate order
    assert {n: r["kept"] for n, r in decided.items()} == {"flags": False, "digits": True, "letters": False}
    assert decided["digits"]["val"]["drop"] == pytest.approx(0.20)
    assert decided["digits"]["test"] == {
        "classes": 10,
        "chance": 0.1,
        "teacher": 0.10,
        "flyp": 0.10,
        "drop": 0.0,
    }
    assert decided["letters"]["teacher_over_chance"] == pytest.approx(2.6)
    table = pilot.markdown(decided).splitlines()
    assert decided["flags"]["teacher_over_chance"] == pytest.approx(4.0)
    assert table[2] == "| flags | 20 / 40 | 5.0 / 2.5 | 20.0 | 16.0 | 4.0 | 20.0 | 5.0 | 15.0 | no |"
    assert table[3].endswith("| **yes** |")


def test_exactly_five_points_forgotten_is_kept_whatever_the_float_rounding() -> None:
    classes = {"zs_far_val_people": 20, "zs_far_people": 40}
    decided = pilot.decide(scores(zs_far_val_people=(49 / 120, 43 / 120), zs_far_people=(0.3, 0.3)), classes)
    assert 49 / 120 - 43 / 120 < 0.05 and decided["people"]["kept"]


def test_a_cache_without_the_far_sets_is_named_before_anything_trains(tmp_path: Path) -> None:
    (tmp_path / "classes.json").write_text(json.dumps({"version": "emojishift-v2"}))
    with pytest.raises(SystemExit, match=f"{tmp_path}: built without the far zero-shot sets"):
        er.ensure_data(tmp_path, quick=False)  # the pilot's and the table's first step


def test_a_stored_pilot_is_decided_again_without_training(tmp_path: Path, capsys) -> None:
    classes = {"zs_far_val_digits": 10, "zs_far_digits": 10}
    report = {"scores": scores(zs_far_val_digits=(0.5, 0.3), zs_far_digits=(0.5, 0.4)), "classes": classes}
    (tmp_path / "pilot.json").write_text(json.dumps({**report, "candidates": {}}))
    assert pilot.main(["--cache", str(tmp_path), "--out", str(tmp_path), "--redecide"]) == 0
    stored = json.loads((tmp_path / "pilot.json").read_text())
    assert stored["candidates"]["digits"]["kept"] and stored["rule"]["decided_on"] == "validation"
    assert "| digits | 10 / 10 |" in (tmp_path / "pilot.md").read_text()
    assert "kept: digits" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no pilot report"):
        pilot.redecide(tmp_path / "elsewhere")
