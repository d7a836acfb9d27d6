"""Loss terms of DiVE and its baselines, as pure functions (no state; the task holds the EMA centre).

Shapes: ``u``, ``v`` are difference vectors of the reference batch, ``(B', D)``; ``center`` is ``(D,)``.
Squared norms are summed over the D dimensions and averaged over the batch (docs/method.md §2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from dive.distributed import rank_and_world


def _sq_norm(x: torch.Tensor) -> torch.Tensor:
    return x.pow(2).sum(dim=-1)


def avl(u: torch.Tensor, v: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """Average vector loss: pull every image and text difference vector toward the shared centre m.

    L_avl = (1/B') Σ_j (‖u_j − m‖² + ‖v_j − m‖²). The centre is a statistic, never a parameter: it is detached
    here so that no gradient can reach it even if a caller passes a tensor that requires grad.
    """
    m = center.detach()
    return (_sq_norm(u - m) + _sq_norm(v - m)).mean()


def pvl(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Pairwise vector loss: each image and its caption move by the same vector. L_pvl = (1/B') Σ_j ‖u_j − v_j‖²."""
    return _sq_norm(u - v).mean()


@torch.no_grad()
def ema_center(center: torch.Tensor, u: torch.Tensor, v: torch.Tensor, momentum: float) -> torch.Tensor:
    """One EMA update of the centre: m ← α·m + (1−α)·mean({u_j} ∪ {v_j}). Returns a new, detached tensor.

    Callers that train on several ranks pass the vectors gathered from all ranks so every rank holds the same m.
    """
    batch_mean = torch.cat([u.detach(), v.detach()], dim=0).mean(dim=0)
    return momentum * center.detach() + (1.0 - momentum) * batch_mean.to(center.dtype)


def contrastive(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """FLYP / CLIP symmetric InfoNCE over the **global** batch.

    When torch.distributed is initialised, features of all ranks are gathered with gradient (open_clip's
    ``ClipLoss(gather_with_grad=True)``); ``local_loss`` computes only this rank's rows, which averages over ranks
    to the same global loss at a fraction of the cost. Same-class pairs in a batch are negatives, as in FLYP.
    """
    rank, world = rank_and_world()
    loss_fn = ClipLoss(local_loss=True, gather_with_grad=True, rank=rank, world_size=world)
    return loss_fn(image_features, text_features, logit_scale)


def replay(
    ref_image_features: torch.Tensor, ref_text_features: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Contrastive replay on the reference batch (the FLYP + replay baseline, standing in for ARF)."""
    return contrastive(ref_image_features, ref_text_features, logit_scale)


def snd(student_image_features: torch.Tensor, teacher_image_features: torch.Tensor) -> torch.Tensor:
    """SnD-style feature distillation: mean ‖f_ft(x) − f_pre(x)‖², i.e. the difference vectors forced to zero."""
    return _sq_norm(student_image_features - teacher_image_features.detach()).mean()


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Plain cross-entropy through a classification head (FT and LP-FT baselines)."""
    return F.cross_entropy(logits, labels)
