"""Run one experiment in this process: the one path shared by `ltbench run`, a SLURM job, the demo and perf.

A run directory only ever continues its own config: rank 0 holds the directory's lock for the whole job,
a complete run is reported and not retrained, a failure is recorded in result.json (and ends the W&B run
as failed) before it propagates, and the per-class figure is drawn here, from the result, so that the
training code never imports the reporting layer.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from bench.config import Config
from bench.experiment import load_config
from bench.runtime import dist
from bench.runtime.lock import DirLock
from bench.runtime.progress import format_pct, log
from bench.runtime.rundir import Result, RunDir
from bench.runtime.tracking import abort_open
from bench.train.features import parent_run, teacher_run
from bench.train.posthoc import run_posthoc
from bench.train.stage1 import train_stage1
from bench.train.stage2 import train_stage2


def run_config_file(config: str | Path, overrides: list[str], runs_root: str | Path,
                    run_dir: str | Path | None = None, wait: bool = False) -> Result:
    """Load `config` with `overrides` and run it (see run_experiment); returns its result."""
    cfg = load_config(config, overrides)
    run = RunDir(Path(run_dir)) if run_dir else RunDir.for_config(cfg, runs_root)
    return run_experiment(cfg, run, runs_root=runs_root, base=Path(config).parent, wait=wait)


def run_experiment(cfg: Config, run: RunDir, *, runs_root: str | Path, base: Path = Path("."),
                   parent: RunDir | None = None, wait: bool = False) -> Result:
    """Train (or resume, or just report) the run of `cfg` in `run`; returns the result written to result.json.

    `parent` is the finished run a stage2 / post-hoc config starts from; None = found from cfg.parent
    (a run directory, or the parent's YAML relative to `base`, under `runs_root`).
    """
    # one writer per run directory: rank 0 holds the lock for the whole job (its other ranks follow it)
    lock = DirLock(run.path, "run directory", wait=wait) if dist.from_env().rank == 0 else contextlib.nullcontext()
    with lock:
        if run.complete_for(cfg.run_hash()):
            log(f"run complete, nothing to do: {run.path}")
            return run.read_result()
        log(f"run directory: {run.path}")
        result = _train(cfg, run, runs_root, base, parent)
    dist.shutdown()
    m = result["metrics"]
    log(f"done: test all {format_pct(m['all'])} many {format_pct(m['many'])} medium {format_pct(m['medium'])} "
        f"few {format_pct(m['few'])} -> {run.result_file}")
    return result


def _train(cfg: Config, run: RunDir, runs_root: str | Path, base: Path, parent: RunDir | None) -> Result:
    from bench.report.plots import per_class_figure  # matplotlib: imported once there is a result to draw

    figures = per_class_figure if cfg.runtime.plot else None
    try:
        if cfg.stage == "stage1":
            return train_stage1(cfg, run, figures=figures, teacher=teacher_run(cfg, runs_root, base))
        parent = parent or parent_run(cfg, runs_root, base)
        return (train_stage2 if cfg.stage == "stage2" else run_posthoc)(cfg, run, parent, figures=figures)
    except Exception as e:
        run.record_failure(e)   # `ltbench status` / `ltbench table` show it; the next `ltbench run` resumes
        abort_open(e)           # the W&B run ends as failed; a rerun continues it
        raise
