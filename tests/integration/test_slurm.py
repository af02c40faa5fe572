"""The real local SLURM cluster (slurm/cluster.sh, started by `make test`): accounting, a 2-node x 1-task
DDP run of `ltbench run` through SLURM's variables, and real preemption by the high-priority partition."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

SMOKE = str(REPO / "configs" / "smoke.yaml")


@pytest.fixture(scope="module")
def slurm() -> dict[str, str]:
    """The environment for SLURM commands; fails (make test) or skips (a bare pytest) without a cluster."""
    conf = os.environ.get("SLURM_CONF")
    ok = bool(conf) and shutil.which("sbatch") is not None and subprocess.run(
        ["scontrol", "ping"], capture_output=True, text=True, env=os.environ).returncode == 0
    if not ok:
        if os.environ.get("LTBENCH_REQUIRE_SLURM") == "1":
            pytest.fail(f"the local SLURM cluster is not reachable (SLURM_CONF={conf}); see slurm/cluster.sh")
        pytest.skip("no local SLURM cluster (run `make test`, or slurm/cluster.sh start and export SLURM_CONF)")
    return {**os.environ}


def sbatch(script: str, tmp: Path, env: dict[str, str], *args: str) -> str:
    path = tmp / "job.sh"
    path.write_text(script)
    r = subprocess.run(["sbatch", "--parsable", "-o", str(tmp / "slurm-%j.out"), *args, str(path)],
                       capture_output=True, text=True, env=env, cwd=REPO)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().split(";")[0]


def sacct(job: str, env: dict[str, str]) -> list[dict[str, str]]:
    """Accounting rows of `job`, requeued runs included (-D), as dicts."""
    r = subprocess.run(["sacct", "-j", job, "-n", "-P", "-D", "-o", "JobID,State,ExitCode,NodeList"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    keys = ["id", "state", "exit", "nodes"]
    return [dict(zip(keys, line.split("|"))) for line in r.stdout.splitlines() if line]


def wait_done(job: str, env: dict[str, str], timeout: float = 300) -> dict[str, str]:
    """The job's final accounting row (polling sacct, as submitit does)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        rows = [r for r in sacct(job, env) if r["id"] == job]
        if rows and rows[-1]["state"].split()[0] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
            return rows[-1]
        time.sleep(1)
    raise AssertionError(f"job {job} not finished after {timeout} s: {sacct(job, env)}")


def test_cluster_runs_a_job_and_accounts_for_it(slurm, tmp_path):
    job = sbatch("#!/bin/bash\necho on $SLURM_JOB_NODELIST\n", tmp_path, slurm)
    row = wait_done(job, slurm)
    assert row["state"] == "COMPLETED" and row["exit"] == "0:0"
    assert "on n" in (tmp_path / f"slurm-{job}.out").read_text()


def test_two_nodes_one_task_each_ddp_run(slurm, tmp_path):
    """`ltbench run` under srun on nodes n1 and n2: rank / world from SLURM_PROCID / SLURM_NTASKS."""
    runs = tmp_path / "runs"
    script = f"""#!/bin/bash
#SBATCH -N 2 -n 2 --ntasks-per-node 1
export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_PORT=$((20000 + SLURM_JOB_ID % 10000))
export OMP_NUM_THREADS=1
srun {sys.executable} -m bench run {SMOKE} runtime.threads=1 --runs-root {runs}
"""
    job = sbatch(script, tmp_path, slurm)
    row = wait_done(job, slurm, timeout=600)
    out = (tmp_path / f"slurm-{job}.out").read_text()
    assert row["state"] == "COMPLETED", out
    assert row["nodes"] == "n[1-2]"
    res = json.loads(next(runs.glob("smoke/*/result.json")).read_text())
    assert res["world_size"] == 2 and res["status"] == "complete"
    assert out.count("done: test all") == 1   # rank 0 alone logs


def test_high_priority_partition_preempts_with_a_signal_and_requeues(slurm, tmp_path):
    """preempt/partition_prio + preempt_send_user_signal: the victim gets SIGUSR2 before it is requeued."""
    marker = tmp_path / "signals.txt"
    victim = f"""#!/bin/bash
#SBATCH -p debug -N 2 -n 2 --ntasks-per-node 1 -c {os.cpu_count()} --requeue --signal=B:USR2@60
trap 'echo "USR2 restart=${{SLURM_RESTART_COUNT:-0}}" >> {marker}' USR2
echo "start restart=${{SLURM_RESTART_COUNT:-0}}" >> {marker}
[ "${{SLURM_RESTART_COUNT:-0}}" -ge 1 ] && exit 0
for i in $(seq 1500); do sleep 0.2; done
"""
    v = sbatch(victim, tmp_path, slurm)
    t0 = time.time()
    while "start restart=0" not in (marker.read_text() if marker.exists() else ""):
        assert time.time() - t0 < 120, sacct(v, slurm)
        time.sleep(0.5)
    hp = tmp_path / "hp"
    hp.mkdir()
    h = sbatch(f"#!/bin/bash\n#SBATCH -p high -N 2 -n 2 -c {os.cpu_count()}\nsleep 2\n", hp, slurm)
    assert wait_done(h, slurm)["state"] == "COMPLETED"
    row = wait_done(v, slurm, timeout=300)
    log = marker.read_text()
    assert "USR2 restart=0" in log and "start restart=1" in log, log   # signalled, then requeued and rerun
    states = [r["state"].split()[0] for r in sacct(v, slurm) if r["id"] == v]
    assert row["state"] == "COMPLETED" and any(s in ("REQUEUED", "PREEMPTED") for s in states), states
