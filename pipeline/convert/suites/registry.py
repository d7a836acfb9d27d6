"""The recipe registry: what a recipe is, what it returns, and the lookup ``dive data suite`` uses."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.data.format import DataError

# The modules that register recipes, imported on first lookup (each calls :func:`register` at import).
_MODULES = ("pipeline.convert.suites.imagenet", "pipeline.convert.suites.zeroshot")


@dataclass
class Options:
    """What a user may point a recipe at beside SRC; a recipe finds each in SRC's standard place when unset."""

    split: str = ""  # "" → the recipe's default split
    layout: str = ""  # "" → detected from SRC
    labels: Path | None = None  # a label file (ImageNet's validation labels)
    split_file: Path | None = None  # CoOp's split_zhou_<Name>.json
    mappings: Path | None = None  # ObjectNet's mappings/ folder


@dataclass
class Source:
    """What a recipe found in SRC, ready for the shared converter loop.

    ``records`` are :func:`pipeline.convert.common.record` dicts with ``label`` set (known before any image is
    read, so a class without images is an error up front); ``classnames[i]`` names label i. A set scored against
    another classifier sets ``head`` / ``head_classnames`` / ``head_templates`` / ``head_groups`` (see
    :class:`pipeline.data.format.Manifest`).
    """

    records: list[dict[str, Any]]
    classnames: list[str]
    templates: list[str]
    layout: str
    split: str
    template_set: str
    head: str = ""
    head_classnames: list[str] = field(default_factory=list)
    head_templates: list[str] = field(default_factory=list)
    head_groups: list[list[int]] = field(default_factory=list)
    eval_border: int = 0
    shared_names: list[str] = field(default_factory=list)
    protocol: dict[str, str] = field(default_factory=dict)  # extra entries: split source, name source, …


Reader = Callable[[Path, Options], Source]


@dataclass(frozen=True)
class Recipe:
    """A named dataset: ``read(src, options)`` scans SRC (detecting the layout unless ``options.layout``)."""

    name: str
    summary: str  # one line for ``--list``: what it is, which classifier scores it
    splits: tuple[str, ...]
    layouts: tuple[str, ...]
    read: Reader
    default_split: str = ""

    def __post_init__(self) -> None:
        if self.default_split and self.default_split not in self.splits:
            raise ValueError(f"{self.name}: default split {self.default_split!r} not in {self.splits}")


_REGISTRY: dict[str, Recipe] = {}


def register(recipe: Recipe) -> Recipe:
    if recipe.name in _REGISTRY:
        raise ValueError(f"recipe {recipe.name!r} is registered twice")
    _REGISTRY[recipe.name] = recipe
    return recipe


def recipes() -> dict[str, Recipe]:
    """Every registered recipe by name (importing the recipe modules on first use)."""
    for module in _MODULES:
        importlib.import_module(module)
    return dict(sorted(_REGISTRY.items()))


def get(name: str) -> Recipe:
    known = recipes()
    if name not in known:
        raise DataError(
            f"unknown dataset suite {name!r}; known: {', '.join(known)} (see `dive data suite --list`)"
        )
    return known[name]
