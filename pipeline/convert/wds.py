"""``dive data wds``: webdataset tars → a captioned set (or a labelled one, with ``--label-ext``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline import storage
from pipeline.convert.common import (
    DEFAULT_IMAGE_EXTS,
    DEFAULT_MAX_PIXELS,
    DEFAULT_ROWS_PER_SHARD,
    PathLike,
    check_out,
    convert_records,
    record,
    resolve_classnames,
    resolve_templates,
)
from pipeline.data.format import CAPTIONED, LABELLED, DataError, Manifest, scan_tar


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
    encoding: str = "utf-8",
) -> Manifest:
    """Webdataset tars (one ``.tar`` or a folder of ``*.tar``) → a captioned set in ``out``.

    Members are grouped into samples by key (the member path up to the first dot of its basename). The first
    member whose extension is in ``image_ext`` is the image; ``caption_ext`` holds the caption. When
    ``label_ext`` is given and no sample has a caption, the set is labelled instead: the member holds an
    integer label, ``classnames`` (a list, or a file with one name per line; line i = label i) is required,
    and labels outside it are skipped as ``bad_label``. Caption members are decoded as ``encoding``; one that
    is not valid text in it is skipped as ``bad_text`` (never stored as mojibake), as is a 0-byte image member
    (``empty``) — each skips that sample only.
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
        names = resolve_classnames(classnames)
    records = _records(scanned, image_exts, label_ext if kind == LABELLED else caption_ext)
    out_path = check_out(out, overwrite)
    manifest = Manifest(name=storage.basename(out_path), kind=kind, source=str(root.resolve()))
    if kind == LABELLED:
        manifest.classnames = names
        manifest.templates = resolve_templates(templates)
    return convert_records(
        records, out_path, manifest, "wds", max_pixels, rows_per_shard, overwrite, workers, encoding
    )


def _records(
    scanned: list[tuple[Path, Any]], image_exts: list[str], text_ext: str | None
) -> list[dict[str, Any]]:
    """One source record per sample key: where its image (and caption or label) member lies in its tar."""
    records = []
    for tar, samples in scanned:
        for key, exts in samples.items():
            image = next((exts[e] for e in image_exts if e in exts), None)
            text = exts.get(text_ext or "", (-1, -1))
            missing = (
                None if image is not None else f"no image member ({', '.join('.' + e for e in image_exts)})"
            )
            records.append(
                record(
                    key,
                    f"{tar.name}:{key}",
                    str(tar.absolute()),
                    offset=image[0] if image else -1,
                    size=image[1] if image else -1,
                    text_offset=text[0],
                    text_size=text[1],
                    missing=missing,
                )
            )
    return records
