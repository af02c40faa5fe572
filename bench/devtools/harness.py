"""How `ltbench perf` measures: the setting it trains, `ltbench run` subprocesses read back, interleaved repeats
and their medians. Shared by the sections of bench/devtools/perf.py and bench/devtools/wbref.py.

Every timed run is its own `ltbench run` process (bench/launch/local.py says why a pool would not do), started
from the folder holding the package with the setting's threads; figures are read back from its metrics.jsonl.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.devtools.gpucheck import MODELS as GPU_MODELS
from bench.devtools.gpucheck import PARTS as GPU_PARTS
from bench.launch.local import read_run, run_command
from bench.paths import repo_or_package_dir
from bench.runtime.progress import log

REPO = Path(__file__).resolve().parents[2]   # the folder holding the package: the cwd of the timed subprocesses
CONFIGS = repo_or_package_dir("configs")


class Setting:
    """The config the measurements train: its file, overrides and threads."""

    def __init__(self, quick: bool, threads: int) -> None:
        self.quick, self.threads = quick, threads
        if quick:
            self.config = CONFIGS / "smoke.yaml"
            self.stage2 = CONFIGS / "smoke_stage2.yaml"
            self.dataset, self.train = "synthetic", ["train.epochs=1"]
            self.prepare_args = ["imbalance_factor=10", "val_per_class=10", "synthetic.train_per_class=200",
                                 "synthetic.test_per_class=40", "synthetic.image_size=16"]
        else:
            self.config = CONFIGS / "demo" / "fmnist_naive.yaml"
            self.stage2 = CONFIGS / "demo" / "fmnist_wb.yaml"
            self.dataset, self.train = "fashion-mnist", ["train.epochs=1"]
            self.prepare_args = []
        self.runtime = ["runtime.progress=off", "runtime.plot=false", "wandb.mode=disabled"]
        self.gpu_budget_s = 420.0
        self.gpu_parts: tuple[str, ...] = GPU_PARTS
        self.gpu_models: tuple[str, ...] = GPU_MODELS
        self.wb_reference: Path | None = None     # a clone of the WB reference code (section wbref)
        self.overrides = self.train + self.runtime



def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def run_env(threads: int, **extra: str) -> dict[str, str]:
    """The environment of a timed subprocess: unbuffered, `threads` OpenMP threads, W&B off."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads), "WANDB_MODE": "disabled", **extra}


def ltbench_run(setting: Setting, root: Path, extra: list[str], config: Path | None = None,
                torchrun: int = 0) -> dict[str, Any]:
    """One `ltbench run` (or torchrun of it) in a fresh run directory; its first epoch's row and wall time."""
    run_dir = Path(tempfile.mkdtemp(dir=root, prefix="run-"))
    base = setting.overrides if config is None else setting.runtime    # a stage-2 config inherits `train`
    # torchrun: the processes share the threads of the 1-process baseline; `extra` may set its own
    threads = f"runtime.threads={max(1, setting.threads // max(1, torchrun))}"
    cmd = run_command([str(config or setting.config), *base, threads, *extra, "--run-dir", str(run_dir)], torchrun)
    t0 = time.time()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                       env=run_env(max(1, setting.threads // max(1, torchrun))))
    if r.returncode != 0:
        raise RuntimeError(f"perf: {' '.join(cmd[-6:])} failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
    rows, result = read_run(run_dir)
    return {"row": rows[0], "rows": rows, "result": result, "wall_s": time.time() - t0, "dir": run_dir}


# Runs argv[1:] and prints its exit code, wall seconds and the peak RSS (KiB) of its largest process: getrusage's
# RUSAGE_CHILDREN maximum covers the child and every descendant it waited for (DataLoader workers, torchrun ranks).
_TIMED = ("import resource, subprocess, sys, time; t = time.time(); "
          "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=sys.stderr); "
          "print(r.returncode, time.time() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def timed_process(cmd: list[str], env: dict[str, str], what: str) -> dict[str, float]:
    """Run `cmd` from REPO; its wall seconds and the peak RSS (MiB) of its largest process. A failure raises,
    with the last line the command wrote to stderr."""
    r = subprocess.run([sys.executable, "-c", _TIMED, *cmd], cwd=REPO, capture_output=True, text=True, env=env)
    out = r.stdout.split()
    if r.returncode != 0 or not out or out[0] != "0":
        raise RuntimeError(f"perf: {what} failed: {r.stderr.strip().splitlines()[-1:]}")
    return {"wall_s": float(out[1]), "peak_rss_mib": int(out[2]) / 1024}


def rows(res: dict[str, list[float]]) -> list[list[Any]]:
    """[label, median, repeats] per measurement, for the report."""
    return [[k, median(v), v] for k, v in res.items()]


def interleaved(repeats: int, fns: dict[str, Callable[[], float]]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(repeats):
        for k, fn in fns.items():
            out[k].append(fn())
            log(f"perf: repeat {i + 1}/{repeats} {k}: {out[k][-1]:.1f}")
    return out
