"""What a run directory and the job recorded in it say about a run: job.json, the scheduler's accounting states
of that job (sacct, when present), the epochs in metrics.jsonl, a recorded failure, completion.

Read-only, and below the report and launch layers: `ltbench table` (bench/report/collect.py) and `ltbench status`
(bench/launch/jobs.py) both read a run's state through run_status. Asking whether a job is still queued before
submitting it (squeue) stays with submit, in bench/launch/jobs.py. Imports no torch (bench.launch.submit imports
this module through jobs.py; see bench/runtime/rundir.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from bench.config import ConfigError, load_yaml
from bench.runtime.rundir import RunDir


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
