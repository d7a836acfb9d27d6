"""Built-in demo data: a procedurally drawn world of shapes and a small "pre-trained CLIP" for it.

``python pipeline/train.py`` uses this when no data is given: no download, no system packages, CPU-sized.
It is built so that DiVE's point is visible. The world has several attributes (shape, colour, fill
texture, position, size, background) and rendering styles; the pre-trained teacher learns all of them from
compositional captions, but the ID task only asks for the **shape** of **flat** drawings. Fine-tuning on it
naively tends to forget what the ID task ignores: the other styles (OOD sets, same shape classes) and the
other concepts (zero-shot sets labelled by colour and by position).

Splits (each a folder of Parquet shards + ``dataset.json``, see :mod:`pipeline.data.format`):

* ``id_train``, ``id_val``, ``id_test``: labelled by shape, flat style (the narrow ID task).
* ``ood_outline``, ``ood_noisy``, ``ood_pixel``: labelled by shape, drawn in the other styles.
* ``zs_color``, ``zs_position``: labelled by colour / position, mixed styles, with their own class names and
  templates.
* ``reference``: captioned broad-world set (half flat, half other styles) for DiVE's AVL/PVL terms.
* ``pretrain``: a larger captioned broad-world set, all styles, on which :func:`pretrain_teacher` trains.

Every split is an independent draw seeded from (seed, split name); training-side splits additionally reject
any image whose bytes occur in an evaluation split, so no image is shared. Same seed ⇒ byte-identical shards.
Images are drawn at 64 px and downsampled to 32 px (the tiny model's input size), stored as PNG.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import os
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from pipeline.data.format import (
    CAPTIONED,
    LABELLED,
    Manifest,
    ShardWriter,
    encode_png,
    iter_rows,
    read_manifest,
)

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


# ---------------------------------------------------------------------------------------------------- splits
@dataclass(frozen=True)
class SplitSpec:
    name: str
    kind: str  # LABELLED or CAPTIONED
    concept: str  # labelled: "shape" | "color" | "position"; captioned: "full" | "varied" captions
    styles: tuple[str, ...]
    style_weights: tuple[float, ...] | None = None
    eval: bool = False  # evaluation splits are drawn first; training-side splits never reuse their images


_CONCEPTS: dict[str, tuple[tuple[str, ...], list[str]]] = {
    "shape": (SHAPES, SHAPE_TEMPLATES),
    "color": (tuple(COLORS), COLOR_TEMPLATES),
    "position": (POSITIONS, POSITION_TEMPLATES),
}

SPLITS: tuple[SplitSpec, ...] = (
    SplitSpec("id_val", LABELLED, "shape", ("flat",), eval=True),
    SplitSpec("id_test", LABELLED, "shape", ("flat",), eval=True),
    *(SplitSpec(f"ood_{s}", LABELLED, "shape", (s,), eval=True) for s in OOD_STYLES),
    SplitSpec("zs_color", LABELLED, "color", STYLES, eval=True),
    SplitSpec("zs_position", LABELLED, "position", STYLES, eval=True),
    SplitSpec("id_train", LABELLED, "shape", ("flat",)),
    SplitSpec("reference", CAPTIONED, "full", STYLES, (0.5, 0.5 / 3, 0.5 / 3, 0.5 / 3)),
    SplitSpec("pretrain", CAPTIONED, "varied", STYLES),
)

SIZES_ROWS: dict[str, dict[str, int]] = {
    "default": {"id_train": 2048, "id_val": 512, "id_test": 512, "ood": 512, "zs": 512, "reference": 2048},
    "tiny": {"id_train": 48, "id_val": 24, "id_test": 24, "ood": 24, "zs": 24, "reference": 32},
}
SIZES_ROWS["default"]["pretrain"] = 12288
SIZES_ROWS["tiny"]["pretrain"] = 96
ROWS_PER_SHARD = {"default": 1024, "tiny": 16}
# Teacher pretraining per size: optimiser steps and contrastive batch; learning rate and initial logit scale.
TEACHER_STEPS = {"default": 1000, "tiny": 4}
TEACHER_BATCH = {"default": 128, "tiny": 32}
TEACHER_LR = 1e-3
TEACHER_INIT_SCALE = 100.0  # 1/τ; CLIP's 1/0.07 learns the fine attributes (shape, position) more slowly


def split_rows(name: str, size: str) -> int:
    rows = SIZES_ROWS[size]
    return rows.get(name) or rows[name.split("_", 1)[0]]


@dataclass
class DemoPaths:
    """Folders of the demo splits (all under ``root``)."""

    root: Path
    id_train: Path
    id_val: Path
    id_test: Path
    reference: Path
    pretrain: Path
    ood: dict[str, Path] = field(default_factory=dict)  # style → folder (ood_outline, …)
    zs: dict[str, Path] = field(default_factory=dict)  # concept → folder (zs_color, zs_position)

    @classmethod
    def under(cls, root: Path) -> DemoPaths:
        root = Path(root)
        return cls(
            root=root,
            id_train=root / "id_train",
            id_val=root / "id_val",
            id_test=root / "id_test",
            reference=root / "reference",
            pretrain=root / "pretrain",
            ood={s: root / f"ood_{s}" for s in OOD_STYLES},
            zs={c: root / f"zs_{c}" for c in ("color", "position")},
        )

    def splits(self) -> dict[str, Path]:
        """Every split by its folder name."""
        out = {"id_train": self.id_train, "id_val": self.id_val, "id_test": self.id_test}
        out.update({f"ood_{k}": v for k, v in self.ood.items()})
        out.update({f"zs_{k}": v for k, v in self.zs.items()})
        out.update({"reference": self.reference, "pretrain": self.pretrain})
        return out

    def eval_sets(self) -> dict[str, Path]:
        """The labelled sets a zero-shot / fine-tuned model is evaluated on (id_test, ood_*, zs_*)."""
        return {k: v for k, v in self.splits().items() if k == "id_test" or k.startswith(("ood_", "zs_"))}

    def config_overrides(self) -> list[str]:
        """``a.b=c`` overrides pointing a run config at the demo data (:func:`dive.config.load_config`)."""
        out = [f"data.id_train={self.id_train}", f"data.reference={self.reference}"]
        out.append(f"eval.id={self.id_test}")
        out += [f"eval.val_id={self.id_val}", f"eval.val_ref={self.pretrain}"]
        out += [f"eval.ood.{k}={v}" for k, v in self.ood.items()]
        out += [f"eval.zs.{k}={v}" for k, v in self.zs.items()]
        return out


def _split_rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(name.encode())]))


def _rows(
    spec: SplitSpec, n: int, rng: np.random.Generator, exclude: set[bytes]
) -> Iterator[tuple[dict[str, Any], bytes]]:
    labels = None
    if spec.kind == LABELLED:
        classnames = _CONCEPTS[spec.concept][0]
        labels = rng.permutation(np.arange(n) % len(classnames))  # balanced classes
    weights = np.asarray(spec.style_weights or [1.0] * len(spec.styles))
    styles = rng.choice(len(spec.styles), size=n, p=weights / weights.sum())
    for i in range(n):
        style = spec.styles[styles[i]]
        fixed = {spec.concept: classnames[labels[i]]} if labels is not None else {}
        while True:
            scene = sample_scene(rng, style, **fixed)
            png = encode_png(render(scene, rng))
            digest = hashlib.sha1(png).digest()
            if digest not in exclude:  # a training-side image must never equal an evaluation image
                break
        row: dict[str, Any] = {"image": png, "key": f"{spec.name}/{i:06d}/{scene.key()}"}
        if labels is not None:
            row["label"] = int(labels[i])
        else:
            row["caption"] = caption(scene, rng, full=spec.concept == "full")
        yield row, digest


def _manifest_of(spec: SplitSpec, seed: int) -> Manifest:
    source = f"pipeline.demo {DEMO_VERSION} seed={seed} split={spec.name}"
    if spec.kind == LABELLED:
        classnames, templates = _CONCEPTS[spec.concept]
        return Manifest(
            spec.name, LABELLED, classnames=list(classnames), templates=list(templates), source=source
        )
    return Manifest(spec.name, CAPTIONED, source=source)


def _log(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def generate(root: Path, seed: int = 0, size: str = "default") -> DemoPaths:
    """Write every demo split under ``root`` (cached: a no-op when ``root/demo.json`` matches).

    Returns the split folders. ``size`` is "default" (≈ 20k images, seconds) or "tiny" (tests).
    """
    if size not in SIZES_ROWS:
        raise ValueError(f"size must be one of {sorted(SIZES_ROWS)}, got {size!r}")
    root = Path(root)
    paths = DemoPaths.under(root)
    meta_path = root / "demo.json"
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError:
            meta = {}
        same = (meta.get("seed"), meta.get("size"), meta.get("version")) == (seed, size, DEMO_VERSION)
        if same and all((p / "dataset.json").is_file() for p in paths.splits().values()):
            _log(f"data cached in {root}")
            return paths
    root.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)  # an interrupted regeneration must not look complete
    start = time.perf_counter()
    eval_digests: set[bytes] = set()
    fingerprints: dict[str, str] = {}
    for spec in SPLITS:  # evaluation splits come first in SPLITS
        n = split_rows(spec.name, size)
        rng = _split_rng(seed, spec.name)
        exclude = set() if spec.eval else eval_digests
        writer = ShardWriter(root / spec.name, _manifest_of(spec, seed), ROWS_PER_SHARD[size], overwrite=True)
        with writer as w:
            for row, digest in _rows(spec, n, rng, exclude):
                w.add(row)
                if spec.eval:
                    eval_digests.add(digest)
        fingerprints[spec.name] = w.manifest.fingerprint
    seconds = time.perf_counter() - start
    meta = {
        "version": DEMO_VERSION,
        "seed": seed,
        "size": size,
        "image_size": IMAGE_SIZE,
        "splits": {name: str(p.relative_to(root)) for name, p in paths.splits().items()},
        "rows": {spec.name: split_rows(spec.name, size) for spec in SPLITS},
        "fingerprints": fingerprints,
        "seconds": round(seconds, 2),
    }
    tmp = meta_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    tmp.replace(meta_path)
    _log(f"generated {sum(meta['rows'].values())} images, {len(SPLITS)} splits in {root} ({seconds:.1f} s)")
    return paths


# ---------------------------------------------------------------------------------------------------- teacher
def decode_split(folder: Path, column: str) -> tuple[np.ndarray, list[Any]]:
    """All images of a split as one uint8 array (N, H, W, 3), plus the ``column`` values (label, caption)."""
    images, values = [], []
    for row in iter_rows(folder, columns=["image", column]):
        images.append(np.asarray(Image.open(io.BytesIO(row["image"])).convert("RGB")))
        values.append(row[column])
    return np.stack(images), values


def _to_input(images: np.ndarray, mean: Any, std: Any) -> Any:
    import torch

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


def zero_shot_accuracy(bundle: Any, folder: Path, batch_size: int = 512) -> float:
    """Zero-shot top-1 accuracy of ``bundle.model`` on a labelled split, head from its manifest."""
    import torch

    from dive import zeroshot

    manifest = read_manifest(folder)
    images, labels = decode_split(folder, "label")
    model = bundle.model
    mean_std = bundle.preprocess_cfg["mean"], bundle.preprocess_cfg["std"]
    with zeroshot.eval_mode(model), torch.no_grad():
        head = zeroshot.build_head(model, bundle.tokenizer, manifest.classnames, manifest.templates)
        correct = 0
        for i in range(0, len(images), batch_size):
            x = _to_input(images[i : i + batch_size], *mean_std)
            pred = zeroshot.logits(model, x, head).argmax(dim=-1)
            correct += int((pred == torch.as_tensor(labels[i : i + batch_size])).sum())
    return correct / len(images)


def _encode_text(model: Any, tokens: Any) -> Any:
    """``model.encode_text`` (unnormalised) on tokens cut after the longest caption's end token.

    Exact for CLIP text towers: the mask is causal and features are taken at the end token, so padding after
    it never changes the result; cutting it saves about a third of a demo training step. Falls back to the
    full ``encode_text`` for towers without that layout.
    """
    import torch

    layout = ("token_embedding", "positional_embedding", "transformer", "ln_final", "attn_mask")
    has_layout = all(getattr(model, name, None) is not None for name in (*layout, "text_projection"))
    if not has_layout or getattr(model, "text_pool_type", None) != "argmax":
        return model.encode_text(tokens)
    length = int(tokens.argmax(dim=-1).max()) + 1
    tokens = tokens[:, :length]
    x = model.token_embedding(tokens) + model.positional_embedding[:length]
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:length, :length]))
    x = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)]
    proj = model.text_projection
    return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj


def pretrain_teacher(
    paths: DemoPaths,
    out: Path,
    steps: int,
    batch_size: int,
    seed: int = 0,
    threads: int | None = None,
) -> dict[str, Any]:
    """Pre-train the demo's "CLIP": dive-tiny from random init, contrastive on the ``pretrain`` captions.

    Recipe: symmetric InfoNCE (:func:`dive.losses.contrastive`), learnable logit scale starting at 1/τ = 50,
    AdamW (lr 1e-3, wd 0.05 on matrices, 10 % warm-up then cosine) and sparse Adam for the token embedding
    (only the demo's few dozen words get gradients). No image augmentation: flips would contradict "left".

    Writes ``out/teacher.pt`` (a state dict for ``build_model(ModelConfig(pretrained=...))``) and
    ``out/teacher.json`` (settings, seconds, fingerprint, zero-shot accuracy on id_test, ood_* and zs_*, and
    the chance level of each). Cached: returns the recorded summary (with ``"cached": True``) when
    teacher.json records the same settings and teacher.pt exists. ``threads`` sets torch's intra-op threads
    meanwhile.
    """
    import torch
    import torch.nn.functional as F

    from dive.config import ModelConfig
    from dive.losses import contrastive
    from dive.models import build_model, clamp_logit_scale, fingerprint
    from dive.optim import build_optimizer, cosine_with_warmup

    out = Path(out)
    weights, summary_path = out / "teacher.pt", out / "teacher.json"
    settings = {
        "version": DEMO_VERSION,
        "steps": steps,
        "batch_size": batch_size,
        "seed": seed,
        "lr": TEACHER_LR,
        "init_scale": TEACHER_INIT_SCALE,
        "pretrain_fingerprint": read_manifest(paths.pretrain).fingerprint,
    }
    if summary_path.is_file() and weights.is_file():
        try:
            recorded = json.loads(summary_path.read_text())
        except json.JSONDecodeError:
            recorded = {}
        if recorded.get("settings") == settings:
            _log(f"teacher cached in {weights}")
            return {**recorded, "cached": True}

    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        start = time.perf_counter()
        torch.manual_seed(seed)
        bundle = build_model(ModelConfig())
        model = bundle.model
        mean, std = bundle.preprocess_cfg["mean"], bundle.preprocess_cfg["std"]
        images, captions = decode_split(paths.pretrain, "caption")
        tokens = bundle.tokenizer(captions)
        n = len(images)
        batch_size = min(batch_size, n)
        decode_seconds = time.perf_counter() - start
        _log(
            f"teacher: {steps} steps of {batch_size} on {n} pretrain pairs, {torch.get_num_threads()} threads"
        )

        with torch.no_grad():
            model.logit_scale.fill_(math.log(TEACHER_INIT_SCALE))
        embedding = model.token_embedding
        embedding.sparse = True
        dense = [(name, p) for name, p in model.named_parameters() if p is not embedding.weight]
        opts = [
            build_optimizer(dense, TEACHER_LR, 0.05, betas=(0.9, 0.98), eps=1e-6),
            torch.optim.SparseAdam([embedding.weight], lr=TEACHER_LR, betas=(0.9, 0.98), eps=1e-6),
        ]
        scheds = [cosine_with_warmup(opt, max(1, steps // 10), steps) for opt in opts]
        gen = torch.Generator().manual_seed(seed)
        order, cursor, loss_value = torch.randperm(n, generator=gen), 0, float("nan")
        model.train()
        try:
            for step in range(steps):
                if cursor + batch_size > n:
                    order, cursor = torch.randperm(n, generator=gen), 0
                idx = order[cursor : cursor + batch_size]
                cursor += batch_size
                x = _to_input(images[idx.numpy()], mean, std)
                image_features = F.normalize(model.encode_image(x), dim=-1)
                text_features = F.normalize(_encode_text(model, tokens[idx]), dim=-1)
                loss = contrastive(image_features, text_features, model.logit_scale.exp())
                for opt in opts:
                    opt.zero_grad(set_to_none=True)
                loss.backward()
                for opt, sched in zip(opts, scheds, strict=True):
                    opt.step()
                    sched.step()
                clamp_logit_scale(model)
                loss_value = loss.item()
                if steps >= 10 and (step + 1) % max(1, steps // 5) == 0:
                    elapsed = time.perf_counter() - start
                    _log(f"teacher step {step + 1}/{steps}  loss {loss_value:.3f}  {elapsed:.0f} s")
        finally:
            embedding.sparse = False
        train_seconds = time.perf_counter() - start - decode_seconds

        model.eval()
        accuracy, chance = {}, {}
        for name, folder in paths.eval_sets().items():
            accuracy[name] = round(zero_shot_accuracy(bundle, folder), 4)
            chance[name] = round(1.0 / read_manifest(folder).num_classes, 4)
        out.mkdir(parents=True, exist_ok=True)
        tmp = weights.with_suffix(".pt.tmp")
        torch.save(model.state_dict(), tmp)
        tmp.replace(weights)
        summary = {
            "settings": settings,
            "steps": steps,
            "batch_size": batch_size,
            "threads": torch.get_num_threads(),
            "final_loss": round(loss_value, 4),
            "logit_scale": round(model.logit_scale.exp().item(), 3),
            "seconds": round(time.perf_counter() - start, 2),
            "train_seconds": round(train_seconds, 2),
            "decode_seconds": round(decode_seconds, 2),
            "fingerprint": fingerprint(model),
            "weights": str(weights),
            "zero_shot": accuracy,
            "chance": chance,
        }
        tmp_json = summary_path.with_suffix(".json.tmp")
        tmp_json.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        tmp_json.replace(summary_path)
    finally:
        torch.set_num_threads(previous_threads)
    shown = ", ".join(f"{k} {v:.2f} (chance {chance[k]:.2f})" for k, v in accuracy.items())
    _log(f"teacher trained in {summary['seconds']:.0f} s; zero-shot: {shown}")
    return {**summary, "cached": False}


def ensure_demo(
    root: Path, seed: int = 0, size: str = "default", threads: int | None = None
) -> tuple[DemoPaths, Path]:
    """Generate the demo data and pre-train its teacher (both cached); return the paths and the weights.

    ``threads``: torch threads for the teacher (default: all cores, at most 8). On a machine shared with other
    busy processes 1 thread can be much faster than 2: oversubscribed OpenMP threads wait on each other.
    """
    paths = generate(root, seed=seed, size=size)
    out = Path(root) / "teacher"
    if threads is None and size != "tiny":
        threads = min(os.cpu_count() or 1, 8)
    pretrain_teacher(paths, out, TEACHER_STEPS[size], TEACHER_BATCH[size], seed=seed, threads=threads)
    return paths, out / "teacher.pt"


if __name__ == "__main__":  # python -m pipeline.demo [root] [seed] [size]
    import sys

    args = sys.argv[1:]
    ensure_demo(Path(args[0] if args else "outputs/demo"), int(args[1]) if len(args) > 1 else 0, *args[2:3])
