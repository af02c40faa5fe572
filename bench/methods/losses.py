"""Training losses, chosen by name from the config (`train.loss.name`).

Every loss is a `LossFn` built by its entry in bench/registry.py LOSSES (the builders are at the end): an
nn.Module with forward(logits, y) -> scalar and set_epoch(epoch).
Class weights are handled once, in the base class: a loss owns an optional per-class weight buffer
(`class_weight`) and the first epoch from which it applies (`weight_from_epoch`):

- the class-balanced losses (cb_ce, cb_bce_softmax) apply the CB weights from epoch 0;
- deferred re-weighting (DRW, Cao et al. 2019; `drw_epoch` set) makes ANY loss apply the CB weights
  from epoch `drw_epoch` on and train unweighted before. For cb_ce / cb_bce_softmax this defers their
  own CB weights (they are not applied twice).

`set_epoch(e)` must be called at the start of every epoch for DRW to switch on (stage 1 does).
With class weights, a per-sample loss l_i is reduced as `loss.cb_normalizer` says:
- batch: sum_i w_{y_i} l_i / B, the per-sample weighted loss then the plain batch mean. Both reference
  codes divide by a count: the HS code's weighted CE (utils/class_balanced_loss.py, CB "softmax" mode:
  w_{y_i} * CE_i, then .mean()) and the WB code's BCE-on-softmax form (a mean over B*C entries). It
  keeps the class-balanced gradient on the scale of the unweighted one against weight decay.
- weights: sum_i w_{y_i} l_i / sum_i w_{y_i}, PyTorch's F.cross_entropy(weight=) convention (the LDAM-DRW
  code). It rescales the gradient by 1 / mean_i w_{y_i} (about 4.9x on CIFAR-100-LT IF 100 with beta
  0.9999), a factor that also varies from batch to batch.
cb_bce_softmax keeps its reference form (a mean over all B*C entries: a count, like batch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.config import LossConfig
from bench.registry import LOSSES


def cb_weights(class_counts: Sequence[int], beta: float) -> torch.Tensor:
    """Class-balanced weights from the effective number of samples (Cui et al. 2019, as used by WB).

    w_c = (1 - beta) / (1 - beta^{n_c}), then w <- w / sum(w) * C (so the weights average to 1).
    beta = 0 gives all ones; beta -> 1 tends to w_c ∝ 1 / n_c (inverse frequency), used at beta = 1.
    Computed in float64, returned as float32 of shape (C,).
    """
    n = torch.as_tensor(list(class_counts), dtype=torch.float64)
    if n.ndim != 1 or n.numel() == 0:
        raise ValueError("class_counts must be a non-empty 1-D list of counts")
    if bool((n < 1).any()):
        raise ValueError(f"class-balanced weights need every class count >= 1, got min {int(n.min())}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"cb beta must be in [0, 1], got {beta}")
    C = n.numel()
    if beta == 0.0:
        w = torch.ones_like(n)  # (1 - 0) / (1 - 0^n) = 1 for n >= 1
    elif beta == 1.0:
        w = 1.0 / n  # limit of (1 - beta) / (1 - beta^n) = 1 / n as beta -> 1
    else:
        # 1 - beta^n = -expm1(n * log(beta)), accurate for beta close to 1 (e.g. 0.9999).
        eff = -torch.expm1(n * math.log(beta))
        w = (1.0 - beta) / eff
    w = w / w.sum() * C
    return w.to(torch.float32)


class LossFn(nn.Module):
    """A loss: forward(logits, y) -> scalar; set_epoch(e) for losses that change over training.

    Holds the generic class-weight machinery: `class_weight` (buffer, (C,) or None) is applied from
    epoch `weight_from_epoch` on (None = never). Subclasses read `self.active_weight()`.
    """

    class_weight: torch.Tensor | None

    def __init__(self, class_weight: torch.Tensor | None = None, weight_from_epoch: int | None = None,
                 normalizer: str = "batch") -> None:
        super().__init__()
        if normalizer not in ("batch", "weights"):
            raise ValueError(f"cb normalizer must be batch or weights, got {normalizer!r}")
        self.register_buffer("class_weight", None if class_weight is None else class_weight.clone())
        self.weight_from_epoch = weight_from_epoch if class_weight is not None else None
        self.normalize_by = normalizer
        # Before any set_epoch call, the state of epoch 0.
        self._weight_on = self.weight_from_epoch is not None and self.weight_from_epoch <= 0

    multi_expert = False     # forward takes every expert's logits (B, K, C) (RIDE, SADE); else (B, C)

    def extra(self, logits: torch.Tensor) -> torch.Tensor | float:
        """Terms of the loss that are batch means whatever the class weights and do not depend on the labels
        (RIDE's diversity term): the training step adds them beside the regularisers, so that under DDP they
        take the sample share and the rest the share of the loss's normalizer. 0 for most losses."""
        return 0.0

    def set_epoch(self, epoch: int) -> None:
        """Switch the class weights on from `weight_from_epoch` (DRW), off before it."""
        self._weight_on = self.weight_from_epoch is not None and epoch >= self.weight_from_epoch

    def active_weight(self) -> torch.Tensor | None:
        """The per-class weights in force at the current epoch, or None (unweighted)."""
        return self.class_weight if self._weight_on else None

    def normalizer(self, y: torch.Tensor) -> torch.Tensor:
        """What this loss's batch mean divides by (float64): the batch size, or sum_i w_{y_i} with class
        weights and normalizer=weights. Under DDP each rank's loss is weighted by its share of the global
        normalizer, which makes the sum over ranks the loss of the global batch for either normalizer."""
        w = self.active_weight()
        if w is None or self.normalize_by == "batch":
            # a fill kernel, not torch.tensor(...): no host-to-device copy, so no stream sync per step
            return torch.full((), float(len(y)), dtype=torch.float64, device=y.device)
        return w.to(device=y.device, dtype=torch.float64)[y].sum()

    def weighted_mean(self, per_sample: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean of per-sample losses; with class weights sum_i w_{y_i} l_i divided by B or sum_i w_{y_i}."""
        w = self.active_weight()
        if w is None:
            return per_sample.mean()
        wy = w.to(per_sample.dtype)[y]
        total = (wy * per_sample).sum()
        return total / len(y) if self.normalize_by == "batch" else total / wy.sum()

    def weighted_ce(self, logits: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        """Cross-entropy with the active class weights (PyTorch's per-sample weighting, which also covers
        label smoothing), summed and divided by the normalizer: B (batch) or sum_i w_{y_i} (weights)."""
        w = self.active_weight()
        if w is None:
            return F.cross_entropy(logits, y, label_smoothing=label_smoothing)
        w = w.to(logits.dtype)
        if self.normalize_by == "weights":
            return F.cross_entropy(logits, y, weight=w, label_smoothing=label_smoothing)
        return F.cross_entropy(logits, y, weight=w, reduction="sum", label_smoothing=label_smoothing) / len(y)


class CrossEntropy(LossFn):
    """Cross-entropy. WB stage 1: plain CE over instance-balanced batches.

    With class weights (cb_ce, or DRW) each sample's CE is weighted by w_{y_i}; the sum is divided by B
    (normalizer=batch, the HS code's weighted CE) or by sum_i w_{y_i} (weights, F.cross_entropy(weight=w)).
    """

    def __init__(self, label_smoothing: float = 0.0, class_weight: torch.Tensor | None = None,
                 weight_from_epoch: int | None = None, normalizer: str = "batch") -> None:
        super().__init__(class_weight, weight_from_epoch, normalizer)
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.weighted_ce(logits, y, self.label_smoothing)


class CBSoftmaxBCE(LossFn):
    """The WB reference code's class-balanced loss: the "softmax" mode of the popular CB-loss code.

    p = softmax(z); t = one-hot(y); loss = mean over all B*C entries of
    w_{y_i} * BCE(p_ic, t_ic) = -w_{y_i} [t_ic log p_ic + (1 - t_ic) log(1 - p_ic)]
    (F.binary_cross_entropy with weight = w_{y_i} broadcast over row i; logs clamped at -100 by PyTorch).
    Not the same as weighted CE: it also pushes down the non-target probabilities and divides by B*C.
    With no active weight (DRW before drw_epoch) every w is 1.
    """

    def normalizer(self, y: torch.Tensor) -> torch.Tensor:
        # the reference form averages over all B*C entries whatever the weights: a count
        return torch.full((), float(len(y)), dtype=torch.float64, device=y.device)

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        C = logits.shape[1]
        p = logits.softmax(dim=1)
        onehot = F.one_hot(y, C).to(p.dtype)
        w = self.active_weight()
        if w is None:
            return F.binary_cross_entropy(p, onehot)
        row_w = w.to(p.dtype)[y].unsqueeze(1).expand(-1, C)
        return F.binary_cross_entropy(p, onehot, weight=row_w)


class FocalLoss(LossFn):
    """Focal loss (Lin et al. 2017), softmax form: mean_i -(1 - p_{y_i})^gamma log p_{y_i}.

    gamma = 0 is cross-entropy. Class weights (DRW) enter as the weighted mean of LossFn.
    """

    def __init__(self, gamma: float, class_weight: torch.Tensor | None = None,
                 weight_from_epoch: int | None = None, normalizer: str = "batch") -> None:
        super().__init__(class_weight, weight_from_epoch, normalizer)
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logp_y = F.log_softmax(logits, dim=1).gather(1, y.unsqueeze(1)).squeeze(1)
        p_y = logp_y.exp()
        per_sample = -((1.0 - p_y).clamp_min(0.0) ** self.gamma) * logp_y
        return self.weighted_mean(per_sample, y)


def ldam_margins(class_counts: Sequence[int], max_margin: float) -> torch.Tensor:
    """LDAM margins (Cao et al. 2019, Eq. 12): m_c ∝ n_c^{-1/4}, scaled so max_c m_c = max_margin."""
    n = torch.as_tensor(list(class_counts), dtype=torch.float64)
    if bool((n < 1).any()):
        raise ValueError("LDAM margins need every class count >= 1")
    m = n.pow(-0.25)
    return (m * (max_margin / m.max())).to(torch.float32)


class LDAMLoss(LossFn):
    """LDAM (Cao et al. 2019): CE(s * (z - m_y e_y)) -- the true-class logit lowered by its margin,
    then all logits scaled by s. Class weights (DRW, the LDAM-DRW recipe) as in CrossEntropy; the
    LDAM-DRW code divides by sum_i w_{y_i} (normalizer=weights).
    """

    margins: torch.Tensor

    def __init__(self, class_counts: Sequence[int], max_margin: float, scale: float,
                 class_weight: torch.Tensor | None = None, weight_from_epoch: int | None = None,
                 normalizer: str = "batch") -> None:
        super().__init__(class_weight, weight_from_epoch, normalizer)
        self.register_buffer("margins", ldam_margins(class_counts, max_margin))
        self.scale = scale

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        onehot = F.one_hot(y, logits.shape[1]).to(logits.dtype)
        adjusted = logits - onehot * self.margins.to(logits.dtype)[y].unsqueeze(1)
        return self.weighted_ce(self.scale * adjusted, y)


class AdjustedLogitsCE(LossFn):
    """CE on logits plus a fixed per-class offset: z_c + offset_c.

    logit_adjusted (Menon et al. 2021, Eq. 10): offset = tau * log(pi_c), pi_c = n_c / N.
    balanced_softmax (Ren et al. 2020): offset = log(n_c) (= tau 1 up to a constant, which CE ignores).
    The offset is used only in training; predict with the raw logits.
    """

    offset: torch.Tensor

    def __init__(self, offset: torch.Tensor, class_weight: torch.Tensor | None = None,
                 weight_from_epoch: int | None = None, normalizer: str = "batch") -> None:
        super().__init__(class_weight, weight_from_epoch, normalizer)
        self.register_buffer("offset", offset.to(torch.float32).clone())

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.weighted_ce(logits + self.offset.to(logits.dtype), y)


def las_smoothing(class_counts: Sequence[int], head: float, tail: float, shape: str = "concave") -> torch.Tensor:
    """Label-aware smoothing's per-class eps_c (MiSLAS, Zhong et al. 2021, Eq. 7; its LabelAwareSmoothing): from
    eps_K = tail at the smallest count n_K to eps_1 = head at the largest n_1.
    concave: eps_K + (eps_1 - eps_K) sin(pi (n_c - n_K) / (2 (n_1 - n_K))); linear: eps_K + (eps_1 - eps_K)
    (n_c - n_K) / (n_1 - n_K). With all counts equal, every class gets eps_1."""
    n = torch.as_tensor(list(class_counts), dtype=torch.float64)
    n_1, n_K = float(n.max()), float(n.min())
    r = (n - n_K) / (n_1 - n_K) if n_1 > n_K else torch.ones_like(n)
    if shape == "concave":
        r = torch.sin(math.pi / 2 * r)
    elif shape != "linear":
        raise ValueError(f"label-aware smoothing shape must be concave or linear, got {shape!r}")
    return (tail + (head - tail) * r).to(torch.float32)


class LabelAwareSmoothing(LossFn):
    """Label-aware smoothing (MiSLAS): per sample (1 - eps_y)(-log p_y) + eps_y mean_c(-log p_c), the form of the
    MiSLAS code (its smoothing mass spreads over all C classes, the true one included; the paper's Eq. 6 puts
    1 - eps_y on the true class alone). Class weights (DRW) enter as the weighted mean of LossFn."""

    eps: torch.Tensor

    def __init__(self, eps: torch.Tensor, class_weight: torch.Tensor | None = None,
                 weight_from_epoch: int | None = None, normalizer: str = "batch") -> None:
        super().__init__(class_weight, weight_from_epoch, normalizer)
        self.register_buffer("eps", eps.clone())

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits, dim=1)
        eps = self.eps.to(logp.dtype)[y]
        per_sample = (1.0 - eps) * -logp.gather(1, y.unsqueeze(1)).squeeze(1) + eps * -logp.mean(dim=1)
        return self.weighted_mean(per_sample, y)


class PerExpert(LossFn):
    """A single-model loss on a multi-expert model: the sum over experts of the loss of each expert's logits
    (independently trained experts, averaged at test time)."""

    multi_expert = True

    def __init__(self, inner: LossFn) -> None:
        super().__init__()
        self.inner = inner

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def normalizer(self, y: torch.Tensor) -> torch.Tensor:
        return self.inner.normalizer(y)

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return sum((self.inner(logits[:, k], y) for k in range(logits.shape[1])), logits.new_zeros(()))


class RIDELoss(LDAMLoss):
    """RIDE's loss (Wang et al. 2021; its RIDELoss): for every expert k, LDAM on the expert's logits (already s cos,
    so the margin enters as s m_y: LDAMLoss with scale 1 and margins s m) with DRW's class weights from
    `weight_from_epoch`, plus the diversity term lambda T^2 KL(p || q_k), q_k = softmax(z_k / T), p =
    softmax(mean_k z_k / T) held fixed (no gradient), a batch mean (`extra`). From DRW's epoch on T is per class,
    T_c = T0 w_c / max w with w_c = C pi_c a + 1 - a, and T^2 is its mean over classes squared. With lambda = 0
    the code applies LDAM to the mean logits instead of each expert's (its `ride_loss_logits`): kept."""

    multi_expert = True
    temperature: torch.Tensor

    def __init__(self, class_counts: Sequence[int], max_margin: float, scale: float, diversity: float,
                 temperature: float, temperature_factor: float, class_weight: torch.Tensor | None = None,
                 weight_from_epoch: int | None = None, normalizer: str = "batch") -> None:
        super().__init__(class_counts, max_margin, 1.0, class_weight, weight_from_epoch, normalizer)
        self.margins = self.margins * scale
        self.diversity, self.t0 = diversity, temperature
        n = torch.as_tensor(list(class_counts), dtype=torch.float64)
        w = len(n) * (n / n.sum()) * temperature_factor + 1 - temperature_factor
        self.register_buffer("temperature", (temperature * w / w.max()).to(torch.float32))

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        per_expert = [logits.mean(1)] * logits.shape[1] if self.diversity == 0 else logits.unbind(1)
        return sum((LDAMLoss.forward(self, z, y) for z in per_expert), logits.new_zeros(()))

    def extra(self, logits: torch.Tensor) -> torch.Tensor | float:
        if self.diversity == 0:
            return 0.0
        t = self.temperature.to(logits.dtype) if self._weight_on else logits.new_tensor(self.t0)
        with torch.no_grad():
            p = F.softmax(logits.mean(1) / t, dim=1)
        # F.kl_div(log q, p, 'batchmean') = sum_i sum_c p (log p - log q) / B = KL(p || q_k), a batch mean
        kl = sum(F.kl_div(F.log_softmax(z / t, dim=1), p, reduction="batchmean") for z in logits.unbind(1))
        return self.diversity * t.mean() ** 2 * kl


def mirrored_prior(prior: torch.Tensor) -> torch.Tensor:
    """SADE's inverse prior: class c gets the prior value at the mirrored rank C - 1 - rank(c) (ascending ranks; a
    stable sort orders tied classes by index), so [.2, .5, .3] becomes [.5, .2, .3]."""
    values, order = torch.sort(prior, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(prior))
    return values[len(prior) - 1 - rank]


class SADELoss(LossFn):
    """SADE's three experts (Zhang et al. 2022; its DiverseExpertLoss), summed: CE(z_1), the balanced softmax
    CE(z_2 + log pi) and the inverse softmax CE(z_3 + log pi - tau log pi~), pi the training prior and pi~ its
    mirror by rank (`mirrored_prior`). The code's + 1e-9 inside the logs changes nothing at float32 for a prior
    of counts >= 1 and is left out."""

    multi_expert = True
    offsets: torch.Tensor

    def __init__(self, class_counts: Sequence[int], tau: float, class_weight: torch.Tensor | None = None,
                 weight_from_epoch: int | None = None, normalizer: str = "batch") -> None:
        super().__init__(class_weight, weight_from_epoch, normalizer)
        n = torch.as_tensor(list(class_counts), dtype=torch.float64)
        log_prior = torch.log(n / n.sum())
        inverse = torch.log(mirrored_prior(n / n.sum()))
        self.register_buffer("offsets", torch.stack([torch.zeros_like(log_prior), log_prior,
                                                     log_prior - tau * inverse]).to(torch.float32))

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] != 3:
            raise ValueError(f"the SADE loss trains 3 experts, the model has {logits.shape[1]}")
        off = self.offsets.to(logits.dtype)
        return sum((self.weighted_ce(logits[:, k] + off[k], y) for k in range(3)), logits.new_zeros(()))


def make_loss(cfg: LossConfig, class_counts: list[int], experts: int = 1) -> LossFn:
    """Build the loss named by cfg.name (bench/registry.py LOSSES). `class_counts` (training n_c) is for
    class-aware losses.

    The CB weights (cfg.cb_beta) are applied from epoch 0 by cb_ce / cb_bce_softmax, and from
    cfg.drw_epoch on by every loss when DRW is set (then cb_* losses are unweighted before it); the
    weighted losses divide by cfg.cb_normalizer (cb_bce_softmax by its B*C entries).
    """
    if cfg.name not in LOSSES:
        raise ValueError(f"unknown loss {cfg.name!r} (known: {', '.join(LOSSES)})")
    if cfg.label_smoothing and cfg.name != "ce":
        raise ValueError(f"loss.label_smoothing is supported by loss 'ce' only, not {cfg.name!r}")
    counts = [int(c) for c in class_counts]
    if cfg.drw_epoch is not None:
        loss = LOSSES[cfg.name](cfg, counts, cb_weights(counts, cfg.cb_beta), int(cfg.drw_epoch))
    else:
        loss = LOSSES[cfg.name](cfg, counts, None, None)
    if loss.multi_expert and experts == 1:
        raise ValueError(f"loss {cfg.name!r} trains several experts; set model.experts")
    return PerExpert(loss) if experts > 1 and not loss.multi_expert else loss


# The builders bench/registry.py LOSSES names: (config, n_c, DRW's class weights, DRW's first epoch) -> the loss.
# Without DRW (weight None) a class-balanced loss applies its CB weights from epoch 0.

def build_cross_entropy(cfg: LossConfig, counts: list[int], weight: torch.Tensor | None,
                        start: int | None) -> LossFn:
    return CrossEntropy(cfg.label_smoothing, weight, start, cfg.cb_normalizer)


def build_class_balanced_ce(cfg: LossConfig, counts: list[int], weight: torch.Tensor | None,
                            start: int | None) -> LossFn:
    if weight is None:
        weight, start = cb_weights(counts, cfg.cb_beta), 0
    return CrossEntropy(cfg.label_smoothing, weight, start, cfg.cb_normalizer)


def build_cb_softmax_bce(cfg: LossConfig, counts: list[int], weight: torch.Tensor | None,
                         start: int | None) -> LossFn:
    if cfg.cb_normalizer != "batch":
        raise ValueError("loss.cb_normalizer: cb_bce_softmax averages over its B*C entries (WB code); use batch")
    if weight is None:
        weight, start = cb_weights(counts, cfg.cb_beta), 0
    return CBSoftmaxBCE(weight, start)


def build_focal(cfg: LossConfig, counts: list[int], weight: torch.Tensor | None, start: int | None) -> LossFn:
    return FocalLoss(cfg.focal_gamma, weight, start, cfg.cb_normalizer)


def build_ldam(cfg: LossConfig, counts: list[int], weight: torch.Tensor | None, start: int | None) -> LossFn:
    return LDAMLoss(counts, cfg.ldam_max_margin, cfg.ldam_scale, weight, start, cfg.cb_normalizer)


def build_logit_adjusted(cfg: LossConfig, counts: list[int], weight: torch.Tensor | None,
                         start: int | None) -> LossFn:
    n = torch.tensor(counts, dtype=torch.float64)
    return AdjustedLogitsCE(cfg.la_tau * torch.log(n / n.sum()), weight, start, cfg.cb_normalizer)


def build_balanced_softmax(cfg: LossConfig, counts: list[int], weight: torch.Tensor | None,
                           start: int | None) -> LossFn:
    n = torch.tensor(counts, dtype=torch.float64)
    return AdjustedLogitsCE(torch.log(n), weight, start, cfg.cb_normalizer)


def build_label_aware_smoothing(cfg: LossConfig, counts: list[int], weight: torch.Tensor | None,
                                start: int | None) -> LossFn:
    return LabelAwareSmoothing(las_smoothing(counts, cfg.las_head, cfg.las_tail, cfg.las_shape), weight, start,
                               cfg.cb_normalizer)


def build_ride(cfg: LossConfig, counts: list[int], weight: torch.Tensor | None, start: int | None) -> LossFn:
    return RIDELoss(counts, cfg.ldam_max_margin, cfg.ldam_scale, cfg.ride_diversity, cfg.ride_temperature,
                    cfg.ride_temperature_factor, weight, start, cfg.cb_normalizer)


def build_sade(cfg: LossConfig, counts: list[int], weight: torch.Tensor | None, start: int | None) -> LossFn:
    return SADELoss(counts, cfg.sade_tau, weight, start, cfg.cb_normalizer)
