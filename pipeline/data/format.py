"""The on-disk dataset format: a folder of Parquet shards plus ``dataset.json`` (see docs/data.md). A folder may be
local or an object-store URI (:mod:`pipeline.storage`); local shards are Paths, remote ones URI strings.

Labelled sets have columns ``image`` (encoded bytes) and ``label`` (int32); captioned (reference) sets have
``image`` and ``caption`` (string), optionally ``teacher_image`` / ``teacher_text`` (cached, L2-normalised teacher
embeddings, fixed size D). Both may carry a ``key`` (string). This module is plain pyarrow + Pillow: it writes
shards, reads and checks manifests and schemas, and decodes images with the skip rules every reader shares.
No Ray here, so all of it is testable in milliseconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import posixpath
import shutil
import tarfile
import tempfile
import warnings
from collections import Counter
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq
from PIL import Image, ImageOps

from dive.heads import LabelMap
from dive.templates import check_template
from pipeline import storage

MANIFEST = "dataset.json"
LABELLED, CAPTIONED = "labelled", "captioned"
KINDS = (LABELLED, CAPTIONED)
TEACHER_COLUMNS = ("teacher_image", "teacher_text")

# Why a sample is skipped. Every reader and converter counts skips under these names.
EMPTY, UNDECODABLE, TOO_LARGE, NO_CAPTION, BAD_LABEL = (
    "empty",
    "undecodable",
    "too_large",
    "no_caption",
    "bad_label",
)
MISSING = "missing"  # converters: the source names an image file (or tar member) that does not exist
BAD_TEXT = "bad_text"  # converters: a caption or label member that is not valid text in --encoding


class DataError(ValueError):
    """A dataset folder cannot be used; the message names the file, the column and what was expected."""


@dataclass
class Manifest:
    name: str
    kind: str
    num_rows: int = 0
    classnames: list[str] = field(default_factory=list)  # labelled sets: label i ↔ classnames[i]
    templates: list[str] = field(default_factory=list)  # labelled sets: prompt templates with "{}"
    fingerprint: str = ""  # hash of the shards' content
    skipped: dict[str, int] = field(default_factory=dict)  # {"total": n, <reason>: n, …} at conversion
    source: str = ""
    teacher_fingerprint: str = ""  # set when teacher_* columns are cached
    teacher_dim: int = 0
    schema_version: int = 1
    # Labelled sets scored against another classifier (``dive data suite``; docs/data.md, "Heads"): its name, its
    # class names and templates, and per label the classifier classes whose max logit is that label's score
    # (one each: a subset, ImageNet-R / -A; several: many-to-one, ObjectNet). Empty: the set's own classes.
    head: str = ""
    head_classnames: list[str] = field(default_factory=list)
    head_templates: list[str] = field(default_factory=list)
    head_groups: list[list[int]] = field(default_factory=list)
    # Pixels cropped off each side of an image before the eval transform (ObjectNet's protocol: 2).
    eval_border: int = 0
    # Class names deliberately shared by two classes, kept as published (CLIP's ImageNet names hold 'missile' and
    # 'sunglasses' twice); any other repeated name is refused.
    shared_names: list[str] = field(default_factory=list)
    # Where the split, class names and templates came from (``dive data suite`` records layout, split source,
    # template set), so two results can be compared knowing their protocol.
    protocol: dict[str, str] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def label_map(self) -> LabelMap | None:
        """How labels map onto ``head_classnames`` (None: the set is scored on its own classes)."""
        if not self.head_groups:
            return None
        return LabelMap.from_lists(self.head_groups, len(self.head_classnames))

    def scoring_classes(self) -> tuple[list[str], list[str]]:
        """The (class names, templates) of the head this set is scored with."""
        if self.head_classnames:
            return self.head_classnames, self.head_templates or self.templates
        return self.classnames, self.templates


def read_manifest(folder: str | os.PathLike[str]) -> Manifest:
    """``dataset.json`` of a dataset folder (local or a URI), checked key by key."""
    path = manifest_path(folder)
    if not is_folder(folder):
        raise DataError(f"{folder}: no such dataset folder")
    text = _read_text(path)
    if text is None:
        raise DataError(
            f"{path}: missing manifest; a dataset folder needs it (write shards with `dive data …`)"
        )
    try:
        raw = json.loads(text)
        manifest = Manifest(**raw)
    except (json.JSONDecodeError, TypeError) as err:
        raise DataError(f"{path}: not a valid manifest ({err})") from None
    if manifest.kind not in KINDS:
        raise DataError(f"{path}: key 'kind' must be one of {KINDS}, got {manifest.kind!r}")
    _check_manifest_types(path, manifest)
    return manifest


def manifest_path(folder: str | os.PathLike[str]) -> str | Path:
    """``folder``/dataset.json: a Path for a local folder, a URI for a remote one."""
    return storage.join(folder, MANIFEST) if storage.is_uri(folder) else Path(folder) / MANIFEST


def is_folder(folder: str | os.PathLike[str]) -> bool:
    """A local directory, or a remote prefix that holds objects. A remote store that cannot be reached is a
    DataError naming the URI."""
    if not storage.is_uri(folder):
        return Path(folder).is_dir()
    try:
        return storage.file_type(folder) == storage.pafs.FileType.Directory
    except storage.StorageError as err:
        raise DataError(str(err)) from None


def _read_text(path: str | Path) -> str | None:
    """A small file's text, or None if it does not exist (object stores: a URI)."""
    if not storage.is_uri(path):
        return Path(path).read_text() if Path(path).is_file() else None
    try:
        return storage.read_bytes(path).decode()
    except FileNotFoundError:
        return None
    except storage.StorageError as err:
        raise DataError(str(err)) from None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_manifest_types(path: str | Path, m: Manifest) -> None:
    """JSON holds any type: ``"classnames": "cat,dog"`` or ``"num_rows": "2"`` would otherwise pass and fail
    later (a string iterates as characters) or crash with a TypeError far from the file."""
    problems = []
    for key in ("name", "source", "fingerprint", "teacher_fingerprint", "head"):
        if not isinstance(getattr(m, key), str):
            problems.append(f"'{key}' must be a string, got {getattr(m, key)!r}")
    for key in ("num_rows", "teacher_dim", "schema_version"):
        if not _is_count(getattr(m, key)):
            problems.append(f"'{key}' must be an integer >= 0, got {getattr(m, key)!r}")
    for key in ("classnames", "templates", "head_classnames", "head_templates", "shared_names"):
        value = getattr(m, key)
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            problems.append(f"'{key}' must be a list of strings, got {value!r:.80}")
    for key in ("templates", "head_templates"):
        value = getattr(m, key)
        if not isinstance(value, list):
            continue
        bad = [t for t in value if isinstance(t, str) and check_template(t) is not None]
        if bad:
            problems.append(
                f"'{key}' must each hold one '{{}}' or '{{c}}' (where the class name goes), got {bad[:3]}"
            )
    if not isinstance(m.skipped, dict) or not all(_is_count(v) for v in m.skipped.values()):
        problems.append(f"'skipped' must map reasons to counts, got {m.skipped!r:.80}")
    if not _is_count(m.eval_border):
        problems.append(f"'eval_border' must be an integer >= 0, got {m.eval_border!r}")
    if not isinstance(m.protocol, dict) or not all(isinstance(v, str) for v in m.protocol.values()):
        problems.append(f"'protocol' must map names to strings, got {m.protocol!r:.80}")
    problems += _head_problems(m)
    if problems:
        raise DataError(f"{path}: " + "; ".join(problems))
    shared = m.shared_names if isinstance(m.shared_names, list) else []
    check_classnames(m.classnames, path, shared=shared)
    check_classnames(m.head_classnames, path, shared=shared)


def _head_problems(m: Manifest) -> list[str]:
    """A head mapping must give every label a non-empty group of valid classifier classes."""
    groups = m.head_groups
    if not groups:
        return []
    if not isinstance(groups, list) or not all(
        isinstance(g, list) and all(_is_count(c) for c in g) for g in groups
    ):
        return [f"'head_groups' must be a list of lists of class indices, got {groups!r:.80}"]
    if not m.head_classnames:
        return ["'head_groups' needs 'head_classnames' (the classes the groups index)"]
    if len(groups) != len(m.classnames):
        return [f"'head_groups' has {len(groups)} groups, expected one per class ({len(m.classnames)})"]
    try:
        LabelMap.from_lists(groups, len(m.head_classnames))
    except ValueError as err:
        return [f"'head_groups': {err}"]
    return []


def check_classnames(
    names: Sequence[str],
    where: str | os.PathLike[str],
    sources: Sequence[str] | None = None,
    shared: Collection[str] = (),
) -> None:
    """Refuse two class names that are equal after case-folding and stripping surrounding whitespace.

    ``Cat`` / ``cat`` / ``cat `` is almost certainly one class written twice (two folders, a pasted list): a
    lower-casing tokenizer (CLIP's) gives both the same prompts, hence the same zero-shot weights and text targets,
    and even a cased one sees one concept under two labels, so accuracy on them is a coin toss no training fixes.
    Every place class names enter a dataset calls this: the converters and the manifest check (an existing
    ``dataset.json`` is refused before Ray starts). ``sources[i]`` says where name i came from (a folder, a line);
    by default its label. Names in ``shared`` may repeat (a published list kept as it is, :attr:`Manifest.shared_names`).
    """
    allowed = {n.strip().casefold() for n in shared}
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        folded = name.strip().casefold()
        if folded in seen and folded not in allowed:
            j = seen[folded]
            a, b = (sources[j], sources[i]) if sources is not None else (f"label {j}", f"label {i}")
            raise DataError(
                f"{where}: class names {names[j]!r} ({a}) and {name!r} ({b}) are the same name up to case and "
                "surrounding spaces; the model cannot tell them apart (merge them, or rename one)"
            )
        seen[folded] = i


def write_manifest(folder: str | os.PathLike[str], manifest: Manifest) -> None:
    """Write ``dataset.json`` atomically (temp file + rename; on object storage one PUT), so a crash never leaves
    half a manifest."""
    text = json.dumps(asdict(manifest), indent=2, sort_keys=True) + "\n"
    if storage.is_uri(folder):
        storage.write_bytes(storage.join(folder, MANIFEST), text.encode())
        return
    path = Path(folder) / MANIFEST
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(text)
    tmp.replace(path)


# A shard is a Path in a local folder and a URI string in a remote one: pyarrow, Ray Data and :func:`_open`
# take both.
Shard = Path | str


def shard_files(folder: str | os.PathLike[str]) -> list[Shard]:
    return _files(folder, ".parquet")


def tar_files(folder: str | os.PathLike[str]) -> list[Shard]:
    return _files(folder, ".tar")


def _files(folder: str | os.PathLike[str], suffix: str) -> list[Shard]:
    if not storage.is_uri(folder):
        return sorted(Path(folder).glob(f"*{suffix}"))
    try:
        return list(storage.list_files(folder, suffix))
    except storage.StorageError as err:
        raise DataError(str(err)) from None


def _open(file: Shard) -> Any:
    """A shard opened for reading (binary, seekable)."""
    try:
        return storage.open_input(file)
    except storage.StorageError as err:
        raise DataError(str(err)) from None


def shard_name(file: Shard) -> str:
    return storage.basename(file)


def is_webdataset(folder: str | os.PathLike[str]) -> bool:
    """A folder holding ``*.tar`` shards is read as webdataset (img2dataset's webdataset output also writes
    per-tar ``.parquet`` metadata without image bytes, so tars win over Parquet files)."""
    return bool(tar_files(folder))


def content_fingerprint(files: Sequence[Shard]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(shard_name(f).encode())
        with _open(f) as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------- schema
def _is_binary(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_float_vector(t: pa.DataType) -> bool:
    return (pa.types.is_list(t) or pa.types.is_fixed_size_list(t) or pa.types.is_large_list(t)) and (
        pa.types.is_floating(t.value_type)
    )


_EXPECTED = {
    "image": (_is_binary, "encoded image bytes (binary)"),
    "label": (pa.types.is_integer, "an integer class index"),
    "caption": (_is_string, "a string"),
    "key": (_is_string, "a string"),
    "teacher_image": (_is_float_vector, "a float list of size D"),
    "teacher_text": (_is_float_vector, "a float list of size D"),
}


def required_columns(kind: str) -> tuple[str, ...]:
    return ("image", "label") if kind == LABELLED else ("image", "caption")


# Webdataset member extensions → schema names (img2dataset's defaults); ``data.column_map`` entries win.
WDS_COLUMNS = {"jpg": "image", "txt": "caption", "cls": "label"}


def resolve_columns(
    available: Collection[str],
    column_map: Mapping[str, str] | None,
    defaults: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Schema name → source column for one dataset: a mapped source that exists, else the schema name itself,
    else a default source. One ``data.column_map`` can thus serve folders that use different names."""
    resolved: dict[str, str] = {}
    for source, target in _with_defaults(defaults, column_map).items():
        if source in available:
            resolved[target] = source
    for target in _EXPECTED:
        if target in available:
            resolved.setdefault(target, target)
    return resolved


def _with_defaults(
    defaults: Mapping[str, str] | None, column_map: Mapping[str, str] | None
) -> dict[str, str]:
    """Source → schema name: the defaults, each overridden by a map entry with the same target."""
    user = dict(column_map or {})
    return {s: t for s, t in (defaults or {}).items() if t not in user.values()} | user


def wds_sources(column_map: Mapping[str, str] | None) -> dict[str, str]:
    """Member extension → schema name for webdataset folders: the defaults, overridden per target by the map."""
    return _with_defaults(WDS_COLUMNS, column_map)


def _wds_columns(
    samples: Mapping[str, Mapping[str, Any]], column_map: Mapping[str, str] | None
) -> tuple[list[str], dict[str, str]]:
    """The member extensions a scanned tar holds, and schema name → extension for it."""
    extensions = sorted({e for exts in samples.values() for e in exts})
    return extensions, resolve_columns(extensions, column_map, WDS_COLUMNS)


def split_member(name: str) -> tuple[str, str] | None:
    """webdataset's grouping: key = path up to the first dot of the basename, extension = the rest."""
    folder, base = posixpath.split(name)
    dot = base.find(".")
    if dot <= 0 or dot == len(base) - 1:
        return None
    return posixpath.join(folder, base[:dot]), base[dot + 1 :].lower()


def lower_extension(name: str) -> str:
    """``a/B.JPG`` → ``a/B.jpg``: member extensions compare case-insensitively everywhere."""
    split = split_member(name)
    return name if split is None else f"{split[0]}.{split[1]}"


def scan_tar(tar: Shard, contiguous: bool = False) -> dict[str, dict[str, tuple[int, int]]]:
    """Sample key → {extension: (data offset, size)}, from the headers only (data is read later).

    ``contiguous`` requires each sample's members to be adjacent, as the webdataset spec (and Ray Data's
    streaming reader) expects; the converter does not need it.
    """
    samples: dict[str, dict[str, tuple[int, int]]] = {}
    last = None
    try:
        with _open(tar) as fh, tarfile.open(fileobj=fh, mode="r:") as tf:
            for member in tf:
                if not member.isfile():
                    continue
                split = split_member(member.name)
                if split is None:
                    continue
                if contiguous and split[0] != last and split[0] in samples:
                    raise DataError(
                        f"{tar}: the members of sample '{split[0]}' are not adjacent; webdataset shards must "
                        "keep a sample's files together (re-create it with `tar --sort=name`, or convert it "
                        "with `dive data wds`, which accepts any order)"
                    )
                last = split[0]
                samples.setdefault(split[0], {})[split[1]] = (member.offset_data, member.size)
    except (tarfile.TarError, OSError) as err:
        raise DataError(
            f"{tar}: not a readable uncompressed tar file ({err}); expected webdataset shards (.tar; "
            "compressed .tar.gz shards are not supported, decompress them first)"
        ) from None
    return samples


def _check_webdataset(
    folder: str | os.PathLike[str], kind: str | None, column_map: Mapping[str, str] | None
) -> Manifest:
    """A folder of webdataset tars: ``dataset.json`` is optional for captioned sets (kind, name and row count
    come from the tars); labelled sets need it for their class names."""
    path = manifest_path(folder)
    if _read_text(path) is not None:
        manifest = read_manifest(folder)
    elif kind == LABELLED:
        raise DataError(
            f"{path}: missing manifest; a labelled webdataset folder needs one with kind "
            "'labelled' and 'classnames' (label i = classnames[i])"
        )
    else:
        source = str(folder) if storage.is_uri(folder) else str(Path(folder).resolve())
        manifest = Manifest(name=storage.basename(folder), kind=CAPTIONED, source=source)
    if kind is not None and manifest.kind != kind:
        raise DataError(f"{path}: expected a {kind} dataset, got kind {manifest.kind!r}")
    rows, h = 0, hashlib.sha256()
    for tar in tar_files(folder):
        samples = scan_tar(tar, contiguous=True)
        extensions, columns = _wds_columns(samples, column_map)
        for column in required_columns(manifest.kind):
            if column not in columns:
                sources = [k for k, v in wds_sources(column_map).items() if v == column]
                raise DataError(
                    f"{tar}: no member with extension {' or '.join('.' + x for x in sources)} "
                    f"(expected {_EXPECTED[column][1]} for '{column}'); extensions are {extensions}; "
                    "map names with data.column_map"
                )
        rows += len(samples)
        h.update(f"{shard_name(tar)}:{storage.size(tar)}:{len(samples)};".encode())
    if rows == 0:
        raise DataError(f"{folder}: the webdataset tars hold no samples")
    if manifest.num_rows and manifest.num_rows != rows:
        raise DataError(
            f"{path}: 'num_rows' is {manifest.num_rows} but the tars hold {rows} samples "
            "(drop the key to count them, or fix it)"
        )
    manifest.num_rows = rows
    manifest.fingerprint = manifest.fingerprint or h.hexdigest()[:16]
    return manifest


def check_dataset(
    folder: str | os.PathLike[str],
    kind: str | None = None,
    column_map: Mapping[str, str] | None = None,
) -> Manifest:
    """Check manifest, shard files and column types before anything is trained; return the manifest.

    ``column_map`` maps source column names to schema names (``{"jpg": "image", "txt": "caption"}``), so
    img2dataset output reads without conversion; a folder of webdataset ``*.tar`` shards is checked member by
    member (``jpg``/``txt``/``cls`` by default). Errors name the shard, the column and what was expected.
    """
    if is_folder(folder) and is_webdataset(folder):
        return _check_webdataset(folder, kind, column_map)
    manifest = read_manifest(folder)
    if kind is not None and manifest.kind != kind:
        raise DataError(f"{manifest_path(folder)}: expected a {kind} dataset, got kind {manifest.kind!r}")
    files = shard_files(folder)
    if not files:
        raise DataError(f"{folder}: no *.parquet shards (expected at least one)")
    if manifest.num_rows <= 0:
        raise DataError(f"{manifest_path(folder)}: the dataset is empty (num_rows = {manifest.num_rows})")
    if manifest.kind == LABELLED and not manifest.classnames:
        raise DataError(
            f"{manifest_path(folder)}: key 'classnames' must list the class names of a labelled set"
        )
    inverse = {v: k for k, v in (column_map or {}).items()}
    for f in files:
        try:
            schema = pq.read_schema(f)
        except Exception as err:  # pyarrow raises several types for a corrupt footer
            raise DataError(f"{f}: not a readable Parquet file ({err})") from None
        columns = resolve_columns(schema.names, column_map)
        for column in required_columns(manifest.kind):
            if column not in columns:
                raise DataError(
                    f"{f}: missing column '{inverse.get(column, column)}' (expected {_EXPECTED[column][1]} "
                    f"for '{column}'); columns are {schema.names}; map names with data.column_map"
                )
        for column, source in columns.items():
            ok, expected = _EXPECTED[column]
            if not ok(schema.field(source).type):
                raise DataError(
                    f"{f}: column '{source}' has type {schema.field(source).type}, expected {expected}"
                )
        if manifest.kind == LABELLED:
            _check_labels(f, columns["label"], manifest.num_classes)
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    if rows != manifest.num_rows:
        raise DataError(
            f"{manifest_path(folder)}: 'num_rows' is {manifest.num_rows} but the {len(files)} shard(s) hold "
            f"{rows} rows; the manifest does not describe these shards (re-write it, or re-convert the data)"
        )
    return manifest


def _check_labels(file: Path, column: str, num_classes: int) -> None:
    """Every label is set and in [0, num_classes), read from each row group's statistics (the footer, no data
    pages) — a null label would otherwise crash inside a Ray Data task without naming the file."""
    pf = pq.ParquetFile(file)
    index = pf.schema_arrow.get_field_index(column)
    for g in range(pf.metadata.num_row_groups):
        stats = pf.metadata.row_group(g).column(index).statistics
        if stats is not None and stats.has_null_count and stats.has_min_max:
            nulls, low, high = stats.null_count, stats.min, stats.max
        else:  # a writer that keeps no statistics: read this row group's labels
            values = pf.read_row_group(g, columns=[column]).column(0)
            nulls = values.null_count
            low = pa.compute.min(values).as_py() if len(values) > nulls else 0
            high = pa.compute.max(values).as_py() if len(values) > nulls else 0
        if nulls:
            raise DataError(f"{file}: row group {g} has {nulls} null value(s) in column '{column}'")
        if low < 0 or high >= num_classes:
            raise DataError(
                f"{file}: row group {g} has labels in [{low}, {high}] in column '{column}', expected "
                f"0 … {num_classes - 1} (one per entry of 'classnames')"
            )


def check_teacher_cache(folder: str | os.PathLike[str], manifest: Manifest, teacher_fp: str) -> bool:
    """True when the folder holds teacher embeddings made by this teacher; a stale cache is an error."""
    if not manifest.teacher_fingerprint:
        return False
    if manifest.teacher_fingerprint != teacher_fp:
        raise DataError(
            f"{manifest_path(folder)}: cached teacher embeddings were made by teacher {manifest.teacher_fingerprint}, "
            f"but this run's teacher is {teacher_fp}; re-run `dive data cache-teacher` or drop the teacher columns"
        )
    return True


# ---------------------------------------------------------------------------------------------------- decoding
def decode_image(data: bytes | None, max_pixels: int) -> tuple[Image.Image | None, str | None]:
    """Decode encoded bytes to 8-bit RGB, upright, or return the skip reason.

    The one decode rule of every reader (converters, streams, evaluation, teacher cache), so all of them see the
    same pixels; the streams, evaluation and teacher cache call it through
    :func:`~pipeline.data.transforms.load_pixels`, which decodes 8-bit RGB / grey JPEGs with libjpeg-turbo straight
    into a tensor under this same rule (header limit first, the orientation Pillow reads). The pixel limit is checked from the header, before any pixel is decoded, so a decompression
    bomb costs nothing; it is width × height, which the EXIF rotation below does not change. The EXIF (or XMP)
    orientation is applied, as a camera's viewer does: a phone photo stored sideways is used the way it was
    taken. A malformed EXIF block does not cost the image: its pixels are used as stored. Modes are mapped to
    RGB by :func:`_to_rgb`.
    """
    if not data:
        return None, EMPTY
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                return None, TOO_LARGE
            img.load()
            with contextlib.suppress(Exception), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "Corrupt EXIF data", once per image of a stream otherwise
                ImageOps.exif_transpose(img, in_place=True)
            return _to_rgb(img), None
    except Image.DecompressionBombError:
        return None, TOO_LARGE
    except Exception:  # PIL raises many types for truncated/corrupt files
        return None, UNDECODABLE


_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any decoded mode → 8-bit RGB with the values a viewer shows.

    Pillow's own ``convert("RGB")`` clips instead of scaling for the wide modes (a 16-bit grey of 32768 would
    come out white), so those are scaled here:

    - 16-bit grey (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``) and ``I`` (32-bit int; Pillow opens a PGM with
      more than 8 bits as ``I`` already scaled to 0 … 65535): value v → round(v / 257) (half up), the nearest of
      the 256 levels, so 0 → 0, 32768 → 128, 65535 → 255 and an 8-bit value k stored as k·257 comes back as k.
      ``I`` values outside 0 … 65535 (a 32-bit TIFF) are clipped to it first.
    - ``F`` (32-bit float): if no finite value exceeds 1 the image is taken as 0 … 1 (× 255), else as 0 … 255;
      then clipped to 0 … 255 and rounded half up. NaN → 0, +inf → 255, −inf → 0.
    - palette ``P`` (with or without transparency) and ``PA``: the palette colours; ``LA``: the luminance in all
      three channels. Alpha is dropped, colour kept, the same rule as for ``RGBA``: a transparent pixel shows
      the colour stored under it.
    - ``CMYK``: Pillow's conversion, R = round((255 − C)(255 − K) / 255) (likewise G from M, B from Y), without
      colour management (an embedded ICC profile is not applied).
    - ``1`` (bilevel): 0 / 255. Every other mode (``L``, ``RGB``, ``RGBA``, ``YCbCr``, ``LAB``, …): Pillow's
      conversion (``LAB`` is colour-converted to sRGB, not copied channel by channel).
    """
    mode = img.mode
    if mode in _SIXTEEN_BIT:
        values = np.asarray(img).astype(np.int64)  # I;16B arrives big-endian; astype gives native integers
        return _grey_rgb((np.clip(values, 0, 65535) + 128) // 257)
    if mode == "F":
        values = np.asarray(img, dtype=np.float64)
        finite = np.isfinite(values)
        scale = 255.0 if not finite.any() or values[finite].max() <= 1.0 else 1.0
        values = np.nan_to_num(values * scale, nan=0.0, posinf=255.0, neginf=0.0)
        return _grey_rgb(np.floor(np.clip(values, 0.0, 255.0) + 0.5))
    if mode in ("P", "PA"):
        return img.convert("RGBA").convert("RGB")
    if mode == "LA":
        return img.convert("L").convert("RGB")
    return img.convert("RGB")


def _grey_rgb(grey: np.ndarray) -> Image.Image:
    return Image.fromarray(grey.astype(np.uint8)).convert("RGB")


def encode_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------- writing
class ShardWriter:
    """Write rows into Parquet shards and a manifest, all-or-nothing.

    Rows go to a temporary folder next to ``out``; only a complete dataset is moved into place, so an interrupted
    conversion never leaves a half-written dataset and never destroys an existing one unless ``overwrite`` —
    and even then the old data stays until the new set is complete (then the two are swapped by renames). Any
    failure, a full disk included, removes the temporary folder. A lock file beside ``out`` makes a second
    writer to the same output fail at once instead of silently replacing the first one's data.

    ``out`` may be a URI (``s3://bucket/sets/train``): shards are uploaded as they fill, under a temporary
    prefix beside ``out``; closing publishes them, shards first and ``dataset.json`` last, so a reader (which
    needs the manifest) never sees half a set; with ``overwrite`` the old set is removed, manifest first, only
    once the new one is complete. Object stores have no locks: two writers to one URI are the user's to avoid.
    """

    def __init__(
        self,
        out: str | os.PathLike[str],
        manifest: Manifest,
        rows_per_shard: int = 2048,
        overwrite: bool = False,
    ) -> None:
        if manifest.kind not in KINDS:
            raise DataError(f"kind must be one of {KINDS}, got {manifest.kind!r}")
        self.manifest = manifest
        self.rows_per_shard = rows_per_shard
        self.skipped: Counter[str] = Counter()
        self._rows: list[dict[str, Any]] = []
        self._count = 0
        self._shards = 0
        self._remote: _RemoteShards | None = None
        if storage.is_uri(out):
            self._remote = _RemoteShards(str(out), overwrite)
            return
        self.out = Path(out)
        if self.out.exists() and any(self.out.iterdir()) and not overwrite:
            raise DataError(f"{self.out}: exists and is not empty (pass --overwrite to replace it)")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._lock = _writer_lock(self.out)
        try:
            self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", dir=self.out.parent))
        except OSError:
            _release(self._lock)
            raise

    def add(self, row: Mapping[str, Any]) -> None:
        self._rows.append(dict(row))
        if len(self._rows) >= self.rows_per_shard:
            self._flush()

    def skip(self, reason: str, n: int = 1) -> None:
        self.skipped[reason] += n

    def _flush(self) -> None:
        if not self._rows:
            return
        table = _rows_to_table(self._rows, self.manifest.kind)
        name = f"part-{self._shards:05d}.parquet"
        if self._remote is not None:
            self._remote.put(name, table)
        else:
            pq.write_table(table, self._tmp / name)
        self._count += len(self._rows)
        self._shards += 1
        self._rows = []

    def close(self) -> Manifest:
        self._flush()
        self.manifest.num_rows = self._count
        self.manifest.skipped = {"total": sum(self.skipped.values()), **dict(sorted(self.skipped.items()))}
        if self._remote is not None:
            self.manifest.fingerprint = self._remote.fingerprint()
            self._remote.publish(self.manifest)
            return self.manifest
        self.manifest.fingerprint = content_fingerprint(shard_files(self._tmp))
        write_manifest(self._tmp, self.manifest)
        old = None
        if (
            self.out.exists()
        ):  # the old set is renamed away only now, and deleted once the new one is in place
            old = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.old.", dir=self.out.parent))
            self.out.replace(old / "data")
        self._tmp.replace(self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        _release(self._lock)
        return self.manifest

    def abort(self) -> None:
        if self._remote is not None:
            self._remote.abort()
            return
        shutil.rmtree(self._tmp, ignore_errors=True)
        _release(self._lock)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is not None:
            self.abort()
            return
        try:
            self.close()
        except BaseException:  # e.g. the disk filled while the last shard or the manifest was written
            self.abort()
            raise


class _RemoteShards:
    """ShardWriter's object-store side: shards uploaded under ``.<name>.tmp-<id>/`` beside ``out`` as they fill
    (no local copy of the set), hashed on the way as :func:`content_fingerprint` would hash them, then moved into
    ``out`` with the manifest written last."""

    def __init__(self, out: str, overwrite: bool) -> None:
        self.out = out.rstrip("/")
        self.overwrite = overwrite
        try:
            self.fs, self.path = storage.resolve(self.out)
            exists = storage.has_files(self.out)
        except storage.StorageError as err:
            raise DataError(str(err)) from None
        if exists and not overwrite:
            raise DataError(f"{self.out}: exists and is not empty (pass --overwrite to replace it)")
        parent, name = posixpath.split(self.path)
        self.staging = posixpath.join(parent, f".{name}.tmp-{os.urandom(6).hex()}")
        self.names: list[str] = []
        self._hash = hashlib.sha256()

    def put(self, name: str, table: pa.Table) -> None:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        data = sink.getvalue()
        self._hash.update(name.encode())
        self._hash.update(memoryview(data))
        with self.fs.open_output_stream(posixpath.join(self.staging, name)) as fh:
            fh.write(data)
        self.names.append(name)

    def fingerprint(self) -> str:
        return self._hash.hexdigest()[:16]

    def publish(self, manifest: Manifest) -> None:
        fs = self.fs
        if fs.get_file_info(self.path).type == storage.pafs.FileType.Directory:
            # overwrite: the old manifest goes first, so no reader takes old shards mixed with new ones
            manifest_file = posixpath.join(self.path, MANIFEST)
            if fs.get_file_info(manifest_file).type == storage.pafs.FileType.File:
                fs.delete_file(manifest_file)
            fs.delete_dir(self.path)
        for name in self.names:
            fs.move(posixpath.join(self.staging, name), posixpath.join(self.path, name))
        write_manifest(self.out, manifest)
        self.abort()

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.fs.delete_dir(self.staging)


def _writer_lock(out: Path) -> Any:
    """An exclusive lock on ``out`` for one writer (filelock: released on exit, even by a killed process's OS)."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(out.parent / f".{out.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise DataError(
            f"{out}: another conversion is writing this folder (lock {lock.lock_file}); wait for it to end, "
            "or write to another folder"
        ) from None
    return lock


def _release(lock: Any) -> None:
    """Remove the lock file while still holding it (no clutter beside the data), then release it. A writer that
    starts in between fails at once (timeout 0) rather than wait on the old file."""
    Path(lock.lock_file).unlink(missing_ok=True)
    lock.release()


def _rows_to_table(rows: list[dict[str, Any]], kind: str) -> pa.Table:
    columns: dict[str, pa.Array] = {"image": pa.array([r["image"] for r in rows], type=pa.binary())}
    if kind == LABELLED:
        columns["label"] = pa.array([int(r["label"]) for r in rows], type=pa.int32())
    else:
        columns["caption"] = pa.array([str(r["caption"]) for r in rows], type=pa.string())
    if all("key" in r for r in rows):
        columns["key"] = pa.array([str(r["key"]) for r in rows], type=pa.string())
    for name in TEACHER_COLUMNS:
        if all(name in r for r in rows):
            values = np.stack([np.asarray(r[name], dtype=np.float32) for r in rows])
            columns[name] = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])
    return pa.table(columns)


def iter_rows(
    folder: str | os.PathLike[str],
    columns: list[str] | None = None,
    column_map: Mapping[str, str] | None = None,
) -> Iterator[dict[str, Any]]:
    """Rows of every shard in order under schema names (plain pyarrow / tarfile; for small sets and tests)."""
    if is_webdataset(folder):
        for tar in tar_files(folder):
            samples = scan_tar(tar)
            _, wanted = _wds_columns(samples, column_map)
            with _open(tar) as fh:
                for members in samples.values():
                    row: dict[str, Any] = {}
                    for column, ext in wanted.items():
                        if columns is None or column in columns:
                            row[column] = None
                            if ext in members:
                                fh.seek(members[ext][0])
                                row[column] = wds_value(column, fh.read(members[ext][1]))
                    yield row
        return
    for f in shard_files(folder):
        table = pq.read_table(f)
        sources = resolve_columns(table.column_names, column_map)
        names = [c for c in sources if columns is None or c in columns]
        yield from table.select([sources[c] for c in names]).rename_columns(names).to_pylist()


def wds_value(column: str, data: bytes) -> Any:
    """A raw webdataset member as the schema expects it: captions as text, labels as int (None if not one)."""
    if column == "caption":
        return data.decode("utf-8", errors="replace")
    if column == "label":
        try:
            return int(data.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            return None
    return data
