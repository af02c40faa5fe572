"""SGD with an explicit weight-decay scope, and the learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from bench.config import TrainConfig


def param_groups(model: torch.nn.Module, weight_decay: float, scope: str) -> list[dict]:
    """scope='all': every parameter decays, conv, BN gamma/beta, biases and fc alike (WB, Alshammari et al. 2022).
    scope='no_norm_bias': 1-d parameters (norm weights, biases) get no decay (timm's default, which
    silently changes WB's method if used by accident).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if scope == "all":
        return [{"params": params, "weight_decay": weight_decay}]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def effective_lr(cfg: TrainConfig) -> float:
    """The base lr, linearly scaled with the global batch when asked (lr * B / lr_base_batch)."""
    return cfg.lr * cfg.batch_size / cfg.lr_base_batch if cfg.lr_scaling == "linear" else cfg.lr


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig,
                   lr_factors: Mapping[torch.nn.Parameter, float] | None = None) -> torch.optim.Optimizer:
    """SGD over what requires grad. `lr_factors` gives parameters a fraction of the lr (their own group, which
    the schedule scales alike: MiSLAS stage 2's classifier at lr_factor x lr beside the LWS scales at lr)."""
    lr = effective_lr(cfg)
    groups = param_groups(model, cfg.weight_decay, cfg.wd_scope)
    if lr_factors:
        factor = {id(p): f for p, f in lr_factors.items()}
        groups = [{**g, "params": [p for p in g["params"] if factor.get(id(p), 1.0) == f], "lr": lr * f}
                  for g in groups for f in sorted({factor.get(id(p), 1.0) for p in g["params"]}, reverse=True)]
    # Coupled L2 decay inside SGD (grad += lambda * theta), as torch.optim.SGD(weight_decay=...) in the WB code.
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


def lr_factor(t: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """Multiplier of the base lr for optimiser step t (0-based, counted over the whole run).

    cosine, unit=epoch: 0.5 (1 + cos(pi e / E)) with e the epoch index, plus one when the scheduler
    steps at the start of each epoch as in the WB reference (CosineAnnealingLR(T_max=E) stepped
    before training, so the first epoch already runs decayed). unit=step: the same over steps.
    A linear warm-up over `warmup_epochs` comes first; the cosine then spans the remaining epochs.
    Warm-up per epoch (warmup_unit=epoch) holds lr e / E_w through warm-up epoch e = 1..E_w, as the MiSLAS and
    LDAM-DRW codes' adjust_learning_rate. step: gamma^k with k the milestones at or below the epoch index (epochs
    counted from the run's start, warm-up included), so milestone 160 is the first epoch of 161 onwards at
    gamma, as those codes' `epoch > 160` (MultiStepLR's rule).
    """
    warm = cfg.warmup_epochs * steps_per_epoch
    if t < warm:
        return (t // steps_per_epoch + 1) / cfg.warmup_epochs if cfg.warmup_unit == "epoch" else (t + 1) / warm
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        e = t / steps_per_epoch if cfg.schedule_unit == "step" else \
            t // steps_per_epoch + int(cfg.schedule_step_at_epoch_start)
        return cfg.lr_step_gamma ** sum(e >= m for m in cfg.lr_milestones)
    if cfg.schedule_unit == "step":
        total = cfg.epochs * steps_per_epoch - warm
        progress = (t - warm) / max(1, total)
    else:
        e = t // steps_per_epoch - cfg.warmup_epochs + int(cfg.schedule_step_at_epoch_start)
        progress = e / max(1, cfg.epochs - cfg.warmup_epochs)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                   steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped after every optimiser step; its state (the step count) is saved in each checkpoint."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: lr_factor(t, cfg, steps_per_epoch))
