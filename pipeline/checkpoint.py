"""The training-state format: what a checkpoint of a run holds, how it is written, and which one a resume trusts.

A checkpoint is a folder with ``state.pt`` (``torch.save`` of plain tensors and numbers, loaded with
``weights_only=True``): the student's state dict, the FT/LP-FT head's, the EMA centre, optimiser and scheduler
state, the position (step, epoch, steps done in that epoch), the RNG state and the MLflow run id — and
``complete.json``, written last: the step and each file's size and SHA-256. A folder without it, or whose files do
not match it, is *incomplete* (a writer killed mid-copy, a full disk, a truncated file) and no reader uses it.

Writing (:func:`publish`, Ray Train's ``checkpoint_upload_fn``): on a local or mounted filesystem the folder is
written under a hidden temporary name and renamed into place only when complete; on object storage, where a
rename is a copy, the state goes first and ``complete.json`` last. A write error removes what was written and
raises :class:`CheckpointWriteError`, one line naming the path and the free space.

Reading (:func:`newest_intact`): the resume, the export and every other reader take the newest checkpoint that
verifies and say which newer ones were passed over and why. Everything here works on a ``pyarrow.fs`` filesystem
(the one Ray Train stores checkpoints with); nothing imports Ray.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import torch

from pipeline import storage

STATE_FILE = "state.pt"
COMPLETE_FILE = "complete.json"  # written last: a checkpoint without it is incomplete
PARTIAL_PREFIX = ".partial-"  # a local checkpoint being written; renamed to its final name when complete
CHECKPOINT_PREFIX = "checkpoint_"
_CHUNK = 8 << 20


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, no permission, storage gone): the message names the path and
    the free space; what was written of it is already removed."""


class NoIntactCheckpoint(FileNotFoundError):
    """No checkpoint of a run verifies; ``incomplete`` holds (path, reason) of those that do not (empty: the run
    wrote none yet)."""

    incomplete: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Found:
    """The checkpoint a reader uses, and the newer ones it passed over with the reason for each."""

    path: str
    step: int
    skipped: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        """ "step 6 (…/checkpoint_x)", then why each newer one was passed over."""
        text = f"step {self.step} ({self.path})"
        for path, reason in self.skipped:
            text += f"; passed over {posixpath.basename(path)}: {reason}"
        return text


# --------------------------------------------------------------------------------------------------- capture
def capture(task: Any, optimizer: Any, scheduler: Any, position: tuple[int, int, int], run_id: str) -> dict:
    """The full training state of ``task`` (a :class:`dive.task.DiveTask`) at ``(step, epoch, done_in_epoch)``."""
    step, epoch, done_in_epoch = position
    head = task.head
    return {
        "student": task.student_model.state_dict(),
        "head": getattr(head, "module", head).state_dict() if head is not None else {},
        "center": task.center.detach().cpu(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "epoch": epoch,
        "done_in_epoch": done_in_epoch,
        "rng": torch.get_rng_state(),
        "run_id": run_id,
    }


def restore(state: dict, task: Any, optimizer: Any, scheduler: Any) -> tuple[int, int, int]:
    """Put ``state`` back into the task, optimiser, scheduler and torch RNG; returns the position."""
    task.student.load_state_dict(state["student"])
    if task.head is not None:
        task.head.load_state_dict(state["head"])
    task.center.copy_(state["center"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    return state["step"], state["epoch"], state["done_in_epoch"]


# --------------------------------------------------------------------------------------------------- writing
def save(state: dict, folder: str | Path) -> Path:
    """``state.pt``, then ``complete.json`` describing it, into a local ``folder`` (a write error: one line)."""
    path = Path(folder) / STATE_FILE
    try:
        torch.save(state, path)
        record = {"step": int(state["step"]), "files": {STATE_FILE: _describe_local(path)}}
        (Path(folder) / COMPLETE_FILE).write_text(json.dumps(record))
    except OSError as err:
        path.unlink(missing_ok=True)
        raise CheckpointWriteError(_write_failed(str(folder), err, _free_local(str(folder)))) from None
    return path


def publish(local: str | Path, fs: pafs.FileSystem, dest: str) -> str:
    """Copy the checkpoint folder ``local`` (from :func:`save`) to ``dest`` on ``fs``, all or nothing.

    A local filesystem gets it under ``.partial-<name>`` first, renamed to ``dest`` when every file is there;
    object storage gets the state first and ``complete.json`` last. Returns ``dest``.
    """
    local_fs = isinstance(fs, pafs.LocalFileSystem)
    target = (
        posixpath.join(posixpath.dirname(dest), PARTIAL_PREFIX + posixpath.basename(dest))
        if local_fs
        else dest
    )
    try:
        fs.create_dir(target)
        for name in (STATE_FILE, COMPLETE_FILE):  # complete.json last: its presence says the rest is there
            pafs.copy_files(
                str(Path(local) / name),
                posixpath.join(target, name),
                source_filesystem=pafs.LocalFileSystem(),
                destination_filesystem=fs,
            )
        if local_fs:
            fs.move(target, dest)
    except OSError as err:
        _remove(fs, target)
        raise CheckpointWriteError(_write_failed(dest, err, _free(fs, dest))) from None
    return dest


def remove_partials(fs: pafs.FileSystem, trial: str) -> list[str]:
    """Delete what killed writers left under ``trial`` (``.partial-*`` folders); returns their paths. Call it only
    when no writer of that run can still be running (before a resume starts its workers)."""
    gone = []
    for info in _children(fs, trial):
        if info.base_name.startswith(PARTIAL_PREFIX):
            _remove(fs, info.path)
            gone.append(info.path)
    return gone


# --------------------------------------------------------------------------------------------------- reading
def verify(fs: pafs.FileSystem, folder: str) -> tuple[int, str | None]:
    """(step, None) for a complete checkpoint, or (-1, why it is not)."""
    try:
        with fs.open_input_stream(posixpath.join(folder, COMPLETE_FILE)) as fh:
            record = json.loads(fh.read())
        step, files = int(record["step"]), dict(record["files"])
    except FileNotFoundError:
        return -1, f"no {COMPLETE_FILE} (its write never finished)"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return -1, f"unreadable {COMPLETE_FILE} ({err})"
    for name, want in files.items():
        try:
            got = _describe(fs, posixpath.join(folder, name))
        except FileNotFoundError:
            return -1, f"{name} is missing"
        except OSError as err:
            return -1, f"{name} is unreadable ({err})"
        if got["bytes"] != want.get("bytes"):
            return -1, f"{name} has {got['bytes']} of its {want.get('bytes')} bytes"
        if got["sha256"] != want.get("sha256"):
            return -1, f"{name} does not match its SHA-256 (corrupted)"
    return step, None


def newest_intact(fs: pafs.FileSystem, trial: str) -> Found:
    """The newest (by step) checkpoint under the Ray Train run folder ``trial`` that verifies, naming the newer
    ones passed over (Ray Train names checkpoint folders by time, so names order them). Raises
    :class:`NoIntactCheckpoint` when none does."""
    intact, bad = [], []
    for info in _children(fs, trial):
        if info.type == pafs.FileType.Directory and info.base_name.startswith(CHECKPOINT_PREFIX):
            step, reason = verify(fs, info.path)
            if reason is None:
                intact.append((step, info.path))
            else:
                bad.append((info.path, reason))
    if not intact:
        why = "; ".join(f"{posixpath.basename(p)}: {r}" for p, r in sorted(bad)) or "none written yet"
        err = NoIntactCheckpoint(f"{trial}: no intact checkpoint ({why})")
        err.incomplete = tuple(sorted(bad))
        raise err
    step, path = max(intact)
    return Found(path, step, tuple((p, r) for p, r in sorted(bad) if p > path))


def load(folder: str | Path, device: torch.device | str = "cpu", fs: pafs.FileSystem | None = None) -> dict:
    """The state in a checkpoint folder (local by default), read with ``weights_only=True``."""
    if fs is None or isinstance(fs, pafs.LocalFileSystem):
        return torch.load(Path(folder) / STATE_FILE, map_location=device, weights_only=True)
    with fs.open_input_file(posixpath.join(str(folder), STATE_FILE)) as fh:
        return torch.load(fh, map_location=device, weights_only=True)


def load_newest(fs: pafs.FileSystem, trial: str, device: torch.device | str = "cpu") -> tuple[Found, dict]:
    """:func:`newest_intact` and its state."""
    found = newest_intact(fs, trial)
    return found, load(found.path, device, fs)


def train_run_name(run_id: str) -> str:
    """The Ray Train run name of the MLflow run ``run_id``: fixed by it, so a resume finds the run's checkpoints."""
    return f"dive-{run_id[:12]}"


def run_folder(storage_path: str, run_id: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) of the checkpoints of the MLflow run ``run_id`` under ``run.storage_path`` (a
    folder or a URI, resolved as every other location is: :func:`pipeline.storage.resolve`)."""
    fs, root = storage.resolve(storage_path)
    return fs, posixpath.join(root, train_run_name(run_id))


# --------------------------------------------------------------------------------------------------- helpers
def _children(fs: pafs.FileSystem, folder: str) -> list[pafs.FileInfo]:
    try:
        return fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    except OSError:
        return []


def _remove(fs: pafs.FileSystem, path: str) -> None:
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            fs.delete_dir(path)
        elif info.type == pafs.FileType.File:
            fs.delete_file(path)
    except OSError:
        pass  # best effort: the error that brought us here is the one to report


def _sha256(fh: Any) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    while chunk := fh.read(_CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def _describe_local(path: Path) -> dict[str, Any]:
    with path.open("rb") as fh:
        size, sha = _sha256(fh)
    return {"bytes": size, "sha256": sha}


def _describe(fs: pafs.FileSystem, path: str) -> dict[str, Any]:
    with fs.open_input_stream(path) as fh:
        size, sha = _sha256(fh)
    return {"bytes": size, "sha256": sha}


def _free_local(path: str) -> str:
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return f"{shutil.disk_usage(probe).free / 2**20:.1f} MiB free there"
    except OSError:
        return "free space unknown"


def _free(fs: pafs.FileSystem, path: str) -> str:
    return _free_local(path) if isinstance(fs, pafs.LocalFileSystem) else ""


def _write_failed(path: str, err: OSError, free: str) -> str:
    """One line: the checkpoint, what failed (an object store's error in words: :func:`pipeline.storage.explain`),
    the free space where a disk reports it."""
    if free:
        reason = f"{err.strerror or str(err) or type(err).__name__} ({free})"
    else:
        reason = storage.explain(err)
    return f"could not write the checkpoint {path}: {reason}; the last complete checkpoint is kept"
