"""Classifier heads and constraints: the fixed simplex-ETF classifier (HS) and MaxNorm (WB).

- simplex ETF (Papyan et al. 2020; HS, Hasegawa & Sato 2024): W = sqrt(C/(C-1)) * (U[:, :C] (I - 11^T/C))^T.
- MaxNorm (WB, Alshammari et al. 2022): projected gradient descent onto the ball ||W_k|| <= delta with one
  radius delta = min_k r_k + thresh * (max_k r_k - min_k r_k) from the stage-1 rows.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def simplex_etf(num_classes: int, dim: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random simplex equiangular tight frame as a (C, dim) float32 weight matrix.

    W = sqrt(C/(C-1)) * (U[:, :C] (I - 11^T/C))^T, U a random orthogonal dim x dim matrix. Its first C
    columns are drawn directly as the Q factor of a reduced QR of a dim x C Gaussian with the signs of
    diag(R) fixed to +1 (first C columns of a Haar-distributed orthogonal matrix). Rows have unit norm
    and pairwise cosine -1/(C-1). Requires 2 <= C <= dim.
    """
    if num_classes < 2:
        raise ValueError(f"a simplex ETF needs at least 2 classes, got {num_classes}")
    if dim < num_classes:
        raise ValueError(f"a simplex ETF of {num_classes} classes needs feature dim >= {num_classes}, "
                         f"got dim {dim}")
    C = num_classes
    g = torch.randn(dim, C, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(g, mode="reduced")
    signs = torch.sign(torch.diagonal(r))
    signs[signs == 0] = 1.0
    u = q * signs  # (dim, C), orthonormal columns
    center = torch.eye(C, dtype=torch.float64) - torch.full((C, C), 1.0 / C, dtype=torch.float64)
    m = math.sqrt(C / (C - 1)) * (u @ center)  # (dim, C)
    return m.T.contiguous().to(torch.float32)


class ETFClassifier(nn.Module):
    """Linear head with a FIXED simplex-ETF weight and a trainable bias (HS single-stage method).

    The weight is a (persistent) buffer, not a parameter: the optimiser and weight decay never see it,
    and it is saved in checkpoints. forward(h) = h @ W^T + b. `weight` is the (C, in_features) buffer.
    """

    weight: torch.Tensor

    def __init__(self, in_features: int, out_features: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer("weight", simplex_etf(out_features, in_features, generator))
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, self.weight.to(h.dtype), self.bias.to(h.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weight=fixed simplex ETF"


def _row_norms(weight: torch.Tensor) -> torch.Tensor:
    """L2 norm of each row (each output class); higher-dim weights are flattened per row."""
    return weight.detach().flatten(1).norm(dim=1)


def maxnorm_radius(weight: torch.Tensor, thresh: float) -> float:
    """WB MaxNorm radius from the stage-1 classifier rows: min_k r_k + thresh * (max_k r_k - min_k r_k)."""
    r = _row_norms(weight).double()
    lo, hi = float(r.min()), float(r.max())
    return lo + thresh * (hi - lo)


@torch.no_grad()
def maxnorm_project_(weight: torch.Tensor, radius: float) -> None:
    """Project rows onto the ball of `radius` in place: rows with ||W_k|| > radius are rescaled to norm
    radius; rows at or below it are left untouched (bit for bit). Pass the weight only, never the bias.
    """
    norms = _row_norms(weight)
    over = norms > radius
    if bool(over.any()):
        scale = (radius / norms[over]).to(weight.dtype)
        shape = (-1,) + (1,) * (weight.dim() - 1)
        weight[over] = weight[over] * scale.view(shape)
