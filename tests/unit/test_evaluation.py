"""Evaluation counts, with and without horizontal-flip test-time augmentation."""

import torch

from bench.data.batches import Normalize, eval_batches
from bench.data.lt import Split
from bench.evaluation.counts import evaluate_batches


def left_right(x):
    """Two logits: mean of the left half and mean of the right half of the image."""
    w = x.shape[-1] // 2
    return torch.stack([x[..., :w].mean((1, 2, 3)), x[..., w:].mean((1, 2, 3))], 1)


def test_tta_averages_logits_of_image_and_flip():
    x = torch.zeros(3, 1, 2, 4, dtype=torch.uint8)
    x[0, ..., :2] = 200          # bright left  -> class 0
    x[1, ..., 2:] = 200          # bright right -> class 1
    x[2, ..., :2] = 100          # left 100, right 60: plain says 0
    x[2, ..., 2:] = 60
    split = Split(x, torch.tensor([0, 1, 1]))
    norm = Normalize((0.0,), (1 / 255,), 1)
    ident = lambda h: h  # noqa: E731
    out = evaluate_batches(left_right, ident, eval_batches(split, 2, norm), 2, torch.device("cpu"), keep_features=True)
    assert out.total.tolist() == [1, 2] and out.correct.tolist() == [1, 1]
    assert out.features.shape == (3, 2) and out.labels.tolist() == [0, 1, 1]
    # with TTA every image's two logits become (left+right)/2 each: a tie, argmax picks class 0 for all
    out = evaluate_batches(left_right, ident, eval_batches(split, 2, norm), 2, torch.device("cpu"), tta_flip=True)
    assert out.correct.tolist() == [1, 0]


def test_logit_fn_is_applied_after_tta():
    x = torch.zeros(1, 1, 2, 4, dtype=torch.uint8)
    x[0, ..., :2] = 200
    split = Split(x, torch.tensor([1]))
    norm = Normalize((0.0,), (1 / 255,), 1)
    shift = lambda z: z + torch.tensor([0.0, 1000.0])  # noqa: E731
    out = evaluate_batches(left_right, lambda h: h, eval_batches(split, 1, norm), 2, torch.device("cpu"),
                           logit_fn=shift)
    assert out.correct.tolist() == [0, 1]
