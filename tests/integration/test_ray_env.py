"""The local Ray instance answers Ray's state API from inside its own workers (Train V2's cleaner asks it), and
listens on loopback only."""

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


LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def _instance_processes(session_dir: str) -> list:
    """This driver, the processes started with this session's folder (GCS, raylet, agents) and all their children."""
    import psutil

    roots = [psutil.Process()]
    for proc in psutil.process_iter(["cmdline"]):
        if any(session_dir in arg for arg in proc.info["cmdline"] or ()):
            roots.append(proc)
    found = {}
    for root in roots:
        for proc in [root, *root.children(recursive=True)]:
            found[proc.pid] = proc
    return list(found.values())


@pytest.mark.ray
def test_the_local_instance_listens_on_loopback_only(ray_session):
    import psutil
    import ray

    @ray.remote(num_cpus=0)
    def worker_pid() -> int:  # makes sure a worker process (its own gRPC server) exists
        return psutil.Process().pid

    assert ray.get(worker_pid.remote(), timeout=120)
    session_dir = ray._private.worker._global_node.get_session_dir_path()
    listening: list[tuple[str, str, int]] = []
    for proc in _instance_processes(session_dir):
        try:
            conns = proc.net_connections(kind="inet")
            name = proc.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        listening += [(name, c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
    names = {name for name, _, _ in listening}
    assert {"gcs_server", "raylet"} <= names, f"the instance's servers were not found: {sorted(names)}"
    exposed = [entry for entry in listening if entry[1] not in LOOPBACK]
    assert not exposed, f"listening beyond loopback (process, address, port): {exposed}"


TAKEN_PORT_SCRIPT = """
import socket, sys
import psutil, ray
import pipeline.ray_env as ray_env

taken = socket.socket()
taken.bind(("127.0.0.1", 0))
taken.listen()  # another process's server on the port we are about to be handed
ports = iter([taken.getsockname()[1]])
real = ray_env.free_port
ray_env.free_port = lambda: next(ports, None) or real()
ray_env.start_local_ray(4, log_to_driver=False)
gcs = [p for p in psutil.Process().children(recursive=True) if p.name() == "gcs_server"]
print("TAKEN", taken.getsockname()[1], "URL", ray.worker.get_dashboard_url(), "GCS", len(gcs))
ray.shutdown()
"""


@pytest.mark.ray
def test_a_dashboard_port_taken_while_ray_starts_is_retried_and_the_half_started_node_stopped():
    import re
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", TAKEN_PORT_SCRIPT], cwd=root, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "was taken as Ray started; retrying" in proc.stderr
    found = re.search(r"TAKEN (\d+) URL (\S+) GCS (\d+)", proc.stdout)
    assert found, proc.stdout
    taken, url, gcs = found.groups()
    assert url.startswith("127.0.0.1:") and not url.endswith(f":{taken}")
    assert gcs == "1", "the first attempt's GCS server is still running beside the second's"
