"""What every stage recipe shares: its start (runtime, data, groups), the run directory it opens, and the one
way it ends (final.pt, result.json with provenance and cost, W&B summary, figures)."""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench import __version__
from bench.config import Config, ConfigError
from bench.data.lt import LTData, build_lt_data
from bench.evaluation.metrics import shot_groups
from bench.runtime import dist
from bench.runtime.process import setup_runtime
from bench.runtime.rundir import Result, RunDir
from bench.runtime.tracking import Tracker
from bench.train import checkpoint as ckpt
from bench.train.optim import effective_lr
from bench.train.select import Evaluator, analysis


def setup(cfg: Config) -> tuple[torch.device, LTData, dict[str, list[int]]]:
    """Runtime, the run's long-tailed data and its many / medium / few groups."""
    device = setup_runtime(cfg)
    if cfg.data.decode == "gpu" and (device.type != "cuda" or not cfg.data.shards):
        raise ConfigError(f"config key 'data.decode': gpu decodes JPEG shards on a CUDA device; this run has "
                          f"{'no data.shards' if not cfg.data.shards else f'device {device}'} (use data.decode=cpu)")
    data = build_lt_data(cfg.data)
    data.device = device          # uint8 batches are normalised on the device (bench.data.batches.Normalize)
    # groups.many / groups.few: None only before resolve() fills them from the dataset card
    return device, data, shot_groups(data.class_counts, cfg.groups.many, cfg.groups.few,  # type: ignore[arg-type]
                                     cfg.groups.inclusive)


# Draws figures of a finished run from its result into its directory: {W&B key: PNG path}. Passed in by
# bench/launch/run.py (the reporting layer), so training never imports plotting.
Figures = Callable[[Mapping[str, Any], Path], dict[str, Path]]


@dataclass
class Stage:
    """One stage recipe's context: what every recipe starts from (config, run directory, device, data, groups,
    start time) and the one way it ends (`finish`). `open` creates the run directory once the recipe knows
    its data and model are good, so bad input leaves no directory behind."""

    cfg: Config
    run: RunDir
    device: torch.device
    data: LTData
    groups: dict[str, list[int]]
    t_start: float
    figures: Figures | None = None
    tracker: Tracker | None = None

    @classmethod
    def start(cls, cfg: Config, run: RunDir, figures: Figures | None = None) -> Stage:
        t_start = time.time()
        device, data, groups = setup(cfg)
        return cls(cfg, run, device, data, groups, t_start, figures)

    def open(self, parent: RunDir | None = None) -> None:
        """config.yaml, run.json (with the parent run), and the tracker."""
        self.run.prepare(self.cfg)
        info = run_info(self.cfg, self.data, self.groups, self.device)
        self.run.write_json("run.json", info if parent is None else {**info, "parent": str(parent.path)})
        self.tracker = Tracker(self.cfg, self.run, None if parent is None else {"parent_run": str(parent.path)})

    def finish(self, evaluator: Evaluator, head: torch.nn.Module, state_module: torch.nn.Module, *,
               selected_epoch: int | None = None, last_metrics: dict[str, Any] | None = None,
               extra: dict[str, Any] | None = None, state: Any = None) -> Result:
        """Evaluate the reported model on test (and val), save its weights as final.pt, write result.json
        (and the W&B summary and per-class table, with the figures `figures` draws from the result)."""
        cfg, run, data = self.cfg, self.run, self.data
        test_metrics, test_per_class, out = evaluator.run("test", keep_features=True)
        val_metrics = evaluator("val") if data.val is not None else None
        if dist.is_main():
            ckpt.save_atomic({"model": state_module.state_dict(), "config_hash": cfg.run_hash()}, run.final_ckpt)
        result: Result = {
            "status": "complete",
            "name": cfg.name,
            "dataset": cfg.data.dataset,
            "imbalance_factor": cfg.data.imbalance_factor,
            "method": cfg.method,
            "protocol": cfg.protocol,
            "seed": cfg.seed,
            "stage": cfg.stage,
            "model": cfg.model.name,
            "experts": cfg.model.experts,        # RIDE / SADE's multi-expert form (1: the model as it is)
            "metrics": test_metrics,
            "val_metrics": val_metrics,
            "selected_epoch": selected_epoch,
            "selection": {"split": cfg.eval.selection_split, "select": cfg.eval.select, "tta_flip": cfg.eval.tta_flip,
                          "select_tta_flip": cfg.eval.select_tta_flip},
            "metrics_last_epoch": {k: v for k, v in (last_metrics or test_metrics).items() if k != "per_class"},
            # per-class accuracy of the last epoch when another epoch is reported (a class that collapses
            # late, as shirt in WB's stage 2 on Fashion-MNIST-LT, shows only here)
            "per_class_acc_last_epoch": (last_metrics or {}).get("per_class", test_per_class),
            "per_class_acc": test_per_class,
            "class_counts": data.class_counts,
            "class_names": data.class_names,
            "groups": evaluator.groups,
            "group_thresholds": {"many": cfg.groups.many, "few": cfg.groups.few, "inclusive": cfg.groups.inclusive},
            "analysis": analysis(head, out, "test"),
            "selection_hash": data.selection_hash,
            "data_manifest": data.manifest_digest,
            "data_errors": data_errors(data, state),
            "preprocessing": preprocessing(cfg),
            "world_size": dist.world(),
            "config_hash": cfg.run_hash(),
            "parent_hash": cfg.parent_hash,
            "wall_time_s": round(time.time() - self.t_start, 1),
            "cost": run_cost(self.t_start, state, evaluator.device),
            **(extra or {}),  # type: ignore[typeddict-item]
        }
        run.write_result(result)
        images = self.figures(result, run.path) if self.figures is not None and dist.is_main() else {}
        if self.tracker is not None:
            self.tracker.finish(result, images)
        return result


def preprocessing(cfg: Config) -> dict[str, Any]:
    """The input pipeline the model saw (resolved config): normalisation statistics and their source, sizes."""
    d = cfg.data
    return {"source": d.input_stats, "mean": d.mean, "std": d.std, "to_rgb": d.to_rgb, "pad_to": d.pad_to,
            "resize": d.resize, "image_size": d.image_size, "eval_resize": d.eval_resize}


def run_cost(t_start: float, state: Any, device: torch.device) -> dict[str, Any]:
    """What the run cost: wall seconds of its checkpointed work over every attempt (requeues included; what
    a killed attempt did after its last checkpoint is lost and not counted), plus this attempt's work
    since its last checkpoint (the final evaluation), times the processes, on which device."""
    now = time.time()
    if state is not None and hasattr(state, "unsaved_since"):
        seconds = state.spent_s + now - state.unsaved_since
    else:
        seconds = now - t_start            # no training loop (post-hoc): this attempt only
    kind = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    return {"device": kind, "gpu": device.type == "cuda", "processes": dist.world(), "seconds": round(seconds, 1),
            "device_hours": round(seconds * dist.world() / 3600, 5)}


def data_errors(data: LTData, state: Any) -> dict[str, Any] | None:
    """Unreadable samples skipped with data.on_error=skip (None for in-memory data): never silent."""
    if not data.streamed:
        return None
    train = getattr(state, "data_skipped", 0)
    examples = list(getattr(state, "data_skipped_examples", []))
    evals = {split: n for split, (n, _) in data.eval_skipped.items()}
    for _, holes in data.eval_skipped.values():
        examples += holes[: max(0, 10 - len(examples))]
    return {"train_skipped": train, "eval_skipped": evals, "examples": examples}


def run_info(cfg: Config, data: LTData, groups: dict[str, list[int]], device: torch.device) -> dict[str, Any]:
    """Provenance of the run: what data it saw and what software ran it."""
    return {
        "ltbench": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
        "device": str(device),
        "command": sys.argv,
        "data_root": data.root,
        "class_counts": data.class_counts,
        "num_train": len(data.train),
        "num_val": len(data.val) if data.val is not None else 0,
        "num_test": len(data.test),
        "selection_hash": data.selection_hash,
        "data_manifest": data.manifest_digest,
        "world_size": dist.world(),
        "lr_effective": effective_lr(cfg.train if cfg.stage == "stage1" else cfg.stage2.train),
        "groups": groups,
    }
