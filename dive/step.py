"""One optimiser step of fine-tuning, in plain PyTorch: what is trained, and how one step of it is taken.

:func:`build_task` assembles the student, the frozen teacher, the task, AdamW and its schedule; :func:`optimizer_step`
takes one step over a list of micro-batches. The Ray Train worker, the step benchmark and the tests share both, so
what a benchmark times is the step a run takes — with no Ray or MLflow imported.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dive.bundle import ModelBundle
from dive.config import USES_TEACHER, LossSettings, ModelSettings
from dive.distributed import mean_across_ranks
from dive.guard import NonFiniteGuard, grads_finite, nonfinite_terms
from dive.models import build_model, clamp_logit_scale, configure_temperature, embed_dim, frozen_teacher
from dive.optim import build_optimizer, cosine_with_warmup
from dive.task import DiveTask

_log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """What one fine-tuning run trains and steps: the task (student, teacher, centre), AdamW and its schedule."""

    task: DiveTask
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    bundle: ModelBundle  # the student's bundle: its tokenizer and preprocessing


def build_task(
    model: ModelBundle | ModelSettings,
    loss: LossSettings,
    *,
    cached_teacher: bool = False,
    head_weights: torch.Tensor | None = None,
    freeze_batchnorm: bool = True,
    lr: float = 1e-5,
    weight_decay: float = 0.1,
    warmup: int = 0,
    total_steps: int = 1,
    device: torch.device | str = "cpu",
) -> TrainState:
    """The student (``model``, built here from a config; a bundle's model is trained in place) with ``loss``'s
    temperature, a frozen copy of it as the teacher when the method uses one and its embeddings are not cached
    (``cached_teacher``), the task on ``device``, AdamW and a cosine schedule with ``warmup`` over ``total_steps``.

    ``head_weights``: the zero-shot head (C×D) FT and LP-FT start their linear head from."""
    bundle = model if isinstance(model, ModelBundle) else build_model(model)
    student = bundle.model
    configure_temperature(student, loss.temperature, loss.learn_temperature)
    teacher = frozen_teacher(student) if loss.method in USES_TEACHER and not cached_teacher else None
    task = DiveTask(
        student,
        teacher,
        loss,
        embed_dim(student),
        head_weights=head_weights,
        freeze_batchnorm=freeze_batchnorm,
    ).to(device)
    optimizer = build_optimizer(task.named_parameters(), lr, weight_decay)
    return TrainState(task, optimizer, cosine_with_warmup(optimizer, warmup, total_steps), bundle)


def optimizer_step(
    task: DiveTask,
    micro: Sequence[Mapping[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    step: int,
    *,
    grad_clip: float = 0.0,
    autocast: contextlib.AbstractContextManager[Any] | None = None,
    guard: NonFiniteGuard | None = None,
) -> dict[str, torch.Tensor]:
    """Accumulate gradients over the micro-batches (syncing DDP only on the last), step, then update m.

    ``grad_clip`` > 0 clips the gradients' norm; ``autocast`` wraps each forward (bf16 on a GPU). A step whose
    loss terms or gradients are not finite (on any rank) is skipped whole — no optimiser step, no schedule step,
    no centre update — and counted by ``guard``, which fails the run after too many in a row. Returns the loss
    terms averaged over the micro-batches."""
    totals: dict[str, torch.Tensor] = {}
    for i, batch in enumerate(micro):
        last = i == len(micro) - 1
        no_sync = getattr(task.student, "no_sync", None)  # DDP: gradients sync on the last micro-batch only
        sync = no_sync() if no_sync is not None and not last else contextlib.nullcontext()
        with sync:
            with autocast if autocast is not None else contextlib.nullcontext():
                terms = task(batch, step=step)
            (terms["loss"] / len(micro)).backward()
        for k, v in terms.items():
            totals[k] = totals.get(k, 0.0) + v.detach().float() / len(micro)
    trainable = [p for p in task.parameters() if p.requires_grad]
    if guard is not None and _skipped(task, optimizer, totals, trainable, step, guard):
        return totals
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(trainable, grad_clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    clamp_logit_scale(task.student_model)
    task.update_center()  # after the optimiser step (docs/method.md §2), all-reduced across ranks
    return totals


def _skipped(
    task: DiveTask,
    optimizer: torch.optim.Optimizer,
    totals: Mapping[str, torch.Tensor],
    trainable: list[torch.nn.Parameter],
    step: int,
    guard: NonFiniteGuard,
) -> bool:
    """True (and the gradients and pending centre update dropped) when any rank saw a non-finite term or
    gradient; every rank joins the all-reduce, so all skip together."""
    bad = nonfinite_terms(totals)
    local = float(bool(bad) or not grads_finite(trainable))
    grads_ok = mean_across_ranks(torch.tensor(local, device=totals["loss"].device)).item() == 0.0
    if not guard.check(step, bad, grads_ok=grads_ok):
        return False
    _log.warning("[dive] step %d skipped: non-finite %s", step, ", ".join(guard.last_terms))
    optimizer.zero_grad(set_to_none=True)
    task.discard_pending()
    return True
