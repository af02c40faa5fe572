"""Named protocols: the settings a reference code fixes (wb-reference, hs-reference) or the clean protocol
demands, applied to a raw config before it is built; and the input statistics a reference code hard-codes."""

from __future__ import annotations

from typing import Any

from bench.config.build import _set
from bench.config.schema import ConfigError

# Settings a named protocol fixes (docs/protocols.md). A config that names the protocol gets these
# values, and setting one of them to something else is an error: the label cannot lie.
PROTOCOLS: dict[str, dict[str, dict[str, Any]]] = {
    "clean": {
        "stage1": {"eval.selection_split": "val", "eval.tta_flip": False, "eval.select_tta_flip": False},
        "stage2": {"eval.selection_split": "val", "eval.tta_flip": False, "eval.select_tta_flip": False},
        "posthoc": {"eval.selection_split": "val", "eval.tta_flip": False, "eval.select_tta_flip": False},
    },
    "wb-reference": {
        # WB code (Alshammari et al. 2022, ShadeAlsha/LTR-weight-balancing): first-n images, no val split, best
        # epoch on TEST picked on plain logits, reported with flip TTA, scheduler stepped before each epoch
        "stage1": {"data.selection": "first", "data.profile": "exp", "data.rounding": "floor", "data.n_max": None,
                   "data.val_per_class": 0, "eval.selection_split": "test",
                   "eval.select": "best", "eval.tta_flip": True, "eval.select_tta_flip": False,
                   "train.wd_scope": "all",
                   "train.schedule_unit": "epoch", "train.schedule_step_at_epoch_start": True},
        # CB in the reference BCE-on-softmax form (a mean over B*C entries), MaxNorm once per epoch, BN in
        # train mode, crop+flip kept
        "stage2": {"eval.selection_split": "test", "eval.select": "best", "eval.tta_flip": True,
                   "eval.select_tta_flip": False,
                   "stage2.train.loss.name": "cb_bce_softmax", "stage2.train.loss.cb_normalizer": "batch",
                   "stage2.maxnorm_cadence": "epoch", "stage2.bn_mode": "train", "stage2.augment": "crop_flip",
                   "stage2.train.schedule_unit": "epoch", "stage2.train.schedule_step_at_epoch_start": True},
        "posthoc": {"eval.selection_split": "test", "eval.tta_flip": True, "eval.select_tta_flip": False},
    },
    "hs-reference": {
        # HS code (Hasegawa & Sato 2024, HN410/Exploring-Weight-Balancing-on-Long-Tailed-Recognition-Problem):
        # n_max = pool - 20 with round(), the next 20 images of each class as validation; SGD momentum 0.9 with
        # no weight_decay (WD is a loss term, train.wd_in_loss, over every trained parameter); CosineAnnealingLR
        # stepped before each epoch; the best epoch by mean per-class accuracy on val; no TTA. lr, the WD and FR
        # lambdas and the epochs come from the paper per dataset: the configs set them.
        "stage1": {"data.selection": "first", "data.rounding": "round", "data.n_max": None,
                   "data.val_per_class": 20, "eval.selection_split": "val", "eval.select": "best",
                   "eval.tta_flip": False, "eval.select_tta_flip": False,
                   "train.weight_decay": 0.0, "train.momentum": 0.9, "train.nesterov": False,
                   "train.schedule": "cosine", "train.schedule_unit": "epoch",
                   "train.schedule_step_at_epoch_start": True, "train.warmup_epochs": 0},
        # its stage 2 (second.py with training): CB "softmax" = per-sample weighted CE over the batch mean,
        # MaxNorm once per epoch, the same scheduler and selection
        "stage2": {"eval.selection_split": "val", "eval.select": "best", "eval.tta_flip": False,
                   "eval.select_tta_flip": False, "stage2.train.loss.cb_normalizer": "batch",
                   "stage2.maxnorm_cadence": "epoch", "stage2.train.momentum": 0.9,
                   "stage2.train.schedule_unit": "epoch", "stage2.train.schedule_step_at_epoch_start": True},
        # the multiplicative LA (posthoc la_mult) is fitted on the parent's reported model: its best epoch on val
        "posthoc": {"eval.selection_split": "val", "eval.tta_flip": False, "eval.select_tta_flip": False},
    },
    "mislas-reference": {
        # MiSLAS code (Zhong et al. 2021, dvlab-research/MiSLAS): the LDAM-DRW CIFAR-LT cut (int(), each class's
        # images shuffled with np.random.seed(0)), no val split, the best epoch on TEST in both stages, no TTA;
        # SGD weight_decay on every parameter; adjust_learning_rate per epoch (warm-up lr e / 5 in epoch e)
        "stage1": {"data.selection": "shuffle", "data.selection_seed": 0, "data.profile": "exp",
                   "data.rounding": "floor", "data.n_max": None, "data.val_per_class": 0,
                   "eval.selection_split": "test", "eval.select": "best", "eval.tta_flip": False,
                   "eval.select_tta_flip": False, "train.wd_scope": "all", "train.schedule_unit": "epoch",
                   "train.schedule_step_at_epoch_start": False, "train.warmup_unit": "epoch"},
        # train_stage2.py: the stage-1 classifier (not re-initialised) times a learned per-class scale, crop+flip
        # batches from the class-aware sampler cut after ceil(N / B) + 1 batches, cosine per epoch from the full lr
        "stage2": {"eval.selection_split": "test", "eval.select": "best", "eval.tta_flip": False,
                   "eval.select_tta_flip": False, "stage2.lws": True, "stage2.reinit_classifier": False,
                   "stage2.maxnorm": False, "stage2.augment": "crop_flip", "stage2.train.sampler": "class_aware",
                   "stage2.train.epoch_length": "dataset_plus_one", "stage2.train.wd_scope": "all",
                   "stage2.train.schedule": "cosine", "stage2.train.schedule_unit": "epoch",
                   "stage2.train.schedule_step_at_epoch_start": False, "stage2.train.warmup_epochs": 0},
        "posthoc": {"eval.selection_split": "test", "eval.tta_flip": False, "eval.select_tta_flip": False},
    },
}

# The RIDE, SADE and PaCo codes share LDAM-DRW's CIFAR-LT cut and keep the epoch with the best accuracy on their
# validation loader, which is the TEST set on CIFAR (RIDE / SADE: `monitor: max val_accuracy` saves model_best.pth;
# PaCo: `best_acc1 = max(acc1, best_acc1)`), with the lr set once per epoch and no test-time augmentation.
_LDAM_CUT = {"data.selection": "shuffle", "data.selection_seed": 0, "data.profile": "exp", "data.rounding": "floor",
             "data.n_max": None, "data.val_per_class": 0}
_BEST_ON_TEST = {"eval.selection_split": "test", "eval.select": "best", "eval.tta_flip": False,
                 "eval.select_tta_flip": False}
# RIDE / SADE: LambdaLR(CustomLR) stepped after each epoch (epoch e runs at lambda(e), warm-up (e + 1) / 5); PaCo:
# adjust_learning_rate(epoch) before each epoch, warm-up lr / w x (e + 1); SGD over model.parameters()
_PER_EPOCH = {"train.wd_scope": "all", "train.schedule_unit": "epoch", "train.schedule_step_at_epoch_start": False,
              "train.warmup_unit": "epoch"}
_EXPERT_CODE = {
    "stage1": {**_LDAM_CUT, **_BEST_ON_TEST, **_PER_EPOCH},
    # RIDE's expert-assignment stage: the same trainer, its cosine scheduler per epoch
    "stage2": {**_BEST_ON_TEST, "stage2.train.schedule_unit": "epoch",
               "stage2.train.schedule_step_at_epoch_start": False},
    # SADE's test-time aggregation is fitted on the test images whatever the protocol: no epoch to pick
    "posthoc": {"eval.selection_split": "test", "eval.tta_flip": False, "eval.select_tta_flip": False},
}
PROTOCOLS["ride-reference"] = _EXPERT_CODE      # frank-xwang/RIDE-LongTailRecognition (Wang et al., ICLR 2021)
PROTOCOLS["sade-reference"] = _EXPERT_CODE      # Vanint/SADE-AgnosticLT (Zhang et al., NeurIPS 2022), RIDE's trainer
# PaCo/LT/paco_cifar.py, paco_lt.py; when the per-epoch lr steps is left to the configs: its CIFAR step schedule
# counts epochs from 0 (`epoch > 320`), its large-image cosine from the first epoch after warm-up ((e - w + 1) / ...)
PROTOCOLS["paco-reference"] = {"stage1": {**_LDAM_CUT, **_BEST_ON_TEST, **{
    k: v for k, v in _PER_EPOCH.items() if k != "train.schedule_step_at_epoch_start"}}}

# Where a reference code picks its epoch differently on the datasets with split files. RIDE's ImageNet-LT and
# iNaturalist loaders return no validation loader (split_validation() -> None), so only the last epoch exists; SADE's
# validate on ImageNet-LT's and Places-LT's val lists (iNaturalist: none); PaCo's Places-LT script validates on the val
# list, its ImageNet-LT / iNaturalist scripts on the test list (iNaturalist's "val" list is its test set).
_LAST = {"eval.select": "last"}
DATASET_OVERRIDES: dict[str, dict[str, dict[str, Any]]] = {
    "ride-reference": {"imagenet-lt": _LAST, "inat2018": _LAST},
    "sade-reference": {"imagenet-lt": {"eval.selection_split": "val"}, "places-lt": {"eval.selection_split": "val"},
                       "inat2018": _LAST},
    "paco-reference": {"places-lt": {"eval.selection_split": "val"}},
    # MiSLAS's ImageNet-LT / iNaturalist / Places-LT loaders: stage 2's class-aware batches take the stage-1 transform
    # (RandomResizedCrop, flip, ColorJitter(.4, .4, .4)); both stages validate on the test list (iNat: val2018)
    "mislas-reference": dict.fromkeys(("imagenet-lt", "inat2018", "places-lt"), {"stage2.augment": "rrc_flip_jitter"}),
}

# Every protocol name a config can give ("custom" = none); the schema's Literal lists the same (a test checks)
PROTOCOL_NAMES: tuple[str, ...] = ("custom", *PROTOCOLS)

# Input statistics a reference code hard-codes per dataset (data.mean / data.std, stage 1; children inherit
# them). The codes normalise CIFAR-100 with the commonly copied CIFAR-10 numbers, not CIFAR-100's own; the HS code
# normalises CIFAR-10 with CIFAR-10's true statistics (= the card), MiSLAS with the copied ones (whose std is not
# CIFAR-10's either); the WB code has no CIFAR-10.
CIFAR10_COPIED_STATS = ([0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010])
REFERENCE_STATS: dict[str, dict[str, tuple[list[float], list[float]]]] = {
    "wb-reference": {"cifar100": CIFAR10_COPIED_STATS},
    "mislas-reference": {"cifar100": CIFAR10_COPIED_STATS, "cifar10": CIFAR10_COPIED_STATS},
    "hs-reference": {"cifar100": CIFAR10_COPIED_STATS,
                     "cifar10": ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616])},
    # ImbalanceCIFAR{10,100}DataLoader (RIDE, SADE) and paco_cifar.py's transforms
    "ride-reference": {"cifar100": CIFAR10_COPIED_STATS, "cifar10": CIFAR10_COPIED_STATS},
    "sade-reference": {"cifar100": CIFAR10_COPIED_STATS, "cifar10": CIFAR10_COPIED_STATS},
    "paco-reference": {"cifar100": CIFAR10_COPIED_STATS, "cifar10": CIFAR10_COPIED_STATS},
}


_MISSING = object()
# Protocol settings about cutting the long-tailed set from a pool; moot where split files define it.
PROFILE_KEYS = ("data.selection", "data.selection_seed", "data.profile", "data.rounding", "data.n_max",
                "data.val_per_class")


def _get(d: dict[str, Any], path: list[str]) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return _MISSING
        d = d[p]
    return d


def apply_protocol(raw: dict[str, Any], file_split: bool = False) -> dict[str, Any]:
    """Fill in the named protocol's settings; an explicit conflicting value is a ConfigError. `file_split`: the
    dataset's split files fix its long-tailed set (its card says so; the caller reads it), so the protocol's
    profile settings do not apply."""
    name, stage = raw.get("protocol", "custom"), raw.get("stage", "stage1")
    if name not in PROTOCOLS or stage not in PROTOCOLS[name]:
        return raw  # "custom", or a bad protocol / stage name that _build reports
    dataset = _get(raw, ["data", "dataset"])
    fixed = dict(PROTOCOLS[name][stage])
    if stage == "stage1" and isinstance(dataset, str) and dataset in REFERENCE_STATS.get(name, {}):
        fixed["data.mean"], fixed["data.std"] = REFERENCE_STATS[name][dataset]
    if isinstance(dataset, str):
        fixed.update({k: v for k, v in DATASET_OVERRIDES.get(name, {}).get(dataset, {}).items() if k in fixed})
    for key, value in fixed.items():
        if file_split and key in PROFILE_KEYS:
            continue  # the dataset's split files fix its profile and val split
        path = key.split(".")
        have = _get(raw, path)
        if have is not _MISSING and have != value:
            raise ConfigError(f"config key '{key}': {have!r} conflicts with protocol {name} (which sets {value!r})")
        _set(raw, path, value)
    return raw
