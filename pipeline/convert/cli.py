"""The ``dive data`` command line: one subcommand per converter, plus ``cache-teacher``; ``main`` returns the exit status."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dive.config import ModelSettings
from dive.redact import mask_text
from pipeline import storage
from pipeline.console import command_console
from pipeline.convert.captions import convert_captions
from pipeline.convert.common import DEFAULT_IMAGE_EXTS, DEFAULT_MAX_PIXELS, DEFAULT_ROWS_PER_SHARD, PathLike
from pipeline.convert.imagefolder import convert_imagefolder
from pipeline.convert.teacher_cache import cache_teacher
from pipeline.convert.wds import convert_wds
from pipeline.data.format import LABELLED, DataError, Manifest, read_manifest


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="output folder for the shards and dataset.json")
    _common_options(p)


def _common_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--rows-per-shard", type=int, default=DEFAULT_ROWS_PER_SHARD, help="rows per Parquet shard"
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help="skip images with more pixels (default %(default)s)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="0: convert in this process (default); N > 0: read and check images with Ray Data "
        "(N parallel tasks; starts a local Ray instance unless one is running)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dive data",
        description="Convert image sources into Parquet shards + dataset.json; cache teacher embeddings. "
        "Bad samples are skipped, printed and counted; a bad source is an error before anything is written. "
        "Set DIVE_NO_PROGRESS=1 to hide the progress bar.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("imagefolder", help="class subfolders of images -> a labelled set")
    p.add_argument("src", help="folder with one subfolder of images per class")
    _common(p)
    p.add_argument("--templates", help="prompt templates file: one per line, with {} for the class name")

    p = sub.add_parser("captions", help="CSV/JSONL of image paths and captions -> a captioned set")
    p.add_argument("file", help="a .csv (with a header row) or .jsonl file")
    _common(p)
    p.add_argument("--image-column", default="image", help="column with the image path (default %(default)s)")
    p.add_argument(
        "--caption-column", default="caption", help="column with the caption (default %(default)s)"
    )
    p.add_argument("--base-dir", help="folder image paths are relative to (default: the file's folder)")
    p.add_argument(
        "--allow-outside-base",
        action="store_true",
        help="read image paths that resolve outside the base folder (refused by default)",
    )
    p.add_argument(
        "--encoding", default="utf-8-sig", help="the file's text encoding (default UTF-8, BOM or not)"
    )

    p = sub.add_parser("wds", help="webdataset .tar shards -> a captioned (or labelled) set")
    p.add_argument("src", help="a .tar file or a folder of *.tar files (uncompressed)")
    _common(p)
    p.add_argument(
        "--image-ext", default=",".join(DEFAULT_IMAGE_EXTS), help="image extensions, in order of preference"
    )
    p.add_argument("--caption-ext", default="txt", help="caption member extension (default %(default)s)")
    p.add_argument(
        "--label-ext", help="label member extension (e.g. cls): a labelled set when there are no captions"
    )
    p.add_argument("--classnames", help="labelled sets: class names file, one per line (line i = label i)")
    p.add_argument("--templates", help="labelled sets: prompt templates file, one per line with {}")
    p.add_argument("--encoding", default="utf-8", help="caption members' text encoding (default %(default)s)")

    p = sub.add_parser(
        "suite",
        help="a named dataset (ImageNet and its shifts, the zero-shot sets) from the layout it ships in",
        description="Convert a named dataset from its official, torchvision, CoOp-split or CLIP_benchmark "
        "webdataset layout into a labelled set with its class names, templates and head (docs/data.md). "
        "`dive data suite --list` shows every recipe, its splits and layouts.",
    )
    p.add_argument("name", nargs="?", help="recipe name (see --list)")
    p.add_argument(
        "src", nargs="?", help="the dataset as downloaded (a folder, or a split file's image root)"
    )
    p.add_argument("out", nargs="?", help="output folder for the shards and dataset.json")
    p.add_argument("--list", action="store_true", help="list the recipes, their splits and layouts, and exit")
    p.add_argument(
        "--split", default="", help="which split to convert (default: the recipe's evaluation split)"
    )
    p.add_argument("--layout", default="", help="the source layout (default: detected)")
    p.add_argument(
        "--templates",
        help="a named template set (openai_imagenet, simple, default, clip:<dataset>) or a file",
    )
    p.add_argument(
        "--labels", type=Path, help="a label file, where the layout keeps labels apart (ImageNet val)"
    )
    p.add_argument("--split-file", type=Path, help="CoOp's split_zhou_<Name>.json (default: found in SRC)")
    p.add_argument("--mappings", type=Path, help="ObjectNet's mappings/ folder (default: SRC/mappings)")
    p.add_argument("--holdout", help="write K images per class to this folder instead (a val.id split)")
    p.add_argument("--holdout-per-class", type=int, default=0, metavar="K", help="images per class held out")
    _common_options(p)

    p = sub.add_parser(
        "cache-teacher", help="add the frozen teacher's embeddings to a captioned set, in place"
    )
    p.add_argument("dataset", help="folder of captioned shards (rewritten all-or-nothing)")
    p.add_argument(
        "--model-name", required=True, help="open_clip model name, dive-tiny, or local-dir:<folder>"
    )
    p.add_argument(
        "--pretrained", default="", help="open_clip pretrained tag or weights file ('' = random init)"
    )
    p.add_argument(
        "--batch-size", type=int, default=64, help="rows per teacher forward pass (default %(default)s)"
    )
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="skip images with more pixels")
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="0: run the teacher in this process (default); N > 0: a Ray Data pool of N actors (on cuda one GPU "
        "each; on cpu this machine's cores split between them)",
    )
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="where the teacher runs (default %(default)s); cuda: bf16 autocast, and with --workers N a task "
        "stage on the CPUs decodes the images for the GPU actors",
    )
    for command in sub.choices.values():
        command.add_argument(
            "-v", "--verbose", action="store_true", help="show Ray's and libraries' output here too"
        )
    return parser


def _recipe_list() -> str:
    from pipeline.convert.suites.registry import recipes

    rows = [
        f"{r.name:<16} {r.summary}\n{'':<16}   splits: {', '.join(r.splits)}; layouts: {', '.join(r.layouts)}"
        for r in recipes().values()
    ]
    return "\n".join(rows)


def _summary(
    command: str, manifest: Manifest, out: PathLike, seconds: float, skipped: Mapping[str, int]
) -> str:
    total = sum(skipped.values())
    by_reason = ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items()))
    what = f"{manifest.kind}, {manifest.num_classes} classes" if manifest.kind == LABELLED else manifest.kind
    if command == "cache-teacher":
        what += f", teacher {manifest.teacher_fingerprint}, D={manifest.teacher_dim}"
    if manifest.protocol:
        what += ", " + ", ".join(f"{k} {v}" for k, v in manifest.protocol.items() if k != "suite")
    skip_text = f"skipped {total}" + (f" ({by_reason})" if total else "")
    return f"{command}: wrote {manifest.num_rows} rows ({what}) to {out}; {skip_text}; {seconds:.1f} s"


def _run(args: argparse.Namespace, common: dict[str, Any]) -> tuple[Manifest, str, Mapping[str, int]]:
    """The conversion ``args.command`` asks for: (manifest, output folder, skipped counts)."""
    if args.command == "imagefolder":
        manifest = convert_imagefolder(args.src, args.out, templates=args.templates, **common)
        out, skipped = args.out, manifest.skipped
    elif args.command == "captions":
        manifest = convert_captions(
            args.file,
            args.out,
            image_column=args.image_column,
            caption_column=args.caption_column,
            base_dir=args.base_dir,
            encoding=args.encoding,
            allow_outside_base=args.allow_outside_base,
            **common,
        )
        out, skipped = args.out, manifest.skipped
    elif args.command == "suite":
        from pipeline.convert.suites.convert import convert_suite
        from pipeline.convert.suites.registry import Options

        options = Options(
            split=args.split,
            layout=args.layout,
            labels=args.labels,
            split_file=args.split_file,
            mappings=args.mappings,
        )
        manifest = convert_suite(
            args.name,
            args.src,
            args.out,
            options,
            templates=args.templates,
            holdout=args.holdout,
            holdout_per_class=args.holdout_per_class,
            **common,
        )
        out, skipped = args.out, manifest.skipped
    elif args.command == "wds":
        manifest = convert_wds(
            args.src,
            args.out,
            image_ext=[e for e in args.image_ext.split(",") if e.strip()],
            caption_ext=args.caption_ext,
            label_ext=args.label_ext,
            classnames=args.classnames,
            templates=args.templates,
            encoding=args.encoding,
            **common,
        )
        out, skipped = args.out, manifest.skipped
    else:
        try:
            before = read_manifest(args.dataset).skipped
        except DataError:  # cache_teacher names what is wrong with the folder
            before = {}
        manifest = cache_teacher(
            args.dataset,
            ModelSettings(name=args.model_name, pretrained=args.pretrained),
            batch_size=args.batch_size,
            workers=args.workers,
            max_pixels=args.max_pixels,
            device=args.device,
        )
        out = args.dataset
        skipped = {k: v - before.get(k, 0) for k, v in manifest.skipped.items() if v - before.get(k, 0) > 0}
    return manifest, out, skipped


def main(argv: Sequence[str] | None = None) -> int:
    """``dive data COMMAND …``; returns the exit status (2 with one ``error: …`` line for a bad source)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2
    if args.command == "suite" and (args.list or not all((args.name, args.src, args.out))):
        if not args.list:
            print("error: dive data suite needs NAME SRC OUT (or --list)", file=sys.stderr)
            return 2
        print(_recipe_list())
        return 0
    common = {}
    if args.command != "cache-teacher":
        common = dict(
            rows_per_shard=args.rows_per_shard,
            max_pixels=args.max_pixels,
            overwrite=args.overwrite,
            workers=args.workers,
        )
    start = time.perf_counter()
    target = args.dataset if args.command == "cache-teacher" else args.out
    # The log goes beside a local output folder; for a URI, into the working directory.
    logs = Path.cwd() if storage.is_uri(target) else Path(target).resolve().parent
    try:
        with command_console(logs, f"{storage.basename(target)}.{args.command}.log", args.verbose):
            manifest, out, skipped = _run(args, common)
    except DataError as err:
        print("error: " + mask_text(str(err)).replace("\n", " "), file=sys.stderr)
        return 2
    skipped = {k: v for k, v in skipped.items() if k != "total"}
    print(_summary(args.command, manifest, out, time.perf_counter() - start, skipped))
    return 0
