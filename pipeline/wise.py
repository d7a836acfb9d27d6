"""WiSE-FT: interpolate the pre-trained and fine-tuned weights for a list of α, export and evaluate each.

    python pipeline/wise.py --config my.yaml --model local-dir:outputs/<run>/export --alphas 0,0.25,0.5,0.75,1
    python pipeline/wise.py … --run-id <mlflow run>        # log into the fine-tuning run instead of a new one

θ_α = (1−α)·θ_pre + α·θ_ft over the whole state dict (both towers and the logit scale); each α's zero-shot heads
are rebuilt from its own text tower. Writes one export per α, a table (JSON + CSV) and an ID-vs-OOD/ZS curve.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dive.config import Config, ConfigError, ModelSettings, load_config
from dive.export import export_model
from dive.metrics import summarize
from dive.models import build_model
from dive.redact import mask_text
from dive.wise import interpolate
from pipeline.home import local_model


def wise_exports(cfg: Config, finetuned: str, alphas: Sequence[float], out: Path) -> dict[float, Path]:
    """Write the open_clip export of θ_α for every α (the teacher is ``cfg.model``)."""
    pre = build_model(local_model(cfg.model))
    ft = build_model(local_model(ModelSettings(name=finetuned)))
    folders = {}
    for alpha in alphas:
        state = interpolate(pre.model.state_dict(), ft.model.state_dict(), alpha)
        card = {"base_model": pre.source, "finetuned": finetuned, "method": "wise-ft", "alpha": alpha}
        folders[alpha] = export_model(
            state,
            out / f"alpha-{alpha:g}",
            ft.model_cfg,
            ft.preprocess_cfg,
            card=card,
            tokenizer=ft.tokenizer,
        )
    return folders


def run_wise(cfg: Config, finetuned: str, alphas: Sequence[float], out: Path) -> list[dict[str, float]]:
    from pipeline.evaluate import evaluate_accuracy, suites_from_config

    folders = wise_exports(cfg, finetuned, alphas, out)
    models = {f"{a:g}": replace(cfg.model, name=f"local-dir:{f}", pretrained="") for a, f in folders.items()}
    results = evaluate_accuracy(models, suites_from_config(cfg), cfg)
    return [{"alpha": float(a), **summarize(results[a])} for a in models]


def plot_curve(rows: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    for key, label in (("ood_avg", "OOD avg"), ("zs_avg", "ZS avg")):
        if all(key in r for r in rows):
            ax.plot([r.get("id_acc", 0) for r in rows], [r[key] for r in rows], "o-", label=label)
            for r in rows:
                ax.annotate(f"α={r['alpha']:g}", (r.get("id_acc", 0), r[key]), fontsize=7)
    ax.set_xlabel("ID accuracy")
    ax.set_ylabel("accuracy")
    ax.set_title("WiSE-FT: θ = (1−α)·θ_pre + α·θ_ft")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="run config YAML: the teacher (model.*) and the eval suites")
    parser.add_argument("--model", required=True, help="the fine-tuned export, local-dir:<folder>")
    parser.add_argument("--alphas", default="0,0.25,0.5,0.75,1", help="comma-separated α in [0, 1]")
    parser.add_argument("--out", default="outputs/wise", help="folder for the exports, table and plot")
    parser.add_argument("--run-id", help="log into this MLflow run (default: a new run)")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show Ray's and libraries' output here too"
    )
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        alphas = [float(a) for a in args.alphas.split(",")]
        if any(not 0.0 <= a <= 1.0 for a in alphas):
            raise ConfigError(f"--alphas: expected values in [0, 1], got {args.alphas}")
    except (ConfigError, ValueError) as err:
        print(f"error: {mask_text(str(err))}", file=sys.stderr)
        return 2
    from pipeline import tracking
    from pipeline.console import command_console, start_ray

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with command_console(out, "console.log", args.verbose) as console:
        console.say(f"[dive] WiSE-FT of {args.model} at α = {args.alphas} (log: {console.path})")
        start_ray(cfg, console)
        rows = run_wise(cfg, args.model, alphas, out)
    (out / "wise.json").write_text(json.dumps(rows, indent=2))
    from pipeline.plots import write_table_csv

    write_table_csv(rows, out / "wise.csv")
    plot_curve(rows, out / "wise.png")
    if args.run_id:  # add the curve to an existing run (e.g. the fine-tune's), leaving its status alone
        mlrun = tracking.Run(tracking.tracking_uri(cfg), args.run_id)
    else:
        mlrun = tracking.Run.start(cfg, run_name="wise-ft", tags={"dive.wise_of": args.model})
    run_id = mlrun.run_id
    for r in rows:
        mlrun.log_metrics(
            {f"wise/{k}": v for k, v in r.items() if k != "alpha"}, step=int(round(r["alpha"] * 100))
        )
    for name in ("wise.json", "wise.csv", "wise.png"):
        mlrun.log_artifact(out / name, "wise")
    if not args.run_id:
        mlrun.end("FINISHED")
    print(json.dumps(rows, indent=2))
    print(f"WiSE-FT table and curve: {out} (MLflow run {run_id}; metric step = 100·α)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
