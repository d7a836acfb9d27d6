"""Issue #14 item 6: losing the node that hosts a Train worker costs only the work since the last checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import tiny_run_overrides


@pytest.mark.ray
@pytest.mark.slow
def test_a_lost_node_resumes_on_another_from_the_last_checkpoint_as_one_mlflow_run(demo, tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("{}\n")
    overrides = [
        *tiny_run_overrides(demo, tmp_path, "node-loss"),
        "loss.lambda_avl=10",
        "loss.lambda_pvl=10",
        "optim.max_steps=9",
        "optim.epochs=4",
        "scaling.num_workers=1",
        "scaling.cpus_per_worker=1",
        "run.checkpoint.every=1",
        "run.failure.max_failures=2",
        "tracking.log_every=1",
    ]
    job = subprocess.run(
        [sys.executable, "-m", "tests.integration.node_loss_job", str(base), *overrides],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    outcome = json.loads((tmp_path / "outcome.json").read_text())
    assert outcome.get("removed"), "no node was removed: the run ended before its first checkpoint was seen"
    client = MlflowClient(tracking_uri=outcome["tracking_uri"])
    runs = client.search_runs([client.get_experiment_by_name("node-loss").experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id == outcome["run_id"]
    assert runs[0].info.status == "FINISHED"
    resumed = client.get_metric_history(outcome["run_id"], "train/resumed_from_step")
    assert resumed and resumed[0].value >= 1  # restarted from a checkpoint, not from scratch
    loss_steps = [m.step for m in client.get_metric_history(outcome["run_id"], "train/loss")]
    assert sorted(loss_steps) == list(range(1, 10))  # every step once: none lost, none logged twice
