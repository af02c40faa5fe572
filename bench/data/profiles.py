"""Long-tailed class-count profiles, per-class image selection and the held-out validation split.

Definitions follow the LDAM-DRW (Cao et al. 2019) / WB CIFAR-LT construction.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import numpy as np

from bench.config import ConfigError, DataConfig
from bench.config.build import build_config
from bench.config.load import expand_path, read_raw
from bench.data.cards import FILE_SPLIT_SOURCES, load_card


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


def resolve_profile(d: DataConfig, card: dict[str, Any]) -> None:
    """The long-tailed cut of `d` from its card: fixed by the split files (ImageNet-LT, Places-LT, iNat), or the
    exp / step profile's defaults (IF 100, 20 validation images a class, the head class keeping the rest)."""
    if card.get("source") in FILE_SPLIT_SOURCES:
        resolve_file_split(d, card)
        return
    if d.profile == "files":
        raise ConfigError(f"config key 'data.profile': 'files' needs a dataset with its own split files, "
                          f"not {d.dataset} (use exp or step)")
    d.profile = d.profile or "exp"
    d.imbalance_factor = d.imbalance_factor if d.imbalance_factor is not None else 100.0
    d.val_per_class = d.val_per_class if d.val_per_class is not None else 20
    if d.n_max is None:
        # HS convention: the head class keeps the whole pool minus its validation images
        # (CIFAR-100: 500 - 20 = 480); with no val split this is the WB/LDAM-DRW profile (500).
        pool = d.synthetic.train_per_class if d.dataset == "synthetic" else int(card["pool_per_class"])
        d.n_max = pool - d.val_per_class
        if d.n_max < 1:
            raise ConfigError(f"config key 'data.val_per_class': {d.val_per_class} leaves no training "
                              f"images of {d.dataset} (pool of {pool} per class)")


def resolve_file_split(d: DataConfig, card: dict[str, Any]) -> None:
    """ImageNet-LT, Places-LT, iNat: the split files fix the long-tailed set; a different explicit value is an error."""
    fixed = {"profile": "files", "imbalance_factor": float(card["lt"]["imbalance_factor"]),
             "n_max": int(card["lt"]["n_max"]), "val_per_class": int(card["lt"]["val_per_class"])}
    for key, value in fixed.items():
        have = getattr(d, key)
        if have is not None and have != value:
            raise ConfigError(f"config key 'data.{key}': {have!r}, but the {d.dataset} split files fix it at {value!r}")
        setattr(d, key, value)


def profile_config(overrides: list[str]) -> DataConfig:
    """The data section of `key.sub=value` overrides (data.dataset among them) with its long-tailed cut resolved:
    what `ltbench prepare` needs to cut a pool dataset, without a model or a run."""
    d = build_config(read_raw(None, overrides)).data
    d.root = expand_path("data.root", d.root)
    resolve_profile(d, load_card(d.dataset))
    return d
