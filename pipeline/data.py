"""Ray Data streams: shards → decoded, resized uint8 images (+ labels or caption tokens) for Train workers.

CPU work (decode, crop, resize, tokenise) runs in Ray Data ``map_batches`` tasks; workers receive uint8 images and
turn them into normalised floats themselves, so the object store moves 4× fewer bytes. Bad samples are dropped
here and counted in a small named actor that rank 0 reads into the ``data/skipped`` metric.
"""

from __future__ import annotations

import functools
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import ray
import torch
from PIL import Image
from torchvision.transforms import v2 as T

from pipeline.shards import (
    BAD_LABEL,
    CAPTIONED,
    LABELLED,
    NO_CAPTION,
    TEACHER_COLUMNS,
    Manifest,
    check_dataset,
    decode_image,
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


@functools.lru_cache(maxsize=4)
def _tokenizer(model_name: str) -> Any:
    from dive.models import get_tokenizer

    return get_tokenizer(model_name)


@functools.lru_cache(maxsize=8)
def _transform(size: int, augment: bool) -> T.Compose:
    """Train: random-resized crop + flip. Eval/reference: open_clip's eval geometry (resize shorter side, centre crop)."""
    if augment:
        return T.Compose(
            [
                T.RandomResizedCrop(size, scale=(0.6, 1.0), interpolation=T.InterpolationMode.BICUBIC),
                T.RandomHorizontalFlip(),
            ]
        )
    return T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size)])


def preprocess_batch(
    batch: dict[str, np.ndarray],
    *,
    kind: str,
    size: int,
    augment: bool,
    max_pixels: int,
    num_classes: int = 0,
    model_name: str = "",
    counter: Any = None,
    passthrough: tuple[str, ...] = (),
) -> dict[str, np.ndarray]:
    """Decode and resize one batch of shard rows; drop and count bad samples.

    Output: ``image`` uint8 (N,3,size,size); labelled sets add ``label`` int64, captioned sets ``text`` int64
    token ids (N,L) and any cached ``teacher_*`` columns as float32 (N,D); ``passthrough`` columns follow the
    kept rows unchanged.
    """
    transform = _transform(size, augment)
    images: list[np.ndarray] = []
    keep: list[int] = []
    skipped: Counter[str] = Counter()
    for i, data in enumerate(batch["image"]):
        if kind == LABELLED:
            label = int(batch["label"][i])
            if not 0 <= label < num_classes:
                skipped[BAD_LABEL] += 1
                continue
        else:
            caption = batch["caption"][i]
            if not isinstance(caption, str) or not caption.strip():
                skipped[NO_CAPTION] += 1
                continue
        img, reason = decode_image(data, max_pixels)
        if reason is not None:
            skipped[reason] += 1
            continue
        images.append(np.asarray(transform(img), dtype=np.uint8).transpose(2, 0, 1))
        keep.append(i)
    if skipped and counter is not None:
        counter.add.remote(dict(skipped))
    out: dict[str, np.ndarray] = {
        "image": np.stack(images) if images else np.zeros((0, 3, size, size), np.uint8),
    }
    idx = np.asarray(keep, dtype=np.int64)
    for col in passthrough:
        out[col] = np.asarray(batch[col])[idx]
    if kind == LABELLED:
        out["label"] = np.asarray(batch["label"], dtype=np.int64)[idx]
    else:
        captions = [str(batch["caption"][i]) for i in keep]
        tokenizer = _tokenizer(model_name)
        out["text"] = (
            tokenizer(captions).numpy() if captions else np.zeros((0, tokenizer.context_length), np.int64)
        )
        for col in TEACHER_COLUMNS:
            if col in batch:
                vectors = np.stack([np.asarray(v, np.float32) for v in batch[col]])
                out[col] = vectors[idx]
    return out


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
) -> tuple[dict[str, np.ndarray], Manifest]:
    """A fixed, seeded sample of at most ``samples`` rows of a small validation set, preprocessed exactly as
    the eval stream does (in-process: it is read once per run, on rank 0). Captioned sets keep ``caption``."""
    manifest = check_dataset(folder, kind, column_map)
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


def normalize_images(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (N,3,H,W) → float, normalised with the model's mean/std (done on the worker's device)."""
    m = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - m) / s


def stream_image_transform(bundle: Any) -> Any:
    """PIL image → the exact float tensor a Train worker feeds the model (uint8 eval resize, then normalise).

    The teacher-embedding cache uses this, so cached embeddings equal what the live teacher computes in training.
    """
    size = bundle.preprocess_cfg["size"][0]
    mean, std = bundle.preprocess_cfg["mean"], bundle.preprocess_cfg["std"]

    def transform(img: Image.Image) -> torch.Tensor:
        pixels = np.asarray(_transform(size, False)(img), dtype=np.uint8).transpose(2, 0, 1)
        return normalize_images(torch.from_numpy(pixels.copy())[None], mean, std)[0]

    return transform


def cycle_batches(shard: Any, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    """Repeat a dataset shard forever (the reference stream: the ID stream alone defines the epoch)."""
    while True:
        empty = True
        for batch in shard.iter_torch_batches(batch_size=batch_size, drop_last=True):
            empty = False
            yield batch
        if empty:
            raise RuntimeError(f"the reference stream yields no batch of {batch_size} rows per worker")


class PromptTable:
    """All class × template prompts tokenised once; a step samples one template per image with a seeded RNG."""

    def __init__(self, tokenizer: Any, classnames: list[str], templates: list[str]) -> None:
        if not templates:
            raise ValueError("the ID dataset manifest lists no prompt templates")
        prompts = [t.format(c) for c in classnames for t in templates]
        tokens = tokenizer(prompts)
        self.tokens = tokens.view(len(classnames), len(templates), -1)
        self.num_templates = len(templates)

    def sample(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        choice = torch.randint(self.num_templates, (labels.shape[0],), generator=generator)
        return self.tokens[labels.cpu(), choice]
