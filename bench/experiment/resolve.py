"""Resolving a built config against what lies outside it: defaults from the dataset card (long-tailed profile,
input statistics, sizes, groups), the model's own preprocessing (timm's pretrained_cfg), the shard manifest's
digest; path fields expanded; combinations of fields checked. The config package below knows none of these."""

from __future__ import annotations

from typing import Any

from bench.config import (Config, ConfigError, ContrastConfig, DataConfig, DistillConfig, LossConfig, PeftConfig,
                          Stage2Config)
from bench.config.load import expand_path
from bench.config.schema import RANDAUGMENT_VIEWS
from bench.data.cards import FILE_SPLIT_SOURCES, load_card
from bench.data.profiles import resolve_profile


def resolve(cfg: Config) -> Config:
    """Fill 'card' defaults from the dataset card, check combinations of fields, and read data.shards' manifest
    to record its digest. (A run directory's stored config is not resolved again: config.load.stored_config.)"""
    card = load_card(cfg.data.dataset)
    d = cfg.data
    d.root, d.shards = expand_path("data.root", d.root), expand_path("data.shards", d.shards)
    m = cfg.model
    m.pretrained_file = expand_path("model.pretrained_file", m.pretrained_file)
    m.zeroshot.text_weights_file = expand_path("model.zeroshot.text_weights_file", m.zeroshot.text_weights_file)
    m.zeroshot.class_names_file = expand_path("model.zeroshot.class_names_file", m.zeroshot.class_names_file)
    resolve_profile(d, card)
    _resolve_model_preprocessing(cfg, card)
    _resolve_input_stats(d, card)
    _check_foundation(cfg, card)
    if d.image_size is None and card.get("eval_resize"):
        d.image_size = int(card["image_size"])
    if d.eval_resize is None and card.get("eval_resize"):
        d.eval_resize = int(card["eval_resize"])
    if d.shards is None and card.get("source") in FILE_SPLIT_SOURCES:
        raise ConfigError(f"config key 'data.shards': {d.dataset} is read from shards; run `ltbench prepare "
                          f"{d.dataset} --src DIR --out SHARDS` and set data.shards=SHARDS")
    if d.augment.startswith("rrc_flip") and d.shards is None:
        # the in-memory loader has no RandomResizedCrop: it would train on flips alone
        raise ConfigError(f"config key 'data.augment': {d.augment} needs shard data (data.shards); in-memory "
                          f"{d.dataset} supports crop_flip, flip, crop_flip_rotate or none")
    if d.randaugment_n != 2 and not set(d.views) & RANDAUGMENT_VIEWS:
        raise ConfigError(f"config key 'data.randaugment_n': {d.randaugment_n} sets timm's RandAugment of the "
                          f"rrc_*randaugment views; data.views is {d.views}")
    if d.views and d.decode == "gpu":
        raise ConfigError(f"config key 'data.views': {d.views} are drawn from the decoded images on the CPU "
                          "(data.decode=cpu); the GPU decoder crops and flips one view")
    if d.augment in ("crop_flip_rotate", "rrc_flip_jitter") and d.decode == "gpu":
        raise ConfigError(f"config key 'data.augment': {d.augment} is done on the CPU (data.decode=cpu); the GPU "
                          "decoder crops and flips only")
    if d.augment.startswith("rrc_flip") and d.image_size is None:
        raise ConfigError(f"config key 'data.augment': {d.augment} needs data.image_size (the crop size) for "
                          f"{d.dataset}")
    if d.shards is not None:
        # local: bench.data.shards loads torch, and `ltbench submit` / `status` resolve configs without it
        from bench.data.shards.manifest import load_manifest
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
    # Stage 2 trains the classifier under stage2.train.weight_decay (and MaxNorm); it has no loss-term
    # regularisers, so a value here would be written to the run's config and hash but never used.
    for key, value in (("wd_in_loss", cfg.stage2.train.wd_in_loss), ("feature_reg", cfg.stage2.train.feature_reg),
                       ("mixup_alpha", cfg.stage2.train.mixup_alpha)):
        if value > 0:
            raise ConfigError(f"config key 'stage2.train.{key}': {value} is not used by stage 2 (its weight decay is "
                              "stage2.train.weight_decay; the HS regularisers belong to stage 1's train.*); "
                              "set it to 0")
    if cfg.train.mixup_alpha > 0 and cfg.train.loss.cb_normalizer == "weights" and (
            cfg.train.loss.drw_epoch is not None or cfg.train.loss.name in ("cb_ce", "cb_bce_softmax")):
        # lambda L(z, y) + (1 - lambda) L(z, y[perm]) mixes two losses of different normalisers sum_i w_{y_i}
        raise ConfigError("config key 'train.mixup_alpha': mixup with class weights needs train.loss.cb_normalizer="
                          "batch (the two mixed losses would divide by different sums of weights)")
    _check_schedules(cfg)
    for key, loss in (("train.loss", cfg.train.loss), ("stage2.train.loss", cfg.stage2.train.loss)):
        if loss.name == "cb_bce_softmax" and loss.cb_normalizer != "batch":
            raise ConfigError(f"config key '{key}.cb_normalizer': {loss.cb_normalizer} does not apply to "
                              "cb_bce_softmax, which averages over all B*C entries as the WB code does (use batch)")
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


def _check_frozen_trunk(cfg: Config) -> None:
    """What freezes part of a model: a new block on a frozen pretrained trunk (MiSLAS on Places-LT), PaCo's frozen
    convolutions; stage 2 freezes its backbone itself."""
    m, t, s2 = cfg.model, cfg.train, cfg.stage2
    if m.reinit_last_blocks and (not m.pretrained_file or m.experts > 1):
        raise ConfigError(f"config key 'model.reinit_last_blocks': {m.reinit_last_blocks} re-initialises blocks of "
                          "a pretrained single model (model.pretrained_file, model.experts=1); a model trained from "
                          "scratch is initialised already")
    if t.train_only_last_blocks:
        other = ("train.freeze_convs" if t.freeze_convs else "train.contrast.method" if t.contrast.method else
                 "model.experts" if m.experts > 1 else "model.peft.method" if m.peft.method != "none" else None)
        if other:
            raise ConfigError(f"config key 'train.train_only_last_blocks': {t.train_only_last_blocks} freezes all "
                              f"but the last blocks and the classifier, which {other} also decides; choose one")
    for key, value, default in (("freeze_convs", s2.train.freeze_convs, "false"),
                                ("train_only_last_blocks", s2.train.train_only_last_blocks, "0")):
        if value:
            raise ConfigError(f"config key 'stage2.train.{key}': stage 2 freezes the backbone already "
                              f"(stage2.train_blocks chooses blocks to retrain); leave it {default}")
    if s2.bn_last_blocks and s2.bn_mode != "train":
        raise ConfigError(f"config key 'stage2.bn_last_blocks': {s2.bn_last_blocks} chooses which BatchNorm "
                          "re-estimates with stage2.bn_mode=train; stage2.bn_mode is eval")


def _check_schedules(cfg: Config) -> None:
    """Schedule and epoch fields that would change the run hash without changing what it trains."""
    for prefix, t in (("train", cfg.train), ("stage2.train", cfg.stage2.train)):
        ms = t.lr_milestones
        if t.schedule == "step" and (not ms or any(b <= a for a, b in zip(ms, ms[1:])) or ms[0] < 1):
            raise ConfigError(f"config key '{prefix}.lr_milestones': {ms}: schedule=step needs increasing epochs "
                              "from 1 on (MiSLAS CIFAR: [160, 180])")
        if t.schedule != "step" and ms:
            raise ConfigError(f"config key '{prefix}.lr_milestones': {ms} is used by schedule=step only; "
                              f"{prefix}.schedule is {t.schedule}")
        if t.epoch_length != "sampler" and t.sampler == "instance":
            raise ConfigError(f"config key '{prefix}.epoch_length': {t.epoch_length} cuts a class_aware or "
                              "class_balanced epoch; the instance sampler's epoch is the dataset already")
    _check_experts(cfg)
    m = cfg.model
    if m.zero_init_last is not None and (m.pretrained_file or m.experts > 1 or m.embedding != "pooled"):
        raise ConfigError(f"config key 'model.zero_init_last': {m.zero_init_last} sets the initialisation of a timm "
                          "ResNet trained from scratch; this model starts from model.pretrained_file, is a "
                          "multi-expert model (whose experts start at 1) or a CLIP tower")
    _check_contrast(cfg)
    _check_distill(cfg)
    _check_frozen_trunk(cfg)
    if cfg.stage2.train.backbone_lr_factor != 1.0:
        raise ConfigError(f"config key 'stage2.train.backbone_lr_factor': {cfg.stage2.train.backbone_lr_factor}; "
                          "stage 2 trains the classifier (stage2.train_blocks for backbone blocks): leave it at 1")
    a2 = cfg.stage2.augment
    if cfg.stage == "stage2" and a2 in ("crop_flip_rotate", "rrc_flip_jitter") and cfg.data.decode == "gpu":
        raise ConfigError(f"config key 'stage2.augment': {a2} is done on the CPU (data.decode=cpu); the "
                          "GPU decoder crops and flips only")
    if cfg.stage == "stage2" and a2.startswith("rrc_flip") and cfg.data.shards is None:
        raise ConfigError(f"config key 'stage2.augment': {a2} needs shard data (data.shards); in-memory "
                          f"{cfg.data.dataset} supports crop_flip, flip, crop_flip_rotate or none")
    if cfg.stage2.lws_rows_lr_factor > 0 and not cfg.stage2.lws:
        raise ConfigError(f"config key 'stage2.lws_rows_lr_factor': {cfg.stage2.lws_rows_lr_factor} sets the lr of "
                          "LWS's classifier rows; set stage2.lws=true (MiSLAS) or leave it at 0")


def _check_distill(cfg: Config) -> None:
    """train.distill (RIDE's distillation): a teacher for a stage-1 model; its other fields only with one."""
    d, plain = cfg.train.distill, DistillConfig()
    if cfg.stage2.train.distill != plain:
        raise ConfigError("config key 'stage2.train.distill': distillation trains a stage-1 model (train.distill)")
    if d.teacher is None:
        for key in ("temperature", "weight", "teacher_bn", "repeat"):
            if getattr(d, key) != getattr(plain, key):
                raise ConfigError(f"config key 'train.distill.{key}': {getattr(d, key)!r} is used with a teacher; "
                                  "set train.distill.teacher (a finished run directory or its experiment YAML)")
    elif cfg.stage == "stage1" and cfg.train.contrast.method is not None:
        raise ConfigError(f"config key 'train.distill.teacher': distillation of a contrastive model "
                          f"({cfg.train.contrast.method}) is not supported")


def _check_experts(cfg: Config) -> None:
    """A multi-expert model (RIDE, SADE) and the losses that train one."""
    m, loss = cfg.model, cfg.train.loss
    if m.classifier == "cosine" and cfg.stage != "stage1":
        raise ConfigError(f"config key 'stage': {cfg.stage} on a parent with a cosine classifier is not supported: "
                          "stage 2 and post-hoc steps retrain or adjust a linear one")
    router = cfg.stage == "stage2" and cfg.stage2.router
    if router:
        s2, plain = cfg.stage2, Stage2Config()
        if m.experts == 1:
            raise ConfigError("config key 'stage2.router': routes the experts of a multi-expert parent "
                              "(model.experts > 1)")
        if s2.maxnorm or s2.lws != plain.lws or s2.reinit_classifier != plain.reinit_classifier or s2.train_blocks:
            raise ConfigError("config key 'stage2.router': only the routers train (with their own BCE; "
                              "stage2.train.loss is not used); set stage2.maxnorm=false and leave stage2.lws, "
                              "reinit_classifier and train_blocks at their defaults")
    tta = cfg.stage == "posthoc" and cfg.posthoc.kind == "sade_tta"
    if tta and m.experts == 1:
        raise ConfigError("config key 'posthoc.kind': sade_tta weighs the experts of a multi-expert parent "
                          "(model.experts > 1; SADE: 3)")
    if m.experts > 1 and cfg.stage != "stage1" and not (tta or router):
        raise ConfigError(f"config key 'stage': {cfg.stage} on a multi-expert parent (model.experts = {m.experts}) is "
                          "not supported but for stage2.router and posthoc.kind=sade_tta: the other stage-2 and "
                          "post-hoc steps retrain or adjust one linear classifier")
    if m.experts > 1 and (m.classifier != "linear" or m.embedding != "pooled" or m.peft.method != "none"):
        raise ConfigError(f"config key 'model.experts': {m.experts} experts bring their own cosine classifiers "
                          "on a ResNet; leave model.classifier, model.embedding, model.peft at their defaults")
    if loss.name in ("ride", "sade") and m.experts == 1:
        raise ConfigError(f"config key 'train.loss.name': {loss.name} trains several experts; set model.experts "
                          "(RIDE: 2-4, SADE: 3) and model.expert_width (0.75 in both codes)")
    if loss.name == "sade" and m.experts != 3:
        raise ConfigError(f"config key 'model.experts': {m.experts}; the sade loss trains exactly 3 experts")
    if loss.name == "ride" and loss.ldam_scale != m.expert_scale:
        raise ConfigError(f"config key 'train.loss.ldam_scale': {loss.ldam_scale} differs from model.expert_scale = "
                          f"{m.expert_scale}; RIDE subtracts s m_y from logits already scaled by s (keep them equal)")


def _check_contrast(cfg: Config) -> None:
    """A contrastive method (PaCo, GPaCo) and the views it reads; fields it would leave unused."""
    c, views = cfg.train.contrast, cfg.data.views
    if cfg.stage2.train.contrast != ContrastConfig():
        raise ConfigError("config key 'stage2.train.contrast': a contrastive method trains stage 1 (train.contrast); "
                          "leave stage2.train.contrast at its defaults")
    if c.method is None:
        if views:
            raise ConfigError(f"config key 'data.views': {views}: several views are read by a contrastive method "
                              "only (train.contrast.method: paco, gpaco or bcl)")
        if c != ContrastConfig():
            raise ConfigError("config key 'train.contrast': its settings apply with train.contrast.method (paco, "
                              "gpaco, bcl) only")
        return
    want = 3 if c.method == "bcl" else 2
    if len(views) != want:
        example = "[randaugment, simclr, simclr]" if want == 3 else "[autoaugment_cutout, simclr]"
        role = "view 0 for train.loss, views 1 and 2 for the contrast" if want == 3 else "the query, then the key"
        raise ConfigError(f"config key 'data.views': {c.method} reads {want} views of each image ({role}), got "
                          f"{views or '[]'} (e.g. {example})")
    if cfg.data.augment != "none":
        raise ConfigError(f"config key 'data.augment': {cfg.data.augment} is not used with data.views (each view has "
                          "its own augmentation); set data.augment=none")
    if c.gather and c.method != "bcl":
        raise ConfigError(f"config key 'train.contrast.gather': {c.method} contrasts each process's part of the batch "
                          "with the queue, as its code under DDP; gather is BCL's (its DataParallel loss)")
    if c.method != "bcl" and c.beta <= 0:
        raise ConfigError(f"config key 'train.contrast.beta': {c.beta}; {c.method}'s centre term must be > 0 (an "
                          "anchor without positives would divide by 0)")
    if cfg.train.mixup_alpha > 0 or cfg.model.experts > 1 or (c.method != "bcl" and cfg.train.loss != LossConfig()):
        raise ConfigError(f"config key 'train.contrast.method': {c.method} is its own loss (train.contrast.*); leave "
                          "train.loss at its defaults (bcl adds to it), train.mixup_alpha at 0 and model.experts at 1")
    head = "cosine" if c.method == "bcl" else "linear"
    if cfg.model.classifier != head:
        raise ConfigError(f"config key 'model.classifier': {c.method}'s classes are a {head} classifier; set "
                          f"model.classifier={head}")
    if not cfg.train.drop_last and c.method != "bcl":     # BCL's code keeps the last batch (its BN sees 3 views)
        raise ConfigError(f"config key 'train.drop_last': {c.method}'s code drops an epoch's last incomplete batch "
                          "(a batch of one breaks the projection's BatchNorm, and the queue takes whole batches); set "
                          "train.drop_last=true")


def _resolve_model_preprocessing(cfg: Config, card: dict[str, Any]) -> None:
    """data.input_stats=model: the unset mean / std / input size from the model's pretrained_cfg; the
    shard pipeline resizes the shorter side to image_size / crop_pct before its centre crop (timm's eval
    transform), in-memory images are resized to the input size (data.resize)."""
    d = cfg.data
    d.input_stats = d.input_stats or ("model" if cfg.model.embedding == "clip" else "card")
    if d.input_stats != "model":
        return
    from bench.models.preprocessing import model_preprocessing  # local: timm (and torch) only when asked for

    pp = model_preprocessing(cfg.model.name)
    d.mean = pp["mean"] if d.mean is None else d.mean
    d.std = pp["std"] if d.std is None else d.std
    if card.get("eval_resize"):          # shards of large images: crop and eval resize
        d.image_size = pp["image_size"] if d.image_size is None else d.image_size
        d.eval_resize = int(d.image_size / pp["crop_pct"]) if d.eval_resize is None else d.eval_resize
    elif d.resize is None:
        d.resize = pp["image_size"]


def _check_foundation(cfg: Config, card: dict[str, Any]) -> None:
    """Combinations of the foundation-model fields that name no method."""
    m = cfg.model
    if m.classifier == "zeroshot":
        if m.embedding != "clip":
            raise ConfigError("config key 'model.classifier': zeroshot compares text embeddings with the CLIP image "
                              "embedding; set model.embedding=clip (a CLIP image tower, e.g. "
                              "vit_base_patch16_clip_quickgelu_224.openai)")
        if m.zeroshot.class_names_file is None and not card.get("class_names"):
            raise ConfigError(f"config key 'model.classifier': zeroshot needs class names, and the card of "
                              f"{cfg.data.dataset} has none (add class_names to datasets/{cfg.data.dataset}.yaml or "
                              "set model.zeroshot.class_names_file)")
        if not m.zeroshot.templates or not all("{}" in t for t in m.zeroshot.templates):
            raise ConfigError(f"config key 'model.zeroshot.templates': {m.zeroshot.templates!r}: give at least one "
                              "template, each with '{}' where the class name goes")
    if m.peft.method == "adaptformer":     # LoRA's settings would change the run hash and nothing else
        lora_only = PeftConfig()
        for key in ("alpha", "dropout", "target_modules"):
            if getattr(m.peft, key) != getattr(lora_only, key):
                raise ConfigError(f"config key 'model.peft.{key}': {getattr(m.peft, key)!r} is a LoRA setting; "
                                  f"adaptformer has none (leave it at {getattr(lora_only, key)!r})")
    if m.peft.method == "lora" and not m.peft.target_modules:
        raise ConfigError("config key 'model.peft.target_modules': empty; "
                          "name the modules that get adapters (e.g. [qkv])")


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
            hint = " or set data.to_rgb=true for a grey dataset" if channels == 1 and len(values) == 3 else ""
            raise ConfigError(f"config key '{key}': {len(values)} values for the {channels} channels of "
                              f"{d.dataset} (give one per channel, or one for all{hint})")
    if len(d.mean) != len(d.std):
        raise ConfigError(f"config key 'data.std': {len(d.std)} values, but data.mean has {len(d.mean)}")
    if min(d.std) <= 0:
        raise ConfigError(f"config key 'data.std': {d.std} must be > 0 in every channel")
