"""A real cluster on one machine: two Ray nodes started as separate processes (``ray start`` on 127.0.0.2 and
127.0.0.3, token auth with a private token file), a job sent with ``ray job submit``, data and checkpoints in the
S3 bucket, MLflow on PostgreSQL. The worker node's process group is killed mid-run and a fresh node started: the
job still succeeds, resumed from the bucket's checkpoint, as one MLflow run with every step logged once."""

from __future__ import annotations

import secrets
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tests.helpers import tiny_run_overrides
from tests.services import alive_nodes, ray_env, ray_node, upload_sets

REPO = Path(__file__).resolve().parents[2]
STEPS = 9


@pytest.mark.ray
@pytest.mark.slow
def test_a_job_on_two_nodes_survives_losing_one_and_resumes_from_the_bucket(
    s3_store, mlflow_production, demo, tmp_path
):
    from mlflow.tracking import MlflowClient

    token = tmp_path / "ray-token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    # The health check notices a lost node in about 3 s instead of 30 (an environment setting of the head).
    env = ray_env(token, {**s3_store.env(), "RAY_health_check_period_ms": "1000",
                          "RAY_health_check_failure_threshold": "3"})  # fmt: skip
    prefix = f"cluster-{uuid.uuid4().hex[:8]}"
    overrides = dict(
        o.split("=", 1)
        for o in upload_sets(s3_store, tiny_run_overrides(demo, tmp_path, prefix), f"{prefix}/data")
    )
    overrides.update(
        {
            "run.storage_path": s3_store.uri(prefix, "runs"),
            "tracking.output_dir": s3_store.uri(prefix, "outputs"),
            "tracking.uri": mlflow_production,
            "scaling.num_workers": "2",
            "scaling.cpus_per_worker": "1",
            "scaling.placement": "STRICT_SPREAD",  # one Train worker per node
            "optim.max_steps": str(STEPS),
            "optim.epochs": "4",
            "run.checkpoint.every": "1",
            "run.failure.max_failures": "2",
            "tracking.log_every": "1",
            "loss.lambda_avl": "10",
        }
    )
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({}))
    head = ray_node("127.0.0.2", env, cpus=3)
    nodes = [head]
    try:
        nodes.append(ray_node("127.0.0.3", env, cpus=2, head=head))
        deadline = time.monotonic() + 120
        while alive_nodes(head, env) < 2 and time.monotonic() < deadline:
            time.sleep(1)
        assert alive_nodes(head, env) == 2
        events: dict[str, float] = {}

        def lose_the_worker_node() -> None:
            end = time.monotonic() + 600
            while time.monotonic() < end:
                if any(k.endswith("/complete.json") for k in s3_store.keys(f"{prefix}/runs")):
                    events["killed"] = time.monotonic()
                    nodes[1].kill()
                    nodes.append(ray_node("127.0.0.3", env, cpus=2, head=head))
                    return
                time.sleep(0.2)

        watcher = threading.Thread(target=lose_the_worker_node, daemon=True)
        watcher.start()
        job = subprocess.run(
            [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address",
             f"http://{head.ip}:{head.dashboard_port}", "--working-dir", str(REPO), "--",
             sys.executable, "pipeline/train.py", "--config", str(config),
             *(f"{k}={v}" for k, v in overrides.items())],
            env=env, capture_output=True, text=True, timeout=900, cwd=REPO,
        )  # fmt: skip
        watcher.join(timeout=120)
    finally:
        for node in reversed(nodes):
            node.stop()
    output = job.stdout + job.stderr
    assert "killed" in events, (
        "the worker node was never killed: no checkpoint reached the bucket\n" + output[-3000:]
    )
    assert job.returncode == 0 and "succeeded" in output, output[-4000:]
    client = MlflowClient(tracking_uri=mlflow_production)
    runs = client.search_runs([client.get_experiment_by_name(prefix).experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED", [r.info.status for r in runs]
    run_id = runs[0].info.run_id
    resumed = client.get_metric_history(run_id, "train/resumed_from_step")
    assert resumed and resumed[0].value >= 1  # restarted from the bucket's checkpoint, not from scratch
    steps = [m.step for m in client.get_metric_history(run_id, "train/loss")]
    assert sorted(steps) == list(range(1, STEPS + 1)), steps  # every step once: none lost, none logged twice
    assert "config.yaml" in s3_store.keys(f"{prefix}/outputs/{run_id}")
