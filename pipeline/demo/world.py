"""The demo world: scenes (shape × colour × texture × position × size × background × style), their captions
and their drawing. Pure numpy + Pillow; every draw is seeded by the caller's generator."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

DEMO_VERSION = "demo-v1"
IMAGE_SIZE = 32  # stored image size = the dive-tiny model's input size
CANVAS = 64  # drawn at this size, then downsampled with a Lanczos filter

# -------------------------------------------------------------------------------------------------- the world
SHAPES = ("circle", "square", "triangle", "star", "cross", "heart")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 90, 230),
    "yellow": (240, 215, 40),
    "purple": (150, 60, 200),
    "orange": (250, 135, 25),
}
TEXTURES = ("solid", "striped", "dotted")
POSITIONS = ("left", "right", "top", "bottom", "center")
SIZES = ("small", "large")
BACKGROUNDS = ("light", "dark")
STYLES = ("flat", "outline", "noisy", "pixel")
OOD_STYLES = ("outline", "noisy", "pixel")

_POSITION_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}
_STYLE_PREFIXES = {
    "flat": ("a photo of", "a drawing of", "a picture of", "an image of", ""),
    "outline": ("a line drawing of", "an outline drawing of", "a sketch of"),
    "noisy": ("a noisy photo of", "a grainy photo of", "a blurry photo of"),
    "pixel": ("a pixel art image of", "a pixelated image of", "a low resolution image of"),
}

# A small prompt ensemble over styles, in the spirit of CLIP's ImageNet templates ("a sketch of a {}.", …).
SHAPE_TEMPLATES = [
    "a photo of a {}.",
    "a drawing of a {}.",
    "a {} shape.",
    "a sketch of a {}.",
    "a blurry photo of a {}.",
    "a pixelated image of a {}.",
]
COLOR_TEMPLATES = ["a {} shape.", "a photo of a {} object.", "a drawing of a {} shape."]
POSITION_TEMPLATES = ["a shape on the {}.", "an object at the {}.", "a photo of a shape in the {}."]


@dataclass(frozen=True)
class Scene:
    """The discrete attributes of one drawn image (continuous jitter is drawn at render time).

    ``texture`` is "" for the outline style, which draws no fill.
    """

    shape: str
    color: str
    texture: str
    position: str
    size: str
    background: str
    style: str

    def key(self) -> str:
        parts = (self.shape, self.color, self.texture or "none", self.position, self.size, self.background)
        return "-".join([*parts, self.style])

    @classmethod
    def from_key(cls, key: str) -> Scene:
        """Inverse of :meth:`key`; accepts a full row key ``split/index/attributes`` too."""
        shape, color, texture, position, size, background, style = key.rsplit("/", 1)[-1].split("-")
        return cls(shape, color, "" if texture == "none" else texture, position, size, background, style)


def sample_scene(rng: np.random.Generator, style: str, **fixed: str) -> Scene:
    """A uniformly random scene in ``style``; keyword arguments fix attributes (e.g. ``shape="star"``)."""
    u = rng.random(6)
    choices = (SHAPES, tuple(COLORS), TEXTURES, POSITIONS, SIZES, BACKGROUNDS)
    names = ("shape", "color", "texture", "position", "size", "background")
    values = {k: c[int(x * len(c))] for k, c, x in zip(names, choices, u, strict=True)}
    values.update(fixed)
    if style == "outline":
        values["texture"] = ""
    return Scene(style=style, **values)


# Varied captions: how often each attribute is named (shape, size, texture, colour, position, background).
# Position is always named: it is the attribute a small contrastive model learns last, and with it dropped
# from a fifth of the captions the demo teacher often never learns it within its step budget.
_CAPTION_KEEP = np.array([0.85, 0.7, 0.6, 0.9, 1.0, 0.35])


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _noun_phrase(words: list[str]) -> str:
    return f"{_article(words[0])} {' '.join(words)}"


def caption(scene: Scene, rng: np.random.Generator | None = None, full: bool = False) -> str:
    """The caption of a scene: plain English, well under the 32-token context.

    Without ``rng``: the canonical full caption, every visible attribute in a fixed order, e.g.
    "a large red striped circle on the left on a dark background" (other styles get a prefix such as
    "a line drawing of …"). With ``rng``: a varied caption as in web data (random style phrase, some
    attributes left out, the shape sometimes replaced by "shape"/"object").
    Pure: the same scene and generator state give the same caption. ``full=True`` with ``rng`` varies only
    the style phrase.
    """
    if rng is None or full:
        prefix = "" if scene.style == "flat" else _STYLE_PREFIXES[scene.style][0]
        if rng is not None and scene.style != "flat":
            prefix = _STYLE_PREFIXES[scene.style][rng.integers(len(_STYLE_PREFIXES[scene.style]))]
        words = [scene.size, scene.color, scene.texture, scene.shape]
        where = [_POSITION_PHRASES[scene.position], f"on a {scene.background} background"]
    else:
        # Web captions often do not name the style: 40 % of the other styles' captions use a generic phrase.
        generic = scene.style != "flat" and rng.random() < 0.4
        options = _STYLE_PREFIXES["flat" if generic else scene.style]
        prefix = options[rng.integers(len(options))]
        keep = rng.random(6) < _CAPTION_KEEP
        noun = scene.shape if keep[0] else ("shape", "object")[rng.integers(2)]
        words = [
            w if k else ""
            for w, k in ((scene.size, keep[1]), (scene.color, keep[3]), (scene.texture, keep[2]))
        ]
        if rng.random() < 0.5:  # colour and size order varies in real captions
            words[0], words[1] = words[1], words[0]
        words.append(noun)
        where = [_POSITION_PHRASES[scene.position]] if keep[4] else []
        if keep[5]:
            where.append(f"on a {scene.background} background")
    phrase = " ".join([_noun_phrase([w for w in words if w]), *where])
    return f"{prefix} {phrase}" if prefix else phrase


# ---------------------------------------------------------------------------------------------------- drawing
# Centre offsets on the 64 px canvas: one 8 px patch of the 32 px image. Shapes sit on the ViT's patch grid
# (±0.5 px jitter), so the same shape looks the same to the patch embedding wherever it is; with arbitrary
# offsets the tiny ViT needs several times more pretraining to learn shapes.
_OFFSETS = {"left": (-16, 0), "right": (16, 0), "top": (0, -16), "bottom": (0, 16), "center": (0, 0)}


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        t = np.deg2rad([45, 135, 225, 315])
        pts = np.stack([np.cos(t), np.sin(t)], 1) * r * 1.15
    elif shape == "triangle":
        t = np.deg2rad([-90, 30, 150])
        pts = np.stack([np.cos(t), np.sin(t) + 0.2], 1) * r * 1.1
    elif shape == "star":
        t = np.deg2rad(np.arange(10) * 36 - 90)
        rad = np.where(np.arange(10) % 2 == 0, 1.15, 0.48)
        pts = np.stack([np.cos(t) * rad, np.sin(t) * rad + 0.1], 1) * r
    elif shape == "cross":
        a = 0.36
        quarter = [(-a, -1), (a, -1), (a, -a)]  # one arm, rotated four times
        turn = np.array([[0.0, 1.0], [-1.0, 0.0]])  # (x, y) -> (-y, x): a quarter turn
        pts = np.concatenate([quarter @ np.linalg.matrix_power(turn, k) for k in range(4)]) * (r * 1.05)
    elif shape == "heart":
        t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)) - 2.5
        pts = np.stack([x, y], 1) * (r / 15.5)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    c, s = math.cos(angle), math.sin(angle)
    pts = pts @ np.array([[c, s], [-s, c]]) + (cx, cy)
    return [(float(x), float(y)) for x, y in pts]


def _mask(shape: str, cx: float, cy: float, r: float, angle: float, line: int = 0) -> Image.Image:
    """The shape's silhouette at canvas size ("L"), or only its outline ``line`` px wide when ``line`` > 0."""
    img = Image.new("L", (CANVAS, CANVAS), 0)
    draw = ImageDraw.Draw(img)
    style: dict[str, Any] = {"outline": 255, "width": line} if line else {"fill": 255}
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), **style)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, angle), **style)
    return img


@functools.lru_cache(maxsize=1)
def _texture_bank() -> dict[str, list[Image.Image]]:
    """Pre-drawn fill patterns (where the secondary colour goes): 64 stripe and 64 dot variants."""
    yy, xx = np.mgrid[0:CANVAS, 0:CANVAS].astype(np.float32)
    stripes, dots = [], []
    for i in range(64):
        theta = math.radians(45 * (i % 4))
        period = 7.5 + (i // 4) % 4 * 0.6
        u = xx * math.cos(theta) + yy * math.sin(theta) + (i // 16) * period / 4
        stripes.append((u % period) < period / 2)
        step, rad = 8.5 + (i % 4) * 0.6, 2.0 + (i // 4) % 2 * 0.5
        ox, oy = (i // 8) % 4 * step / 4, (i // 32) * step / 2
        dx, dy = (xx + ox) % step - step / 2, (yy + oy) % step - step / 2
        dots.append(dx * dx + dy * dy < rad * rad)
    as_image = [Image.fromarray(m.astype(np.uint8) * 255, "L") for m in (*stripes, *dots)]
    return {"striped": as_image[:64], "dotted": as_image[64:]}


def _rgb(values: np.ndarray) -> tuple[int, int, int]:
    v = np.clip(np.rint(values), 0, 255).astype(int)
    return int(v[0]), int(v[1]), int(v[2])


def render(scene: Scene, rng: np.random.Generator) -> Image.Image:
    """Draw a scene as a 32×32 RGB image; the continuous jitter (placement, radius, rotation, tints, line
    width, lighting, noise) comes from ``rng``."""
    u = rng.random(18)
    r = 13.5 + 2.0 * u[0] if scene.size == "large" else 8.5 + 1.5 * u[0]
    dx, dy = _OFFSETS[scene.position]
    cx, cy = CANVAS / 2 + dx + 2 * u[1] - 1, CANVAS / 2 + dy + 2 * u[2] - 1
    angle = math.radians(16 * u[3] - 8)
    light = scene.background == "light"
    level = 195 + 55 * u[4] if light else 8 + 52 * u[4]
    bg = level + 16 * u[5:8] - 8
    color = np.asarray(COLORS[scene.color], np.float64) + 30 * u[8:11] - 15
    second = color * 0.3 if light else color * 0.35 + 255 * 0.65  # stands out against the background

    line = 3 + int(2 * u[11]) if scene.style == "outline" else 0
    mask = _mask(scene.shape, cx, cy, r, angle, line)
    fill = Image.new("RGB", (CANVAS, CANVAS), _rgb(color))
    if scene.texture in ("striped", "dotted"):
        pattern = _texture_bank()[scene.texture][int(64 * u[12])]
        fill = Image.composite(Image.new("RGB", (CANVAS, CANVAS), _rgb(second)), fill, pattern)
    background = Image.new("RGB", (CANVAS, CANVAS), _rgb(bg))
    if scene.style == "pixel":  # pixel art: 16 px, hard edges, point-sampled fill, 4-bit palette, 2× blocks
        coverage = np.asarray(mask.resize((16, 16), Image.Resampling.BOX)) > 110
        small_fill = np.asarray(fill.resize((16, 16), Image.Resampling.NEAREST))
        arr = np.where(coverage[..., None], small_fill, np.asarray(_rgb(bg), np.uint8))
        blocky = Image.fromarray(((arr >> 4 << 4) + 8).astype(np.uint8), "RGB")
        return blocky.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.NEAREST)
    img = Image.composite(fill, background, mask)
    img = img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS)
    if scene.style == "noisy":  # like a cheap photo: uneven lighting, soft focus, sensor noise
        img = img.filter(ImageFilter.GaussianBlur(float(0.3 + 0.4 * u[13])))
        theta = 2 * math.pi * u[14]
        ramp = (_RAMP_X * math.cos(theta) + _RAMP_Y * math.sin(theta))[..., None]
        arr = np.asarray(img, np.float32) * (1 + (0.1 + 0.15 * u[15]) * ramp) + (15 + 25 * u[16]) * ramp
        arr += rng.normal(0.0, 8 + 8 * u[17], arr.shape).astype(np.float32)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    return img


_RAMP_Y, _RAMP_X = (np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) - (IMAGE_SIZE - 1) / 2) * (
    2 / IMAGE_SIZE
)
