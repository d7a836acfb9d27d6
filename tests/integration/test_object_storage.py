"""Datasets, converters, the teacher cache, checkpoints and preflight against a real S3-compatible store
(SeaweedFS on 127.0.0.1, started once per session by the ``s3_store`` fixture)."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from PIL import Image

from dive.config import ConfigError
from pipeline import storage
from pipeline.data.format import (
    CAPTIONED,
    LABELLED,
    DataError,
    Manifest,
    ShardWriter,
    check_dataset,
    content_fingerprint,
    iter_rows,
    shard_files,
)
from tests.helpers import write_tar
from tests.services import upload_sets


def png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (12, 10), (value, 255 - value, 7)).save(buf, format="PNG")
    return buf.getvalue()


def labelled_rows(n: int) -> list[dict]:
    return [{"image": png(i * 9 % 256), "label": i % 2, "key": f"k{i:03d}"} for i in range(n)]


def fresh(store, name: str) -> str:
    """A URI no other test uses (the store lives for the whole session)."""
    return store.uri("sets", f"{name}-{uuid.uuid4().hex[:8]}")


def write_set(uri: str, rows: list[dict], **kwargs) -> Manifest:
    manifest = Manifest("shapes", LABELLED, classnames=["a", "b"], templates=["a photo of a {}."])
    with ShardWriter(uri, manifest, rows_per_shard=4, **kwargs) as writer:
        for row in rows:
            writer.add(row)
    return writer.manifest


def test_a_set_written_to_the_bucket_reads_back_row_for_row(s3_env):
    uri = fresh(s3_env, "round-trip")
    rows = labelled_rows(10)
    written = write_set(uri, rows)
    manifest = check_dataset(uri, LABELLED)
    assert manifest.num_rows == 10 and manifest.fingerprint == written.fingerprint
    # The fingerprint hashed on upload is the one a reader computes from the objects.
    assert content_fingerprint(shard_files(uri)) == manifest.fingerprint
    assert [r["key"] for r in iter_rows(uri)] == [r["key"] for r in rows]
    assert [r["image"] for r in iter_rows(uri, ["image"])] == [r["image"] for r in rows]
    assert s3_env.keys(uri.removeprefix(f"s3://{s3_env.bucket}/")) == [
        "dataset.json",
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    staging = [k for k in s3_env.keys("sets") if ".tmp-" in k]
    assert staging == []


def test_a_remote_set_appears_whole_or_not_at_all(s3_env):
    """Shards first, dataset.json last: while a writer runs (shards already uploaded) a reader sees no set, or the
    old one; a failed write leaves the old set as it was and nothing staged."""
    uri = fresh(s3_env, "atomic")
    manifest = Manifest("shapes", LABELLED, classnames=["a", "b"])
    with ShardWriter(uri, manifest, rows_per_shard=2) as writer:
        for row in labelled_rows(6):
            writer.add(row)
        with pytest.raises(DataError, match="no such dataset folder|missing manifest"):
            check_dataset(uri, LABELLED)
    assert check_dataset(uri, LABELLED).num_rows == 6
    with pytest.raises(DataError, match="exists and is not empty"):
        write_set(uri, labelled_rows(2))

    class Interrupted(Exception):
        pass

    with pytest.raises(Interrupted):
        with ShardWriter(uri, Manifest("new", LABELLED, classnames=["a", "b"]), 2, overwrite=True) as w:
            for row in labelled_rows(8):
                w.add(row)
            assert check_dataset(uri, LABELLED).num_rows == 6  # the old set, while the new one uploads
            raise Interrupted
    assert check_dataset(uri, LABELLED).num_rows == 6
    assert [k for k in s3_env.keys("sets") if ".tmp-" in k] == []
    write_set(uri, labelled_rows(3), overwrite=True)
    assert check_dataset(uri, LABELLED).num_rows == 3 and len(shard_files(uri)) == 1


def test_converters_write_into_the_bucket_and_cache_teacher_rewrites_it_in_place(
    s3_env, tmp_path, monkeypatch
):
    from pipeline.convert.cli import main

    monkeypatch.setenv("DIVE_NO_PROGRESS", "1")
    monkeypatch.chdir(tmp_path)  # a remote output's log goes to the working directory
    uri = fresh(s3_env, "captions")
    (tmp_path / "src").mkdir()
    members = {}
    for i in range(5):
        members[f"{i:03d}.jpg"] = png(30 * i)
        members[f"{i:03d}.txt"] = f"caption {i}".encode()
    tar = write_tar(tmp_path / "src" / "shard.tar", members)
    assert main(["wds", str(tar.parent), uri]) == 0
    manifest = check_dataset(uri, CAPTIONED)
    assert manifest.num_rows == 5
    assert main(["cache-teacher", uri, "--model-name", "dive-tiny"]) == 0
    cached = check_dataset(uri, CAPTIONED)
    assert cached.teacher_dim > 0 and cached.num_rows == 5
    vectors = [r["teacher_image"] for r in iter_rows(uri, ["teacher_image"])]
    assert len(vectors) == 5 and all(len(v) == cached.teacher_dim for v in vectors)
    assert (tmp_path / f"{storage.basename(uri)}.cache-teacher.log").is_file()
    assert main(["wds", str(tar.parent), uri]) == 2  # exists: refused without --overwrite


def test_webdataset_tars_in_the_bucket_are_checked_and_read_in_place(s3_env, tmp_path):
    uri = fresh(s3_env, "wds")
    members = {}
    for i in range(4):
        members[f"s{i}.jpg"] = png(50 * i)
        members[f"s{i}.txt"] = f"caption {i}".encode()
    tar = write_tar(tmp_path / "a.tar", members)
    fs, path = storage.resolve(uri)
    pafs.copy_files(str(tar), f"{path}/a.tar", destination_filesystem=fs)
    manifest = check_dataset(uri, CAPTIONED)
    assert manifest.num_rows == 4 and manifest.source == uri
    assert [r["caption"] for r in iter_rows(uri, ["caption"])] == [f"caption {i}" for i in range(4)]


# ---------------------------------------------------------------------------------------------- preflight
def _cfg(**values):
    from dive.config import Config

    cfg = Config()
    for key, value in values.items():
        section, name = key.split("__")
        setattr(getattr(cfg, section), name, value)
    return cfg


@pytest.mark.parametrize(
    "case, match",
    [
        ("endpoint down", r"run\.storage_path: s3://dive/runs: the object store does not answer"),
        ("missing bucket", r"run\.storage_path: s3://no-such-bucket/runs: the bucket does not exist"),
        ("wrong key", r"run\.storage_path: s3://dive/runs: the store refused the credentials"),
        ("read-only key", r"run\.storage_path: s3://dive/runs: access denied"),
    ],
)
def test_preflight_refuses_an_unusable_storage_uri_in_one_line_naming_key_and_uri(
    s3_env, monkeypatch, case, match
):
    from pipeline.preflight import check_storage

    uri = "s3://no-such-bucket/runs" if case == "missing bucket" else "s3://dive/runs"
    if case == "endpoint down":
        from pipeline.ray_env import free_port

        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    elif case == "wrong key":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    elif case == "read-only key":
        for key, value in s3_env.env(s3_env.read_only).items():
            monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=match) as err:
        check_storage(_cfg(run__storage_path=uri))
    assert "\n" not in str(err.value)


def test_preflight_refuses_a_dataset_uri_whose_bucket_is_missing_and_reads_with_a_read_only_key(
    s3_env, monkeypatch
):
    from pipeline.preflight import check_storage

    with pytest.raises(ConfigError, match=r"data\.id_train: s3://nope/train: the bucket does not exist"):
        check_storage(_cfg(data__id_train="s3://nope/train"))
    uri = fresh(s3_env, "readable")
    write_set(uri, labelled_rows(2))
    for key, value in s3_env.env(s3_env.read_only).items():
        monkeypatch.setenv(key, value)
    check_storage(_cfg(data__id_train=uri))  # reading needs no write permission
    assert check_dataset(uri, LABELLED).num_rows == 2


# ---------------------------------------------------------------------------------------------- training
@pytest.mark.ray
@pytest.mark.slow
def test_the_demo_trains_from_the_bucket_tracked_on_postgresql_and_resumes_from_the_bucket(
    ray_session, s3_env, mlflow_production, demo, tmp_path, monkeypatch
):
    """The production shape on one machine: every dataset read from the bucket by Ray Data's readers, checkpoints
    written to it (``run.storage_path``), MLflow on PostgreSQL with its artifacts proxied into the bucket; then
    ``--resume`` continues the same MLflow run from the bucket's newest checkpoint, every step logged once."""
    from mlflow.tracking import MlflowClient

    from pipeline.train import main, prepare_config, run
    from tests.helpers import tiny_run_overrides

    monkeypatch.setenv("DIVE_HOME", str(tmp_path / "home"))  # the outputs' local mirror and the model cache
    prefix = f"demo-{uuid.uuid4().hex[:8]}"
    overrides = upload_sets(s3_env, tiny_run_overrides(demo, tmp_path, prefix), f"{prefix}/data")
    assert sum("=s3://" in o for o in overrides) >= 5
    base = tmp_path / "base.yaml"
    base.write_text("{}\n")
    outputs = s3_env.uri(prefix, "outputs")
    extra = [
        f"run.storage_path={s3_env.uri(prefix, 'runs')}",
        f"tracking.output_dir={outputs}",
        f"tracking.uri={mlflow_production}",
    ]
    cfg = prepare_config(str(base), [*overrides, *extra, "optim.max_steps=2", "tracking.log_every=1"])
    first = run(cfg)
    assert first.checkpoint.startswith(f"{s3_env.bucket}/{prefix}/runs/")
    assert any(k.endswith("/state.pt") for k in s3_env.keys(f"{prefix}/runs"))
    # The run folder went up: its config (what --resume reads), the export and the evaluation tables.
    published = s3_env.keys(f"{prefix}/outputs/{first.run_id}")
    assert {"config.yaml", "export/open_clip_config.json", "eval/report.json"} <= set(published), published
    client = MlflowClient(tracking_uri=mlflow_production)
    mlrun = client.get_run(first.run_id)
    assert mlrun.data.params["loss.method"] == "dive" and "eval/id_acc" in mlrun.data.metrics
    # The export, the plots and the report went through the server into the bucket.
    stored = [k for k in s3_env.keys("mlflow") if f"/{first.run_id}/artifacts/" in k]
    names = {Path(k).name for k in stored}
    assert {"open_clip_config.json", "accuracy.png", "losses.png", "report.json"} <= names, names
    client.set_terminated(first.run_id, "KILLED")  # as Ctrl-C leaves it
    assert main(["--resume", f"{outputs}/{first.run_id}", "optim.max_steps=4"]) == 0
    assert [m.value for m in client.get_metric_history(first.run_id, "train/resumed_from_step")] == [2.0]
    assert client.get_run(first.run_id).info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(first.run_id, "train/loss")]
    assert sorted(steps) == [1, 2, 3, 4], steps
    # `dive export` rebuilds the export from the run folder in the bucket and its newest checkpoint there.
    from pipeline import export as export_command

    assert export_command.main([f"{outputs}/{first.run_id}"]) == 0
    # The export in the bucket evaluates as it is named there: fetched once into this node's model cache.
    from pipeline.evaluate import main as evaluate_main

    report = tmp_path / "report.json"
    export = f"local-dir:{outputs}/{first.run_id}/export"
    config = tmp_path / "out" / "eval.yaml"
    config.parent.mkdir(exist_ok=True)
    config.write_text("{}\n")
    assert evaluate_main(["--config", str(config), "--model", export, "--out", str(report), *overrides]) == 0
    scored = json.loads(report.read_text())
    assert scored["finetuned"]["id_acc"] == pytest.approx(
        client.get_run(first.run_id).data.metrics["eval/id_acc"]
    )


@pytest.mark.ray
@pytest.mark.slow
def test_a_store_that_goes_away_mid_training_fails_in_one_line_and_keeps_the_last_checkpoint(
    demo, tmp_path, monkeypatch
):
    """A store of its own (the session's keeps serving the other tests): after the first checkpoint is in the
    bucket, the store stops. The next checkpoint cannot be written: the run ends FAILED with one ``error:`` line
    naming the checkpoint and what failed, and once the store is back the checkpoint before it is intact."""
    import os
    import subprocess
    import sys
    import threading
    import time

    from mlflow.tracking import MlflowClient

    from pipeline.checkpoint import NoIntactCheckpoint, newest_intact, run_folder
    from tests.helpers import tiny_run_overrides
    from tests.services import seaweedfs

    with seaweedfs(tmp_path / "store") as store:
        env = {**os.environ, **store.env(), "DIVE_NO_PROGRESS": "1"}
        overrides = [
            *tiny_run_overrides(demo, tmp_path, "gone"),
            "optim.max_steps=40",  # steps enough that the store is gone well before the last one
            "optim.epochs=8",
            "run.checkpoint.every=1",
            "run.failure.max_failures=0",
            f"run.storage_path={store.uri('runs')}",
        ]
        (tmp_path / "base.yaml").write_text("{}\n")
        stopped = threading.Event()

        def stop_after_first_checkpoint() -> None:
            deadline = time.monotonic() + 400
            while time.monotonic() < deadline:
                if any(k.endswith("/complete.json") for k in store.keys("runs")):
                    stopped.set()
                    store.kill()
                    return
                time.sleep(0.1)

        watcher = threading.Thread(target=stop_after_first_checkpoint, daemon=True)
        watcher.start()
        done = subprocess.run(
            [sys.executable, "pipeline/train.py", "--config", str(tmp_path / "base.yaml"), *overrides],
            cwd=Path(__file__).resolve().parents[2],
            env=env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=600,
        )
        watcher.join(timeout=60)
        assert stopped.is_set(), done.stderr[-3000:]
        assert done.returncode == 1, done.stderr[-3000:]
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
        assert "could not write the checkpoint" in errors[0] and "does not answer" in errors[0], errors[0]
        (run_dir,) = [p.parent for p in (tmp_path / "out").glob("*/config.yaml")]
        mlrun = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db").get_run(run_dir.name)
        assert mlrun.info.status == "FAILED"
        store.restart()
        for key, value in store.env().items():
            monkeypatch.setenv(key, value)
        fs, folder = run_folder(store.uri("runs"), run_dir.name)
        # A restarted store may answer S3 a moment before its volume serves reads ("Failed to flush response
        # stream"): ask again for a while; a checkpoint that is really broken still fails below.
        deadline = time.monotonic() + 60
        while True:
            try:
                found = newest_intact(fs, folder)
                break
            except NoIntactCheckpoint as err:
                if "AWS Error" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(1)
        assert found.step >= 1
