"""``decode_image``: every image mode becomes the 8-bit RGB a viewer shows, upright, in every reader.

Expected values are written out by hand from the rules in :func:`pipeline.data.format._to_rgb`, so a change of
rule shows up here as a number, not as a silently different image. ``load_pixels`` (what every reader calls:
libjpeg-turbo straight into a tensor for JPEGs, a tensor resize) keeps that rule and stays within a measured
tolerance of the old path (Pillow decode + Pillow resize) on real photos.
"""

from __future__ import annotations

import io
import warnings
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image, ImageFile

from pipeline.convert.teacher_cache import Teacher as CacheTeacher
from pipeline.convert.teacher_cache import embed_table
from pipeline.data import transforms
from pipeline.data.format import LABELLED, decode_image
from pipeline.data.transforms import load_pixels, preprocess_batch, stream_image_transform

LIMIT = 1_000_000
RED, WHITE = (255, 0, 0), (255, 255, 255)


def encode(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def stored_mode(data: bytes) -> str:
    """The mode Pillow opens the bytes in: each test checks it exercises the mode it names."""
    return Image.open(io.BytesIO(data)).mode


def rgb(data: bytes) -> np.ndarray:
    img, reason = decode_image(data, LIMIT)
    assert reason is None and img is not None and img.mode == "RGB"
    return np.asarray(img)


def grey_of(data: bytes) -> np.ndarray:
    pixels = rgb(data)
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 0] == pixels[..., 2]).all()
    return pixels[..., 0]


# ------------------------------------------------------------------------------------------------ wide modes
def test_16bit_grey_png_is_scaled_to_8bit_not_clipped():
    values = np.array([[0, 32768, 65535, 128, 129, 257 * 7, 1000, 65407]], dtype=np.uint16)
    data = encode(Image.fromarray(values))
    assert stored_mode(data) == "I;16"
    # round(v / 257), half up: 128/257 = 0.498 → 0, 129/257 = 0.502 → 1, 1000/257 = 3.89 → 4, 65407/257 = 254.502 → 255
    assert grey_of(data).tolist() == [[0, 128, 255, 0, 1, 7, 4, 255]]


def test_16bit_grey_gradient_keeps_every_level():
    ramp = (
        (np.arange(256, dtype=np.uint32) * 257).astype(np.uint16).reshape(16, 16)
    )  # 8-bit k stored as k·257
    assert grey_of(encode(Image.fromarray(ramp))).ravel().tolist() == list(range(256))
    fine = np.arange(0, 65536, 64, dtype=np.uint32).astype(np.uint16).reshape(32, 32)  # every 64th level
    got = grey_of(encode(Image.fromarray(fine))).ravel().astype(np.int64)
    assert got.tolist() == ((fine.ravel().astype(np.int64) * 2 + 257) // 514).tolist()  # round half up
    assert got[0] == 0 and got[-1] == 255 and (np.diff(got) >= 0).all() and len(set(got.tolist())) == 256


@pytest.mark.parametrize("mode", ["I;16B", "I"])
def test_16bit_big_endian_and_32bit_int_tiffs_are_scaled_alike(mode):
    values = np.array([[0, 32768, 65535, 514]], dtype=np.uint16)
    if mode == "I":
        img = Image.fromarray(values.astype(np.int32))
    else:
        img = Image.frombytes(mode, (4, 1), values.astype(">u2").tobytes())
    data = encode(img, "TIFF")
    assert stored_mode(data) == mode
    assert grey_of(data).tolist() == [[0, 128, 255, 2]]


def test_32bit_int_values_outside_16bit_are_clipped_first():
    data = encode(Image.fromarray(np.array([[-5, 70000, 65535]], dtype=np.int32)), "TIFF")
    assert stored_mode(data) == "I"
    assert grey_of(data).tolist() == [[0, 255, 255]]


def test_float_image_in_0_to_1_is_scaled_and_in_0_to_255_is_clipped():
    unit = np.array([[0.0, 0.5, 1.0, 0.1, np.nan, -0.2]], dtype=np.float32)
    data = encode(Image.fromarray(unit), "TIFF")
    assert stored_mode(data) == "F"
    assert grey_of(data).tolist() == [[0, 128, 255, 26, 0, 0]]  # 127.5 → 128, 25.5 → 26 (half up)
    wide = np.array([[0.0, 0.5, 1.0, 127.4, 300.0, -4.0]], dtype=np.float32)
    assert grey_of(encode(Image.fromarray(wide), "TIFF")).tolist() == [[0, 1, 1, 127, 255, 0]]


# --------------------------------------------------------------------------------------- palette, alpha, …
def test_palette_png_with_transparency_gives_the_palette_colours():
    img = Image.new("P", (4, 1))
    img.putpalette([255, 0, 0, 0, 128, 0, 0, 0, 255, 10, 20, 30])
    for x in range(4):
        img.putpixel((x, 0), x)
    for transparency in (0, bytes([0, 128, 255, 255])):  # one transparent index; an alpha per index (tRNS)
        data = encode(img, transparency=transparency)
        assert stored_mode(data) == "P"
        # the colours stored under the transparency are kept, alpha dropped (the RGBA rule)
        assert rgb(data).tolist() == [[[255, 0, 0], [0, 128, 0], [0, 0, 255], [10, 20, 30]]]


def test_la_image_gives_the_luminance_in_all_channels_and_drops_alpha():
    img = Image.merge("LA", (Image.new("L", (2, 1), 77), Image.new("L", (2, 1), 0)))
    img.putpixel((1, 0), (200, 255))
    data = encode(img)
    assert stored_mode(data) == "LA"
    assert rgb(data).tolist() == [[[77, 77, 77], [200, 200, 200]]]  # fully transparent 77 is still 77


def test_bilevel_image_is_black_and_white():
    img = Image.new("1", (3, 1), 0)
    img.putpixel((1, 0), 1)
    data = encode(img)
    assert stored_mode(data) == "1"
    assert grey_of(data).tolist() == [[0, 255, 0]]


def cmyk_expected(c: int, m: int, y: int, k: int) -> list[int]:
    """R = round((255 − C)(255 − K) / 255), likewise G from M and B from Y (no ICC profile)."""
    return [int(np.floor((255 - v) * (255 - k) / 255 + 0.5)) for v in (c, m, y)]


def test_cmyk_tiff_follows_the_documented_formula():
    colours = [(0, 0, 0, 0), (255, 0, 0, 0), (51, 102, 0, 128), (0, 0, 0, 255), (10, 200, 90, 30)]
    img = Image.new("CMYK", (len(colours), 1))
    for x, c in enumerate(colours):
        img.putpixel((x, 0), c)
    data = encode(img, "TIFF")
    assert stored_mode(data) == "CMYK"
    assert rgb(data)[0].tolist() == [cmyk_expected(*c) for c in colours]
    assert cmyk_expected(51, 102, 0, 128) == [102, 76, 127]  # the formula, worked by hand


def test_cmyk_jpeg_gives_the_same_colours_within_jpeg_error():
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)
    assert stored_mode(data) == "CMYK"
    assert np.abs(rgb(data)[8, 8].astype(int) - [255, 0, 0]).max() <= 6


def test_lab_tiff_is_colour_converted_to_srgb():
    img = Image.new("LAB", (2, 1), (255, 128, 128))  # L = 100, a = b = 0: white
    img.putpixel((1, 0), (0, 128, 128))  # L = 0: black
    data = encode(img, "TIFF")
    assert stored_mode(data) == "LAB"
    assert np.abs(rgb(data).astype(int) - [[WHITE, [0, 0, 0]]]).max() <= 2


# ------------------------------------------------------------------------------------------------ orientation
def corner_photo(orientation: int, size=(64, 32)) -> bytes:
    """A white JPEG with a red 16×16 block in its stored top-left corner, tagged with an EXIF orientation."""
    img = Image.new("RGB", size, WHITE)
    img.paste(RED, (0, 0, 16, 16))
    exif = img.getexif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", quality=95, exif=exif)


def corners(pixels: np.ndarray) -> dict[str, bool]:
    """Which corners of a decoded image are red (flat 16×16 blocks: JPEG error is far below the 100 margin)."""
    h, w = pixels.shape[:2]
    at = {
        "top-left": (8, 8),
        "top-right": (8, w - 9),
        "bottom-left": (h - 9, 8),
        "bottom-right": (h - 9, w - 9),
    }
    return {name: bool(np.abs(pixels[y, x].astype(int) - RED).max() < 100) for name, (y, x) in at.items()}


# orientation → where the stored top-left corner is shown, and whether width and height swap (EXIF 2.3, 4.6.4)
ORIENTATIONS = {
    1: ("top-left", False),
    2: ("top-right", False),  # mirrored left-right
    3: ("bottom-right", False),  # rotated 180°
    4: ("bottom-left", False),  # mirrored top-bottom
    5: ("top-left", True),  # transposed
    6: ("top-right", True),  # stored rotated 90° counter-clockwise: shown turned 90° clockwise
    7: ("bottom-right", True),  # transversed
    8: ("bottom-left", True),  # turned 90° counter-clockwise
}


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_exif_orientation_is_applied(orientation):
    where, swapped = ORIENTATIONS[orientation]
    img, reason = decode_image(corner_photo(orientation), LIMIT)
    assert reason is None
    assert img.size == ((32, 64) if swapped else (64, 32))
    found = corners(np.asarray(img))
    assert [name for name, red in found.items() if red] == [where], found


def test_pixel_limit_is_width_times_height_whatever_the_orientation():
    data = corner_photo(6)
    assert decode_image(data, 64 * 32)[1] is None
    assert decode_image(data, 64 * 32 - 1) == (None, "too_large")


def test_a_corrupt_exif_block_keeps_the_image_as_stored():
    img = Image.new("RGB", (8, 4), RED)
    truncated = (
        b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\x00\x05\x01\x12\x00\x03"  # an orientation entry cut short
    )
    with warnings.catch_warnings(record=True):  # Pillow warns "Corrupt EXIF data" when it opens the file
        warnings.simplefilter("always")
        decoded, reason = decode_image(encode(img, "JPEG", exif=truncated), LIMIT)
    assert reason is None and decoded.size == (8, 4)


# ------------------------------------------------------------------------- the readers see the same pixels
def half_photo(side: int) -> bytes:
    """A 2·side × side JPEG, left half red and right half white, tagged EXIF orientation 6 (turn clockwise).

    Upright it is side × 2·side with the red half on top, so the centre square crop of every reader holds red
    above white; the stored pixels would give red left of white instead."""
    img = Image.new("RGB", (2 * side, side), WHITE)
    img.paste(RED, (0, 0, side, side))
    exif = img.getexif()
    exif[0x0112] = 6
    return encode(img, "JPEG", quality=95, exif=exif)


def assert_red_above_white(square: np.ndarray) -> None:
    """``square``: (side, side, 3), 0…255. The top quarter is red and the bottom quarter white, edge to edge."""
    side = square.shape[0]
    top, bottom = square[: side // 4].astype(float), square[-(side // 4) :].astype(float)
    assert np.abs(top - RED).max() < 40, top[..., 1].max()
    assert np.abs(bottom - WHITE).max() < 40, bottom.min()


def grey16(value: int, side: int) -> bytes:
    return encode(Image.fromarray(np.full((side, side), value, dtype=np.uint16)))


def test_stream_batches_see_rotated_and_scaled_pixels():
    """``preprocess_batch`` (training streams, validation, accuracy evaluation) decodes through the same rule."""
    batch = {"image": np.array([half_photo(32), grey16(32768, 32)], dtype=object), "label": np.array([0, 0])}
    out = preprocess_batch(batch, kind=LABELLED, size=32, augment=False, max_pixels=LIMIT, num_classes=1)
    assert out["image"].shape == (2, 3, 32, 32)
    assert_red_above_white(out["image"][0].transpose(1, 2, 0))
    assert (out["image"][1] == 128).all()


def fake_bundle(size: int) -> SimpleNamespace:
    """All ``stream_image_transform`` reads; mean 0 and std 1 make its tensor the pixels / 255."""
    return SimpleNamespace(
        preprocess_cfg={"size": (size, size), "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
    )


def test_eval_transform_sees_rotated_and_scaled_pixels():
    """``stream_image_transform``: the RSA reference embeddings and the teacher cache."""
    transform = stream_image_transform(fake_bundle(16))
    x, reason = transform(half_photo(16), LIMIT)
    assert reason is None and x.shape == (3, 16, 16)
    assert_red_above_white(x.permute(1, 2, 0).numpy() * 255)
    grey, _ = transform(grey16(32768, 16), LIMIT)
    assert torch.allclose(grey, torch.full((3, 16, 16), 128 / 255))
    assert transform(b"", LIMIT) == (None, "empty")
    assert transform(half_photo(16), 16 * 32 - 1) == (None, "too_large")


def test_teacher_cache_embeds_the_rotated_and_scaled_pixels():
    seen: list[torch.Tensor] = []

    class Teacher:
        def encode_image(self, x, normalize):
            seen.append(x)
            return torch.zeros(x.shape[0], 4)

        def encode_text(self, tokens, normalize):
            return torch.zeros(tokens.shape[0], 4)

    table = pa.table({"image": [half_photo(16), grey16(65535, 16)], "caption": ["a photo", "grey"]})
    cfg = fake_bundle(16).preprocess_cfg
    teacher = CacheTeacher(Teacher(), 16, cfg["mean"], cfg["std"], lambda caps: torch.zeros(len(caps), 3), 4)
    out = embed_table(table, teacher, LIMIT)
    assert out.column("_skip").to_pylist() == [None, None]
    assert_red_above_white(seen[0][0].permute(1, 2, 0).numpy() * 255)
    assert torch.equal(seen[0][1], torch.ones(3, 16, 16))  # 65535 → 255


# ----------------------------------------------------------------------------- load_pixels: the fast path
# Measured on scikit-image's photos at 500×375 / 375×500 (and 40×30 … 3000×2000), JPEG q90 and PNG, sides 224 and
# 32 (benchmarks/perf/decode.py): |new − old| ≤ 1 level for JPEGs, ≤ 2 for PNGs and upscaled images, mean per
# image ≤ 0.01. Asserted with a margin: a change that moves pixels further (a reduced-size decode, another
# filter) fails here.
MAX_DIFF, MEAN_DIFF = 3, 0.02


@pytest.fixture(scope="module")
def perf_decode():
    pytest.importorskip("skimage", reason="scikit-image not installed; pip install -e '.[litemini]'")
    from benchmarks.perf import decode

    return decode


def assert_within_tolerance(diffs: list[tuple[int, float]]) -> None:
    assert max(d[0] for d in diffs) <= MAX_DIFF, diffs
    assert max(d[1] for d in diffs) <= MEAN_DIFF, diffs


@pytest.mark.parametrize("side", [224, 32])
def test_fast_path_pixels_stay_within_tolerance_of_the_pil_path(perf_decode, side):
    n = 2 * len(perf_decode.COLOUR + perf_decode.GREY)  # each photo landscape and portrait
    assert_within_tolerance(perf_decode.pixel_differences(perf_decode.realistic_jpegs(n), side))
    assert_within_tolerance(perf_decode.pixel_differences(perf_decode.realistic_pngs(n), side))


def test_small_images_are_upscaled_within_tolerance(perf_decode):
    photo = perf_decode.photos()[0].resize((40, 30))
    for data in (encode(photo, "JPEG", quality=90), encode(photo)):
        assert_within_tolerance(perf_decode.pixel_differences([data], 224))


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_fast_path_turns_a_photo_as_pillow_does(perf_decode, orientation):
    """Every EXIF orientation: the tensor's flips and transposes equal Pillow's ``exif_transpose``."""
    photo = perf_decode.photos()[1]
    exif = photo.getexif()
    exif[0x0112] = orientation
    data = encode(photo, "JPEG", quality=90, exif=exif)
    assert_within_tolerance(perf_decode.pixel_differences([data], 224))


def test_fast_path_and_pil_fallback_give_the_same_pixels(perf_decode, monkeypatch):
    """The fast decoder is libjpeg-turbo like Pillow's, so a JPEG the fast path refuses (CMYK, 12-bit, a
    torchvision without decoders) changes nothing but the speed."""
    images = perf_decode.realistic_jpegs(4)
    fast = [load_pixels(d, 64, LIMIT)[0] for d in images]
    monkeypatch.setattr(transforms, "decode_jpeg", None)
    for data, pixels in zip(images, fast, strict=True):
        slow, reason = load_pixels(data, 64, LIMIT)
        assert reason is None and np.abs(slow.astype(int) - pixels).max() <= 1


def test_a_failing_fast_decoder_falls_back_to_pillow(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("Unsupported JPEG precision")  # what libjpeg says of a 12-bit JPEG

    photo = half_photo(32)
    expected, _ = load_pixels(photo, 32, LIMIT)
    monkeypatch.setattr(transforms, "decode_jpeg", broken)
    pixels, reason = load_pixels(photo, 32, LIMIT)
    assert reason is None and np.array_equal(pixels, expected)
    assert_red_above_white(pixels.transpose(1, 2, 0))


def with_size(data: bytes, width: int, height: int) -> bytes:
    """A baseline JPEG whose frame header (SOF0) claims ``width`` × ``height``: a decompression bomb's header."""
    sof = data.index(b"\xff\xc0")
    return data[: sof + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + data[sof + 9 :]


def test_a_bomb_is_too_large_from_its_header_alone(monkeypatch):
    data = encode(Image.new("RGB", (64, 32), RED), "JPEG")
    assert load_pixels(data, 32, 64 * 32)[1] is None
    decoded = []
    monkeypatch.setattr(transforms, "decode_jpeg", lambda *a, **k: decoded.append("torchvision"))
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append("pillow"))
    assert load_pixels(data, 32, 64 * 32 - 1) == (None, "too_large")
    assert load_pixels(with_size(data, 4000, 4000), 32, LIMIT) == (None, "too_large")  # over our limit
    assert load_pixels(with_size(data, 60000, 60000), 32, 10**10) == (None, "too_large")  # over Pillow's
    assert decoded == []


@pytest.mark.parametrize("progressive", [False, True])
def test_a_truncated_jpeg_is_undecodable_as_pillow_says(perf_decode, progressive):
    photo = perf_decode.photos()[0]
    data = encode(photo, "JPEG", quality=90, progressive=progressive)
    for cut in (len(data) // 2, len(data) - 2):
        assert decode_image(data[:cut], LIMIT) == (None, "undecodable")
        assert load_pixels(data[:cut], 32, LIMIT) == (None, "undecodable")


def test_corrupt_but_complete_jpeg_decodes_as_pillow_decodes_it(perf_decode):
    data = bytearray(perf_decode.realistic_jpegs(1)[0])
    data[len(data) // 2 : len(data) // 2 + 200] = bytes(200)  # a run of zeros inside the entropy-coded data
    img, reason = decode_image(bytes(data), LIMIT)
    assert reason is None  # libjpeg warns and goes on, in Pillow as in torchvision
    assert_within_tolerance(perf_decode.pixel_differences([bytes(data)], 64))


def test_cmyk_jpeg_takes_the_pil_path_and_gives_rgb(perf_decode, monkeypatch):
    """Only 8-bit RGB / grey JPEGs take the fast decoder: a CMYK one keeps Pillow's rule (no ICC profile)."""
    fast = []
    decoder = transforms.decode_jpeg
    monkeypatch.setattr(transforms, "decode_jpeg", lambda *a, **k: fast.append(1) or decoder(*a, **k))
    data = encode(perf_decode.photos()[1].convert("CMYK"), "JPEG", quality=90)
    assert stored_mode(data) == "CMYK"
    assert_within_tolerance(perf_decode.pixel_differences([data], 64))
    flat = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)
    pixels, reason = load_pixels(flat, 8, LIMIT)
    assert reason is None and pixels.shape == (3, 8, 8)
    assert np.abs(pixels[:, 4, 4].astype(int) - RED).max() <= 6
    assert fast == []
    load_pixels(encode(perf_decode.photos()[1], "JPEG"), 8, LIMIT)
    assert fast == [1]  # the spy sees an RGB one


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (None, "empty"),
        (b"not an image", "undecodable"),
        (b"\xff\xd8 not a jpeg", "undecodable"),
    ],
)
def test_bad_bytes_keep_their_skip_reason(data, reason):
    assert load_pixels(data, 32, LIMIT) == (None, reason)


def test_grey_jpeg_fills_all_three_channels():
    data = encode(Image.new("L", (40, 30), 77), "JPEG", quality=95)
    assert stored_mode(data) == "L"
    pixels, _ = load_pixels(data, 16, LIMIT)
    assert pixels.shape == (3, 16, 16) and np.abs(pixels.astype(int) - 77).max() <= 1


def test_a_border_is_cropped_before_the_resize_as_before(perf_decode):
    """``preprocess_batch``'s ``borders`` (ObjectNet's frame): the old path cropped the PIL image."""
    photo = perf_decode.photos()[2]
    data = encode(photo, "JPEG", quality=90)
    pixels, _ = load_pixels(data, 64, LIMIT, border=2)
    img, _ = decode_image(data, LIMIT)
    old = perf_decode.old_pixels(encode(img.crop((2, 2, img.width - 2, img.height - 2))), 64)
    diff = np.abs(pixels.astype(int) - old)
    assert_within_tolerance([(int(diff.max()), float(diff.mean()))])
    whole, _ = load_pixels(data, 64, LIMIT)
    assert np.abs(whole.astype(int) - pixels).mean() > 10 * MEAN_DIFF  # the crop did move the pixels


def test_decode_rate_measures_images_per_second(perf_decode):
    images, threads = perf_decode.realistic_jpegs(3), torch.get_num_threads()
    seen = []
    rate = perf_decode.decode_rate(lambda d: seen.append((d, torch.get_num_threads())), images, repeats=2)
    assert seen == [(d, 1) for d in images] * 2 and rate > 0  # one thread while measuring …
    assert torch.get_num_threads() == threads  # … restored after


# ------------------------------------------------------------------------------- the fast path's header read
def test_the_frame_header_is_read_from_the_markers():
    photo = Image.new("RGB", (40, 30), RED)
    assert transforms.jpeg_frame(encode(photo, "JPEG")) == (8, 30, 40, 3, False)
    assert transforms.jpeg_frame(encode(photo, "JPEG", progressive=True)) == (8, 30, 40, 3, False)
    assert transforms.jpeg_frame(encode(photo.convert("L"), "JPEG")).components == 1
    assert transforms.jpeg_frame(encode(photo.convert("CMYK"), "JPEG")).components == 4
    assert transforms.jpeg_frame(encode(photo, "JPEG", exif=photo.getexif(), xmp=b"<x/>")).xmp
    data = encode(photo, "JPEG")
    for cut in (b"\xff\xd8", data[:40], b"\xff\xd8" + bytes(20), b"\xff\xd8\xff\xda\x00\x08" + bytes(20)):
        assert transforms.jpeg_frame(cut) is None  # no frame header before the data ends or the scan starts


def spy_on_decoders(monkeypatch) -> list[str]:
    """Which decoders ``load_pixels`` calls: torchvision's, and Pillow's ``Image.open`` (header or decode)."""
    calls = []
    decoder, opener = transforms.decode_jpeg, Image.open
    monkeypatch.setattr(
        transforms, "decode_jpeg", lambda *a, **k: calls.append("torchvision") or decoder(*a, **k)
    )
    monkeypatch.setattr(Image, "open", lambda *a, **k: calls.append("pillow") or opener(*a, **k))
    return calls


def test_a_plain_jpeg_is_decoded_without_opening_pillow(monkeypatch):
    calls = spy_on_decoders(monkeypatch)
    pixels, reason = load_pixels(half_photo(32), 32, LIMIT)
    assert reason is None and calls == ["torchvision"]
    assert_red_above_white(pixels.transpose(1, 2, 0))  # the EXIF orientation, applied by torchvision


def test_a_big_endian_exif_orientation_is_applied_on_the_fast_path(monkeypatch):
    img = Image.new("RGB", (64, 32), WHITE)
    img.paste(RED, (0, 0, 32, 32))
    motorola = (
        b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00"
    )
    data = encode(img, "JPEG", quality=95, exif=motorola + bytes(4))
    assert Image.open(io.BytesIO(data)).getexif()[0x0112] == 6
    calls = spy_on_decoders(monkeypatch)
    pixels, reason = load_pixels(data, 32, LIMIT)
    assert reason is None and calls == ["torchvision"]
    assert_red_above_white(pixels.transpose(1, 2, 0))


def test_a_corrupt_exif_block_keeps_the_stored_pixels_on_the_fast_path(monkeypatch):
    img = Image.new("RGB", (64, 32), WHITE)
    img.paste(RED, (0, 0, 32, 32))
    truncated = b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\x00\x05\x01\x12\x00\x03"
    calls = spy_on_decoders(monkeypatch)
    pixels, reason = load_pixels(encode(img, "JPEG", quality=95, exif=truncated), 32, LIMIT)
    assert reason is None and calls == ["torchvision"]
    assert np.array_equal(pixels, load_pixels(encode(img, "JPEG", quality=95), 32, LIMIT)[0])


XMP_TURN_CLOCKWISE = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
)


def test_an_xmp_orientation_is_read_by_pillow_and_applied_on_the_fast_path(monkeypatch):
    """Pillow falls back to XMP's orientation when EXIF has none; torchvision reads only EXIF, so a file with an
    XMP block has its orientation read by Pillow and its pixels decoded by torchvision."""
    img = Image.new("RGB", (64, 32), WHITE)
    img.paste(RED, (0, 0, 32, 32))
    data = encode(img, "JPEG", quality=95, xmp=XMP_TURN_CLOCKWISE)
    assert decode_image(data, LIMIT)[0].size == (32, 64)  # Pillow's rule turns it
    calls = spy_on_decoders(monkeypatch)
    pixels, reason = load_pixels(data, 32, LIMIT)
    assert reason is None and calls == ["pillow", "torchvision"]
    assert_red_above_white(pixels.transpose(1, 2, 0))
