"""Config loading, overrides and validation: every error names the key and what was expected."""

from __future__ import annotations

import pytest

from dive.config import (
    Config,
    ConfigError,
    Method,
    flatten,
    from_dict,
    load_config,
    to_dict,
    to_yaml,
    validate,
)


def _valid(tmp_path, *overrides: str) -> Config:
    (tmp_path / "id").mkdir(exist_ok=True)
    (tmp_path / "ref").mkdir(exist_ok=True)
    return load_config(
        overrides=[f"data.id_train={tmp_path / 'id'}", f"data.reference={tmp_path / 'ref'}", *overrides]
    )


def test_defaults_follow_the_paper():
    cfg = load_config()
    assert cfg.loss.method is Method.dive
    assert (cfg.loss.lambda_avl, cfg.loss.lambda_pvl, cfg.loss.ema_momentum) == (1000.0, 1000.0, 0.99)
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.warmup_steps) == (1e-5, 0.1, 500)


def test_yaml_then_overrides_with_types_converted(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("loss:\n  lambda_avl: 250\n  method: flyp\noptim:\n  global_batch: 64\n")
    cfg = load_config(path, ["loss.lambda_avl=500", "eval.ood.sketch=/data/sketch", "loss.temperature=0.07"])
    assert cfg.loss.lambda_avl == 500.0 and isinstance(cfg.loss.lambda_avl, float)
    assert cfg.loss.method is Method.flyp
    assert cfg.optim.global_batch == 64
    assert cfg.eval.ood == {"sketch": "/data/sketch"}
    assert cfg.loss.temperature == pytest.approx(0.07)


def test_round_trip_through_dict_and_yaml(tmp_path):
    cfg = load_config(overrides=["loss.method=snd", "data.column_map.jpg=image"])
    assert from_dict(to_dict(cfg)) == cfg
    path = tmp_path / "resolved.yaml"
    path.write_text(to_yaml(cfg))
    assert load_config(path) == cfg
    flat = flatten(cfg)
    assert flat["loss.method"] == "snd" and flat["data.column_map.jpg"] == "image"
    assert flat["optim.lr"] == 1e-5


@pytest.mark.parametrize(
    ("override", "key", "expected"),
    [
        ("loss.lambda_avll=5", "loss.lambda_avll", "not in 'LossSettings'"),
        ("loss.lambda_avl=abc", "loss.lambda_avl", "could not be converted to Float"),
        ("loss.method=dvie", "loss.method", "expected one of"),
        ("model.precision=fp16", "model.precision", "'fp32' or 'bf16'"),
        ("eval.device=gpu", "eval.device", "'auto', 'cpu' or 'cuda'"),
        ("eval.actors=two", "eval.actors", "could not be converted"),
        ("optim.global_batch=1.5", "optim.global_batch", "could not be converted"),
        ("nosection.x=1", "nosection", "not in 'Config'"),
    ],
)
def test_unknown_keys_and_wrong_types_name_the_key(override, key, expected):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    assert f"'{key}'" in str(err.value) and expected in str(err.value)


def test_unknown_key_in_yaml_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: key 'optim\.learning_rate'"):
        load_config(path)


def test_override_without_equals_and_missing_file():
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(overrides=["loss.lambda_avl"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/no/such/config.yaml")


@pytest.mark.parametrize(
    ("override", "key", "expected"),
    [
        ("loss.lambda_avl=-1", "loss.lambda_avl", ">= 0"),
        ("loss.lambda_pvl=-0.5", "loss.lambda_pvl", ">= 0"),
        ("loss.ema_momentum=1.0", "loss.ema_momentum", "[0, 1)"),
        ("loss.ema_momentum=-0.1", "loss.ema_momentum", "[0, 1)"),
        ("scaling.num_workers=3", "optim.global_batch", "multiple of scaling.num_workers"),
        ("optim.grad_accum=3", "optim.global_batch", "× optim.grad_accum"),
        ("data.ref_batch=5", "data.ref_batch", "multiple of"),
        ("eval.ood.sketch=/no/such/dir", "eval.ood.sketch", "an existing folder"),
        ("model.pretrained=/no/weights.pt", "model.pretrained", "existing weights file"),
        ("loss.temperature=0", "loss.temperature", "(0, 100]"),
        ("eval.actors=-1", "eval.actors", ">= 0 (0: one per GPU on cuda, one per logical CPU on cpu)"),
        ("eval.batch_size=0", "eval.batch_size", ">= 1"),
    ],
)
def test_validate_rejects_impossible_values_naming_the_key(tmp_path, override, key, expected):
    cfg = _valid(tmp_path, "optim.global_batch=8", override)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert f"'{key}'" in str(err.value) and expected in str(err.value)


def test_validate_accepts_a_sound_config_and_reports_all_problems_at_once(tmp_path):
    assert validate(_valid(tmp_path, "optim.global_batch=8")).optim.global_batch == 8
    with pytest.raises(ConfigError) as err:
        validate(_valid(tmp_path, "loss.lambda_avl=-1", "loss.ema_momentum=2"))
    assert "loss.lambda_avl" in str(err.value) and "loss.ema_momentum" in str(err.value)


def test_missing_dataset_folders_are_reported_unless_paths_are_generated_later(tmp_path):
    cfg = load_config(overrides=[f"data.id_train={tmp_path / 'missing'}"])
    with pytest.raises(ConfigError, match="'data.id_train': expected an existing folder"):
        validate(cfg)
    with pytest.raises(ConfigError, match="'data.reference'"):
        validate(cfg)
    validate(cfg, check_paths=False)  # the demo generates its data after validation
    assert load_config(overrides=["loss.method=flyp"]).loss.method is Method.flyp


def test_keys_that_moved_still_load_under_their_new_names_with_a_warning(tmp_path):
    """Configs and run folders written before run.* and val.* existed (run.checkpoint.every, val.id, …)."""
    from dive.config import MOVED_KEYS

    old = tmp_path / "old.yaml"
    old.write_text(
        "scaling:\n  storage_path: /s\n  checkpoint_every: 3\neval:\n  val_id: /v\n  val_objective: id_zs\n"
    )
    with pytest.warns(FutureWarning, match=r"scaling\.checkpoint_every is now run\.checkpoint\.every"):
        cfg = load_config(old, ["scaling.max_failures=4", "eval.val_samples=9"])
    assert (cfg.run.storage_path, cfg.run.checkpoint.every, cfg.run.failure.max_failures) == ("/s", 3, 4)
    assert (cfg.val.id, cfg.val.objective, cfg.val.samples) == ("/v", "id_zs", 9)
    assert set(MOVED_KEYS.values()) <= set(flatten(cfg))


def test_eval_device_auto_follows_scaling_use_gpu_and_explicit_devices_stand():
    from dive.config import EvalDevice, eval_device

    cfg = load_config()
    assert (cfg.eval.device, cfg.eval.actors, cfg.eval.batch_size) == (EvalDevice.auto, 0, 256)
    assert eval_device(cfg) == "cpu"
    assert eval_device(load_config(overrides=["scaling.use_gpu=true"])) == "cuda"
    assert eval_device(load_config(overrides=["scaling.use_gpu=true", "eval.device=cpu"])) == "cpu"
    on_gpu = load_config(overrides=["eval.device=cuda", "eval.actors=4"])
    assert eval_device(on_gpu) == "cuda" and on_gpu.eval.actors == 4
    assert flatten(on_gpu)["eval.device"] == "cuda"  # MLflow params and saved configs hold the plain value
    assert from_dict(to_dict(on_gpu)) == on_gpu


def test_far_zero_shot_suites_are_their_own_kind_and_checked_like_the_others(tmp_path):
    from dive.config import input_folders
    from dive.metrics import SetResult, summarize
    from pipeline.evaluate import suites_from_config

    (tmp_path / "digits").mkdir()
    cfg = _valid(
        tmp_path,
        f"eval.zs.cars={tmp_path / 'ref'}",
        f"eval.zs_far.digits={tmp_path / 'digits'}",
        "eval.templates.digits=simple",
    )
    validate(cfg)
    assert [(s.name, s.kind) for s in suites_from_config(cfg)] == [("cars", "zs"), ("digits", "zs_far")]
    assert ("eval.zs_far.digits", str(tmp_path / "digits")) in input_folders(cfg)
    with pytest.raises(ConfigError, match="eval.zs_far.letters"):
        validate(_valid(tmp_path, f"eval.zs_far.letters={tmp_path / 'missing'}"))
    results = [SetResult("cars", "zs", 0.3, 10), SetResult("digits", "zs_far", 0.6, 10)]
    results.append(SetResult("letters", "zs_far", 0.4, 10))
    assert summarize(results) == pytest.approx(
        {"zs/cars": 0.3, "zs_avg": 0.3, "zs_far/digits": 0.6, "zs_far/letters": 0.4, "zs_far_avg": 0.5}
    )
