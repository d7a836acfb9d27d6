"""The per-worker training loop that Ray Train's ``TorchTrainer`` runs on every rank.

setup (model, frozen teacher, task, optimiser, restore) → for each epoch: stream ID batches, cycle reference
batches, step, update the EMA centre, log (rank 0), checkpoint → final report. Only the student (and the FT head)
is wrapped in DDP; the teacher stays a plain frozen module on every rank.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch

from dive import zeroshot
from dive.config import USES_HEAD, USES_REFERENCE, USES_TEACHER, VAL_OBJECTIVES, Config, Method, from_dict
from dive.distributed import mean_across_ranks
from dive.metrics import accuracy, retrieval_accuracy, val_objective
from dive.models import build_model, clamp_logit_scale, configure_temperature, embed_dim, frozen_teacher
from dive.optim import build_optimizer, cosine_with_warmup
from dive.task import DiveTask
from pipeline import checkpoint as training_state
from pipeline.data.format import CAPTIONED, LABELLED
from pipeline.data.streams import cycle_batches, load_val_set
from pipeline.data.transforms import PromptTable, normalize_images

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
    skip_counter: Any = None
    log_every: int = 10


def total_steps(cfg: Config, id_rows: int) -> tuple[int, int]:
    """(steps per epoch, total optimiser steps) for ``id_rows`` ID samples."""
    per_epoch = id_rows // cfg.optim.global_batch
    if per_epoch == 0:
        raise ValueError(
            f"optim.global_batch = {cfg.optim.global_batch} is larger than the ID training set ({id_rows} rows)"
        )
    total = per_epoch * cfg.optim.epochs
    return per_epoch, min(total, cfg.optim.max_steps) if cfg.optim.max_steps else total


def train_loop_per_worker(config: dict[str, Any]) -> None:
    cfg: Config = from_dict(config["cfg"])
    info = RunInfo(**config["info"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    threads = cfg.scaling.threads_per_worker or max(
        1, (os.cpu_count() or 2) // max(ctx.get_local_world_size(), 1)
    )
    torch.set_num_threads(threads)
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.optim.seed)  # same initial weights (e.g. random heads) on every rank

    # ---- model, frozen teacher, task
    bundle = build_model(cfg.model)
    student = bundle.model
    configure_temperature(student, cfg.loss.temperature, cfg.loss.learn_temperature)
    method = cfg.loss.method
    needs_teacher = method in USES_TEACHER and not info.use_teacher_cache
    teacher = (
        frozen_teacher(student) if needs_teacher else None
    )  # from the pre-trained weights, before restore
    head = None
    if method in USES_HEAD:
        head = zeroshot.build_head(student, bundle.tokenizer, info.classnames, info.templates)
    task = DiveTask(
        student,
        teacher,
        cfg.loss,
        embed_dim(student),
        head_weights=head,
        freeze_batchnorm=cfg.model.freeze_batchnorm,
    ).to(device)
    prompts = PromptTable(bundle.tokenizer, info.classnames, info.templates)
    mean, std = bundle.preprocess_cfg["mean"], bundle.preprocess_cfg["std"]

    optimizer = build_optimizer(task.named_parameters(), cfg.optim.lr, cfg.optim.weight_decay)
    steps_per_epoch, max_steps = total_steps(cfg, info.id_rows)
    scheduler = cosine_with_warmup(optimizer, cfg.optim.warmup_steps, max_steps)
    step, epoch, done_in_epoch = 0, 0, 0

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        state = training_state.load_checkpoint(checkpoint, device)
        step, epoch, done_in_epoch = training_state.restore(state, task, optimizer, scheduler)

    # Only the student (and the FT head) is data-parallel; LP-FT leaves the tower unused while probing.
    ddp_kwargs = {"find_unused_parameters": method is Method.lpft}
    task.student = ray.train.torch.prepare_model(task.student, parallel_strategy_kwargs=ddp_kwargs)
    if task.head is not None:
        task.head = ray.train.torch.prepare_model(task.head)
    task.train()

    logger = _RankZeroLogger(info) if rank == 0 else None
    validator = _Validator(cfg, bundle, device) if rank == 0 else None
    if (
        logger is not None and checkpoint is not None
    ):  # visible in MLflow: where a restarted worker group resumed
        logger.log({"train/resumed_from_step": step, "train/center_norm": task.center.norm().item()}, step)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda" and cfg.model.precision == "bf16"
        else contextlib.nullcontext()
    )
    accum = cfg.optim.grad_accum
    micro_id = cfg.optim.global_batch // world // accum
    micro_ref = (cfg.data.ref_batch or cfg.optim.global_batch) // world // accum
    uses_ref = method in USES_REFERENCE
    ref_batches = cycle_batches(ray.train.get_dataset_shard("ref"), micro_ref) if uses_ref else None
    id_shard = ray.train.get_dataset_shard("id")
    prompt_rng = torch.Generator()

    while step < max_steps and epoch < cfg.optim.epochs:
        t_wait, t_start = 0.0, time.perf_counter()
        id_batches = id_shard.iter_torch_batches(batch_size=micro_id, drop_last=True)
        micro: list[dict[str, torch.Tensor]] = []
        seen_in_epoch = 0
        t_fetch = time.perf_counter()
        for id_batch in id_batches:
            seen_in_epoch += 1
            if seen_in_epoch <= done_in_epoch * accum:  # resumed mid-epoch: skip what was already trained on
                t_fetch = time.perf_counter()
                continue
            batch = {
                "id_image": normalize_images(id_batch["image"].to(device), mean, std),
                "id_label": id_batch["label"].to(device),
            }
            prompt_rng.manual_seed(cfg.optim.seed * 1_000_003 + step * 1_009 + rank * 7 + len(micro))
            batch["id_text"] = prompts.sample(id_batch["label"], prompt_rng).to(device)
            if ref_batches is not None:
                ref = next(ref_batches)
                batch["ref_image"] = normalize_images(ref["image"].to(device), mean, std)
                batch["ref_text"] = ref["text"].to(device)
                for key in ("teacher_image", "teacher_text"):
                    if key in ref:
                        batch[f"ref_{key}"] = ref[key].to(device)
            t_wait += time.perf_counter() - t_fetch
            micro.append(batch)
            if len(micro) < accum:
                t_fetch = time.perf_counter()
                continue

            terms = _optimizer_step(task, micro, optimizer, scheduler, cfg, step, autocast)
            micro = []
            step += 1
            done_in_epoch += 1
            if logger is not None or cfg.scaling.num_workers > 1:
                logged = {f"train/{k}": mean_across_ranks(v).item() for k, v in sorted(terms.items())}
                if logger is not None and (step % info.log_every == 0 or step == 1 or step == max_steps):
                    elapsed = time.perf_counter() - t_start
                    logged["train/lr"] = scheduler.get_last_lr()[0]
                    logged["train/center_norm"] = task.center.norm().item()
                    logged["train/samples_per_s"] = (
                        done_in_epoch * cfg.optim.global_batch / max(elapsed, 1e-9)
                    )
                    logged["train/data_wait_frac"] = t_wait / max(elapsed, 1e-9)
                    logger.log(logged, step)
            at_epoch_end = done_in_epoch >= steps_per_epoch
            if cfg.scaling.checkpoint_every and step % cfg.scaling.checkpoint_every == 0 and not at_epoch_end:
                _report(task, optimizer, scheduler, step, epoch, done_in_epoch, info, rank)
            if step >= max_steps or at_epoch_end:
                break
            t_fetch = time.perf_counter()
        if step >= max_steps and 0 < done_in_epoch < steps_per_epoch:
            # Stopped mid-epoch by optim.max_steps: record the position, so a resume continues this epoch.
            val = _validate(validator, task, logger, step)
            _report(task, optimizer, scheduler, step, epoch, done_in_epoch, info, rank, val)
            break
        epoch += 1
        done_in_epoch = 0
        val = _validate(validator, task, logger, step)
        _report(task, optimizer, scheduler, step, epoch, 0, info, rank, val)


def _validate(validator: _Validator | None, task: DiveTask, logger: Any, step: int) -> dict[str, float]:
    val = validator(task.student_model) if validator else {}
    if logger is not None and val:
        logger.log(dict(val), step)
    return val


def _optimizer_step(
    task: DiveTask,
    micro: list[dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    cfg: Config,
    step: int,
    autocast: contextlib.AbstractContextManager[Any],
) -> dict[str, torch.Tensor]:
    """Accumulate gradients over the micro-batches (syncing DDP only on the last), step, then update m."""
    totals: dict[str, torch.Tensor] = {}
    for i, batch in enumerate(micro):
        last = i == len(micro) - 1
        sync = (
            contextlib.nullcontext()
            if last or not hasattr(task.student, "no_sync")
            else task.student.no_sync()
        )
        with sync:
            with autocast:
                terms = task(batch, step=step)
            (terms["loss"] / len(micro)).backward()
        for k, v in terms.items():
            totals[k] = totals.get(k, 0.0) + v.detach().float() / len(micro)
    if cfg.optim.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_([p for p in task.parameters() if p.requires_grad], cfg.optim.grad_clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    clamp_logit_scale(task.student_model)
    task.update_center()  # after the optimiser step (method.md §2), all-reduced across ranks
    return totals


class _Validator:
    """Rank 0's epoch-end validation on small held-out sets (``eval.val_id`` / ``eval.val_ref``), loaded once.

    Its ``val/objective`` is what Tune sweeps optimise and ASHA prunes on; plain runs log the same metrics."""

    def __init__(self, cfg: Config, bundle: Any, device: torch.device) -> None:
        size = bundle.preprocess_cfg["size"][0]
        common = dict(
            size=size,
            max_pixels=cfg.data.max_image_pixels,
            samples=cfg.eval.val_samples,
            model_name=cfg.model.name,
            column_map=cfg.data.column_map,
            seed=cfg.optim.seed,
        )
        self.id_set = load_val_set(cfg.eval.val_id, LABELLED, **common) if cfg.eval.val_id else None
        self.ref_set = load_val_set(cfg.eval.val_ref, CAPTIONED, **common)[0] if cfg.eval.val_ref else None
        self.zs_set = load_val_set(cfg.eval.val_zs, LABELLED, **common) if cfg.eval.val_zs else None
        self.tokenizer, self.device, self.weight = bundle.tokenizer, device, cfg.eval.val_id_weight
        self.kept = VAL_OBJECTIVES[cfg.eval.val_objective]
        self.mean, self.std = bundle.preprocess_cfg["mean"], bundle.preprocess_cfg["std"]

    def __bool__(self) -> bool:
        return any(s is not None for s in (self.id_set, self.ref_set, self.zs_set))

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
            if self.ref_set is not None:
                image = self._images(model, self.ref_set["image"])
                text = model.encode_text(
                    torch.from_numpy(self.ref_set["text"]).to(self.device), normalize=True
                )
                out["val/ref_retrieval"] = retrieval_accuracy(image, text, list(self.ref_set["caption"]))
        objective = val_objective(out, self.weight, self.kept)
        if objective is not None:
            out["val/objective"] = objective
        return out


def _report(
    task: DiveTask,
    optimizer,
    scheduler,
    step: int,
    epoch: int,
    done_in_epoch: int,
    info: RunInfo,
    rank: int,
    extra: dict[str, float] | None = None,
) -> None:
    """Every rank reports (it is a barrier); rank 0 attaches the checkpoint with the full training state and
    its validation metrics (Tune reads rank 0's report)."""
    metrics = {"step": step, "epoch": epoch, **(extra or {})}
    if rank != 0:
        ray.train.report(metrics)
        return
    state = training_state.capture(task, optimizer, scheduler, (step, epoch, done_in_epoch), info.run_id)
    with tempfile.TemporaryDirectory() as folder:
        training_state.save(state, folder)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


class _RankZeroLogger:
    """Step metrics (and the skipped-sample count) to the run the driver created."""

    def __init__(self, info: RunInfo) -> None:
        from pipeline.tracking import Run

        self.run = Run(info.tracking_uri, info.run_id)
        self.info = info
        self.t0 = time.perf_counter()

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.info.skip_counter is not None:
            metrics["data/skipped"] = float(sum(ray.get(self.info.skip_counter.totals.remote()).values()))
        self.run.log_metrics(metrics, step)
        terms = "  ".join(
            f"{k.split('/')[-1]}={v:.4g}" for k, v in metrics.items() if "loss" in k or k.startswith("val/")
        )
        # A logger, not print: Train V2 patches print to log *and* echo it whenever stdout is wrapped, so every
        # line reached the driver twice.
        _log.info("[dive] step %d  %s  (%.1f s)", step, terms, time.perf_counter() - self.t0)
