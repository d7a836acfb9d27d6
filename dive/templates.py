"""Prompt templates: the two placeholder spellings and the named template sets.

A template is a string with one placeholder for the class name. Two spellings are in use: ``{}`` (``str.format``
positional: CLIP's notebooks, open_clip, this project's files) and ``{c}`` (CLIP_benchmark's template files and
its webdataset folders). Both are accepted everywhere; :func:`render` fills either.

Named sets let a config or ``dive data suite`` say *which* prompts a head uses instead of pasting them:
``openai_imagenet`` (CLIP's 80 ImageNet prompts) and ``simple`` (its 7-prompt subset) come from open_clip,
``default`` is this project's 5-prompt ensemble. Per-dataset CLIP sets (``clip:food101`` …) are read by the
dataset suite from CLIP_benchmark's template file where it is installed (:mod:`pipeline.convert.suite`) and stored
in each manifest, so scoring never needs that package.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

POSITIONAL, NAMED = "{}", "{c}"

# A small prompt ensemble for datasets without curated templates (CLIP's "simple" ImageNet subset style).
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a bad photo of the {}.",
    "a photo of the large {}.",
    "a photo of the small {}.",
    "art of the {}.",
)


def check_template(template: str) -> str | None:
    """Why ``template`` cannot be used (None when it can): exactly one ``{}`` or one ``{c}``, no other fields."""
    if not isinstance(template, str):
        return f"expected a string, got {type(template).__name__}"
    if template.count(POSITIONAL) + template.count(NAMED) != 1:
        return "needs exactly one '{}' or '{c}' where the class name goes"
    try:
        render(template, "x")
    except (IndexError, KeyError, ValueError) as err:
        return f"is not a valid template ({type(err).__name__}: {err}); write literal braces as '{{{{' and '}}}}'"
    return None


def render(template: str, classname: str) -> str:
    """The prompt for one class: ``{c}`` filled by name (CLIP_benchmark), ``{}`` by position (CLIP)."""
    if NAMED in template:
        return template.format(c=classname)
    return template.format(classname)


def as_callable(template: str) -> Callable[[str], str]:
    return lambda classname: render(template, classname)


def _from_callables(fns: Sequence[Callable[[str], str]]) -> tuple[str, ...]:
    """open_clip keeps its ImageNet prompts as lambdas; calling each with ``{}`` recovers the format string."""
    return tuple(fn(POSITIONAL) for fn in fns)


SET_NAMES = ("openai_imagenet", "simple", "default")


def named_sets() -> dict[str, tuple[str, ...]]:
    """Template sets known without any dataset: name → prompts (``{}`` spelling). open_clip is imported here,
    not at module import: configs name these sets and are checked before anything heavy is loaded."""
    from open_clip import zero_shot_metadata

    return {
        "openai_imagenet": _from_callables(zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES),
        "simple": _from_callables(zero_shot_metadata.SIMPLE_IMAGENET_TEMPLATES),
        "default": DEFAULT_TEMPLATES,
    }


def named(name: str) -> list[str]:
    """One named set; an unknown name is a ``KeyError`` that lists the known ones."""
    if name not in SET_NAMES:
        raise KeyError(f"unknown template set {name!r}; known sets: {', '.join(sorted(SET_NAMES))}")
    return list(named_sets()[name])
