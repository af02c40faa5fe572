"""The config schema: typed sections with defaults, bounds and a doc string per field, the run hash, and the
field listing of `ltbench config --describe`. Every field that changes a reported number lives outside
`runtime`; the run directory name hashes everything except `runtime` and `wandb`."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Any, Literal


from bench.errors import UserError
from bench.registry import CONTRAST, DATASETS, HEADS, LOSSES, POSTHOC


class ConfigError(UserError, ValueError):
    """A bad configuration; the message is one line naming the key and the problem."""


def _f(default: Any, doc: str, *, ge: float | None = None, gt: float | None = None,
       le: float | None = None, choices: Mapping[str, Any] | None = None, path_part: bool = False) -> Any:
    """A dataclass field with a docstring, an optional numeric range, for a name of an extensible kind the
    registry it must be in (bench/registry.py), and whether its value becomes a folder name (a plain name)."""
    meta = {"doc": doc, "ge": ge, "gt": gt, "le": le, "choices": choices, "path_part": path_part}
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

    dataset: str = _f(
        "fashion-mnist", "dataset name; its card in datasets/<name>.yaml supplies the defaults marked 'card'",
        choices=DATASETS)
    root: str | None = _f(None, "directory holding the raw files; None = auto-detect (docs/datasets.md, 'Where the "
                                "data comes from')")
    shards: str | None = _f(None, "directory written by `ltbench prepare` (manifest.json + tar shards) to stream from; "
                                  "None = load the raw files into memory (Fashion-MNIST, CIFAR, synthetic only)")
    shards_manifest: str | None = _f(None, "filled in by ltbench: digest of data.shards/manifest.json, so the run hash "
                                           "names the exact shards (not their path)")
    imbalance_factor: float | None = _f(None, "n_max / n_min of the long-tailed training profile (1 = balanced); None "
                                              "= card (100; fixed by the split files for ImageNet-LT, Places-LT, iNat)",
                                        ge=1)
    profile: Literal["exp", "step", "files"] | None = _f(None, "class-count profile: exp n_c = n_max * IF^(-c/(C-1)); "
                                                               "step = half n_max, half n_max/IF; files = the "
                                                               "dataset's own split files (ImageNet-LT, Places-LT, "
                                                               "iNat); None = card")
    n_max: int | None = _f(None, "images of the largest class; None = the card's pool per class minus val_per_class "
                                 "(HS: 480 for CIFAR-100 with 20 val; 500 without val, as WB)", ge=1)
    rounding: Literal["floor", "round"] = _f("floor", "int() of the profile as in WB/LDAM-DRW (floor) or round() as in "
                                                      "HS")
    selection: Literal["first", "shuffle"] = _f("first", "which n_c images of a class: first in file order (WB code) "
                                                         "or after a seeded shuffle (LDAM-DRW)")
    selection_seed: int = _f(0, "numpy seed of the per-class shuffle when selection=shuffle (LDAM-DRW uses 0)")
    val_per_class: int | None = _f(None, "held-out validation images per class, taken from the training pool after the "
                                         "selected ones (HS: 20); 0 = no val split; None = card (20; fixed by the "
                                         "split files where they define val)", ge=0)
    augment: Literal["crop_flip", "flip", "rrc_flip", "rrc_flip_jitter", "crop_flip_rotate", "none"] = _f(
        "crop_flip", "training augmentation: random crop with zero padding + horizontal flip (WB/CIFAR standard), "
                     "flip only, RandomResizedCrop(image_size, scale 0.08-1, ratio 3/4-4/3) + flip (ImageNet "
                     "standard; shard data only), the same + ColorJitter(0.4, 0.4, 0.4, 0) (RIDE / SADE ImageNet-LT; "
                     "shards, data.decode=cpu), crop + flip + RandomRotation(15) (RIDE / SADE CIFAR; not with "
                     "data.decode=gpu), or none")
    views: list[Literal["crop_flip", "flip", "none", "simclr", "autoaugment_cutout", "randaugment",
                        "crop_colour_blur", "rrc_sim", "rrc_randaugment", "rrc_colour", "rrc_sim_randaugment",
                        "rrc_colour_randaugment"]] = _f(
        [], "several augmented views of each training image, one augmentation per view (PaCo CIFAR: "
            "[autoaugment_cutout, simclr], the query, then the key view; ImageNet-LT: [rrc_randaugment, rrc_sim]; "
            "BCL ImageNet-LT: [rrc_randaugment, rrc_colour, rrc_colour]; GPaCo ImageNet-LT: [rrc_randaugment, "
            "rrc_sim_randaugment]; docs/methods.md); [] = one view, "
            "data.augment; in memory or from shards (data.decode=cpu), stage 1")
    view_blur: Literal["pil", "tensor"] = _f("pil", "the Gaussian blur of the simclr, crop_colour_blur, rrc_sim "
                                                    "and rrc_sim_randaugment views (and SADE's test-time views): "
                                                    "pil = MoCo v2's GaussianBlur as PaCo and SADE copy it (PIL, "
                                                    "radius sigma ~ U(0.1, 2)); tensor "
                                                    "= torchvision's GaussianBlur on tensors, kernel 13 (ltbench "
                                                    "before 2026-12; 3x slower on the CPU)")
    randaugment_n: int = _f(2, "operations per image of timm's RandAugment in the rrc_randaugment, "
                               "rrc_sim_randaugment and rrc_colour_randaugment views (PaCo's and BCL's --randaug_n: "
                               "2; PaCo ResNeXt-101 and GPaCo ResNeXt-50: 3; GPaCo ResNeXt-101: 5)", ge=1)
    crop_padding: int = _f(4, "zero padding of the random crop, pixels", ge=0)
    to_rgb: bool = _f(False, "repeat a one-channel (grey) image to three channels before the model, as the WB "
                             "reference run on Fashion-MNIST-LT did; the first convolution then has three input "
                             "channels (its initial scale is the same, its updates are not)")
    pad_to: int | None = _f(None, "zero-pad images to this size first (e.g. 32 for 28x28 Fashion-MNIST, as the "
                                  "measured reference run did); None = native size", ge=1)
    mean: list[float] | None = _f(None, "per-channel input mean of the normalisation (x/255 - mean) / std (one value = "
                                        "every channel); None = card (the dataset's true statistics); the reference "
                                        "protocols set their codes' CIFAR values (protocols.md)")
    std: list[float] | None = _f(None, "per-channel input std of the normalisation, > 0; None = card; the reference "
                                       "protocols set their codes' CIFAR values, e.g. the commonly copied (0.2023, "
                                       "0.1994, 0.2010)")
    image_size: int | None = _f(None, "shard datasets with large images: training crop and evaluation centre-crop "
                                      "size; None = card (224)", ge=1)
    eval_resize: int | None = _f(None, "shard datasets with large images: shorter side resized to this before the "
                                       "evaluation centre crop; None = card (256)", ge=1)
    streams: int = _f(4, "shards: interleaved shuffled streams per rank; fixes the data order whatever runtime.workers "
                         "is (workers must divide it)", ge=1)
    shuffle_buffer: int = _f(2000, "shards: samples held by each stream's shuffle buffer (the shard order is shuffled "
                                   "too, every epoch)", ge=1)
    on_error: Literal["raise", "skip"] = _f("raise", "shards: a truncated tar, undecodable image or missing label "
                                                     "stops the run (raise) or is skipped, counted and reported in "
                                                     "result.json (skip)")
    input_stats: Literal["card", "model"] | None = _f(None, "where data.mean / data.std (and the input size: "
                                                            "data.resize for in-memory data, data.image_size / "
                                                            "data.eval_resize for shards) come from when they are "
                                                            "unset: the dataset card, or the model's own preprocessing "
                                                            "(timm's pretrained_cfg of model.name: CLIP ViTs use "
                                                            "OpenAI's mean/std at 224 px); None = model when "
                                                            "model.embedding=clip, else card")
    resize: int | None = _f(None, "in-memory images: resize (bilinear) to resize x resize on the device after "
                                  "augmentation, before the model (a foundation model's input size, e.g. 224 for 28-px "
                                  "Fashion-MNIST); None = native size (or the model's input size under "
                                  "input_stats=model)", ge=1)
    decode: Literal["cpu", "gpu"] = _f("cpu", "shards of JPEGs at image_size: decode + crop in the DataLoader workers "
                                              "with PIL (cpu), or read the bytes there and decode, crop and flip the "
                                              "batch on the GPU with nvJPEG (gpu; for when the cores cannot feed the "
                                              "GPU, BENCHMARKS.md); the same crops, pixels differ slightly between "
                                              "decoders")
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


# The class groups of every result: many / medium / few shots by training images per class (GroupsConfig's
# thresholds), the reporting convention of Liu et al. 2019 (OLTR) that WB and HS follow.
GROUPS = ("many", "medium", "few")


@dataclass
class GroupsConfig:
    """Many / medium / few split by TRAINING count n_c (Kang et al. 2020; WB)."""

    many: int | None = _f(None, "many-shot threshold; None = dataset card (100 for CIFAR-100-LT, 1000 for 10-class "
                                "sets)", ge=0)
    few: int | None = _f(None, "few-shot threshold; None = dataset card (20 / 200)", ge=0)
    inclusive: bool = _f(False, "False: many n_c > many, few n_c < few (WB, Decoupling); True: >= and <= (OLTR)")


def _clip_templates() -> list[str]:
    # CLIP's plain prompt (Radford et al. 2021; LIFT's "default" prompt for zero-shot and its head init)
    return ["a photo of a {}."]


@dataclass
class ZeroShotConfig:
    """The zero-shot classifier of model.classifier=zeroshot: class-name prompts through an open_clip text tower."""

    text_model: str = _f("ViT-B-16-quickgelu", "open_clip model name of the text tower (open_clip.list_models(); the "
                                               "OpenAI weights need the -quickgelu variants), or a path to an "
                                               "open_clip model config JSON")
    text_weights_file: str | None = _f(None, "local open_clip checkpoint holding the text tower; None = "
                                             "model.pretrained_file (an open_clip checkpoint holds both towers)")
    templates: list[str] = _f(_clip_templates(), "prompt templates, '{}' = the class name; a class's weight is the "
                                                 "normalised mean of its normalised prompt embeddings")
    class_names_file: str | None = _f(None, "text file with one class name per line in label order; None = the dataset "
                                            "card's class_names")
    logit_scale: float | None = _f(None, "s in logits = s cos(f, t_c); None = the text checkpoint's exp(logit_scale) "
                                         "(CLIP: 100); LIFT trains its cosine classifier with 25", gt=0)


@dataclass
class PeftConfig:
    """Parameter-efficient fine-tuning of the backbone: LoRA through the `peft` library (extra `foundation`),
    AdaptFormer as LIFT uses it (no extra library)."""

    method: Literal["none", "lora", "adaptformer"] = _f("none", "none = every parameter trains as usual; lora = "
                                                                "low-rank adapters W + (alpha/r) B A on target_modules "
                                                                "(Hu et al. 2022), merged into W at the end (final.pt "
                                                                "holds a plain model); adaptformer = a bottleneck "
                                                                "branch s * up(relu(down(LN(x)))) of width r beside "
                                                                "every ViT block's MLP (Chen et al. 2022, as in LIFT), "
                                                                "kept in final.pt; either way only the adapters and "
                                                                "the classifier train")
    r: int = _f(8, "LoRA rank r, or AdaptFormer's bottleneck width (LIFT: 2^int(log2(C / 2L)) for C classes, L blocks)",
                ge=1)
    alpha: float = _f(16.0, "LoRA alpha; the update is scaled by alpha / r (lora only)", gt=0)
    dropout: float = _f(0.0, "dropout on the LoRA branch's input (lora only)", ge=0, le=1)
    target_modules: list[str] = _f(["qkv"], "module names (suffixes) that get LoRA adapters; timm ViTs: qkv (fused "
                                            "attention input), proj (attention output, also matches patch_embed.proj), "
                                            "fc1 / fc2 (MLP); adaptformer goes into every ViT block and ignores this")


@dataclass
class ModelConfig:
    """Backbone + linear classifier, any timm model name (CIFAR ResNets are registered by bench.models)."""

    name: str = _f("resnet32_cifar", "timm model name, e.g. resnet32_cifar, resnet34_wb, resnet50, resnext50_32x4d, "
                                     "vit_base_patch16_clip_quickgelu_224.openai")
    classifier: str = _f("linear", "linear (trained) or a fixed simplex-ETF whose bias alone trains (HS single-stage "
                                   "method), or zeroshot: a cosine classifier s cos(f, v_c) with v_c initialised from "
                                   "class-name prompts through a text tower (model.zeroshot; needs "
                                   "model.embedding=clip), folded into a plain linear layer in final.pt; or cosine: "
                                   "s cos(h, v_c), feature and directions normalised (BCL, LDAM-DRW's NormedLinear; "
                                   "model.cosine_scale)", choices=HEADS)
    pretrained_file: str | None = _f(None, "local weights file to start from (classifier re-initialised when shapes "
                                           "differ); timm or open_clip format (an open_clip checkpoint's image tower "
                                           "is converted by timm)")
    drop_rate: float = _f(0.0, "dropout before the classifier", ge=0, le=1)
    reinit_last_blocks: int = _f(0, "re-initialise the last k backbone blocks of model.pretrained_file as freshly "
                                    "built layers (PyTorch's default initialisation; MiSLAS on Places-LT: 1, a new "
                                    "bottleneck in place of ResNet-152's last)", ge=0)
    zero_init_last: bool | None = _f(None, "timm ResNet / ResNeXt trained from scratch: start the last BatchNorm of "
                                           "every residual block at 0 (timm's default, None = leave it to timm) or "
                                           "at 1 (false: torchvision's zero_init_residual=False, which MiSLAS, PaCo, "
                                           "GPaCo and BCL build)")
    embedding: Literal["pooled", "clip"] = _f("pooled", "what the classifier sees: timm's pooled penultimate feature "
                                                        "(pooled), or for a CLIP image tower (timm vit_*_clip_*) the "
                                                        "CLIP image embedding, the projection of the pooled token, "
                                                        "L2-normalised (clip)")
    cosine_scale: float = _f(30.0, "classifier=cosine: s of z_c = s cos(h, v_c) (BCL: 30; the LDAM-DRW code's "
                                   "NormedLinear: 1, its loss scales by s)", gt=0)
    experts: int = _f(1, "K > 1: the multi-expert model of RIDE / SADE, for the CIFAR ResNets (stem and first stage "
                         "shared) and the timm ResNets / ResNeXts (stem, layer1, layer2 shared): the later stages and "
                         "a cosine classifier per expert; the prediction is the mean of the experts' logits", ge=1)
    expert_width: float = _f(1.0, "experts > 1: each expert's stage widths relative to the single model's (RIDE / "
                                  "SADE: 0.75, 24 / 48 channels instead of 32 / 64 on CIFAR, 192 / 384 planes "
                                  "instead of 256 / 512 on ResNet-50 / ResNeXt-50)", gt=0)
    expert_scale: float = _f(30.0, "experts > 1: s of each expert's cosine classifier, z = s cos(h_k, v_kc) "
                                   "(RIDE / SADE: 30)", gt=0)
    zeroshot: ZeroShotConfig = field(default_factory=ZeroShotConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)


@dataclass
class LossConfig:
    """A training loss by name (bench.methods.losses) and its parameters."""

    name: str = _f(
        "ce", "ce (WB stage 1); cb_ce = class-balanced weighted CE (HS); cb_bce_softmax = the WB code's CB form "
        "(BCE on softmax, per-sample weight); focal; ldam; logit_adjusted (Menon et al.); balanced_softmax; las = "
        "MiSLAS's label-aware smoothing",
        choices=LOSSES)
    label_smoothing: float = _f(0.0, "cross-entropy label smoothing (ce only)", ge=0, le=1)
    cb_beta: float = _f(0.9999, "effective-number beta of the class-balanced weights w_c = (1-beta)/(1-beta^n_c), "
                                "normalised to sum C", ge=0, le=1)
    cb_normalizer: Literal["batch", "weights"] = _f("batch", "what a class-weighted loss (cb_ce, or any loss under "
                                                             "drw_epoch) divides sum_i w_{y_i} l_i by: batch = the "
                                                             "batch size B (the HS code's weighted CE: per-sample "
                                                             "w_{y_i} CE_i, then the plain batch mean); weights = "
                                                             "sum_i w_{y_i} (PyTorch's weight= semantics, as in the "
                                                             "LDAM-DRW code; scales the gradient by 1/mean w_y, ~4.9x "
                                                             "on CIFAR-100-LT IF 100); cb_bce_softmax divides by B*C "
                                                             "(WB code) and takes batch only")
    focal_gamma: float = _f(1.0, "focal loss gamma", ge=0)
    ldam_max_margin: float = _f(0.5, "LDAM largest margin (the rarest class); margins proportional to n_c^(-1/4)", gt=0)
    ldam_scale: float = _f(30.0, "LDAM logit scale s", gt=0)
    la_tau: float = _f(1.0, "logit-adjusted loss: logits + tau * log(prior) (balanced_softmax = tau 1 with counts)",
                       ge=0)
    drw_epoch: int | None = _f(None, "deferred re-weighting: from this 0-based epoch on, weight the loss by CB weights "
                                     "(LDAM-DRW: 160 of 200); None = off", ge=0)
    las_head: float = _f(0.4, "label-aware smoothing (las, MiSLAS): the smoothing eps_1 of the largest class", ge=0,
                         le=1)
    las_tail: float = _f(0.1, "label-aware smoothing: the smoothing eps_K of the smallest class", ge=0, le=1)
    las_shape: Literal["concave", "linear"] = _f("concave", "label-aware smoothing from eps_K to eps_1 over the class "
                                                            "counts: concave = eps_K + (eps_1 - eps_K) sin(pi (n_c - "
                                                            "n_K) / (2 (n_1 - n_K))) (MiSLAS's default); linear")
    ride_diversity: float = _f(-0.2, "ride: lambda of the diversity term lambda T^2 KL(softmax(mean z / T) || "
                                     "softmax(z_k / T)) per expert (RIDE's code: -0.2; its CIFAR configs -0.45)")
    ride_temperature: float = _f(1.0, "ride: the base temperature T of the diversity term", gt=0)
    ride_temperature_factor: float = _f(0.05, "ride: class-wise temperatures from DRW's epoch on, T_c = T w_c / max "
                                              "w, w_c = C pi_c a + 1 - a (RIDE's reweight_factor a)", ge=0, le=1)
    sade_tau: float = _f(2.0, "sade: the third expert's CE(z + log pi - tau log pi~), pi~ the prior mirrored by "
                              "rank (SADE: 2 on CIFAR-LT / ImageNet-LT, 1 on iNaturalist / Places-LT)", ge=0)


@dataclass
class ContrastConfig:
    """Supervised contrastive learning with class centres (PaCo, GPaCo): a projection of the pooled feature, a queue
    of past keys with their labels, and the loss that puts the linear classifier's logits and the contrastive
    similarities in one softmax (bench/methods/contrast.py). Needs two data.views (query, key)."""

    method: str | None = _f(None, "paco: a momentum key encoder (MoCo) gives the key view's projection; gpaco: the "
                                  "key view goes through the same encoder and both views are anchors; bcl: train.loss "
                                  "on view 0 + weight x balanced contrastive loss of views 1, 2 and class prototypes "
                                  "(needs model.classifier=cosine); None = off", choices=CONTRAST)
    dim: int = _f(128, "projection output (MoCo's dim; PaCo CIFAR: 32)", ge=1)
    hidden: int | None = _f(None, "projection hidden width; None = the backbone's feature width (PaCo: 2048 on "
                                  "ResNet-50, 64 on ResNet-32)", ge=1)
    projection: Literal["mlp2_bn", "mlp3"] = _f("mlp2_bn", "mlp2_bn: Linear-BN-ReLU-Linear (PaCo's MoCo v2 MLP); "
                                                           "mlp3: Linear-ReLU-Linear-ReLU-Linear, no BN (GPaCo's)")
    queue: int = _f(8192, "keys kept from past batches, with their labels (PaCo ImageNet-LT: 8192; CIFAR: 1024)", ge=1)
    momentum: float = _f(0.999, "paco: key encoder <- m key encoder + (1 - m) query encoder before every step",
                         ge=0, le=1)
    temperature: float = _f(0.2, "T of the contrastive similarities q.k / T (PaCo ImageNet-LT: 0.2, X50 0.07; "
                                 "CIFAR: 0.05)", gt=0)
    alpha: float = _f(0.05, "weight of the contrastive positives (PaCo CIFAR-100-LT: 0.01)", ge=0)
    beta: float = _f(1.0, "weight of the class-centre positive", ge=0)
    gamma: float = _f(1.0, "weight of the contrastive terms in the denominator", ge=0)
    weight: float = _f(0.35, "bcl: weight of the balanced contrastive term added to train.loss (BCL: 0.35)", ge=0)
    gather: bool = _f(False, "bcl under DDP: contrast each anchor with the views of the whole global batch (every "
                             "rank's, gathered with their gradients), as BCL's DataParallel computes its loss on the "
                             "whole batch; false: each process contrasts its own part")


@dataclass
class DistillConfig:
    """Knowledge distillation from a finished teacher run (RIDE's RIDELossWithDistill: a 6-expert RIDE model teaches
    a smaller one): loss = r (train.loss + weight T^2 KL(softmax(t / T) || softmax(z / T))), z and t the student's
    and the teacher's predictions (the experts' mean logits), a batch mean; docs/methods.md."""

    teacher: str | None = _f(None, "the teacher: its run directory or experiment YAML (found under the same runs "
                                   "root, same seed), a finished run on the same dataset; None = no distillation")
    teacher_hash: str | None = _f(None, "filled in by ltbench: the config hash of `teacher` (part of this run's hash)")
    teacher_run: str | None = _f(None, "filled in by ltbench when `teacher` is a YAML: the teacher's run directory "
                                       "under the runs root, <name>/<run name> (not in the hash, teacher_hash is)")
    temperature: float = _f(1.0, "T of the distillation term (RIDE's code default 1; its configs 1.5)", gt=0)
    weight: float = _f(1.0, "weight of the distillation term (RIDE's additional_distill_loss_factor)", ge=0)
    teacher_bn: Literal["train", "eval"] = _f("train", "the teacher's BatchNorm while it teaches: train (batch "
                                                       "statistics, as RIDE's trainer, which never sets it to eval) "
                                                       "or eval (its running statistics)")
    repeat: Literal["experts", "once"] = _f("experts", "experts: the whole loss counted once per student expert, r = "
                                                        "K (RIDE's loop over the experts adds it K times); once: r = 1")


@dataclass
class TrainConfig:
    """Stage-1 optimisation (WB: CE, SGD lr 0.01 momentum 0.9, cosine to 0, WD on all parameters)."""

    epochs: int = _f(20, "training epochs; 0 = evaluate the model as built (a zero-shot classifier)", ge=0)
    batch_size: int = _f(64, "GLOBAL batch size, summed over DDP processes (each takes batch_size / world size); "
                             "WB: 64", ge=1)
    lr: float = _f(0.01, "base learning rate", gt=0)
    lr_scaling: Literal["none", "linear"] = _f("none", "none: lr as given; linear: lr * batch_size / lr_base_batch "
                                                       "(Goyal et al. 2017)")
    lr_base_batch: int = _f(256, "the batch size `lr` refers to when lr_scaling=linear", ge=1)
    freeze_convs: bool = _f(False, "freeze every convolution's weights but those of the model's last block (PaCo's and "
                                   "GPaCo's Places-LT script: disable_conv, layer4[-1] trainable); BatchNorm, the "
                                   "projection and the classifier train; stage 1")
    train_only_last_blocks: int = _f(0, "k > 0: only the last k backbone blocks and the head (the classifier, with "
                                        "its norm where the head has one) train; the rest "
                                        "is frozen and stays in eval mode, its BatchNorm statistics as loaded "
                                        "(MiSLAS on Places-LT: 1, a new block on a frozen ImageNet ResNet-152); "
                                        "0 = the whole model trains; stage 1", ge=0)
    amp: Literal["none", "bf16", "fp16"] = _f("none", "mixed precision: autocast to bf16, or fp16 with a gradient "
                                                      "scaler (saved in checkpoints); none on CPU")
    momentum: float = _f(0.9, "SGD momentum", ge=0, le=1)
    nesterov: bool = _f(False, "Nesterov momentum")
    weight_decay: float = _f(5e-3, "L2 weight decay lambda (WB CIFAR-100-LT tuned value 5e-3; naive baseline 0)", ge=0)
    wd_scope: Literal["all", "no_norm_bias"] = _f("all", "which parameters decay: all (WB: conv, BN, biases, fc) or "
                                                         "all but norm/bias (timm's default)")
    schedule: Literal["cosine", "constant", "step"] = _f("cosine", "learning-rate schedule: cosine annealed to 0; "
                                                                   "constant; step: times lr_step_gamma after each "
                                                                   "epoch of lr_milestones (MiSLAS / LDAM-DRW CIFAR)")
    lr_milestones: list[int] = _f([], "schedule=step: the epochs after which the lr is multiplied by lr_step_gamma, "
                                      "counted from the run's start, warm-up included (MiSLAS CIFAR: [160, 180])")
    lr_step_gamma: float = _f(0.1, "schedule=step: the factor applied at each milestone", gt=0, le=1)
    schedule_unit: Literal["step", "epoch"] = _f("epoch", "update the lr every optimiser step or once per epoch")
    schedule_step_at_epoch_start: bool = _f(False, "WB reference: the per-epoch scheduler steps before each epoch, so "
                                                   "epoch 1 already runs decayed")
    warmup_epochs: int = _f(0, "linear warm-up epochs before the schedule", ge=0)
    warmup_unit: Literal["step", "epoch"] = _f("step", "warm-up ramp per optimiser step, lr (t + 1) / T_w; or per "
                                                       "epoch, lr e / warmup_epochs in warm-up epoch e = 1, 2, ... "
                                                       "(the MiSLAS and LDAM-DRW codes)")
    loss: LossConfig = field(default_factory=LossConfig)
    backbone_lr_factor: float = _f(1.0, "the lr of every parameter but the classifier's, as a fraction of lr (SADE "
                                        "Places-LT: 0.1, its share_lr 0.001 for the pretrained ResNet-152 beside "
                                        "0.01 for the experts' classifiers)", gt=0, le=1)
    contrast: ContrastConfig = field(default_factory=ContrastConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    drop_last: bool = _f(False, "drop the last incomplete batch of an epoch")
    wd_in_loss: float = _f(0.0, "HS: add lambda/2 * sum ||theta||^2 over the trained parameters to the loss (use with "
                                "weight_decay 0)", ge=0)
    feature_reg: float = _f(0.0, "HS feature regularisation lambda_FR/2 * mean_i ||h_i||^2 on the pooled penultimate "
                                 "feature (HS: 0.01)", ge=0)
    mixup_alpha: float = _f(0.0, "mixup (MiSLAS stage 1: 1.0): per batch lambda ~ Beta(alpha, alpha) and a "
                                 "permutation, x <- lambda x + (1 - lambda) x[perm], loss lambda L(z, y) + "
                                 "(1 - lambda) L(z, y[perm]); 0 = off. Stage 1 only", ge=0)
    sampler: Literal["instance", "class_balanced", "class_aware"] = _f("instance", "instance-balanced (shuffle); "
                                                                                   "class_balanced: each draw a "
                                                                                   "uniform class, then a uniform "
                                                                                   "image of it, N draws an epoch; "
                                                                                   "class_aware: the Decoupling code's "
                                                                                   "ClassAwareSampler (cRT, LWS): "
                                                                                   "classes in random cycles, 4 images "
                                                                                   "of a class per turn, max_c n_c x C "
                                                                                   "samples an epoch")
    epoch_length: Literal["sampler", "dataset", "dataset_plus_one"] = _f(
        "sampler", "steps of a class_aware / class_balanced epoch: the sampler's own; dataset: ceil(N / batch_size); "
        "dataset_plus_one: one more (MiSLAS stage 2 breaks its class-aware loader after batch ceil(N / B) + 1)")


def _stage2_train() -> TrainConfig:
    # WB stage 2 (Alshammari et al. 2022): 10 epochs, SGD lr 0.01 momentum 0.9, cosine, WD 0.1, CB loss.
    return TrainConfig(epochs=10, lr=0.01, weight_decay=0.1, loss=LossConfig(name="cb_ce"))


@dataclass
class Stage2Config:
    """Classifier learning on the frozen backbone of a finished stage-1 run (WB stage 2, cRT)."""

    train: TrainConfig = field(default_factory=_stage2_train)
    maxnorm: bool = _f(True, "MaxNorm by projected gradient descent on the classifier rows (bias unconstrained)")
    maxnorm_thresh: float = _f(0.1, "radius = min + thresh * (max - min) of the stage-1 per-class weight norms",
                               ge=0, le=1)
    maxnorm_cadence: Literal["step", "epoch"] = _f("step", "project after every step (WB paper) or once per epoch (WB "
                                                           "code)")
    reinit_classifier: bool = _f(False, "cRT (Kang et al. 2020): re-initialise the classifier (timm's nn.Linear init, "
                                        "seeded) before stage 2 instead of starting from the stage-1 rows (WB); the "
                                        "MaxNorm radius still comes from the stage-1 rows")
    lws: bool = _f(False, "LWS (Kang et al. 2020): keep the stage-1 classifier frozen and learn one scale per class, "
                          "logits s_c (W_c h + b_c) with s initialised to 1; folded into the classifier at the end, so "
                          "final.pt holds a plain linear layer")
    lws_rows_lr_factor: float = _f(0.0, "with lws: the classifier's rows and bias train too, at this fraction of "
                                        "the scales' lr (MiSLAS stage 2: 0.2 on CIFAR-100-LT IF 100); 0 = frozen rows "
                                        "(Kang et al.)", ge=0)
    router: bool = _f(False, "RIDE's expert-assignment router on a multi-expert parent (its ea_resnet_cifar.py): the "
                             "experts frozen (BatchNorm in eval mode), only the routers train, with BCE against 'the "
                             "experts so far are wrong and a further one is right'; at test an image uses experts "
                             "while its router says so")
    router_top: int = _f(30, "router: the top-k values of the running mean logits each router reads (RIDE: 30)", ge=1)
    router_pos_weight: float = _f(100.0, "router: BCE weight of the positive (consult a further expert) targets "
                                         "(RIDE's CIFAR config: 100)", gt=0)
    train_blocks: int = _f(0, "also retrain the last k backbone blocks (timm's group_matcher order); 0 = classifier "
                              "only (WB)", ge=0)
    bn_mode: Literal["train", "eval"] = _f("eval", "BatchNorm of the frozen backbone: eval, or train as in the WB code "
                                                   "(running stats keep moving)")
    bn_last_blocks: int = _f(0, "bn_mode=train: only the BatchNorm of the last k backbone blocks re-estimates its "
                                "statistics, the rest keeps its parent's (MiSLAS on Places-LT: 1, the block its "
                                "stage 1 trained on a frozen trunk); 0 = every BatchNorm", ge=0)
    augment: Literal["crop_flip", "flip", "crop_flip_rotate", "rrc_flip", "rrc_flip_jitter", "none"] = _f(
        "none", "stage-2 training augmentation (the WB code keeps crop+flip; RIDE's router stage crop + flip + "
                "rotation; MiSLAS on ImageNet-LT / iNaturalist its stage-1 rrc_flip_jitter; rrc_*: shards only)")
    cache_features: bool = _f(True, "with augment=none, bn_mode=eval and train_blocks=0, extract features once and "
                                    "train the classifier on them")


@dataclass
class PosthocConfig:
    """A training-free adjustment of a finished run's classifier or logits."""

    kind: str = _f(
        "taunorm", "l2norm: W_k/||W_k||; taunorm: W_k/||W_k||^tau; la_add: z - tau log pi; la_mult (HS): z * pi^-tau; "
                   "sade_tta: SADE's test-time self-supervised aggregation of a multi-expert parent's experts, "
                   "fitted on the unlabeled test images (transductive)", choices=POSTHOC)
    tau: float | None = _f(None, "fixed tau; None = chosen on eval.selection_split from tau_grid (recorded in "
                                 "result.json)", ge=0)
    tau_grid: list[float] = _f([round(0.1 * i, 2) for i in range(21)], "candidate taus when tau is None")
    tta_epochs: int = _f(5, "sade_tta: passes over the test images fitting the experts' weights (SADE: up to 5, "
                            "stopping once a weight, rounded to 2 decimals, is below tta_min_weight)", ge=1)
    tta_lr: float = _f(0.1, "sade_tta: SGD lr of the weights' logits (momentum 0.9, Nesterov, as SADE)", gt=0)
    tta_weight_decay: float = _f(5e-4, "sade_tta: weight decay of the weights' logits", ge=0)
    tta_batch_size: int = _f(128, "sade_tta: test images per step", ge=1)
    tta_min_weight: float = _f(0.05, "sade_tta: stop after the pass that leaves an expert's weight below this",
                               ge=0, le=1)


@dataclass
class EvalConfig:
    """Evaluation and model selection."""

    selection_split: Literal["val", "test"] = _f("val", "split evaluated every epoch and used to pick the best epoch; "
                                                        "'test' is the WB CIFAR protocol (peeks at test)")
    select: Literal["best", "last"] = _f("last", "report test metrics of the best epoch on the selection split "
                                                 "(highest 'all' = top-1 over its images; on a balanced val split this "
                                                 "is the mean per-class accuracy HS selects by), or of the last epoch")
    tta_flip: bool = _f(False, "reported metrics (test and val in result.json): average the logits of x and its "
                               "horizontal flip (the WB code reports with it, HS without)")
    select_tta_flip: bool = _f(False, "the same flip TTA for selection: the per-epoch evaluation of the selection "
                                      "split (best epoch, metrics.jsonl) and the post-hoc tau search (the WB code "
                                      "selects on plain logits)")
    batch_size: int = _f(500, "evaluation batch size", ge=1)
    analysis_each_epoch: bool = _f(False, "also log weight norms, FDR and feature cosine of the selection split after "
                                          "every epoch (metrics.jsonl)")


@dataclass
class RuntimeConfig:
    """How the run executes; never changes a reported number, so it is not part of the run hash."""

    device: Literal["auto", "cpu", "cuda"] = _f("auto", "auto = cuda when available")
    threads: int | None = _f(None, "torch intra-op threads; None = the cores of this process (cores / processes on the "
                                   "node) minus its shard-decoding workers", ge=1)
    deterministic: bool = _f(True, "torch.use_deterministic_algorithms (without its NaN fill of new tensors): "
                                   "bit-exact resume on CPU")
    keep_freed_memory: bool = _f(True, "glibc malloc keeps freed blocks up to 256 MiB for reuse instead of unmapping "
                                       "them (CPU training otherwise re-faults its activations' pages every step: ~10 "
                                       "% of a step, BENCHMARKS.md); false = glibc's defaults, memory returned to the "
                                       "OS sooner")
    checkpoint_every_steps: int = _f(0, "also checkpoint every N optimiser steps inside an epoch (0 = epoch ends only)",
                                     ge=0)
    progress: Literal["auto", "on", "off"] = _f("auto", "per-epoch progress bar: auto = only on a terminal")
    plot: bool = _f(True, "write per_class.png (per-class accuracy against class size)")
    channels_last: bool = _f(False, "GPU speed: model and inputs in channels_last memory format")
    compile: bool = _f(False, "GPU speed: torch.compile the training forward")
    cudnn_benchmark: bool = _f(False, "GPU speed: cudnn.benchmark autotuning (needs deterministic=false)")
    workers: int | None = _f(None, "DataLoader worker processes decoding shards (must divide data.streams; 0 = decode "
                                   "in the training process); None = by cores per process: 0 up to 2 cores (workers "
                                   "would compete with the training threads, BENCHMARKS.md), else half of them, at "
                                   "most data.streams", ge=0)


@dataclass
class WandbConfig:
    """Weights & Biases tracking; never changes a reported number, so it is not part of the run hash.
    The API key comes from `wandb login` / WANDB_API_KEY only: it has no config field, so it can never land in a
    config or log file."""

    mode: Literal["online", "offline", "disabled"] | None = _f(None, "None = the WANDB_MODE environment variable, else "
                                                                     "offline (files under <run>/wandb, `wandb sync` "
                                                                     "later)")
    project: str = _f("ltbench", "W&B project (WANDB_PROJECT overrides it when set)")
    entity: str | None = _f(None, "W&B entity (team or user); None = the account's default (or WANDB_ENTITY)")
    tags: list[str] = _f([], "extra tags; method, dataset, stage and protocol are always added")
    init_timeout: float = _f(60.0, "seconds wandb.init may take (online) before tracking is given up for this run",
                             gt=0)
    finish_timeout: float = _f(60.0, "seconds the end of a run waits for W&B to catch up before leaving it", gt=0)


# Fields added after run directories were first named (dotted key -> default): out of the run hash while at
# their default, so an upgrade keeps every existing run directory and its hash.
# The data.views that blur (data.view_blur); SADE's test-time aggregation (posthoc sade_tta) blurs its views too
BLUR_VIEWS = {"simclr", "crop_colour_blur", "rrc_sim", "rrc_sim_randaugment"}
# The data.views with timm's RandAugment, whose number of operations data.randaugment_n sets
RANDAUGMENT_VIEWS = {"rrc_randaugment", "rrc_sim_randaugment", "rrc_colour_randaugment"}
# train.distill's fields that say where the teacher is (not what it is): out of the hash
DISTILL_LOCATION = ("teacher", "teacher_run")
_hashed_distill = {k: v for k, v in dataclasses.asdict(DistillConfig()).items() if k not in DISTILL_LOCATION}
HASH_NEUTRAL_AT_DEFAULT: dict[str, Any] = {"data.to_rgb": False, "stage2.reinit_classifier": False,
                                           "stage2.lws": False, "data.input_stats": "card", "data.resize": None,
                                           "model.embedding": "pooled", "stage2.lws_rows_lr_factor": 0.0,
                                           "model.experts": 1, "model.expert_width": 1.0, "model.expert_scale": 30.0,
                                           "stage2.router": False, "stage2.router_top": 30,
                                           "stage2.router_pos_weight": 100.0,
                                           "model.cosine_scale": 30.0, "posthoc.tta_epochs": 5, "posthoc.tta_lr": 0.1,
                                           "posthoc.tta_weight_decay": 5e-4, "posthoc.tta_batch_size": 128,
                                           "posthoc.tta_min_weight": 0.05,
                                           "data.views": [], "data.randaugment_n": 2, "model.zero_init_last": None,
                                           "model.reinit_last_blocks": 0, "stage2.bn_last_blocks": 0,
                                           # the section while it is all default, then each field (a field
                                           # added later keeps the hashes of the configs that use the section)
                                           **{f"{t}.contrast": dataclasses.asdict(ContrastConfig())
                                              for t in ("train", "stage2.train")},
                                           **{f"{t}.contrast.{k}": v for t in ("train", "stage2.train")
                                              for k, v in dataclasses.asdict(ContrastConfig()).items()},
                                           **{f"{t}.distill": _hashed_distill for t in ("train", "stage2.train")},
                                           **{f"{t}.distill.{k}": v for t in ("train", "stage2.train")
                                              for k, v in _hashed_distill.items()},
                                           "model.zeroshot": dataclasses.asdict(ZeroShotConfig()),
                                           "model.peft": dataclasses.asdict(PeftConfig()),
                                           **{f"{t}.{k}": v for t in ("train", "stage2.train") for k, v in (
                                               ("mixup_alpha", 0.0), ("loss.las_head", 0.4), ("loss.las_tail", 0.1),
                                               ("loss.las_shape", "concave"), ("loss.ride_diversity", -0.2),
                                               ("loss.ride_temperature", 1.0), ("loss.ride_temperature_factor", 0.05),
                                               ("loss.sade_tau", 2.0), ("lr_milestones", []),
                                               ("lr_step_gamma", 0.1), ("warmup_unit", "step"), ("freeze_convs", False),
                                               ("epoch_length", "sampler"), ("backbone_lr_factor", 1.0),
                                               ("train_only_last_blocks", 0))}}


@dataclass
class Config:
    """One experiment: a stage-1 training run on a long-tailed dataset."""

    name: str = _f("default", "experiment name; runs go to <runs-root>/<name>/<method>-seed<seed>-<hash> (a plain "
                   "name: letters, digits, '.', '_', '-', starting with a letter or digit)", path_part=True)
    method: str = _f("ce", "method label used in tables (e.g. naive, wd, wb); part of the run directory's name (a "
                     "plain name, as `name`)", path_part=True)
    protocol: Literal["custom", "clean", "wb-reference", "hs-reference", "mislas-reference", "ride-reference",
                      "sade-reference", "paco-reference"] = _f(
        "custom", "named protocol whose settings the config must follow (see PROTOCOLS): clean = select on a held-out "
        "validation split, never peek at test; wb-reference = the WB code's CIFAR protocol; hs-reference = the HS "
        "code's; mislas-, ride-, sade-, paco-reference = those codes' CIFAR cut and best-on-test selection; "
        "custom = no constraint")
    seed: int = _f(0, "seed of weight init, data order and augmentation", ge=0)
    stage: Literal["stage1", "stage2", "posthoc"] = _f("stage1", "stage1: train a model; stage2: retrain the "
                                                                 "classifier of `parent`; posthoc: adjust `parent` "
                                                                 "without training")
    parent: str | None = _f(None, "stage2/posthoc: the run they start from: its run directory, or its experiment YAML "
                                  "(found under the same runs root, same seed)")
    parent_hash: str | None = _f(None, "filled in by ltbench: the config hash of `parent` (part of this run's hash)")
    parent_run: str | None = _f(None, "filled in by ltbench when `parent` is a YAML: the parent's run directory under "
                                      "the runs root, <name>/<run name> (where the lineage was resolved; not in the "
                                      "hash, parent_hash is)")
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
        """The fields that can change a result: all but `runtime` / `wandb`, the sections of other stages, the "
          "parent's path."""
        d = self.to_dict()
        for key in ["runtime", "wandb", "parent", "parent_run"] + [k for k in ("stage2", "posthoc") if k != self.stage]:
            d.pop(key)
        # Where the files are; selection_hash / the shard manifest's digest in run.json record what was read.
        d["data"].pop("root")
        d["data"].pop("shards")
        blurs = bool(BLUR_VIEWS & set(self.data.views)) or (self.stage == "posthoc" and self.posthoc.kind == "sade_tta")
        if not blurs:
            d["data"].pop("view_blur")    # no blurred view: the field cannot change the result (nor old hashes)
        for train in (d["train"], d.get("stage2", {}).get("train", {})):
            for key in DISTILL_LOCATION:       # where the teacher is; teacher_hash says which run it is
                train.get("distill", {}).pop(key, None)
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
