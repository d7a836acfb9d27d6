"""Sample transforms shared by every reader: decode + resize to uint8, normalise, tokenise, prompt tables.

Plain numpy / torchvision / open_clip, no Ray: the Ray Data streams (:mod:`pipeline.data.streams`), the validation
sets, the accuracy evaluation and the teacher-embedding cache all call these, so each sees the same pixels.
"""

from __future__ import annotations

import functools
from collections import Counter
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2 as T

from pipeline.data.format import (
    BAD_LABEL,
    LABELLED,
    NO_CAPTION,
    TEACHER_COLUMNS,
    decode_image,
)


@functools.lru_cache(maxsize=4)
def _tokenizer(model_name: str) -> Any:
    from dive.models import get_tokenizer

    return get_tokenizer(model_name)


@functools.lru_cache(maxsize=8)
def image_transform(size: int, augment: bool) -> T.Compose:
    """Train: random-resized crop + flip. Eval/reference: open_clip's eval geometry (resize shorter side, centre crop)."""
    if augment:
        return T.Compose(
            [
                T.RandomResizedCrop(size, scale=(0.6, 1.0), interpolation=T.InterpolationMode.BICUBIC),
                T.RandomHorizontalFlip(),
            ]
        )
    return T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size)])


def preprocess_batch(
    batch: dict[str, np.ndarray],
    *,
    kind: str,
    size: int,
    augment: bool,
    max_pixels: int,
    num_classes: int = 0,
    model_name: str = "",
    counter: Any = None,
    passthrough: tuple[str, ...] = (),
) -> dict[str, np.ndarray]:
    """Decode and resize one batch of shard rows; drop and count bad samples.

    Output: ``image`` uint8 (N,3,size,size); labelled sets add ``label`` int64, captioned sets ``text`` int64
    token ids (N,L) and any cached ``teacher_*`` columns as float32 (N,D); ``passthrough`` columns follow the
    kept rows unchanged.
    """
    transform = image_transform(size, augment)
    images: list[np.ndarray] = []
    keep: list[int] = []
    skipped: Counter[str] = Counter()
    for i, data in enumerate(batch["image"]):
        if kind == LABELLED:
            label = int(batch["label"][i])
            if not 0 <= label < num_classes:
                skipped[BAD_LABEL] += 1
                continue
        else:
            caption = batch["caption"][i]
            if not isinstance(caption, str) or not caption.strip():
                skipped[NO_CAPTION] += 1
                continue
        img, reason = decode_image(data, max_pixels)
        if reason is not None:
            skipped[reason] += 1
            continue
        images.append(np.asarray(transform(img), dtype=np.uint8).transpose(2, 0, 1))
        keep.append(i)
    if skipped and counter is not None:
        counter.add.remote(dict(skipped))
    out: dict[str, np.ndarray] = {
        "image": np.stack(images) if images else np.zeros((0, 3, size, size), np.uint8),
    }
    idx = np.asarray(keep, dtype=np.int64)
    for col in passthrough:
        out[col] = np.asarray(batch[col])[idx]
    if kind == LABELLED:
        out["label"] = np.asarray(batch["label"], dtype=np.int64)[idx]
    else:
        captions = [str(batch["caption"][i]) for i in keep]
        tokenizer = _tokenizer(model_name)
        out["text"] = (
            tokenizer(captions).numpy() if captions else np.zeros((0, tokenizer.context_length), np.int64)
        )
        for col in TEACHER_COLUMNS:
            if col in batch:
                vectors = np.stack([np.asarray(v, np.float32) for v in batch[col]])
                out[col] = vectors[idx]
    return out


def normalize_images(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (N,3,H,W) → float, normalised with the model's mean/std (done on the worker's device)."""
    m = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - m) / s


def stream_image_transform(bundle: Any) -> Any:
    """PIL image → the exact float tensor a Train worker feeds the model (uint8 eval resize, then normalise).

    The teacher-embedding cache uses this, so cached embeddings equal what the live teacher computes in training.
    """
    size = bundle.preprocess_cfg["size"][0]
    mean, std = bundle.preprocess_cfg["mean"], bundle.preprocess_cfg["std"]

    def transform(img: Image.Image) -> torch.Tensor:
        pixels = np.asarray(image_transform(size, False)(img), dtype=np.uint8).transpose(2, 0, 1)
        return normalize_images(torch.from_numpy(pixels.copy())[None], mean, std)[0]

    return transform


class PromptTable:
    """All class × template prompts tokenised once; a step samples one template per image with a seeded RNG."""

    def __init__(self, tokenizer: Any, classnames: list[str], templates: list[str]) -> None:
        if not templates:
            raise ValueError("the ID dataset manifest lists no prompt templates")
        prompts = [t.format(c) for c in classnames for t in templates]
        tokens = tokenizer(prompts)
        self.tokens = tokens.view(len(classnames), len(templates), -1)
        self.num_templates = len(templates)

    def sample(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        choice = torch.randint(self.num_templates, (labels.shape[0],), generator=generator)
        return self.tokens[labels.cpu(), choice]
