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
from bench.runtime.rundir import RESULT_STATE, RunDir


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


def _task_ids(job_id: str) -> list[str]:
    """sacct's JobID of one row -> the job ids it stands for: 123, 123_4, or the tasks of a pending array row
    123_[5-9,12%4] (one row for the tasks that have not started)."""
    base, _, tasks = job_id.partition("_[")
    if not tasks:
        return [job_id]
    out = []
    for part in tasks.split("%")[0].rstrip("]").split(","):
        lo, _, hi = part.partition("-")
        out += [f"{base}_{k}" for k in range(int(lo), int(hi or lo) + 1)]
    return out


def job_states_of(jobs: list[str]) -> dict[str, list[str]]:
    """Accounting states of every run of each job (requeues included), oldest first, from one sacct call for all of
    them (`ltbench status` of a 1,000-run sweep asks once, not 1,000 times); {} without sacct."""
    if not jobs or shutil.which("sacct") is None:
        return {}
    # asked by array (123 for 123_4): sacct lists each started task, and one row for the tasks still pending
    arrays = sorted({j.split("_")[0] for j in jobs})
    r = subprocess.run(["sacct", "-j", ",".join(arrays), "-X", "-n", "-P", "-D", "-o", "JobID,State"],
                       capture_output=True, text=True)
    out: dict[str, list[str]] = {}
    for line in r.stdout.splitlines() if r.returncode == 0 else []:
        job_id, _, state = line.partition("|")
        if state.strip():
            for task in _task_ids(job_id.strip()):
                out.setdefault(task, []).append(state.split()[0])
    return out


def job_states(job: str) -> list[str]:
    """Accounting states of every run of one job, oldest first; [] without sacct."""
    return job_states_of([job]).get(job, [])


def run_status(run: RunDir, states_of: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """One row of `ltbench status`: what the run directory and the scheduler say about a run (`states_of`: the
    accounting states of many jobs, read at once with job_states_of; else this run's job is asked alone)."""
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
    if not job:
        states = []
    elif states_of is not None:
        states = states_of.get(str(job["job_id"]), [])
    else:
        states = job_states(str(job["job_id"]))
    try:
        res = run.read_result(RESULT_STATE)
    except ConfigError:          # damaged: not complete (`ltbench table` names the problem)
        res = {}
    if res.get("status") == "complete":
        row.update({k: res["metrics"].get(k) for k in ("all", "many", "medium", "few")}, state="done")
        if stage == "posthoc":
            row["epoch"] = "-"
    elif states:
        current = states[-1]
        row["state"] = {"PENDING": "pending", "RUNNING": "running"}.get(current, current.lower())
        if current in ("FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"):
            log = Path(job.get("folder", "")) / f"{job['job_id']}_0_log.err"
            row["state"] = f"{current.lower()}: {log}" if log.is_file() else f"{current.lower()} (never started)"
    elif res.get("status") == "failed":
        row["state"] = f"failed: {res.get('error', '?')}"
    elif job:
        row["state"] = "submitted"
    requeues = sum(s in ("REQUEUED", "PREEMPTED") for s in states)
    if requeues:
        row["state"] += f" (requeued {requeues}x)"
    row["job"] = str(job.get("job_id", ""))
    return row
