"""pipeline.tracking and the store a run config resolves to (no Ray)."""

from __future__ import annotations

from dive.config import load_config
from pipeline import tracking
from pipeline.train import resolve_paths


def test_the_store_is_resolved_on_the_driver(tmp_path, monkeypatch):
    """Tune runs each trial in its own working directory: a relative default store would split a sweep."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_paths(load_config()).tracking.uri == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_paths(load_config()).tracking.uri == "http://127.0.0.1:5000"
    relative = load_config(overrides=["tracking.uri=sqlite:///runs/m.db"])
    assert resolve_paths(relative).tracking.uri == f"sqlite:///{tmp_path}/runs/m.db"


def test_runs_resume_and_a_missing_child_does_not_stop_the_parent(tmp_path, capsys):
    cfg = load_config(overrides=[f"tracking.uri=sqlite:///{tmp_path}/m.db", "tracking.experiment=t"])
    parent, resumed = tracking.parent_run(cfg, tmp_path / "state.json", run_name="p", tags={"k": "v"})
    assert not resumed
    again, resumed = tracking.parent_run(cfg, tmp_path / "state.json", run_name="p", tags={"k": "v"})
    assert resumed and again.run_id == parent.run_id
    child = tracking.Run.start(cfg, parent_run_id=parent.run_id)
    assert parent.child_ended(child.run_id, "KILLED")
    assert child.client.get_run(child.run_id).info.status == "KILLED"
    assert not parent.child_ended("0" * 32, "KILLED")  # logged to another store: reported, not raised
    assert "not closed" in capsys.readouterr().err
    parent.end("FINISHED")
    assert parent.client.get_run(parent.run_id).info.status == "FINISHED"
    assert child.client.get_run(child.run_id).data.tags["mlflow.parentRunId"] == parent.run_id


def test_runs_carry_mlflow_source_tags_and_a_sweep_trial_takes_its_drivers(tmp_path):
    """The MLflow UI shows where a run came from: entry point, source type, user, this checkout's git commit."""
    import subprocess
    from pathlib import Path

    cfg = load_config(overrides=[f"tracking.uri=sqlite:///{tmp_path}/m.db", "tracking.experiment=t"])
    run = tracking.Run.start(cfg)
    tags = run.client.get_run(run.run_id).data.tags
    assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.user"]
    assert tags["mlflow.source.name"] and tags["dive.method"] == cfg.loss.method.value
    repo = Path(tracking.__file__).resolve().parents[1]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True)
    if head.returncode == 0:  # a checkout (CI clones one): the run names its commit
        assert tags["mlflow.source.git.commit"] == head.stdout.strip()
    trial = tracking.Run.start(cfg, tags={"mlflow.source.name": "pipeline/tune.py"})
    assert trial.client.get_run(trial.run_id).data.tags["mlflow.source.name"] == "pipeline/tune.py"
