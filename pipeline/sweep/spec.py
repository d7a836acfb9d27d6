"""Sweep space files: typed spec, distributions, checks against the run config, trial configs — no Ray.

Everything a sweep can get wrong is found here, before Ray starts: unknown keys, bad bounds, a distribution whose
values the key's type cannot hold, an objective the run config does not report, a tie to a key outside the space. Importing this module loads no Ray (the benchmark's
sweep collector and ``run.py`` use it).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dive.config import (
    Config,
    ConfigError,
    apply_overrides,
    explain_error,
    from_dict,
    load_config,
    validate,
)
from pipeline.home import output_folder

DISTRIBUTIONS = ("uniform", "loguniform", "choice", "randint", "grid")
VAL_METRICS = {
    "val/objective": "",
    "val/id_acc": "val.id",
    "val/ref_retrieval": "val.ref",
    "val/zs_acc": "val.zs",
    "val/zs_far_acc": "val.zs_far",
}


class ObjectiveMode(str, enum.Enum):
    """Whether the sweep maximises or minimises its objective."""

    max = "max"
    min = "min"


class SearchAlgorithm(str, enum.Enum):
    """How trials' values are drawn."""

    optuna = "optuna"  # Optuna's TPE
    random = "random"  # Ray Tune's random search
    grid = "grid"  # every combination of the {grid: [...]} keys, search.num_samples times each (the paper's λ grid)


class SchedulerKind(str, enum.Enum):
    """Whether poor trials are stopped early."""

    asha = "asha"  # ASHA on epochs
    none = "none"  # every trial runs all its epochs (FIFO)


@dataclass
class Objective:
    # A val/* metric rank 0 reports at every epoch end (never an eval suite: that would tune on the test sets).
    metric: str = "val/objective"
    mode: ObjectiveMode = ObjectiveMode.max


@dataclass
class Search:
    algorithm: SearchAlgorithm = SearchAlgorithm.optuna
    num_samples: int = 8
    max_concurrent: int = 1
    seed: int = 0


@dataclass
class Scheduler:
    name: SchedulerKind = SchedulerKind.asha
    # ASHA's unit is the epoch: a trial is compared with its peers first after grace_period epochs.
    grace_period: int = 1
    reduction_factor: int = 2


@dataclass
class SweepSpec:
    # Base run config (YAML); --config on the command line wins. "" = the built-in demo config.
    config: str = ""
    # a.b → value, applied to every trial before the sampled values.
    overrides: dict[str, Any] = field(default_factory=dict)
    objective: Objective = field(default_factory=Objective)
    search: Search = field(default_factory=Search)
    scheduler: Scheduler = field(default_factory=Scheduler)
    # a.b → {uniform|loguniform|randint: [low, high]} or {choice: [v1, v2, …]}, of the key's type: an int key
    # takes randint (high exclusive) or a choice of ints; a float key any of them (randint's ints are floats).
    # {grid: [v1, v2, …]} tries every value (search.algorithm grid: every key a grid).
    space: dict[str, Any] = field(default_factory=dict)
    # a.b → c.d: key a.b takes the value sampled for the space key c.d (the paper's one shared λ:
    # loss.lambda_pvl: loss.lambda_avl).
    tie: dict[str, str] = field(default_factory=dict)


def load_spec(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> SweepSpec:
    """Read a space file (+ ``a.b=c`` overrides of its own fields), typed; errors name the file and key."""
    try:
        raw = OmegaConf.load(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such space file") from None
    except Exception as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    try:
        merged = OmegaConf.merge(
            OmegaConf.structured(SweepSpec), raw, OmegaConf.from_dotlist(list(overrides))
        )
        plain = OmegaConf.to_container(merged, resolve=True)
    except OmegaConfBaseException as err:
        raise explain_error(err, str(path)) from None
    return SweepSpec(
        config=plain["config"],
        overrides=dict(plain["overrides"]),
        objective=Objective(**plain["objective"]),
        search=Search(**plain["search"]),
        scheduler=Scheduler(**plain["scheduler"]),
        space=dict(plain["space"]),
        tie=dict(plain["tie"]),
    )


def _distribution(path: str, key: str, spec: Any) -> tuple[str, list[Any]]:
    where = f"{path}: space key '{key}'"
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
        raise ConfigError(f"{where}: expected one of {{{' | '.join(DISTRIBUTIONS)}: …}}, got {spec!r}")
    kind, args = next(iter(spec.items()))
    if kind in ("choice", "grid"):
        if not isinstance(args, list) or not args:
            raise ConfigError(f"{where}: {kind} needs a non-empty list of values, got {args!r}")
        return kind, args
    if not (isinstance(args, list) and len(args) == 2 and all(isinstance(a, int | float) for a in args)):
        raise ConfigError(f"{where}: {kind} needs [low, high] numbers, got {args!r}")
    low, high = args
    if not low < high:
        raise ConfigError(f"{where}: {kind} needs low < high, got [{low}, {high}]")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: loguniform needs bounds > 0, got [{low}, {high}]")
    if kind == "randint" and not all(isinstance(a, int) for a in args):
        raise ConfigError(f"{where}: randint needs integer bounds, got {args!r}")
    return kind, [low, high]


def _field_type(key: str) -> Any:
    """The annotated type of a dotted run-config key (``optim.epochs`` → ``int``); None when the key names no
    leaf field (an unknown key is reported by the bound check, with its "Did you mean")."""
    node: Any = Config
    for name in key.split("."):
        if not (isinstance(node, type) and dataclasses.is_dataclass(node)):
            return None
        hints = typing.get_type_hints(node)
        if name not in hints:
            return None
        node = hints[name]
    return None if isinstance(node, type) and dataclasses.is_dataclass(node) else node


def _holds(kind: type, value: Any) -> bool:
    """Whether a YAML value is of the config type ``kind`` as written — no conversion. bool is a subclass of int
    in Python, so it is ruled out explicitly; an int is a valid float (every int is a float value)."""
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, int | float)
    if kind is int:
        return isinstance(value, int)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return isinstance(value, str)  # which strings are members is the bound check's (it names them)
    origin = typing.get_origin(kind) or kind
    return isinstance(origin, type) and isinstance(value, origin)


def _type_name(kind: type) -> str:
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return f"one of {', '.join(m.value for m in kind)}"
    names = {int: "an int", float: "a float", bool: "a bool", str: "a string", type(None): "null"}
    return names.get(kind, f"a {getattr(typing.get_origin(kind) or kind, '__name__', kind)}")


def _int_fix(low: Any, high: Any) -> str:
    """The integer spelling of a [low, high] float range: randint (high exclusive, as Tune's) or a choice."""
    lo, hi = math.ceil(low), math.floor(high)
    if lo > hi:
        return "use {randint: [low, high]} with integer bounds (high exclusive) or {choice: [...]} of ints"
    fix = f"use {{randint: [{lo}, {hi + 1}]}} (high exclusive)"
    if hi - lo < 8:
        fix += f" or {{choice: [{', '.join(str(v) for v in range(lo, hi + 1))}]}}"
    return fix


def _type_problem(key: str, kind: str, args: list[Any]) -> tuple[str, str] | None:
    """Why the values ``kind``/``args`` draws cannot be stored in ``key`` (reason, fix), or None if they can.

    OmegaConf refuses a float for an int field: without this check the bounds of ``optim.epochs: {uniform:
    [1, 3]}`` (both ints) pass, and every trial then fails inside Ray on its first sampled 2.37. ``randint`` on a
    float key is accepted (ints are valid floats; the trial sees 3.0). Choice values must be of the key's type
    as written: the string "1e-3" for a float key or 1 for a bool key would be converted silently, 1.5 for an
    int key refused inside every trial that draws it.
    """
    hint = _field_type(key)
    if hint is None:
        return None
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    nullable = type(None) in options
    kinds = [k for k in options if k is not type(None)]
    if len(kinds) != 1:
        return None
    base = kinds[0]
    what = f"{key} is {_type_name(base)}" + (" (or null)" if nullable else "")
    if kind in ("choice", "grid"):
        for value in args:
            if not (_holds(base, value) or (nullable and value is None)):
                unquote = isinstance(value, str) and base in (int, float)
                fix = "list only values of that type" + ("; write numbers unquoted" if unquote else "")
                return f"choice value {value!r} is {_type_name(type(value))}, but {what}", fix
        return None
    if base is float or (base is int and kind == "randint"):
        return None
    if base is int:
        return f"{what}, but {kind} samples floats (every trial would fail)", _int_fix(*args)
    fix = "use {choice: [true, false]}" if base is bool else "use {choice: [...]} of its values"
    return f"{what}, but {kind} samples numbers (every trial would fail)", fix


def override(key: str, value: Any) -> str:
    """``a.b=value`` with the value spelled as YAML (JSON is YAML), so bools, nulls and floats keep their type."""
    return f"{key}={json.dumps(value)}"


def check_spec(spec: SweepSpec, base: Config, path: str) -> dict[str, tuple[str, list[Any]]]:
    """Every key real, every distribution of the key's type, every bound a valid config value, the objective
    reported by this config — before Ray."""
    if spec.objective.metric not in VAL_METRICS:
        raise ConfigError(
            f"{path}: key 'objective.metric': expected one of {sorted(VAL_METRICS)} (validation metrics; "
            f"tuning on eval suites would tune on the test sets), got {spec.objective.metric!r}"
        )
    needed = VAL_METRICS[spec.objective.metric]
    if needed and not getattr(base.val, needed.split(".")[1]):
        raise ConfigError(f"{path}: objective {spec.objective.metric} needs {needed} set in the run config")
    if not (base.val.id or base.val.ref or base.val.zs or base.val.zs_far):
        raise ConfigError(
            f"{path}: the run config sets none of val.id, val.ref, val.zs, val.zs_far; nothing to optimise"
        )
    for key, minimum in (
        ("search.num_samples", 1),
        ("search.max_concurrent", 1),
        ("scheduler.grace_period", 1),
        ("scheduler.reduction_factor", 2),
    ):
        section, name = key.split(".")
        value = getattr(getattr(spec, section), name)
        if value < minimum:
            raise ConfigError(f"{path}: key '{key}': expected an integer >= {minimum}, got {value}")
    if not spec.space:
        raise ConfigError(f"{path}: key 'space': expected at least one dotted config key to search")
    dists = {key: _distribution(path, key, value) for key, value in spec.space.items()}
    grids = [key for key, (kind, _) in dists.items() if kind == "grid"]
    if (spec.search.algorithm is SearchAlgorithm.grid) != (len(grids) == len(dists)):
        raise ConfigError(
            f"{path}: search.algorithm grid goes with {{grid: [...]}} on every space key (got algorithm "
            f"{spec.search.algorithm.value}, grid keys {grids or 'none'} of {list(dists)})"
        )
    for target, source in spec.tie.items():
        if source not in dists or target in dists:
            raise ConfigError(
                f"{path}: tie '{target}: {source}': expected a key outside the space tied to a space key "
                f"({', '.join(dists)})"
            )
    for key, (kind, args) in dists.items():
        problem = _type_problem(key, kind, args)
        if problem is not None:
            raise ConfigError(f"{path}: space key '{key}': {problem[0]}: {problem[1]}")
    for target, source in spec.tie.items():  # the tied key is given the source's sampled value as is
        problem = _type_problem(target, *dists[source])
        if problem is not None:
            raise ConfigError(
                f"{path}: tie '{target}: {source}': {target} takes the values sampled for {source}, and "
                f"{problem[0]}; tie it to a space key of the same type"
            )
    for key, (_, values) in dists.items():
        for value in values:  # both bounds (or every choice) must make a valid run config
            tied = [override(t, value) for t, s in spec.tie.items() if s == key]
            try:
                validate(apply_overrides(base, [override(key, value), *tied]), check_paths=False)
            except ConfigError as err:
                detail = str(err).replace("invalid config:\n  ", "").replace("\n  ", "; ")
                raise ConfigError(f"{path}: space key '{key}' = {value!r}: {detail}") from None
    return dists


def trial_count(spec: SweepSpec) -> int:
    """Trials a complete sweep runs: num_samples, times every grid combination for a grid search."""
    count = spec.search.num_samples
    for value in spec.space.values():
        if isinstance(value, dict) and "grid" in value:
            count *= len(value["grid"])
    return count


def trial_config(base: dict[str, Any], params: dict[str, Any], tie: dict[str, str] | None = None) -> Config:
    """The complete run config of one trial: base (already holding the sweep's fixed overrides) + sampled values
    (+ the keys tied to them)."""
    values = {k: (v.item() if hasattr(v, "item") else v) for k, v in params.items()}
    values |= {target: values[source] for target, source in (tie or {}).items()}
    return apply_overrides(from_dict(base), [override(k, v) for k, v in values.items()])


def prepare(
    space: str, config: str | None, overrides: list[str], spec_overrides: list[str]
) -> tuple[SweepSpec, Config, dict[str, Any]]:
    """Load and check the space and the base run config (with the space's fixed overrides) — before Ray."""
    from pipeline.preflight import check_inputs
    from pipeline.train import DEMO_CONFIG, prepare_config

    spec = load_spec(space, spec_overrides)
    fixed = [override(k, v) for k, v in spec.overrides.items()] + list(overrides)
    path = config or spec.config or None
    dists = check_spec(spec, load_config(path or DEMO_CONFIG, fixed), space)  # cheap: no data touched yet
    base = prepare_config(path, fixed)
    check_inputs(base)  # a missing input or a bad dataset fails the sweep here, not every trial inside Ray
    return spec, base, dists


def sweep_name(base: Config, explicit: str | None, default: str) -> str:
    """An unfinished sweep of that name resumes; a finished default name moves on to the next free ``-N``."""
    sweeps = output_folder(base.tracking.output_dir) / "sweeps"

    def finished(name: str) -> bool:
        state = sweeps / name / "sweep.json"
        return state.is_file() and json.loads(state.read_text()).get("finished", False)

    if explicit:
        if finished(explicit):
            raise ConfigError(
                f"--name {explicit}: that sweep has finished ({sweeps / explicit}); pick a new name"
            )
        return explicit
    name, n = default, 1
    while finished(name):
        n += 1
        name = f"{default}-{n}"
    return name
