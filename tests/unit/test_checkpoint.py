"""The training-state format (pipeline.checkpoint): capture → save → load → restore gives the same state."""

from __future__ import annotations

import torch

from dive.config import LossConfig
from dive.models import embed_dim
from dive.optim import build_optimizer, cosine_with_warmup
from dive.task import DiveTask
from pipeline import checkpoint


class _Folder:
    def __init__(self, path):
        self.path = path

    def as_directory(self):
        import contextlib

        return contextlib.nullcontext(str(self.path))


def _setup(bundle):
    torch.manual_seed(0)
    task = DiveTask(bundle.model, None, LossConfig(), embed_dim(bundle.model))
    optimizer = build_optimizer(task.named_parameters(), 1e-3, 0.1)
    return task, optimizer, cosine_with_warmup(optimizer, 2, 10)


def test_state_round_trips_through_a_checkpoint_folder(tiny_bundle, tmp_path):
    import copy

    task, optimizer, scheduler = _setup(copy.deepcopy(tiny_bundle))
    with torch.no_grad():
        task.center.fill_(0.25)
        next(task.student.parameters()).add_(1.0)
    optimizer.step()
    scheduler.step()
    state = checkpoint.capture(task, optimizer, scheduler, (7, 1, 3), "run-1")
    checkpoint.save(state, tmp_path)
    expected_rng = torch.get_rng_state()
    torch.rand(5)  # move the RNG on: restore must put it back

    fresh, fresh_opt, fresh_sched = _setup(copy.deepcopy(tiny_bundle))
    loaded = checkpoint.load_checkpoint(_Folder(tmp_path))
    assert checkpoint.restore(loaded, fresh, fresh_opt, fresh_sched) == (7, 1, 3)
    assert loaded["run_id"] == "run-1"
    assert torch.equal(fresh.center, task.center)
    for a, b in zip(fresh.student.state_dict().values(), task.student.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert fresh_sched.state_dict() == scheduler.state_dict()
    assert torch.equal(torch.get_rng_state(), expected_rng)
