"""Where a run's writable defaults live — the demo cache, ``outputs/``, the default MLflow store.

A relative path that a run *writes* resolves against :func:`home`: the working directory, except inside a
``ray job submit`` job. There the working directory is Ray's per-job package folder, which Ray deletes: every
job would rebuild the demo and re-train its teacher (measured: 14 min 53 s for one job on a loaded 2-core
machine), and its run, export and ``mlflow.db`` would vanish with the folder. So a job writes under
``$DIVE_HOME``, by default the per-user ``${XDG_DATA_HOME:-~/.local/share}/dive``, where the next job finds
them. Relative *input* paths (data shipped in the job's ``--working-dir``) still resolve against the working
directory.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

from dive.config import ModelSettings
from pipeline import storage

#: Set by Ray's job supervisor for a submitted job's entrypoint (ray.dashboard.modules.job.job_supervisor).
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def in_ray_job() -> bool:
    return bool(os.environ.get(RAY_JOB_ENV))


def home() -> Path:
    """``$DIVE_HOME`` if set; inside a Ray job the per-user data folder; else the working directory."""
    if os.environ.get("DIVE_HOME"):
        return Path(os.environ["DIVE_HOME"]).expanduser().resolve()
    if in_ray_job():
        return (Path(os.environ.get("XDG_DATA_HOME") or "~/.local/share").expanduser() / "dive").resolve()
    return Path.cwd()


def output_folder(output_dir: str) -> Path:
    """The local folder a run works in for ``tracking.output_dir``: the folder itself, or for an object-store URI
    its mirror under :func:`home` (``.dive-outputs/s3/<bucket>/<prefix>``), from which a run uploads its
    durable files (config, export, evaluation, log) to the URI."""
    if not storage.is_uri(output_dir):
        return storage.local_path(output_dir)
    return storage.mirror(home() / ".dive-outputs", output_dir)


def local_model(model: ModelSettings) -> ModelSettings:
    """``model`` with an export named by URI (``local-dir:s3://bucket/…/export``) downloaded once to this node
    (``.dive-cache/models`` under :func:`home`; a ``.complete`` marker says the copy is whole) and named by its
    local folder; any other model as it is. Every place that builds a model calls this, so the config keeps the
    URI and each node (driver, Train workers, evaluation actors) fetches its own copy."""
    folder = model.name.removeprefix("local-dir:")
    if not model.name.startswith("local-dir:") or not storage.is_uri(folder):
        return model
    local = storage.mirror(home() / ".dive-cache" / "models", folder)
    if not (local / ".complete").is_file():
        staging = local.with_name(f".{local.name}.{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        storage.download(folder, staging)
        (staging / ".complete").write_text(folder + "\n")
        shutil.rmtree(local, ignore_errors=True)
        staging.rename(local)
    return replace(model, name=f"local-dir:{local}")


def writable(path: str) -> str:
    """``path`` made absolute for writing: URIs and absolute paths as they are, relative ones under :func:`home`."""
    if not path or "://" in path:
        return path
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else (home() / p).resolve())
