"""The ``dive`` console script: one front door for the pipeline's commands.

``dive data …``     convert image-text sources into shards, cache teacher embeddings (pipeline.convert)
``dive validate``   check a run config without starting Ray
``dive train``      same as ``python pipeline/train.py``
``dive tune``       same as ``python pipeline/tune.py`` (Ray Tune sweeps)
``dive eval``       same as ``python pipeline/evaluate.py`` (score an export on a config's suites)
``dive wise``       same as ``python pipeline/wise.py`` (WiSE-FT curve)
``dive export``     same as ``python pipeline/export.py`` (export a run from its latest checkpoint)
``dive sync``       send what a run spooled while MLflow was unreachable (pipeline.tracking)
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


def _sync(argv: Sequence[str]) -> int:
    import argparse

    from pipeline.tracking import sync

    parser = argparse.ArgumentParser(prog="dive sync", description="send a run's MLflow spool, in order")
    parser.add_argument("run_dir", help="the run's output folder (<output_dir>/<mlflow run id>)")
    return sync(parser.parse_args(argv).run_dir)


COMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "data": (_data, "convert sources to shards; cache teacher embeddings"),
    "validate": (_validate, "check a run config (and its datasets) without starting Ray"),
    "train": (_train, "fine-tune: same as python pipeline/train.py"),
    "tune": (_tune, "Ray Tune sweep: same as python pipeline/tune.py"),
    "eval": (_eval, "score an export on a config's suites: same as python pipeline/evaluate.py"),
    "wise": (_wise, "WiSE-FT exports and curve: same as python pipeline/wise.py"),
    "export": (_export, "open_clip export of a run from its latest checkpoint: python pipeline/export.py"),
    "sync": (_sync, "send what a run spooled while MLflow was unreachable"),
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
