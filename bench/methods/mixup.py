"""mixup (Zhang et al. 2018) as MiSLAS trains its stage 1 (Zhong et al. 2021, dvlab-research/MiSLAS, train_stage1.py):
per batch one lambda ~ Beta(alpha, alpha) and one permutation of the batch; the model sees
x~ = lambda x + (1 - lambda) x[perm] and the loss is lambda L(z, y) + (1 - lambda) L(z, y[perm]).

The draws are a pure function of (seed, epoch, step) -- lambda -- and of the rank too -- the permutation of the
rank's own slice of the global batch -- rather than a stream of a global generator (the reference draws from
numpy's and torch's global ones). So a resumed run, which restarts at (epoch, step), mixes exactly as the
uninterrupted run did, with nothing to checkpoint. Under DDP every rank mixes with the same lambda and permutes
within its own slice, as a per-GPU batch of the reference's DataParallel would not: a named difference
(docs/methods.md).
"""

from __future__ import annotations

import numpy as np
import torch

from bench.runtime import dist


class Mixup:
    """Mixes a batch in place of the plain one: (x, y) -> (x~, y[perm], lambda)."""

    def __init__(self, alpha: float, seed: int) -> None:
        if alpha <= 0:
            raise ValueError(f"mixup alpha must be > 0, got {alpha}")
        self.alpha, self.seed = alpha, seed

    def draw(self, n: int, epoch: int, step: int, rank: int) -> tuple[float, np.ndarray]:
        """lambda (the same on every rank) and the permutation of this rank's n samples, at (epoch, step)."""
        lam = float(np.random.default_rng([self.seed, epoch, step]).beta(self.alpha, self.alpha))
        perm = np.random.default_rng([self.seed, epoch, step, rank + 1]).permutation(n)
        return lam, perm

    def __call__(self, x: torch.Tensor, y: torch.Tensor, epoch: int, step: int
                 ) -> tuple[torch.Tensor, torch.Tensor, float]:
        lam, perm = self.draw(len(y), epoch, step, dist.rank())
        index = torch.from_numpy(perm).to(x.device)
        return lam * x + (1.0 - lam) * x[index], y[index], lam
