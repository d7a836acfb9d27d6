"""Zero-shot heads: layout, prompt ensembling, batching and that building one leaves the model as it was."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from dive.config import ModelSettings
from dive.models import build_model
from dive.zeroshot import DEFAULT_TEMPLATES, build_head, logits

CLASSES = ["circle", "square", "triangle"]


@pytest.fixture(scope="module")
def bundle():
    torch.manual_seed(0)
    return build_model(ModelSettings())


def test_head_has_one_unit_row_per_class(bundle):
    head = build_head(bundle.model, bundle.tokenizer, CLASSES, DEFAULT_TEMPLATES)
    assert head.shape == (3, 64)
    assert torch.allclose(head.norm(dim=-1), torch.ones(3), atol=1e-6)
    assert not head.requires_grad
    # Different class names give different directions.
    assert (head @ head.T).fill_diagonal_(0).abs().max() < 0.999


def test_single_template_head_is_the_normalised_prompt_embedding(bundle):
    head = build_head(bundle.model, bundle.tokenizer, CLASSES, ["a photo of a {}."])
    with torch.no_grad():
        expected = bundle.model.encode_text(
            bundle.tokenizer([f"a photo of a {c}." for c in CLASSES]), normalize=True
        )
    assert torch.allclose(head, expected, atol=1e-6)


def test_head_is_mean_of_normalised_prompts_and_batching_does_not_change_it(bundle):
    templates = ["a photo of a {}.", "art of the {}.", lambda c: f"a drawing of a {c}"]
    head = build_head(bundle.model, bundle.tokenizer, CLASSES, templates, batch_size=1)
    with torch.no_grad():
        prompts = [[t.format(c) if isinstance(t, str) else t(c) for t in templates] for c in CLASSES]
        per_prompt = [bundle.model.encode_text(bundle.tokenizer(p), normalize=True) for p in prompts]
    expected = F.normalize(torch.stack([e.mean(0) for e in per_prompt]), dim=-1)
    assert torch.allclose(head, expected, atol=1e-5)
    assert torch.allclose(head, build_head(bundle.model, bundle.tokenizer, CLASSES, templates), atol=1e-5)


def test_open_clip_imagenet_templates_are_accepted(bundle):
    head = build_head(bundle.model, bundle.tokenizer, CLASSES[:2], OPENAI_IMAGENET_TEMPLATES[:4])
    assert head.shape == (2, 64)


@pytest.mark.parametrize("training", [True, False])
def test_train_eval_mode_is_restored(bundle, training):
    model = bundle.model
    model.train(training)
    try:
        build_head(model, bundle.tokenizer, CLASSES)
        assert model.training is training
        assert all(m.training is training for m in model.modules())
    finally:
        model.eval()


def test_bad_inputs_name_the_problem(bundle):
    with pytest.raises(ValueError, match="classnames is empty"):
        build_head(bundle.model, bundle.tokenizer, [], DEFAULT_TEMPLATES)
    with pytest.raises(ValueError, match="templates is empty"):
        build_head(bundle.model, bundle.tokenizer, CLASSES, [])
    with pytest.raises(ValueError, match=r"templates\[1\].*where the class name goes"):
        build_head(bundle.model, bundle.tokenizer, CLASSES, ["a {}", "a photo"])


def test_logits_are_cosine_similarities_to_the_head(bundle):
    head = build_head(bundle.model, bundle.tokenizer, CLASSES)
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = logits(bundle.model, images, head)
        feats = F.normalize(bundle.model.encode_image(images), dim=-1)
    assert out.shape == (4, 3)
    assert torch.allclose(out, feats @ head.T, atol=1e-6)
    assert out.abs().max() <= 1 + 1e-6
