"""Evaluation: ID / OOD / zero-shot accuracy and RSA for the teacher and a fine-tuned model, side by side.

Text heads are computed once per suite and model on the driver. Small suites (``eval.in_process_rows`` images in
all) are then scored right there, where the models already are; larger ones stream through one Ray Data
``map_batches`` pass whose actor scores every model on every image. Also a command of its own:

    python pipeline/evaluate.py --config X.yaml --model local-dir:outputs/<run>/export

(The WiSE-FT curve over several α is ``pipeline/wise.py``.)
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch

from dive import zeroshot
from dive.config import Config, ModelSettings, load_config
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
from pipeline.data.transforms import normalize_images, preprocess_batch, stream_image_transform


@dataclass
class Suite:
    name: str
    kind: str  # "id" | "ood" | "zs"
    folder: str


def suites_from_config(cfg: Config) -> list[Suite]:
    suites = [Suite("id", "id", cfg.eval.id)] if cfg.eval.id else []
    suites += [Suite(name, "ood", folder) for name, folder in cfg.eval.ood.items()]
    suites += [Suite(name, "zs", folder) for name, folder in cfg.eval.zs.items()]
    return suites


class _Scorer:
    """Holds every model under evaluation and its heads; returns per-image correctness. A Ray Data actor for
    large suites, called directly for small ones (``bundles`` already built there)."""

    def __init__(
        self,
        models: dict[str, dict[str, Any]],
        heads: dict[str, list[np.ndarray]],
        threads: int,
        bundles: Mapping[str, ModelBundle] | None = None,
        label_maps: Sequence[LabelMap | None] = (),
    ) -> None:
        if bundles is None:  # an actor: its own process, its own thread budget
            torch.set_num_threads(threads)
            bundles = {name: build_model(ModelSettings(**m)) for name, m in models.items()}
        self.models = dict(bundles)
        for b in self.models.values():
            b.model.eval()
        # Copies: arrays from the object store are read-only, which torch.from_numpy warns about in every actor.
        self.heads = {name: [torch.tensor(h) for h in hs] for name, hs in heads.items()}
        # Per suite: how its labels map onto its head's classes (None: one head class per label).
        self.label_maps = list(label_maps) or [None] * len(next(iter(heads.values()), []))

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {"set": batch["set"]}
        images = torch.from_numpy(batch["image"])
        suite = torch.from_numpy(batch["set"])
        labels = torch.from_numpy(batch["label"])
        for name, bundle in self.models.items():
            cfg = bundle.preprocess_cfg
            feats = bundle.model.encode_image(
                normalize_images(images, cfg["mean"], cfg["std"]), normalize=True
            )
            correct = torch.zeros(len(labels), dtype=torch.bool)
            for s in suite.unique().tolist():
                rows, head = suite == s, self.heads[name][s]
                logits = feats[rows] @ head[:, : feats.shape[1]].T
                if head.shape[1] > feats.shape[1]:  # a trained linear head: its last column is the bias
                    logits = logits + head[:, -1]
                pred = project_logits(logits, self.label_maps[s]).argmax(dim=-1)
                correct[rows] = pred == labels[rows]
            out[f"correct_{name}"] = correct.numpy()
        return out


def _tag_suite(batch: dict[str, np.ndarray], files: dict[str, int]) -> dict[str, np.ndarray]:
    return {
        "image": batch["image"],
        "label": batch["label"],
        "set": np.array([files[p] for p in batch["path"]], dtype=np.int64),
    }


def _suite_batches(suites: Sequence[Suite], cfg: Config) -> Iterator[dict[str, np.ndarray]]:
    """Every suite's rows in order, ``eval.batch_size`` at a time, tagged with the suite's index (the in-process
    twin of the Ray Data read + ``_tag_suite``)."""
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


def evaluate_accuracy(
    models: Mapping[str, ModelSettings],
    suites: Sequence[Suite],
    cfg: Config,
    threads: int = 1,
    manifests: Mapping[str, Manifest] | None = None,
) -> dict[str, list[SetResult]]:
    """Accuracy of every model on every suite, in one pass over the suites' images (``manifests``: the suites'
    manifests by folder, as a run's preflight read them; a suite without one is checked here).

    Up to ``eval.in_process_rows`` images in all are decoded and scored in this process: for a few thousand
    images Ray Data's start, its tasks and an actor that builds every model again cost many times the scoring
    itself. Larger suites stream through Ray Data (parallel decode, ``threads`` per scoring actor)."""
    if not suites:
        return {name: [] for name in models}
    bundles = {name: build_model(m) for name, m in models.items()}
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
    label_maps = [m.label_map() for m in suite_manifests]
    num_classes = max(m.num_classes for m in suite_manifests)
    prep = dict(
        kind=LABELLED,
        size=size,
        augment=False,
        max_pixels=cfg.data.max_image_pixels,
        num_classes=num_classes,
        passthrough=("set",),
        borders=tuple(m.eval_border for m in suite_manifests),
    )
    if sum(m.num_rows for m in suite_manifests) <= cfg.eval.in_process_rows:
        scorer = _Scorer({}, heads, threads, bundles=bundles, label_maps=label_maps)
        scored: Iterable[dict[str, np.ndarray]] = (
            scorer(preprocess_batch(batch, **prep)) for batch in _suite_batches(suites, cfg)
        )
    else:
        # One pipeline over every suite's shards (one read per format): the suite index comes from the path.
        files = {
            str(f): i
            for i, suite in enumerate(suites)
            for f in [*shard_files(suite.folder), *tar_files(suite.folder)]
        }
        ds = open_dataset([s.folder for s in suites], LABELLED, column_map, include_paths=True)
        ds = ds.map_batches(_tag_suite, fn_kwargs={"files": files}, batch_format="numpy")
        ds = ds.map_batches(preprocess_batch, batch_format="numpy", batch_size=256, fn_kwargs=prep)
        scored = ds.map_batches(
            _Scorer,
            fn_constructor_kwargs={
                "models": {n: asdict(m) for n, m in models.items()},
                "heads": heads,
                "threads": threads,
                "label_maps": label_maps,
            },
            batch_size=cfg.eval.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=1),
            num_cpus=1,
        ).iter_batches(batch_format="numpy", batch_size=None)
    totals = {name: np.zeros((len(suites), 2), dtype=np.int64) for name in models}
    for batch in scored:
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
    t = reference_embeddings(build_model(teacher), *args)
    out = {}
    for name, student in students.items():
        s = reference_embeddings(build_model(student), *args)
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

    logs = Path(args.out).resolve().parent if args.out else Path(cfg.tracking.output_dir) / "logs"
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
