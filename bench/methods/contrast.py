"""Supervised contrastive learning with parametric class centres: PaCo (Cui et al., ICCV 2021) and GPaCo (Cui et al.,
TPAMI 2023), as their code (dvlab-research/Parametric-Contrastive-Learning: PaCo/LT/losses.py, moco/builder.py;
GPaCo/LT/...) computes them.

A contrastive run trains a `ContrastModel`: the timm model (its pooled feature h and linear classifier, whose
logits are PaCo's class centres), a projection head h -> q (L2-normalised), and for PaCo a key encoder, a moving
average of the encoder and projection with no gradient. Its forward takes the two views of each image (data.views:
query, key) and returns the pieces of the loss; the loss (`PaCoLoss`) keeps the queue of past keys and their
labels, which the checkpoint saves with the loss's state. Evaluation uses the timm model alone: the centres'
logits, as the references' inference.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.config import ContrastConfig
from bench.methods.losses import LossFn
from bench.models.parts import encode, head_of
from bench.registry import CONTRAST
from bench.runtime import dist


@dataclass(frozen=True)
class Contrast:
    """A contrastive method (what bench/registry.py CONTRAST names): PaCo takes the key view through a momentum copy
    of the encoder (MoCo) and anchors on the query view alone; GPaCo takes it through the encoder itself, with
    gradient, and both views are anchors with their centre logits."""

    momentum_encoder: bool


PACO = Contrast(momentum_encoder=True)
GPACO = Contrast(momentum_encoder=False)


def projection(kind: str, features: int, hidden: int, dim: int) -> nn.Sequential:
    """mlp2_bn: Linear-BN-ReLU-Linear (PaCo: MoCo v2's MLP in place of the backbone's fc); mlp3: Linear-ReLU-Linear-
    ReLU-Linear without BatchNorm (GPaCo's)."""
    if kind == "mlp2_bn":
        return nn.Sequential(nn.Linear(features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, dim))
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, dim))


class ContrastModel(nn.Module):
    """What a contrastive run trains and checkpoints (`model`, `proj`, and PaCo's `key_model` / `key_proj`)."""

    def __init__(self, model: nn.Module, cfg: ContrastConfig, spec: Contrast) -> None:
        super().__init__()
        features = int(model.num_features)  # type: ignore[arg-type]
        self.model = model
        self.proj = projection(cfg.projection, features, cfg.hidden or features, cfg.dim)
        self.momentum = cfg.momentum
        self.key_model: nn.Module | None = None
        self.key_proj: nn.Module | None = None
        if spec.momentum_encoder:      # MoCo: a copy of the query encoder, updated by moving average only
            self.key_model, self.key_proj = copy.deepcopy(model), copy.deepcopy(self.proj)
            for p in itertools.chain(self.key_model.parameters(), self.key_proj.parameters()):
                p.requires_grad_(False)

    @torch.no_grad()
    def _momentum_update(self) -> None:
        """theta_k <- m theta_k + (1 - m) theta_q over the encoder (with its classifier, as the reference's
        linear_k) and the projection (MoCo's _momentum_update_key_encoder, before the key is computed)."""
        assert self.key_model is not None and self.key_proj is not None
        mine = itertools.chain(self.model.parameters(), self.proj.parameters())
        keys = itertools.chain(self.key_model.parameters(), self.key_proj.parameters())
        for q, k in zip(mine, keys):
            k.mul_(self.momentum).add_(q.detach(), alpha=1.0 - self.momentum)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """x: (B, 2, C, H, W), the query and key views -> (h of the query view, the loss's inputs): `logits` the query
        view's centre logits (B, C; the training accuracy), `centre` the anchors' (A, C), `contrast` the anchors'
        projections then the keys' (PaCo: [q; k]; GPaCo: [q; q'], both anchors), `keys` what the queue takes."""
        h = encode(self.model, x[:, 0])
        z = head_of(self.model)(h)
        q = F.normalize(self.proj(h), dim=1)
        if self.key_model is not None and self.key_proj is not None:
            with torch.no_grad():
                self._momentum_update()
                k = F.normalize(self.key_proj(encode(self.key_model, x[:, 1])), dim=1)
            return h, {"logits": z, "centre": z, "contrast": torch.cat([q, k]), "keys": k}
        h2 = encode(self.model, x[:, 1])
        q2 = F.normalize(self.proj(h2), dim=1)
        return h, {"logits": z, "centre": torch.cat([z, head_of(self.model)(h2)]), "contrast": torch.cat([q, q2]),
                   "keys": q2.detach()}


class PaCoLoss(LossFn):
    """PaCo's loss (its PaCoLoss), per anchor i with label y_i, over one softmax of the class centres and the
    contrast set (the anchors' and keys' projections, then the queue), self excluded:

        logits: z_c + log pi_c (c = 1..C), then s_j = a_i . f_j / T
        D_i = sum_c e^{z_c + log pi_c} + gamma sum_{j != i} e^{s_j}
        L_i = -[beta (z_y + log pi_y - log D_i) + alpha sum_{j in P(i)} (s_j - log D_i)] / (beta + alpha |P(i)|)

    P(i) the contrast-set entries of the same label, i itself excluded (the key of the same image is one); the mean
    over anchors. The prior's log is added in training only (inference: raw centre logits). The queue starts as the
    reference's: Gaussian keys normalised along the queue dimension (its `normalize(queue, dim=0)`) with uniformly
    drawn labels, seeded; after each step it takes the keys of the global batch (gathered over ranks, in rank
    order), oldest first out."""

    queue: torch.Tensor
    queue_labels: torch.Tensor
    queue_ptr: torch.Tensor
    log_prior: torch.Tensor

    def __init__(self, class_counts: list[int], cfg: ContrastConfig, seed: int) -> None:
        super().__init__()
        n = torch.as_tensor(class_counts, dtype=torch.float64)
        self.register_buffer("log_prior", torch.log(n / n.sum()).to(torch.float32))
        self.alpha, self.beta, self.gamma, self.temperature = cfg.alpha, cfg.beta, cfg.gamma, cfg.temperature
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("queue", F.normalize(torch.randn(cfg.queue, cfg.dim, generator=gen), dim=0))
        self.register_buffer("queue_labels", torch.randint(0, len(class_counts), (cfg.queue,), generator=gen))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.int64))

    def forward(self, out: Any, y: torch.Tensor) -> torch.Tensor:
        centre, contrast = out["centre"], out["contrast"]
        a, b = len(centre), len(y)
        anchor_labels = y.repeat(a // b)
        labels = torch.cat([anchor_labels, y.repeat((len(contrast) - a) // b), self.queue_labels])
        feats = torch.cat([contrast, self.queue.to(contrast.dtype)])
        sim = contrast[:a] @ feats.T / self.temperature
        logits = torch.cat([centre + self.log_prior.to(centre.dtype), sim], dim=1)
        logits = logits - logits.max(dim=1, keepdim=True).values.detach()      # numerical stability only
        not_self = torch.ones_like(sim)
        not_self[torch.arange(a), torch.arange(a)] = 0                        # anchor i is entry i of the set
        positives = (anchor_labels[:, None] == labels[None, :]).to(sim.dtype) * not_self
        onehot = F.one_hot(anchor_labels, centre.shape[1]).to(sim.dtype)
        weights = torch.cat([self.beta * onehot, self.alpha * positives], dim=1)
        in_denominator = torch.cat([torch.ones_like(onehot), self.gamma * not_self], dim=1)
        log_prob = logits - torch.log((logits.exp() * in_denominator).sum(1, keepdim=True) + 1e-12)
        loss = -((weights * log_prob).sum(1) / weights.sum(1)).mean()
        self._enqueue(out["keys"], y)     # after the loss: this step contrasts with the queue as it was
        return loss

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor, y: torch.Tensor) -> None:
        keys, y = dist.gather_cat(keys.detach().float()), dist.gather_cat(y)
        k = len(self.queue)
        at = (int(self.queue_ptr) + torch.arange(len(keys), device=keys.device)) % k
        self.queue[at[-k:]] = keys[-k:]
        self.queue_labels[at[-k:]] = y[-k:]
        self.queue_ptr.fill_((int(self.queue_ptr) + len(keys)) % k)


def make_contrast(model: nn.Module, cfg: ContrastConfig, class_counts: list[int], seed: int
                  ) -> tuple[ContrastModel, PaCoLoss]:
    """The model wrapper and the loss of train.contrast.method (bench/registry.py CONTRAST)."""
    assert cfg.method is not None
    spec: Contrast = CONTRAST[cfg.method]
    return ContrastModel(model, cfg, spec), PaCoLoss(class_counts, cfg, seed)
