"""What every stage shares: runtime setup, the evaluator, analysis at the end, result.json."""

from __future__ import annotations

import ctypes
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import __version__, dist
from bench.analysis import class_weight_norms, cosine_similarity_stats, fisher_discriminant_ratio
from bench.config import Config, ConfigError
from bench.data.lt import LTData, build_lt_data
from bench.evaluation import EvalOutput, evaluate_batches
from bench.metrics import group_metrics, per_class_accuracy, shot_groups
from bench.rundir import Result, RunDir, check_owner
from bench.progress import log
from bench.tracking import Tracker, wandb_mode
from bench.train import checkpoint as ckpt
from bench.train.optim import effective_lr


def setup_runtime(cfg: Config) -> torch.device:
    """Process group, threads, determinism and the device; seeds every global RNG from cfg.seed."""
    rt = cfg.runtime

    wandb_mode(cfg)   # a bad WANDB_MODE is an error now, before the run directory exists
    use_cuda = rt.device == "cuda" or (rt.device == "auto" and torch.cuda.is_available())
    info = dist.init(use_cuda)
    for key, t in (("train", cfg.train), ("stage2.train", cfg.stage2.train)):
        if (key == "train") == (cfg.stage == "stage1") and t.batch_size % info.world:
            raise ConfigError(f"config key '{key}.batch_size': {t.batch_size} is not divisible by the {info.world} "
                              f"processes (it is the global batch; each process takes an equal share)")
    # Processes on one node share its cores; shard-decoding workers take theirs from the same share.
    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("SLURM_NTASKS_PER_NODE", "1")))
    cores = max(1, usable_cores() // max(1, local))
    if rt.workers is None:
        rt.workers = auto_workers(cores, cfg.data.streams, use_cuda) if cfg.data.shards else 0
        if use_cuda and cfg.data.shards and rt.workers < cores - 1 and dist.is_main():
            log(f"note: data.streams={cfg.data.streams} allows {rt.workers} decoding workers on {cores} cores; "
                f"set data.streams to a multiple of {cores - 1} to decode on all of them")
    torch.set_num_threads(rt.threads or max(1, cores - (rt.workers if cfg.data.shards else 0)))
    if rt.keep_freed_memory:
        keep_freed_memory()
    if rt.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        # With the flag on, torch also fills every torch.empty with NaN (since 2.1): a bug detector, not a
        # determinism need, and it cost 6-8 % of a CPU training step here (BENCHMARKS.md). Weights are
        # bit-identical without it.
        torch.utils.deterministic.fill_uninitialized_memory = False
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = rt.cudnn_benchmark
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    return torch.device("cuda", info.local_rank) if use_cuda else torch.device("cpu")


def keep_freed_memory(mmap_threshold: int = 256 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Make glibc's malloc serve blocks up to `mmap_threshold` bytes from its heap and keep up to `trim_threshold`
    bytes of freed heap, instead of an mmap + munmap per large block. A CPU training step frees and allocates
    its activations (3-33 MB each for the CIFAR ResNets) every step; with glibc's defaults each new block's pages
    fault in again (500-1,600 minor faults a step on the demo, ~10 % of its time; ~2 with this, BENCHMARKS.md).
    Returns False where the C library is not glibc (nothing changed)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3        # <malloc.h>
    return bool(mallopt(m_mmap_threshold, mmap_threshold)) and bool(mallopt(m_trim_threshold, trim_threshold))


def usable_cores() -> int:
    """Cores this process may run on (CPU affinity: a SLURM allocation or taskset), not the node's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def auto_workers(cores: int, streams: int, gpu: bool = False) -> int:
    """Decoding workers for `cores` cores per process, as a divisor of `streams` (workers serve whole streams).

    CPU training: none up to 2 cores (on 2 cores, workers beside the training threads were slower than
    decoding in the training process: BENCHMARKS.md), else half of the cores. GPU training: the training
    process needs about one core to feed the device, so every other core decodes (a ResNet-50 step on one
    H100-class GPU eats 3,000+ images/s, several cores' worth of JPEG decoding).
    """
    if gpu:
        return max(d for d in range(1, streams + 1) if streams % d == 0 and d <= max(1, cores - 1))
    if cores <= 2:
        return 0
    return max(d for d in range(1, streams + 1) if streams % d == 0 and d <= cores // 2)


def setup(cfg: Config) -> tuple[torch.device, LTData, dict[str, list[int]]]:
    """Runtime, the run's long-tailed data and its many / medium / few groups."""
    device = setup_runtime(cfg)
    if cfg.data.decode == "gpu" and (device.type != "cuda" or not cfg.data.shards):
        raise ConfigError(f"config key 'data.decode': gpu decodes JPEG shards on a CUDA device; this run has "
                          f"{'no data.shards' if not cfg.data.shards else f'device {device}'} (use data.decode=cpu)")
    data = build_lt_data(cfg.data)
    data.device = device          # uint8 batches are normalised on the device (bench.data.batches.Normalize)
    return device, data, shot_groups(data.class_counts, cfg.groups.many, cfg.groups.few, cfg.groups.inclusive)


def select_reported(cfg: Config, run: RunDir, best_epoch: int | None, epochs: int, evaluator: "Evaluator",
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
# Draws figures of a finished run from its result into its directory: {W&B key: PNG path}. Passed in by
# bench/run.py (the reporting layer), so training never imports plotting.
Figures = Callable[[dict[str, Any], Path], dict[str, Path]]


def select_and_report(cfg: Config, build: Callable[[bool], "Evaluator"]) -> tuple["Evaluator", "Evaluator"]:
    """(selection, reporting) evaluators, built for flip TTA on or off: eval.select_tta_flip picks the best
    epoch / tau, eval.tta_flip reports. The WB code picks its best epoch on plain logits and reports with
    flip TTA (wb-reference); when both agree one evaluator serves both."""
    report = build(cfg.eval.tta_flip)
    select = report if cfg.eval.select_tta_flip == cfg.eval.tta_flip else build(cfg.eval.select_tta_flip)
    return select, report


class Evaluator:
    """Evaluates encoder + head on a named split; `batches(split)` yields that split's (inputs, labels)."""

    def __init__(self, encoder: Callable[[torch.Tensor], torch.Tensor], head: Callable[[torch.Tensor], torch.Tensor],
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
    def start(cls, cfg: Config, run: RunDir, figures: Figures | None = None) -> "Stage":
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
            **(extra or {}),
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
