"""Per-class correct / total counts of a model on a split (optionally with horizontal-flip TTA)."""

from __future__ import annotations

import torch

from bench.data.batches import Normalize, eval_batches
from bench.data.lt import Split


@torch.no_grad()
def class_counts_correct(model: torch.nn.Module, split: Split, num_classes: int, normalize: Normalize,
                         batch_size: int, device: torch.device, tta_flip: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct[c], total[c]) as int64 tensors. TTA averages the logits of x and flip(x) (WB evaluation)."""
    was_training = model.training
    model.eval()
    correct = torch.zeros(num_classes, dtype=torch.int64, device=device)
    total = torch.zeros(num_classes, dtype=torch.int64, device=device)
    for x, y in eval_batches(split, batch_size, normalize):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = model(x)
        if tta_flip:
            logits = (logits + model(x.flip(3))) / 2
        hit = (logits.argmax(1) == y).long()
        total += torch.bincount(y, minlength=num_classes)
        correct += torch.bincount(y, weights=hit, minlength=num_classes).long()
    model.train(was_training)
    return correct.cpu(), total.cpu()
