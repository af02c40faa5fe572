"""Long-tailed class-count profiles, per-class image selection and the held-out validation split.

Definitions follow the LDAM-DRW (Cao et al. 2019) / WB CIFAR-LT construction.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import numpy as np


def class_counts(num_classes: int, n_max: int, imbalance_factor: float,
                 profile: Literal["exp", "step"] = "exp",
                 rounding: Literal["floor", "round"] = "floor") -> list[int]:
    """Training images per class.

    exp:  n_c = int(n_max * (1/IF)^(c/(C-1)))  (LDAM-DRW `get_img_num_per_cls`; HS uses round()).
    step: the first C//2 classes keep n_max, the rest n_max/IF.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    rnd = int if rounding == "floor" else round
    imb = 1.0 / imbalance_factor
    if profile == "exp":
        # Same float expression as the reference code so int() truncates identically.
        return [rnd(n_max * imb ** (c / (num_classes - 1.0))) for c in range(num_classes)]
    if profile == "step":
        half = num_classes // 2
        return [n_max] * half + [rnd(n_max * imb)] * (num_classes - half)
    raise ValueError(f"unknown profile {profile!r}")


def select_indices(labels: np.ndarray, counts: list[int], selection: Literal["first", "shuffle"] = "first",
                   seed: int = 0, val_per_class: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pick counts[c] training images of each class c, then the next `val_per_class` as validation.

    first:   in file order (WB reference code).
    shuffle: after np.random.seed(seed); np.random.shuffle(class indices), class by class in class
             order, as LDAM-DRW's IMBALANCECIFAR (one global RandomState, seed 0 there).
    Validation images come from the same pool right after the selected ones (HS: "next 20 per
    class"), so the training profile is exactly `counts`. Returns (train_idx, val_idx), sorted by class
    then pool order.
    """
    labels = np.asarray(labels)
    rng = np.random.RandomState(seed)
    train, val = [], []
    for c, n in enumerate(counts):
        pool = np.flatnonzero(labels == c)
        if selection == "shuffle":
            rng.shuffle(pool)
        if len(pool) < n + val_per_class:
            raise ValueError(f"class {c} has {len(pool)} images, needs {n} train + {val_per_class} val")
        train.append(pool[:n])
        val.append(pool[n:n + val_per_class])
    return np.concatenate(train).astype(np.int64), np.concatenate(val).astype(np.int64)


def indices_hash(*arrays: np.ndarray) -> str:
    """sha256 of the selected indices (int64, in order): two runs with equal hashes trained on the same images."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()[:16]
