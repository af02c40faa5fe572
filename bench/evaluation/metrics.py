"""Many / medium / few groups and the accuracies reported in every table (Kang et al. 2020; WB)."""

from __future__ import annotations

from typing import Any

import torch

from bench.config import GROUPS


def shot_groups(class_counts: list[int], many: int, few: int, inclusive: bool = False) -> dict[str, list[int]]:
    """Class indices per group, by TRAINING count n_c.

    inclusive=False: many n_c > many, few n_c < few (WB, Decoupling: > 100 / < 20).
    inclusive=True:  many n_c >= many, few n_c <= few (OLTR: >= 100 / <= 20).
    Medium is everything else. A group may be empty (e.g. no few-shot class in CIFAR-10-LT at > 100 / < 20).
    """
    out: dict[str, list[int]] = {g: [] for g in GROUPS}
    for c, n in enumerate(class_counts):
        is_many = n >= many if inclusive else n > many
        is_few = n <= few if inclusive else n < few
        out["many" if is_many else "few" if is_few else "medium"].append(c)
    return out


def per_class_accuracy(correct: torch.Tensor, total: torch.Tensor) -> list[float | None]:
    """Percent correct per class from summed counts (exact under DDP: counts are summed, not averages)."""
    return [None if int(t) == 0 else 100.0 * float(c) / float(t) for c, t in zip(correct, total)]


def group_metrics(correct: torch.Tensor, total: torch.Tensor, groups: dict[str, list[int]]) -> dict[str, Any]:
    """all = top-1 over all samples; many/medium/few = mean of the per-class accuracies in the group.

    An empty group (or one without evaluated samples) is None: reported as empty, never as 0.
    """
    acc = per_class_accuracy(correct, total)
    out: dict[str, Any] = {"all": 100.0 * float(correct.sum()) / max(1, int(total.sum()))}
    for g in GROUPS:
        vals = [a for a in (acc[c] for c in groups[g]) if a is not None]
        out[g] = sum(vals) / len(vals) if vals else None
    return out

