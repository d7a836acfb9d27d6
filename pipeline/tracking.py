"""MLflow glue. The driver creates the run (so its id can be checkpointed and resumed); only world rank 0 of the
Train workers logs step metrics to it, through ``MlflowClient`` calls that carry the run id explicitly (no
process-global "active run" that a Ray worker could get wrong).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from dive.config import Config, flatten

MAX_BATCH = 100  # MLflow accepts at most 100 params / 1000 metrics per log_batch call


def tracking_uri(cfg: Config) -> str:
    """Config, then $MLFLOW_TRACKING_URI, then a SQLite file in the working directory — always absolute, because
    a Ray Train worker's cwd is a temporary session folder."""
    uri = cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        return f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    if "://" not in uri:  # a plain folder: file store
        return Path(uri).resolve().as_uri()
    return uri


def _local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:"))


def ensure_experiment(client: MlflowClient, name: str, uri: str) -> str:
    """Create the experiment on the driver with an absolute artifact location for local stores (a worker-created
    experiment would put artifacts inside Ray's temporary session folder)."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if _local_store(uri):
        root = (
            Path(uri.split(":///", 1)[1]).parent if uri.startswith("sqlite:") else Path(uri[len("file://") :])
        )
        location = (root / "mlartifacts" / name).resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)


def start_run(
    cfg: Config,
    *,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> tuple[MlflowClient, str]:
    """Create a run, log the flattened config as params; return the client and the run id."""
    uri = tracking_uri(cfg)
    client = MlflowClient(tracking_uri=uri)
    exp_id = ensure_experiment(client, cfg.tracking.experiment, uri)
    all_tags = {"dive.method": cfg.loss.method.value, **(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(exp_id, run_name=run_name or cfg.tracking.run_name or None, tags=all_tags)
    log_params(client, run.info.run_id, flatten(cfg))
    return client, run.info.run_id


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, Any]) -> None:
    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(items), MAX_BATCH):
        client.log_batch(run_id, params=items[i : i + MAX_BATCH])


def log_metrics(client: MlflowClient, run_id: str, metrics: Mapping[str, float], step: int) -> None:
    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
    for i in range(0, len(items), 1000):
        client.log_batch(run_id, metrics=items[i : i + 1000])


def metric_history(
    client: MlflowClient, run_id: str, keys: Iterable[str]
) -> dict[str, list[tuple[int, float]]]:
    return {k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)] for k in keys}
