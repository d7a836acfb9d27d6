"""What a model builder returns: the model and everything needed to feed and export it.

Its own module so that every builder (``dive.models`` for open_clip names, ``dive.litemini`` for the packaged
stand-in) can return one without importing the other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class ModelBundle:
    """A model and everything needed to feed it, plus the configs an export must record."""

    model: nn.Module
    preprocess_eval: Callable[[Any], torch.Tensor]
    tokenizer: Callable[..., torch.Tensor]
    model_cfg: dict[str, Any]
    preprocess_cfg: dict[str, Any]
    # Where the weights came from, for export cards ("random init" when none).
    source: str
