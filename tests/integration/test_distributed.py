"""One process with global batch B vs two DDP processes with B/2 each: the same loss, gradient step and centre.

This is the multi-worker contract of the training loop (global contrastive batch through gathered features,
DDP-averaged gradients, all-gathered EMA centre), checked with torch.distributed on CPU (gloo) in seconds.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

from dive.config import LossSettings, ModelSettings
from dive.distributed import mean_across_ranks
from dive.models import build_model, frozen_teacher
from dive.task import DiveTask
from tests.helpers import make_batch

# Float32 reductions run in a different order on 2 ranks: loss terms and centre agree to 1e-5, weights after two
# SGD steps (lr 0.5, updates of order 1e-1) to 1e-4 — a wrong gradient scale would be off by ~the update itself.
TOL = 1e-5
WEIGHT_TOL = 1e-4
B = 8


def _step(rank: int, world: int, batch: dict[str, torch.Tensor], steps: int = 2):
    torch.manual_seed(0)
    bundle = build_model(ModelSettings())
    student = bundle.model
    task = DiveTask(
        student, frozen_teacher(student), LossSettings(lambda_avl=5.0, lambda_pvl=5.0, ema_momentum=0.5), 64
    )
    if world > 1:
        task.student = DDP(task.student)
    initial = torch.cat([p.detach().flatten() for p in student.parameters()])
    opt = torch.optim.SGD([p for p in task.parameters() if p.requires_grad], lr=0.5)
    task.train()
    losses = []
    for step in range(steps):
        local = {k: v.chunk(world)[rank] for k, v in batch.items()}
        terms = task(local, step=step)
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        task.update_center()
        losses.append({k: mean_across_ranks(v.detach()).item() for k, v in terms.items()})
    weights = torch.cat([p.detach().flatten() for p in task.student_model.parameters()])
    return losses, task.center.clone(), weights - initial


def _worker(rank: int, world: int, port: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = _step(rank, world, torch.load(os.path.join(folder, "batch.pt")))
        if rank == 0:
            torch.save(result, os.path.join(folder, "result.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tiny_bundle, tmp_path_factory):
    batch = make_batch(tiny_bundle, n_id=B, n_ref=B)
    single = _step(0, 1, batch)
    folder = tmp_path_factory.mktemp("ddp")
    torch.save(batch, folder / "batch.pt")
    mp.start_processes(
        _worker, args=(2, _free_port(), str(folder)), nprocs=2, join=True, start_method="spawn"
    )
    return single, torch.load(folder / "result.pt")


def test_first_step_loss_terms_match(runs):
    (single_losses, _, _), (ddp_losses, _, _) = runs
    for key in ("loss", "loss_cl", "loss_avl", "loss_pvl"):
        assert ddp_losses[0][key] == pytest.approx(single_losses[0][key], rel=TOL, abs=TOL), key
    # The second step sees a moved student, so AVL/PVL are non-zero and still agree.
    assert single_losses[1]["loss_pvl"] > 0
    for key in ("loss", "loss_cl", "loss_avl", "loss_pvl"):
        assert ddp_losses[1][key] == pytest.approx(single_losses[1][key], rel=TOL, abs=TOL), key


def test_weight_updates_match(runs):
    (_, _, single_update), (_, _, ddp_update) = runs
    assert single_update.abs().max() > 100 * WEIGHT_TOL
    assert torch.allclose(single_update, ddp_update, atol=WEIGHT_TOL)


def test_ema_centre_matches_and_is_nonzero(runs):
    (_, single_c, _), (_, ddp_c, _) = runs
    assert single_c.abs().sum() > 0
    assert torch.allclose(single_c, ddp_c, atol=TOL)
