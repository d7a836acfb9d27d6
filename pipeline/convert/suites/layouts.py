"""Readers for the layouts several recipes share: class folders, CLIP_benchmark's webdataset folders, CoOp splits.

Each returns :func:`pipeline.convert.common.record` dicts with the label already set, so the converter knows
every row's class before it reads an image, and stores the image's original bytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.convert.common import record
from pipeline.data.format import DataError, scan_tar

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
WDS_IMAGE_EXTS = ("webp", "png", "jpg", "jpeg")  # CLIP_benchmark's order of preference


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def image_files(folder: Path) -> list[Path]:
    """Image files under ``folder``, recursively, sorted; hidden files and folders skipped."""
    return sorted(
        f
        for f in folder.rglob("*")
        if is_image(f) and not any(p.startswith(".") for p in f.relative_to(folder).parts) and f.is_file()
    )


def file_record(root: Path, path: Path, label: int) -> dict[str, Any]:
    key = path.relative_to(root).as_posix()
    return record(key, key, str(path.absolute()), label=label)


def class_folders(
    root: Path,
    folder_labels: Mapping[str, int],
    what: str,
    *,
    allow_unknown: bool = False,
    skip: Collection[str] = (),
) -> list[dict[str, Any]]:
    """Records for ``root/<folder>/**/image`` with ``folder_labels[folder]`` as the label.

    A subfolder that is not a known class is an error naming it (a wrong root or a wrong dataset), unless
    ``allow_unknown``; a known class folder with no image is an error too (a failed extraction). Folders named in
    ``skip`` are left out silently (a folder the dataset ships that is not a class: Caltech 101's
    ``BACKGROUND_Google``)."""
    if not root.is_dir():
        raise DataError(f"{root}: no such folder (expected {what})")
    records: list[dict[str, Any]] = []
    folders = sorted(
        d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and d.name not in skip
    )
    if not folders:
        raise DataError(f"{root}: no class folders (expected {what})")
    for folder in folders:
        label = folder_labels.get(folder.name)
        if label is None:
            if allow_unknown:
                continue
            known = ", ".join(sorted(folder_labels)[:3])
            raise DataError(
                f"{folder}: {folder.name!r} is not a class of {what} (expected names like {known}, …)"
            )
        files = image_files(folder)
        if not files:
            raise DataError(f"{folder}: the class folder holds no images (expected {what})")
        records += [file_record(root, f, label) for f in files]
    return records


# --------------------------------------------------------------------------------------------------- CLIP_benchmark
@dataclass
class WdsFolder:
    records: list[dict[str, Any]]
    classnames: list[str]
    templates: list[str]


def is_clip_benchmark_wds(root: Path, split: str) -> bool:
    """CLIP_benchmark's export: ``classnames.txt`` beside ``<split>/*.tar`` (``<split>/nshards.txt``)."""
    return (
        (root / "classnames.txt").is_file() and (root / split).is_dir() and any((root / split).glob("*.tar"))
    )


def _text_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_clip_benchmark_wds(root: Path, split: str) -> WdsFolder:
    """A ``wds_<name>`` folder as CLIP_benchmark exports it (``clip_benchmark_export_wds``, the HF ``djghosh``
    repos): ``classnames.txt``, ``zeroshot_classification_templates.txt`` (``{c}``), ``<split>/{0..n-1}.tar`` with
    ``<key>.{webp,png,jpg,jpeg}`` + ``<key>.cls``. Labels are read from the tars' ``.cls`` members up front."""
    names_file = root / "classnames.txt"
    if not names_file.is_file():
        raise DataError(
            f"{names_file}: missing (a CLIP_benchmark webdataset folder has one class name per line)"
        )
    classnames = _text_lines(names_file)
    templates_file = root / "zeroshot_classification_templates.txt"
    templates = _text_lines(templates_file) if templates_file.is_file() else []
    shard_dir = root / split
    nshards = shard_dir / "nshards.txt"
    if nshards.is_file():
        count = int(nshards.read_text().strip())
        tars = [shard_dir / f"{i}.tar" for i in range(count)]
        missing = [t for t in tars if not t.is_file()]
        if missing:
            raise DataError(f"{missing[0]}: missing ({nshards} says {count} shards)")
    else:
        tars = sorted(shard_dir.glob("*.tar"), key=lambda t: (len(t.stem), t.stem))
    if not tars:
        raise DataError(f"{shard_dir}: no *.tar shards (expected CLIP_benchmark's <split>/0.tar …)")
    records = []
    for tar in tars:
        members = scan_tar(tar)
        with open(tar, "rb") as fh:
            for key, exts in members.items():
                image = next((exts[e] for e in WDS_IMAGE_EXTS if e in exts), None)
                if image is None or "cls" not in exts:
                    continue
                fh.seek(exts["cls"][0])
                text = fh.read(exts["cls"][1]).decode("utf-8", "replace").strip()
                try:
                    label = int(text)
                except ValueError:
                    raise DataError(
                        f"{tar}: member {key}.cls holds {text[:40]!r}, expected an integer label"
                    ) from None
                if not 0 <= label < len(classnames):
                    raise DataError(
                        f"{tar}: member {key}.cls holds label {label}, outside the {len(classnames)} classes of "
                        f"{names_file}"
                    )
                records.append(
                    record(
                        key,
                        f"{tar.name}:{key}",
                        str(tar.absolute()),
                        offset=image[0],
                        size=image[1],
                        label=label,
                    )
                )
    return WdsFolder(records, classnames, templates)


# --------------------------------------------------------------------------------------------------- CoOp
def read_coop_split(
    split_file: Path, image_root: Path, split: str, rename: Callable[[str], str] = str
) -> tuple[list[dict[str, Any]], list[str]]:
    """CoOp's ``split_zhou_<Name>.json``: ``{"train"|"val"|"test": [[impath, label, classname], …]}`` with image
    paths relative to ``image_root``. Class names are taken from the file (label order), through ``rename``."""
    if not split_file.is_file():
        raise DataError(f"{split_file}: no such split file (expected CoOp's split_zhou_<Name>.json)")
    try:
        data = json.loads(split_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{split_file}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or split not in data:
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise DataError(f"{split_file}: no {split!r} list (expected keys train, val, test; got {keys})")
    names: dict[int, str] = {}
    records = []
    for i, entry in enumerate(data[split]):
        if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[1], int)):
            raise DataError(
                f"{split_file}: {split}[{i}] is {entry!r:.80}, expected [image path, label, class name]"
            )
        impath, label, cname = entry
        if names.setdefault(label, cname) != cname:
            raise DataError(f"{split_file}: label {label} is named both {names[label]!r} and {cname!r}")
        path = image_root / impath
        rec = record(impath, impath, str(path.absolute()), label=label)
        if not path.is_file():
            rec["missing"] = f"no such image file {path}"
        records.append(rec)
    if not names:
        raise DataError(f"{split_file}: the {split!r} list is empty")
    if sorted(names) != list(range(len(names))):
        raise DataError(f"{split_file}: labels are not 0 … {len(names) - 1} (got {sorted(names)[:5]} …)")
    return records, [rename(names[i]) for i in range(len(names))]


def first_existing(root: Path, candidates: Sequence[str]) -> Path | None:
    return next((root / c for c in candidates if (root / c).exists()), None)
