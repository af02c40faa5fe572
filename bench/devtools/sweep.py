"""`ltbench perf --only sweep`: a two-stage sweep on a real SLURM cluster, at a size that exercises the scheduler.

One `ltbench submit` of configs/smoke_stage2.yaml swept over seeds and a stage-2 grid (lr x weight decay): the
stage-1 runs as one job array and their stage-2 children as another, `--array-parallelism` tasks at a time, each
child waiting on its parent (afterok). While it runs, jobs of the cluster's `high` partition preempt whatever runs
(SIGUSR2, checkpoint, requeue, resume), and `ltbench status` is asked every few seconds: it must answer (exit 0, a line
per run) and never show a failure. The same submit, repeated while the jobs are queued, submits nothing; repeated at the
end, it skips every run as complete. At the end every job's last accounting state is COMPLETED and `ltbench table` has
every cell complete (no † mark, n = seeds).

The full size is 120 runs (12 seeds, 3 x 3 stage-2 settings); --quick is 12 (4 seeds, 2 x 1), the version in the test
suite's SLURM tier. It needs a cluster with a `high` partition that preempts the default one by requeueing
(slurm/cluster.sh, `make cluster-up`, then SLURM_CONF).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.devtools.harness import CONFIGS, REPO, Setting
from bench.runtime.jobstate import job_states_of
from bench.runtime.progress import log

FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE")
BAD = ("failed", "cancelled", "timeout", "out_of_memory", "node_fail", "boot_fail", "deadline")


def slurm_ready(env: dict[str, str]) -> bool:
    """Is a SLURM cluster reachable from here (SLURM_CONF set, sbatch on PATH, the controller answering)?"""
    return bool(env.get("SLURM_CONF")) and shutil.which("sbatch") is not None and subprocess.run(
        ["scontrol", "ping"], capture_output=True, text=True, env=env).returncode == 0


def _ltbench(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True, env=env, cwd=REPO)


def _preempt(root: Path, env: dict[str, str]) -> str:
    """A job of the `high` partition that takes every core of both nodes for a second: the scheduler requeues what
    runs there (after SIGUSR2 and the partition's grace time)."""
    r = subprocess.run(["sbatch", "--parsable", "-p", "high", "-N", "2", "-n", "2", "-c", str(os.cpu_count() or 1),
                        "-o", str(root / "high-%j.out"), "--wrap", "sleep 1"],
                       capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"sweep: sbatch -p high failed: {r.stderr.strip()}")
    return r.stdout.strip().split(";")[0]


def sweep_check(root: Path, env: dict[str, str], seeds: int, lrs: list[float], wds: list[float],
                parallelism: int = 4, preemptions: int = 2, timeout_s: float = 1800) -> dict[str, Any]:
    """Submit the sweep under root/runs, preempt it `preemptions` times, poll `ltbench status` until every job has
    ended; raise with the reason when anything is not as it should be; return what was seen."""
    runs = root / "runs"
    sweep = [f"seed={','.join(map(str, range(seeds)))}", f"stage2.train.lr={','.join(map(str, lrs))}",
             f"stage2.train.weight_decay={','.join(map(str, wds))}"]
    t0 = time.time()
    submit_args = ["submit", str(CONFIGS / "smoke_stage2.yaml"), "--override", "runtime.threads=1",
                   "--override", "runtime.checkpoint_every_steps=5", *(x for s in sweep for x in ("--sweep", s)),
                   "--array-parallelism", str(parallelism), "--runs-root", str(runs)]
    r = _ltbench(env, *submit_args)
    if r.returncode != 0:
        raise RuntimeError(f"sweep: ltbench submit failed: {r.stderr.strip()}")
    dirs = sorted(p for p in (runs / "smoke").iterdir() if p.is_dir() and not p.name.startswith("_"))
    jobs = {d.name: str(json.loads((d / "job.json").read_text())["job_id"]) for d in dirs}
    expected = seeds * (1 + len(lrs) * len(wds))
    if len(dirs) != expected:
        raise RuntimeError(f"sweep: {len(dirs)} run directories, expected {expected}")
    arrays = {j.split("_")[0] for j in jobs.values()}
    log(f"sweep: {len(dirs)} runs submitted as {len(arrays)} job arrays in {time.time() - t0:.1f} s")
    again = _ltbench(env, *submit_args)         # while queued or running: every run is left alone
    if again.returncode != 0 or "submitted" in again.stdout or again.stdout.count("queued as") != len(dirs):
        raise RuntimeError(f"sweep: a second submit while the jobs are queued did not leave them alone:\n"
                           f"{again.stdout}{again.stderr}")

    polls: list[float] = []
    high: list[str] = []
    done_before, last_preempt = 0, time.time()
    while True:
        if time.time() - t0 > timeout_s:
            raise RuntimeError(f"sweep: not finished after {timeout_s:.0f} s")
        t = time.time()
        st = _ltbench(env, "status", "smoke", "--runs-root", str(runs))
        polls.append(time.time() - t)
        lines = st.stdout.splitlines()[1:]
        if st.returncode != 0 or len(lines) != len(dirs):
            raise RuntimeError(f"sweep: ltbench status answered {st.returncode} with {len(lines)} lines: "
                               f"{st.stderr.strip()[-300:]}")
        states = {line.split()[0]: line for line in lines}
        bad = [line for line in lines if any(f" {b}" in line for b in BAD)]
        if bad:
            raise RuntimeError(f"sweep: ltbench status shows a failure: {bad[0]}")
        done = sum(" done" in line for line in states.values())
        if done < done_before:
            raise RuntimeError(f"sweep: ltbench status went from {done_before} runs done to {done}")
        done_before = done
        running = sum(" running" in line for line in states.values())
        if len(high) < preemptions and running >= 2 and time.time() - last_preempt > 10:
            high.append(_preempt(root, env))
            last_preempt = time.time()
            log(f"sweep: high-partition job {high[-1]} preempts {running} running runs ({done}/{len(dirs)} done)")
        if done == len(dirs):   # every result written: wait for the jobs' own ends (COMPLETING -> COMPLETED)
            ended = job_states_of(list(jobs.values()))
            ended = {name: ended.get(job, []) for name, job in jobs.items()}
            if all(s and s[-1] in FINAL for s in ended.values()):
                break
        time.sleep(2)
    wall = time.time() - t0
    not_completed = {n: s[-1] for n, s in ended.items() if s[-1] != "COMPLETED"}
    if not_completed:
        raise RuntimeError(f"sweep: jobs not COMPLETED: {not_completed}")
    requeued = {n: sum(x in ("REQUEUED", "PREEMPTED") for x in s) for n, s in ended.items()}
    requeued = {n: k for n, k in requeued.items() if k}
    if preemptions and not requeued:
        raise RuntimeError("sweep: the high-partition jobs preempted nothing")
    table = _ltbench(env, "table", str(runs / "smoke"), "--seeds", ",".join(map(str, range(seeds))))
    rows = [line for line in table.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    if table.returncode != 0 or len(rows) != 1 + len(lrs) * len(wds) or any("†" in row for row in rows):
        raise RuntimeError(f"sweep: ltbench table incomplete ({len(rows)} rows):\n{table.stdout}{table.stderr}")
    done_again = _ltbench(env, *submit_args)    # all complete: nothing to submit
    if done_again.returncode != 0 or done_again.stdout.count("complete, skipped") != len(dirs):
        raise RuntimeError(f"sweep: a submit after the end did not skip every run:\n{done_again.stdout}")
    log(f"sweep: {len(dirs)} runs COMPLETED in {wall:.0f} s, {len(requeued)} requeued, {len(polls)} status polls")
    return {"runs": len(dirs), "job_arrays": len(arrays), "wall_s": round(wall, 1), "preempting_jobs": len(high),
            "runs_requeued": len(requeued), "requeues": sum(requeued.values()), "status_polls": len(polls),
            "status_s_median": round(statistics.median(polls), 2), "status_s_max": round(max(polls), 2),
            "table_rows": len(rows), "all_completed": True}


def section_sweep(s: Setting, root: Path, repeats: int) -> dict[str, Any]:
    """A two-stage sweep on the SLURM cluster of SLURM_CONF (120 runs; --quick: 12) as job arrays, preempted by the
    high partition while it runs: every job COMPLETED, `ltbench status` answering throughout, the table complete.
    One pass (`--repeats` does not apply)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled"}
    if not slurm_ready(env):
        return {"skipped": "no SLURM cluster (make cluster-up, then export SLURM_CONF=<its state dir>/slurm.conf)"}
    if s.quick:
        rec = sweep_check(root, env, seeds=4, lrs=[0.05, 0.1], wds=[1e-3], preemptions=1)
    else:
        rec = sweep_check(root, env, seeds=12, lrs=[0.02, 0.05, 0.1], wds=[1e-4, 1e-3, 5e-3], preemptions=3)
    return {**rec, "target": "every job COMPLETED, status answering throughout, table complete", "met": True}


def render(sec: dict[str, Any]) -> list[str]:
    """The sweep section of perf.md: what was seen, a row per figure."""
    keys = [k for k in sec if k not in ("doc", "section_s", "target", "met")]
    return ["| figure | value |", "|---|---|", *(f"| {k} | {sec[k]} |" for k in keys), ""]
