"""Performance benchmark: DiVE's step cost against its floor, the pipeline against a bare loop, fixed costs.

    python benchmarks/perf/run.py                 # full size (about 15 min on 2 cores)
    python benchmarks/perf/run.py --quick         # small size, ≤ 3 min
    python benchmarks/perf/run.py --device cuda   # step cost on a GPU (bf16 autocast); CPU parts as usual

Everything is measured side by side in one invocation and reported as **ratios**, so a slower or busier machine
moves both sides of each ratio together. It prints a Markdown table and writes ``results.json`` (flat keys, see
``KEYS``) next to this file; ``--update-readme`` writes the table into ``benchmarks/perf/README.md``.

1. **Step cost** (``steps``): one optimiser step of FLYP, DiVE with the live teacher and DiVE with cached teacher
   embeddings, at B' = B, B/2, B/4 — each configuration in a fresh process forked from one that has imported the
   libraries (same threads, same synthetic batch, the training loop's own ``dive.step``), interleaved over
   rounds, median step time. The floor of DiVE with a
   cache is one student forward + backward over B + B' samples: ``(B + B') / B`` × FLYP. Memory: peak RSS above
   the process's footprint before the model is built (CPU), ``max_memory_allocated`` (CUDA).
2. **Pipeline overhead** (``pipeline``): samples/s of one Ray Train worker fed by Ray Data vs a bare in-process
   loop over in-memory tensors (same model, batch, threads, method), and ``train/data_wait_frac``.
3. **Fixed cost** (``pipeline``): from ``run()`` to the end of the first step minus one step, and from the last
   step to the returned result (export + evaluation), read off the MLflow metric timestamps of the same run —
   of the process's first run (cold: Ray and its Ray Data workers start) and of the same run again (``warm_*``);
   evaluation images/s of ``evaluate_accuracy`` (in process for small sets, and forced through Ray Data) vs bare
   batch inference (build, decode, encode in one process) of the same export on the same sets; and the steady
   rate of evaluation's Ray Data actor pool (one CPU actor) vs bare batch inference doing the same work
   (``eval_pool_over_bare``: decode + resize + forward on both sides).
4. **Scaling** (full size only): samples/s with 2 workers vs 1 on this machine (both warm).
5. **Data** (``data_part``): decode + resize images/s per core on real photos at ImageNet-like size, the readers'
   path against the path before it, a PyTorch ``DataLoader``, bare libjpeg-turbo (the limit) and the Ray Data
   stream at 1 and 2 CPUs; the decode cores one GPU needs at an assumed images/s per GPU. The first step and the
   fixed cost are also put over a bare process's first step (``bare_first_step``).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import importlib
import json
import math
import multiprocessing
import os
import platform
import statistics
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run by path: the repository root is importable
from benchmarks.common import ROOT  # noqa: E402

HERE = Path(__file__).resolve().parent

README = HERE / "README.md"
RESULTS = HERE / "results.json"
MARKERS = ("<!-- results:start -->", "<!-- results:end -->")
KEYS = (
    "dive_cached_over_flyp",
    "floor",
    "dive_mem_over_flyp",
    "pipeline_over_bare",
    "data_wait_frac",
    "first_step_s",
    "fixed_cost_s",
    "first_step_over_bare",
    "fixed_over_bare",
    "eval_over_bare",
    "eval_pool_over_bare",
    "decode_over_baseline",
    "stream_over_limit",
    "stream_over_dataloader",
    "decode_cores_per_gpu",
)


@dataclass(frozen=True)
class Size:
    models: tuple[str, ...]
    batch: int  # B: ID samples per step
    steps: int  # timed steps per configuration and round
    warmup: int
    rounds: int
    pipeline_steps: int
    pipeline_batch: int
    scaling: bool


SIZES = {
    "full": Size(("dive-tiny", "lite-minilm-64"), 32, 12, 3, 2, 48, 128, True),  # the demo's batch
    "quick": Size(("dive-tiny", "lite-minilm-64"), 16, 4, 1, 1, 12, 16, False),  # the tiny demo: 48 ID rows
    "test": Size(("dive-tiny",), 8, 2, 1, 1, 0, 0, False),  # the unit test: shape only, no Ray
}


@dataclass(frozen=True)
class StepSpec:
    """One step-cost configuration, measured in its own process."""

    model: str
    method: str  # flyp | dive
    teacher: str  # "" (flyp) | live | cached
    batch: int
    ref_batch: int
    steps: int
    warmup: int
    threads: int
    device: str = "cpu"

    @property
    def name(self) -> str:
        if self.method == "flyp":
            return "FLYP"
        return f"DiVE {self.teacher}, B'={self.ref_batch}"


# ---------------------------------------------------------------------------------------------------- 1. steps
def step_specs(size: Size, threads: int, device: str) -> list[StepSpec]:
    specs = []
    b = size.batch
    for model in size.models:
        specs.append(StepSpec(model, "flyp", "", b, 0, size.steps, size.warmup, threads, device))
        for teacher in ("live", "cached"):
            for ref in (b, b // 2, b // 4):
                specs.append(
                    StepSpec(model, "dive", teacher, b, ref, size.steps, size.warmup, threads, device)
                )
    return specs


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _PeakRss:
    """Samples this process's RSS every 2 ms while active (CPU has no max_memory_allocated)."""

    def __init__(self) -> None:
        self.peak = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss_mb())

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def measure_step(spec: StepSpec) -> dict[str, float]:
    """Median seconds per optimiser step and peak memory of one configuration (call in a fresh process)."""
    import torch

    from dive.config import LossSettings, Method, ModelSettings
    from dive.step import build_task, optimizer_step

    torch.set_num_threads(spec.threads)
    torch.manual_seed(0)
    cuda = spec.device.startswith("cuda")
    base = _rss_mb()
    state = build_task(
        ModelSettings(name=spec.model),
        LossSettings(method=Method(spec.method), lambda_avl=1.0, lambda_pvl=1.0),
        cached_teacher=spec.teacher != "live",
        lr=1e-5,
        weight_decay=0.1,
        total_steps=10**6,
        device=spec.device,
    )
    state.task.train()
    batch = {
        k: v.to(spec.device)
        for k, v in synthetic_batch(state.bundle, spec.batch, spec.ref_batch, spec.teacher).items()
    }
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else None
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    with _PeakRss() as peak:
        for i in range(spec.warmup + spec.steps):
            if cuda:
                torch.cuda.synchronize()
            t = time.perf_counter()
            optimizer_step(state.task, [batch], state.optimizer, state.scheduler, i, autocast=autocast)
            if cuda:
                torch.cuda.synchronize()
            if i >= spec.warmup:
                times.append(time.perf_counter() - t)
    memory = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak.peak - base
    return {"step_s": statistics.median(times), "memory_mb": memory}


def measure_fields(fields: dict[str, Any]) -> dict[str, float]:
    """``measure_step`` of the ``StepSpec`` with these fields."""
    return measure_step(StepSpec(**fields))


def synthetic_batch(bundle: Any, n_id: int, n_ref: int, teacher: str) -> dict[str, Any]:
    """A batch in the task's schema: random pixels, real tokenised prompts and captions; with ``cached``, unit
    teacher embeddings as the cache columns hold them."""
    import torch

    from dive.models import embed_dim

    g = torch.Generator().manual_seed(0)
    size = bundle.preprocess_cfg["size"][0]
    words = ["circle", "square", "star", "cross", "heart", "moon", "sun", "tree"]
    batch = {
        "id_image": torch.randn(n_id, 3, size, size, generator=g),
        "id_label": torch.arange(n_id) % len(words),
        "id_text": bundle.tokenizer([f"a photo of a {words[i % len(words)]}." for i in range(n_id)]),
    }
    if n_ref:
        batch["ref_image"] = torch.randn(n_ref, 3, size, size, generator=g)
        batch["ref_text"] = bundle.tokenizer(
            [f"a red {words[i % len(words)]} on the left" for i in range(n_ref)]
        )
    if teacher == "cached":
        d = embed_dim(bundle.model)
        for key in ("ref_teacher_image", "ref_teacher_text"):
            batch[key] = torch.nn.functional.normalize(torch.randn(n_ref, d, generator=g), dim=-1)
    return batch


# What every configuration's process needs imported: loaded once into the fork server, not by each process.
_PRELOAD = ["torch", "open_clip", "dive.task", "dive.models", "dive.step", "benchmarks.perf.run"]


def _fresh_processes() -> ProcessPoolExecutor:
    """One new process per configuration, forked from a server that has already imported torch, open_clip and
    the pipeline: no allocator or cache state carried between configurations (each measures its own peak RSS
    above its own footprint), without an interpreter start and those imports (~15 s on 2 cores) for each."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    return ProcessPoolExecutor(max_workers=1, mp_context=ctx, max_tasks_per_child=1)


def _in_child(spec: StepSpec, pool: ProcessPoolExecutor) -> dict[str, float]:
    """``measure_step`` in a fresh process of ``pool``."""
    # By its importable name and as plain data: this file may run as __main__ or be loaded under another name.
    measure = importlib.import_module("benchmarks.perf.run").measure_fields
    try:
        return pool.submit(measure, asdict(spec)).result()
    except Exception as err:
        raise RuntimeError(f"{spec.name} on {spec.model} failed: {err}") from err


def _in_process(spec: StepSpec) -> dict[str, float]:
    """``measure_step`` in this process (tests): the previous configuration's garbage is freed and its heap
    handed back first, or RSS could fall below the footprint taken before the model is built."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc only; elsewhere RSS is what it is
    return measure_step(spec)


def run_steps(specs: list[StepSpec], rounds: int, in_process: bool = False) -> list[dict[str, Any]]:
    """Every spec once per round, the order reversed every other round (drift hits all alike); medians."""
    samples: dict[StepSpec, list[dict[str, float]]] = {s: [] for s in specs}
    with contextlib.ExitStack() as stack:
        pool = None if in_process else stack.enter_context(_fresh_processes())
        for r in range(rounds):
            for spec in specs if r % 2 == 0 else list(reversed(specs)):
                samples[spec].append(_in_process(spec) if pool is None else _in_child(spec, pool))
    rows = []
    for spec in specs:
        rows.append(
            {
                **asdict(spec),
                "name": spec.name,
                "step_s": statistics.median(x["step_s"] for x in samples[spec]),
                "memory_mb": statistics.median(x["memory_mb"] for x in samples[spec]),
            }
        )
    for row in rows:  # ratios to FLYP of the same model, and to the floor (B + B') / B
        flyp = next(r for r in rows if r["model"] == row["model"] and r["method"] == "flyp")
        row["over_flyp"] = row["step_s"] / flyp["step_s"]
        row["floor"] = (row["batch"] + row["ref_batch"]) / row["batch"]
        row["over_floor"] = row["over_flyp"] / row["floor"]
        row["mem_over_flyp"] = row["memory_mb"] / max(flyp["memory_mb"], 1e-9)
    return rows


def step_summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The flat keys of step cost: DiVE cached at B' = B on lite-minilm-64 (dive-tiny where it is absent)."""
    models = {r["model"] for r in rows}
    model = "lite-minilm-64" if "lite-minilm-64" in models else sorted(models)[0]
    at_b = next(
        r for r in rows if r["model"] == model and r["teacher"] == "cached" and r["ref_batch"] == r["batch"]
    )
    live = next(
        r for r in rows if r["model"] == model and r["teacher"] == "live" and r["ref_batch"] == r["batch"]
    )
    return {
        "step_model": model,
        "dive_cached_over_flyp": at_b["over_flyp"],
        "floor": at_b["floor"],
        "dive_cached_over_floor": at_b["over_floor"],
        "dive_live_over_flyp": live["over_flyp"],
        "dive_mem_over_flyp": at_b["mem_over_flyp"],
        "dive_live_mem_over_flyp": live["mem_over_flyp"],
    }


# ------------------------------------------------------------------------------------------------- 2.–4. pipeline
def pipeline_overrides(quick: bool, size: Size, threads: int) -> list[str]:
    """A 1-worker run on the demo data (the demo's method), MLflow and Ray output under ``outputs/perf``."""
    work = ROOT / "outputs" / "perf"
    work.mkdir(parents=True, exist_ok=True)
    demo_dir = ROOT / ".cache" / ("perf-demo-tiny" if quick else "dive-demo")
    return [
        f"data.demo={demo_dir}",
        f"data.demo_size={'tiny' if quick else 'default'}",
        "scaling.num_workers=1",
        f"scaling.cpus_per_worker={threads}",
        f"scaling.threads_per_worker={threads}",
        f"optim.max_steps={size.pipeline_steps}",
        f"optim.global_batch={size.pipeline_batch}",
        "optim.epochs=100",
        "tracking.log_every=1",
        "tracking.experiment=perf",
        f"tracking.uri=sqlite:///{work}/mlflow.db",
        f"tracking.output_dir={work}/outputs",
        f"run.storage_path={work}/ray",
    ]


def two_workers(threads: int) -> list[str]:
    """Two workers that split the machine's ``threads`` (else they oversubscribe the cores)."""
    return [
        "scaling.num_workers=2",
        "scaling.cpus_per_worker=0.5",
        f"scaling.threads_per_worker={max(threads // 2, 1)}",
    ]


def _versus_bare(prefix: str, run: dict[str, Any], bare: dict[str, float]) -> dict[str, float]:
    """What every run compared with the main one reports: its wall time, its samples/s over the bare loop's and
    its data wait, under ``prefix``."""
    return {
        f"{prefix}_run_s": run["run_s"],
        f"{prefix}_pipeline_over_bare": run["samples_per_s"] / bare["samples_per_s"],
        f"{prefix}_data_wait_frac": run["data_wait_frac"],
    }


def pipeline_part(size: Size, quick: bool, threads: int) -> dict[str, Any]:
    """Real runs on the demo (1 worker, the demo's method) timed against a bare loop: the first in this process
    (cold: it starts Ray, its Ray Data workers and MLflow's store, as a lone ``train.py`` does) and the same run
    again (warm: as each later run of a sweep or benchmark that shares one Ray instance). At full size also, warm
    like the second: every stream decoded each epoch (``data.keep_in_memory_mb=0``, the behaviour before
    materialized streams), materialized streams re-read from the object store each epoch
    (``data.keep_in_worker=false``), 2 workers."""
    from dive.config import ModelSettings
    from pipeline.train import prepare_config

    overrides = pipeline_overrides(quick, size, threads)
    one = _timed_run(prepare_config(None, overrides))
    cfg = prepare_config(None, overrides)
    bare = bare_loop(cfg, size.pipeline_steps, threads)
    out: dict[str, Any] = {
        "pipeline_samples_per_s": one["samples_per_s"],
        "bare_samples_per_s": bare["samples_per_s"],
        "pipeline_over_bare": one["samples_per_s"] / bare["samples_per_s"],
        "pipeline_median_step_over_bare": bare["step_s"] / one["median_step_s"],
        "data_wait_frac": one["data_wait_frac"],
        "first_step_s": one["first_step_s"] - bare["step_s"],
        "tail_s": one["tail_s"],
        "run_s": one["run_s"],
        "fixed_cost_s": one["first_step_s"] - bare["step_s"] + one["tail_s"],
        "pipeline_steps": one["steps"],
        # where the fixed cost goes (the run's time/<phase>_s): up to fit(), fit() to its first step, the tail
        **{
            f"fixed_{phase}_s": one["phases"][phase]
            for phase in (
                "preflight",
                "ray_start",
                "mlflow_open",
                "streams",
                "fit_to_first_step",
                "export",
                "evaluate",
            )
            if phase in one["phases"]
        },
    }
    bare_first = bare_first_step(cfg, threads)
    out["bare_first_step_s"] = bare_first
    out["first_step_over_bare"] = one["first_step_s"] / bare_first
    out["fixed_over_bare"] = out["fixed_cost_s"] / bare_first
    out.update(eval_part(cfg, Path(one["export_dir"]), threads))
    export = ModelSettings(name=f"local-dir:{one['export_dir']}")
    out.update(eval_pool_over_bare(cfg, export, threads, min_images=8192 if quick else 32768))
    warm = _timed_run(prepare_config(None, overrides))
    out["warm_first_step_s"] = warm["first_step_s"] - bare["step_s"]
    out["warm_fixed_cost_s"] = warm["first_step_s"] - bare["step_s"] + warm["tail_s"]
    out.update(_versus_bare("warm", warm, bare))
    out["warm_fixed_streams_s"] = warm["phases"].get("streams", 0.0)
    out["warm_fixed_fit_to_first_step_s"] = warm["phases"]["fit_to_first_step"]
    if size.scaling:
        streamed = _timed_run(prepare_config(None, [*overrides, "data.keep_in_memory_mb=0"]))
        out.update(_versus_bare("streamed", streamed, bare))
        # Materialized, but not kept by the workers: each epoch reads the object store again through Ray Data
        reread = _timed_run(prepare_config(None, [*overrides, "data.keep_in_worker=false"]))
        out["reread_first_step_s"] = reread["first_step_s"] - bare["step_s"]
        out.update(_versus_bare("reread", reread, bare))
        two = _timed_run(prepare_config(None, [*overrides, *two_workers(threads)]))
        out["two_workers_over_one"] = two["samples_per_s"] / warm["samples_per_s"]
    return out


def order_part(size: Size, threads: int) -> dict[str, Any]:
    """What ``data.exact_order`` (Ray Data's preserve_order) costs: 2 workers (whose split it fixes), streamed and
    materialized streams, on / off / off / on so that drift over the runs cancels."""
    from pipeline.train import prepare_config

    two = [*pipeline_overrides(False, size, threads), *two_workers(threads)]
    out: dict[str, Any] = {}
    for stream, extra in (("streamed", ["data.keep_in_memory_mb=0"]), ("held", [])):
        speed: dict[bool, list[float]] = {True: [], False: []}
        for exact in (True, False, False, True):
            cfg = prepare_config(None, [*two, *extra, f"data.exact_order={str(exact).lower()}"])
            speed[exact].append(_timed_run(cfg)["samples_per_s"])
        ordered, unordered = statistics.mean(speed[True]), statistics.mean(speed[False])
        out[f"exact_order_{stream}_samples_per_s"] = ordered
        out[f"unordered_{stream}_samples_per_s"] = unordered
        out[f"exact_order_cost_{stream}"] = 1 - ordered / unordered
    return out


def _timed_run(cfg: Any) -> dict[str, Any]:
    """``run(cfg)`` with wall-clock marks: its steps' MLflow timestamps (``tracking.log_every=1``) give the first
    step, the training throughput (epoch boundaries and validation included) and the tail (export + eval)."""
    from pipeline.tracking import Run
    from pipeline.train import run

    t0 = time.time()
    result = run(cfg)
    t_end = time.time()
    mlrun = Run(result.tracking_uri, result.run_id)
    waits = [value for step, value, _ in mlrun.metric_times("train/data_wait_frac") if step > 1]
    stamps = [seconds for _, _, seconds in mlrun.metric_times("train/loss")]
    span = stamps[-1] - stamps[0]  # steps 2…N: step 1 also pays the first batches' latency
    phases = {
        k.removeprefix("time/").removesuffix("_s"): v
        for k, v in mlrun.latest_metrics().items()
        if k.startswith("time/")
    }
    before_fit = sum(phases.get(p, 0.0) for p in ("preflight", "ray_start", "mlflow_open", "streams"))
    return {
        "phases": {**phases, "fit_to_first_step": stamps[0] - t0 - before_fit},
        "samples_per_s": cfg.optim.global_batch * (len(stamps) - 1) / span,
        "median_step_s": statistics.median(b - a for a, b in zip(stamps, stamps[1:], strict=False)),
        "data_wait_frac": statistics.mean(waits) if waits else 0.0,
        "first_step_s": stamps[0] - t0,
        "tail_s": t_end - stamps[-1],
        "run_s": t_end - t0,
        "steps": len(stamps),
        "export_dir": result.export_dir,
    }


def bare_loop(cfg: Any, steps: int, threads: int) -> dict[str, float]:
    """The same model, method, batch and threads as the pipeline run, on in-memory tensors, in this process."""
    import torch

    from dive.config import USES_REFERENCE, ref_batch
    from dive.step import build_task, optimizer_step

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    state = build_task(
        cfg.model,
        cfg.loss,
        freeze_batchnorm=cfg.model.freeze_batchnorm,
        lr=cfg.optim.lr,
        weight_decay=cfg.optim.weight_decay,
        warmup=cfg.optim.warmup_steps,
        total_steps=max(steps, 1),
    )
    state.task.train()
    ref = ref_batch(cfg) if cfg.loss.method in USES_REFERENCE else 0
    batch = synthetic_batch(state.bundle, cfg.optim.global_batch, ref, "live")
    args = (state.task, [batch], state.optimizer, state.scheduler)
    optimizer_step(*args, 0, grad_clip=cfg.optim.grad_clip)  # warm-up
    t = time.perf_counter()
    for i in range(steps):
        optimizer_step(*args, i + 1, grad_clip=cfg.optim.grad_clip)
    seconds = time.perf_counter() - t
    return {"step_s": seconds / steps, "samples_per_s": cfg.optim.global_batch * steps / seconds}


_BARE_FIRST_STEP = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
import torch, open_clip  # noqa: F401  (what the bare process pays for, as a run does)
from benchmarks.perf.run import synthetic_batch
from dive.config import USES_REFERENCE, from_dict, ref_batch
from dive.step import build_task, optimizer_step
cfg = from_dict(json.loads(sys.argv[2]))
torch.set_num_threads(int(sys.argv[3]))
state = build_task(cfg.model, cfg.loss, freeze_batchnorm=cfg.model.freeze_batchnorm, lr=cfg.optim.lr,
                   weight_decay=cfg.optim.weight_decay, warmup=cfg.optim.warmup_steps, total_steps=1)
state.task.train()
ref = ref_batch(cfg) if cfg.loss.method in USES_REFERENCE else 0
batch = synthetic_batch(state.bundle, cfg.optim.global_batch, ref, "live")
optimizer_step(state.task, [batch], state.optimizer, state.scheduler, 0, grad_clip=cfg.optim.grad_clip)
print(time.time())
"""


def bare_first_step(cfg: Any, threads: int, rounds: int = 3) -> float:
    """Seconds a bare process (no Ray, no MLflow, no data pipeline) takes from its start to the end of its first
    optimiser step: interpreter start, ``import torch, open_clip``, the same model and method built as the run
    builds them, one step on a batch of the run's size. The median of ``rounds`` fresh processes: the
    denominator of ``first_step_over_bare`` and ``fixed_over_bare``."""
    import subprocess

    from dive.config import to_dict

    times = []
    for _ in range(rounds):
        t0 = time.time()
        done = subprocess.run(
            [sys.executable, "-c", _BARE_FIRST_STEP, str(ROOT), json.dumps(to_dict(cfg)), str(threads)],
            capture_output=True,
            text=True,
            check=True,
        )
        times.append(float(done.stdout.strip().splitlines()[-1]) - t0)
    return statistics.median(times)


def eval_part(cfg: Any, export: Path, threads: int) -> dict[str, float]:
    """Evaluation images/s of ``evaluate_accuracy`` vs bare batch inference of the same export on the same sets.

    Bare: one process builds the model, decodes every image of the sets and encodes them in batches — what a user
    would write by hand. ``evaluate_accuracy`` also builds the text heads and scores them; it runs twice, as
    configured (the demo's few thousand images: in process) and forced through Ray Data (``eval.in_process_rows
    = 0``, the path of large sets). ``eval_forward_images_per_s`` is the forward pass alone, on decoded images."""
    import copy
    import io

    import torch
    from PIL import Image

    from dive.config import ModelSettings
    from dive.models import build_model
    from pipeline.data.format import LABELLED, check_dataset, iter_rows
    from pipeline.evaluate import evaluate_accuracy, suites_from_config

    torch.set_num_threads(threads)
    model_cfg = ModelSettings(name=f"local-dir:{export}")
    suites = suites_from_config(cfg)
    images = sum(check_dataset(s.folder, LABELLED).num_rows for s in suites)
    t = time.perf_counter()
    evaluate_accuracy({"student": model_cfg}, suites, cfg, threads=threads)
    pipe_s = time.perf_counter() - t
    ray_cfg = copy.deepcopy(cfg)
    ray_cfg.eval.in_process_rows = 0
    t = time.perf_counter()
    evaluate_accuracy({"student": model_cfg}, suites, ray_cfg, threads=threads)
    ray_s = time.perf_counter() - t

    t = time.perf_counter()
    bundle = build_model(model_cfg)
    model = bundle.model.eval()
    decoded = [
        bundle.preprocess_eval(Image.open(io.BytesIO(r["image"])).convert("RGB"))
        for s in suites
        for r in iter_rows(s.folder, ["image"])
    ]
    t_forward = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(decoded), cfg.eval.batch_size):
            model.encode_image(torch.stack(decoded[i : i + cfg.eval.batch_size]), normalize=True)
    t_end = time.perf_counter()
    bare_s, forward_s = t_end - t, t_end - t_forward
    return {
        "eval_images": images,
        "eval_images_per_s": images / pipe_s,
        "eval_bare_images_per_s": images / bare_s,
        "eval_over_bare": bare_s / pipe_s,
        "eval_ray_data_over_bare": bare_s / ray_s,
        "eval_forward_images_per_s": images / forward_s,
    }


# ---------------------------------------------------------------------------------------------------- 5. data
# Images/s one GPU consumes training ViT-B/16 with DiVE and the teacher cache at B' = B (an estimate, stated in
# benchmarks/perf/README.md: FLYP's per-step cost scaled by DiVE's 1.64x and the floor, at published ViT-B/16
# training throughput of each card). decode_cores_per_gpu = this over the stream's images/s per core.
GPU_IMAGES_PER_S = {"A100": 1000.0, "H100": 2700.0}


def data_part(quick: bool, threads: int) -> dict[str, float]:
    """Decode images/s per core on realistic JPEGs (real photos at ImageNet-like size and quality) at 224 px:
    today's path before the fast one (PIL decode + resize of the PIL image), the pipeline's path
    (:func:`pipeline.data.transforms.load_pixels`), a PyTorch ``DataLoader`` with PIL + torchvision transforms
    over the same rows (what open_clip's trainer does), bare libjpeg-turbo decode + resize (the limit), and the
    Ray Data stream (:func:`pipeline.data.streams.read_stream`) over Parquet shards of the same images with 1 and
    2 CPUs. Per-core figures use one torch thread; the stream's per-core figure is its 1-CPU rate.

    The stream's rates are steady-state, what a GPU fed for hours sees: the images after its first output block
    ÷ the time from that block to the last (:func:`_steady_rate`; blocks of up to Ray Data's 128 MB, ≈ 900
    images at 224 px). Its start (listing, the read, the first block's decode before anything comes out) is in
    ``decode_stream_1cpu_wall_images_per_s`` and ``stream_wall_over_limit``: images over the whole pass. The
    stream is held against the limit measured right before and right after its pass (``decode_limit_at_1cpu``,
    their mean): on a shared machine the speed of a core drifts by tens of percent within minutes."""
    import tempfile

    import ray
    import torch

    from benchmarks.perf.decode import (
        compare_rates,
        dataloader_rate,
        decode_rate,
        limit_pixels,
        new_pixels,
        realistic_jpegs,
    )
    from pipeline.data.format import LABELLED, Manifest, ShardWriter
    from pipeline.data.streams import read_stream

    n = 96 if quick else 384
    images = realistic_jpegs(n)
    torch.set_num_threads(1)
    side, limit = 224, 10**8
    # in rounds, each path once a round, the best of each: a busy moment hits every path alike
    paths = compare_rates(images, side, rounds=3, variants={"pipeline": new_pixels, "limit": limit_pixels})
    rates = {
        "baseline": paths["old"],
        "pipeline": paths["pipeline"],
        "limit": paths["limit"],
        "dataloader": dataloader_rate(images, side),
    }
    torch.set_num_threads(threads)
    stream_rows = 24 * n  # the same photos again: a stream long enough to have a steady state
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Manifest("photos", LABELLED, classnames=["photo"])
        for folder, rows in (("warm-up", n), ("stream", stream_rows)):
            with ShardWriter(Path(tmp, folder), manifest, rows_per_shard=n) as writer:
                for i in range(rows):
                    writer.add({"image": images[i % n], "label": 0})

        # A whole pass over a one-shard set starts Ray Data's workers and leaves no task running; then the
        # limit right before and right after the timed pass: this minute's machine.
        def stream_pass(folder: str) -> tuple[float, list[float], list[int]]:
            ds, _ = read_stream(
                str(Path(tmp, folder)),
                LABELLED,
                size=side,
                augment=False,
                max_pixels=limit,
                model_name="dive-tiny",
            )
            t, ends, sizes = time.perf_counter(), [], []
            for block in ds.iter_batches(batch_size=None, batch_format="numpy"):
                ends.append(time.perf_counter())
                sizes.append(len(block["label"]))
            return t, ends, sizes

        def limit_rate() -> float:
            return decode_rate(lambda b: limit_pixels(b, side), images, repeats=1)

        ctx = ray.data.DataContext.get_current()
        before = ctx.execution_options.resource_limits
        for cpus in (1, 2):
            ctx.execution_options.resource_limits = before.copy(cpu=cpus)
            stream_pass("warm-up")
            before_pass = limit_rate()
            t, ends, sizes = stream_pass("stream")
            rates[f"limit_at_{cpus}cpu"] = statistics.mean([before_pass, limit_rate()])
            rates[f"stream_{cpus}cpu_wall"] = sum(sizes) / (ends[-1] - t)
            rates[f"stream_{cpus}cpu"] = (
                _steady_rate(ends, sizes) if len(ends) > 1 else rates[f"stream_{cpus}cpu_wall"]
            )
        ctx.execution_options.resource_limits = before
    per_core = rates["stream_1cpu"]
    return {
        **{f"decode_{k}_images_per_s": v for k, v in rates.items()},
        "decode_over_baseline": rates["pipeline"] / rates["baseline"],
        "stream_over_limit": per_core / rates["limit_at_1cpu"],
        "stream_wall_over_limit": rates["stream_1cpu_wall"] / rates["limit_at_1cpu"],
        "stream_over_dataloader": per_core / rates["dataloader"],
        "stream_2cpu_over_1cpu": rates["stream_2cpu"] / per_core,
        "decode_cores_per_gpu": GPU_IMAGES_PER_S["H100"] / per_core,
        "decode_cores_per_a100": GPU_IMAGES_PER_S["A100"] / per_core,
    }


def _bare_scoring(model_cfg: Any, suites: list[Any], batch_size: int, max_pixels: int) -> dict[str, Any]:
    """Bare batch inference, what one would write by hand: one model in this process, the suites' rows read into
    memory first (not timed), then per batch decode + resize (``preprocess_batch``), normalise, the image tower,
    the suite's zero-shot head and argmax. Returns each batch's end time and size, the time the loop started and
    the seconds the model and heads took to build."""
    import numpy as np
    import torch

    from dive.models import build_model
    from dive.zeroshot import build_head
    from pipeline.data.format import LABELLED, check_dataset, iter_rows
    from pipeline.data.transforms import normalize_images, preprocess_batch

    t = time.perf_counter()
    bundle = build_model(model_cfg)
    model = bundle.model.eval()
    cfg = bundle.preprocess_cfg
    work, heads = [], {}
    for s in suites:
        manifest = check_dataset(s.folder, LABELLED)
        key = json.dumps(manifest.scoring_classes())
        if key not in heads:  # a copied set shares its head, as in evaluation
            heads[key] = build_head(model, bundle.tokenizer, *manifest.scoring_classes())
        head = heads[key]
        rows = list(iter_rows(s.folder, ["image", "label"]))
        for i in range(0, len(rows), batch_size):
            chunk = rows[i : i + batch_size]
            images = np.empty(len(chunk), dtype=object)
            images[:] = [r["image"] for r in chunk]
            labels = np.array([r["label"] for r in chunk], dtype=np.int64)
            work.append((head, manifest.num_classes, {"image": images, "label": labels}))
    build_s = time.perf_counter() - t
    start, ends, sizes = time.perf_counter(), [], []
    with torch.no_grad():
        for head, num_classes, batch in work:
            out = preprocess_batch(
                batch,
                kind=LABELLED,
                size=cfg["size"][0],
                augment=False,
                max_pixels=max_pixels,
                num_classes=num_classes,
            )
            x = normalize_images(torch.from_numpy(out["image"]), cfg["mean"], cfg["std"])
            pred = (model.encode_image(x, normalize=True) @ head.T).argmax(dim=-1)
            int((pred == torch.from_numpy(out["label"])).sum())
            ends.append(time.perf_counter())
            sizes.append(len(out["label"]))
    return {"start": start, "ends": ends, "sizes": sizes, "build_s": build_s}


def _steady_rate(ends: list[float], sizes: list[int]) -> float:
    """Images/s between the first batch's end and the last's: the images after the first batch over that span."""
    return sum(sizes[1:]) / (ends[-1] - ends[0])


def eval_pool_over_bare(cfg: Any, model_cfg: Any, threads: int, min_images: int = 32768) -> dict[str, float]:
    """Images/s of evaluation's Ray Data actor pool ÷ images/s of bare batch inference: the same model, rows,
    batch size (``eval.batch_size``) and torch threads in all, on ``cfg``'s eval sets (copied until there are
    ``min_images``). Needs Ray running.

    Like for like, both sides do the same work per image: decode + resize of the encoded bytes in the Parquet
    shards (the pipeline's ``preprocess_batch``), normalise, the image tower, the suite head's logits and argmax.
    Bare (:func:`_bare_scoring`): this process, one batch after another, ``threads`` torch threads, the rows read
    into memory beforehand (untimed). Pool: :func:`pipeline.evaluate.scored_batches` forced through Ray Data
    (``eval.in_process_rows=0``, ``eval.device=cpu``): Parquet read tasks, then the scoring actors, each decoding
    and scoring its blocks, the driver collecting the results as they arrive. ``eval_pool_over_bare`` is the
    pool as it plans itself (``eval.actors=0``: one actor per logical CPU, the cores split between them: on 2
    cores two actors of one thread, as many torch threads in all as the bare loop);
    ``eval_pool_one_actor_over_bare`` one actor with the bare loop's ``threads``, the like-for-like figure for
    what Ray Data itself costs.

    ``eval_pool_over_bare`` compares steady-state rates, what a large evaluation sees: on each side the images
    after the first output (a batch; on the pool a block of a few batches) ÷ the time from the first output to
    the last. What the pool pays once — Ray Data's start, the actor's process with torch and open_clip imported,
    the models and heads built on the driver and unpickled in the actor, the first block — is
    ``eval_pool_start_s`` (the first pass: cold Ray Data workers; ``eval_pool_warm_start_s`` a later pass's);
    ``eval_pool_wall_over_bare`` is the ratio of mean wall times with everything included (the bare side with its
    model and heads built). Bare and pool passes alternate — bare, pool, bare, one actor, bare, pool, … — so drift
    on a busy machine hits every side alike, and each side's best steady rate counts, as :func:`decode_rate`
    takes the best of its passes; ``eval_pool_bare_spread`` says how far the bare passes were apart.
    ``min_images`` keeps the pool's first block's latency (≈0.1 s) small beside the span timed."""
    import shutil
    import tempfile

    import torch

    from pipeline.data.format import LABELLED, check_dataset
    from pipeline.evaluate import Suite, suites_from_config

    torch.set_num_threads(threads)
    suites = suites_from_config(cfg)
    images = sum(check_dataset(s.folder, LABELLED).num_rows for s in suites)
    with tempfile.TemporaryDirectory(prefix="eval-pool-") as tmp:
        # Copies of the sets until there are ``min_images``: enough blocks for a steady rate (a read lists a file
        # once, however often it is named, so the copies are folders of their own).
        copies = [
            Suite(f"{s.name}-{k}", s.kind, str(shutil.copytree(s.folder, Path(tmp, f"{k}-{i}"))))
            for k in range(1, math.ceil(min_images / images))
            for i, s in enumerate(suites)
        ]
        return _eval_pool_over_bare([*suites, *copies], cfg, model_cfg, threads)


def _eval_pool_over_bare(
    suites: list[Any], cfg: Any, model_cfg: Any, threads: int, rounds: int = 2
) -> dict[str, float]:
    import copy

    from dive.config import EvalDevice
    from pipeline.evaluate import scored_batches

    def pool_pass(actors: int, actor_threads: int) -> dict[str, Any]:
        pool_cfg = copy.deepcopy(cfg)
        pool_cfg.eval.in_process_rows, pool_cfg.eval.actors, pool_cfg.eval.device = 0, actors, EvalDevice.cpu
        t0, ends, sizes = time.perf_counter(), [], []
        for out in scored_batches({"m": model_cfg}, suites, pool_cfg, threads=actor_threads):
            ends.append(time.perf_counter())
            sizes.append(len(out["set"]))
        return {"start": t0, "ends": ends, "sizes": sizes}

    batch, pixels = cfg.eval.batch_size, cfg.data.max_image_pixels
    bare = [_bare_scoring(model_cfg, suites, batch, pixels)]
    pools: dict[str, list[dict[str, Any]]] = {"default": [], "one_actor": []}
    # bare, default pool, bare, one actor, bare, …: drift on a busy machine hits every side alike
    for _ in range(rounds):
        for name, actors, actor_threads in (("default", 0, 0), ("one_actor", 1, threads)):
            pools[name].append(pool_pass(actors, actor_threads))
            bare.append(_bare_scoring(model_cfg, suites, batch, pixels))
    rates = [_steady_rate(b["ends"], b["sizes"]) for b in bare]
    best = {name: max(_steady_rate(p["ends"], p["sizes"]) for p in passes) for name, passes in pools.items()}
    bare_wall = statistics.mean(b["build_s"] + b["ends"][-1] - b["start"] for b in bare)
    default = pools["default"]
    pool_wall = statistics.mean(p["ends"][-1] - p["start"] for p in default)
    return {
        "eval_pool_images": sum(default[0]["sizes"]),
        "eval_pool_blocks": len(default[0]["sizes"]),
        "eval_pool_images_per_s": best["default"],
        "eval_pool_bare_images_per_s": max(rates),
        "eval_pool_over_bare": best["default"] / max(rates),
        "eval_pool_one_actor_over_bare": best["one_actor"] / max(rates),
        "eval_pool_start_s": default[0]["ends"][0] - default[0]["start"],
        "eval_pool_warm_start_s": min(p["ends"][0] - p["start"] for p in default[1:]) if rounds > 1 else 0.0,
        "eval_pool_wall_over_bare": bare_wall / pool_wall,
        "eval_pool_bare_spread": (max(rates) - min(rates)) / max(rates),  # the bare rate's run-to-run change
    }


# ---------------------------------------------------------------------------------------------------- report
def table(rows: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    lines = [
        "| model | configuration | step s | × FLYP | floor (B+B')/B | × floor | memory MB | mem × FLYP |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['name']} | {r['step_s']:.3f} | {r['over_flyp']:.2f} | {r['floor']:.2f} | "
            f"{r['over_floor']:.2f} | {r['memory_mb']:.0f} | {r['mem_over_flyp']:.2f} |"
        )
    keys = [k for k in summary if k not in ("step_model",)]
    lines += ["", "| key | value |", "|---|---|"]
    lines += [
        f"| `{k}` | {summary[k]:.3g} |" if isinstance(summary[k], float) else f"| `{k}` | {summary[k]} |"
        for k in keys
    ]
    return "\n".join(lines)


def update_readme(text: str) -> None:
    readme = README.read_text()
    start, end = readme.index(MARKERS[0]), readme.index(MARKERS[1])
    README.write_text(readme[: start + len(MARKERS[0])] + "\n" + text + "\n" + readme[end:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="the small size (≤ 3 min)")
    parser.add_argument("--size", choices=sorted(SIZES), help=argparse.SUPPRESS)
    parser.add_argument(
        "--device", default="cpu", help="step cost on this torch device (cuda: bf16 autocast)"
    )
    parser.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 2), help="torch threads")
    parser.add_argument("--steps-only", action="store_true", help="step cost only (no Ray)")
    parser.add_argument(
        "--order-only",
        action="store_true",
        help="only what data.exact_order costs (8 two-worker runs on the demo); written to order.json",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON (default %(default)s)")
    parser.add_argument("--update-readme", action="store_true", help="write the table into the README")
    args = parser.parse_args(argv)
    name = args.size or ("quick" if args.quick else "full")
    size = SIZES[name]
    t0 = time.perf_counter()
    if args.order_only:
        order = order_part(SIZES["full"], args.threads)
        print("\n".join(f"{k}: {v:.3f}" for k, v in order.items()))
        (HERE / "order.json").write_text(
            json.dumps({**order, "seconds": time.perf_counter() - t0}, indent=2) + "\n"
        )
        return 0
    rows = run_steps(step_specs(size, args.threads, args.device), size.rounds)
    summary: dict[str, Any] = step_summary(rows)
    if not args.steps_only and size.pipeline_steps:
        summary.update(pipeline_part(size, name == "quick", args.threads))
        summary.update(data_part(name == "quick", args.threads))  # after the runs: Ray is up
    summary["seconds"] = time.perf_counter() - t0
    meta = {
        "date": date.today().isoformat(),
        "size": name,
        "device": args.device,
        "threads": args.threads,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "command": "python benchmarks/perf/run.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    text = table(rows, summary)
    print(text)
    args.out.write_text(json.dumps({**summary, "meta": meta, "steps": rows}, indent=2) + "\n")
    if args.update_readme:
        update_readme(f"{meta['date']}, {meta['machine']}, `{meta['command']}`:\n\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
