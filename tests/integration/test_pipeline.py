"""End-to-end checks of the Ray pipeline on the tiny demo data (marked: each TorchTrainer start costs ~30 s)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import open_clip
import psutil
import pytest
import torch
from mlflow.tracking import MlflowClient

from dive.models import register_model_configs
from pipeline.checkpoint import STATE_FILE
from pipeline.train import main, prepare_config, run
from tests.conftest import tiny_run_overrides


def _config(demo, tmp: Path, *extra: str):
    base = tmp / "base.yaml"
    base.write_text("{}\n")
    overrides = [
        *tiny_run_overrides(demo, tmp, "test"),
        "optim.max_steps=4",
        "loss.lambda_avl=10",
        "loss.lambda_pvl=10",
        *extra,
    ]
    return prepare_config(str(base), overrides)


@pytest.mark.ray
@pytest.mark.slow
def test_training_run_tracks_evaluates_and_exports(ray_session, demo, tmp_path):
    cfg = _config(demo, tmp_path)
    result = run(cfg)
    client = MlflowClient(tracking_uri=result.tracking_uri)
    mlrun = client.get_run(result.run_id)
    assert mlrun.info.status == "FINISHED"
    assert mlrun.data.params["loss.lambda_avl"] == "10.0" and mlrun.data.params["loss.method"] == "dive"
    metrics = mlrun.data.metrics
    for key in (
        "train/loss",
        "train/loss_cl",
        "train/loss_avl",
        "train/loss_pvl",
        "train/lr",
        "train/temperature",
        "train/samples_per_s",
        "train/data_wait_frac",
        "data/skipped",
        "eval/id_acc",
        "eval/ood_avg",
        "eval/zs_avg",
        "eval/rsa_mean",
        "eval/teacher/id_acc",
        "eval/ood/outline",
        "eval/zs/color",
        "val/id_acc",
        "val/ref_retrieval",
        "val/objective",
    ):
        assert key in metrics, key
    assert metrics["val/objective"] == pytest.approx(
        (metrics["val/id_acc"] + metrics["val/ref_retrieval"]) / 2
    )
    assert result.metrics["val/objective"] == pytest.approx(metrics["val/objective"])
    assert 0.0 <= metrics["eval/id_acc"] <= 1.0 and -1.0 <= metrics["eval/rsa_mean"] <= 1.0
    steps = [m.step for m in client.get_metric_history(result.run_id, "train/loss")]
    assert max(steps) == 4
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"config", "eval", "export"} <= artifacts
    eval_files = {Path(a.path).name for a in client.list_artifacts(result.run_id, "eval")}
    assert {"report.json", "accuracy.csv", "accuracy.png", "losses.png"} <= eval_files
    # The export loads through open_clip and holds the weights of the final checkpoint.
    register_model_configs()
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{result.export_dir}")
    state = torch.load(Path(result.checkpoint) / STATE_FILE, weights_only=True)
    assert state["step"] == result.steps == 4
    for key, value in model.state_dict().items():
        assert torch.equal(value, state["student"][key]), key
    assert state["center"].norm() > 0  # the EMA centre moved and was checkpointed
    # `dive export` rebuilds the same export from the run's folder and its latest checkpoint.
    from pipeline import export

    assert export.main([str(Path(result.export_dir).parent), "--out", str(tmp_path / "again")]) == 0
    again, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'again'}")
    for key, value in again.state_dict().items():
        assert torch.equal(value, state["student"][key]), key


def _registered_checkpoints(storage: Path) -> int:
    """Checkpoints the Ray Train controller has registered (a folder alone may still be mid-upload, and a worker
    group restarted before registration rightly starts from scratch)."""
    count = 0
    for snapshot in storage.glob("*/checkpoint_manager_snapshot.json"):
        try:
            count += len(json.loads(snapshot.read_text()).get("checkpoint_results", []))
        except (OSError, ValueError):
            pass  # being rewritten
    return count


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:  # exited meanwhile
        return []


def _kill_first_worker_after_checkpoint(storage: Path, killed: list[int], stop: threading.Event) -> None:
    while not stop.is_set():
        if _registered_checkpoints(storage) >= 1:
            # Only this session's workers: the local Ray instance (and so its workers) descends from this process;
            # another Ray job on the machine keeps its own.
            for proc in psutil.Process().children(recursive=True):
                if "RayTrainWorker" in " ".join(_cmdline(proc)):
                    proc.kill()
                    killed.append(proc.pid)
                    return
        time.sleep(0.05)


@pytest.mark.ray
@pytest.mark.slow
def test_killed_worker_resumes_from_last_checkpoint_in_the_same_mlflow_run(ray_session, demo, tmp_path):
    cfg = _config(
        demo,
        tmp_path,
        "optim.max_steps=9",
        "optim.epochs=4",
        "scaling.checkpoint_every=1",
        "scaling.max_failures=2",
        "tracking.log_every=1",
    )
    killed: list[int] = []
    stop = threading.Event()
    watcher = threading.Thread(
        target=_kill_first_worker_after_checkpoint,
        args=(Path(cfg.scaling.storage_path), killed, stop),
        daemon=True,
    )
    watcher.start()
    try:
        result = run(cfg)
    finally:
        stop.set()
    assert killed, "no worker was killed: the run ended before its first checkpoint was seen"
    client = MlflowClient(tracking_uri=result.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id == result.run_id
    resumed = client.get_metric_history(result.run_id, "train/resumed_from_step")
    assert resumed and resumed[0].value >= 1
    # The centre at resume equals the one stored in the checkpoint of that step.
    step = int(resumed[0].value)
    norms = [m.value for m in client.get_metric_history(result.run_id, "train/center_norm") if m.step == step]
    assert norms and any(n > 0 for n in norms)
    assert len(set(round(n, 6) for n in norms)) == 1, norms  # logged before and after the kill: identical
    loss_steps = [m.step for m in client.get_metric_history(result.run_id, "train/loss")]
    assert sorted(loss_steps) == list(range(1, 10))  # every step once: none lost, none logged twice


@pytest.fixture
def no_run(monkeypatch):
    """Fail the test if main() gets as far as starting Ray / a training run."""

    def forbidden(*_args, **_kwargs):
        raise AssertionError("training started although the input was invalid")

    monkeypatch.setattr("pipeline.train.run", forbidden)
    monkeypatch.setattr("pipeline.train.start_ray", forbidden)


def test_bad_config_fails_before_ray_starts_naming_the_key(tmp_path, capsys, no_run):
    base = tmp_path / "run.yaml"
    base.write_text("loss:\n  lambda_avl: -1\n")
    assert main(["--config", str(base)]) == 2
    err = capsys.readouterr().err
    assert "loss.lambda_avl" in err and ">= 0" in err
    assert main(["--config", str(base), "loss.lambda_avl=1", "loss.ema_momentum=2"]) == 2
    assert "loss.ema_momentum" in capsys.readouterr().err


def test_wrong_dataset_schema_fails_before_ray_starts(tmp_path, capsys, demo, no_run):
    paths, _ = demo
    base = tmp_path / "run.yaml"
    base.write_text("{}\n")
    # A captioned set given as the ID training set: wrong kind, named with its manifest.
    assert (
        main(["--config", str(base), f"data.id_train={paths.reference}", f"data.reference={paths.reference}"])
        == 2
    )
    err = capsys.readouterr().err
    assert "dataset.json" in err and "labelled" in err


@pytest.mark.ray
@pytest.mark.slow
def test_resume_continues_the_same_mlflow_run_from_the_latest_checkpoint(ray_session, demo, tmp_path, capsys):
    cfg = _config(demo, tmp_path, "optim.max_steps=2", "loss.lambda_avl=1000")
    first = run(cfg)
    first_state = torch.load(Path(first.checkpoint) / STATE_FILE, weights_only=True)
    run_dir = Path(cfg.tracking.output_dir) / first.run_id
    assert main(["--resume", str(run_dir), "optim.max_steps=5"]) == 0
    client = MlflowClient(tracking_uri=first.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    assert [r.info.run_id for r in runs] == [first.run_id] and runs[0].info.status == "FINISHED"
    resumed = client.get_metric_history(first.run_id, "train/resumed_from_step")
    assert [m.value for m in resumed] == [2.0]
    # The centre logged at resume is the checkpointed one, and training went on to step 5.
    at_resume = [m.value for m in client.get_metric_history(first.run_id, "train/center_norm") if m.step == 2]
    assert pytest.approx(first_state["center"].norm().item(), rel=1e-5) in at_resume
    assert max(m.step for m in client.get_metric_history(first.run_id, "train/loss")) == 5
    loss_steps = [m.step for m in client.get_metric_history(first.run_id, "train/loss")]
    assert len(loss_steps) == len(set(loss_steps))
    assert "MLflow run:  " + first.run_id in capsys.readouterr().out
