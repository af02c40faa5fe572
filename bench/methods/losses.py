"""Training losses, chosen by name from the config (`train.loss.name`)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.config import LossConfig


class LossFn(nn.Module):
    """A loss: forward(logits, y) -> scalar; set_epoch(e) for losses that change over training."""

    def set_epoch(self, epoch: int) -> None:  # noqa: B027 - optional hook
        pass


class CrossEntropy(LossFn):
    """WB stage 1 (REFERENCE.md section 1): plain cross-entropy over instance-balanced batches."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)


def make_loss(cfg: LossConfig, class_counts: list[int]) -> LossFn:
    """Build the loss named by cfg.name. `class_counts` (training n_c) is for class-aware losses."""
    if cfg.name == "ce":
        return CrossEntropy(cfg.label_smoothing)
    raise ValueError(f"unknown loss {cfg.name!r}")
