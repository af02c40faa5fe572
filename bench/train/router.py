"""Stage 2 with `stage2.router`: RIDE's expert-assignment router trained on a finished multi-expert parent.

The parent's experts stay frozen with BatchNorm in eval mode (RIDE's EA config freezes them and sets frozen
BatchNorm to eval); each step computes their pooled features and logits without a graph, and only the routers
(bench/methods/router.py) train. The reported model routes at test time; result.json records how many experts
the test images used on average (RIDE reports it as its cost).
"""

from __future__ import annotations

import torch

from bench.config import Config, ConfigError
from bench.methods.router import ExpertRouter, RouterLoss
from bench.models.experts import ExpertCosineClassifiers
from bench.models.parts import encode, head_of
from bench.runtime import dist
from bench.runtime.rundir import Result, RunDir
from bench.train.features import load_parent_model
from bench.train.loop import Parts, fit, wrap_forward
from bench.train.optim import make_optimizer, make_scheduler
from bench.train.select import Evaluator, select_and_report, select_reported
from bench.train.stage import Figures, Stage


class RouterForward(torch.nn.Module):
    """x -> (h, the frozen experts' logits and the routers' logits): what the training step calls."""

    def __init__(self, model: torch.nn.Module, head: ExpertCosineClassifiers, router: ExpertRouter) -> None:
        super().__init__()
        self.model, self.router = model, router
        self._head = [head]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with torch.no_grad():
            h = encode(self.model, x)
            z = self._head[0].expert_logits(h)
        return h, {"logits": z.mean(1), "experts": z, "router": self.router(h, z)}


def train_router(cfg: Config, run: RunDir, parent: RunDir, figures: Figures | None = None) -> Result:
    st = Stage.start(cfg, run, figures)
    s2, device, data, groups = cfg.stage2, st.device, st.data, st.groups
    model = load_parent_model(cfg, data, parent, device)
    head = head_of(model)
    if not isinstance(head, ExpertCosineClassifiers):
        raise ConfigError(f"config key 'stage2.router': routes the experts of a multi-expert parent; {parent.path} has "
                          f"{type(head).__name__}")
    st.open(parent)
    for p in model.parameters():
        p.requires_grad_(False)
    router = ExpertRouter(head.experts, head.in_features // head.experts, head.out_features, s2.router_top).to(device)
    head.router = router                       # a submodule of the model: checkpointed and in final.pt
    t = s2.train
    loader = data.train_loader(t.batch_size, cfg.seed + 1_000_003, s2.augment, t.drop_last, t.sampler,
                               cfg.runtime.workers, t.epoch_length)  # type: ignore[arg-type]  # set by setup_runtime
    optimizer = make_optimizer(router, t)

    def set_train_mode() -> None:
        model.eval()                            # frozen experts, BatchNorm in eval mode
        router.train()

    select, evaluator = select_and_report(cfg, lambda tta: Evaluator(
        lambda x: encode(model, x), head,
        lambda s: data.eval_batches(s, cfg.eval.batch_size, cfg.runtime.workers),  # type: ignore[arg-type]
        data.num_classes, groups, device, tta, modules=[model]))
    parts = Parts(forward=wrap_forward(RouterForward(model, head, router), device), loss=RouterLoss(
        s2.router_pos_weight).to(device), state_module=model, set_train_mode=set_train_mode, loader=loader,
                  optimizer=optimizer, scheduler=make_scheduler(optimizer, t, len(loader)), evaluate=select, amp=t.amp)
    state = fit(parts, run, t.epochs, cfg.eval.selection_split, device, cfg.runtime.checkpoint_every_steps,
                cfg.runtime.progress, st.tracker)
    selected, last_metrics = select_reported(cfg, run, state.best_epoch, t.epochs, evaluator, model)
    model.eval()
    used, n = torch.zeros((), dtype=torch.float64), 0
    with torch.no_grad():
        for x, _ in data.eval_batches("test", cfg.eval.batch_size, cfg.runtime.workers):  # type: ignore[arg-type]
            h = encode(model, x.to(device))
            used += router.experts_used(h, head.expert_logits(h)).double().sum().cpu()
            n += len(x)
    used = dist.all_reduce_sum(used.to(device)).cpu()
    n_all = int(dist.all_reduce_sum(torch.tensor(float(n), dtype=torch.float64, device=device)))
    return st.finish(evaluator, head, model, selected_epoch=selected, last_metrics=last_metrics, state=state,
                     extra={"epochs": t.epochs, "parent": str(parent.path), "steps_per_epoch": len(loader),
                            "experts_used_mean": round(float(used) / max(1, n_all), 4)})
