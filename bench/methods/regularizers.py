"""Explicit regularisation terms of the HS single-stage method (Hasegawa & Sato, ICLR 2024).

Both are added to the training loss. If weight_decay_term is used, the optimiser's own weight_decay
must be 0 for the same parameters, otherwise the decay is applied twice (SGD's weight_decay=lam adds
lam * theta to the gradient, which is exactly the gradient of this term).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from bench.config import TrainConfig


def weight_decay_term(params: Iterable[torch.Tensor], lam: float) -> torch.Tensor:
    """lam / 2 * sum_theta ||theta||^2 over the given parameters (a scalar tensor, differentiable)."""
    total: torch.Tensor | None = None
    for p in params:
        sq = p.pow(2).sum()
        total = sq if total is None else total + sq.to(total.device)
    if total is None:
        return torch.zeros(())
    return 0.5 * lam * total


def feature_regularization(h: torch.Tensor, lam_fr: float) -> torch.Tensor:
    """Feature regularisation (HS FR): lam_fr / 2 * mean_i ||h_i||^2 on pooled penultimate features.

    h is (B, d); extra trailing dims (e.g. (B, d, 1, 1)) are flattened into the feature.
    """
    if h.dim() < 2:
        raise ValueError(f"features must be (B, d), got shape {tuple(h.shape)}")
    return 0.5 * lam_fr * h.flatten(1).pow(2).sum(dim=1).mean()


def make_regularizers(t: TrainConfig, model: torch.nn.Module) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    """The loss terms of train.wd_in_loss and train.feature_reg, each a function of the pooled features h."""
    terms: list[Callable[[torch.Tensor], torch.Tensor]] = []
    if t.wd_in_loss:
        # HS: lambda/2 * sum ||theta||^2 over the trained parameters, as a loss term (not inside SGD)
        trained = [p for p in model.parameters() if p.requires_grad]
        terms.append(lambda h: weight_decay_term(trained, t.wd_in_loss))
    if t.feature_reg:
        terms.append(lambda h: feature_regularization(h, t.feature_reg))
    return terms
