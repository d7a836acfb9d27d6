"""AdamW with CLIP's parameter groups and a cosine schedule with linear warm-up (FLYP's recipe)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn


def _no_decay(name: str, p: torch.Tensor) -> bool:
    # open_clip's rule: no weight decay on gains, biases, norms, embeddings' scale and the logit scale.
    return p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name


def build_optimizer(
    named_params: Iterable[tuple[str, nn.Parameter]], lr: float, weight_decay: float, **adamw: Any
) -> torch.optim.AdamW:
    """AdamW over the parameters that require grad, split into decay / no-decay groups (``adamw``: betas, eps).

    One builder for every training loop here: the fine-tuning worker, the demo teacher, the EmojiShift
    alignment."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in named_params:
        if p.requires_grad:
            (no_decay if _no_decay(name, p) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, **adamw)


def cosine_with_warmup(
    optimizer: torch.optim.Optimizer, warmup: int, total: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up for ``warmup`` steps, then cosine decay to 0 at ``total`` steps."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(warmup, 1)
        progress = (step - warmup) / max(total - warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
