"""``dive data captions``: a CSV or JSONL file of (image path, caption) rows → a captioned set."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from pipeline import storage
from pipeline.convert.common import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_ROWS_PER_SHARD,
    PathLike,
    check_out,
    convert_records,
    read_text,
    record,
)
from pipeline.data.format import CAPTIONED, DataError, Manifest


def _caption_rows(
    path: Path, image_column: str, caption_column: str, encoding: str = "utf-8-sig"
) -> list[tuple[int, dict[str, Any]]]:
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".ndjson"):
        raise DataError(f"{path}: unknown captions format '{path.suffix}' (expected a .csv or .jsonl file)")
    text = read_text(path, encoding)
    if suffix == ".csv":
        with io.StringIO(text, newline="") as fh:
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
    rows = []
    with io.StringIO(text) as fh:
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
                raise DataError(f"{path}:{lineno}: expected a JSON object per line, got {type(row).__name__}")
            rows.append((lineno, row))
    for column, flag in ((image_column, "--image-column"), (caption_column, "--caption-column")):
        if rows and not any(column in row for _, row in rows):
            raise DataError(
                f"{path}: missing column '{column}' ({flag}): no row has it; the first row has keys "
                f"{sorted(rows[0][1])}"
            )
    return rows


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
    encoding: str = "utf-8-sig",
    allow_outside_base: bool = False,
) -> Manifest:
    """A CSV or JSONL file of (image path, caption) rows → a captioned set in ``out``.

    ``encoding`` is the file's text encoding (default UTF-8, with or without a byte-order mark).

    Relative image paths are resolved against ``base_dir`` (default: the file's folder); the key of a row is
    its image path as written. A row whose image file does not exist is skipped as ``missing``. An image path
    that resolves (symlinks followed) outside ``base_dir`` — ``../../etc/hostname``, an absolute path elsewhere,
    a link leading out — is an error before anything is written, unless ``allow_outside_base``: a captions file
    describes a collection of images, and one that reaches out of it is a wrong base folder or a file written
    for another machine, which would otherwise copy whatever it names on this one into the dataset.
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
    rows = _caption_rows(path, image_column, caption_column, encoding)
    if not rows:
        raise DataError(f"{path}: no rows (expected one image path and caption per row)")
    records, outside = [], []
    root = base.resolve()
    for lineno, row in rows:
        where = f"{path.name}:{lineno}"
        image = row.get(image_column)
        caption = row.get(caption_column)
        caption = None if caption is None else str(caption)
        if image is None or not str(image).strip():
            records.append(
                record(where, where, caption=caption, missing=f"no image path in column '{image_column}'")
            )
            continue
        image = str(image).strip()
        image_path = Path(image) if Path(image).is_absolute() else base / image
        if not allow_outside_base:
            resolved = image_path.resolve()
            if not resolved.is_relative_to(root):
                outside.append((lineno, image, resolved))
        records.append(record(image, f"{where} ({image})", str(image_path), caption=caption))
    if outside:
        lineno, image, resolved = outside[0]
        more = f" (and {len(outside) - 1} more row(s))" if len(outside) > 1 else ""
        raise DataError(
            f"{path}:{lineno}: image path {image!r} resolves to {resolved}, outside the base folder {root} "
            f"(--base-dir; default: the captions file's folder){more}; pass --allow-outside-base if these "
            "images are meant to be read"
        )
    out_path = check_out(out, overwrite)
    manifest = Manifest(name=storage.basename(out_path), kind=CAPTIONED, source=str(path.resolve()))
    return convert_records(
        records, out_path, manifest, "captions", max_pixels, rows_per_shard, overwrite, workers
    )
