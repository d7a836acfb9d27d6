"""``dive data cache-teacher``: the frozen teacher's embeddings written into a captioned set, in place.

Training then reads them instead of running the teacher (the reference stream's biggest cost). The pixels are the
Train workers' own (the streams' eval resize to uint8, then :func:`~pipeline.data.transforms.normalize_images`), so
cached and live embeddings are the same numbers. ``--workers N`` runs the teacher on a Ray Data actor pool
(:mod:`pipeline.pool`): N CPU actors, or with ``--device cuda`` N actors of one GPU each."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dive.config import ModelSettings
from pipeline import storage
from pipeline.console import error_line
from pipeline.convert.common import DEFAULT_MAX_PIXELS, SKIP_DETAIL, PathLike, progress, ray_if, report_skip
from pipeline.data.format import (
    CAPTIONED,
    NO_CAPTION,
    DataError,
    Manifest,
    Shard,
    ShardWriter,
    check_dataset,
    is_folder,
    is_webdataset,
    shard_files,
)
from pipeline.data.transforms import load_pixels, normalize_images


def decode_table(table: pa.Table, size: int, max_pixels: int) -> pa.Table:
    """Decode and resize one batch of shard rows for the teacher: the input columns plus ``_pixels`` (a kept
    row's uint8 3×size×size image as bytes: the Train workers' eval resize) and ``_skip`` (the reason a row is
    dropped: its image does not decode or its caption is empty; null for kept rows, whose ``_pixels`` is set)."""
    images = table.column("image").to_pylist()
    captions = table.column("caption").to_pylist()
    reasons: list[str | None] = [None] * len(images)
    pixels: list[bytes | None] = [None] * len(images)
    for i, (data, caption) in enumerate(zip(images, captions, strict=True)):
        if caption is None or not str(caption).strip():
            reasons[i] = NO_CAPTION
            continue
        image, reason = load_pixels(data, size, max_pixels)
        if image is None:
            reasons[i] = reason
            continue
        pixels[i] = image.tobytes()
    table = table.drop_columns([c for c in (*_ADDED, "_pixels") if c in table.column_names])
    table = table.append_column("_pixels", pa.array(pixels, type=pa.binary()))
    return table.append_column("_skip", pa.array(reasons, type=pa.string()))


# What the cache adds to a row (besides the temporary ``_pixels``).
_ADDED = ("teacher_image", "teacher_text", "_skip")


@dataclass
class Teacher:
    """The frozen teacher and what feeding it needs: image side, mean / std, tokenizer, embedding size."""

    model: Any
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    tokenizer: Any
    dim: int

    @classmethod
    def of(cls, bundle: Any) -> Teacher:
        from dive.models import embed_dim

        cfg = bundle.preprocess_cfg
        model = bundle.model.eval().requires_grad_(False)
        return cls(
            model, cfg["size"][0], tuple(cfg["mean"]), tuple(cfg["std"]), bundle.tokenizer, embed_dim(model)
        )

    def embed(self, table: pa.Table, device: Any = None) -> pa.Table:
        """A :func:`decode_table` batch → its columns (``_pixels`` dropped) plus ``teacher_image`` /
        ``teacher_text`` (float32, D; zeros for skipped rows) and ``_skip``. On CUDA under bf16 autocast."""
        import torch

        from pipeline.pool import autocast

        device = device or torch.device("cpu")
        pixels = table.column("_pixels").to_pylist()
        captions = table.column("caption").to_pylist()
        keep = [i for i, p in enumerate(pixels) if p is not None]
        n = len(pixels)
        img_emb = np.zeros((n, self.dim), np.float32)
        txt_emb = np.zeros((n, self.dim), np.float32)
        if keep:
            side = self.size
            raw = np.frombuffer(b"".join(pixels[i] for i in keep), np.uint8).reshape(len(keep), 3, side, side)
            images = torch.from_numpy(raw.copy()).to(device)
            tokens = self.tokenizer([str(captions[i]) for i in keep]).to(device)
            with torch.no_grad(), autocast(device):
                x = normalize_images(images, self.mean, self.std)
                img_emb[keep] = self.model.encode_image(x, normalize=True).float().cpu().numpy()
                txt_emb[keep] = self.model.encode_text(tokens, normalize=True).float().cpu().numpy()
        skip = table.column("_skip")
        table = table.drop_columns([c for c in (*_ADDED, "_pixels") if c in table.column_names])
        for name, values in (("teacher_image", img_emb), ("teacher_text", txt_emb)):
            table = table.append_column(
                name, pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), self.dim)
            )
        return table.append_column("_skip", skip)


def embed_table(table: pa.Table, teacher: Teacher, max_pixels: int, device: Any = None) -> pa.Table:
    """Teacher embeddings of one batch of shard rows (:func:`decode_table`, then :meth:`Teacher.embed`): the
    input columns plus ``teacher_image`` / ``teacher_text`` (float32, D) and ``_skip`` (a skip reason for rows
    whose image does not decode or whose caption is empty; their vectors are zeros)."""
    return teacher.embed(decode_table(table, teacher.size, max_pixels), device)


class TeacherEmbedder:
    """Callable class for Ray Data ``map_batches``: the driver's own teacher (``teacher``: a :class:`Teacher` put
    into the object store once), so every actor runs exactly the weights the manifest's fingerprint names, even
    for a random-init model, and none builds a model; on this actor's device. ``decode``: the
    :func:`decode_table` arguments where the actor decodes its own batches (cpu; on cuda a task stage has)."""

    def __init__(
        self,
        teacher: Any,
        device: str = "cpu",
        threads: int = 0,
        decode: Mapping[str, Any] | None = None,
    ) -> None:
        from pipeline.pool import actor_device, fetch

        self.device = actor_device(device, threads)
        self.teacher: Teacher = fetch(teacher)
        self.teacher.model.to(self.device)
        self.decode = decode

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.decode is not None:
            batch = decode_table(batch, **self.decode)
        return self.teacher.embed(batch, self.device)


def _build_teacher(model_cfg: ModelSettings) -> Any:
    """build_model, with an unknown name or unloadable weights as a one-line DataError."""
    from dive.models import build_model
    from pipeline.home import local_model

    try:
        return build_model(local_model(model_cfg))
    except (ValueError, RuntimeError, OSError) as err:
        first = error_line(err)
        raise DataError(
            f"cannot build the teacher {model_cfg.name!r} (pretrained {model_cfg.pretrained!r}): {first}"
        ) from None


def cache_teacher(
    dataset: PathLike,
    model_cfg: ModelSettings,
    batch_size: int = 64,
    workers: int = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    device: str = "cpu",
) -> Manifest:
    """Add the frozen teacher's L2-normalised embeddings of every row to a captioned set, in place.

    The set is rewritten all-or-nothing with float32 ``teacher_image`` / ``teacher_text`` columns (size D) and
    ``teacher_fingerprint`` / ``teacher_dim`` in the manifest; rows, keys, order, shard size and the other
    manifest fields are kept. Rows whose image does not decode (or whose caption is empty) are dropped and
    added to ``skipped``. ``workers`` > 0 runs the teacher on a Ray Data actor pool of that size
    (:func:`pipeline.pool.map_pool` over ``read_parquet``, rows in order); the embeddings equal the in-process
    ones. ``device`` "cuda": one GPU per actor (``--workers``) or this process's GPU (``--workers 0``), under bf16
    autocast; with no GPU there it is an error before anything is read.
    """
    from dive.models import teacher_fingerprint
    from pipeline.pool import check_device

    folder = str(dataset) if storage.is_uri(dataset) else Path(dataset)
    if is_folder(folder) and is_webdataset(folder):
        raise DataError(
            f"{folder}: holds webdataset tars; the teacher cache is written into Parquet shards, so convert "
            f"first: dive data wds {folder} <out> && dive data cache-teacher <out>"
        )
    if batch_size < 1:
        raise DataError(f"--batch-size must be >= 1, got {batch_size}")
    if workers < 0:
        raise DataError(f"--workers must be >= 0, got {workers}")
    check_device(device, f"--device {device}", DataError)  # this machine's GPUs; the cluster's once Ray is up
    manifest = check_dataset(folder, CAPTIONED)
    files = shard_files(folder)
    columns = ["image", "caption"] + (["key"] if all("key" in pq.read_schema(f).names for f in files) else [])
    rows_per_shard = max(pq.ParquetFile(f).metadata.num_rows for f in files)
    with ray_if(workers):
        pool = None
        if workers > 0:
            from pipeline.pool import plan_pool

            pool = plan_pool(
                device, workers, device_key=f"--device {device}", actors_key="--workers", error=DataError
            )
        bundle = _build_teacher(model_cfg)
        teacher = Teacher.of(bundle)
        new = replace(manifest, teacher_fingerprint=teacher_fingerprint(bundle), teacher_dim=teacher.dim)
        with ShardWriter(folder, new, rows_per_shard, overwrite=True) as writer:
            writer.skipped.update({k: v for k, v in manifest.skipped.items() if k != "total"})
            if pool is not None:
                batches = _actor_batches(
                    files, columns, teacher, pool, manifest.num_rows, batch_size, max_pixels
                )
            else:
                batches = _local_batches(files, columns, teacher, device, batch_size, max_pixels)
            if _write(batches, writer, manifest.num_rows) == 0:
                raise DataError(
                    f"{folder}: no row has a decodable image and a caption; the dataset is left unchanged"
                )
    return writer.manifest


def _write(batches: Iterator[pa.Table], writer: ShardWriter, total: int) -> int:
    """Embedded batches into ``writer``, in order: kept rows written, skipped ones counted and reported; returns
    how many rows were written."""
    seen = written = 0
    with progress(total, "cache-teacher") as bar:
        for table in batches:
            bar.update(table.num_rows)
            for row in table.to_pylist():
                reason = row.pop("_skip")
                seen += 1
                if reason is not None:
                    writer.skip(reason)
                    detail = "the caption is empty" if reason == NO_CAPTION else SKIP_DETAIL.get(reason, "")
                    report_skip(row.get("key") or f"row {seen - 1}", reason, detail)
                    continue
                writer.add(row)
                written += 1
    return written


def _actor_batches(
    files: list[Shard],
    columns: list[str],
    teacher: Teacher,
    pool: Any,
    rows: int,
    batch_size: int,
    max_pixels: int,
) -> Iterator[pa.Table]:
    """Embedded batches from the actor pool, each actor running the driver's exact teacher, in order."""
    import ray

    from pipeline.pool import map_pool

    ds = ray.data.read_parquet([str(f) for f in files], columns=columns)
    ds = map_pool(
        ds,
        TeacherEmbedder,
        pool,
        rows=rows,
        batch_size=batch_size,
        batch_format="pyarrow",
        decode=decode_table,
        decode_kwargs={"size": teacher.size, "max_pixels": max_pixels},
        constructor_kwargs={"teacher": ray.put(teacher)},
    )
    ds.context.execution_options.preserve_order = True  # keep the rows' order
    return ds.iter_batches(batch_format="pyarrow", batch_size=None)


def _local_batches(
    files: list[Shard], columns: list[str], teacher: Teacher, device: str, batch_size: int, max_pixels: int
) -> Iterator[pa.Table]:
    """Embedded batches computed in this process (on ``device``), shard by shard."""
    import torch

    where = torch.device(device)
    teacher.model.to(where)
    for f in files:
        for rb in pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=columns):
            yield embed_table(pa.Table.from_batches([rb]), teacher, max_pixels, where)
