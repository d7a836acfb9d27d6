"""The demo's splits: what each one draws, its manifest, and the all-or-nothing writer (training-side splits
reject every image whose bytes occur in an evaluation split)."""

from __future__ import annotations

import hashlib
import json
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.format import CAPTIONED, LABELLED, Manifest, ShardWriter, encode_png
from pipeline.demo.world import (
    COLOR_TEMPLATES,
    COLORS,
    DEMO_VERSION,
    IMAGE_SIZE,
    OOD_STYLES,
    POSITION_TEMPLATES,
    POSITIONS,
    SHAPE_TEMPLATES,
    SHAPES,
    STYLES,
    caption,
    render,
    sample_scene,
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
        out += [f"val.id={self.id_val}", f"val.ref={self.pretrain}"]
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
