"""Training-free post-hoc adjustments of a trained classifier (tau-norm: Kang et al. 2020; logit adjustment:
Menon et al. 2021, HS).

- L2-norm / tau-norm of the classifier rows (Kang et al. 2020, as in WB): W_k / ||W_k||^tau, bias unchanged.
- Logit adjustment with the training prior pi_c = n_c / N: additive z_c - tau log pi_c (Menon et al.
  2021) and multiplicative z_c * pi_c^(-tau) (HS).
- choose_tau: pick tau on a validation score, deterministically.
- The steps (config `posthoc.kind`) as PostHoc values at the end, each named once in bench/registry.py POSTHOC;
  a new step is a function here, its PostHoc value, and its entry there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch


def class_prior(class_counts: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Training class prior pi_c = n_c / N as float32, shape (C,)."""
    n = torch.as_tensor(class_counts, dtype=torch.float64).flatten()
    total = float(n.sum())
    if total <= 0:
        raise ValueError("class_prior needs a positive total count")
    return (n / total).to(torch.float32)


def tau_normalize(weight: torch.Tensor, tau: float) -> torch.Tensor:
    """tau-norm: W_k / ||W_k||^tau per row (new tensor). tau = 0 is the identity, tau = 1 is L2-norm.

    All-zero rows stay zero (their norm is clamped to the smallest positive float).
    """
    w = weight.detach()
    norms = w.flatten(1).norm(dim=1).clamp_min(torch.finfo(w.dtype).tiny)
    denom = norms.pow(tau).view((-1,) + (1,) * (w.dim() - 1))
    return w / denom


def _prior_like(prior: Sequence[float] | torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(prior, dtype=logits.dtype, device=logits.device)


def logit_adjust_additive(logits: torch.Tensor, prior: Sequence[float] | torch.Tensor, tau: float) -> torch.Tensor:
    """Additive post-hoc logit adjustment (Menon et al. 2021): z_c - tau * log(pi_c)."""
    return logits - tau * torch.log(_prior_like(prior, logits))


def logit_adjust_multiplicative(logits: torch.Tensor, prior: Sequence[float] | torch.Tensor,
                                tau: float) -> torch.Tensor:
    """Multiplicative logit adjustment (HS second stage): z_c * pi_c^(-tau)."""
    return logits * _prior_like(prior, logits).pow(-tau)


def choose_tau(score_fn: Callable[[float], float], grid: Iterable[float]) -> tuple[float, float, list[float]]:
    """Evaluate score_fn(tau) (e.g. validation accuracy) on every tau in `grid` order.

    Returns (best_tau, best_score, all_scores). Ties go to the first tau in grid order (the smallest for
    an increasing grid); NaN scores never win unless every score is NaN (then the first tau).
    """
    taus = [float(t) for t in grid]
    if not taus:
        raise ValueError("choose_tau needs a non-empty grid")
    scores = [float(score_fn(t)) for t in taus]
    best = 0
    for i, s in enumerate(scores):
        if not math.isnan(s) and (math.isnan(scores[best]) or s > scores[best]):
            best = i
    return taus[best], scores[best], scores


@dataclass(frozen=True)
class PostHoc:
    """A post-hoc step at a given tau: a new classifier weight from the old one (`weight(W, tau)`) and/or
    adjusted logits (`logits(z, prior, tau)`); `fixed_tau` = nothing to choose (L2-norm is tau-norm at 1)."""

    weight: Callable[[torch.Tensor, float], torch.Tensor] | None = None
    logits: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor] | None = None
    fixed_tau: float | None = None
    aggregates_experts: bool = False   # SADE's test-time aggregation: a multi-expert parent, no tau


# The steps bench/registry.py POSTHOC names.
L2_NORM = PostHoc(weight=tau_normalize, fixed_tau=1.0)
TAU_NORM = PostHoc(weight=tau_normalize)
LOGIT_ADJUST_ADDITIVE = PostHoc(logits=logit_adjust_additive)
LOGIT_ADJUST_MULTIPLICATIVE = PostHoc(logits=logit_adjust_multiplicative)
SADE_TEST_TIME_AGGREGATION = PostHoc(aggregates_experts=True)


def fit_aggregation(expert_logits: Callable[[torch.Tensor], torch.Tensor],
                    batches: Callable[[int], Iterable[torch.Tensor]], experts: int, epochs: int, lr: float,
                    weight_decay: float, min_weight: float) -> tuple[torch.Tensor, int]:
    """SADE's test-time self-supervised aggregation (Zhang et al. 2022; its test_training_cifar.py): weights
    w = softmax(a) of the experts, a from 1/K, fitted by SGD (momentum 0.9, Nesterov, weight decay on a) to make
    the aggregated prediction agree across two views of each unlabeled test image:

        loss = -mean_i cos( softmax(sum_k w_k z_k(v1_i)), softmax(sum_k w_k z_k(v2_i)) )

    `expert_logits` (frozen model, eval mode) maps images to (B, K, C); `batches(epoch)` yields (B, 2, C, H, W)
    views. After each pass the weights, rounded to 2 decimals as the code checks them, stop the fit once one is
    below `min_weight`. Returns (w, passes run)."""
    a = torch.nn.Parameter(torch.full((experts,), 1.0 / experts))
    opt = torch.optim.SGD([a], lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    done = 0
    for epoch in range(epochs):
        for x in batches(epoch):
            with torch.no_grad():
                z1, z2 = expert_logits(x[:, 0]), expert_logits(x[:, 1])
            w = torch.softmax(a, dim=0).to(z1)          # the logits' device and dtype, differentiably
            p1 = torch.softmax(torch.einsum("k,bkc->bc", w, z1), dim=1)
            p2 = torch.softmax(torch.einsum("k,bkc->bc", w, z2), dim=1)
            loss = -torch.nn.functional.cosine_similarity(p1, p2, dim=1, eps=1e-6).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        done = epoch + 1
        if bool((torch.round(torch.softmax(a.detach(), dim=0) * 100) / 100 < min_weight).any()):
            break
    return torch.softmax(a.detach(), dim=0), done
