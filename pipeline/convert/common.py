"""What the converters share: source records, the per-record load + check, skip reports, the write loop.

``convert_records`` is the one loop every converter ends in: in process (``workers=0``) or through Ray Data
(``workers`` > 0, imported only then), the same :func:`load_record` over the same records, written in order.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
from tqdm import tqdm

from dive.config import MAX_IMAGE_PIXELS
from dive.templates import DEFAULT_TEMPLATES, check_template
from pipeline import storage
from pipeline.data.format import (
    BAD_LABEL,
    BAD_TEXT,
    CAPTIONED,
    EMPTY,
    LABELLED,
    MISSING,
    NO_CAPTION,
    TOO_LARGE,
    UNDECODABLE,
    DataError,
    Manifest,
    ShardWriter,
    check_classnames,
    decode_image,
)

DEFAULT_MAX_PIXELS = MAX_IMAGE_PIXELS
DEFAULT_ROWS_PER_SHARD = 2048
DEFAULT_IMAGE_EXTS = ("jpg", "png", "webp")
_RAY_BATCH = 32  # source records per Ray Data batch (reading + decoding a few dozen images per task call)

PathLike = str | os.PathLike[str]


# --------------------------------------------------------------------------------------------------- records
def record(
    key: str,
    where: str,
    path: str = "",
    *,
    offset: int = -1,
    size: int = -1,
    caption: str | None = None,
    label: int | None = None,
    text_offset: int = -1,
    text_size: int = -1,
    missing: str | None = None,
) -> dict[str, Any]:
    """One source sample, as plain data (it travels to Ray Data tasks).

    ``path`` is the image file, or the tar holding the sample (then ``offset``/``size`` locate the image
    member); ``text_offset``/``text_size`` locate a caption or label member in the same tar; ``missing`` says
    what is known to be missing at scan time. ``where`` is what skip messages name.
    """
    return {
        "key": key,
        "where": where,
        "path": path,
        "offset": offset,
        "size": size,
        "caption": caption,
        "label": label,
        "text_offset": text_offset,
        "text_size": text_size,
        "missing": missing,
    }


def _read_bytes(path: str, offset: int, size: int) -> bytes:
    with open(path, "rb") as fh:
        if offset < 0:
            return fh.read()
        fh.seek(offset)
        return fh.read(size)


# What each decode skip reason means, in the skip messages of every converter.
SKIP_DETAIL = {
    EMPTY: "0 bytes",
    UNDECODABLE: "corrupt, truncated or not an image",
}


def load_record(
    rec: Mapping[str, Any], *, kind: str, max_pixels: int, num_classes: int = 0, encoding: str = "utf-8"
) -> dict[str, Any]:
    """Read and check one source sample: the per-record function of both the in-process and the Ray path.

    Returns ``key``, ``where``, ``image`` (the original encoded bytes, or None), ``reason`` (a skip reason or
    None), ``detail`` (why, for the skip message) and ``caption`` or ``label``.
    """
    out: dict[str, Any] = {
        "key": rec["key"],
        "where": rec["where"],
        "image": None,
        "reason": None,
        "detail": "",
        "caption": None,
        "label": None,
    }

    def skip(reason: str, detail: str) -> dict[str, Any]:
        out.update(reason=reason, detail=detail)
        return out

    text: str | None = None
    text_offset = rec.get("text_offset")
    if text_offset is not None and text_offset >= 0:
        try:
            text = _read_bytes(rec["path"], text_offset, rec["text_size"]).decode(encoding)
        except OSError as err:
            return skip(MISSING, f"cannot read {rec['path']}: {err.strerror or err}")
        except UnicodeDecodeError as err:  # stored as mojibake otherwise
            return skip(BAD_TEXT, f"the text member is not valid {encoding} ({err.reason}); set --encoding")
    if kind == CAPTIONED:
        caption = text if text is not None else rec.get("caption")
        if caption is None:
            return skip(NO_CAPTION, "no caption")
        if not str(caption).strip():
            return skip(NO_CAPTION, "the caption is empty")
        out["caption"] = str(caption).strip()
    else:
        label = rec.get("label")
        if text is not None:
            try:
                label = int(text.strip())
            except ValueError:
                return skip(BAD_LABEL, f"label {text.strip()[:40]!r} is not an integer")
        if label is None:
            return skip(BAD_LABEL, "no label")
        if not 0 <= int(label) < num_classes:
            return skip(BAD_LABEL, f"label {label} is outside [0, {num_classes})")
        out["label"] = int(label)
    if rec.get("missing"):
        return skip(MISSING, rec["missing"])
    try:
        offset, size = rec.get("offset"), rec.get("size")
        # size 0 is a 0-byte tar member (skipped as empty), not "read to the end of the tar"
        data = _read_bytes(rec["path"], -1 if offset is None else offset, -1 if size is None else size)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return skip(MISSING, f"no such image file {rec['path']}")
    except OSError as err:
        return skip(MISSING, f"cannot read {rec['path']}: {err.strerror or err}")
    _, reason = decode_image(data, max_pixels)
    if reason is not None:
        return skip(
            reason, f"more than {max_pixels:,} pixels" if reason == TOO_LARGE else SKIP_DETAIL.get(reason, "")
        )
    out["image"] = data
    return out


_RESULT_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("where", pa.string()),
        ("image", pa.binary()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("caption", pa.string()),
        ("label", pa.int64()),
    ]
)


def _load_batch(batch: pa.Table, **kwargs: Any) -> pa.Table:
    """Ray Data ``map_batches`` wrapper of :func:`load_record`."""
    results = [load_record(rec, **kwargs) for rec in batch.to_pylist()]
    return pa.Table.from_pylist(results, schema=_RESULT_SCHEMA)


# --------------------------------------------------------------------------------------------------- helpers
def ray_if(workers: int) -> contextlib.AbstractContextManager[Any]:
    """A Ray session (joined or started) for ``workers`` > 0; nothing, not even ``import ray``, otherwise."""
    if workers <= 0:
        return contextlib.nullcontext()
    from pipeline.ray_env import ray_session

    return ray_session(workers)


def progress(total: int, desc: str) -> tqdm:
    """A progress bar over ``total`` images on stderr: hidden when stderr is no terminal (logs, CI) or when
    ``DIVE_NO_PROGRESS=1``, so captured output holds only the skip reports and the summary."""
    disable = os.environ.get("DIVE_NO_PROGRESS") == "1" or not sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, disable=disable, dynamic_ncols=True)


def report_skip(where: str, reason: str, detail: str) -> None:
    """One line on stdout naming a skipped sample and why, written above any progress bar."""
    tqdm.write(
        f"skipped {where}: {reason} ({detail})" if detail else f"skipped {where}: {reason}", file=sys.stdout
    )


def check_encoding(encoding: str) -> None:
    import codecs

    try:
        codecs.lookup(encoding)
    except LookupError:
        raise DataError(
            f"--encoding: unknown text encoding {encoding!r} (e.g. utf-8, latin-1, cp1252)"
        ) from None


def read_text(path: Path, encoding: str) -> str:
    """A source file's text; a byte that is not ``encoding`` is an error naming the file, the line and the fix."""
    check_encoding(encoding)
    data = path.read_bytes()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(
            f"{path}:{line}: not valid {encoding} (byte {data[err.start]:#04x}); pass --encoding with the "
            "file's encoding, e.g. --encoding latin-1 or cp1252"
        ) from None


def check_out(out: PathLike, overwrite: bool) -> Path | str:
    """The output folder (a Path, or a URI string for object storage), checked before any source is read: it
    must be a folder, and an empty one unless ``overwrite``; a bucket must exist and take a write."""
    if storage.is_uri(out):
        try:
            storage.check_location("the output", str(out), write=True)
            exists = storage.has_files(out)
        except storage.StorageError as err:
            raise DataError(str(err)) from None
        if exists and not overwrite:
            raise DataError(f"{out}: exists and is not empty (pass --overwrite to replace it)")
        return str(out).rstrip("/")
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise DataError(f"{path}: exists and is not a folder (expected an output folder for the shards)")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise DataError(f"{path}: exists and is not empty (pass --overwrite to replace it)")
    return path


def _read_lines(path: PathLike, what: str) -> list[tuple[int, str]]:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such {what} file (expected one entry per line)")
    lines = [(i, line.strip()) for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)]
    lines = [(i, line) for i, line in lines if line and not line.startswith("#")]
    if not lines:
        raise DataError(f"{p}: the {what} file is empty (expected one entry per line)")
    return lines


def load_templates(path: PathLike) -> list[str]:
    """Prompt templates from a file: one per line, each with ``{}`` for the class name (``#`` comments)."""
    templates = []
    for lineno, line in _read_lines(path, "templates"):
        problem = check_template(line)
        if problem is not None:
            raise DataError(f"{path}:{lineno}: template {line!r} {problem}")
        templates.append(line)
    return templates


def resolve_templates(templates: Sequence[str] | PathLike | None) -> list[str]:
    """Prompt templates as a list: the defaults for None, a file's lines (:func:`load_templates`), or the list."""
    if templates is None:
        return list(DEFAULT_TEMPLATES)
    if isinstance(templates, (str, os.PathLike)):
        return load_templates(templates)
    return list(templates)


def resolve_classnames(classnames: Sequence[str] | PathLike) -> list[str]:
    """Class names from a list or a file (one per line, in label order), refused if two are the same name up
    to case and surrounding spaces (the file's line numbers name them)."""
    if isinstance(classnames, (str, os.PathLike)):
        lines = _read_lines(classnames, "class names")
        names = [line for _, line in lines]
        check_classnames(names, classnames, [f"line {i}" for i, _ in lines])
        return names
    names = list(classnames)
    check_classnames(names, "classnames")
    return names


def convert_records(
    records: list[dict[str, Any]],
    out: Path | str,
    manifest: Manifest,
    desc: str,
    max_pixels: int,
    rows_per_shard: int,
    overwrite: bool,
    workers: int,
    encoding: str = "utf-8",
) -> Manifest:
    """Load every record (in process or through Ray Data), skip and report bad ones, write the rest."""
    if rows_per_shard < 1:
        raise DataError(f"--rows-per-shard must be >= 1, got {rows_per_shard}")
    if max_pixels < 1:
        raise DataError(f"--max-pixels must be >= 1, got {max_pixels}")
    check_encoding(encoding)
    kw = dict(kind=manifest.kind, max_pixels=max_pixels, num_classes=manifest.num_classes, encoding=encoding)
    column = "label" if manifest.kind == LABELLED else "caption"
    with (
        ShardWriter(out, manifest, rows_per_shard, overwrite) as writer,
        ray_if(workers),
        progress(len(records), desc) as bar,
    ):
        written = 0
        for res in _load_all(records, kw, workers):
            bar.update(1)
            if res["reason"] is not None:
                writer.skip(res["reason"])
                report_skip(res["where"], res["reason"], res["detail"])
                continue
            writer.add({"image": res["image"], column: res[column], "key": res["key"]})
            written += 1
        if written == 0:
            raise DataError(
                f"{manifest.source}: no usable samples (all {len(records)} skipped); nothing written"
            )
    return writer.manifest


def _load_all(records: list[dict[str, Any]], kw: dict[str, Any], workers: int) -> Iterator[dict[str, Any]]:
    if workers <= 0:
        for rec in records:
            yield load_record(rec, **kw)
        return
    import ray

    ds = ray.data.from_items(records)
    ds = ds.map_batches(
        _load_batch,
        batch_format="pyarrow",
        batch_size=_RAY_BATCH,
        fn_kwargs=kw,
        compute=ray.data.TaskPoolStrategy(size=workers),  # = concurrency=workers (deprecated in Ray 2.51)
    )
    ds.context.execution_options.preserve_order = True  # same rows in the same order as in process
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        yield from batch.to_pylist()
