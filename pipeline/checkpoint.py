"""The training-state format: what a checkpoint of a run holds, written and read in this one place.

A checkpoint is a folder with ``state.pt`` (``torch.save`` of plain tensors and numbers, loaded with
``weights_only=True``): the student's state dict, the FT/LP-FT head's, the EMA centre, optimiser and scheduler
state, the position (step, epoch, steps done in that epoch), the RNG state and the MLflow run id. Ray Train moves
the folder around (``ray.train.Checkpoint``); nothing here imports Ray.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

STATE_FILE = "state.pt"


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


def save(state: dict, folder: str | Path) -> Path:
    path = Path(folder) / STATE_FILE
    torch.save(state, path)
    return path


def load(folder: str | Path, device: torch.device | str = "cpu") -> dict:
    return torch.load(Path(folder) / STATE_FILE, map_location=device, weights_only=True)


def load_checkpoint(checkpoint: Any, device: torch.device | str = "cpu") -> dict:
    """The state inside a ``ray.train.Checkpoint`` (anything with ``as_directory()``)."""
    with checkpoint.as_directory() as folder:
        return load(folder, device)


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
