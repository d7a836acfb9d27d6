"""The ``dive`` console script: one front door for the pipeline's commands.

``dive data …``     convert image-text sources into shards, cache teacher embeddings (pipeline.prepare)
``dive validate``   check a run config without starting Ray
``dive train``      same as ``python pipeline/train.py``
``dive tune``       same as ``python pipeline/tune.py`` (Ray Tune sweeps)
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence


def _data(argv: Sequence[str]) -> int:
    from pipeline import prepare

    return prepare.main(argv)


def _train(argv: Sequence[str]) -> int:
    from pipeline import train

    return train.main(argv)


def _validate(argv: Sequence[str]) -> int:
    return _train([*argv, "--validate"])


def _tune(argv: Sequence[str]) -> int:
    from pipeline import tune

    return tune.main(argv)


COMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "data": (_data, "convert sources to shards; cache teacher embeddings"),
    "validate": (_validate, "check a run config (and its datasets) without starting Ray"),
    "train": (_train, "fine-tune: same as python pipeline/train.py"),
    "tune": (_tune, "Ray Tune sweep: same as python pipeline/tune.py"),
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
