"""Typed experiment configuration: defaults <- YAML file <- command-line `key.sub=value` overrides.

Every field that changes a reported number lives outside `runtime`; the run directory name hashes
everything except `runtime` and `wandb` (threads, progress bars, checkpoint cadence), so the same experiment
always lands in the same directory and a second `ltbench run` resumes it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from bench.paths import repo_or_package_dir


class ConfigError(ValueError):
    """A bad configuration; the message is one line naming the key and the problem."""


def _f(default: Any, doc: str, *, ge: float | None = None, gt: float | None = None,
       le: float | None = None) -> Any:
    """A dataclass field with a docstring and an optional numeric range."""
    meta = {"doc": doc, "ge": ge, "gt": gt, "le": le}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class SyntheticConfig:
    """The synthetic dataset used by tests and the smoke config (no files needed)."""

    num_classes: int = _f(10, "number of classes", ge=2)
    train_per_class: int = _f(300, "images per class in the full (balanced) training pool", ge=1)
    test_per_class: int = _f(50, "images per class in the balanced test split", ge=1)
    image_size: int = _f(16, "height = width of the generated images", ge=4)
    channels: int = _f(3, "image channels", ge=1)
    noise: float = _f(0.6, "std of the pixel noise added to each class template (in [0,1] pixel units)", ge=0)
    seed: int = _f(1234, "seed of the generator (templates and noise); independent of the run seed")


@dataclass
class DataConfig:
    """Which dataset, which long-tailed subset of it, and how batches are drawn."""

    dataset: Literal["fashion-mnist", "cifar10", "cifar100", "imagenet-lt", "places-lt", "inat2018", "synthetic"] = _f(
        "fashion-mnist", "dataset name; its card in datasets/<name>.yaml supplies the defaults marked 'card'")
    root: str | None = _f(None, "directory holding the raw files; None = auto-detect (see README)")
    shards: str | None = _f(None, "directory written by `ltbench prepare` (manifest.json + tar shards) to stream from; None = load the raw files into memory (Fashion-MNIST, CIFAR, synthetic only)")
    shards_manifest: str | None = _f(None, "filled in by ltbench: digest of data.shards/manifest.json, so the run hash names the exact shards (not their path)")
    imbalance_factor: float | None = _f(None, "n_max / n_min of the long-tailed training profile (1 = balanced); None = card (100; fixed by the split files for ImageNet-LT, Places-LT, iNat)", ge=1)
    profile: Literal["exp", "step", "files"] | None = _f(None, "class-count profile: exp n_c = n_max * IF^(-c/(C-1)); step = half n_max, half n_max/IF; files = the dataset's own split files (ImageNet-LT, Places-LT, iNat); None = card")
    n_max: int | None = _f(None, "images of the largest class; None = the card's pool per class minus val_per_class (HS: 480 for CIFAR-100 with 20 val; 500 without val, as WB)", ge=1)
    rounding: Literal["floor", "round"] = _f("floor", "int() of the profile as in WB/LDAM-DRW (floor) or round() as in HS")
    selection: Literal["first", "shuffle"] = _f("first", "which n_c images of a class: first in file order (WB code) or after a seeded shuffle (LDAM-DRW)")
    selection_seed: int = _f(0, "numpy seed of the per-class shuffle when selection=shuffle (LDAM-DRW uses 0)")
    val_per_class: int | None = _f(None, "held-out validation images per class, taken from the training pool after the selected ones (HS: 20); 0 = no val split; None = card (20; fixed by the split files where they define val)", ge=0)
    augment: Literal["crop_flip", "flip", "rrc_flip", "none"] = _f("crop_flip", "training augmentation: random crop with zero padding + horizontal flip (WB/CIFAR standard), flip only, RandomResizedCrop(image_size, scale 0.08-1, ratio 3/4-4/3) + flip (ImageNet standard), or none")
    crop_padding: int = _f(4, "zero padding of the random crop, pixels", ge=0)
    to_rgb: bool = _f(False, "repeat a one-channel (grey) image to three channels before the model, as the WB reference run on Fashion-MNIST-LT did; the first convolution then has three input channels (its initial scale is the same, its updates are not)")
    pad_to: int | None = _f(None, "zero-pad images to this size first (e.g. 32 for 28x28 Fashion-MNIST, as the measured reference run did); None = native size", ge=1)
    mean: list[float] | None = _f(None, "per-channel input mean of the normalisation (x/255 - mean) / std (one value = every channel); None = card (the dataset's true statistics); wb-reference / hs-reference set the reference codes' CIFAR-100 values (0.4914, 0.4822, 0.4465)")
    std: list[float] | None = _f(None, "per-channel input std of the normalisation, > 0; None = card; wb-reference / hs-reference set the reference codes' CIFAR-100 values (0.2023, 0.1994, 0.2010), the commonly copied CIFAR-10 numbers")
    image_size: int | None = _f(None, "shard datasets with large images: training crop and evaluation centre-crop size; None = card (224)", ge=1)
    eval_resize: int | None = _f(None, "shard datasets with large images: shorter side resized to this before the evaluation centre crop; None = card (256)", ge=1)
    streams: int = _f(4, "shards: interleaved shuffled streams per rank; fixes the data order whatever runtime.workers is (workers must divide it)", ge=1)
    shuffle_buffer: int = _f(2000, "shards: samples held by each stream's shuffle buffer (the shard order is shuffled too, every epoch)", ge=1)
    on_error: Literal["raise", "skip"] = _f("raise", "shards: a truncated tar, undecodable image or missing label stops the run (raise) or is skipped, counted and reported in result.json (skip)")
    decode: Literal["cpu", "gpu"] = _f("cpu", "shards of JPEGs at image_size: decode + crop in the DataLoader workers with PIL (cpu), or read the bytes there and decode, crop and flip the batch on the GPU with nvJPEG (gpu; for when the cores cannot feed the GPU, BENCHMARKS.md); the same crops, pixels differ slightly between decoders")
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class GroupsConfig:
    """Many / medium / few split by TRAINING count n_c (Kang et al. 2020; WB)."""

    many: int | None = _f(None, "many-shot threshold; None = dataset card (100 for CIFAR-100-LT, 1000 for 10-class sets)", ge=0)
    few: int | None = _f(None, "few-shot threshold; None = dataset card (20 / 200)", ge=0)
    inclusive: bool = _f(False, "False: many n_c > many, few n_c < few (WB, Decoupling); True: >= and <= (OLTR)")


@dataclass
class ModelConfig:
    """Backbone + linear classifier, any timm model name (CIFAR ResNets are registered by bench.models)."""

    name: str = _f("resnet32_cifar", "timm model name, e.g. resnet32_cifar, resnet34_wb, resnet50, resnext50_32x4d")
    classifier: Literal["linear", "etf"] = _f("linear", "linear (trained) or a fixed simplex-ETF whose bias alone trains (HS single-stage method)")
    pretrained_file: str | None = _f(None, "local weights file to start from (classifier re-initialised when shapes differ)")
    drop_rate: float = _f(0.0, "dropout before the classifier", ge=0, le=1)


@dataclass
class LossConfig:
    """A training loss by name (bench.methods.losses) and its parameters."""

    name: Literal["ce", "cb_ce", "cb_bce_softmax", "focal", "ldam", "logit_adjusted", "balanced_softmax"] = _f(
        "ce", "ce (WB stage 1); cb_ce = class-balanced weighted CE (HS); cb_bce_softmax = the WB code's CB form "
        "(BCE on softmax, per-sample weight); focal; ldam; logit_adjusted (Menon et al.); balanced_softmax")
    label_smoothing: float = _f(0.0, "cross-entropy label smoothing (ce only)", ge=0, le=1)
    cb_beta: float = _f(0.9999, "effective-number beta of the class-balanced weights w_c = (1-beta)/(1-beta^n_c), normalised to sum C", ge=0, le=1)
    cb_normalizer: Literal["batch", "weights"] = _f("batch", "what a class-weighted loss (cb_ce, or any loss under drw_epoch) divides sum_i w_{y_i} l_i by: batch = the batch size B (the HS code's weighted CE: per-sample w_{y_i} CE_i, then the plain batch mean); weights = sum_i w_{y_i} (PyTorch's weight= semantics, as in the LDAM-DRW code; scales the gradient by 1/mean w_y, ~4.9x on CIFAR-100-LT IF 100); cb_bce_softmax divides by B*C (WB code) and takes batch only")
    focal_gamma: float = _f(1.0, "focal loss gamma", ge=0)
    ldam_max_margin: float = _f(0.5, "LDAM largest margin (the rarest class); margins proportional to n_c^(-1/4)", gt=0)
    ldam_scale: float = _f(30.0, "LDAM logit scale s", gt=0)
    la_tau: float = _f(1.0, "logit-adjusted loss: logits + tau * log(prior) (balanced_softmax = tau 1 with counts)", ge=0)
    drw_epoch: int | None = _f(None, "deferred re-weighting: from this 0-based epoch on, weight the loss by CB weights (LDAM-DRW: 160 of 200); None = off", ge=0)


@dataclass
class TrainConfig:
    """Stage-1 optimisation (WB: CE, SGD lr 0.01 momentum 0.9, cosine to 0, WD on all parameters)."""

    epochs: int = _f(20, "training epochs", ge=1)
    batch_size: int = _f(64, "GLOBAL batch size, summed over DDP processes (each takes batch_size / world size); WB: 64", ge=1)
    lr: float = _f(0.01, "base learning rate", gt=0)
    lr_scaling: Literal["none", "linear"] = _f("none", "none: lr as given; linear: lr * batch_size / lr_base_batch (Goyal et al. 2017)")
    lr_base_batch: int = _f(256, "the batch size `lr` refers to when lr_scaling=linear", ge=1)
    amp: Literal["none", "bf16", "fp16"] = _f("none", "mixed precision: autocast to bf16, or fp16 with a gradient scaler (saved in checkpoints); none on CPU")
    momentum: float = _f(0.9, "SGD momentum", ge=0, le=1)
    nesterov: bool = _f(False, "Nesterov momentum")
    weight_decay: float = _f(5e-3, "L2 weight decay lambda (WB CIFAR-100-LT tuned value 5e-3; naive baseline 0)", ge=0)
    wd_scope: Literal["all", "no_norm_bias"] = _f("all", "which parameters decay: all (WB: conv, BN, biases, fc) or all but norm/bias (timm's default)")
    schedule: Literal["cosine", "constant"] = _f("cosine", "learning-rate schedule, annealed to 0")
    schedule_unit: Literal["step", "epoch"] = _f("epoch", "update the lr every optimiser step or once per epoch")
    schedule_step_at_epoch_start: bool = _f(False, "WB reference: the per-epoch scheduler steps before each epoch, so epoch 1 already runs decayed")
    warmup_epochs: int = _f(0, "linear warm-up epochs before the schedule", ge=0)
    loss: LossConfig = field(default_factory=LossConfig)
    drop_last: bool = _f(False, "drop the last incomplete batch of an epoch")
    wd_in_loss: float = _f(0.0, "HS: add lambda/2 * sum ||theta||^2 over the trained parameters to the loss (use with weight_decay 0)", ge=0)
    feature_reg: float = _f(0.0, "HS feature regularisation lambda_FR/2 * mean_i ||h_i||^2 on the pooled penultimate feature (HS: 0.01)", ge=0)
    sampler: Literal["instance", "class_balanced"] = _f("instance", "instance-balanced (shuffle) or class-balanced sampling (a uniform class, then a uniform image of it: cRT)")


def _stage2_train() -> "TrainConfig":
    # WB stage 2 (Alshammari et al. 2022): 10 epochs, SGD lr 0.01 momentum 0.9, cosine, WD 0.1, CB loss.
    return TrainConfig(epochs=10, lr=0.01, weight_decay=0.1, loss=LossConfig(name="cb_ce"))


@dataclass
class Stage2Config:
    """Classifier learning on the frozen backbone of a finished stage-1 run (WB stage 2, cRT)."""

    train: TrainConfig = field(default_factory=_stage2_train)
    maxnorm: bool = _f(True, "MaxNorm by projected gradient descent on the classifier rows (bias unconstrained)")
    maxnorm_thresh: float = _f(0.1, "radius = min + thresh * (max - min) of the stage-1 per-class weight norms", ge=0, le=1)
    maxnorm_cadence: Literal["step", "epoch"] = _f("step", "project after every step (WB paper) or once per epoch (WB code)")
    train_blocks: int = _f(0, "also retrain the last k backbone blocks (timm's group_matcher order); 0 = classifier only (WB)", ge=0)
    bn_mode: Literal["train", "eval"] = _f("eval", "BatchNorm of the frozen backbone: eval, or train as in the WB code (running stats keep moving)")
    augment: Literal["crop_flip", "flip", "none"] = _f("none", "stage-2 training augmentation (the WB code keeps crop+flip)")
    cache_features: bool = _f(True, "with augment=none, bn_mode=eval and train_blocks=0, extract features once and train the classifier on them")


@dataclass
class PosthocConfig:
    """A training-free adjustment of a finished run's classifier or logits."""

    kind: Literal["l2norm", "taunorm", "la_add", "la_mult"] = _f(
        "taunorm", "l2norm: W_k/||W_k||; taunorm: W_k/||W_k||^tau; la_add: z - tau log pi; la_mult (HS): z * pi^-tau")
    tau: float | None = _f(None, "fixed tau; None = chosen on eval.selection_split from tau_grid (recorded in result.json)", ge=0)
    tau_grid: list[float] = _f([round(0.1 * i, 2) for i in range(21)], "candidate taus when tau is None")


@dataclass
class EvalConfig:
    """Evaluation and model selection."""

    selection_split: Literal["val", "test"] = _f("val", "split evaluated every epoch and used to pick the best epoch; 'test' is the WB CIFAR protocol (peeks at test)")
    select: Literal["best", "last"] = _f("last", "report test metrics of the best epoch on the selection split (highest 'all' = top-1 over its images; on a balanced val split this is the mean per-class accuracy HS selects by), or of the last epoch")
    tta_flip: bool = _f(False, "reported metrics (test and val in result.json): average the logits of x and its horizontal flip (the WB code reports with it, HS without)")
    select_tta_flip: bool = _f(False, "the same flip TTA for selection: the per-epoch evaluation of the selection split (best epoch, metrics.jsonl) and the post-hoc tau search (the WB code selects on plain logits)")
    batch_size: int = _f(500, "evaluation batch size", ge=1)
    analysis_each_epoch: bool = _f(False, "also log weight norms, FDR and feature cosine of the selection split after every epoch (metrics.jsonl)")


@dataclass
class RuntimeConfig:
    """How the run executes; never changes a reported number, so it is not part of the run hash."""

    device: Literal["auto", "cpu", "cuda"] = _f("auto", "auto = cuda when available")
    threads: int | None = _f(None, "torch intra-op threads; None = the cores of this process (cores / processes on the node) minus its shard-decoding workers", ge=1)
    deterministic: bool = _f(True, "torch.use_deterministic_algorithms: bit-exact resume on CPU")
    checkpoint_every_steps: int = _f(0, "also checkpoint every N optimiser steps inside an epoch (0 = epoch ends only)", ge=0)
    progress: Literal["auto", "on", "off"] = _f("auto", "per-epoch progress bar: auto = only on a terminal")
    plot: bool = _f(True, "write per_class.png (per-class accuracy against class size)")
    channels_last: bool = _f(False, "GPU speed: model and inputs in channels_last memory format")
    compile: bool = _f(False, "GPU speed: torch.compile the training forward")
    cudnn_benchmark: bool = _f(False, "GPU speed: cudnn.benchmark autotuning (needs deterministic=false)")
    workers: int | None = _f(None, "DataLoader worker processes decoding shards (must divide data.streams; 0 = decode in the training process); None = by cores per process: 0 up to 2 cores (workers would compete with the training threads, BENCHMARKS.md), else half of them, at most data.streams", ge=0)


@dataclass
class WandbConfig:
    """Weights & Biases tracking; never changes a reported number, so it is not part of the run hash.
    The API key comes from `wandb login` / WANDB_API_KEY only: it has no config field, so it can never land in a
    config or log file."""

    mode: Literal["online", "offline", "disabled"] | None = _f(None, "None = the WANDB_MODE environment variable, else offline (files under <run>/wandb, `wandb sync` later)")
    project: str = _f("ltbench", "W&B project (WANDB_PROJECT overrides it when set)")
    entity: str | None = _f(None, "W&B entity (team or user); None = the account's default (or WANDB_ENTITY)")
    tags: list[str] = _f([], "extra tags; method, dataset, stage and protocol are always added")
    init_timeout: float = _f(60.0, "seconds wandb.init may take (online) before tracking is given up for this run", gt=0)
    finish_timeout: float = _f(60.0, "seconds the end of a run waits for W&B to catch up before leaving it", gt=0)


# Fields added after run directories were first named (dotted key -> default): out of the run hash while at
# their default, so an upgrade keeps every existing run directory and its hash.
HASH_NEUTRAL_AT_DEFAULT: dict[str, Any] = {"data.to_rgb": False}


@dataclass
class Config:
    """One experiment: a stage-1 training run on a long-tailed dataset."""

    name: str = _f("default", "experiment name; runs go to <runs-root>/<name>/<method>-seed<seed>-<hash>")
    method: str = _f("ce", "method label used in tables (e.g. naive, wd, wb)")
    protocol: Literal["custom", "clean", "wb-reference", "hs-reference"] = _f(
        "custom", "named protocol whose settings the config must follow (see PROTOCOLS): clean = select on a held-out "
        "validation split, never peek at test; wb-reference = the WB code's CIFAR protocol; hs-reference = the HS "
        "code's; custom = no constraint")
    seed: int = _f(0, "seed of weight init, data order and augmentation", ge=0)
    stage: Literal["stage1", "stage2", "posthoc"] = _f("stage1", "stage1: train a model; stage2: retrain the classifier of `parent`; posthoc: adjust `parent` without training")
    parent: str | None = _f(None, "stage2/posthoc: the run they start from: its run directory, or its experiment YAML (found under the same runs root, same seed)")
    parent_hash: str | None = _f(None, "filled in by ltbench: the config hash of `parent` (part of this run's hash)")
    data: DataConfig = field(default_factory=DataConfig)
    groups: GroupsConfig = field(default_factory=GroupsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    posthoc: PosthocConfig = field(default_factory=PosthocConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def result_dict(self) -> dict[str, Any]:
        """The fields that can change a result: all but `runtime` / `wandb`, the sections of other stages, the parent's path."""
        d = self.to_dict()
        for key in ["runtime", "wandb", "parent"] + [k for k in ("stage2", "posthoc") if k != self.stage]:
            d.pop(key)
        # Where the files are; selection_hash / the shard manifest's digest in run.json record what was read.
        d["data"].pop("root")
        d["data"].pop("shards")
        return d

    def run_hash(self) -> str:
        """Hash of result_dict(), 10 hex chars: equal hashes = the same experiment.

        Fields in HASH_NEUTRAL_AT_DEFAULT are left out while they hold their default, so adding such a
        field does not orphan the run directories made before it existed (their runs did not use it)."""
        d = self.result_dict()
        for dotted, default in HASH_NEUTRAL_AT_DEFAULT.items():
            *path, key = dotted.split(".")
            section = functools.reduce(lambda s, k: s.get(k, {}), path, d)
            if key in section and section[key] == default:
                section.pop(key)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]

    def run_name(self) -> str:
        return f"{self.method}-seed{self.seed}-{self.run_hash()}"


# ---------------------------------------------------------------------------------------------
# Building typed configs from plain dicts, with one-line errors.

def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false",
            type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError:
                pass
        raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        options = typing.get_args(tp)
        if isinstance(value, bool) and {"on", "off"} <= set(options):
            value = "on" if value else "off"  # YAML 1.1 reads on/off as booleans
        if value in options and not (isinstance(value, bool) and bool not in map(type, options)):
            return value
        raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, list):
            return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "5e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"config key '{prefix.rstrip('.') or '<root>'}': expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        import difflib
        key = prefix + str(unknown[0])
        near = difflib.get_close_matches(str(unknown[0]), list(fields), n=1)
        hint = f" (did you mean '{prefix}{near[0]}'?)" if near else ""
        raise ConfigError(f"unknown config key '{key}'{hint}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        tp, key = hints[name], prefix + name
        if dataclasses.is_dataclass(tp):
            # Start from this field's own default (stage2.train defaults differ from train's), so a
            # partial section keeps the defaults it does not mention.
            factory = fields[name].default_factory
            base = dataclasses.asdict(factory()) if factory is not dataclasses.MISSING else {}
            kwargs[name] = _build(tp, merge(base, value) if isinstance(value, dict) else value, key + ".")
            continue
        value = _coerce(value, tp, key)
        meta = fields[name].metadata
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            for bound, ok, word in (("ge", lambda v, b: v >= b, ">="), ("gt", lambda v, b: v > b, ">"),
                                    ("le", lambda v, b: v <= b, "<=")):
                b = meta.get(bound)
                if b is not None and not ok(value, b):
                    raise ConfigError(f"config key '{key}': value {value!r} out of range (must be {word} {b})")
        kwargs[name] = value
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.lr=0.1` -> (['train', 'lr'], 0.1); the value is parsed as YAML (so `null`, `true`, `[1,2]`)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. train.lr=0.1")
    key, raw = text.split("=", 1)
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _set(d: dict[str, Any], path: list[str], value: Any) -> None:
    for p in path[:-1]:
        nxt = d.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"config key '{'.'.join(path)}': '{p}' is not a section")
        d = nxt
    d[path[-1]] = value


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p}: {'a folder, not a YAML file' if p.is_dir() else 'not found'}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {p}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
                          "is it a YAML file?") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {p}{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p}: top level must be a mapping, got {type(data).__name__}")
    return data


INHERITED = ("data", "model", "train")  # a stage2/posthoc run takes these from its parent
LOCATION_KEYS = ("root", "shards")        # ...except where its data lives now, which it may override

# Settings a named protocol fixes (README "Stages, methods and protocols"). A config that names the protocol gets these
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
}

# Input statistics a reference code hard-codes per dataset (data.mean / data.std, stage 1; children inherit
# them). Both codes normalise CIFAR-100 with the commonly copied CIFAR-10 numbers, not CIFAR-100's own; the
# HS code normalises CIFAR-10 with CIFAR-10's true statistics (= the card); the WB code has no CIFAR-10.
CIFAR10_COPIED_STATS = ([0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010])
REFERENCE_STATS: dict[str, dict[str, tuple[list[float], list[float]]]] = {
    "wb-reference": {"cifar100": CIFAR10_COPIED_STATS},
    "hs-reference": {"cifar100": CIFAR10_COPIED_STATS,
                     "cifar10": ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616])},
}


_MISSING = object()
# Protocol settings about cutting the long-tailed set from a pool; moot where split files define it.
PROFILE_KEYS = ("data.selection", "data.profile", "data.rounding", "data.n_max", "data.val_per_class")


def _get(d: dict[str, Any], path: list[str]) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return _MISSING
        d = d[p]
    return d


def apply_protocol(raw: dict[str, Any]) -> dict[str, Any]:
    """Fill in the named protocol's settings; an explicit conflicting value is a ConfigError."""
    name, stage = raw.get("protocol", "custom"), raw.get("stage", "stage1")
    if name not in PROTOCOLS or stage not in PROTOCOLS[name]:
        return raw  # "custom", or a bad protocol / stage name that _build reports
    dataset = _get(raw, ["data", "dataset"])
    file_split = False
    if isinstance(dataset, str):
        # local, like every bench.data import here: the schema imports without the data package (which
        # imports it), and the CLI's start-up (help, show) loads no torch
        from bench.data.cards import DatasetError, load_card
        try:
            file_split = load_card(dataset).get("source") in FILE_SPLIT_SOURCES
        except DatasetError:
            pass  # an unknown dataset name is reported by _build
    fixed = dict(PROTOCOLS[name][stage])
    if stage == "stage1" and isinstance(dataset, str) and dataset in REFERENCE_STATS.get(name, {}):
        fixed["data.mean"], fixed["data.std"] = REFERENCE_STATS[name][dataset]
    for key, value in fixed.items():
        if file_split and key in PROFILE_KEYS:
            continue  # the dataset's split files fix its profile and val split
        path = key.split(".")
        have = _get(raw, path)
        if have is not _MISSING and have != value:
            raise ConfigError(f"config key '{key}': {have!r} conflicts with protocol {name} (which sets {value!r})")
        _set(raw, path, value)
    return raw


def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: mappings merge key by key, anything else in `top` replaces `base`."""
    out = dict(base)
    for k, v in top.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_with_bases(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML file with an optional `base:` (a file or list of files, relative to it) merged underneath."""
    raw = load_yaml(path)
    bases = raw.pop("base", None)
    if bases is None:
        return raw
    merged: dict[str, Any] = {}
    if not isinstance(bases, (str, list)) or not all(isinstance(b, str) for b in ([bases] if isinstance(bases, str) else bases)):
        raise ConfigError(f"config file {path}: 'base' must be a file name or a list of them, got {bases!r}")
    for b in [bases] if isinstance(bases, str) else bases:
        bp = (path.parent / b).resolve()
        if not bp.is_file():
            raise ConfigError(f"config file {path}: 'base' {b} is {'a folder' if bp.is_dir() else 'not found'} "
                              f"({bp}); it names a YAML file, relative to this one")
        if bp in seen:
            raise ConfigError(f"config file {path}: 'base' {b} includes itself")
        merged = merge(merged, load_with_bases(bp, seen + (bp,)))
    return merge(merged, raw)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults <- YAML file <- overrides, then dataset-card defaults filled in and cross-field checks.

    A stage2/posthoc config inherits data, model, train (and groups, unless it sets them) from its parent.
    """
    raw: dict[str, Any] = load_with_bases(Path(path)) if path is not None else {}
    if path is not None and not raw:
        # an empty file would silently train the defaults under the name "default": almost surely a mistake
        raise ConfigError(f"config file {path}: empty (an experiment names at least its dataset and model; see "
                          "configs/smoke.yaml)")
    for ov in overrides:
        keys, value = parse_override(ov)
        _set(raw, keys, value)
    raw = apply_protocol(raw)
    if raw.get("stage") in ("stage2", "posthoc"):
        raw = _inherit_from_parent(raw, Path(path).parent if path is not None else Path("."))
    cfg: Config = _build(Config, raw, "")
    return resolve(cfg)


def parent_path(parent: str, base: Path) -> Path:
    """A parent given relative to the config file's folder, else to the working directory."""
    p = Path(parent).expanduser()
    return base / p if not p.is_absolute() and (base / p).exists() else p


def load_parent(parent: str, seed: int, base: Path = Path(".")) -> Config:
    """The parent run's resolved config: from its run directory, or its YAML with this seed."""
    p = parent_path(parent, base)
    if p.is_dir():
        if not (p / "config.yaml").is_file():
            raise ConfigError(f"config key 'parent': run directory {p} has no config.yaml (not a run, or never started)")
        return from_dict(load_yaml(p / "config.yaml"))
    if p.is_file():
        return load_config(p, [f"seed={seed}"])
    raise ConfigError(f"config key 'parent': {parent} is neither a run directory nor a config file")


def _inherit_from_parent(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    stage = raw["stage"]
    if not raw.get("parent"):
        raise ConfigError(f"config key 'parent': a {stage} config needs the run it starts from (a run directory or experiment YAML)")
    where = raw.get("data") if isinstance(raw.get("data"), dict) else None
    if where is not None and set(where) <= set(LOCATION_KEYS):
        raw = {k: v for k, v in raw.items() if k != "data"}   # only where the parent's data is now: allowed
    else:
        where = None
    for key in INHERITED:
        if key in raw:
            raise ConfigError(f"config key '{key}': a {stage} config takes '{key}' from its parent; set it there")
    seed = raw.get("seed", 0)
    parent = load_parent(str(raw["parent"]), seed if isinstance(seed, int) else 0, base)
    protocol = raw.get("protocol", "custom")
    if protocol != "custom" and parent.protocol != protocol:
        raise ConfigError(f"config key 'protocol': {protocol} but the parent run follows {parent.protocol}")
    if parent.seed != raw.get("seed", parent.seed):
        raise ConfigError(f"config key 'seed': {raw.get('seed')} differs from the parent run's seed {parent.seed}")
    pd = parent.to_dict()
    out = dict(raw)
    out["seed"] = parent.seed
    out["parent_hash"] = parent.run_hash()
    for key in INHERITED:
        out[key] = pd[key]
    if where:
        # the same data somewhere else (node-local shards); resolve() checks the manifest digest still matches
        out["data"] = {**pd["data"], **where}
    out.setdefault("groups", pd["groups"])
    if stage == "posthoc" and parent.stage == "stage2":
        out.setdefault("stage2", pd["stage2"])
    return out


def from_dict(raw: dict[str, Any], check_files: bool = False) -> Config:
    """Rebuild a Config from a resolved dict (e.g. a run directory's config.yaml).

    Stored configs are not re-checked against their data files: shards may since have moved (node-local
    copies, another mount); the stored `data.shards_manifest` digest still names the data exactly.
    """
    return resolve(_build(Config, raw, ""), check_files)


def resolve(cfg: Config, check_files: bool = True) -> Config:
    """Fill 'card' defaults from the dataset card and check combinations of fields (and, with
    check_files, read data.shards' manifest to record its digest)."""
    from bench.data.cards import load_card  # local: see apply_protocol

    card = load_card(cfg.data.dataset)
    d = cfg.data
    d.root, d.shards = _expand_path("data.root", d.root), _expand_path("data.shards", d.shards)
    cfg.model.pretrained_file = _expand_path("model.pretrained_file", cfg.model.pretrained_file)
    if card.get("source") in FILE_SPLIT_SOURCES:
        _resolve_file_split(d, card)
    else:
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
    _resolve_input_stats(d, card)
    if d.image_size is None and card.get("eval_resize"):
        d.image_size = int(card["image_size"])
    if d.eval_resize is None and card.get("eval_resize"):
        d.eval_resize = int(card["eval_resize"])
    if d.augment == "rrc_flip" and d.image_size is None:
        raise ConfigError(f"config key 'data.augment': rrc_flip needs data.image_size (the crop size) for {d.dataset}")
    if d.shards is None and card.get("source") in FILE_SPLIT_SOURCES:
        raise ConfigError(f"config key 'data.shards': {d.dataset} is read from shards; run `ltbench prepare "
                          f"{d.dataset} --src DIR --out SHARDS` and set data.shards=SHARDS")
    if d.shards is not None and check_files:
        from bench.data.shards.manifest import load_manifest  # local: see apply_protocol (pulls in torch)
        digest = load_manifest(d.shards).digest
        if d.shards_manifest not in (None, digest):
            raise ConfigError(f"config key 'data.shards_manifest': the shards in {d.shards} changed since this run "
                              f"started (manifest {digest}, run has {d.shards_manifest}); start a new run")
        d.shards_manifest = digest
    elif d.shards is None:
        d.shards_manifest = None
    if d.shards is not None and cfg.runtime.workers is not None and d.streams % max(1, cfg.runtime.workers):
        raise ConfigError(f"config key 'runtime.workers': {cfg.runtime.workers} does not divide data.streams = "
                          f"{d.streams} (each worker serves whole streams)")
    if cfg.groups.many is None:
        cfg.groups.many = int(card["groups"]["many"])
    if cfg.groups.few is None:
        cfg.groups.few = int(card["groups"]["few"])
    if cfg.groups.few > cfg.groups.many:
        raise ConfigError(f"config key 'groups.few': {cfg.groups.few} is above groups.many = {cfg.groups.many}")
    if cfg.train.wd_in_loss > 0 and cfg.train.weight_decay > 0:
        raise ConfigError(f"config key 'train.wd_in_loss': {cfg.train.wd_in_loss} with train.weight_decay = "
                          f"{cfg.train.weight_decay} decays twice (HS: set train.weight_decay=0)")
    for key, loss in (("train.loss", cfg.train.loss), ("stage2.train.loss", cfg.stage2.train.loss)):
        if loss.name == "cb_bce_softmax" and loss.cb_normalizer != "batch":
            raise ConfigError(f"config key '{key}.cb_normalizer': {loss.cb_normalizer} does not apply to cb_bce_softmax, "
                              "which averages over all B*C entries as the WB code does (use batch)")
    if cfg.runtime.cudnn_benchmark and cfg.runtime.deterministic:
        raise ConfigError("config key 'runtime.cudnn_benchmark': true picks algorithms by timing, which "
                          "runtime.deterministic=true forbids; set runtime.deterministic=false")
    if cfg.eval.selection_split == "val" and cfg.data.val_per_class == 0 and d.profile == "files":
        raise ConfigError(f"config key 'eval.selection_split': {d.dataset} has no validation split; use "
                          "eval.selection_split=test with eval.select=last (no peeking), as its papers report")
    if cfg.eval.selection_split == "val" and cfg.data.val_per_class == 0:
        raise ConfigError("config key 'data.val_per_class': 0 leaves no validation split for "
                          "eval.selection_split=val (set val_per_class > 0, or selection_split=test)")
    return cfg


FILE_SPLIT_SOURCES = ("split_files", "inat_json")


def _expand_path(key: str, value: str | None) -> str | None:
    """$VAR / ${VAR} in path fields (shared configs name data locations by environment variable)."""
    if value is None or "$" not in value:
        return value
    out = os.path.expandvars(value)
    if "$" in out:
        unset = re.findall(r"\$\{?(\w+)", out)
        raise ConfigError(f"config key '{key}': {value} uses the unset environment variable {unset[0] if unset else '?'}"
                          " (export it, or give the path)")
    return out


def _resolve_input_stats(d: DataConfig, card: dict[str, Any]) -> None:
    """data.mean / data.std: the card's statistics unless set; one value per channel (or one for all), std > 0;
    data.to_rgb only on one-channel data."""
    channels = d.synthetic.channels if d.dataset == "synthetic" else int(card["channels"])
    if d.to_rgb and channels != 1:
        raise ConfigError(f"config key 'data.to_rgb': {d.dataset} has {channels} channels already "
                          "(to_rgb repeats a one-channel image to three)")
    channels = 3 if d.to_rgb else channels
    d.mean = list(card["mean"]) if d.mean is None else d.mean
    d.std = list(card["std"]) if d.std is None else d.std
    for key, values in (("data.mean", d.mean), ("data.std", d.std)):
        if len(values) not in (1, channels):
            raise ConfigError(f"config key '{key}': {len(values)} values for the {channels} channels of "
                              f"{d.dataset} (give one per channel, or one for all)")
    if len(d.mean) != len(d.std):
        raise ConfigError(f"config key 'data.std': {len(d.std)} values, but data.mean has {len(d.mean)}")
    if min(d.std) <= 0:
        raise ConfigError(f"config key 'data.std': {d.std} must be > 0 in every channel")


def _resolve_file_split(d: DataConfig, card: dict[str, Any]) -> None:
    """ImageNet-LT, Places-LT, iNat: the split files fix the long-tailed set; a different explicit value is an error."""
    fixed = {"profile": "files", "imbalance_factor": float(card["lt"]["imbalance_factor"]),
             "n_max": int(card["lt"]["n_max"]), "val_per_class": int(card["lt"]["val_per_class"])}
    for key, value in fixed.items():
        have = getattr(d, key)
        if have is not None and have != value:
            raise ConfigError(f"config key 'data.{key}': {have!r}, but the {d.dataset} split files fix it at {value!r}")
        setattr(d, key, value)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def describe_fields(obj: Any = None, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, doc) for every field of a default Config: `ltbench config --describe`, the README."""
    obj = Config() if obj is None else obj
    rows = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            rows += describe_fields(value, prefix + f.name + ".")
        else:
            rows.append((prefix + f.name, repr(value), f.metadata.get("doc", "")))
    return rows


def find_config(arg: str) -> str:
    """A CONFIG argument as a file path: the file itself when it exists, else a shipped config of that name.

    `smoke`, `smoke.yaml`, `demo/fmnist_wd` and `configs/smoke.yaml` all name shipped configs, so the
    commands in the README work from any directory once ltbench is installed. A name that is neither
    stops with a one-line error.
    """
    if Path(arg).expanduser().exists():
        return arg
    shipped = repo_or_package_dir("configs")
    rel = arg.removeprefix("configs/")
    for cand in (shipped / rel, shipped / f"{rel}.yaml"):
        if cand.is_file():
            return str(cand)
    raise ConfigError(f"config file {arg}: not found (neither a file here nor a shipped config in {shipped}; "
                      "e.g. `ltbench config smoke` names configs/smoke.yaml)")
