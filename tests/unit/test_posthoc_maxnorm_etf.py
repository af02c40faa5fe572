"""MaxNorm, tau-norm / L2-norm, logit adjustment, tau selection and the simplex ETF, checked by hand."""

import math

import pytest
import torch

from bench.methods.classifiers import ETFClassifier, maxnorm_project_, maxnorm_radius, simplex_etf
from bench.registry import POSTHOC
from bench.methods.posthoc import (choose_tau, class_prior, logit_adjust_additive, logit_adjust_multiplicative,
                                   tau_normalize)
from bench.methods.regularizers import feature_regularization, weight_decay_term

# rows with norms 1, 2, 5 (3-4-5 triangle in the last one)
ROWS = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])


def test_maxnorm_radius_by_hand():
    # 1 + 0.1 * (5 - 1) = 1.4
    assert maxnorm_radius(ROWS, 0.1) == pytest.approx(1.4, abs=1e-12)
    assert maxnorm_radius(ROWS, 0.0) == pytest.approx(1.0)
    assert maxnorm_radius(ROWS, 1.0) == pytest.approx(5.0)


def test_maxnorm_projection():
    w = ROWS.clone()
    before = w.clone()
    maxnorm_project_(w, 1.4)
    assert torch.equal(w[0], before[0])                         # norm 1 <= 1.4: untouched bit for bit
    assert torch.allclose(w[1], torch.tensor([0.0, 1.4]), atol=1e-7)
    assert torch.allclose(w[2], torch.tensor([3.0, 4.0]) * (1.4 / 5), atol=1e-7)
    assert torch.allclose(w.norm(dim=1)[1:], torch.tensor([1.4, 1.4]), atol=1e-6)
    # a row exactly at the radius is untouched; works on a Parameter that requires grad
    p = torch.nn.Parameter(torch.tensor([[0.0, 2.0], [0.6, 0.8]]))
    maxnorm_project_(p, 2.0)
    assert torch.equal(p.data, torch.tensor([[0.0, 2.0], [0.6, 0.8]]))


def test_tau_norm_and_l2():
    w = ROWS.clone()
    l2 = POSTHOC["l2norm"].weight(w, POSTHOC["l2norm"].fixed_tau)          # L2-norm = tau-norm at tau 1
    assert torch.allclose(l2, torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]), atol=1e-7)
    assert torch.equal(w, ROWS)                                 # not in place
    assert torch.equal(tau_normalize(w, 0.0), ROWS)             # tau 0 = identity
    # tau 2: rows / norm^2 -> [1,0], [0, 2/4], [3/25, 4/25]
    assert torch.allclose(tau_normalize(w, 2.0), torch.tensor([[1.0, 0.0], [0.0, 0.5], [0.12, 0.16]]), atol=1e-7)
    # tau 0.5: [0, 2/sqrt 2]
    assert torch.allclose(tau_normalize(w, 0.5)[1], torch.tensor([0.0, math.sqrt(2)]), atol=1e-6)


def test_prior_and_logit_adjustment():
    pi = class_prior([30, 10])
    assert pi.dtype == torch.float32 and torch.allclose(pi, torch.tensor([0.75, 0.25]))
    z = torch.tensor([[2.0, 1.0], [-1.0, 3.0]])
    # additive, tau 1: z - log pi = z + [log 4/3, log 4]
    add = logit_adjust_additive(z, pi, 1.0)
    assert torch.allclose(add, torch.tensor([[2 + math.log(4 / 3), 1 + math.log(4)],
                                             [-1 + math.log(4 / 3), 3 + math.log(4)]]), atol=1e-6)
    assert torch.allclose(logit_adjust_additive(z, pi, 0.0), z)
    # multiplicative, tau 0.5: z * pi^-0.5 = z * [2/sqrt 3, 2]
    mul = logit_adjust_multiplicative(z, [0.75, 0.25], 0.5)
    assert torch.allclose(mul, torch.tensor([[2 * 2 / math.sqrt(3), 2.0], [-2 / math.sqrt(3), 6.0]]), atol=1e-6)


def test_choose_tau_first_best_wins():
    scores = {0.0: 0.5, 0.5: 0.7, 1.0: 0.7, 1.5: 0.6}
    tau, best, all_scores = choose_tau(lambda t: scores[t], [0.0, 0.5, 1.0, 1.5])
    assert (tau, best, all_scores) == (0.5, 0.7, [0.5, 0.7, 0.7, 0.6])
    tau, best, _ = choose_tau(lambda t: float("nan") if t == 0 else t, [0.0, 2.0, 1.0])
    assert (tau, best) == (2.0, 2.0)
    with pytest.raises(ValueError):
        choose_tau(lambda t: t, [])


def test_simplex_etf_geometry():
    C, d = 5, 8
    w = simplex_etf(C, d, torch.Generator().manual_seed(0))
    assert w.shape == (C, d) and w.dtype == torch.float32
    assert torch.allclose(w.norm(dim=1), torch.ones(C), atol=1e-6)
    gram = w @ w.T
    off = gram[~torch.eye(C, dtype=torch.bool)]
    assert torch.allclose(off, torch.full_like(off, -1 / (C - 1)), atol=1e-6)
    assert torch.allclose(w.sum(dim=0), torch.zeros(d), atol=1e-6)   # simplex: rows sum to 0
    w2 = simplex_etf(C, C)                                            # dim == C is allowed
    assert torch.allclose(w2 @ w2.T, torch.eye(C) * (1 + 1 / (C - 1)) - 1 / (C - 1), atol=1e-5)
    with pytest.raises(ValueError, match=r"10.*8|8.*10"):
        simplex_etf(10, 8)


def test_etf_classifier_bias_is_only_parameter():
    head = ETFClassifier(6, 4, torch.Generator().manual_seed(1))
    names = [n for n, _ in head.named_parameters()]
    assert names == ["bias"]
    assert "weight" in dict(head.named_buffers()) and "weight" in head.state_dict()
    assert head.in_features == 6 and head.out_features == 4 and head.weight.shape == (4, 6)
    with torch.no_grad():
        head.bias.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    h = torch.randn(3, 6)
    assert torch.allclose(head(h), h @ head.weight.T + head.bias, atol=1e-6)
    fixed = head.weight.clone()
    opt = torch.optim.SGD(head.parameters(), lr=0.1, weight_decay=0.1)
    head(h).sum().backward()
    opt.step()
    assert torch.equal(head.weight, fixed)                            # never trained, never decayed


def test_regularizers_by_hand():
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([[3.0]])
    # 0.1/2 * (1 + 4 + 9) = 0.7
    assert float(weight_decay_term([a, b], 0.1)) == pytest.approx(0.7)
    # features with squared norms 25 and 1: 0.01/2 * 13 = 0.065
    h = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    assert float(feature_regularization(h, 0.01)) == pytest.approx(0.065)


def test_every_registered_posthoc_step_changes_the_weight_or_the_logits():
    """Each step of bench/registry.py POSTHOC (the names posthoc.kind accepts) does exactly one of the two, or
    weighs a multi-expert parent's experts (SADE's test-time aggregation)."""
    assert set(POSTHOC) == {"l2norm", "taunorm", "la_add", "la_mult", "sade_tta"}
    assert all((s.weight is None) != (s.logits is None) for s in POSTHOC.values() if not s.aggregates_experts)
    assert [k for k, s in POSTHOC.items() if s.aggregates_experts] == ["sade_tta"]


def test_lws_head_by_hand():
    """LWS: z_c = s_c (W_c h + b_c); only s gets gradients; folding gives the same logits as a plain Linear."""
    from bench.methods.classifiers import ScaledLinear

    lin = torch.nn.Linear(2, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2.0], [0.0, -1.0], [3.0, 1.0]]))
        lin.bias.copy_(torch.tensor([0.5, 1.0, -2.0]))
    head = ScaledLinear(lin)
    with torch.no_grad():
        head.scales.copy_(torch.tensor([2.0, 0.5, -1.0]))
    h = torch.tensor([[1.0, 1.0]])
    # by hand: W h + b = [3.5, 0.0, 2.0]; times s = [7.0, 0.0, -2.0]
    z = head(h)
    assert torch.allclose(z, torch.tensor([[7.0, 0.0, -2.0]]))
    z.sum().backward()
    assert lin.weight.grad is None and lin.bias.grad is None
    assert torch.allclose(head.scales.grad, torch.tensor([3.5, 0.0, 2.0]))   # dz_c/ds_c = W_c h + b_c
    assert [n for n, p in head.named_parameters() if p.requires_grad] == ["scales"]
    plain = head.folded()
    assert isinstance(plain, torch.nn.Linear) and torch.allclose(plain(h), z)
    assert torch.allclose(head.weight, plain.weight)                       # the effective rows s_c W_c
