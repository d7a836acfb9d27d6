"""Run the pipeline on a three-node ``ray.cluster_utils.Cluster`` and remove the node of the Train worker once a
checkpoint is registered (``test_node_loss.py`` runs this in its own process, so its cluster cannot meet the
session's local Ray instance). Writes ``outcome.json`` (the run id, tracking URI, the node removed) beside the
config."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import psutil
import ray
from ray._common.utils import get_ray_address_file
from ray.cluster_utils import Cluster

from pipeline.train import prepare_config, run
from tests.helpers import registered_checkpoints, train_workers


def worker_node(nodes: list) -> object | None:
    """The node whose raylet is the parent of a live Train worker process."""
    for node in nodes:
        try:
            if train_workers(psutil.Process(node.all_processes["raylet"][0].process.pid)):
                return node
        except (psutil.Error, KeyError, IndexError):
            continue
    return None


def main(base: str, *overrides: str) -> None:
    """Build the cluster, run, and put back the machine's ``ray_current_cluster`` file, which ``Cluster`` points at
    this soon-dead cluster (a later bare ``ray.init()`` on the machine would wait for it)."""
    address_file = Path(get_ray_address_file(None))
    previous = address_file.read_text() if address_file.is_file() else None
    try:
        _run_on_a_cluster(base, list(overrides))
    finally:
        if previous is None:
            address_file.unlink(missing_ok=True)
        else:
            address_file.write_text(previous)


def _run_on_a_cluster(base: str, overrides: list[str]) -> None:
    cfg = prepare_config(base, overrides)
    storage = Path(cfg.run.storage_path)
    # The head holds the driver and the Train controller (Train V2 pins it to the driver's node) and no CPUs, so the
    # Train worker and Ray Data's tasks run on the two worker nodes. Node death is noticed in about 3 s, not 30 s.
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 3},
        },
    )
    nodes = [cluster.add_node(num_cpus=2) for _ in range(2)]
    cluster.wait_for_nodes()
    os.environ["RAY_ADDRESS"] = cluster.address  # init_ray joins it as `ray job submit` would
    hosts: dict[str, str] = {}
    stop = threading.Event()

    def remove_the_workers_node() -> None:
        while not stop.is_set():
            if registered_checkpoints(storage) >= 1 and (node := worker_node(nodes)) is not None:
                hosts["removed"] = node.node_id
                cluster.remove_node(node, allow_graceful=False)
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=remove_the_workers_node, daemon=True)
    watcher.start()
    try:
        result = run(cfg)
    finally:
        stop.set()
    hosts["survivors"] = [n.node_id for n in nodes if n.node_id != hosts.get("removed")]
    outcome = {"run_id": result.run_id, "tracking_uri": result.tracking_uri, **hosts}
    (Path(base).parent / "outcome.json").write_text(json.dumps(outcome))
    ray.shutdown()  # the driver leaves first: Cluster refuses to remove the node it is connected to
    cluster.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
