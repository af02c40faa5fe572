"""The training-free post-hoc stage on a finished parent run: L2 / tau-norm of the classifier rows, or
additive / multiplicative logit adjustment, with tau fixed or chosen on the selection split."""

from __future__ import annotations

import copy
from typing import Any

import torch

from bench.config import Config, ConfigError
from bench.data.batches import InMemoryLoader, Split
from bench.data.views import ViewOptions, view_fn
from bench.methods.posthoc import choose_tau, class_prior, fit_aggregation
from bench.registry import POSTHOC
from bench.models.experts import ExpertCosineClassifiers
from bench.models.parts import encode, head_of
from bench.runtime.progress import log
from bench.runtime.rundir import Result, RunDir
from bench.train.features import eval_features, feature_batches, load_parent_model
from bench.train.select import Evaluator
from bench.train.stage import Figures, Stage


def run_posthoc(cfg: Config, run: RunDir, parent: RunDir, figures: Figures | None = None) -> Result:
    """L2-norm / tau-norm of the classifier rows, or additive / multiplicative logit adjustment.

    tau is fixed, or the value of `tau_grid` with the best accuracy on the selection split (ties: the
    first in grid order). Features are extracted once (eval mode), so each candidate costs one matmul.
    """
    st = Stage.start(cfg, run, figures)
    ph, device, data, groups = cfg.posthoc, st.device, st.data, st.groups
    model = load_parent_model(cfg, data, parent, device)
    st.open(parent)
    step = POSTHOC[ph.kind]
    if step.aggregates_experts:
        return _aggregate_experts(cfg, st, model, parent)
    fixed_tau = step.fixed_tau if step.fixed_tau is not None else ph.tau
    feats = eval_features(model, parent, data, cfg, device, selects=fixed_tau is None)
    base_head = head_of(model)
    prior = class_prior(data.class_counts).to(device)

    def adjusted(tau: float) -> tuple[torch.nn.Module, Any]:
        """(head, logit_fn) of this adjustment at this tau; the bias is left unchanged."""
        head = copy.deepcopy(base_head)
        if step.weight is not None:
            with torch.no_grad():
                head.weight.copy_(step.weight(base_head.weight, tau))  # type: ignore[operator]
        adjust = step.logits
        return head, None if adjust is None else (lambda z: adjust(z, prior, tau))

    def evaluator_for(tau: float, tta: bool) -> Evaluator:
        head, logit_fn = adjusted(tau)
        return Evaluator(lambda h: h, head, lambda s: feature_batches(feats[(s, tta)], cfg.eval.batch_size),
                         data.num_classes, groups, device, logit_fn=logit_fn, modules=[head])

    if fixed_tau is not None:
        tau, scores = fixed_tau, None
    else:
        sel = cfg.eval.selection_split
        if (sel, cfg.eval.select_tta_flip) not in feats:
            raise ConfigError("config key 'posthoc.tau': null needs a selection split to choose tau on "
                              f"(eval.selection_split={sel} is missing)")
        tau, _, scores = choose_tau(lambda tt: evaluator_for(tt, cfg.eval.select_tta_flip)(sel)["all"], ph.tau_grid)
        log(f"posthoc {ph.kind}: tau = {tau:g} chosen on {sel}")
    evaluator = evaluator_for(tau, cfg.eval.tta_flip)
    with torch.no_grad():
        head_of(model).weight.copy_(evaluator.head.weight)  # type: ignore[operator, arg-type]
    chosen_on = None if scores is None else cfg.eval.selection_split
    grid = None if scores is None else dict(zip(map(str, ph.tau_grid), scores))
    return st.finish(evaluator, evaluator.head, model, extra={
        "parent": str(parent.path), "posthoc": {"kind": ph.kind, "tau": tau, "chosen_on": chosen_on, "grid": grid}})


def _aggregate_experts(cfg: Config, st: Stage, model: torch.nn.Module, parent: RunDir) -> Result:
    """SADE's test-time self-supervised aggregation of a multi-expert parent (posthoc.kind sade_tta): the experts'
    weights fitted on two views of each unlabeled test image (bench/methods/posthoc.py fit_aggregation), then
    the test set scored with sum_k w_k z_k. Transductive: it reads the test images (never their labels), so the
    result says it chose on test."""
    ph, data = cfg.posthoc, st.data
    if not isinstance(data.test, Split):
        raise ConfigError("config key 'posthoc.kind': sade_tta draws two views of each test image from memory; "
                          "the test split here streams from shards")
    head = head_of(model)
    if not isinstance(head, ExpertCosineClassifiers):
        raise ConfigError(f"config key 'posthoc.kind': sade_tta weighs the experts of a multi-expert parent; "
                          f"{parent.path} has {type(head).__name__}")
    model.eval()
    # every process fits on the whole batches (rank 0 of 1): the same draws, so the same weights everywhere, as
    # the reference's one process; the evaluation below splits the test set over the processes as usual
    tta_views = view_fn(["crop_colour_blur", "crop_colour_blur"], 4, ViewOptions(blur=cfg.data.view_blur))
    views = InMemoryLoader(data.test, ph.tta_batch_size, seed=cfg.seed + 2_000_003, normalize=data.normalizer(),
                           crop_padding=4, rank=0, world=1, views=tta_views)
    weights, passes = fit_aggregation(
        lambda x: head(encode(model, x.to(st.device))), lambda e: (x for x, _ in views.epoch(e)), head.experts,
        ph.tta_epochs, ph.tta_lr, ph.tta_weight_decay, ph.tta_min_weight)
    with torch.no_grad():
        head.aggregation.copy_(head.experts * weights.to(head.aggregation.device))
    log(f"posthoc sade_tta: expert weights {[round(float(w), 3) for w in weights]} after {passes} passes")
    evaluator = Evaluator(lambda x: encode(model, x), head, lambda s: data.eval_batches(
        s, cfg.eval.batch_size, cfg.runtime.workers), data.num_classes, st.groups, st.device,  # type: ignore[arg-type]
        cfg.eval.tta_flip, modules=[model])
    return st.finish(evaluator, head, model, extra={
        "parent": str(parent.path),
        "posthoc": {"kind": ph.kind, "expert_weights": [float(w) for w in weights], "passes": passes,
                    "chosen_on": "test", "transductive": True}})
