"""Stage 1: train backbone + classifier (WB feature learning; also the HS single-stage method).

WB: cross-entropy, SGD, weight decay on all parameters. HS: the same backbone with a fixed simplex-ETF
classifier (only its bias trains), weight decay written into the loss and feature regularisation on
the pooled feature; its logit adjustment is a separate `posthoc` run.
"""

from __future__ import annotations

import torch

from bench.config import Config
from bench.methods.adapters import finish_adapters, parameter_counts
from bench.methods.classifiers import CosineClassifier, fold_head, make_model
from bench.methods.distill import DistillLoss, Taught
from bench.methods.losses import LossFn, make_loss
from bench.methods.mixup import Mixup
from bench.methods.regularizers import make_regularizers
from bench.models.parts import (encode, freeze_all_but_last_blocks, freeze_convs_but_last_block, head_of,
                                train_all_but)
from bench.registry import CONTRAST
from bench.runtime.rundir import Result, RunDir
from bench.train.features import load_teacher
from bench.train.loop import Parts, fit, make_forward, wrap_forward
from bench.train.optim import make_optimizer, make_scheduler
from bench.train.select import Evaluator, select_and_report, select_reported
from bench.train.stage import Figures, Stage


def train_stage1(cfg: Config, run: RunDir, figures: Figures | None = None, teacher: RunDir | None = None) -> Result:
    """Train (or resume) the run in `run`; returns the result dict also written to result.json. `teacher`: the
    finished run train.distill.teacher names."""
    st = Stage.start(cfg, run, figures)
    device, data, groups = st.device, st.data, st.groups
    model = make_model(cfg, data).to(device)
    if cfg.train.freeze_convs:     # before a contrastive wrapper copies the model into its key encoder
        freeze_convs_but_last_block(model)
    # train.train_only_last_blocks: the rest of the model frozen and in eval mode (MiSLAS on Places-LT)
    trunk = freeze_all_but_last_blocks(model, cfg.train.train_only_last_blocks) \
        if cfg.train.train_only_last_blocks else []
    trainable = parameter_counts(model)
    if cfg.runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    st.open()  # only once data and model are known to be good: bad input leaves no directory

    t = cfg.train
    loader = data.train_loader(t.batch_size, cfg.seed, cfg.data.augment, t.drop_last, t.sampler,
                               cfg.runtime.workers, t.epoch_length,  # type: ignore[arg-type]  # set by setup_runtime
                               cfg.data.views)
    # What trains and is checkpointed: the model, or PaCo / GPaCo's wrapper of it (projection, key encoder)
    trained: torch.nn.Module = model
    loss: LossFn
    loss = make_loss(t.loss, data.class_counts, cfg.model.experts)
    if t.contrast.method is not None:
        trained, loss = CONTRAST[t.contrast.method](model, t.contrast, data.class_counts, cfg.seed, loss)
        trained.to(device)
        forward = wrap_forward(trained, device, cfg.runtime.compile)
    else:
        forward = make_forward(model, lambda x: encode(model, x), head_of(model), device, cfg.runtime.compile,
                               cfg.runtime.channels_last)
    if teacher is not None:   # RIDE's distillation: the teacher's prediction beside the logits, its KL in the loss
        forward = Taught(forward, load_teacher(cfg, data, teacher, device), t.distill.teacher_bn)
        loss = DistillLoss(loss, t.distill, cfg.model.experts)
    # train.backbone_lr_factor: all but the classifier at a fraction of the lr (SADE's Places-LT share_lr)
    backbone = None
    if t.backbone_lr_factor != 1:
        head_params = {id(p) for p in head_of(model).parameters()}
        backbone = {p: t.backbone_lr_factor for p in model.parameters() if id(p) not in head_params}
    optimizer = make_optimizer(trained, t, backbone)

    def batches(split: str):
        return data.eval_batches(split, cfg.eval.batch_size, cfg.runtime.workers)  # type: ignore[arg-type]

    select, evaluator = select_and_report(cfg, lambda tta: Evaluator(
        lambda x: encode(model, x), head_of(model), batches, data.num_classes, groups, device, tta, modules=[model]))
    # the trunk in eval mode: MiSLAS's `model.eval()` beside `block.train()`
    parts = Parts(forward=forward, loss=loss.to(device), state_module=trained,
                  set_train_mode=lambda: train_all_but(trained, trunk), loader=loader, optimizer=optimizer,
                  scheduler=make_scheduler(optimizer, t, len(loader)), evaluate=select,
                  analyze=select.analyze if cfg.eval.analysis_each_epoch else None,
                  regularizers=make_regularizers(t, model), amp=t.amp,
                  mixup=Mixup(t.mixup_alpha, cfg.seed) if t.mixup_alpha > 0 else None)
    state = fit(parts, run, t.epochs, cfg.eval.selection_split, device, cfg.runtime.checkpoint_every_steps,
                cfg.runtime.progress, st.tracker)

    # Report the best epoch on the selection split, or the last one.
    selected, last_metrics = select_reported(cfg, run, state.best_epoch, t.epochs, evaluator, trained)
    extra = {"epochs": t.epochs, "data_padded_per_epoch": loader.padded(), "trainable_params": trainable}
    head = head_of(model)
    if isinstance(head, CosineClassifier):
        zs = cfg.model.zeroshot
        extra["zeroshot"] = {"logit_scale": float(head.scale),  # type: ignore[arg-type]
                             "templates": list(zs.templates),
                             "text_model": zs.text_model,
                             "text_weights_file": zs.text_weights_file or cfg.model.pretrained_file,
                             "trained": t.epochs > 0}
    # final.pt holds a plain model: LoRA merged into its layers (AdaptFormer's branches stay), a cosine head
    # folded into a linear one
    if cfg.model.peft.method != "none":
        extra["peft"] = finish_adapters(model, cfg.model.peft)
    evaluator.head = fold_head(model)
    return st.finish(evaluator, evaluator.head, model, selected_epoch=selected, last_metrics=last_metrics,
                     extra=extra, state=state)
