"""``dive/`` is the pure PyTorch method library: every module of it imports without Ray or MLflow, so it can be
used (and tested) without the pipeline's cluster and tracking stack."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import dive

ROOT = Path(__file__).resolve().parents[2]


def test_every_dive_module_imports_without_ray_or_mlflow():
    # Enumerated, so a new module of dive/ is covered without touching this test.
    modules = ["dive", *(m.name for m in pkgutil.walk_packages(dive.__path__, "dive."))]
    assert "dive.config" in modules and "dive.task" in modules
    code = (
        f"import {', '.join(modules)}; import sys; "
        "loaded = sorted(m for m in sys.modules if m in ('ray', 'mlflow') or m.startswith(('ray.', 'mlflow.'))); "
        "assert not loaded, loaded"
    )
    # A fresh interpreter: this test process may have imported Ray or MLflow already.
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
