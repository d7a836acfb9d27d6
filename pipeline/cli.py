"""The ``dive`` console script: one front door for the pipeline's commands.

``dive data …``     convert image-text sources into shards, cache teacher embeddings (pipeline.convert)
``dive validate``   check a run config without starting Ray
``dive train``      same as ``python pipeline/train.py``
``dive tune``       same as ``python pipeline/tune.py`` (Ray Tune sweeps)
``dive eval``       same as ``python pipeline/evaluate.py`` (score an export on a config's suites)
``dive wise``       same as ``python pipeline/wise.py`` (WiSE-FT curve)
``dive export``     same as ``python pipeline/export.py`` (export a run from its latest checkpoint)
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence


def _data(argv: Sequence[str]) -> int:
    from pipeline.convert.cli import main

    return main(argv)


def _train(argv: Sequence[str]) -> int:
    from pipeline import train

    return train.main(argv)


def _validate(argv: Sequence[str]) -> int:
    return _train([*argv, "--validate"])


def _tune(argv: Sequence[str]) -> int:
    from pipeline import tune

    return tune.main(argv)


def _eval(argv: Sequence[str]) -> int:
    from pipeline import evaluate

    return evaluate.main(argv)


def _wise(argv: Sequence[str]) -> int:
    from pipeline import wise

    return wise.main(argv)


def _export(argv: Sequence[str]) -> int:
    from pipeline import export

    return export.main(argv)


COMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "data": (_data, "convert sources to shards; cache teacher embeddings"),
    "validate": (_validate, "check a run config (and its datasets) without starting Ray"),
    "train": (_train, "fine-tune: same as python pipeline/train.py"),
    "tune": (_tune, "Ray Tune sweep: same as python pipeline/tune.py"),
    "eval": (_eval, "score an export on a config's suites: same as python pipeline/evaluate.py"),
    "wise": (_wise, "WiSE-FT exports and curve: same as python pipeline/wise.py"),
    "export": (_export, "open_clip export of a run from its latest checkpoint: python pipeline/export.py"),
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help") or args[0] not in COMMANDS:
        print("usage: dive <command> [args…]\n\ncommands:")
        for name, (_, help_text) in COMMANDS.items():
            print(f"  {name:<10} {help_text}")
        return 0 if args and args[0] in ("-h", "--help") else 2
    fn, _ = COMMANDS[args[0]]
    return fn(args[1:])


if __name__ == "__main__":
    sys.exit(main())
