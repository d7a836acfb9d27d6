"""Heads that are not one class per label: subsets (ImageNet-R / -A) and many-to-one maps (ObjectNet), the
templates they are built from, and the evaluator that projects one classifier's logits onto each set's labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dive import templates
from dive.config import Config, ModelSettings
from dive.export import LinearHead
from dive.heads import LabelMap, project_logits
from dive.models import build_model
from dive.zeroshot import build_head
from pipeline.data.format import (
    LABELLED,
    DataError,
    Manifest,
    ShardWriter,
    encode_png,
    read_manifest,
    write_manifest,
)
from pipeline.data.transforms import normalize_images, preprocess_batch
from pipeline.evaluate import Suite, _heads, evaluate_accuracy

PARENT = ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead", "electric ray"]


def test_a_subset_map_equals_indexing_the_logits():
    logits = torch.randn(7, 1000)
    mask = sorted(np.random.default_rng(0).choice(1000, 200, replace=False).tolist())
    projected = project_logits(logits, LabelMap.subset(mask, 1000))
    assert torch.equal(projected, logits[:, mask])


def test_a_many_to_one_map_takes_the_max_of_each_group():
    logits = torch.randn(9, 12)
    groups = [[3, 0], [5], [1, 7, 11], [2]]
    expected = torch.stack([torch.stack([logits[n, g].max() for g in groups]) for n in range(9)])
    assert torch.equal(project_logits(logits, LabelMap.from_lists(groups, 12)), expected)
    assert project_logits(logits, None) is logits


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        ([[0], []], "label 1 maps to no classifier class"),
        ([[0], [12]], r"label 1 maps to class 12, outside \[0, 12\)"),
    ],
)
def test_a_bad_map_is_refused(groups, message):
    with pytest.raises(ValueError, match=message):
        LabelMap.from_lists(groups, 12)


def test_templates_take_either_placeholder_and_named_sets_come_from_open_clip():
    assert templates.render("a photo of a {}.", "cat") == "a photo of a cat."
    assert templates.render("a photo of a {c}.", "cat") == "a photo of a cat."
    assert templates.check_template("a photo") is not None
    assert templates.check_template("{} and {c}") is not None
    assert len(templates.named("openai_imagenet")) == 80
    assert len(templates.named("simple")) == 7
    assert templates.named("openai_imagenet")[0] == "a bad photo of a {}."
    with pytest.raises(KeyError, match="openai_imagenet"):
        templates.named("imagenet80")


def test_a_head_from_c_templates_equals_one_from_positional_templates():
    bundle = build_model(ModelSettings())
    a = build_head(bundle.model, bundle.tokenizer, PARENT[:3], ["a photo of a {}.", "art of the {}."])
    b = build_head(bundle.model, bundle.tokenizer, PARENT[:3], ["a photo of a {c}.", "art of the {c}."])
    assert torch.equal(a, b)


def _write(folder, manifest, images, labels):
    with ShardWriter(folder, manifest, rows_per_shard=8) as writer:
        for image, label in zip(images, labels, strict=True):
            writer.add({"image": image, "label": label})
    return read_manifest(folder)


def _images(n):
    rng = np.random.default_rng(3)
    return [encode_png(Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))) for _ in range(n)]


def test_the_evaluator_projects_the_parent_head_onto_each_sets_labels(tmp_path):
    """A many-to-one set scored through the parent's head gives the predictions an independent max-projection of
    the parent logits gives; a subset set scores exactly like the same images under a head of its own classes."""
    images = _images(12)
    tmpl = ["a photo of a {}."]
    groups = [[0, 3], [1], [2, 4, 5]]
    labels = [i % 3 for i in range(12)]
    many = _write(
        tmp_path / "many",
        Manifest(
            "many",
            LABELLED,
            classnames=["fish", "goldfish", "ray or shark"],
            templates=tmpl,
            head="parent",
            head_classnames=PARENT,
            head_templates=tmpl,
            head_groups=groups,
        ),
        images,
        labels,
    )
    subset = [4, 1, 3]
    _write(
        tmp_path / "subset",
        Manifest(
            "subset",
            LABELLED,
            classnames=[PARENT[i] for i in subset],
            templates=tmpl,
            head="parent",
            head_classnames=PARENT,
            head_templates=tmpl,
            head_groups=[[i] for i in subset],
        ),
        images,
        labels,
    )
    _write(
        tmp_path / "own",
        Manifest("own", LABELLED, classnames=[PARENT[i] for i in subset], templates=tmpl),
        images,
        labels,
    )
    suites = [Suite(n, "ood", str(tmp_path / n)) for n in ("many", "subset", "own")]
    results = {r.name: r for r in evaluate_accuracy({"m": ModelSettings()}, suites, Config())["m"]}
    assert results["subset"].accuracy == results["own"].accuracy

    bundle = build_model(ModelSettings())
    head = build_head(bundle.model, bundle.tokenizer, PARENT, tmpl)
    batch = {"image": np.array(images, dtype=object), "label": np.array(labels)}
    pixels = preprocess_batch(batch, kind=LABELLED, size=32, augment=False, max_pixels=10**8, num_classes=3)
    cfg = bundle.preprocess_cfg
    with torch.no_grad():
        feats = bundle.model.encode_image(
            normalize_images(torch.from_numpy(pixels["image"]), cfg["mean"], cfg["std"]), normalize=True
        )
    logits = (feats @ head.T).numpy()
    predicted = [max(range(3), key=lambda label: max(row[c] for c in groups[label])) for row in logits]
    expected = float(np.mean([p == t for p, t in zip(predicted, labels, strict=True)]))
    assert results["many"].accuracy == pytest.approx(expected)
    assert many.label_map() == LabelMap.from_lists(groups, 6)


def test_a_trained_linear_head_scores_a_subset_set_through_the_same_map():
    bundle = build_model(ModelSettings())
    linear = LinearHead(torch.randn(6, 64), torch.randn(6), list(PARENT))
    sub = Manifest("r", LABELLED, classnames=PARENT[:2], head_classnames=PARENT, head_groups=[[0], [1]])
    zs = Manifest("zs", LABELLED, classnames=["cat", "dog"], templates=["a {}."])
    heads = _heads(bundle, [sub, zs], linear)
    assert np.array_equal(heads[0], linear.augmented().numpy())
    assert heads[1].shape == (2, 64)  # zero-shot: a text head of its own classes


def test_a_manifest_with_a_broken_head_map_is_refused(tmp_path):
    write_manifest(
        tmp_path,
        Manifest(
            "x",
            LABELLED,
            classnames=["a", "b"],
            head_classnames=["p", "q"],
            head_groups=[[0], [5]],
            num_rows=1,
        ),
    )
    with pytest.raises(DataError, match=r"'head_groups': label 1 maps to class 5, outside \[0, 2\)"):
        read_manifest(tmp_path)
    write_manifest(
        tmp_path, Manifest("x", LABELLED, classnames=["a", "b"], head_groups=[[0], [1]], num_rows=1)
    )
    with pytest.raises(DataError, match="'head_groups' needs 'head_classnames'"):
        read_manifest(tmp_path)


def test_shared_names_are_allowed_only_where_the_manifest_lists_them(tmp_path):
    names = ["missile", "projectile", "Missile "]
    write_manifest(tmp_path, Manifest("x", LABELLED, classnames=names, num_rows=1))
    with pytest.raises(DataError, match="same name up to case"):
        read_manifest(tmp_path)
    write_manifest(tmp_path, Manifest("x", LABELLED, classnames=names, shared_names=["missile"], num_rows=1))
    assert read_manifest(tmp_path).classnames == names


def test_an_eval_border_crops_the_frame_before_the_resize():
    img = Image.new("RGB", (20, 20), (255, 0, 0))
    img.paste((0, 255, 0), (2, 2, 18, 18))
    batch = {
        "image": np.array([encode_png(img)] * 2, dtype=object),
        "label": np.array([0, 0]),
        "set": np.array([0, 1]),
    }
    out = preprocess_batch(
        batch,
        kind=LABELLED,
        size=16,
        augment=False,
        max_pixels=10**6,
        num_classes=1,
        passthrough=("set",),
        borders=(2, 0),
    )
    cropped, whole = out["image"][0], out["image"][1]
    assert cropped[0].max() == 0 and cropped[1].min() == 255  # no red left: the frame is gone
    assert whole[0].max() > 0  # the other set keeps its frame
