"""Build the long-tailed train / val / test splits of a run from its config."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bench.config import DataConfig
from bench.data.cards import DatasetError
from bench.data.profiles import class_counts, indices_hash, select_indices
from bench.data.sources import RawData, load_cifar, load_fashion_mnist, make_synthetic


@dataclass
class Split:
    """uint8 images (N, C, H, W) as a tensor, int64 labels (N,)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class LTData:
    train: Split
    val: Split | None
    test: Split
    num_classes: int
    class_names: list[str]
    class_counts: list[int]
    selection_hash: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    root: str | None

    @property
    def in_chans(self) -> int:
        return int(self.train.x.shape[1])

    def split(self, name: str) -> Split:
        s = {"train": self.train, "val": self.val, "test": self.test}[name]
        if s is None:
            raise ValueError(f"this run has no '{name}' split (data.val_per_class = 0)")
        return s


def load_raw(cfg: DataConfig) -> RawData:
    if cfg.dataset == "fashion-mnist":
        return load_fashion_mnist(cfg.root)
    if cfg.dataset in ("cifar10", "cifar100"):
        return load_cifar(10 if cfg.dataset == "cifar10" else 100, cfg.root)
    s = cfg.synthetic
    return make_synthetic(s.num_classes, s.train_per_class, s.test_per_class, s.image_size, s.channels,
                          s.noise, s.seed)


def _to_split(x: np.ndarray, y: np.ndarray, pad_to: int | None) -> Split:
    t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    if pad_to is not None and pad_to > t.shape[-1]:
        # Zero padding, centred (28 -> 32 for Fashion-MNIST as in the measured reference run).
        p = pad_to - t.shape[-1]
        t = torch.nn.functional.pad(t, (p // 2, p - p // 2, p // 2, p - p // 2))
    return Split(t.contiguous(), torch.from_numpy(np.ascontiguousarray(y)))


def build_lt_data(cfg: DataConfig) -> LTData:
    """Raw pool -> long-tailed training set (profile + selection) + held-out val + balanced test."""
    raw = load_raw(cfg)
    assert cfg.n_max is not None, "config not resolved"
    counts = class_counts(raw.num_classes, cfg.n_max, cfg.imbalance_factor, cfg.profile, cfg.rounding)
    try:
        train_idx, val_idx = select_indices(raw.train_y, counts, cfg.selection, cfg.selection_seed,
                                            cfg.val_per_class)
    except ValueError as e:
        raise DatasetError(f"data.n_max={cfg.n_max} / data.val_per_class={cfg.val_per_class} do not fit "
                           f"{cfg.dataset}: {e}") from None
    val = _to_split(raw.train_x[val_idx], raw.train_y[val_idx], cfg.pad_to) if cfg.val_per_class else None
    return LTData(
        train=_to_split(raw.train_x[train_idx], raw.train_y[train_idx], cfg.pad_to),
        val=val,
        test=_to_split(raw.test_x, raw.test_y, cfg.pad_to),
        num_classes=raw.num_classes,
        class_names=raw.class_names,
        class_counts=counts,
        selection_hash=indices_hash(train_idx, val_idx),
        mean=raw.mean,
        std=raw.std,
        root=raw.root,
    )
