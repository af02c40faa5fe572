"""What the run directories and the scheduler say about runs: job records (job.json), SLURM states,
and `ltbench status`. Read-only: submitting lives in bench/launch/submit.py, and tables read states from here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from bench.config import ConfigError, load_yaml
from bench.runtime.rundir import RunDir

ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "SUSPENDED", "COMPLETING", "REQUEUE_HOLD", "RESIZING"}


def queued_job(run: RunDir) -> str | None:
    """The SLURM job of an earlier submit of this run if it is still pending or running (never submit twice)."""
    record = run.path / "job.json"
    if not record.is_file() or shutil.which("squeue") is None:
        return None
    job = read_job(record).get("job_id")
    r = subprocess.run(["squeue", "-h", "-j", str(job), "-o", "%T"], capture_output=True, text=True)
    return str(job) if r.returncode == 0 and r.stdout.strip() in ACTIVE else None


def read_job(record: Path) -> dict[str, Any]:
    """A run's job.json (written by `ltbench submit`); a damaged one is a one-line error naming it."""
    try:
        job = json.loads(record.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{record}: not valid JSON ({e}); delete it (the run's files are intact) and submit "
                          "again") from None
    if not isinstance(job, dict) or "job_id" not in job:
        raise ConfigError(f"{record}: expected an object with a job_id; delete it and submit again")
    return job


def job_states(job: str) -> list[str]:
    """Accounting states of every run of a job (requeues included), oldest first; [] without sacct."""
    if shutil.which("sacct") is None:
        return []
    r = subprocess.run(["sacct", "-j", job, "-X", "-n", "-P", "-D", "-o", "State"], capture_output=True, text=True)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()] if r.returncode == 0 else []


def run_status(run: RunDir) -> dict[str, Any]:
    """One row of `ltbench status`: what the run directory and the scheduler say about a run."""
    cfg = load_yaml(run.config_file) if run.config_file.is_file() else {}
    stage = cfg.get("stage", "?")
    epochs = (cfg.get("stage2", {}).get("train", {}) if stage == "stage2" else cfg.get("train", {})).get("epochs")
    lines = run.metrics_file.read_text().splitlines() if run.metrics_file.is_file() else []
    row: dict[str, Any] = {"run": run.path.name, "stage": stage, "epoch": f"{len(lines)}/{epochs or '?'}",
                           "state": "not started", "all": None, "many": None, "medium": None, "few": None, "job": ""}
    if lines:
        last = json.loads(lines[-1])
        sel = next((v for k, v in last.items() if isinstance(v, dict) and "all" in v), {})
        row.update({k: sel.get(k) for k in ("all", "many", "medium", "few")})
    record = run.path / "job.json"
    job = read_job(record) if record.is_file() else {}
    if row["stage"] == "?":
        row["stage"] = job.get("stage", "?")
    states = job_states(str(job["job_id"])) if job else []
    if run.is_complete():
        res = run.read_result()
        row.update({k: res["metrics"].get(k) for k in ("all", "many", "medium", "few")}, state="done")
        if stage == "posthoc":
            row["epoch"] = "-"
    elif states:
        current = states[-1]
        row["state"] = {"PENDING": "pending", "RUNNING": "running"}.get(current, current.lower())
        if current in ("FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"):
            log = Path(job.get("folder", "")) / f"{job['job_id']}_0_log.err"
            row["state"] = f"{current.lower()}: {log}" if log.is_file() else f"{current.lower()} (never started)"
    elif (failed := _failure(run)) is not None:
        row["state"] = f"failed: {failed}"
    elif job:
        row["state"] = "submitted"
    requeues = sum(s in ("REQUEUED", "PREEMPTED") for s in states)
    if requeues:
        row["state"] += f" (requeued {requeues}x)"
    row["job"] = str(job.get("job_id", ""))
    return row


def _failure(run: RunDir) -> str | None:
    """The one-line error `ltbench run` recorded in result.json when the last attempt failed."""
    try:
        res = run.read_result()
    except ConfigError:          # damaged: not a recorded failure
        return None
    return res.get("error", "?") if res.get("status") == "failed" else None


def status_table(experiment: Path) -> str:
    """Markdown-style table of every run under an experiment directory (<runs-root>/<name>)."""
    from bench.evaluation.metrics import (
        format_pct,  # local: bench.launch.submit imports this module and must not load torch (rundir.py)
    )
    runs = sorted(p for p in experiment.iterdir() if p.is_dir() and not p.name.startswith("_")) if experiment.is_dir() else []
    if not runs:
        raise ConfigError(f"ltbench status: no runs under {experiment} (give <runs-root>/<experiment name>)")
    head = ["run", "stage", "job", "state", "epoch", "all", "many", "medium", "few"]
    rows = [run_status(RunDir(p)) for p in runs]
    cells = [[str(r[h]) if h not in ("all", "many", "medium", "few") else format_pct(r[h]) for h in head] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:{w}s}}" for w in widths)
    return "\n".join([fmt.format(*head)] + [fmt.format(*c) for c in cells])
