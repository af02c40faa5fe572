"""Stage 2 (WB classifier learning) on a finished parent run.

Stage 2 freezes the parent's backbone and retrains its linear classifier with a class-balanced loss,
weight decay and MaxNorm (projected gradient descent, Alshammari et al. 2022); cRT re-initialises that
classifier first and LWS learns only a scale per class on it (Kang et al. 2020). Without augmentation the
classifier trains on the parent's cached features (bench/train/features.py)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from bench.config import Config, ConfigError
from bench.data.batches import InMemoryLoader
from bench.data.loaders import TrainLoader
from bench.methods.classifiers import MaxNorm, ScaledLinear, fold_head, maxnorm_radius
from bench.methods.losses import make_loss
from bench.models.parts import encode, head_of, last_blocks, modules_outside, set_head, train_all_but
from bench.runtime import dist
from bench.runtime.progress import log
from bench.runtime.rundir import Result, RunDir
from bench.train.features import eval_features, feature_batches, load_parent_model, parent_features
from bench.train.loop import Parts, fit, make_forward
from bench.train.optim import make_optimizer, make_scheduler
from bench.train.router import train_router
from bench.train.select import Evaluator, select_and_report, select_reported
from bench.train.stage import Figures, Stage


def check_stage2(cfg: Config) -> None:
    """Combinations of stage-2 fields that name no method."""
    s2 = cfg.stage2
    if s2.lws and s2.reinit_classifier:
        raise ConfigError("config key 'stage2.lws': LWS scales the stage-1 classifier, so it cannot start from a "
                          "re-initialised one (stage2.reinit_classifier=true is cRT); choose one")
    if s2.lws and s2.maxnorm:
        raise ConfigError("config key 'stage2.lws': LWS trains only the per-class scales, not the rows MaxNorm "
                          "projects; set stage2.maxnorm=false")


def train_stage2(cfg: Config, run: RunDir, parent: RunDir, figures: Figures | None = None) -> Result:
    if cfg.stage2.router:            # RIDE's expert-assignment router on a multi-expert parent
        return train_router(cfg, run, parent, figures)
    check_stage2(cfg)
    st = Stage.start(cfg, run, figures)
    s2, device, data, groups = cfg.stage2, st.device, st.data, st.groups
    model = load_parent_model(cfg, data, parent, device)
    head = head_of(model)
    if not isinstance(head, torch.nn.Linear):
        raise ConfigError(f"stage2 retrains a linear classifier; the parent run {parent.path} "
                          f"has {type(head).__name__}")
    st.open(parent)

    # Freeze the backbone; the classifier (weight and bias) and the last `train_blocks` blocks train.
    trained = set(last_blocks(model, s2.train_blocks, "stage2.train_blocks"))
    for name, p in model.named_parameters():
        p.requires_grad_(name in trained)
    for p in head.parameters():
        p.requires_grad_(True)
    radius = maxnorm_radius(head.weight.detach(), s2.maxnorm_thresh)
    if s2.reinit_classifier:
        head.reset_parameters()       # cRT: a fresh classifier (the global RNG is seeded from cfg.seed)
    if s2.lws:   # LWS: the rows stay frozen (MiSLAS: train at a fraction of the lr); the model owns the scales
        head = ScaledLinear(head, train_rows=s2.lws_rows_lr_factor > 0)
        set_head(model, head)
    t = s2.train
    cached = s2.cache_features and s2.augment == "none" and s2.bn_mode == "eval" and not trained
    seed = cfg.seed + 1_000_003  # a stream of its own, not a replay of stage 1's first epochs
    loader: TrainLoader
    set_train_mode: Callable[[], object]

    if cached:
        t0 = time.time()
        train = parent_features(model, parent, data, "train", cfg.eval.batch_size, device, False,
                                cfg.runtime.workers)  # type: ignore[arg-type]  # set by setup_runtime
        feats = eval_features(model, parent, data, cfg, device)
        log(f"stage 2: {len(data.train)} training features ready in {time.time() - t0:.1f} s")
        loader = InMemoryLoader(train, t.batch_size, seed=seed, normalize=None, augment="none", crop_padding=0,
                                drop_last=t.drop_last, sampler=t.sampler, num_classes=data.num_classes,
                                rank=dist.rank(), world=dist.world(), epoch_length=t.epoch_length)
        encoder = lambda x: x  # noqa: E731 - the features are the input
        # flip TTA is already in the features (the mean of x's and flip(x)'s: the head is affine)
        select, evaluator = select_and_report(cfg, lambda tta: Evaluator(
            encoder, head, lambda s: feature_batches(feats[(s, tta)], cfg.eval.batch_size), data.num_classes,
            groups, device))
        set_train_mode = head.train
    else:
        loader = data.train_loader(t.batch_size, seed, s2.augment, t.drop_last, t.sampler,
                                   cfg.runtime.workers, t.epoch_length)  # type: ignore[arg-type]  # set by setup_runtime

        def encoder(x: torch.Tensor) -> torch.Tensor:
            # Frozen backbone: no graph (BN running stats still move in train mode, as in the WB code).
            # With trained blocks, autograd reaches only them: the rest has requires_grad False.
            with torch.set_grad_enabled(bool(trained)):
                return encode(model, x)

        select, evaluator = select_and_report(cfg, lambda tta: Evaluator(
            lambda x: encode(model, x), head,
            lambda s: data.eval_batches(s, cfg.eval.batch_size, cfg.runtime.workers),  # type: ignore[arg-type]
            data.num_classes, groups, device, tta, modules=[model]))

        # stage2.bn_last_blocks: the BatchNorm outside the last blocks keeps its statistics (MiSLAS on Places-LT)
        fixed = modules_outside(model, set(last_blocks(model, s2.bn_last_blocks, "stage2.bn_last_blocks"))) \
            if s2.bn_last_blocks else []

        def set_train_mode() -> None:
            train_all_but(model, fixed, s2.bn_mode == "train")

    # over what requires grad: the head (+ trained blocks); MiSLAS's LWS rows at lws_rows_lr_factor x lr
    rows = list(head.linear.parameters()) if isinstance(head, ScaledLinear) and s2.lws_rows_lr_factor > 0 else []
    optimizer = make_optimizer(model, t, {p: s2.lws_rows_lr_factor for p in rows})
    forward = make_forward(model, encoder, head, device, cfg.runtime.compile,
                           cfg.runtime.channels_last and not cached)
    parts = Parts(forward=forward, loss=make_loss(t.loss, data.class_counts).to(device),
                  state_module=model, set_train_mode=set_train_mode, loader=loader, optimizer=optimizer,
                  scheduler=make_scheduler(optimizer, t, len(loader)), evaluate=select,
                  analyze=select.analyze if cfg.eval.analysis_each_epoch else None,
                  constraints=[MaxNorm(head.weight, radius, s2.maxnorm_cadence)] if s2.maxnorm else [], amp=t.amp)
    state = fit(parts, run, t.epochs, cfg.eval.selection_split, device, cfg.runtime.checkpoint_every_steps,
                cfg.runtime.progress, st.tracker)

    selected, last_metrics = select_reported(cfg, run, state.best_epoch, t.epochs, evaluator, model)
    head = evaluator.head = fold_head(model)   # final.pt holds a plain linear layer (LWS: the scales folded in)
    return st.finish(evaluator, head, model, selected_epoch=selected, last_metrics=last_metrics, state=state,
                     extra={"epochs": t.epochs, "parent": str(parent.path), "cached_features": cached,
                            "data_padded_per_epoch": loader.padded(), "steps_per_epoch": len(loader),
                            "trained_blocks": s2.train_blocks,
                            "maxnorm_radius": radius if s2.maxnorm else None})


