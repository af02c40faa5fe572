"""RIDE's expert-assignment router (Wang et al., ICLR 2021; its model/ldam_drw_resnets/ea_resnet_cifar.py), trained
on a finished multi-expert model (`stage2.router`): which images need a further expert.

Router i (i = 0 .. K-2) looks at expert i's pooled feature (L2-normalised, through its own Linear(d, 16) + ReLU) and
the top-k values of the running mean of experts 0..i's logits; one Linear(k + 16, 1), shared by the routers, gives
the logit that expert i+1 should be consulted. Trained with BCE (pos_weight) against "the ensemble of experts
0..i is wrong and a larger one is right", averaged over the routers. At test time experts are added while the
router says so (sigmoid > 0.5); an image's prediction is the mean of the experts it used.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.methods.losses import LossFn


class ExpertRouter(nn.Module):
    """The routers of K experts with d-dimensional features and C classes (`top` = RIDE's top_choices_num)."""

    def __init__(self, experts: int, features: int, classes: int, top: int, hidden: int = 16) -> None:
        super().__init__()
        self.experts, self.top = experts, min(top, classes)
        self.hidden = nn.ModuleList(nn.Linear(features, hidden) for _ in range(experts - 1))
        self.fc = nn.Linear(hidden + self.top, 1)

    def forward(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """h (B, K d): the experts' pooled features side by side; z (B, K, C): their logits -> (B, K - 1) logits."""
        feats = F.normalize(h.view(len(h), self.experts, -1), dim=2)
        counts = torch.arange(1, self.experts + 1, device=z.device, dtype=z.dtype)
        running = z.cumsum(dim=1) / counts[None, :, None]              # the mean of experts 0..i
        out = [self.fc(torch.cat([torch.topk(running[:, i], self.top, dim=1).values,
                                  F.relu(self.hidden[i](feats[:, i]))], dim=1)) for i in range(self.experts - 1)]
        return torch.cat(out, dim=1)

    @torch.no_grad()
    def route(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The experts' logits as the prediction should average them: an image that uses its first n experts gets
        z_k K / n for k < n and 0 after, so their mean over the K experts is the mean of the n it used."""
        go_on = torch.sigmoid(self(h, z)) > 0.5                            # (B, K - 1)
        used = 1 + torch.cumprod(go_on.long(), dim=1).sum(dim=1)           # experts until the first "stop"
        keep = torch.arange(self.experts, device=z.device)[None, :] < used[:, None]
        return z * keep[:, :, None].to(z.dtype) * (self.experts / used.to(z.dtype))[:, None, None]

    @torch.no_grad()
    def experts_used(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """(B,) how many experts each image used."""
        return 1 + torch.cumprod((torch.sigmoid(self(h, z)) > 0.5).long(), dim=1).sum(dim=1)


def router_targets(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, K - 1): router i's target, the ensemble of experts 0..i wrong and one of the larger ones right (the
    ensemble of 0..j predicts with the argmax of the sum of their logits)."""
    correct = z.cumsum(dim=1).argmax(dim=2) == y[:, None]                 # (B, K)
    later = correct.flip(1).cumsum(1).flip(1) > 0                          # any of j..K-1 right
    return (~correct[:, :-1] & later[:, 1:]).to(z.dtype)


class RouterLoss(LossFn):
    """The mean over routers of BCE-with-logits (mean over the batch) against `router_targets`, positives weighted
    by pos_weight (RIDE's CIFAR config: 100)."""

    def __init__(self, pos_weight: float) -> None:
        super().__init__()
        self.pos_weight = pos_weight

    def forward(self, out: Any, y: torch.Tensor) -> torch.Tensor:
        pred, z = out["router"], out["experts"]
        target = router_targets(z, y)
        pw = pred.new_tensor([self.pos_weight])
        return torch.stack([F.binary_cross_entropy_with_logits(pred[:, i], target[:, i], pos_weight=pw)
                            for i in range(pred.shape[1])]).mean()
