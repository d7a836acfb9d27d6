"""Ray Data stream functions: decoding, skip counting, column mapping, prompt sampling."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pipeline.data.format import LABELLED, Manifest, encode_png, write_manifest
from pipeline.data.streams import KeptShard, SkipCounter, cycle_batches, read_stream
from pipeline.data.transforms import PromptTable, preprocess_batch, stream_image_transform
from tests.helpers import write_tar


class _Counter:
    """Stands in for the SkipCounter actor handle (same .add.remote interface)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.add = self
        self.remote = self.counts.update


def _png(color=(200, 30, 30), size=(40, 30)) -> bytes:
    return encode_png(Image.new("RGB", size, color))


def test_labelled_batch_is_decoded_resized_and_bad_rows_are_dropped_and_counted():
    good = _png()
    batch = {
        "image": np.array([good, good[:30], b"", good, good], dtype=object),
        "label": np.array([0, 1, 1, 7, 2]),
    }
    counter = _Counter()
    out = preprocess_batch(
        batch, kind=LABELLED, size=32, augment=False, max_pixels=10_000, num_classes=3, counter=counter
    )
    assert out["image"].shape == (2, 3, 32, 32) and out["image"].dtype == np.uint8
    assert out["label"].tolist() == [0, 2]
    assert counter.counts == {"undecodable": 1, "empty": 1, "bad_label": 1}
    assert tuple(out["image"][0, :, 16, 16]) == (200, 30, 30)  # channels first, colours kept


def test_too_large_images_are_skipped_before_decoding():
    batch = {"image": np.array([_png(size=(200, 200))], dtype=object), "label": np.array([0])}
    counter = _Counter()
    out = preprocess_batch(
        batch, kind=LABELLED, size=32, augment=True, max_pixels=100 * 100, num_classes=1, counter=counter
    )
    assert len(out["image"]) == 0 and counter.counts == {"too_large": 1}


def test_captioned_batch_tokenises_captions_and_keeps_teacher_columns(tiny_bundle):
    batch = {
        "image": np.array([_png(), _png(), _png()], dtype=object),
        "caption": np.array(["a red square", "  ", "a blue circle"], dtype=object),
        "teacher_image": np.array([np.full(4, i, np.float32) for i in range(3)], dtype=object),
        "teacher_text": np.array([np.full(4, -i, np.float32) for i in range(3)], dtype=object),
    }
    counter = _Counter()
    out = preprocess_batch(
        batch,
        kind="captioned",
        size=32,
        augment=False,
        max_pixels=10_000,
        model_name="dive-tiny",
        counter=counter,
    )
    assert counter.counts == {"no_caption": 1}
    assert torch.equal(
        torch.from_numpy(out["text"]), tiny_bundle.tokenizer(["a red square", "a blue circle"])
    )
    assert out["teacher_image"][:, 0].tolist() == [0.0, 2.0] and out["teacher_text"][:, 0].tolist() == [
        0.0,
        -2.0,
    ]


def test_prompt_table_samples_one_template_per_image_reproducibly(tiny_bundle):
    classes, templates = ["circle", "square"], ["a photo of a {}.", "a drawing of a {}.", "a {} shape."]
    table = PromptTable(tiny_bundle.tokenizer, classes, templates)
    labels = torch.tensor([0, 1, 1, 0] * 8)
    g = torch.Generator()
    g.manual_seed(3)
    first = table.sample(labels, g)
    g.manual_seed(3)
    assert torch.equal(first, table.sample(labels, g))
    allowed = {
        c: {tuple(tiny_bundle.tokenizer([t.format(c)])[0].tolist()) for t in templates} for c in classes
    }
    seen = set()
    for label, tokens in zip(labels.tolist(), first, strict=False):
        assert tuple(tokens.tolist()) in allowed[classes[label]]
        seen.add(tuple(tokens.tolist()))
    assert len(seen) > 2  # several templates used across the batch
    with pytest.raises(ValueError, match="no prompt templates"):
        PromptTable(tiny_bundle.tokenizer, classes, [])


def test_stream_transform_matches_worker_preprocessing(tiny_bundle):
    data = encode_png(Image.new("RGB", (48, 40), (10, 120, 240)))
    x, reason = stream_image_transform(tiny_bundle)(data, 10**6)
    assert reason is None
    out = preprocess_batch(
        {"image": np.array([data], dtype=object), "label": np.array([0])},
        kind=LABELLED,
        size=32,
        augment=False,
        max_pixels=10**6,
        num_classes=1,
    )
    from pipeline.data.transforms import normalize_images

    cfg = tiny_bundle.preprocess_cfg
    assert torch.allclose(x, normalize_images(torch.from_numpy(out["image"]), cfg["mean"], cfg["std"])[0])


@pytest.mark.ray
def test_read_stream_maps_columns_and_counts_skips_in_the_actor(ray_session, tmp_path):
    folder = tmp_path / "img2dataset"
    folder.mkdir()
    images = [_png()] * 6 + [b"not an image", b""]
    captions = ["a red square"] * 7 + [""]
    pq.write_table(
        pa.table({"jpg": pa.array(images, pa.binary()), "txt": captions}), folder / "part-0.parquet"
    )
    write_manifest(folder, Manifest(name="i2d", kind="captioned", num_rows=8))
    counter = SkipCounter.remote()
    ds, manifest = read_stream(
        str(folder),
        "captioned",
        size=32,
        augment=False,
        max_pixels=10**6,
        model_name="dive-tiny",
        column_map={"jpg": "image", "txt": "caption"},
        counter=counter,
    )
    rows = sum(len(b["image"]) for b in ds.iter_batches(batch_format="numpy"))
    assert rows == 6 and manifest.num_rows == 8
    assert _totals(ray_session, counter, 2) == {"undecodable": 1, "no_caption": 1}


def _totals(ray, counter, expected: int, timeout: float = 20.0) -> dict[str, int]:
    """The counter's totals once ``expected`` skips arrived (map tasks report fire-and-forget)."""
    deadline = time.monotonic() + timeout
    while True:
        totals = ray.get(counter.totals.remote())
        if sum(totals.values()) >= expected or time.monotonic() > deadline:
            return totals
        time.sleep(0.2)


@pytest.mark.ray
def test_webdataset_tars_stream_without_conversion_and_count_skips(ray_session, tmp_path):
    """Captioned tars (no manifest) and labelled tars (manifest for class names) read directly by Ray Data."""
    ref = tmp_path / "ref"
    ref.mkdir()
    members = {
        f"s{i}.{ext}": _png() if ext == "JPG" else b"a red square" for i in range(5) for ext in ("JPG", "txt")
    }
    members |= {
        "bad.jpg": b"not an image",
        "bad.txt": b"x",
        "nocap.jpg": _png(),
        "noimg.txt": b"caption only",
    }
    write_tar(ref / "00000.tar", members)
    counter = SkipCounter.remote()
    common = dict(size=32, augment=False, max_pixels=10**6, model_name="dive-tiny", counter=counter)
    ds, manifest = read_stream(str(ref), "captioned", **common)
    batch = ds.take_batch(100, batch_format="numpy")
    assert manifest.num_rows == 8 and batch["image"].shape == (5, 3, 32, 32)
    assert batch["text"].shape[0] == 5 and set(batch) == {"image", "text"}
    assert _totals(ray_session, counter, 3) == {"undecodable": 1, "no_caption": 1, "empty": 1}

    ids = tmp_path / "ids"
    ids.mkdir()
    write_tar(
        ids / "00000.tar", {"a.png": _png(), "a.cls": b"1", "b.png": _png(), "b.cls": b"7", "c.png": _png()}
    )
    write_manifest(ids, Manifest(name="ids", kind=LABELLED, classnames=["x", "y"], templates=["a {}."]))
    counter = SkipCounter.remote()
    ds, manifest = read_stream(
        str(ids), LABELLED, **{**common, "counter": counter}, column_map={"png": "image"}
    )
    batch = ds.take_batch(100, batch_format="numpy")
    assert manifest.num_rows == 3 and batch["label"].tolist() == [1]
    assert _totals(ray_session, counter, 2) == {"bad_label": 2}


class _Shard:
    """A stand-in for a Train dataset shard: the same 5 batches on every pass (``reads`` counts the passes)."""

    reads = 0

    def iter_torch_batches(self, batch_size: int, drop_last: bool, device: str = "auto"):
        self.reads += 1
        return iter([{"i": torch.tensor([i])} for i in range(5)])


def test_a_resumed_reference_cycle_continues_where_it_stopped():
    straight = cycle_batches(_Shard(), 1)
    seen = [int(next(straight)["i"]) for _ in range(12)]
    assert seen == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
    resumed = cycle_batches(_Shard(), 1, skip=7 % 5)  # 7 batches were consumed before the restart
    assert [int(next(resumed)["i"]) for _ in range(5)] == seen[7:12]


def test_a_kept_shard_is_read_once_in_the_background_and_replayed():
    shard = _Shard()
    kept = KeptShard(shard, 1)  # the reader starts at once: before any batch is asked for
    partial = kept.iter_torch_batches(batch_size=1, drop_last=True)
    assert [int(next(partial)["i"]) for _ in range(2)] == [0, 1]  # a pass left early does not stop the reader
    first = [int(b["i"]) for b in kept.iter_torch_batches(batch_size=1, drop_last=True)]
    assert first == [0, 1, 2, 3, 4]
    cycled = cycle_batches(kept, 1, skip=3)
    assert [int(next(cycled)["i"]) for _ in range(9)] == [3, 4, 0, 1, 2, 3, 4, 0, 1]
    assert shard.reads == 1  # every later pass (epochs, reference cycles) from the worker's memory
    with pytest.raises(ValueError, match="batches of 1"):
        next(kept.iter_torch_batches(batch_size=2, drop_last=True))


def test_a_kept_shard_whose_read_fails_raises_in_the_pass_that_needs_it():
    class Broken:
        def iter_torch_batches(self, **kwargs):
            yield {"i": torch.tensor([0])}
            raise OSError("shard gone")

    batches = KeptShard(Broken(), 1).iter_torch_batches(batch_size=1, drop_last=True)
    assert int(next(batches)["i"]) == 0
    with pytest.raises(RuntimeError, match="shard gone"):
        next(batches)
