"""``dive export RUN_DIR``: write the open_clip ``local-dir:`` export of a run from its latest checkpoint.

A finished run already has ``RUN_DIR/export``; this is for a run that was stopped (or whose export was deleted):
the run's own saved config (``RUN_DIR/config.yaml``) and the newest checkpoint Ray Train kept for it
(``<run.storage_path>/dive-<run id[:12]>/checkpoint_*``) give the same export ``train.py`` writes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dive.config import Config, ConfigError, load_config
from dive.redact import mask_text
from pipeline.home import local_model


def latest_checkpoint(run_dir: Path, cfg: Config) -> tuple[str, dict]:
    """(folder, state) of the newest intact checkpoint, by step, of the run whose output folder is ``run_dir``
    and whose saved config is ``cfg`` (:func:`pipeline.checkpoint.newest_intact`: incomplete ones are passed
    over and named on stderr)."""
    from pipeline.checkpoint import load_newest, run_folder

    found, state = load_newest(*run_folder(cfg.run.storage_path, run_dir.name))
    for path, reason in found.skipped:
        print(f"[dive] passed over {path}: {reason}", file=sys.stderr)
    return found.path, state


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "run_dir",
        help="the run's output folder: <tracking.output_dir>/<MLflow run id> (a folder or an s3:// / gs:// URI)",
    )
    p.add_argument("--out", type=Path, help="export folder (default RUN_DIR/export)")
    args = p.parse_args(argv)
    from dive.models import build_model
    from pipeline import storage
    from pipeline.train import export_checkpoint, saved_config

    try:
        saved, _ = saved_config(args.run_dir)  # a URI's config.yaml is fetched into the local mirror
        run_dir = saved.parent.resolve()
        cfg = load_config(saved)
        folder, state = latest_checkpoint(run_dir, cfg)
    except (ConfigError, FileNotFoundError) as err:  # NoIntactCheckpoint included
        print(f"error: {mask_text(str(err))}", file=sys.stderr)
        return 2
    out = export_checkpoint(
        cfg, state, args.out or run_dir / "export", build_model(local_model(cfg.model)), run_dir.name
    )
    if storage.is_uri(args.run_dir) and args.out is None:
        storage.upload(out, storage.join(args.run_dir, "export"))
        out = storage.join(args.run_dir, "export")
    print(f"export of step {state['step']} ({folder}): {out}")
    print(f"load it: open_clip.create_model_and_transforms('local-dir:{out}')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
