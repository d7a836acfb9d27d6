"""Running a sweep on Ray Tune: one Train-V2 driver function per trial, ASHA + Optuna, resume after Ctrl-C.

Each trial is ``pipeline.train.run`` with the trial's complete config, so a trial is exactly a plain training
run (same metrics, export, evaluation) and its MLflow run is a child of the sweep's parent run.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from dive.config import Config, to_dict, to_yaml
from dive.redact import mask_text
from pipeline.console import Console, start_ray
from pipeline.home import output_folder
from pipeline.sweep.report import SweepResult, pruned, summarize
from pipeline.sweep.spec import SchedulerKind, SearchAlgorithm, SweepSpec, trial_config, trial_count


def to_tune_space(dists: dict[str, tuple[str, list[Any]]]) -> dict[str, Any]:
    from ray import tune

    make = {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}
    lists = {"choice": tune.choice, "grid": tune.grid_search}
    return {
        key: lists[kind](args) if kind in lists else make[kind](*args) for key, (kind, args) in dists.items()
    }


class RecordingASHA(ASHAScheduler):
    """ASHA that writes the ids of the trials it stops to a file, so that after ``fit`` a trial without a final
    result can be told apart: pruned (a decision) or cut short by Ctrl-C (to resume). Tune marks both TERMINATED."""

    def __init__(self, record: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.record = record

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP:
            with open(self.record, "a") as fh:
                fh.write(trial.trial_id + "\n")
        return action


def _trial(
    params: dict[str, Any],
    *,
    base: dict[str, Any],
    parent_run_id: str,
    sweep_dir: str,
    tie: dict[str, str] | None = None,
    source: dict[str, str] | None = None,
) -> None:
    """One Tune trial: a complete run through pipeline.train.run; restarts reuse its MLflow run and checkpoint.
    ``source``: the sweep driver's MLflow source tags (in a trial process the entry point is Ray's worker)."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipeline.train import run

    trial_id = tune.get_context().get_trial_id()
    cfg = trial_config(base, params, tie)
    cfg = replace(cfg, tracking=replace(cfg.tracking, run_name=f"{Path(sweep_dir).name}-{trial_id}"))
    marker = Path(sweep_dir) / "trials" / f"{trial_id}.json"
    marker.parent.mkdir(parents=True, exist_ok=True)
    resume_id = json.loads(marker.read_text())["run_id"] if marker.is_file() else None

    def record(run_id: str) -> None:
        marker.write_text(json.dumps({"run_id": run_id, "params": params}, default=float))

    result = run(
        cfg,
        callbacks=[TuneReportCallback()],
        parent_run_id=parent_run_id,
        resume_run_id=resume_id,
        on_start=record,
        tags=source,
    )
    final = {k: v for k, v in result.metrics.items() if isinstance(v, int | float)}
    final.update(
        {f"eval/{k}": v for k, v in result.report["finetuned"].items() if isinstance(v, int | float)}
    )
    final["mlflow_run_id"] = result.run_id
    tune.report(final)


def _cpus_needed(cfg: Config, concurrent: int) -> float:
    """Logical CPUs so trials cannot starve each other: per trial its 0.1-CPU driver, its Train workers, one CPU
    for Ray Data's file listing / map tasks and one for the evaluation actor."""
    return concurrent * (0.1 + cfg.scaling.num_workers * cfg.scaling.cpus_per_worker + 2)


def _open_parent(
    spec: SweepSpec, base: Config, dists: dict[str, tuple[str, list[Any]]], name: str, sweep_dir: Path
) -> Any:
    """The sweep's parent MLflow run: reopened when the sweep is being resumed, else started with its space."""
    from pipeline import tracking

    parent, resumed = tracking.parent_run(
        base,
        sweep_dir / "sweep.json",
        run_name=f"sweep-{name}",
        tags={"dive.sweep": name},
        state={"name": name},
    )
    if resumed:
        print(f"[dive] resuming sweep {name} (MLflow parent run {parent.run_id})", flush=True)
        return parent
    parent.log_text(to_yaml(base), "config/base.yaml")
    parent.log_text(OmegaConf.to_yaml(OmegaConf.structured(spec)), "sweep/space.yaml")
    params = {
        "sweep.objective": f"{spec.objective.mode.value} {spec.objective.metric}",
        "sweep.algorithm": spec.search.algorithm.value,
        "sweep.scheduler": spec.scheduler.name.value,
    }
    parent.log_params(params | {f"space.{key}": f"{kind}{args}" for key, (kind, args) in dists.items()})
    print(f"[dive] sweep {name}: MLflow parent run {parent.run_id} ({mask_text(parent.uri)})", flush=True)
    return parent


def _new_tuner(
    spec: SweepSpec, base: Config, dists: dict[str, tuple[str, list[Any]]], trainable: Any, sweep_dir: Path
) -> Any:
    """A fresh Tuner: Optuna (or random, or grid) search limited to ``max_concurrent``, ASHA on epochs (or FIFO)."""
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    metric, mode, search = spec.objective.metric, spec.objective.mode.value, spec.search
    if search.algorithm is SearchAlgorithm.optuna:
        searcher = ConcurrencyLimiter(
            OptunaSearch(metric=metric, mode=mode, seed=search.seed), max_concurrent=search.max_concurrent
        )
    else:
        searcher = BasicVariantGenerator(random_state=search.seed, max_concurrent=search.max_concurrent)
    scheduler = (
        RecordingASHA(
            str(sweep_dir / "pruned.txt"),
            time_attr="epoch",
            max_t=base.optim.epochs,
            grace_period=spec.scheduler.grace_period,
            reduction_factor=spec.scheduler.reduction_factor,
            # A trial at max_t still has to export and evaluate: let it finish instead of stopping it.
            stop_last_trials=False,
        )
        if spec.scheduler.name is SchedulerKind.asha
        else FIFOScheduler()
    )
    return tune.Tuner(
        trainable,
        param_space=to_tune_space(dists),
        tune_config=tune.TuneConfig(
            metric=metric,
            mode=mode,
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=search.num_samples,
            max_concurrent_trials=search.max_concurrent,
        ),
        run_config=tune.RunConfig(name="tune", storage_path=str(sweep_dir)),
    )


def _interrupted(grid: Any, spec: SweepSpec, sweep_dir: Path) -> bool:
    """Fewer trials than asked, or one that neither finished, failed nor was pruned: Ctrl-C cut the sweep short."""
    stopped = pruned(sweep_dir)
    cut_short = [
        r
        for r in grid
        if not r.error
        and "eval/id_acc" not in (r.metrics or {})
        and (r.metrics or {}).get("trial_id") not in stopped
    ]
    return len(grid) < trial_count(spec) or bool(cut_short)


def sweep(
    spec: SweepSpec,
    base: Config,
    dists: dict[str, tuple[str, list[Any]]],
    name: str,
    console: Console | None = None,
) -> SweepResult | None:
    """Run (or resume) the sweep ``name``: parent MLflow run, Tune trials as child runs, summary on the parent.
    None when interrupted (Ctrl-C) before every trial ended. With a ``console``, the trials' output goes to its
    log file (``<sweep dir>/console.log``) and Tune's trial table stays on the terminal."""
    from ray import tune

    from pipeline import tracking

    # Trials report every epoch, but only rank 0's epoch-end reports carry val/*; mid-epoch checkpoint reports
    # do not, and Tune's strict check would reject them. ASHA and Optuna skip results without the metric.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    start_ray(base, console, min_cpus=_cpus_needed(base, spec.search.max_concurrent))
    sweep_dir = output_folder(base.tracking.output_dir) / "sweeps" / name
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if console is not None:
        console.say(
            f"[dive] log:  {console.attach(sweep_dir)}  (trials' Ray and library output; -v shows it)"
        )
    parent = _open_parent(spec, base, dists, name, sweep_dir)  # an interrupted sweep reopens the same run
    trainable = tune.with_resources(
        tune.with_parameters(
            _trial,
            base=to_dict(base),
            parent_run_id=parent.run_id,
            sweep_dir=str(sweep_dir),
            tie=spec.tie,
            source=tracking.source_tags(),
        ),
        {"cpu": 0.1},
    )
    try:
        if tune.Tuner.can_restore(str(sweep_dir / "tune")):
            tuner = tune.Tuner.restore(str(sweep_dir / "tune"), trainable, resume_errored=True)
        else:
            tuner = _new_tuner(spec, base, dists, trainable, sweep_dir)
        grid = tuner.fit()
        if _interrupted(grid, spec, sweep_dir):
            # Ctrl-C: Tune saved its state; the parent run stays RUNNING until the sweep is resumed.
            print(f"[dive] sweep {name} interrupted; rerun the same command to resume it", flush=True)
            return None
        result = summarize(spec, base, dists, grid, parent, sweep_dir, name)
        parent.end("FINISHED")
    except BaseException:
        parent.end("FAILED")
        raise
    (sweep_dir / "sweep.json").write_text(
        json.dumps({"parent_run_id": parent.run_id, "name": name, "finished": True})
    )
    return result
