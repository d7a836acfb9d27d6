"""End-to-end checks of the Ray pipeline on the tiny demo data (marked: each TorchTrainer start costs ~30 s)."""

from __future__ import annotations

import subprocess
import sys
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
from pipeline.export import latest_checkpoint
from pipeline.train import main, prepare_config, run
from tests.helpers import registered_checkpoints, tiny_run_overrides, train_workers

_EXTRA = ("optim.max_steps=4", "loss.lambda_avl=10", "loss.lambda_pvl=10")
# The exact-resume runs: two workers, the augmented ID stream (the default), DiVE's reference stream cycling beside
# it, a checkpoint after every step, so a kill lands mid-epoch.
EXACT = (
    "optim.max_steps=9",
    "optim.epochs=4",
    "run.checkpoint.every=1",
    "run.failure.max_failures=2",
    "tracking.log_every=1",
)


def _overrides(demo, tmp: Path, *extra: str) -> list[str]:
    return [*tiny_run_overrides(demo, tmp, "test"), *_EXTRA, *extra]


def _config(demo, tmp: Path, *extra: str):
    base = tmp / "base.yaml"
    base.write_text("{}\n")
    return prepare_config(str(base), _overrides(demo, tmp, *extra))


@pytest.fixture(scope="module")
def uninterrupted(ray_session, demo, tmp_path_factory) -> dict:
    """The final training state of an ``EXACT`` run that nothing interrupted."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    result = run(_config(demo, tmp, *EXACT))
    return torch.load(Path(result.checkpoint) / STATE_FILE, weights_only=True)


@pytest.mark.ray
@pytest.mark.slow
def test_training_run_tracks_evaluates_and_exports(ray_session, demo, tmp_path):
    # Held streams re-read from the object store every epoch (the default keeps each shard in its worker).
    cfg = _config(demo, tmp_path, "data.keep_in_worker=false")
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
    phases = ("preflight", "ray_start", "mlflow_open", "streams", "train", "export", "evaluate")
    seconds = [metrics[f"time/{p}_s"] for p in phases]  # where the run's time went, phase by phase
    assert all(s >= 0 for s in seconds) and sum(seconds) <= result.seconds
    assert metrics["time/train_s"] == pytest.approx(result.train_seconds)
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


def _kill_first_worker_after_checkpoint(storage: Path, killed: list[int], stop: threading.Event) -> None:
    while not stop.is_set():
        if registered_checkpoints(storage) >= 1:
            # Only this session's workers: the local Ray instance (and so its workers) descends from this process;
            # another Ray job on the machine keeps its own.
            for proc in train_workers(psutil.Process()):
                proc.kill()
                killed.append(proc.pid)
                return
        time.sleep(0.05)


@pytest.mark.ray
def test_a_method_without_a_reference_term_never_reads_the_reference_set(
    ray_session, demo, tmp_path, monkeypatch
):
    """FT trains on ID images only: its run reads the ID stream and not the configured reference set (which a
    kept stream would otherwise decode in the background, beside the training), and exports its trained head."""
    from pipeline.data import streams

    read = []
    real = streams.read_stream
    monkeypatch.setattr(
        streams, "read_stream", lambda folder, *a, **k: read.append(folder) or real(folder, *a, **k)
    )
    cfg = _config(demo, tmp_path, "loss.method=ft")
    assert cfg.data.reference  # configured, as in the demo
    result = run(cfg)
    assert read == [cfg.data.id_train]
    assert MlflowClient(result.tracking_uri).get_run(result.run_id).info.status == "FINISHED"
    assert (Path(result.export_dir) / "linear_head.safetensors").is_file()


@pytest.mark.ray
@pytest.mark.slow
def test_killed_worker_resumes_exactly_from_last_checkpoint_in_the_same_mlflow_run(
    ray_session, demo, tmp_path, uninterrupted
):
    cfg = _config(demo, tmp_path, *EXACT)
    killed: list[int] = []
    stop = threading.Event()
    watcher = threading.Thread(
        target=_kill_first_worker_after_checkpoint,
        args=(Path(cfg.run.storage_path), killed, stop),
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
    _assert_same_training_state(
        torch.load(Path(result.checkpoint) / STATE_FILE, weights_only=True), uninterrupted
    )


@pytest.mark.ray
@pytest.mark.slow
def test_workers_that_keep_their_shards_train_on_the_batches_a_re_read_gives(
    ray_session, demo, tmp_path, uninterrupted
):
    """Replaying a kept shard (``data.keep_in_worker``, the default) is a speed-up only: the same rows, order and
    crops on every rank over 4 epochs as reading the held stream again each epoch, so the same weights."""
    result = run(_config(demo, tmp_path, *EXACT, "data.keep_in_worker=false"))
    state = torch.load(Path(result.checkpoint) / STATE_FILE, weights_only=True)
    _assert_same_training_state(state, uninterrupted)


@pytest.mark.ray
@pytest.mark.slow
def test_a_driver_killed_then_resumed_ends_with_the_weights_of_an_uninterrupted_run(
    ray_session, demo, tmp_path, uninterrupted
):
    cfg = _config(demo, tmp_path, *EXACT)
    storage = Path(cfg.run.storage_path)
    driver = subprocess.Popen(
        [
            sys.executable,
            "pipeline/train.py",
            "--config",
            str(tmp_path / "base.yaml"),
            *_overrides(demo, tmp_path, *EXACT),
        ],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 600
    while registered_checkpoints(storage) < 1 and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert driver.poll() is None, "the driver ended before its first checkpoint was registered"
    driver.kill()  # SIGKILL: no handler runs, the MLflow run stays RUNNING
    driver.wait()
    (run_dir,) = [p.parent for p in Path(cfg.tracking.output_dir).glob("*/config.yaml")]
    assert main(["--resume", str(run_dir)]) == 0
    _, state = latest_checkpoint(run_dir, cfg)
    _assert_same_training_state(state, uninterrupted)
    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    (only,) = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    assert only.info.run_id == run_dir.name and only.info.status == "FINISHED"
    loss_steps = [m.step for m in client.get_metric_history(run_dir.name, "train/loss")]
    assert sorted(loss_steps) == list(range(1, 10))


def _assert_same_training_state(state: dict, reference: dict) -> None:
    """Weights and EMA centre after the same 9 steps, equal to 1e-6 (measured: ≤ 1.2e-7; CPU kernels are not bit
    for bit across processes). Not compared: the key third of each attention's ``in_proj_bias``. Softmax ignores a
    shift of the keys, so its true gradient is 0 and no output depends on it; AdamW turns the float noise in that
    gradient into ±lr steps (measured 1e-3 apart)."""
    assert state["step"] == reference["step"] == 9
    for key, value in reference["student"].items():
        got = state["student"][key]
        if key.endswith("attn.in_proj_bias"):
            third = value.numel() // 3
            got, value = (
                torch.cat([got[:third], got[2 * third :]]),
                torch.cat([value[:third], value[2 * third :]]),
            )
        torch.testing.assert_close(got, value, rtol=0, atol=1e-6, msg=key)
    torch.testing.assert_close(state["center"], reference["center"], rtol=0, atol=1e-6)


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
    client = MlflowClient(tracking_uri=first.tracking_uri)
    client.set_terminated(first.run_id, "KILLED")  # as Ctrl-C leaves it: --resume continues interrupted runs
    assert main(["--resume", str(run_dir), "optim.max_steps=5"]) == 0
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


@pytest.fixture
def small_volume(tmp_path):
    """A tmpfs of ``size`` bytes mounted under tmp_path (root only; unmounted after the test)."""
    mounted: list[Path] = []

    def mount(size: int) -> Path:
        where = tmp_path / "small-volume"
        where.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.mark.ray
@pytest.mark.slow
def test_a_full_disk_while_checkpointing_is_one_error_line_and_keeps_the_last_checkpoint(
    demo, tmp_path, small_volume
):
    """The storage volume holds one checkpoint but not two: the second write fails. The user gets one line naming
    the path and the free space; the partial files are gone, the first checkpoint is intact, the run is FAILED
    with the reason as its ``dive.failure`` tag."""
    from dive.models import build_model
    from pipeline.checkpoint import COMPLETE_FILE, newest_intact, run_folder

    params = sum(p.numel() for p in build_model(_config(demo, tmp_path).model).model.parameters())
    volume = small_volume(
        int(4.8 * 4 * params) + 256 * 1024
    )  # weights + 2 AdamW moments = 3x: one fits, not two
    overrides = [
        *_overrides(
            demo, tmp_path, "optim.max_steps=4", "run.checkpoint.every=1", "run.failure.max_failures=0"
        ),
        f"run.storage_path={volume}/ray",
    ]
    (tmp_path / "base.yaml").write_text("{}\n")
    done = subprocess.run(
        [sys.executable, "pipeline/train.py", "--config", str(tmp_path / "base.yaml"), *overrides],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=600,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert f"could not write the checkpoint {volume}/ray/" in errors[0] and "MiB free there" in errors[0]
    (run_dir,) = [p.parent for p in (tmp_path / "out").glob("*/config.yaml")]
    fs, folder = run_folder(f"{volume}/ray", run_dir.name)
    left = sorted(p.name for p in Path(folder).iterdir() if p.is_dir())
    assert len(left) == 1 and left[0].startswith("checkpoint_"), left  # the complete one, nothing partial
    assert (Path(folder) / left[0] / COMPLETE_FILE).is_file()
    assert newest_intact(fs, folder).step >= 1
    mlrun = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db").get_run(run_dir.name)
    assert mlrun.info.status == "FAILED"
    assert mlrun.data.tags["dive.failure"].startswith("could not write the checkpoint")
