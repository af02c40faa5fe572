"""The one training loop every stage and method runs; methods differ only in the Parts they hand it.

A step is: features h = encoder(x); logits = head(h); loss = loss(logits, y) + sum of regularizers(h);
SGD step; scheduler step; constraints after the step (MaxNorm, cadence step). After each epoch:
constraints with cadence epoch, evaluation of the selection split, best/last checkpoints, and a
metrics.jsonl row whose `lr` is the lr the epoch's first step ran with (`lr_last`: its last step's).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from bench.data.cards import DatasetError
from bench.data.loaders import TrainLoader
from bench.methods.losses import LossFn
from bench.methods.mixup import Mixup
from bench.models.parts import prediction
from bench.runtime import dist
from bench.runtime.progress import Progress, log
from bench.runtime.rundir import RunDir, check_owner
from bench.runtime.tracking import Tracker
from bench.train import checkpoint as ckpt


class Constraint(Protocol):
    """A projection applied to the trained parameters (e.g. MaxNorm)."""

    def after_step(self) -> None: ...

    def after_epoch(self) -> None: ...


class EncoderHead(torch.nn.Module):
    """x -> (pooled features h, logits): the one module a training step calls, and what DDP wraps.

    `owner` holds every parameter (so DDP synchronises the gradients of whatever requires grad);
    `encoder` and `head` say how to compute through it (a frozen backbone, cached features, ...).
    """

    def __init__(self, owner: torch.nn.Module, encoder: Callable[[torch.Tensor], torch.Tensor],
                 head: torch.nn.Module, channels_last: bool = False) -> None:
        super().__init__()
        self.owner = owner
        self._encoder, self._head = encoder, [head]   # a list: not registered twice
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        h = self._encoder(x)
        return h, self._head[0](h)


@dataclass
class Parts:
    """What one training stage is made of."""

    forward: torch.nn.Module                           # x -> (h, logits); DDP-wrapped under several processes
    loss: LossFn
    state_module: torch.nn.Module                      # what checkpoints save and restore
    set_train_mode: Callable[[], object]               # e.g. frozen backbone in eval mode, head in train mode
    loader: TrainLoader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    evaluate: Callable[[str], dict[str, Any]]          # split name -> all/many/medium/few
    analyze: Callable[[str], dict[str, Any]] | None = None    # per-epoch analysis measures, when asked
    regularizers: list[Callable[[torch.Tensor], torch.Tensor]] = field(default_factory=list)
    constraints: list[Constraint] = field(default_factory=list)
    amp: str = "none"                                  # autocast dtype: none, bf16, fp16 (with a grad scaler)
    mixup: Mixup | None = None                         # mixes each batch (drawn from the step's position)


def make_forward(owner: torch.nn.Module, encoder: Callable[[torch.Tensor], torch.Tensor], head: torch.nn.Module,
                 device: torch.device, compile_: bool = False, channels_last: bool = False) -> torch.nn.Module:
    """EncoderHead, compiled when asked, wrapped in DistributedDataParallel under several processes."""
    return wrap_forward(EncoderHead(owner, encoder, head, channels_last), device, compile_)


def wrap_forward(fwd: torch.nn.Module, device: torch.device, compile_: bool = False) -> torch.nn.Module:
    """A module x -> (h, logits) as the training step calls it: compiled when asked, wrapped in
    DistributedDataParallel under several processes (an EncoderHead, or a contrastive model's own forward)."""
    if compile_:
        fwd = torch.compile(fwd)  # type: ignore[assignment]
    if dist.active():
        fwd = torch.nn.parallel.DistributedDataParallel(
            fwd, device_ids=[device.index] if device.type == "cuda" else None)
    return fwd


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
    epoch_lr: float | None = None      # the lr of the current epoch's first step (kept for a mid-epoch resume)
    spent_s: float = 0.0               # wall seconds of checkpointed work, over every attempt (the run's cost)


def rank_shares(normalizer: torch.Tensor, n: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss share, count share) of this rank, times the world size, in one all-reduce; and (the global batch's
    sample count, the number of ranks without a sample), on the device: reading them is a host synchronisation.

    The loss divides by its normalizer (a count, or sum_i w_{y_i}); the regularisers are batch means
    (feature regularisation) or parameter terms (WD in the loss), whose exact share is the sample count.
    Weighting each by its share makes DDP's gradient average that of the global batch's objective.
    """
    local = torch.stack([normalizer, torch.full((), float(n), dtype=torch.float64, device=normalizer.device),
                         torch.full((), float(n == 0), dtype=torch.float64, device=normalizer.device)])
    total = dist.all_reduce_sum(local.clone())
    return local[:2] * world / total[:2].clamp_min(1e-12), total[1:]


class LastCheckpoint:
    """<run>/checkpoints/last.pt: everything an exact resume needs (model, optimizer, scheduler, grad scaler,
    every rank's RNG, and the TrainState with the data position), written atomically by rank 0 and checked on
    restore against the run's config hash and data layout."""

    def __init__(self, p: Parts, run: RunDir, scaler: torch.amp.GradScaler, layout: Any) -> None:
        self.p, self.run, self.scaler, self.layout = p, run, scaler, layout
        self.t_mark = time.time()        # work since here is not yet in state.spent_s

    def restore(self, tracker: Tracker | None) -> TrainState:
        """The checkpointed state restored into the parts, or a fresh TrainState when there is none."""
        p, run = self.p, self.run
        if not run.last_ckpt.is_file():
            return TrainState()
        saved = ckpt.load(run.last_ckpt)
        if run.config_hash is not None:
            check_owner(run.last_ckpt, saved.get("config_hash"), run.config_hash)
        if saved.get("data_layout") not in (None, self.layout):   # None: written before layouts were recorded
            # The data order depends on the layout: resuming with another would repeat or skip samples.
            raise DatasetError(f"{run.last_ckpt} was written with data layout {saved.get('data_layout')}, this "
                               f"run has {self.layout}; resume with the same world size / data.streams / batch size")
        with ckpt.fitting(run.last_ckpt):
            p.state_module.load_state_dict(saved["model"])
            p.optimizer.load_state_dict(saved["optimizer"])
            p.scheduler.load_state_dict(saved["scheduler"])
            if "loss" in saved:        # a loss's state (PaCo's queue); absent from checkpoints written before it
                p.loss.load_state_dict(saved["loss"])
            if "scaler" in saved:
                self.scaler.load_state_dict(saved["scaler"])
            ckpt.set_rng_state(saved["rng_ranks"][dist.rank()] if "rng_ranks" in saved else saved["rng"])
            state = TrainState(**saved["state"])
        if dist.is_main():
            run.write_metrics(state.history)
        log(f"resuming {run.path} at epoch {state.epoch + 1}, step {state.step}")
        if tracker is not None:
            tracker.resume(state.history)   # epochs checkpointed by an attempt killed before it logged them
        self.t_mark = time.time()
        return state

    def save(self, state: TrainState) -> None:
        """Checkpoint `state` with the parts; every rank calls it (the skipped-sample count and the RNG states
        are gathered), rank 0 writes."""
        p = self.p
        now = time.time()
        # what a killed attempt did after its last checkpoint is lost: not counted
        state.spent_s += now - self.t_mark
        self.t_mark = now
        n, examples = p.loader.pop_skipped()      # (0, []) for in-memory data
        state.data_skipped += int(dist.all_reduce_sum(torch.tensor(n)))
        state.data_skipped_examples += examples[: max(0, 10 - len(state.data_skipped_examples))]
        rngs = dist.gather_objects(ckpt.rng_state())   # every rank's RNG, so each resumes its own
        if dist.is_main():
            ckpt.save_atomic({"model": p.state_module.state_dict(), "optimizer": p.optimizer.state_dict(),
                              "scheduler": p.scheduler.state_dict(), "loss": p.loss.state_dict(),  # PaCo's queue
                              "rng": rngs[0], "rng_ranks": rngs,
                              "scaler": self.scaler.state_dict(), "state": state.__dict__, "data_layout": self.layout,
                              "config_hash": self.run.config_hash}, self.run.last_ckpt)


def train_step(p: Parts, x: torch.Tensor, y: torch.Tensor, scaler: torch.amp.GradScaler,
               autocast_dtype: torch.dtype | None, at: tuple[int, int] = (0, 0)) -> tuple[torch.Tensor, Any]:
    """One optimiser step on a batch already on the device: loss + regularisers, backward (under DDP this
    rank's share of the global batch's objective), optimiser and scheduler step, per-step constraints.
    `at` = (epoch, step) draws the step's mixup. Returns (loss, logits); logits None when the step was skipped
    (a rank without a sample)."""
    world = dist.world()
    p.optimizer.zero_grad(set_to_none=True)
    if world > 1:
        # before the forward pass, so that every rank decides alike
        share, (total, empty) = rank_shares(p.loss.normalizer(y), len(y), world)
        # only shards with data.on_error=skip can leave a rank without a sample (the loaders repeat one otherwise),
        # so only then is `empty` read (a host synchronisation). That rank cannot run the forward pass whose
        # collectives the others would wait on (DDP's buffer broadcast, a contrast set's gather): every rank skips
        # the step. With no sample anywhere that is what one process does (weight decay and momentum would still
        # move the weights); else the other ranks' samples of the step go unused, and the log says so
        if p.loader.may_drop() and float(empty) > 0:
            if float(total) > 0:
                log(f"a process has no readable sample in this step: every process skips it ({int(total)} "
                    "samples unused)")
            p.scheduler.step()
            return torch.zeros((), device=y.device), None
    data_loss: torch.Tensor
    reg: torch.Tensor | float                          # 0 without regularisers
    with torch.autocast(x.device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext():
        if p.mixup is None:
            h, logits = p.forward(x)
            data_loss = p.loss(logits, y)
        else:          # mixup: lambda L(z, y) + (1 - lambda) L(z, y[perm]) on the mixed images
            x, y_perm, lam = p.mixup(x, y, *at)
            h, logits = p.forward(x)
            data_loss = lam * p.loss(logits, y) + (1.0 - lam) * p.loss(logits, y_perm)
        # batch means beside the regularisers: RIDE's diversity term (LossFn.extra)
        reg = sum(r(h) for r in p.regularizers) + p.loss.extra(logits)
    loss = data_loss + reg
    objective = data_loss * share[0].to(loss.dtype) + reg * share[1].to(loss.dtype) if world > 1 else loss
    scaler.scale(objective).backward()
    scaler.step(p.optimizer)
    scaler.update()
    p.scheduler.step()
    for c in p.constraints:
        c.after_step()
    return loss, logits


def epoch_row(state: TrainState, epoch: int, lr: float, split: str, sel: dict[str, Any], t_epoch: float,
              train_s: float, n_images: int, device: torch.device) -> dict[str, Any]:
    """The epoch's metrics.jsonl row. `lr` is the lr the epoch ran with, read before its steps: after them the
    scheduler already holds the next epoch's value; per-step schedules (and warm-up) change it inside the
    epoch, so the last step's is logged too (lr_last)."""
    row = {"epoch": epoch + 1, "lr": state.epoch_lr if state.epoch_lr is not None else lr, "lr_last": lr,
           "train_loss": state.loss_sum / max(1, state.seen),
           "train_acc": 100.0 * state.correct_sum / max(1, state.seen),
           split: sel, "epoch_time_s": round(time.time() - t_epoch, 2),
           "train_time_s": round(train_s, 3),              # the training steps only (no evaluation)
           "images_per_s": round(n_images / train_s, 1)}
    if device.type == "cuda":
        row["gpu_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)   # high-water mark so far
    return row


def fit(parts: Parts, run: RunDir, epochs: int, selection_split: str, device: torch.device,
        checkpoint_every: int = 0, progress: str = "auto", tracker: Tracker | None = None) -> TrainState:
    """Train for `epochs`, resuming from run.last_ckpt when present. Returns the final state.

    Under DDP every rank runs this with its slice of each global batch; its loss is weighted by its
    share of the global normalizer (W * n_r / N, or with cb_normalizer=weights W * sum_r w_y / sum w_y)
    and its regularisers by its share of the samples, so DDP's gradient average is the gradient of the
    global batch's objective, as in one process. Only rank 0 writes files.
    """
    p = parts
    world = dist.world()
    layout = p.loader.layout()
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(p.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=p.amp == "fp16")
    last = LastCheckpoint(p, run, scaler, layout)
    state = last.restore(tracker)

    def add_sums(sums: torch.Tensor) -> None:
        """Fold this stretch's loss / correct / seen sums (all ranks) into the checkpointed state."""
        dist.all_reduce_sum(sums)
        state.loss_sum += float(sums[0])
        state.correct_sum += int(sums[1])
        state.seen += int(sums[2])
        sums.zero_()

    steps = len(p.loader)
    for epoch in range(state.epoch, epochs):
        p.set_train_mode()
        p.loss.set_epoch(epoch)  # deferred re-weighting switches its class weights on by epoch
        t_epoch, start_step, n_images = time.time(), state.step, 0
        # loss, correct, seen: summed on the device inside the epoch, no per-step host synchronisation
        sums = torch.zeros(3, dtype=torch.float64, device=device)
        bar = Progress(steps, f"epoch {epoch + 1}/{epochs}", progress if dist.is_main() else "off", start=start_step)
        lr = p.optimizer.param_groups[0]["lr"]
        for x, y in p.loader.epoch(epoch, start_step):
            lr = p.optimizer.param_groups[0]["lr"]     # this step's lr: the scheduler steps after the step
            if state.step == 0:
                state.epoch_lr = lr
            if len(y) == 0 and world == 1:
                # shards with data.on_error=skip: every sample of this batch was unreadable; the step
                # still counts so the schedule and the position stay those of the planned epoch
                p.scheduler.step()
                state.step += 1
                bar.update()
                continue
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss, logits = train_step(p, x, y, scaler, autocast_dtype, (epoch, state.step))
            if logits is not None:
                sums[0] += loss.detach().double() * len(y)
                sums[1] += (prediction(logits).detach().argmax(1) == y).sum()
                sums[2] += len(y)
            state.step += 1
            n_images += len(y)
            bar.update()
            if checkpoint_every and state.step % checkpoint_every == 0 and state.step < steps:
                add_sums(sums)
                last.save(state)
        bar.close()
        for c in p.constraints:
            c.after_epoch()
        add_sums(sums)                      # reads the device sums: the epoch's steps are done here
        dist.broadcast_buffers(p.state_module)   # the model evaluated on every rank is the one rank 0 saves
        train_s = max(1e-9, time.time() - t_epoch)

        # End of epoch: evaluate the selection split, remember the best epoch, checkpoint.
        sel = p.evaluate(selection_split)
        row = epoch_row(state, epoch, lr, selection_split, sel, t_epoch, train_s, n_images * world, device)
        if p.analyze is not None:
            row["analysis"] = p.analyze(selection_split)
        state.history.append(row)
        if sel["all"] > state.best_metric:
            state.best_metric, state.best_epoch = sel["all"], epoch + 1
            if dist.is_main():
                ckpt.save_atomic({"model": p.state_module.state_dict(), "epoch": epoch + 1,
                                  "config_hash": run.config_hash}, run.best_ckpt)
        state.epoch, state.step, state.loss_sum, state.correct_sum, state.seen = epoch + 1, 0, 0.0, 0, 0
        last.save(state)
        if dist.is_main():
            run.write_metrics(state.history)
        if tracker is not None:
            tracker.log_epoch(row)          # queued: W&B never holds up the next epoch
        log(f"epoch {epoch + 1}/{epochs} loss {row['train_loss']:.4f} train {row['train_acc']:.2f}% "
            f"{selection_split} {sel['all']:.2f}% ({row['images_per_s']:.0f} img/s)")
    dist.barrier()   # rank 0's last checkpoint and best.pt are on disk before anyone reads them
    state.unsaved_since = last.t_mark     # type: ignore[attr-defined]  # set after the last save: never checkpointed
    return state
