"""``dive data suite NAME SRC OUT``: one recipe's source → a labelled set, through the shared converter loop."""

from __future__ import annotations

import hashlib
import os
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipeline import storage
from pipeline.convert.common import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_ROWS_PER_SHARD,
    PathLike,
    check_out,
    convert_records,
    load_templates,
)
from pipeline.convert.suites.names import template_set
from pipeline.convert.suites.registry import Options, get
from pipeline.data.format import LABELLED, DataError, Manifest, check_classnames


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
    holdout: PathLike | None = None,
    holdout_per_class: int = 0,
) -> Manifest:
    """Read ``src`` with recipe ``name`` and write its labelled set to ``out``; images keep their original bytes.

    The manifest records the protocol (suite, split, layout, where names and templates came from) and, for sets
    scored against another classifier, the head mapping. Labels with no image at all are listed on stderr and
    counted in ``protocol['classes_without_images']`` (a miniature or partial copy); a recipe refuses a class
    folder or split entry that exists but holds no image.

    ``holdout`` + ``holdout_per_class`` = k: k images of every class go to a second set in ``holdout`` instead
    (``val.id`` for selection and sweeps: the paper's ImageNet has no validation split apart from its test
    set). They are the k with the smallest SHA-1 of their key, so the split is the same on every machine and
    run. Returns the main set's manifest.
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
    if (holdout is None) != (holdout_per_class <= 0):
        raise DataError("--holdout DIR and --holdout-per-class K (>= 1) go together")
    holdout_path = check_out(holdout, overwrite) if holdout is not None else None
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
    records, held = split_holdout(source.records, holdout_per_class)
    manifest = Manifest(
        name=storage.basename(out_path),
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
    args = (max_pixels, rows_per_shard, overwrite, workers)
    if holdout_path is not None:
        kept = replace(
            manifest,
            name=storage.basename(holdout_path),
            protocol={**manifest.protocol, "holdout": f"{holdout_per_class} per class, smallest sha1(key)"},
        )
        convert_records(held, holdout_path, kept, f"suite {name} (held out)", *args)
        manifest.protocol["held_out_to"] = str(
            holdout_path if storage.is_uri(holdout_path) else Path(holdout_path).resolve()
        )
    return convert_records(records, out_path, manifest, f"suite {name}", *args)


def split_holdout(
    records: list[dict[str, Any]], per_class: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(kept, held out): per label the ``per_class`` records with the smallest SHA-1 of their key held out."""
    if per_class <= 0:
        return records, []
    by_label: dict[int, list[tuple[str, int]]] = {}
    for i, rec in enumerate(records):
        by_label.setdefault(rec["label"], []).append((hashlib.sha1(rec["key"].encode()).hexdigest(), i))
    held = {i for entries in by_label.values() for _, i in sorted(entries)[:per_class]}
    return [r for i, r in enumerate(records) if i not in held], [
        r for i, r in enumerate(records) if i in held
    ]
