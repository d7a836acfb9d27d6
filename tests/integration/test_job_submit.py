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


class _Head:
    """`ray start --head --block` on ports of its own; SIGTERM stops exactly this cluster (`ray stop` would stop
    every Ray instance on the machine, the test session's own included)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env, self.bin = env, str(Path(sys.executable).parent)
        # Own ports throughout: another Ray instance on this machine (the test session's) holds the defaults,
        # and a job agent that cannot bind its port answers "No available agent to submit job" forever.
        gcs, self.dashboard, agent = free_port(), free_port(), free_port()
        self.proc = subprocess.Popen(
            [
                f"{self.bin}/ray", "start", "--head", "--block", "--num-cpus=4", f"--port={gcs}",
                "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard}",
                f"--dashboard-agent-listen-port={agent}", "--disable-usage-stats",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def __enter__(self) -> _Head:
        _wait_for_dashboard(self.dashboard, self.proc)
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)

    def submit(self, *entrypoint: str) -> subprocess.CompletedProcess:
        cmd = [
            f"{self.bin}/ray", "job", "submit", "--address", f"http://127.0.0.1:{self.dashboard}",
            "--working-dir", str(REPO), "--", *entrypoint,
        ]  # fmt: skip
        for _attempt in range(12):  # the job agent can come up a few seconds after the dashboard answers
            job = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=900, cwd=REPO)
            if "No available agent" not in job.stdout + job.stderr:
                return job
            time.sleep(5)
        return job


def _env(**extra: str) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    # Token auth on: the head makes (or reuses) ~/.ray/auth_token and the CLI sends it (see docs/cluster.md).
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token", **extra}
    for key in ("RAY_ADDRESS", "DIVE_HOME", "MLFLOW_TRACKING_URI", "DIVE_DEMO_DIR"):
        env.pop(key, None)
    return env


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
    with _Head(_env()) as head:
        job = head.submit("python", "pipeline/train.py", "--config", str(tmp_path / "job.yaml"))
    output = job.stdout + job.stderr
    assert job.returncode == 0 and "succeeded" in output, output[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("job").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert "eval/id_acc" in runs[0].data.metrics


@pytest.mark.ray
@pytest.mark.slow
def test_two_default_jobs_share_the_demo_cache_and_the_mlflow_store(tmp_path):
    """The README's cluster command with no paths given: a job's working directory is Ray's per-job package
    folder (deleted afterwards), so the demo cache, outputs and mlflow.db go to the per-user data folder, where
    the second job finds the first's demo teacher and both runs stay browsable."""
    xdg = tmp_path / "xdg"
    small = [
        "data.demo=.cache/dive-demo-tiny", "data.demo_size=tiny", "optim.global_batch=16", "optim.max_steps=2",
        "optim.warmup_steps=1", "eval.rsa_samples=16", "val.samples=16", "scaling.num_workers=1",
    ]  # fmt: skip
    with _Head(_env(XDG_DATA_HOME=str(xdg))) as head:
        first = head.submit("python", "pipeline/train.py", *small)
        print("first job:", first.stdout[-4000:], first.stderr[-2000:], sep="\n")  # shown if a check fails
        second = head.submit("python", "pipeline/train.py", *small)
        print("second job:", second.stdout[-4000:], second.stderr[-2000:], sep="\n")
    home = xdg / "dive"
    for job in (first, second):
        assert job.returncode == 0 and "succeeded" in job.stdout + job.stderr, (job.stdout + job.stderr)[
            -3000:
        ]
        assert f"demo {home}/.cache/dive-demo-tiny · outputs {home}/outputs" in job.stdout  # printed at start
    assert "[demo] teacher:" in first.stdout  # the first job pre-trains the demo teacher …
    assert "[demo] teacher cached" in second.stdout and "[demo] teacher:" not in second.stdout  # … once
    client = MlflowClient(tracking_uri=f"sqlite:///{home}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("dive-demo").experiment_id])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    for r in runs:  # the exports outlive the jobs' working directories
        assert (home / "outputs" / r.info.run_id / "export" / "open_clip_config.json").is_file()
