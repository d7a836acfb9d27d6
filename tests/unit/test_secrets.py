"""Secrets in URIs stay in memory: the console, ``error:`` lines, the run's ``config.yaml``, MLflow params and
artifacts, export cards and logs show them masked; the tracking check authenticates with them; a resume from a
masked config asks for the real value; Ray's token file is private. No Ray is started here."""

from __future__ import annotations

import base64
import http.server
import io
import json
import logging
import os
import stat
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from dive.config import ConfigError, load_config, validate
from dive.redact import is_masked, mask_text, mask_tree, mask_uri, masked_keys
from pipeline import tracking, train
from pipeline.console import Console
from pipeline.preflight import check_tracking
from pipeline.ray_env import free_port

PLANTED = "pl4nted-s3cret"  # unique: any file or line that holds it leaked a secret


# ------------------------------------------------------------------------------------------------ the helper
@pytest.mark.parametrize(
    "uri, shown",
    [
        (f"http://alice:{PLANTED}@127.0.0.1:5000/", "http://alice:***@127.0.0.1:5000/"),
        (f"https://{PLANTED}@mlflow.example.com/path", "https://***@mlflow.example.com/path"),
        (f"s3://AKIAEXAMPLE:{PLANTED}@bucket/data/id_train", "s3://AKIAEXAMPLE:***@bucket/data/id_train"),
        (
            f"https://b.s3.amazonaws.com/k?X-Amz-Credential={PLANTED}&X-Amz-Signature={PLANTED}&versionId=3",
            "https://b.s3.amazonaws.com/k?X-Amz-Credential=***&X-Amz-Signature=***&versionId=3",
        ),
        (
            f"http://h/x?password={PLANTED}&Token={PLANTED}&secret_key={PLANTED}&sig={PLANTED}&page=2",
            "http://h/x?password=***&Token=***&secret_key=***&sig=***&page=2",
        ),
        (f"http://h/api?api_key={PLANTED}&keys_per_shard=4", "http://h/api?api_key=***&keys_per_shard=4"),
        (f"https://h/cb#access_token={PLANTED}&state=1", "https://h/cb#access_token=***&state=1"),
    ],
)
def test_a_uris_secrets_are_masked_and_the_rest_kept(uri, shown):
    assert mask_uri(uri) == shown and mask_text(uri) == shown
    assert PLANTED not in shown and is_masked(shown) and not is_masked(uri.replace(PLANTED, "real"))


@pytest.mark.parametrize(
    "value",
    [
        "http://127.0.0.1:5000/",
        "sqlite:////tmp/x/mlflow.db",
        "file:///tmp/mlruns",
        "s3://bucket/prefix/shard-000.tar?versionId=3&page=2",
        "/data/id_train",
        "local-dir:/exports/run",
        "a@b:c is not a URI",
        "",
    ],
)
def test_a_value_without_secrets_is_returned_unchanged(value):
    assert mask_uri(value) == value and mask_text(value) == value and not is_masked(value)


def test_uris_inside_text_and_config_trees_are_masked():
    text = f"cannot reach http://alice:{PLANTED}@h:1/ (refused); also s3://k:{PLANTED}@b/x."
    assert mask_text(text) == "cannot reach http://alice:***@h:1/ (refused); also s3://k:***@b/x."
    tree = {
        "tracking": {"uri": f"http://alice:{PLANTED}@h/", "log_every": 5},
        "eval": {"ood": {"a": f"s3://b/o?sig={PLANTED}"}, "templates": [f"gs://{PLANTED}@b/t", "plain"]},
    }
    masked = mask_tree(tree)
    assert PLANTED not in json.dumps(masked) and masked["tracking"]["log_every"] == 5
    assert masked_keys(masked) == ["tracking.uri", "eval.ood.a", "eval.templates[0]"]
    assert masked_keys(tree) == []


# ------------------------------------------------------------------------------------------------ the /health check
class _AuthHealth(http.server.BaseHTTPRequestHandler):
    """An MLflow server behind basic auth, as far as the preflight sees one: /health is 200 only with the right
    Authorization header (401 otherwise), and the request line must not carry the user-info."""

    expected = "Basic " + base64.b64encode(f"alice:{PLANTED}".encode()).decode()
    seen: list[tuple[str, str | None]] = []

    def do_GET(self) -> None:  # noqa: N802  (http.server's name)
        self.seen.append((self.path, self.headers.get("Authorization")))
        ok = self.path == "/health" and self.headers.get("Authorization") == self.expected
        self.send_response(200 if ok else 401)
        self.end_headers()
        self.wfile.write(b"OK" if ok else b"")

    def log_message(self, *_args: object) -> None:  # quiet
        pass


@pytest.fixture
def auth_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AuthHealth)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _AuthHealth.seen.clear()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_the_tracking_check_sends_the_uris_user_info_as_basic_auth(auth_server, monkeypatch):
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    check_tracking(f"http://alice:{PLANTED}@127.0.0.1:{auth_server}/")  # answers 200: no error
    assert _AuthHealth.seen[-1] == ("/health", _AuthHealth.expected)
    with pytest.raises(ConfigError, match=r"refused the credentials \(HTTP 401") as wrong:
        check_tracking(f"http://alice:not-{PLANTED}@127.0.0.1:{auth_server}")
    assert PLANTED not in str(wrong.value) and f"http://alice:***@127.0.0.1:{auth_server}" in str(wrong.value)


def test_the_tracking_check_honours_mlflows_credential_variables(auth_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PLANTED)
    check_tracking(f"http://127.0.0.1:{auth_server}")
    assert _AuthHealth.seen[-1] == ("/health", _AuthHealth.expected)


def test_an_unreachable_server_with_a_password_is_named_masked():
    uri = f"http://alice:{PLANTED}@127.0.0.1:{free_port()}/"
    with pytest.raises(
        ConfigError, match=r"no MLflow server answers at http://alice:\*\*\*@127\.0\.0\.1"
    ) as err:
        check_tracking(uri)
    assert PLANTED not in str(err.value) and "Name or service not known" not in str(err.value)


# ------------------------------------------------------------------------------------------------ what a run writes
def test_the_banner_and_the_error_line_of_a_refused_run_hold_no_password(tmp_path, monkeypatch, capsys):
    """``train.main`` up to preflight's refusal (no server at the URI; Ray is never reached): the start banner,
    the ``error:`` line and any log the command kept show the URI masked. The built-in demo config with its
    build skipped: the tracking check comes first in preflight, before any data is read."""
    monkeypatch.setattr(train, "start_ray", lambda *_a, **_k: pytest.fail("Ray started"))
    monkeypatch.setattr(train, "ensure_demo_data", lambda cfg: None)
    monkeypatch.setenv("DIVE_HOME", str(tmp_path))
    uri = f"http://alice:{PLANTED}@127.0.0.1:{free_port()}/"
    assert train.main([f"tracking.uri={uri}"]) == 2
    out = capsys.readouterr()
    assert "MLflow http://alice:***@127.0.0.1" in out.err + out.out  # the banner, masked
    assert "error: tracking.uri: no MLflow server answers at http://alice:***@" in out.err
    assert PLANTED not in out.out + out.err
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and PLANTED.encode() in p.read_bytes()]


@pytest.fixture(params=["override", "env"])
def leaky_cfg(request, tmp_path, monkeypatch):
    """A resolved run config whose tracking URI (from an override or from $MLFLOW_TRACKING_URI), Ray storage and
    a data path carry the planted secret; MLflow calls go to a local sqlite store whatever the URI says."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DIVE_HOME", str(tmp_path))
    uri = f"http://alice:{PLANTED}@127.0.0.1:{free_port()}/"
    store = f"sqlite:///{tmp_path}/mlflow.db"
    real_client = MlflowClient
    monkeypatch.setattr(tracking, "MlflowClient", lambda tracking_uri=None: real_client(store))
    overrides = [
        f"tracking.output_dir={tmp_path}/out",
        "tracking.experiment=leak",
        f"run.storage_path=s3://AKIAEXAMPLE:{PLANTED}@bucket/ray",
        f"eval.ood.signed=https://b.s3.amazonaws.com/ood?X-Amz-Signature={PLANTED}",
    ]
    if request.param == "env":
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    else:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        overrides.append(f"tracking.uri={uri}")
    cfg = train.resolve_paths(load_config(overrides=overrides))
    assert cfg.tracking.uri == uri  # the real value, in memory
    return cfg, store


def test_the_saved_config_mlflow_params_and_artifacts_hold_no_password(leaky_cfg, capsys):
    cfg, store = leaky_cfg
    # What preflight resolved that opening a run reads: the config and its tracking URI (the real one, in memory).
    plan = SimpleNamespace(cfg=cfg, tracking_uri=tracking.tracking_uri(cfg))
    mlrun = train._open_run(plan, None, None, None)  # MLflow run + params + config/resolved.yaml
    out_dir = train._run_folder(cfg, mlrun, None)  # the run folder's config.yaml + the start line
    mlrun.end("FINISHED")
    saved = (out_dir / "config.yaml").read_text()
    assert PLANTED not in saved and "http://alice:***@127.0.0.1" in saved
    client = MlflowClient(store)
    data = client.get_run(mlrun.run_id).data
    leaked = {k: v for k, v in {**data.params, **data.tags}.items() if PLANTED in v}
    assert not leaked and data.params["tracking.uri"].startswith("http://alice:***@")
    resolved = Path(client.download_artifacts(mlrun.run_id, "config/resolved.yaml", str(out_dir.parent)))
    assert PLANTED not in resolved.read_text()
    printed = capsys.readouterr()
    assert PLANTED not in printed.out + printed.err and "(http://alice:***@127.0.0.1" in printed.out
    assert PLANTED not in repr(mlrun)


def test_a_resume_from_a_masked_config_takes_the_real_uri_from_the_environment_or_asks(
    leaky_cfg, tmp_path, monkeypatch, capsys
):
    cfg, _ = leaky_cfg
    real = cfg.tracking.uri
    folder = tmp_path / "out" / "0123456789abcdef"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(train.to_yaml(cfg))
    saved = str(folder / "config.yaml")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", real)  # the same server and user: used
    assert train.resolve_paths(load_config(saved)).tracking.uri == real
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with pytest.raises(ConfigError, match=r"saved with its secret masked; give the real URI again") as err:
        train.resolve_paths(load_config(saved))
    assert PLANTED not in str(err.value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://bob:x@127.0.0.1:1/")
    with pytest.raises(ConfigError, match=r"names another server: http://bob:\*\*\*@"):
        train.resolve_paths(load_config(saved))
    assert tracking.sync(folder) == 2 and "saved with its secret masked" in capsys.readouterr().err
    # Every other masked value is named, and taken again from an override.
    fixed = [f"tracking.uri={real}", f"run.storage_path={tmp_path}/ray", f"eval.ood.signed={tmp_path}"]
    assert validate(train.resolve_paths(load_config(saved, fixed)), check_paths=False).tracking.uri == real
    with pytest.raises(ConfigError, match=r"key 'run\.storage_path': expected its real value") as err:
        validate(train.resolve_paths(load_config(saved, fixed[:1] + fixed[2:])), check_paths=False)
    assert "s3://AKIAEXAMPLE:***@bucket/ray" in str(err.value) and PLANTED not in str(err.value)


def test_the_export_card_holds_no_password(tiny_bundle, tmp_path):
    from dive.export import export_model

    card = {"base_model": "dive-tiny", "data": {"id_train": f"s3://AKIAEXAMPLE:{PLANTED}@bucket/id_train"}}
    folder = export_model(
        tiny_bundle.model, tmp_path / "e", tiny_bundle.model_cfg, tiny_bundle.preprocess_cfg, card=card
    )
    for name in ("card.json", "README.md"):
        text = (folder / name).read_text()
        assert PLANTED not in text and "s3://AKIAEXAMPLE:***@bucket/id_train" in text


def test_the_console_and_its_log_file_mask_uris(tmp_path):
    stream = io.StringIO()
    with Console(tmp_path / "logs", stream=stream) as console:
        console.say(f"[dive] MLflow run abc (http://alice:{PLANTED}@h:5000/)")
        logging.getLogger("mlflow.test_secrets").warning("retrying http://alice:%s@h:5000/api", PLANTED)
        console._ray_lines({"lines": [f"worker saw s3://k:{PLANTED}@b/x"], "pid": 1})
        log = console.path.read_text()
    assert PLANTED not in stream.getvalue() + log
    assert "(http://alice:***@h:5000/)" in stream.getvalue() and "retrying http://alice:***@h:5000/api" in log


# ------------------------------------------------------------------------------------------------ Ray's token
@pytest.mark.parametrize("dashboard", [False, True])
def test_rays_token_file_is_private(tmp_path, monkeypatch, dashboard):
    """Ray's own writer (``generate_and_save_token``, as ``ray.init`` calls it for a new local instance) stands in
    for ``ray.init``; ``$HOME`` is a temporary folder, so the real ``~/.ray`` is never touched."""
    import ray
    from ray._private.authentication.authentication_token_setup import generate_and_save_token

    from pipeline import ray_env

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)

    class _Context:
        dashboard_url = ""

    def fake_init(**kwargs):
        generate_and_save_token()  # what Ray writes, with the process umask
        _Context.dashboard_url = f"127.0.0.1:{kwargs.get('dashboard_port')}"
        return _Context()

    monkeypatch.setattr(ray, "init", fake_init)
    previous = os.umask(0o022)  # the common default, under which Ray's file is world-readable
    try:
        ray_env.start_local_ray(4, log_to_driver=False, dashboard=dashboard)
    finally:
        os.umask(previous)
    token = tmp_path / ".ray" / "auth_token"
    assert token.is_file() and stat.S_IMODE(token.stat().st_mode) == 0o600
    assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700
