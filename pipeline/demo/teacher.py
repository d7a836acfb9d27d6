"""The demo's "pre-trained CLIP": dive-tiny trained contrastively on the ``pretrain`` captions, cached by settings."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from dive.config import MAX_IMAGE_PIXELS
from pipeline.data.format import DataError, decode_image, iter_rows, read_manifest
from pipeline.demo.splits import TEACHER_INIT_SCALE, TEACHER_LR, DemoPaths, _log
from pipeline.demo.world import DEMO_VERSION


def decode_split(folder: Path, column: str) -> tuple[np.ndarray, list[Any]]:
    """All images of a split as one uint8 array (N, H, W, 3), plus the ``column`` values (label, caption)."""
    images, values = [], []
    for row in iter_rows(folder, columns=["image", column]):
        img, reason = decode_image(row["image"], MAX_IMAGE_PIXELS)  # the pipeline's decode rule, same pixels
        if img is None:
            raise DataError(f"{folder}: an image of the demo split does not decode ({reason})")
        images.append(np.asarray(img))
        values.append(row[column])
    return np.stack(images), values


def _to_input(images: np.ndarray, mean: Any, std: Any) -> Any:
    import torch

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


def zero_shot_accuracy(bundle: Any, folder: Path, batch_size: int = 512) -> float:
    """Zero-shot top-1 accuracy of ``bundle.model`` on a labelled split, head from its manifest."""
    import torch

    from dive import zeroshot

    manifest = read_manifest(folder)
    images, labels = decode_split(folder, "label")
    model = bundle.model
    mean_std = bundle.preprocess_cfg["mean"], bundle.preprocess_cfg["std"]
    with zeroshot.eval_mode(model), torch.no_grad():
        head = zeroshot.build_head(model, bundle.tokenizer, manifest.classnames, manifest.templates)
        correct = 0
        for i in range(0, len(images), batch_size):
            x = _to_input(images[i : i + batch_size], *mean_std)
            pred = zeroshot.logits(model, x, head).argmax(dim=-1)
            correct += int((pred == torch.as_tensor(labels[i : i + batch_size])).sum())
    return correct / len(images)


def _encode_text(model: Any, tokens: Any) -> Any:
    """``model.encode_text`` (unnormalised) on tokens cut after the longest caption's end token.

    Exact for CLIP text towers: the mask is causal and features are taken at the end token, so padding after
    it never changes the result; cutting it saves about a third of a demo training step. Falls back to the
    full ``encode_text`` for towers without that layout.
    """
    import torch

    layout = ("token_embedding", "positional_embedding", "transformer", "ln_final", "attn_mask")
    has_layout = all(getattr(model, name, None) is not None for name in (*layout, "text_projection"))
    if not has_layout or getattr(model, "text_pool_type", None) != "argmax":
        return model.encode_text(tokens)
    length = int(tokens.argmax(dim=-1).max()) + 1
    tokens = tokens[:, :length]
    x = model.token_embedding(tokens) + model.positional_embedding[:length]
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:length, :length]))
    x = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)]
    proj = model.text_projection
    return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj


def pretrain_teacher(
    paths: DemoPaths,
    out: Path,
    steps: int,
    batch_size: int,
    seed: int = 0,
    threads: int | None = None,
) -> dict[str, Any]:
    """Pre-train the demo's "CLIP": dive-tiny from random init, contrastive on the ``pretrain`` captions.

    Recipe: symmetric InfoNCE (:func:`dive.losses.contrastive`), learnable logit scale starting at 1/τ = 50,
    AdamW (lr 1e-3, wd 0.05 on matrices, 10 % warm-up then cosine) and sparse Adam for the token embedding
    (only the demo's few dozen words get gradients). No image augmentation: flips would contradict "left".

    Writes ``out/teacher.pt`` (a state dict for ``build_model(ModelSettings(pretrained=...))``) and
    ``out/teacher.json`` (settings, seconds, fingerprint, zero-shot accuracy on id_test, ood_* and zs_*, and
    the chance level of each). Cached: returns the recorded summary (with ``"cached": True``) when
    teacher.json records the same settings and teacher.pt exists. ``threads`` sets torch's intra-op threads
    meanwhile.
    """
    import torch

    from dive.config import ModelSettings
    from dive.models import build_model

    out = Path(out)
    settings = {
        "version": DEMO_VERSION,
        "steps": steps,
        "batch_size": batch_size,
        "seed": seed,
        "lr": TEACHER_LR,
        "init_scale": TEACHER_INIT_SCALE,
        "pretrain_fingerprint": read_manifest(paths.pretrain).fingerprint,
    }
    if (recorded := _cached(out, settings)) is not None:
        return recorded
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        start = time.perf_counter()
        torch.manual_seed(seed)
        bundle = build_model(ModelSettings())
        images, captions = decode_split(paths.pretrain, "caption")
        tokens = bundle.tokenizer(captions)
        batch_size = min(batch_size, len(images))
        decode_seconds = time.perf_counter() - start
        _log(f"teacher: {steps} steps of {batch_size} on {len(images)} pretrain pairs, "
             f"{torch.get_num_threads()} threads")  # fmt: skip
        loss_value = _train(bundle, images, tokens, steps, batch_size, seed, start)
        timing = {
            "start": start,
            "train": time.perf_counter() - start - decode_seconds,
            "decode": decode_seconds,
        }
        summary = _save(bundle.model, bundle, paths, out, settings, steps, batch_size, loss_value, timing)
    finally:
        torch.set_num_threads(previous_threads)
    shown = ", ".join(
        f"{k} {v:.2f} (chance {summary['chance'][k]:.2f})" for k, v in summary["zero_shot"].items()
    )
    _log(f"teacher trained in {summary['seconds']:.0f} s; zero-shot: {shown}")
    return {**summary, "cached": False}


def _cached(out: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The recorded summary when teacher.json records these settings and teacher.pt exists."""
    weights, summary_path = out / "teacher.pt", out / "teacher.json"
    if not (summary_path.is_file() and weights.is_file()):
        return None
    try:
        recorded = json.loads(summary_path.read_text())
    except json.JSONDecodeError:
        return None
    if recorded.get("settings") != settings:
        return None
    _log(f"teacher cached in {weights}")
    return {**recorded, "cached": True}


def _train(
    bundle: Any, images: np.ndarray, tokens: Any, steps: int, batch_size: int, seed: int, start: float
) -> float:
    """The contrastive loop (shuffled epochs, one seeded generator); returns the last step's loss."""
    import torch
    import torch.nn.functional as F

    from dive.losses import contrastive
    from dive.models import clamp_logit_scale
    from dive.optim import build_optimizer, cosine_with_warmup

    model, n = bundle.model, len(images)
    mean, std = bundle.preprocess_cfg["mean"], bundle.preprocess_cfg["std"]
    with torch.no_grad():
        model.logit_scale.fill_(math.log(TEACHER_INIT_SCALE))
    embedding = model.token_embedding
    embedding.sparse = True
    dense = [(name, p) for name, p in model.named_parameters() if p is not embedding.weight]
    opts = [
        build_optimizer(dense, TEACHER_LR, 0.05, betas=(0.9, 0.98), eps=1e-6),
        torch.optim.SparseAdam([embedding.weight], lr=TEACHER_LR, betas=(0.9, 0.98), eps=1e-6),
    ]
    scheds = [cosine_with_warmup(opt, max(1, steps // 10), steps) for opt in opts]
    gen = torch.Generator().manual_seed(seed)
    order, cursor, loss_value = torch.randperm(n, generator=gen), 0, float("nan")
    model.train()
    try:
        for step in range(steps):
            if cursor + batch_size > n:
                order, cursor = torch.randperm(n, generator=gen), 0
            idx = order[cursor : cursor + batch_size]
            cursor += batch_size
            x = _to_input(images[idx.numpy()], mean, std)
            image_features = F.normalize(model.encode_image(x), dim=-1)
            text_features = F.normalize(_encode_text(model, tokens[idx]), dim=-1)
            loss = contrastive(image_features, text_features, model.logit_scale.exp())
            for opt in opts:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            for opt, sched in zip(opts, scheds, strict=True):
                opt.step()
                sched.step()
            clamp_logit_scale(model)
            loss_value = loss.item()
            if steps >= 10 and (step + 1) % max(1, steps // 5) == 0:
                elapsed = time.perf_counter() - start
                _log(f"teacher step {step + 1}/{steps}  loss {loss_value:.3f}  {elapsed:.0f} s")
    finally:
        embedding.sparse = False
    return loss_value


def _save(
    model: Any,
    bundle: Any,
    paths: DemoPaths,
    out: Path,
    settings: dict[str, Any],
    steps: int,
    batch_size: int,
    loss_value: float,
    timing: dict[str, float],
) -> dict[str, Any]:
    """Zero-shot scores on every eval split, then teacher.pt and teacher.json, each written atomically."""
    import torch

    from dive.models import fingerprint

    model.eval()
    accuracy, chance = {}, {}
    for name, folder in paths.eval_sets().items():
        accuracy[name] = round(zero_shot_accuracy(bundle, folder), 4)
        chance[name] = round(1.0 / read_manifest(folder).num_classes, 4)
    out.mkdir(parents=True, exist_ok=True)
    weights, summary_path = out / "teacher.pt", out / "teacher.json"
    tmp = weights.with_suffix(".pt.tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(weights)
    summary = {
        "settings": settings,
        "steps": steps,
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
        "final_loss": round(loss_value, 4),
        "logit_scale": round(model.logit_scale.exp().item(), 3),
        "seconds": round(time.perf_counter() - timing["start"], 2),
        "train_seconds": round(timing["train"], 2),
        "decode_seconds": round(timing["decode"], 2),
        "fingerprint": fingerprint(model),
        "weights": str(weights),
        "zero_shot": accuracy,
        "chance": chance,
    }
    tmp_json = summary_path.with_suffix(".json.tmp")
    tmp_json.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    tmp_json.replace(summary_path)
    return summary
