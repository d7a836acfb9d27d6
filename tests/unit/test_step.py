"""dive.step: what build_task assembles for each method, and that one optimizer_step trains the student, advances
the schedule and moves the centre — the step the worker and the step benchmark both take, without Ray."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch

from dive.config import LossSettings, Method
from dive.guard import NonFiniteGuard
from dive.step import build_task, optimizer_step
from tests.helpers import make_batch


@pytest.mark.parametrize(
    "method, cached, has_teacher",
    [(Method.dive, False, True), (Method.dive, True, False), (Method.flyp, False, False)],
)
def test_build_task_makes_a_frozen_teacher_only_when_the_method_runs_one(
    tiny_bundle, method, cached, has_teacher
):
    state = build_task(copy.deepcopy(tiny_bundle), LossSettings(method=method), cached_teacher=cached)
    assert (state.task.teacher is not None) == has_teacher
    if has_teacher:
        assert not any(p.requires_grad for p in state.task.teacher.parameters())
    assert state.scheduler.optimizer is state.optimizer
    trained = {id(p) for g in state.optimizer.param_groups for p in g["params"]}
    assert trained == {id(p) for p in state.task.parameters() if p.requires_grad}


def test_build_task_sets_lr_weight_decay_warmup_and_temperature(tiny_bundle):
    state = build_task(
        copy.deepcopy(tiny_bundle),
        LossSettings(temperature=0.05, learn_temperature=False),
        lr=0.01,
        weight_decay=0.2,
        warmup=4,
        total_steps=8,
    )
    assert state.scheduler.get_last_lr()[0] == pytest.approx(0.01 / 4)  # first warm-up step
    assert {g["weight_decay"] for g in state.optimizer.param_groups} == {0.2, 0.0}
    scale = state.task.student.logit_scale
    assert scale.item() == pytest.approx(torch.log(torch.tensor(1 / 0.05)).item()) and not scale.requires_grad


def test_one_step_changes_the_student_steps_the_schedule_and_moves_the_centre(tiny_bundle):
    state = build_task(copy.deepcopy(tiny_bundle), LossSettings(), lr=1e-3, warmup=2, total_steps=10)
    task = state.task.train()
    before = {k: v.clone() for k, v in task.student.state_dict().items()}
    lr = state.scheduler.get_last_lr()[0]
    batch = make_batch(tiny_bundle)
    halves = [
        {k: v[: len(v) // 2] for k, v in batch.items()},
        {k: v[len(v) // 2 :] for k, v in batch.items()},
    ]
    terms = optimizer_step(task, halves, state.optimizer, state.scheduler, 0, grad_clip=1.0)
    assert torch.isfinite(terms["loss"]) and {"loss", "loss_cl", "loss_avl", "loss_pvl"} <= set(terms)
    after = task.student.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert state.scheduler.get_last_lr()[0] > lr  # warm-up: the second step's rate
    assert all(p.grad is None for p in task.parameters())
    # The teacher starts as the student's copy: the centre moves once the student has moved away from it.
    optimizer_step(task, [batch], state.optimizer, state.scheduler, 1)
    assert task.center.norm() > 0


def test_a_non_finite_step_changes_nothing(tiny_bundle):
    state = build_task(copy.deepcopy(tiny_bundle), LossSettings(), lr=1e-3, total_steps=10)
    task = state.task.train()
    before = {k: v.clone() for k, v in task.state_dict().items()}
    batch = make_batch(tiny_bundle)
    bad = {**batch, "id_image": torch.full_like(batch["id_image"], float("nan"))}
    guard = NonFiniteGuard(max_consecutive=5)
    optimizer_step(task, [bad], state.optimizer, state.scheduler, 0, guard=guard)
    assert guard.total == 1 and all(torch.equal(v, task.state_dict()[k]) for k, v in before.items())


def test_dive_imports_without_ray_or_mlflow():
    code = (
        "import sys, dive.step, dive.config, dive.task, dive.models; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'mlflow')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
