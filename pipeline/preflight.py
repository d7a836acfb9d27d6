"""Everything about a run that can be known before Ray starts, checked on the driver in seconds.

A wrong tracking URI, an unwritable folder, a batch larger than the dataset, a bad model tag or a teacher cache
made for other weights or other pixels would otherwise surface a minute later — after Ray, the MLflow run and the
worker group exist — as a stack trace from inside a worker, with the MLflow run left behind. Each check raises
:class:`~dive.config.ConfigError` or :class:`~pipeline.data.format.DataError` naming the key or file and what
was expected; ``main`` turns those into one line and exit code 2.
"""

from __future__ import annotations

import base64
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from dive.bundle import ModelBundle
from dive.config import USES_REFERENCE, Config, ConfigError, input_folders, ref_batch, validate_paths
from dive.redact import mask_text
from pipeline import storage
from pipeline.checkpoint import Found
from pipeline.console import error_line
from pipeline.convert.suites.names import template_set
from pipeline.data.format import (
    CAPTIONED,
    LABELLED,
    DataError,
    Manifest,
    check_dataset,
    check_teacher_cache,
)
from pipeline.home import output_folder

TRACKING_TIMEOUT_S = 5.0


@dataclass
class Plan:
    """Everything about a run known before Ray starts, read once: the checked config, the values resolved from it,
    the built teacher and the manifest of every dataset the run reads. The streams, the workers' validation, the
    export and the evaluation take these rather than scan a dataset or resolve a value again."""

    cfg: Config  # validated, with absolute paths (pipeline.train.resolve_paths)
    tracking_uri: str
    ref_batch: int  # B′: reference rows per optimiser step (dive.config.ref_batch)
    teacher: ModelBundle
    use_teacher_cache: bool
    # Dataset folder → its manifest: training, reference, evaluation and validation sets.
    manifests: dict[str, Manifest]
    resume_from: Found | None = None  # the checkpoint a resume starts from (None: from step 0)

    @property
    def id_manifest(self) -> Manifest:
        return self.manifests[self.cfg.data.id_train]

    @property
    def ref_manifest(self) -> Manifest | None:
        return self.manifests.get(self.cfg.data.reference) if self.cfg.data.reference else None


def preflight(cfg: Config, resume_run_id: str | None = None) -> Plan:
    """All checks of a validated, resolved config, cheapest first; returns the run's :class:`Plan`."""
    from pipeline.tracking import tracking_uri

    uri = tracking_uri(cfg)
    check_tracking(uri)
    resume_from = check_resumable(cfg, uri, resume_run_id) if resume_run_id else None
    check_writable("tracking.output_dir", str(output_folder(cfg.tracking.output_dir)))
    if cfg.run.storage_path and not storage.is_uri(cfg.run.storage_path):
        check_writable("run.storage_path", cfg.run.storage_path)
    check_storage(cfg)
    manifests = check_inputs(cfg)
    id_manifest = manifests[cfg.data.id_train]
    ref_manifest = manifests.get(cfg.data.reference) if cfg.data.reference else None
    uses_ref = cfg.loss.method in USES_REFERENCE
    check_batches(cfg, id_manifest, ref_manifest if uses_ref else None)
    teacher = build_checked(cfg)
    use_cache = uses_ref and ref_manifest is not None and teacher_cache_applies(cfg, ref_manifest, teacher)
    return Plan(cfg, uri, ref_batch(cfg), teacher, use_cache, manifests, resume_from)


def check_storage(cfg: Config) -> None:
    """Every object-store URI of the run answers: the endpoint is up, the bucket exists, the credentials read it,
    and ``run.storage_path`` takes a write (the checkpoints go there). One line naming the key and the URI, before
    Ray starts; without this, a wrong key surfaces as a worker's stack trace at the first checkpoint."""
    locations = [(key, folder, False) for key, folder in input_folders(cfg) if storage.is_uri(folder)]
    for key, location in (
        ("run.storage_path", cfg.run.storage_path),
        ("tracking.output_dir", cfg.tracking.output_dir),
    ):
        if storage.is_uri(location):
            locations.append((key, location, True))
    if cfg.model.name.startswith("local-dir:") and storage.is_uri(cfg.model.name.removeprefix("local-dir:")):
        locations.append(("model.name", cfg.model.name.removeprefix("local-dir:"), False))
    for key, location, write in locations:
        try:
            storage.check_location(key, location, write)
        except storage.StorageError as err:
            raise ConfigError(str(err)) from None


def datasets_read(cfg: Config) -> list[tuple[str, str]]:
    """(folder, kind) of every dataset a run reads: training, reference, evaluation and validation sets."""
    data, ev, val = cfg.data, cfg.eval, cfg.val
    read = [(data.id_train, LABELLED), (data.reference, CAPTIONED), (ev.id, LABELLED)]
    read += [(folder, LABELLED) for folder in [*ev.ood.values(), *ev.zs.values(), *ev.zs_far.values()]]
    read += [(ev.rsa_set, CAPTIONED), (val.id, LABELLED), (val.ref, CAPTIONED), (val.zs, LABELLED)]
    read += [(folder, LABELLED) for folder in val.zs_far.values()]
    return [(folder, kind) for folder, kind in read if folder]


def check_inputs(cfg: Config) -> dict[str, Manifest]:
    """Every input of a validated config exists and every dataset has the expected schema; the manifests, by
    folder. A demo config was validated before its data was built: its paths are checked here, now it is."""
    if cfg.data.demo:
        validate_paths(cfg)
    return check_datasets(cfg)


def check_datasets(cfg: Config) -> dict[str, Manifest]:
    """Manifest, shards and column types of every dataset the run reads, each folder scanned once: a wrong schema
    fails here, on the driver, naming the file and column — not as a stack trace from inside a Ray worker."""
    manifests: dict[str, Manifest] = {}
    for folder, kind in datasets_read(cfg):
        if folder not in manifests:
            manifests[folder] = check_dataset(folder, kind, cfg.data.column_map)
        elif manifests[folder].kind != kind:  # one folder in two roles: the second role's kind still counts
            raise DataError(f"{folder}: expected a {kind} dataset, got kind {manifests[folder].kind!r}")
    for suite, name in cfg.eval.templates.items():  # clip:<dataset> needs CLIP_benchmark's file, and the name
        try:
            template_set(name)
        except DataError as err:
            raise DataError(f"eval.templates.{suite}: {err}") from None
    return manifests


def check_resumable(cfg: Config, uri: str, run_id: str) -> Found | None:
    """A resume continues an interrupted run from its newest intact checkpoint (None: it stopped before its first
    one). A run that FINISHED is refused, so its status and results are never relabelled; so is a run whose
    checkpoints all fail verification. What killed writers left half-written is removed first."""
    from pipeline.checkpoint import NoIntactCheckpoint, newest_intact, remove_partials, run_folder
    from pipeline.tracking import Run

    status = Run.status(uri, run_id)
    if status == "FINISHED":
        raise ConfigError(
            f"--resume: MLflow run {run_id} already FINISHED; --resume continues interrupted runs only (its "
            "results stay as they are). To train further, start a new run, e.g. from its export: "
            "model.pretrained=local-dir:<its export folder>"
        )
    fs, folder = run_folder(cfg.run.storage_path, run_id)
    remove_partials(fs, folder)
    try:
        return newest_intact(fs, folder)
    except NoIntactCheckpoint as err:
        if not err.incomplete:
            return None
        raise ConfigError(f"--resume: {err}; start a new run") from None


def check_tracking(uri: str) -> None:
    """An HTTP tracking server answers its ``/health`` endpoint; a local store's folder is writable.

    The request authenticates as MLflow's client would: a user-info in the URI (``http://alice:pw@host``) is
    taken out of the URL (urllib would otherwise read ``alice:pw@host`` as the host name) and sent as HTTP
    basic auth; ``$MLFLOW_TRACKING_USERNAME`` / ``$MLFLOW_TRACKING_PASSWORD`` win over it, as they do in MLflow,
    and ``$MLFLOW_TRACKING_TOKEN`` is sent as a bearer token. Messages show the URI with its secrets masked."""
    shown = mask_text(uri)
    if uri.startswith(("http://", "https://")):
        try:
            request = health_request(uri)
        except ValueError as err:
            raise ConfigError(f"tracking.uri: {shown} is not a valid URL ({mask_text(str(err))})") from None
        try:
            with urllib.request.urlopen(request, timeout=TRACKING_TIMEOUT_S) as response:
                if response.status != 200:
                    raise OSError(f"HTTP {response.status}")
        except urllib.error.HTTPError as err:
            if err.code in (401, 403):
                raise ConfigError(
                    f"tracking.uri: the MLflow server at {shown} refused the credentials (HTTP {err.code} "
                    f"{err.reason}); check the user name and password in the URI or $MLFLOW_TRACKING_USERNAME "
                    "/ $MLFLOW_TRACKING_PASSWORD"
                ) from None
            raise _unreachable(shown, f"HTTP {err.code} {err.reason}") from None
        except (OSError, urllib.error.URLError) as err:
            raise _unreachable(shown, mask_text(str(getattr(err, "reason", err)))) from None
    elif uri.startswith("sqlite:///"):
        check_writable("tracking.uri", str(Path(uri.removeprefix("sqlite:///")).parent), shown)
    elif uri.startswith("file://"):
        check_writable("tracking.uri", uri.removeprefix("file://"), shown)


def _unreachable(shown: str, why: str) -> ConfigError:
    return ConfigError(
        f"tracking.uri: no MLflow server answers at {shown} ({why}); start it "
        "(`mlflow server`), fix tracking.uri / $MLFLOW_TRACKING_URI, or leave both empty for a local "
        "store (mlflow.db)"
    )


def health_request(uri: str) -> urllib.request.Request:
    """The GET of ``<uri>/health``: the URL without its user-info, the credentials in an Authorization header."""
    parts = urlsplit(uri)
    username, password = parts.username, parts.password  # ValueError on a malformed host or port
    parts.port  # noqa: B018  (a bad port fails here, named, rather than as "Name or service not known")
    host = parts.netloc.rpartition("@")[2]  # the split urllib makes for .hostname
    url = urlunsplit((parts.scheme, host, parts.path.rstrip("/") + "/health", "", ""))
    env_user = os.environ.get("MLFLOW_TRACKING_USERNAME", "")
    env_password = os.environ.get("MLFLOW_TRACKING_PASSWORD", "")
    token = os.environ.get("MLFLOW_TRACKING_TOKEN", "")
    headers = {}
    if env_user and env_password:
        headers["Authorization"] = _basic(env_user, env_password)
    elif username is not None:
        headers["Authorization"] = _basic(unquote(username), unquote(password or ""))
    elif token:
        headers["Authorization"] = f"Bearer {token}"
    return urllib.request.Request(url, headers=headers)


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def check_writable(key: str, folder: str, shown: str | None = None) -> None:
    """``folder`` exists (or can be made) and takes a file: better now than when the export is written."""
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".dive-write-check-"):
            pass
    except OSError as err:
        raise ConfigError(
            f"{key}: cannot write to {shown or folder} ({err.strerror or err}); expected a writable folder"
        ) from None


def check_batches(cfg: Config, id_manifest: Manifest, ref_manifest: Manifest | None) -> None:
    """One step needs ``optim.global_batch`` ID rows and ``data.ref_batch`` reference rows (batches are full:
    drop_last), so a larger batch than the set would train zero steps or hang on an empty reference stream."""
    problems = []
    if cfg.optim.global_batch > id_manifest.num_rows:
        problems.append(
            f"optim.global_batch: {cfg.optim.global_batch} is larger than data.id_train "
            f"({cfg.data.id_train}: {id_manifest.num_rows} rows); expected at most {id_manifest.num_rows}"
        )
    rows = ref_batch(cfg)
    if ref_manifest is not None and rows > ref_manifest.num_rows:
        key = "data.ref_batch" if cfg.data.ref_batch else "data.ref_batch (0: optim.global_batch)"
        problems.append(
            f"{key}: {rows} is larger than data.reference ({cfg.data.reference}: "
            f"{ref_manifest.num_rows} rows); expected at most {ref_manifest.num_rows}"
        )
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


def build_checked(cfg: Config) -> ModelBundle:
    """The teacher (= the student's starting point), with an unknown name, tag or weights file as one line."""
    from dive.models import build_model
    from pipeline.home import local_model

    try:
        return build_model(local_model(cfg.model))
    except (ValueError, RuntimeError, OSError) as err:
        first = error_line(err)
        if first.startswith(("model.name", "model.pretrained")):
            raise ConfigError(first) from None
        raise ConfigError(
            f"model: cannot build {cfg.model.name!r} with pretrained {cfg.model.pretrained!r}: {first}"
        ) from None


def teacher_cache_applies(cfg: Config, manifest: Manifest, teacher: ModelBundle) -> bool:
    """True when the reference set caches this teacher's embeddings at this run's preprocessing; a cache made
    by another teacher (or at another image size) is an error, not silently used."""
    from dive.models import teacher_fingerprint

    return check_teacher_cache(cfg.data.reference, manifest, teacher_fingerprint(teacher))
