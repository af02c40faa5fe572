"""Process setup of a run: the process group, threads and decoding workers for the cores it may use,
determinism, glibc malloc settings, and the global RNG seeds."""

from __future__ import annotations

import ctypes
import os
import random

import numpy as np
import torch

from bench.config import Config, ConfigError
from bench.runtime import dist
from bench.runtime.progress import log
from bench.runtime.tracking import wandb_mode


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
        torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]
        torch.backends.cudnn.benchmark = False
    else:
        # explicitly off: a process that ran a deterministic config before (the demo's in-process stage-2
        # children, a test session) keeps torch's global switch otherwise
        torch.use_deterministic_algorithms(False)
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


