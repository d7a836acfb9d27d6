"""The few torch.distributed helpers the method needs. Plain torch: they are no-ops in a single process."""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    if is_distributed():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0, without gradient (for statistics such as the EMA centre)."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def mean_across_ranks(x: torch.Tensor) -> torch.Tensor:
    """Average a (detached) tensor over ranks, e.g. a loss value for logging."""
    if not is_distributed():
        return x
    y = x.detach().clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y / dist.get_world_size()
