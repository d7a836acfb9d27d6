"""``dive data cache-teacher``: the frozen teacher's embeddings written into a captioned set, in place.

Training then reads them instead of running the teacher (the reference stream's biggest cost). The image transform
is the Train workers' own (:func:`~pipeline.data.transforms.stream_image_transform`), so cached and live
embeddings are the same numbers."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dive.config import ModelSettings
from pipeline.console import error_line
from pipeline.convert.common import DEFAULT_MAX_PIXELS, SKIP_DETAIL, PathLike, progress, ray_if, report_skip
from pipeline.data.format import (
    CAPTIONED,
    NO_CAPTION,
    DataError,
    Manifest,
    ShardWriter,
    check_dataset,
    is_webdataset,
    shard_files,
)
from pipeline.data.transforms import stream_image_transform


def embed_table(
    table: pa.Table, model: Any, preprocess: Any, tokenizer: Any, dim: int, max_pixels: int
) -> pa.Table:
    """Teacher embeddings of one batch of shard rows: the per-batch function of both paths of cache_teacher.

    Returns the input columns plus ``teacher_image`` / ``teacher_text`` (float32, D) and ``_skip`` (a skip
    reason for rows whose image does not decode or whose caption is empty; their vectors are zeros).
    """
    import torch

    images = table.column("image").to_pylist()
    captions = table.column("caption").to_pylist()
    reasons: list[str | None] = [None] * len(images)
    pixels, keep = [], []
    for i, (data, caption) in enumerate(zip(images, captions, strict=True)):
        if caption is None or not str(caption).strip():
            reasons[i] = NO_CAPTION
            continue
        x, reason = preprocess(data, max_pixels)
        if reason is not None:
            reasons[i] = reason
            continue
        pixels.append(x)
        keep.append(i)
    img_emb = np.zeros((len(images), dim), np.float32)
    txt_emb = np.zeros((len(images), dim), np.float32)
    if keep:
        with torch.no_grad():
            img_emb[keep] = model.encode_image(torch.stack(pixels), normalize=True).float().cpu().numpy()
            tokens = tokenizer([str(captions[i]) for i in keep])
            txt_emb[keep] = model.encode_text(tokens, normalize=True).float().cpu().numpy()
    table = table.drop_columns(
        [c for c in ("teacher_image", "teacher_text", "_skip") if c in table.column_names]
    )
    for name, values in (("teacher_image", img_emb), ("teacher_text", txt_emb)):
        table = table.append_column(
            name, pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), dim)
        )
    return table.append_column("_skip", pa.array(reasons, type=pa.string()))


class TeacherEmbedder:
    """Callable class for Ray Data ``map_batches``: builds the teacher once per actor.

    ``state`` (a state dict, or an ObjectRef to one) replaces the built weights, so every actor runs exactly
    the driver's teacher even for a random-init model; the fingerprint is checked against
    ``expect_fingerprint``.
    """

    def __init__(
        self,
        model_cfg: ModelSettings,
        state: Any = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        expect_fingerprint: str = "",
    ) -> None:
        from dive.models import build_model, embed_dim, teacher_fingerprint

        bundle = build_model(model_cfg)
        if state is not None:
            import ray

            if isinstance(state, ray.ObjectRef):
                state = ray.get(state)
            bundle.model.load_state_dict(state)
        self.model = bundle.model.eval().requires_grad_(False)
        if expect_fingerprint and teacher_fingerprint(bundle) != expect_fingerprint:
            raise RuntimeError(
                f"teacher on this worker is {teacher_fingerprint(bundle)}, expected {expect_fingerprint}"
            )
        self.preprocess = stream_image_transform(bundle)
        self.tokenizer = bundle.tokenizer
        self.dim = embed_dim(self.model)
        self.max_pixels = max_pixels

    def __call__(self, batch: pa.Table) -> pa.Table:
        return embed_table(batch, self.model, self.preprocess, self.tokenizer, self.dim, self.max_pixels)


def _build_teacher(model_cfg: ModelSettings) -> Any:
    """build_model, with an unknown name or unloadable weights as a one-line DataError."""
    from dive.models import build_model

    try:
        return build_model(model_cfg)
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
) -> Manifest:
    """Add the frozen teacher's L2-normalised embeddings of every row to a captioned set, in place.

    The set is rewritten all-or-nothing with float32 ``teacher_image`` / ``teacher_text`` columns (size D) and
    ``teacher_fingerprint`` / ``teacher_dim`` in the manifest; rows, keys, order, shard size and the other
    manifest fields are kept. Rows whose image does not decode (or whose caption is empty) are dropped and
    added to ``skipped``. ``workers`` > 0 runs the teacher in that many Ray Data actors (``map_batches`` over
    ``read_parquet``); the embeddings equal the in-process ones.
    """
    from dive.models import embed_dim, teacher_fingerprint

    folder = Path(dataset)
    if folder.is_dir() and is_webdataset(folder):
        raise DataError(
            f"{folder}: holds webdataset tars; the teacher cache is written into Parquet shards, so convert "
            f"first: dive data wds {folder} <out> && dive data cache-teacher <out>"
        )
    manifest = check_dataset(folder, CAPTIONED)
    if batch_size < 1:
        raise DataError(f"--batch-size must be >= 1, got {batch_size}")
    files = shard_files(folder)
    columns = ["image", "caption"] + (["key"] if all("key" in pq.read_schema(f).names for f in files) else [])
    rows_per_shard = max(pq.ParquetFile(f).metadata.num_rows for f in files)
    bundle = _build_teacher(model_cfg)
    model = bundle.model.eval().requires_grad_(False)
    teacher_fp, dim = teacher_fingerprint(bundle), embed_dim(model)
    new = replace(manifest, teacher_fingerprint=teacher_fp, teacher_dim=dim)
    with ShardWriter(folder, new, rows_per_shard, overwrite=True) as writer, ray_if(workers):
        writer.skipped.update({k: v for k, v in manifest.skipped.items() if k != "total"})
        if workers > 0:
            batches = _actor_batches(
                files, columns, model_cfg, model, teacher_fp, batch_size, workers, max_pixels
            )
        else:
            batches = _local_batches(files, columns, bundle, dim, batch_size, max_pixels)
        written = seen = 0
        with progress(manifest.num_rows, "cache-teacher") as bar:
            for table in batches:
                bar.update(table.num_rows)
                for row in table.to_pylist():
                    reason = row.pop("_skip")
                    seen += 1
                    if reason is not None:
                        writer.skip(reason)
                        detail = (
                            "the caption is empty" if reason == NO_CAPTION else SKIP_DETAIL.get(reason, "")
                        )
                        report_skip(row.get("key") or f"row {seen - 1}", reason, detail)
                        continue
                    writer.add(row)
                    written += 1
        if written == 0:
            raise DataError(
                f"{folder}: no row has a decodable image and a caption; the dataset is left unchanged"
            )
    return writer.manifest


def _actor_batches(
    files: list[Path],
    columns: list[str],
    model_cfg: ModelSettings,
    model: Any,
    teacher_fp: str,
    batch_size: int,
    workers: int,
    max_pixels: int,
) -> Iterator[pa.Table]:
    """Embedded batches from ``workers`` Ray Data actors, each running the driver's exact teacher, in order."""
    import ray

    ds = ray.data.read_parquet([str(f) for f in files], columns=columns)
    ds = ds.map_batches(
        TeacherEmbedder,
        fn_constructor_kwargs=dict(
            model_cfg=model_cfg,
            state=ray.put(model.state_dict()),
            max_pixels=max_pixels,
            expect_fingerprint=teacher_fp,
        ),
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=workers),  # = concurrency=workers
    )
    ds.context.execution_options.preserve_order = True  # keep the rows' order
    return ds.iter_batches(batch_format="pyarrow", batch_size=None)


def _local_batches(
    files: list[Path], columns: list[str], bundle: Any, dim: int, batch_size: int, max_pixels: int
) -> Iterator[pa.Table]:
    """Embedded batches computed in this process, shard by shard."""
    model, preprocess = bundle.model.eval().requires_grad_(False), stream_image_transform(bundle)
    for f in files:
        for rb in pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=columns):
            yield embed_table(
                pa.Table.from_batches([rb]), model, preprocess, bundle.tokenizer, dim, max_pixels
            )
