"""The one training loop every stage and method runs; methods differ only in the Parts they hand it.

A step is: features h = encoder(x); logits = head(h); loss = loss(logits, y) + sum of regularizers(h);
SGD step; scheduler step; constraints after the step (MaxNorm, cadence step). After each epoch:
constraints with cadence epoch, evaluation of the selection split, best/last checkpoints.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from bench.data.batches import InMemoryLoader
from bench.data.cards import DatasetError
from bench.data.shards import ShardLoader
from bench.methods.losses import LossFn
from bench.progress import Progress, log
from bench.rundir import RunDir
from bench.train import checkpoint as ckpt


class Constraint(Protocol):
    """A projection applied to the trained parameters (e.g. MaxNorm)."""

    def after_step(self) -> None: ...

    def after_epoch(self) -> None: ...


@dataclass
class Parts:
    """What one training stage is made of."""

    encoder: Callable[[torch.Tensor], torch.Tensor]   # x -> pooled features (backbone, frozen backbone, identity)
    head: torch.nn.Module                              # features -> logits
    loss: LossFn
    state_module: torch.nn.Module                      # what checkpoints save and restore
    set_train_mode: Callable[[], None]                 # e.g. frozen backbone in eval mode, head in train mode
    loader: InMemoryLoader | ShardLoader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    evaluate: Callable[[str], dict[str, Any]]          # split name -> all/many/medium/few
    analyze: Callable[[str], dict[str, Any]] | None = None    # per-epoch analysis measures, when asked
    regularizers: list[Callable[[torch.Tensor], torch.Tensor]] = field(default_factory=list)
    constraints: list[Constraint] = field(default_factory=list)


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
    data_skipped: int = 0              # shards with data.on_error=skip: unreadable samples dropped so far
    data_skipped_examples: list[str] = field(default_factory=list)


def fit(parts: Parts, run: RunDir, epochs: int, selection_split: str, device: torch.device,
        checkpoint_every: int = 0, progress: str = "auto") -> TrainState:
    """Train for `epochs`, resuming from run.last_ckpt when present. Returns the final state."""
    p = parts
    state = TrainState()
    layout = p.loader.layout() if isinstance(p.loader, ShardLoader) else None
    if run.last_ckpt.is_file():
        saved = ckpt.load(run.last_ckpt)
        if saved.get("data_layout") != layout:
            # The shard order depends on the world size and streams: resuming with others would repeat
            # or skip samples, so refuse rather than continue inexactly.
            raise DatasetError(f"{run.last_ckpt} was written with data layout {saved.get('data_layout')}, this "
                               f"run has {layout}; resume with the same world size / data.streams / batch size")
        p.state_module.load_state_dict(saved["model"])
        p.optimizer.load_state_dict(saved["optimizer"])
        p.scheduler.load_state_dict(saved["scheduler"])
        ckpt.set_rng_state(saved["rng"])
        state = TrainState(**saved["state"])
        run.write_metrics(state.history)
        log(f"resuming {run.path} at epoch {state.epoch + 1}, step {state.step}")

    def save_last() -> None:
        if isinstance(p.loader, ShardLoader):
            n, examples = p.loader.pop_skipped()
            state.data_skipped += n
            state.data_skipped_examples += examples[: max(0, 10 - len(state.data_skipped_examples))]
        ckpt.save_atomic({"model": p.state_module.state_dict(), "optimizer": p.optimizer.state_dict(),
                          "scheduler": p.scheduler.state_dict(), "rng": ckpt.rng_state(),
                          "state": state.__dict__, "data_layout": layout}, run.last_ckpt)

    steps = len(p.loader)
    for epoch in range(state.epoch, epochs):
        p.set_train_mode()
        p.loss.set_epoch(epoch)  # deferred re-weighting switches its class weights on by epoch
        t_epoch, start_step, n_images = time.time(), state.step, 0
        # Sums stay on the device inside the epoch: no per-step host synchronisation.
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct_sum = torch.zeros((), dtype=torch.int64, device=device)
        bar = Progress(steps, f"epoch {epoch + 1}/{epochs}", progress, start=start_step)
        for x, y in p.loader.epoch(epoch, start_step):
            if len(y) == 0:
                # shards with data.on_error=skip: every sample of this batch was unreadable; the step
                # still counts so the schedule and the position stay those of the planned epoch
                p.scheduler.step()
                state.step += 1
                bar.update()
                continue
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            h = p.encoder(x)
            logits = p.head(h)
            loss = p.loss(logits, y)
            for reg in p.regularizers:
                loss = loss + reg(h)
            p.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            p.optimizer.step()
            p.scheduler.step()
            for c in p.constraints:
                c.after_step()
            loss_sum += loss.detach().double() * len(y)
            correct_sum += (logits.detach().argmax(1) == y).sum()
            state.step += 1
            state.seen += len(y)
            n_images += len(y)
            bar.update()
            if checkpoint_every and state.step % checkpoint_every == 0 and state.step < steps:
                state.loss_sum += float(loss_sum)
                state.correct_sum += int(correct_sum)
                loss_sum.zero_(), correct_sum.zero_()
                save_last()
        bar.close()
        for c in p.constraints:
            c.after_epoch()
        state.loss_sum += float(loss_sum)
        state.correct_sum += int(correct_sum)

        # End of epoch: evaluate the selection split, remember the best epoch, checkpoint.
        sel = p.evaluate(selection_split)
        elapsed = max(1e-9, time.time() - t_epoch)
        row = {"epoch": epoch + 1, "lr": p.optimizer.param_groups[0]["lr"],
               "train_loss": state.loss_sum / max(1, state.seen),
               "train_acc": 100.0 * state.correct_sum / max(1, state.seen),
               selection_split: sel, "epoch_time_s": round(elapsed, 2), "images_per_s": round(n_images / elapsed, 1)}
        if p.analyze is not None:
            row["analysis"] = p.analyze(selection_split)
        state.history.append(row)
        if sel["all"] > state.best_metric:
            state.best_metric, state.best_epoch = sel["all"], epoch + 1
            ckpt.save_atomic({"model": p.state_module.state_dict(), "epoch": epoch + 1}, run.best_ckpt)
        state.epoch, state.step, state.loss_sum, state.correct_sum, state.seen = epoch + 1, 0, 0.0, 0, 0
        save_last()
        run.write_metrics(state.history)
        log(f"epoch {epoch + 1}/{epochs} loss {row['train_loss']:.4f} train {row['train_acc']:.2f}% "
            f"{selection_split} {sel['all']:.2f}% ({row['images_per_s']:.0f} img/s)")
    return state
