"""Shared fixtures: the tiny random-init open_clip model, one local Ray instance, the tiny demo world. Plain
helper functions live in :mod:`tests.helpers`, which test files import."""

from __future__ import annotations

import pytest
import torch

from dive.config import ModelSettings
from dive.models import ModelBundle, build_model


@pytest.fixture(scope="session")
def tiny_bundle() -> ModelBundle:
    torch.manual_seed(0)
    return build_model(ModelSettings())


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for every test that needs it (4 logical CPUs: see docs/cluster.md, "2-core machines")."""
    import os

    import ray

    from pipeline.ray_env import start_local_ray

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    if not ray.is_initialized():
        start_local_ray(4, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """The tiny demo world and its teacher (generated once per test session)."""
    from pipeline.demo import ensure_demo

    return ensure_demo(tmp_path_factory.mktemp("demo"), size="tiny")
