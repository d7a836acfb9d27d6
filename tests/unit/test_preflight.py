"""pipeline.preflight and the order of run(): everything knowable fails before Ray starts and before an MLflow
run exists; a failure after that ends the run FAILED (KILLED when interrupted), never RUNNING."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from dive.config import ConfigError, load_config
from pipeline import train
from pipeline.preflight import check_tracking, preflight
from tests.helpers import tiny_run_overrides


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def no_ray(monkeypatch):
    """Any test here that reaches start_ray has failed: the point is to fail before it."""

    def started(*_a, **_k):
        raise AssertionError("Ray was started before the config's problem was found")

    monkeypatch.setattr(train, "start_ray", started)


def _cfg(demo, tmp_path, *extra: str):
    return train.resolve_paths(load_config(overrides=[*tiny_run_overrides(demo, tmp_path, "pre"), *extra]))


def _runs(tmp_path) -> list:
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    return [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


def test_an_unreachable_tracking_server_is_refused_in_seconds():
    uri = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(ConfigError, match=rf"tracking\.uri: no MLflow server answers at {uri}"):
        check_tracking(uri)


@pytest.mark.parametrize(
    "override, match",
    [
        (
            "optim.global_batch=4096",
            r"optim\.global_batch: 4096 is larger than data\.id_train \(.*id_train.*rows\)",
        ),
        ("data.ref_batch=4096", r"data\.ref_batch: 4096 is larger than data\.reference"),
        ("model.pretrained=no-such-tag", r"^model\.pretrained: 'no-such-tag' is neither an open_clip tag"),
        ("model.name=no-such-model", r"^model\.name: unknown open_clip model 'no-such-model'"),
        ("tracking.output_dir={blocked}/out", r"tracking\.output_dir: cannot write to .*blocked/out"),
        ("run.storage_path={blocked}/ray", r"run\.storage_path: cannot write to .*blocked/ray"),
        (
            "tracking.uri=sqlite:///{blocked}/m.db",
            r"tracking\.uri: cannot write to sqlite:///.*blocked/m\.db",
        ),
    ],
)
def test_run_refuses_a_knowable_problem_before_ray_and_before_an_mlflow_run(
    demo, tmp_path, no_ray, override, match
):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where a folder is expected")
    cfg = _cfg(demo, tmp_path, "loss.method=dive", override.format(blocked=blocked))
    with pytest.raises(ConfigError, match=match):
        train.run(cfg)
    assert _runs(tmp_path) == []


def test_preflight_passes_a_sound_config_and_returns_the_teacher(demo, tmp_path):
    checked = preflight(_cfg(demo, tmp_path, "loss.method=dive"))
    assert checked.teacher.preprocess_cfg["size"][0] > 0 and checked.use_teacher_cache is False


@pytest.mark.parametrize("error, status", [(RuntimeError("boom"), "FAILED"), (KeyboardInterrupt(), "KILLED")])
def test_a_run_that_fails_or_is_interrupted_after_it_opened_is_never_left_running(
    demo, tmp_path, monkeypatch, error, status
):
    monkeypatch.setattr(train, "start_ray", lambda *_a, **_k: None)

    def streams(*_a, **_k):
        raise error

    monkeypatch.setattr(train, "_streams", streams)
    with pytest.raises(type(error)):
        train.run(_cfg(demo, tmp_path))
    (run,) = _runs(tmp_path)
    assert run.info.status == status


def test_sigterm_unwinds_like_ctrl_c_so_the_command_exits_130(demo, tmp_path, monkeypatch):
    """`ray job stop` and schedulers send SIGTERM: it must reach run()'s handler (KILLED), not end the process."""
    import os
    import signal
    import time

    def terminated(*_a, **_k):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        raise AssertionError("SIGTERM did not interrupt the run")

    monkeypatch.setattr(train, "run", terminated)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        assert train.main(tiny_run_overrides(demo, tmp_path, "pre")) == 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stopped_run(demo, tmp_path, status: str):
    """A run's output folder and MLflow run, as a run that ended with ``status`` leaves them (no Ray)."""
    from dive.config import to_yaml
    from pipeline import tracking

    cfg = _cfg(demo, tmp_path)
    mlrun = tracking.Run.start(cfg)
    mlrun.end(status)
    run_dir = tmp_path / "out" / mlrun.run_id
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    return cfg, run_dir


def test_a_finished_run_is_not_resumed_and_keeps_its_status(demo, tmp_path, no_ray, capsys):
    _, run_dir = _stopped_run(demo, tmp_path, "FINISHED")
    capsys.readouterr()
    assert train.main(["--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert line.startswith("error: --resume: MLflow run") and "already FINISHED" in line
    assert "Traceback" not in err
    (run,) = _runs(tmp_path)
    assert run.info.status == "FINISHED"


def test_a_resume_whose_checkpoints_are_all_incomplete_is_refused_before_ray(demo, tmp_path, no_ray, capsys):
    from pipeline.checkpoint import COMPLETE_FILE, run_folder, save

    cfg, run_dir = _stopped_run(demo, tmp_path, "KILLED")
    _, folder = run_folder(cfg.run.storage_path, run_dir.name)
    (partial := Path(folder) / ".partial-checkpoint_c").mkdir(parents=True)
    (checkpoint_a := Path(folder) / "checkpoint_a").mkdir()
    save({"step": 3}, checkpoint_a)
    (checkpoint_a / COMPLETE_FILE).unlink()
    assert train.main(["--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "no intact checkpoint (checkpoint_a: no complete.json" in err and "Traceback" not in err
    assert not partial.exists()  # what a killed writer left is cleared before a resume
    (run,) = _runs(tmp_path)
    assert run.info.status == "KILLED"


def test_preflight_carries_every_manifest_and_the_resolved_values(demo, tmp_path):
    cfg = _cfg(demo, tmp_path, "loss.method=dive", "data.ref_batch=8")
    plan = preflight(cfg)
    ev = cfg.eval
    evaluated = [ev.id, *ev.ood.values(), *ev.zs.values()]
    assert set(plan.manifests) == {cfg.data.id_train, cfg.data.reference, *evaluated, cfg.val.id, cfg.val.ref}
    assert plan.manifests[cfg.val.id].kind == "labelled" and plan.manifests[cfg.val.ref].kind == "captioned"
    assert plan.id_manifest is plan.manifests[cfg.data.id_train] and plan.ref_manifest.num_rows > 0
    assert plan.tracking_uri == f"sqlite:///{tmp_path}/mlflow.db" and plan.ref_batch == 8
    assert preflight(_cfg(demo, tmp_path, "data.ref_batch=0")).ref_batch == 16  # 0: optim.global_batch


def test_the_pre_ray_stage_reads_each_dataset_once(demo, tmp_path, monkeypatch):
    from collections import Counter

    from pipeline.data import format as data_format

    reads: Counter[str] = Counter()
    read_manifest = data_format.read_manifest

    def counted(folder):
        reads[str(folder)] += 1
        return read_manifest(folder)

    class BeforeRay(Exception):
        pass

    def stop(*_a, **_k):
        raise BeforeRay

    monkeypatch.setattr(data_format, "read_manifest", counted)
    monkeypatch.setattr(train, "start_ray", stop)
    base = tmp_path / "base.yaml"
    base.write_text("{}\n")
    cfg = train.prepare_config(str(base), [*tiny_run_overrides(demo, tmp_path, "pre"), "loss.method=dive"])
    with pytest.raises(BeforeRay):
        train.run(cfg)
    ev = cfg.eval
    read = {
        cfg.data.id_train,
        cfg.data.reference,
        ev.id,
        *ev.ood.values(),
        *ev.zs.values(),
        cfg.val.id,
        cfg.val.ref,
    }
    assert set(reads) == read and set(reads.values()) == {1}
