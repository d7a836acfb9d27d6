"""Export fine-tuned models as open_clip ``local-dir:`` folders, and load them back.

A folder holds what ``open_clip.create_model_and_transforms("local-dir:<folder>")`` and
``open_clip.get_tokenizer("local-dir:<folder>")`` read (open_clip 3.3, ``factory.py``):

* ``open_clip_config.json`` — ``{"model_cfg": …, "preprocess_cfg": …}``. The tokenizer is chosen from
  ``model_cfg["text_cfg"]``: CLIP's BPE tokenizer needs nothing else; an ``hf_tokenizer_name`` makes
  open_clip load HF tokenizer files *from the folder itself*, so those are saved too.
* ``open_clip_model.safetensors`` — the weights; first in open_clip's preferred checkpoint names, and
  loaded without pickle.
* ``card.json`` and ``README.md`` — provenance (base model, method, loss weights, data, metrics, git sha).

Exports are written to a hidden sibling folder and renamed into place, so readers never see a half-written
one.
"""

from __future__ import annotations

import enum
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from dive.models import LOCAL_DIR, register_model_configs
from dive.redact import mask_tree
from dive.wise import strip_prefixes

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
# FT / LP-FT: the trained linear classifier on normalised image features (weight C×D, bias C; class names in the
# safetensors metadata). open_clip ignores the file; pipeline.evaluate scores the matching class list with it.
HEAD_FILE = "linear_head.safetensors"
CARD_FILE = "card.json"
README_FILE = "README.md"

# Card keys shown first in the README, in this order; the rest follow as given.
_CARD_ORDER = ("base_model", "method", "loss_weights", "data", "metrics", "git_sha")


def _jsonable(value: Any) -> Any:
    """json.dumps fallback for the values run configs and metrics typically hold."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy / torch scalars
        return value.item()
    raise TypeError(f"{type(value).__name__} value {value!r:.80} is not JSON-serialisable")


def _dumps(obj: Mapping[str, Any], what: str) -> str:
    """JSON text of ``obj``; a failure names the top-level key that could not be serialised."""
    try:
        return json.dumps(obj, indent=2, default=_jsonable) + "\n"
    except (TypeError, ValueError) as err:
        for key, value in obj.items():
            try:
                json.dumps(value, default=_jsonable)
            except (TypeError, ValueError) as inner:
                raise TypeError(f"{what}: key {key!r}: {inner}") from err
        raise TypeError(f"{what}: {err}") from err


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(value, default=_jsonable)
    return str(_jsonable(value) if isinstance(value, os.PathLike | enum.Enum) else value)


def render_readme(card: Mapping[str, Any], title: str) -> str:
    """A short human model card: scalar facts as a list, mappings (loss weights, data, metrics) as tables."""
    keys = [k for k in _CARD_ORDER if k in card] + [k for k in card if k not in _CARD_ORDER and k != "name"]
    lines = [
        f"# {card.get('name', title)}",
        "",
        "CLIP model fine-tuned with the DiVE pipeline, in open_clip's `local-dir:` format.",
        "",
        "```python",
        "import open_clip",
        'model, _, preprocess = open_clip.create_model_and_transforms("local-dir:<this folder>")',
        'tokenizer = open_clip.get_tokenizer("local-dir:<this folder>")',
        "```",
        "",
    ]
    scalars = [k for k in keys if not isinstance(card[k], Mapping)]
    if scalars:
        lines += [f"- **{k.replace('_', ' ')}**: {_fmt(card[k])}" for k in scalars] + [""]
    for key in (k for k in keys if isinstance(card[k], Mapping)):
        lines += [f"## {key.replace('_', ' ').capitalize()}", "", "| | |", "|---|---|"]
        lines += [f"| {name} | {_fmt(value)} |" for name, value in card[key].items()] + [""]
    return "\n".join(lines)


def _weights(model: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Bare-keyed CPU copies, each with its own contiguous storage: safetensors refuses tied/shared memory."""
    state = model.state_dict() if isinstance(model, nn.Module) else model
    out: dict[str, torch.Tensor] = {}
    for key, value in strip_prefixes(state).items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"state dict entry {key!r}: expected a tensor, got {type(value).__name__}")
        out[key] = value.detach().to("cpu", copy=True).contiguous()
    return out


def _check_model_cfg(model_cfg: Mapping[str, Any]) -> None:
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in model_cfg]
    if missing:
        raise ValueError(f"model_cfg: missing {missing}; expected a complete open_clip model config")


def _check_target(folder: Path) -> None:
    """Only replace what an earlier export wrote: never a file or an unrelated non-empty folder."""
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"export path {folder} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / CONFIG_FILE).is_file():
        raise FileExistsError(
            f"export path {folder} is a non-empty folder without {CONFIG_FILE}; refusing to replace it"
        )


def _swap_into_place(staged: Path, folder: Path) -> None:
    """Rename ``staged`` to ``folder``; an existing export is moved aside first and deleted only after."""
    if not folder.exists():
        staged.rename(folder)
        return
    old = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.old")
    folder.rename(old)
    try:
        staged.rename(folder)
    except BaseException:
        old.rename(folder)
        raise
    shutil.rmtree(old, ignore_errors=True)


@dataclass
class LinearHead:
    """A trained classifier over L2-normalised image features: logits = weight · f + bias."""

    weight: torch.Tensor  # C × D
    bias: torch.Tensor  # C
    classnames: list[str]

    def __post_init__(self) -> None:
        c = self.weight.shape[0]
        if self.weight.ndim != 2 or self.bias.shape != (c,) or len(self.classnames) != c:
            raise ValueError(
                f"linear head: expected weight C×D, bias C and C class names, got {tuple(self.weight.shape)}, "
                f"{tuple(self.bias.shape)} and {len(self.classnames)} names"
            )

    def save(self, path: Path) -> None:
        tensors = {"weight": self.weight.detach().float().contiguous(), "bias": self.bias.detach().float()}
        save_file(tensors, str(path), metadata={"classnames": json.dumps(self.classnames)})

    def augmented(self) -> torch.Tensor:
        """C × (D+1): weight with the bias as last column (scored against features with a trailing 1)."""
        return torch.cat([self.weight, self.bias[:, None]], dim=1)


def load_linear_head(folder: str | os.PathLike[str]) -> LinearHead | None:
    """The export's FT / LP-FT head, or None when the folder has none."""
    path = Path(folder) / HEAD_FILE
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as fh:
        names = json.loads((fh.metadata() or {}).get("classnames", "null"))
        if not isinstance(names, list):
            raise ValueError(f"{path}: no class-name list in its metadata (not written by export_model)")
        return LinearHead(fh.get_tensor("weight"), fh.get_tensor("bias"), names)


def export_model(
    model: nn.Module | Mapping[str, torch.Tensor],
    folder: str | os.PathLike[str],
    model_cfg: Mapping[str, Any],
    preprocess_cfg: Mapping[str, Any],
    card: Mapping[str, Any] | None = None,
    tokenizer: Any | None = None,
    linear_head: LinearHead | None = None,
) -> Path:
    """Write ``model`` (a module or a state dict; DDP/compile prefixes are stripped) as a local-dir: export.

    ``model_cfg`` must be the complete config the weights were built with (e.g. ``quick_gelu``), as
    :class:`dive.models.ModelBundle` records it. ``tokenizer`` is only needed, and then required, when
    ``model_cfg["text_cfg"]`` names an ``hf_tokenizer_name``: its ``save_pretrained`` writes the tokenizer
    files. Returns the absolute export folder.
    """
    folder = Path(folder).absolute()
    _check_model_cfg(model_cfg)
    _check_target(folder)
    if model_cfg["text_cfg"].get("hf_tokenizer_name") and not hasattr(tokenizer, "save_pretrained"):
        raise ValueError(
            "model_cfg.text_cfg.hf_tokenizer_name is set, so open_clip loads the tokenizer from the export "
            "folder: pass tokenizer= (an open_clip HFTokenizer) so that its files are saved"
        )
    card = mask_tree(dict(card or {}))  # a data path or base model given as a URI may carry its credentials
    texts = {
        CONFIG_FILE: _dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}, CONFIG_FILE),
        CARD_FILE: _dumps(card, CARD_FILE),
        README_FILE: render_readme(card, folder.name),
    }
    weights = _weights(model)

    folder.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent))
    try:
        staged.chmod(0o755)  # mkdtemp makes it private; exports are read by other users/processes
        save_file(weights, str(staged / WEIGHTS_FILE), metadata={"format": "pt"})
        for name, text in texts.items():
            (staged / name).write_text(text, encoding="utf-8")
        if model_cfg["text_cfg"].get("hf_tokenizer_name") and tokenizer is not None:  # checked above
            tokenizer.save_pretrained(str(staged))
        if linear_head is not None:
            linear_head.save(staged / HEAD_FILE)
        _swap_into_place(staged, folder)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return folder


def load_export(
    folder: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[nn.Module, Callable[[Any], torch.Tensor], Callable[..., torch.Tensor]]:
    """Model (eval mode, ``output_dict=True``), eval transform and tokenizer of an export folder.

    Checks the weights file first: open_clip only logs a warning and returns a *randomly initialised* model
    when a ``local-dir:`` folder has a config but no checkpoint.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"export folder {folder} not found (expected a folder written by export_model)"
        )
    for name, what in ((CONFIG_FILE, "the open_clip model/preprocess config"), (WEIGHTS_FILE, "the weights")):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"export folder {folder} has no {name} ({what}); not a complete export")
    register_model_configs()
    model, _, preprocess_eval = open_clip.create_model_and_transforms(
        LOCAL_DIR + str(folder), device=device, output_dict=True
    )
    model.eval()
    tokenizer = open_clip.get_tokenizer(LOCAL_DIR + str(folder))
    return model, preprocess_eval, tokenizer
