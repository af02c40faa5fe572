"""Write the configs of the published experiments: CIFAR-LT (WB Table 1 rows and the HS method) and the
large-scale ones (ImageNet-LT, iNaturalist 2018, Places-LT), which stream from shards.

    python configs/paper/generate.py      # rewrites configs/paper/<experiment>/*.yaml

The large-scale configs read `data.shards: ${LTBENCH_SHARDS}/<dataset>` (prepare the shards with
`ltbench prepare`, then export LTBENCH_SHARDS). tests/unit/test_paper_configs.py checks that the committed files equal this script's output and load.
WB rows follow the `wb-reference` protocol (the published numbers were selected on test, reported with flip
TTA); the HS rows follow `hs-reference`, the HS code's protocol (20 validation images per class, n_max =
pool - 20, round(), WD in the loss with SGD's weight_decay 0, scheduler stepped before each epoch, the best
epoch on val, multiplicative LA fitted on that model with tau chosen on val). What the HS paper sets per
dataset (lr, WD and FR lambdas, epochs, batch) is written here. MiSLAS, RIDE, SADE and PaCo follow their codes'
protocols (`mislas-reference`, `ride-reference`, `sade-reference`, `paco-reference`: LDAM-DRW's CIFAR cut, the best
test epoch); run any of them with `protocol=clean data.selection_seed=... ` overrides to get its clean counterpart.
"""

from __future__ import annotations

from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent

# (experiment folder, dataset, imbalance factor)
EXPERIMENTS = [("cifar100_lt_if100", "cifar100", 100), ("cifar100_lt_if50", "cifar100", 50),
               ("cifar100_lt_if10", "cifar100", 10), ("cifar10_lt_if100", "cifar10", 100)]

# HS multiplicative-LA tau grid; the HS paper reports tau 0.65 (CIFAR-100-LT) and 1.6 (CIFAR-10-LT), chosen on
# val: the configs choose it on val again, from this grid.
HS_TAU_GRID = [round(0.05 * i, 2) for i in range(41)]


def hs_configs(name: str, data: dict, model: dict, train: dict) -> dict[str, dict]:
    """HS single stage (ETF classifier, WD in the loss, FR) and its multiplicative LA, under hs-reference."""
    return {
        "hs_stage1": {"name": name, "method": "hs-stage1", "protocol": "hs-reference", "data": data,
                      "model": {**model, "classifier": "etf"}, "train": train},
        "hs": {"name": name, "method": "hs", "protocol": "hs-reference", "stage": "posthoc",
               "parent": "hs_stage1.yaml", "posthoc": {"kind": "la_mult", "tau": None, "tau_grid": HS_TAU_GRID}},
    }


def stage1(name: str, dataset: str, imb: int) -> dict:
    return {
        "name": name, "protocol": "wb-reference",
        "data": {"dataset": dataset, "imbalance_factor": imb, "profile": "exp", "selection": "first",
                 "augment": "crop_flip", "crop_padding": 4},
        # the WB code's ResNet-34 variant; the paper reports ResNet-32, with 200 epochs instead of 320
        "model": {"name": "resnet34_wb"},
        "train": {"epochs": 320, "batch_size": 64, "lr": 0.01, "momentum": 0.9, "weight_decay": 5.0e-3,
                  "wd_scope": "all", "schedule": "cosine"},
    }


def stage2(name: str, method: str, weight_decay: float, maxnorm: bool) -> dict:
    return {
        "name": name, "method": method, "protocol": "wb-reference", "stage": "stage2", "parent": "wd.yaml",
        "stage2": {"train": {"epochs": 10, "batch_size": 64, "lr": 0.01, "momentum": 0.9,
                             "weight_decay": weight_decay, "loss": {"name": "cb_bce_softmax", "cb_beta": 0.9999}},
                   "maxnorm": maxnorm, "maxnorm_thresh": 0.1},
    }


# MiSLAS (Zhong et al. 2021) stage 2 per CIFAR experiment, from the code's config/<dataset>/*_stage2_mislas.yaml:
# (label-aware smoothing eps_1, eps_K; the classifier's lr_factor; shift_bn = BN statistics re-estimated)
MISLAS_STAGE2 = {("cifar100", 100): (0.4, 0.1, 0.2, True), ("cifar100", 50): (0.3, 0.0, 0.1, True),
                 ("cifar100", 10): (0.2, 0.0, 0.1, True), ("cifar10", 100): (0.3, 0.0, 0.5, False)}


def mislas_configs(name: str, dataset: str, imb: int) -> dict[str, dict]:
    """MiSLAS under mislas-reference: ResNet-32, 200 epochs of CE + mixup (alpha 1, warm-up 5, lr x0.1 after 160
    and 180), then 10 epochs of the stage-1 classifier x learned scales with label-aware smoothing."""
    head, tail, rows_lr, shift_bn = MISLAS_STAGE2[(dataset, imb)]
    opt = {"batch_size": 128, "lr": 0.1, "momentum": 0.9, "weight_decay": 2.0e-4}
    return {
        "mixup": {"name": name, "method": "mixup", "protocol": "mislas-reference",
                  "data": {"dataset": dataset, "imbalance_factor": imb, "augment": "crop_flip", "crop_padding": 4},
                  "model": {"name": "resnet32_cifar"},
                  "train": {"epochs": 200, **opt, "schedule": "step", "lr_milestones": [160, 180],
                            "warmup_epochs": 5, "mixup_alpha": 1.0}},
        "mislas": {"name": name, "method": "mislas", "protocol": "mislas-reference", "stage": "stage2",
                   "parent": "mixup.yaml",
                   "stage2": {"train": {"epochs": 10, **opt, "loss": {"name": "las", "las_head": head, "las_tail": tail}},
                              "lws_rows_lr_factor": rows_lr, "bn_mode": "train" if shift_bn else "eval"}},
    }


def expert_configs(name: str, dataset: str, imb: int) -> dict[str, dict]:
    """RIDE (its configs/config_imbalance_cifar100_ride.json, CIFAR-100-LT IF 100 only) and SADE (its
    configs/config_cifar100_ir{100,50,10}_sade.json) under ride-reference / sade-reference (LDAM-DRW's CIFAR cut, the
    best test epoch, per-epoch lr): ResNet-32 with 3 experts at 3/4 width and cosine classifiers x30, SGD lr 0.1
    Nesterov, WD 5e-4, batch 128, 200 epochs, warm-up 5, then x gamma after 160 and 180 (RIDE 0.01, SADE 0.1)."""
    if dataset != "cifar100":
        return {}
    # their ImbalanceCIFAR100DataLoader: RandomCrop(32, 4), RandomHorizontalFlip, RandomRotation(15)
    data = {"dataset": dataset, "imbalance_factor": imb, "augment": "crop_flip_rotate", "crop_padding": 4}
    model = {"name": "resnet32_cifar", "experts": 3, "expert_width": 0.75, "expert_scale": 30.0}
    train = {"epochs": 200, "batch_size": 128, "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5.0e-4,
             "schedule": "step", "lr_milestones": [160, 180], "warmup_epochs": 5}
    out = {"sade": {"name": name, "method": "sade", "protocol": "sade-reference", "data": data, "model": model,
                    "train": {**train, "lr_step_gamma": 0.1, "loss": {"name": "sade", "sade_tau": 2.0}}},
           # its configs/test_time_cifar100_ir*_sade.json: SGD lr 0.1, WD 5e-4, 5 epochs, batch 128
           "sade_tta": {"name": name, "method": "sade-tta", "protocol": "sade-reference", "stage": "posthoc",
                        "parent": "sade.yaml", "posthoc": {"kind": "sade_tta", "tta_epochs": 5, "tta_lr": 0.1,
                                                           "tta_weight_decay": 5.0e-4, "tta_batch_size": 128}}}
    if imb == 100:
        out["ride"] = {"name": name, "method": "ride", "protocol": "ride-reference", "data": data, "model": model,
                       "train": {**train, "lr_step_gamma": 0.01,
                                 "loss": {"name": "ride", "ride_diversity": -0.45, "drw_epoch": 160,
                                          "cb_beta": 0.9999, "cb_normalizer": "weights", "ldam_max_margin": 0.5,
                                          "ldam_scale": 30.0}}}
        # its configs/config_imbalance_cifar100_ride_ea.json: the routers alone, 5 epochs, batch 512 from its
        # class-balanced sampler, SGD lr 0.01 Nesterov WD 5e-4, cosine per epoch; top 30, pos_weight 100
        router = {"router": True, "router_top": 30, "router_pos_weight": 100.0, "maxnorm": False,
                  "augment": "crop_flip_rotate", "bn_mode": "eval",
                  "train": {"epochs": 5, "batch_size": 512, "lr": 0.01, "momentum": 0.9, "nesterov": True,
                            "weight_decay": 5.0e-4, "schedule": "cosine", "sampler": "class_balanced"}}
        out["ride_ea"] = {"name": name, "method": "ride-ea", "protocol": "ride-reference", "stage": "stage2",
                          "parent": "ride.yaml", "stage2": router}
        # config_imbalance_cifar100_ride_teacher.json (6 experts, else as ride) and _distill_ride.json (3 experts
        # distilled from it: RIDELossWithDistill, T 1.5, warm-up 20), then the router on the distilled experts
        out["ride_teacher"] = {**out["ride"], "method": "ride-teacher", "model": {**model, "experts": 6}}
        out["ride_distill"] = {**out["ride"], "method": "ride-distill", "train": {
            **out["ride"]["train"], "warmup_epochs": 20,
            "distill": {"teacher": "ride_teacher.yaml", "temperature": 1.5}}}
        out["ride_distill_ea"] = {**out["ride_ea"], "method": "ride-distill-ea", "parent": "ride_distill.yaml"}
    return out


def paco_config(name: str, dataset: str, imb: int) -> dict[str, dict]:
    """PaCo on CIFAR-100-LT (its PaCo/LT/sh/CIFAR100_train_imb*.sh with paco_cifar.py) under paco-reference (LDAM-DRW's
    CIFAR cut, the best test epoch it prints, per-epoch lr): ResNet-32, a 64-64-32 MLP projection with BN, queue 1024,
    T 0.05, alpha 0.01, beta = gamma = 1, the query view AutoAugment + Cutout and the key view SimCLR-style, SGD lr 0.05
    momentum 0.9 WD 5e-4, batch 128 dropping the last, 400 epochs: warm-up 10, x0.1 after epoch 320, x0.01 after 360.
    Its warm-up runs one epoch more (`epoch <= 10`: epoch 11 at 1.1 x lr), which these do not."""
    if dataset != "cifar100":
        return {}
    return {"paco": {
        "name": name, "method": "paco", "protocol": "paco-reference",
        "data": {"dataset": dataset, "imbalance_factor": imb, "augment": "none",
                 "views": ["autoaugment_cutout", "simclr"], "crop_padding": 4},
        "model": {"name": "resnet32_cifar"},
        "train": {"epochs": 400, "batch_size": 128, "lr": 0.05, "momentum": 0.9, "weight_decay": 5.0e-4,
                  "drop_last": True, "schedule": "step", "lr_milestones": [321, 361], "warmup_epochs": 10,
                  "contrast": {"method": "paco", "dim": 32, "hidden": 64, "projection": "mlp2_bn", "queue": 1024,
                               "momentum": 0.999, "temperature": 0.05, "alpha": 0.01, "beta": 1.0, "gamma": 1.0}}}}


def configs(name: str, dataset: str, imb: int) -> dict[str, dict]:
    base = stage1(name, dataset, imb)
    # HS (CIFAR): the WB backbone and schedule, WD 5e-3 as a loss term, FR 0.01; the protocol fixes the rest
    hs = hs_configs(name, base["data"], base["model"],
                    {"epochs": 320, "batch_size": 64, "lr": 0.01, "wd_in_loss": 5.0e-3, "feature_reg": 0.01})
    return {
        "naive": {**base, "method": "naive", "train": {**base["train"], "weight_decay": 0.0}},
        "wd": {**base, "method": "wd"},
        "l2norm": {"name": name, "method": "l2-norm", "protocol": "wb-reference", "stage": "posthoc",
                   "parent": "wd.yaml", "posthoc": {"kind": "l2norm"}},
        "taunorm": {"name": name, "method": "tau-norm", "protocol": "wb-reference", "stage": "posthoc",
                    "parent": "wd.yaml", "posthoc": {"kind": "taunorm", "tau": 1.9}},
        "cb_wd": stage2(name, "cb-wd", 0.1, False),
        "cb_maxnorm": stage2(name, "cb-maxnorm", 0.0, True),
        "wb": stage2(name, "wb", 0.1, True),
        **hs,
        **mislas_configs(name, dataset, imb),
        **expert_configs(name, dataset, imb),
        **paco_config(name, dataset, imb),
    }


HEADER = {
    "naive": "CE, weight decay 0 (WB 'naive')", "wd": "CE + tuned weight decay on all parameters (WB stage 1)",
    "l2norm": "+ L2-norm of the WD model's classifier rows", "taunorm": "+ tau-norm (tau 1.9, the reference value on the WD model)",
    "cb_wd": "+ CB & WD: stage 2, class-balanced loss (reference form), WD 0.1, no MaxNorm",
    "cb_maxnorm": "+ CB & MaxNorm: stage 2 without weight decay", "wb": "+ CB & WD & MaxNorm = weight balancing (WB)",
    "hs_stage1": "HS single stage: ETF classifier, WD in the loss, feature regularisation",
    "hs": "HS: multiplicative logit adjustment of hs_stage1, tau chosen on val",
    "mixup": "MiSLAS stage 1: CE + mixup, ResNet-32, 200 epochs, step lr",
    "mislas": "MiSLAS stage 2: stage-1 classifier x learned scales, label-aware smoothing, class-aware batches",
    "ride": "RIDE: 3 experts, LDAM-DRW per expert + diversity term, mean of the experts (no router, no distillation)",
    "sade": "SADE: 3 experts with softmax / balanced softmax / inverse-prior losses, mean of the experts (no test-time "
            "aggregation)",
    "ride_ea": "RIDE + its expert-assignment router (stage 2 on the frozen experts)",
    "ride_teacher": "RIDE with 6 experts, no router: the teacher of ride_distill",
    "ride_distill": "RIDE, 3 experts distilled from ride_teacher (T 1.5), no router",
    "ride_distill_ea": "RIDE + distillation + its expert-assignment router (MODEL_ZOO's 'RIDE + Distill')",
    "sade_tta": "SADE + test-time self-supervised aggregation of its experts on the unlabeled test images "
                "(transductive)",
    "paco": "PaCo: class centres and supervised contrast in one softmax, momentum key encoder, queue 1024",
}


# Large-scale experiments. Backbones as the WB and HS papers report them (WB: ResNeXt-50 on ImageNet-LT, ResNet-50
# on iNat 2018 with batch 512; Places-LT: ResNet-152 from ImageNet weights, as in the literature). The
# schedule values marked ASSUMED are not taken from the papers: check them against the papers before quoting.
LARGE = {
    # folder: (dataset, model, stage-1 training, protocol)
    "imagenet_lt": ("imagenet-lt", {"name": "resnext50_32x4d"},
                    {"epochs": 200, "batch_size": 512, "lr": 0.2, "weight_decay": 5.0e-4}, "clean"),    # ASSUMED schedule
    "inat2018": ("inat2018", {"name": "resnet50"},
                 {"epochs": 200, "batch_size": 512, "lr": 0.2, "weight_decay": 1.0e-4}, "custom"),      # ASSUMED lr, WD
    "places_lt": ("places-lt", {"name": "resnet152", "pretrained_file": "${LTBENCH_WEIGHTS}/resnet152_imagenet.pth"},
                  {"epochs": 30, "batch_size": 256, "lr": 0.05, "weight_decay": 5.0e-4}, "clean"),      # ASSUMED schedule
}


# MiSLAS, PaCo, GPaCo and BCL build torchvision's ResNet / ResNeXt (or copies of it) with zero_init_residual=False:
# every residual block's last BatchNorm starts at 1, where timm starts it at 0
TORCHVISION_INIT = {"zero_init_last": False}


def large_configs(folder: str) -> dict[str, dict]:
    dataset, model, train, protocol = LARGE[folder]
    name = folder.replace("_", "-")
    # iNat 2018 has no validation split (its val set is the test set): select the last epoch, never peek.
    ev = {"eval": {"selection_split": "test", "select": "last"}} if protocol == "custom" else {}
    base = {"name": name, "protocol": protocol,
            "data": {"dataset": dataset, "shards": "${LTBENCH_SHARDS}/" + dataset, "augment": "rrc_flip"},
            "model": model,
            "train": {**train, "momentum": 0.9, "wd_scope": "all", "schedule": "cosine"}, **ev}
    out = {
        "wd": {**base, "method": "wd"},
        "wb": {**stage2(name, "wb", 0.1, True), "protocol": protocol, **ev},
    }
    # WB stage 2 on large data: features cached (no augmentation, BN in eval mode), 10 epochs
    out["wb"]["stage2"].update({"bn_mode": "eval", "augment": "none"})
    # CB as weighted CE (the HS code's form) with its plain batch mean, as both reference codes reduce
    out["wb"]["stage2"]["train"].update({"batch_size": 512,
                                         "loss": {"name": "cb_ce", "cb_beta": 0.9999, "cb_normalizer": "batch"}})
    if protocol == "clean":
        grid = [round(0.1 * i, 1) for i in range(31)]
        out["taunorm"] = {"name": name, "method": "tau-norm", "protocol": protocol, "stage": "posthoc",
                          "parent": "wd.yaml", "posthoc": {"kind": "taunorm", "tau": None, "tau_grid": grid}}
        hs_train = {k: v for k, v in train.items() if k != "weight_decay"}
        out.update(hs_configs(name, base["data"], model,
                              {**hs_train, "wd_in_loss": train["weight_decay"], "feature_reg": 0.01}))
    return out


def contrast_variant(base: dict, model: str, lr: float, randaugment_n: int = 2, views: list[str] | None = None,
                     **contrast: float) -> dict:
    """A PaCo / GPaCo large-image config on another backbone (torchvision's init), with its lr, RandAugment
    operations, views and contrast fields."""
    data = {**base["data"], **({"views": views} if views else {}),
            **({"randaugment_n": randaugment_n} if randaugment_n != 2 else {})}
    return {**base, "data": data, "model": {"name": model, **TORCHVISION_INIT},
            "train": {**base["train"], "lr": lr, "contrast": {**base["train"]["contrast"], **contrast}}}


def paco_large_config(folder: str) -> dict[str, dict]:
    """PaCo with ResNet-50 on ImageNet-LT and iNaturalist 2018 (its PaCo/LT/sh/ImageNetLT_train_R50.sh and
    Inat_train_R50.sh with paco_lt.py's defaults) under paco-reference (the best epoch on the test list): the query
    view RandomResizedCrop + jitter + RandAugment n2 m10 (aug randcls_sim), the key view SimCLR-style, MoCo v2's MLP
    to 128 with BatchNorm, queue 8192, T 0.2, alpha 0.05, beta = gamma = 1; SGD lr 0.02 momentum 0.9, global batch 128
    dropping the last, 400 epochs: warm-up 10 epochs, then cosine per epoch (its denominator is E - w + 1, these
    configs' E - w)."""
    dataset = LARGE[folder][0]
    if dataset not in ("imagenet-lt", "inat2018"):
        return {}
    paco = {
        "name": folder.replace("_", "-"), "method": "paco", "protocol": "paco-reference",
        "data": {"dataset": dataset, "shards": "${LTBENCH_SHARDS}/" + dataset, "augment": "none",
                 "views": ["rrc_randaugment", "rrc_sim"]},
        "model": {"name": "resnet50", **TORCHVISION_INIT},
        "train": {"epochs": 400, "batch_size": 128, "lr": 0.02, "momentum": 0.9,
                  "weight_decay": 5.0e-4 if dataset == "imagenet-lt" else 1.0e-4, "drop_last": True,
                  "schedule": "cosine", "schedule_step_at_epoch_start": True, "warmup_epochs": 10,
                  "contrast": {"method": "paco", "dim": 128, "projection": "mlp2_bn", "queue": 8192,
                               "momentum": 0.999, "temperature": 0.2, "alpha": 0.05, "beta": 1.0, "gamma": 1.0}}}
    if dataset != "imagenet-lt":
        return {"paco": paco}
    # ImageNetLT_train_X50.sh / _X101.sh: aug randclsstack_sim (RandAugment after the SimCLR-style steps on the query
    # view); ResNeXt-50 with T 0.07, ResNeXt-101 (32x4d) with lr 0.03 and RandAugment n3
    stack = ["rrc_sim_randaugment", "rrc_sim"]
    return {"paco": paco, "paco_x50": contrast_variant(paco, "resnext50_32x4d", 0.02, views=stack, temperature=0.07),
            "paco_x101": contrast_variant(paco, "resnext101_32x4d", 0.03, 3, views=stack)}


def contrast_places_configs(folder: str) -> dict[str, dict]:
    """PaCo and GPaCo on Places-LT (PaCo/LT/sh/PlacesLT_train_R152.sh, GPaCo/LT/sh/LT/PlacesLT_train_R152.sh with
    paco_fp16_places.py's defaults) under paco-reference (the best epoch on the val list, the script's only eval
    list): the ImageNet-pretrained ResNet-152 with every convolution frozen but layer4's last bottleneck (BatchNorm,
    projection and classifier train), views sim_sim, fp16, batch 128, lr 0.02, WD 5e-4, 30 epochs with 5 of
    warm-up, T 0.2, queue 8192; alpha 0.05 (GPaCo 0.02)."""
    if LARGE[folder][0] != "places-lt":
        return {}
    base = {
        "name": folder.replace("_", "-"), "method": "paco", "protocol": "paco-reference",
        "data": {"dataset": "places-lt", "shards": "${LTBENCH_SHARDS}/places-lt", "augment": "none",
                 "views": ["rrc_sim", "rrc_sim"]},
        "model": LARGE[folder][1],
        "train": {"epochs": 30, "batch_size": 128, "lr": 0.02, "momentum": 0.9, "weight_decay": 5.0e-4,
                  "drop_last": True, "schedule": "cosine", "schedule_step_at_epoch_start": True,
                  "warmup_epochs": 5, "freeze_convs": True, "amp": "fp16"}}
    contrast = {"dim": 128, "queue": 8192, "temperature": 0.2, "beta": 1.0, "gamma": 1.0}
    return {
        "paco": {**base, "train": {**base["train"], "contrast": {
            "method": "paco", "projection": "mlp2_bn", "momentum": 0.999, "alpha": 0.05, **contrast}}},
        "gpaco": {**base, "method": "gpaco", "train": {**base["train"], "contrast": {
            "method": "gpaco", "projection": "mlp3", "alpha": 0.02, **contrast}}},
    }


def gpaco_large_config(folder: str) -> dict[str, dict]:
    """GPaCo with ResNet-50 on ImageNet-LT and iNaturalist 2018 (GPaCo/LT/sh/LT/ImageNetLT_train_R50.sh, Inat_train_R50.sh
    with GPaCo/LT/paco_lt.py's defaults) under paco-reference (the best epoch on the test list): no key encoder, both
    views through the one encoder and both anchors, keys queued (8192), the MLP Linear-ReLU-Linear-ReLU-Linear to 128
    without BatchNorm, T 0.2, beta = gamma = 1; ImageNet-LT views randcls + randclsstack (RandAugment on both),
    alpha 0.045, WD 5e-4; iNaturalist randcls + sim, alpha 0.05, WD 1e-4; SGD lr 0.04 momentum 0.9, batch 128
    dropping the last, 400 epochs: warm-up 10, then cosine per epoch as PaCo's (its denominator E - w + 1, these E - w)."""
    dataset = LARGE[folder][0]
    if dataset not in ("imagenet-lt", "inat2018"):
        return {}
    inlt = dataset == "imagenet-lt"
    gpaco = {
        "name": folder.replace("_", "-"), "method": "gpaco", "protocol": "paco-reference",
        "data": {"dataset": dataset, "shards": "${LTBENCH_SHARDS}/" + dataset, "augment": "none",
                 "views": ["rrc_randaugment", "rrc_sim_randaugment" if inlt else "rrc_sim"]},
        "model": {"name": "resnet50", **TORCHVISION_INIT},
        "train": {"epochs": 400, "batch_size": 128, "lr": 0.04, "momentum": 0.9,
                  "weight_decay": 5.0e-4 if inlt else 1.0e-4, "drop_last": True,
                  "schedule": "cosine", "schedule_step_at_epoch_start": True, "warmup_epochs": 10,
                  "contrast": {"method": "gpaco", "dim": 128, "projection": "mlp3", "queue": 8192,
                               "temperature": 0.2, "alpha": 0.045 if inlt else 0.05, "beta": 1.0, "gamma": 1.0}}}
    if not inlt:
        # Inat_train_R152.sh: the ResNet-50 recipe on ResNet-152
        return {"gpaco": gpaco, "gpaco_r152": contrast_variant(gpaco, "resnet152", 0.04)}
    # ImageNetLT_train_X50.sh / _X101.sh: alpha 0.05, lr 0.06, RandAugment n3 / n5 on both views
    return {"gpaco": gpaco, "gpaco_x50": contrast_variant(gpaco, "resnext50_32x4d", 0.06, 3, alpha=0.05),
            "gpaco_x101": contrast_variant(gpaco, "resnext101_32x4d", 0.06, 5, alpha=0.05)}


def expert_large_configs(folder: str) -> dict[str, dict]:
    """RIDE and SADE on ImageNet-LT (ResNeXt-50) and iNaturalist 2018 (ResNet-50), 3 experts at 3/4 width (RIDE's
    reduce_dimension) under ride- / sade-reference, from their configs/config_imagenet_lt_resnext50_{ride,sade}.json and
    config_iNaturalist_resnet50_{ride,sade}.json: ImageNet-LT trains on RandomResizedCrop + flip + colour jitter,
    iNaturalist on RandomResizedCrop + flip. RIDE's expert-assignment stage (config_*_ride_ea.json, its published
    headline rows) reads class-balanced batches of the same transform from the shards by random access. SADE's
    Places-LT model starts from the ImageNet-pretrained ResNet-152 (LTBENCH_WEIGHTS; its code loads a caffe conversion
    of those weights)."""
    dataset = LARGE[folder][0]
    name = folder.replace("_", "-")
    if dataset == "places-lt":
        # config_places_lt_resnet152_sade.json: every expert a copy of the ImageNet-pretrained ResNet-152's layer3 /
        # layer4 (reduce_dimension false), the backbone at share_lr 0.001 and the classifiers at 0.01, batch 128,
        # WD 4e-4, x0.1 after epochs 10 and 20, 30 epochs, tau 1; RandomResizedCrop + flip + colour jitter
        return {"sade": {
            "name": name, "method": "sade", "protocol": "sade-reference",
            "data": {"dataset": dataset, "shards": "${LTBENCH_SHARDS}/" + dataset, "augment": "rrc_flip_jitter"},
            "model": {**LARGE[folder][1], "experts": 3, "expert_width": 1.0, "expert_scale": 30.0},
            "train": {"epochs": 30, "batch_size": 128, "lr": 0.01, "momentum": 0.9, "nesterov": True,
                      "weight_decay": 4.0e-4, "schedule": "step", "lr_milestones": [10, 20], "lr_step_gamma": 0.1,
                      "backbone_lr_factor": 0.1, "loss": {"name": "sade", "sade_tau": 1.0}}}}
    if dataset not in ("imagenet-lt", "inat2018"):
        return {}
    inlt = dataset == "imagenet-lt"
    data = {"dataset": dataset, "shards": "${LTBENCH_SHARDS}/" + dataset,
            "augment": "rrc_flip_jitter" if inlt else "rrc_flip"}
    model = {"name": "resnext50_32x4d" if inlt else "resnet50", "experts": 3, "expert_width": 0.75,
             "expert_scale": 30.0}
    sgd = {"momentum": 0.9, "nesterov": True}
    # CustomLR: warm-up 5 epochs, x0.1 from epoch 60, x0.01 from 80, 100 epochs
    steps = {"epochs": 100, "schedule": "step", "lr_milestones": [60, 80], "lr_step_gamma": 0.1, "warmup_epochs": 5}
    ride_loss = {"name": "ride", "ride_diversity": -0.2, "drw_epoch": 80, "cb_beta": 0.9999, "cb_normalizer": "weights",
                 "ldam_max_margin": 0.5, "ldam_scale": 30.0, "ride_temperature_factor": 0.02 if inlt else 0.015}
    ride_train = {"batch_size": 256, "lr": 0.1} if inlt else {"batch_size": 512, "lr": 0.2}
    # SADE ImageNet-LT: batch 64, lr 0.025, WD 5e-4, CosineAnnealingLR(T_max 180) stepped after each epoch, no warm-up
    sade_train = ({"epochs": 180, "batch_size": 64, "lr": 0.025, "weight_decay": 5.0e-4, "schedule": "cosine"} if inlt
                  else {**steps, "batch_size": 512, "lr": 0.2, "weight_decay": 2.0e-4})
    # config_{imagenet_lt_resnext50,iNaturalist_resnet50}_ride_ea.json: the routers alone on the frozen experts, top 50,
    # pos_weight 100, 5 epochs of batch 512 from the balanced sampler, SGD lr 0.01 Nesterov WD 5e-4, cosine per epoch
    router = {"router": True, "router_top": 50, "router_pos_weight": 100.0, "maxnorm": False,
              "augment": data["augment"], "bn_mode": "eval",
              "train": {"epochs": 5, "batch_size": 512, "lr": 0.01, **sgd, "weight_decay": 5.0e-4,
                        "schedule": "cosine", "sampler": "class_balanced"}}
    ride = {"name": name, "method": "ride", "protocol": "ride-reference", "data": data, "model": model,
            "train": {**steps, **ride_train, **sgd, "weight_decay": 2.0e-4, "loss": ride_loss}}
    ea = {"name": name, "method": "ride-ea", "protocol": "ride-reference", "stage": "stage2", "parent": "ride.yaml",
          "stage2": router}
    return {
        "ride": ride,
        "ride_ea": ea,
        # config_*_distill_ride.json: 3 experts taught by a 6-expert model of the same recipe (its checkpoint
        # *_6_experts.pth; no config of its own: ride.yaml with 6 experts), RIDELossWithDistill at T 1.5; the router
        # then runs on the distilled experts. MODEL_ZOO's distilled rows say 4 experts; the repository's configs 3.
        "ride_teacher": {**ride, "method": "ride-teacher", "model": {**model, "experts": 6}},
        "ride_distill": {**ride, "method": "ride-distill", "train": {
            **ride["train"], "distill": {"teacher": "ride_teacher.yaml", "temperature": 1.5}}},
        "ride_distill_ea": {**ea, "method": "ride-distill-ea", "parent": "ride_distill.yaml"},
        "sade": {"name": name, "method": "sade", "protocol": "sade-reference", "data": data, "model": model,
                 "train": {**sade_train, **sgd, "loss": {"name": "sade", "sade_tau": 2.0 if inlt else 1.0}}},
    }


def mislas_large_configs(folder: str) -> dict[str, dict]:
    """MiSLAS on ImageNet-LT and iNaturalist 2018 (ResNet-50) and Places-LT (ResNet-152) under mislas-reference (the
    best epoch on the test list), from its config/{imagenet,ina2018,places}/*_stage{1_mixup,2_mislas}.yaml: stage 1
    CE + mixup (alpha 0.2) on RandomResizedCrop + flip + colour jitter, batch 256, lr 0.1 cosine per epoch without
    warm-up, 180 (iNat 200, Places 90) epochs, WD 5e-4 (iNat 1e-4); stage 2 re-estimates BatchNorm on class-aware
    batches (read from the shards by random access) and trains the stage-1 classifier at 0.05 x lr with learned
    scales and label-aware smoothing 0.3 / 0.0 (Places 0.4 / 0.1), 10 epochs. On Places-LT its model is the
    ImageNet-pretrained ResNet-152 with a new last bottleneck (resnet_places.py's resnet152_fe drops layer4.2, and
    train_stage1.py appends a fresh Bottleneck(2048, 512)): only that block and the classifier train, the trunk in
    eval mode, and stage 2 re-estimates the BatchNorm of that block alone."""
    dataset = LARGE[folder][0]
    name, inlt, places = folder.replace("_", "-"), dataset == "imagenet-lt", dataset == "places-lt"
    opt = {"batch_size": 256, "lr": 0.1, "momentum": 0.9, "weight_decay": 1.0e-4 if dataset == "inat2018" else 5.0e-4}
    model = {"name": "resnet50", **TORCHVISION_INIT}
    frozen_trunk: dict[str, dict] = {"train": {}, "stage2": {}}
    if places:
        model = {**LARGE[folder][1], "reinit_last_blocks": 1}
        frozen_trunk = {"train": {"train_only_last_blocks": 1}, "stage2": {"bn_last_blocks": 1}}
    las = {"las_head": 0.4, "las_tail": 0.1} if places else {"las_head": 0.3, "las_tail": 0.0}
    return {
        "mixup": {"name": name, "method": "mixup", "protocol": "mislas-reference",
                  "data": {"dataset": dataset, "shards": "${LTBENCH_SHARDS}/" + dataset, "augment": "rrc_flip_jitter"},
                  "model": model,
                  "train": {"epochs": 90 if places else 180 if inlt else 200, **opt, "schedule": "cosine",
                            "mixup_alpha": 0.2, **frozen_trunk["train"]}},
        "mislas": {"name": name, "method": "mislas", "protocol": "mislas-reference", "stage": "stage2",
                   "parent": "mixup.yaml",
                   "stage2": {"train": {"epochs": 10, **opt, "loss": {"name": "las", **las}},
                              "lws_rows_lr_factor": 0.05, "bn_mode": "train", **frozen_trunk["stage2"]}},
    }


def bcl_large_config(folder: str) -> dict[str, dict]:
    """BCL on ImageNet-LT (its README command with main.py's defaults; the README's table is ResNeXt-50, `--arch
    resnext50`): views sim-sim (the classifier view RandomResizedCrop + jitter + RandAugment, two MoCo-v2-style
    contrastive views without blur), a cosine classifier x30 with logit-adjusted CE (tau 1) + 0.35 x BalSCL (T 0.07,
    an MLP to 1024 with BatchNorm), SGD lr 0.1 momentum 0.9 WD 5e-4, batch 256, 90 epochs of cosine per epoch. Its
    code keeps the epoch with the best accuracy on the val list, so the clean protocol selects as it did. Its
    DataParallel computes the contrastive loss on the whole batch, which `gather` does under DDP."""
    if LARGE[folder][0] != "imagenet-lt":
        return {}
    bcl = {
        "name": folder.replace("_", "-"), "method": "bcl", "protocol": "clean",
        "data": {"dataset": "imagenet-lt", "shards": "${LTBENCH_SHARDS}/imagenet-lt", "augment": "none",
                 "views": ["rrc_randaugment", "rrc_colour", "rrc_colour"]},
        "model": {"name": "resnext50_32x4d", "classifier": "cosine", "cosine_scale": 30.0, **TORCHVISION_INIT},
        "train": {"epochs": 90, "batch_size": 256, "lr": 0.1, "momentum": 0.9, "weight_decay": 5.0e-4,
                  "wd_scope": "all", "schedule": "cosine", "schedule_unit": "epoch",
                  "schedule_step_at_epoch_start": True, "loss": {"name": "logit_adjusted"},
                  "contrast": {"method": "bcl", "dim": 1024, "projection": "mlp2_bn", "temperature": 0.07,
                               "weight": 0.35, "gather": True}},
        "eval": {"select": "best"}}
    # its other contrastive views (README "sim-rand", "rand-rand"; main.py's sim-rand and randstack-randstack
    # branches): augmentation_randnclsstack = the sim view, then RandAugment
    stack = "rrc_colour_randaugment"
    return {"bcl": bcl,
            "bcl_sim_rand": {**bcl, "method": "bcl-sim-rand",
                             "data": {**bcl["data"], "views": ["rrc_randaugment", stack, "rrc_colour"]}},
            "bcl_rand_rand": {**bcl, "method": "bcl-rand-rand",
                              "data": {**bcl["data"], "views": ["rrc_randaugment", stack, stack]}}}


LARGE_HEADER = {
    "bcl": "BCL, ResNeXt-50: logit-adjusted cosine classifier + balanced contrastive loss, views sim-sim",
    "bcl_sim_rand": "BCL, ResNeXt-50, views sim-rand: one contrastive view with RandAugment after its colour steps",
    "bcl_rand_rand": "BCL, ResNeXt-50, views rand-rand: both contrastive views with RandAugment after their colour steps",
    "mixup": "MiSLAS stage 1: CE + mixup (alpha 0.2), ResNet-50 (Places-LT: a new last block on a frozen ResNet-152)",
    "mislas": "MiSLAS stage 2: BN re-estimated on class-aware batches, scaled classifier, label-aware smoothing",
    "ride": "RIDE, 3 experts at 3/4 width: LDAM-DRW per expert + diversity term, mean of the experts (no router)",
    "ride_ea": "RIDE + its expert-assignment router (stage 2 on the frozen experts, class-balanced batches)",
    "ride_teacher": "RIDE's 6-expert teacher (ride.yaml with 6 experts)",
    "ride_distill": "RIDE, 3 experts distilled from ride_teacher.yaml (T 1.5)",
    "ride_distill_ea": "RIDE + Distill + its router on the distilled experts",
    "sade": "SADE, 3 experts: softmax / balanced / inverse-prior experts, mean of the experts",
    "paco": "PaCo: class centres and supervised contrast in one softmax, momentum key encoder, queue 8192",
    "gpaco": "GPaCo: PaCo without the key encoder, both views anchors, queue 8192",
    "paco_x50": "PaCo, ResNeXt-50: as paco.yaml with T 0.07 and RandAugment after the SimCLR-style query view",
    "paco_x101": "PaCo, ResNeXt-101 32x4d: as paco_x50.yaml with T 0.2, lr 0.03 and RandAugment n3",
    "gpaco_x50": "GPaCo, ResNeXt-50: as gpaco.yaml with alpha 0.05, lr 0.06 and RandAugment n3",
    "gpaco_r152": "GPaCo, ResNet-152: as gpaco.yaml",
    "gpaco_x101": "GPaCo, ResNeXt-101 32x4d: as gpaco.yaml with alpha 0.05, lr 0.06 and RandAugment n5",
    "wd": "CE + weight decay (WB stage 1)", "wb": "+ CB & WD & MaxNorm (WB stage 2, on cached features)",
    "taunorm": "+ tau-norm, tau chosen on val", "hs_stage1": "HS single stage: ETF classifier, WD in the loss, FR",
    "hs": "HS: multiplicative logit adjustment, tau chosen on val",
}


def write(out: Path = HERE) -> list[Path]:
    written = []
    for folder, dataset, imb in EXPERIMENTS:
        d = out / folder
        d.mkdir(parents=True, exist_ok=True)
        for key, cfg in configs(folder.replace("_", "-"), dataset, imb).items():
            p = d / f"{key}.yaml"
            text = f"# {folder}: {HEADER[key]}. Generated by configs/paper/generate.py.\n"
            p.write_text(text + yaml.safe_dump(cfg, sort_keys=False))
            written.append(p)
    for folder in LARGE:
        d = out / folder
        d.mkdir(parents=True, exist_ok=True)
        for key, cfg in {**large_configs(folder), **expert_large_configs(folder), **paco_large_config(folder),
                         **gpaco_large_config(folder), **contrast_places_configs(folder), **bcl_large_config(folder),
                         **mislas_large_configs(folder)}.items():
            p = d / f"{key}.yaml"
            text = (f"# {folder}: {LARGE_HEADER[key]}. Generated by configs/paper/generate.py.\n"
                    "# Needs LTBENCH_SHARDS (and LTBENCH_WEIGHTS for Places-LT); see docs/datasets.md, 'Preparing shards: the commands'.\n")
            p.write_text(text + yaml.safe_dump(cfg, sort_keys=False))
            written.append(p)
    return written


if __name__ == "__main__":
    for p in write():
        print(p.relative_to(HERE.parent.parent))
