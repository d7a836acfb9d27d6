"""The ten zero-shot sets of the DiVE / ARF evaluation, each from the layouts it ships in.

Caltech101, Flowers102, Food101, SUN397, DTD, FGVC-Aircraft, StanfordCars, OxfordPets, EuroSAT and UCF101, one
small :class:`Spec` each and three shared readers:

* ``official``: the dataset's own download as torchvision lays it out (``root/food-101/…``), or the dataset
  folder itself; splits as torchvision reads them (Food-101's ``meta/test.txt``, Flowers' ``setid.mat``, DTD's
  partition 1, …). Caltech101, SUN397 and EuroSAT ship no split: ``test`` is every image, as CLIP_benchmark reads
  them, and ``protocol['split_source']`` says so; CoOp's split files give them train / val / test.
* ``coop``: CoOp's dataset folder, ``split_zhou_<Name>.json`` beside the image folder CoOp reads; class names
  are the split file's with ``_`` as a space. FGVC-Aircraft has no CoOp split file (CoOp reads the official
  ``images_variant_<split>.txt``), so its coop layout reads those lists.
* ``wds``: a CLIP_benchmark webdataset folder (``wds_<name>``): its ``classnames.txt``, and its templates when
  it ships them.

UCF101 is videos: only CoOp's mid-frames (``UCF-101-midframes/<Class_Name>/*.jpg``) and a wds folder are read.

Class names are CLIP's where an installed package ships them (CLIP_benchmark: Caltech101, Flowers102, Pets,
EuroSAT), else the layout's own metadata cleaned as CLIP_benchmark does (``_`` and ``/`` as spaces);
``protocol['classnames']`` records the source. Templates are CLIP's per-dataset prompts (``clip:<name>``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.convert.common import record
from pipeline.convert.suites.layouts import (
    class_folders,
    file_record,
    first_existing,
    image_files,
    is_clip_benchmark_wds,
    is_image,
    read_clip_benchmark_wds,
    read_coop_split,
)
from pipeline.convert.suites.names import clip_benchmark_classnames, project_data, template_set
from pipeline.convert.suites.registry import Options, Recipe, Source, register
from pipeline.data.format import DataError

OFFICIAL, COOP, WDS = "official", "coop", "wds"


@dataclass
class Found:
    """What one layout reader found: records (label set), class names in label order, and where both came from."""

    records: list[dict[str, Any]]
    classnames: list[str]
    split_source: str
    names_source: str


OfficialReader = Callable[[Path, str], Found]


@dataclass(frozen=True)
class Spec:
    """One dataset: its names, template set, CoOp files and official reader."""

    name: str  # the recipe name
    title: str
    num_classes: int
    templates: str  # the template set, clip:<CLIP_benchmark name>
    coop_split: str  # CoOp's split file in its dataset folder; "" → CoOp reads the official lists
    coop_images: str  # the image folder in CoOp's dataset folder that the split's paths are relative to
    official: OfficialReader | None  # None: the dataset has no still images officially (UCF101)
    official_splits: tuple[str, ...] = ("test",)
    known_names: str = ""  # a data file the coop split's names (``_`` as space) must equal, label for label
    note: str = ""  # said in ``--list``

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(("test", "train", "val", *self.official_splits)))

    @property
    def layouts(self) -> tuple[str, ...]:
        return (OFFICIAL, COOP, WDS) if self.official else (COOP, WDS)


# ------------------------------------------------------------------------------------------------ shared readers
def _base(src: Path, candidates: Sequence[str], marker: str, what: str) -> Path:
    """The dataset folder: SRC as torchvision's root (``SRC/<folder>/<marker>``) or the folder itself."""
    for candidate in candidates:
        if (src / candidate / marker).exists():
            return src / candidate
    tried = ", ".join(str(src / c / marker) for c in candidates)
    raise DataError(f"{src}: not {what}; found none of {tried}")


def _folder_base(src: Path, candidates: Sequence[str], folders: Sequence[str], what: str) -> Path:
    """The folder holding a class-folder dataset's class folders (any one of ``folders`` marks it)."""
    for candidate in candidates:
        base = src / candidate
        if base.is_dir() and any((base / f).is_dir() for f in folders):
            return base
    tried = ", ".join(str(src / c) for c in candidates)
    raise DataError(
        f"{src}: not {what}; none of {tried} holds its class folders ({', '.join(folders[:3])}, …)"
    )


def _lines(path: Path, what: str) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: missing (expected {what})")
    text = path.read_text(encoding="utf-8", errors="replace")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _listed(images: Path, relative: str, label: int) -> dict[str, Any]:
    """A record for an image a split list names; one that is not there is skipped (and counted) at conversion."""
    path = images / relative
    rec = record(relative, relative, str(path.absolute()), label=label)
    if not path.is_file():
        rec["missing"] = f"no such image file {path}"
    return rec


def _mat_field(path: Path, key: str, what: str) -> Any:
    """One variable of a MATLAB file (``scipy.io.loadmat``, squeezed as torchvision reads them)."""
    if not path.is_file():
        raise DataError(f"{path}: missing (expected {what})")
    from scipy.io import loadmat

    try:
        data = loadmat(path, squeeze_me=True)
    except Exception as err:  # scipy raises several types for a damaged or non-MATLAB file
        raise DataError(f"{path}: not a readable MATLAB file ({err}); expected {what}") from None
    if key not in data:
        found = ", ".join(k for k in data if not k.startswith("__"))
        raise DataError(f"{path}: no variable {key!r} (has {found}); expected {what}")
    return data[key]


def _clip_names(dataset: str, count: int) -> list[str]:
    names = clip_benchmark_classnames(dataset)
    if names is None or len(names) != count:
        got = "none" if names is None else len(names)
        raise DataError(f"CLIP_benchmark's class names for {dataset!r}: expected {count}, found {got}")
    return names


def _index(names: Sequence[str]) -> dict[str, int]:
    return {n: i for i, n in enumerate(names)}


def _space(name: str) -> str:
    return name.replace("_", " ").strip()


# ------------------------------------------------------------------------------------------------ official layouts
def _food101(src: Path, split: str) -> Found:
    """``food-101/meta/classes.txt`` + ``meta/<split>.txt`` (or ``.json``) listing ``<class>/<id>`` under images/.

    Labels follow the sorted class names, as torchvision's Food101 (and so CLIP_benchmark) numbers them."""
    base = _base(
        src, ("food-101", "."), "meta/classes.txt", "a Food-101 download (food-101/meta/classes.txt)"
    )
    classes_file = base / "meta" / "classes.txt"
    classes = sorted(_lines(classes_file, "Food-101's class list, one class per line"))
    index = _index(classes)
    listing = base / "meta" / f"{split}.txt"
    if listing.is_file():
        entries = _lines(listing, "")
    elif listing.with_suffix(".json").is_file():
        listing = listing.with_suffix(".json")
        try:
            data = json.loads(listing.read_text(encoding="utf-8"))
            entries = [str(e) for key in sorted(data) for e in data[key]]
        except (json.JSONDecodeError, TypeError, AttributeError) as err:
            raise DataError(f"{listing}: expected {{class: [<class>/<id>, …]}} ({err})") from None
    else:
        raise DataError(f"{listing}: missing (expected Food-101's {split} list, meta/{split}.txt or .json)")
    records = []
    for entry in entries:
        cls = entry.split("/")[0]
        if cls not in index:
            raise DataError(f"{listing}: entry {entry!r} names class {cls!r}, which is not in {classes_file}")
        records.append(_listed(base / "images", f"{entry}.jpg", index[cls]))
    return Found(
        records,
        [_space(c) for c in classes],
        f"official:meta/{listing.name}",
        "food-101 meta/classes.txt, sorted, '_' as space (CLIP_benchmark's names)",
    )


def _flowers102(src: Path, split: str) -> Found:
    """``jpg/image_<id>.jpg`` + ``imagelabels.mat`` (labels 1 … 102) + ``setid.mat`` (trnid / valid / tstid)."""
    base = _base(
        src, ("flowers-102", "."), "imagelabels.mat", "an Oxford 102 Flowers download (imagelabels.mat)"
    )
    names = _clip_names("flowers", 102)
    labels_file, setid_file = base / "imagelabels.mat", base / "setid.mat"
    labels = np.atleast_1d(_mat_field(labels_file, "labels", "Flowers' labels, 1 … 102 per image"))
    key = {"train": "trnid", "val": "valid", "test": "tstid"}[split]
    ids = np.atleast_1d(_mat_field(setid_file, key, "Flowers' split ids (trnid, valid, tstid)"))
    records = []
    for image_id in (int(i) for i in ids.tolist()):
        if not 1 <= image_id <= len(labels):
            raise DataError(
                f"{setid_file}: {key} holds image {image_id}, outside the {len(labels)} of {labels_file}"
            )
        label = int(labels[image_id - 1])
        if not 1 <= label <= len(names):
            raise DataError(f"{labels_file}: image {image_id} has label {label}, outside 1 … {len(names)}")
        records.append(_listed(base / "jpg", f"image_{image_id:05d}.jpg", label - 1))
    return Found(records, names, f"official:setid.mat {key}", "clip_benchmark:flowers")


def _sun397(src: Path, split: str) -> Found:
    """``SUN397/ClassName.txt`` (``/a/abbey``, ``/a/apse/indoor``) + ``SUN397/<letter>/<class>/sun_*.jpg``."""
    base = _base(src, ("SUN397", "."), "ClassName.txt", "a SUN397 download (SUN397/ClassName.txt)")
    names_file = base / "ClassName.txt"
    classes = [line[3:] for line in _lines(names_file, "SUN397's class list, /<letter>/<class> per line")]
    index = _index(classes)
    records = []
    for path in image_files(base):
        parts = path.relative_to(base).parts
        if len(parts) < 3:  # not inside a <letter>/<class>/ folder
            continue
        cls = "/".join(parts[1:-1])
        if cls not in index:
            raise DataError(f"{path.parent}: {cls!r} is not a class listed in {names_file}")
        records.append(file_record(base, path, index[cls]))
    for cls in classes:
        folder = base / cls[:1] / cls
        if folder.is_dir() and not any(is_image(p) and p.is_file() for p in folder.iterdir()):
            raise DataError(f"{folder}: the class folder holds no images (expected SUN397's sun_*.jpg)")
    return Found(
        records,
        [c.replace("_", " ").replace("/", " ") for c in classes],
        "official:none (SUN397 ships no split here; every image, as CLIP_benchmark reads it)",
        "SUN397 ClassName.txt, '_' and '/' as spaces (CLIP_benchmark's names)",
    )


def _dtd(src: Path, split: str) -> Found:
    """``dtd/images/<class>/`` + ``dtd/labels/<split>1.txt`` (partition 1, as torchvision reads it)."""
    base = _base(src, ("dtd/dtd", "dtd", "."), "images", "a DTD download (dtd/images/)")
    images = base / "images"
    classes = sorted(d.name for d in images.iterdir() if d.is_dir() and not d.name.startswith("."))
    index = _index(classes)
    listing = base / "labels" / f"{split}1.txt"
    records = []
    for n, entry in enumerate(
        _lines(listing, f"DTD's {split} list of partition 1, <class>/<file> per line"), 1
    ):
        cls = entry.split("/")[0]
        if cls not in index:
            raise DataError(f"{listing}: line {n} names class {cls!r}, which is not a folder of {images}")
        records.append(_listed(images, entry, index[cls]))
    return Found(records, classes, f"official:labels/{split}1.txt", "DTD images/ folder names")


def _fgvc_aircraft(src: Path, split: str) -> Found:
    """``fgvc-aircraft-2013b/data/variants.txt`` + ``images_variant_<split>.txt`` (``<id> <variant>``)."""
    base = _base(
        src,
        ("fgvc-aircraft-2013b/data", "data", "."),
        "variants.txt",
        "an FGVC-Aircraft download (fgvc-aircraft-2013b/data/variants.txt)",
    )
    names_file = base / "variants.txt"
    classes = _lines(names_file, "FGVC-Aircraft's 100 variants, one per line")
    index = _index(classes)
    listing = base / f"images_variant_{split}.txt"
    records = []
    for n, line in enumerate(
        _lines(listing, f"FGVC-Aircraft's {split} list, '<image id> <variant>' per line"), 1
    ):
        image_id, _, variant = line.partition(" ")
        if variant not in index:
            raise DataError(f"{listing}: line {n} names variant {variant!r}, which is not in {names_file}")
        records.append(_listed(base / "images", f"{image_id}.jpg", index[variant]))
    return Found(records, classes, f"official:images_variant_{split}.txt", "FGVC-Aircraft variants.txt")


def _stanford_cars(src: Path, split: str) -> Found:
    """``devkit/cars_meta.mat`` + ``cars_test_annos_withlabels.mat`` / ``devkit/cars_train_annos.mat``."""
    base = _base(
        src, ("stanford_cars", "."), "devkit/cars_meta.mat", "a Stanford Cars download (devkit/cars_meta.mat)"
    )
    meta = base / "devkit" / "cars_meta.mat"
    names = [str(n) for n in np.atleast_1d(_mat_field(meta, "class_names", "the 196 car model names"))]
    if split == "train":
        annos, images = base / "devkit" / "cars_train_annos.mat", base / "cars_train"
    else:
        candidates = ("cars_test_annos_withlabels.mat", "devkit/cars_test_annos_withlabels.mat")
        annos = first_existing(base, candidates) or base / candidates[0]
        images = base / "cars_test"
    what = "Stanford Cars annotations with labels (fname, class 1 … 196)"
    records = []
    for n, anno in enumerate(np.atleast_1d(_mat_field(annos, "annotations", what))):
        try:
            fname, cls = str(anno["fname"]), int(anno["class"])
        except (ValueError, KeyError, IndexError, TypeError):
            raise DataError(f"{annos}: annotation {n} has no fname and class (expected {what})") from None
        if not 1 <= cls <= len(names):
            raise DataError(
                f"{annos}: annotation {n} ({fname}) has class {cls}, outside 1 … {len(names)} of {meta}"
            )
        records.append(_listed(images, fname, cls - 1))
    return Found(records, names, f"official:{annos.name}", "Stanford Cars devkit/cars_meta.mat")


def _oxford_pets(src: Path, split: str) -> Found:
    """``annotations/<test|trainval>.txt`` (``<image> <class id 1 … 37> <species> <breed>``) + ``images/``."""
    base = _base(src, ("oxford-iiit-pet", "."), "annotations", "an Oxford-IIIT Pet download (annotations/)")
    names = _clip_names("pets", 37)
    listing = base / "annotations" / f"{split}.txt"
    records = []
    for n, line in enumerate(_lines(listing, f"the Pets {split} list, '<image> <class id> …' per line"), 1):
        if line.startswith("#"):
            continue
        fields = line.split()
        try:
            image_id, class_id = fields[0], int(fields[1])
        except (IndexError, ValueError):
            raise DataError(
                f"{listing}: line {n} is {line[:60]!r}, expected '<image> <class id 1 … 37> …'"
            ) from None
        if not 1 <= class_id <= len(names):
            raise DataError(
                f"{listing}: line {n} has class id {class_id}, outside the breeds 1 … {len(names)}"
            )
        records.append(_listed(base / "images", f"{image_id}.jpg", class_id - 1))
    return Found(records, names, f"official:annotations/{split}.txt", "clip_benchmark:pets")


EUROSAT_FOLDERS = (
    "AnnualCrop",
    "Forest",
    "HerbaceousVegetation",
    "Highway",
    "Industrial",
    "Pasture",
    "PermanentCrop",
    "Residential",
    "River",
    "SeaLake",
)


def _eurosat(src: Path, split: str) -> Found:
    """``eurosat/2750/<class>/*.jpg`` (torchvision) or ``EuroSAT_RGB/<class>/``: the 10 land-cover folders."""
    candidates = ("eurosat/2750", "2750", "EuroSAT_RGB", "EuroSAT", "eurosat/EuroSAT_RGB", ".")
    what = "EuroSAT's 10 land-cover class folders (AnnualCrop … SeaLake)"
    base = _folder_base(src, candidates, EUROSAT_FOLDERS, "a EuroSAT download (eurosat/2750/AnnualCrop/ …)")
    records = class_folders(base, _index(EUROSAT_FOLDERS), what)
    return Found(
        records,
        _clip_names("eurosat", len(EUROSAT_FOLDERS)),
        "official:none (EuroSAT ships no split; every image, as CLIP_benchmark reads it)",
        "clip_benchmark:eurosat",
    )


@functools.cache
def _caltech101_folders() -> tuple[str, ...]:
    return tuple(project_data("caltech101_folders.txt"))


def _caltech101(src: Path, split: str) -> Found:
    """``101_ObjectCategories/<class>/`` with ``BACKGROUND_Google`` left out (not an object class)."""
    folders = _caltech101_folders()
    candidates = (
        "caltech101/101_ObjectCategories",
        "101_ObjectCategories",
        "caltech-101/101_ObjectCategories",
        ".",
    )
    base = _folder_base(src, candidates, folders, "a Caltech 101 download (caltech101/101_ObjectCategories/)")
    names = _clip_names("caltech101", len(folders) + 1)[1:]  # CLIP's "background" is BACKGROUND_Google
    records = class_folders(
        base, _index(folders), "Caltech 101's 101 object categories", skip={"BACKGROUND_Google"}
    )
    return Found(
        records,
        names,
        "official:none (Caltech 101 ships no split; every image, BACKGROUND_Google left out)",
        "clip_benchmark:caltech101 without 'background'",
    )


# ------------------------------------------------------------------------------------------------ the ten sets
NO_SPLIT = "official: every image (no split); CoOp's split file for train/val/test"

SPECS = (
    Spec(
        name="caltech101",
        title="Caltech 101",
        num_classes=101,
        templates="clip:caltech101",
        coop_split="split_zhou_Caltech101.json",
        coop_images="101_ObjectCategories",
        official=_caltech101,
        note=NO_SPLIT + "; BACKGROUND_Google left out",
    ),
    Spec(
        name="flowers102",
        title="Oxford 102 Flowers",
        num_classes=102,
        templates="clip:flowers",
        coop_split="split_zhou_OxfordFlowers.json",
        coop_images="jpg",
        official=_flowers102,
        official_splits=("test", "train", "val"),
    ),
    Spec(
        name="food101",
        title="Food-101",
        num_classes=101,
        templates="clip:food101",
        coop_split="split_zhou_Food101.json",
        coop_images="images",
        official=_food101,
        official_splits=("test", "train"),
    ),
    Spec(
        name="sun397",
        title="SUN397",
        num_classes=397,
        templates="clip:sun397",
        coop_split="split_zhou_SUN397.json",
        coop_images="SUN397",
        official=_sun397,
        note=NO_SPLIT,
    ),
    Spec(
        name="dtd",
        title="Describable Textures (DTD)",
        num_classes=47,
        templates="clip:dtd",
        coop_split="split_zhou_DescribableTextures.json",
        coop_images="images",
        official=_dtd,
        official_splits=("test", "train", "val"),
        note="official: partition 1",
    ),
    Spec(
        name="fgvc-aircraft",
        title="FGVC-Aircraft (variants)",
        num_classes=100,
        templates="clip:fgvc_aircraft",
        coop_split="",
        coop_images="images",
        official=_fgvc_aircraft,
        official_splits=("test", "train", "val", "trainval"),
        note="coop reads the official lists, as CoOp does",
    ),
    Spec(
        name="stanford-cars",
        title="Stanford Cars",
        num_classes=196,
        templates="clip:cars",
        coop_split="split_zhou_StanfordCars.json",
        coop_images="",
        official=_stanford_cars,
        official_splits=("test", "train"),
    ),
    Spec(
        name="oxford-pets",
        title="Oxford-IIIT Pets",
        num_classes=37,
        templates="clip:pets",
        coop_split="split_zhou_OxfordPets.json",
        coop_images="images",
        official=_oxford_pets,
        official_splits=("test", "trainval"),
    ),
    Spec(
        name="eurosat",
        title="EuroSAT (RGB)",
        num_classes=10,
        templates="clip:eurosat",
        coop_split="split_zhou_EuroSAT.json",
        coop_images="2750",
        official=_eurosat,
        note=NO_SPLIT,
    ),
    Spec(
        name="ucf101",
        title="UCF101 mid-frames",
        num_classes=101,
        templates="clip:ucf101",
        coop_split="split_zhou_UCF101.json",
        coop_images="UCF-101-midframes",
        official=None,
        known_names="ucf101_classnames.txt",
        note="videos officially, so no official layout: CoOp's UCF-101-midframes + split (coop) or a wds folder",
    ),
)


def _summary(spec: Spec) -> str:
    text = f"{spec.title}, {spec.num_classes} classes: a CLIP zero-shot set, scored on its own classes"
    return f"{text} ({spec.note})" if spec.note else text


# ------------------------------------------------------------------------------------------------ the recipe reader
def detect_layout(src: Path, split: str, options: Options) -> str:
    """wds when SRC is a CLIP_benchmark folder with ``split``, coop when it holds a ``split_zhou_*.json`` (or a
    split file is given), else official."""
    if is_clip_benchmark_wds(src, split):
        return WDS
    if options.split_file is not None or (src.is_dir() and any(src.glob("split_zhou_*.json"))):
        return COOP
    return OFFICIAL


def _check_known_names(spec: Spec, names: list[str], split_file: Path) -> list[str]:
    known = project_data(spec.known_names)
    if len(names) != len(known):
        raise DataError(
            f"{split_file}: {len(names)} classes, expected {spec.title}'s {len(known)} "
            f"(pipeline/convert/suites/data/{spec.known_names})"
        )
    for label, (name, expected) in enumerate(zip(names, known, strict=True)):
        if name.casefold() != expected.casefold():
            raise DataError(
                f"{split_file}: label {label} is named {name!r}, expected {expected!r} "
                f"({spec.title}'s class order, pipeline/convert/suites/data/{spec.known_names})"
            )
    return known


def _coop(spec: Spec, src: Path, split: str, options: Options) -> Found:
    if not spec.coop_split:  # CoOp reads the official lists (FGVC-Aircraft)
        if options.split_file is not None:
            raise DataError(
                f"{options.split_file}: CoOp has no split file for {spec.title}; it reads the official lists "
                "(point SRC at CoOp's folder, or at the dataset, without --split-file)"
            )
        assert spec.official is not None
        found = spec.official(src, split)
        found.split_source = found.split_source.replace(OFFICIAL, COOP, 1) + " (CoOp reads the official list)"
        return found
    split_file = options.split_file or src / spec.coop_split
    images = src / spec.coop_images if spec.coop_images and (src / spec.coop_images).is_dir() else src
    records, names = read_coop_split(split_file, images, split, rename=_space)
    source = f"coop:{split_file.name}, '_' as space"
    if spec.known_names:
        names = _check_known_names(spec, names, split_file)
        source += f", checked against {spec.known_names}"
    return Found(records, names, f"coop:{split_file.name}", source)


def read(spec: Spec, src: Path, options: Options) -> Source:
    split = options.split or "test"
    layout = options.layout or detect_layout(src, split, options)
    templates, template_source = None, spec.templates
    if layout == WDS:
        wds = read_clip_benchmark_wds(src, split)
        found = Found(wds.records, wds.classnames, f"wds:{split}/", "wds:classnames.txt")
        if wds.templates:
            templates, template_source = wds.templates, "wds:zeroshot_classification_templates.txt"
    elif layout == COOP:
        found = _coop(spec, src, split, options)
    elif spec.official is None:
        raise DataError(
            f"{src}: {spec.title} has no official still images (the dataset is videos); convert CoOp's mid-frames "
            f"instead: a folder with {spec.coop_images}/<Class_Name>/<video>.jpg and {spec.coop_split} "
            "(--layout coop), or a CLIP_benchmark-style webdataset folder (--layout wds)"
        )
    elif split not in spec.official_splits:
        raise DataError(
            f"{src}: the official {spec.title} layout has no {split!r} split (it has "
            f"{', '.join(spec.official_splits)}); CoOp's {spec.coop_split or 'lists'} give train / val / test "
            "(--layout coop)"
        )
    else:
        found = spec.official(src, split)
    return Source(
        records=found.records,
        classnames=found.classnames,
        templates=templates if templates is not None else template_set(spec.templates),
        layout=layout,
        split=split,
        template_set=template_source,
        protocol={"split_source": found.split_source, "classnames": found.names_source},
    )


for _spec in SPECS:
    register(
        Recipe(
            name=_spec.name,
            summary=_summary(_spec),
            splits=_spec.splits,
            layouts=_spec.layouts,
            read=functools.partial(read, _spec),
            default_split="test",
        )
    )
