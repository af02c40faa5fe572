"""`ltbench status`, and whether an earlier submit of a run is still queued (squeue). Read-only: submitting lives
in bench/launch/submit.py; a run's state (job.json, its job's accounting states, epochs, failure) is read by
bench/runtime/jobstate.py, which `ltbench table` shares.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from bench.config import ConfigError
from bench.runtime.jobstate import job_states_of, read_job, run_status
from bench.runtime.progress import format_pct
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


def status_table(experiment: Path) -> str:
    """Markdown-style table of every run under an experiment directory (<runs-root>/<name>)."""
    runs = (sorted(p for p in experiment.iterdir() if p.is_dir() and not p.name.startswith("_"))
            if experiment.is_dir() else [])
    if not runs:
        raise ConfigError(f"ltbench status: no runs under {experiment} (give <runs-root>/<experiment name>)")
    head = ["run", "stage", "job", "state", "epoch", "all", "many", "medium", "few"]
    records = [p / "job.json" for p in runs if (p / "job.json").is_file()]
    states = job_states_of([str(read_job(r)["job_id"]) for r in records]) if records else {}
    rows = [run_status(RunDir(p), states) for p in runs]
    cells = [[str(r[h]) if h not in ("all", "many", "medium", "few") else format_pct(r[h]) for h in head] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:{w}s}}" for w in widths)
    return "\n".join([fmt.format(*head)] + [fmt.format(*c) for c in cells])
