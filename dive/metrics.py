"""Evaluation metrics: top-k accuracy, representational similarity analysis (RSA) and flat metric summaries.

RSA (docs/method.md §5) asks whether fine-tuning kept the *geometry* of the pre-trained embedding space: it
compares the pairwise cosine-similarity structure of teacher and student on the same samples with a Spearman
rank correlation, so it is invariant to rotations and to any monotone rescaling of similarities.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import ConstantInputWarning, spearmanr

KINDS = ("id", "ood", "zs", "zs_far")


def accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    """Fraction in [0, 1] of rows whose label is among the k highest logits."""
    if logits.ndim != 2:
        raise ValueError(f"logits: expected shape (N, C), got {tuple(logits.shape)}")
    if labels.shape != (logits.shape[0],):
        raise ValueError(
            f"labels: expected shape ({logits.shape[0]},) to match logits, got {tuple(labels.shape)}"
        )
    if logits.shape[0] == 0:
        raise ValueError("accuracy of an empty batch is undefined (logits has 0 rows)")
    if not 1 <= k <= logits.shape[1]:
        raise ValueError(f"k must be in [1, {logits.shape[1]}] (number of classes), got {k}")
    topk = logits.topk(k, dim=1).indices
    hits = (topk == labels.to(topk.device).unsqueeze(1)).any(dim=1)
    return hits.float().mean().item()


def retrieval_accuracy(image: torch.Tensor, text: torch.Tensor, captions: Sequence[str]) -> float:
    """Image→text top-1 retrieval among N pairs; a hit is any caption equal to the image's own, so repeated
    captions (common in templated data) do not count as misses. A label-free proxy for kept alignment."""
    _check_pair("image", image, "text", text)
    if len(captions) != image.shape[0]:
        raise ValueError(f"captions: expected {image.shape[0]} strings, got {len(captions)}")
    best = _cosine(image, text).argmax(dim=1).tolist()
    return sum(captions[j] == captions[i] for i, j in enumerate(best)) / len(captions)


def val_objective(
    metrics: dict[str, float], id_weight: float, kept: str | Sequence[str] = "val/ref_retrieval"
) -> float | None:
    """w · val/id_acc + (1 − w) · ``kept`` (what stands for kept zero-shot skill: ``val/ref_retrieval``,
    ``val/zs_acc``, or the mean of several such metrics, those present); the one present if only one is; None if
    neither."""
    names = (kept,) if isinstance(kept, str) else tuple(kept)
    present = [metrics[k] for k in names if k in metrics]
    acc, ret = metrics.get("val/id_acc"), (math.fsum(present) / len(present) if present else None)
    if acc is not None and ret is not None:
        return id_weight * acc + (1.0 - id_weight) * ret
    return acc if acc is not None else ret


def _check_pair(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    for name, t in ((name_a, a), (name_b, b)):
        if t.ndim != 2:
            raise ValueError(f"{name}: expected embeddings of shape (N, D), got {tuple(t.shape)}")
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{name_a} and {name_b} must embed the same samples: got {a.shape[0]} and {b.shape[0]} rows"
        )
    if a.shape[0] < 3:
        raise ValueError(f"RSA needs at least 3 samples, got {a.shape[0]}")


def _cosine(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cosine-similarity matrix in float64, so rounding cannot reorder near-equal similarities."""
    x = F.normalize(x.detach().to("cpu", torch.float64), dim=-1)
    y = F.normalize(y.detach().to("cpu", torch.float64), dim=-1)
    return x @ y.T


def _spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman correlation of two flat vectors; NaN when either is constant (correlation undefined)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantInputWarning)
        rho = spearmanr(np.asarray(x.numpy()), np.asarray(y.numpy())).statistic
    return float(rho)


def rsa(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman correlation of the strict upper triangles of the cosine-similarity matrices of a and b.

    Rows are samples; a and b may have different widths. NaN if all similarities in one space are equal.
    """
    _check_pair("a", a, "b", b)
    n = a.shape[0]
    rows, cols = torch.triu_indices(n, n, offset=1)
    return _spearman(_cosine(a, a)[rows, cols], _cosine(b, b)[rows, cols])


def rsa_cross(img_a: torch.Tensor, txt_a: torch.Tensor, img_b: torch.Tensor, txt_b: torch.Tensor) -> float:
    """RSA of the image–text similarity matrices (all N² entries: the matrix is not symmetric).

    Row i of the image and text embeddings must be the same image–caption pair in both models.
    """
    _check_pair("img_a", img_a, "txt_a", txt_a)
    _check_pair("img_a", img_a, "img_b", img_b)
    _check_pair("img_b", img_b, "txt_b", txt_b)
    return _spearman(_cosine(img_a, txt_a).flatten(), _cosine(img_b, txt_b).flatten())


def rsa_report(
    teacher_img: torch.Tensor,
    teacher_txt: torch.Tensor,
    student_img: torch.Tensor,
    student_txt: torch.Tensor,
) -> dict[str, float]:
    """Image, text and cross-modal RSA between teacher and student, and their mean."""
    report = {
        "rsa_image": rsa(teacher_img, student_img),
        "rsa_text": rsa(teacher_txt, student_txt),
        "rsa_cross": rsa_cross(teacher_img, teacher_txt, student_img, student_txt),
    }
    report["rsa_mean"] = sum(report.values()) / len(report)
    return report


@dataclass(frozen=True)
class SetResult:
    """Accuracy on one evaluation set; kind: "id" (fine-tuning task), "ood" (its shifts), "zs" (other classes of
    its kind), "zs_far" (zero-shot tasks of another kind: another domain, another question)."""

    name: str
    kind: str
    accuracy: float
    samples: int

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"SetResult {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if not (0.0 <= self.accuracy <= 1.0):
            raise ValueError(
                f"SetResult {self.name!r}: accuracy must be a fraction in [0, 1], got {self.accuracy}"
            )
        if self.samples < 0:
            raise ValueError(f"SetResult {self.name!r}: samples must be >= 0, got {self.samples}")


def summarize(results: Sequence[SetResult]) -> dict[str, float]:
    """Flat metric names for the tracker: id_acc, ood/<name>, zs/<name>, zs_far/<name>, ood_avg, zs_avg,
    zs_far_avg.

    Averages are unweighted over sets (the paper's convention) and omitted when there is no set of that kind.
    """
    out: dict[str, float] = {}
    ids = [r for r in results if r.kind == "id"]
    if len(ids) > 1:
        raise ValueError(f"summarize: expected at most one 'id' set, got {[r.name for r in ids]}")
    if ids:
        out["id_acc"] = ids[0].accuracy
    for kind in ("ood", "zs", "zs_far"):
        sets = [r for r in results if r.kind == kind]
        for r in sets:
            key = f"{kind}/{r.name}"
            if key in out:
                raise ValueError(f"summarize: duplicate {kind} set name {r.name!r}")
            out[key] = r.accuracy
        if sets:
            out[f"{kind}_avg"] = math.fsum(r.accuracy for r in sets) / len(sets)
    return out


def table_rows(results: Sequence[SetResult]) -> list[dict[str, Any]]:
    """One dict per set (name, kind, accuracy, samples), for JSON/CSV result tables."""
    return [dataclasses.asdict(r) for r in results]
