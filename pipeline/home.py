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
from pathlib import Path

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


def writable(path: str) -> str:
    """``path`` made absolute for writing: URIs and absolute paths as they are, relative ones under :func:`home`."""
    if not path or "://" in path:
        return path
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else (home() / p).resolve())
