"""`ltbench run` as a subprocess of this machine: the one command line that the demo's stage 1, `ltbench perf` and
the GPU check start (under torchrun when asked), and what a finished run directory gives back to them.

One way to start a run; the loops around it stay with their callers, because they want opposite things:
- the demo (bench/launch/demo.py) starts its stage-1 runs side by side, a thread waiting on each subprocess,
  one training thread per run and each run's output in a log file: on 2 cores single-threaded runs side by
  side train more images/s in total than one run on 2 threads (BENCHMARKS.md). Its stage-2 and post-hoc
  children run in its own process (bench/launch/run.py), seconds each on cached features.
- perf and the GPU check (bench/devtools/) time runs one at a time, each in a fresh process with its own threads
  and environment (timing isolation: no allocator, compiled kernels or cuDNN autotuning carried over from the
  measurement before, and nothing running beside it), read its output back, and the GPU check kills one after
  its first checkpoint to resume it. A pool that ran them side by side would spoil the timings.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench.runtime.rundir import Result, RunDir


def run_command(args: list[str], torchrun: int = 0) -> list[str]:
    """`python -m bench run ARGS`; with torchrun > 0 under `torch.distributed.run --standalone` with that many
    processes."""
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}"]
                if torchrun else [sys.executable])
    return [*launcher, "-m", "bench", "run", *args]


def read_run(run_dir: Path) -> tuple[list[dict[str, Any]], Result]:
    """A finished run's metrics.jsonl rows (one per epoch) and its result.json."""
    run = RunDir(run_dir)
    return [json.loads(line) for line in run.metrics_file.read_text().splitlines()], run.read_result()
