"""docker/: the image installs pyproject's pins, and every manifest is wired together and runs a real config.

There is no Docker engine or Kubernetes here, so nothing is built or applied: these tests read the files. They
pin down what would otherwise drift silently — a torch bump in pyproject.toml that the Dockerfile does not follow,
a CUDA base image that no longer matches the torch CUDA build, a PVC renamed on one side only, an override key
misspelled in a job command — each of which would only show up on a GPU cluster.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from dive.config import load_config, validate

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "compose.yaml"
RAYJOB = DOCKER / "kuberay-rayjob.yaml"
PVC = DOCKER / "kuberay-pvc.yaml"
DOCKER_README = DOCKER / "README.md"

# Packages the image may pip-install that are not project dependencies, and why. Anything else the Dockerfile
# pip-installs must be a pyproject dependency, with exactly pyproject's specifier.
IMAGE_ONLY_PACKAGES = {
    "pip": "the installer itself, upgraded in the fresh venv before the project install",
}
# train.py options that take a value (the others are switches).
VALUE_FLAGS = {"--config", "--resume"}
SHELL_OPERATORS = {"&&", "||", ";", "|"}


# ---------------------------------------------------------------------------------------------------- helpers
def _pyproject_deps() -> dict[str, Requirement]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    reqs = [Requirement(s) for s in data["project"]["dependencies"]]
    return {canonicalize_name(r.name): r for r in reqs}


def _exact_pin(req: Requirement) -> str:
    specs = list(req.specifier)
    assert len(specs) == 1 and specs[0].operator == "==", f"pyproject: {req} is not an exact == pin"
    return specs[0].version


def _instructions(text: str) -> list[tuple[str, str]]:
    """Dockerfile instructions as (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):  # Docker drops comment and empty lines, inside continuations too
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        instr, _, rest = (buf + line).partition(" ")
        out.append((instr.upper(), rest.strip()))
        buf = ""
    assert not buf, "Dockerfile ends inside a line continuation"
    return out


def _substitute(text: str, args: dict[str, str]) -> str:
    """Expand ${NAME} / $NAME for the Dockerfile's ARGs (RUN sees them as environment variables)."""

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        return args.get(name, m.group(0))

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", repl, text)


class Dockerfile:
    def __init__(self, path: Path) -> None:
        self.instructions = _instructions(path.read_text())
        self.args: dict[str, str] = {}
        for instr, rest in self.instructions:
            if instr == "ARG" and "=" in rest:
                name, _, value = rest.partition("=")
                self.args[name.strip()] = value.strip().strip("\"'")

    def all(self, instr: str) -> list[str]:
        return [_substitute(rest, self.args) for i, rest in self.instructions if i == instr]

    def index(self, instr: str, predicate) -> int:
        for n, (i, rest) in enumerate(self.instructions):
            if i == instr and predicate(_substitute(rest, self.args)):
                return n
        raise AssertionError(f"no {instr} instruction matching the check")

    def pip_installs(self) -> list[dict]:
        """Every `pip install` in RUN lines: its options (name -> values) and positional arguments."""
        found = []
        for run in self.all("RUN"):
            words = shlex.split(run)
            for n in range(len(words) - 1):
                if not (words[n].rsplit("/", 1)[-1] in ("pip", "pip3") and words[n + 1] == "install"):
                    continue
                options: dict[str, list[str]] = {}
                positional: list[str] = []
                rest = iter(words[n + 2 :])
                for w in rest:
                    if w in SHELL_OPERATORS:
                        break
                    if w.startswith("-"):
                        name, eq, value = w.partition("=")
                        if not eq and name in ("--extra-index-url", "--index-url", "-i", "-c", "-r", "-f"):
                            value = next(rest)
                        options.setdefault(name, []).append(value)
                    else:
                        positional.append(w)
                found.append({"options": options, "positional": positional})
        return found

    def project_install(self) -> dict:
        installs = [p for p in self.pip_installs() if any(_is_project(w) for w in p["positional"])]
        assert len(installs) == 1, (
            f"expected exactly one `pip install ... .` (the project, extras allowed), found {len(installs)}"
        )
        return installs[0]


def _is_project(word: str) -> bool:
    """``.`` or ``.[extra,…]``: the project, with its optional dependencies from pyproject."""
    return word == "." or (word.startswith(".[") and word.endswith("]"))


def _requirements(install: dict) -> list[Requirement]:
    return [Requirement(w) for w in install["positional"] if not w.startswith((".", "/"))]


def _yaml_docs(path: Path) -> list[dict]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path.name}: no YAML documents"
    return docs


def _commands_in_lines(lines: list[str]) -> list[list[str]]:
    """`... pipeline/train.py <args>` commands (backslash continuations joined): the argv after the script."""
    logical, buf = [], ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    return [
        shlex.split(s.split("pipeline/train.py", 1)[1], comments=True)
        for s in logical
        if "pipeline/train.py" in s
    ]


def _yaml_comment_commands(path: Path) -> list[list[str]]:
    comments = [
        re.sub(r"^\s*#\s?", "", ln) for ln in path.read_text().splitlines() if ln.lstrip().startswith("#")
    ]
    return _commands_in_lines(comments)


def _markdown_code_commands(path: Path) -> list[list[str]]:
    lines, inside = [], False
    for ln in path.read_text().splitlines():
        if ln.lstrip().startswith("```"):
            inside = not inside
            continue
        if inside:
            lines.append(ln)
    return _commands_in_lines(lines)


def _train_flags() -> set[str]:
    source = (REPO / "pipeline" / "train.py").read_text()
    return set(re.findall(r'add_argument\(\s*"(--[\w-]+)"', source))


def _parse_train_argv(argv: list[str], where: str):
    """(config path or None, overrides, resolved Config) — fails on unknown flags, stray words and bad keys."""
    flags = _train_flags()
    assert VALUE_FLAGS <= flags, f"pipeline/train.py no longer has {sorted(VALUE_FLAGS - flags)}"
    config, overrides = None, []
    words = iter(argv)
    for w in words:
        if w.startswith("-"):
            assert w in flags, f"{where}: pipeline/train.py has no option {w} (known: {sorted(flags)})"
            if w in VALUE_FLAGS:
                value = next(words, None)
                assert value and not value.startswith("-"), f"{where}: {w} needs a value"
                if w == "--config":
                    config = value
        elif "=" in w:
            overrides.append(w)
        else:
            raise AssertionError(f"{where}: stray argument {w!r} in a train.py command")
    # The real check: every key exists in dive.config's schema and every value has the right type ...
    cfg = load_config(overrides=overrides)
    # ... and is possible (paths are on the cluster, not here).
    validate(cfg, check_paths=False)
    return config, overrides, cfg


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _command_words(service: dict) -> list[str]:
    cmd = service.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def _option(words: list[str], name: str) -> str:
    for n, w in enumerate(words):
        if w == name:
            return words[n + 1]
        if w.startswith(name + "="):
            return w.split("=", 1)[1]
    raise AssertionError(f"option {name} not given")


def _mount_targets(service: dict) -> list[str]:
    targets = []
    for v in service.get("volumes") or []:
        targets.append(v["target"] if isinstance(v, dict) else v.split(":")[1])
    return targets


def _under(path: str, roots: list[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


# ---------------------------------------------------------------------------------------------------- image
def test_image_torch_pins_equal_pyproject():
    deps, image = _pyproject_deps(), Dockerfile(DOCKERFILE)
    assert image.args.get("TORCH_VERSION") == _exact_pin(deps["torch"]), (
        "Dockerfile TORCH_VERSION != pyproject"
    )
    assert image.args.get("TORCHVISION_VERSION") == _exact_pin(deps["torchvision"]), (
        "Dockerfile TORCHVISION_VERSION != pyproject"
    )


def test_every_version_the_image_names_is_pyprojects():
    deps, image = _pyproject_deps(), Dockerfile(DOCKERFILE)
    checked = set()
    for install in image.pip_installs():
        for req in _requirements(install):
            name = canonicalize_name(req.name)
            if name in deps:
                assert req.specifier == deps[name].specifier, (
                    f"Dockerfile installs {req}, pyproject says {deps[name]}"
                )
                checked.add(name)
            else:
                assert name in IMAGE_ONLY_PACKAGES, (
                    f"Dockerfile installs {req}, which is not a pyproject dependency: add it to pyproject.toml "
                    "(or, if only the image needs it, to IMAGE_ONLY_PACKAGES with the reason)"
                )
    assert {"torch", "torchvision"} <= checked, (
        "the torch pair must be installed through the checked pip command"
    )


def test_image_installs_the_project_in_one_resolve_as_a_non_root_user():
    image = Dockerfile(DOCKERFILE)
    install = image.project_install()
    names = {canonicalize_name(r.name) for r in _requirements(install)}
    # torch and torchvision in the same resolve as `.`: a later, separate install could swap torch for another build
    assert {"torch", "torchvision"} <= names, (
        "torch/torchvision must be installed in the same pip command as `.`"
    )
    assert any("download.pytorch.org/whl/cu" in u for u in install["options"].get("--extra-index-url", [])), (
        "the project install must take torch from the PyTorch CUDA index"
    )
    # `.` is the project: pyproject.toml must be in the image, in the WORKDIR, before that RUN.
    run_at = image.index("RUN", lambda r: "pip" in r and any(_is_project(w.strip("\"'")) for w in r.split()))
    copy_at = image.index("COPY", lambda c: "pyproject.toml" in c.split())
    assert copy_at < run_at, "pyproject.toml is copied only after the project install"
    assert image.all("WORKDIR")[-1] == "/app", (
        "the project must live in WORKDIR /app (manifests run /app/pipeline/train.py)"
    )
    # Specific paths only, each of which exists: never `COPY . .` (it would carry .venv/, .cache/, outputs/).
    for copy in image.all("COPY"):
        *sources, _dest = [w for w in copy.split() if not w.startswith("--")]
        for src in sources:
            assert src not in (".", "./", "*"), f"COPY {copy}: copy named paths, not the whole context"
            assert (REPO / src).exists(), f"COPY {copy}: {src} does not exist in the repository"
    users = image.all("USER")
    assert users, "the image must switch to a non-root USER"
    assert users[-1].split(":")[0] not in ("root", "0"), f"final USER is {users[-1]}"
    env = " ".join(image.all("ENV"))
    assert re.search(r"(^|\s)RAY_DATA_DISABLE_PROGRESS_BARS=1(\s|$)", env), (
        "RAY_DATA_DISABLE_PROGRESS_BARS=1 unset"
    )
    # KubeRay's default liveness/readiness probes exec `wget ... | grep success` in the Ray containers.
    assert any(re.search(r"apt-get install\b.*\bwget\b", r) for r in image.all("RUN")), "wget not installed"


def test_cuda_base_image_matches_the_torch_cuda_build():
    image = Dockerfile(DOCKERFILE)
    base = image.all("FROM")[0].split()[0]
    m = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)(?:\.\d+)?-[\w.-]+", base)
    assert m, f"base image {base} is not an nvidia/cuda:<X.Y.Z>-… image"
    urls = image.project_install()["options"].get("--extra-index-url", [])
    suffixes = [re.search(r"/whl/cu(\d+)/?$", u) for u in urls]
    suffixes = [s.group(1) for s in suffixes if s]
    assert len(suffixes) == 1, f"expected one PyTorch cuXY index, got {urls}"
    torch_cuda = (suffixes[0][:-1], suffixes[0][-1])  # cu130 -> CUDA 13.0, cu128 -> 12.8
    assert (m.group(1), m.group(2)) == torch_cuda, (
        f"base image CUDA {m.group(1)}.{m.group(2)} != torch build CUDA {'.'.join(torch_cuda)} (cu{suffixes[0]})"
    )


# ---------------------------------------------------------------------------------------------------- compose
def test_compose_stack_is_wired_together():
    (compose,) = _yaml_docs(COMPOSE)
    services = compose["services"]
    assert {"postgres", "mlflow", "ray-head"} <= set(services), sorted(services)
    head, mlflow = services["ray-head"], services["mlflow"]

    head_cmd = " ".join(_command_words(head))
    for part in ("ray start", "--head", "--block", "--num-gpus", "--dashboard-host=0.0.0.0"):
        assert part in head_cmd, f"ray-head command lacks {part}"
    devices = head["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices), (
        "ray-head reserves no NVIDIA GPU"
    )
    head_env = _env(head)
    assert head_env.get("RAY_AUTH_MODE") == "token", "ray-head must run with Ray token auth"

    mlflow_words = _command_words(mlflow)
    assert mlflow_words[:2] == ["mlflow", "server"]
    assert _under(_option(mlflow_words, "--artifacts-destination"), _mount_targets(mlflow)), (
        "MLflow's --artifacts-destination is not on a volume"
    )
    mlflow_env = _env(mlflow)
    assert mlflow_env.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION") == "false", (
        "MLflow job execution not disabled"
    )
    backend = urlparse(
        mlflow_env.get("MLFLOW_BACKEND_STORE_URI") or _option(mlflow_words, "--backend-store-uri")
    )
    assert backend.scheme.startswith("postgresql") and backend.hostname in services, (
        "MLflow backend store is not the postgres service"
    )

    # No secret in the file: the password comes from the environment, and compose stops if it is unset.
    password = _env(services["postgres"]).get("POSTGRES_PASSWORD", "")
    assert password.startswith("${POSTGRES_PASSWORD:?"), (
        "POSTGRES_PASSWORD must be required from the environment"
    )
    for name, svc in services.items():
        for port in svc.get("ports") or []:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond the host's loopback"

    # Every tracking URI Ray jobs use must name the mlflow service, on its port, in its allowed Host headers.
    allowed = _option(mlflow_words, "--allowed-hosts").split(",")
    uris = [head_env["MLFLOW_TRACKING_URI"]]
    for argv in _yaml_comment_commands(COMPOSE):
        config, _, cfg = _parse_train_argv(argv, "compose.yaml")
        uris.append(cfg.tracking.uri)
        assert cfg.scaling.use_gpu, "compose job command must train on the GPUs"
        mounted = _mount_targets(head)
        for what, path in (
            ("--config", config),
            ("run.storage_path", cfg.run.storage_path),
            ("tracking.output_dir", cfg.tracking.output_dir),
        ):
            assert path and _under(path, mounted), f"compose job: {what}={path} is not on a ray-head volume"
    assert len(uris) >= 2, "compose.yaml shows no `ray job submit ... pipeline/train.py` command"
    for uri in uris:
        url = urlparse(uri)
        assert url.hostname == "mlflow" and url.port == int(_option(mlflow_words, "--port")), uri
        assert url.netloc in allowed, f"MLflow would answer 403 to Host {url.netloc} (allowed: {allowed})"


# ---------------------------------------------------------------------------------------------------- kuberay
def _rayjob_and_pvcs():
    docs = _yaml_docs(RAYJOB) + _yaml_docs(PVC)
    jobs = [d for d in docs if d.get("kind") == "RayJob"]
    assert len(jobs) == 1, "expected exactly one RayJob"
    pvcs = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "PersistentVolumeClaim"}
    return jobs[0], pvcs


def _pod_specs(job: dict) -> list[tuple[str, dict, dict]]:
    spec = job["spec"]["rayClusterSpec"]
    groups = [("head", spec["headGroupSpec"])] + [
        (g["groupName"], g) for g in spec.get("workerGroupSpecs", [])
    ]
    return [(name, g, g["template"]["spec"]) for name, g in groups]


def _gpus(pod: dict) -> int:
    return sum(
        int((c.get("resources", {}).get("limits") or {}).get("nvidia.com/gpu", 0)) for c in pod["containers"]
    )


def test_rayjob_runs_training_on_gpu_workers_with_a_shared_pvc():
    job, pvcs = _rayjob_and_pvcs()
    assert job["apiVersion"] == "ray.io/v1", job["apiVersion"]
    assert job["spec"]["shutdownAfterJobFinishes"] is True, "the cluster must go away when the job ends"
    assert isinstance(job["spec"].get("ttlSecondsAfterFinished"), int), "ttlSecondsAfterFinished unset"
    ray_version = job["spec"]["rayClusterSpec"]["rayVersion"]
    assert _pyproject_deps()["ray"].specifier.contains(ray_version), (
        f"rayVersion {ray_version} is not pyproject's Ray"
    )

    (argv,) = _commands_in_lines([job["spec"]["entrypoint"]])
    config, _, cfg = _parse_train_argv(argv, "RayJob entrypoint")
    assert job["spec"]["entrypoint"].split()[0] == "python", (
        "the entrypoint should run the script with python"
    )

    pods = _pod_specs(job)
    (_, head_group, head_pod), workers = pods[0], pods[1:]
    assert head_group["rayStartParams"].get("num-cpus") == "0", "training could be scheduled on the head"
    assert _gpus(head_pod) == 0, "the head should not hold GPUs"
    gpu_groups = [(g, _gpus(p)) for _, g, p in workers if _gpus(p) > 0]
    assert gpu_groups, "no worker group requests nvidia.com/gpu"
    # One Ray Train worker per GPU across the cluster.
    assert cfg.scaling.use_gpu, "RayJob entrypoint must set scaling.use_gpu=true"
    assert cfg.scaling.num_workers == sum(g["replicas"] * n for g, n in gpu_groups), (
        "scaling.num_workers must equal worker pods × GPUs per pod"
    )
    images = {c["image"] for _, _, p in pods for c in p["containers"]}
    assert len(images) == 1, f"head and workers run different images: {images}"

    # Every pod mounts a PVC defined in the manifests, RWX, at one path holding config, checkpoints and outputs.
    mount_paths = set()
    for name, _, pod in pods:
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in pod["volumes"]
            if "persistentVolumeClaim" in v
        }
        assert claims, f"{name}: no PVC volume"
        for claim in claims.values():
            assert claim in pvcs, f"{name}: claim {claim} is not defined in {RAYJOB.name} / {PVC.name}"
            assert "ReadWriteMany" in pvcs[claim]["spec"]["accessModes"], f"PVC {claim} is not ReadWriteMany"
        paths = {
            m["mountPath"]
            for c in pod["containers"]
            for m in c.get("volumeMounts", [])
            if m["name"] in claims
        }
        assert paths, f"{name}: the PVC volume is not mounted"
        mount_paths.add(frozenset(paths))
    assert len(mount_paths) == 1, "head and workers mount the shared volume at different paths"
    shared = sorted(next(iter(mount_paths)))
    for what, path in (
        ("--config", config),
        ("run.storage_path", cfg.run.storage_path),
        ("tracking.output_dir", cfg.tracking.output_dir),
    ):
        assert path and _under(path, shared), f"RayJob: {what}={path} is not on the shared volume {shared}"


# ---------------------------------------------------------------------------------------------------- docs
@pytest.mark.parametrize(
    "path, extract",
    [(COMPOSE, _yaml_comment_commands), (DOCKER_README, _markdown_code_commands)],
    ids=["compose-comments", "docker-readme"],
)
def test_documented_train_commands_use_real_config_keys(path, extract):
    commands = extract(path)
    assert commands, f"{path.name}: no pipeline/train.py command found (did the extraction break?)"
    for argv in commands:
        _parse_train_argv(argv, path.name)


def test_a_misspelled_override_fails_the_check():
    """The manifest checks above rely on load_config refusing unknown keys and bad values."""
    good = ["--config", "/x.yaml", "scaling.num_workers=8", "scaling.use_gpu=true"]
    assert _parse_train_argv(good, "t")[2].scaling.num_workers == 8
    for bad in (
        ["scaling.num_worker=8"],
        ["scaling.use_gpu=maybe"],
        ["scaling.num_workers=0"],
        ["--confg", "x"],
    ):
        with pytest.raises((AssertionError, ValueError)):
            _parse_train_argv(bad, "t")
