"""The per-worker training loop that Ray Train's ``TorchTrainer`` runs on every rank.

setup (model, frozen teacher, task, optimiser, restore) → for each epoch: stream ID batches, cycle reference
batches, step, update the EMA centre, log (rank 0), checkpoint → final report. Only the student (and the FT head)
is wrapped in DDP; the teacher stays a plain frozen module on every rank.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import posixpath
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch

from dive import zeroshot
from dive.config import USES_HEAD, USES_REFERENCE, VAL_OBJECTIVES, Config, Method, Precision, from_dict
from dive.distributed import mean_across_ranks
from dive.guard import NonFiniteGuard
from dive.metrics import accuracy, retrieval_accuracy, val_objective
from dive.models import build_model
from dive.step import build_task, optimizer_step
from dive.task import DiveTask
from pipeline import checkpoint as training_state
from pipeline.data.format import CAPTIONED, LABELLED, Manifest
from pipeline.data.streams import KeptShard, cycle_batches, load_val_set
from pipeline.data.transforms import PromptTable, normalize_images, random_resized_crop
from pipeline.home import local_model

_log = logging.getLogger(__name__)


@dataclass
class RunInfo:
    """What the driver knows and the workers need (plain data, sent through train_loop_config)."""

    run_id: str
    tracking_uri: str
    id_rows: int
    classnames: list[str]
    templates: list[str]
    use_teacher_cache: bool
    spool: str = ""  # where rank 0 keeps what MLflow could not take (pipeline.tracking.Run)
    skip_counter: Any = None
    progress: Any = None  # a console ProgressBoard actor: rank 0 posts every step (at most 4 times a second)
    log_every: int = 10
    ref_rows: int = 0
    ref_batch: int = 0  # B′: reference rows per optimiser step (pipeline.preflight.Plan.ref_batch)
    # Streams each worker reads once and keeps in its memory (small ones, with data.keep_in_worker).
    kept: tuple[str, ...] = ()
    # The validation sets' manifests, by folder, as preflight read them (rank 0 samples its sets from these).
    val_manifests: dict[str, Manifest] = field(default_factory=dict)

    def __post_init__(self) -> None:  # train_loop_config carries them as plain dicts
        self.val_manifests = {
            folder: m if isinstance(m, Manifest) else Manifest(**m)
            for folder, m in self.val_manifests.items()
        }


def total_steps(cfg: Config, id_rows: int) -> tuple[int, int]:
    """(steps per epoch, total optimiser steps) for ``id_rows`` ID samples."""
    per_epoch = id_rows // cfg.optim.global_batch
    if per_epoch == 0:
        raise ValueError(
            f"optim.global_batch = {cfg.optim.global_batch} is larger than the ID training set ({id_rows} rows)"
        )
    total = per_epoch * cfg.optim.epochs
    return per_epoch, min(total, cfg.optim.max_steps) if cfg.optim.max_steps else total


@dataclass
class _Loop:
    """Everything one rank's loop holds: what it trains, how it steps, where it is, and what it reads."""

    cfg: Config
    info: RunInfo
    rank: int
    device: torch.device
    bundle: Any
    task: DiveTask
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    prompts: PromptTable
    steps_per_epoch: int
    max_steps: int
    step: int = 0
    epoch: int = 0
    done_in_epoch: int = 0  # optimiser steps already taken in the current epoch
    logger: _RankZeroLogger | None = None
    validator: _Validator | None = None
    id_shard: Any = None
    micro_id: int = 0  # ID rows per micro-batch on this rank
    ref_batches: Iterator[dict[str, torch.Tensor]] | None = None
    autocast: contextlib.AbstractContextManager[Any] = field(default_factory=contextlib.nullcontext)
    # Prompts and crops, reseeded every micro-batch.
    rng: torch.Generator = field(default_factory=torch.Generator)
    guard: NonFiniteGuard = field(default_factory=NonFiniteGuard)

    @property
    def finished(self) -> bool:
        return self.step >= self.max_steps or self.epoch >= self.cfg.optim.epochs


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """setup → restore → distribute → for each epoch: train_epoch, validate, report (a checkpoint)."""
    cfg, info = from_dict(config["cfg"]), RunInfo(**config["info"])
    kept = _keep_streams(cfg, info)  # their first pass starts now, while the model builds
    loop = _setup(cfg, info)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        _restore(loop, checkpoint)
    _distribute(loop, checkpoint is not None, kept)
    while not loop.finished:
        _train_epoch(loop)
        if loop.step >= loop.max_steps and 0 < loop.done_in_epoch < loop.steps_per_epoch:
            # Stopped mid-epoch by optim.max_steps: record the position, so a resume continues this epoch.
            _report(loop, _validate(loop))
            break
        loop.epoch += 1
        loop.done_in_epoch = 0
        _report(loop, _validate(loop))
    if loop.logger is not None:  # what an outage spooled on this node goes now, if the tracker is back
        loop.logger.run.replay()


def _setup(cfg: Config, info: RunInfo) -> _Loop:
    """Threads, model, frozen teacher (from the pre-trained weights, before any restore), task, optimiser."""
    ctx = ray.train.get_context()
    threads = cfg.scaling.threads_per_worker or max(
        1, (os.cpu_count() or 2) // max(ctx.get_local_world_size(), 1)
    )
    torch.set_num_threads(threads)
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.optim.seed)  # same initial weights (e.g. random heads) on every rank
    bundle = build_model(local_model(cfg.model))
    head = None
    if cfg.loss.method in USES_HEAD:
        head = zeroshot.build_head(bundle.model, bundle.tokenizer, info.classnames, info.templates)
    steps_per_epoch, max_steps = total_steps(cfg, info.id_rows)
    state = build_task(
        bundle,
        cfg.loss,
        cached_teacher=info.use_teacher_cache,
        head_weights=head,
        freeze_batchnorm=cfg.model.freeze_batchnorm,
        lr=cfg.optim.lr,
        weight_decay=cfg.optim.weight_decay,
        warmup=cfg.optim.warmup_steps,
        total_steps=max_steps,
        device=device,
    )
    return _Loop(
        cfg=cfg,
        info=info,
        rank=ctx.get_world_rank(),
        device=device,
        bundle=bundle,
        task=state.task,
        optimizer=state.optimizer,
        scheduler=state.scheduler,
        prompts=PromptTable(bundle.tokenizer, info.classnames, info.templates),
        steps_per_epoch=steps_per_epoch,
        max_steps=max_steps,
        guard=NonFiniteGuard(cfg.optim.max_nonfinite_steps),
    )


def _restore(loop: _Loop, checkpoint: Any) -> None:
    """A restarted worker group continues from the newest checkpoint that verifies (the last report's, unless
    it is incomplete): weights, optimiser, schedule, centre, position."""
    found, state = training_state.load_newest(
        checkpoint.filesystem, posixpath.dirname(checkpoint.path.rstrip("/")), loop.device
    )
    if found.skipped:
        _log.warning("[dive] resuming from %s", found.describe())
    loop.step, loop.epoch, loop.done_in_epoch = training_state.restore(
        state, loop.task, loop.optimizer, loop.scheduler
    )


def _micro_batches(cfg: Config, info: RunInfo, world: int) -> dict[str, int]:
    """Rows per micro-batch on each rank, per stream: each rank takes 1/world of a batch, in grad_accum pieces."""
    per_micro = world * cfg.optim.grad_accum
    return {"id": cfg.optim.global_batch // per_micro, "ref": info.ref_batch // per_micro}


def _keep_streams(cfg: Config, info: RunInfo) -> dict[str, KeptShard]:
    """This rank's shards of the streams it keeps (``info.kept``), their one Ray Data pass started in the background."""
    micro = _micro_batches(cfg, info, ray.train.get_context().get_world_size())
    return {name: KeptShard(ray.train.get_dataset_shard(name), micro[name]) for name in info.kept}


def _distribute(loop: _Loop, resumed: bool, kept: dict[str, KeptShard]) -> None:
    """DDP around the student (and the FT head) only; rank 0's logger and validator; the two data streams
    (``kept``: those read once and replayed from memory)."""
    cfg, world = loop.cfg, ray.train.get_context().get_world_size()
    # LP-FT leaves the tower unused while probing.
    ddp_kwargs = {"find_unused_parameters": cfg.loss.method is Method.lpft}
    loop.task.student = ray.train.torch.prepare_model(loop.task.student, parallel_strategy_kwargs=ddp_kwargs)
    if loop.task.head is not None:
        loop.task.head = ray.train.torch.prepare_model(loop.task.head)
    loop.task.train()
    if loop.rank == 0:
        loop.logger = _RankZeroLogger(loop.info, resumed)
        loop.validator = _Validator(cfg, loop.bundle, loop.device, loop.info.val_manifests)
        if resumed:  # visible in MLflow: where a restarted worker group resumed
            center = loop.task.center.norm().item()
            loop.logger.log(
                {"train/resumed_from_step": loop.step, "train/center_norm": center}, loop.step, always=True
            )
    if loop.device.type == "cuda" and cfg.model.precision is Precision.bf16:
        loop.autocast = torch.autocast("cuda", dtype=torch.bfloat16)
    micro = _micro_batches(cfg, loop.info, world)
    if cfg.loss.method in USES_REFERENCE:
        micro_ref = micro["ref"]
        # Resumed: continue the reference cycle where the interrupted run was (one reference micro-batch per ID
        # micro-batch; each rank's shard holds rows // world rows, Ray Data's equal split — of the manifest's rows,
        # so a reference set with undecodable samples resumes near, not exactly at, its position).
        per_cycle = max(loop.info.ref_rows // world // micro_ref, 1)
        skip = loop.step * cfg.optim.grad_accum % per_cycle
        loop.ref_batches = cycle_batches(
            kept.get("ref") or ray.train.get_dataset_shard("ref"), micro_ref, skip=skip
        )
    loop.id_shard = kept.get("id") or ray.train.get_dataset_shard("id")
    loop.micro_id = micro["id"]


def _train_epoch(loop: _Loop) -> None:
    """One pass over this rank's ID shard (the reference stream cycles beside it), until the epoch's or the
    run's last step; a resumed epoch first skips the batches it already trained on."""
    cfg, accum = loop.cfg, loop.cfg.optim.grad_accum
    t_wait, t_start = 0.0, time.perf_counter()
    micro: list[dict[str, torch.Tensor]] = []
    t_fetch = time.perf_counter()
    batches = loop.id_shard.iter_torch_batches(batch_size=loop.micro_id, drop_last=True)
    for seen, id_batch in enumerate(batches, 1):
        if seen <= loop.done_in_epoch * accum:  # resumed mid-epoch: skip what was already trained on
            t_fetch = time.perf_counter()
            continue
        batch = _device_batch(loop, id_batch, len(micro))
        t_wait += time.perf_counter() - t_fetch
        micro.append(batch)
        if len(micro) < accum:
            t_fetch = time.perf_counter()
            continue
        torch.manual_seed(_step_seed(cfg, loop.step, loop.rank))  # dropout: the same masks after a resume
        terms = optimizer_step(
            loop.task,
            micro,
            loop.optimizer,
            loop.scheduler,
            loop.step,
            grad_clip=cfg.optim.grad_clip,
            autocast=loop.autocast,
            guard=loop.guard,
        )
        micro = []
        loop.step += 1
        loop.done_in_epoch += 1
        _log_step(loop, terms, time.perf_counter() - t_start, t_wait)
        at_epoch_end = loop.done_in_epoch >= loop.steps_per_epoch
        every = cfg.run.checkpoint.every
        if every and loop.step % every == 0 and not at_epoch_end:
            _report(loop)
        if loop.step >= loop.max_steps or at_epoch_end:
            return
        t_fetch = time.perf_counter()


def _step_seed(cfg: Config, step: int, rank: int) -> int:
    """A seed fixed by (run seed, step, rank): what a step draws does not depend on what ran before it."""
    return cfg.optim.seed * 1_000_003 + step * 1_009 + rank * 7


def _device_batch(loop: _Loop, id_batch: dict[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
    """One micro-batch on the device: ID images (cropped when ``data.augment``), normalised, labels, a sampled
    prompt each — all drawn from a generator seeded by step, rank and micro-batch, so a resumed run draws the same —
    and the next reference batch."""
    device, cfg = loop.device, loop.cfg
    mean, std = loop.bundle.preprocess_cfg["mean"], loop.bundle.preprocess_cfg["std"]
    loop.rng.manual_seed(_step_seed(cfg, loop.step, loop.rank) + index)
    batch = {"id_label": id_batch["label"].to(device)}
    batch["id_text"] = loop.prompts.sample(id_batch["label"], loop.rng).to(device)
    images = id_batch["image"].to(device)
    if cfg.data.augment:
        images = random_resized_crop(
            images,
            loop.bundle.preprocess_cfg["size"][0],
            loop.rng,
            scale=cfg.data.crop_scale,
            ratio=cfg.data.crop_ratio,
            flip=cfg.data.hflip,
        )
    batch["id_image"] = normalize_images(images, mean, std)
    if loop.ref_batches is not None:
        ref = next(loop.ref_batches)
        batch["ref_image"] = normalize_images(ref["image"].to(device), mean, std)
        batch["ref_text"] = ref["text"].to(device)
        for key in ("teacher_image", "teacher_text"):
            if key in ref:
                batch[f"ref_{key}"] = ref[key].to(device)
    return batch


def _samples_per_s(loop: _Loop, elapsed: float) -> float:
    """ID samples per second since this epoch's first batch (what MLflow and the progress line both show)."""
    return loop.done_in_epoch * loop.cfg.optim.global_batch / max(elapsed, 1e-9)


def _log_step(loop: _Loop, terms: dict[str, torch.Tensor], elapsed: float, waited: float) -> None:
    """Loss terms averaged over ranks (every rank joins the all-reduce); rank 0 logs every ``log_every`` steps."""
    if loop.logger is None and loop.cfg.scaling.num_workers <= 1:
        return
    logged = {f"train/{k}": mean_across_ranks(v).item() for k, v in sorted(terms.items())}
    step = loop.step
    if loop.logger is not None:
        loop.logger.post_progress(loop, logged, _samples_per_s(loop, elapsed))
    if loop.logger is None or not (step % loop.info.log_every == 0 or step == 1 or step == loop.max_steps):
        return
    logged["train/lr"] = loop.scheduler.get_last_lr()[0]
    logged["train/nonfinite_steps"] = float(loop.guard.total)
    logged["train/center_norm"] = loop.task.center.norm().item()
    logged["train/samples_per_s"] = _samples_per_s(loop, elapsed)
    logged["train/data_wait_frac"] = waited / max(elapsed, 1e-9)
    loop.logger.log(logged, step)


def _validate(loop: _Loop) -> dict[str, float]:
    val = loop.validator(loop.task.student_model) if loop.validator else {}
    if loop.logger is not None and val:
        loop.logger.log(dict(val), loop.step)
        if loop.info.progress is not None and "val/objective" in val:
            loop.info.progress.post.remote({"val/objective": val["val/objective"]})
    return val


class _Validator:
    """Rank 0's epoch-end validation on small held-out sets (``val.id`` / ``val.ref``), loaded once.

    Its ``val/objective`` is what Tune sweeps optimise and ASHA prunes on; plain runs log the same metrics."""

    def __init__(
        self, cfg: Config, bundle: Any, device: torch.device, manifests: dict[str, Manifest] | None = None
    ) -> None:
        size = bundle.preprocess_cfg["size"][0]
        common = dict(
            size=size,
            max_pixels=cfg.data.max_image_pixels,
            samples=cfg.val.samples,
            model_name=cfg.model.name,
            column_map=cfg.data.column_map,
            seed=cfg.optim.seed,
        )
        manifests = manifests or {}

        def load(folder: str, kind: str) -> tuple[dict[str, np.ndarray], Manifest] | None:
            return load_val_set(folder, kind, manifest=manifests.get(folder), **common) if folder else None

        self.id_set = load(cfg.val.id, LABELLED)
        ref = load(cfg.val.ref, CAPTIONED)
        self.ref_set = ref[0] if ref is not None else None
        self.zs_set = load(cfg.val.zs, LABELLED)
        self.zs_far_sets = {name: load(folder, LABELLED) for name, folder in cfg.val.zs_far.items()}
        self.tokenizer, self.device, self.weight = bundle.tokenizer, device, cfg.val.id_weight
        # The metrics whose mean stands for zero-shot skill retained, beside val/id_acc, in val/objective.
        self.retained_metric = VAL_OBJECTIVES[cfg.val.objective]
        self.mean, self.std = bundle.preprocess_cfg["mean"], bundle.preprocess_cfg["std"]

    def __bool__(self) -> bool:
        return any(
            s is not None for s in (self.id_set, self.ref_set, self.zs_set, *self.zs_far_sets.values())
        )

    def _images(self, model: torch.nn.Module, pixels: np.ndarray) -> torch.Tensor:
        chunks = [torch.from_numpy(pixels[i : i + 256]).to(self.device) for i in range(0, len(pixels), 256)]
        return torch.cat(
            [model.encode_image(normalize_images(c, self.mean, self.std), normalize=True) for c in chunks]
        )

    def _zero_shot(self, model: torch.nn.Module, batch: dict[str, np.ndarray], manifest: Any) -> float:
        """Top-1 of a zero-shot head built from the set's own class names and templates."""
        templates = manifest.templates or zeroshot.DEFAULT_TEMPLATES
        head = zeroshot.build_head(model, self.tokenizer, manifest.classnames, templates, device=self.device)
        feats = self._images(model, batch["image"])
        return accuracy(feats @ head.T, torch.from_numpy(batch["label"]).to(self.device))

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        out: dict[str, float] = {}
        with zeroshot.eval_mode(model):
            for name, labelled in (("val/id_acc", self.id_set), ("val/zs_acc", self.zs_set)):
                if labelled is not None:
                    out[name] = self._zero_shot(model, *labelled)
            far = {
                f"val/zs_far/{name}": self._zero_shot(model, *s) for name, s in self.zs_far_sets.items() if s
            }
            if far:
                out.update(far)
                out["val/zs_far_acc"] = math.fsum(far.values()) / len(far)
            if self.ref_set is not None:
                image = self._images(model, self.ref_set["image"])
                text = model.encode_text(
                    torch.from_numpy(self.ref_set["text"]).to(self.device), normalize=True
                )
                out["val/ref_retrieval"] = retrieval_accuracy(image, text, list(self.ref_set["caption"]))
        objective = val_objective(out, self.weight, self.retained_metric)
        if objective is not None:
            out["val/objective"] = objective
        return out


def _report(loop: _Loop, extra: dict[str, float] | None = None) -> None:
    """Every rank reports (it is a barrier); rank 0 attaches the checkpoint with the full training state and
    its validation metrics (Tune reads rank 0's report)."""
    metrics = {"step": loop.step, "epoch": loop.epoch, **(extra or {})}
    if loop.rank != 0:
        ray.train.report(metrics)
        return
    position = (loop.step, loop.epoch, loop.done_in_epoch)
    state = training_state.capture(loop.task, loop.optimizer, loop.scheduler, position, loop.info.run_id)
    with tempfile.TemporaryDirectory() as folder:
        training_state.save(state, folder)
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(folder),
            checkpoint_upload_fn=_publish,
        )


def _publish(checkpoint: Any, name: str) -> Any:
    """Ray Train's upload step, all or nothing (:func:`pipeline.checkpoint.publish`): a reader never finds a
    half-written checkpoint, and a failed write leaves nothing behind."""
    storage = ray.train.get_context().get_storage()
    dest = storage.build_checkpoint_path_from_name(name)
    training_state.publish(checkpoint.path, storage.storage_filesystem, dest)
    return ray.train.Checkpoint(path=dest, filesystem=storage.storage_filesystem)


class _RankZeroLogger:
    """Step metrics (and the skipped-sample count) to the run the driver created."""

    def __init__(self, info: RunInfo, resumed: bool = False) -> None:
        from pipeline.tracking import Run

        # A tracker outage must cost a step seconds, not minutes: MLflow's HTTP retries (default 7, backoff
        # factor 2) shortened here, in this worker process only; the spool keeps what still fails.
        for key, value in (("MAX_RETRIES", "2"), ("BACKOFF_FACTOR", "1"), ("TIMEOUT", "15")):
            os.environ.setdefault(f"MLFLOW_HTTP_REQUEST_{key}", value)
        self.run = Run(info.tracking_uri, info.run_id, spool=Path(info.spool) if info.spool else None)
        self.info = info
        self.t0 = time.perf_counter()
        self._posted = 0.0
        # Steps between the checkpoint and the fault were logged before it: a restarted worker group (or a
        # resumed driver) trains them again but does not log them twice.
        self.logged_upto = self._last_logged_step() if resumed else -1

    def _last_logged_step(self) -> int:
        try:
            history = self.run.metric_history(["train/loss"])["train/loss"]
        except Exception as err:  # noqa: BLE001  (tracker down: duplicates are better than no training)
            _log.warning("[dive] could not read the run's logged steps (%s); steps may be logged twice", err)
            return -1
        return max((step for step, _ in history), default=-1)

    def post_progress(self, loop: _Loop, logged: dict[str, float], samples_per_s: float) -> None:
        """The driver's progress line: fire-and-forget, throttled (a fast GPU step must not wait on it)."""
        now = time.perf_counter()
        last = loop.step in (1, loop.max_steps) or loop.done_in_epoch == loop.steps_per_epoch
        if self.info.progress is None or (now - self._posted < 0.25 and not last):
            return
        self._posted = now
        self.info.progress.post.remote(
            {
                "step": loop.step,
                "total": loop.max_steps,
                "epoch": loop.epoch,
                "epochs": loop.cfg.optim.epochs,
                "terms": {k.removeprefix("train/"): v for k, v in logged.items()},
                "samples_per_s": samples_per_s,
            }
        )

    def log(self, metrics: dict[str, float], step: int, always: bool = False) -> None:
        """``always``: log even at a step that was logged before the restart (the resume marker)."""
        if step <= self.logged_upto and not always:
            return
        if self.info.skip_counter is not None:
            try:
                metrics["data/skipped"] = float(sum(ray.get(self.info.skip_counter.totals.remote()).values()))
            except ray.exceptions.RayActorError:  # its node is gone: the count is lost, training is not
                _log.warning("[dive] the skipped-sample counter is gone; data/skipped is no longer logged")
                self.info.skip_counter = None
        self.run.log_metrics(metrics, step)
        terms = "  ".join(
            f"{k.split('/')[-1]}={v:.4g}" for k, v in metrics.items() if "loss" in k or k.startswith("val/")
        )
        # A logger, not print: Train V2 patches print to log *and* echo it whenever stdout is wrapped, so every
        # line reached the driver twice.
        _log.info("[dive] step %d  %s  (%.1f s)", step, terms, time.perf_counter() - self.t0)
