"""Helpers the tests import: batches made from noise, webdataset shards, tiny demo runs, Ray Train workers
and checkpoints, a real ``mlflow server``. Fixtures stay in ``conftest.py``; a test module imports these by name
(``from tests.helpers import make_batch``)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import torch

from dive.models import ModelBundle


def make_batch(bundle: ModelBundle, n_id: int = 6, n_ref: int = 4, num_classes: int = 3, seed: int = 0):
    """A training batch in the task's schema: random images, real tokenised prompts and captions."""
    g = torch.Generator().manual_seed(seed)
    size = bundle.preprocess_cfg["size"][0]
    labels = torch.arange(n_id) % num_classes
    classes = ["circle", "square", "triangle", "star", "cross"][:num_classes]
    captions = [
        f"a {c} drawn in {col}"
        for c, col in zip(["red", "blue", "green", "tiny", "huge"], classes * 2, strict=False)
    ]
    return {
        "id_image": torch.randn(n_id, 3, size, size, generator=g),
        "id_label": labels,
        "id_text": bundle.tokenizer([f"a photo of a {classes[i]}." for i in labels.tolist()]),
        "ref_image": torch.randn(n_ref, 3, size, size, generator=g),
        "ref_text": bundle.tokenizer((captions * n_ref)[:n_ref]),
    }


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    """A webdataset shard: members in the given order (key.ext names group into samples)."""
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def tiny_run_overrides(demo, tmp: Path, experiment: str) -> list[str]:
    """A run on the tiny demo that trains in seconds: ``a.b=c`` overrides shared by the end-to-end tests."""
    paths, teacher = demo
    return [
        *paths.config_overrides(),
        f"model.pretrained={teacher}",
        "optim.global_batch=16",
        "optim.epochs=2",
        "optim.warmup_steps=1",
        "optim.lr=1e-3",
        "eval.rsa_samples=16",
        "val.samples=16",
        f"tracking.uri=sqlite:///{tmp}/mlflow.db",
        f"tracking.output_dir={tmp}/out",
        f"tracking.experiment={experiment}",
    ]


def registered_checkpoints(storage: Path) -> int:
    """Checkpoints the Ray Train controller has registered (a folder alone may still be mid-upload, and a worker
    group restarted before registration rightly starts from scratch)."""
    count = 0
    for snapshot in storage.glob("*/checkpoint_manager_snapshot.json"):
        try:
            count += len(json.loads(snapshot.read_text()).get("checkpoint_results", []))
        except (OSError, ValueError):
            pass  # being rewritten
    return count


def cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:  # exited meanwhile
        return []


def train_workers(parent: psutil.Process) -> list[psutil.Process]:
    """The Ray Train worker processes below ``parent`` (a driver that started a local instance, or a raylet)."""
    return [proc for proc in parent.children(recursive=True) if "RayTrainWorker" in " ".join(cmdline(proc))]


@contextmanager
def mlflow_server(store: str, cwd: Path | None = None) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1 over ``store`` (one worker; proxied artifacts under ``cwd``/mlartifacts),
    stopped afterwards by its process group."""
    from pipeline.ray_env import free_port

    port = free_port()
    cmd = [
        str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", store,
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    server = subprocess.Popen(
        cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert server.poll() is None, "mlflow server exited"
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                time.sleep(1)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
