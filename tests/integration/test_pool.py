"""Batch inference on a Ray Data actor pool (pipeline/pool.py): evaluation and the teacher cache score and embed
exactly as they do in the caller's process, with several CPU actors and with the GPU layout (a decode task stage
before the actors) run on CPU."""

from __future__ import annotations

import io
import shutil
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dive.config import Config, EvalDevice, ModelSettings
from pipeline.data.format import (
    CAPTIONED,
    LABELLED,
    Manifest,
    ShardWriter,
    encode_png,
    iter_rows,
    read_manifest,
    write_manifest,
)
from pipeline.evaluate import Suite, evaluate_accuracy


def _images(n: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [encode_png(Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))) for _ in range(n)]


def _suites(tmp_path) -> list[Suite]:
    """Two labelled suites of 13 rows in 2 shards each, one image undecodable, so that a pool of batch 4 gets
    several blocks from each."""
    suites = []
    for k, (name, classes) in enumerate((("pets", ["cat", "dog", "cow"]), ("hues", ["red", "green"]))):
        folder = tmp_path / name
        folder.mkdir()
        images = [*_images(12, seed=k), b"not an image"]
        labels = [i % len(classes) for i in range(13)]
        for part, rows in enumerate((slice(0, 7), slice(7, 13))):
            table = pa.table({"image": pa.array(images[rows], pa.binary()), "label": labels[rows]})
            pq.write_table(table, folder / f"{part}.parquet")
        write_manifest(folder, Manifest(name, LABELLED, num_rows=13, classnames=classes, templates=["a {}."]))
        suites.append(Suite(name, "ood" if k == 0 else "zs", str(folder)))
    return suites


@pytest.mark.ray
def test_a_pool_of_two_cpu_actors_scores_like_the_callers_process(
    ray_session, tiny_bundle, tmp_path, monkeypatch
):
    """2 CPU actors, batches of 4 (each actor decodes its own), and the cuda layout on CPU (a decode task stage,
    then the actors): the same counts and accuracies as in process, for two models at once."""
    import torch

    import pipeline.evaluate as ev
    from pipeline import pool as pool_module

    suites = _suites(tmp_path)
    g = torch.Generator().manual_seed(1)
    state = {k: v + 0.5 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
             for k, v in tiny_bundle.model.state_dict().items()}  # fmt: skip
    torch.save(state, tmp_path / "other.pt")
    models = {"a": ModelSettings(), "b": ModelSettings(pretrained=str(tmp_path / "other.pt"))}
    cfg = Config()
    cfg.eval.batch_size = 4
    in_process = evaluate_accuracy(models, suites, cfg)
    assert [r.samples for r in in_process["a"]] == [12, 12]

    cfg.eval.in_process_rows, cfg.eval.actors, cfg.eval.device = 0, 2, EvalDevice.cpu
    plans = []
    real_plan = pool_module.plan_pool

    def recorded(*args, **kwargs):
        plans.append(real_plan(*args, **kwargs))
        return plans[-1]

    monkeypatch.setattr(ev, "plan_pool", recorded)
    assert evaluate_accuracy(models, suites, cfg, threads=1) == in_process
    assert plans[0].actors == 2 and plans[0].num_gpus == 0 and plans[0].decode_in_actor

    monkeypatch.setattr(ev, "plan_pool", lambda *a, **k: replace(real_plan(*a, **k), decode_in_actor=False))
    assert evaluate_accuracy(models, suites, cfg, threads=1) == in_process


@pytest.mark.ray
def test_cache_teacher_on_two_cpu_actors_writes_what_the_process_writes(
    ray_session, tmp_path, capsys, monkeypatch
):
    """``dive data cache-teacher --device cpu --workers 2`` (batches of 2 over 2 actors), and the same with the
    cuda layout (a decode task stage before the actors), write what ``--workers 0`` writes: the same rows in the
    same order, the same embeddings, the same manifest."""
    from pipeline import pool as pool_module
    from pipeline.convert.cli import main

    rng = np.random.default_rng(3)
    local = tmp_path / "local"
    with ShardWriter(local, Manifest("ref", CAPTIONED), rows_per_shard=4) as writer:
        for i in range(9):
            pixels = rng.integers(0, 256, size=(18 + i, 30 - i, 3), dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="PNG")
            writer.add({"image": buf.getvalue(), "caption": f"picture number {i}", "key": f"k{i}"})
        writer.add({"image": b"broken", "caption": "a broken one", "key": "bad"})
        writer.add({"image": buf.getvalue(), "caption": " ", "key": "blank"})
    pooled, tasks = tmp_path / "pooled", tmp_path / "tasks"
    shutil.copytree(local, pooled)
    shutil.copytree(local, tasks)

    base = ["--model-name", "dive-tiny", "--batch-size", "2"]
    assert main(["cache-teacher", str(local), *base, "--workers", "0"]) == 0
    assert main(["cache-teacher", str(pooled), *base, "--device", "cpu", "--workers", "2"]) == 0
    real_plan = pool_module.plan_pool
    monkeypatch.setattr(
        pool_module, "plan_pool", lambda *a, **k: replace(real_plan(*a, **k), decode_in_actor=False)
    )
    assert main(["cache-teacher", str(tasks), *base, "--device", "cpu", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("skipped bad: undecodable") == 3 and out.count("skipped blank: no_caption") == 3
    assert read_manifest(local).num_rows == 9

    rows_local = list(iter_rows(local))
    assert [r["key"] for r in rows_local] == [f"k{i}" for i in range(9)]
    for folder in (pooled, tasks):
        # the same manifest but for the shards' content hash (embeddings may differ in the last bit)
        assert replace(read_manifest(folder), fingerprint="") == replace(read_manifest(local), fingerprint="")
        rows = list(iter_rows(folder))
        assert [r["key"] for r in rows] == [r["key"] for r in rows_local]
        assert [r["image"] for r in rows] == [r["image"] for r in rows_local]
        for column in ("teacher_image", "teacher_text"):
            got = np.array([r[column] for r in rows], dtype=np.float32)
            want = np.array([r[column] for r in rows_local], dtype=np.float32)
            np.testing.assert_allclose(got, want, atol=1e-6)
