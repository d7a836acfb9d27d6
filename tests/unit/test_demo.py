"""Built-in demo data and its teacher: determinism, schema, split hygiene, captions, the teacher cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import pipeline.demo as demo
from dive.config import ModelSettings
from dive.models import build_model, fingerprint
from pipeline.data.format import CAPTIONED, LABELLED, check_dataset, iter_rows, shard_files
from pipeline.demo import splits, teacher

EVAL_SPLITS = ("id_val", "id_test", "ood_outline", "ood_noisy", "ood_pixel", "zs_color", "zs_position")
TRAIN_SPLITS = ("id_train", "reference", "pretrain")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> demo.DemoPaths:
    return demo.generate(tmp_path_factory.mktemp("demo") / "data", seed=0, size="tiny")


def _shard_bytes(folder: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in shard_files(folder)}


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tiny, tmp_path):
    again = demo.generate(tmp_path / "again", seed=0, size="tiny")
    other = demo.generate(tmp_path / "other", seed=1, size="tiny")
    for name, folder in tiny.splits().items():
        assert _shard_bytes(folder) == _shard_bytes(again.splits()[name]), name
        first = check_dataset(folder)
        assert first.fingerprint == check_dataset(again.splits()[name]).fingerprint
        assert first.fingerprint != check_dataset(other.splits()[name]).fingerprint, name


def test_every_split_is_a_valid_dataset_of_the_right_kind_and_size(tiny):
    meta = json.loads((tiny.root / "demo.json").read_text())
    assert (meta["seed"], meta["size"], meta["version"]) == (0, "tiny", demo.DEMO_VERSION)
    assert set(meta["splits"]) == set(EVAL_SPLITS) | set(TRAIN_SPLITS)
    expected_classes = {
        "shape": list(demo.SHAPES),
        "color": list(demo.COLORS),
        "position": list(demo.POSITIONS),
    }
    for name, folder in tiny.splits().items():
        assert meta["splits"][name] == folder.name
        kind = CAPTIONED if name in ("reference", "pretrain") else LABELLED
        manifest = check_dataset(folder, kind=kind)
        rows = list(iter_rows(folder))
        assert manifest.num_rows == len(rows) == demo.split_rows(name, "tiny") == meta["rows"][name]
        assert len(shard_files(folder)) > 1  # tiny shards, so readers see several files
        if kind == LABELLED:
            concept = "color" if name == "zs_color" else "position" if name == "zs_position" else "shape"
            assert manifest.classnames == expected_classes[concept]
            assert manifest.templates and all("{}" in t for t in manifest.templates)
            labels = [r["label"] for r in rows]
            assert min(labels) >= 0 and max(labels) < manifest.num_classes
            # Balanced draws: every class appears, and the label matches the drawn scene's attribute.
            assert set(labels) == set(range(manifest.num_classes))
            for r in rows:
                scene = demo.Scene.from_key(r["key"])
                assert getattr(scene, concept) == manifest.classnames[r["label"]]
        else:
            assert all(r["caption"] for r in rows)


def test_styles_of_each_split(tiny):
    def styles(name: str) -> set[str]:
        return {demo.Scene.from_key(r["key"]).style for r in iter_rows(tiny.splits()[name], columns=["key"])}

    for name in ("id_train", "id_val", "id_test"):
        assert styles(name) == {"flat"}
    for style in demo.OOD_STYLES:
        assert styles(f"ood_{style}") == {style}
    assert len(styles("zs_color")) > 1 and len(styles("pretrain")) == len(demo.STYLES)
    assert "flat" in styles("reference") and len(styles("reference")) > 1


def test_no_image_is_shared_between_training_side_and_eval_splits(tiny):
    def images(name: str) -> set[bytes]:
        return {r["image"] for r in iter_rows(tiny.splits()[name], columns=["image"])}

    train = set().union(*(images(n) for n in TRAIN_SPLITS))
    evaluation = set().union(*(images(n) for n in EVAL_SPLITS))
    assert train and evaluation
    assert not train & evaluation


def test_training_side_draws_reject_images_that_occur_in_eval_splits():
    spec = next(s for s in demo.SPLITS if s.name == "id_train")
    first, first_digest = next(splits._rows(spec, 4, splits._split_rng(0, spec.name), set()))
    row, digest = next(splits._rows(spec, 4, splits._split_rng(0, spec.name), {first_digest}))
    assert digest != first_digest and row["image"] != first["image"]


def test_generate_is_cached_and_regenerates_when_settings_change(tmp_path, capsys):
    root = tmp_path / "cache"
    demo.generate(root, seed=0, size="tiny")
    stamp = (root / "id_train" / "dataset.json").stat().st_mtime_ns
    demo.generate(root, seed=0, size="tiny")
    assert (root / "id_train" / "dataset.json").stat().st_mtime_ns == stamp
    assert "cached" in capsys.readouterr().out
    before = check_dataset(root / "id_train").fingerprint
    demo.generate(root, seed=3, size="tiny")
    assert check_dataset(root / "id_train").fingerprint != before
    assert json.loads((root / "demo.json").read_text())["seed"] == 3


def test_caption_names_the_attributes_of_the_scene():
    scene = demo.Scene("circle", "red", "striped", "left", "large", "dark", "flat")
    assert demo.caption(scene) == "a large red striped circle on the left on a dark background"
    outline = demo.Scene("star", "orange", "", "top", "small", "light", "outline")
    assert demo.caption(outline) == "a line drawing of a small orange star at the top on a light background"
    rng = np.random.default_rng(0)
    varied = [demo.caption(scene, rng) for _ in range(50)]
    assert len(set(varied)) > 10  # web-like variety
    assert sum("circle" in c for c in varied) > 30 and sum("red" in c for c in varied) > 30
    other_colors = set(demo.COLORS) - {"red"}
    assert not any(w in other_colors or w in set(demo.SHAPES) - {"circle"} for c in varied for w in c.split())
    assert demo.caption(scene, np.random.default_rng(5)) == demo.caption(scene, np.random.default_rng(5))
    assert demo.caption(demo.Scene("circle", "orange", "solid", "center", "", "light", "flat")).startswith(
        "an orange"
    )


def test_captions_in_the_data_describe_the_drawn_scene(tiny):
    vocabulary = {*demo.SHAPES, *demo.COLORS, *demo.POSITIONS, *demo.SIZES, *demo.TEXTURES}
    for name in ("reference", "pretrain"):
        for r in iter_rows(tiny.splits()[name]):
            scene = demo.Scene.from_key(r["key"])
            words = set(r["caption"].rstrip(".").split())
            # Every attribute word in a caption is true of the scene …
            assert words & vocabulary <= {scene.shape, scene.color, scene.position, scene.size, scene.texture}
            if name == "reference":  # … and reference captions name all of them
                assert {scene.shape, scene.color, scene.size, scene.position} <= words
                assert scene.texture in words or scene.style == "outline"
    tokenizer = build_model(ModelSettings()).tokenizer
    captions = [r["caption"] for r in iter_rows(tiny.pretrain, columns=["caption"])]
    tokens = tokenizer(captions)
    assert (tokens[:, -1] == 0).all()  # nothing was cut at the 32-token context


def test_rendered_pixels_show_the_scene():
    rng = np.random.default_rng(0)
    scene = demo.Scene("square", "red", "solid", "left", "large", "light", "flat")
    img = np.asarray(demo.render(scene, rng), dtype=float)
    assert img.shape == (demo.IMAGE_SIZE, demo.IMAGE_SIZE, 3)
    left, right = img[12:20, 3:11].reshape(-1, 3).mean(0), img[12:20, 24:30].reshape(-1, 3).mean(0)
    assert left[0] > 150 and left[1] < 90 and left[2] < 90  # red object on the left
    assert right.min() > 170  # light background on the right
    dark = demo.Scene("square", "blue", "solid", "right", "large", "dark", "flat")
    img = np.asarray(demo.render(dark, rng), dtype=float)
    assert img[12:20, 24:30].reshape(-1, 3).mean(0)[2] > 150 and img[12:20, 2:6].max() < 90


def test_pretrain_teacher_writes_loadable_weights_and_is_cached(tiny, tmp_path):
    out = tmp_path / "teacher"
    first = demo.pretrain_teacher(tiny, out, steps=3, batch_size=16, seed=0, threads=1)
    assert not first["cached"]
    weights = out / "teacher.pt"
    recorded = json.loads((out / "teacher.json").read_text())
    assert recorded["fingerprint"] == first["fingerprint"]
    assert set(recorded["zero_shot"]) == {
        "id_test",
        "ood_outline",
        "ood_noisy",
        "ood_pixel",
        "zs_color",
        "zs_position",
    }
    assert recorded["chance"]["zs_position"] == pytest.approx(1 / len(demo.POSITIONS), abs=1e-3)
    assert all(0.0 <= v <= 1.0 for v in recorded["zero_shot"].values())
    loaded = build_model(ModelSettings(pretrained=str(weights)))
    assert fingerprint(loaded.model) == recorded["fingerprint"]
    assert fingerprint(loaded.model) != fingerprint(
        build_model(ModelSettings()).model
    )  # trained, not random init

    stamp = weights.stat().st_mtime_ns
    second = demo.pretrain_teacher(tiny, out, steps=3, batch_size=16, seed=0, threads=1)
    assert second["cached"] and second["fingerprint"] == first["fingerprint"]
    assert weights.stat().st_mtime_ns == stamp
    third = demo.pretrain_teacher(tiny, out, steps=4, batch_size=16, seed=0, threads=1)
    assert not third["cached"] and third["fingerprint"] != first["fingerprint"]
    assert torch.get_num_threads() >= 1


def test_ensure_demo_returns_paths_and_teacher(tmp_path, monkeypatch):
    monkeypatch.setitem(demo.TEACHER_STEPS, "tiny", 2)
    paths, weights = demo.ensure_demo(tmp_path / "demo", seed=0, size="tiny")
    assert weights == tmp_path / "demo" / "teacher" / "teacher.pt" and weights.is_file()
    assert paths.id_train.is_dir() and paths.eval_sets().keys() >= {"id_test", "zs_color"}
    overrides = paths.config_overrides()
    assert (
        f"data.id_train={paths.id_train}" in overrides and f"eval.zs.color={paths.zs['color']}" in overrides
    )


def test_cut_text_encoding_equals_open_clip_encode_text(tiny_bundle):
    tokens = tiny_bundle.tokenizer(
        ["a red circle", "a pixel art image of a small blue dotted star at the top"]
    )
    with torch.no_grad():
        expected = tiny_bundle.model.encode_text(tokens)
        got = teacher._encode_text(tiny_bundle.model, tokens)
    assert torch.allclose(got, expected, atol=1e-5)
