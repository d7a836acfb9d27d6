"""Zero-shot text heads: one unit vector per class, the mean of its prompt embeddings.

The prompt-ensembling itself is open_clip's :func:`open_clip.build_zero_shot_classifier`; this module adds
the input checks (templates with ``{}`` or ``{c}``, :mod:`dive.templates`), the (C, D) layout the rest of the pipeline uses and the restoring of the model's train/eval
mode, so a head can be built in the middle of training. For ImageNet use open_clip's 80 CLIP prompts,
``open_clip.zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES`` (callables, accepted as templates here).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import open_clip
import torch
from torch import nn

if TYPE_CHECKING:
    from dive.models import ClipModel

from dive.templates import DEFAULT_TEMPLATES, as_callable, check_template

__all__ = ["DEFAULT_TEMPLATES", "Template", "build_head", "eval_mode", "logits"]

Template = str | Callable[[str], str]


def _as_callables(templates: Sequence[Template]) -> list[Callable[[str], str]]:
    """Turn format strings into callables so mixed lists work (open_clip decides by the first one only)."""
    out: list[Callable[[str], str]] = []
    for i, t in enumerate(templates):
        if isinstance(t, str):
            problem = check_template(t)
            if problem is not None:
                raise ValueError(f"templates[{i}] {t!r}: {problem}")
            out.append(as_callable(t))
        elif callable(t):
            out.append(t)
        else:
            raise TypeError(f"templates[{i}]: expected a format string or a callable, got {type(t).__name__}")
    return out


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode inside; afterwards every submodule gets back its *own* mode.

    ``model.train(was_training)`` would also switch layers that were deliberately held in eval mode (frozen
    BatchNorm, ModelSettings.freeze_batchnorm) back to training: on EmojiShift that silently unfroze them at the
    first epoch-end validation and the fine-tune collapsed.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def build_head(
    model: nn.Module,
    tokenizer: Callable[..., torch.Tensor],
    classnames: Sequence[str],
    templates: Sequence[Template] = DEFAULT_TEMPLATES,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
) -> torch.Tensor:
    """Class embeddings (C, D), unit rows: per class, normalised prompt embeddings averaged and re-normalised.

    ``batch_size`` bounds the prompts per text forward pass. The model must already be on ``device``.
    """
    if len(classnames) == 0:
        raise ValueError("classnames is empty: a zero-shot head needs at least one class name")
    if len(templates) == 0:
        raise ValueError("templates is empty: a zero-shot head needs at least one prompt template")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    prompts = _as_callables(templates)
    with eval_mode(model):
        weights = open_clip.build_zero_shot_classifier(
            model,
            tokenizer,
            list(classnames),
            prompts,
            num_classes_per_batch=max(1, batch_size // len(prompts)),
            device=device,
        )
    return weights.T.contiguous()


def logits(model: ClipModel, images: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
    """Cosine similarities (N, C) of images to class embeddings; argmax is the zero-shot prediction.

    No logit scale: it does not change the ranking, so accuracy is the same. Gradients flow if enabled; wrap
    in ``torch.no_grad()`` for evaluation.
    """
    features = model.encode_image(images, normalize=True)
    return features @ head.to(device=features.device, dtype=features.dtype).T
