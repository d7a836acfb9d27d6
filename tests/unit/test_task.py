"""DiveTask: the frozen teacher, the EMA centre and the method dispatch behave as docs/method.md says."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from dive.config import LossSettings, Method
from dive.models import configure_temperature, embed_dim, frozen_teacher
from dive.task import DiveTask
from tests.helpers import make_batch


def _task(bundle, method: Method = Method.dive, **loss_kwargs) -> DiveTask:
    torch.manual_seed(0)
    student = copy.deepcopy(bundle.model)
    head = None
    if method in (Method.ft, Method.lpft):
        head = torch.nn.functional.normalize(torch.randn(3, embed_dim(student)), dim=-1)
    cfg = LossSettings(method=method, **loss_kwargs)
    return DiveTask(student, frozen_teacher(student), cfg, embed_dim(student), head_weights=head)


def _train(task: DiveTask, batch, steps: int = 3, lr: float = 1e-3) -> list[dict[str, torch.Tensor]]:
    opt = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=lr)
    task.train()
    history = []
    for step in range(steps):
        terms = task(batch, step=step)
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        task.update_center()
        history.append(terms)
    return history


def test_at_step_zero_student_equals_teacher_so_avl_and_pvl_vanish(tiny_bundle):
    task = _task(tiny_bundle).train()
    terms = task(make_batch(tiny_bundle))
    assert terms["loss_avl"].item() == pytest.approx(0.0, abs=1e-9)
    assert terms["loss_pvl"].item() == pytest.approx(0.0, abs=1e-9)
    assert terms["loss"].item() == pytest.approx(terms["loss_cl"].item(), rel=1e-5)


def test_teacher_is_bit_identical_after_training_and_stays_in_eval_mode(tiny_bundle):
    task = _task(tiny_bundle, lambda_avl=10.0, lambda_pvl=10.0)
    before = {k: v.clone() for k, v in task.teacher.state_dict().items()}
    history = _train(task, make_batch(tiny_bundle), steps=3)
    assert not task.teacher.training and task.student.training
    assert all(not p.requires_grad and p.grad is None for p in task.teacher.parameters())
    for k, v in task.teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    # The student did move, so the difference vectors and both DiVE terms are no longer zero.
    assert history[-1]["loss_avl"] > 0 and history[-1]["loss_pvl"] > 0
    assert any(not torch.equal(p, before[k]) for k, p in task.student.state_dict().items())


def test_center_is_a_buffer_updated_only_by_the_ema(tiny_bundle):
    task = _task(tiny_bundle, ema_momentum=0.5)
    assert "center" in dict(task.named_buffers())
    assert "center" not in dict(task.named_parameters())
    batch = make_batch(tiny_bundle)
    opt = torch.optim.SGD(task.student.parameters(), lr=1e-2)
    task.train()
    for _ in range(2):  # first step: u = v = 0, so the centre stays 0; second step it must move
        terms = task(batch)
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        pending = torch.cat([torch.cat([u, v]) for u, v in task._pending]).mean(0)
        before = task.center.clone()
        task.update_center()
        expected = 0.5 * before + 0.5 * pending
        assert torch.allclose(task.center, expected)
    assert task.center.abs().sum() > 0
    assert not task._pending  # consumed


def test_eval_mode_forward_does_not_queue_center_updates(tiny_bundle):
    task = _task(tiny_bundle).eval()
    task(make_batch(tiny_bundle))
    task.update_center()
    assert torch.count_nonzero(task.center) == 0


def test_cached_teacher_embeddings_give_the_same_losses_as_the_live_teacher(tiny_bundle):
    task = _task(tiny_bundle, lambda_avl=10.0)
    batch = make_batch(tiny_bundle)
    _train(task, batch, steps=2)  # move the student away from the teacher first
    task.eval()
    live = task(batch)
    with torch.no_grad():
        t = task.teacher(batch["ref_image"], batch["ref_text"])
    cached_task = DiveTask(task.student, None, task.cfg, task.center.numel())
    cached_task.center.copy_(task.center)
    cached = cached_task.eval()(
        {**batch, "ref_teacher_image": t["image_features"], "ref_teacher_text": t["text_features"]}
    )
    for key in ("loss", "loss_cl", "loss_avl", "loss_pvl"):
        assert torch.allclose(live[key], cached[key], rtol=1e-5, atol=1e-7), key


def test_missing_teacher_and_cache_is_a_clear_error(tiny_bundle):
    task = DiveTask(copy.deepcopy(tiny_bundle.model), None, LossSettings(), 64)
    with pytest.raises(ValueError, match="cached teacher embeddings"):
        task(make_batch(tiny_bundle))


@pytest.mark.parametrize(
    ("method", "terms"),
    [
        (Method.dive, {"loss_cl", "loss_avl", "loss_pvl"}),
        (Method.flyp, {"loss_cl"}),
        (Method.flyp_replay, {"loss_cl", "loss_replay"}),
        (Method.snd, {"loss_cl", "loss_snd"}),
        (Method.ft, {"loss_ce"}),
        (Method.lpft, {"loss_ce"}),
    ],
)
def test_every_method_returns_its_terms_and_trains(tiny_bundle, method, terms):
    task = _task(tiny_bundle, method)
    history = _train(task, make_batch(tiny_bundle), steps=2)
    got = {k for k in history[0] if k.startswith("loss_")}
    assert got == terms
    assert torch.isfinite(history[-1]["loss"])


def test_flyp_total_is_the_contrastive_loss_alone(tiny_bundle):
    terms = _task(tiny_bundle, Method.flyp).train()(make_batch(tiny_bundle))
    assert torch.equal(terms["loss"].detach(), terms["loss_cl"])


def test_dive_total_weights_avl_and_pvl_separately(tiny_bundle):
    task = _task(tiny_bundle, lambda_avl=3.0, lambda_pvl=7.0)
    batch = make_batch(tiny_bundle)
    _train(task, batch, steps=2)
    terms = task.train()(batch)
    expected = terms["loss_cl"] + 3.0 * terms["loss_avl"] + 7.0 * terms["loss_pvl"]
    assert torch.allclose(terms["loss"].detach(), expected, rtol=1e-5)


def test_ft_head_starts_as_the_scaled_zero_shot_head_and_trains_only_the_image_tower(tiny_bundle):
    task = _task(tiny_bundle, Method.ft)
    scale = task.student.logit_scale.exp()
    assert torch.allclose(task.head.weight.norm(dim=-1), scale.expand(3))
    trainable = {n for n, p in task.student.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("visual.") for n in trainable)


def test_lpft_freezes_the_tower_during_linear_probing(tiny_bundle):
    task = _task(tiny_bundle, Method.lpft, lp_steps=1).train()
    batch = make_batch(tiny_bundle)
    task(batch, step=0)["loss"].backward()
    assert all(p.grad is None for p in task.student.visual.parameters())
    assert task.head.weight.grad is not None
    task(batch, step=1)["loss"].backward()
    assert any(p.grad is not None for p in task.student.visual.parameters())


def test_temperature_knobs(tiny_bundle):
    model = copy.deepcopy(tiny_bundle.model)
    configure_temperature(model, temperature=0.05, learnable=False)
    assert model.logit_scale.item() == pytest.approx(math.log(20.0), rel=1e-6)
    assert not model.logit_scale.requires_grad
    task = DiveTask(model, frozen_teacher(model), LossSettings(method=Method.flyp), 64)
    terms = task.train()(make_batch(tiny_bundle))
    assert terms["temperature"].item() == pytest.approx(0.05, rel=1e-5)


@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_batchnorm_keeps_running_statistics(freeze: bool) -> None:
    """ModelSettings.freeze_batchnorm: in train mode the student's BatchNorm layers stay in eval mode, so ID batches
    do not rewrite the pre-trained statistics (the teacher is always eval); off, they update as usual."""
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    teacher = copy.deepcopy(student)
    task = DiveTask(student, teacher, LossSettings(method=Method.flyp), 4, freeze_batchnorm=freeze)
    task.train()
    bn = student[1]
    before = bn.running_mean.clone()
    student(torch.randn(8, 3, 8, 8) + 5.0)
    assert bn.training is not freeze
    assert torch.equal(bn.running_mean, before) is freeze
    assert not teacher[1].training
    assert student[0].training  # only normalisation layers are held


def test_eval_mode_gives_every_layer_back_its_own_mode() -> None:
    """Epoch-end validation runs the student in eval mode and must hand it back with BatchNorm still frozen:
    ``model.train(True)`` would unfreeze it (the EmojiShift fine-tunes collapsed after the first validation)."""
    from dive.zeroshot import eval_mode

    student = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    task = DiveTask(student, None, LossSettings(method=Method.flyp), 4, freeze_batchnorm=True)
    task.train()
    with eval_mode(student):
        assert not any(m.training for m in student.modules())
    assert student.training and student[0].training and not student[1].training
    with pytest.raises(RuntimeError), eval_mode(student):
        raise RuntimeError("validation failed")
    assert student[0].training and not student[1].training  # restored on errors too
