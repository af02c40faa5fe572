"""Build the long-tailed train / val / test splits of a run from its config."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch

from bench.config import DataConfig
from bench.data.batches import InMemoryLoader, Normalize, Split, center_pad, eval_batches
from bench.data.cards import DatasetError, load_card
from bench.data.loaders import TrainLoader
from bench.data.profiles import class_counts, indices_hash, select_indices
from bench.data.shards.access import SampledShardLoader
from bench.data.shards.loader import ShardLoader
from bench.data.shards.manifest import ShardSplit, check_shard_files, load_manifest
from bench.data.shards.plan import StreamSpec
from bench.data.sources import RawData, load_raw
from bench.data.views import ViewOptions, view_fn
from bench.runtime import dist


@dataclass
class LTData:
    """The long-tailed train / val / test splits of a run, in memory (Split) or as shards (ShardSplit)."""

    train: Split | ShardSplit
    val: Split | ShardSplit | None
    test: Split | ShardSplit
    num_classes: int
    class_names: list[str]
    class_counts: list[int]
    selection_hash: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    root: str | None
    cfg: DataConfig = field(default_factory=DataConfig)
    channels: int | None = None            # shards: from the manifest
    manifest_digest: str | None = None     # shards: sha256 of manifest.json (names the exact shards)
    # on_error=skip: split -> (n, examples)
    eval_skipped: dict[str, tuple[int, list[str]]] = field(default_factory=dict)
    device: torch.device | None = None     # where batches are normalised (and so delivered); None = CPU

    @property
    def in_chans(self) -> int:
        """Channels the model sees: the stored ones, or 3 under data.to_rgb (Normalize repeats the grey one)."""
        if self.cfg.to_rgb:
            return 3
        if isinstance(self.train, ShardSplit):
            assert self.channels is not None
            return self.channels
        return int(self.train.x.shape[1])

    @property
    def streamed(self) -> bool:
        return isinstance(self.train, ShardSplit)

    def split(self, name: str) -> Split | ShardSplit:
        s = {"train": self.train, "val": self.val, "test": self.test}[name]
        if s is None:
            raise ValueError(f"this run has no '{name}' split (data.val_per_class = 0)")
        return s

    def normalizer(self) -> Normalize:
        return Normalize(self.mean, self.std, self.in_chans, self.device, self.cfg.resize)

    def _spec(self, split: ShardSplit, train: bool, batch_size: int, seed: int, augment: str,
              drop_last: bool) -> StreamSpec:
        c = self.cfg
        return StreamSpec(split=split, train=train, seed=seed, epoch=0, rank=dist.rank(), world=dist.world(),
                          batch=batch_size, drop_last=drop_last, streams=c.streams, buffer=c.shuffle_buffer,
                          on_error=c.on_error, channels=self.channels,  # type: ignore[arg-type]  # shards: set
                          num_classes=self.num_classes, pad_to=c.pad_to,
                          image_size=c.image_size, eval_resize=c.eval_resize, augment=augment,
                          crop_padding=c.crop_padding, decode=c.decode)

    def train_loader(self, batch_size: int, seed: int, augment: str, drop_last: bool, sampler: str,
                     workers: int = 0, epoch_length: str = "sampler", views: Sequence[str] = ()) -> TrainLoader:
        """Training batches with the (epoch, start_step) interface, normalised on `device`; batch_size is global.
        `views` (data.views): (B, V, C, H, W) batches, view v augmented by views[v] (bench/data/views.py)."""
        if isinstance(self.train, ShardSplit):
            spec = self._spec(self.train, True, batch_size // dist.world(), seed, augment, drop_last)
            spec = dataclasses.replace(spec, views=tuple(views), view_blur=self.cfg.view_blur,
                                       randaugment_n=self.cfg.randaugment_n)
            if sampler != "instance":   # a class-balanced order: read by random access, not streamed
                return SampledShardLoader(spec, self.normalizer(), workers, batch=batch_size, sampler=sampler,
                                          num_classes=self.num_classes, epoch_length=epoch_length)
            return ShardLoader(spec, self.normalizer(), workers)
        return InMemoryLoader(self.train, batch_size, seed=seed, normalize=self.normalizer(), augment=augment,
                              crop_padding=self.cfg.crop_padding, drop_last=drop_last, sampler=sampler,
                              num_classes=self.num_classes, rank=dist.rank(), world=dist.world(),
                              epoch_length=epoch_length,
                              views=view_fn(views, self.cfg.crop_padding,
                                            ViewOptions(self.cfg.view_blur, self.cfg.randaugment_n)) if views else None)

    def eval_batches(self, name: str, batch_size: int, workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The split in order (on this rank), normalised on `device`, no augmentation."""
        split = self.split(name)
        if isinstance(split, Split):
            yield from eval_batches(split, batch_size, self.normalizer(), dist.rank(), dist.world())
            return
        loader = ShardLoader(self._spec(split, False, batch_size, 0, "none", False), self.normalizer(), workers)
        yield from loader.epoch(0)
        self.eval_skipped[name] = loader.pop_skipped()

    def labels(self, name: str) -> torch.Tensor:
        return self.split(name).y


def _to_split(x: np.ndarray, y: np.ndarray, pad_to: int | None) -> Split:
    t = center_pad(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), pad_to)
    return Split(t.contiguous(), torch.from_numpy(np.ascontiguousarray(y)))


def input_stats(cfg: DataConfig, mean: tuple[float, ...],
                std: tuple[float, ...]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The normalisation statistics: data.mean / data.std when set (a reference protocol may pin the
    reference code's values, resolved configs always hold them), else the dataset's own."""
    return (tuple(cfg.mean) if cfg.mean is not None else mean), (tuple(cfg.std) if cfg.std is not None else std)


SELECTION_KEYS = ("imbalance_factor", "profile", "n_max", "rounding", "selection", "selection_seed", "val_per_class")


def build_shard_data(cfg: DataConfig) -> LTData:
    """The splits of a `ltbench prepare` directory, checked against the config (dataset and selection)."""
    assert cfg.shards is not None
    m = load_manifest(cfg.shards)
    doc, where = m.doc, m.root / "manifest.json"
    if doc["dataset"] != cfg.dataset:
        raise DatasetError(f"data.shards: {where} holds {doc['dataset']}, but data.dataset is {cfg.dataset}")
    sel = doc["selection"]
    keys = ("imbalance_factor", "n_max", "val_per_class") if sel["profile"] == "files" else SELECTION_KEYS
    for key in keys:
        if sel.get(key) != getattr(cfg, key):
            raise DatasetError(f"data.{key}={getattr(cfg, key)!r}, but the shards in {m.root} were prepared with "
                               f"{sel.get(key)!r} (prepare them again with that value, or change the config)")
    if cfg.dataset == "synthetic" and sel.get("synthetic") != dict(vars(cfg.synthetic)):
        raise DatasetError(f"data.synthetic={dict(vars(cfg.synthetic))}, but the shards in {m.root} were prepared "
                           f"with {sel.get('synthetic')}")
    splits = {name: m.split(name) for name in ("train", "val", "test")}
    if splits["train"] is None or splits["test"] is None:
        raise DatasetError(f"{where}: needs train and test splits, has {', '.join(doc['splits'])}")
    if cfg.val_per_class and splits["val"] is None:
        raise DatasetError(f"{where}: no val split, but data.val_per_class={cfg.val_per_class}")
    for s in splits.values():
        if s is not None:
            check_shard_files(s, cfg.on_error)
    card = load_card(cfg.dataset)
    mean, std = input_stats(cfg, tuple(card["mean"]), tuple(card["std"]))
    if len(mean) == 1 and doc["channels"] > 1:
        mean, std = mean * doc["channels"], std * doc["channels"]
    return LTData(train=splits["train"], val=splits["val"], test=splits["test"], num_classes=doc["num_classes"],
                  class_names=doc["class_names"], class_counts=doc["splits"]["train"]["class_counts"],
                  selection_hash=sel["selection_hash"], mean=mean, std=std, root=str(m.root), cfg=cfg,
                  channels=doc["channels"], manifest_digest=m.digest)


def lt_selection(raw: RawData, cfg: DataConfig) -> tuple[list[int], np.ndarray, np.ndarray]:
    """(class counts, train indices, val indices) of the long-tailed cut of the pool; the in-memory path
    and `ltbench prepare` share it, so both train on the same images (same selection hash)."""
    assert cfg.n_max is not None and cfg.imbalance_factor is not None and cfg.profile is not None, "config not resolved"
    # profile "files" (split-file datasets) never comes here: those are not cut from a pool
    counts = class_counts(raw.num_classes, cfg.n_max, cfg.imbalance_factor, cfg.profile,  # type: ignore[arg-type]
                          cfg.rounding)
    try:
        train_idx, val_idx = select_indices(raw.train_y, counts, cfg.selection, cfg.selection_seed,
                                            cfg.val_per_class or 0)
    except ValueError as e:
        raise DatasetError(f"data.n_max={cfg.n_max} / data.val_per_class={cfg.val_per_class} do not fit "
                           f"{cfg.dataset}: {e}") from None
    return counts, train_idx, val_idx


def build_lt_data(cfg: DataConfig) -> LTData:
    """Raw pool -> long-tailed training set (profile + selection) + held-out val + balanced test."""
    if cfg.shards is not None:
        return build_shard_data(cfg)
    raw = load_raw(cfg)
    counts, train_idx, val_idx = lt_selection(raw, cfg)
    val = _to_split(raw.train_x[val_idx], raw.train_y[val_idx], cfg.pad_to) if cfg.val_per_class else None
    mean, std = input_stats(cfg, raw.mean, raw.std)
    return LTData(
        train=_to_split(raw.train_x[train_idx], raw.train_y[train_idx], cfg.pad_to),
        val=val,
        test=_to_split(raw.test_x, raw.test_y, cfg.pad_to),
        num_classes=raw.num_classes,
        class_names=raw.class_names,
        class_counts=counts,
        selection_hash=indices_hash(train_idx, val_idx),
        mean=mean,
        std=std,
        root=raw.root,
        cfg=cfg,
    )
