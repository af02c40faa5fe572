"""Evaluation during and after training: the Evaluator (a split's per-class counts, exact across ranks),
the HS analysis of the reported model, and which epoch's weights are reported (eval.select)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from bench.config import Config, ConfigError
from bench.evaluation.analysis import class_weight_norms, cosine_similarity_stats, fisher_discriminant_ratio
from bench.evaluation.counts import EvalOutput, evaluate_batches
from bench.evaluation.metrics import group_metrics, per_class_accuracy
from bench.runtime import dist
from bench.runtime.rundir import RunDir, check_owner
from bench.train import checkpoint as ckpt


def select_reported(cfg: Config, run: RunDir, best_epoch: int | None, epochs: int, evaluator: Evaluator,
                    model: torch.nn.Module) -> tuple[int | None, dict[str, Any] | None]:
    """Load the best epoch's weights when eval.select=best. Returns (selected epoch, last-epoch test metrics
    when they differ from the reported ones); `evaluator` is the reporting one (eval.tta_flip)."""
    if cfg.eval.select == "best" and best_epoch is not None and best_epoch != epochs:   # None: no epoch (epochs 0)
        last_metrics, last_per_class, _ = evaluator.run("test")
        last_metrics = {**last_metrics, "per_class": last_per_class}   # finish() files it as its own key
        dist.barrier()  # best.pt is written by rank 0
        saved = ckpt.load(run.best_ckpt)
        check_owner(run.best_ckpt, saved.get("config_hash"), cfg.run_hash())
        if saved.get("epoch") != best_epoch:
            # best.pt is written before last.pt: an attempt killed between the two leaves a best.pt the resumed
            # run re-trains past; a resume that is not bit-exact (GPU) may then never overwrite it
            raise ConfigError(f"{run.best_ckpt} holds epoch {saved.get('epoch')}, but this run's best epoch is "
                              f"{best_epoch} (left by an interrupted attempt); rerun with eval.select=last, or from "
                              "scratch in a new run directory")
        with ckpt.fitting(run.best_ckpt):
            model.load_state_dict(saved["model"])
        return best_epoch, last_metrics
    return epochs, None


Batches = Callable[[str], Iterable[tuple[torch.Tensor, torch.Tensor]]]
def select_and_report(cfg: Config, build: Callable[[bool], Evaluator]) -> tuple[Evaluator, Evaluator]:
    """(selection, reporting) evaluators, built for flip TTA on or off: eval.select_tta_flip picks the best
    epoch / tau, eval.tta_flip reports. The WB code picks its best epoch on plain logits and reports with
    flip TTA (wb-reference); when both agree one evaluator serves both."""
    report = build(cfg.eval.tta_flip)
    select = report if cfg.eval.select_tta_flip == cfg.eval.tta_flip else build(cfg.eval.select_tta_flip)
    return select, report


class Evaluator:
    """Evaluates encoder + head on a named split; `batches(split)` yields that split's (inputs, labels)."""

    def __init__(self, encoder: Callable[[torch.Tensor], torch.Tensor], head: torch.nn.Module,
                 batches: Batches, num_classes: int, groups: dict[str, list[int]], device: torch.device,
                 tta_flip: bool = False, logit_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 modules: Iterable[torch.nn.Module] = ()) -> None:
        self.encoder, self.head, self.batches = encoder, head, batches
        self.num_classes, self.groups, self.device = num_classes, groups, device
        self.tta_flip, self.logit_fn, self.modules = tta_flip, logit_fn, list(modules)

    def run(self, split: str, keep_features: bool = False) -> tuple[dict[str, Any], list[float | None], EvalOutput]:
        modes = [m.training for m in self.modules]
        for m in self.modules:
            m.eval()
        out = evaluate_batches(self.encoder, self.head, self.batches(split), self.num_classes, self.device,
                               self.tta_flip, self.logit_fn, keep_features)
        if dist.active():
            # Exact across ranks: per-class counts are summed (never averaged accuracies); features and
            # labels are gathered in rank order, which is the split's order.
            dist.all_reduce_sum(out.correct), dist.all_reduce_sum(out.total)
            out.labels = dist.gather_cat(out.labels)
            if out.features is not None:
                out.features = dist.gather_cat(out.features)
        for m, mode in zip(self.modules, modes):
            m.train(mode)
        return group_metrics(out.correct, out.total, self.groups), per_class_accuracy(out.correct, out.total), out

    def __call__(self, split: str) -> dict[str, Any]:
        return self.run(split)[0]

    def analyze(self, split: str) -> dict[str, Any]:
        return analysis(self.head, self.run(split, keep_features=True)[2], split)


def analysis(head: torch.nn.Module, out: EvalOutput, split: str) -> dict[str, Any]:
    """HS analysis measures (Hasegawa & Sato 2024) on the pooled features of `split`."""
    res: dict[str, Any] = {"split": split}
    weight = getattr(head, "weight", None)
    if weight is not None:
        res["weight_norms"] = class_weight_norms(weight.detach().cpu())
    bias = getattr(head, "bias", None)
    if bias is not None:
        res["bias"] = [float(b) for b in bias.detach().cpu()]
    if out.features is not None and len(out.features) > 1:
        res["fdr"] = fisher_discriminant_ratio(out.features, out.labels)
        res["cosine"] = cosine_similarity_stats(out.features, out.labels)
        res["feature_norm_mean"] = float(out.features.norm(dim=1).mean())
    return res


