"""Scoring a labelled set against a classifier whose classes are not the set's own.

Several of the paper's evaluation sets are scored with the ImageNet classifier: ImageNet-R and ImageNet-A hold
200 of its 1,000 classes, and ObjectNet's 113 classes each stand for one or more ImageNet classes (FLYP and
WiSE-FT take the max logit over each group). A :class:`LabelMap` says, per label of the set, which classifier
classes score it; :func:`project_logits` turns (N, C) classifier logits into (N, L) logits over the set's labels,
whose argmax is the prediction.

Building the 1,000-class head once and projecting is what makes FT / LP-FT's trained linear head usable on these
sets (its rows are ImageNet's classes), and it keeps every ImageNet-derived set on one text head.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LabelMap:
    """``groups[i]``: the classifier classes (indices into ``num_classes``) whose max logit is label i's score.

    One index per label is a subset (ImageNet-R / -A); several are many-to-one (ObjectNet). A classifier class
    may belong to no group (it is never predicted) or to several (a many-to-one map published that way: each
    group still takes its own max, as FLYP's and WiSE-FT's projection does).
    """

    groups: tuple[tuple[int, ...], ...]
    num_classes: int

    def __post_init__(self) -> None:
        if not self.groups:
            raise ValueError("a label map needs at least one label")
        for label, group in enumerate(self.groups):
            if not group:
                raise ValueError(f"label {label} maps to no classifier class")
            for c in group:
                if not 0 <= c < self.num_classes:
                    raise ValueError(f"label {label} maps to class {c}, outside [0, {self.num_classes})")

    @classmethod
    def from_lists(cls, groups: Sequence[Sequence[int]], num_classes: int) -> LabelMap:
        return cls(tuple(tuple(int(c) for c in g) for g in groups), num_classes)

    @classmethod
    def subset(cls, indices: Sequence[int], num_classes: int) -> LabelMap:
        return cls.from_lists([[i] for i in indices], num_classes)

    @property
    def is_subset(self) -> bool:
        return all(len(g) == 1 for g in self.groups)

    def index(self) -> torch.Tensor:
        """(L, G) gather indices: every group padded to the widest with its own first class."""
        width = max(len(g) for g in self.groups)
        return torch.tensor([list(g) + [g[0]] * (width - len(g)) for g in self.groups], dtype=torch.long)


def project_logits(logits: torch.Tensor, label_map: LabelMap | None) -> torch.Tensor:
    """(N, C) classifier logits → (N, L): label i's score is the max over ``groups[i]``; identity for None.

    Padding a group with its own first class leaves the max unchanged, so one gather + max serves subsets and
    many-to-one maps alike (a subset reduces to ``logits[:, indices]``)."""
    if label_map is None:
        return logits
    if logits.shape[-1] != label_map.num_classes:
        raise ValueError(
            f"logits have {logits.shape[-1]} classes, the label map expects {label_map.num_classes}"
        )
    index = label_map.index().to(logits.device)
    if label_map.is_subset:
        return logits[:, index[:, 0]]
    gathered = logits[:, index.reshape(-1)].reshape(logits.shape[0], *index.shape)
    return gathered.amax(dim=-1)
