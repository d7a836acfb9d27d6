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


class _Outage:
    """The run's MlflowClient, failing every call while ``down`` (as a stopped server or a locked store does)."""

    def __init__(self, client):
        self.client, self.down, self.calls = client, False, 0

    def __getattr__(self, name):
        real = getattr(self.client, name)

        def call(*args, **kwargs):
            self.calls += 1
            if self.down:
                raise ConnectionError("tracking server unreachable")
            return real(*args, **kwargs)

        return call


def _spooled_run(tmp_path):
    cfg = load_config(overrides=[f"tracking.uri=sqlite:///{tmp_path}/m.db", "tracking.experiment=t"])
    run = tracking.Run.start(cfg)
    run.spool = tmp_path / "run" / tracking.SPOOL
    run.client = _Outage(run.client)
    return run


def test_an_outage_is_spooled_and_replayed_in_order_with_original_steps_and_nothing_twice(
    tmp_path, monkeypatch, capsys
):
    run = _spooled_run(tmp_path)
    run.log_metrics({"train/loss": 1.0}, step=1)
    run.client.down = True
    run.log_metrics({"train/loss": 0.9}, step=2)  # fails: spooled, and the next try waits RETRY_S
    calls = run.client.calls
    run.log_metrics({"train/loss": 0.8}, step=3)  # within the wait: queued without calling the tracker
    run.log_text("hello", "notes/a.txt")
    assert run.client.calls == calls and run.pending() == 3
    assert "spooling to" in capsys.readouterr().err
    run.client.down = False
    monkeypatch.setattr(tracking.time, "monotonic", lambda: 1e12)  # the wait is over
    run.log_metrics({"train/loss": 0.7}, step=4)  # replays the spool first, then sends this one
    assert run.pending() == 0 and not run.spool.exists()
    history = run.metric_history(["train/loss"])["train/loss"]
    assert sorted(history) == [(1, 1.0), (2, 0.9), (3, 0.8), (4, 0.7)]
    assert run.client.download_artifacts(run.run_id, "notes/a.txt", str(tmp_path))
    assert "spooled record(s) sent" in capsys.readouterr().err


def test_a_run_ended_while_the_tracker_is_down_keeps_its_status_in_the_spool_for_dive_sync(tmp_path, capsys):
    from dive.config import to_yaml
    from pipeline.cli import main

    run = _spooled_run(tmp_path)
    folder = run.spool.parent
    folder.mkdir(parents=True)
    (folder / "file.txt").write_text("export card")
    run.client.down = True
    run.log_artifact(folder / "file.txt", "export")
    run.end("FINISHED")  # no exception: the status waits in the spool behind the artifact
    err = capsys.readouterr().err
    assert "2 record(s)" in err and "dive sync" in err
    assert run.client.client.get_run(run.run_id).info.status == "RUNNING"
    run_dir = tmp_path / "outputs" / run.run_id  # dive sync reads a run folder: its config and its spool
    run_dir.mkdir(parents=True)
    run.spool.replace(run_dir / tracking.SPOOL)
    cfg = load_config(overrides=[f"tracking.uri=sqlite:///{tmp_path}/m.db", "tracking.experiment=t"])
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    assert main(["sync", str(run_dir)]) == 0
    stored = run.client.client.get_run(run.run_id)
    assert stored.info.status == "FINISHED" and not (run_dir / tracking.SPOOL).exists()
    assert [a.path for a in run.client.client.list_artifacts(run.run_id, "export")] == ["export/file.txt"]
    assert main(["sync", str(run_dir)]) == 0 and "nothing spooled" in capsys.readouterr().out


def test_a_restarted_worker_group_does_not_log_a_step_twice(tmp_path):
    """Steps after the last checkpoint were logged before the fault; training them again logs nothing new,
    except the resume marker."""
    from pipeline.worker import RunInfo, _RankZeroLogger

    cfg = load_config(overrides=[f"tracking.uri=sqlite:///{tmp_path}/m.db", "tracking.experiment=t"])
    run = tracking.Run.start(cfg)
    info = RunInfo(
        run.run_id, run.uri, id_rows=10, classnames=["a"], templates=["{}"], use_teacher_cache=False
    )
    first = _RankZeroLogger(info)
    for step in (1, 2, 3, 4):
        first.log({"train/loss": 1.0 / step}, step)
    again = _RankZeroLogger(info, resumed=True)  # the checkpoint was at step 2
    again.log({"train/resumed_from_step": 2.0, "train/center_norm": 0.5}, 2, always=True)
    for step in (3, 4, 5):
        again.log({"train/loss": 0.9 / step}, step)
    steps = [s for s, _ in run.metric_history(["train/loss"])["train/loss"]]
    assert sorted(steps) == [1, 2, 3, 4, 5]
    assert run.metric_history(["train/resumed_from_step"])["train/resumed_from_step"] == [(2, 2.0)]
