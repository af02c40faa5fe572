"""Stage 2 (WB classifier learning) and the training-free post-hoc stage, both on a finished parent run.

Stage 2 freezes the parent's backbone and retrains its linear classifier with a class-balanced loss,
weight decay and MaxNorm (projected gradient descent, Alshammari et al. 2022); cRT re-initialises that
classifier first and LWS learns only a scale per class on it (Kang et al. 2020). With no augmentation and
BatchNorm in eval mode the backbone is a fixed function, so its features are extracted once and the
classifier trains on them (the same classifier, far faster).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from bench import dist
from bench.config import Config, ConfigError, load_parent, parent_path
from bench.data.batches import InMemoryLoader, Split, eval_batches
from bench.data.lt import LTData
from bench.methods.classifiers import MaxNorm, ScaledLinear, fold_head, make_model, maxnorm_radius
from bench.methods.losses import make_loss
from bench.methods.posthoc import POSTHOC, choose_tau, class_prior
from bench.models.parts import encode, head_of, set_head
from bench.progress import log
from bench.rundir import RunDir, check_owner
from bench.train import checkpoint as ckpt
from bench.train.common import Evaluator, Figures, Stage, select_and_report, select_reported
from bench.train.loop import Parts, fit, make_forward
from bench.train.optim import make_optimizer, make_scheduler


def parent_run(cfg: Config, runs_root: str | Path, base: Path = Path(".")) -> RunDir:
    """The finished run a stage2/posthoc config starts from; a clear error if it is missing or incomplete."""
    assert cfg.parent is not None
    cand = parent_path(cfg.parent, base)
    if cand.is_dir():
        run = RunDir(cand)
    elif cfg.parent_run:          # the lineage load_config resolved
        run = RunDir(Path(runs_root) / cfg.parent_run)
    else:                         # a config stored before parent_run was recorded
        run = RunDir.for_config(load_parent(cfg.parent, cfg.seed, base), runs_root)
    if not run.path.is_dir():
        raise ConfigError(f"{cfg.stage} needs its parent run {run.path}, which does not exist: run "
                          f"`ltbench run {cfg.parent} seed={cfg.seed}` first")
    if not run.is_complete() or not run.final_ckpt.is_file():
        raise ConfigError(f"{cfg.stage} needs its parent run {run.path} to be complete (no result.json / "
                          f"final.pt yet): finish it with `ltbench run {cfg.parent} seed={cfg.seed}`")
    result = run.read_result()
    if cfg.parent_hash is not None:   # the parent's files must be the run this config was resolved against
        check_owner(run.result_file, result.get("config_hash"), cfg.parent_hash, "parent config")
    kind = (result.get("posthoc") or {}).get("kind")
    if kind in POSTHOC and POSTHOC[kind].logits is not None:
        raise ConfigError(f"config key 'parent': {run.path} is a logit-adjustment run ({kind}); its final.pt holds "
                          "the unadjusted classifier, so start from its own parent instead")
    return run


def load_parent_model(cfg: Config, data: LTData, parent: RunDir, device: torch.device) -> torch.nn.Module:
    model = make_model(cfg, data, init=False)   # final.pt's architecture: plain layers, its weights loaded below
    saved = ckpt.load(parent.final_ckpt)
    if cfg.parent_hash is not None:
        check_owner(parent.final_ckpt, saved.get("config_hash"), cfg.parent_hash, "parent config")
    with ckpt.fitting(parent.final_ckpt):
        model.load_state_dict(saved["model"])
    return model.to(device)


@torch.no_grad()
def extract_features(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                     device: torch.device, tta_flip: bool = False) -> Split:
    """Pooled features of a split in eval mode (and, for TTA, the mean with the flipped image's features:
    the head is affine, so head(mean) equals the mean of the two logits)."""
    model.eval()
    feats, labels = [], []
    for x, y in batches:
        x = x.to(device)
        h = encode(model, x)
        if tta_flip:
            h = (h + encode(model, x.flip(3))) / 2
        feats.append(h.float().cpu())
        labels.append(y)
    return Split(torch.cat(feats), torch.cat(labels))


def parent_features(model: torch.nn.Module, parent: RunDir, data: LTData, split: str, batch_size: int,
                    device: torch.device, tta_flip: bool = False, workers: int = 0) -> Split:
    """Features of the parent's final model, extracted once and kept in its run directory.

    A finished run's final.pt never changes, so every stage-2 / post-hoc child (a hyperparameter grid,
    say) reuses them; a feature file that does not match the split is recomputed.
    """
    path = parent.path / "features" / f"{split}{'-tta' if tta_flip else ''}.pt"
    # The cache is keyed by what was read: the labels in order, and for shards the manifest digest.
    source = {"manifest": data.manifest_digest, "selection_hash": data.selection_hash}
    labels = data.labels(split)
    if path.is_file():
        try:
            saved = ckpt.load(path)
            if saved.get("source") == source and torch.equal(saved["y"], labels):
                log(f"features of {split}: reusing {path}")
                return Split(saved["x"], saved["y"])
        except ckpt.CheckpointError:
            pass
    feats = extract_features(model, data.eval_batches(split, batch_size, workers), device, tta_flip)
    # Under DDP each rank extracted its contiguous part; gathered in rank order, they are the whole split.
    feats = Split(dist.gather_cat(feats.x), dist.gather_cat(feats.y))
    if not torch.equal(feats.y, labels):  # on_error=skip dropped samples: usable, but never cached
        return feats
    if dist.is_main():
        ckpt.save_atomic({"x": feats.x, "y": feats.y, "source": source}, path)
    return feats


def eval_features(model: torch.nn.Module, parent: RunDir, data: LTData, cfg: Config, device: torch.device,
                  selects: bool = True) -> dict[tuple[str, bool], Split]:
    """Parent features of the evaluated splits by (split, flip TTA): every split as reported (eval.tta_flip)
    and, when something is selected on it, the selection split as selected on (eval.select_tta_flip)."""
    splits = ("val", "test") if data.val is not None else ("test",)
    want = {(s, cfg.eval.tta_flip) for s in splits}
    if selects and cfg.eval.selection_split in splits:
        want.add((cfg.eval.selection_split, cfg.eval.select_tta_flip))
    return {key: parent_features(model, parent, data, key[0], cfg.eval.batch_size, device, key[1], cfg.runtime.workers)
            for key in sorted(want)}   # one order on every rank: extraction gathers across them


def feature_batches(split: Split, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Cached features in order; under DDP this rank's part (the evaluator sums counts over ranks)."""
    return eval_batches(split, batch_size, None, dist.rank(), dist.world())


def last_blocks(model: torch.nn.Module, k: int) -> list[str]:
    """Parameter names of the last k backbone blocks, by timm's fine-grained group_matcher (the final
    group is the classifier and is excluded)."""
    if k == 0:
        return []
    from timm.models import group_parameters

    groups = group_parameters(model, model.group_matcher(coarse=False))
    blocks = [groups[g] for g in sorted(groups)][:-1]
    if k > len(blocks):
        raise ConfigError(f"config key 'stage2.train_blocks': {k} is more than the {len(blocks)} blocks of {type(model).__name__}")
    return [n for names in blocks[-k:] for n in names]


def check_stage2(cfg: Config) -> None:
    """Combinations of stage-2 fields that name no method."""
    s2 = cfg.stage2
    if s2.lws and s2.reinit_classifier:
        raise ConfigError("config key 'stage2.lws': LWS scales the stage-1 classifier, so it cannot start from a "
                          "re-initialised one (stage2.reinit_classifier=true is cRT); choose one")
    if s2.lws and s2.maxnorm:
        raise ConfigError("config key 'stage2.lws': LWS trains only the per-class scales, not the rows MaxNorm "
                          "projects; set stage2.maxnorm=false")


def train_stage2(cfg: Config, run: RunDir, parent: RunDir, figures: Figures | None = None) -> dict[str, Any]:
    check_stage2(cfg)
    st = Stage.start(cfg, run, figures)
    s2, device, data, groups = cfg.stage2, st.device, st.data, st.groups
    model = load_parent_model(cfg, data, parent, device)
    head = head_of(model)
    if not isinstance(head, torch.nn.Linear):
        raise ConfigError(f"stage2 retrains a linear classifier; the parent run {parent.path} has {type(head).__name__}")
    st.open(parent)

    # Freeze the backbone; the classifier (weight and bias) and the last `train_blocks` blocks train.
    trained = set(last_blocks(model, s2.train_blocks))
    for name, p in model.named_parameters():
        p.requires_grad_(name in trained)
    for p in head.parameters():
        p.requires_grad_(True)
    radius = maxnorm_radius(head.weight.detach(), s2.maxnorm_thresh)
    if s2.reinit_classifier:
        head.reset_parameters()       # cRT: a fresh classifier (the global RNG is seeded from cfg.seed)
    if s2.lws:                        # LWS: the rows stay frozen; the model owns the scales (checkpoints)
        head = ScaledLinear(head)
        set_head(model, head)
    t = s2.train
    cached = s2.cache_features and s2.augment == "none" and s2.bn_mode == "eval" and not trained
    seed = cfg.seed + 1_000_003  # a stream of its own, not a replay of stage 1's first epochs

    if cached:
        t0 = time.time()
        train = parent_features(model, parent, data, "train", cfg.eval.batch_size, device, False, cfg.runtime.workers)
        feats = eval_features(model, parent, data, cfg, device)
        log(f"stage 2: {len(data.train)} training features ready in {time.time() - t0:.1f} s")
        loader = InMemoryLoader(train, t.batch_size, seed=seed, normalize=None, augment="none", crop_padding=0,
                                drop_last=t.drop_last, sampler=t.sampler, num_classes=data.num_classes,
                                rank=dist.rank(), world=dist.world())
        encoder = lambda x: x  # noqa: E731 - the features are the input
        # flip TTA is already in the features (the mean of x's and flip(x)'s: the head is affine)
        select, evaluator = select_and_report(cfg, lambda tta: Evaluator(
            encoder, head, lambda s: feature_batches(feats[(s, tta)], cfg.eval.batch_size), data.num_classes,
            groups, device))
        set_train_mode = head.train
    else:
        loader = data.train_loader(t.batch_size, seed, s2.augment, t.drop_last, t.sampler, cfg.runtime.workers)

        def encoder(x: torch.Tensor) -> torch.Tensor:
            # Frozen backbone: no graph (BN running stats still move in train mode, as in the WB code).
            # With trained blocks, autograd reaches only them: the rest has requires_grad False.
            with torch.set_grad_enabled(bool(trained)):
                return encode(model, x)

        select, evaluator = select_and_report(cfg, lambda tta: Evaluator(
            lambda x: encode(model, x), head, lambda s: data.eval_batches(s, cfg.eval.batch_size, cfg.runtime.workers),
            data.num_classes, groups, device, tta, modules=[model]))

        def set_train_mode() -> None:
            model.train(s2.bn_mode == "train")

    optimizer = make_optimizer(model, t)  # over what requires grad: the head (+ trained blocks)
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
                            "data_padded_per_epoch": loader.padded(), "trained_blocks": s2.train_blocks,
                            "maxnorm_radius": radius if s2.maxnorm else None})


def run_posthoc(cfg: Config, run: RunDir, parent: RunDir, figures: Figures | None = None) -> dict[str, Any]:
    """L2-norm / tau-norm of the classifier rows, or additive / multiplicative logit adjustment.

    tau is fixed, or the value of `tau_grid` with the best accuracy on the selection split (ties: the
    first in grid order). Features are extracted once (eval mode), so each candidate costs one matmul.
    """
    st = Stage.start(cfg, run, figures)
    ph, device, data, groups = cfg.posthoc, st.device, st.data, st.groups
    model = load_parent_model(cfg, data, parent, device)
    st.open(parent)
    step = POSTHOC[ph.kind]
    fixed_tau = step.fixed_tau if step.fixed_tau is not None else ph.tau
    feats = eval_features(model, parent, data, cfg, device, selects=fixed_tau is None)
    base_head = head_of(model)
    prior = class_prior(data.class_counts).to(device)

    def adjusted(tau: float) -> tuple[torch.nn.Module, Any]:
        """(head, logit_fn) of this adjustment at this tau; the bias is left unchanged."""
        head = copy.deepcopy(base_head)
        if step.weight is not None:
            with torch.no_grad():
                head.weight.copy_(step.weight(base_head.weight, tau))
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
        head_of(model).weight.copy_(evaluator.head.weight)
    chosen_on = None if scores is None else cfg.eval.selection_split
    grid = None if scores is None else dict(zip(map(str, ph.tau_grid), scores))
    return st.finish(evaluator, evaluator.head, model, extra={
        "parent": str(parent.path), "posthoc": {"kind": ph.kind, "tau": tau, "chosen_on": chosen_on, "grid": grid}})
