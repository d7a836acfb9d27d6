"""`ray start --head` + `ray job submit --working-dir . -- python pipeline/train.py`: the cluster path users take."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline.ray_env import free_port

REPO = Path(__file__).resolve().parents[2]


def _wait_for_dashboard(port: int, head: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert head.poll() is None, "ray start --head exited early"
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/version", timeout=2)
            return
        except urllib.error.HTTPError:  # answering (e.g. 401 without a token): it is up
            return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"the Ray dashboard on port {port} did not come up in {timeout:.0f} s")


@pytest.mark.ray
@pytest.mark.slow
def test_job_submitted_to_a_local_head_succeeds(tmp_path):
    from pipeline.demo import ensure_demo

    paths, teacher = ensure_demo(tmp_path / "demo", size="tiny")
    config = {
        "model": {"pretrained": str(teacher)},
        "data": {"id_train": str(paths.id_train), "reference": str(paths.reference)},
        "optim": {"global_batch": 16, "max_steps": 2, "warmup_steps": 1, "lr": 1e-3},
        "eval": {"id": str(paths.id_test), "rsa_samples": 16},
        "tracking": {
            "uri": f"sqlite:///{tmp_path}/mlflow.db",
            "output_dir": str(tmp_path / "out"),
            "experiment": "job",
        },
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(config))
    bin_dir = str(Path(sys.executable).parent)
    # Token auth on: the head makes (or reuses) ~/.ray/auth_token and the CLI sends it (see README, "Cluster").
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    # Own ports throughout: another Ray instance on this machine (the test session's) holds the defaults, and a
    # job agent that cannot bind its port answers "No available agent to submit job" forever.
    gcs, dashboard, agent = free_port(), free_port(), free_port()
    # --block keeps the head in the foreground: terminating it stops exactly this cluster. (`ray stop` would stop
    # every Ray instance on the machine, the test session's own included.)
    head = subprocess.Popen(
        [
            f"{bin_dir}/ray",
            "start",
            "--head",
            "--block",
            "--num-cpus=4",
            f"--port={gcs}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            f"--dashboard-agent-listen-port={agent}",
            "--disable-usage-stats",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_dashboard(dashboard, head)
        submit = [
            f"{bin_dir}/ray",
            "job",
            "submit",
            "--address",
            f"http://127.0.0.1:{dashboard}",
            "--working-dir",
            str(REPO),
            "--",
            "python",
            "pipeline/train.py",
            "--config",
            str(tmp_path / "job.yaml"),
        ]
        for _attempt in range(12):  # the job agent can come up a few seconds after the dashboard answers
            job = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
            if "No available agent" not in job.stdout + job.stderr:
                break
            time.sleep(5)
    finally:
        head.send_signal(signal.SIGTERM)
        head.wait(timeout=120)
    output = job.stdout + job.stderr
    assert job.returncode == 0 and "succeeded" in output, output[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("job").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert "eval/id_acc" in runs[0].data.metrics
