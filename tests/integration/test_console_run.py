"""`python pipeline/train.py </dev/null` as a user runs it: a few lines of progress and the result on the console,
everything Ray, the workers and the libraries print in the run's console.log."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import tiny_run_overrides

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
    assert len(lines) <= 30, out  # the demo prints the same lines with more steps: 27 (README, "Console")
    assert not [line for line in lines if NOISE.search(line)], out
    steps = [line for line in lines if line.startswith("[dive] step ")]
    assert 2 <= len(steps) <= 11 and re.match(r"\[dive\] step \d+/\d+ \(\d+%\)  epoch \d/3  loss ", steps[0])
    assert steps[-1].split()[2].split("/")[0] == steps[-1].split()[2].split("/")[1]  # ends at the last step
    assert any(line.startswith("fine-tuned ") for line in lines) and "MLflow UI:" in out
    log = Path(re.search(r"\[dive\] log:\s+(\S+)", out).group(1))
    assert log.name == "console.log" and log.parent.parent == tmp_path / "out"
    text = log.read_text()
    assert "RayTrainWorker" in text or "TrainController" in text  # the workers' output, kept
