"""``dive data …``: convert image sources into shards (:mod:`pipeline.shards`); cache teacher embeddings.

Converters (each checks every image with :func:`~pipeline.shards.decode_image` as it converts):

* ``imagefolder SRC OUT``: one subfolder per class → a labelled set (classes sorted by folder name,
  label = index, underscores → spaces in the class names used in prompts). Original encoded bytes are kept.
* ``captions FILE OUT``: a CSV or JSONL file (by extension) with an image path and a caption per row → a
  captioned set. Paths are relative to ``--base-dir`` (default: the file's folder).
* ``wds SRC OUT``: webdataset tars (one ``.tar`` or a folder of them; uncompressed) → a captioned set, or a
  labelled one when ``--label-ext`` is given and the tars hold no captions (``--classnames`` names classes).
* ``cache-teacher DATASET``: run the frozen teacher over a captioned set and rewrite it with
  ``teacher_image`` / ``teacher_text`` columns and ``teacher_fingerprint`` / ``teacher_dim`` in the manifest.

A bad source (no such file or folder, missing columns, no class folders, no tars) raises :class:`DataError`
before anything is written. Bad samples (empty, undecodable or truncated, over ``--max-pixels``, no caption,
label out of range, missing file) are skipped: one line each on stdout, counted by reason under ``skipped`` in
``dataset.json``. Output is all-or-nothing (:class:`~pipeline.shards.ShardWriter`).

``--workers 0`` (the default) converts in this process. ``--workers N`` > 0 reads and checks images in
parallel with Ray Data: ``map_batches`` over ``from_items(records)`` on N tasks (``TaskPoolStrategy(N)``,
what the deprecated ``concurrency=N`` means), starting a local Ray instance when none is running; this process
still writes the shards. Both paths call the same per-record function and write the same rows in the same
order. ``cache-teacher --workers N`` runs the teacher in N Ray Data actors (``ActorPoolStrategy(N)``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from dive.config import MAX_IMAGE_PIXELS, ModelConfig
from dive.zeroshot import DEFAULT_TEMPLATES
from pipeline.data import stream_image_transform
from pipeline.ray_env import ray_session
from pipeline.shards import (
    BAD_LABEL,
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
    check_dataset,
    decode_image,
    is_webdataset,
    read_manifest,
    scan_tar,
    shard_files,
)

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

DEFAULT_MAX_PIXELS = MAX_IMAGE_PIXELS
DEFAULT_ROWS_PER_SHARD = 2048
DEFAULT_IMAGE_EXTS = ("jpg", "png", "webp")
_RAY_BATCH = 32  # source records per Ray Data batch (reading + decoding a few dozen images per task call)

PathLike = str | os.PathLike[str]


# --------------------------------------------------------------------------------------------------- records
def _record(
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


_DETAIL = {
    EMPTY: "0 bytes",
    UNDECODABLE: "corrupt, truncated or not an image",
}


def load_record(
    rec: Mapping[str, Any], *, kind: str, max_pixels: int, num_classes: int = 0
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
            text = _read_bytes(rec["path"], text_offset, rec["text_size"]).decode("utf-8", "replace")
        except OSError as err:
            return skip(MISSING, f"cannot read {rec['path']}: {err.strerror or err}")
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
        offset = rec.get("offset")
        data = _read_bytes(rec["path"], -1 if offset is None else offset, rec.get("size") or -1)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return skip(MISSING, f"no such image file {rec['path']}")
    except OSError as err:
        return skip(MISSING, f"cannot read {rec['path']}: {err.strerror or err}")
    _, reason = decode_image(data, max_pixels)
    if reason is not None:
        return skip(
            reason, f"more than {max_pixels:,} pixels" if reason == TOO_LARGE else _DETAIL.get(reason, "")
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
def _progress(total: int, desc: str) -> tqdm:
    disable = os.environ.get("DIVE_NO_PROGRESS") == "1" or not sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, disable=disable, dynamic_ncols=True)


def _report_skip(where: str, reason: str, detail: str) -> None:
    tqdm.write(
        f"skipped {where}: {reason} ({detail})" if detail else f"skipped {where}: {reason}", file=sys.stdout
    )


def _check_out(out: PathLike, overwrite: bool) -> Path:
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
        try:
            ok = "{}" in line and line.format("x") is not None
        except (IndexError, KeyError, ValueError):
            ok = False
        if not ok:
            raise DataError(f"{path}:{lineno}: template {line!r} needs exactly one '{{}}' for the class name")
        templates.append(line)
    return templates


def _templates(templates: Sequence[str] | PathLike | None) -> list[str]:
    if templates is None:
        return list(DEFAULT_TEMPLATES)
    if isinstance(templates, (str, os.PathLike)):
        return load_templates(templates)
    return list(templates)


def _classnames(classnames: Sequence[str] | PathLike) -> list[str]:
    if isinstance(classnames, (str, os.PathLike)):
        return [line for _, line in _read_lines(classnames, "class names")]
    return list(classnames)


def _convert(
    records: list[dict[str, Any]],
    out: Path,
    manifest: Manifest,
    *,
    max_pixels: int,
    rows_per_shard: int,
    overwrite: bool,
    workers: int,
    desc: str,
) -> Manifest:
    """Load every record (in process or through Ray Data), skip and report bad ones, write the rest."""
    if rows_per_shard < 1:
        raise DataError(f"--rows-per-shard must be >= 1, got {rows_per_shard}")
    if max_pixels < 1:
        raise DataError(f"--max-pixels must be >= 1, got {max_pixels}")
    kw = dict(kind=manifest.kind, max_pixels=max_pixels, num_classes=manifest.num_classes)
    column = "label" if manifest.kind == LABELLED else "caption"
    session = ray_session(workers) if workers > 0 else contextlib.nullcontext()
    with (
        ShardWriter(out, manifest, rows_per_shard, overwrite) as writer,
        session,
        _progress(len(records), desc) as bar,
    ):
        written = 0
        for res in _load_all(records, kw, workers):
            bar.update(1)
            if res["reason"] is not None:
                writer.skip(res["reason"])
                _report_skip(res["where"], res["reason"], res["detail"])
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


# ----------------------------------------------------------------------------------------------- imagefolder
def convert_imagefolder(
    src: PathLike,
    out: PathLike,
    *,
    templates: Sequence[str] | PathLike | None = None,
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    overwrite: bool = False,
    workers: int = 0,
) -> Manifest:
    """Class subfolders of ``src`` → a labelled set in ``out``.

    Classes are the subfolders sorted by name (label = index); files are found recursively (hidden ones
    ignored), keyed by their path relative to ``src``. ``templates``: a list, a file (one per line) or None
    for :data:`DEFAULT_TEMPLATES`.
    """
    root = Path(src)
    if not root.is_dir():
        what = "not a folder" if root.exists() else "no such folder"
        raise DataError(f"{root}: {what} (expected a folder with one subfolder of images per class)")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(
            f"{root}: no class folders (expected one subfolder of images per class, e.g. {root}/cat/)"
        )
    records = []
    for label, cls in enumerate(classes):
        for f in sorted((root / cls).rglob("*")):
            rel = f.relative_to(root)
            if f.is_file() and not any(part.startswith(".") for part in rel.parts):
                records.append(_record(rel.as_posix(), rel.as_posix(), str(f.absolute()), label=label))
    if not records:
        raise DataError(f"{root}: the class folders {classes} hold no files")
    out_path = _check_out(out, overwrite)
    manifest = Manifest(
        name=out_path.name,
        kind=LABELLED,
        classnames=[c.replace("_", " ") for c in classes],
        templates=_templates(templates),
        source=str(root.resolve()),
    )
    return _convert(
        records,
        out_path,
        manifest,
        max_pixels=max_pixels,
        rows_per_shard=rows_per_shard,
        overwrite=overwrite,
        workers=workers,
        desc="imagefolder",
    )


# -------------------------------------------------------------------------------------------------- captions
def _caption_rows(path: Path, image_column: str, caption_column: str) -> list[tuple[int, dict[str, Any]]]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None:
                raise DataError(f"{path}: empty CSV file (expected a header row naming the columns)")
            for column, flag in ((image_column, "--image-column"), (caption_column, "--caption-column")):
                if column not in reader.fieldnames:
                    raise DataError(
                        f"{path}: missing column '{column}' ({flag}); "
                        f"the header has columns {reader.fieldnames}"
                    )
            rows = []
            for row in reader:
                rows.append((reader.line_num, row))
        return rows
    if suffix in (".jsonl", ".ndjson"):
        rows = []
        with open(path, encoding="utf-8-sig") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(
                        f"{path}:{lineno}: not valid JSON ({err.msg}); expected one object per line"
                    ) from None
                if not isinstance(row, dict):
                    raise DataError(
                        f"{path}:{lineno}: expected a JSON object per line, got {type(row).__name__}"
                    )
                rows.append((lineno, row))
        for column, flag in ((image_column, "--image-column"), (caption_column, "--caption-column")):
            if rows and not any(column in row for _, row in rows):
                raise DataError(
                    f"{path}: missing column '{column}' ({flag}): no row has it; the first row has keys "
                    f"{sorted(rows[0][1])}"
                )
        return rows
    raise DataError(f"{path}: unknown captions format '{path.suffix}' (expected a .csv or .jsonl file)")


def convert_captions(
    file: PathLike,
    out: PathLike,
    *,
    image_column: str = "image",
    caption_column: str = "caption",
    base_dir: PathLike | None = None,
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    overwrite: bool = False,
    workers: int = 0,
) -> Manifest:
    """A CSV or JSONL file of (image path, caption) rows → a captioned set in ``out``.

    Relative image paths are resolved against ``base_dir`` (default: the file's folder); the key of a row is
    its image path as written. A row whose image file does not exist is skipped as ``missing``.
    """
    path = Path(file)
    if not path.is_file():
        raise DataError(f"{path}: no such captions file (expected a .csv or .jsonl file)")
    base = (
        Path(base_dir) if base_dir is not None else path.parent
    ).absolute()  # Ray workers may run elsewhere
    if not base.is_dir():
        raise DataError(
            f"{base}: --base-dir is not a folder (expected the folder image paths are relative to)"
        )
    rows = _caption_rows(path, image_column, caption_column)
    if not rows:
        raise DataError(f"{path}: no rows (expected one image path and caption per row)")
    records = []
    for lineno, row in rows:
        where = f"{path.name}:{lineno}"
        image = row.get(image_column)
        caption = row.get(caption_column)
        caption = None if caption is None else str(caption)
        if image is None or not str(image).strip():
            records.append(
                _record(where, where, caption=caption, missing=f"no image path in column '{image_column}'")
            )
            continue
        image = str(image).strip()
        image_path = Path(image) if Path(image).is_absolute() else base / image
        records.append(_record(image, f"{where} ({image})", str(image_path), caption=caption))
    out_path = _check_out(out, overwrite)
    manifest = Manifest(name=out_path.name, kind=CAPTIONED, source=str(path.resolve()))
    return _convert(
        records,
        out_path,
        manifest,
        max_pixels=max_pixels,
        rows_per_shard=rows_per_shard,
        overwrite=overwrite,
        workers=workers,
        desc="captions",
    )


# ------------------------------------------------------------------------------------------------ webdataset
def convert_wds(
    src: PathLike,
    out: PathLike,
    *,
    image_ext: Sequence[str] = DEFAULT_IMAGE_EXTS,
    caption_ext: str = "txt",
    label_ext: str | None = None,
    classnames: Sequence[str] | PathLike | None = None,
    templates: Sequence[str] | PathLike | None = None,
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    overwrite: bool = False,
    workers: int = 0,
) -> Manifest:
    """Webdataset tars (one ``.tar`` or a folder of ``*.tar``) → a captioned set in ``out``.

    Members are grouped into samples by key (the member path up to the first dot of its basename). The first
    member whose extension is in ``image_ext`` is the image; ``caption_ext`` holds the caption. When
    ``label_ext`` is given and no sample has a caption, the set is labelled instead: the member holds an
    integer label, ``classnames`` (a list, or a file with one name per line; line i = label i) is required,
    and labels outside it are skipped as ``bad_label``.
    """
    root = Path(src)
    if not root.exists():
        raise DataError(f"{root}: no such file or folder (expected a .tar file or a folder of *.tar shards)")
    tars = [root] if root.is_file() else sorted(root.glob("*.tar"))
    if not tars:
        raise DataError(f"{root}: no *.tar files (expected a folder of webdataset .tar shards)")
    image_exts = [e.lower().lstrip(".") for e in image_ext if e.strip()]
    caption_ext = caption_ext.lower().lstrip(".")
    label_ext = label_ext.lower().lstrip(".") if label_ext else None
    if not image_exts:
        raise DataError("--image-ext: expected at least one image extension, e.g. jpg,png,webp")
    scanned = [(tar, scan_tar(tar)) for tar in tars]
    if not any(any(e in exts for e in image_exts) for _, s in scanned for exts in s.values()):
        raise DataError(
            f"{root}: no sample in {len(tars)} tar file(s) has an image member "
            f"({', '.join('.' + e for e in image_exts)}; set --image-ext)"
        )
    has_captions = any(caption_ext in exts for _, s in scanned for exts in s.values())
    kind = LABELLED if label_ext and not has_captions else CAPTIONED
    names: list[str] = []
    if kind == LABELLED:
        if classnames is None:
            raise DataError(
                f"{root}: the tars hold labels (.{label_ext}) and no captions (.{caption_ext}); a labelled "
                "set needs --classnames FILE (one class name per line; line i names label i)"
            )
        names = _classnames(classnames)
    text_ext = label_ext if kind == LABELLED else caption_ext
    records = []
    for tar, samples in scanned:
        for key, exts in samples.items():
            where = f"{tar.name}:{key}"
            image = next((exts[e] for e in image_exts if e in exts), None)
            text = exts.get(text_ext or "", (-1, -1))
            missing = (
                None if image is not None else f"no image member ({', '.join('.' + e for e in image_exts)})"
            )
            records.append(
                _record(
                    key,
                    where,
                    str(tar.absolute()),
                    offset=image[0] if image else -1,
                    size=image[1] if image else -1,
                    text_offset=text[0],
                    text_size=text[1],
                    missing=missing,
                )
            )
    out_path = _check_out(out, overwrite)
    manifest = Manifest(name=out_path.name, kind=kind, source=str(root.resolve()))
    if kind == LABELLED:
        manifest.classnames = names
        manifest.templates = _templates(templates)
    return _convert(
        records,
        out_path,
        manifest,
        max_pixels=max_pixels,
        rows_per_shard=rows_per_shard,
        overwrite=overwrite,
        workers=workers,
        desc="wds",
    )


# --------------------------------------------------------------------------------------------------- teacher
def embed_table(
    table: pa.Table, model: Any, preprocess: Any, tokenizer: Any, dim: int, max_pixels: int
) -> pa.Table:
    """Teacher embeddings of one batch of shard rows: the per-batch function of both paths of cache_teacher.

    Returns the input columns plus ``teacher_image`` / ``teacher_text`` (float32, D) and ``_skip`` (a skip
    reason for rows whose image does not decode or whose caption is empty; their vectors are zeros).
    """
    import torch

    images = table.column("image").to_pylist()
    captions = table.column("caption").to_pylist()
    reasons: list[str | None] = [None] * len(images)
    pixels, keep = [], []
    for i, (data, caption) in enumerate(zip(images, captions, strict=True)):
        if caption is None or not str(caption).strip():
            reasons[i] = NO_CAPTION
            continue
        img, reason = decode_image(data, max_pixels)
        if reason is not None:
            reasons[i] = reason
            continue
        pixels.append(preprocess(img))
        keep.append(i)
    img_emb = np.zeros((len(images), dim), np.float32)
    txt_emb = np.zeros((len(images), dim), np.float32)
    if keep:
        with torch.no_grad():
            img_emb[keep] = model.encode_image(torch.stack(pixels), normalize=True).float().cpu().numpy()
            tokens = tokenizer([str(captions[i]) for i in keep])
            txt_emb[keep] = model.encode_text(tokens, normalize=True).float().cpu().numpy()
    table = table.drop_columns(
        [c for c in ("teacher_image", "teacher_text", "_skip") if c in table.column_names]
    )
    for name, values in (("teacher_image", img_emb), ("teacher_text", txt_emb)):
        table = table.append_column(
            name, pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), dim)
        )
    return table.append_column("_skip", pa.array(reasons, type=pa.string()))


class TeacherEmbedder:
    """Callable class for Ray Data ``map_batches``: builds the teacher once per actor.

    ``state`` (a state dict, or an ObjectRef to one) replaces the built weights, so every actor runs exactly
    the driver's teacher even for a random-init model; the fingerprint is checked against
    ``expect_fingerprint``.
    """

    def __init__(
        self,
        model_cfg: ModelConfig,
        state: Any = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        expect_fingerprint: str = "",
    ) -> None:
        from dive.models import build_model, embed_dim, fingerprint

        bundle = build_model(model_cfg)
        if state is not None:
            import ray

            if isinstance(state, ray.ObjectRef):
                state = ray.get(state)
            bundle.model.load_state_dict(state)
        self.model = bundle.model.eval().requires_grad_(False)
        if expect_fingerprint and fingerprint(self.model) != expect_fingerprint:
            raise RuntimeError(
                f"teacher on this worker is {fingerprint(self.model)}, expected {expect_fingerprint}"
            )
        self.preprocess = stream_image_transform(bundle)
        self.tokenizer = bundle.tokenizer
        self.dim = embed_dim(self.model)
        self.max_pixels = max_pixels

    def __call__(self, batch: pa.Table) -> pa.Table:
        return embed_table(batch, self.model, self.preprocess, self.tokenizer, self.dim, self.max_pixels)


def _build_teacher(model_cfg: ModelConfig) -> Any:
    """build_model, with an unknown name or unloadable weights as a one-line DataError."""
    import open_clip

    from dive import litemini
    from dive.models import LOCAL_DIR, build_model, register_model_configs

    register_model_configs()
    name = model_cfg.name
    known = name.startswith(LOCAL_DIR) or litemini.is_litemini_name(name)
    if not known and open_clip.get_model_config(name) is None:
        raise DataError(
            f"--model-name: unknown open_clip model '{name}' (expected a name from open_clip.list_models(), "
            f"'dive-tiny', 'lite-minilm[-<px>]', or '{LOCAL_DIR}<export folder>')"
        )
    try:
        return build_model(model_cfg)
    except (ValueError, RuntimeError, OSError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise DataError(
            f"cannot build the teacher {name!r} (pretrained {model_cfg.pretrained!r}): {first}"
        ) from None


def cache_teacher(
    dataset: PathLike,
    model_cfg: ModelConfig,
    batch_size: int = 64,
    workers: int = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Manifest:
    """Add the frozen teacher's L2-normalised embeddings of every row to a captioned set, in place.

    The set is rewritten all-or-nothing with float32 ``teacher_image`` / ``teacher_text`` columns (size D) and
    ``teacher_fingerprint`` / ``teacher_dim`` in the manifest; rows, keys, order, shard size and the other
    manifest fields are kept. Rows whose image does not decode (or whose caption is empty) are dropped and
    added to ``skipped``. ``workers`` > 0 runs the teacher in that many Ray Data actors (``map_batches`` over
    ``read_parquet``); the embeddings equal the in-process ones.
    """
    from dive.models import embed_dim, fingerprint

    folder = Path(dataset)
    if folder.is_dir() and is_webdataset(folder):
        raise DataError(
            f"{folder}: holds webdataset tars; the teacher cache is written into Parquet shards, so convert "
            f"first: dive data wds {folder} <out> && dive data cache-teacher <out>"
        )
    manifest = check_dataset(folder, CAPTIONED)
    if batch_size < 1:
        raise DataError(f"--batch-size must be >= 1, got {batch_size}")
    files = shard_files(folder)
    columns = ["image", "caption"] + (["key"] if all("key" in pq.read_schema(f).names for f in files) else [])
    rows_per_shard = max(pq.ParquetFile(f).metadata.num_rows for f in files)
    bundle = _build_teacher(model_cfg)
    model = bundle.model.eval().requires_grad_(False)
    teacher_fp, dim = fingerprint(model), embed_dim(model)
    new = replace(manifest, teacher_fingerprint=teacher_fp, teacher_dim=dim)
    session = ray_session(workers) if workers > 0 else contextlib.nullcontext()
    with ShardWriter(folder, new, rows_per_shard, overwrite=True) as writer, session:
        writer.skipped.update({k: v for k, v in manifest.skipped.items() if k != "total"})
        if workers > 0:
            import ray

            ds = ray.data.read_parquet([str(f) for f in files], columns=columns)
            ds = ds.map_batches(
                TeacherEmbedder,
                fn_constructor_kwargs=dict(
                    model_cfg=model_cfg,
                    state=ray.put(model.state_dict()),
                    max_pixels=max_pixels,
                    expect_fingerprint=teacher_fp,
                ),
                batch_size=batch_size,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=workers),  # = concurrency=workers
            )
            ds.context.execution_options.preserve_order = True  # keep the rows' order
            batches: Iterator[pa.Table] = ds.iter_batches(batch_format="pyarrow", batch_size=None)
        else:

            def local() -> Iterator[pa.Table]:
                for f in files:
                    for rb in pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=columns):
                        table = pa.Table.from_batches([rb])
                        yield embed_table(
                            table, model, stream_image_transform(bundle), bundle.tokenizer, dim, max_pixels
                        )

            batches = local()
        written = seen = 0
        with _progress(manifest.num_rows, "cache-teacher") as bar:
            for table in batches:
                bar.update(table.num_rows)
                for row in table.to_pylist():
                    reason = row.pop("_skip")
                    seen += 1
                    if reason is not None:
                        writer.skip(reason)
                        detail = "the caption is empty" if reason == NO_CAPTION else _DETAIL.get(reason, "")
                        _report_skip(row.get("key") or f"row {seen - 1}", reason, detail)
                        continue
                    writer.add(row)
                    written += 1
        if written == 0:
            raise DataError(
                f"{folder}: no row has a decodable image and a caption; the dataset is left unchanged"
            )
    return writer.manifest


# ------------------------------------------------------------------------------------------------------- CLI
def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="output folder for the shards and dataset.json")
    p.add_argument(
        "--rows-per-shard", type=int, default=DEFAULT_ROWS_PER_SHARD, help="rows per Parquet shard"
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help="skip images with more pixels (default %(default)s)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="0: convert in this process (default); N > 0: read and check images with Ray Data "
        "(N parallel tasks; starts a local Ray instance unless one is running)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dive data",
        description="Convert image sources into Parquet shards + dataset.json; cache teacher embeddings. "
        "Bad samples are skipped, printed and counted; a bad source is an error before anything is written. "
        "Set DIVE_NO_PROGRESS=1 to hide the progress bar.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("imagefolder", help="class subfolders of images -> a labelled set")
    p.add_argument("src", help="folder with one subfolder of images per class")
    _common(p)
    p.add_argument("--templates", help="prompt templates file: one per line, with {} for the class name")

    p = sub.add_parser("captions", help="CSV/JSONL of image paths and captions -> a captioned set")
    p.add_argument("file", help="a .csv (with a header row) or .jsonl file")
    _common(p)
    p.add_argument("--image-column", default="image", help="column with the image path (default %(default)s)")
    p.add_argument(
        "--caption-column", default="caption", help="column with the caption (default %(default)s)"
    )
    p.add_argument("--base-dir", help="folder image paths are relative to (default: the file's folder)")

    p = sub.add_parser("wds", help="webdataset .tar shards -> a captioned (or labelled) set")
    p.add_argument("src", help="a .tar file or a folder of *.tar files (uncompressed)")
    _common(p)
    p.add_argument(
        "--image-ext", default=",".join(DEFAULT_IMAGE_EXTS), help="image extensions, in order of preference"
    )
    p.add_argument("--caption-ext", default="txt", help="caption member extension (default %(default)s)")
    p.add_argument(
        "--label-ext", help="label member extension (e.g. cls): a labelled set when there are no captions"
    )
    p.add_argument("--classnames", help="labelled sets: class names file, one per line (line i = label i)")
    p.add_argument("--templates", help="labelled sets: prompt templates file, one per line with {}")

    p = sub.add_parser(
        "cache-teacher", help="add the frozen teacher's embeddings to a captioned set, in place"
    )
    p.add_argument("dataset", help="folder of captioned shards (rewritten all-or-nothing)")
    p.add_argument(
        "--model-name", required=True, help="open_clip model name, dive-tiny, or local-dir:<folder>"
    )
    p.add_argument(
        "--pretrained", default="", help="open_clip pretrained tag or weights file ('' = random init)"
    )
    p.add_argument(
        "--batch-size", type=int, default=64, help="rows per teacher forward pass (default %(default)s)"
    )
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="skip images with more pixels")
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="0: run the teacher in this process (default); N > 0: N Ray Data actors",
    )
    return parser


def _summary(
    command: str, manifest: Manifest, out: PathLike, seconds: float, skipped: Mapping[str, int]
) -> str:
    total = sum(skipped.values())
    by_reason = ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items()))
    what = f"{manifest.kind}, {manifest.num_classes} classes" if manifest.kind == LABELLED else manifest.kind
    if command == "cache-teacher":
        what += f", teacher {manifest.teacher_fingerprint}, D={manifest.teacher_dim}"
    skip_text = f"skipped {total}" + (f" ({by_reason})" if total else "")
    return f"{command}: wrote {manifest.num_rows} rows ({what}) to {out}; {skip_text}; {seconds:.1f} s"


def main(argv: Sequence[str] | None = None) -> int:
    """``dive data COMMAND …``; returns the exit status (2 with one ``error: …`` line for a bad source)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2
    common = {}
    if args.command != "cache-teacher":
        common = dict(
            rows_per_shard=args.rows_per_shard,
            max_pixels=args.max_pixels,
            overwrite=args.overwrite,
            workers=args.workers,
        )
    start = time.perf_counter()
    try:
        if args.command == "imagefolder":
            manifest = convert_imagefolder(args.src, args.out, templates=args.templates, **common)
            out, skipped = args.out, manifest.skipped
        elif args.command == "captions":
            manifest = convert_captions(
                args.file,
                args.out,
                image_column=args.image_column,
                caption_column=args.caption_column,
                base_dir=args.base_dir,
                **common,
            )
            out, skipped = args.out, manifest.skipped
        elif args.command == "wds":
            manifest = convert_wds(
                args.src,
                args.out,
                image_ext=[e for e in args.image_ext.split(",") if e.strip()],
                caption_ext=args.caption_ext,
                label_ext=args.label_ext,
                classnames=args.classnames,
                templates=args.templates,
                **common,
            )
            out, skipped = args.out, manifest.skipped
        else:
            before = (
                read_manifest(args.dataset).skipped if Path(args.dataset, "dataset.json").is_file() else {}
            )
            manifest = cache_teacher(
                args.dataset,
                ModelConfig(name=args.model_name, pretrained=args.pretrained),
                batch_size=args.batch_size,
                workers=args.workers,
                max_pixels=args.max_pixels,
            )
            out = args.dataset
            skipped = {
                k: v - before.get(k, 0) for k, v in manifest.skipped.items() if v - before.get(k, 0) > 0
            }
    except DataError as err:
        print("error: " + str(err).replace("\n", " "), file=sys.stderr)
        return 2
    skipped = {k: v for k, v in skipped.items() if k != "total"}
    print(_summary(args.command, manifest, out, time.perf_counter() - start, skipped))
    return 0


if __name__ == "__main__":
    sys.exit(main())
