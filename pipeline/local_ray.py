"""Start a local Ray instance whose Train V2 placement-group cleaner can reach the state API.

In Ray 2.60, every ``TorchTrainer.fit`` starts a ``PlacementGroupCleaner`` actor that asks the state API (the
dashboard's HTTP server) once a second whether the Train controller still lives. With no dashboard the question
fails: a warning every second, and if ``/tmp/ray/ray_current_cluster`` names a cluster that is gone (``ray start``
ended without ``ray stop``), each poll waits 40 s for that dead GCS, every fit ends with a 12 s stall and a
GCS-timeout traceback. Measured here, it cost 12 s of a 61 s EmojiShift quick run. So the local instance runs its
dashboard on 127.0.0.1, and ``RAY_API_SERVER_ADDRESS``, which this instance's Ray processes inherit, points
their state API at that dashboard and not at whatever cluster the file names.
"""

from __future__ import annotations

import os
import socket
import sys

API_SERVER_ENV = "RAY_API_SERVER_ADDRESS"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_local_ray(num_cpus: int, *, log_to_driver: bool, dashboard: bool = True) -> None:
    """A fresh local instance with ``num_cpus`` logical CPUs; ``dashboard=False`` for work that runs no Train fit."""
    import ray

    if not dashboard:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=log_to_driver)
        return
    port = _free_port()
    # Set only while init spawns the raylet (its workers inherit it from there), then restored: left in this
    # process, it would redirect every later `ray job submit` or state query that inherits it to this instance.
    previous = os.environ.get(API_SERVER_ENV)
    os.environ[API_SERVER_ENV] = f"http://127.0.0.1:{port}"
    try:
        context = ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=True,
            dashboard_host="127.0.0.1",  # never exposed beyond this machine
            dashboard_port=port,
            log_to_driver=log_to_driver,
        )
    finally:
        if previous is None:
            os.environ.pop(API_SERVER_ENV, None)
        else:
            os.environ[API_SERVER_ENV] = previous
    url = context.dashboard_url or ""
    if not url.endswith(f":{port}"):  # another process took the port between our check and the dashboard's bind
        print(
            f"[dive] Ray dashboard is at {url or 'no address'}, not port {port}: Train's placement-group cleaner "
            "may log state-API warnings (harmless).",
            file=sys.stderr,
        )
