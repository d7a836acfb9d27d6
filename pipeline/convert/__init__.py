"""``dive data …`` (``python -m pipeline.convert …``): image sources → shards (:mod:`pipeline.data.format`); the
teacher-embedding cache. One module per converter; :mod:`~pipeline.convert.common` holds what they share.

Converters (each checks every image with :func:`~pipeline.data.format.decode_image` as it converts):

* ``imagefolder SRC OUT``: one subfolder per class → a labelled set (classes sorted by folder name,
  label = index, underscores → spaces in the class names used in prompts). Original encoded bytes are kept.
* ``captions FILE OUT``: a CSV or JSONL file (by extension) with an image path and a caption per row → a
  captioned set. Paths are relative to ``--base-dir`` (default: the file's folder); one that resolves outside it
  is refused unless ``--allow-outside-base``.
* ``wds SRC OUT``: webdataset tars (one ``.tar`` or a folder of them; uncompressed) → a captioned set, or a
  labelled one when ``--label-ext`` is given and the tars hold no captions (``--classnames`` names classes).
* ``cache-teacher DATASET``: run the frozen teacher over a captioned set and rewrite it with
  ``teacher_image`` / ``teacher_text`` columns and ``teacher_fingerprint`` / ``teacher_dim`` in the manifest.

A bad source (no such file or folder, missing columns, no class folders, no tars, two class names equal up to
case and surrounding spaces) raises :class:`DataError` before anything is written. Bad samples (empty, undecodable or truncated, over ``--max-pixels``, no caption,
label out of range, missing file) are skipped: one line each on stdout, counted by reason under ``skipped`` in
``dataset.json``. Output is all-or-nothing (:class:`~pipeline.data.format.ShardWriter`).

``--workers 0`` (the default) converts in this process. ``--workers N`` > 0 reads and checks images in
parallel with Ray Data: ``map_batches`` over ``from_items(records)`` on N tasks (``TaskPoolStrategy(N)``,
what the deprecated ``concurrency=N`` means), starting a local Ray instance when none is running; this process
still writes the shards. Nothing here imports Ray unless ``--workers`` > 0. Both paths call the same per-record function and write the same rows in the same
order. ``cache-teacher --workers N`` runs the teacher on a pool of N Ray Data actors (:mod:`pipeline.pool`;
``--device cuda``: one GPU each, bf16 autocast), rows in order.
"""

from pipeline.convert.captions import convert_captions
from pipeline.convert.common import (
    DEFAULT_IMAGE_EXTS,
    DEFAULT_MAX_PIXELS,
    DEFAULT_ROWS_PER_SHARD,
    load_templates,
)
from pipeline.convert.imagefolder import convert_imagefolder
from pipeline.convert.teacher_cache import cache_teacher
from pipeline.convert.wds import convert_wds

__all__ = [
    "DEFAULT_IMAGE_EXTS",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_ROWS_PER_SHARD",
    "cache_teacher",
    "convert_captions",
    "convert_imagefolder",
    "convert_wds",
    "load_templates",
]
