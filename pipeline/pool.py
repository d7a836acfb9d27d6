"""Batch inference the Ray Data way: ``map_batches`` over an actor pool (evaluation and the teacher cache).

On cuda there is one actor per GPU (``num_gpus=1``), running its forward passes under bf16 autocast, while Ray
Data tasks on the cluster's CPUs decode and resize the images before them: a GPU waits on nothing that CPUs can
do in parallel. On cpu the actors are the CPU workers, by default one per logical CPU: each has ``threads`` torch
threads (and asks Ray for as many logical CPUs) and decodes its own batch, so decoding and the forward pass take
turns on an actor's cores rather than competing for them, and the actors decode side by side. Either way the
rows reach the pool in blocks of a few batches (a streaming repartition: :func:`block_rows`), so every actor
gets work even from a set read as one block, and the caller's built model reaches every actor once, through the
object store: no actor builds a model again or receives anything per call beyond its batch.

No Ray import at module level: ``dive data`` without ``--workers`` loads none of Ray.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

DEVICES = ("cpu", "cuda")
# Batches per Ray Data block, at most: each block costs a task on its actor (fetch, format, output; ≈10 ms on 2
# cores, a fifth of a batch of the tiny model on 32 px images), paid once per this many batches.
BLOCK_BATCHES = 4


@dataclass(frozen=True)
class Pool:
    """How one pass runs on Ray Data: on which device, how many actors, what each asks of Ray."""

    device: str  # "cpu" | "cuda"
    actors: int
    threads: int  # torch threads in each actor
    num_cpus: float  # logical CPUs per actor
    num_gpus: int  # 1 on cuda, else 0
    decode_in_actor: bool  # cpu: each actor decodes its batch; cuda: a task stage decodes before the actors


def gpu_count() -> int:
    """GPUs the work can use: the Ray cluster's once Ray is up, else this machine's CUDA devices."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return int(ray.cluster_resources().get("GPU", 0))
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_device(device: str, where: str, error: type[Exception]) -> None:
    """``device`` "cuda" needs a GPU: else one ``error`` naming ``where`` (a config key or a flag), raised before
    anything is built or read."""
    if device not in DEVICES:
        raise error(f"{where}: expected cpu or cuda, got {device!r}")
    if device == "cuda" and gpu_count() == 0:
        ray = sys.modules.get("ray")
        place = "the Ray cluster" if ray is not None and ray.is_initialized() else "this machine"
        raise error(f"{where}: cuda, but {place} has no GPU (torch sees none / Ray lists none); use cpu")


def plan_pool(
    device: str,
    actors: int = 0,
    threads: int = 0,
    *,
    device_key: str,
    actors_key: str,
    error: type[Exception],
) -> Pool:
    """The pool for ``device`` on the running Ray cluster. ``actors`` 0: one per GPU on cuda, one per logical CPU
    of the cluster on cpu. ``threads`` 0: on cpu this machine's cores split between the actors; on cuda 1 (the
    actor's CPU work is copying its batch to the GPU). Errors name ``device_key`` / ``actors_key``.

    Why many one-thread CPU actors rather than one actor with every core: an actor decodes its batch in one
    Python loop (one core) before a forward pass that uses its threads, so one actor leaves the other cores idle
    while it decodes. On the perf benchmark's evaluation (decode 3/4 of the time) two one-thread actors score
    1.2–1.6× the images/s of a bare two-thread loop on 2 cores, one two-thread actor 0.67–0.94× (benchmarks/perf).
    Each actor holds its own copy of the models: ``eval.actors`` (``--workers``) caps that."""
    import ray

    check_device(device, device_key, error)
    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    # Ray Data's listing, read and repartition tasks each need one whole logical CPU: keep one free for them.
    spare = max(cpus - 1.0, 1.0)
    if device == "cuda":
        gpus = gpu_count()
        size = actors or gpus
        if size > gpus:
            raise error(f"{actors_key}: {size} actors of one GPU each, but the cluster has {gpus} GPU(s)")
        return Pool("cuda", size, max(threads, 1), min(1.0, spare / size), 1, decode_in_actor=False)
    size = actors or max(1, int(cpus))
    threads = threads or max(1, (os.cpu_count() or 1) // size)
    return Pool("cpu", size, threads, min(float(threads), spare / size), 0, decode_in_actor=True)


def block_rows(rows: int, batch_size: int, actors: int) -> int:
    """Rows per block: up to :data:`BLOCK_BATCHES` batches, fewer where an actor would otherwise get fewer than
    that many blocks of the ``rows`` (the pool is only as fast as its busiest actor)."""
    per_actor = rows // max(actors, 1)
    return batch_size * max(1, min(BLOCK_BATCHES, per_actor // (batch_size * BLOCK_BATCHES)))


def map_pool(
    ds: Any,
    actor: type,
    pool: Pool,
    *,
    rows: int,
    batch_size: int,
    batch_format: str,
    decode: Callable[..., Any],
    decode_kwargs: Mapping[str, Any],
    constructor_kwargs: Mapping[str, Any],
) -> Any:
    """``ds`` (raw rows, about ``rows`` of them) through ``actor`` on ``pool``, ``batch_size`` rows a call, in
    blocks of :func:`block_rows`.

    ``decode(batch, **decode_kwargs)`` turns raw rows into model inputs: a task stage before the actors on cuda,
    the actor itself on cpu. The actor is constructed with ``constructor_kwargs`` plus ``device``, ``threads``
    and ``decode`` (``decode_kwargs`` where it decodes its own batches, else None)."""
    import ray

    ds = ds.repartition(target_num_rows_per_block=block_rows(rows, batch_size, pool.actors))
    if not pool.decode_in_actor:
        ds = ds.map_batches(
            decode, fn_kwargs=dict(decode_kwargs), batch_size=batch_size, batch_format=batch_format
        )
    return ds.map_batches(
        actor,
        fn_constructor_kwargs={
            **constructor_kwargs,
            "device": pool.device,
            "threads": pool.threads,
            "decode": dict(decode_kwargs) if pool.decode_in_actor else None,
        },
        batch_size=batch_size,
        batch_format=batch_format,
        compute=ray.data.ActorPoolStrategy(size=pool.actors),
        num_cpus=pool.num_cpus,
        num_gpus=pool.num_gpus,
    )


# ------------------------------------------------------------------------------------------------ in an actor
def actor_device(device: str, threads: int = 0) -> torch.device:
    """The torch device of an actor (its own GPU on cuda: Ray sets ``CUDA_VISIBLE_DEVICES``) after setting its
    ``threads`` (0: leave the process's as they are, as the caller's own process does)."""
    if threads > 0:
        torch.set_num_threads(threads)
    return torch.device(device)


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA; nothing on CPU (fp32, as training on CPU)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def fetch(value: Any) -> Any:
    """``value``, or what it refers to when it is a Ray ObjectRef (put once by the driver)."""
    ray = sys.modules.get("ray")
    if ray is not None and isinstance(value, ray.ObjectRef):
        return ray.get(value)
    return value
