"""Training losses, chosen by name from the config (`train.loss`)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from bench.config import TrainConfig

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def make_loss(cfg: TrainConfig, class_counts: list[int]) -> Loss:
    """Build the loss named by cfg.loss. `class_counts` is for class-aware losses."""
    if cfg.loss == "ce":
        # WB stage 1 (REFERENCE.md section 1): plain cross-entropy over instance-balanced batches.
        return lambda logits, y: F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
    raise ValueError(f"unknown loss {cfg.loss!r}")
