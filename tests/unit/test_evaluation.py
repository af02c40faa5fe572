"""Evaluation counts, with and without horizontal-flip test-time augmentation."""

import torch

from bench.data.batches import Normalize
from bench.data.lt import Split
from bench.evaluation import class_counts_correct


class LeftRight(torch.nn.Module):
    """Two logits: mean of the left half and mean of the right half of the image."""

    def forward(self, x):
        w = x.shape[-1] // 2
        return torch.stack([x[..., :w].mean((1, 2, 3)), x[..., w:].mean((1, 2, 3))], 1)


def test_tta_averages_logits_of_image_and_flip():
    x = torch.zeros(3, 1, 2, 4, dtype=torch.uint8)
    x[0, ..., :2] = 200          # bright left  -> class 0
    x[1, ..., 2:] = 200          # bright right -> class 1
    x[2, ..., :2] = 100          # left 100, right 60: plain says 0; TTA averages to a tie -> argmax 0
    x[2, ..., 2:] = 60
    split = Split(x, torch.tensor([0, 1, 1]))
    norm = Normalize((0.0,), (1 / 255,), 1)
    correct, total = class_counts_correct(LeftRight(), split, 2, norm, batch_size=2, device=torch.device("cpu"))
    assert total.tolist() == [1, 2] and correct.tolist() == [1, 1]
    # with TTA every image's two logits become equal (left+right)/2 each: argmax picks class 0 for all
    correct, total = class_counts_correct(LeftRight(), split, 2, norm, 2, torch.device("cpu"), tta_flip=True)
    assert correct.tolist() == [1, 0]
