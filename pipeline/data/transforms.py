"""Sample transforms shared by every reader: decode + resize to uint8, normalise, tokenise, prompt tables.

Plain numpy / torchvision / open_clip, no Ray: the Ray Data streams (:mod:`pipeline.data.streams`), the validation
sets, the accuracy evaluation and the teacher-embedding cache all call these, so each sees the same pixels.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as TF

from dive.templates import render
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


# Random-resized crop of the augmented ID stream, by default (data.crop_scale / crop_ratio / hflip): area share and
# aspect ratio (torchvision's ranges, scale raised).
CROP_SCALE = (0.6, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)


def stream_size(size: int, augment: bool, min_scale: float = CROP_SCALE[0]) -> int:
    """The side a stream stores: the model's ``size``, or for an augmented stream a margin (1/sqrt(min_scale):
    1.29× at 0.6, 1.05× at FLYP's 0.9), so that the worker's square crops (at least ``min_scale`` of the area)
    are only shrunk to ``size``; at the most extreme aspect the short side is stretched by at most 15 %. Held in
    memory, an augmented stream costs 1/min_scale the pixels."""
    return math.ceil(size / math.sqrt(min_scale)) if augment else size


@functools.lru_cache(maxsize=8)
def image_transform(side: int) -> T.Compose:
    """open_clip's eval geometry: resize the shorter side to ``side`` (bicubic), centre-crop a square."""
    return T.Compose([T.Resize(side, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(side)])


def random_resized_crop(
    images: torch.Tensor,
    size: int,
    generator: torch.Generator,
    scale: Sequence[float] = CROP_SCALE,
    ratio: Sequence[float] = CROP_RATIO,
    flip: bool = True,
) -> torch.Tensor:
    """uint8 (N,3,S,S) → float (N,3,size,size), 0..255: per image a crop of ``scale`` of the area at an
    aspect in ``ratio`` (bicubic, antialiased), mirrored with p = 0.5 when ``flip``.

    On the Train worker, with every draw from ``generator`` (seeded by step and rank): torchvision's transform
    in a Ray Data task draws from that process's global RNG, so a resumed run would crop differently."""
    n, _, height, width = images.shape
    u = torch.rand(n, 5, generator=generator).tolist()
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    out = []
    for img, (a, r, y, x, mirror) in zip(images, u, strict=True):
        area = height * width * (scale[0] + a * (scale[1] - scale[0]))
        ratio = math.exp(log_lo + r * (log_hi - log_lo))
        w = min(width, round(math.sqrt(area * ratio)))
        h = min(height, round(math.sqrt(area / ratio)))
        top, left = int(y * (height - h + 1)), int(x * (width - w + 1))
        crop = TF.resized_crop(
            img.float(),
            top,
            left,
            h,
            w,
            [size, size],
            interpolation=T.InterpolationMode.BICUBIC,
            antialias=True,
        )
        out.append(TF.horizontal_flip(crop) if flip and mirror < 0.5 else crop)
    return torch.stack(out).clamp_(0, 255)


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
    borders: tuple[int, ...] = (),
    min_scale: float = CROP_SCALE[0],
) -> dict[str, np.ndarray]:
    """Decode and resize one batch of shard rows; drop and count bad samples.

    Output: ``image`` uint8 (N,3,size,size); labelled sets add ``label`` int64, captioned sets ``text`` int64
    token ids (N,L) and any cached ``teacher_*`` columns as float32 (N,D); ``passthrough`` columns follow the
    kept rows unchanged. ``borders[s]``: pixels cropped off each side of an image of evaluation set ``s`` (the
    batch's ``set`` column) before the resize, where a set's protocol has one (ObjectNet: 2).
    """
    side = stream_size(size, augment, min_scale)
    transform = image_transform(side)
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
        if borders and (border := borders[int(batch["set"][i])]):
            img = crop_border(img, border)
        images.append(np.asarray(transform(img), dtype=np.uint8).transpose(2, 0, 1))
        keep.append(i)
    if skipped and counter is not None:
        counter.add.remote(dict(skipped))
    out: dict[str, np.ndarray] = {
        "image": np.stack(images) if images else np.zeros((0, 3, side, side), np.uint8),
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


def crop_border(img: Image.Image, border: int) -> Image.Image:
    """``border`` pixels off each side (FLYP / WiSE-FT crop ObjectNet's 2-pixel frame before the eval transform);
    an image too small to crop is kept whole."""
    width, height = img.size
    if width <= 2 * border or height <= 2 * border:
        return img
    return img.crop((border, border, width - border, height - border))


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
        pixels = np.asarray(image_transform(size)(img), dtype=np.uint8).transpose(2, 0, 1)
        return normalize_images(torch.from_numpy(pixels.copy())[None], mean, std)[0]

    return transform


class PromptTable:
    """All class × template prompts tokenised once; a step samples one template per image with a seeded RNG."""

    def __init__(self, tokenizer: Any, classnames: list[str], templates: list[str]) -> None:
        if not templates:
            raise ValueError("the ID dataset manifest lists no prompt templates")
        prompts = [render(t, c) for c in classnames for t in templates]
        tokens = tokenizer(prompts)
        self.tokens = tokens.view(len(classnames), len(templates), -1)
        self.num_templates = len(templates)

    def sample(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        choice = torch.randint(self.num_templates, (labels.shape[0],), generator=generator)
        return self.tokens[labels.cpu(), choice]
