"""Analysis measures of HS (Hasegawa & Sato 2024): per-class classifier weight norms, Fisher's
discriminant ratio of penultimate features, and the "cone effect" (mean pairwise cosine similarity of
features, within and between classes).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from bench.methods.classifiers import row_norms


def class_weight_norms(weight: torch.Tensor) -> list[float]:
    """Per-class L2 norms ||W_k|| of the classifier rows (weight of shape (C, d))."""
    return [float(v) for v in row_norms(weight.double())]


def _as_features_labels(features: torch.Tensor, labels: torch.Tensor | Sequence[int]
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.as_tensor(features).detach().to("cpu", torch.float64)
    y = torch.as_tensor(labels).detach().to("cpu", torch.int64).flatten()
    if x.dim() != 2:
        x = x.flatten(1)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{x.shape[0]} feature rows but {y.shape[0]} labels")
    if y.numel() and int(y.min()) < 0:
        raise ValueError("labels must be >= 0")
    return x, y


def fisher_discriminant_ratio(features: torch.Tensor, labels: torch.Tensor | Sequence[int],
                              num_classes: int | None = None, var_tol: float = 1e-8) -> float:
    """Fisher's discriminant ratio FDR = tr(S_W^{-1} S_B) of features (N, d), in float64.

    S_B = sum_c n_c (mu_c - mu)(mu_c - mu)^T, S_W = sum_c sum_{i in c} (h_i - mu_c)(h_i - mu_c)^T
    (unnormalised sums; the ratio is scale-free). Feature dims whose variance is <= var_tol * the
    largest variance are dropped first (near-constant, e.g. dead ReLU units make S_W singular).
    Classes without samples are ignored. Uses a linear solve; if S_W is still rank-deficient, the
    pseudo-inverse. Returns NaN when every dim is constant.
    """
    x, y = _as_features_labels(features, labels)
    C = int(y.max()) + 1 if num_classes is None else num_classes
    if y.numel() and int(y.max()) >= C:
        raise ValueError(f"label {int(y.max())} out of range for num_classes={C}")
    var = x.var(dim=0, unbiased=False)
    vmax = float(var.max()) if var.numel() else 0.0
    if vmax <= 0.0:
        return float("nan")
    x = x[:, var > var_tol * vmax]
    d = x.shape[1]

    counts = torch.bincount(y, minlength=C).to(torch.float64)
    sums = torch.zeros(C, d, dtype=torch.float64).index_add_(0, y, x)
    present = counts > 0
    means = sums[present] / counts[present].unsqueeze(1)        # (C', d), classes with samples only
    mu = x.mean(dim=0)
    diff = means - mu
    s_b = diff.T @ (counts[present].unsqueeze(1) * diff)        # sum_c n_c (mu_c - mu)(mu_c - mu)^T
    full_means = torch.zeros(C, d, dtype=torch.float64)
    full_means[present] = means
    centered = x - full_means[y]
    s_w = centered.T @ centered                                  # within-class scatter

    if int(torch.linalg.matrix_rank(s_w, hermitian=True)) == d:
        sol, info = torch.linalg.solve_ex(s_w, s_b)
        if int(info) == 0 and bool(torch.isfinite(sol).all()):
            return float(torch.trace(sol))
    return float(torch.trace(torch.linalg.pinv(s_w, hermitian=True) @ s_b))


def cosine_similarity_stats(features: torch.Tensor, labels: torch.Tensor | Sequence[int]
                            ) -> dict[str, float | None]:
    """Mean pairwise cosine similarity of features over distinct pairs (i < j), in float64.

    Returns {"within": same-class pairs, "between": different-class pairs, "all": all pairs}; a kind
    with no pairs is None. Exact and O(N d): with u_i = h_i / ||h_i||, s_c = sum_{i in c} u_i and
    q_c = sum_{i in c} ||u_i||^2, the sum over distinct same-class pairs is (||s_c||^2 - q_c) / 2,
    over all pairs (||sum_c s_c||^2 - sum_c q_c) / 2, and between = all - within. A zero feature
    vector counts as cosine 0 with everything.
    """
    x, y = _as_features_labels(features, labels)
    u = F.normalize(x, dim=1)
    N = u.shape[0]
    C = int(y.max()) + 1 if N else 0
    s = torch.zeros(C, u.shape[1], dtype=torch.float64).index_add_(0, y, u)
    q = torch.zeros(C, dtype=torch.float64).index_add_(0, y, u.pow(2).sum(dim=1))
    n = torch.bincount(y, minlength=C).to(torch.float64)

    within_sum = float(((s.pow(2).sum(dim=1) - q) / 2).sum())
    within_pairs = float((n * (n - 1) / 2).sum())
    all_sum = float((s.sum(dim=0).pow(2).sum() - q.sum()) / 2)
    all_pairs = N * (N - 1) / 2
    between_sum, between_pairs = all_sum - within_sum, all_pairs - within_pairs

    def mean(total: float, pairs: float) -> float | None:
        return total / pairs if pairs > 0 else None

    return {"within": mean(within_sum, within_pairs), "between": mean(between_sum, between_pairs),
            "all": mean(all_sum, all_pairs)}
