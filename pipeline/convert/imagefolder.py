"""``dive data imagefolder``: one subfolder of images per class → a labelled set."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from pipeline import storage
from pipeline.convert.common import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_ROWS_PER_SHARD,
    PathLike,
    check_out,
    convert_records,
    record,
    resolve_templates,
)
from pipeline.data.format import LABELLED, DataError, Manifest, check_classnames


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
    ignored), keyed by their path relative to ``src``; an entry that is not a file (a broken symlink, a FIFO)
    is skipped as ``missing`` and counted in the manifest's ``skipped``. ``templates``: a list, a file (one per
    line) or None for :data:`DEFAULT_TEMPLATES`.
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
    # Folder names become class names with "_" read as a space, so cat_x/ and "cat x"/ collide as well.
    classnames = [c.replace("_", " ") for c in classes]
    check_classnames(classnames, root, [f"folder {c}/" for c in classes])
    records = []
    for label, cls in enumerate(classes):
        for f in sorted((root / cls).rglob("*")):
            rel = f.relative_to(root)
            if any(part.startswith(".") for part in rel.parts) or f.is_dir():
                continue
            key = rel.as_posix()
            records.append(record(key, key, str(f.absolute()), label=label, missing=_not_a_file(f)))
    if not records:
        raise DataError(f"{root}: the class folders {classes} hold no files")
    out_path = check_out(out, overwrite)
    manifest = Manifest(
        name=storage.basename(out_path),
        kind=LABELLED,
        classnames=classnames,
        templates=resolve_templates(templates),
        source=str(root.resolve()),
    )
    return convert_records(
        records, out_path, manifest, "imagefolder", max_pixels, rows_per_shard, overwrite, workers
    )


def _not_a_file(f: Path) -> str | None:
    """Why an entry of a class folder holds no image file, or None for a regular file (or a link to one).

    A broken symlink (its target moved or never copied) is a sample the user meant to include: it is skipped
    as ``missing`` and counted, like an image file that cannot be read, not dropped unseen. A FIFO, socket or
    device is counted the same way, and never opened (reading a FIFO would block the conversion).
    """
    if f.is_file():
        return None
    if f.is_symlink():
        try:
            target = os.readlink(f)
        except OSError:
            target = "?"
        if f.exists():
            return f"symlink to {target}, which is not a regular file"
        return f"broken symlink: its target {target} does not exist (or the links form a loop)"
    return "not a regular file (a FIFO, socket or device)"
