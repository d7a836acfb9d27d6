"""Where writable defaults go: the working directory, except inside a `ray job submit` job."""

from __future__ import annotations

from dive.config import load_config
from pipeline.home import RAY_JOB_ENV, home, writable
from pipeline.train import DEMO_CONFIG, resolve_paths


def test_outside_a_job_relative_paths_stay_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for key in (RAY_JOB_ENV, "DIVE_HOME"):
        monkeypatch.delenv(key, raising=False)
    assert home() == tmp_path and writable("outputs") == str(tmp_path / "outputs")
    assert writable("/abs/out") == "/abs/out" and writable("s3://bucket/x") == "s3://bucket/x"


def test_in_a_job_what_a_run_writes_goes_to_the_per_user_folder_and_inputs_stay(tmp_path, monkeypatch):
    job_dir, xdg = tmp_path / "ray_pkg_123", tmp_path / "xdg"
    job_dir.mkdir()
    monkeypatch.chdir(job_dir)
    monkeypatch.delenv("DIVE_HOME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv(RAY_JOB_ENV, "{}")
    monkeypatch.setenv("XDG_DATA_HOME", str(xdg))
    cfg = resolve_paths(load_config(DEMO_CONFIG, ["val.zs=shipped/zs_val"]))
    dive_home = xdg / "dive"
    assert cfg.data.demo == str(dive_home / ".cache" / "dive-demo")
    assert cfg.data.id_train == str(dive_home / ".cache" / "dive-demo" / "id_train")  # inside the demo cache
    assert cfg.model.pretrained == str(dive_home / ".cache" / "dive-demo" / "teacher" / "teacher.pt")
    assert cfg.tracking.output_dir == str(dive_home / "outputs")
    assert cfg.tracking.uri == f"sqlite:///{dive_home / 'mlflow.db'}"
    assert cfg.run.storage_path == str(dive_home / "outputs" / "ray_results")
    assert cfg.val.zs == str(job_dir / "shipped" / "zs_val")  # an input shipped with the job


def test_dive_home_wins_everywhere(tmp_path, monkeypatch):
    monkeypatch.setenv("DIVE_HOME", str(tmp_path / "h"))
    monkeypatch.delenv(RAY_JOB_ENV, raising=False)
    assert writable("mlflow.db") == str(tmp_path / "h" / "mlflow.db")
