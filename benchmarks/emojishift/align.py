"""EmojiShift's "pre-trained CLIP" teacher: LiT-style alignment of ``lite-minilm`` (issue #6, item 2).

``lite-minilm[-<px>]`` joins two pretrained towers (EfficientNet-Lite0 ImageNet, all-MiniLM-L6-v2) with
seeded *random* linear projections into a 256-d space, so out of the box it has no zero-shot ability. This
command trains only those two projections (and the logit scale) with the CLIP contrastive loss on the
benchmark's captioned ``alignment`` split, with both towers frozen in eval mode (BatchNorm statistics
included), as in LiT ("locked-image tuning", here with the text tower locked too).

Because the towers never change, their outputs are computed once: the trunk's pooled image features (1280-d)
and MiniLM's mean-pooled sentence features (384-d), i.e. the inputs of ``model.visual.head.proj`` and
``model.text.proj``. They are cached under ``OUT/features/`` keyed by a fingerprint of the data, the tower
weights and the transform, so reruns skip the extraction. Training is then a few small matmuls per step.

Outputs in ``OUT``:

* ``teacher.pt``: the full aligned state dict, loadable with
  ``build_model(ModelSettings(name="lite-minilm-<px>", pretrained="OUT/teacher.pt"))``;
* ``open_clip/``: the same weights as an open_clip ``local-dir:`` export (:func:`dive.export.export_model`);
* ``align_report.json``: zero-shot top-1 on ``id_test``, every ``ood_*`` and ``zs_*`` set and image→caption
  top-1 retrieval on ``ref_val``, before (random projections) and after alignment, the loss curve and wall
  times.

Usage::

    python benchmarks/emojishift/align.py --data .cache/emojishift --out .cache/emojishift/teacher \
        [--size 96] [--epochs 10] [--batch 256] [--lr 1e-3] [--seed 0] [--unfreeze 0]

A comma list for ``--epochs``, ``--lr`` or ``--wd`` is a search: every combination is trained from the same
start and the one with the best validation objective (mean zero-shot top-1 on id_val and zs_val) is kept; the
report lists every trial. The defaults are the values that search chose (benchmarks/emojishift/README.md).

Same seed, data and options give the same weights (single process, CPU, deterministic ops only).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run by path: the repository root is importable

from dive.config import MAX_IMAGE_PIXELS as MAX_PIXELS  # noqa: E402
from dive.config import ModelSettings  # noqa: E402
from dive.export import export_model  # noqa: E402
from dive.metrics import accuracy, retrieval_accuracy  # noqa: E402
from dive.models import ModelBundle, build_model, clamp_logit_scale, fingerprint  # noqa: E402
from dive.optim import build_optimizer, cosine_with_warmup  # noqa: E402
from dive.zeroshot import DEFAULT_TEMPLATES, build_head  # noqa: E402
from pipeline.data.format import decode_image, iter_rows, read_manifest  # noqa: E402

FEATURES_VERSION = 1  # bump when the extraction changes, so stale caches are not reused
TRAINABLE = ("visual.head.proj.weight", "text.proj.weight")
LOGIT_SCALE = "logit_scale"


# ------------------------------------------------------------------------------------------------ features
@dataclass
class Features:
    """Frozen-tower outputs of one dataset split (before the projections)."""

    image: torch.Tensor  # (N, 1280) trunk pooled features, or (N, C, H, W) before the unfrozen blocks
    text: torch.Tensor | None = None  # (N, 384) MiniLM mean-pooled features (captioned sets)
    captions: list[str] = field(default_factory=list)
    labels: torch.Tensor | None = None  # (N,) int64 (labelled sets)
    unfreeze: int = (
        0  # trailing EfficientNet blocks that train (0: projections only); ``image`` is their input
    )


def image_trunk_features(model: nn.Module, images: torch.Tensor, unfreeze: int = 0) -> torch.Tensor:
    """What the frozen part of the image tower computes: the pooled trunk features (``visual.head(these) ==
    encode_image``), or with ``unfreeze`` = n the input of the last n blocks."""
    trunk = model.visual.trunk
    if not unfreeze:
        return trunk(images)
    x = trunk.bn1(trunk.conv_stem(images))
    for block in trunk.blocks[: len(trunk.blocks) - unfreeze]:
        x = block(x)
    return x


def unfrozen_prefixes(model: nn.Module, unfreeze: int) -> tuple[str, ...]:
    """State-dict prefixes of the image tower's trained part: the last ``unfreeze`` blocks and the head conv."""
    if not unfreeze:
        return ()
    n = len(model.visual.trunk.blocks)
    if not 0 < unfreeze <= n:
        raise ValueError(f"--unfreeze: expected 0..{n} blocks, got {unfreeze}")
    blocks = tuple(f"visual.trunk.blocks.{i}." for i in range(n - unfreeze, n))
    return (*blocks, "visual.trunk.conv_head.", "visual.trunk.bn2.")


def embed_images(model: nn.Module, feats: torch.Tensor, unfreeze: int = 0) -> torch.Tensor:
    """Joint-space (unnormalised) image embeddings from :func:`image_trunk_features`' output."""
    if unfreeze:
        trunk = model.visual.trunk
        for block in trunk.blocks[len(trunk.blocks) - unfreeze :]:
            feats = block(feats)
        feats = trunk.global_pool(trunk.bn2(trunk.conv_head(feats)))
    return model.visual.head(feats)


def text_pooled_features(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """MiniLM's mean-pooled features, as ``HFTextEncoder.forward`` computes them before ``text.proj``.

    Padding columns that every row of the batch pads are dropped first: the pooler and the attention only see
    masked tokens, so this changes nothing but the cost (captions are far shorter than the 77-token context).
    """
    text = model.text
    pad = text.config.pad_token_id
    mask = (ids != pad).long()
    used = int(mask.sum(dim=1).max().item()) if ids.numel() else 0
    if used and bool((mask[:, used:] == 0).all()):
        ids, mask = ids[:, : max(used, 1)], mask[:, : max(used, 1)]
    out = text.transformer(input_ids=ids, attention_mask=mask)
    return text.pooler(out, mask)


def _fingerprint_key(bundle: ModelBundle, manifest_fp: str, towers_fp: str, unfreeze: int = 0) -> str:
    h = hashlib.sha256()
    for part in (
        str(FEATURES_VERSION) + (f"/unfreeze={unfreeze}" if unfreeze else ""),
        manifest_fp,
        towers_fp,
        json.dumps(bundle.preprocess_cfg, sort_keys=True, default=str),
        str(bundle.tokenizer.context_length),  # captions longer than this are cut: other text features
    ):
        h.update(part.encode())
        h.update(b"\x00")
    return h.hexdigest()[:16]


def caption_features(
    bundle: ModelBundle,
    captions: list[str],
    batch_size: int,
    cache_dir: Path | None = None,
    towers_fp: str | None = None,
) -> torch.Tensor:
    """MiniLM features of ``captions``, cached by the captions themselves: they depend on the text tower and
    the context length, not on the images, so a rebuild at another image size reuses them."""
    h = hashlib.sha256(f"{FEATURES_VERSION}|{towers_fp}|{bundle.tokenizer.context_length}".encode())
    for caption in captions:
        h.update(caption.encode() + b"\x00")
    path = cache_dir / f"captions-{h.hexdigest()[:16]}.pt" if cache_dir is not None else None
    if path is not None and path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    out = []
    for start in range(0, len(captions), batch_size):
        out.append(text_pooled_features(bundle.model, bundle.tokenizer(captions[start : start + batch_size])))
    text = torch.cat(out) if out else torch.empty(0, 0)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(text, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)
    return text


def towers_fingerprint(model: nn.Module) -> str:
    """Hash of the frozen towers only (the projections are what changes)."""
    return fingerprint(nn.ModuleDict({"trunk": model.visual.trunk, "text": model.text.transformer}))


@torch.no_grad()
def extract(
    bundle: ModelBundle,
    folder: Path,
    batch_size: int = 128,
    cache_dir: Path | None = None,
    towers_fp: str | None = None,
    log: Callable[[str], None] = print,
    unfreeze: int = 0,
) -> tuple[Features, bool]:
    """Frozen-tower features of every row of ``folder`` (cached); returns them and whether it was a cache hit.

    With ``unfreeze`` > 0 the image features are the input of the last ``unfreeze`` blocks. Caption features
    do not depend on that (nor on the image size): :func:`caption_features` caches them by the captions."""
    manifest = read_manifest(folder)
    captioned = manifest.kind == "captioned"
    path = None
    if cache_dir is not None:
        towers_fp = towers_fp or towers_fingerprint(bundle.model)
        key = _fingerprint_key(bundle, manifest.fingerprint, towers_fp, unfreeze)
        path = cache_dir / f"{folder.name}-{key}.pt"
        if path.is_file():
            raw = torch.load(path, map_location="cpu", weights_only=True)
            return Features(**raw, unfreeze=unfreeze), True
    model = bundle.model
    model.eval()
    columns = ["image", "caption"] if captioned else ["image", "label"]
    images: list[torch.Tensor] = []
    captions: list[str] = []
    labels: list[int] = []
    img_out: list[torch.Tensor] = []

    def flush() -> None:
        if not images:
            return
        img_out.append(image_trunk_features(model, torch.stack(images), unfreeze))
        images.clear()

    for i, row in enumerate(iter_rows(folder, columns)):
        img, reason = decode_image(row["image"], MAX_PIXELS)
        if img is None:
            raise ValueError(f"{folder}: row {i} has an unusable image ({reason})")
        images.append(bundle.preprocess_eval(img))
        if captioned:
            captions.append(str(row["caption"]))
        else:
            labels.append(int(row["label"]))
        if len(images) >= batch_size:
            flush()
    flush()
    image = torch.cat(img_out) if img_out else torch.empty(0, 0)
    feats = Features(image=image, captions=captions, unfreeze=unfreeze)
    if captioned:
        feats.text = caption_features(bundle, captions, batch_size, cache_dir, towers_fp)
    else:
        feats.labels = torch.tensor(labels, dtype=torch.long)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(
            {"image": feats.image, "text": feats.text, "captions": feats.captions, "labels": feats.labels},
            tmp,
        )
        tmp.replace(path)
    log(f"  features {folder.name}: {feats.image.shape[0]} rows")
    return feats, False


# ------------------------------------------------------------------------------------------------ training
def trainable_names(model: nn.Module, learn_scale: bool = True, unfreeze: int = 0) -> list[str]:
    """Parameter names the alignment trains: the projections, the logit scale, the unfrozen image blocks."""
    prefixes = unfrozen_prefixes(model, unfreeze)
    names = list(TRAINABLE) + ([LOGIT_SCALE] if learn_scale else [])
    return names + [n for n, _ in model.named_parameters() if n.startswith(prefixes or ("\0",))]


def set_trainable(model: nn.Module, learn_scale: bool = True, unfreeze: int = 0) -> list[nn.Parameter]:
    """Freeze everything but :func:`trainable_names`; eval mode keeps every BN statistic fixed."""
    model.eval()
    model.requires_grad_(False)
    named = dict(model.named_parameters())
    params = [named[name] for name in trainable_names(model, False, unfreeze)]
    if learn_scale:
        params.append(named[LOGIT_SCALE])
    for p in params:
        p.requires_grad_(True)
    return params


def project(
    model: nn.Module, image: torch.Tensor, text: torch.Tensor, unfreeze: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit joint-space embeddings from precomputed tower features (what encode_image/text(normalize=True)
    give for the same inputs)."""
    return (
        F.normalize(embed_images(model, image, unfreeze), dim=-1),
        F.normalize(model.text.proj(text), dim=-1),
    )


@dataclass
class TrainResult:
    losses: list[float]  # mean loss per epoch
    monitored: list[tuple[int, float]]  # (epoch, monitor()) at the logged epochs, when a monitor is given
    first_loss: float  # loss of the untrained projections over the whole set (eval pass)
    last_loss: float  # same after training
    steps: int
    seconds: float


def full_loss(model: nn.Module, feats: Features, batch_size: int) -> float:
    """Mean contrastive loss over fixed consecutive batches (no shuffling): comparable before/after."""
    loss_fn = ClipLoss()
    n = feats.image.shape[0]
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, n, batch_size):
            sl = slice(start, min(n, start + batch_size))
            if sl.stop - sl.start < 2:
                continue
            img, txt = project(model, feats.image[sl], feats.text[sl], feats.unfreeze)
            total += float(loss_fn(img, txt, model.logit_scale.exp())) * (sl.stop - sl.start)
            count += sl.stop - sl.start
    return total / max(count, 1)


def train_projections(
    model: nn.Module,
    feats: Features,
    epochs: int = 50,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    learn_scale: bool = True,
    warmup_frac: float = 0.05,
    log: Callable[[str], None] = print,
    monitor: Callable[[], float] | None = None,
) -> TrainResult:
    """CLIP contrastive loss (open_clip ``ClipLoss``) on the projections only; AdamW, warmup + cosine."""
    if feats.text is None:
        raise ValueError("alignment features need captions (a captioned dataset)")
    n = feats.image.shape[0]
    if n < 2:
        raise ValueError(f"alignment needs at least 2 pairs, got {n}")
    params = set_trainable(model, learn_scale, feats.unfreeze)
    trained = {id(p) for p in params}
    opt = build_optimizer([(n, p) for n, p in model.named_parameters() if id(p) in trained], lr, weight_decay)
    per_epoch = max(1, n // batch_size) if n >= batch_size else 1
    total = per_epoch * epochs
    warmup = max(1, int(round(warmup_frac * total)))

    sched = cosine_with_warmup(opt, warmup, total)
    loss_fn = ClipLoss()
    gen = torch.Generator().manual_seed(seed)
    first = full_loss(model, feats, batch_size)
    losses: list[float] = []
    monitored: list[tuple[int, float]] = []
    t0 = time.perf_counter()
    step = 0
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen)
        running = 0.0
        for b in range(per_epoch):
            idx = order[b * batch_size : (b + 1) * batch_size]  # drop_last: equal-sized batches
            img, txt = project(model, feats.image[idx], feats.text[idx], feats.unfreeze)
            loss = loss_fn(img, txt, model.logit_scale.exp())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            clamp_logit_scale(model)
            running += float(loss.detach())
            step += 1
        losses.append(running / per_epoch)
        if epoch == 0 or (epoch + 1) % max(1, epochs // 10) == 0 or epoch == epochs - 1:
            extra = ""
            if monitor is not None:
                with torch.no_grad():
                    monitored.append((epoch + 1, monitor()))
                extra = f"  ref_val retrieval {monitored[-1][1]:.3f}"
            log(
                f"  epoch {epoch + 1}/{epochs}: loss {losses[-1]:.4f}  scale {model.logit_scale.exp():.1f}{extra}"
            )
    seconds = time.perf_counter() - t0
    model.requires_grad_(False)
    model.eval()
    return TrainResult(losses, monitored, first, full_loss(model, feats, batch_size), step, seconds)


# ------------------------------------------------------------------------------------------------ evaluation
VAL_SETS = ("id_val", "zs_val")  # what the alignment settings are chosen on (with ref_val retrieval)


def eval_sets(data: Path) -> list[str]:
    """Split folders evaluated zero-shot: id_test, every ood_* and zs_* (sorted; zs_val is validation)."""
    names = ["id_test"] + sorted(p.name for p in data.glob("ood_*") if p.is_dir())
    return names + sorted(p.name for p in data.glob("zs_*") if p.is_dir() and p.name != "zs_val")


def val_objective(scores: dict[str, float]) -> float:
    """What the alignment settings are chosen on — validation only, never a test set: the mean of zero-shot
    top-1 on id_val and zs_val (the benchmark's own val/objective), ref_val retrieval where neither exists."""
    vals = [scores[k] for k in VAL_SETS if k in scores]
    return sum(vals) / len(vals) if vals else scores.get("ref_val_retrieval", 0.0)


@torch.no_grad()
def evaluate(
    bundle: ModelBundle, feats: dict[str, Features], data: Path, ref: Features | None
) -> dict[str, float]:
    """Zero-shot top-1 per labelled set (heads from each manifest's classnames/templates) and ref_val
    image→caption top-1; with the model's current projections."""
    model = bundle.model
    model.eval()
    heads: dict[tuple[tuple[str, ...], tuple[str, ...]], torch.Tensor] = {}
    out: dict[str, float] = {}
    for name, f in feats.items():
        manifest = read_manifest(data / name)
        key = (tuple(manifest.classnames), tuple(manifest.templates))
        if key not in heads:
            heads[key] = build_head(
                model, bundle.tokenizer, manifest.classnames, manifest.templates or DEFAULT_TEMPLATES
            )
        img = F.normalize(embed_images(model, f.image, f.unfreeze), dim=-1)
        out[name] = accuracy(img @ heads[key].T, f.labels)
    if ref is not None:
        img, txt = project(model, ref.image, ref.text, ref.unfreeze)
        out["ref_val_retrieval"] = retrieval_accuracy(img, txt, ref.captions)
    return out


def summarise(metrics: dict[str, float]) -> dict[str, float]:
    """Means over the OOD and ZS sets (convenience columns)."""
    summary: dict[str, float] = {}
    for prefix in ("ood_", "zs_"):
        vals = [v for k, v in metrics.items() if k.startswith(prefix)]
        if vals:
            summary[f"{prefix}mean"] = sum(vals) / len(vals)
    return summary


# ------------------------------------------------------------------------------------------------ command
def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument(
        "--data", type=Path, required=True, help="EmojiShift cache (holds alignment/, ref_val/, …)"
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (features cache, teacher, report)")
    p.add_argument("--size", type=int, default=96, help="input size in px: model lite-minilm-<size> (96)")
    p.add_argument("--epochs", type=_ints, default=[10], help="epochs; a comma list is searched (10)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument(
        "--lr", type=_floats, default=[1e-3], help="learning rate; a comma list is searched (1e-3)"
    )
    p.add_argument(
        "--wd",
        type=_floats,
        default=[1e-4],
        help="AdamW weight decay on the projections; a comma list is searched",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fixed-scale", action="store_true", help="do not train the logit scale")
    p.add_argument(
        "--unfreeze",
        type=int,
        default=0,
        help="also train the last N EfficientNet blocks + head conv (BN statistics stay frozen); 0: projections only",
    )
    p.add_argument("--feature-batch", type=int, default=128, help="batch size of the feature extraction")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--no-eval", action="store_true", help="skip the before/after evaluation")
    p.add_argument("--no-export", action="store_true", help="skip the open_clip local-dir export")
    return p.parse_args(argv)


def select(
    args: argparse.Namespace,
    bundle: ModelBundle,
    align: Features,
    val: dict[str, Features],
    ref: Features | None,
    data: Path,
    log: Callable[[str], None],
) -> tuple[list[dict[str, Any]], TrainResult]:
    """Train the projections once per (epochs, lr, weight decay) of the search, each from the same seeded
    start, and keep the one with the best validation objective (:func:`val_objective`): the model ends holding
    it. Returns every trial's record and the chosen one's training result."""
    model = bundle.model
    names = set(trainable_names(model, True, args.unfreeze))
    start = {k: v.detach().clone() for k, v in model.state_dict().items() if k in names}
    trials: list[dict[str, Any]] = []
    best: tuple[float, dict[str, torch.Tensor], TrainResult] | None = None
    for epochs, lr, wd in itertools.product(args.epochs, args.lr, args.wd):
        model.load_state_dict(start, strict=False)
        torch.manual_seed(args.seed)
        log(f"training projections: {align.image.shape[0]} pairs, {epochs} epochs, lr {lr:g}, wd {wd:g}")
        res = train_projections(
            model,
            align,
            epochs=epochs,
            batch_size=args.batch,
            lr=lr,
            weight_decay=wd,
            seed=args.seed,
            learn_scale=not args.fixed_scale,
            log=log,
            monitor=None
            if ref is None
            else lambda: retrieval_accuracy(*project(model, ref.image, ref.text, ref.unfreeze), ref.captions),
        )
        scores = evaluate(bundle, val, data, ref)
        objective = val_objective(scores)
        log(f"  validation: {json.dumps({k: round(v, 4) for k, v in scores.items()})} → {objective:.4f}")
        trials.append(
            {"epochs": epochs, "lr": lr, "weight_decay": wd, "val": scores, "val_objective": objective}
            | {"train_s": res.seconds, "loss_after": res.last_loss}
        )
        if best is None or objective > best[0]:
            best = (objective, {k: v.detach().clone() for k, v in model.state_dict().items()}, res)
    assert best is not None, "the search is empty"
    model.load_state_dict(best[1])
    return trials, best[2]


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> tuple[dict[str, Any], ModelBundle]:
    """The whole command; returns the report (also written to ``OUT/align_report.json``) and the aligned model."""
    if args.threads:
        torch.set_num_threads(args.threads)
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"lite-minilm-{args.size}"
    t_build = time.perf_counter()
    bundle = build_model(ModelSettings(name=name))
    model = bundle.model
    model.eval()
    towers_fp = towers_fingerprint(model)
    timings: dict[str, Any] = {"build_model_s": time.perf_counter() - t_build}
    align, val, ref, labelled = _all_features(args, bundle, towers_fp, timings, log)

    def scored(when: str) -> dict[str, float]:
        """The teacher's test-set scores now (none with --no-eval), timed into ``timings``; reported, never
        used to choose anything."""
        if args.no_eval:
            return {}
        t0 = time.perf_counter()
        scores = evaluate(bundle, labelled, data, ref)
        timings[f"eval_{when}_s"] = time.perf_counter() - t0
        log(f"{when}: " + json.dumps({k: round(v, 4) for k, v in scores.items()}))
        return scores

    before = scored("before")
    trials, res = select(args, bundle, align, val, ref, data, log)
    timings["train_s"] = sum(t["train_s"] for t in trials)
    chosen = max(trials, key=lambda t: t["val_objective"])
    after = scored("after")

    teacher = _save_teacher(model, out / "teacher.pt")
    settings = _settings(args, name, model, align, chosen, towers_fp)
    report: dict[str, Any] = {
        "settings": settings,
        "teacher": str(teacher),
        "teacher_fingerprint": fingerprint(model),
        "logit_scale": float(model.logit_scale.exp()),
        "loss": {
            "before": res.first_loss,
            "after": res.last_loss,
            "per_epoch": res.losses,
            "steps": res.steps,
        },
        "ref_val_retrieval_curve": res.monitored,
        "selection": {"objective": "mean of zero-shot top-1 on id_val and zs_val", "trials": trials},
        "val": chosen["val"],
        "before": before,
        "after": after,
        "summary": {"before": summarise(before), "after": summarise(after)},
        "timings": timings,
    }
    if not args.no_export:
        card = {
            "model": name,
            "description": "EmojiShift teacher: lite-minilm, LiT-aligned (projections; --unfreeze: last image blocks)",
            "settings": settings,
            "zero_shot_after": after,
        }
        report["export"] = str(
            export_model(
                model, out / "open_clip", bundle.model_cfg, bundle.preprocess_cfg, card, bundle.tokenizer
            )
        )
    (out / "align_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report, bundle


def _all_features(
    args: argparse.Namespace,
    bundle: ModelBundle,
    towers_fp: str,
    timings: dict[str, Any],
    log: Callable[[str], None],
) -> tuple[Features, dict[str, Features], Features | None, dict[str, Features]]:
    """The frozen towers' features of every split the command reads (cached under ``OUT/features``): alignment
    pairs, validation sets, ``ref_val`` and (unless --no-eval) the test sets; extraction times into ``timings``."""
    data, cache = Path(args.data), Path(args.out) / "features"
    log(f"lite-minilm-{args.size}: towers {towers_fp}; features -> {cache}")
    t0 = time.perf_counter()
    align, hit = extract(bundle, data / "alignment", args.feature_batch, cache, towers_fp, log, args.unfreeze)
    timings["alignment_features_s"] = time.perf_counter() - t0
    timings["alignment_cached"] = hit
    hits: list[bool] = []

    def features(splits: Sequence[str]) -> dict[str, Features]:
        found: dict[str, Features] = {}
        for split in splits:
            if (data / split).is_dir():
                found[split], hit = extract(
                    bundle, data / split, args.feature_batch, cache, towers_fp, log, args.unfreeze
                )
                hits.append(hit)
        return found

    t0 = time.perf_counter()
    val = features(VAL_SETS)  # always: the settings are chosen on these
    ref = features(["ref_val"]).get("ref_val")
    labelled = {} if args.no_eval else features(eval_sets(data))
    timings["eval_features_s"] = time.perf_counter() - t0
    timings["eval_cached"] = all(hits)
    return align, val, ref, labelled


def _save_teacher(model: torch.nn.Module, path: Path) -> Path:
    """The aligned weights at ``path``, written whole or not at all (a reader never loads half a file)."""
    tmp = path.with_suffix(".pt.tmp")
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    tmp.replace(path)
    return path


def _settings(
    args: argparse.Namespace,
    name: str,
    model: torch.nn.Module,
    align: Features,
    chosen: dict[str, Any],
    towers_fp: str,
) -> dict[str, Any]:
    """What the teacher was aligned with: data, the chosen (and searched) settings, what was trained."""
    data = Path(args.data)
    return {
        "model": name,
        "data": str(data),
        "alignment_rows": int(align.image.shape[0]),
        "alignment_fingerprint": read_manifest(data / "alignment").fingerprint,
        "epochs": chosen["epochs"],
        "batch": args.batch,
        "lr": chosen["lr"],
        "weight_decay": chosen["weight_decay"],
        "searched": {"epochs": args.epochs, "lr": args.lr, "weight_decay": args.wd},
        "seed": args.seed,
        "learn_logit_scale": not args.fixed_scale,
        "unfreeze": args.unfreeze,
        "trained": [*TRAINABLE, *([] if args.fixed_scale else [LOGIT_SCALE])]
        + [f"{p}*" for p in unfrozen_prefixes(model, args.unfreeze)],
        "towers_fingerprint": towers_fp,
        "threads": torch.get_num_threads(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report, _ = run(args)
    rows = [(k, report["before"].get(k), report["after"].get(k)) for k in report["after"]]
    if rows:
        print(f"{'set':<22}{'before':>8}{'after':>8}")
        for k, b, a in rows:
            print(f"{k:<22}{b:>8.3f}{a:>8.3f}")
    for k, v in report["summary"]["after"].items():
        print(f"{k:<22}{report['summary']['before'][k]:>8.3f}{v:>8.3f}")
    t = report["timings"]
    print(
        f"loss {report['loss']['before']:.3f} -> {report['loss']['after']:.3f}; alignment features "
        f"{t['alignment_features_s']:.1f} s (cached: {t['alignment_cached']}), training {t['train_s']:.1f} s"
    )
    print(f"wrote {report['teacher']} and {args.out / 'align_report.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
