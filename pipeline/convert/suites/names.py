"""Class lists and prompt templates from the packages that ship them, and the project's own small lists.

Sources, in order of preference: open_clip (CLIP's ImageNet names and prompts), timm (ImageNet's wnids in label
order, the ImageNet-R / -A subsets), CLIP_benchmark (CLIP's per-dataset prompts and several class lists; the
``suites`` extra installs it), then files in ``pipeline/convert/suites/data/`` where no package ships a list — each
opens with its origin and licence.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from pathlib import Path

from dive import templates as named_templates
from pipeline.data.format import DataError

CLIP_PREFIX = "clip:"  # template sets from CLIP_benchmark: clip:<its dataset name>


def _package_file(package: str, relative: str, extra: str = "") -> Path:
    try:
        root = resources.files(package)
    except ModuleNotFoundError:
        hint = f" (pip install 'dive-ray[{extra}]')" if extra else ""
        raise DataError(f"this needs the {package} package, which is not installed{hint}") from None
    path = Path(str(root.joinpath(relative)))
    if not path.is_file():
        raise DataError(f"{path}: not found in the installed {package} (expected it to ship this file)")
    return path


def lines(path: Path) -> list[str]:
    """Non-empty lines, ``#`` comment lines dropped (the project's data files open with their origin)."""
    out = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [line for line in out if line and not line.startswith("#")]


@functools.cache
def timm_info(name: str) -> tuple[str, ...]:
    """A list from timm's ``data/_info`` (e.g. ``imagenet_synsets.txt``: the 1,000 wnids in label order)."""
    return tuple(lines(_package_file("timm", f"data/_info/{name}")))


def imagenet_wnids() -> tuple[str, ...]:
    return timm_info("imagenet_synsets.txt")


def imagenet_classnames() -> list[str]:
    """CLIP's 1,000 ImageNet class names (open_clip), label i ↔ ``imagenet_wnids()[i]``."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES  # imported here: open_clip takes seconds

    return list(IMAGENET_CLASSNAMES)


# CLIP's ImageNet names give two pairs of classes one name each (missile/projectile, sunglass/sunglasses); they
# are kept as published so ImageNet scores match CLIP's and the paper's protocol.
IMAGENET_SHARED_NAMES = ["missile", "sunglasses"]


@functools.cache
def _clip_benchmark(kind: str) -> dict[str, list[str]]:
    path = _package_file("clip_benchmark", f"datasets/en_{kind}.json", extra="suites")
    data: dict[str, list[str]] = json.loads(path.read_text(encoding="utf-8"))
    return data


def clip_benchmark_classnames(dataset: str) -> list[str] | None:
    """CLIP_benchmark's English class names for ``dataset`` (its naming, e.g. ``pets``), None where it has none."""
    names = _clip_benchmark("classnames").get(dataset)
    return list(names) if names else None


def clip_benchmark_templates(dataset: str) -> list[str] | None:
    names = _clip_benchmark("zeroshot_classification_templates").get(dataset)
    return list(names) if names else None


def project_data(name: str) -> list[str]:
    """A list from ``pipeline/convert/suites/data/`` (for sets no installed package names)."""
    return lines(Path(__file__).with_name("data") / name)


def template_set(name: str) -> list[str]:
    """A named template set: ``openai_imagenet``, ``simple``, ``default`` (:mod:`dive.templates`) or
    ``clip:<dataset>``, CLIP's prompts for one dataset as CLIP_benchmark ships them (``{c}`` spelling), or as
    ``data/<dataset>_templates.txt`` keeps them where CLIP_benchmark has none (``clip:ucf101``)."""
    if name.startswith(CLIP_PREFIX):
        dataset = name.removeprefix(CLIP_PREFIX)
        own = Path(__file__).with_name("data") / f"{dataset}_templates.txt"
        if own.is_file():
            return lines(own)
        found = clip_benchmark_templates(dataset)
        if not found:
            raise DataError(f"template set {name!r}: CLIP_benchmark has no templates for that dataset")
        return found
    try:
        return named_templates.named(name)
    except KeyError as err:
        raise DataError(f"{err.args[0]}, or clip:<dataset> (CLIP_benchmark's per-dataset prompts)") from None
