"""Fine-tune a CLIP model with DiVE (or a baseline) on Ray Train, tracked in MLflow.

    python pipeline/train.py                                   # the built-in demo (CPU, 2 workers, minutes)
    python pipeline/train.py --config my_run.yaml loss.lambda_avl=500 scaling.num_workers=8
    ray job submit --working-dir . -- python pipeline/train.py --config my_run.yaml
    python pipeline/train.py --config my_run.yaml --validate   # check the config, start nothing

Recipe: load → resolve paths → validate (before anything is written) → build the demo data if asked →
preflight (every check, every manifest read once, before Ray starts) → create the MLflow run → Ray Data streams →
TorchTrainer fit (pipeline/worker.py) → export the student (open_clip local-dir) → evaluate teacher vs fine-tuned
→ log everything.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dive.config import (
    USES_REFERENCE,
    Config,
    ConfigError,
    Placement,
    load_config,
    to_dict,
    to_yaml,
    validate,
)
from dive.redact import mask_text
from pipeline import storage
from pipeline.checkpoint import CheckpointWriteError
from pipeline.console import Console, board_actor, live_progress, start_ray
from pipeline.data.format import DataError, Manifest
from pipeline.home import local_model, output_folder
from pipeline.preflight import Plan, check_datasets, preflight

DEMO_CONFIG = Path(__file__).resolve().parent / "configs" / "demo.yaml"


@dataclass
class RunResult:
    run_id: str
    export_dir: str
    report: dict[str, Any]
    tracking_uri: str
    seconds: float
    checkpoint: str  # the last Ray Train checkpoint (full training state)
    steps: int
    metrics: dict[str, Any] = field(default_factory=dict)  # rank 0's last report (step, epoch, val/*)
    train_seconds: float = (
        0.0  # TorchTrainer.fit() alone: workers, data streams and steps, not export or eval
    )


# ---------------------------------------------------------------------------------------------------- config
def _absolute(path: str) -> str:
    return path if not path or "://" in path else str(Path(path).expanduser().resolve())


def resolve_paths(cfg: Config) -> Config:
    """Make every path absolute on the driver: a Ray Train worker's cwd is a temporary session folder.

    What the run writes (the demo cache and everything inside it, outputs, Ray storage, the default MLflow
    store) resolves against :func:`pipeline.home.home`, so a ``ray job submit`` job writes where the next job
    finds it; other inputs resolve against the working directory."""
    from pipeline.home import writable
    from pipeline.tracking import tracking_uri

    demo = cfg.data.demo

    def inp(path: str) -> str:  # an input; one inside the demo cache lives where the cache does
        inside = bool(demo) and (path == demo or path.startswith(demo.rstrip("/") + "/"))
        return writable(path) if inside else _absolute(path)

    data = replace(
        cfg.data,
        id_train=inp(cfg.data.id_train),
        reference=inp(cfg.data.reference),
        demo=writable(demo),
    )
    ev = replace(
        cfg.eval,
        id=inp(cfg.eval.id),
        rsa_set=inp(cfg.eval.rsa_set),
        ood={k: inp(v) for k, v in cfg.eval.ood.items()},
        zs={k: inp(v) for k, v in cfg.eval.zs.items()},
        zs_far={k: inp(v) for k, v in cfg.eval.zs_far.items()},
    )
    val = replace(
        cfg.val,
        id=inp(cfg.val.id),
        ref=inp(cfg.val.ref),
        zs=inp(cfg.val.zs),
        zs_far={k: inp(v) for k, v in cfg.val.zs_far.items()},
    )
    model = cfg.model
    if model.name.startswith("local-dir:"):
        model = replace(model, name="local-dir:" + inp(model.name.removeprefix("local-dir:")))
    if model.pretrained and (os.sep in model.pretrained or Path(model.pretrained).suffix):
        model = replace(model, pretrained=inp(model.pretrained))
    # The store too: Ray Tune runs each trial in its own working directory, so a default relative
    # sqlite:///mlflow.db (or $MLFLOW_TRACKING_URI unset in a worker) would give every trial a store of its own.
    tracking = replace(cfg.tracking, output_dir=writable(cfg.tracking.output_dir), uri=tracking_uri(cfg))
    run = replace(
        cfg.run,
        storage_path=writable(cfg.run.storage_path) or storage.join(tracking.output_dir, "ray_results"),
    )
    return replace(cfg, data=data, eval=ev, val=val, model=model, tracking=tracking, run=run)


def prepare_config(config_path: str | None, overrides: list[str], build_demo: bool = True) -> Config:
    """Load, resolve and validate a config, and build the demo data it asks for: what :func:`run` expects.

    Datasets are checked by :func:`run`'s preflight, once."""
    cfg = resolve_paths(load_config(config_path or DEMO_CONFIG, overrides))
    validate(cfg, check_paths=not cfg.data.demo)  # the demo's folders exist once built: preflight checks them
    if build_demo:
        ensure_demo_data(cfg)
    return cfg


def ensure_demo_data(cfg: Config) -> None:
    """The built-in demo's data and teacher, generated on first use (a no-op for any other config)."""
    if not cfg.data.demo:
        return
    from filelock import FileLock

    from pipeline.demo import ensure_demo

    root = Path(cfg.data.demo)
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root) + ".lock"):  # two jobs starting together: one builds, the other then reuses
        ensure_demo(root, size=cfg.data.demo_size.value)


# ---------------------------------------------------------------------------------------------------- ray
def _git_sha() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ---------------------------------------------------------------------------------------------------- run
def run(
    cfg: Config,
    callbacks: list[Any] | None = None,
    parent_run_id: str | None = None,
    resume_run_id: str | None = None,
    on_start: Callable[[str], None] | None = None,
    tags: Mapping[str, str] | None = None,
    console: Console | None = None,
    plan: Plan | None = None,
) -> RunResult:
    """Train, export, evaluate and log one run. ``cfg`` must be validated and resolved (prepare_config); its
    :func:`~pipeline.preflight.preflight` runs first (unless the caller ran it: ``plan``), and what it read and
    resolved serves the whole run.

    ``resume_run_id`` continues an interrupted run: the same MLflow run, and the same Ray Train run name and
    storage path, so Ray Train finds the run's checkpoint snapshot and the workers restore the latest checkpoint.
    ``on_start`` is called with the MLflow run id as soon as it exists (a sweep trial records it to resume);
    ``tags`` go onto a new MLflow run. With a ``console`` (a command's, not a sweep trial's) worker output goes
    to its log file, in the run's output folder, and a progress line shows the training.
    """
    from pipeline.checkpoint import load_newest

    t0 = time.perf_counter()
    phases = _Phases()  # where a run's fixed cost goes: time/<phase>_s in MLflow
    # Everything knowable fails here: before Ray, before an MLflow run exists (or is reopened).
    plan = plan or preflight(cfg, resume_run_id)
    phases.mark("preflight")
    start_ray(cfg, console)
    from pipeline.evaluate import check_eval_device

    check_eval_device(cfg)  # eval.device=cuda on a cluster without GPUs: an error now, not after training
    phases.mark("ray_start")
    mlrun = _open_run(plan, parent_run_id, resume_run_id, on_start, tags)
    phases.mark("mlflow_open")
    try:
        out_dir = _run_folder(cfg, mlrun, console)
        if resume_run_id:
            _say(
                console,
                f"[dive] resuming from {plan.resume_from.describe() if plan.resume_from else 'step 0'}",
            )
        datasets, info = _streams(plan, mlrun)
        if console is not None:
            info.progress = board_actor()
        trainer = _trainer(cfg, datasets, info, callbacks)
        phases.mark("streams")
        with live_progress(info.progress, console):
            result = trainer.fit()
        train_seconds = phases.mark("train")
        if result.checkpoint is None:
            raise RuntimeError("training finished without a checkpoint")
        _, state = load_newest(result.checkpoint.filesystem, os.path.dirname(result.checkpoint.path))
        export_dir = export_checkpoint(
            cfg, state, out_dir / "export", plan.teacher, mlrun.run_id, plan.id_manifest.classnames
        )
        mlrun.log_artifacts(export_dir, "export")
        phases.mark("export")
        if console is not None:
            console.say("[dive] training done; exporting and evaluating")
        report = finish(cfg, mlrun, export_dir, out_dir, plan.manifests)
        phases.mark("evaluate")
        _publish_outputs(cfg, out_dir, console)
        mlrun.log_metrics(phases.metrics())
        _log_console(mlrun, console)
        mlrun.end("FINISHED")
    except BaseException as err:  # never left RUNNING: Ctrl-C or `ray job stop` is KILLED, the rest FAILED
        _end_failed(mlrun, console, err, cfg.run.storage_path)
        raise
    return RunResult(
        mlrun.run_id,
        str(export_dir),
        report,
        mlrun.uri,
        time.perf_counter() - t0,
        result.checkpoint.path,
        int(result.metrics.get("step", 0)),
        dict(result.metrics),
        train_seconds,
    )


class _Phases:
    """Seconds per phase of a run, in order: the fixed cost around ``TorchTrainer.fit()`` made visible
    (``time/train_s`` is ``fit()`` itself: worker start, data streams, steps, epoch-end validation)."""

    def __init__(self) -> None:
        self._last = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def mark(self, phase: str) -> float:
        """Ends ``phase`` now; returns its seconds."""
        now = time.perf_counter()
        self.seconds[phase], self._last = now - self._last, now
        return self.seconds[phase]

    def metrics(self) -> dict[str, float]:
        return {f"time/{phase}_s": s for phase, s in self.seconds.items()}


def _end_failed(mlrun: Any, console: Console | None, err: BaseException, storage_path: str = "") -> None:
    """End the MLflow run of a run that raised ``err``: KILLED when interrupted, else FAILED with the reason as its
    ``dive.failure`` tag. A failed checkpoint write is raised as itself: one line for the user, not the worker
    group's traceback."""
    _log_console(mlrun, console)
    if isinstance(err, KeyboardInterrupt):
        mlrun.end("KILLED")
        return
    write_error = _checkpoint_write_error(err, storage_path)
    mlrun.set_tag("dive.failure", mask_text(str(write_error or err))[:1000])
    mlrun.end("FAILED")
    if write_error is not None:
        raise write_error from err


def _publish_outputs(cfg: Config, out_dir: Path, console: Console | None) -> None:
    """For an object-store ``tracking.output_dir``: the run folder (config, export, evaluation tables, log) copied
    from its local mirror to ``<output_dir>/<run id>``."""
    if not storage.is_uri(cfg.tracking.output_dir):
        return
    target = storage.join(cfg.tracking.output_dir, out_dir.name)
    storage.upload(out_dir, target)
    _say(console, f"[dive] outputs: {target}")


def _say(console: Console | None, line: str) -> None:
    if console is None:
        print(line, flush=True)
    else:
        console.say(line)


# What an object store's failure reads like inside Ray's errors (pyarrow's S3 and GCS messages).
_STORE_FAILURE = ("AWS Error", "curlCode", "google::cloud", "GCS Error")


def _checkpoint_write_error(err: BaseException, storage_path: str = "") -> BaseException | None:
    """The :class:`~pipeline.checkpoint.CheckpointWriteError` behind a failed ``fit()``, wherever Ray wrapped it
    (a worker group's failures, a task error's cause, an exception chain). An object store that fails under Ray
    Train's own bookkeeping (its controller writes a snapshot beside the checkpoints) counts too: one line naming
    ``run.storage_path`` and what failed, not the controller's traceback."""
    from pipeline.checkpoint import CheckpointWriteError

    found = _find_checkpoint_error(err)
    if found is not None or not storage.is_uri(storage_path):
        return found
    text = str(err)
    if any(marker in text for marker in _STORE_FAILURE):
        return CheckpointWriteError(
            f"could not write the checkpoint state under run.storage_path={storage_path}: {storage.explain(err)}; "
            "the checkpoints written before are kept there (--resume once the store answers)"
        )
    return None


def _find_checkpoint_error(err: BaseException) -> BaseException | None:
    from pipeline.checkpoint import CheckpointWriteError

    stack: list[Any] = [err]
    seen: set[int] = set()
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, CheckpointWriteError):
            return e
        stack += [
            e.__cause__,
            e.__context__,
            getattr(e, "cause", None),
            getattr(e, "controller_failure", None),
        ]
        stack += list(getattr(e, "worker_failures", {}).values())
    return None


def _log_console(mlrun: Any, console: Console | None) -> None:
    """The run's console log as an artifact (best effort: the run's result matters more than its log)."""
    if console is None:
        return
    try:
        mlrun.log_artifact(console.path, "logs")
    except Exception as err:  # noqa: BLE001
        console.write(f"console log not logged to MLflow: {err}")


def _open_run(
    plan: Plan,
    parent_run_id: str | None,
    resume_run_id: str | None,
    on_start: Callable[[str], None] | None,
    tags: Mapping[str, str] | None = None,
) -> Any:
    """The run's MLflow run: resumed, or new with its resolved config."""
    from pipeline import tracking

    cfg = plan.cfg
    if resume_run_id:
        spool = output_folder(cfg.tracking.output_dir) / resume_run_id / tracking.SPOOL
        mlrun = tracking.Run.resume(plan.tracking_uri, resume_run_id, spool)
    else:
        mlrun = tracking.Run.start(cfg, uri=plan.tracking_uri, parent_run_id=parent_run_id, tags=tags)
        mlrun.spool = output_folder(cfg.tracking.output_dir) / mlrun.run_id / tracking.SPOOL
    try:
        if not resume_run_id:
            mlrun.log_text(to_yaml(cfg), "config/resolved.yaml")
        if on_start is not None:
            on_start(mlrun.run_id)
    except BaseException as err:
        mlrun.end("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    return mlrun


def _run_folder(cfg: Config, mlrun: Any, console: Console | None) -> Path:
    """``<output_dir>/<run id>`` with the run's config (what ``--resume`` reads); the console log moves in.

    The saved config has its URIs' secrets masked (:func:`dive.config.to_yaml`): a ``--resume`` from it gets the
    tracking URI from $MLFLOW_TRACKING_URI or an override (:func:`pipeline.tracking.tracking_uri`). For an
    object-store ``output_dir`` the folder is its local mirror (:func:`pipeline.home.output_folder`) and the
    config goes up at once, so ``--resume <URI>/<run id>`` works from any machine."""
    out_dir = output_folder(cfg.tracking.output_dir) / mlrun.run_id
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(to_yaml(cfg))
    if storage.is_uri(cfg.tracking.output_dir):
        storage.upload(
            out_dir / "config.yaml", storage.join(cfg.tracking.output_dir, mlrun.run_id, "config.yaml")
        )
    shown = mask_text(mlrun.uri)
    if console is None:
        print(f"[dive] MLflow run {mlrun.run_id} ({shown})", flush=True)
    else:
        log = console.attach(out_dir)
        console.say(f"[dive] MLflow run {mlrun.run_id} ({shown})")
        console.say(f"[dive] log:  {log}  (Ray, worker and library output; -v shows it here)")
    return out_dir


def _streams(plan: Plan, mlrun: Any) -> tuple[dict[str, Any], Any]:
    """The ID and reference Ray Datasets (with the teacher cache's columns when preflight found it matches),
    and the RunInfo the workers need."""
    from pipeline.data.format import CAPTIONED, LABELLED
    from pipeline.data.streams import SkipCounter, read_stream
    from pipeline.data.transforms import stream_size
    from pipeline.ray_env import on_driver_node
    from pipeline.worker import RunInfo

    cfg, use_cache = plan.cfg, plan.use_teacher_cache
    id_manifest, ref_manifest = plan.id_manifest, plan.ref_manifest
    counter = SkipCounter.options(**on_driver_node()).remote()
    common = dict(
        size=plan.teacher.preprocess_cfg["size"][0],
        max_pixels=cfg.data.max_image_pixels,
        model_name=cfg.model.name,
        column_map=cfg.data.column_map,
        counter=counter,
    )
    min_scale = cfg.data.crop_scale[0]
    id_ds, _ = read_stream(
        cfg.data.id_train,
        LABELLED,
        augment=cfg.data.augment,
        manifest=id_manifest,
        min_scale=min_scale,
        **common,
    )
    datasets: dict[str, Any] = {}
    kept: list[str] = []  # the streams each worker reads once and keeps
    datasets["id"], keep = _materialized(
        cfg, id_ds, id_manifest.num_rows, stream_size(common["size"], cfg.data.augment, min_scale)
    )
    kept += ["id"] if keep else []
    # Only a method with a reference term reads the stream (FLYP, FT and LP-FT would decode it for nothing).
    if ref_manifest is not None and cfg.loss.method in USES_REFERENCE:
        ref_ds, _ = read_stream(
            cfg.data.reference,
            CAPTIONED,
            augment=False,
            use_teacher_cache=use_cache,
            manifest=ref_manifest,
            **common,
        )
        cached = 2 * 4 * ref_manifest.teacher_dim if use_cache else 0
        datasets["ref"], keep = _materialized(cfg, ref_ds, ref_manifest.num_rows, common["size"], cached)
        kept += ["ref"] if keep else []
    val_sets = (cfg.val.id, cfg.val.ref, cfg.val.zs, *cfg.val.zs_far.values())
    info = RunInfo(
        run_id=mlrun.run_id,
        tracking_uri=mlrun.uri,
        spool=str(mlrun.spool),
        log_every=cfg.tracking.log_every,
        id_rows=id_manifest.num_rows,
        ref_rows=ref_manifest.num_rows if ref_manifest is not None else 0,
        ref_batch=plan.ref_batch,
        classnames=id_manifest.classnames,
        templates=id_manifest.templates,
        use_teacher_cache=use_cache,
        skip_counter=counter,
        kept=tuple(kept),
        val_manifests={folder: plan.manifests[folder] for folder in val_sets if folder},
    )
    return datasets, info


def _materialized(cfg: Config, ds: Any, rows: int, size: int, extra_bytes: int = 0) -> tuple[Any, bool]:
    """``ds`` and whether the workers keep it: a stream estimated under ``data.keep_in_memory_mb`` is decoded once,
    not by every epoch and every reference cycle: materialized here into the object store before the workers start
    (decoding while a worker builds its model is slower on few cores; benchmarks/perf). With
    ``data.keep_in_worker`` each worker also keeps its shard after one read from there, made in the background
    while its model builds, and replays it: no Ray Data restart at every epoch."""
    mb = (
        rows * (3 * size * size + 1024 + extra_bytes) / 2**20
    )  # uint8 pixels + tokens/labels + cached vectors
    if not cfg.data.keep_in_memory_mb or mb > cfg.data.keep_in_memory_mb:
        return ds, False
    # The materialized blocks, in read order, are what Train's split later deals: fixed here too (data.exact_order).
    ds.context.execution_options.preserve_order = cfg.data.exact_order
    return ds.materialize(), cfg.data.keep_in_worker


def _trainer(cfg: Config, datasets: dict[str, Any], info: Any, callbacks: list[Any] | None) -> Any:
    """The TorchTrainer: the run's name and storage fixed by its MLflow run id, so a resume finds its checkpoints."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipeline.checkpoint import train_run_name
    from pipeline.worker import train_loop_per_worker

    ingest = DataConfig.default_ingest_options()
    # With preserve_order, Ray Data's splitter deals blocks in read order to the rank with the fewest rows so far:
    # the same rows, in the same order, on every run (what makes a resume exact; data.exact_order).
    ingest.preserve_order = cfg.data.exact_order
    resources = {"CPU": cfg.scaling.cpus_per_worker, **({"GPU": 1} if cfg.scaling.use_gpu else {})}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": to_dict(cfg), "info": asdict(info)},
        scaling_config=ScalingConfig(
            num_workers=cfg.scaling.num_workers,
            use_gpu=cfg.scaling.use_gpu,
            resources_per_worker=resources,
            placement_strategy=Placement(cfg.scaling.placement).value,
        ),
        run_config=RunConfig(
            name=train_run_name(info.run_id),
            storage_path=cfg.run.storage_path,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.run.checkpoint.num_to_keep),
            failure_config=FailureConfig(max_failures=cfg.run.failure.max_failures),
            callbacks=callbacks or None,
        ),
        datasets=datasets,
        dataset_config=DataConfig(execution_options=ingest),
    )


def export_checkpoint(
    cfg: Config,
    state: dict,
    folder: Path,
    bundle: Any,
    run_id: str,
    classnames: Sequence[str] | None = None,
) -> Path:
    """Write the open_clip ``local-dir:`` export (with its card) of the student in a checkpoint's ``state``
    (:mod:`pipeline.checkpoint`). ``classnames``: those of ``data.id_train``, for an FT / LP-FT head (read from
    its manifest when not given)."""
    from dive.export import LinearHead, export_model
    from dive.models import build_model
    from pipeline.data.format import LABELLED, check_dataset

    student = build_model(local_model(cfg.model)).model
    student.load_state_dict(state["student"])
    card = {
        "base_model": bundle.source,
        "method": cfg.loss.method.value,
        "lambda_avl": cfg.loss.lambda_avl,
        "lambda_pvl": cfg.loss.lambda_pvl,
        "data": {"id_train": cfg.data.id_train, "reference": cfg.data.reference},
        "steps": state["step"],
        "mlflow_run_id": run_id,
        "git_sha": _git_sha(),
    }
    head = None
    if state.get("head"):  # FT / LP-FT: the trained classifier goes with the export
        if classnames is None:
            classnames = check_dataset(cfg.data.id_train, LABELLED, cfg.data.column_map).classnames
        head = LinearHead(state["head"]["weight"], state["head"]["bias"], list(classnames))
        card["linear_head"] = f"{len(classnames)} classes of {cfg.data.id_train}"
    return export_model(
        student,
        folder,
        bundle.model_cfg,
        bundle.preprocess_cfg,
        card=card,
        tokenizer=bundle.tokenizer,
        linear_head=head,
    )


def finish(
    cfg: Config,
    mlrun: Any,
    export_dir: Path,
    out_dir: Path,
    manifests: Mapping[str, Manifest] | None = None,
) -> dict[str, Any]:
    """Evaluate teacher and fine-tuned model, log metrics, tables and plots to the run (``manifests``: those
    preflight read, by folder)."""
    from pipeline import plots
    from pipeline.evaluate import evaluate

    student = replace(cfg.model, name=f"local-dir:{export_dir}", pretrained="")
    report = evaluate(cfg.model, student, cfg, manifests)
    metrics = {f"eval/{k}": v for k, v in report["finetuned"].items()}
    metrics.update({f"eval/teacher/{k}": v for k, v in report["teacher"].items()})
    mlrun.log_metrics(metrics)
    tables = out_dir / "eval"
    tables.mkdir(exist_ok=True)
    (tables / "report.json").write_text(json.dumps(report, indent=2))
    plots.write_table_csv(report["rows"], tables / "accuracy.csv")
    plots.accuracy_bars(report, tables / "accuracy.png")
    history = mlrun.metric_history(["train/loss", "train/loss_cl", "train/loss_avl", "train/loss_pvl"])
    plots.loss_curves(history, tables / "losses.png")
    mlrun.log_artifacts(tables, "eval")
    return report


def where(cfg: Config) -> str:
    """One line: where this run reads its data and writes its outputs and MLflow records."""
    data = f"demo {cfg.data.demo}" if cfg.data.demo else f"data {storage.parent(cfg.data.id_train)}"
    return mask_text(f"{data} · outputs {cfg.tracking.output_dir} · MLflow {cfg.tracking.uri}")


def summary_lines(result: RunResult) -> list[str]:
    """The final table: teacher vs fine-tuned, RSA, where the run and the export are, how to open them."""
    ft, teacher = result.report["finetuned"], result.report["teacher"]
    far = "zs_far_avg" in ft  # far zero-shot suites (eval.zs_far): a column of their own
    head = f"{'':12}{'ID':>8}{'OOD avg':>10}{'ZS avg':>9}" + (f"{'far ZS avg':>12}" if far else "")
    lines = [f"\n[dive] done in {result.seconds:.0f} s", head]
    for name, row in (("teacher", teacher), ("fine-tuned", ft)):
        lines.append(
            f"{name:12}{row.get('id_acc', float('nan')):8.3f}{row.get('ood_avg', float('nan')):10.3f}"
            f"{row.get('zs_avg', float('nan')):9.3f}"
            + (f"{row.get('zs_far_avg', float('nan')):12.3f}" if far else "")
        )
    if "rsa_mean" in ft:
        lines.append(f"RSA (mean of image/text/cross): {ft['rsa_mean']:.3f}")
    lines += [
        f"MLflow run:  {result.run_id}",
        f"export:      {result.export_dir}",
        f"load it:     open_clip.create_model_and_transforms('local-dir:{result.export_dir}')",
    ]
    if result.tracking_uri.startswith("sqlite"):
        ui = f"mlflow ui --backend-store-uri {mask_text(result.tracking_uri)} --host 127.0.0.1 --port 5000"
        lines.append(f"MLflow UI:   {ui}")
    return lines


def _print_summary(result: RunResult, console: Console) -> None:
    for line in summary_lines(result):
        print(line)
        console.write(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help=f"run config YAML (default: the built-in demo, {DEMO_CONFIG.name})")
    parser.add_argument("--validate", action="store_true", help="check the config and exit; starts nothing")
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run from its output folder (<output_dir>/<mlflow run id>): its saved "
        "config, its MLflow run and its latest Ray Train checkpoint",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show Ray's, the workers' and libraries' output here too"
    )
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. loss.lambda_avl=500")
    args = parser.parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)
    resume_run_id = None
    try:
        if args.resume:
            saved, resume_run_id = saved_config(args.resume)
            args.config = str(saved)
        cfg = resolve_paths(load_config(args.config or DEMO_CONFIG, args.overrides))
        validate(cfg, check_paths=not cfg.data.demo)  # a bad key fails here, before anything is written
        if args.validate:
            if not cfg.data.demo:  # the demo's data is not built by a check
                check_datasets(cfg)
            print(to_yaml(cfg))  # URIs' secrets masked
            print("config OK", file=sys.stderr)
            return 0
        with Console(output_folder(cfg.tracking.output_dir), verbose=args.verbose) as console:
            console.say(f"[dive] {where(cfg)}")
            ensure_demo_data(cfg)
            plan = preflight(cfg, resume_run_id)
            result = run(cfg, resume_run_id=resume_run_id, console=console, plan=plan)
            _print_summary(result, console)
    except (ConfigError, DataError, FileNotFoundError) as err:
        print(f"error: {mask_text(str(err))}", file=sys.stderr)  # an override or a path may quote a secret
        return 2
    # The run is FAILED, with this reason as its dive.failure tag (a checkpoint or the outputs not written).
    except (CheckpointWriteError, storage.StorageError) as err:
        print(f"error: {mask_text(str(err))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "interrupted: the MLflow run is marked KILLED; continue it with --resume <its output folder>",
            file=sys.stderr,
        )
        return 130
    return 0


def saved_config(run_dir: str) -> tuple[Path, str]:
    """(config.yaml, run id) of a run output folder, local or a URI (its config fetched into the local mirror)."""
    if storage.is_uri(run_dir):
        run_id = storage.basename(run_dir)
        saved = output_folder(storage.parent(run_dir)) / run_id / "config.yaml"
        try:
            storage.download(storage.join(run_dir, "config.yaml"), saved)
        except storage.StorageError as err:
            raise FileNotFoundError(f"{run_dir}: no readable config.yaml ({err})") from None
        return saved, run_id
    saved = Path(run_dir) / "config.yaml"
    if not saved.is_file():
        raise FileNotFoundError(f"{run_dir}: no config.yaml (expected a run output folder)")
    return saved, Path(run_dir).resolve().name


def _terminated(signum: int, _frame: Any) -> None:
    """SIGTERM (``ray job stop``, a scheduler's pre-emption) unwinds like Ctrl-C, so the run ends KILLED."""
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    sys.exit(main())
