"""Built-in demo data: a procedurally drawn world of shapes and a small "pre-trained CLIP" for it.

``python pipeline/train.py`` uses this when no data is given (:func:`ensure_demo`): no download, no system packages, CPU-sized.
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
* ``pretrain``: a larger captioned broad-world set, all styles, on which
  :func:`pipeline.demo.teacher.pretrain_teacher` trains.

Every split is an independent draw seeded from (seed, split name); training-side splits additionally reject
any image whose bytes occur in an evaluation split, so no image is shared. Same seed ⇒ byte-identical shards.
Images are drawn at 64 px and downsampled to 32 px (the tiny model's input size), stored as PNG.

Modules: ``world`` (scenes, captions, drawing), ``splits`` (the split specs and the shard writer), ``teacher``
(the demo's pre-trained CLIP). Not Ray/MLflow glue, but the default run builds it and it writes the pipeline's
shard format, so it is a subpackage of ``pipeline`` (outside it, one of those two imports would run upwards).
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.demo.splits import (
    SPLITS,
    TEACHER_BATCH,
    TEACHER_STEPS,
    DemoPaths,
    SplitSpec,
    generate,
    split_rows,
)
from pipeline.demo.teacher import pretrain_teacher, zero_shot_accuracy
from pipeline.demo.world import (
    COLORS,
    DEMO_VERSION,
    IMAGE_SIZE,
    OOD_STYLES,
    POSITIONS,
    SHAPES,
    SIZES,
    STYLES,
    TEXTURES,
    Scene,
    caption,
    render,
    sample_scene,
)

__all__ = [
    "COLORS", "DEMO_VERSION", "IMAGE_SIZE", "OOD_STYLES", "POSITIONS", "SHAPES", "SIZES", "SPLITS", "STYLES",
    "TEACHER_BATCH", "TEACHER_STEPS", "TEXTURES", "DemoPaths", "Scene", "SplitSpec", "caption", "ensure_demo",
    "generate", "pretrain_teacher", "render", "sample_scene", "split_rows", "zero_shot_accuracy",
]  # fmt: skip


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
