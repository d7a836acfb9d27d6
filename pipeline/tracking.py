"""The sole owner of MLflow: every run, parent/child link, resume, metric, artifact and registry call of the
pipeline goes through :class:`Run` (or the helpers below it).

The driver creates the run (so its id can be checkpointed and resumed); only world rank 0 of the Train workers
logs step metrics to it, through client calls that carry the run id explicitly (no process-global "active run"
that a Ray worker could get wrong).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from dive.config import Config, ConfigError, flatten
from dive.redact import is_masked, mask_text
from pipeline.console import error_line

# MLflow prints "View run … at: <tracking URI>/…" when a run on a server ends, user-info and all; the run's own
# lines (the MLflow run id and the masked URI) say where it is.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

MAX_BATCH = 100  # MLflow accepts at most 100 params / 1000 metrics per log_batch call
SPOOL = "mlflow-spool.jsonl"  # in the run's output folder: what the tracker could not take yet, in order
RETRY_S, MAX_RETRY_S = 15.0, 300.0  # while it is down, try again after this long, doubling up to the cap


def tracking_uri(cfg: Config) -> str:
    """Config, then $MLFLOW_TRACKING_URI, then ``mlflow.db`` in :func:`pipeline.home.home` (the working directory,
    or under a Ray job a folder that outlives it) — always absolute, because a Ray Train worker's cwd is a
    temporary session folder.

    A config read back from a run folder holds the URI with its password masked (:mod:`dive.redact`): then
    $MLFLOW_TRACKING_URI supplies the real one if it names the same server and user; otherwise the user is asked
    for it, rather than ``***`` being sent as the password."""
    from pipeline.home import writable

    uri = cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if is_masked(uri):
        env = os.environ.get("MLFLOW_TRACKING_URI", "")
        if not env or mask_text(env) != uri:
            raise ConfigError(
                f"tracking.uri: {uri} was saved with its secret masked; give the real URI again, as "
                "$MLFLOW_TRACKING_URI or as the override tracking.uri=…"
                + (f" ($MLFLOW_TRACKING_URI names another server: {mask_text(env)})" if env else "")
            )
        uri = env
    if not uri:
        return f"sqlite:///{writable('mlflow.db')}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{writable(uri.removeprefix('sqlite:///'))}"
    if "://" not in uri:  # a plain folder: file store
        return Path(writable(uri)).as_uri()
    return uri


def source_tags() -> dict[str, str]:
    """MLflow's conventional source tags, as its fluent API sets them (``mlflow.user``, ``mlflow.source.name`` =
    the entry point, ``mlflow.source.type``) plus the git commit of this checkout, so the UI shows where a run
    came from. Computed where the command runs: a sweep passes its driver's to every trial."""
    from mlflow.tracking.context.registry import resolve_tags
    from mlflow.utils.git_utils import get_git_commit
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT

    tags = {k: str(v) for k, v in resolve_tags().items() if k.startswith("mlflow.")}
    commit = get_git_commit(str(Path(__file__).resolve().parent))
    if commit:
        tags[MLFLOW_GIT_COMMIT] = commit
    return tags


def _local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:"))


def ensure_experiment(client: MlflowClient, name: str, uri: str) -> str:
    """Create the experiment on the driver with an absolute artifact location for local stores (a worker-created
    experiment would put artifacts inside Ray's temporary session folder)."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if _local_store(uri):
        root = (
            Path(uri.split(":///", 1)[1]).parent if uri.startswith("sqlite:") else Path(uri[len("file://") :])
        )
        location = (root / "mlartifacts" / name).resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)


@dataclass
class Run:
    """One MLflow run, addressed by id. Start one with :meth:`start`, reopen one with :meth:`resume`.

    With a ``spool`` file, the tracker going away never stops training: a metric, tag or artifact call that
    fails (after MLflow's own HTTP retries with backoff) is appended to the spool, later calls queue behind it,
    and the spool is replayed in order — original timestamps and steps — once the tracker answers again (tried
    every ``RETRY_S``, doubling), at :meth:`end`, or on resume (:meth:`resume`, ``dive sync``).
    """

    uri: str
    run_id: str
    client: MlflowClient = field(repr=False, default=None)  # type: ignore[assignment]
    spool: Path | None = None
    _retry_at: float = field(default=0.0, repr=False)
    _wait: float = field(default=RETRY_S, repr=False)

    def __post_init__(self) -> None:
        if self.client is None:
            self.client = MlflowClient(tracking_uri=self.uri)

    def __repr__(self) -> str:  # a Run lands in tracebacks and logs: its URI may carry a password
        return f"Run(uri={mask_text(self.uri)!r}, run_id={self.run_id!r}, spool={self.spool!r})"

    @property
    def shown_uri(self) -> str:
        """The store's URI as the console and logs may show it (secrets masked)."""
        return mask_text(self.uri)

    @classmethod
    def start(
        cls,
        cfg: Config,
        *,
        uri: str | None = None,
        run_name: str | None = None,
        parent_run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> Run:
        """A new run of ``cfg``'s experiment (a child of ``parent_run_id`` if given), its config as params, tagged
        with :func:`source_tags` (``tags`` win, e.g. a sweep trial's driver's source). ``uri``: the store, when
        the caller resolved it already (default: :func:`tracking_uri` of ``cfg``)."""
        uri = uri or tracking_uri(cfg)
        client = MlflowClient(tracking_uri=uri)
        exp_id = ensure_experiment(client, cfg.tracking.experiment, uri)
        all_tags = {**source_tags(), "dive.method": cfg.loss.method.value, **(tags or {})}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        created = client.create_run(exp_id, run_name=run_name or cfg.tracking.run_name or None, tags=all_tags)
        run = cls(uri, created.info.run_id, client)
        run.log_params(flatten(cfg))
        return run

    @staticmethod
    def status(uri: str, run_id: str) -> str:
        """The MLflow status of ``run_id`` (``FINISHED``, ``FAILED``, ``KILLED``, ``RUNNING``…)."""
        return MlflowClient(tracking_uri=uri).get_run(run_id).info.status

    @classmethod
    def resume(cls, uri: str, run_id: str, spool: Path | None = None) -> Run:
        """Reopen an interrupted run: fails early, naming the id, if the store has no such run; what an earlier
        attempt spooled is sent first."""
        run = cls(uri, run_id, spool=spool)
        run.client.get_run(run_id)
        run.replay()
        run.client.update_run(run_id, status="RUNNING")
        return run

    def log_params(self, params: Mapping[str, Any]) -> None:
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), MAX_BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + MAX_BATCH])

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        self._send("metrics", metrics={k: float(v) for k, v in metrics.items()}, step=step, ts=_now_ms())

    def log_text(self, text: str, path: str) -> None:
        self._send("text", text=text, path=path)

    def log_dict(self, data: Mapping[str, Any], path: str) -> None:
        self._send("dict", data=dict(data), path=path)

    def log_artifact(self, file: str | Path, folder: str | None = None) -> None:
        self._send("artifact", file=str(Path(file).resolve()), folder=folder)

    def log_artifacts(self, folder: str | Path, path: str | None = None) -> None:
        self._send("artifacts", folder=str(Path(folder).resolve()), path=path)

    def set_tag(self, key: str, value: str) -> None:
        self._send("tag", key=key, value=value)

    def end(self, status: str = "FINISHED") -> None:
        """FINISHED, FAILED or KILLED: a run is never left RUNNING by the code that opened it. With the tracker
        down the status is spooled behind everything else, and this says where the spool is."""
        self._send("end", status=status)
        if self.pending():
            print(
                f"[dive] MLflow ({self.shown_uri}) is unreachable: {self.pending()} record(s) of run {self.run_id} "
                f"are kept in {self.spool}; send them with `dive sync {self.spool.parent}` "
                "(or --resume the run)",
                file=sys.stderr,
            )

    # ------------------------------------------------------------------------------------------ the spool
    def pending(self) -> int:
        """Records waiting in the spool."""
        if self.spool is None or not self.spool.is_file():
            return 0
        return sum(1 for line in self.spool.read_text().splitlines() if line.strip())

    def replay(self) -> bool:
        """Send the spool in order; True when it is empty. Stops at the first failure, keeping the rest."""
        if not self.pending():
            return True
        lines = [line for line in self.spool.read_text().splitlines() if line.strip()]
        for i, line in enumerate(lines):
            record = json.loads(line)
            try:
                self._call(record["op"], record["kw"])
            except Exception as err:  # noqa: BLE001  (whatever the store raises: keep the rest, retry later)
                self._rewrite(lines[i:])
                self._down(err)
                return False
        self.spool.unlink()
        self._wait = RETRY_S
        print(f"[dive] MLflow reachable again: {len(lines)} spooled record(s) sent", file=sys.stderr)
        return True

    def _send(self, op: str, **kw: Any) -> None:
        if self.spool is None:
            self._call(op, kw)
            return
        if self.pending() and (time.monotonic() < self._retry_at or not self.replay()):
            self._append(op, kw)  # queue behind what is waiting: the order of records is kept
            return
        try:
            self._call(op, kw)
        except Exception as err:  # noqa: BLE001
            self._down(err)
            self._append(op, kw)

    def _call(self, op: str, kw: Mapping[str, Any]) -> None:
        c, rid = self.client, self.run_id
        if op == "metrics":
            items = [Metric(k, v, kw["ts"], kw["step"]) for k, v in kw["metrics"].items()]
            for i in range(0, len(items), 1000):
                c.log_batch(rid, metrics=items[i : i + 1000])
        elif op == "text":
            c.log_text(rid, kw["text"], kw["path"])
        elif op == "dict":
            c.log_dict(rid, kw["data"], kw["path"])
        elif op == "artifact":
            c.log_artifact(rid, kw["file"], kw["folder"])
        elif op == "artifacts":
            c.log_artifacts(rid, kw["folder"], kw["path"])
        elif op == "tag":
            c.set_tag(rid, kw["key"], kw["value"])
        elif op == "end":
            c.set_terminated(rid, kw["status"])
        else:
            raise ValueError(f"{self.spool}: unknown spooled record {op!r}")

    def _append(self, op: str, kw: Mapping[str, Any]) -> None:
        assert self.spool is not None
        self.spool.parent.mkdir(parents=True, exist_ok=True)
        with open(self.spool, "a") as fh:
            fh.write(json.dumps({"op": op, "kw": kw}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def _rewrite(self, lines: list[str]) -> None:
        assert self.spool is not None
        tmp = self.spool.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in lines))
        tmp.replace(self.spool)

    def _down(self, err: BaseException) -> None:
        first = error_line(err, 200)
        print(
            f"[dive] MLflow call failed ({first}); spooling to {self.spool}, next try in {self._wait:.0f} s",
            file=sys.stderr,
        )
        self._retry_at = time.monotonic() + self._wait
        self._wait = min(self._wait * 2, MAX_RETRY_S)

    def child_ended(self, run_id: str, status: str) -> bool:
        """Close a child run (e.g. a pruned or failed sweep trial that could not close itself). A child this
        store does not hold (logged elsewhere) is reported and left alone: the parent's summary still lands."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.set_terminated(run_id, status)
            return True
        except MlflowException as err:
            print(f"[dive] child run {run_id} not closed: {error_line(err, 160)}", file=sys.stderr)
            return False

    def metric_history(self, keys: Iterable[str]) -> dict[str, list[tuple[int, float]]]:
        return {k: [(m.step, m.value) for m in self.client.get_metric_history(self.run_id, k)] for k in keys}

    def metric_times(self, key: str) -> list[tuple[int, float, float]]:
        """(step, value, seconds since the epoch when it was logged) of every value of ``key``, by step."""
        history = self.client.get_metric_history(self.run_id, key)
        return sorted(((m.step, m.value, m.timestamp / 1000) for m in history), key=lambda t: t[0])

    def latest_metrics(self) -> dict[str, float]:
        """The last logged value of every metric of the run."""
        return dict(self.client.get_run(self.run_id).data.metrics)

    def register_model(self, artifact_path: str, model_name: str) -> str:
        """Register ``artifact_path`` of this run as a new version of ``model_name``; returns "name/version"."""
        try:
            self.client.create_registered_model(model_name)
        except Exception as err:  # already registered: add a version
            if "RESOURCE_ALREADY_EXISTS" not in str(err) and "already exists" not in str(err):
                raise
        source = f"{self.client.get_run(self.run_id).info.artifact_uri}/{artifact_path}"
        version = self.client.create_model_version(model_name, source, run_id=self.run_id)
        tag = f"{model_name}/{version.version}"
        self.set_tag("dive.registered_model", tag)
        return tag


def sync(run_dir: str | Path) -> int:
    """``dive sync``: replay a run folder's spool to the tracking store its saved config names; 0 when empty."""
    from dive.config import load_config

    folder = Path(run_dir)
    if not (folder / "config.yaml").is_file():
        print(f"error: {folder}: no config.yaml (expected a run output folder)", file=sys.stderr)
        return 2
    try:
        uri = tracking_uri(load_config(str(folder / "config.yaml")))
    except ConfigError as err:  # e.g. the saved URI's password is masked and $MLFLOW_TRACKING_URI is unset
        print(f"error: {mask_text(str(err))}", file=sys.stderr)
        return 2
    run = Run(uri, folder.resolve().name, spool=folder / SPOOL)
    if not run.pending():
        print(f"{folder}: nothing spooled")
        return 0
    return 0 if run.replay() else 1


def _now_ms() -> int:
    return int(time.time() * 1000)


def parent_run(
    cfg: Config,
    state_file: Path,
    *,
    run_name: str,
    tags: Mapping[str, str],
    state: Mapping[str, Any] | None = None,
) -> tuple[Run, bool]:
    """The parent run of a sweep or benchmark: reopened from ``state_file`` when an earlier attempt wrote it
    (an interrupted run resumes into the same parent), else started and recorded there with ``state``.
    Returns (run, resumed)."""
    uri = tracking_uri(cfg)
    if state_file.is_file():
        return Run.resume(uri, json.loads(state_file.read_text())["parent_run_id"]), True
    run = Run.start(cfg, run_name=run_name, tags=tags)
    state_file.parent.mkdir(parents=True, exist_ok=True)
    state_file.write_text(json.dumps({"parent_run_id": run.run_id, **(state or {})}))
    return run, False
