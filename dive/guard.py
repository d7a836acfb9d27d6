"""The non-finite guard: a step whose loss or gradients are not finite is skipped, not applied.

One NaN in a loss term, applied, turns the weights, the optimiser state and DiVE's EMA centre into NaN for the
rest of the run, silently. :class:`NonFiniteGuard` tells the training loop to skip such a step (no optimiser
step, no schedule step, no centre update), counts the skips, and fails the run with a message naming the step and
the term after ``max_consecutive`` skips in a row: a run that cannot take a finite step is broken, not unlucky.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch


class NonFiniteError(RuntimeError):
    """Too many consecutive non-finite steps."""


def nonfinite_terms(terms: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the loss terms that are NaN or ±inf."""
    return sorted(k for k, v in terms.items() if not bool(torch.isfinite(v.detach()).all()))


def grads_finite(params: Iterable[torch.nn.Parameter]) -> bool:
    """True when every gradient is finite (parameters without a gradient are ignored)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return True
    norms = torch._foreach_norm(grads)  # one fused pass; a NaN or inf anywhere makes its norm non-finite
    return bool(torch.isfinite(torch.stack(norms)).all())


@dataclass
class NonFiniteGuard:
    """Counts skipped steps; raises after ``max_consecutive`` in a row (0: never raise)."""

    max_consecutive: int = 10
    total: int = 0
    consecutive: int = 0
    last_terms: list[str] = field(default_factory=list)

    def check(self, step: int, bad_terms: list[str], grads_ok: bool) -> bool:
        """Record this step's verdict; True when it must be skipped."""
        if not bad_terms and grads_ok:
            self.consecutive = 0
            return False
        self.total += 1
        self.consecutive += 1
        self.last_terms = bad_terms or ["gradients"]
        if self.max_consecutive and self.consecutive >= self.max_consecutive:
            raise NonFiniteError(
                f"step {step}: {self.consecutive} consecutive steps with a non-finite "
                f"{', '.join(self.last_terms)} (optim.max_nonfinite_steps = {self.max_consecutive}); "
                "lower optim.lr or the loss weights, or check the data for NaN pixels"
            )
        return True
