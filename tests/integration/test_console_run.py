"""`python pipeline/train.py </dev/null` as a user runs it: a few lines of progress and the result on the console,
everything Ray, the workers and the libraries print in the run's console.log."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import mlflow_server, tiny_run_overrides

REPO = Path(__file__).resolve().parents[2]
NOISE = re.compile(
    r"RayTrainWorker|TrainController|SplitCoordinator|raylet|core_worker|FutureWarning|TrainingReport|"
    r"execution finished|Started a local Ray|model config|No pretrained weights|PreemptionWatcher|alembic|"
    r"Creating initial MLflow"
)


@pytest.mark.ray
@pytest.mark.slow
def test_a_run_without_a_tty_prints_progress_and_results_only(demo, tmp_path):
    paths, teacher = demo
    base = tmp_path / "base.yaml"
    base.write_text("{}\n")
    overrides = [*tiny_run_overrides(demo, tmp_path, "console"), "optim.epochs=3"]
    cmd = [sys.executable, "pipeline/train.py", "--config", str(base), *overrides]
    done = subprocess.run(
        cmd, cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    lines = out.splitlines()
    assert len(lines) <= 30, (
        out
    )  # the demo prints the same lines with more steps: 27 (docs/training.md, "Console")
    assert not [line for line in lines if NOISE.search(line)], out
    steps = [line for line in lines if line.startswith("[dive] step ")]
    assert 2 <= len(steps) <= 11 and re.match(r"\[dive\] step \d+/\d+ \(\d+%\)  epoch \d/3  loss ", steps[0])
    assert steps[-1].split()[2].split("/")[0] == steps[-1].split()[2].split("/")[1]  # ends at the last step
    assert any(line.startswith("fine-tuned ") for line in lines) and "MLflow UI:" in out
    log = Path(re.search(r"\[dive\] log:\s+(\S+)", out).group(1))
    assert log.name == "console.log" and log.parent.parent == tmp_path / "out"
    text = log.read_text()
    assert "RayTrainWorker" in text or "TrainController" in text  # the workers' output, kept


PLANTED = "pl4nted-s3cret"


@pytest.mark.ray
@pytest.mark.slow
def test_a_password_in_the_tracking_uri_is_nowhere_a_run_writes(demo, tmp_path):
    """``MLFLOW_TRACKING_URI`` with a password, against a real ``mlflow server``: the run logs through it, and
    neither the console, nor any file the run or the server wrote (config.yaml, console.log, the export card,
    the store's params and tags, the artifacts) holds the password."""
    base = tmp_path / "base.yaml"
    base.write_text("{}\n")
    overrides = [
        o for o in tiny_run_overrides(demo, tmp_path, "secrets") if not o.startswith("tracking.uri=")
    ]
    with mlflow_server(f"sqlite:///{tmp_path}/server.db", cwd=tmp_path) as url:
        secret_uri = url.replace("http://", f"http://alice:{PLANTED}@") + "/"
        done = subprocess.run(
            [sys.executable, "pipeline/train.py", "--config", str(base), *overrides, "optim.max_steps=2"],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "MLFLOW_TRACKING_URI": secret_uri},
        )
        out = done.stdout + done.stderr
        assert done.returncode == 0, out[-3000:]
        assert "alice:***@127.0.0.1" in out and PLANTED not in out
        client = MlflowClient(tracking_uri=url)
        (run,) = client.search_runs([client.get_experiment_by_name("secrets").experiment_id])
        assert (
            run.info.status == "FINISHED"
            and run.data.params["tracking.uri"] == "http://alice:***@" + url[7:] + "/"
        )
        logged = json.dumps([run.data.params, run.data.tags])
        assert PLANTED not in logged
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    names = {p.name for p in written}
    assert {"config.yaml", "console.log", "card.json", "server.db"} <= names, names
    assert any("mlartifacts" in p.parts for p in written)  # the artifacts the server stored are searched too
    holding = [str(p) for p in written if PLANTED.encode() in p.read_bytes()]
    assert holding == []
