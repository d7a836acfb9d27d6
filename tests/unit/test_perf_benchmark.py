"""benchmarks/perf/run.py on the tiny model: the table's shape and that every ratio is finite and positive
(timings themselves are the benchmark's business, not a test's)."""

from __future__ import annotations

import json
import math
import os

import pytest

from benchmarks.perf import run as perf


@pytest.fixture(scope="module")
def rows():
    return perf.run_steps(
        perf.step_specs(perf.SIZES["test"], threads=1, device="cpu"), rounds=1, in_process=True
    )


def test_every_configuration_is_measured_with_finite_positive_ratios(rows):
    assert [r["name"] for r in rows] == [
        "FLYP",
        "DiVE live, B'=8",
        "DiVE live, B'=4",
        "DiVE live, B'=2",
        "DiVE cached, B'=8",
        "DiVE cached, B'=4",
        "DiVE cached, B'=2",
    ]
    assert [r["floor"] for r in rows] == [1.0, 2.0, 1.5, 1.25, 2.0, 1.5, 1.25]
    for r in rows:
        for key in ("step_s", "over_flyp", "over_floor", "memory_mb", "mem_over_flyp"):
            assert math.isfinite(r[key]) and r[key] > 0, (r["name"], key, r[key])
    assert rows[0]["over_flyp"] == 1.0


def test_summary_keys_and_table_shape(rows):
    summary = perf.step_summary(rows)
    assert summary["step_model"] == "dive-tiny" and summary["floor"] == 2.0
    assert summary["dive_cached_over_floor"] == pytest.approx(summary["dive_cached_over_flyp"] / 2.0)
    text = perf.table(rows, summary)
    lines = text.splitlines()
    assert (
        lines[0].startswith("| model | configuration |")
        and len(lines) == 2 + len(rows) + 3 + len(summary) - 1
    )


def test_a_configuration_runs_in_its_own_process_and_the_command_writes_results(tmp_path, monkeypatch):
    spec = perf.step_specs(perf.SIZES["test"], threads=1, device="cpu")[-1]
    with perf._fresh_processes() as pool:  # the real command's path: a fresh process per configuration
        first, second = perf._in_child(spec, pool), perf._in_child(spec, pool)
        pids = {f.result() for f in [pool.submit(os.getpid) for _ in range(2)]}
    assert set(first) == {"step_s", "memory_mb"} and first["step_s"] > 0 and second["memory_mb"] > 0
    assert len(pids) == 2 and os.getpid() not in pids  # not this process, and never one process twice
    monkeypatch.setattr(
        perf, "_in_child", lambda spec, pool: perf.measure_step(spec)
    )  # the shape is what counts
    out = tmp_path / "results.json"
    assert perf.main(["--size", "test", "--steps-only", "--threads", "1", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    for key in ("dive_cached_over_flyp", "floor", "dive_mem_over_flyp"):
        assert math.isfinite(results[key]) and results[key] > 0
    assert len(results["steps"]) == 7 and results["meta"]["size"] == "test"


def test_the_bare_first_step_is_a_fresh_process_building_the_runs_model():
    """The denominator of first_step_over_bare: a process with no Ray, MLflow or data pipeline that imports the
    libraries, builds the configured model and method, and finishes one step; it reports when it did."""
    from dive.config import load_config

    cfg = load_config(overrides=["optim.global_batch=4", "data.ref_batch=4"])
    seconds = perf.bare_first_step(cfg, threads=1, rounds=1)
    assert 0 < seconds < 120


@pytest.mark.ray
def test_eval_pool_over_bare_times_both_sides_on_the_same_images(ray_session, tmp_path):
    """The evaluation pool's measurement on a tiny set copied to ``min_images``: every image scored on both sides,
    finite positive rates (their values are the benchmark's business)."""
    import numpy as np
    from PIL import Image

    from dive.config import Config, ModelSettings
    from pipeline.data.format import LABELLED, Manifest, ShardWriter, encode_png

    rng = np.random.default_rng(0)
    manifest = Manifest("s", LABELLED, classnames=["a", "b"], templates=["a {}."])
    with ShardWriter(tmp_path / "s", manifest, rows_per_shard=16) as writer:
        for i in range(32):
            image = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
            writer.add({"image": encode_png(image), "label": i % 2})
    cfg = Config()
    cfg.eval.ood, cfg.eval.batch_size = {"s": str(tmp_path / "s")}, 8
    out = perf.eval_pool_over_bare(cfg, ModelSettings(), threads=1, min_images=128)
    assert out["eval_pool_images"] == 128 and out["eval_pool_blocks"] >= 4
    for key in (
        "eval_pool_over_bare",
        "eval_pool_one_actor_over_bare",
        "eval_pool_start_s",
        "eval_pool_warm_start_s",
        "eval_pool_wall_over_bare",
    ):
        assert math.isfinite(out[key]) and out[key] > 0, (key, out[key])


@pytest.mark.ray
def test_the_data_part_measures_every_decode_path_and_the_stream(ray_session):
    """The decode part at its quick size: every path and both stream widths measured, the ratios built from
    them (finite, positive; their values are the benchmark's business)."""
    out = perf.data_part(quick=True, threads=1)
    paths = [
        "baseline",
        "pipeline",
        "limit",
        "dataloader",
        "limit_at_1cpu",
        "stream_1cpu",
        "stream_1cpu_wall",
    ]
    rates = {path: out[f"decode_{path}_images_per_s"] for path in [*paths, "stream_2cpu"]}
    ratios = {k: out[k] for k in ("decode_over_baseline", "stream_over_limit", "stream_wall_over_limit")}
    for key, value in {**rates, **ratios}.items():
        assert math.isfinite(value) and value > 0, (key, value)
    # the stream is held against the limit measured around its own pass
    assert out["stream_over_limit"] == rates["stream_1cpu"] / rates["limit_at_1cpu"]
