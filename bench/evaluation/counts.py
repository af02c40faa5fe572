"""Per-class correct / total counts on a split, optionally with horizontal-flip TTA and kept features."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from bench.models.parts import prediction


@dataclass
class EvalOutput:
    correct: torch.Tensor              # int64 (C,)
    total: torch.Tensor                # int64 (C,)
    features: torch.Tensor | None      # float32 (N, d) pooled features of the un-flipped images, on CPU
    labels: torch.Tensor               # int64 (N,)


@torch.no_grad()
def evaluate_batches(encoder: Callable[[torch.Tensor], torch.Tensor], head: Callable[[torch.Tensor], torch.Tensor],
                     batches: Iterable[tuple[torch.Tensor, torch.Tensor]], num_classes: int, device: torch.device,
                     tta_flip: bool = False, logit_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
                     keep_features: bool = False) -> EvalOutput:
    """Top-1 counts per class. TTA averages the logits of x and flip(x) (WB evaluation); `logit_fn`
    adjusts the logits afterwards (post-hoc logit adjustment)."""
    correct = torch.zeros(num_classes, dtype=torch.int64, device=device)
    total = torch.zeros(num_classes, dtype=torch.int64, device=device)
    feats, labels = [], []
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        h = encoder(x)
        logits = prediction(head(h))
        if tta_flip:
            logits = (logits + prediction(head(encoder(x.flip(3))))) / 2
        if logit_fn is not None:
            logits = logit_fn(logits)
        hit = (logits.argmax(1) == y).long()
        total += torch.bincount(y, minlength=num_classes)
        correct += torch.bincount(y, weights=hit, minlength=num_classes).long()
        if keep_features:
            feats.append(h.float().cpu())
        labels.append(y.cpu())
    return EvalOutput(correct.cpu(), total.cpu(), torch.cat(feats) if feats else None,
                      torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64))
