"""Ray Tune sweeps over a run config: λ_AVL, λ_PVL, temperature, lr, EMA momentum — one MLflow child run per trial.

    python pipeline/tune.py --space tune_configs/demo.yaml                      # 2 trials on the demo data
    python pipeline/tune.py --space tune_configs/dive_lambdas.yaml --config my.yaml --num-samples 32
    python pipeline/tune.py --space tune_configs/demo.yaml --name demo-sweep   # rerun the same name: resumes

A space file (YAML) names a base run config, fixed overrides, the objective, the search algorithm, the scheduler
and ``space``: dotted config keys → distributions. Everything is checked before Ray starts. Each trial is a Tune
function that builds a complete run config (base + overrides + sampled values) and runs it through
``pipeline.train.run`` (Train V2: a driver function per trial owns its ``TorchTrainer``), so a trial is exactly a
plain training run: same metric names, export, evaluation, and its resolved config replays through
``pipeline/train.py``. Rank 0 reports ``val/*`` at every epoch end; ASHA prunes on it, Optuna (TPE) proposes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from dive.config import (
    Config,
    ConfigError,
    apply_overrides,
    from_dict,
    load_config,
    to_dict,
    to_yaml,
    validate,
)
from pipeline.data.format import DataError

DISTRIBUTIONS = ("uniform", "loguniform", "choice", "randint")
ALGORITHMS = ("optuna", "random")
SCHEDULERS = ("asha", "none")
VAL_METRICS = {
    "val/objective": "",
    "val/id_acc": "eval.val_id",
    "val/ref_retrieval": "eval.val_ref",
    "val/zs_acc": "eval.val_zs",
}


# ------------------------------------------------------------------------------------------------ the space file
@dataclass
class Objective:
    # A val/* metric rank 0 reports at every epoch end (never an eval suite: that would tune on the test sets).
    metric: str = "val/objective"
    mode: str = "max"


@dataclass
class Search:
    algorithm: str = "optuna"
    num_samples: int = 8
    max_concurrent: int = 1
    seed: int = 0


@dataclass
class Scheduler:
    name: str = "asha"
    # ASHA's unit is the epoch: a trial is compared with its peers first after grace_period epochs.
    grace_period: int = 1
    reduction_factor: int = 2


@dataclass
class SweepSpec:
    # Base run config (YAML); --config on the command line wins. "" = the built-in demo config.
    config: str = ""
    # a.b → value, applied to every trial before the sampled values.
    overrides: dict[str, Any] = field(default_factory=dict)
    objective: Objective = field(default_factory=Objective)
    search: Search = field(default_factory=Search)
    scheduler: Scheduler = field(default_factory=Scheduler)
    # a.b → {uniform|loguniform|randint: [low, high]} or {choice: [v1, v2, …]}
    space: dict[str, Any] = field(default_factory=dict)
    # a.b → c.d: key a.b takes the value sampled for the space key c.d (the paper's one shared λ:
    # loss.lambda_pvl: loss.lambda_avl).
    tie: dict[str, str] = field(default_factory=dict)


def load_spec(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> SweepSpec:
    """Read a space file (+ ``a.b=c`` overrides of its own fields), typed; errors name the file and key."""
    try:
        raw = OmegaConf.load(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such space file") from None
    except Exception as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    try:
        merged = OmegaConf.merge(
            OmegaConf.structured(SweepSpec), raw, OmegaConf.from_dotlist(list(overrides))
        )
        plain = OmegaConf.to_container(merged, resolve=True)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", "") or "?"
        raise ConfigError(f"{path}: key '{key}': {str(err).splitlines()[0]}") from None
    return SweepSpec(
        config=plain["config"],
        overrides=dict(plain["overrides"]),
        objective=Objective(**plain["objective"]),
        search=Search(**plain["search"]),
        scheduler=Scheduler(**plain["scheduler"]),
        space=dict(plain["space"]),
        tie=dict(plain["tie"]),
    )


def _distribution(path: str, key: str, spec: Any) -> tuple[str, list[Any]]:
    where = f"{path}: space key '{key}'"
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
        raise ConfigError(f"{where}: expected one of {{{' | '.join(DISTRIBUTIONS)}: …}}, got {spec!r}")
    kind, args = next(iter(spec.items()))
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise ConfigError(f"{where}: choice needs a non-empty list of values, got {args!r}")
        return kind, args
    if not (isinstance(args, list) and len(args) == 2 and all(isinstance(a, int | float) for a in args)):
        raise ConfigError(f"{where}: {kind} needs [low, high] numbers, got {args!r}")
    low, high = args
    if not low < high:
        raise ConfigError(f"{where}: {kind} needs low < high, got [{low}, {high}]")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: loguniform needs bounds > 0, got [{low}, {high}]")
    if kind == "randint" and not all(isinstance(a, int) for a in args):
        raise ConfigError(f"{where}: randint needs integer bounds, got {args!r}")
    return kind, [low, high]


def override(key: str, value: Any) -> str:
    """``a.b=value`` with the value spelled as YAML (JSON is YAML), so bools, nulls and floats keep their type."""
    return f"{key}={json.dumps(value)}"


def check_spec(spec: SweepSpec, base: Config, path: str) -> dict[str, tuple[str, list[Any]]]:
    """Every key real, every bound a valid config value, the objective reported by this config — before Ray."""
    if spec.objective.mode not in ("max", "min"):
        raise ConfigError(
            f"{path}: key 'objective.mode': expected 'max' or 'min', got {spec.objective.mode!r}"
        )
    if spec.objective.metric not in VAL_METRICS:
        raise ConfigError(
            f"{path}: key 'objective.metric': expected one of {sorted(VAL_METRICS)} (validation metrics; "
            f"tuning on eval suites would tune on the test sets), got {spec.objective.metric!r}"
        )
    needed = VAL_METRICS[spec.objective.metric]
    if needed and not getattr(base.eval, needed.split(".")[1]):
        raise ConfigError(f"{path}: objective {spec.objective.metric} needs {needed} set in the run config")
    if not (base.eval.val_id or base.eval.val_ref or base.eval.val_zs):
        raise ConfigError(
            f"{path}: the run config sets none of eval.val_id, eval.val_ref, eval.val_zs; nothing to optimise"
        )
    if spec.search.algorithm not in ALGORITHMS:
        raise ConfigError(
            f"{path}: key 'search.algorithm': expected one of {ALGORITHMS}, got {spec.search.algorithm!r}"
        )
    if spec.scheduler.name not in SCHEDULERS:
        raise ConfigError(
            f"{path}: key 'scheduler.name': expected one of {SCHEDULERS}, got {spec.scheduler.name!r}"
        )
    for key, minimum in (
        ("search.num_samples", 1),
        ("search.max_concurrent", 1),
        ("scheduler.grace_period", 1),
        ("scheduler.reduction_factor", 2),
    ):
        section, name = key.split(".")
        value = getattr(getattr(spec, section), name)
        if value < minimum:
            raise ConfigError(f"{path}: key '{key}': expected an integer >= {minimum}, got {value}")
    if not spec.space:
        raise ConfigError(f"{path}: key 'space': expected at least one dotted config key to search")
    dists = {key: _distribution(path, key, value) for key, value in spec.space.items()}
    for target, source in spec.tie.items():
        if source not in dists or target in dists:
            raise ConfigError(
                f"{path}: tie '{target}: {source}': expected a key outside the space tied to a space key "
                f"({', '.join(dists)})"
            )
    for key, (_, values) in dists.items():
        for value in values:  # both bounds (or every choice) must make a valid run config
            tied = [override(t, value) for t, s in spec.tie.items() if s == key]
            try:
                validate(apply_overrides(base, [override(key, value), *tied]), check_paths=False)
            except ConfigError as err:
                detail = str(err).replace("invalid config:\n  ", "").replace("\n  ", "; ")
                raise ConfigError(f"{path}: space key '{key}' = {value!r}: {detail}") from None
    return dists


def to_tune_space(dists: dict[str, tuple[str, list[Any]]]) -> dict[str, Any]:
    from ray import tune

    make = {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}
    return {
        key: tune.choice(args) if kind == "choice" else make[kind](*args)
        for key, (kind, args) in dists.items()
    }


def trial_config(base: dict[str, Any], params: dict[str, Any], tie: dict[str, str] | None = None) -> Config:
    """The complete run config of one trial: base (already holding the sweep's fixed overrides) + sampled values
    (+ the keys tied to them)."""
    values = {k: (v.item() if hasattr(v, "item") else v) for k, v in params.items()}
    values |= {target: values[source] for target, source in (tie or {}).items()}
    return apply_overrides(from_dict(base), [override(k, v) for k, v in values.items()])


# ------------------------------------------------------------------------------------------------ Ray Tune
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


def pruned(sweep_dir: Path) -> set[str]:
    record = sweep_dir / "pruned.txt"
    return set(record.read_text().split()) if record.is_file() else set()


def _trial(
    params: dict[str, Any],
    *,
    base: dict[str, Any],
    parent_run_id: str,
    sweep_dir: str,
    tie: dict[str, str] | None = None,
) -> None:
    """One Tune trial: a complete run through pipeline.train.run; restarts reuse its MLflow run and checkpoint."""
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


@dataclass
class SweepResult:
    name: str
    parent_run_id: str
    best_run_id: str
    best_config: str  # path of the best trial's complete run config (replays with pipeline/train.py)
    trials: list[dict[str, Any]]


def sweep(
    spec: SweepSpec, base: Config, dists: dict[str, tuple[str, list[Any]]], name: str
) -> SweepResult | None:
    """Run (or resume) the sweep ``name``: parent MLflow run, Tune trials as child runs, summary on the parent.
    None when interrupted (Ctrl-C) before every trial ended."""
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from pipeline import tracking
    from pipeline.ray_env import init_ray

    # Trials report every epoch, but only rank 0's epoch-end reports carry val/*; mid-epoch checkpoint reports
    # do not, and Tune's strict check would reject them. ASHA and Optuna skip results without the metric.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    init_ray(base, min_cpus=_cpus_needed(base, spec.search.max_concurrent))
    sweeps = Path(base.tracking.output_dir) / "sweeps"
    sweep_dir = sweeps / name
    sweep_dir.mkdir(parents=True, exist_ok=True)
    # An interrupted sweep reopens the same parent run (Tune restores its trials).
    parent, resumed = tracking.parent_run(
        base,
        sweep_dir / "sweep.json",
        run_name=f"sweep-{name}",
        tags={"dive.sweep": name},
        state={"name": name},
    )
    parent_run_id = parent.run_id
    if resumed:
        print(f"[dive] resuming sweep {name} (MLflow parent run {parent_run_id})", flush=True)
    else:
        parent.log_text(to_yaml(base), "config/base.yaml")
        parent.log_text(OmegaConf.to_yaml(OmegaConf.structured(spec)), "sweep/space.yaml")
        params = {
            "sweep.objective": f"{spec.objective.mode} {spec.objective.metric}",
            "sweep.algorithm": spec.search.algorithm,
            "sweep.scheduler": spec.scheduler.name,
        }
        parent.log_params(params | {f"space.{key}": f"{kind}{args}" for key, (kind, args) in dists.items()})
        print(f"[dive] sweep {name}: MLflow parent run {parent_run_id} ({parent.uri})", flush=True)

    trainable = tune.with_resources(
        tune.with_parameters(
            _trial, base=to_dict(base), parent_run_id=parent_run_id, sweep_dir=str(sweep_dir), tie=spec.tie
        ),
        {"cpu": 0.1},
    )
    try:
        if tune.Tuner.can_restore(str(sweep_dir / "tune")):
            tuner = tune.Tuner.restore(str(sweep_dir / "tune"), trainable, resume_errored=True)
        else:
            metric, mode = spec.objective.metric, spec.objective.mode
            if spec.search.algorithm == "optuna":
                searcher = ConcurrencyLimiter(
                    OptunaSearch(metric=metric, mode=mode, seed=spec.search.seed),
                    max_concurrent=spec.search.max_concurrent,
                )
            else:
                searcher = BasicVariantGenerator(
                    random_state=spec.search.seed, max_concurrent=spec.search.max_concurrent
                )
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
                if spec.scheduler.name == "asha"
                else FIFOScheduler()
            )
            tuner = tune.Tuner(
                trainable,
                param_space=to_tune_space(dists),
                tune_config=tune.TuneConfig(
                    metric=metric,
                    mode=mode,
                    search_alg=searcher,
                    scheduler=scheduler,
                    num_samples=spec.search.num_samples,
                    max_concurrent_trials=spec.search.max_concurrent,
                ),
                run_config=tune.RunConfig(name="tune", storage_path=str(sweep_dir)),
            )
        grid = tuner.fit()
        stopped = pruned(sweep_dir)
        cut_short = [
            r
            for r in grid
            if not r.error
            and "eval/id_acc" not in (r.metrics or {})
            and (r.metrics or {}).get("trial_id") not in stopped
        ]
        if len(grid) < spec.search.num_samples or cut_short:
            # Ctrl-C: Tune saved its state; the parent run stays RUNNING until the sweep is resumed.
            print(f"[dive] sweep {name} interrupted; rerun the same command to resume it", flush=True)
            return None
        result = summarize(spec, base, dists, grid, parent, sweep_dir, name)
        parent.end("FINISHED")
    except BaseException:
        parent.end("FAILED")
        raise
    (sweep_dir / "sweep.json").write_text(
        json.dumps({"parent_run_id": parent_run_id, "name": name, "finished": True})
    )
    return result


def _trial_rows(grid: Any, dists: dict[str, Any], metric: str, sweep_dir: Path) -> list[dict[str, Any]]:
    rows, stopped = [], pruned(sweep_dir)
    for res in grid:
        metrics, config = res.metrics or {}, res.config or {}
        trial_id = str(metrics.get("trial_id", ""))
        marker = sweep_dir / "trials" / f"{trial_id}.json"
        run_id = json.loads(marker.read_text())["run_id"] if trial_id and marker.is_file() else ""
        rows.append(
            {
                "trial": trial_id,
                "mlflow_run_id": metrics.get("mlflow_run_id", run_id),
                **{k: config.get(k) for k in dists},
                metric: metrics.get(metric, math.nan),
                "epochs": metrics.get("epoch", 0),
                "completed": "eval/id_acc" in metrics,
                "pruned": trial_id in stopped,
                "error": str(res.error).splitlines()[0][:200] if res.error else "",
                **{k: v for k, v in metrics.items() if k.startswith(("eval/", "val/")) and k != metric},
            }
        )
    return rows


def summarize(
    spec: SweepSpec,
    base: Config,
    dists: dict[str, Any],
    grid: Any,
    parent: Any,
    sweep_dir: Path,
    name: str,
) -> SweepResult:
    """Trials table, objective-vs-λ plot, best config + export on the parent run; stray child runs closed."""
    from pipeline import plots

    metric, sign = spec.objective.metric, 1 if spec.objective.mode == "max" else -1
    rows = _trial_rows(grid, dists, metric, sweep_dir)
    for row in rows:  # ASHA-stopped or failed trials leave their child run RUNNING
        if row["mlflow_run_id"] and not row["completed"]:
            status = "FAILED" if row["error"] else "KILLED"
            parent.child_ended(row["mlflow_run_id"], status)
    done = [r for r in rows if r["completed"] and not math.isnan(r[metric])]
    if not done:
        raise RuntimeError(f"sweep {name}: no trial completed; see {sweep_dir / 'tune'} for the trial logs")
    best = max(done, key=lambda r: sign * r[metric])
    best_cfg = trial_config(to_dict(base), {k: best[k] for k in dists}, spec.tie)
    best_cfg = replace(best_cfg, tracking=replace(best_cfg.tracking, run_name=""))
    best_path = sweep_dir / "best_config.yaml"
    best_path.write_text(
        f"# Best trial {best['trial']} of sweep {name} ({metric} = {best[metric]:.4f}); replay with:\n"
        f"#   python pipeline/train.py --config {best_path}\n" + to_yaml(best_cfg)
    )
    table = sweep_dir / "trials"
    (table / "trials.json").write_text(json.dumps(rows, indent=2, default=str))
    plots.write_table_csv(rows, table / "trials.csv")
    (table / "trials.md").write_text(
        _markdown(rows, [*dists, metric, "epochs", "eval/id_acc", "eval/ood_avg", "eval/zs_avg"])
    )
    log_keys = {k for k, (kind, _) in dists.items() if kind == "loguniform"}
    plots.objective_vs_params(rows, list(dists), metric, table / "objective.png", log_keys)
    for f in ("trials.json", "trials.csv", "trials.md", "objective.png"):
        parent.log_artifact(table / f, "sweep")
    parent.log_artifact(best_path, "sweep")
    params = {"sweep.best_trial": best["trial"], "sweep.best_run_id": best["mlflow_run_id"]}
    parent.log_params(params | {f"best.{key}": best[key] for key in dists})
    best_metrics = {f"best/{k}": v for k, v in best.items() if k.startswith(("eval/", "val/"))}
    parent.log_metrics({**best_metrics, f"best/{metric}": best[metric]})
    export = Path(base.tracking.output_dir) / best["mlflow_run_id"] / "export"
    if export.is_dir():
        parent.log_artifacts(export, "best_export")
        _register(parent, base.tracking.experiment)
    print(f"[dive] sweep {name}: best trial {best['trial']} {metric}={best[metric]:.4f}; config {best_path}")
    return SweepResult(name, parent.run_id, best["mlflow_run_id"], str(best_path), rows)


def _register(parent: Any, experiment: str) -> None:
    """Register the best export in the MLflow model registry when the store has one (SQL stores and servers)."""
    try:
        tag = parent.register_model("best_export", f"{experiment}-best")
        print(f"[dive] registered {tag.replace('/', ' version ')}")
    except Exception as err:  # a file store has no registry: the export stays logged on the parent run
        print(f"[dive] model registry unavailable ({str(err).splitlines()[0][:120]}); export logged only")


def _markdown(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    head = ["trial", *columns, "completed"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in head) + " |" for r in rows]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ command line
def prepare(
    space: str, config: str | None, overrides: list[str], spec_overrides: list[str]
) -> tuple[SweepSpec, Config, dict[str, Any]]:
    """Load and check the space and the base run config (with the space's fixed overrides) — before Ray."""
    from pipeline.train import DEMO_CONFIG, prepare_config

    spec = load_spec(space, spec_overrides)
    fixed = [override(k, v) for k, v in spec.overrides.items()] + list(overrides)
    path = config or spec.config or None
    dists = check_spec(spec, load_config(path or DEMO_CONFIG, fixed), space)  # cheap: no data touched yet
    return spec, prepare_config(path, fixed), dists


def sweep_name(base: Config, explicit: str | None, default: str) -> str:
    """An unfinished sweep of that name resumes; a finished default name moves on to the next free ``-N``."""
    sweeps = Path(base.tracking.output_dir) / "sweeps"

    def finished(name: str) -> bool:
        state = sweeps / name / "sweep.json"
        return state.is_file() and json.loads(state.read_text()).get("finished", False)

    if explicit:
        if finished(explicit):
            raise ConfigError(
                f"--name {explicit}: that sweep has finished ({sweeps / explicit}); pick a new name"
            )
        return explicit
    name, n = default, 1
    while finished(name):
        n += 1
        name = f"{default}-{n}"
    return name


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--space", required=True, help="search space YAML (tune_configs/*.yaml)")
    parser.add_argument(
        "--config", help="base run config (default: the space file's `config`, else the demo)"
    )
    parser.add_argument("--num-samples", type=int, help="trials (overrides search.num_samples)")
    parser.add_argument("--max-concurrent", type=int, help="trials at once (overrides search.max_concurrent)")
    parser.add_argument("--name", help="sweep name; rerunning an interrupted sweep's name resumes it")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the base run config")
    args = parser.parse_args(argv)
    spec_overrides = []
    if args.num_samples is not None:
        spec_overrides.append(f"search.num_samples={args.num_samples}")
    if args.max_concurrent is not None:
        spec_overrides.append(f"search.max_concurrent={args.max_concurrent}")
    try:
        spec, base, dists = prepare(args.space, args.config, args.overrides, spec_overrides)
    except (ConfigError, DataError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        name = sweep_name(base, args.name, Path(args.space).stem)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result = sweep(spec, base, dists, name)
    if result is None:
        return 130
    print(json.dumps(asdict(result) | {"trials": len(result.trials)}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
