"""The ten zero-shot suites (pipeline/convert/suites/zeroshot.py): miniature trees in every layout → labelled sets.

Each tree keeps the dataset's real class list (or a real prefix of it where the list is long) with images for a
few classes only; every image is distinct, and its key (file name) says which class it truly belongs to.
"""

from __future__ import annotations

import io
import itertools
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from pipeline.convert.cli import main as convert_main
from pipeline.convert.suites.convert import convert_suite
from pipeline.convert.suites.names import clip_benchmark_classnames, project_data, template_set
from pipeline.convert.suites.registry import Options, recipes
from pipeline.data.format import DataError, iter_rows, read_manifest

NAMES = (
    "caltech101",
    "flowers102",
    "food101",
    "sun397",
    "dtd",
    "fgvc-aircraft",
    "stanford-cars",
    "oxford-pets",
    "eurosat",
    "ucf101",
)

# Food-101's meta/classes.txt (101 classes).
FOOD101 = """apple_pie baby_back_ribs baklava beef_carpaccio beef_tartare beet_salad beignets bibimbap bread_pudding
breakfast_burrito bruschetta caesar_salad cannoli caprese_salad carrot_cake ceviche cheese_plate cheesecake
chicken_curry chicken_quesadilla chicken_wings chocolate_cake chocolate_mousse churros clam_chowder club_sandwich
crab_cakes creme_brulee croque_madame cup_cakes deviled_eggs donuts dumplings edamame eggs_benedict escargots
falafel filet_mignon fish_and_chips foie_gras french_fries french_onion_soup french_toast fried_calamari fried_rice
frozen_yogurt garlic_bread gnocchi greek_salad grilled_cheese_sandwich grilled_salmon guacamole gyoza hamburger
hot_and_sour_soup hot_dog huevos_rancheros hummus ice_cream lasagna lobster_bisque lobster_roll_sandwich
macaroni_and_cheese macarons miso_soup mussels nachos omelette onion_rings oysters pad_thai paella pancakes
panna_cotta peking_duck pho pizza pork_chop poutine prime_rib pulled_pork_sandwich ramen ravioli red_velvet_cake
risotto samosa sashimi scallops seaweed_salad shrimp_and_grits spaghetti_bolognese spaghetti_carbonara spring_rolls
steak strawberry_shortcake sushi tacos takoyaki tiramisu tuna_tartare waffles""".split()

# DTD's 47 texture folders (images/<class>/).
DTD = """banded blotchy braided bubbly bumpy chequered cobwebbed cracked crosshatched crystalline dotted fibrous flecked
freckled frilly gauzy grid grooved honeycombed interlaced knitted lacelike lined marbled matted meshed paisley
perforated pitted pleated polka-dotted porous potholed scaly smeared spiralled sprinkled stained stratified striped
studded swirly veined waffled woven wrinkled zigzagged""".split()

# FGVC-Aircraft's data/variants.txt (100 variants).
FGVC = [
    *"707-320 727-200 737-200 737-300 737-400 737-500 737-600 737-700 737-800 737-900 747-100 747-200".split(),
    *"747-300 747-400 757-200 757-300 767-200 767-300 767-400 777-200 777-300 A300B4 A310 A318 A319".split(),
    *"A320 A321 A330-200 A330-300 A340-200 A340-300 A340-500 A340-600 A380 ATR-42 ATR-72 An-12".split(),
    "BAE 146-200",
    "BAE 146-300",
    "BAE-125",
    "Beechcraft 1900",
    "Boeing 717",
    "C-130",
    "C-47",
    "CRJ-200",
    "CRJ-700",
    "CRJ-900",
    "Cessna 172",
    "Cessna 208",
    "Cessna 525",
    "Cessna 560",
    "Challenger 600",
    *"DC-10 DC-3 DC-6 DC-8 DC-9-30 DH-82 DHC-1 DHC-6 DHC-8-100 DHC-8-300 DR-400".split(),
    "Dornier 328",
    *"E-170 E-190 E-195 EMB-120".split(),
    "ERJ 135",
    "ERJ 145",
    "Embraer Legacy 600",
    "Eurofighter Typhoon",
    "F-16A/B",
    "F/A-18",
    "Falcon 2000",
    "Falcon 900",
    "Fokker 100",
    "Fokker 50",
    "Fokker 70",
    "Global Express",
    "Gulfstream IV",
    "Gulfstream V",
    "Hawk T1",
    *"Il-76 L-1011 MD-11 MD-80 MD-87 MD-90 Metroliner".split(),
    "Model B200",
    "PA-28",
    "SR-20",
    "Saab 2000",
    "Saab 340",
    *"Spitfire Tornado Tu-134 Tu-154 Yak-42".split(),
]

# The first ten of Stanford Cars' devkit/cars_meta.mat class_names (of 196).
CARS = [
    "AM General Hummer SUV 2000",
    "Acura RL Sedan 2012",
    "Acura TL Sedan 2012",
    "Acura TL Type-S 2008",
    "Acura TSX Sedan 2012",
    "Acura Integra Type R 2001",
    "Acura ZDX Hatchback 2012",
    "Aston Martin V8 Vantage Convertible 2012",
    "Aston Martin V8 Vantage Coupe 2012",
    "Aston Martin Virage Convertible 2012",
]

# The first lines of SUN397's ClassName.txt (of 397).
SUN397 = """/a/abbey /a/airplane_cabin /a/airport_terminal /a/alley /a/amphitheater /a/amusement_arcade /a/amusement_park
/a/anechoic_chamber /a/apartment_building/outdoor /a/apse/indoor /a/aquarium /a/aqueduct""".split()

EUROSAT = "AnnualCrop Forest HerbaceousVegetation Highway Industrial Pasture PermanentCrop Residential River SeaLake"
# CoOp's EuroSAT names (its split_zhou_EuroSAT.json).
EUROSAT_COOP = [
    "Annual Crop Land",
    "Forest",
    "Herbaceous Vegetation Land",
    "Highway or Road",
    "Industrial Buildings",
    "Pasture Land",
    "Permanent Crop Land",
    "Residential Buildings",
    "River",
    "Sea or Lake",
]

_serial = itertools.count(1)


def _image(path: Path) -> bytes:
    """A tiny image unlike every other one written here (JPEG for .jpg, PNG otherwise)."""
    n = next(_serial)
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = (n * 37 % 256, n * 91 % 256, (n * 53 + 7) % 256)
    Image.new("RGB", (8, 8), colour).save(path, format="JPEG" if path.suffix == ".jpg" else "PNG")
    return path.read_bytes()


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _convert(name: str, src: Path, tmp_path: Path, **options: object):
    out = tmp_path / f"out-{name}-{next(_serial)}"
    convert_suite(name, src, out, Options(**options))  # type: ignore[arg-type]
    rows = list(iter_rows(out, columns=["image", "label", "key"]))
    return read_manifest(out), rows


def _check_rows(manifest, rows, expected: dict[str, str]) -> None:
    """Every row's class name is the one its key says; every expected image is there, once."""
    assert sorted(r["key"] for r in rows) == sorted(expected)
    for row in rows:
        assert manifest.classnames[row["label"]] == expected[row["key"]], row["key"]


# ------------------------------------------------------------------------------------------------ official trees
def _food101(root: Path) -> dict[str, str]:
    base = root / "food-101"
    _write(base / "meta" / "classes.txt", "\n".join(FOOD101) + "\n")
    entries = ["apple_pie/101", "apple_pie/102", "cheese_plate/201", "waffles/301", "waffles/302"]
    _write(base / "meta" / "test.txt", "\n".join(entries) + "\n")
    for e in entries:
        _image(base / "images" / f"{e}.jpg")
    return {f"{e}.jpg": e.split("/")[0].replace("_", " ") for e in entries}


def _flowers102(root: Path) -> dict[str, str]:
    base = root / "flowers-102"
    labels = [1, 1, 52, 102, 52, 1]  # 1-based, image 1 … 6
    base.mkdir(parents=True)
    savemat(base / "imagelabels.mat", {"labels": np.array(labels)})
    savemat(
        base / "setid.mat", {"trnid": np.array([1]), "valid": np.array([2]), "tstid": np.array([3, 4, 5, 6])}
    )
    names = clip_benchmark_classnames("flowers")
    for i in range(1, 7):
        _image(base / "jpg" / f"image_{i:05d}.jpg")
    return {f"image_{i:05d}.jpg": names[labels[i - 1] - 1] for i in (3, 4, 5, 6)}


def _sun397(root: Path) -> dict[str, str]:
    base = root / "SUN397"
    _write(base / "ClassName.txt", "\n".join(SUN397) + "\n")
    files = {
        "a/abbey/sun_aaa.jpg": "abbey",
        "a/abbey/sun_aab.jpg": "abbey",
        "a/apse/indoor/sun_bbb.jpg": "apse indoor",
        "a/apartment_building/outdoor/sun_ccc.jpg": "apartment building outdoor",
    }
    for f in files:
        _image(base / f)
    return files


def _dtd(root: Path) -> dict[str, str]:
    base = root / "dtd" / "dtd"
    for cls in DTD:
        (base / "images" / cls).mkdir(parents=True)
    entries = ["banded/banded_0001.jpg", "banded/banded_0002.jpg", "polka-dotted/polka-dotted_0003.jpg"]
    entries += ["zigzagged/zigzagged_0004.jpg"]
    _write(base / "labels" / "test1.txt", "\n".join(entries) + "\n")
    for e in entries:
        _image(base / "images" / e)
    return {e: e.split("/")[0] for e in entries}


def _fgvc(root: Path) -> dict[str, str]:
    base = root / "fgvc-aircraft-2013b" / "data"
    _write(base / "variants.txt", "\n".join(FGVC) + "\n")
    listed = {"1000001": "707-320", "1000002": "Boeing 717", "1000003": "Yak-42", "1000004": "F/A-18"}
    _write(base / "images_variant_test.txt", "".join(f"{i} {v}\n" for i, v in listed.items()))
    for i in listed:
        _image(base / "images" / f"{i}.jpg")
    return {f"{i}.jpg": v for i, v in listed.items()}


def _cars(root: Path) -> dict[str, str]:
    base = root / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    savemat(base / "devkit" / "cars_meta.mat", {"class_names": np.array(CARS, dtype=object)})
    annos = [("00001.jpg", 1), ("00002.jpg", 10), ("00003.jpg", 4)]
    table = np.array(annos, dtype=[("fname", "O"), ("class", "O")])
    savemat(base / "cars_test_annos_withlabels.mat", {"annotations": table})
    for fname, _ in annos:
        _image(base / "cars_test" / fname)
    return {fname: CARS[cls - 1] for fname, cls in annos}


def _pets(root: Path) -> dict[str, str]:
    base = root / "oxford-iiit-pet"
    lines = ["Abyssinian_1 1 1 1", "Bengal_3 6 1 6", "yorkshire_terrier_5 37 2 25", "Abyssinian_2 1 1 1"]
    _write(base / "annotations" / "test.txt", "\n".join(lines) + "\n")
    names = clip_benchmark_classnames("pets")
    for line in lines:
        _image(base / "images" / f"{line.split()[0]}.jpg")
    return {f"{line.split()[0]}.jpg": names[int(line.split()[1]) - 1] for line in lines}


def _eurosat(root: Path) -> dict[str, str]:
    base = root / "eurosat" / "2750"
    names = dict(zip(EUROSAT.split(), clip_benchmark_classnames("eurosat"), strict=True))
    files = ["AnnualCrop/AnnualCrop_1.jpg", "AnnualCrop/AnnualCrop_2.jpg", "SeaLake/SeaLake_1.jpg"]
    files += ["Forest/Forest_7.jpg"]
    for f in files:
        _image(base / f)
    return {f: names[f.split("/")[0]] for f in files}


def _caltech101(root: Path) -> dict[str, str]:
    base = root / "caltech101" / "101_ObjectCategories"
    _image(base / "BACKGROUND_Google" / "image_0001.jpg")  # not a class: left out
    files = [
        "Faces/image_0001.jpg",
        "yin_yang/image_0001.jpg",
        "yin_yang/image_0002.jpg",
        "car_side/image_0003.jpg",
    ]
    for f in files:
        _image(base / f)
    names = {"Faces": "off-center face", "yin_yang": "yin and yang symbol", "car_side": "side of a car"}
    return {f: names[f.split("/")[0]] for f in files}


OFFICIAL = {
    "food101": (_food101, "official:meta/test.txt", "food-101 meta/classes.txt"),
    "flowers102": (_flowers102, "official:setid.mat tstid", "clip_benchmark:flowers"),
    "sun397": (_sun397, "official:none", "SUN397 ClassName.txt"),
    "dtd": (_dtd, "official:labels/test1.txt", "DTD images/ folder names"),
    "fgvc-aircraft": (_fgvc, "official:images_variant_test.txt", "FGVC-Aircraft variants.txt"),
    "stanford-cars": (_cars, "official:cars_test_annos_withlabels.mat", "Stanford Cars devkit/cars_meta.mat"),
    "oxford-pets": (_pets, "official:annotations/test.txt", "clip_benchmark:pets"),
    "eurosat": (_eurosat, "official:none", "clip_benchmark:eurosat"),
    "caltech101": (_caltech101, "official:none", "clip_benchmark:caltech101"),
}
CLIP_SET = {
    "food101": "clip:food101",
    "flowers102": "clip:flowers",
    "sun397": "clip:sun397",
    "dtd": "clip:dtd",
    "fgvc-aircraft": "clip:fgvc_aircraft",
    "stanford-cars": "clip:cars",
    "oxford-pets": "clip:pets",
    "eurosat": "clip:eurosat",
    "caltech101": "clip:caltech101",
    "ucf101": "clip:ucf101",
}


def test_the_ten_recipes_are_registered():
    known = recipes()
    for name in NAMES:
        recipe = known[name]
        assert recipe.default_split == "test" and "test" in recipe.splits
        assert recipe.layouts == (("coop", "wds") if name == "ucf101" else ("official", "coop", "wds"))
    assert "videos" in known["ucf101"].summary and "no split" in known["eurosat"].summary


def test_class_lists_shipped_with_the_project():
    ucf = project_data("ucf101_classnames.txt")
    assert len(ucf) == 101 and ucf[0] == "Apply Eye Makeup" and ucf[-1] == "Yo Yo"
    assert len(template_set("clip:ucf101")) == 48
    folders = project_data("caltech101_folders.txt")
    assert len(folders) == 101 == len(clip_benchmark_classnames("caltech101")) - 1
    assert folders == sorted(folders) and "BACKGROUND_Google" not in folders


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_official_layout(name, tmp_path):
    build, split_source, names_source = OFFICIAL[name]
    expected = build(tmp_path / "src")
    manifest, rows = _convert(name, tmp_path / "src", tmp_path)
    _check_rows(manifest, rows, expected)
    assert manifest.num_rows == len(expected)
    assert manifest.protocol["suite"] == name and manifest.protocol["layout"] == "official"
    assert manifest.protocol["split"] == "test" and manifest.protocol["templates"] == CLIP_SET[name]
    assert manifest.protocol["split_source"].startswith(split_source)
    assert manifest.protocol["classnames"].startswith(names_source)
    assert manifest.templates == template_set(CLIP_SET[name])


def test_official_labels_follow_the_full_class_lists(tmp_path):
    """Labels index the real list, not the few classes a copy holds."""
    _food101(tmp_path / "food")
    manifest, rows = _convert("food101", tmp_path / "food", tmp_path)
    assert len(manifest.classnames) == 101 and manifest.classnames[16] == "cheese plate"
    assert {r["key"]: r["label"] for r in rows}["waffles/301.jpg"] == 100
    _caltech101(tmp_path / "caltech")
    manifest, rows = _convert("caltech101", tmp_path / "caltech", tmp_path)
    assert len(manifest.classnames) == 101 and "background" not in manifest.classnames
    assert {r["key"]: r["label"] for r in rows}["yin_yang/image_0002.jpg"] == 100
    assert len(manifest.templates) == 34
    _dtd(tmp_path / "dtd")  # the dataset folder itself, not torchvision's root
    manifest, rows = _convert("dtd", tmp_path / "dtd" / "dtd" / "dtd", tmp_path)
    assert len(manifest.classnames) == 47 and manifest.classnames[30] == "polka-dotted"


# ------------------------------------------------------------------------------------------------ CoOp trees
def _coop(root: Path, split_file: str, image_dir: str, names: list[str], present: dict[int, list[str]]):
    """CoOp's folder: the split file's test list holds ``present`` images, and one missing image per other class
    (the split names every class; this copy lacks their images)."""
    test, expected = [], {}
    for label, cname in enumerate(names):
        for rel in present.get(label, [f"{cname}/missing.jpg"]):
            test.append([rel, label, cname])
            if label in present:
                _image(root / image_dir / rel)
                expected[rel] = cname.replace("_", " ")
    _write(root / split_file, json.dumps({"train": test[:1], "val": test[:1], "test": test}))
    return expected, len(test) - len(expected)


def _caltech_coop_names() -> list[str]:
    renames = {"Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike", "airplanes": "airplane"}
    folders = [f for f in project_data("caltech101_folders.txt") if f != "Faces_easy"]
    return [renames.get(f, f) for f in folders]


COOP = {  # name → split file, image folder, CoOp's class names (a real prefix where long)
    "food101": ("split_zhou_Food101.json", "images", FOOD101),
    "flowers102": ("split_zhou_OxfordFlowers.json", "jpg", clip_benchmark_classnames("flowers")[:12]),
    "sun397": ("split_zhou_SUN397.json", "SUN397", ["abbey", "airplane_cabin", "airport_terminal", "alley"]),
    "dtd": ("split_zhou_DescribableTextures.json", "images", DTD),
    "stanford-cars": ("split_zhou_StanfordCars.json", "", CARS),
    "oxford-pets": ("split_zhou_OxfordPets.json", "images", ["abyssinian", "american_bulldog", "bengal"]),
    "eurosat": ("split_zhou_EuroSAT.json", "2750", EUROSAT_COOP),
    "caltech101": ("split_zhou_Caltech101.json", "101_ObjectCategories", _caltech_coop_names()),
    "ucf101": (
        "split_zhou_UCF101.json",
        "UCF-101-midframes",
        [n.replace(" ", "_") for n in project_data("ucf101_classnames.txt")],
    ),
}


@pytest.mark.parametrize("name", sorted(COOP))
def test_coop_layout(name, tmp_path):
    split_file, image_dir, names = COOP[name]
    last = len(names) - 1
    present = {0: [f"{names[0]}/a_0.jpg", f"{names[0]}/a_1.jpg"], last: [f"{names[last]}/b_0.jpg"]}
    expected, missing = _coop(tmp_path / "src", split_file, image_dir, names, present)
    manifest, rows = _convert(name, tmp_path / "src", tmp_path)
    _check_rows(manifest, rows, expected)
    assert manifest.classnames == [n.replace("_", " ") for n in names]
    assert manifest.skipped.get("total", 0) == missing
    assert manifest.protocol["layout"] == "coop"
    assert manifest.protocol["split_source"] == f"coop:{split_file}"
    assert manifest.protocol["classnames"].startswith(f"coop:{split_file}")
    assert manifest.templates == template_set(CLIP_SET[name])
    if name == "ucf101":
        assert manifest.classnames[0] == "Apply Eye Makeup" and len(manifest.templates) == 48
        assert "ucf101_classnames.txt" in manifest.protocol["classnames"]


def test_coop_split_file_given_and_fgvc_reads_the_official_lists(tmp_path):
    names = COOP["food101"][2]
    expected, _ = _coop(tmp_path / "food", "elsewhere.json", "images", names, {3: ["beef_tartare/x.jpg"]})
    options = {"split_file": tmp_path / "food" / "elsewhere.json"}
    manifest, rows = _convert("food101", tmp_path / "food", tmp_path, **options)
    _check_rows(manifest, rows, expected)
    assert manifest.protocol["split_source"] == "coop:elsewhere.json"
    # CoOp's fgvc_aircraft/ folder is the 2013b data/ folder: no split file, the official lists
    expected = _fgvc(tmp_path / "fgvc")
    coop_folder = tmp_path / "fgvc" / "fgvc-aircraft-2013b" / "data"
    manifest, rows = _convert("fgvc-aircraft", coop_folder, tmp_path, layout="coop")
    _check_rows(manifest, rows, expected)
    assert manifest.protocol["layout"] == "coop"
    assert manifest.protocol["split_source"].startswith("coop:images_variant_test.txt")


# ------------------------------------------------------------------------------------------------ CLIP_benchmark wds
def _wds(root: Path, classnames: list[str], samples: list[tuple[bytes, int]], templates: list[str] | None):
    """CLIP_benchmark's export: test/0.tar with <key>.png|webp + <key>.cls, test/nshards.txt, classnames.txt."""
    (root / "test").mkdir(parents=True)
    with tarfile.open(root / "test" / "0.tar", "w") as tar:
        for i, (data, label) in enumerate(samples):
            ext = "webp" if i % 2 else "png"
            for member, payload in ((f"s{i:05d}.{ext}", data), (f"s{i:05d}.cls", str(label).encode())):
                info = tarfile.TarInfo(member)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    _write(root / "test" / "nshards.txt", "1\n")
    _write(root / "classnames.txt", "\n".join(classnames) + "\n")
    if templates is not None:
        _write(root / "zeroshot_classification_templates.txt", "\n".join(templates) + "\n")


@pytest.mark.parametrize("name", ["food101", "eurosat", "caltech101", "oxford-pets"])
def test_wds_layout_matches_the_official_layout(name, tmp_path):
    """The same images in CLIP_benchmark's wds folder and in the official layout: the same (bytes, label) pairs."""
    OFFICIAL[name][0](tmp_path / "official")
    official, official_rows = _convert(name, tmp_path / "official", tmp_path)
    pairs = sorted((r["image"], r["label"]) for r in official_rows)
    templates = ["a photo of {c}.", "a blurry photo of {c}."]
    _wds(tmp_path / "wds", official.classnames, pairs, templates)
    manifest, rows = _convert(name, tmp_path / "wds", tmp_path)
    assert sorted((r["image"], r["label"]) for r in rows) == pairs
    assert manifest.classnames == official.classnames
    assert manifest.templates == templates
    assert manifest.protocol["layout"] == "wds" and manifest.protocol["classnames"] == "wds:classnames.txt"
    assert manifest.protocol["templates"] == "wds:zeroshot_classification_templates.txt"
    assert manifest.protocol["split_source"] == "wds:test/"


def test_wds_without_templates_uses_clips_set(tmp_path):
    names = project_data("ucf101_classnames.txt")
    samples = [(_image(tmp_path / f"img{i}.png"), label) for i, label in enumerate((0, 100, 50))]
    _wds(tmp_path / "wds", names, samples, None)
    manifest, rows = _convert("ucf101", tmp_path / "wds", tmp_path)
    assert sorted((r["image"], r["label"]) for r in rows) == sorted(samples)
    assert (
        manifest.templates == template_set("clip:ucf101") and manifest.protocol["templates"] == "clip:ucf101"
    )


# ------------------------------------------------------------------------------------------------ the CLI
def test_cli_suite_and_list(tmp_path, capsys):
    expected = _pets(tmp_path / "pets")
    out = tmp_path / "out"
    assert convert_main(["suite", "oxford-pets", str(tmp_path / "pets"), str(out)]) == 0
    assert read_manifest(out).num_rows == len(expected)
    assert "layout official" in capsys.readouterr().out
    assert convert_main(["suite", "--list"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in NAMES)


# ------------------------------------------------------------------------------------------------ bad input
def _raises(
    name: str, src: Path, tmp_path: Path, names_file: Path | str, *words: str, **options: object
) -> None:
    """One DataError, naming the file and saying what was expected."""
    with pytest.raises(DataError) as err:
        convert_suite(name, src, tmp_path / f"bad-{next(_serial)}", Options(**options))  # type: ignore[arg-type]
    message = str(err.value)
    assert str(names_file) in message, message
    for word in words:
        assert word in message, message


def test_missing_split_files(tmp_path):
    _food101(tmp_path / "food")
    _raises(
        "food101", tmp_path / "food", tmp_path, tmp_path / "food" / "split_zhou_Food101.json", layout="coop"
    )
    missing = tmp_path / "nowhere.json"
    _raises("food101", tmp_path / "food", tmp_path, missing, "split_zhou", split_file=missing)
    _dtd(tmp_path / "dtd")
    (tmp_path / "dtd" / "dtd" / "dtd" / "labels" / "test1.txt").unlink()
    _raises("dtd", tmp_path / "dtd", tmp_path, Path("dtd/dtd/labels/test1.txt"), "partition 1")
    _raises("sun397", tmp_path / "dtd", tmp_path, "ClassName.txt", "SUN397")
    _sun397(tmp_path / "sun")
    _raises(
        "sun397",
        tmp_path / "sun",
        tmp_path,
        tmp_path / "sun",
        "no 'train' split",
        "--layout coop",
        split="train",
    )


def test_missing_class_list_files(tmp_path):
    _food101(tmp_path / "food")
    (tmp_path / "food" / "food-101" / "meta" / "classes.txt").unlink()
    _raises("food101", tmp_path / "food", tmp_path, Path("food-101/meta/classes.txt"), "Food-101")
    _cars(tmp_path / "cars")
    (tmp_path / "cars" / "stanford_cars" / "devkit" / "cars_meta.mat").unlink()
    _raises("stanford-cars", tmp_path / "cars", tmp_path, Path("devkit/cars_meta.mat"))


def test_class_folder_without_images(tmp_path):
    _eurosat(tmp_path / "eurosat")
    empty = tmp_path / "eurosat" / "eurosat" / "2750" / "Pasture"
    empty.mkdir()
    _raises("eurosat", tmp_path / "eurosat", tmp_path, empty, "no images")
    _caltech101(tmp_path / "caltech")
    empty = tmp_path / "caltech" / "caltech101" / "101_ObjectCategories" / "accordion"
    (empty / "sub").mkdir(parents=True)
    _raises("caltech101", tmp_path / "caltech", tmp_path, empty, "no images")
    _sun397(tmp_path / "sun")
    empty = tmp_path / "sun" / "SUN397" / "a" / "alley"
    empty.mkdir()
    _raises("sun397", tmp_path / "sun", tmp_path, empty, "no images")


def test_labels_outside_the_class_list(tmp_path):
    _pets(tmp_path / "pets")
    listing = tmp_path / "pets" / "oxford-iiit-pet" / "annotations" / "test.txt"
    listing.write_text(listing.read_text() + "Mystery_1 38 1 1\n")
    _raises("oxford-pets", tmp_path / "pets", tmp_path, listing, "38", "1 … 37")
    _food101(tmp_path / "food")
    listing = tmp_path / "food" / "food-101" / "meta" / "test.txt"
    listing.write_text(listing.read_text() + "pot_noodle/1\n")
    _raises("food101", tmp_path / "food", tmp_path, listing, "pot_noodle", "classes.txt")
    _flowers102(tmp_path / "flowers")
    labels = tmp_path / "flowers" / "flowers-102" / "imagelabels.mat"
    savemat(labels, {"labels": np.array([1, 1, 52, 103, 52, 1])})
    _raises("flowers102", tmp_path / "flowers", tmp_path, labels, "103")
    _fgvc(tmp_path / "fgvc")
    listing = tmp_path / "fgvc" / "fgvc-aircraft-2013b" / "data" / "images_variant_test.txt"
    listing.write_text(listing.read_text() + "1000009 Concorde\n")
    _raises("fgvc-aircraft", tmp_path / "fgvc", tmp_path, listing, "Concorde", "variants.txt")
    _cars(tmp_path / "cars")
    annos = tmp_path / "cars" / "stanford_cars" / "cars_test_annos_withlabels.mat"
    table = np.array([("00001.jpg", 11)], dtype=[("fname", "O"), ("class", "O")])
    savemat(annos, {"annotations": table})
    _raises("stanford-cars", tmp_path / "cars", tmp_path, annos, "class 11")
    _caltech101(tmp_path / "caltech")
    stray = tmp_path / "caltech" / "caltech101" / "101_ObjectCategories" / "Faces_3"
    _image(stray / "image_0001.jpg")
    _raises("caltech101", tmp_path / "caltech", tmp_path, stray, "not a class")


def test_ucf101_needs_coops_mid_frames(tmp_path):
    videos = tmp_path / "UCF-101" / "ApplyEyeMakeup"
    videos.mkdir(parents=True)
    (videos / "v_ApplyEyeMakeup_g01_c01.avi").write_bytes(b"\0" * 16)
    _raises(
        "ucf101", tmp_path / "UCF-101", tmp_path, tmp_path / "UCF-101", "mid-frames", "split_zhou_UCF101.json"
    )
    _raises("ucf101", tmp_path / "UCF-101", tmp_path, "official", "coop, wds", layout="official")
    # a split whose classes are not UCF101's, in UCF101's order
    names = [n.replace(" ", "_") for n in project_data("ucf101_classnames.txt")]
    names[0], names[1] = names[1], names[0]
    _coop(
        tmp_path / "ucf", "split_zhou_UCF101.json", "UCF-101-midframes", names, {0: ["Apply_Lipstick/a.jpg"]}
    )
    split_file = tmp_path / "ucf" / "split_zhou_UCF101.json"
    _raises("ucf101", tmp_path / "ucf", tmp_path, split_file, "label 0", "Apply Eye Makeup")
