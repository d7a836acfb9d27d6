"""The shard format: all-or-nothing writing, fingerprints, schema checks, decoding rules, teacher caches."""

from __future__ import annotations

import io
import json
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.data.format import (
    CAPTIONED,
    EMPTY,
    LABELLED,
    MANIFEST,
    TOO_LARGE,
    UNDECODABLE,
    DataError,
    Manifest,
    ShardWriter,
    check_classnames,
    check_dataset,
    check_teacher_cache,
    decode_image,
    encode_png,
    iter_rows,
    read_manifest,
    shard_files,
    write_manifest,
)
from tests.helpers import write_tar


def png(size=(8, 8), color=(200, 30, 30)) -> bytes:
    return encode_png(Image.new("RGB", size, color))


def captioned_rows(n: int, tag: str = "") -> list[dict]:
    return [
        {"image": png(color=(i * 20, 0, 0)), "caption": f"red square {i}{tag}", "key": f"k{i:03d}"}
        for i in range(n)
    ]


def write_captioned(
    out: Path, rows: list[dict], rows_per_shard: int = 4, overwrite: bool = False
) -> Manifest:
    with ShardWriter(out, Manifest(out.name, CAPTIONED, source="test"), rows_per_shard, overwrite) as writer:
        for row in rows:
            writer.add(row)
    return writer.manifest


# --------------------------------------------------------------------------------------------------- writing
def test_writer_splits_rows_over_shards_and_writes_the_manifest(tmp_path):
    out = tmp_path / "ds"
    rows = captioned_rows(10)
    with ShardWriter(out, Manifest("ds", CAPTIONED, source="unit test"), rows_per_shard=4) as writer:
        for row in rows:
            writer.add(row)
        writer.skip(EMPTY)
        writer.skip(UNDECODABLE, 2)
    files = shard_files(out)
    assert [f.name for f in files] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert [pq.ParquetFile(f).metadata.num_rows for f in files] == [4, 4, 2]
    manifest = read_manifest(out)
    assert manifest == writer.manifest
    assert manifest.num_rows == 10
    assert len(manifest.fingerprint) == 16 and int(manifest.fingerprint, 16) >= 0
    assert manifest.skipped == {"total": 3, "empty": 1, "undecodable": 2}
    assert manifest.source == "unit test"
    assert list(iter_rows(out)) == rows
    assert check_dataset(out, CAPTIONED).num_rows == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temp folder left


def test_fingerprint_is_stable_for_identical_content_and_changes_with_content(tmp_path):
    first = write_captioned(tmp_path / "a", captioned_rows(6))
    again = write_captioned(tmp_path / "b", captioned_rows(6))
    rewritten = write_captioned(tmp_path / "a", captioned_rows(6), overwrite=True)
    changed = write_captioned(tmp_path / "c", captioned_rows(6, tag="!"))
    resharded = write_captioned(tmp_path / "d", captioned_rows(6), rows_per_shard=3)
    shards_a = [f.read_bytes() for f in shard_files(tmp_path / "a")]
    assert shards_a == [f.read_bytes() for f in shard_files(tmp_path / "b")]  # same bytes …
    assert first.fingerprint == again.fingerprint == rewritten.fingerprint  # … same fingerprint
    assert changed.fingerprint != first.fingerprint
    assert resharded.fingerprint != first.fingerprint


def test_non_empty_output_is_refused_without_overwrite_and_left_intact(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(DataError, match="not empty.*--overwrite"):
        ShardWriter(out, Manifest("ds", CAPTIONED))
    assert [p.name for p in out.iterdir()] == ["precious.txt"]
    assert (out / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_an_exception_inside_the_with_leaves_no_output_and_no_temp_folder(tmp_path):
    out = tmp_path / "ds"
    with pytest.raises(RuntimeError, match="boom"):
        with ShardWriter(out, Manifest("ds", CAPTIONED), rows_per_shard=2) as writer:
            for row in captioned_rows(5):  # two shards are already flushed to the temp folder
                writer.add(row)
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []

    old = write_captioned(out, captioned_rows(3))  # an existing dataset survives a failed overwrite
    with pytest.raises(RuntimeError):
        with ShardWriter(out, Manifest("ds", CAPTIONED), overwrite=True) as writer:
            writer.add(captioned_rows(1)[0])
            raise RuntimeError("boom")
    assert read_manifest(out) == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


# ---------------------------------------------------------------------------------------------------- checks
def write_raw(folder: Path, table: pa.Table | None, manifest: Manifest | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if table is not None:
        pq.write_table(table, folder / "part-00000.parquet")
    if manifest is not None:
        write_manifest(folder, manifest)
    return folder


def labelled_table(label_type: pa.DataType | None = None) -> pa.Table:
    label_type = label_type or pa.int32()
    labels = [0, 1] if pa.types.is_integer(label_type) else ["0", "1"]
    return pa.table({"image": pa.array([png(), png()], pa.binary()), "label": pa.array(labels, label_type)})


LABELLED_MANIFEST = Manifest("ds", LABELLED, num_rows=2, classnames=["cat", "dog"], templates=["a {}."])
CAPTIONED_MANIFEST = Manifest("ds", CAPTIONED, num_rows=2)


@pytest.mark.parametrize(
    "table, manifest, kind, match",
    [
        (labelled_table(), None, None, "missing manifest"),
        (labelled_table(), Manifest("ds", LABELLED, num_rows=0, classnames=["a"]), None, "empty"),
        (None, LABELLED_MANIFEST, None, r"no \*\.parquet shards"),
        (
            labelled_table().drop_columns(["label"]),
            LABELLED_MANIFEST,
            None,
            r"part-00000\.parquet: missing column 'label'",
        ),
        (
            labelled_table(pa.string()),
            LABELLED_MANIFEST,
            None,
            r"part-00000\.parquet: column 'label' has type string",
        ),
        (
            pa.table(
                {"image": pa.array([png(), png()], pa.binary()), "caption": pa.array([1, 2], pa.int64())}
            ),
            CAPTIONED_MANIFEST,
            CAPTIONED,
            "column 'caption' has type int64, expected a string",
        ),
        (labelled_table(), LABELLED_MANIFEST, CAPTIONED, "expected a captioned dataset, got kind 'labelled'"),
        (
            labelled_table(),
            Manifest("ds", LABELLED, num_rows=3, classnames=["cat", "dog"]),
            None,
            r"'num_rows' is 3 but the 1 shard\(s\) hold 2 rows",
        ),
        (
            labelled_table(),
            Manifest("ds", LABELLED, num_rows=2, classnames=["cat", "dog"], templates=["a photo"]),
            None,
            r"'templates' must each hold one '\{\}' or '\{c\}'.*'a photo'",
        ),
        (
            pa.table(
                {"image": pa.array([png(), png()], pa.binary()), "label": pa.array([0, None], pa.int32())}
            ),
            LABELLED_MANIFEST,
            None,
            r"part-00000\.parquet: row group 0 has 1 null value\(s\) in column 'label'",
        ),
        (
            pa.table({"image": pa.array([png(), png()], pa.binary()), "label": pa.array([0, 2], pa.int32())}),
            LABELLED_MANIFEST,
            None,
            r"part-00000\.parquet: row group 0 has labels in \[0, 2\].*expected 0 … 1",
        ),
    ],
    ids=[
        "no-manifest",
        "empty",
        "no-shards",
        "missing-column",
        "label-as-string",
        "caption-as-int",
        "wrong-kind",
        "num-rows-wrong",
        "template-without-braces",
        "null-label",
        "label-out-of-range",
    ],
)
def test_check_dataset_errors_name_the_file_and_the_problem(tmp_path, table, manifest, kind, match):
    folder = write_raw(tmp_path / "ds", table, manifest)
    with pytest.raises(DataError, match=match) as err:
        check_dataset(folder, kind)
    assert str(folder) in str(err.value)


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("classnames", "cat,dog", r"'classnames' must be a list of strings, got 'cat,dog'"),
        ("num_rows", "2", r"'num_rows' must be an integer >= 0, got '2'"),
        ("num_rows", True, r"'num_rows' must be an integer >= 0, got True"),
        ("templates", [1], r"'templates' must be a list of strings"),
    ],
)
def test_a_manifest_value_of_the_wrong_json_type_is_refused_naming_the_key(tmp_path, key, value, match):
    folder = write_raw(tmp_path / "ds", labelled_table(), LABELLED_MANIFEST)
    raw = json.loads((folder / "dataset.json").read_text())
    (folder / "dataset.json").write_text(json.dumps({**raw, key: value}))
    with pytest.raises(DataError, match=match) as err:
        check_dataset(folder, LABELLED)
    assert str(folder / "dataset.json") in str(err.value)


@pytest.mark.parametrize(
    ("names", "match"),
    [
        (["Cat", "dog", "cat"], r"class names 'Cat' \(label 0\) and 'cat' \(label 2\)"),
        (["cat", "cat "], r"class names 'cat' \(label 0\) and 'cat ' \(label 1\)"),
        (["dog", "  DOG"], r"class names 'dog' \(label 0\) and '  DOG' \(label 1\)"),
        (["cat", "cat"], r"class names 'cat' \(label 0\) and 'cat' \(label 1\)"),
    ],
    ids=["case", "trailing-space", "leading-space-and-case", "exact"],
)
def test_a_manifest_naming_one_class_twice_is_refused_naming_dataset_json_and_both(tmp_path, names, match):
    """An existing dataset.json (hand-written, or converted before this check) is refused by the check every
    run does on the driver before Ray starts."""
    folder = write_raw(tmp_path / "ds", labelled_table(), replace(LABELLED_MANIFEST, classnames=names))
    with pytest.raises(DataError, match=rf"{folder / MANIFEST}: {match} are the same name up to case"):
        check_dataset(folder, LABELLED)
    with pytest.raises(DataError, match=match):
        read_manifest(folder)


def test_a_labelled_webdataset_manifest_naming_one_class_twice_is_refused(tmp_path):
    folder = tmp_path / "wds"
    folder.mkdir()
    write_tar(folder / "00000.tar", {"a.jpg": png(), "a.cls": b"0"})
    write_manifest(folder, Manifest("pets", LABELLED, classnames=["Cat", "cat"], templates=["a {}."]))
    with pytest.raises(DataError, match=r"wds/dataset\.json: class names 'Cat' \(label 0\) and 'cat'"):
        check_dataset(folder, LABELLED)


def test_class_names_that_differ_beyond_case_and_spaces_pass():
    check_classnames(["cat", "cats", "big cat", "cat-fish", "Straße"], "x")
    with pytest.raises(DataError, match=r"x: class names 'Straße' \(a\) and 'STRASSE' \(b\)"):
        check_classnames(["Straße", "STRASSE"], "x", ["a", "b"])  # casefold, not lower: ß is ss


def test_labels_are_checked_in_every_row_group_even_without_statistics(tmp_path):
    folder = write_raw(tmp_path / "ds", None, LABELLED_MANIFEST)
    table = pa.table({"image": pa.array([png(), png()], pa.binary()), "label": pa.array([1, 5], pa.int32())})
    pq.write_table(table, folder / "part-00000.parquet", row_group_size=1, write_statistics=False)
    with pytest.raises(DataError, match=r"row group 1 has labels in \[5, 5\]"):
        check_dataset(folder, LABELLED)


def test_check_dataset_accepts_a_well_formed_labelled_set(tmp_path):
    folder = write_raw(tmp_path / "ds", labelled_table(), LABELLED_MANIFEST)
    assert check_dataset(folder, LABELLED).classnames == ["cat", "dog"]


def test_column_map_reads_img2dataset_style_columns(tmp_path):
    table = pa.table(
        {"jpg": pa.array([png(), png()], pa.binary()), "txt": ["a cat", "a dog"], "key": ["0", "1"]}
    )
    folder = write_raw(tmp_path / "ds", table, CAPTIONED_MANIFEST)
    assert check_dataset(folder, CAPTIONED, {"jpg": "image", "txt": "caption"}).num_rows == 2
    with pytest.raises(DataError, match=r"part-00000\.parquet: missing column 'image'"):
        check_dataset(folder, CAPTIONED)
    with pytest.raises(DataError, match="missing column 'caption'"):
        check_dataset(folder, CAPTIONED, {"jpg": "image"})


# -------------------------------------------------------------------------------------------------- decoding
def png_with_header_size(width: int, height: int) -> bytes:
    """A 1×1 PNG whose IHDR claims ``width × height`` (valid CRC): only a header check finds it too large."""
    data = bytearray(png(size=(1, 1)))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_decode_image_returns_rgb_or_the_skip_reason():
    img, reason = decode_image(encode_png(Image.new("L", (6, 4), 128)), max_pixels=100)
    assert reason is None and img.mode == "RGB" and img.size == (6, 4)
    good = png(size=(32, 32))
    assert decode_image(good[: len(good) // 2], 10_000) == (None, UNDECODABLE)  # truncated
    assert decode_image(b"not an image at all", 10_000) == (None, UNDECODABLE)
    assert decode_image(b"", 10_000) == (None, EMPTY)
    assert decode_image(None, 10_000) == (None, EMPTY)
    assert decode_image(good, max_pixels=32 * 32 - 1) == (None, TOO_LARGE)
    assert decode_image(good, max_pixels=32 * 32)[1] is None


def test_decode_image_rejects_huge_images_from_the_header():
    big = io.BytesIO()
    Image.new("1", (5000, 5000)).save(big, format="PNG")  # 25 Mpx, a few kB, made in milliseconds
    assert decode_image(big.getvalue(), max_pixels=20_000_000) == (None, TOO_LARGE)
    # 100 Mpx claimed by the header over 1 px of data: rejected before decoding (else: undecodable)
    assert decode_image(png_with_header_size(10_000, 10_000), max_pixels=64_000_000) == (None, TOO_LARGE)
    assert decode_image(png_with_header_size(100_000, 100_000), max_pixels=64_000_000) == (None, TOO_LARGE)
    assert decode_image(png_with_header_size(20, 20), max_pixels=64_000_000) == (None, UNDECODABLE)


# --------------------------------------------------------------------------------------------- teacher cache
def test_check_teacher_cache(tmp_path):
    cached = Manifest("ds", CAPTIONED, num_rows=2, teacher_fingerprint="aaaa1111", teacher_dim=64)
    assert check_teacher_cache(tmp_path, cached, "aaaa1111") is True
    assert check_teacher_cache(tmp_path, Manifest("ds", CAPTIONED, num_rows=2), "aaaa1111") is False
    with pytest.raises(DataError, match="aaaa1111.*bbbb2222") as err:
        check_teacher_cache(tmp_path, cached, "bbbb2222")
    assert str(tmp_path / MANIFEST) in str(err.value)


def test_one_column_map_serves_folders_with_mapped_and_schema_names(tmp_path):
    """data.column_map applies to every dataset of a run; a folder already in schema names still reads."""
    one = Manifest("ds", CAPTIONED, num_rows=1)
    mapped = write_raw(tmp_path / "i2d", pa.table({"jpg": pa.array([png()], pa.binary()), "txt": ["a"]}), one)
    plain = write_raw(tmp_path / "plain", pa.table({"image": pa.array([png()]), "caption": ["b"]}), one)
    cmap = {"jpg": "image", "txt": "caption"}
    for folder, caption in [(mapped, "a"), (plain, "b")]:
        assert check_dataset(folder, CAPTIONED, cmap).num_rows == 1
        assert list(iter_rows(folder, ["caption"], cmap)) == [{"caption": caption}]


# ------------------------------------------------------------------------------------------------ webdataset
def test_webdataset_folder_reads_without_manifest_or_conversion(tmp_path):
    folder = tmp_path / "wds"
    folder.mkdir()
    write_tar(folder / "00000.tar", {"a.jpg": png(), "a.txt": b"a red cat", "a.json": b"{}", "b.jpg": png()})
    write_tar(
        folder / "00001.tar", {"c.jpg": png(color=(0, 0, 255)), "c.txt": "un chat bleu \u00e9".encode()}
    )
    (folder / "00000.parquet").write_bytes(b"img2dataset metadata, not a shard")  # tars win over .parquet
    manifest = check_dataset(folder, CAPTIONED)
    assert (manifest.kind, manifest.num_rows, manifest.name) == (CAPTIONED, 3, "wds")
    rows = list(iter_rows(folder))
    assert [r["caption"] for r in rows] == ["a red cat", None, "un chat bleu \u00e9"]
    assert rows[0]["image"] == png() and set(rows[0]) == {"image", "caption"}
    again = check_dataset(folder, CAPTIONED)
    assert again.fingerprint == manifest.fingerprint
    write_tar(folder / "00001.tar", {"c.jpg": png(color=(0, 255, 0)), "c.txt": b"changed", "d.jpg": png()})
    assert check_dataset(folder, CAPTIONED).fingerprint != manifest.fingerprint


def test_webdataset_members_follow_the_column_map_and_missing_ones_name_the_tar(tmp_path):
    folder = tmp_path / "wds"
    folder.mkdir()
    write_tar(folder / "00000.tar", {"a.png": png(), "a.caption": b"a cat"})
    with pytest.raises(
        DataError, match=r"00000\.tar: no member with extension \.jpg .*'image'.*\['caption', 'png'\]"
    ):
        check_dataset(folder, CAPTIONED)
    cmap = {"png": "image", "caption": "caption"}
    assert check_dataset(folder, CAPTIONED, cmap).num_rows == 1
    assert list(iter_rows(folder, None, cmap)) == [{"image": png(), "caption": "a cat"}]


def test_labelled_webdataset_needs_a_manifest_and_parses_labels(tmp_path):
    folder = tmp_path / "wds"
    folder.mkdir()
    write_tar(folder / "00000.tar", {"a.jpg": png(), "a.cls": b"1", "b.jpg": png(), "b.cls": b"dog"})
    with pytest.raises(
        DataError, match=r"wds/dataset\.json: missing manifest; a labelled webdataset .*classnames"
    ):
        check_dataset(folder, LABELLED)
    write_manifest(folder, Manifest("pets", LABELLED, classnames=["cat", "dog"], templates=["a {}."]))
    manifest = check_dataset(folder, LABELLED)
    assert manifest.num_rows == 2 and manifest.classnames == ["cat", "dog"]
    assert [r["label"] for r in iter_rows(folder, ["label"])] == [1, None]
    with pytest.raises(DataError, match="expected a captioned dataset"):
        check_dataset(folder, CAPTIONED)


def test_webdataset_with_scattered_sample_members_fails_the_check_naming_the_tar(tmp_path):
    folder = tmp_path / "wds"
    folder.mkdir()
    write_tar(folder / "00007.tar", {"a.jpg": png(), "b.jpg": png(), "a.txt": b"a", "b.txt": b"b"})
    with pytest.raises(DataError, match=r"00007\.tar: the members of sample 'a' are not adjacent"):
        check_dataset(folder, CAPTIONED)


def test_a_corrupt_parquet_shard_is_refused_naming_it(tmp_path):
    folder = write_raw(tmp_path / "ds", None, LABELLED_MANIFEST)
    (folder / "part-00000.parquet").write_bytes(b"PAR1 this is not a parquet file")
    with pytest.raises(DataError, match=r"part-00000\.parquet: not a readable Parquet file"):
        check_dataset(folder, LABELLED)
