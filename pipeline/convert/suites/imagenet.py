"""ImageNet and its five distribution shifts, from the layouts they ship in.

* ``imagenet``: the official ILSVRC tree (Kaggle's ``ILSVRC/Data/CLS-LOC`` with ``LOC_val_solution.csv``, or the
  flat ``ILSVRC2012_img_val/`` with a label file), torchvision's ``train|val/<wnid>/`` folders, or CLIP_benchmark's
  ``wds_imagenet1k``. Labels follow timm's wnid order (``imagenet_synsets.txt``), names are CLIP's.
* ``imagenet-v2``: ``imagenetv2-matched-frequency-format-val/<0…999>/``, the folder name *is* the label.
* ``imagenet-r`` / ``imagenet-a``: 200 wnid folders each; labels 0…199 in timm's order, scored with the 1,000-class
  ImageNet head restricted to those classes (timm's ``imagenet_{r,a}_indices.txt``).
* ``imagenet-sketch``: ``sketch/<wnid>/``, all 1,000 classes.
* ``objectnet``: ``objectnet-1.0/images/<folder>/`` + ``mappings/``; the 113 classes that map to ImageNet, each
  scored by the max ImageNet logit over its classes, images cropped by 2 pixels a side (FLYP / WiSE-FT protocol).

Every shifted set also reads its CLIP_benchmark ``wds_<name>`` export.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dive.heads import LabelMap
from pipeline.convert.suites import names
from pipeline.convert.suites.layouts import (
    class_folders,
    file_record,
    is_clip_benchmark_wds,
    is_image,
    read_clip_benchmark_wds,
)
from pipeline.convert.suites.registry import Options, Recipe, Source, register
from pipeline.data.format import DataError

TEMPLATE_SET = "openai_imagenet"
WDS = "wds"
FOLDERS = "folders"
ILSVRC = "ilsvrc"
TORCHVISION = "torchvision"
OFFICIAL = "official"

LOC_SOLUTION = "LOC_val_solution.csv"
DEVKIT_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
DEVKIT_META = "meta.mat"

CLASSNAMES_SOURCE = "open_clip IMAGENET_CLASSNAMES"
WNIDS_SOURCE = "timm imagenet_synsets.txt"


# --------------------------------------------------------------------------------------------------- shared
def _wnid_labels() -> dict[str, int]:
    return {w: i for i, w in enumerate(names.imagenet_wnids())}


def _imagenet_source(
    records: list[dict[str, Any]], layout: str, split: str, protocol: dict[str, str]
) -> Source:
    """A set scored on ImageNet's own 1,000 classes (ImageNet, -V2, -Sketch)."""
    return Source(
        records=records,
        classnames=names.imagenet_classnames(),
        templates=names.template_set(TEMPLATE_SET),
        layout=layout,
        split=split,
        template_set=TEMPLATE_SET,
        shared_names=list(names.IMAGENET_SHARED_NAMES),
        protocol={"classnames": CLASSNAMES_SOURCE, **protocol},
    )


def _imagenet_head() -> dict[str, Any]:
    """The fields of a set scored with the 1,000-class ImageNet head (the groups are the caller's)."""
    return dict(
        head="imagenet",
        head_classnames=names.imagenet_classnames(),
        head_templates=names.template_set(TEMPLATE_SET),
        shared_names=list(names.IMAGENET_SHARED_NAMES),
    )


def _has_subfolders(folder: Path) -> bool:
    return folder.is_dir() and any(d.is_dir() and not d.name.startswith(".") for d in folder.iterdir())


def _flat_images(folder: Path) -> list[Path]:
    """Images directly in ``folder`` (ImageNet's flat validation folder), sorted."""
    if not folder.is_dir():
        return []
    return sorted(f for f in folder.iterdir() if f.is_file() and is_image(f))


def _pick_folder(src: Path, candidates: Sequence[str]) -> Path:
    """``src/<candidate>`` for the first candidate that is a folder, else ``src`` itself."""
    return next((src / c for c in candidates if (src / c).is_dir()), src)


def _wds(
    src: Path, split: str, expected: Sequence[str], what: str
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """A CLIP_benchmark ``wds_<name>`` folder whose ``classnames.txt`` must list ``expected`` (label order)."""
    folder = read_clip_benchmark_wds(src, split)
    if folder.classnames != list(expected):
        diff = next(
            (i for i, (a, b) in enumerate(zip(folder.classnames, expected, strict=False)) if a != b),
            min(len(folder.classnames), len(expected)),
        )
        got = folder.classnames[diff] if diff < len(folder.classnames) else "(end of file)"
        want = expected[diff] if diff < len(expected) else "(no more classes)"
        raise DataError(
            f"{src / 'classnames.txt'}: not the class list of {what} ({len(folder.classnames)} names, expected "
            f"{len(expected)}; line {diff + 1} is {got!r}, expected {want!r}); is this the right wds_ folder?"
        )
    return folder.records, {
        "labels": f"CLIP_benchmark webdataset {split}/*.tar .cls",
        "wds_classnames": "classnames.txt (checked)",
    }


# --------------------------------------------------------------------------------------------------- ImageNet
def _read_loc_solution(path: Path, wnids: dict[str, int]) -> dict[str, int]:
    """Kaggle's ``LOC_val_solution.csv``: ``ImageId,PredictionString`` whose first token is the wnid."""
    labels: dict[str, int] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
            raise DataError(f"{path}: expected the header 'ImageId,PredictionString', got {header!r:.80}")
        for line, row in enumerate(reader, start=2):
            if not row or not any(cell.strip() for cell in row):
                continue
            tokens = row[1].split() if len(row) > 1 else []
            if not tokens:
                raise DataError(
                    f"{path}: line {line} has no prediction string (expected '<ImageId>,<wnid> …')"
                )
            labels[row[0].strip()] = _wnid_label(tokens[0], wnids, path, line)
    return labels


def _wnid_label(wnid: str, wnids: dict[str, int], path: Path, line: int) -> int:
    label = wnids.get(wnid)
    if label is None:
        raise DataError(
            f"{path}: line {line}: {wnid!r} is not one of ImageNet's 1,000 wnids ({WNIDS_SOURCE})"
        )
    return label


def _read_pairs(path: Path, wnids: dict[str, int]) -> dict[str, int]:
    """A two-column ``<file name> <wnid>`` text file (whitespace or comma separated)."""
    labels: dict[str, int] = {}
    for line, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        parts = text.replace(",", " ").split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) != 2:
            raise DataError(f"{path}: line {line} is {text.strip()!r:.80}, expected '<file name> <wnid>'")
        labels[Path(parts[0]).stem] = _wnid_label(parts[1], wnids, path, line)
    return labels


def _read_devkit_meta(meta: Path) -> dict[int, str]:
    """The devkit's ``data/meta.mat``: its ``synsets`` struct array maps ILSVRC2012_ID → WNID."""
    if not meta.is_file():
        raise DataError(
            f"{meta}: missing; {DEVKIT_TRUTH} holds ILSVRC2012_IDs, which the devkit's data/{DEVKIT_META} (beside it) "
            "maps to wnids"
        )
    import numpy as np
    import scipy.io

    try:
        synsets = scipy.io.loadmat(str(meta), squeeze_me=True)["synsets"]
        ids = np.atleast_1d(synsets["ILSVRC2012_ID"])
        wnid_list = np.atleast_1d(synsets["WNID"])
    except (KeyError, ValueError, TypeError, OSError) as err:
        raise DataError(
            f"{meta}: not the devkit's meta.mat (expected a 'synsets' struct with ILSVRC2012_ID and WNID; {err})"
        ) from None
    return {int(np.asarray(i).item()): str(np.asarray(w).item()) for i, w in zip(ids, wnid_list, strict=True)}


def _read_devkit_truth(path: Path, wnids: dict[str, int]) -> dict[str, int]:
    """The devkit's ground truth: line i holds the ILSVRC2012_ID of ``ILSVRC2012_val_<i:08d>`` (1-based)."""
    meta = path.with_name(DEVKIT_META)
    id_to_wnid = _read_devkit_meta(meta)
    labels: dict[str, int] = {}
    for line, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            ilsvrc_id = int(text.strip())
        except ValueError:
            raise DataError(
                f"{path}: line {line} is {text.strip()!r:.40}, expected an ILSVRC2012_ID"
            ) from None
        wnid = id_to_wnid.get(ilsvrc_id)
        if wnid is None:
            raise DataError(f"{path}: line {line}: ILSVRC2012_ID {ilsvrc_id} is not in {meta}")
        if wnid not in wnids:
            raise DataError(
                f"{meta}: ILSVRC2012_ID {ilsvrc_id} ({path} line {line}) is {wnid!r}, not one of ImageNet's "
                f"1,000 wnids ({WNIDS_SOURCE})"
            )
        labels[f"ILSVRC2012_val_{line:08d}"] = wnids[wnid]
    return labels


def read_val_labels(path: Path) -> tuple[dict[str, int], str]:
    """ImageNet validation labels by image file stem, from any of the three files they ship in; returns the
    labels and the format's name (for the protocol)."""
    if not path.is_file():
        raise DataError(
            f"{path}: no such label file (expected {LOC_SOLUTION}, a '<file name> <wnid>' text file, or the "
            f"devkit's {DEVKIT_TRUTH})"
        )
    wnids = _wnid_labels()
    with open(path, encoding="utf-8", errors="replace") as fh:
        first = next((line.strip() for line in fh if line.strip()), "")
    if first.startswith("ImageId"):
        labels, kind = _read_loc_solution(path, wnids), LOC_SOLUTION
    elif first.isdigit():
        labels, kind = _read_devkit_truth(path, wnids), f"devkit {DEVKIT_TRUTH} + {DEVKIT_META}"
    else:
        labels, kind = _read_pairs(path, wnids), "file name + wnid pairs"
    if not labels:
        raise DataError(f"{path}: the label file lists no images")
    return labels, f"{path.name} ({kind})"


def _ilsvrc_split_folder(src: Path, split: str) -> Path | None:
    """Where the official tree keeps ``split``: Kaggle's CLS-LOC folders or the extracted ILSVRC2012 tars."""
    cls_loc = ("ILSVRC/Data/CLS-LOC", "Data/CLS-LOC", "CLS-LOC")
    official = "ILSVRC2012_img_val" if split == "val" else "ILSVRC2012_img_train"
    if src.name == official:
        return src
    candidates = [src / official] + [src / c / split for c in cls_loc]
    if split == "val":
        candidates.append(src / "val")
    found = next((c for c in candidates if c.is_dir()), None)
    if split == "val":
        if found is not None and _flat_images(found):
            return found
        return src if _flat_images(src) else None
    return found


def _find_val_labels(src: Path, folder: Path) -> Path | None:
    """``LOC_val_solution.csv`` in SRC or above the flat folder (Kaggle's root), or the devkit's ground truth."""
    places = [src, folder, *list(folder.parents)[:4]]
    for place in dict.fromkeys(places):
        if (place / LOC_SOLUTION).is_file():
            return place / LOC_SOLUTION
    for place in dict.fromkeys([src, folder.parent]):
        for sub in ("ILSVRC2012_devkit_t12/data", "devkit/data", "data", "."):
            if (place / sub / DEVKIT_TRUTH).is_file():
                return place / sub / DEVKIT_TRUTH
    return None


def _read_ilsvrc(src: Path, split: str, options: Options) -> tuple[list[dict[str, Any]], dict[str, str]]:
    folder = _ilsvrc_split_folder(src, split)
    if folder is None:
        expected = (
            "ILSVRC/Data/CLS-LOC/val/*.JPEG or ILSVRC2012_img_val/*.JPEG"
            if split == "val"
            else "ILSVRC/Data/CLS-LOC/train/<wnid>/ or ILSVRC2012_img_train/<wnid>/"
        )
        raise DataError(f"{src}: no ImageNet {split} images in the official layout (expected {expected})")
    if split == "train":
        what = "ImageNet's training classes (wnid folders, e.g. n01440764)"
        return class_folders(folder, _wnid_labels(), what), {"labels": f"wnid folders ({WNIDS_SOURCE})"}
    label_file = options.labels or _find_val_labels(src, folder)
    if label_file is None:
        raise DataError(
            f"{folder}: ImageNet's flat validation folder carries no labels; give --labels ({LOC_SOLUTION}, a "
            f"'<file name> <wnid>' text file, or the devkit's {DEVKIT_TRUTH} with meta.mat beside it)"
        )
    labels, described = read_val_labels(Path(label_file))
    records = []
    for path in _flat_images(folder):
        label = labels.get(path.stem)
        if label is None:
            raise DataError(f"{path}: no label in {label_file} (is it the label file of this folder?)")
        records.append(file_record(folder, path, label))
    return records, {"labels": described}


def _torchvision_split_folder(src: Path, split: str) -> Path | None:
    if _has_subfolders(src / split):
        return src / split
    if src.name == split and _has_subfolders(src):
        return src
    return None


def _read_imagenet(src: Path, options: Options) -> Source:
    split = options.split
    wds_split = "test" if split == "val" else split
    layout = options.layout
    if not layout:
        if is_clip_benchmark_wds(src, wds_split):
            layout = WDS
        elif _ilsvrc_split_folder(src, split) is not None:
            layout = ILSVRC
        elif _torchvision_split_folder(src, split) is not None:
            layout = TORCHVISION
        else:
            raise DataError(
                f"{src}: not an ImageNet {split} split in a known layout (expected the ILSVRC tree "
                "ILSVRC/Data/CLS-LOC/… with LOC_val_solution.csv, the flat ILSVRC2012_img_val/ with --labels, "
                f"torchvision's {split}/<wnid>/, or CLIP_benchmark's wds_imagenet1k)"
            )
    protocol = {"wnids": WNIDS_SOURCE}
    if layout == WDS:
        records, extra = _wds(src, wds_split, names.imagenet_classnames(), "ImageNet (CLIP's 1,000 names)")
    elif layout == ILSVRC:
        records, extra = _read_ilsvrc(src, split, options)
    else:
        folder = _torchvision_split_folder(src, split)
        if folder is None:
            raise DataError(f"{src}: no {split}/<wnid>/ folders (torchvision's ImageNet layout)")
        what = "ImageNet's classes (wnid folders, e.g. n01440764)"
        records, extra = class_folders(folder, _wnid_labels(), what), {"labels": f"{split}/<wnid> folders"}
    return _imagenet_source(records, layout, split, {**protocol, **extra})


# --------------------------------------------------------------------------------------------------- ImageNet-V2
V2_FOLDERS = (
    "imagenetv2-matched-frequency-format-val",
    "ImageNetV2-matched-frequency",
    "imagenetv2-threshold0.7-format-val",
    "imagenetv2-top-images-format-val",
)


def _read_imagenet_v2(src: Path, options: Options) -> Source:
    layout = options.layout or (WDS if is_clip_benchmark_wds(src, "test") else FOLDERS)
    if layout == WDS:
        records, extra = _wds(src, "test", names.imagenet_classnames(), "ImageNet-V2 (CLIP's 1,000 names)")
        return _imagenet_source(records, layout, options.split, extra)
    root = _pick_folder(src, V2_FOLDERS)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder (expected ImageNet-V2's 0 … 999 class folders)")
    count = len(names.imagenet_wnids())
    for folder in sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")):
        if not folder.name.isdigit():
            raise DataError(
                f"{folder}: ImageNet-V2's class folders are named by label (0 … {count - 1}), not {folder.name!r} "
                f"(expected {V2_FOLDERS[0]}/ or its parent)"
            )
        if not 0 <= int(folder.name) < count:
            raise DataError(f"{folder}: label {int(folder.name)} is outside ImageNet's 0 … {count - 1}")
    folder_labels = {d.name: int(d.name) for d in root.iterdir() if d.is_dir() and d.name.isdigit()}
    records = class_folders(root, folder_labels, "ImageNet-V2's class folders 0 … 999")
    return _imagenet_source(
        records, layout, options.split, {"labels": "folder name = label (int)", "variant": root.name}
    )


# --------------------------------------------------------------------------------------------------- ImageNet-R / -A
def subset_indices(short: str) -> tuple[list[str], list[int]]:
    """timm's wnids of ImageNet-R or -A (label order) and their ImageNet indices, checked against each other."""
    synsets = list(names.timm_info(f"imagenet_{short}_synsets.txt"))
    indices = [int(i) for i in names.timm_info(f"imagenet_{short}_indices.txt")]
    wnids = names.imagenet_wnids()
    bad = next(
        (
            (j, w, i)
            for j, (w, i) in enumerate(zip(synsets, indices, strict=False))
            if not 0 <= i < len(wnids) or wnids[i] != w
        ),
        None,
    )
    if len(synsets) != len(indices) or bad is not None:
        detail = (
            f"line {bad[0] + 1}: {bad[1]} ↦ index {bad[2]}"
            if bad
            else f"{len(synsets)} vs {len(indices)} lines"
        )
        raise DataError(
            f"timm's imagenet_{short}_synsets.txt and imagenet_{short}_indices.txt disagree with "
            f"imagenet_synsets.txt ({detail}); this timm version's lists cannot be used"
        )
    return synsets, indices


def _subset_reader(short: str, title: str, download: str) -> Callable[[Path, Options], Source]:
    def read(src: Path, options: Options) -> Source:
        synsets, indices = subset_indices(short)
        all_names = names.imagenet_classnames()
        classnames = [all_names[i] for i in indices]
        layout = options.layout or (WDS if is_clip_benchmark_wds(src, "test") else FOLDERS)
        protocol = {
            "classnames": f"{CLASSNAMES_SOURCE} at timm imagenet_{short}_indices.txt",
            "head": f"imagenet, classes timm imagenet_{short}_indices.txt",
        }
        if layout == WDS:
            records, extra = _wds(src, "test", classnames, f"{title} (CLIP's names of its 200 classes)")
        else:
            root = _pick_folder(src, (download,))
            what = f"{title}'s 200 classes (timm imagenet_{short}_synsets.txt)"
            records = class_folders(root, {w: i for i, w in enumerate(synsets)}, what)
            extra = {"labels": f"wnid folders in timm imagenet_{short}_synsets.txt order"}
        return Source(
            records=records,
            classnames=classnames,
            templates=names.template_set(TEMPLATE_SET),
            layout=layout,
            split=options.split,
            template_set=TEMPLATE_SET,
            head_groups=[[i] for i in indices],
            protocol={**protocol, **extra},
            **_imagenet_head(),
        )

    return read


# --------------------------------------------------------------------------------------------------- Sketch
def _read_sketch(src: Path, options: Options) -> Source:
    layout = options.layout or (WDS if is_clip_benchmark_wds(src, "test") else FOLDERS)
    if layout == WDS:
        records, extra = _wds(
            src, "test", names.imagenet_classnames(), "ImageNet-Sketch (CLIP's 1,000 names)"
        )
    else:
        root = _pick_folder(src, ("sketch", "ImageNet-Sketch/sketch", "imagenet-sketch/sketch"))
        what = "ImageNet-Sketch's classes (wnid folders under sketch/)"
        records, extra = (
            class_folders(root, _wnid_labels(), what),
            {"labels": f"sketch/<wnid> folders ({WNIDS_SOURCE})"},
        )
    return _imagenet_source(records, layout, options.split, extra)


# --------------------------------------------------------------------------------------------------- ObjectNet
OBJECTNET_MAPPING_FILES = (
    "folder_to_objectnet_label.json",
    "objectnet_to_imagenet_1k.json",
    "pytorch_to_imagenet_2012_id.json",
    "imagenet_to_label_2012_v2",
)


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise DataError(
            f"{path}: missing (one of ObjectNet's mappings: {', '.join(OBJECTNET_MAPPING_FILES)})"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None


def _mappings_folder(base: Path, src: Path, options: Options) -> Path:
    if options.mappings is not None:
        folder = Path(options.mappings)
        if not folder.is_dir():
            raise DataError(f"{folder}: no such folder (--mappings: ObjectNet's mappings/ folder)")
        return folder
    for candidate in (base / "mappings", src / "mappings", src):
        if (candidate / OBJECTNET_MAPPING_FILES[0]).is_file():
            return candidate
    raise DataError(
        f"{base}: no mappings/ folder ({', '.join(OBJECTNET_MAPPING_FILES)}); the mappings come with ObjectNet's "
        "download (objectnet-1.0/mappings/): point SRC at objectnet-1.0 or give --mappings"
    )


def objectnet_projection(mappings: Path) -> tuple[list[str], list[str], list[list[int]], list[str]]:
    """FLYP / WiSE-FT's ObjectNet → ImageNet projection from ObjectNet's ``mappings/`` folder.

    Returns the kept folders in label order (sorted folder names, as CLIP_benchmark and WiSE-FT order them), their
    class names (ObjectNet's names, lower-cased as those evaluators do), per label the ImageNet class indices
    (torchvision / wnid order) whose max logit scores it, and the ObjectNet folders that map to no ImageNet class.
    """
    folder_map = _load_json(mappings / OBJECTNET_MAPPING_FILES[0])
    objectnet_map = _load_json(mappings / OBJECTNET_MAPPING_FILES[1])
    pytorch_map = _load_json(mappings / OBJECTNET_MAPPING_FILES[2])
    label_file = mappings / OBJECTNET_MAPPING_FILES[3]
    if not label_file.is_file():
        raise DataError(
            f"{label_file}: missing (one of ObjectNet's mappings: {', '.join(OBJECTNET_MAPPING_FILES)})"
        )
    for name, data in zip(OBJECTNET_MAPPING_FILES[:3], (folder_map, objectnet_map, pytorch_map), strict=True):
        if not isinstance(data, dict):
            raise DataError(f"{mappings / name}: expected a JSON object, got {type(data).__name__}")
    folder_of: dict[str, str] = {}
    for folder, label in folder_map.items():
        if label in folder_of:
            raise DataError(f"{mappings / OBJECTNET_MAPPING_FILES[0]}: {label!r} names two folders")
        folder_of[str(label)] = str(folder)
    try:  # {pytorch index: ImageNet 2012 id} → {2012 id: pytorch index}
        pytorch_of = {int(v): int(k) for k, v in pytorch_map.items()}
    except (TypeError, ValueError):
        raise DataError(
            f"{mappings / OBJECTNET_MAPPING_FILES[2]}: expected integer indices and ids"
        ) from None
    # Line i names ImageNet 2012 id i; a name written twice keeps its last id, as the reference code does.
    index_of: dict[str, int] = {}
    for i, text in enumerate(label_file.read_text(encoding="utf-8").splitlines()):
        if text.strip() and i in pytorch_of:
            index_of[text.strip()] = pytorch_of[i]
    groups_by_folder: dict[str, list[int]] = {}
    for objectnet_name, imagenet_names in objectnet_map.items():
        folder = folder_of.get(objectnet_name)
        if folder is None:
            raise DataError(
                f"{mappings / OBJECTNET_MAPPING_FILES[1]}: {objectnet_name!r} is not a label in "
                f"{OBJECTNET_MAPPING_FILES[0]}"
            )
        group = []
        for name in str(imagenet_names).split("; "):
            if name.strip() not in index_of:
                raise DataError(
                    f"{mappings / OBJECTNET_MAPPING_FILES[1]}: {objectnet_name!r} maps to {name!r}, which no line "
                    f"of {label_file.name} (with an id in {OBJECTNET_MAPPING_FILES[2]}) names"
                )
            group.append(index_of[name.strip()])
        groups_by_folder[folder] = group
    folders = sorted(groups_by_folder)
    if not folders:
        raise DataError(f"{mappings / OBJECTNET_MAPPING_FILES[1]}: maps no ObjectNet class to ImageNet")
    groups = [groups_by_folder[f] for f in folders]
    try:
        LabelMap.from_lists(groups, len(names.imagenet_wnids()))
    except ValueError as err:
        raise DataError(f"{mappings / OBJECTNET_MAPPING_FILES[1]}: not a usable projection ({err})") from None
    unmapped = sorted(set(folder_map) - set(groups_by_folder))
    return folders, [str(folder_map[f]).lower() for f in folders], groups, unmapped


def _read_objectnet(src: Path, options: Options) -> Source:
    layout = options.layout or (WDS if is_clip_benchmark_wds(src, "test") else OFFICIAL)
    common: dict[str, Any] = dict(
        templates=names.template_set(TEMPLATE_SET),
        layout=layout,
        split=options.split,
        template_set=TEMPLATE_SET,
    )
    if layout == WDS:
        folder = read_clip_benchmark_wds(src, "test")
        protocol = {"labels": "CLIP_benchmark webdataset test/*.tar .cls", "classnames": "classnames.txt"}
        if options.mappings is None:
            protocol["head"] = (
                "own classes (CLIP_benchmark wds_objectnet: no ImageNet projection; give --mappings for one)"
            )
            return Source(records=folder.records, classnames=folder.classnames, protocol=protocol, **common)
        _, classnames, groups, _ = objectnet_projection(_mappings_folder(src, src, options))
        if folder.classnames != classnames:
            raise DataError(
                f"{src / 'classnames.txt'}: its {len(folder.classnames)} names are not the {len(classnames)} mapped "
                f"ObjectNet classes of {options.mappings} in label order; cannot project onto ImageNet"
            )
        protocol["head"] = (
            "imagenet, max logit over each class's ImageNet classes (objectnet_to_imagenet_1k.json)"
        )
        return Source(
            records=folder.records,
            classnames=classnames,
            head_groups=groups,
            eval_border=2,
            protocol=protocol,
            **common,
            **_imagenet_head(),
        )
    base = src / "objectnet-1.0" if (src / "objectnet-1.0").is_dir() else src
    images = base / "images"
    if not images.is_dir():
        raise DataError(
            f"{images}: no such folder (expected ObjectNet's objectnet-1.0/images/<class folder>/)"
        )
    mappings = _mappings_folder(base, src, options)
    folders, classnames, groups, _ = objectnet_projection(mappings)
    all_folders = set(_load_json(mappings / OBJECTNET_MAPPING_FILES[0]))
    present = sorted(d.name for d in images.iterdir() if d.is_dir() and not d.name.startswith("."))
    unknown = [name for name in present if name not in all_folders]
    if unknown:
        raise DataError(
            f"{images / unknown[0]}: {unknown[0]!r} is not an ObjectNet folder "
            f"(not in {mappings / OBJECTNET_MAPPING_FILES[0]})"
        )
    skipped = [name for name in present if name not in set(folders)]
    what = "ObjectNet's class folders that map to ImageNet"
    records = class_folders(images, {f: i for i, f in enumerate(folders)}, what, allow_unknown=True)
    return Source(
        records=records,
        classnames=classnames,
        head_groups=groups,
        eval_border=2,
        protocol={
            "classnames": "ObjectNet folder_to_objectnet_label.json, lower-cased",
            "labels": "sorted ObjectNet folders that map to ImageNet (objectnet_to_imagenet_1k.json)",
            "head": "imagenet, max logit over each class's ImageNet classes (objectnet_to_imagenet_1k.json)",
            "eval_border": "2 pixels cropped per side (FLYP / WiSE-FT)",
            "skipped_folders": f"{len(skipped)} ObjectNet folders without an ImageNet class",
        },
        **common,
        **_imagenet_head(),
    )


# --------------------------------------------------------------------------------------------------- registry
register(
    Recipe(
        "imagenet",
        "ImageNet-1k (ILSVRC tree, flat val + labels, torchvision folders, wds_imagenet1k); CLIP's names, 80 prompts",
        ("train", "val"),
        (ILSVRC, TORCHVISION, WDS),
        _read_imagenet,
        default_split="val",
    )
)
register(
    Recipe(
        "imagenet-v2",
        "ImageNet-V2 matched-frequency (folders 0…999 = labels, wds_imagenetv2); ImageNet's 1,000 classes",
        ("test",),
        (FOLDERS, WDS),
        _read_imagenet_v2,
        default_split="test",
    )
)
register(
    Recipe(
        "imagenet-r",
        "ImageNet-R (200 wnid folders, wds_imagenet-r); scored with the ImageNet head on its 200 classes",
        ("test",),
        (FOLDERS, WDS),
        _subset_reader("r", "ImageNet-R", "imagenet-r"),
        default_split="test",
    )
)
register(
    Recipe(
        "imagenet-a",
        "ImageNet-A (200 wnid folders, wds_imagenet-a); scored with the ImageNet head on its 200 classes",
        ("test",),
        (FOLDERS, WDS),
        _subset_reader("a", "ImageNet-A", "imagenet-a"),
        default_split="test",
    )
)
register(
    Recipe(
        "imagenet-sketch",
        "ImageNet-Sketch (sketch/<wnid>/, wds_imagenet_sketch); ImageNet's 1,000 classes",
        ("test",),
        (FOLDERS, WDS),
        _read_sketch,
        default_split="test",
    )
)
register(
    Recipe(
        "objectnet",
        "ObjectNet (objectnet-1.0 images + mappings, wds_objectnet); 113 classes, max over ImageNet logits, 2px crop",
        ("test",),
        (OFFICIAL, WDS),
        _read_objectnet,
        default_split="test",
    )
)
