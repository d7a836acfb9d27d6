"""Evaluation reads every dataset format: Parquet shards and webdataset tars give the same accuracy and RSA."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dive.config import Config, ModelConfig
from pipeline.evaluate import Suite, evaluate_accuracy, reference_embeddings
from pipeline.shards import CAPTIONED, LABELLED, Manifest, ShardWriter, encode_png, write_manifest
from tests.conftest import write_tar


def _images(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [encode_png(Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))) for _ in range(n)]


@pytest.mark.ray
def test_webdataset_suite_scores_like_its_parquet_twin(ray_session, tmp_path):
    images, labels = _images(12), [i % 3 for i in range(12)]
    manifest = Manifest("pets", LABELLED, classnames=["cat", "dog", "cow"], templates=["a photo of a {}."])
    with ShardWriter(tmp_path / "parquet", manifest, rows_per_shard=5) as writer:
        for image, label in zip(images, labels, strict=True):
            writer.add({"image": image, "label": label})
    wds = tmp_path / "wds"
    wds.mkdir()
    members: dict[str, bytes] = {}
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        members |= {f"{i:04d}.jpg": image, f"{i:04d}.cls": str(label).encode()}
    write_tar(wds / "00000.tar", members)
    write_manifest(
        wds, Manifest("pets", LABELLED, classnames=manifest.classnames, templates=manifest.templates)
    )

    suites = [Suite("parquet", "ood", str(tmp_path / "parquet")), Suite("wds", "ood", str(wds))]
    results = evaluate_accuracy({"m": ModelConfig()}, suites, Config())["m"]
    assert [(r.name, r.samples) for r in results] == [("parquet", 12), ("wds", 12)]
    assert results[0].accuracy == results[1].accuracy


def test_rsa_sample_reads_mapped_parquet_and_webdataset_alike(tiny_bundle, tmp_path):
    images = _images(5, seed=1)
    captions = [f"picture {i}" for i in range(5)]
    i2d = tmp_path / "i2d"
    i2d.mkdir()
    pq.write_table(pa.table({"jpg": pa.array(images, pa.binary()), "txt": captions}), i2d / "part-0.parquet")
    write_manifest(i2d, Manifest("i2d", CAPTIONED, num_rows=5))
    wds = tmp_path / "wds"
    wds.mkdir()
    write_tar(
        wds / "0.tar",
        {k: v for i in range(5) for k, v in ((f"{i}.jpg", images[i]), (f"{i}.txt", captions[i].encode()))},
    )
    cmap = {"jpg": "image", "txt": "caption"}
    a = reference_embeddings(tiny_bundle, str(i2d), 4, 10**6, cmap)
    b = reference_embeddings(tiny_bundle, str(wds), 4, 10**6)
    assert a[0].shape == (4, 64) and all(np.allclose(x, y) for x, y in zip(a, b, strict=True))
