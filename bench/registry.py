"""The registries of ltbench's extensible kinds. Every name a config may choose for a loss, a classifier head or a
post-hoc step is written once, here, with the object that implements it ("module:attribute"); a dataset's name is
its card file (datasets/<name>.yaml), and the reader a card names by its `source` is registered here too.

The config schema validates a name against these registries without importing what they name (a config loads
without torch); a run imports an implementation when it builds it. Each registry is a read-only mapping from a
name to its (lazily imported) object. tests/unit/test_registry.py imports every entry, so a registration that
names nothing fails there, not in a user's run.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any

from bench.paths import cards_dir


class Registry(Mapping[str, Any]):
    """Names of one kind (the config key that chooses among them) -> the objects that implement them."""

    def __init__(self, key: str, targets: dict[str, str]) -> None:
        self.key, self.targets = key, dict(targets)
        self._loaded: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._loaded:
            module, _, attr = self.targets[name].partition(":")
            self._loaded[name] = getattr(importlib.import_module(module), attr)
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.targets)

    def __len__(self) -> int:
        return len(self.targets)

    def __contains__(self, name: object) -> bool:
        return name in self.targets

    def __repr__(self) -> str:
        return f"Registry({self.key!r}: {', '.join(self.targets)})"


class CardNames(Mapping[str, Any]):
    """The datasets: one card file each in datasets/ (or $LTBENCH_DATASETS_DIR), name -> the card's path."""

    key = "data.dataset"

    def _paths(self) -> dict[str, Any]:
        return {p.stem: p for p in sorted(cards_dir().glob("*.yaml"))}

    def __getitem__(self, name: str) -> Any:
        return self._paths()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths())

    def __len__(self) -> int:
        return len(self._paths())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (cards_dir() / f"{name}.yaml").is_file()


# train.loss.name / stage2.train.loss.name: (LossConfig, n_c, DRW class weights, DRW start epoch) -> the loss.
LOSSES = Registry("loss.name", {
    "ce": "bench.methods.losses:build_cross_entropy",
    "cb_ce": "bench.methods.losses:build_class_balanced_ce",
    "cb_bce_softmax": "bench.methods.losses:build_cb_softmax_bce",
    "focal": "bench.methods.losses:build_focal",
    "ldam": "bench.methods.losses:build_ldam",
    "logit_adjusted": "bench.methods.losses:build_logit_adjusted",
    "balanced_softmax": "bench.methods.losses:build_balanced_softmax",
    "las": "bench.methods.losses:build_label_aware_smoothing",
    "ride": "bench.methods.losses:build_ride",
    "sade": "bench.methods.losses:build_sade",
})

# model.classifier: what replaces (or keeps) the backbone's linear layer (bench.methods.classifiers.Head).
HEADS = Registry("model.classifier", {
    "linear": "bench.methods.classifiers:LINEAR_HEAD",
    "etf": "bench.methods.classifiers:ETF_HEAD",
    "zeroshot": "bench.methods.classifiers:ZEROSHOT_HEAD",
    "cosine": "bench.methods.classifiers:COSINE_HEAD",
})

# train.contrast.method: (model, config, n_c, DRW weights of train.loss) -> the model wrapper and the loss.
CONTRAST = Registry("contrast.method", {
    "paco": "bench.methods.contrast:build_paco",
    "gpaco": "bench.methods.contrast:build_gpaco",
    "bcl": "bench.methods.contrast:build_bcl",
})

# posthoc.kind: a new classifier weight and / or adjusted logits at a tau (bench.methods.posthoc.PostHoc).
POSTHOC = Registry("posthoc.kind", {
    "l2norm": "bench.methods.posthoc:L2_NORM",
    "taunorm": "bench.methods.posthoc:TAU_NORM",
    "la_add": "bench.methods.posthoc:LOGIT_ADJUST_ADDITIVE",
    "la_mult": "bench.methods.posthoc:LOGIT_ADJUST_MULTIPLICATIVE",
    "sade_tta": "bench.methods.posthoc:SADE_TEST_TIME_AGGREGATION",
})

# A dataset card's `source` read into memory: (DataConfig, card) -> the raw pool and test set. Cards whose
# source is split_files / inat_json are image files that `ltbench prepare` shards instead.
READERS = Registry("source", {
    "idx": "bench.data.sources:read_idx_dataset",
    "cifar": "bench.data.sources:read_cifar_dataset",
    "synthetic": "bench.data.sources:read_synthetic_dataset",
})

DATASETS = CardNames()
