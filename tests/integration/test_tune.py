"""Sweeps: the space file is checked before Ray starts; the demo sweep runs end to end, resumes, and replays."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from dive.config import Config, ConfigError, apply_overrides, load_config, to_dict, to_yaml
from pipeline import tune
from pipeline.sweep.spec import check_spec, load_spec, override, sweep_name, trial_config, trial_count
from tests.helpers import mlflow_server, tiny_run_overrides

REPO = Path(__file__).resolve().parents[2]
SPACES = sorted((REPO / "tune_configs").glob("*.yaml"))


def _space(tmp_path: Path, **sections) -> Path:
    spec = {
        "objective": {"metric": "val/objective", "mode": "max"},
        "search": {"algorithm": "optuna", "num_samples": 2, "max_concurrent": 1, "seed": 0},
        "scheduler": {"name": "asha", "grace_period": 2, "reduction_factor": 2},
        "space": {
            "loss.lambda_avl": {"loguniform": [1.0, 100.0]},
            "loss.lambda_pvl": {"loguniform": [1.0, 100.0]},
        },
    }
    spec.update(sections)
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _base(**val) -> Config:
    return load_config(overrides=[f"val.{k}={v}" for k, v in {"id": "/v/id", **val}.items()])


@pytest.mark.parametrize("space", SPACES, ids=[p.stem for p in SPACES])
def test_shipped_spaces_open_with_their_launch_command_and_check(space):
    text = space.read_text()
    assert text.startswith("#") and "python pipeline/tune.py --space tune_configs/" + space.name in text
    spec = load_spec(space)
    dists = check_spec(spec, _base(ref="/v/ref"), str(space))
    assert "loss.lambda_avl" in dists
    assert "loss.lambda_pvl" in dists or spec.tie == {"loss.lambda_pvl": "loss.lambda_avl"}
    assert dists["loss.lambda_avl"][0] in ("loguniform", "grid")


def test_the_papers_lambda_grid_runs_each_tied_value_once():
    from pipeline.sweep.search import to_tune_space

    path = REPO / "tune_configs" / "paper_lambda.yaml"
    spec = load_spec(path)
    dists = check_spec(spec, _base(ref="/v/ref"), str(path))
    assert dists == {"loss.lambda_avl": ("grid", [100.0, 500.0, 1000.0, 2500.0, 5000.0])}
    assert trial_count(spec) == 5
    assert to_tune_space(dists) == {
        "loss.lambda_avl": {"grid_search": [100.0, 500.0, 1000.0, 2500.0, 5000.0]}
    }
    config = trial_config(to_dict(_base()), {"loss.lambda_avl": 2500.0}, spec.tie)
    assert (config.loss.lambda_avl, config.loss.lambda_pvl) == (2500.0, 2500.0)


def test_a_grid_needs_the_grid_algorithm_on_every_key(tmp_path):
    mixed = {"loss.lambda_avl": {"grid": [1.0, 10.0]}, "optim.lr": {"loguniform": [1e-6, 1e-4]}}
    for search, space in (("optuna", {"loss.lambda_avl": {"grid": [1.0, 10.0]}}), ("grid", mixed)):
        path = _space(tmp_path, space=space, search={"algorithm": search, "num_samples": 1})
        with pytest.raises(ConfigError, match="search.algorithm grid goes with"):
            check_spec(load_spec(path), _base(), str(path))


@pytest.mark.parametrize(
    ("space", "match"),
    [
        ({"loss.lamda_avl": {"loguniform": [1, 10]}}, r"space key 'loss\.lamda_avl'.*Did you mean"),
        (
            {"loss.lambda_avl": {"loguniform": [-1, 10]}},
            r"space key 'loss\.lambda_avl': loguniform needs bounds > 0",
        ),
        ({"loss.lambda_pvl": {"uniform": [5, 1]}}, r"space key 'loss\.lambda_pvl': uniform needs low < high"),
        ({"loss.ema_momentum": {"uniform": [0.5, 1.0]}}, r"'loss\.ema_momentum' = 1\.0: .*\[0, 1\)"),
        (
            {"loss.learn_temperature": {"choice": []}},
            r"'loss\.learn_temperature': choice needs a non-empty list",
        ),
        ({"optim.lr": {"normal": [0, 1]}}, r"'optim\.lr': expected one of"),
    ],
)
def test_bad_space_fails_naming_the_key(tmp_path, space, match):
    path = _space(tmp_path, space=space)
    with pytest.raises(ConfigError, match=match):
        check_spec(load_spec(path), _base(), str(path))


def test_objective_must_be_a_validation_metric_the_config_reports(tmp_path):
    path = _space(tmp_path, objective={"metric": "eval/zs_avg", "mode": "max"})
    with pytest.raises(ConfigError, match="tuning on eval suites would tune on the test sets"):
        check_spec(load_spec(path), _base(), str(path))
    path = _space(tmp_path, objective={"metric": "val/ref_retrieval", "mode": "max"})
    with pytest.raises(ConfigError, match="needs val.ref"):
        check_spec(load_spec(path), _base(), str(path))
    path = _space(tmp_path, objective={"metric": "val/zs_far_acc", "mode": "max"})
    with pytest.raises(ConfigError, match="needs val.zs_far"):
        check_spec(load_spec(path), _base(), str(path))
    with pytest.raises(ConfigError, match=r"key 'search.num_samples'"):
        check_spec(load_spec(_space(tmp_path), ["search.num_samples=0"]), _base(), "s.yaml")


def test_bad_space_exits_before_ray_starts(tmp_path, capsys):
    import ray

    path = _space(tmp_path, space={"loss.lambda_avl": {"loguniform": [0.0, 10]}})
    was_up = ray.is_initialized()
    base = tmp_path / "base.yaml"
    base.write_text("val: {id: /nowhere}\n")
    assert tune.main(["--space", str(path), "--config", str(base)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "space key 'loss.lambda_avl': loguniform needs bounds > 0" in err
    assert ray.is_initialized() == was_up


def test_trial_config_is_a_complete_replayable_run_config():
    base = to_dict(_base())
    cfg = trial_config(base, {"loss.lambda_avl": 12.5, "loss.learn_temperature": False, "optim.lr": 3e-4})
    assert (cfg.loss.lambda_avl, cfg.loss.learn_temperature, cfg.optim.lr) == (12.5, False, 3e-4)
    assert load_config(base=None, overrides=[]) != cfg
    replay = load_config(base=yaml.safe_load(to_yaml(cfg)))
    assert to_dict(replay) == to_dict(cfg)


def test_tied_key_takes_the_sampled_value_and_is_checked(tmp_path):
    path = _space(
        tmp_path,
        space={"loss.lambda_avl": {"loguniform": [1.0, 100.0]}},
        tie={"loss.lambda_pvl": "loss.lambda_avl"},
    )
    spec = load_spec(path)
    assert set(check_spec(spec, _base(), str(path))) == {"loss.lambda_avl"}
    cfg = trial_config(to_dict(_base()), {"loss.lambda_avl": 7.5}, spec.tie)
    assert cfg.loss.lambda_avl == cfg.loss.lambda_pvl == 7.5
    bad = _space(
        tmp_path, space={"loss.lambda_avl": {"loguniform": [1.0, 100.0]}}, tie={"loss.lambda_pvl": "optim.lr"}
    )
    with pytest.raises(ConfigError, match="tie 'loss.lambda_pvl: optim.lr'"):
        check_spec(load_spec(bad), _base(), str(bad))


@pytest.mark.parametrize(
    ("space", "match"),
    [
        (
            {"optim.epochs": {"uniform": [1, 3]}},
            r"space key 'optim\.epochs': optim\.epochs is an int, but uniform samples floats.*"
            r"use \{randint: \[1, 4\]\} \(high exclusive\) or \{choice: \[1, 2, 3\]\}",
        ),
        (
            {"optim.warmup_steps": {"loguniform": [10, 1000]}},
            r"space key 'optim\.warmup_steps': optim\.warmup_steps is an int, .*randint: \[10, 1001\]",
        ),
        (
            {"loss.learn_temperature": {"uniform": [0, 1]}},
            r"loss\.learn_temperature is a bool, .*use \{choice: \[true, false\]\}",
        ),
    ],
    ids=["uniform-on-int", "loguniform-on-int", "uniform-on-bool"],
)
def test_a_float_distribution_on_an_int_key_fails_naming_the_key_its_type_and_the_fix(tmp_path, space, match):
    """Both bounds are valid ints, so the bound check alone passed this space, and then every trial failed
    inside Ray on its first sampled float."""
    path = _space(tmp_path, space=space)
    with pytest.raises(ConfigError, match=match):
        check_spec(load_spec(path), _base(), str(path))


@pytest.mark.parametrize(
    ("space", "match"),
    [
        (
            {"optim.epochs": {"choice": [1, 1.5]}},
            r"'optim\.epochs': choice value 1\.5 is a float, but .* an int",
        ),
        (
            {"optim.epochs": {"choice": [2, True]}},
            r"'optim\.epochs': choice value True is a bool, but .* an int",
        ),
        (
            {"optim.lr": {"choice": [1e-4, "fast"]}},
            r"'optim\.lr': choice value 'fast' is a string, but .*float",
        ),
        (
            {"loss.learn_temperature": {"choice": [1, 0]}},
            r"'loss\.learn_temperature': choice value 1 is an int, but loss\.learn_temperature is a bool",
        ),
    ],
    ids=["float-for-int", "bool-for-int", "string-for-float", "int-for-bool"],
)
def test_a_choice_value_of_the_wrong_type_fails_naming_the_key_and_the_value(tmp_path, space, match):
    path = _space(tmp_path, space=space)
    with pytest.raises(ConfigError, match=match):
        check_spec(load_spec(path), _base(), str(path))


def test_a_quoted_number_for_a_float_key_fails_instead_of_being_converted(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text('space:\n  optim.lr: {choice: ["1e-3", 1.0e-4]}\n')
    with pytest.raises(ConfigError, match=r"choice value '1e-3' is a string.*write numbers unquoted"):
        check_spec(load_spec(path), _base(), str(path))


def test_int_bool_and_nullable_spaces_and_randint_on_a_float_key_pass(tmp_path):
    space = {
        "optim.epochs": {"randint": [1, 4]},
        "optim.warmup_steps": {"choice": [0, 10, 100]},
        "loss.lambda_avl": {"randint": [1, 100]},  # ints are valid floats
        "optim.lr": {"choice": [1, 1.0e-4]},
        "loss.learn_temperature": {"choice": [True, False]},
        "loss.temperature": {"choice": [None, 0.05]},
        "loss.method": {"choice": ["dive", "flyp_replay"]},
    }
    path = _space(tmp_path, space=space, tie={"loss.lambda_pvl": "loss.lambda_avl"})
    dists = check_spec(load_spec(path), _base(), str(path))
    assert dists["optim.epochs"] == ("randint", [1, 4])
    assert (
        trial_config(
            to_dict(_base()), {"loss.lambda_avl": 7}, {"loss.lambda_pvl": "loss.lambda_avl"}
        ).loss.lambda_pvl
        == 7.0
    )


def test_a_tie_onto_an_int_key_from_a_float_distribution_fails(tmp_path):
    path = _space(
        tmp_path, space={"loss.lambda_avl": {"uniform": [1, 100]}}, tie={"optim.epochs": "loss.lambda_avl"}
    )
    with pytest.raises(
        ConfigError,
        match=r"tie 'optim\.epochs: loss\.lambda_avl': optim\.epochs takes the values sampled for "
        r"loss\.lambda_avl, and optim\.epochs is an int, but uniform samples floats",
    ):
        check_spec(load_spec(path), _base(), str(path))


@pytest.fixture
def no_sweep(monkeypatch):
    """Fail the test if tune.main gets as far as Ray: the sweep module (the one that imports Ray) is replaced by
    one whose ``sweep`` raises, and so is the Ray start of a plain run."""

    def forbidden(*_args, **_kwargs):
        raise AssertionError("the sweep started although the space was invalid")

    monkeypatch.setitem(sys.modules, "pipeline.sweep.search", types.SimpleNamespace(sweep=forbidden))
    monkeypatch.setattr("pipeline.train.start_ray", forbidden)


def test_a_wrong_typed_space_exits_2_with_one_error_line_before_ray_starts(tmp_path, capsys, no_sweep):
    path = _space(tmp_path, space={"optim.epochs": {"uniform": [1, 3]}})
    base = tmp_path / "base.yaml"
    base.write_text("val: {id: /nowhere}\n")
    assert tune.main(["--space", str(path), "--config", str(base)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "optim.epochs is an int" in err and "randint: [1, 4]" in err and "Traceback" not in err


def test_finished_sweep_names_move_on_and_unfinished_ones_resume(tmp_path):
    base = load_config(overrides=[f"tracking.output_dir={tmp_path}"])
    assert sweep_name(base, None, "demo") == "demo"
    (tmp_path / "sweeps" / "demo").mkdir(parents=True)
    (tmp_path / "sweeps" / "demo" / "sweep.json").write_text(json.dumps({"parent_run_id": "p"}))
    assert sweep_name(base, None, "demo") == "demo"  # unfinished: resume it
    (tmp_path / "sweeps" / "demo" / "sweep.json").write_text(
        json.dumps({"parent_run_id": "p", "finished": True})
    )
    assert sweep_name(base, None, "demo") == "demo-2"
    with pytest.raises(ConfigError, match="--name demo: that sweep has finished"):
        sweep_name(base, "demo", "demo")


# ------------------------------------------------------------------------------------------------ end to end
def _sweep_cmd(demo, tmp: Path, space: Path) -> list[str]:
    base = tmp / "base.yaml"
    base.write_text("{}\n")
    overrides = tiny_run_overrides(demo, tmp, "sweep-test")
    return [
        sys.executable,
        str(REPO / "pipeline" / "tune.py"),
        "--space",
        str(space),
        "--config",
        str(base),
        "--name",
        "t",
        *overrides,
    ]


@dataclass
class DemoSweep:
    tmp: Path
    second: subprocess.CompletedProcess  # the resumed sweep
    again: subprocess.CompletedProcess  # train.py on the sweep's best config


@pytest.fixture(scope="module")
def demo_sweep(demo, tmp_path_factory) -> DemoSweep:
    """The demo sweep interrupted (Ctrl-C) after its first trial, resumed to the end, and its best config
    replayed by train.py: one store with a sweep parent, its children and a plain run (the MLflow UI test's
    store too)."""
    tmp_path = tmp_path_factory.mktemp("sweep")
    space = _space(tmp_path)
    cmd = _sweep_cmd(demo, tmp_path, space)
    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONUNBUFFERED": "1"}
    trials = tmp_path / "out" / "sweeps" / "t" / "trials"
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while len(list(trials.glob("*.json"))) < 2 and time.monotonic() < deadline and first.poll() is None:
        time.sleep(1)  # the second trial has started, so the first has finished
    assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
    time.sleep(5)
    first.send_signal(signal.SIGINT)  # Ctrl-C: Tune saves its state and the driver exits
    assert first.wait(timeout=300) == 130, (tmp_path / "first.log").read_text()[-3000:]
    second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    best_yaml = tmp_path / "out" / "sweeps" / "t" / "best_config.yaml"
    again = subprocess.run(
        [sys.executable, str(REPO / "pipeline" / "train.py"), "--config", str(best_yaml)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    return DemoSweep(tmp_path, second, again)


@pytest.mark.ray
@pytest.mark.slow
def test_demo_sweep_interrupted_resumes_then_logs_parent_children_and_best_config(demo_sweep):
    tmp_path, second, again = demo_sweep.tmp, demo_sweep.second, demo_sweep.again
    trials = tmp_path / "out" / "sweeps" / "t" / "trials"
    assert "[dive] resuming sweep t" in second.stdout
    assert (tmp_path / "out" / "sweeps" / "t" / "console.log").is_file()  # the trials' output went there

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("sweep-test")
    everything = client.search_runs([exp.experiment_id])
    replayed = [
        r for r in everything if "dive.sweep" not in r.data.tags and "mlflow.parentRunId" not in r.data.tags
    ]
    runs = [r for r in everything if r.info.run_id not in {x.info.run_id for x in replayed}]
    parents = [r for r in runs if r.data.tags.get("dive.sweep") == "t"]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 and len(runs) == 3  # the interrupted trial continued its own run
    for child in children:
        assert child.info.status == "FINISHED"
        assert {"eval/id_acc", "eval/zs_avg", "val/objective", "train/loss"} <= set(child.data.metrics)
        assert float(child.data.params["loss.lambda_avl"]) > 0
        # a trial's entry point is the sweep's (in its own process it would be Ray's worker script)
        assert child.data.tags["mlflow.source.name"] == parent.data.tags["mlflow.source.name"]
        assert child.data.tags["mlflow.source.name"].endswith("tune.py")
    top = max(r.data.metrics["val/objective"] for r in children)
    best_ids = {
        r.info.run_id for r in children if r.data.metrics["val/objective"] == top
    }  # ties: any of them
    assert parent.info.status == "FINISHED"
    assert parent.data.params["sweep.best_run_id"] in best_ids
    best = next(r for r in children if r.info.run_id == parent.data.params["sweep.best_run_id"])
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert {
        "sweep/trials.md",
        "sweep/trials.csv",
        "sweep/objective.png",
        "sweep/best_config.yaml",
    } <= artifacts
    table = json.loads((trials / "trials.json").read_text())
    assert sorted(r["mlflow_run_id"] for r in table) == sorted(c.info.run_id for c in children)

    best_yaml = tmp_path / "out" / "sweeps" / "t" / "best_config.yaml"
    replay = load_config(str(best_yaml))
    assert replay.loss.lambda_avl == pytest.approx(float(best.data.params["loss.lambda_avl"]))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert (
        len(replayed) == 1
        and replayed[0].data.params["loss.lambda_avl"] == best.data.params["loss.lambda_avl"]
    )
    assert replayed[0].data.params["loss.lambda_pvl"] == best.data.params["loss.lambda_pvl"]


ARTIFACTS = Path(os.environ.get("DIVE_TEST_ARTIFACTS", REPO / "test-artifacts")) / "mlflow-ui"


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.browser
@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_mlflow_ui_shows_the_sweep_nested_with_charts_and_artifacts_in_a_real_browser(demo_sweep):
    """What a person looks for in the UI: the sweep parent with its trials nested under it, a run's train/loss and
    eval/* charts, its export/ and plot artifacts, and where it came from. Screenshots: test-artifacts/mlflow-ui."""
    from playwright.sync_api import sync_playwright

    store = f"sqlite:///{demo_sweep.tmp}/mlflow.db"
    client = MlflowClient(tracking_uri=store)
    exp = client.get_experiment_by_name("sweep-test")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("dive.sweep") == "t")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    child = children[0]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with mlflow_server(store) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=_chromium(), args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(60_000)
        base = f"{url}/#/experiments/{exp.experiment_id}"

        page.goto(f"{base}/runs")
        page.get_by_text(parent.info.run_name, exact=True).wait_for()
        names = [c.info.run_name for c in children]
        assert not any(page.get_by_text(n, exact=True).is_visible() for n in names)  # nested: folded away
        row = page.locator("[role=row]").filter(has_text=parent.info.run_name).first
        row.locator("button[data-component-id*=runnamecellrenderer]").click()  # the parent's expander
        for name in names:
            page.get_by_text(name, exact=True).wait_for()
        page.screenshot(path=str(ARTIFACTS / "sweep-nested.png"), full_page=True)

        page.goto(f"{base}/runs/{child.info.run_id}")
        page.get_by_role("link", name=parent.info.run_name).first.wait_for()  # its parent, linked
        page.get_by_text("tune.py").first.wait_for()  # source: the sweep's entry point
        page.get_by_text(child.data.tags["mlflow.source.git.commit"][:7]).first.wait_for()
        page.screenshot(path=str(ARTIFACTS / "run-overview.png"), full_page=True)

        page.goto(f"{base}/runs/{child.info.run_id}/model-metrics")
        search = page.get_by_placeholder("Search metric charts")
        search.fill("train/loss")
        page.get_by_text("(train/loss)").first.wait_for()  # the line chart's legend names the metric
        for metric in ("eval/id_acc", "eval/ood_avg", "eval/zs_avg"):
            search.fill(metric)
            page.get_by_text(metric.split("/")[-1], exact=True).first.wait_for()  # its chart, titled
        search.fill("_avg")
        page.get_by_text("zs_avg", exact=True).first.wait_for()
        page.wait_for_timeout(2000)
        page.screenshot(path=str(ARTIFACTS / "run-eval-charts.png"), full_page=True)
        search.fill(
            "loss"
        )  # the picture: every loss curve (an unfiltered page draws charts only when scrolled to)
        page.get_by_text("(train/loss)").first.wait_for()
        page.wait_for_timeout(2000)  # let the charts draw before the picture
        page.screenshot(path=str(ARTIFACTS / "run-charts.png"), full_page=True)

        page.goto(f"{base}/runs/{child.info.run_id}/artifacts")
        for folder in ("export", "eval", "config"):
            page.get_by_text(folder, exact=True).first.wait_for()
        page.get_by_text("eval", exact=True).first.click()
        page.get_by_text("accuracy.png", exact=True).first.click()
        page.get_by_text("eval/accuracy.png").first.wait_for()
        page.locator("img[src^='blob:']").first.wait_for()  # the plot itself renders
        page.wait_for_timeout(1000)
        page.screenshot(path=str(ARTIFACTS / "run-artifacts.png"), full_page=True)
        browser.close()
    assert len(list(ARTIFACTS.glob("*.png"))) >= 5


EMOJISHIFT_SPACES = sorted((REPO / "tune_configs" / "emojishift").glob("*.yaml"))


@pytest.mark.parametrize("space", EMOJISHIFT_SPACES, ids=[p.stem for p in EMOJISHIFT_SPACES])
def test_emojishift_methods_are_tuned_the_same_way(space):
    """One space file per benchmark method: same trial budget, scheduler, objective, schedule and validation."""
    text = space.read_text()
    launch = f"--space tune_configs/emojishift/{space.name} --name emojishift-far-{space.stem}"
    assert text.startswith("#") and launch in text  # the name benchmarks/emojishift/sweeps.py collects
    spec = load_spec(space)
    base = apply_overrides(
        load_config(REPO / spec.config), [override(k, v) for k, v in spec.overrides.items()]
    )
    dists = check_spec(spec, base, str(space))
    assert base.val.objective == "id_zs_far" and base.val.zs.endswith("zs_val")
    # far zero-shot: validated on the same sets the table scores, on their validation splits
    assert sorted(base.val.zs_far) == sorted(base.eval.zs_far) == ["digits", "flags", "letters", "people"]
    assert all(path.endswith(f"zs_far_val_{name}") for name, path in base.val.zs_far.items())
    assert base.val.id_weight == pytest.approx(1 / 3, abs=1e-3)
    assert (spec.search.num_samples, spec.search.algorithm, spec.scheduler.name) == (8, "optuna", "asha")
    assert spec.objective.metric == "val/objective"
    assert (base.optim.global_batch, base.optim.epochs) == (32, 4)
    assert "optim.lr" in dists
    method = base.loss.method.value
    expected = {"flyp": set(), "ft": set(), "lpft": set(), "snd": {"loss.lambda_snd"}}
    expected |= {"flyp_replay": {"loss.lambda_replay"}}
    if method == "dive":
        shared = space.stem == "dive_shared"
        assert spec.tie == ({"loss.lambda_pvl": "loss.lambda_avl"} if shared else {})
        assert {"loss.lambda_avl", "data.ref_batch"} <= set(dists) and (
            ("loss.lambda_pvl" in dists) != shared
        )
    else:
        assert set(dists) - {"optim.lr"} == expected[method]
