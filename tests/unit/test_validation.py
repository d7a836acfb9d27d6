"""Rank 0's epoch-end validation (pipeline.worker._Validator) in-process on the tiny demo: no Ray."""

from __future__ import annotations

import pytest
import torch

from dive.config import ConfigError, load_config, validate
from dive.models import build_model
from pipeline.worker import _Validator


def _cfg(demo, tmp_path, *extra):
    paths, teacher = demo
    overrides = [*paths.config_overrides(), f"model.pretrained={teacher}", "val.samples=40", *extra]
    return load_config(None, [*overrides, f"tracking.output_dir={tmp_path}"])


def test_zero_shot_validation_set_enters_the_objective(demo, tmp_path):
    paths, _ = demo
    cfg = _cfg(demo, tmp_path, f"val.zs={paths.zs['color']}", "val.objective=id_zs")
    bundle = build_model(cfg.model)
    metrics = _Validator(cfg, bundle, torch.device("cpu"))(bundle.model)
    assert {"val/id_acc", "val/zs_acc", "val/ref_retrieval", "val/objective"} <= set(metrics)
    assert metrics["val/zs_acc"] != metrics["val/id_acc"]  # a different set, scored with its own head
    assert metrics["val/objective"] == pytest.approx((metrics["val/id_acc"] + metrics["val/zs_acc"]) / 2)
    default = _Validator(_cfg(demo, tmp_path), bundle, torch.device("cpu"))(bundle.model)
    assert "val/zs_acc" not in default
    assert default["val/objective"] == pytest.approx(
        (default["val/id_acc"] + default["val/ref_retrieval"]) / 2
    )


def test_far_zero_shot_sets_are_scored_each_and_their_mean_enters_the_objective(demo, tmp_path):
    paths, _ = demo
    far = [f"val.zs_far.{name}={folder}" for name, folder in paths.zs.items()]
    cfg = _cfg(
        demo, tmp_path, f"val.zs={paths.zs['color']}", *far, "val.objective=id_zs_far", "val.id_weight=0.25"
    )
    validate(cfg)
    bundle = build_model(cfg.model)
    metrics = _Validator(cfg, bundle, torch.device("cpu"))(bundle.model)
    each = [metrics[f"val/zs_far/{name}"] for name in paths.zs]
    assert metrics["val/zs_far/color"] == pytest.approx(metrics["val/zs_acc"])  # the same set, the same head
    assert metrics["val/zs_far_acc"] == pytest.approx(sum(each) / len(each))
    kept = (metrics["val/zs_acc"] + metrics["val/zs_far_acc"]) / 2
    assert metrics["val/objective"] == pytest.approx(0.25 * metrics["val/id_acc"] + 0.75 * kept)


def test_objective_names_are_checked(demo, tmp_path):
    with pytest.raises(ConfigError, match="val.objective"):
        validate(_cfg(demo, tmp_path, "val.objective=zs_only"))
    with pytest.raises(ConfigError, match="val.zs"):
        validate(_cfg(demo, tmp_path, "val.objective=id_zs"))
    paths, _ = demo
    with pytest.raises(ConfigError, match="val.zs_far"):
        validate(_cfg(demo, tmp_path, f"val.zs={paths.zs['color']}", "val.objective=id_zs_far"))
