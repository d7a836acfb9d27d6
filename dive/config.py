"""Typed run configuration.

The dataclasses below are the schema, a YAML file holds values, and ``a.b=c`` strings override them on the
command line. OmegaConf does the merging and the type conversion; :func:`validate` adds the checks types cannot
express (λ ≥ 0, momentum in [0, 1), batch divisibility, paths that must exist). Every error names the dotted
key and what was expected, so a bad config fails on the driver before any Ray worker starts.
"""

from __future__ import annotations

import enum
import math
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException, ValidationError
from omegaconf.nodes import EnumNode

from dive.redact import mask_text, mask_tree, masked_keys
from dive.templates import SET_NAMES as TEMPLATE_SETS


class ConfigError(ValueError):
    """A config value is unknown, of the wrong type, or impossible; the message names the key."""


class Method(str, enum.Enum):
    """Training objective. All of them run through the same task and the same training loop."""

    dive = "dive"  # FLYP contrastive + λ_avl·AVL + λ_pvl·PVL on the reference batch (the paper's method)
    flyp = "flyp"  # contrastive loss on ID image / class-prompt pairs only
    flyp_replay = "flyp_replay"  # FLYP + the same contrastive loss on the reference batch
    snd = "snd"  # FLYP + λ_snd · ‖f_ft(x_ref) − f_pre(x_ref)‖² (image difference vectors forced to zero)
    ft = "ft"  # cross-entropy through a linear head initialised from the zero-shot head
    lpft = "lpft"  # linear probe for loss.lp_steps, then ft


class Precision(str, enum.Enum):
    """Numeric precision of training and evaluation."""

    fp32 = "fp32"
    bf16 = "bf16"  # autocast on GPU only; on CPU training stays fp32


class DemoSize(str, enum.Enum):
    """Size of the built-in demo data set."""

    default = "default"  # ≈ 20k images: the README's numbers
    tiny = "tiny"  # tests and smoke jobs


class EvalDevice(str, enum.Enum):
    """Where evaluation scores images (``eval.device``)."""

    auto = "auto"  # cuda when scaling.use_gpu, else cpu
    cpu = "cpu"
    cuda = "cuda"  # one scoring actor per GPU (num_gpus=1), bf16 autocast


class Placement(str, enum.Enum):
    """How Ray places the Train workers on nodes (``scaling.placement``: Ray's placement-group strategies)."""

    PACK = "PACK"  # as few nodes as fit (Ray Train's default)
    SPREAD = "SPREAD"  # over as many nodes as there are, best effort
    STRICT_SPREAD = "STRICT_SPREAD"  # one worker per node, or wait for nodes
    STRICT_PACK = "STRICT_PACK"  # all on one node


class ValObjective(str, enum.Enum):
    """Which "zero-shot kept" metric stands beside val/id_acc in val/objective."""

    id_ref = "id_ref"  # val/ref_retrieval
    id_zs = "id_zs"  # val/zs_acc
    id_zs_far = "id_zs_far"  # the mean of val/zs_acc and val/zs_far_acc


def choices(kind: type[enum.Enum]) -> str:
    """The values of an Enum for an error message: ``one of 'fp32' or 'bf16'``."""
    *rest, last = [repr(m.value) for m in kind]
    return f"one of {', '.join(rest)} or {last}" if rest else f"one of {last}"


# Which methods use what: one definition, read by validation, the task and the worker.
USES_REFERENCE = frozenset({Method.dive, Method.flyp_replay, Method.snd})
USES_TEACHER = frozenset({Method.dive, Method.snd})
USES_HEAD = frozenset({Method.ft, Method.lpft})
# Images with more pixels than this are skipped and counted (decompression-bomb guard), unless configured.
MAX_IMAGE_PIXELS = 64_000_000


# ---------------------------------------------------------------------------------------------------- model
@dataclass
class ModelSettings:
    # Any open_clip model name ("ViT-B-16"), the shipped tiny test model ("dive-tiny"),
    # or "local-dir:/path/to/export" for a folder written by dive.export.
    name: str = "dive-tiny"
    # open_clip pretrained tag ("openai", needs internet), a weights file (.pt/.bin/.safetensors), or "" for
    # random init. Ignored for local-dir: names (the folder holds the weights).
    pretrained: str = ""
    # "fp32" or "bf16". bf16 is autocast on GPU only; on CPU training stays fp32.
    precision: Precision = Precision.fp32
    # Trade compute for memory on big towers.
    grad_checkpointing: bool = False
    # Keep BatchNorm layers in eval mode while fine-tuning (running statistics frozen; their affine weights still
    # train). Small per-worker batches from a narrow ID domain otherwise rewrite the statistics the pre-trained
    # features depend on: on EmojiShift (lite-minilm), 10 train-mode forward passes over ID batches, with no
    # weight update, drop the teacher's caption retrieval from 0.315 to 0.05. No effect on ViTs.
    freeze_batchnorm: bool = True
    # Where open_clip caches downloaded weights (None: its default).
    cache_dir: str | None = None


# ---------------------------------------------------------------------------------------------------- data
@dataclass
class DataSettings:
    # Folder of labelled shards (*.parquet + dataset.json): the ID training set.
    id_train: str = ""
    # Folder of captioned shards: the reference set S_ref for AVL/PVL, replay and SnD.
    reference: str = ""
    # Source column -> schema column, e.g. {jpg: image, txt: caption} for img2dataset output.
    column_map: dict[str, str] = field(default_factory=dict)
    # Random-resized-crop + flip on ID training images, drawn on the Train worker from a generator seeded by step
    # and rank (the stream holds each image with a margin). Reference images are never augmented, so that
    # teacher embeddings of the reference set can be cached.
    augment: bool = True
    # The random-resized crop of augmented ID images: the area share and aspect-ratio ranges, and the mirror.
    # The defaults are this project's; FLYP (the paper's recipe) trains with open_clip's transform: crop_scale
    # [0.9, 1.0], no flip. A stream keeps each image with the margin the smallest crop needs (1/sqrt(scale)).
    crop_scale: list[float] = field(default_factory=lambda: [0.6, 1.0])
    crop_ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    hflip: bool = True
    # Images with more pixels than this are skipped and counted (decompression-bomb guard).
    max_image_pixels: int = MAX_IMAGE_PIXELS
    # If set, the built-in demo data and demo teacher are generated into this folder when missing.
    demo: str = ""
    # Size of that demo: "default" (≈ 20k images, the README's numbers) or "tiny" (tests, smoke jobs).
    demo_size: DemoSize = DemoSize.default
    # Global reference batch B'. 0 means B' = optim.global_batch (docs/method.md §3: the paper does not report
    # B'). B/4 is the cheaper setting: on EmojiShift it trains in 1.26x FLYP's time (B' = B: 1.94x) and keeps 70 %
    # of DiVE's test ZS gain (within seed noise) and 96 % of its RSA gain (benchmarks/emojishift/README.md).
    ref_batch: int = 0
    # A preprocessed stream estimated at most this many MB is decoded once, not by every epoch and every cycle of
    # the reference stream (an augmented ID stream too: its crops are drawn on the worker). 0: always stream.
    keep_in_memory_mb: int = 1024
    # The driver computes such a stream into Ray's object store before training starts. true: each worker reads its
    # shard from there once, in the background while its model builds, and replays it from its own memory (a second
    # copy of the shard; data wait about 1 % of step time instead of about 20 %, benchmarks/perf/README.md).
    # false: every epoch reads it from the object store again (a Ray Data pass each; no second copy).
    keep_in_worker: bool = True
    # Every rank reads its rows in the same order on every run (Ray Data's preserve_order), so a run resumed after a
    # lost worker, node or driver trains on exactly the batches an uninterrupted run would. false: blocks go to
    # whichever worker asks first (a little faster on a busy cluster; a resume is then not exact).
    exact_order: bool = True


# ---------------------------------------------------------------------------------------------------- loss
@dataclass
class LossSettings:
    method: Method = Method.dive
    # Weights of the two DiVE terms. The paper uses one λ = 1000 for both (searched over 100..5000).
    lambda_avl: float = 1000.0
    lambda_pvl: float = 1000.0
    # EMA momentum α of the shared centre m. Paper: 0.99; α = 0 loses 1.2 OOD points.
    ema_momentum: float = 0.99
    # Weight of the SnD feature-distance term (method snd).
    lambda_snd: float = 1000.0
    # Weight of the contrastive loss on the reference batch (method flyp_replay).
    lambda_replay: float = 1.0
    # Initial temperature τ = 1/exp(logit_scale). None keeps the pre-trained model's value.
    temperature: float | None = None
    # Whether logit_scale is trained (CLIP/FLYP: yes). Clamped at τ ≥ 0.01 as in CLIP training.
    learn_temperature: bool = True
    # lpft: optimiser steps of linear probing (towers frozen) before full fine-tuning.
    lp_steps: int = 100


# ---------------------------------------------------------------------------------------------------- optim
@dataclass
class OptimSettings:
    # FLYP's ImageNet recipe (the paper follows it): AdamW, lr 1e-5, wd 0.1, cosine, 500 warm-up steps.
    lr: float = 1e-5
    weight_decay: float = 0.1
    warmup_steps: int = 500
    epochs: int = 10
    # > 0 stops after this many optimiser steps, whatever epochs says.
    max_steps: int = 0
    # The contrastive batch across all workers (per step, before accumulation splits it).
    global_batch: int = 512
    # Micro-batches per optimiser step. Note: each micro-batch is its own contrastive batch.
    grad_accum: int = 1
    # Max gradient norm; 0 disables clipping.
    grad_clip: float = 0.0
    seed: int = 0
    # A step whose loss or gradients are NaN/inf is skipped (dive/guard.py); this many in a row fail the run
    # (0: never fail).
    max_nonfinite_steps: int = 10


# ---------------------------------------------------------------------------------------------------- eval
# val.objective → the metrics whose mean stands for "zero-shot kept" beside val/id_acc in val/objective.
VAL_OBJECTIVES: dict[ValObjective, tuple[str, ...]] = {
    ValObjective.id_ref: ("val/ref_retrieval",),
    ValObjective.id_zs: ("val/zs_acc",),
    ValObjective.id_zs_far: ("val/zs_acc", "val/zs_far_acc"),
}


@dataclass
class EvalSettings:
    # Labelled shard folders. ID test set, and named OOD / zero-shot suites.
    id: str = ""
    ood: dict[str, str] = field(default_factory=dict)
    zs: dict[str, str] = field(default_factory=dict)
    # Far zero-shot suites: tasks of another kind than the ID task (another domain, another question), reported
    # apart from `zs` (zs_far/<name>, zs_far_avg): the skill fine-tuning forgets, as CLIP's does after ImageNet.
    zs_far: dict[str, str] = field(default_factory=dict)
    # Suite name ("id" or an ood / zs name) → a named template set that replaces the set's own prompts:
    # openai_imagenet (CLIP's 80), simple (its 7), default, or clip:<dataset> (CLIP's per-dataset prompts, as
    # CLIP_benchmark ships them). Sets scored on ImageNet's head (R, A, ObjectNet) take it for that head.
    templates: dict[str, str] = field(default_factory=dict)
    # RSA on a fixed sample of captioned pairs (docs/method.md §5). "" uses data.reference.
    rsa_set: str = ""
    rsa_samples: int = 1000
    # Images per forward pass: in the driver's process and in each scoring actor (one Ray Data block each).
    batch_size: int = 256
    # Where images are scored: "auto" (cuda when scaling.use_gpu, else cpu), "cpu" or "cuda". On cuda every scoring
    # actor holds one GPU and runs the image towers under bf16 autocast, while Ray Data tasks on the cluster's CPUs
    # decode; cuda where the cluster (or, without Ray, this machine) has no GPU is an error before anything runs.
    device: EvalDevice = EvalDevice.auto
    # Scoring actors of the Ray Data pass (suites above in_process_rows). 0: one per GPU on cuda, one per logical
    # CPU of the cluster on cpu. CPU actors split this machine's cores between them (torch threads, and as many
    # logical CPUs) and decode their own batches; each holds a copy of the models.
    actors: int = 0
    # Suites of at most this many images in all are scored in the driver's process, where the models already
    # are (no Ray Data start, no scoring actor); larger ones stream through Ray Data. 0: always Ray Data.
    in_process_rows: int = 20_000
    # Also score the teacher (zero-shot) in every run's report. A benchmark that fine-tunes many times from one
    # teacher turns this off and scores the teacher once.
    with_teacher: bool = True


# ---------------------------------------------------------------------------------------------------- val
@dataclass
class ValSettings:
    """Validation at every epoch end (rank 0): the signal Tune sweeps optimise, never the eval suites."""

    # id: a labelled split held out from the ID training data → val/id_acc (zero-shot head, its templates).
    # ref: captioned pairs the fine-tune never trains on → val/ref_retrieval (image→caption top-1 among
    # `samples` pairs), a proxy for kept zero-shot ability.
    # zs: a labelled split of classes neither ID nor any zs suite has → val/zs_acc (zero-shot head): kept
    # zero-shot skill measured directly, on data no test set shares.
    id: str = ""
    ref: str = ""
    zs: str = ""
    # zs_far: named labelled splits of zero-shot tasks of another kind than the ID task (another domain, another
    # question) → val/zs_far/<name> each and val/zs_far_acc, their unweighted mean: the skill fine-tuning forgets.
    zs_far: dict[str, str] = field(default_factory=dict)
    samples: int = 256
    # val/objective = w · val/id_acc + (1 − w) · <kept>, where <kept> is val/ref_retrieval ("id_ref"), val/zs_acc
    # ("id_zs") or the mean of val/zs_acc and val/zs_far_acc ("id_zs_far"; w = 1/3 weighs ID, near and far
    # zero-shot alike); the one that exists when only one does.
    objective: ValObjective = ValObjective.id_ref
    id_weight: float = 0.5


# ---------------------------------------------------------------------------------------------------- tracking
@dataclass
class TrackingSettings:
    # MLflow tracking URI. "" means $MLFLOW_TRACKING_URI, else a SQLite file mlflow.db in the working dir.
    uri: str = ""
    experiment: str = "dive"
    run_name: str = ""
    # Exports, eval tables and plots are written under this folder (made absolute on the driver).
    output_dir: str = "outputs"
    # Step metrics go to MLflow every N optimiser steps (and at the first and last step).
    log_every: int = 10


# ---------------------------------------------------------------------------------------------------- scaling
@dataclass
class ScalingSettings:
    num_workers: int = 2
    use_gpu: bool = False
    # Logical CPUs per Train worker. Fractions keep Ray Data's 1-CPU read tasks schedulable on small machines.
    cpus_per_worker: float = 0.5
    # Torch intra-op threads per worker (0: cores // workers on this node).
    threads_per_worker: int = 0
    # Where the workers go: PACK (fewest nodes), SPREAD, STRICT_SPREAD (one per node), STRICT_PACK (one node).
    placement: Placement = Placement.PACK


# ---------------------------------------------------------------------------------------------------- run
# Shaped like Ray Train's RunConfig(storage_path, checkpoint_config, failure_config), which they fill.
@dataclass
class CheckpointSettings:
    # Checkpoint every N optimiser steps (0: only at epoch ends); keep the newest num_to_keep.
    every: int = 0
    num_to_keep: int = 2


@dataclass
class FailureSettings:
    # Worker-group restarts Ray Train may do from the last checkpoint (-1: unlimited).
    max_failures: int = 1


@dataclass
class RunSettings:
    # Ray Train storage (checkpoints, results): a folder or a URI. Must be shared storage (NFS, s3://) on
    # multi-node clusters. "" means <tracking.output_dir>/ray_results.
    storage_path: str = ""
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)
    failure: FailureSettings = field(default_factory=FailureSettings)


@dataclass
class Config:
    model: ModelSettings = field(default_factory=ModelSettings)
    data: DataSettings = field(default_factory=DataSettings)
    loss: LossSettings = field(default_factory=LossSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    tracking: TrackingSettings = field(default_factory=TrackingSettings)
    scaling: ScalingSettings = field(default_factory=ScalingSettings)
    run: RunSettings = field(default_factory=RunSettings)
    val: ValSettings = field(default_factory=ValSettings)


# ---------------------------------------------------------------------------------------------------- loading
def explain_error(err: OmegaConfBaseException, source: str) -> ConfigError:
    """OmegaConf's error as a :class:`ConfigError` naming the source and the dotted key; a value that is no member
    of an Enum field names the allowed values, in the words :func:`validate` uses."""
    key = getattr(err, "full_key", None) or "?"
    node = getattr(err, "child_node", None)
    if isinstance(err, ValidationError) and isinstance(node, EnumNode):
        msg = f"expected {choices(node.enum_type)}, got {getattr(err, 'value', '?')!r}"
    else:
        msg = str(getattr(err, "msg", err)).splitlines()[0]
    return ConfigError(f"{source}: key '{key}': {msg}")


def _merge(base: DictConfig, other: Any, source: str) -> DictConfig:
    try:
        return cast(DictConfig, OmegaConf.merge(base, other))  # merged into a mapping: a mapping
    except OmegaConfBaseException as err:
        raise explain_error(err, source) from None


#: Keys that moved (old → new): a config or run folder written before still loads, with a FutureWarning.
MOVED_KEYS = {
    "scaling.storage_path": "run.storage_path",
    "scaling.checkpoint_every": "run.checkpoint.every",
    "scaling.num_to_keep": "run.checkpoint.num_to_keep",
    "scaling.max_failures": "run.failure.max_failures",
    "eval.val_id": "val.id",
    "eval.val_ref": "val.ref",
    "eval.val_zs": "val.zs",
    "eval.val_samples": "val.samples",
    "eval.val_objective": "val.objective",
    "eval.val_id_weight": "val.id_weight",
}


def _moved(key: str, source: str) -> str:
    new = MOVED_KEYS.get(key)
    if new is None:
        return key
    warnings.warn(f"{source}: {key} is now {new}", FutureWarning, stacklevel=4)
    return new


def _move_keys(tree: DictConfig, source: str) -> DictConfig:
    """``tree`` with the keys of :data:`MOVED_KEYS` under their new names."""
    plain: dict[str, Any] = OmegaConf.to_container(tree)  # type: ignore[assignment]
    for old in MOVED_KEYS:
        section, key = old.split(".")
        if isinstance(plain.get(section), dict) and key in plain[section]:
            value = plain[section].pop(key)
            *parents, leaf = _moved(old, source).split(".")
            node = plain
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
    return OmegaConf.create(plain)


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    base: Mapping[str, Any] | None = None,
) -> Config:
    """Schema defaults ← ``base`` mapping ← YAML file ← ``a.b=c`` overrides, type-checked at each step."""
    cfg = OmegaConf.structured(Config)
    if base is not None:
        cfg = _merge(cfg, _move_keys(OmegaConf.create(dict(base)), "base config"), "base config")
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            loaded = OmegaConf.load(p)
        except Exception as err:  # YAML syntax errors come in several types
            raise ConfigError(f"{p}: not valid YAML: {err}") from None
        if not isinstance(loaded, DictConfig):
            raise ConfigError(f"{p}: expected a mapping of sections (model:, loss:, …), got a list")
        cfg = _merge(cfg, _move_keys(loaded, str(p)), str(p))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected key=value, e.g. loss.lambda_avl=500")
        key, value = item.split("=", 1)
        item = f"{_moved(key, 'override')}={value}"
        try:
            dot = OmegaConf.from_dotlist([item])
        except OmegaConfBaseException as err:
            raise explain_error(err, f"override '{item}'") from None
        cfg = _merge(cfg, dot, f"override '{item}'")
    try:
        return OmegaConf.to_object(cfg)  # type: ignore[return-value]
    except OmegaConfBaseException as err:  # an interpolation that cannot resolve, e.g. an unset ${oc.env:X}
        where = f"{path}: " if path is not None else ""
        key = getattr(err, "full_key", None) or "?"
        raise ConfigError(f"{where}key '{key}': {str(err).splitlines()[0]}") from None


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict (enums as strings): what goes to YAML, Ray Tune and checkpoints."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)  # type: ignore[return-value]


def from_dict(d: Mapping[str, Any]) -> Config:
    """Inverse of :func:`to_dict`, with the same type checks as :func:`load_config`."""
    return load_config(base=d)


def to_yaml(cfg: Config) -> str:
    """The config as YAML for a file, the console or MLflow: with every URI's secrets masked
    (:func:`dive.redact.mask_tree`), since each of those outlives the process; the real values stay in ``cfg``."""
    return OmegaConf.to_yaml(OmegaConf.create(mask_tree(to_dict(cfg))))


def flatten(cfg: Config) -> dict[str, Any]:
    """``{"loss.lambda_avl": 1000.0, …}``: one flat param per leaf, for MLflow — URIs' secrets masked, as in
    :func:`to_yaml`."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, Mapping) and node:
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = node

    walk("", mask_tree(to_dict(cfg)))
    return out


# ---------------------------------------------------------------------------------------------------- validation
def _is_remote(path: str) -> bool:
    return "://" in path


class _Errors(list[str]):
    """Collects every impossible value, so one error lists them all."""

    def need(self, ok: bool, key: str, expected: str, got: Any) -> None:
        if not ok:
            self.append(f"key '{key}': expected {expected}, got {got!r}")


def validate(cfg: Config, check_paths: bool = True) -> Config:
    """Raise :class:`ConfigError` listing every impossible value; return ``cfg`` unchanged when it is sound.

    ``check_paths=False`` skips existence checks for data that is generated later (the built-in demo).
    """
    errors = _Errors()
    _check_finite(cfg, errors.need)
    _check_loss(cfg.loss, errors.need)
    _check_optim(cfg, errors.need)
    _check_scaling_model(cfg.scaling, cfg.model, errors.need)
    errors.need(
        cfg.tracking.log_every >= 1, "tracking.log_every", "a step count >= 1", cfg.tracking.log_every
    )
    _check_run(cfg.run, errors.need)
    _check_eval(cfg.eval, cfg.val, check_paths, errors.need)
    if check_paths:
        _check_paths(cfg, errors.need)
    _check_unmasked(cfg, errors.need)
    if errors:
        raise ConfigError(mask_text("invalid config:\n  " + "\n  ".join(errors)))
    return cfg


_Need = Callable[[bool, str, str, Any], None]


def _check_finite(cfg: Config, need: _Need) -> None:
    """Every float of the config is a number: ``loss.lambda_avl=inf`` or ``optim.lr=nan`` would pass every range
    check below (``nan >= 0`` is False, but ``inf >= 0`` is True) and poison the run."""
    for key, value in flatten(cfg).items():
        if isinstance(value, float):
            need(math.isfinite(value), key, "a finite number", value)


def _check_unmasked(cfg: Config, need: _Need) -> None:
    """A saved config (``config.yaml``, ``best_config.yaml``) keeps URIs' secrets masked: a value read back from
    one must be given again, not used with ``***`` as its password or signature."""
    flat = flatten(cfg)
    for key in masked_keys(to_dict(cfg)):
        need(
            False,
            key,
            f"its real value: a saved config keeps secrets masked; give it again as an override {key}=…"
            + (" or in $MLFLOW_TRACKING_URI" if key == "tracking.uri" else ""),
            flat.get(key, "a masked value"),
        )


def _check_loss(loss: LossSettings, need: _Need) -> None:
    for key in ("lambda_avl", "lambda_pvl", "lambda_snd", "lambda_replay"):
        value = getattr(loss, key)
        need(value >= 0, f"loss.{key}", "a weight >= 0", value)
    need(0.0 <= loss.ema_momentum < 1.0, "loss.ema_momentum", "a momentum in [0, 1)", loss.ema_momentum)
    if loss.temperature is not None:
        need(
            0.0 < loss.temperature <= 100.0, "loss.temperature", "an initial τ in (0, 100]", loss.temperature
        )
    need(loss.lp_steps >= 0, "loss.lp_steps", "a step count >= 0", loss.lp_steps)


def _check_optim(cfg: Config, need: _Need) -> None:
    optim, scaling, data = cfg.optim, cfg.scaling, cfg.data
    need(optim.lr > 0, "optim.lr", "a learning rate > 0", optim.lr)
    need(optim.weight_decay >= 0, "optim.weight_decay", "a value >= 0", optim.weight_decay)
    need(optim.warmup_steps >= 0, "optim.warmup_steps", "a step count >= 0", optim.warmup_steps)
    need(optim.epochs >= 1, "optim.epochs", "at least 1 epoch", optim.epochs)
    need(optim.max_steps >= 0, "optim.max_steps", "a step count >= 0 (0: no cap)", optim.max_steps)
    need(optim.grad_accum >= 1, "optim.grad_accum", "an integer >= 1", optim.grad_accum)
    need(optim.grad_clip >= 0, "optim.grad_clip", "a norm >= 0 (0: off)", optim.grad_clip)
    need(
        optim.max_nonfinite_steps >= 0,
        "optim.max_nonfinite_steps",
        "a step count >= 0 (0: never fail)",
        optim.max_nonfinite_steps,
    )
    need(scaling.num_workers >= 1, "scaling.num_workers", "an integer >= 1", scaling.num_workers)
    need(optim.global_batch >= 1, "optim.global_batch", "an integer >= 1", optim.global_batch)
    per_step = max(scaling.num_workers, 1) * max(optim.grad_accum, 1)
    need(
        optim.global_batch % per_step == 0,
        "optim.global_batch",
        f"a multiple of scaling.num_workers × optim.grad_accum = {per_step}",
        optim.global_batch,
    )
    need(
        data.ref_batch >= 0,
        "data.ref_batch",
        "an integer >= 0 (0: same as optim.global_batch)",
        data.ref_batch,
    )
    if data.ref_batch:
        need(
            data.ref_batch % per_step == 0,
            "data.ref_batch",
            f"a multiple of scaling.num_workers × optim.grad_accum = {per_step}",
            data.ref_batch,
        )
    need(data.max_image_pixels > 0, "data.max_image_pixels", "a pixel count > 0", data.max_image_pixels)
    need(
        data.keep_in_memory_mb >= 0,
        "data.keep_in_memory_mb",
        "MB >= 0 (0: always stream)",
        data.keep_in_memory_mb,
    )
    scale, ratio = data.crop_scale, data.crop_ratio
    need(
        len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1,
        "data.crop_scale",
        "[low, high] with 0 < low <= high <= 1 (area shares)",
        scale,
    )
    need(
        len(ratio) == 2 and 0 < ratio[0] <= ratio[1],
        "data.crop_ratio",
        "[low, high] with 0 < low <= high (width / height)",
        ratio,
    )
    bad_targets = sorted(set(data.column_map.values()) - {"image", "label", "caption", "key"})
    need(not bad_targets, "data.column_map", "targets among image, label, caption, key", bad_targets)


def _check_scaling_model(scaling: ScalingSettings, model: ModelSettings, need: _Need) -> None:
    need(scaling.cpus_per_worker > 0, "scaling.cpus_per_worker", "a CPU share > 0", scaling.cpus_per_worker)
    need(
        scaling.threads_per_worker >= 0,
        "scaling.threads_per_worker",
        "an integer >= 0",
        scaling.threads_per_worker,
    )
    need(bool(model.name), "model.name", "an open_clip model name or local-dir:<folder>", model.name)


def _check_run(run: RunSettings, need: _Need) -> None:
    every, keep = run.checkpoint.every, run.checkpoint.num_to_keep
    need(every >= 0, "run.checkpoint.every", "a step count >= 0", every)
    need(keep >= 1, "run.checkpoint.num_to_keep", "an integer >= 1", keep)
    failures = run.failure.max_failures
    need(failures >= -1, "run.failure.max_failures", "an integer >= -1 (-1: unlimited)", failures)


def _check_eval(ev: EvalSettings, val: ValSettings, check_paths: bool, need: _Need) -> None:
    need(ev.rsa_samples >= 2, "eval.rsa_samples", "at least 2 pairs", ev.rsa_samples)
    need(ev.batch_size >= 1, "eval.batch_size", "an integer >= 1", ev.batch_size)
    need(
        ev.actors >= 0,
        "eval.actors",
        "an integer >= 0 (0: one per GPU on cuda, one per logical CPU on cpu)",
        ev.actors,
    )
    need(val.samples >= 3, "val.samples", "at least 3 samples", val.samples)
    need(0.0 <= val.id_weight <= 1.0, "val.id_weight", "a weight in [0, 1]", val.id_weight)
    suites = {"id", *ev.ood, *ev.zs, *ev.zs_far}
    for name, value in ev.templates.items():
        need(name in suites, f"eval.templates.{name}", f"a suite name among {sorted(suites)}", name)
        known = value.startswith("clip:") or value in TEMPLATE_SETS
        need(
            known,
            f"eval.templates.{name}",
            f"a template set: {', '.join(sorted(TEMPLATE_SETS))} or clip:<dataset>",
            value,
        )
    if val.objective in (ValObjective.id_zs, ValObjective.id_zs_far) and check_paths:
        need(bool(val.zs), "val.zs", f"a labelled folder (val.objective is '{val.objective.value}')", val.zs)
    if val.objective is ValObjective.id_zs_far and check_paths:
        need(
            bool(val.zs_far),
            "val.zs_far",
            "named labelled folders (val.objective is 'id_zs_far')",
            val.zs_far,
        )


def input_folders(cfg: Config) -> list[tuple[str, str]]:
    """(key, folder or URI) of every dataset a run may read, the unset ones left out."""
    data, ev, val = cfg.data, cfg.eval, cfg.val
    paths: list[tuple[str, str]] = [("data.id_train", data.id_train), ("data.reference", data.reference)]
    paths += [("eval.id", ev.id), ("eval.rsa_set", ev.rsa_set)]
    paths += [("val.id", val.id), ("val.ref", val.ref), ("val.zs", val.zs)]
    paths += [(f"val.zs_far.{k}", v) for k, v in val.zs_far.items()]
    paths += [(f"eval.ood.{k}", v) for k, v in ev.ood.items()]
    paths += [(f"eval.zs.{k}", v) for k, v in ev.zs.items()]
    paths += [(f"eval.zs_far.{k}", v) for k, v in ev.zs_far.items()]
    return [(key, value) for key, value in paths if value]


def _check_paths(cfg: Config, need: _Need) -> None:
    """Every local input folder (and weights file) exists; remote URIs are left to their readers."""
    loss, model, data = cfg.loss, cfg.model, cfg.data
    needs_ref = loss.method in USES_REFERENCE
    need(bool(data.id_train), "data.id_train", "a folder of labelled shards", data.id_train)
    if needs_ref:
        need(
            bool(data.reference),
            "data.reference",
            f"a folder of captioned shards (method {loss.method.value} uses the reference set)",
            data.reference,
        )
    for key, value in input_folders(cfg):
        if not _is_remote(value):
            need(Path(value).is_dir(), key, "an existing folder", value)
    if model.name.startswith("local-dir:"):
        folder = model.name.removeprefix("local-dir:")
        if not _is_remote(folder):
            need(Path(folder).is_dir(), "model.name", "local-dir:<existing export folder>", model.name)
    elif model.pretrained and _looks_like_file(model.pretrained):
        need(
            Path(model.pretrained).is_file(),
            "model.pretrained",
            "an existing weights file",
            model.pretrained,
        )


def _looks_like_file(pretrained: str) -> bool:
    return os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors"))


def validate_paths(cfg: Config) -> Config:
    """What ``validate(cfg, check_paths=False)`` left out: the inputs a method needs are named and every local
    one exists. For data generated after validation (the built-in demo), checked once it is there."""
    errors = _Errors()
    _check_eval(cfg.eval, cfg.val, True, errors.need)
    _check_paths(cfg, errors.need)
    if errors:
        raise ConfigError(mask_text("invalid config:\n  " + "\n  ".join(errors)))
    return cfg


def eval_device(cfg: Config) -> str:
    """``eval.device`` resolved: "cuda" or "cpu" ("auto" follows ``scaling.use_gpu``)."""
    device = EvalDevice(cfg.eval.device)
    if device is EvalDevice.auto:
        return "cuda" if cfg.scaling.use_gpu else "cpu"
    return device.value


def ref_batch(cfg: Config) -> int:
    """B′, the reference rows of one optimiser step: ``data.ref_batch``, where 0 means ``optim.global_batch``."""
    return cfg.data.ref_batch or cfg.optim.global_batch


def apply_overrides(cfg: Config, overrides: Iterable[str]) -> Config:
    """Return a copy of ``cfg`` with ``a.b=c`` overrides applied (same checks as :func:`load_config`)."""
    return load_config(base=to_dict(cfg), overrides=list(overrides))
