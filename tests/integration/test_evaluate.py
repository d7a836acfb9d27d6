"""Evaluation reads every dataset format: Parquet shards and webdataset tars give the same accuracy and RSA."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dive.config import Config, ModelSettings
from pipeline.data.format import CAPTIONED, LABELLED, Manifest, ShardWriter, encode_png, write_manifest
from pipeline.evaluate import Suite, evaluate_accuracy, reference_embeddings
from tests.helpers import write_tar


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
    results = evaluate_accuracy({"m": ModelSettings()}, suites, Config())["m"]
    assert [(r.name, r.samples) for r in results] == [("parquet", 12), ("wds", 12)]
    assert results[0].accuracy == results[1].accuracy


@pytest.mark.ray
def test_small_suites_are_scored_in_process_exactly_as_through_ray_data(ray_session, tmp_path, monkeypatch):
    """Below ``eval.in_process_rows`` the suites are scored in the caller's process (no Ray Data at all) with the
    same counts as the Ray Data pass: the same images decoded the same way, an undecodable one dropped alike."""
    import pipeline.evaluate as ev

    images = [*_images(10, seed=2), b"not an image"]
    labels = [*(i % 3 for i in range(10)), 1]
    suites = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        pq.write_table(
            pa.table({"image": pa.array(images, pa.binary()), "label": labels}), folder / "0.parquet"
        )
        write_manifest(
            folder,
            Manifest(name, LABELLED, num_rows=11, classnames=["cat", "dog", "cow"], templates=["a {}."]),
        )
        suites.append(Suite(name, "ood", str(folder)))
    models = {"m": ModelSettings()}

    def no_ray_data(*args, **kwargs):
        raise AssertionError("small suites went through Ray Data")

    monkeypatch.setattr(ev, "open_dataset", no_ray_data)
    in_process = evaluate_accuracy(models, suites, Config())
    monkeypatch.undo()
    through_ray = Config()
    through_ray.eval.in_process_rows = 0
    assert evaluate_accuracy(models, suites, through_ray) == in_process
    assert [r.samples for r in in_process["m"]] == [10, 10]


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


@pytest.mark.ray
def test_trained_linear_head_scores_its_own_classes_only(ray_session, tiny_bundle, tmp_path):
    """FT / LP-FT exports carry their classifier: suites of exactly its classes are scored with it (as the paper
    scores FT), other suites with text heads, and the head survives the export round trip."""
    import torch

    from dive.export import LinearHead, export_model, load_linear_head

    images, labels = _images(12), [i % 3 for i in range(12)]
    suites = []
    for name, classes in (("pets", ["cat", "dog", "cow"]), ("other", ["red", "green", "blue"])):
        manifest = Manifest(name, LABELLED, classnames=classes, templates=["a photo of a {}."])
        with ShardWriter(tmp_path / name, manifest, rows_per_shard=12) as writer:
            for image, label in zip(images, labels, strict=True):
                writer.add({"image": image, "label": label})
        suites.append(Suite(name, "ood" if name == "pets" else "zs", str(tmp_path / name)))
    dim = tiny_bundle.model_cfg["embed_dim"]
    head = LinearHead(
        torch.zeros(3, dim), torch.tensor([0.0, 0.0, 5.0]), ["cat", "dog", "cow"]
    )  # always "cow"
    b = tiny_bundle
    with_head = export_model(b.model, tmp_path / "ft", b.model_cfg, b.preprocess_cfg, linear_head=head)
    plain = export_model(b.model, tmp_path / "plain", b.model_cfg, b.preprocess_cfg)
    loaded = load_linear_head(with_head)
    assert loaded.classnames == head.classnames and torch.equal(loaded.bias, head.bias)
    assert load_linear_head(plain) is None

    models = {
        "ft": ModelSettings(name=f"local-dir:{with_head}"),
        "plain": ModelSettings(name=f"local-dir:{plain}"),
    }
    results = evaluate_accuracy(models, suites, Config())
    ft, base = ({r.name: r.accuracy for r in results[k]} for k in ("ft", "plain"))
    assert ft["pets"] == pytest.approx(4 / 12)  # the head's constant answer, right for every third image
    assert ft["other"] == base["other"]  # another class list: the text head, as without a linear head


def test_linear_head_rejects_mismatched_shapes():
    import torch

    from dive.export import LinearHead

    with pytest.raises(ValueError, match="C class names"):
        LinearHead(torch.zeros(3, 4), torch.zeros(3), ["a", "b"])


def test_rsa_of_many_students_embeds_the_teacher_once_and_equals_one_by_one(
    tiny_bundle, tmp_path, monkeypatch
):
    """WiSE-FT scores three α against one teacher: the batched call gives each student's own RSA."""
    from dataclasses import replace

    import torch

    from pipeline import evaluate

    ref = tmp_path / "ref"
    with ShardWriter(ref, Manifest("ref", CAPTIONED), rows_per_shard=4) as writer:
        for i, image in enumerate(_images(6, seed=2)):
            writer.add({"image": image, "caption": f"a picture number {i}"})
    teacher_file, other_file = tmp_path / "t.pt", tmp_path / "o.pt"
    torch.save(tiny_bundle.model.state_dict(), teacher_file)
    g = torch.Generator().manual_seed(1)
    state = {k: v + 0.5 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
             for k, v in tiny_bundle.model.state_dict().items()}  # fmt: skip
    torch.save(state, other_file)
    cfg = Config()
    cfg = replace(cfg, eval=replace(cfg.eval, rsa_set=str(ref), rsa_samples=6))
    teacher = ModelSettings(pretrained=str(teacher_file))
    students = {"same": teacher, "other": ModelSettings(pretrained=str(other_file))}
    built = []
    real_build = evaluate.build_model
    monkeypatch.setattr(evaluate, "build_model", lambda m: built.append(m) or real_build(m))
    many = evaluate.evaluate_rsa_many(teacher, students, cfg)
    assert len(built) == 1 + len(students)  # the teacher once, each student once
    assert many["same"]["rsa_mean"] == pytest.approx(1.0)
    assert many["other"]["rsa_mean"] < 0.999
    for name, student in students.items():
        assert evaluate.evaluate_rsa(teacher, student, cfg) == pytest.approx(many[name])
