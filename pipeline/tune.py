"""Ray Tune sweeps over a run config: λ_AVL, λ_PVL, temperature, lr, EMA momentum — one MLflow child run per trial.

    python pipeline/tune.py --space tune_configs/demo.yaml                      # 2 trials on the demo data
    python pipeline/tune.py --space tune_configs/dive_lambdas.yaml --config my.yaml --num-samples 32
    python pipeline/tune.py --space tune_configs/demo.yaml --name demo-sweep   # rerun the same name: resumes

A space file (YAML) names a base run config, fixed overrides, the objective, the search algorithm, the scheduler
and ``space``: dotted config keys → distributions. Everything is checked before Ray starts. Each trial is a Tune
function that builds a complete run config (base + overrides + sampled values) and runs it through
``pipeline.train.run`` (Train V2: a driver function per trial owns its ``TorchTrainer``), so a trial is exactly a
plain training run: same metric names, export, evaluation, and its resolved config replays through
``pipeline/train.py``. Rank 0 reports ``val/*`` at every epoch end; ASHA prunes on it, Optuna (TPE) proposes.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dive.config import ConfigError
from dive.redact import mask_text
from pipeline.data.format import DataError
from pipeline.home import output_folder
from pipeline.sweep.spec import prepare, sweep_name


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--space", required=True, help="search space YAML (tune_configs/*.yaml)")
    parser.add_argument(
        "--config", help="base run config (default: the space file's `config`, else the demo)"
    )
    parser.add_argument("--num-samples", type=int, help="trials (overrides search.num_samples)")
    parser.add_argument("--max-concurrent", type=int, help="trials at once (overrides search.max_concurrent)")
    parser.add_argument("--name", help="sweep name; rerunning an interrupted sweep's name resumes it")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show Ray's, the trials' and libraries' output here too"
    )
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the base run config")
    args = parser.parse_args(argv)
    spec_overrides = []
    if args.num_samples is not None:
        spec_overrides.append(f"search.num_samples={args.num_samples}")
    if args.max_concurrent is not None:
        spec_overrides.append(f"search.max_concurrent={args.max_concurrent}")
    try:
        spec, base, dists = prepare(args.space, args.config, args.overrides, spec_overrides)
    except (ConfigError, DataError, FileNotFoundError) as err:
        print(f"error: {mask_text(str(err))}", file=sys.stderr)
        return 2
    try:
        name = sweep_name(base, args.name, Path(args.space).stem)
    except ConfigError as err:
        print(f"error: {mask_text(str(err))}", file=sys.stderr)
        return 2
    from pipeline.console import Console
    from pipeline.sweep.search import sweep  # Ray: only once the space and config are checked

    with Console(output_folder(base.tracking.output_dir), verbose=args.verbose) as console:
        result = sweep(spec, base, dists, name, console=console)
    if result is None:
        return 130
    print(json.dumps(asdict(result) | {"trials": len(result.trials)}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
