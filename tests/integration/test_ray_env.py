"""The local Ray instance answers Ray's state API from inside its own workers (Train V2's cleaner asks it)."""

from __future__ import annotations

import pytest


@pytest.mark.ray
def test_state_api_inside_a_worker_reaches_this_instance(ray_session):
    import os

    import ray

    from pipeline.ray_env import API_SERVER_ENV

    # The driver's own environment is left as it was: a `ray job submit` it spawns must reach the cluster it names.
    assert API_SERVER_ENV not in os.environ

    @ray.remote(num_cpus=0)
    class Probe:
        def own_state(self) -> str:
            from ray.util.state import get_actor

            actor_id = ray.get_runtime_context().get_actor_id()
            state = get_actor(actor_id, timeout=10)  # what PlacementGroupCleaner does once a second
            return state.state if state else "missing"

    probe = Probe.remote()
    try:
        assert ray.get(probe.own_state.remote(), timeout=120) == "ALIVE"
    finally:
        ray.kill(probe)
