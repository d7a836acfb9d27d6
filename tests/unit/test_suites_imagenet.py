"""The ImageNet recipes (``dive data suite imagenet…``): miniature trees in every layout they read.

Real wnids, a few classes each, tiny images; the expected labels, names and heads are computed here from timm's
and open_clip's files directly, not through :mod:`pipeline.convert.suites.names`.
"""

from __future__ import annotations

import io
import json
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
from PIL import Image

from dive.heads import project_logits
from pipeline.convert.cli import main as data_main
from pipeline.convert.suites.convert import convert_suite
from pipeline.convert.suites.registry import Options
from pipeline.data.format import DataError, iter_rows, read_manifest
from tests.helpers import write_tar


def timm_list(name: str) -> list[str]:
    text = resources.files("timm").joinpath(f"data/_info/{name}").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


WNIDS = timm_list("imagenet_synsets.txt")
CLIP_NAMES = list(IMAGENET_CLASSNAMES)
# ImageNet-1k classes used below: tench (0), goldfish (1), kit fox, wine bottle.
VAL_WNIDS = ["n01440764", "n01443537", "n02119789", "n04591713"]


def image(seed: int, fmt: str = "JPEG") -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def put(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def rows(out: Path) -> list[dict]:
    return list(iter_rows(out, columns=["image", "label", "key"]))


def pairs(out: Path) -> list[tuple[bytes, int]]:
    return sorted((r["image"], r["label"]) for r in rows(out))


def wnid_label(wnid: str) -> int:
    return WNIDS.index(wnid)


# --------------------------------------------------------------------------------------------------- ImageNet
# The validation images: ILSVRC2012_val_<k>.JPEG, k = 1 … 8, two per class, interleaved as in the real set.
VAL = [(f"ILSVRC2012_val_{k:08d}.JPEG", VAL_WNIDS[(k - 1) % 4], image(k)) for k in range(1, 9)]
TRAIN = [
    (wnid, f"{wnid}_{k}.JPEG", image(100 + 10 * i + k)) for i, wnid in enumerate(VAL_WNIDS) for k in range(2)
]
EXPECTED_VAL = sorted((data, wnid_label(wnid)) for _, wnid, data in VAL)
EXPECTED_TRAIN = sorted((data, wnid_label(wnid)) for wnid, _, data in TRAIN)
# The devkit's ILSVRC2012_IDs are not in wnid order (ID 1 is the kit fox); 1001 is a non-leaf synset.
META = {1: "n02119789", 2: "n04591713", 3: "n01440764", 4: "n01443537", 1001: "n00001740"}


def kaggle_tree(root: Path) -> Path:
    """Kaggle's ILSVRC download: CLS-LOC/train/<wnid>/, CLS-LOC/val/*.JPEG flat, LOC_val_solution.csv."""
    cls_loc = root / "ILSVRC" / "Data" / "CLS-LOC"
    for name, _, data in VAL:
        put(cls_loc / "val" / name, data)
    for wnid, name, data in TRAIN:
        put(cls_loc / "train" / wnid / name, data)
    lines = ["ImageId,PredictionString"] + [
        f"{Path(name).stem},{wnid} 10 20 30 40 {wnid} 1 2 3 4" for name, wnid, _ in VAL
    ]
    (root / "LOC_val_solution.csv").write_text("\n".join(lines) + "\n")
    return root


def flat_val(root: Path) -> Path:
    for name, _, data in VAL:
        put(root / "ILSVRC2012_img_val" / name, data)
    return root


def devkit(root: Path) -> Path:
    """The flat folder + the devkit's ground truth (ILSVRC2012_IDs in file order) and meta.mat."""
    flat_val(root)
    data = root / "ILSVRC2012_devkit_t12" / "data"
    data.mkdir(parents=True)
    id_of = {wnid: i for i, wnid in META.items()}
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{id_of[w]}\n" for _, w, _ in VAL))
    synsets = np.array(
        [(i, wnid, "words", 0) for i, wnid in META.items()],
        dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")],
    )
    scipy.io.savemat(str(data / "meta.mat"), {"synsets": synsets})
    return root


def torchvision_tree(root: Path) -> Path:
    for name, wnid, data in VAL:
        put(root / "val" / wnid / name, data)
    for wnid, name, data in TRAIN:
        put(root / "train" / wnid / name, data)
    return root


def wds_folder(root: Path, classnames: list[str], samples: list[tuple[bytes, int]]) -> Path:
    """CLIP_benchmark's export: classnames.txt, the templates file, test/0.tar with <key>.jpg + <key>.cls."""
    root.mkdir(parents=True)
    (root / "classnames.txt").write_text("\n".join(classnames) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\n")
    (root / "test").mkdir()
    members = {}
    for i, (data, label) in enumerate(samples):
        members[f"s{i:04d}.jpg"] = data
        members[f"s{i:04d}.cls"] = str(label).encode()
    write_tar(root / "test" / "0.tar", members)
    return root


def check_imagenet_manifest(out: Path) -> None:
    m = read_manifest(out)
    assert m.classnames == CLIP_NAMES
    assert len(m.templates) == 80 and m.protocol["templates"] == "openai_imagenet"
    assert m.head == "" and m.label_map() is None
    assert m.protocol["suite"] in ("imagenet", "imagenet-v2", "imagenet-sketch")
    for r in rows(out):  # keys hold the file name, which says the true class
        name = Path(r["key"]).name
        wnid = dict((n, w) for n, w, _ in VAL).get(name) or name.split("_")[0]
        assert r["label"] == wnid_label(wnid) and m.classnames[r["label"]] == CLIP_NAMES[WNIDS.index(wnid)]


def test_imagenet_val_layouts_agree(tmp_path):
    outs = {}
    kaggle = kaggle_tree(tmp_path / "kaggle")
    outs["kaggle"] = tmp_path / "o_kaggle"
    m = convert_suite("imagenet", kaggle, outs["kaggle"])
    assert m.protocol["layout"] == "ilsvrc" and m.protocol["split"] == "val"
    assert m.protocol["labels"].startswith("LOC_val_solution.csv")
    assert m.protocol["classnames"] == "open_clip IMAGENET_CLASSNAMES"

    # The flat folder with each label file given by --labels: LOC_val_solution.csv, "file wnid" pairs.
    flat = flat_val(tmp_path / "flat")
    outs["flat+csv"] = tmp_path / "o_csv"
    convert_suite("imagenet", flat, outs["flat+csv"], Options(labels=kaggle / "LOC_val_solution.csv"))
    pairs_file = tmp_path / "val_labels.txt"
    pairs_file.write_text("".join(f"{name} {wnid}\n" for name, wnid, _ in VAL))
    outs["flat+pairs"] = tmp_path / "o_pairs"
    convert_suite("imagenet", flat / "ILSVRC2012_img_val", outs["flat+pairs"], Options(labels=pairs_file))

    # The devkit's ground truth + meta.mat, found in SRC without --labels.
    outs["devkit"] = tmp_path / "o_devkit"
    m = convert_suite("imagenet", devkit(tmp_path / "devkit"), outs["devkit"])
    assert "devkit" in m.protocol["labels"]

    outs["torchvision"] = tmp_path / "o_tv"
    m = convert_suite("imagenet", torchvision_tree(tmp_path / "tv"), outs["torchvision"])
    assert m.protocol["layout"] == "torchvision"

    wds = wds_folder(tmp_path / "wds_imagenet1k", CLIP_NAMES, [(d, wnid_label(w)) for _, w, d in VAL])
    outs["wds"] = tmp_path / "o_wds"
    assert convert_suite("imagenet", wds, outs["wds"]).protocol["layout"] == "wds"

    for name, out in outs.items():
        assert pairs(out) == EXPECTED_VAL, name
        assert read_manifest(out).num_rows == 8
        if name != "wds":
            check_imagenet_manifest(out)


def test_imagenet_train_layouts_agree(tmp_path):
    kaggle, tv = kaggle_tree(tmp_path / "kaggle"), torchvision_tree(tmp_path / "tv")
    m = convert_suite("imagenet", kaggle, tmp_path / "o1", Options(split="train"))
    assert m.protocol["layout"] == "ilsvrc" and m.protocol["split"] == "train"
    m = convert_suite("imagenet", tv, tmp_path / "o2", Options(split="train"))
    assert m.protocol["layout"] == "torchvision"
    assert pairs(tmp_path / "o1") == pairs(tmp_path / "o2") == EXPECTED_TRAIN
    check_imagenet_manifest(tmp_path / "o1")


def test_imagenet_bad_sources_name_the_file(tmp_path):
    flat = flat_val(tmp_path / "flat")
    missing = tmp_path / "nope.csv"
    with pytest.raises(DataError, match="nope.csv"):
        convert_suite("imagenet", flat, tmp_path / "o1", Options(labels=missing))
    with pytest.raises(DataError, match="--labels"):  # a flat folder alone carries no labels
        convert_suite("imagenet", flat, tmp_path / "o2")
    bad = tmp_path / "bad_labels.txt"
    bad.write_text("".join(f"{name} {wnid}\n" for name, wnid, _ in VAL).replace("n04591713", "n99999999"))
    with pytest.raises(DataError, match=r"bad_labels\.txt.*n99999999"):
        convert_suite("imagenet", flat, tmp_path / "o3", Options(labels=bad))
    short = tmp_path / "short.txt"
    short.write_text("".join(f"{name} {wnid}\n" for name, wnid, _ in VAL[:-1]))
    with pytest.raises(DataError, match="ILSVRC2012_val_00000008.JPEG: no label in"):
        convert_suite("imagenet", flat, tmp_path / "o4", Options(labels=short))

    tv = torchvision_tree(tmp_path / "tv")
    put(tmp_path / "tv" / "val" / "n99999999" / "x.JPEG", image(0))
    with pytest.raises(DataError, match=r"val/n99999999"):
        convert_suite("imagenet", tv, tmp_path / "o5")
    (tmp_path / "tv" / "val" / "n99999999" / "x.JPEG").unlink()
    (tmp_path / "tv" / "val" / "n99999999").rename(tmp_path / "tv" / "val" / "n01530575")
    with pytest.raises(DataError, match=r"n01530575: the class folder holds no images"):
        convert_suite("imagenet", tv, tmp_path / "o6")

    dk = devkit(tmp_path / "dk")
    (dk / "ILSVRC2012_devkit_t12" / "data" / "meta.mat").unlink()
    with pytest.raises(DataError, match=r"meta\.mat: missing"):
        convert_suite("imagenet", dk, tmp_path / "o7")


# --------------------------------------------------------------------------------------------------- ImageNet-V2
def test_imagenet_v2_folder_name_is_the_label(tmp_path):
    src = tmp_path / "imagenetv2-matched-frequency-format-val"
    for folder in ("0", "2", "10"):
        for k in range(2):
            put(src / folder / f"{folder}_{k}.jpeg", image(int(folder) * 10 + k))
    out = tmp_path / "out"
    m = convert_suite("imagenet-v2", tmp_path, out)  # the parent of the download's folder
    assert m.num_rows == 6 and m.protocol["split"] == "test"
    assert m.protocol["variant"] == "imagenetv2-matched-frequency-format-val"
    for r in rows(out):
        assert r["label"] == int(Path(r["key"]).parent.name)  # "10" is label 10, not its string rank 1
    assert sorted({r["label"] for r in rows(out)}) == [0, 2, 10]
    assert m.classnames[10] == CLIP_NAMES[10] and len(m.templates) == 80

    put(src / "n01440764" / "x.jpeg", image(1))
    with pytest.raises(DataError, match="n01440764"):
        convert_suite("imagenet-v2", src, tmp_path / "o2")
    (src / "n01440764").rename(src / "1000")
    with pytest.raises(DataError, match="1000: label 1000 is outside"):
        convert_suite("imagenet-v2", src, tmp_path / "o3")


# --------------------------------------------------------------------------------------------------- R / A
@pytest.mark.parametrize("short", ["r", "a"])
def test_imagenet_subsets_map_onto_the_imagenet_head(tmp_path, short):
    synsets = timm_list(f"imagenet_{short}_synsets.txt")
    indices = [int(i) for i in timm_list(f"imagenet_{short}_indices.txt")]
    assert len(synsets) == len(indices) == 200
    chosen = [synsets[0], synsets[1], synsets[-1]]
    root = tmp_path / f"imagenet-{short}"
    for i, wnid in enumerate(chosen):
        for k in range(2):
            put(root / wnid / f"{wnid}_{k}.jpg", image(1000 + 10 * i + k))
    put(root / "README.txt", b"ImageNet-A/R ships a README beside its folders")
    out = tmp_path / "out"
    if short == "r":  # one recipe through the command line
        assert data_main(["suite", f"imagenet-{short}", str(tmp_path), str(out)]) == 0
    else:
        convert_suite(f"imagenet-{short}", root, out)
    m = read_manifest(out)
    assert m.num_rows == 6 and m.protocol["layout"] == "folders"
    assert m.classnames == [CLIP_NAMES[i] for i in indices]
    assert m.head == "imagenet" and m.head_classnames == CLIP_NAMES
    assert len(m.templates) == 80 and len(m.head_templates) == 80
    assert m.head_groups == [[i] for i in indices]
    for r in rows(out):
        wnid = Path(r["key"]).parent.name
        assert r["label"] == synsets.index(wnid)
        assert m.classnames[r["label"]] == CLIP_NAMES[WNIDS.index(wnid)]
    logits = torch.randn(5, 1000)
    mask = torch.tensor([w in set(synsets) for w in WNIDS])
    assert torch.equal(project_logits(logits, m.label_map()), logits[:, mask])

    # CLIP_benchmark's wds_imagenet-{r,a}: the same labels and head; the other subset's folder is refused.
    samples = [(image(2000 + i), synsets.index(w)) for i, w in enumerate(chosen)]
    wds = wds_folder(tmp_path / f"wds_imagenet-{short}", m.classnames, samples)
    m2 = convert_suite(f"imagenet-{short}", wds, tmp_path / "o_wds")
    assert m2.protocol["layout"] == "wds" and m2.head_groups == m.head_groups
    assert pairs(tmp_path / "o_wds") == sorted(samples)
    other = "a" if short == "r" else "r"
    with pytest.raises(DataError, match="classnames.txt"):
        convert_suite(f"imagenet-{other}", wds, tmp_path / "o_other")

    (root / chosen[0] / f"{chosen[0]}_0.jpg").unlink()
    (root / chosen[0] / f"{chosen[0]}_1.jpg").unlink()
    with pytest.raises(DataError, match=f"{chosen[0]}: the class folder holds no images"):
        convert_suite(f"imagenet-{short}", root, tmp_path / "o_empty")


# --------------------------------------------------------------------------------------------------- Sketch
def test_imagenet_sketch_folder_or_parent(tmp_path):
    for i, wnid in enumerate(VAL_WNIDS[:3]):
        put(tmp_path / "sketch" / wnid / f"{wnid}_0.JPEG", image(3000 + i))
    m = convert_suite("imagenet-sketch", tmp_path, tmp_path / "o1")
    convert_suite("imagenet-sketch", tmp_path / "sketch", tmp_path / "o2")
    assert m.num_rows == 3 and pairs(tmp_path / "o1") == pairs(tmp_path / "o2")
    check_imagenet_manifest(tmp_path / "o1")


# --------------------------------------------------------------------------------------------------- ObjectNet
# A few real ObjectNet folders and their ImageNet classes (torchvision indices); air_freshener maps to none.
OBJECTNET = {
    "alarm_clock": ("Alarm clock", ["analog clock", "digital clock"], [409, 530]),
    "backpack": ("Backpack", ["backpack, back pack, knapsack, packsack, rucksack, haversack"], [414]),
    "tie": ("Tie", ["Windsor tie", "bow tie, bow-tie, bowtie"], [906, 457]),
    "tv": ("TV", ["television, television system"], [851]),
    "air_freshener": ("Air freshener", None, None),
}


def objectnet_mappings(folder: Path) -> Path:
    """ObjectNet's mappings/: folder → label, label → ImageNet names, torchvision index → 2012 id, id → names."""
    folder.mkdir(parents=True)
    (folder / "folder_to_objectnet_label.json").write_text(
        json.dumps({f: v[0] for f, v in OBJECTNET.items()})
    )
    (folder / "objectnet_to_imagenet_1k.json").write_text(
        json.dumps({v[0]: "; ".join(v[1]) for v in OBJECTNET.values() if v[1]})
    )
    id_of = {p: (3 * p + 7) % 1000 for p in range(1000)}  # a permutation: index p is 2012 id 3p + 7 mod 1000
    (folder / "pytorch_to_imagenet_2012_id.json").write_text(
        json.dumps({str(p): i for p, i in id_of.items()})
    )
    line_names = {p: f"imagenet class {p}" for p in range(1000)}
    for _, imagenet_names, indices in OBJECTNET.values():
        for name, p in zip(imagenet_names or [], indices or [], strict=True):
            line_names[p] = name
    lines = [""] * 1000
    for p, i in id_of.items():
        lines[i] = line_names[p]
    (folder / "imagenet_to_label_2012_v2").write_text("\n".join(lines) + "\n")
    return folder


def objectnet_tree(root: Path, with_mappings: bool = True) -> Path:
    base = root / "objectnet-1.0"
    for i, folder in enumerate(OBJECTNET):
        for k in range(2):
            put(base / "images" / folder / f"{folder}_{k}.png", image(4000 + 10 * i + k, "PNG"))
    if with_mappings:
        objectnet_mappings(base / "mappings")
    return root


def test_objectnet_projection(tmp_path):
    src = objectnet_tree(tmp_path / "on")
    out = tmp_path / "out"
    m = convert_suite("objectnet", src, out)
    kept = sorted(f for f, v in OBJECTNET.items() if v[1])  # folder order: "tie" before "tv"
    assert kept == ["alarm_clock", "backpack", "tie", "tv"]
    assert m.classnames == [OBJECTNET[f][0].lower() for f in kept]
    assert m.head_groups == [OBJECTNET[f][2] for f in kept]
    assert m.head == "imagenet" and m.head_classnames == CLIP_NAMES and len(m.head_templates) == 80
    assert m.eval_border == 2 and m.num_rows == 8
    assert m.protocol["skipped_folders"].startswith("1 ")
    for r in rows(out):
        folder = Path(r["key"]).parent.name
        assert r["label"] == kept.index(folder)
    for group, wanted in zip(m.head_groups, [["analog clock", "digital clock"], ["backpack"]], strict=False):
        assert [CLIP_NAMES[i] for i in group] == wanted
    logits = torch.randn(7, 1000)
    expected = torch.stack([logits[:, OBJECTNET[f][2]].max(dim=1).values for f in kept], dim=1)
    assert torch.equal(project_logits(logits, m.label_map()), expected)

    # --mappings elsewhere gives the same set; no mappings at all is one error saying where they come from.
    bare = objectnet_tree(tmp_path / "bare", with_mappings=False)
    with pytest.raises(
        DataError, match=r"objectnet-1\.0: no mappings/ folder.*come with ObjectNet's download"
    ):
        convert_suite("objectnet", bare, tmp_path / "o_bare")
    elsewhere = objectnet_mappings(tmp_path / "maps")
    m2 = convert_suite("objectnet", bare / "objectnet-1.0", tmp_path / "o2", Options(mappings=elsewhere))
    assert m2.head_groups == m.head_groups and pairs(tmp_path / "o2") == pairs(out)

    # CLIP_benchmark's wds_objectnet: its own classes, no head unless --mappings says how they project.
    samples = [(image(5000 + i), i) for i in range(4)]
    wds = wds_folder(tmp_path / "wds_objectnet", m.classnames, samples)
    m3 = convert_suite("objectnet", wds, tmp_path / "o3")
    assert m3.head == "" and m3.label_map() is None and "own classes" in m3.protocol["head"]
    m4 = convert_suite("objectnet", wds, tmp_path / "o4", Options(mappings=elsewhere))
    assert m4.head_groups == m.head_groups and m4.eval_border == 2

    put(src / "objectnet-1.0" / "images" / "not_a_class" / "x.png", image(1, "PNG"))
    with pytest.raises(DataError, match="not_a_class"):
        convert_suite("objectnet", src, tmp_path / "o5")


def test_every_recipe_is_registered():
    from pipeline.convert.suites.registry import recipes

    found = recipes()
    for name in ("imagenet", "imagenet-v2", "imagenet-r", "imagenet-a", "imagenet-sketch", "objectnet"):
        assert name in found and "wds" in found[name].layouts
    assert found["imagenet"].default_split == "val" and found["imagenet"].splits == ("train", "val")
