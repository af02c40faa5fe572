"""Per-class and many/medium/few accuracies computed by hand."""

import torch

from bench.evaluation.metrics import group_metrics, per_class_accuracy


def test_group_metrics_by_hand():
    # classes 0..3; correct/total: 9/10, 5/10, 1/4, 0/2
    correct, total = torch.tensor([9, 5, 1, 0]), torch.tensor([10, 10, 4, 2])
    groups = {"many": [0, 1], "medium": [2], "few": [3]}
    m = group_metrics(correct, total, groups)
    assert m["all"] == 100 * 15 / 26
    assert m["many"] == (90 + 50) / 2          # mean of per-class accuracies, not pooled
    assert m["medium"] == 25.0
    assert m["few"] == 0.0


def test_empty_group_is_none_not_zero():
    m = group_metrics(torch.tensor([1, 2]), torch.tensor([2, 2]), {"many": [0], "medium": [1], "few": []})
    assert m["few"] is None and m["medium"] == 100.0


def test_class_without_samples_is_none():
    assert per_class_accuracy(torch.tensor([0, 1]), torch.tensor([0, 4])) == [None, 25.0]
