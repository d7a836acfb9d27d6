"""The ``dive`` console script: one front door for the pipeline's commands.

``dive data …``     convert image-text sources into shards, cache teacher embeddings (pipeline.prepare)
``dive validate``   check a run config without starting Ray
``dive train``      same as ``python pipeline/train.py``
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence


def _data(argv: Sequence[str]) -> int:
    from pipeline import prepare

    return prepare.main(argv)


COMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "data": (_data, "convert sources to shards; cache teacher embeddings"),
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
