"""Model building: the tiny shipped architecture, pretrained files, the frozen teacher and fingerprints."""

from __future__ import annotations

import pytest
import torch

from dive.config import ModelSettings
from dive.models import build_model, embed_dim, fingerprint, frozen_teacher


def test_tiny_model_builds_offline_with_transforms_and_tokenizer(tiny_bundle):
    model = tiny_bundle.model
    assert embed_dim(model) == 64
    assert tiny_bundle.preprocess_cfg["size"] == (32, 32)
    tokens = tiny_bundle.tokenizer(["a photo of a circle."])
    assert tokens.shape == (1, 32)
    out = model(torch.randn(2, 3, 32, 32), tokens)
    assert out["image_features"].shape == (2, 64)
    assert torch.allclose(out["text_features"].norm(dim=-1), torch.ones(1))
    assert tiny_bundle.model_cfg["embed_dim"] == 64


def test_pretrained_file_is_loaded(tmp_path, tiny_bundle):
    weights = {k: v + 0.01 if v.is_floating_point() else v for k, v in tiny_bundle.model.state_dict().items()}
    path = tmp_path / "tiny.pt"
    torch.save(weights, path)
    loaded = build_model(ModelSettings(pretrained=str(path))).model
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, weights[k]), k
    assert fingerprint(loaded) != fingerprint(tiny_bundle.model)


def test_bad_model_names_and_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither an open_clip tag"):
        build_model(ModelSettings(pretrained=str(tmp_path / "nope.pt")))
    with pytest.raises(FileNotFoundError, match="not an export folder"):
        build_model(ModelSettings(name=f"local-dir:{tmp_path}"))


def test_frozen_teacher_is_a_detached_copy(tiny_bundle):
    teacher = frozen_teacher(tiny_bundle.model)
    assert not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    assert fingerprint(teacher) == fingerprint(tiny_bundle.model)
    first = next(teacher.parameters())
    assert first.data_ptr() != next(tiny_bundle.model.parameters()).data_ptr()
