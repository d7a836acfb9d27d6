"""What a finished sweep leaves: the trials table (JSON, CSV, Markdown), objective-vs-parameter plots, the best
config and export on the parent MLflow run (registered where the store has a registry)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dive.config import Config, to_dict, to_yaml
from dive.redact import mask_tree, masked_keys
from pipeline.console import error_line
from pipeline.home import output_folder
from pipeline.sweep.spec import ObjectiveMode, SweepSpec, trial_config


@dataclass
class SweepResult:
    name: str
    parent_run_id: str
    best_run_id: str
    best_config: str  # path of the best trial's complete run config (replays with pipeline/train.py)
    trials: list[dict[str, Any]]


def pruned(sweep_dir: Path) -> set[str]:
    """Ids of the trials ASHA stopped (written by ``RecordingASHA``)."""
    record = sweep_dir / "pruned.txt"
    return set(record.read_text().split()) if record.is_file() else set()


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

    metric, sign = spec.objective.metric, 1 if spec.objective.mode is ObjectiveMode.max else -1
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
    masked = masked_keys(mask_tree(to_dict(best_cfg)))  # to_yaml masks secrets: the replay must give them
    best_path.write_text(
        f"# Best trial {best['trial']} of sweep {name} ({metric} = {best[metric]:.4f}); replay with:\n"
        f"#   python pipeline/train.py --config {best_path}\n"
        + (f"# (secrets masked here; give {', '.join(masked)} again as overrides)\n" if masked else "")
        + to_yaml(best_cfg)
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
    export = output_folder(base.tracking.output_dir) / best["mlflow_run_id"] / "export"
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
        print(f"[dive] model registry unavailable ({error_line(err, 120)}); export logged only")


def _markdown(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    head = ["trial", *columns, "completed"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in head) + " |" for r in rows]
    return "\n".join(lines) + "\n"
