"""Stage 1: train backbone + classifier with a named loss, SGD and weight decay (WB feature learning).

The loop reads top to bottom: build everything, restore the latest checkpoint if there is one, run the
remaining epochs (evaluating the selection split after each), then evaluate the selected model on
test and write result.json.
"""

from __future__ import annotations

import os
import platform
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from bench import __version__
from bench.config import Config
from bench.data.batches import InMemoryLoader, Normalize
from bench.data.lt import LTData, build_lt_data
from bench.evaluation import class_counts_correct
from bench.methods.losses import make_loss
from bench.metrics import group_metrics, per_class_accuracy, shot_groups
from bench.models import build_model
from bench.progress import Progress, log
from bench.rundir import RunDir
from bench.train import checkpoint as ckpt
from bench.train.optim import make_optimizer, make_scheduler


@dataclass
class TrainState:
    """Position and bookkeeping saved in every checkpoint (with model, optimiser, scheduler and RNG)."""

    epoch: int = 0                     # epochs completed
    step: int = 0                      # optimiser steps completed inside the current epoch
    loss_sum: float = 0.0              # running sums of the current epoch (so a resumed epoch logs the same)
    correct_sum: int = 0
    seen: int = 0
    best_metric: float = -1.0
    best_epoch: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


def setup_runtime(cfg: Config) -> torch.device:
    """Threads, determinism and the device; seeds every global RNG from cfg.seed."""
    rt = cfg.runtime
    torch.set_num_threads(rt.threads or os.cpu_count() or 1)
    if rt.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if rt.device == "cuda" or (rt.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def evaluate(model: torch.nn.Module, data: LTData, split: str, cfg: Config, normalize: Normalize,
             groups: dict[str, list[int]], device: torch.device) -> tuple[dict[str, Any], list[float | None]]:
    correct, total = class_counts_correct(model, data.split(split), data.num_classes, normalize,
                                          cfg.eval.batch_size, device, cfg.eval.tta_flip)
    return group_metrics(correct, total, groups), per_class_accuracy(correct, total)


def train_stage1(cfg: Config, run: RunDir) -> dict[str, Any]:
    """Train (or resume) the run in `run`; returns the result dict also written to result.json."""
    t_start = time.time()
    device = setup_runtime(cfg)
    data = build_lt_data(cfg.data)
    groups = shot_groups(data.class_counts, cfg.groups.many, cfg.groups.few, cfg.groups.inclusive)
    model = build_model(cfg.model.name, num_classes=data.num_classes, in_chans=data.in_chans,
                        pretrained_file=cfg.model.pretrained_file, drop_rate=cfg.model.drop_rate).to(device)
    run.prepare(cfg)  # only once data and model are known to be good: bad input leaves no directory
    run.write_json("run.json", run_info(cfg, data, groups, device))
    normalize = Normalize(data.mean, data.std, data.in_chans)
    loader = InMemoryLoader(data.train, cfg.train.batch_size, cfg.seed, normalize, cfg.data.augment,
                            cfg.data.crop_padding, cfg.train.drop_last)
    optimizer = make_optimizer(model, cfg.train)
    scheduler = make_scheduler(optimizer, cfg.train, len(loader))
    loss_fn = make_loss(cfg.train.loss, data.class_counts).to(device)
    state = TrainState()

    if run.last_ckpt.is_file():
        saved = ckpt.load(run.last_ckpt)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        ckpt.set_rng_state(saved["rng"])
        state = TrainState(**saved["state"])
        run.write_metrics(state.history)
        log(f"resuming {run.path} at epoch {state.epoch + 1}, step {state.step}")

    def save_last() -> None:
        ckpt.save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "scheduler": scheduler.state_dict(), "rng": ckpt.rng_state(),
                          "state": state.__dict__}, run.last_ckpt)

    every = cfg.runtime.checkpoint_every_steps
    for epoch in range(state.epoch, cfg.train.epochs):
        model.train()
        loss_fn.set_epoch(epoch)  # deferred re-weighting switches its class weights on by epoch
        t_epoch, start_step, n_images = time.time(), state.step, 0
        # Sums stay on the device inside the epoch: no per-step host synchronisation.
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct_sum = torch.zeros((), dtype=torch.int64, device=device)
        bar = Progress(len(loader), f"epoch {epoch + 1}/{cfg.train.epochs}", cfg.runtime.progress, start=start_step)
        for x, y in loader.epoch(epoch, start_step):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            logits = model(x)
            loss = loss_fn(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach().double() * len(y)
            correct_sum += (logits.detach().argmax(1) == y).sum()
            state.step += 1
            state.seen += len(y)
            n_images += len(y)
            bar.update()
            if every and state.step % every == 0 and state.step < len(loader):
                state.loss_sum += float(loss_sum)
                state.correct_sum += int(correct_sum)
                loss_sum.zero_(), correct_sum.zero_()
                save_last()
        bar.close()
        state.loss_sum += float(loss_sum)
        state.correct_sum += int(correct_sum)

        # End of epoch: evaluate the selection split, remember the best epoch, checkpoint.
        sel_metrics, _ = evaluate(model, data, cfg.eval.selection_split, cfg, normalize, groups, device)
        row = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"],
               "train_loss": state.loss_sum / max(1, state.seen),
               "train_acc": 100.0 * state.correct_sum / max(1, state.seen),
               cfg.eval.selection_split: sel_metrics,
               "epoch_time_s": round(time.time() - t_epoch, 2),
               "images_per_s": round(n_images / max(1e-9, time.time() - t_epoch), 1)}
        state.history.append(row)
        if sel_metrics["all"] > state.best_metric:
            state.best_metric, state.best_epoch = sel_metrics["all"], epoch + 1
            ckpt.save_atomic({"model": model.state_dict(), "epoch": epoch + 1}, run.best_ckpt)
        state.epoch, state.step, state.loss_sum, state.correct_sum, state.seen = epoch + 1, 0, 0.0, 0, 0
        save_last()
        run.write_metrics(state.history)
        log(f"epoch {epoch + 1}/{cfg.train.epochs} loss {row['train_loss']:.4f} train {row['train_acc']:.2f}% "
            f"{cfg.eval.selection_split} {sel_metrics['all']:.2f}% ({row['images_per_s']:.0f} img/s)")

    # Final evaluation of the selected weights on test (and val when there is one).
    result_last = None
    if cfg.eval.select == "best" and state.best_epoch != cfg.train.epochs:
        result_last, _ = evaluate(model, data, "test", cfg, normalize, groups, device)
        model.load_state_dict(ckpt.load(run.best_ckpt)["model"])
    test_metrics, test_per_class = evaluate(model, data, "test", cfg, normalize, groups, device)
    val_metrics = evaluate(model, data, "val", cfg, normalize, groups, device)[0] if data.val is not None else None
    result = {
        "status": "complete",
        "name": cfg.name,
        "dataset": cfg.data.dataset,
        "imbalance_factor": cfg.data.imbalance_factor,
        "method": cfg.method,
        "seed": cfg.seed,
        "stage": "stage1",
        "model": cfg.model.name,
        "metrics": test_metrics,
        "val_metrics": val_metrics,
        "selected_epoch": state.best_epoch if cfg.eval.select == "best" else cfg.train.epochs,
        "selection": {"split": cfg.eval.selection_split, "select": cfg.eval.select},
        "metrics_last_epoch": result_last or test_metrics,
        "per_class_acc": test_per_class,
        "class_counts": data.class_counts,
        "class_names": data.class_names,
        "groups": groups,
        "group_thresholds": {"many": cfg.groups.many, "few": cfg.groups.few, "inclusive": cfg.groups.inclusive},
        "selection_hash": data.selection_hash,
        "config_hash": cfg.run_hash(),
        "epochs": cfg.train.epochs,
        "wall_time_s": round(time.time() - t_start, 1),
    }
    run.write_json("result.json", result)
    if cfg.runtime.plot:
        from bench.plots import plot_per_class
        plot_per_class(result, run.path / "per_class.png")
    return result


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
        "groups": groups,
    }
