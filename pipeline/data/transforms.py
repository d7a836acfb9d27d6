"""Sample transforms shared by every reader: decode + resize to uint8, normalise, tokenise, prompt tables.

Plain numpy / torchvision / open_clip, no Ray: the Ray Data streams (:mod:`pipeline.data.streams`), the validation
sets, the accuracy evaluation, the RSA reference embeddings and the teacher-embedding cache all call
:func:`load_pixels`, so each sees the same pixels.
"""

from __future__ import annotations

import functools
import io
import math
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as TF

from dive.templates import render
from pipeline.data.format import (
    BAD_LABEL,
    EMPTY,
    LABELLED,
    NO_CAPTION,
    TEACHER_COLUMNS,
    decode_image,
)

try:  # deprecated in torchvision 0.29 (superseded by TorchCodec): once gone, every image takes the PIL path
    from torchvision.io import ImageReadMode, decode_jpeg
except ImportError:  # pragma: no cover
    decode_jpeg = None


@functools.lru_cache(maxsize=4)
def _tokenizer(model_name: str) -> Any:
    from dive.config import ModelSettings
    from dive.models import get_tokenizer
    from pipeline.home import local_model

    return get_tokenizer(local_model(ModelSettings(name=model_name)).name)


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


def resize_crop(pixels: torch.Tensor, side: int) -> torch.Tensor:
    """open_clip's eval geometry on uint8 (3,H,W): resize the shorter side to ``side`` (bicubic, antialiased, as
    Pillow's resize), centre-crop a square. uint8 (3, side, side)."""
    pixels = TF.resize(pixels, side, interpolation=T.InterpolationMode.BICUBIC, antialias=True)
    return TF.center_crop(pixels, side)


JPEG_SOI = b"\xff\xd8"

# EXIF orientation → the CHW tensor op of Pillow's ``ImageOps.exif_transpose`` (which names the transposition)
_ORIENT: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {
    2: lambda x: x.flip(-1),  # FLIP_LEFT_RIGHT
    3: lambda x: x.flip(-2, -1),  # ROTATE_180
    4: lambda x: x.flip(-2),  # FLIP_TOP_BOTTOM
    5: lambda x: x.transpose(-2, -1),  # TRANSPOSE
    6: lambda x: x.transpose(-2, -1).flip(-1),  # ROTATE_270 (90° clockwise)
    7: lambda x: x.transpose(-2, -1).flip(-2, -1),  # TRANSVERSE
    8: lambda x: x.transpose(-2, -1).flip(-2),  # ROTATE_90 (counter-clockwise)
}


# Start-of-frame markers (SOF0 … SOF15 but DHT, JPG and DAC): the frame header that holds the size and components
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_XMP = (
    b"http://ns.adobe.com/xap/1.0/\x00"  # an APP1 segment of XMP, where Pillow also looks for the orientation
)


class JpegFrame(NamedTuple):
    """What a JPEG's markers before its first scan say: the frame header, and whether an XMP block is there."""

    precision: int
    height: int
    width: int
    components: int
    xmp: bool


def jpeg_frame(data: bytes) -> JpegFrame | None:
    """The first frame header (SOFn) of a JPEG, read by walking the marker segments from SOI; None if the markers
    do not lead to one (a truncated or odd file: the PIL path decides). libjpeg takes the same first frame header,
    so the size read here is the size it decodes; it costs about 1 µs an image, Pillow's header read about 25–100.
    """
    i, n, xmp = 2, len(data), False
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # TEM, RSTn: no length field
            i += 2
            continue
        length = (data[i + 2] << 8) | data[i + 3]
        if marker in _SOF:
            if length < 8 or i + 10 > n:
                return None
            height, width = (data[i + 5] << 8) | data[i + 6], (data[i + 7] << 8) | data[i + 8]
            return JpegFrame(data[i + 4], height, width, data[i + 9], xmp)
        if marker in (0xD9, 0xDA) or length < 2:  # EOI or a scan before any frame: not a JPEG libjpeg reads
            return None
        xmp = xmp or (marker == 0xE1 and data[i + 4 : i + 4 + len(_XMP)] == _XMP)
        i += 2 + length
    return None


def _pillow_orientation(data: bytes) -> int:
    """The orientation Pillow reads (EXIF, else XMP); 1 (upright) for a malformed block."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Corrupt EXIF data", once per image of a stream otherwise
            return Image.open(io.BytesIO(data)).getexif().get(0x0112, 1)
    except Exception:
        return 1


def _decode_jpeg(data: bytes, max_pixels: int) -> torch.Tensor | None:
    """An 8-bit RGB or grey JPEG → upright uint8 (3,H,W) via libjpeg-turbo (torchvision), or None: take the PIL path.

    The header is read first (:func:`jpeg_frame`), so the rule is :func:`~pipeline.data.format.decode_image`'s: an
    image over the pixel limit (ours, or Pillow's bomb limit) is never decoded (None; the PIL path names it
    ``too_large``). The EXIF orientation is applied by torchvision, which reads it as Pillow does (a malformed block
    reads as upright); a file with an XMP block has its orientation read by Pillow, which falls back to XMP when
    EXIF has none. Any other mode (CMYK, 12-bit) or any failure also answers None, so every bad-image rule and skip
    reason stays the PIL path's. Same decoder library, same pixels: measured identical to Pillow's decode
    (benchmarks/perf/decode.py)."""
    if decode_jpeg is None:
        return None
    frame = jpeg_frame(data)
    if frame is None or frame.precision != 8 or frame.components not in (1, 3) or not frame.height:
        return None
    area = frame.width * frame.height
    if area > max_pixels or (Image.MAX_IMAGE_PIXELS and area > Image.MAX_IMAGE_PIXELS):
        return None  # Pillow decides: too large, or (between its warning and its error) decoded by Pillow
    orientation = _pillow_orientation(data) if frame.xmp else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision's deprecation notice
            pixels = decode_jpeg(
                torch.frombuffer(bytearray(data), dtype=torch.uint8),
                mode=ImageReadMode.RGB,
                apply_exif_orientation=orientation is None,
            )
    except Exception:  # corrupt, truncated, unsupported: the PIL path decides
        return None
    if orientation is None:
        return (
            pixels
            if tuple(pixels.shape[1:]) in ((frame.height, frame.width), (frame.width, frame.height))
            else None
        )
    if tuple(pixels.shape[1:]) != (frame.height, frame.width):
        return None
    op = _ORIENT.get(orientation)
    return op(pixels) if op is not None else pixels


def load_pixels(
    data: bytes | None, side: int, max_pixels: int, border: int = 0
) -> tuple[np.ndarray | None, str | None]:
    """Encoded image → uint8 (3, side, side) in the eval geometry (:func:`resize_crop`), or the skip reason.

    The decode rule is :func:`~pipeline.data.format.decode_image`'s (pixel limit from the header, orientation,
    modes → RGB, skip reasons); 8-bit JPEGs are decoded by libjpeg-turbo straight into a tensor (same pixels),
    everything else (and any JPEG that path refuses) by Pillow. ``border``: pixels cropped off each side first
    (an image too small to crop is kept whole). Against Pillow's decode + Pillow's bicubic resize, the old path,
    pixels differ by at most 1 level for JPEGs (2 for PNGs and upscaled images), mean ≤ 0.01 per photo, at about
    2× the JPEG images/s per core (benchmarks/perf/decode.py; the tolerance is tested in tests/unit/test_decode.py)."""
    if not data:
        return None, EMPTY
    pixels = _decode_jpeg(data, max_pixels) if bytes(data[:2]) == JPEG_SOI else None
    if pixels is None:
        img, reason = decode_image(data, max_pixels)
        if img is None:
            return None, reason
        pixels = torch.from_numpy(np.array(img)).permute(2, 0, 1)  # HWC memory: the resize's fast layout
    if border:
        pixels = _crop_border(pixels, border)
    return resize_crop(pixels, side).contiguous().numpy(), None


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
        border = borders[int(batch["set"][i])] if borders else 0
        pixels, reason = load_pixels(data, side, max_pixels, border)
        if reason is not None:
            skipped[reason] += 1
            continue
        images.append(pixels)
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


def _crop_border(pixels: torch.Tensor, border: int) -> torch.Tensor:
    """``border`` pixels off each side of (3,H,W) (FLYP / WiSE-FT crop ObjectNet's 2-pixel frame before the eval
    transform); an image too small to crop is kept whole."""
    height, width = pixels.shape[-2:]
    if width <= 2 * border or height <= 2 * border:
        return pixels
    return pixels[:, border : height - border, border : width - border]


def normalize_images(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (N,3,H,W) → float, normalised with the model's mean/std (done on the worker's device)."""
    m = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - m) / s


def stream_image_transform(
    bundle: Any,
) -> Callable[[bytes | None, int], tuple[torch.Tensor | None, str | None]]:
    """``transform(data, max_pixels)``: encoded image → the exact float tensor a Train worker feeds the model
    (:func:`load_pixels`, then normalise), or (None, skip reason).

    The teacher-embedding cache and the RSA reference embeddings use this, so cached embeddings equal what the
    live teacher computes in training.
    """
    size = bundle.preprocess_cfg["size"][0]
    mean, std = bundle.preprocess_cfg["mean"], bundle.preprocess_cfg["std"]

    def transform(data: bytes | None, max_pixels: int) -> tuple[torch.Tensor | None, str | None]:
        pixels, reason = load_pixels(data, size, max_pixels)
        if pixels is None:
            return None, reason
        return normalize_images(torch.from_numpy(pixels)[None], mean, std)[0], None

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
