"""Evaluation: ID / OOD / zero-shot accuracy and RSA for the teacher and a fine-tuned model, side by side.

Text heads are computed once per suite and model on the driver. Small suites (``eval.in_process_rows`` images in
all) are then scored right there, where the models already are; larger ones stream through one Ray Data
``map_batches`` pass over an actor pool (:mod:`pipeline.pool`: one actor per GPU on ``eval.device`` cuda, else
``eval.actors`` CPU actors) whose actors score every model on every image, with the driver's models and heads
sent to them once. Also a command of its own:

    python pipeline/evaluate.py --config X.yaml --model local-dir:outputs/<run>/export

(The WiSE-FT curve over several α is ``pipeline/wise.py``.)
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch

from dive import zeroshot
from dive.config import Config, ConfigError, EvalDevice, ModelSettings, eval_device, load_config
from dive.export import LinearHead, load_linear_head
from dive.heads import LabelMap, project_logits
from dive.metrics import SetResult, rsa_report, summarize, table_rows
from dive.models import LOCAL_DIR, ModelBundle, build_model
from pipeline.convert.suites.names import template_set
from pipeline.data.format import (
    CAPTIONED,
    LABELLED,
    Manifest,
    check_dataset,
    iter_rows,
    shard_files,
    tar_files,
)
from pipeline.data.streams import open_dataset
from pipeline.data.tags import no_scheme, tag_suite
from pipeline.data.transforms import normalize_images, preprocess_batch, stream_image_transform
from pipeline.home import local_model, output_folder
from pipeline.pool import actor_device, autocast, check_device, fetch, map_pool, plan_pool


@dataclass
class Suite:
    name: str
    kind: str  # "id" | "ood" | "zs" | "zs_far"
    folder: str


def suites_from_config(cfg: Config) -> list[Suite]:
    suites = [Suite("id", "id", cfg.eval.id)] if cfg.eval.id else []
    suites += [Suite(name, "ood", folder) for name, folder in cfg.eval.ood.items()]
    suites += [Suite(name, "zs", folder) for name, folder in cfg.eval.zs.items()]
    suites += [Suite(name, "zs_far", folder) for name, folder in cfg.eval.zs_far.items()]
    return suites


@dataclass
class _Scoring:
    """What every scorer needs, built once on the driver: each model (eval mode) with its mean / std, its head per
    suite, and how each suite's labels map onto its head's classes (None: one head class per label)."""

    models: dict[str, tuple[Any, tuple[float, ...], tuple[float, ...]]]  # (CLIP model, mean, std)
    heads: dict[str, list[np.ndarray]]
    label_maps: list[LabelMap | None]


class _Scorer:
    """Scores every model on a batch; returns per-image correctness. Called directly for small suites (on the
    driver's device, its threads untouched); a Ray Data actor for large ones, ``scoring`` then an ObjectRef the
    driver put once, ``decode`` the :func:`preprocess_batch` arguments where the actor decodes its own batches
    (cpu; on cuda a task stage has already decoded them)."""

    def __init__(
        self,
        scoring: _Scoring | ray.ObjectRef,
        device: str = "cpu",
        threads: int = 0,
        decode: Mapping[str, Any] | None = None,
    ) -> None:
        self.device = actor_device(device, threads)
        shared: _Scoring = fetch(scoring)
        self.models = {
            name: (model.to(self.device).eval(), mean, std)
            for name, (model, mean, std) in shared.models.items()
        }
        # Copies: arrays from the object store are read-only, which torch.from_numpy warns about in every actor.
        self.heads = {
            name: [torch.tensor(h, device=self.device) for h in hs] for name, hs in shared.heads.items()
        }
        self.label_maps = shared.label_maps
        self.decode = decode

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.decode is not None:
            batch = preprocess_batch(batch, **self.decode)
        out: dict[str, np.ndarray] = {"set": batch["set"]}
        if len(batch["set"]) == 0:  # every image of the batch was skipped: nothing to encode
            return {**out, **{f"correct_{name}": np.zeros(0, dtype=bool) for name in self.models}}
        images = torch.from_numpy(batch["image"]).to(self.device)
        suite = torch.from_numpy(batch["set"]).to(self.device)
        labels = torch.from_numpy(batch["label"]).to(self.device)
        for name, (model, mean, std) in self.models.items():
            with autocast(self.device):
                feats = model.encode_image(normalize_images(images, mean, std), normalize=True)
            feats = feats.float()  # bf16 on cuda: logits in fp32, as on cpu
            correct = torch.zeros(len(labels), dtype=torch.bool, device=self.device)
            for s in suite.unique().tolist():
                rows, head = suite == s, self.heads[name][s]
                logits = feats[rows] @ head[:, : feats.shape[1]].T
                if head.shape[1] > feats.shape[1]:  # a trained linear head: its last column is the bias
                    logits = logits + head[:, -1]
                pred = project_logits(logits, self.label_maps[s]).argmax(dim=-1)
                correct[rows] = pred == labels[rows]
            out[f"correct_{name}"] = correct.cpu().numpy()
        return out


def _suite_batches(suites: Sequence[Suite], cfg: Config) -> Iterator[dict[str, np.ndarray]]:
    """Every suite's rows in order, ``eval.batch_size`` at a time, tagged with the suite's index (the in-process
    twin of the Ray Data read + :func:`~pipeline.data.tags.tag_suite`)."""
    for index, suite in enumerate(suites):
        rows = iter_rows(suite.folder, columns=["image", "label"], column_map=cfg.data.column_map)
        while chunk := list(itertools.islice(rows, cfg.eval.batch_size)):
            images = np.empty(len(chunk), dtype=object)
            images[:] = [r["image"] for r in chunk]
            yield {
                "image": images,
                "label": np.array([-1 if r["label"] is None else r["label"] for r in chunk], dtype=np.int64),
                "set": np.full(len(chunk), index, dtype=np.int64),
            }


def _heads(
    bundle: ModelBundle,
    manifests: Sequence[Manifest],
    linear: LinearHead | None = None,
    templates: Sequence[Sequence[str] | None] = (),
) -> list[np.ndarray]:
    """One head per suite; suites with the same classes and templates (one task in several styles) share it.

    A suite scored against another classifier (ImageNet-R / -A / ObjectNet: ``Manifest.head_classnames``) gets
    that classifier's head, so ImageNet's 1,000-class head is built once for ImageNet and all its shifts and
    each suite's logits are projected onto its labels (:func:`dive.heads.project_logits`). A model exported with
    a trained linear head (FT / LP-FT) is scored with that head on suites whose scoring classes are exactly its
    classes (ID, OOD, and the projected shifts), as the paper scores FT; other suites (zero-shot) get text heads.
    ``templates[i]``: the config's template set for suite i (``eval.templates``), replacing the manifest's.
    """
    built: dict[tuple[tuple[str, ...], tuple[str, ...]], np.ndarray] = {}
    heads = []
    for i, manifest in enumerate(manifests):
        names, own_templates = manifest.scoring_classes()
        if linear is not None and list(names) == linear.classnames:
            heads.append(linear.augmented().numpy())
            continue
        chosen = templates[i] if i < len(templates) and templates[i] else own_templates
        chosen = list(chosen or zeroshot.DEFAULT_TEMPLATES)
        key = (tuple(names), tuple(chosen))
        if key not in built:
            built[key] = zeroshot.build_head(bundle.model, bundle.tokenizer, names, chosen).numpy()
        heads.append(built[key])
    return heads


def suite_templates(cfg: Config, suites: Sequence[Suite]) -> list[list[str] | None]:
    """Per suite, the template set ``eval.templates`` names for it (None: the manifest's own templates)."""
    return [
        template_set(cfg.eval.templates[s.name]) if s.name in cfg.eval.templates else None for s in suites
    ]


def _linear_head(model: ModelSettings) -> LinearHead | None:
    return load_linear_head(model.name.removeprefix(LOCAL_DIR)) if model.name.startswith(LOCAL_DIR) else None


def check_eval_device(cfg: Config) -> str:
    """``eval.device`` resolved ("cuda" / "cpu"); cuda where the Ray cluster (or, without Ray, this machine) has
    no GPU is a :class:`ConfigError` naming the key. A run calls it as soon as Ray is up, before it trains."""
    device = eval_device(cfg)
    where = "key 'eval.device'" + (
        " (auto, scaling.use_gpu=true)" if EvalDevice(cfg.eval.device) is EvalDevice.auto else ""
    )
    check_device(device, where, ConfigError)
    return device


def scored_batches(
    models: Mapping[str, ModelSettings],
    suites: Sequence[Suite],
    cfg: Config,
    threads: int = 0,
    manifests: Mapping[str, Manifest] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Every image of the suites scored by every model: batches of ``set`` (the suite's index) and
    ``correct_<model>``, in no particular order (``manifests``: the suites' manifests by folder, as a run's
    preflight read them; a suite without one is checked here).

    Up to ``eval.in_process_rows`` images in all are decoded and scored in this process (on cuda: when this
    process sees a GPU): for a few thousand images an actor's start (its process, torch and open_clip imported)
    costs many times the scoring itself. Larger suites stream through Ray Data: :func:`pipeline.pool.map_pool`
    with ``eval.actors`` actors on ``eval.device`` (``threads`` torch threads per CPU actor; 0: this machine's
    cores split between them), each given the models and heads built here, once."""
    device = check_eval_device(cfg)  # before anything is built
    bundles = {name: build_model(local_model(m)) for name, m in models.items()}
    first = next(iter(bundles.values()))
    size = first.preprocess_cfg["size"][0]
    column_map = cfg.data.column_map
    read = manifests or {}
    suite_manifests = [
        read.get(suite.folder) or check_dataset(suite.folder, LABELLED, column_map) for suite in suites
    ]
    chosen = suite_templates(cfg, suites)
    heads = {
        name: _heads(b, suite_manifests, _linear_head(models[name]), chosen) for name, b in bundles.items()
    }
    scoring = _Scoring(
        {
            name: (b.model.eval(), tuple(b.preprocess_cfg["mean"]), tuple(b.preprocess_cfg["std"]))
            for name, b in bundles.items()
        },
        heads,
        [m.label_map() for m in suite_manifests],
    )
    prep = dict(
        kind=LABELLED,
        size=size,
        augment=False,
        max_pixels=cfg.data.max_image_pixels,
        num_classes=max(m.num_classes for m in suite_manifests),
        passthrough=("set",),
        borders=tuple(m.eval_border for m in suite_manifests),
    )
    rows = sum(m.num_rows for m in suite_manifests)
    here = device == "cpu" or torch.cuda.is_available()
    if here and rows <= cfg.eval.in_process_rows:
        scorer = _Scorer(scoring, device)
        for batch in _suite_batches(suites, cfg):
            yield scorer(preprocess_batch(batch, **prep))
        return
    pool = plan_pool(
        device,
        cfg.eval.actors,
        threads,
        device_key="key 'eval.device'",
        actors_key="key 'eval.actors'",
        error=ConfigError,
    )
    # One pipeline over every suite's shards (one read per format): the suite index comes from the path.
    files = {
        no_scheme(str(f)): i
        for i, suite in enumerate(suites)
        for f in [*shard_files(suite.folder), *tar_files(suite.folder)]
    }
    ds = open_dataset([s.folder for s in suites], LABELLED, column_map, include_paths=True)
    ds = ds.map_batches(tag_suite, fn_kwargs={"files": files}, batch_format="numpy")
    scored = map_pool(
        ds,
        _Scorer,
        pool,
        rows=rows,
        batch_size=cfg.eval.batch_size,
        batch_format="numpy",
        decode=preprocess_batch,
        decode_kwargs=prep,
        constructor_kwargs={"scoring": ray.put(scoring)},  # the models and heads: sent once, not per actor
    )
    yield from scored.iter_batches(batch_format="numpy", batch_size=None)


def evaluate_accuracy(
    models: Mapping[str, ModelSettings],
    suites: Sequence[Suite],
    cfg: Config,
    threads: int = 0,
    manifests: Mapping[str, Manifest] | None = None,
) -> dict[str, list[SetResult]]:
    """Accuracy of every model on every suite, in one pass over the suites' images (:func:`scored_batches`: in
    this process for small suites, on a Ray Data actor pool for large ones)."""
    if not suites:
        return {name: [] for name in models}
    totals = {name: np.zeros((len(suites), 2), dtype=np.int64) for name in models}
    for batch in scored_batches(models, suites, cfg, threads, manifests):
        for name in models:
            np.add.at(totals[name][:, 0], batch["set"], batch[f"correct_{name}"].astype(np.int64))
            np.add.at(totals[name][:, 1], batch["set"], 1)
    return {
        name: [
            SetResult(suite.name, suite.kind, float(t[0] / max(t[1], 1)), int(t[1]))
            for suite, t in zip(suites, totals[name], strict=False)
        ]
        for name in models
    }


@torch.no_grad()
def reference_embeddings(
    bundle: ModelBundle,
    folder: str,
    samples: int,
    max_pixels: int,
    column_map: Mapping[str, str] | None = None,
) -> tuple[torch.Tensor, ...]:
    """Image and caption embeddings of the first ``samples`` decodable pairs (a fixed sample: same rows each run).

    Images go through the Train workers' own transform, so RSA sees the pixels training (and the teacher cache)
    saw, and accuracy, RSA and the cache share one eval transform."""
    transform = stream_image_transform(bundle)
    images, captions = [], []
    for row in iter_rows(folder, columns=["image", "caption"], column_map=column_map):
        if not isinstance(row["caption"], str) or not row["caption"].strip():
            continue
        x, reason = transform(row["image"], max_pixels)
        if reason is None:
            images.append(x)
            captions.append(row["caption"])
        if len(images) >= samples:
            break
    model = bundle.model.eval()
    img = torch.cat(
        [
            model.encode_image(torch.stack(images[i : i + 256]), normalize=True)
            for i in range(0, len(images), 256)
        ]
    )
    txt = torch.cat(
        [
            model.encode_text(bundle.tokenizer(captions[i : i + 256]), normalize=True)
            for i in range(0, len(captions), 256)
        ]
    )
    return img, txt


def evaluate_rsa(
    teacher: ModelSettings,
    student: ModelSettings,
    cfg: Config,
    manifests: Mapping[str, Manifest] | None = None,
) -> dict[str, float]:
    return evaluate_rsa_many(teacher, {"student": student}, cfg, manifests)["student"]


def evaluate_rsa_many(
    teacher: ModelSettings,
    students: Mapping[str, ModelSettings],
    cfg: Config,
    manifests: Mapping[str, Manifest] | None = None,
) -> dict[str, dict[str, float]]:
    """RSA of every student against the teacher on one reference sample; the teacher is embedded once. The
    sample's set is checked first unless ``manifests`` (by folder, as a run's preflight read them) holds it."""
    folder = cfg.eval.rsa_set or cfg.data.reference
    if not folder:
        return {name: {} for name in students}
    if folder not in (manifests or {}):
        check_dataset(folder, CAPTIONED, cfg.data.column_map)
    args = (folder, cfg.eval.rsa_samples, cfg.data.max_image_pixels, cfg.data.column_map)
    t = reference_embeddings(build_model(local_model(teacher)), *args)
    out = {}
    for name, student in students.items():
        s = reference_embeddings(build_model(local_model(student)), *args)
        out[name] = rsa_report(t[0], t[1], s[0], s[1])
    return out


def evaluate(
    teacher: ModelSettings,
    student: ModelSettings,
    cfg: Config,
    manifests: Mapping[str, Manifest] | None = None,
) -> dict[str, Any]:
    """The full report: per-set rows for the teacher (zero-shot) and the fine-tuned model, averages, RSA.
    ``manifests``: the eval sets' manifests by folder, already read (a run's preflight); others are checked here."""
    suites = suites_from_config(cfg)
    models = {"teacher": teacher, "finetuned": student} if cfg.eval.with_teacher else {"finetuned": student}
    acc = evaluate_accuracy(models, suites, cfg, manifests=manifests)
    rsa = evaluate_rsa(teacher, student, cfg, manifests)
    return {
        "rows": [{"model": name, **row} for name in acc for row in table_rows(acc[name])],
        "teacher": summarize(acc["teacher"]) if "teacher" in acc else {},
        "finetuned": {**summarize(acc["finetuned"]), **rsa},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="run config YAML (eval suites, teacher model)")
    parser.add_argument(
        "--model", required=True, help="model to evaluate: local-dir:<export> or an open_clip name"
    )
    parser.add_argument("--pretrained", default="", help="weights for --model when it is an open_clip name")
    parser.add_argument("--out", help="write the report JSON here")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show Ray's and libraries' output here too"
    )
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    from pipeline.console import command_console, start_ray

    logs = Path(args.out).resolve().parent if args.out else output_folder(cfg.tracking.output_dir) / "logs"
    with command_console(logs, f"evaluate-{time.strftime('%Y%m%d-%H%M%S')}.log", args.verbose) as console:
        console.say(f"[dive] evaluating {args.model} (log: {console.path})")
        start_ray(cfg, console)
        student = replace(cfg.model, name=args.model, pretrained=args.pretrained)
        report = evaluate(cfg.model, student, cfg)
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
