"""Decode + resize: the readers' :func:`~pipeline.data.transforms.load_pixels` against the old path, on real photos.

    python benchmarks/perf/decode.py            # pixel differences and images/s per core, sides 224 and 32
    python benchmarks/perf/decode.py -n 600     # more images per rate

The old path (``old_pixels``) is Pillow's decode (:func:`~pipeline.data.format.decode_image`) and Pillow's bicubic
resize through torchvision's PIL transforms; the new one decodes 8-bit JPEGs with libjpeg-turbo into a tensor and
resizes the uint8 tensor (torch's antialiased bicubic). The photos are scikit-image's samples (colour and grey)
resized to ImageNet's typical 500×375 (every other cycle 375×500), saved as JPEG quality 90 or PNG.

``draft_pixels`` is the reduced-size JPEG decode (Pillow's ``draft``: libjpeg's DCT scaling to 1/2, 1/4, 1/8) that
``load_pixels`` does not use: it applies only where the shorter side is ≥ 4× the target (drafting to ≥ 2×), so not
at 500×375 → 224, and there it moves pixels by up to 19 levels at side 32 (60 when drafted down to the side itself)
and 7 at 1500×1000 → 224, outside the new path's tolerance (max 2), for 1.3× the new path's images/s.

Importable without Ray (``from benchmarks.perf import decode``): ``realistic_jpegs(n)`` and ``decode_rate(fn,
images)`` serve the perf benchmark and tests/unit/test_decode.py. Rates are images per CPU second of one thread
(``torch.set_num_threads(1)``; Pillow decodes on one), so a busy machine moves them less than wall time would.
"""

from __future__ import annotations

import argparse
import functools
import io
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run by path: the repository root is importable

from dive.config import MAX_IMAGE_PIXELS  # noqa: E402
from pipeline.data.format import decode_image  # noqa: E402
from pipeline.data.transforms import load_pixels, resize_crop  # noqa: E402

# scikit-image's sample photos (shipped inside its wheel): colour, then grey (stored as 1-channel JPEGs / PNGs)
COLOUR = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")
GREY = ("camera", "coins", "moon")
SIZE = (500, 375)  # ImageNet's most common size (landscape); portrait cycles use (375, 500)


@functools.lru_cache(maxsize=2)
def photos(size: tuple[int, int] = SIZE) -> tuple[Any, ...]:
    """The sample photos as PIL images (RGB or L) of ``size`` (bicubic), in ``COLOUR + GREY`` order."""
    from PIL import Image
    from skimage import data

    out = []
    for name in COLOUR + GREY:
        img = Image.fromarray(getattr(data, name)())
        out.append(img.convert("RGB" if name in COLOUR else "L").resize(size, Image.Resampling.BICUBIC))
    return tuple(out)


def realistic_images(n: int, fmt: str = "JPEG", quality: int = 90) -> list[bytes]:
    """``n`` encoded photos cycling over ``photos()``: even cycles landscape 500×375, odd cycles portrait 375×500."""
    wide, tall = photos(SIZE), photos(SIZE[::-1])
    out = []
    for i in range(n):
        cycle, k = divmod(i, len(wide))
        img = (wide if cycle % 2 == 0 else tall)[k]
        buf = io.BytesIO()
        img.save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
        out.append(buf.getvalue())
    return out


def realistic_jpegs(n: int, quality: int = 90) -> list[bytes]:
    return realistic_images(n, "JPEG", quality)


def realistic_pngs(n: int) -> list[bytes]:
    return realistic_images(n, "PNG")


@functools.lru_cache(maxsize=8)
def _pil_transform(side: int) -> Any:
    from torchvision.transforms import v2 as T

    return T.Compose([T.Resize(side, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(side)])


def old_pixels(data: bytes, side: int, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray | None:
    """The path before :func:`load_pixels`: Pillow decode, then torchvision's Resize + CenterCrop on the PIL
    image (Pillow's bicubic resize). uint8 (3, side, side), or None for a skipped image."""
    img, _ = decode_image(data, max_pixels)
    if img is None:
        return None
    return np.asarray(_pil_transform(side)(img), dtype=np.uint8).transpose(2, 0, 1)


def new_pixels(data: bytes, side: int, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray | None:
    return load_pixels(data, side, max_pixels)[0]


def limit_pixels(data: bytes, side: int) -> np.ndarray:
    """The limit: libjpeg-turbo decode + the same tensor resize, with none of the reader's checks (no header
    pixel limit, no orientation, no fallback)."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    pixels = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    return resize_crop(pixels, side).contiguous().numpy()


def dataloader_rate(images: Sequence[bytes], side: int, batch_size: int = 64, repeats: int = 3) -> float:
    """Images/s per core of a PyTorch ``DataLoader`` (in process, ``num_workers=0``, one thread) over the same
    encoded images, each opened with Pillow and transformed by torchvision's PIL transforms (resize, centre crop,
    ``PILToTensor``) — what open_clip's trainer does per sample, and the figure DataLoader workers multiply."""
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision.transforms import v2 as T

    transform = T.Compose([_pil_transform(side), T.PILToTensor()])

    class Photos(Dataset[Any]):
        def __len__(self) -> int:
            return len(images)

        def __getitem__(self, i: int) -> Any:
            return transform(Image.open(io.BytesIO(images[i])).convert("RGB"))

    loader = DataLoader(Photos(), batch_size=batch_size, num_workers=0)
    batches = lambda _: sum(len(b) for b in loader)  # noqa: E731  (one pass = every image once)
    return decode_rate(batches, [b""], repeats=repeats) * len(images)


def draft_pixels(
    data: bytes, side: int, max_pixels: int = MAX_IMAGE_PIXELS, factor: int = 2
) -> np.ndarray | None:
    """Measured, not used: a JPEG whose shorter side is at least 2 × ``factor`` × ``side`` is decoded by Pillow at
    a reduced size (``draft``: DCT scaling, the shorter side kept ≥ ``factor`` × ``side``), then resized as
    :func:`load_pixels` resizes; other images as :func:`load_pixels`. Orientation is ignored (the photos here
    have none)."""
    import torch
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    width, height = img.size
    scale = factor * side / min(width, height)
    if img.format != "JPEG" or scale > 0.5 or width * height > max_pixels:
        return new_pixels(data, side, max_pixels)
    img.draft("RGB", (int(np.ceil(width * scale)), int(np.ceil(height * scale))))
    pixels = torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)
    return resize_crop(pixels, side).contiguous().numpy()


def pixel_differences(
    images: Sequence[bytes], side: int, fn: Callable[..., np.ndarray | None] = new_pixels
) -> list[tuple[int, float]]:
    """Per image (max, mean) absolute difference of ``fn``'s uint8 pixels from ``old_pixels``'."""
    out = []
    for data in images:
        old, new = old_pixels(data, side), fn(data, side)
        assert old is not None and new is not None and old.shape == new.shape == (3, side, side)
        diff = np.abs(old.astype(np.int16) - new.astype(np.int16))
        out.append((int(diff.max()), float(diff.mean())))
    return out


def decode_rate(
    fn: Callable[[bytes], Any],
    images: Sequence[bytes],
    repeats: int = 3,
    clock: Callable[[], float] = time.process_time,
) -> float:
    """Images per second of ``fn`` over ``images`` on one core: torch limited to one thread (restored after),
    best of ``repeats`` passes, timed by ``clock`` (default: this process's CPU time)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        best = float("inf")
        for _ in range(repeats):
            start = clock()
            for data in images:
                fn(data)
            best = min(best, clock() - start)
    finally:
        torch.set_num_threads(threads)
    return len(images) / max(best, 1e-9)


def compare_rates(
    images: Sequence[bytes], side: int, rounds: int = 3, variants: dict[str, Callable] | None = None
) -> dict[str, float]:
    """images/s per core of the old path and of each variant (default: ``new``), rounds interleaved, best of
    each; ``<name>_over_old`` the ratios."""
    variants = variants or {"new": new_pixels}
    fns = {"old": old_pixels, **variants}
    best = dict.fromkeys(fns, 0.0)
    for _ in range(rounds):
        for name, fn in fns.items():
            best[name] = max(best[name], decode_rate(lambda d, fn=fn: fn(d, side), images, repeats=1))
    return best | {f"{name}_over_old": best[name] / best["old"] for name in variants}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=300, help="images per rate measurement")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    per_photo = 2 * len(COLOUR + GREY)  # one landscape and one portrait copy of each photo
    jpegs, pngs = realistic_jpegs(per_photo), realistic_pngs(per_photo)
    names = [
        f"{n} {'landscape' if i < len(COLOUR + GREY) else 'portrait'}"
        for i, n in enumerate(2 * (COLOUR + GREY))
    ]
    for side in (224, 32):
        print(
            f"\nside {side}: |old − new| per image (uint8 levels): JPEG q90 | PNG | JPEG drafted (factor 2)"
        )
        rows = zip(
            names,
            pixel_differences(jpegs, side),
            pixel_differences(pngs, side),
            pixel_differences(jpegs, side, draft_pixels),
            strict=True,
        )
        for name, j, p, d in rows:
            print(
                f"  {name:32s} max {j[0]} mean {j[1]:.4f} | max {p[0]} mean {p[1]:.4f} | max {d[0]} mean {d[1]:.3f}"
            )
    images = realistic_jpegs(args.n)
    for side in (224, 32):
        rates = compare_rates(images, side, args.rounds, {"new": new_pixels, "draft": draft_pixels})
        print(
            f"\nside {side}, {args.n} JPEGs, images/s per core: old {rates['old']:.0f}, new {rates['new']:.0f} "
            f"({rates['new_over_old']:.2f}×), drafted {rates['draft']:.0f} ({rates['draft_over_old']:.2f}×)"
        )
    pngs = realistic_pngs(max(args.n // 3, 1))
    rates = compare_rates(pngs, 224, args.rounds)
    print(
        f"side 224, {len(pngs)} PNGs: old {rates['old']:.0f}, new {rates['new']:.0f} ({rates['new_over_old']:.2f}×)"
    )


if __name__ == "__main__":
    main()
