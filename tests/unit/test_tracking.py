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
