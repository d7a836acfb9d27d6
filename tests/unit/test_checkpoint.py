"""The training-state format (pipeline.checkpoint): capture → save → load → restore gives the same state; a
checkpoint is published all or nothing, and readers take the newest one that verifies."""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pyarrow.fs as pafs
import pytest
import torch

from dive.config import LossSettings
from dive.step import build_task
from pipeline import checkpoint


def _setup(bundle):
    torch.manual_seed(0)
    state = build_task(
        bundle, LossSettings(), cached_teacher=True, lr=1e-3, weight_decay=0.1, warmup=2, total_steps=10
    )
    return state.task, state.optimizer, state.scheduler


def test_state_round_trips_through_a_checkpoint_folder(tiny_bundle, tmp_path):
    import copy

    task, optimizer, scheduler = _setup(copy.deepcopy(tiny_bundle))
    with torch.no_grad():
        task.center.fill_(0.25)
        next(task.student.parameters()).add_(1.0)
    optimizer.step()
    scheduler.step()
    state = checkpoint.capture(task, optimizer, scheduler, (7, 1, 3), "run-1")
    checkpoint.save(state, tmp_path)
    expected_rng = torch.get_rng_state()
    torch.rand(5)  # move the RNG on: restore must put it back

    fresh, fresh_opt, fresh_sched = _setup(copy.deepcopy(tiny_bundle))
    loaded = checkpoint.load(tmp_path)
    assert checkpoint.restore(loaded, fresh, fresh_opt, fresh_sched) == (7, 1, 3)
    assert loaded["run_id"] == "run-1"
    assert torch.equal(fresh.center, task.center)
    for a, b in zip(fresh.student.state_dict().values(), task.student.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert fresh_sched.state_dict() == scheduler.state_dict()
    assert torch.equal(torch.get_rng_state(), expected_rng)


# --------------------------------------------------------------------------------------------------- publishing
LOCAL = pafs.LocalFileSystem()


def _publish(trial: Path, name: str, step: int, payload: int = 1000) -> Path:
    """A checkpoint of ``step`` published under ``trial`` the way a worker does (save locally, then publish)."""
    local = trial.parent / f"local-{name}"
    local.mkdir(parents=True)
    checkpoint.save({"step": step, "weights": torch.arange(payload, dtype=torch.float32)}, local)
    return Path(checkpoint.publish(local, LOCAL, str(trial / name)))


def test_a_published_checkpoint_verifies_and_the_newest_by_step_is_found(tmp_path):
    trial = tmp_path / "dive-run"
    for i, step in enumerate((3, 6, 9)):
        _publish(trial, f"checkpoint_2026-01-0{i + 1}", step)
    assert sorted(p.name for p in trial.iterdir()) == [f"checkpoint_2026-01-0{i}" for i in (1, 2, 3)]
    assert checkpoint.verify(LOCAL, str(trial / "checkpoint_2026-01-03")) == (9, None)
    found = checkpoint.newest_intact(LOCAL, str(trial))
    assert (found.step, Path(found.path).name, found.skipped) == (9, "checkpoint_2026-01-03", ())


@pytest.mark.parametrize(
    "damage, reason",
    [
        ("truncate", r"state\.pt has \d+ of its \d+ bytes"),
        ("flip", r"state\.pt does not match its SHA-256"),
        ("no-marker", r"no complete\.json \(its write never finished\)"),
        ("no-state", r"state\.pt is missing"),
    ],
)
def test_a_damaged_latest_checkpoint_is_passed_over_for_the_newest_intact_one(tmp_path, damage, reason):
    trial = tmp_path / "dive-run"
    _publish(trial, "checkpoint_a", 6)
    latest = _publish(trial, "checkpoint_b", 9)
    state = latest / checkpoint.STATE_FILE
    if damage == "truncate":
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    elif damage == "flip":
        data = bytearray(state.read_bytes())
        data[len(data) // 2] ^= 0xFF
        state.write_bytes(bytes(data))
    elif damage == "no-marker":
        (latest / checkpoint.COMPLETE_FILE).unlink()
    else:
        state.unlink()
    found, loaded = checkpoint.load_newest(LOCAL, str(trial))
    assert found.step == loaded["step"] == 6 and Path(found.path).name == "checkpoint_a"
    ((path, why),) = found.skipped
    assert Path(path).name == "checkpoint_b"
    assert re.search(reason, why), why
    assert "step 6" in found.describe() and "passed over checkpoint_b" in found.describe()


def test_no_intact_checkpoint_is_one_error_naming_each_and_why(tmp_path):
    trial = tmp_path / "dive-run"
    with pytest.raises(checkpoint.NoIntactCheckpoint, match="none written yet") as none:
        checkpoint.newest_intact(LOCAL, str(trial))
    assert none.value.incomplete == ()
    (_publish(trial, "checkpoint_a", 3) / checkpoint.COMPLETE_FILE).unlink()
    with pytest.raises(checkpoint.NoIntactCheckpoint, match=r"checkpoint_a: no complete\.json") as bad:
        checkpoint.newest_intact(LOCAL, str(trial))
    assert [Path(p).name for p, _ in bad.value.incomplete] == ["checkpoint_a"]


def test_a_write_error_removes_what_was_written_names_the_path_and_keeps_the_last_checkpoint(
    tmp_path, monkeypatch
):
    """Disk full halfway through the state file: one error naming the path and the free space; no partial folder
    left to fill the volume; the previous checkpoint stays the newest intact one."""
    trial = tmp_path / "dive-run"
    _publish(trial, "checkpoint_a", 6)
    real_copy = pafs.copy_files

    def disk_full(src, dest, **kwargs):
        Path(dest).write_bytes(Path(src).read_bytes()[:100])  # what got out before the disk filled
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pafs, "copy_files", disk_full)
    with pytest.raises(checkpoint.CheckpointWriteError) as err:
        _publish(trial, "checkpoint_b", 9)
    monkeypatch.setattr(pafs, "copy_files", real_copy)
    message = str(err.value)
    assert str(trial / "checkpoint_b") in message and "No space left on device" in message
    assert "MiB free there" in message and "\n" not in message
    assert sorted(p.name for p in trial.iterdir()) == ["checkpoint_a"]  # nothing partial left behind
    assert checkpoint.newest_intact(LOCAL, str(trial)).step == 6


def test_a_write_error_while_saving_locally_is_the_same_one_line(tmp_path, monkeypatch):
    def disk_full(_state, path):
        Path(path).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(
        checkpoint.CheckpointWriteError, match=r"could not write the checkpoint .*No space left"
    ):
        checkpoint.save({"step": 1}, tmp_path)
    assert list(tmp_path.iterdir()) == []


_KILLED_WRITER = """
import sys, time
from pathlib import Path
import pyarrow.fs as pafs
from pipeline import checkpoint

trial, local = Path(sys.argv[1]), Path(sys.argv[2])
real_copy = pafs.copy_files

def stalled(src, dest, **kwargs):  # half the state file is out, then the writer hangs until it is killed
    Path(dest).write_bytes(Path(src).read_bytes()[:1000])
    Path(sys.argv[3]).write_text("mid-write")
    time.sleep(600)

pafs.copy_files = stalled
checkpoint.publish(local, pafs.LocalFileSystem(), str(trial / "checkpoint_b"))
"""


def test_a_writer_killed_mid_checkpoint_leaves_no_checkpoint_a_reader_would_take(tmp_path):
    trial = tmp_path / "dive-run"
    _publish(trial, "checkpoint_a", 6)
    local = tmp_path / "local-b"
    local.mkdir()
    checkpoint.save({"step": 9, "weights": torch.zeros(100_000)}, local)
    ready = tmp_path / "ready"
    writer = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_KILLED_WRITER), str(trial), str(local), str(ready)],
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and writer.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), "the writer never reached the middle of its checkpoint"
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait()
    names = sorted(p.name for p in trial.iterdir())
    assert names == [".partial-checkpoint_b", "checkpoint_a"]  # the half-written one never took its name
    assert checkpoint.newest_intact(LOCAL, str(trial)).step == 6
    assert [Path(p).name for p in checkpoint.remove_partials(LOCAL, str(trial))] == [".partial-checkpoint_b"]
    assert sorted(p.name for p in trial.iterdir()) == ["checkpoint_a"]


def test_export_takes_the_newest_intact_checkpoint_and_names_the_one_passed_over(tmp_path, capsys):
    from pipeline.export import latest_checkpoint

    storage, run_dir = tmp_path / "ray", tmp_path / "out" / "0123456789abcdef"
    trial = storage / checkpoint.train_run_name(run_dir.name)
    _publish(trial, "checkpoint_a", 6)
    latest = _publish(trial, "checkpoint_b", 9)
    (latest / checkpoint.STATE_FILE).write_bytes(b"PK\x03\x04 truncated")
    cfg = SimpleNamespace(run=SimpleNamespace(storage_path=str(storage)))
    folder, state = latest_checkpoint(run_dir, cfg)
    assert state["step"] == 6 and Path(folder).name == "checkpoint_a"
    assert "passed over" in capsys.readouterr().err
