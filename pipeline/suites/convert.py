"""``dive data suite NAME SRC OUT``: one recipe's source → a labelled set, through the shared converter loop."""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

from pipeline.convert.common import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_ROWS_PER_SHARD,
    PathLike,
    check_out,
    convert_records,
    load_templates,
)
from pipeline.data.format import LABELLED, DataError, Manifest, check_classnames
from pipeline.suites.names import template_set
from pipeline.suites.registry import Options, get


def resolve_templates(value: str) -> tuple[list[str], str]:
    """``--templates``: a file (one per line) or a named set; returns the templates and what to record."""
    if os.sep in value or Path(value).is_file():
        return load_templates(value), f"file:{Path(value).name}"
    return template_set(value), value


def convert_suite(
    name: str,
    src: PathLike,
    out: PathLike,
    options: Options | None = None,
    *,
    templates: str | None = None,
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    overwrite: bool = False,
    workers: int = 0,
) -> Manifest:
    """Read ``src`` with recipe ``name`` and write its labelled set to ``out``; images keep their original bytes.

    The manifest records the protocol (suite, split, layout, where names and templates came from) and, for sets
    scored against another classifier, the head mapping. Labels with no image at all are listed on stderr and
    counted in ``protocol['classes_without_images']`` (a miniature or partial copy); a recipe refuses a class
    folder or split entry that exists but holds no image.
    """
    recipe = get(name)
    opts = options or Options()
    split = opts.split or recipe.default_split or recipe.splits[0]
    if split not in recipe.splits:
        raise DataError(f"suite {name}: unknown split {split!r}; it has {', '.join(recipe.splits)}")
    if opts.layout and opts.layout not in recipe.layouts:
        raise DataError(f"suite {name}: unknown layout {opts.layout!r}; it reads {', '.join(recipe.layouts)}")
    root = Path(src)
    if not root.exists():
        raise DataError(
            f"{root}: no such file or folder (expected {name} in one of: {', '.join(recipe.layouts)})"
        )
    out_path = check_out(out, overwrite)
    source = recipe.read(root, Options(**{**vars(opts), "split": split}))
    chosen, template_source = (
        resolve_templates(templates) if templates else (source.templates, source.template_set)
    )
    check_classnames(source.classnames, root, shared=source.shared_names)
    counts = Counter(r["label"] for r in source.records)
    empty = [i for i in range(len(source.classnames)) if counts[i] == 0]
    if not source.records:
        raise DataError(f"{root}: no images found for {name} ({source.layout} layout, split {split})")
    if empty:
        shown = ", ".join(f"{source.classnames[i]!r}" for i in empty[:5]) + (" …" if len(empty) > 5 else "")
        print(
            f"note: {len(empty)} of {len(source.classnames)} classes have no images in {root}: {shown}",
            file=sys.stderr,
        )
    head_templates = source.head_templates
    if templates and source.head:
        head_templates = chosen
    manifest = Manifest(
        name=out_path.name,
        kind=LABELLED,
        classnames=source.classnames,
        templates=chosen,
        source=str(root.resolve()),
        head=source.head,
        head_classnames=source.head_classnames,
        head_templates=head_templates,
        head_groups=source.head_groups,
        eval_border=source.eval_border,
        shared_names=source.shared_names,
        protocol={
            "suite": name,
            "split": split,
            "layout": source.layout,
            "templates": template_source,
            **source.protocol,
            **({"classes_without_images": str(len(empty))} if empty else {}),
        },
    )
    return convert_records(
        source.records, out_path, manifest, f"suite {name}", max_pixels, rows_per_shard, overwrite, workers
    )
