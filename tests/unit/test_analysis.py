"""Analysis measures on hand-made features with known answers."""

import math

import pytest
import torch

from bench.evaluation.analysis import class_weight_norms, cosine_similarity_stats, fisher_discriminant_ratio


def test_class_weight_norms():
    assert class_weight_norms(torch.tensor([[3.0, 4.0], [0.0, 2.0]])) == pytest.approx([5.0, 2.0])


def test_fdr_one_dim_two_classes():
    # class 0: {0, 2} (mean 1), class 1: {4, 6, 8} (mean 6); overall mean 20/5 = 4
    # S_B = 2 (1-4)^2 + 3 (6-4)^2 = 18 + 12 = 30; S_W = (1 + 1) + (4 + 0 + 4) = 10 -> FDR = 3
    x = torch.tensor([[0.0], [2.0], [4.0], [6.0], [8.0]])
    y = torch.tensor([0, 0, 1, 1, 1])
    assert fisher_discriminant_ratio(x, y) == pytest.approx(3.0, rel=1e-12)
    # an empty class (label 2 never used) is ignored
    assert fisher_discriminant_ratio(x, y, num_classes=4) == pytest.approx(3.0, rel=1e-12)


def test_fdr_drops_near_constant_dim():
    base = torch.tensor([0.0, 2.0, 4.0, 6.0, 8.0], dtype=torch.float64)
    # a near-constant dim (variance ~2.3e-11 << 1e-8 * var(base) = 8e-8) that nonetheless separates the
    # classes almost perfectly: kept, it would dominate tr(S_W^-1 S_B); dropped, FDR is the 1-D answer 3
    const = 7.0 + 1e-5 * torch.tensor([0.0, 0.1, 1.0, 1.1, 1.0], dtype=torch.float64)
    x = torch.stack([base, const], dim=1)
    y = torch.tensor([0, 0, 1, 1, 1])
    assert fisher_discriminant_ratio(x, y) == pytest.approx(3.0, rel=1e-9)
    assert fisher_discriminant_ratio(x, y, var_tol=0.0) > 100     # the same data without the drop


def test_fdr_two_dims_by_hand():
    # dim 0 as above; dim 1 = class-0 {0, 0}, class-1 {1, 1, 2}. Scatter matrices written out by hand.
    # dim 1: means 0 and 4/3, overall 4/5; S_B = 2*(4/5)^2 + 3*(8/15)^2 = 32/25 + 64/75 = 160/75
    # S_W[1,1] = (1-4/3)^2*2 + (2-4/3)^2 = 2/9 + 4/9 = 2/3; cross term S_W[0,1]:
    # class 1 centred: x0 - 6 = [-2, 0, 2], x1 - 4/3 = [-1/3, -1/3, 2/3] -> sum = 2/3 + 0 + 4/3 = 2
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [4.0, 1.0], [6.0, 1.0], [8.0, 2.0]])
    y = torch.tensor([0, 0, 1, 1, 1])
    s_w = [[10.0, 2.0], [2.0, 2 / 3]]
    d = torch.tensor([[-3.0, -4 / 5], [2.0, 8 / 15]])            # mu_c - mu
    s_b = 2 * torch.outer(d[0], d[0]) + 3 * torch.outer(d[1], d[1])
    # 2x2 inverse by hand: adj / det
    det = s_w[0][0] * s_w[1][1] - s_w[0][1] ** 2
    inv = torch.tensor([[s_w[1][1], -s_w[0][1]], [-s_w[1][0], s_w[0][0]]]) / det
    expected = float(torch.trace(inv.double() @ s_b.double()))
    assert fisher_discriminant_ratio(x, y) == pytest.approx(expected, rel=1e-6)


def test_cosine_stats_by_hand():
    # unit vectors at 0, 90 degrees (class 0) and 180 degrees, 45 degrees scaled by 3 (class 1)
    s = 1 / math.sqrt(2)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [3 * s, 3 * s]])
    y = torch.tensor([0, 0, 1, 1])
    # within: (0,1) -> 0; (2,3) -> -s.  mean = -s/2
    # between: (0,2) -1, (0,3) s, (1,2) 0, (1,3) s -> (2s - 1) / 4
    stats = cosine_similarity_stats(x, y)
    assert stats["within"] == pytest.approx(-s / 2, abs=1e-12)
    assert stats["between"] == pytest.approx((2 * s - 1) / 4, abs=1e-12)
    assert stats["all"] == pytest.approx((-s + 2 * s - 1) / 6, abs=1e-12)


def test_cosine_stats_missing_pairs_are_none():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    stats = cosine_similarity_stats(x, torch.tensor([0, 1]))      # one sample per class: no within pair
    assert stats["within"] is None and stats["between"] == pytest.approx(0.0) and stats["all"] == pytest.approx(0.0)
    stats = cosine_similarity_stats(x, torch.tensor([1, 1]))      # one class: no between pair
    assert stats["between"] is None and stats["within"] == pytest.approx(0.0)
