"""Supervised contrastive learning with parametric class centres: PaCo (Cui et al., ICCV 2021) and GPaCo (Cui et al.,
TPAMI 2023), as their code (dvlab-research/Parametric-Contrastive-Learning: PaCo/LT/losses.py, moco/builder.py;
GPaCo/LT/...) computes them.

BCL (Zhu et al., CVPR 2022; FlamieZhu/Balanced-Contrastive-Learning: loss/contrastive.py, models/resnext.py) is
here too: `BCLModel` and `BCLLoss`.

A PaCo / GPaCo run trains a `ContrastModel`: the timm model (its pooled feature h and linear classifier, whose
logits are PaCo's class centres), a projection head h -> q (L2-normalised), and for PaCo a key encoder, a moving
average of the encoder and projection with no gradient. Its forward takes the two views of each image (data.views:
query, key) and returns the pieces of the loss; the loss (`PaCoLoss`) keeps the queue of past keys and their
labels, which the checkpoint saves with the loss's state. Evaluation uses the timm model alone: the centres'
logits, as the references' inference.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.config import ContrastConfig
from bench.methods.losses import LossFn
from bench.models.parts import encode, head_of
from bench.runtime import dist


def projection(kind: str, features: int, hidden: int, dim: int) -> nn.Sequential:
    """mlp2_bn: Linear-BN-ReLU-Linear (PaCo: MoCo v2's MLP in place of the backbone's fc); mlp3: Linear-ReLU-Linear-
    ReLU-Linear without BatchNorm (GPaCo's)."""
    if kind == "mlp2_bn":
        return nn.Sequential(nn.Linear(features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, dim))
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, dim))


class ContrastModel(nn.Module):
    """What a contrastive run trains and checkpoints (`model`, `proj`, and PaCo's `key_model` / `key_proj`)."""

    def __init__(self, model: nn.Module, cfg: ContrastConfig, momentum_encoder: bool) -> None:
        super().__init__()
        features = int(model.num_features)  # type: ignore[arg-type]
        self.model = model
        self.proj = projection(cfg.projection, features, cfg.hidden or features, cfg.dim)
        self.momentum = cfg.momentum
        self.key_model: nn.Module | None = None
        self.key_proj: nn.Module | None = None
        if momentum_encoder:      # PaCo (MoCo): a copy of the query encoder, updated by moving average only
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
        k, n = len(self.queue), len(keys)
        # pointer arithmetic on the device: no host synchronisation per step
        at = (self.queue_ptr + torch.arange(n, device=self.queue.device)) % k
        self.queue[at[-k:]] = keys[-k:].to(self.queue.device)
        self.queue_labels[at[-k:]] = y[-k:].to(self.queue.device)
        self.queue_ptr.copy_((self.queue_ptr + n) % k)


class BCLModel(nn.Module):
    """BCL's model (Zhu et al., CVPR 2022; its models/resnext.py BCLModel): the timm model with a cosine classifier
    (model.classifier=cosine, s 30), the projection `proj` of the pooled feature, and `proto`, an MLP of the same
    shape that maps each class's classifier direction (raw, as its `fc.weight.T`) to a class prototype. The three
    views go through the backbone as one batch (its BatchNorm sees all three, as the reference's)."""

    def __init__(self, model: nn.Module, cfg: ContrastConfig) -> None:
        super().__init__()
        features = int(model.num_features)  # type: ignore[arg-type]
        self.model = model
        self.proj = projection(cfg.projection, features, cfg.hidden or features, cfg.dim)
        self.proto = projection(cfg.projection, features, cfg.hidden or features, cfg.dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """x: (B, 3, C, H, W) -> (h of view 0, `logits` of view 0 (B, C), `features` the unit projections of views 1
        and 2 (2B, d), `prototypes` one unit vector per class (C, d))."""
        b = len(x)
        h = encode(self.model, x.transpose(0, 1).flatten(0, 1))        # [view 0; view 1; view 2]
        head = head_of(self.model)
        z = head(h[:b])
        f = F.normalize(self.proj(h), dim=1)[b:]      # the projection's BatchNorm sees all 3B, as the reference's
        prototypes = F.normalize(self.proto(head.direction), dim=1)
        return h[:b], {"logits": z, "features": f, "prototypes": prototypes}


def balanced_supcon(features: torch.Tensor, prototypes: torch.Tensor, y: torch.Tensor, temperature: float,
                    gather: bool = False) -> torch.Tensor:
    """BCL's balanced supervised contrastive loss (its BalSCL): anchors the 2B view projections [views 1; views 2],
    the set them plus one prototype per class, labels [y; y; 0..C-1]. Every term of the denominator is divided by
    its class's count in the set, n_c = 2 b_c + 1, less one for the anchor's own class (class averaging):

        L_i = -1/|P(i)| sum_{p in P(i)} log( e^{s_ip} / sum_{j != i} e^{s_ij} / (n_{l_j} - [l_j = y_i]) ),  s = f.f / T

    P(i) the same-label entries but i (the other view of the image and the class prototype among them); the mean
    over the 2B anchors. gather: the set holds the views of every DDP rank's part of the batch (gathered with their
    gradients) and n_c counts them all, as BCL's DataParallel computes the loss on the whole batch; the anchors
    are this rank's, so the ranks' means weighted by their shares make the whole batch's."""
    b2, c = len(features), len(prototypes)
    views = torch.cat([y, y])
    if gather:
        others, start = dist.gather_cat_with_grad(features)
        other_labels = dist.gather_cat(views)
    else:
        others, start, other_labels = features, 0, views
    labels = torch.cat([other_labels, torch.arange(c, device=y.device)])
    count = torch.bincount(labels, minlength=c).to(features.dtype)
    logits = features @ torch.cat([others, prototypes]).T / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    not_self = torch.ones_like(logits)
    not_self[torch.arange(b2), start + torch.arange(b2)] = 0
    positives = (views[:, None] == labels[None, :]).to(logits.dtype) * not_self
    per_class = count[labels][None, :] - positives
    log_prob = logits - torch.log((logits.exp() * not_self / per_class).sum(1, keepdim=True))
    return -((positives * log_prob).sum(1) / positives.sum(1)).mean()


class BCLLoss(LossFn):
    """BCL's objective: train.loss on view 0's logits (BCL: the logit-adjusted CE, tau 1) + weight x the balanced
    contrastive loss of views 1 and 2 with the class prototypes (weights 1 and 0.35 in its main.py)."""

    def __init__(self, ce: LossFn, weight: float, temperature: float, gather: bool = False) -> None:
        super().__init__()
        self.ce, self.weight, self.temperature, self.gather = ce, weight, temperature, gather

    def set_epoch(self, epoch: int) -> None:
        self.ce.set_epoch(epoch)

    def normalizer(self, y: torch.Tensor) -> torch.Tensor:
        return self.ce.normalizer(y)

    def forward(self, out: Any, y: torch.Tensor) -> torch.Tensor:
        return self.ce(out["logits"], y) + self.weight * balanced_supcon(out["features"], out["prototypes"], y,
                                                                         self.temperature, self.gather)


# The builders bench/registry.py CONTRAST names: (the timm model, train.contrast, n_c, train.loss built) -> (what trains
# and is checkpointed, its loss). PaCo and GPaCo are their own loss; BCL adds its term to train.loss.

def build_paco(model: nn.Module, cfg: ContrastConfig, counts: list[int], seed: int,
               base: LossFn) -> tuple[nn.Module, LossFn]:
    return ContrastModel(model, cfg, momentum_encoder=True), PaCoLoss(counts, cfg, seed)


def build_gpaco(model: nn.Module, cfg: ContrastConfig, counts: list[int], seed: int,
                base: LossFn) -> tuple[nn.Module, LossFn]:
    return ContrastModel(model, cfg, momentum_encoder=False), PaCoLoss(counts, cfg, seed)


def build_bcl(model: nn.Module, cfg: ContrastConfig, counts: list[int], seed: int,
              base: LossFn) -> tuple[nn.Module, LossFn]:
    return BCLModel(model, cfg), BCLLoss(base, cfg.weight, cfg.temperature, cfg.gather)
