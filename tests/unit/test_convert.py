"""``dive data``: imagefolder / captions / wds converters, skip rules, bad sources, CLI, teacher cache."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from dive.config import ModelSettings
from dive.models import build_model, teacher_fingerprint
from dive.zeroshot import DEFAULT_TEMPLATES
from pipeline.convert import cache_teacher, common, convert_captions, convert_imagefolder, convert_wds
from pipeline.convert.cli import main
from pipeline.data.format import (
    CAPTIONED,
    LABELLED,
    DataError,
    Manifest,
    ShardWriter,
    check_dataset,
    check_teacher_cache,
    encode_png,
    iter_rows,
    read_manifest,
    shard_files,
)
from pipeline.data.transforms import stream_image_transform
from tests.helpers import write_tar


@pytest.fixture(autouse=True)
def _no_progress(monkeypatch):
    monkeypatch.setenv("DIVE_NO_PROGRESS", "1")


def image_bytes(size=(16, 12), color=(10, 200, 30), fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def skip_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("skipped ")]


# ----------------------------------------------------------------------------------------------- imagefolder
def test_imagefolder_round_trip(tmp_path, capsys):
    src = tmp_path / "src"
    files = {}
    for cls, n in (("sea_turtle", 2), ("ant", 3), ("zebra", 1)):  # created unsorted
        for i in range(n):
            rel = f"{cls}/img{i}.{'jpg' if i % 2 else 'png'}"
            data = image_bytes(color=(i * 50, len(cls) * 10, 0), fmt="JPEG" if i % 2 else "PNG")
            (src / cls).mkdir(parents=True, exist_ok=True)
            (src / rel).write_bytes(data)
            files[rel] = data
    (src / "ant" / "nested").mkdir()
    (src / "ant" / "nested" / "deep.png").write_bytes(files["ant/img0.png"])
    files["ant/nested/deep.png"] = files["ant/img0.png"]
    (src / "ant" / ".DS_Store").write_bytes(b"junk")  # hidden files are not samples
    (src / "README.txt").write_text("files beside the class folders are ignored")

    out = tmp_path / "out"
    manifest = convert_imagefolder(src, out, rows_per_shard=3)
    assert manifest.kind == LABELLED
    assert manifest.classnames == ["ant", "sea turtle", "zebra"]
    assert manifest.templates == list(DEFAULT_TEMPLATES)
    assert manifest.num_rows == 7 and manifest.skipped == {"total": 0}
    assert manifest.source == str(src.resolve())
    assert len(shard_files(out)) == 3
    assert check_dataset(out, LABELLED) == read_manifest(out) == manifest
    rows = list(iter_rows(out))
    assert sorted(r["key"] for r in rows) == sorted(files)
    for row in rows:
        assert row["image"] == files[row["key"]]  # original bytes, not re-encoded
        assert row["label"] == ["ant", "sea_turtle", "zebra"].index(row["key"].split("/")[0])
    assert skip_lines(capsys.readouterr().out) == []


def test_imagefolder_cli_with_templates_file_and_summary(tmp_path, capsys):
    src = tmp_path / "src"
    for cls in ("b", "a"):
        (src / cls).mkdir(parents=True)
        (src / cls / "x.png").write_bytes(image_bytes())
    templates = tmp_path / "templates.txt"
    templates.write_text("# comment\nart of the {}.\n\na {} in the wild.\n")
    out = tmp_path / "out"
    assert (
        main(["imagefolder", str(src), str(out), "--templates", str(templates), "--rows-per-shard", "1"]) == 0
    )
    assert read_manifest(out).templates == ["art of the {}.", "a {} in the wild."]
    assert len(shard_files(out)) == 2
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert "wrote 2 rows" in summary and str(out) in summary and "skipped 0" in summary

    templates.write_text("no placeholder here\n")
    assert main(["imagefolder", str(src), str(tmp_path / "o2"), "--templates", str(templates)]) == 2
    assert "templates.txt:1" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


def test_imagefolder_bad_files_are_skipped_printed_and_counted(tmp_path, capsys):
    src = tmp_path / "src"
    (src / "cat").mkdir(parents=True)
    (src / "dog").mkdir(parents=True)
    good = image_bytes(size=(16, 16))
    for i in range(3):
        (src / "cat" / f"ok{i}.png").write_bytes(good)
    (src / "dog" / "ok.png").write_bytes(good)
    noise = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 30, 3), dtype=np.uint8)).save(noise, "PNG")
    (src / "dog" / "truncated.png").write_bytes(noise.getvalue()[: len(noise.getvalue()) // 2])  # 900 px
    (src / "dog" / "empty.jpg").write_bytes(b"")
    (src / "dog" / "notes.txt").write_text("not an image")
    (src / "cat" / "huge.png").write_bytes(image_bytes(size=(40, 40)))  # 1600 px > --max-pixels 1000

    out = tmp_path / "out"
    manifest = convert_imagefolder(src, out, max_pixels=1000)
    assert manifest.num_rows == 4
    expected = {"total": 4, "empty": 1, "too_large": 1, "undecodable": 2}
    assert manifest.skipped == expected == read_manifest(out).skipped
    lines = skip_lines(capsys.readouterr().out)
    assert len(lines) == 4
    for name, reason in (
        ("truncated.png", "undecodable"),
        ("empty.jpg", "empty"),
        ("notes.txt", "undecodable"),
    ):
        assert any(name in line and reason in line for line in lines), (name, lines)
    assert any("huge.png" in line and "too_large" in line for line in lines)
    assert {r["key"] for r in iter_rows(out)} == {"cat/ok0.png", "cat/ok1.png", "cat/ok2.png", "dog/ok.png"}


def test_imagefolder_broken_symlinks_are_skipped_as_missing_and_counted(tmp_path, capsys):
    src = tmp_path / "src"
    (src / "cat").mkdir(parents=True)
    (src / "dog").mkdir(parents=True)
    (src / "cat" / "ok.png").write_bytes(image_bytes())
    (src / "dog" / "ok.png").write_bytes(image_bytes())
    (src / "cat" / "linked.png").symlink_to(src / "dog" / "ok.png")  # a working link is a sample
    (src / "cat" / "gone.jpg").symlink_to(tmp_path / "moved-away.jpg")  # its target was never copied
    (src / "dog" / "loop.png").symlink_to(src / "dog" / "loop.png")  # resolves to nothing
    os.mkfifo(src / "dog" / "pipe.png")  # never opened: reading it would block

    out = tmp_path / "out"
    assert main(["imagefolder", str(src), str(out)]) == 0
    manifest = read_manifest(out)
    assert manifest.num_rows == 3
    assert manifest.skipped == {"total": 3, "missing": 3}
    assert {r["key"] for r in iter_rows(out)} == {"cat/ok.png", "cat/linked.png", "dog/ok.png"}
    printed = capsys.readouterr().out
    lines = skip_lines(printed)
    assert len(lines) == 3
    assert any("cat/gone.jpg: missing (broken symlink" in line and "moved-away.jpg" in line for line in lines)
    assert any("dog/loop.png: missing (broken symlink" in line for line in lines)
    assert any("dog/pipe.png: missing (not a regular file" in line for line in lines)
    assert "skipped 3" in printed.strip().splitlines()[-1]


def test_imagefolder_of_only_broken_symlinks_fails_naming_the_count(tmp_path):
    (tmp_path / "src" / "cat").mkdir(parents=True)
    (tmp_path / "src" / "cat" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    with pytest.raises(DataError, match=r"no usable samples \(all 1 skipped\)"):
        convert_imagefolder(tmp_path / "src", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# -------------------------------------------------------------------------------------------------- captions
def write_caption_file(folder: Path, fmt: str, rows: list[dict]) -> Path:
    if fmt == "csv":
        path = folder / "captions.csv"
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, ["image", "caption"])
            writer.writeheader()
            writer.writerows({"image": r.get("image", ""), "caption": r.get("caption", "")} for r in rows)
    else:
        path = folder / "captions.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_captions_csv_and_jsonl(tmp_path, capsys, fmt):
    (tmp_path / "imgs").mkdir()
    images = {f"imgs/{i}.png": image_bytes(color=(i * 40, 0, 0)) for i in range(4)}
    for rel, data in images.items():
        (tmp_path / rel).write_bytes(data)
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    rows = [
        {"image": "imgs/0.png", "caption": "a red square"},
        {"image": "imgs/1.png", "caption": "  a padded caption  "},
        {"image": "imgs/2.png", "caption": ""},
        {"image": "imgs/3.png", "caption": "   "},
        {"image": "imgs/absent.png", "caption": "points nowhere"},
        {"image": "imgs/broken.jpg", "caption": "a broken file"},
        {"image": str(tmp_path / "imgs/3.png"), "caption": "an absolute path"},
    ]
    if fmt == "jsonl":
        rows.append({"image": "imgs/0.png"})  # caption key missing
    path = write_caption_file(tmp_path, fmt, rows)
    out = tmp_path / "out"
    manifest = convert_captions(path, out, rows_per_shard=2)
    no_caption = 3 if fmt == "jsonl" else 2
    assert manifest.kind == CAPTIONED and manifest.num_rows == 3
    assert manifest.skipped == {
        "total": no_caption + 2,
        "missing": 1,
        "no_caption": no_caption,
        "undecodable": 1,
    }
    assert manifest.source == str(path.resolve())
    check_dataset(out, CAPTIONED)
    rows_out = list(iter_rows(out))
    assert [r["caption"] for r in rows_out] == ["a red square", "a padded caption", "an absolute path"]
    assert [r["image"] for r in rows_out] == [
        images["imgs/0.png"],
        images["imgs/1.png"],
        images["imgs/3.png"],
    ]
    assert rows_out[0]["key"] == "imgs/0.png"
    lines = skip_lines(capsys.readouterr().out)
    assert len(lines) == no_caption + 2
    assert any("absent.png" in line and "missing" in line for line in lines)
    assert any("broken.jpg" in line and "undecodable" in line for line in lines)
    assert sum("no_caption" in line for line in lines) == no_caption


def test_captions_cli_with_base_dir_and_custom_columns(tmp_path, capsys):
    base = tmp_path / "pictures"
    base.mkdir()
    (base / "a.png").write_bytes(image_bytes())
    meta = tmp_path / "meta" / "pairs.csv"
    meta.parent.mkdir()
    meta.write_text("filepath,title\na.png,a green thing\n")
    out = tmp_path / "out"
    argv = ["captions", str(meta), str(out), "--image-column", "filepath", "--caption-column", "title"]
    assert main([*argv, "--base-dir", str(base)]) == 0
    assert [r["caption"] for r in iter_rows(out)] == ["a green thing"]
    assert "wrote 1 rows" in capsys.readouterr().out
    # without --base-dir paths are relative to the CSV's folder, where a.png is not: every row is missing
    assert main([*argv[:2], str(tmp_path / "o2"), *argv[3:]]) == 2
    captured = capsys.readouterr()
    assert "missing" in captured.out and captured.err.startswith("error: ")
    assert not (tmp_path / "o2").exists()


# ------------------------------------------------------------------------------------------------ webdataset
def test_wds_captioned_tars(tmp_path, capsys):
    shards = tmp_path / "shards"
    shards.mkdir()
    a, b, c = (
        image_bytes(color=(1, 2, 3)),
        image_bytes(color=(200, 2, 3), fmt="JPEG"),
        image_bytes(size=(8, 8)),
    )
    write_tar(
        shards / "00000.tar",
        {
            "s000.jpg": b,
            "s000.txt": b"a photo of a dog",
            "s000.json": b"{}",
            "part/s001.png": a,
            "part/s001.txt": "une cafetière".encode(),
            "s002.png": a,
            "s002.txt": b"  ",
            "s003.png": a,  # no caption member
            "s004.webp": b"RIFF broken",
            "s004.txt": b"a broken image",
        },
    )
    write_tar(
        shards / "00001.tar",
        {"t000.jpg": b, "t000.png": c, "t000.txt": b"two images, jpg first", "t001.txt": b"x"},
    )
    (shards / "notes.md").write_text("not a shard")
    out = tmp_path / "out"
    manifest = convert_wds(shards, out)
    assert manifest.kind == CAPTIONED and manifest.num_rows == 3
    assert manifest.skipped == {"total": 4, "missing": 1, "no_caption": 2, "undecodable": 1}
    rows = list(iter_rows(out))
    assert [(r["key"], r["caption"]) for r in rows] == [
        ("s000", "a photo of a dog"),
        ("part/s001", "une cafetière"),
        ("t000", "two images, jpg first"),
    ]
    assert [r["image"] for r in rows] == [b, a, b]
    lines = skip_lines(capsys.readouterr().out)
    assert len(lines) == 4 and any("00001.tar:t001" in line and "missing" in line for line in lines)

    single = convert_wds(shards / "00001.tar", tmp_path / "single", image_ext=["png"])
    assert [r["image"] for r in iter_rows(tmp_path / "single")] == [c]
    assert single.skipped["missing"] == 1


def test_wds_labelled_tars_skip_out_of_range_labels(tmp_path, capsys):
    img = image_bytes()
    tar = write_tar(
        tmp_path / "train.tar",
        {
            "a.png": img,
            "a.cls": b"0",
            "b.png": img,
            "b.cls": b"1\n",
            "c.png": img,
            "c.cls": b"7",
            "d.png": img,
            "d.cls": b"-1",
            "e.png": img,
            "e.cls": b"cat",
        },
    )
    names = tmp_path / "classes.txt"
    names.write_text("cat\ndog\n")
    with pytest.raises(DataError, match="--classnames"):
        convert_wds(tar, tmp_path / "nope", label_ext="cls")
    assert not (tmp_path / "nope").exists()
    out = tmp_path / "out"
    assert main(["wds", str(tar), str(out), "--label-ext", "cls", "--classnames", str(names)]) == 0
    manifest = read_manifest(out)
    assert manifest.kind == LABELLED and manifest.classnames == ["cat", "dog"]
    assert manifest.skipped == {"total": 3, "bad_label": 3}
    assert [(r["key"], r["label"]) for r in iter_rows(out)] == [("a", 0), ("b", 1)]
    lines = skip_lines(capsys.readouterr().out)
    assert len(lines) == 3 and all("bad_label" in line for line in lines)
    assert any("train.tar:c" in line and "label 7" in line for line in lines)


# ----------------------------------------------------------------------------------------------- bad sources
def _bad_sources(tmp: Path) -> dict[str, tuple]:
    flat = tmp / "flat"
    flat.mkdir()
    (flat / "a.png").write_bytes(image_bytes())
    no_col = tmp / "no_col.csv"
    no_col.write_text("image,text\na.png,hello\n")
    no_key = tmp / "no_key.jsonl"
    no_key.write_text('{"image": "a.png", "text": "hello"}\n')
    bad_json = tmp / "bad.jsonl"
    bad_json.write_text('{"image": "a.png", "caption": "ok"}\n{oops\n')
    other = tmp / "captions.txt"
    other.write_text("a.png hello\n")
    empty = tmp / "empty"
    empty.mkdir()
    fake_tar = tmp / "fake.tar"
    fake_tar.write_bytes(b"not a tar file at all" * 100)
    return {
        "no-folder": (convert_imagefolder, tmp / "missing", r"missing: no such folder"),
        "no-class-folders": (convert_imagefolder, flat, r"flat: no class folders"),
        "no-file": (convert_captions, tmp / "nope.csv", r"nope\.csv: no such captions file"),
        "csv-no-column": (
            convert_captions,
            no_col,
            r"no_col\.csv: missing column 'caption'.*\['image', 'text'\]",
        ),
        "jsonl-no-column": (convert_captions, no_key, r"no_key\.jsonl: missing column 'caption'"),
        "jsonl-bad-line": (convert_captions, bad_json, r"bad\.jsonl:2: not valid JSON"),
        "unknown-format": (convert_captions, other, r"captions\.txt: unknown captions format '\.txt'"),
        "no-tars": (convert_wds, empty, r"empty: no \*\.tar files"),
        "not-a-tar": (convert_wds, fake_tar, r"fake\.tar: not a readable uncompressed tar"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "no-folder",
        "no-class-folders",
        "no-file",
        "csv-no-column",
        "jsonl-no-column",
        "jsonl-bad-line",
        "unknown-format",
        "no-tars",
        "not-a-tar",
    ],
)
def test_bad_sources_raise_before_anything_is_written(tmp_path, case):
    fn, src, match = _bad_sources(tmp_path)[case]
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(DataError, match=match):
        fn(src, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output, no temp folder


def test_cli_bad_source_prints_one_error_line_and_returns_2(tmp_path, capsys):
    (tmp_path / "c.csv").write_text("path,caption\nx.png,hi\n")
    assert main(["captions", str(tmp_path / "c.csv"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "c.csv" in err and "'image'" in err and "Traceback" not in err
    assert main(["imagefolder", str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 2
    assert "nowhere: no such folder" in capsys.readouterr().err
    assert main(["cache-teacher", str(tmp_path / "nowhere"), "--model-name", "dive-tiny"]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert main(["bogus"]) == 2
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_overwrite(tmp_path, capsys):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "x.png").write_bytes(image_bytes())
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    assert main(["imagefolder", str(src), str(out)]) == 2
    assert "not empty" in capsys.readouterr().err and (out / "old.txt").exists()
    assert main(["imagefolder", str(src), str(out), "--overwrite"]) == 0
    assert not (out / "old.txt").exists() and read_manifest(out).num_rows == 1


def test_progress_bar_is_off_without_a_tty_or_with_dive_no_progress(monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    monkeypatch.delenv("DIVE_NO_PROGRESS")
    with common.progress(3, "x") as bar:
        assert not bar.disable
    monkeypatch.setenv("DIVE_NO_PROGRESS", "1")
    with common.progress(3, "x") as bar:
        assert bar.disable
    monkeypatch.delenv("DIVE_NO_PROGRESS")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    with common.progress(3, "x") as bar:
        assert bar.disable


# --------------------------------------------------------------------------------------------- teacher cache
def test_cache_teacher_matches_direct_embeddings_and_fingerprints(tmp_path, tiny_bundle, capsys):
    weights = tmp_path / "teacher.pt"
    torch.save(tiny_bundle.model.state_dict(), weights)
    cfg = ModelSettings(pretrained=str(weights))
    folder = tmp_path / "ref"
    rng = np.random.default_rng(0)
    rows = []
    for i in range(7):
        pixels = rng.integers(0, 256, size=(20 + 3 * i, 40 - 2 * i, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        rows.append({"image": buf.getvalue(), "caption": f"a noisy picture number {i}", "key": f"k{i}"})
    rows.insert(3, {"image": b"\x89PNG broken", "caption": "a broken image", "key": "bad"})
    manifest = Manifest("ref", CAPTIONED, source="somewhere")
    with ShardWriter(folder, manifest, rows_per_shard=3) as writer:
        writer.skip("missing", 2)  # skips counted at conversion stay counted
        for row in rows:
            writer.add(row)

    cached = cache_teacher(folder, cfg, batch_size=4)
    good = [r for r in rows if r["key"] != "bad"]
    assert cached.num_rows == len(good) == 7
    assert cached.skipped == {"total": 3, "missing": 2, "undecodable": 1}
    assert cached.source == "somewhere" and cached.teacher_dim == 64
    assert any("bad" in line and "undecodable" in line for line in skip_lines(capsys.readouterr().out))
    assert read_manifest(folder) == cached
    check_dataset(folder, CAPTIONED)
    schema = pq.read_schema(shard_files(folder)[0])
    for column in ("teacher_image", "teacher_text"):
        t = schema.field(column).type
        assert pa.types.is_fixed_size_list(t) and t.list_size == 64 and t.value_type == pa.float32()
    assert [pq.ParquetFile(f).metadata.num_rows for f in shard_files(folder)] == [3, 3, 1]

    out = list(iter_rows(folder))
    assert [(r["key"], r["caption"], r["image"]) for r in out] == [
        (r["key"], r["caption"], r["image"]) for r in good
    ]
    direct = build_model(cfg)
    model = direct.model.eval()
    assert cached.teacher_fingerprint == teacher_fingerprint(direct) == teacher_fingerprint(tiny_bundle)
    transform = stream_image_transform(direct)  # the pixels the live teacher sees in training
    with torch.no_grad():
        x = torch.stack([transform(r["image"], 10**6)[0] for r in good])
        want_image = model.encode_image(x, normalize=True).numpy()
        want_text = model.encode_text(direct.tokenizer([r["caption"] for r in good]), normalize=True).numpy()
        # open_clip's own eval preprocessing (Pillow's decode and resize): the same geometry, pixels within the
        # fast decode's tolerance (tests/unit/test_decode.py), so the same embeddings to ~1e-4
        pil = torch.stack(
            [direct.preprocess_eval(Image.open(io.BytesIO(r["image"])).convert("RGB")) for r in good]
        )
        pil_image = model.encode_image(pil, normalize=True).numpy()
    got_image = np.array([r["teacher_image"] for r in out], dtype=np.float32)
    got_text = np.array([r["teacher_text"] for r in out], dtype=np.float32)
    np.testing.assert_allclose(got_image, want_image, atol=1e-5)
    np.testing.assert_allclose(got_text, want_text, atol=1e-5)
    np.testing.assert_allclose(got_image, pil_image, atol=1e-3)
    assert np.allclose(np.linalg.norm(got_image, axis=1), 1.0, atol=1e-5)
    # RSA's reference sample goes through the same transform as the cache: the same vectors, row for row
    from pipeline.evaluate import reference_embeddings

    rsa_image, rsa_text = reference_embeddings(direct, str(folder), len(good), 10**6)
    np.testing.assert_allclose(rsa_image.numpy(), got_image, atol=1e-6)
    np.testing.assert_allclose(rsa_text.numpy(), got_text, atol=1e-6)

    assert check_teacher_cache(folder, cached, teacher_fingerprint(direct)) is True
    # the same weights fed other pixels (lite-minilm-64 vs -128 share weights) are a different teacher
    bigger = replace(direct, preprocess_cfg={**direct.preprocess_cfg, "size": (64, 64)})
    with pytest.raises(DataError, match=f"{cached.teacher_fingerprint}.*{teacher_fingerprint(bigger)}"):
        check_teacher_cache(folder, cached, teacher_fingerprint(bigger))
    with torch.no_grad():
        model.logit_scale.add_(1e-3)  # any change of any weight is a different teacher
    with pytest.raises(DataError, match=f"{cached.teacher_fingerprint}.*{teacher_fingerprint(direct)}"):
        check_teacher_cache(folder, cached, teacher_fingerprint(direct))


# -------------------------------------------------------------------------------------------------- Ray Data
@pytest.mark.ray
def test_ray_workers_give_the_same_rows_as_in_process(tmp_path, capsys):
    import ray

    from pipeline.ray_env import start_local_ray

    if not ray.is_initialized():
        start_local_ray(4, log_to_driver=False, dashboard=False)
    src = tmp_path / "src"
    for c, cls in enumerate(("cat", "dog", "eel")):
        (src / cls).mkdir(parents=True)
        for i in range(5):
            (src / cls / f"{i}.png").write_bytes(image_bytes(color=(c * 80, i * 40, 0)))
    (src / "dog" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (src / "eel" / "empty.png").write_bytes(b"")
    local = convert_imagefolder(src, tmp_path / "local", rows_per_shard=4)
    distributed = convert_imagefolder(src, tmp_path / "ray", rows_per_shard=4, workers=1)
    assert ray.is_initialized()  # a running Ray instance is used and left running
    assert distributed.num_rows == local.num_rows == 15
    assert distributed.skipped == local.skipped == {"total": 2, "empty": 1, "undecodable": 1}
    assert distributed.classnames == local.classnames
    rows_local = [(r["key"], r["label"], r["image"]) for r in iter_rows(tmp_path / "local")]
    rows_ray = [(r["key"], r["label"], r["image"]) for r in iter_rows(tmp_path / "ray")]
    assert sorted(rows_ray) == sorted(rows_local)
    assert rows_ray == rows_local and distributed.fingerprint == local.fingerprint  # same order, same bytes
    assert len(skip_lines(capsys.readouterr().out)) == 4


def test_cache_teacher_refuses_webdataset_tars_and_leaves_them(tmp_path):
    folder = tmp_path / "wds"
    folder.mkdir()
    tar = write_tar(folder / "00000.tar", {"a.jpg": encode_png(Image.new("RGB", (8, 8))), "a.txt": b"a cat"})
    before = tar.read_bytes()
    with pytest.raises(DataError, match=r"wds: holds webdataset tars; .*dive data wds"):
        cache_teacher(folder, ModelSettings())
    assert tar.read_bytes() == before and sorted(p.name for p in folder.iterdir()) == ["00000.tar"]


def test_converters_do_not_import_ray_unless_asked() -> None:
    """``dive data`` with ``--workers 0`` (the default) loads none of Ray: a fresh interpreter proves it."""
    import subprocess

    code = (
        "import sys, pipeline.convert.cli, pipeline.data.transforms; "
        "assert 'ray' not in sys.modules, sorted(m for m in sys.modules if m.startswith('ray'))[:5]"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------------------------------------- reliability
def test_a_latin1_captions_file_names_file_line_and_the_encoding_option_that_fixes_it(tmp_path, capsys):
    (tmp_path / "x.png").write_bytes(image_bytes())
    src = tmp_path / "c.csv"
    src.write_bytes("image,caption\nx.png,a photo\nx.png,une cafetière\n".encode("latin-1"))
    assert main(["captions", str(src), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{src}:3: not valid utf-8-sig (byte 0xe8)" in err and "--encoding latin-1" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
    assert main(["captions", str(src), str(tmp_path / "out"), "--encoding", "latin-1"]) == 0
    assert [r["caption"] for r in iter_rows(tmp_path / "out")] == ["a photo", "une cafetière"]


def test_wds_zero_byte_and_latin1_members_skip_only_their_sample(tmp_path, capsys):
    """A 0-byte image member used to be read to the end of the tar (swallowing the samples after it as one
    undecodable image); a latin-1 caption was stored as mojibake."""
    png = image_bytes()
    tar = write_tar(
        tmp_path / "00000.tar",
        {
            "a.png": b"",
            "a.txt": b"empty image",
            "b.png": png,
            "b.txt": "une cafeti\xe8re".encode("latin-1"),
            "c.png": png,
            "c.txt": b"kept",
        },
    )
    manifest = convert_wds(tar, tmp_path / "out")
    assert [(r["key"], r["caption"]) for r in iter_rows(tmp_path / "out")] == [("c", "kept")]
    assert manifest.skipped == {"total": 2, "bad_text": 1, "empty": 1}
    lines = skip_lines(capsys.readouterr().out)
    assert any("00000.tar:b" in line and "--encoding" in line for line in lines)
    latin = convert_wds(tar, tmp_path / "latin", encoding="latin-1")
    assert [r["caption"] for r in iter_rows(tmp_path / "latin")] == ["une cafetière", "kept"]
    assert latin.skipped == {"total": 1, "empty": 1}


def test_a_failed_close_leaves_no_temp_folder_and_the_old_data_intact(tmp_path, monkeypatch):
    from pipeline.data import format as fmt

    out = tmp_path / "out"
    with ShardWriter(out, Manifest("d", CAPTIONED)) as writer:
        writer.add({"image": image_bytes(), "caption": "old"})
    before = sorted(p.name for p in tmp_path.iterdir())

    def disk_full(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fmt, "write_manifest", disk_full)
    with pytest.raises(OSError, match="No space left"):
        with ShardWriter(out, Manifest("d", CAPTIONED), overwrite=True) as writer:
            writer.add({"image": image_bytes(), "caption": "new"})
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temp folder left behind
    assert [r["caption"] for r in iter_rows(out)] == ["old"]  # --overwrite kept the old set


def test_overwrite_keeps_the_old_data_until_the_new_set_is_complete(tmp_path):
    out = tmp_path / "out"
    with ShardWriter(out, Manifest("d", CAPTIONED)) as writer:
        writer.add({"image": image_bytes(), "caption": "old"})
    with ShardWriter(out, Manifest("d", CAPTIONED), overwrite=True) as writer:
        writer.add({"image": image_bytes(), "caption": "new"})
        assert [r["caption"] for r in iter_rows(out)] == [
            "old"
        ]  # still readable while the new one is written
    assert [r["caption"] for r in iter_rows(out)] == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no old copy, temp folder or lock file left


def test_a_second_writer_to_the_same_output_fails_clearly(tmp_path):
    out = tmp_path / "out"
    with ShardWriter(out, Manifest("d", CAPTIONED)) as first:
        with pytest.raises(DataError, match=r"out: another conversion is writing this folder \(lock"):
            ShardWriter(out, Manifest("d", CAPTIONED), overwrite=True)
        first.add({"image": image_bytes(), "caption": "first"})
    assert [r["caption"] for r in iter_rows(out)] == ["first"]
    with ShardWriter(out, Manifest("d", CAPTIONED), overwrite=True) as again:  # the lock is released
        again.add({"image": image_bytes(), "caption": "again"})
    assert [r["caption"] for r in iter_rows(out)] == ["again"]


# --------------------------------------------------------------------------------- inputs that are mistakes
@pytest.mark.parametrize(
    ("folders", "match"),
    [
        (("Cat", "cat", "dog"), r"class names 'Cat' \(folder Cat/\) and 'cat' \(folder cat/\)"),
        (("cat x", "cat_x"), r"class names 'cat x' \(folder cat x/\) and 'cat x' \(folder cat_x/\)"),
    ],
    ids=["case", "underscore-is-a-space"],
)
def test_imagefolder_refuses_class_folders_that_name_the_same_class(tmp_path, capsys, folders, match):
    src = tmp_path / "src"
    for name in folders:
        (src / name).mkdir(parents=True)
        (src / name / "x.png").write_bytes(image_bytes())
    with pytest.raises(DataError, match=rf"{src}: {match} are the same name up to case"):
        convert_imagefolder(src, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no output, no temp folder
    assert main(["imagefolder", str(src), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert f"(folder {folders[0]}/)" in err and f"(folder {folders[1]}/)" in err
    assert not (tmp_path / "out").exists()


def test_wds_classnames_file_with_the_same_name_twice_is_refused_naming_the_lines(tmp_path, capsys):
    tar = write_tar(tmp_path / "train.tar", {"a.png": image_bytes(), "a.cls": b"0"})
    names = tmp_path / "classes.txt"
    names.write_text("# pets\nCat\ndog\n cat \n")
    with pytest.raises(DataError, match=r"classnames: class names 'dog' \(label 0\) and 'Dog ' \(label 1\)"):
        convert_wds(tar, tmp_path / "out", label_ext="cls", classnames=["dog", "Dog "])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes.txt", "train.tar"]  # nothing written
    argv = ["wds", str(tar), str(tmp_path / "out"), "--label-ext", "cls", "--classnames", str(names)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert f"{names}: class names 'Cat' (line 2) and 'cat' (line 4)" in err
    assert not (tmp_path / "out").exists()


def _outside_rows(tmp_path: Path) -> tuple[Path, Path]:
    """A captions file in set/ whose third row leaves set/ by ``..``; images both inside and outside."""
    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "in.png").write_bytes(image_bytes())
    (tmp_path / "secret.png").write_bytes(image_bytes(color=(1, 2, 3)))
    meta = folder / "captions.csv"
    meta.write_text("image,caption\nin.png,inside\nin.png,again\n../secret.png,outside\n")
    return folder, meta


def test_captions_path_escaping_the_base_folder_is_refused_before_anything_is_written(tmp_path, capsys):
    folder, meta = _outside_rows(tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(DataError) as err:
        convert_captions(meta, tmp_path / "out")
    message = str(err.value)
    assert message.startswith(f"{meta}:4: image path '../secret.png' resolves to {tmp_path / 'secret.png'}")
    assert f"outside the base folder {folder}" in message and "--allow-outside-base" in message
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # no output folder, no temp folder
    assert main(["captions", str(meta), str(tmp_path / "out")]) == 2
    err_line = capsys.readouterr().err
    assert err_line.startswith("error: ") and len(err_line.strip().splitlines()) == 1
    assert "captions.csv:4" in err_line and "--allow-outside-base" in err_line
    assert not (tmp_path / "out").exists()


def test_captions_absolute_path_and_escaping_symlink_are_refused_too(tmp_path, capsys):
    folder, meta = _outside_rows(tmp_path)
    (folder / "link.png").symlink_to(tmp_path / "secret.png")
    outside = tmp_path / "secret.png"
    for image in (str(outside), "link.png"):
        meta.write_text(f"image,caption\nin.png,inside\n{image},outside\n")
        with pytest.raises(DataError) as err:
            convert_captions(meta, tmp_path / "out")
        assert f"captions.csv:3: image path '{image}' resolves to {outside}, outside" in str(err.value)
    # --base-dir moves the boundary: a path inside the file's folder is outside an explicit base
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    meta.write_text("image,caption\n../set/in.png,inside\n")
    assert main(["captions", str(meta), str(tmp_path / "out"), "--base-dir", str(pictures)]) == 2
    assert f"outside the base folder {pictures}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_allow_outside_base_reads_the_images_outside(tmp_path, capsys):
    _, meta = _outside_rows(tmp_path)
    manifest = convert_captions(meta, tmp_path / "out", allow_outside_base=True)
    assert manifest.num_rows == 3
    assert [r["caption"] for r in iter_rows(tmp_path / "out")] == ["inside", "again", "outside"]
    assert main(["captions", str(meta), str(tmp_path / "o2"), "--allow-outside-base"]) == 0
    assert [r["key"] for r in iter_rows(tmp_path / "o2")] == ["in.png", "in.png", "../secret.png"]
