"""Which evaluation suite a row came from, told by its shard's path.

A module of its own, importing only numpy: evaluation's Ray Data read tasks run :func:`tag_suite` in fresh worker
processes, and a function defined in :mod:`pipeline.evaluate` would make each of them import torch and open_clip
first (≈7 s of CPU on a 2-core machine, taken from the scoring actor while it works).
"""

from __future__ import annotations

import numpy as np


def no_scheme(path: str) -> str:
    """A shard's path as Ray Data's ``path`` column gives it: object-store URIs without their ``s3://``."""
    return str(path).split("://", 1)[-1]


def tag_suite(batch: dict[str, np.ndarray], files: dict[str, int]) -> dict[str, np.ndarray]:
    """Raw rows (``image``, ``label``, ``path``) → ``image``, ``label`` and ``set``: the index ``files`` gives the
    row's shard (keys as :func:`no_scheme` writes them)."""
    return {
        "image": batch["image"],
        "label": batch["label"],
        "set": np.array([files[no_scheme(p)] for p in batch["path"]], dtype=np.int64),
    }
