"""Ray Data streams: shards → decoded, resized uint8 images (+ labels or caption tokens) for Train workers.

CPU work (decode, crop, resize, tokenise) runs in Ray Data ``map_batches`` tasks; workers receive uint8 images and
turn them into normalised floats themselves, so the object store moves 4× fewer bytes. Bad samples are dropped
here and counted in a small named actor that rank 0 reads into the ``data/skipped`` metric.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import ray
import torch

from pipeline.data.format import (
    CAPTIONED,
    LABELLED,
    TEACHER_COLUMNS,
    Manifest,
    check_dataset,
    is_webdataset,
    iter_rows,
    lower_extension,
    required_columns,
    resolve_columns,
    shard_files,
    tar_files,
    wds_sources,
    wds_value,
)
from pipeline.data.transforms import CROP_SCALE, preprocess_batch

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


@ray.remote(num_cpus=0)
class SkipCounter:
    """Counts skipped samples by reason across all map_batches tasks of a run."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def add(self, counts: dict[str, int]) -> None:
        self.counts.update(counts)

    def totals(self) -> dict[str, int]:
        return dict(self.counts)


def _wds_rows(batch: Any, sources: dict[str, str]) -> dict[str, np.ndarray]:
    """Raw webdataset samples → schema columns (a member missing from a sample becomes None, or label -1)."""
    out: dict[str, np.ndarray] = {}
    for column, source in sources.items():
        raw = batch[source] if source in batch else [None] * len(batch)
        values = [wds_value(column, v) if isinstance(v, bytes) else None for v in raw]
        if column == "label":
            out[column] = np.array([-1 if v is None else v for v in values], dtype=np.int64)
        else:
            out[column] = np.array(values, dtype=object)
    if "path" in batch:
        out["path"] = np.asarray(batch["path"], dtype=object)
    return out


def open_dataset(
    folders: Sequence[str],
    kind: str,
    column_map: Mapping[str, str] | None = None,
    *,
    columns: Sequence[str] = (),
    include_paths: bool = False,
) -> ray.data.Dataset:
    """Raw rows of Parquet or webdataset folders under schema names (``image`` + ``label``/``caption`` and
    ``columns``), one read per format and column layout, so many suites still stream through one pipeline."""
    wanted = [*required_columns(kind), *columns]
    groups: dict[tuple[str, ...], list[str]] = {}
    tars: list[str] = []
    for folder in folders:
        if is_webdataset(folder):
            tars += [str(t) for t in tar_files(folder)]
            continue
        files = shard_files(folder)
        sources = resolve_columns(pq.read_schema(files[0]).names, column_map)
        key = tuple(sources[c] for c in wanted)
        groups.setdefault(key, []).extend(str(f) for f in files)
    parts: list[ray.data.Dataset] = []
    for key, files in groups.items():
        ds = ray.data.read_parquet(files, include_paths=include_paths)
        ds = ds.select_columns([*key, *(["path"] if include_paths else [])])
        renames = {s: c for s, c in zip(key, wanted, strict=True) if s != c}
        parts.append(ds.rename_columns(renames) if renames else ds)
    if tars:
        sources = {c: s for s, c in wds_sources(column_map).items() if c in wanted}
        ds = ray.data.read_webdataset(
            tars,
            decoder=None,
            filerename=lower_extension,
            suffixes=list(sources.values()),
            include_paths=include_paths,
        )
        parts.append(ds.map_batches(_wds_rows, fn_kwargs={"sources": sources}, batch_format="pandas"))
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def read_stream(
    folder: str,
    kind: str,
    *,
    size: int,
    augment: bool,
    max_pixels: int,
    model_name: str,
    column_map: Mapping[str, str] | None = None,
    counter: Any = None,
    use_teacher_cache: bool = False,
    manifest: Manifest | None = None,
    min_scale: float = CROP_SCALE[0],
) -> tuple[ray.data.Dataset, Manifest]:
    """A lazily executed Ray Dataset of preprocessed samples, plus the manifest (schema checked first, unless
    the caller passes the ``manifest`` its own :func:`check_dataset` returned)."""
    manifest = manifest or check_dataset(folder, kind, column_map)
    extra = list(TEACHER_COLUMNS) if kind == CAPTIONED and use_teacher_cache else []
    ds = open_dataset([folder], kind, column_map, columns=extra).map_batches(
        preprocess_batch,
        batch_format="numpy",
        batch_size=64,
        fn_kwargs=dict(
            kind=kind,
            size=size,
            augment=augment,
            max_pixels=max_pixels,
            num_classes=manifest.num_classes,
            model_name=model_name,
            counter=counter,
            min_scale=min_scale,
        ),
    )
    return ds, manifest


def load_val_set(
    folder: str,
    kind: str,
    *,
    size: int,
    max_pixels: int,
    samples: int,
    model_name: str,
    column_map: Mapping[str, str] | None = None,
    seed: int = 0,
    manifest: Manifest | None = None,
) -> tuple[dict[str, np.ndarray], Manifest]:
    """A fixed, seeded sample of at most ``samples`` rows of a small validation set, preprocessed exactly as
    the eval stream does (in-process: it is read once per run, on rank 0). Captioned sets keep ``caption``.
    The set is checked first, unless the caller passes the ``manifest`` its own check returned."""
    manifest = manifest or check_dataset(folder, kind, column_map)
    rng = np.random.default_rng(seed)
    chosen = set(rng.permutation(manifest.num_rows)[:samples].tolist())
    columns = list(required_columns(kind))
    rows = [r for i, r in enumerate(iter_rows(folder, columns, column_map)) if i in chosen]
    batch = {c: np.array([r[c] for r in rows], dtype=object) for c in columns}
    if kind == LABELLED:
        batch["label"] = np.array([-1 if r["label"] is None else r["label"] for r in rows], dtype=np.int64)
    out = preprocess_batch(
        batch,
        kind=kind,
        size=size,
        augment=False,
        max_pixels=max_pixels,
        num_classes=manifest.num_classes,
        model_name=model_name,
        passthrough=("caption",) if kind == CAPTIONED else (),
    )
    return out, manifest


class KeptShard:
    """A small stream's shard, read once by a background thread and then replayed from this worker's memory.

    Started before the worker builds its model, the first pass (Ray Data's decode of this rank's rows) runs while
    the model, teacher and DDP are set up, instead of before the worker group starts; later passes (epochs, the
    reference cycle) replay it, with no Ray Data restart at every epoch start. With ``data.exact_order`` the rows
    and their order are those a re-read would give, so a resumed run sees the same batches. Kept on the CPU: a GPU
    worker moves each batch as it does a streamed one. Only for streams estimated under ``data.keep_in_memory_mb``.
    """

    def __init__(self, shard: Any, batch_size: int, drop_last: bool = True) -> None:
        self.shard, self.batch_size, self.drop_last = shard, batch_size, drop_last
        self._batches: list[dict[str, torch.Tensor]] = []
        self._done = False
        self._error: BaseException | None = None
        self._ready = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="kept-shard", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for batch in self.shard.iter_torch_batches(
                batch_size=self.batch_size, drop_last=self.drop_last, device="cpu"
            ):
                with self._ready:
                    self._batches.append(batch)
                    self._ready.notify_all()
        except BaseException as err:  # noqa: BLE001  (raised in the training thread, by the pass that needs it)
            self._error = err
        finally:
            with self._ready:
                self._done = True
                self._ready.notify_all()

    def iter_torch_batches(
        self, *, batch_size: int, drop_last: bool = True
    ) -> Iterator[dict[str, torch.Tensor]]:
        """One pass: the batches read so far, then each as the reader brings it."""
        if (batch_size, drop_last) != (self.batch_size, self.drop_last):
            raise ValueError(
                f"kept shard read in batches of {self.batch_size} (drop_last={self.drop_last}); "
                f"asked for {batch_size} (drop_last={drop_last})"
            )
        i = 0
        while True:
            with self._ready:
                while i >= len(self._batches) and not self._done:
                    self._ready.wait()
                if i < len(self._batches):
                    batch = self._batches[i]
                elif self._error is not None:
                    raise RuntimeError(f"reading the kept stream failed: {self._error}") from self._error
                else:
                    return
            i += 1
            yield batch


def cycle_batches(shard: Any, batch_size: int, skip: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """Repeat a dataset shard forever (the reference stream: the ID stream alone defines the epoch), after
    dropping the first ``skip`` batches (a resumed run continues the cycle where it stopped)."""
    while True:
        empty = True
        for batch in shard.iter_torch_batches(batch_size=batch_size, drop_last=True):
            empty = False
            if skip:
                skip -= 1
                continue
            yield batch
        if empty:
            raise RuntimeError(f"the reference stream yields no batch of {batch_size} rows per worker")
