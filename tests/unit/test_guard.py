"""The non-finite guard: a NaN step changes nothing and is counted; too many in a row fail, naming the term."""

from __future__ import annotations

import copy

import pytest
import torch

from dive.config import ConfigError, LossSettings, OptimSettings, load_config, validate
from dive.guard import NonFiniteError, NonFiniteGuard, grads_finite, nonfinite_terms
from dive.step import build_task, optimizer_step
from tests.helpers import make_batch


def test_nonfinite_terms_and_grads_are_found():
    terms = {
        "loss": torch.tensor(float("nan")),
        "loss_cl": torch.tensor(1.0),
        "loss_avl": torch.tensor(float("inf")),
    }
    assert nonfinite_terms(terms) == ["loss", "loss_avl"]
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.tensor([0.0, float("nan"), 1.0])
    assert not grads_finite([p]) and grads_finite([torch.nn.Parameter(torch.zeros(2))])


def test_guard_skips_counts_and_fails_after_the_limit_naming_step_and_term():
    guard = NonFiniteGuard(max_consecutive=3)
    assert guard.check(1, ["loss_avl"], grads_ok=False) and guard.check(2, [], grads_ok=False)
    assert not guard.check(3, [], grads_ok=True) and guard.consecutive == 0 and guard.total == 2
    guard.check(4, ["loss"], grads_ok=False)
    guard.check(5, ["loss"], grads_ok=False)
    with pytest.raises(NonFiniteError, match=r"step 6: 3 consecutive steps with a non-finite loss_pvl"):
        guard.check(6, ["loss_pvl"], grads_ok=False)


def test_a_nan_step_is_skipped_whole_weights_optimiser_and_centre_unchanged(tiny_bundle):
    state = build_task(
        copy.deepcopy(tiny_bundle),
        LossSettings(lambda_avl=10, lambda_pvl=10),
        lr=1e-3,
        warmup=1,
        total_steps=10,
    )
    task, opt, sched = state.task, state.optimizer, state.scheduler
    grad_clip = OptimSettings().grad_clip
    guard = NonFiniteGuard(max_consecutive=2)
    task.train()

    def step(batch, i):
        return optimizer_step(task, [batch], opt, sched, i, grad_clip=grad_clip, guard=guard)

    good = make_batch(tiny_bundle)
    step(good, 0)  # a real step first
    before = {k: v.clone() for k, v in task.state_dict().items()}
    lr = sched.get_last_lr()[0]
    bad = {**good, "ref_image": torch.full_like(good["ref_image"], float("nan"))}
    terms = step(bad, 1)
    assert "loss" in nonfinite_terms(terms) and guard.total == 1
    after = task.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights, logit scale and the EMA centre
    assert sched.get_last_lr()[0] == lr and all(p.grad is None for p in task.parameters())
    step(good, 2)  # finite again: resets
    assert guard.consecutive == 0 and not torch.equal(before["center"], task.state_dict()["center"])
    step(bad, 3)
    with pytest.raises(NonFiniteError, match="step 4"):
        step(bad, 4)


@pytest.mark.parametrize("override", ["loss.lambda_avl=inf", "optim.lr=nan", "loss.ema_momentum=nan"])
def test_every_float_in_the_config_must_be_finite(override):
    with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.") + ".*a finite number"):
        validate(load_config(overrides=[override]), check_paths=False)
