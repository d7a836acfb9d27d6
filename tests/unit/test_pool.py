"""The actor pool's plan (pipeline/pool.py) and the device errors: cuda without a GPU is one error naming the key
or flag, raised before any model is built or any row read."""

from __future__ import annotations

import re

import pytest
import torch

from dive.config import Config, ConfigError, EvalDevice, ModelSettings
from pipeline import pool
from pipeline.data.format import DataError

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without a GPU")


@pytest.fixture
def cluster(monkeypatch):
    """A Ray cluster of 4 logical CPUs and ``gpus`` GPUs on a machine of 8 cores, without starting Ray."""
    import ray

    def make(gpus: int) -> None:
        monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 4.0, **({"GPU": gpus} if gpus else {})})
        monkeypatch.setattr(pool, "gpu_count", lambda: gpus)
        monkeypatch.setattr(pool.os, "cpu_count", lambda: 8)

    return make


def test_cpu_pools_split_the_cores_and_leave_a_logical_cpu_to_ray_data(cluster):
    cluster(0)
    kw = dict(device_key="key 'eval.device'", actors_key="key 'eval.actors'", error=ConfigError)
    every = pool.plan_pool("cpu", 0, **kw)  # 0 actors: one per logical CPU, splitting the cores
    assert (every.actors, every.threads, every.num_cpus) == (4, 2, 0.75)
    assert (every.num_gpus, every.decode_in_actor) == (0, True)
    one = pool.plan_pool("cpu", 1, **kw)  # one actor: every core
    assert (one.actors, one.threads, one.num_cpus) == (1, 8, 3.0)
    two = pool.plan_pool("cpu", 2, 1, **kw)  # threads given: as many logical CPUs each
    assert (two.actors, two.threads, two.num_cpus) == (2, 1, 1.0)
    four = pool.plan_pool("cpu", 4, **kw)  # more actors than spare logical CPUs: fractions, so all start
    assert (four.threads, four.num_cpus) == (2, 0.75)


def test_cuda_pools_have_one_actor_per_gpu_and_decode_in_tasks(cluster):
    cluster(2)
    kw = dict(device_key="--device cuda", actors_key="--workers", error=DataError)
    every = pool.plan_pool("cuda", 0, **kw)
    assert (every.actors, every.num_gpus, every.threads, every.decode_in_actor) == (2, 1, 1, False)
    assert pool.plan_pool("cuda", 1, **kw).actors == 1
    with pytest.raises(DataError, match=r"^--workers: 3 actors of one GPU each, but the cluster has 2 GPU"):
        pool.plan_pool("cuda", 3, **kw)
    cluster(0)
    with pytest.raises(DataError, match=r"^--device cuda: cuda, but .* has no GPU"):
        pool.plan_pool("cuda", 0, **kw)


def test_blocks_hold_a_few_batches_but_every_actor_gets_several():
    assert pool.block_rows(100_000, 256, 1) == 256 * pool.BLOCK_BATCHES  # Ray Data's per-block cost, shared
    assert pool.block_rows(100_000, 256, 8) == 256 * pool.BLOCK_BATCHES
    assert pool.block_rows(3072, 256, 1) == 256 * 3  # 4 blocks of 3 batches, not 3 of 4
    assert pool.block_rows(3072, 256, 2) == 256  # 12 one-batch blocks for 2 actors
    assert pool.block_rows(13, 4, 2) == 4  # fewer rows than a batch per actor: one batch a block


@no_gpu
def test_eval_device_cuda_without_a_gpu_fails_before_any_model_is_built(tmp_path, monkeypatch):
    import pipeline.evaluate as ev

    monkeypatch.setattr(ev, "build_model", lambda m: pytest.fail("a model was built"))
    monkeypatch.setattr(ev, "check_dataset", lambda *a: pytest.fail("a suite was read"))
    suites = [ev.Suite("s", "ood", str(tmp_path))]
    cfg = Config()
    cfg.eval.device = EvalDevice.cuda
    with pytest.raises(ConfigError, match=r"^key 'eval.device': cuda, but .* has no GPU"):
        ev.evaluate_accuracy({"m": ModelSettings()}, suites, cfg)
    cfg.eval.device, cfg.scaling.use_gpu = EvalDevice.auto, True  # auto follows scaling.use_gpu, and says so
    with pytest.raises(ConfigError, match=r"key 'eval.device' \(auto, scaling.use_gpu=true\): cuda"):
        ev.evaluate_accuracy({"m": ModelSettings()}, suites, cfg)
    cfg.scaling.use_gpu = False
    assert ev.check_eval_device(cfg) == "cpu"


@no_gpu
def test_cache_teacher_device_cuda_without_cuda_is_one_error_line_and_writes_nothing(tmp_path, capsys):
    from PIL import Image

    from pipeline.convert.cli import main
    from pipeline.data.format import CAPTIONED, Manifest, ShardWriter, encode_png

    folder = tmp_path / "ref"
    with ShardWriter(folder, Manifest("ref", CAPTIONED)) as writer:
        writer.add({"image": encode_png(Image.new("RGB", (8, 8))), "caption": "a black square"})
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    for workers in ("0", "2"):
        args = [
            "cache-teacher",
            str(folder),
            "--model-name",
            "dive-tiny",
            "--device",
            "cuda",
            "--workers",
            workers,
        ]
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and re.match(
            r"error: --device cuda: cuda, but (this machine|the Ray cluster) has no GPU", err
        )
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
