"""The one way any entry point starts or joins Ray: :func:`init_ray` for runs, sweeps and evaluation,
:func:`ray_session` for converters that use Ray Data only, :func:`start_local_ray` beneath both.

**Why the local instance has a dashboard.** In Ray 2.60, every ``TorchTrainer.fit`` starts a ``PlacementGroupCleaner`` actor that asks the state API (the
dashboard's HTTP server) once a second whether the Train controller still lives. With no dashboard the question
fails: a warning every second, and if ``/tmp/ray/ray_current_cluster`` names a cluster that is gone (``ray start``
ended without ``ray stop``), each poll waits 40 s for that dead GCS, every fit ends with a 12 s stall and a
GCS-timeout traceback. Measured here, it cost 12 s of a 61 s EmojiShift quick run. So the local instance runs its
dashboard on 127.0.0.1, and ``RAY_API_SERVER_ADDRESS``, which this instance's Ray processes inherit, points
their state API at that dashboard and not at whatever cluster the file names.

**Why the local instance is loopback-only.** A local instance serves this process alone, yet by default its GCS,
raylet, worker and agent servers listen on every interface (measured: ``::`` and ``0.0.0.0``). ``ray.init`` has no
option for it (``_node_ip_address="127.0.0.1"`` is rewritten to the machine's address), but Ray binds its servers
to loopback when the node's address is 127.0.0.1, which is what it picks when ``ENABLE_RAY_CLUSTER`` is off (the
macOS/Windows default, env ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``). :func:`loopback_only` switches it off while
the instance starts; ``tests/integration/test_ray_env.py`` checks every listening socket so a Ray upgrade that moves
the knob is caught.

**Why the token file is made private.** A new local instance turns Ray's token authentication on unless
``RAY_AUTH_MODE`` says otherwise, and Ray writes the token to ``~/.ray/auth_token`` with the process umask: 0644,
readable by every user of the machine, who could then reach this user's cluster. :func:`private_token` wraps each
start: ``~/.ray`` is created 0700 when it does not exist yet (so the file is never exposed, even for the moment
before the chmod), and the file is made 0600 once ``ray.init`` returns or fails.
"""

from __future__ import annotations

import os
import socket
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dive.config import Config

API_SERVER_ENV = "RAY_API_SERVER_ADDRESS"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def loopback_only() -> Iterator[None]:
    """While a local instance starts: its node address is 127.0.0.1, so every server it starts binds there."""
    from ray._private import ray_constants  # no public option exists (see the module docstring)

    previous = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = previous


def on_driver_node() -> dict[str, Any]:
    """``.options()`` pinning a run's small helper actors (skip counter, progress board) to the driver's node: where
    Train V2 keeps its controller, so losing any other node loses neither (the run ends with the driver anyway)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {
        "scheduling_strategy": NodeAffinitySchedulingStrategy(
            ray.get_runtime_context().get_node_id(), soft=False
        )
    }


#: Attempts at a local instance whose dashboard port was taken between :func:`free_port` and the dashboard's bind.
PORT_ATTEMPTS = 3


def token_file() -> Path:
    """Where Ray writes its authentication token (``ray._private.authentication``: ``Path.home()``, so ``$HOME``)."""
    return Path.home() / ".ray" / "auth_token"


@contextmanager
def private_token() -> Iterator[None]:
    """Around a local ``ray.init``: the token Ray may write there is readable by this user only (module docstring)."""
    path = token_file()
    if os.environ.get("RAY_AUTH_MODE", "token").lower() == "token" and not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.parent.chmod(0o700)  # mkdir's mode passes through the umask
    try:
        yield
    finally:
        protect_token(path)


def protect_token(path: Path | None = None) -> None:
    """Make the token file 0600 when group or others can read it; a file that is not ours is reported, not fatal."""
    path = path or token_file()
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            path.chmod(0o600)
    except FileNotFoundError:
        return  # token auth off, or the token comes from $RAY_AUTH_TOKEN: nothing on disk
    except OSError as err:
        print(
            f"[dive] could not make Ray's token file {path} private: {err.strerror or err}", file=sys.stderr
        )


def start_local_ray(num_cpus: int, *, log_to_driver: bool, dashboard: bool = True) -> None:
    """A fresh local instance with ``num_cpus`` logical CPUs; ``dashboard=False`` for work that runs no Train fit."""
    import ray

    if not dashboard:
        with loopback_only(), private_token():
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=log_to_driver)
        return
    for attempt in range(1, PORT_ATTEMPTS + 1):
        port = free_port()
        try:
            context = _init_with_dashboard(num_cpus, port, log_to_driver=log_to_driver)
            break
        except ValueError as exc:
            # Ray refuses a named dashboard port another process bound after we found it free (CI saw it once in
            # 325 tests); the GCS it had already started is stopped before the next try with a new port.
            if "already occupied" not in str(exc) or attempt == PORT_ATTEMPTS:
                raise
            _stop_half_started_node(exc)
            print(
                f"[dive] Ray dashboard port {port} was taken as Ray started; retrying with another.",
                file=sys.stderr,
            )
    url = context.dashboard_url or ""
    if not url.endswith(f":{port}"):
        print(
            f"[dive] Ray dashboard is at {url or 'no address'}, not port {port}: Train's placement-group cleaner "
            "may log state-API warnings (harmless).",
            file=sys.stderr,
        )


def _init_with_dashboard(num_cpus: int, port: int, *, log_to_driver: bool) -> Any:
    import ray

    # Set only while init spawns the raylet (its workers inherit it from there), then restored: left in this
    # process, it would redirect every later `ray job submit` or state query that inherits it to this instance.
    previous = os.environ.get(API_SERVER_ENV)
    os.environ[API_SERVER_ENV] = f"http://127.0.0.1:{port}"
    try:
        with loopback_only(), private_token():
            return ray.init(
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


def _stop_half_started_node(exc: BaseException) -> None:
    """Stop the processes (GCS, monitor) of the node whose start raised ``exc``.

    ``ray.init`` does not clean up after a failed head start and keeps no handle to the node (they would live on
    until this process exits), so the node is found in the raising frames.
    """
    from ray._private.node import Node

    tb = exc.__traceback__
    while tb is not None:
        node = tb.tb_frame.f_locals.get("self")
        if isinstance(node, Node):
            node.kill_all_processes(check_alive=False, allow_graceful=True, wait=True)
            return
        tb = tb.tb_next


def init_ray(cfg: Config, min_cpus: float = 0) -> None:
    """Join the cluster named by RAY_ADDRESS (``ray job submit`` sets it), else start a local one.

    Locally we declare at least 4 logical CPUs: Ray Data's file listing always asks for one whole CPU, and with
    2 real cores and two Train workers the pipeline would otherwise wait forever.
    """
    import ray
    import ray.data

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    ctx = ray.data.DataContext.get_current()
    if os.environ["RAY_DATA_DISABLE_PROGRESS_BARS"] == "1":  # bars are for humans at a terminal, not job logs
        ctx.enable_progress_bars = False
        ctx.enable_operator_progress_bars = False
        ctx.print_on_execution_start = False
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
        return
    need = max(cfg.scaling.num_workers * cfg.scaling.cpus_per_worker + 2, min_cpus)
    # address="local": always a fresh local instance (a stale `ray start` on this machine is not joined by accident;
    # set RAY_ADDRESS=auto to use a running one).
    start_local_ray(max(4, int(need + 0.999)), log_to_driver=True)


@contextmanager
def ray_session(workers: int) -> Iterator[None]:
    """Use the running Ray instance, or start a local one for this conversion (and shut it down after).

    Ray Data's read and listing tasks each need a whole logical CPU, so at least 4 are declared even on small
    machines (logical CPUs are a scheduling budget, not cores).
    """
    import ray

    started = False
    if not ray.is_initialized():
        start_local_ray(max(4, workers + 2), log_to_driver=False, dashboard=False)  # no Train fit here
        started = True
    try:
        yield
    finally:
        if started:
            ray.shutdown()
