"""WiSE-FT: weight-space ensembling of the pre-trained and the fine-tuned model.

θ_α = (1 − α)·θ_pre + α·θ_ft over the whole state dict (both towers and the logit scale), as in Wortsman
et al. Because fine-tuning starts from θ_pre, both ends lie in one loss basin and the interpolation trades ID
accuracy (α → 1) against the pre-trained model's robustness (α → 0).
"""

from __future__ import annotations

import copy
import numbers
from collections.abc import Mapping

import torch
from torch import nn

# Added to state-dict keys by DistributedDataParallel / DataParallel and by torch.compile respectively.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def strip_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove leading DDP / torch.compile key prefixes, so wrapped and bare models' weights line up."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        bare = key
        while bare.startswith(WRAPPER_PREFIXES):
            bare = bare.split(".", 1)[1]
        if bare in out:
            raise ValueError(
                f"state dict key {key!r} collides with another key after stripping prefixes: {bare!r}"
            )
        out[bare] = value
    return out


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DDP / DataParallel and torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def _check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"alpha: expected a float in [0, 1], got {type(alpha).__name__}")
    if not 0.0 <= alpha <= 1.0:  # also rejects NaN
        raise ValueError(f"alpha must be in [0, 1] (0 = pre-trained, 1 = fine-tuned), got {alpha}")
    return float(alpha)


def _check_keys(pre: Mapping[str, torch.Tensor], ft: Mapping[str, torch.Tensor]) -> None:
    missing, extra = sorted(ft.keys() - pre.keys()), sorted(pre.keys() - ft.keys())
    if missing or extra:
        raise ValueError(
            "theta_pre and theta_ft must have the same keys: "
            f"missing from theta_pre: {missing or 'none'}; missing from theta_ft: {extra or 'none'}"
        )
    for key, value in ft.items():
        if pre[key].shape != value.shape:
            raise ValueError(
                f"shape mismatch for {key!r}: "
                f"theta_pre {tuple(pre[key].shape)} vs theta_ft {tuple(value.shape)}"
            )


def interpolate(
    theta_pre: Mapping[str, torch.Tensor], theta_ft: Mapping[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """(1 − α)·θ_pre + α·θ_ft for every floating tensor; other tensors (integer buffers) come from θ_ft.

    α = 0 and α = 1 return copies of the endpoints, bit for bit. Results have θ_ft's dtype and device; low
    precision tensors are blended in float32.
    """
    alpha = _check_alpha(alpha)
    pre, ft = strip_prefixes(theta_pre), strip_prefixes(theta_ft)
    _check_keys(pre, ft)
    out: dict[str, torch.Tensor] = {}
    for key, target in ft.items():
        target = target.detach()
        if not target.is_floating_point() or alpha == 1.0:
            out[key] = target.clone()
        elif alpha == 0.0:
            out[key] = pre[key].detach().to(device=target.device, dtype=target.dtype, copy=True)
        else:
            work = torch.promote_types(target.dtype, torch.float32)
            start = pre[key].detach().to(device=target.device, dtype=work)
            out[key] = torch.lerp(start, target.to(work), alpha).to(target.dtype)
    return out


def wise_model(pre: nn.Module, ft: nn.Module, alpha: float) -> nn.Module:
    """A new model (a deep copy of unwrapped ``ft``) with the α-interpolated weights; inputs are untouched."""
    weights = interpolate(pre.state_dict(), ft.state_dict(), alpha)
    model = copy.deepcopy(unwrap(ft))
    model.load_state_dict(weights, strict=True)
    return model
