"""Shared fixtures: the tiny random-init open_clip model, one local Ray instance, the tiny demo world, and the
production services (an S3 store, PostgreSQL, an MLflow server on both: :mod:`tests.services`). Plain helper
functions live in :mod:`tests.helpers`, which test files import."""

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
def s3_store(tmp_path_factory):
    """SeaweedFS on 127.0.0.1 with a bucket ``dive`` (skips where ``weed`` is not installed)."""
    from tests.services import seaweedfs

    with seaweedfs(tmp_path_factory.mktemp("s3")) as store:
        yield store


@pytest.fixture(scope="session")
def s3_env(s3_store):
    """The store's endpoint and keys in this process's environment, as a node of a real cluster has them (the
    session's Ray workers inherit them: :func:`ray_session` asks for this fixture before Ray starts)."""
    import os

    os.environ.update(s3_store.env())
    return s3_store


@pytest.fixture(scope="session")
def postgres_db():
    """A private PostgreSQL cluster on 127.0.0.1 (skips where PostgreSQL is not installed)."""
    from tests.services import postgres

    with postgres() as db:
        yield db


@pytest.fixture(scope="session")
def mlflow_production(s3_env, postgres_db, tmp_path_factory):
    """``mlflow server`` on PostgreSQL with proxied artifacts in the S3 bucket (``s3://dive/mlflow``): its URL."""
    from tests.services import mlflow_server

    log = tmp_path_factory.mktemp("mlflow-server") / "server.log"
    with mlflow_server(postgres_db.url, s3_env.uri("mlflow"), s3_env.env(), log) as url:
        yield url


@pytest.fixture(scope="session")
def ray_session(request):
    """One local Ray instance for every test that needs it (4 logical CPUs: see docs/cluster.md, "2-core machines").
    The S3 store starts first where it can, so its keys are in the workers' environment."""
    import os

    import ray

    from pipeline.ray_env import start_local_ray

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    if not ray.is_initialized():
        try:
            request.getfixturevalue("s3_env")
        except pytest.skip.Exception:
            pass
        start_local_ray(4, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """The tiny demo world and its teacher (generated once per test session)."""
    from pipeline.demo import ensure_demo

    return ensure_demo(tmp_path_factory.mktemp("demo"), size="tiny")
