"""The ID stream's augmentation: drawn on the worker from a seeded generator, so a resumed run crops the same."""

from __future__ import annotations

import torch

from pipeline.data.transforms import CROP_SCALE, random_resized_crop, stream_size


def _images(n: int = 6, side: int = 83) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=g)


def test_the_same_seed_gives_the_same_crops_and_another_seed_others():
    images = _images()
    a = random_resized_crop(images, 64, torch.Generator().manual_seed(7))
    b = random_resized_crop(images, 64, torch.Generator().manual_seed(7))
    c = random_resized_crop(images, 64, torch.Generator().manual_seed(8))
    assert a.shape == (6, 3, 64, 64) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert 0 <= a.min() and a.max() <= 255


def test_crops_vary_within_a_batch_and_some_are_mirrored():
    # A left-dark / right-bright image: a mirrored crop is bright on the left.
    ramp = torch.linspace(0, 255, 83).round().to(torch.uint8).expand(3, 83, 83)
    images = ramp.expand(32, 3, 83, 83).contiguous()
    out = random_resized_crop(images, 64, torch.Generator().manual_seed(1))
    left, right = out[..., :8].mean(dim=(1, 2, 3)), out[..., -8:].mean(dim=(1, 2, 3))
    mirrored = (left > right).sum().item()
    assert 0 < mirrored < 32  # p = 0.5 each
    assert len({round(v, 1) for v in left.tolist()}) > 8  # different crops, not one


def test_the_stream_margin_keeps_the_smallest_square_crop_at_least_the_model_size():
    for size in (32, 64, 224):
        side = stream_size(size, augment=True)
        assert stream_size(size, augment=False) == size
        assert (
            side * CROP_SCALE[0] ** 0.5 >= size
        )  # a square crop of the smallest area is shrunk, never enlarged


def test_flyps_crop_keys_narrow_the_crop_and_turn_the_mirror_off():
    """data.crop_scale [0.9, 1] / data.hflip false (FLYP's open_clip transform): nothing mirrored, and every crop
    keeps at least 90 % of the area, so a ramp's ends stay near its extremes."""
    ramp = torch.linspace(0, 255, 83).round().to(torch.uint8).expand(3, 83, 83)
    images = ramp.expand(32, 3, 83, 83).contiguous()
    out = random_resized_crop(
        images, 64, torch.Generator().manual_seed(1), scale=(0.9, 1.0), ratio=(3 / 4, 4 / 3), flip=False
    )
    left, right = out[..., :8].mean(dim=(1, 2, 3)), out[..., -8:].mean(dim=(1, 2, 3))
    assert (left < right).all()
    wide = random_resized_crop(images, 64, torch.Generator().manual_seed(1))
    narrow_spread = (right - left).min()
    assert (
        narrow_spread > (wide[..., -8:].mean(dim=(1, 2, 3)) - wide[..., :8].mean(dim=(1, 2, 3))).abs().min()
    )
    assert stream_size(224, augment=True, min_scale=0.9) == 237  # the margin follows the crop's smallest area
