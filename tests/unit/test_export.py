"""local-dir: exports: round trip through open_clip, bare keys, tied tensors, cards and atomic replacement."""

from __future__ import annotations

import json

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from dive.config import ModelSettings
from dive.export import CARD_FILE, CONFIG_FILE, README_FILE, WEIGHTS_FILE, export_model, load_export
from dive.models import build_model

CARD = {
    "base_model": "dive-tiny (random init)",
    "method": "dive",
    "loss_weights": {"lambda_avl": 1000.0, "lambda_pvl": 1000.0},
    "metrics": {"id_acc": 0.5, "ood_avg": 0.25},
    "git_sha": "abc1234",
}
TEXTS = ["a photo of a circle.", "A SQUARE drawn in red!", "triangle"]


@pytest.fixture(scope="module")
def perturbed():
    """A tiny model whose weights differ from any random init, so a reload that ignores the file fails."""
    torch.manual_seed(0)
    bundle = build_model(ModelSettings())
    g = torch.Generator().manual_seed(42)
    with torch.no_grad():
        for p in bundle.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
        bundle.model.logit_scale.fill_(3.0)
    bundle.model.eval()
    return bundle


def _export(bundle, folder, model=None, card=CARD):
    return export_model(model or bundle.model, folder, bundle.model_cfg, bundle.preprocess_cfg, card=card)


def test_round_trip_gives_identical_embeddings_and_tokens(perturbed, tmp_path):
    folder = _export(perturbed, tmp_path / "export")
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [CARD_FILE, CONFIG_FILE, README_FILE, WEIGHTS_FILE]
    )
    # Straight through open_clip, as a downstream user would load it.
    raw, _, _ = open_clip.create_model_and_transforms(f"local-dir:{folder}", output_dict=True)
    model, preprocess, tokenizer = load_export(folder)
    assert not model.training
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    tokens = perturbed.tokenizer(TEXTS)
    assert torch.equal(tokenizer(TEXTS), tokens)
    assert torch.equal(open_clip.get_tokenizer(f"local-dir:{folder}")(TEXTS), tokens)
    with torch.no_grad():
        want_img = perturbed.model.encode_image(images, normalize=True)
        want_txt = perturbed.model.encode_text(tokens, normalize=True)
        for loaded in (model, raw.eval()):
            assert torch.allclose(loaded.encode_image(images, normalize=True), want_img, atol=1e-6)
            assert torch.allclose(loaded.encode_text(tokens, normalize=True), want_txt, atol=1e-6)
    assert model.logit_scale.item() == pytest.approx(3.0)
    assert list(model.visual.preprocess_cfg["mean"]) == list(perturbed.preprocess_cfg["mean"])
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8))
    assert torch.equal(preprocess(picture), perturbed.preprocess_eval(picture))


def test_config_and_card_are_written(perturbed, tmp_path):
    model_cfg = {**perturbed.model_cfg, "quick_gelu": True}
    folder = export_model(perturbed.model, tmp_path / "e", model_cfg, perturbed.preprocess_cfg, card=CARD)
    config = json.loads((folder / CONFIG_FILE).read_text())
    assert config["model_cfg"] == model_cfg
    assert config["preprocess_cfg"]["size"] == [32, 32]
    assert json.loads((folder / CARD_FILE).read_text()) == CARD
    readme = (folder / README_FILE).read_text()
    for fact in ("dive-tiny (random init)", "lambda_avl", "ood_avg", "abc1234", "local-dir:"):
        assert fact in readme


def test_saved_keys_are_bare_for_wrapped_models_and_state_dicts(perturbed, tmp_path):
    wrapper = nn.Module()
    wrapper.module = perturbed.model  # DDP-style: every key gets a "module." prefix
    assert all(k.startswith("module.") for k in wrapper.state_dict())
    expected = perturbed.model.state_dict()
    folder = _export(perturbed, tmp_path / "wrapped", model=wrapper)
    saved = load_file(folder / WEIGHTS_FILE)
    assert saved.keys() == expected.keys()
    assert all(torch.equal(saved[k], expected[k]) for k in expected)
    compiled = {f"module._orig_mod.{k}": v for k, v in expected.items()}
    saved = load_file(_export(perturbed, tmp_path / "sd", model=compiled) / WEIGHTS_FILE)
    assert saved.keys() == expected.keys()
    load_export(tmp_path / "sd")  # strict load by open_clip


def test_tied_tensors_are_saved_as_separate_copies(perturbed, tmp_path):
    shared = torch.randn(4, 4)
    state = {"a": shared, "b": shared, "c": shared.T}  # same storage, one of them non-contiguous
    folder = export_model(state, tmp_path / "tied", perturbed.model_cfg, perturbed.preprocess_cfg)
    saved = load_file(folder / WEIGHTS_FILE)
    assert (
        torch.equal(saved["a"], shared)
        and torch.equal(saved["b"], shared)
        and torch.equal(saved["c"], shared.T)
    )


def test_export_over_an_existing_one_replaces_it_cleanly(perturbed, tmp_path):
    folder = tmp_path / "export"
    _export(perturbed, folder, card={"method": "flyp"})
    (folder / "stale.txt").write_text("from the old export")
    _export(perturbed, folder, card={"method": "dive"})
    assert json.loads((folder / CARD_FILE).read_text()) == {"method": "dive"}
    assert not (folder / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no staging or backup folders left


def test_a_failed_export_leaves_the_previous_one_intact(perturbed, tmp_path):
    folder = _export(perturbed, tmp_path / "export", card={"method": "flyp"})
    with pytest.raises(TypeError, match=r"card.json: key 'bad'"):
        _export(perturbed, folder, card={"method": "dive", "bad": object()})
    with pytest.raises(TypeError, match="state dict entry 'x'"):
        export_model({"x": 1.0}, folder, perturbed.model_cfg, perturbed.preprocess_cfg)
    assert json.loads((folder / CARD_FILE).read_text()) == {"method": "flyp"}
    assert [p.name for p in tmp_path.iterdir()] == ["export"]


def test_unrelated_folders_are_never_replaced(perturbed, tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="refusing to replace"):
        _export(perturbed, tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_missing_exports_are_clear_errors(perturbed, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_export(missing)
    folder = _export(perturbed, tmp_path / "export")
    (folder / WEIGHTS_FILE).unlink()  # open_clip alone would silently return a random init here
    with pytest.raises(FileNotFoundError, match=WEIGHTS_FILE):
        load_export(folder)
    (folder / CONFIG_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=CONFIG_FILE):
        load_export(folder)
    with pytest.raises(ValueError, match=r"model_cfg: missing \['text_cfg'\]"):
        export_model(perturbed.model, tmp_path / "x", {"embed_dim": 64, "vision_cfg": {}}, {})
