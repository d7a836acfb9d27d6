"""Where files live: a local folder or an object-store URI (``s3://bucket/prefix``, ``gs://bucket/prefix``).

Every place a run or a converter reads or writes a folder (datasets, the teacher cache, checkpoints, exports)
resolves it here to a pyarrow filesystem and a path in it. Credentials are each cloud's standard ones (for S3 the
AWS variables, ``~/.aws`` or the instance role, and ``AWS_ENDPOINT_URL`` for an S3-compatible store; for GCS the
application default credentials), read by pyarrow on the node that touches the files, so every node needs them.
Local paths stay plain :class:`~pathlib.Path` folders: nothing changes for them.

:func:`check_location` is what preflight calls: it turns the many ways a URI fails (an endpoint that does not
answer, a bucket that does not exist, a wrong key, no permission) into one line naming the URI, before Ray starts.
No Ray, no MLflow here.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from pathlib import Path

import pyarrow.fs as pafs

# Schemes read as object storage; anything else with "://" is refused by name (file:// is a local folder).
SCHEMES = ("s3", "gs", "gcs")


class StorageError(OSError):
    """A URI cannot be used: the message names the URI and what failed."""


def scheme(location: str | os.PathLike[str]) -> str:
    """``s3`` for ``s3://b/p``; ``""`` for a local path (``file://`` included)."""
    text = str(location)
    if "://" not in text:
        return ""
    head = text.split("://", 1)[0].lower()
    return "" if head == "file" else head


def is_uri(location: str | os.PathLike[str]) -> bool:
    """True for an object-store URI, False for a local path."""
    return bool(scheme(location))


def local_path(location: str | os.PathLike[str]) -> Path:
    """A local location as a Path (``file://`` stripped)."""
    text = str(location)
    return Path(text[len("file://") :] if text.lower().startswith("file://") else text)


def join(location: str | os.PathLike[str], *parts: str) -> str:
    """``location`` / ``parts``: posix joins for URIs, :class:`Path` joins for local folders."""
    if is_uri(location):
        return posixpath.join(str(location).rstrip("/"), *parts)
    return str(local_path(location).joinpath(*parts))


def parent(location: str | os.PathLike[str]) -> str:
    """The folder that holds ``location``."""
    if is_uri(location):
        return str(location).rstrip("/").rsplit("/", 1)[0]
    return str(local_path(location).parent)


def basename(location: str | os.PathLike[str]) -> str:
    return posixpath.basename(str(location).rstrip("/")) if is_uri(location) else local_path(location).name


def resolve(location: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path in it) of a folder or file: pyarrow's filesystem for the URI's scheme (S3 honours
    ``AWS_ENDPOINT_URL``), the local filesystem and an absolute path otherwise. An unknown scheme or a URI
    without a bucket is a :class:`StorageError`."""
    if not is_uri(location):
        return pafs.LocalFileSystem(), str(local_path(location).resolve())
    text = str(location)
    kind = scheme(text)
    if kind not in SCHEMES:
        raise StorageError(f"{text}: unsupported scheme '{kind}://'; expected a local path, s3:// or gs://")
    if not text.split("://", 1)[1].strip("/"):
        raise StorageError(f"{text}: no bucket; expected {kind}://BUCKET/PREFIX")
    try:
        fs, path = pafs.FileSystem.from_uri(text.rstrip("/"))
    except Exception as err:  # pyarrow raises ArrowInvalid / OSError with the SDK's words
        raise StorageError(f"{text}: {explain(err)}") from None
    return fs, path.rstrip("/")


def list_files(location: str | os.PathLike[str], suffix: str) -> list[str]:
    """URIs of the files directly in a remote folder whose names end with ``suffix``, sorted by name."""
    fs, path = resolve(location)
    prefix = str(location).rstrip("/")
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except Exception as err:
        raise StorageError(f"{location}: {explain(err)}") from None
    names = sorted(
        posixpath.basename(i.path) for i in infos if i.type == pafs.FileType.File and i.path.endswith(suffix)
    )
    return [f"{prefix}/{name}" for name in names]


def has_files(location: str | os.PathLike[str]) -> bool:
    """Whether a remote folder holds any object (some stores keep an empty "folder" after its last object went,
    so a folder's type alone does not say it is empty)."""
    fs, path = resolve(location)
    try:
        return bool(fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)))
    except Exception as err:
        raise StorageError(f"{location}: {explain(err)}") from None


def file_type(location: str | os.PathLike[str]) -> pafs.FileType:
    """NotFound, File or Directory. On object storage a "folder" is a prefix that holds objects."""
    fs, path = resolve(location)
    try:
        return fs.get_file_info(path).type
    except Exception as err:
        raise StorageError(f"{location}: {explain(err)}") from None


def read_bytes(location: str | os.PathLike[str]) -> bytes:
    fs, path = resolve(location)
    try:
        with fs.open_input_stream(path) as fh:
            return fh.read()
    except FileNotFoundError:
        raise
    except Exception as err:
        raise StorageError(f"{location}: {explain(err)}") from None


def write_bytes(location: str | os.PathLike[str], data: bytes) -> None:
    """One object written whole (an S3 PUT: readers see the old object or the new one, never half)."""
    fs, path = resolve(location)
    try:
        with fs.open_output_stream(path) as fh:
            fh.write(data)
    except Exception as err:
        raise StorageError(f"{location}: {explain(err)}") from None


def open_input(location: str | os.PathLike[str]):  # noqa: ANN201 (a binary, seekable file object)
    """A seekable binary file (tar headers are read by offset)."""
    if not is_uri(location):
        return open(local_path(location), "rb")
    fs, path = resolve(location)
    try:
        return fs.open_input_file(path)
    except Exception as err:
        raise StorageError(f"{location}: {explain(err)}") from None


def size(location: str | os.PathLike[str]) -> int:
    if not is_uri(location):
        return local_path(location).stat().st_size
    fs, path = resolve(location)
    return int(fs.get_file_info(path).size or 0)


def upload(local: str | os.PathLike[str], location: str) -> None:
    """Copy a local file or folder (recursively) to a URI."""
    fs, path = resolve(location)
    try:
        pafs.copy_files(str(local), path, destination_filesystem=fs)
    except Exception as err:
        raise StorageError(f"{location}: {explain(err)}") from None


def download(location: str, local: str | os.PathLike[str]) -> Path:
    """Copy a remote file or folder (recursively) to a local path; returns it."""
    fs, path = resolve(location)
    target = Path(local)
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            files = [(path, target)]
        elif info.type == pafs.FileType.Directory:
            found = fs.get_file_info(pafs.FileSelector(path, recursive=True))
            files = [
                (i.path, target / posixpath.relpath(i.path, path))
                for i in found
                if i.type == pafs.FileType.File
            ]
        else:
            raise FileNotFoundError("no such file or folder")
        if info.type == pafs.FileType.Directory:
            target.mkdir(parents=True, exist_ok=True)  # an empty folder too
        for source, dest in files:
            dest.parent.mkdir(parents=True, exist_ok=True)
            with fs.open_input_stream(source) as fh, open(dest, "wb") as out:
                while chunk := fh.read(8 << 20):
                    out.write(chunk)
    except Exception as err:
        raise StorageError(f"{location}: {explain(err)}") from None
    return target


def mirror(root: str | os.PathLike[str], location: str) -> Path:
    """The local folder that stands for a URI under ``root``: ``root/<scheme>/<bucket>/<prefix>``."""
    return Path(root, scheme(location), *str(location).split("://", 1)[1].strip("/").split("/"))


def explain(err: BaseException) -> str:
    """The SDK's error as what went wrong, in words a user can act on."""
    text = " ".join(str(err).split())
    low = text.lower().replace("_", "")  # pyarrow writes the SDK's codes as ACCESS_DENIED, NO_SUCH_BUCKET, …
    if (
        "could not connect" in low
        or "couldn't connect" in low
        or "curlcode: 7" in low
        or "connection refused" in low
        or ("curl" in low and "timeout" in low)
    ):
        return (
            f"the object store does not answer ({_endpoint()}); expected a reachable endpoint ({text[:160]})"
        )
    if "nosuchbucket" in low or "bucket does not exist" in low:
        return "the bucket does not exist; create it first"
    if "invalidaccesskeyid" in low or "signaturedoesnotmatch" in low or "invalid access key" in low:
        return (
            "the store refused the credentials (wrong access key or secret); check AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY or the node's profile"
        )
    if "accessdenied" in low or "access denied" in low or "forbidden" in low:
        return "access denied: the credentials may not read or write here"
    return text[:300]


def _endpoint() -> str:
    return (
        os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "the cloud's endpoint"
    )


def check_location(key: str, location: str, write: bool) -> None:
    """Preflight for a URI: the store answers, the bucket exists, and the folder can be read (and, with
    ``write``, written: a probe object is put and deleted). Raises :class:`StorageError` with one line naming
    ``key``, the URI and what failed. Local folders are not checked here (preflight's own checks do that)."""
    if not is_uri(location):
        return
    try:
        fs, path = resolve(location)
        # A listing first: its error names a wrong key or secret, where a bucket's HEAD only says "denied".
        fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        if fs.get_file_info(path.split("/", 1)[0]).type == pafs.FileType.NotFound:
            raise StorageError("the bucket does not exist; create it first")
        if write:
            probe = posixpath.join(path, f".dive-write-check-{uuid.uuid4().hex[:12]}")
            with fs.open_output_stream(probe) as fh:
                fh.write(b"ok")
            fs.delete_file(probe)
    except StorageError as err:
        raise StorageError(f"{key}: {location}: {str(err).removeprefix(f'{location}: ')}") from None
    except Exception as err:
        raise StorageError(f"{key}: {location}: {explain(err)}") from None
