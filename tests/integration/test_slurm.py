"""The real local SLURM cluster (slurm/cluster.sh, started by `make test`): accounting, a 2-node x 1-task
DDP run of `ltbench run` through SLURM's variables, and real preemption by the high-priority partition."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

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


# --- ltbench submit -------------------------------------------------------------------------------

STAGE2 = str(REPO / "configs" / "smoke_stage2.yaml")


def ltbench(*args: str, env: dict[str, str], cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300)


def job_of(run_dir: Path) -> str:
    return json.loads((run_dir / "job.json").read_text())["job_id"]


def test_failed_stage1_cancels_its_stage2(slurm, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"base: {SMOKE}\nmodel: {{pretrained_file: {tmp_path}/missing.pt}}\n")
    child = tmp_path / "child.yaml"
    child.write_text(f"base: {STAGE2}\nparent: {bad}\n")
    runs = tmp_path / "runs"
    r = ltbench("submit", str(child), "--runs-root", str(runs), env=slurm)
    assert r.returncode == 0, r.stderr
    parent_dir = next(d for d in runs.glob("smoke/*") if d.name.startswith("ce-"))
    child_dir = next(d for d in runs.glob("smoke/*") if d.name.startswith("wb-"))
    assert wait_done(job_of(parent_dir), slurm)["state"] == "FAILED"
    assert wait_done(job_of(child_dir), slurm, timeout=120)["state"] == "CANCELLED"   # not pending forever
    st = ltbench("status", "smoke", "--runs-root", str(runs), env=slurm)
    assert st.returncode == 0, st.stderr
    lines = {line.split()[0]: line for line in st.stdout.splitlines()[1:]}
    failed = lines[parent_dir.name]
    assert "failed:" in failed and f"{job_of(parent_dir)}_0_log.err" in failed and "stage1" in failed
    log = Path(failed.split("failed: ")[1].split()[0])
    assert "missing.pt" in log.read_text()                               # the log says why
    assert "cancelled (never started)" in lines[child_dir.name]


@pytest.fixture(scope="module")
def smoke_reference(slurm, tmp_path_factory) -> dict:
    """One uninterrupted smoke run (1 thread), the reference of the requeue / preemption tests."""
    ref = tmp_path_factory.mktemp("ref")
    r = ltbench("run", SMOKE, "runtime.threads=1", "--runs-root", str(ref), env=slurm)
    assert r.returncode == 0, r.stderr
    return json.loads(next(ref.glob("smoke/ce-*/result.json")).read_text())


def submit_smoke_until_checkpoint(runs: Path, slurm: dict[str, str], *extra: str) -> tuple[Path, str]:
    """Submit the smoke run (checkpoints every 5 steps) and wait until its first checkpoint exists."""
    r = ltbench("submit", SMOKE, "--override", "runtime.threads=1", "--override", "runtime.checkpoint_every_steps=5",
                *extra, "--runs-root", str(runs), env=slurm)
    assert r.returncode == 0, r.stderr
    run_dir = next(runs.glob("smoke/ce-*"))
    job = job_of(run_dir)
    t0 = time.time()
    while not (run_dir / "checkpoints" / "last.pt").is_file():
        assert time.time() - t0 < 300, sacct(job, slurm)
        time.sleep(0.2)
    return run_dir, job


def test_a_preempted_sweep_of_12_runs_completes_with_status_and_table(slurm, tmp_path):
    """`ltbench perf --only sweep --quick` (bench/devtools/sweep.py): 4 stage-1 runs and their 8 stage-2 children as
    two job arrays, preempted by a high-partition job while they run; `ltbench status` answers throughout and never
    shows a failure, every job ends COMPLETED, the table has every cell complete. Submitting the same plan again while
    it is queued submits nothing ("queued as"), and at the end skips every run as complete. The 120-run version is
    recorded in docs/distributed.md."""
    from bench.devtools.sweep import sweep_check

    rec = sweep_check(tmp_path, slurm, seeds=4, lrs=[0.05, 0.1], wds=[1e-3], preemptions=1, timeout_s=600)
    assert rec["runs"] == 12 and rec["job_arrays"] == 2 and rec["table_rows"] == 3
    assert rec["runs_requeued"] >= 1 and rec["all_completed"]


def test_site_file_errors_name_the_key(tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text("partition: gpu\ngpus_per_nodes: 4\n")
    r = subprocess.run([sys.executable, "-m", "bench", "submit", SMOKE, "--site", str(site), "--dry-run",
                        "--runs-root", str(tmp_path)], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and "unknown key 'gpus_per_nodes'" in r.stderr


def test_site_example_is_valid():
    from bench.launch.submit import load_site

    site = load_site(str(REPO / "slurm" / "site.example.yaml"))
    assert site["tasks_per_node"] == site["gpus_per_node"] == 4


def test_dry_run_matches_the_golden_plan(tmp_path):
    r = subprocess.run([sys.executable, "-m", "bench", "submit", STAGE2, "--dry-run", "--runs-root", "runs"],
                       capture_output=True, text=True, cwd=tmp_path)   # an empty runs root: everything to submit
    assert r.returncode == 0, r.stderr
    out = r.stdout.replace(str(tmp_path), "CWD").replace(sys.executable, "PYTHON")
    assert out == (REPO / "tests" / "golden" / "submit_dry_run.txt").read_text()
    assert not (tmp_path / "runs").exists()   # a dry run writes nothing


def test_local_cluster_runs_the_same_plan(tmp_path):
    """--cluster local: submitit's local executor on this machine (no SLURM), parents waited for in turn."""
    runs = tmp_path / "runs"
    r = subprocess.run([sys.executable, "-m", "bench", "submit", STAGE2, "--cluster", "local", "--override",
                        "runtime.threads=1", "--runs-root", str(runs)], capture_output=True, text=True, cwd=REPO,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    assert next(runs.glob("smoke/ce-*/result.json")).is_file()
    t0 = time.time()
    while not list(runs.glob("smoke/wb-*/result.json")):
        assert time.time() - t0 < 300, r.stdout
        time.sleep(0.5)


def task_pid(job: str) -> int | None:
    """The pid of a job's submitit task (python -m submitit.core._submit), found through /proc: the local
    cluster's nodes run on this host."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmd, env = (proc / "cmdline").read_bytes(), (proc / "environ").read_bytes()
        except OSError:
            continue
        argv = cmd.split(b"\0")
        if (Path(argv[0].decode()).name.startswith("python") and b"submitit.core._submit" in argv
                and f"SLURM_JOB_ID={job}\0".encode() in env):         # the task, not srun, which names it too
            return int(proc.name)
    return None


def stopped(pid: int) -> bool:
    """Is the process stopped (state T in /proc/PID/status; False once it is gone)?"""
    try:
        return "\tT" in next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                             if line.startswith("State:"))
    except FileNotFoundError:
        return False


def test_real_preemption_of_a_submitted_run_requeues_and_ends_with_the_same_numbers(slurm, smoke_reference,
                                                                                    tmp_path):
    """A job of the high partition preempts a submitted stage-1 run: USR2, checkpoint, requeue, resume.
    The smoke run ends ~1 s after its first checkpoint, sooner than the scheduler may preempt it, so the task
    is frozen (SIGSTOP) from its first checkpoint until the preemption: slurmstepd continues a stopped task
    (SIGCONT) as it sends the signal, so USR2 reaches a run still mid-way, every time."""
    runs = tmp_path / "runs"
    site = tmp_path / "site.yaml"
    site.write_text("partition: debug\nsignal_delay_s: 60\n")
    r = ltbench("submit", SMOKE, "--override", "runtime.threads=1", "--override", "runtime.checkpoint_every_steps=5",
                "--site", str(site), "--runs-root", str(runs), env=slurm)
    assert r.returncode == 0, r.stderr
    run_dir = next(runs.glob("smoke/ce-*"))
    job, t0 = job_of(run_dir), time.time()
    while (pid := task_pid(job)) is None:
        assert time.time() - t0 < 300, sacct(job, slurm)
        time.sleep(0.1)
    while not (run_dir / "checkpoints" / "last.pt").is_file():
        assert time.time() - t0 < 300, sacct(job, slurm)
        time.sleep(0.01)
    os.kill(pid, signal.SIGSTOP)
    try:
        assert not (run_dir / "result.json").is_file()
        hp = tmp_path / "hp"
        hp.mkdir()
        h = sbatch(f"#!/bin/bash\n#SBATCH -p high -N 2 -n 2 -c {os.cpu_count()}\nsleep 1\n", hp, slurm)
        t0 = time.time()
        while stopped(pid):
            assert time.time() - t0 < 60, sacct(job, slurm)
            time.sleep(0.05)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    assert wait_done(h, slurm)["state"] == "COMPLETED"
    assert wait_done(job, slurm, timeout=600)["state"] == "COMPLETED"
    states = [r["state"].split()[0] for r in sacct(job, slurm) if r["id"] == job]
    assert any(s in ("PREEMPTED", "REQUEUED") for s in states), states
    assert json.loads((run_dir / "requeues.json").read_text())["requeues"] == 1   # submitit's checkpoint() ran
    a, b = json.loads((run_dir / "result.json").read_text()), smoke_reference
    for key in ("metrics", "val_metrics", "per_class_acc", "selected_epoch"):
        assert a[key] == b[key], key


def test_two_node_ddp_through_submit(slurm, tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text("nodes: 2\ntasks_per_node: 1\n")
    runs = tmp_path / "runs"
    r = ltbench("submit", SMOKE, "--override", "runtime.threads=1", "--site", str(site), "--runs-root", str(runs),
                env=slurm)
    assert r.returncode == 0, r.stderr
    run_dir = next(runs.glob("smoke/ce-*"))
    row = wait_done(job_of(run_dir), slurm, timeout=600)
    assert row["state"] == "COMPLETED" and row["nodes"] == "n[1-2]"
    assert json.loads((run_dir / "result.json").read_text())["world_size"] == 2


def test_usr2_during_start_up_requeues_and_ends_with_the_same_numbers(slurm, smoke_reference, tmp_path):
    """The preemption signal while the job is still importing torch (seconds into the job): it is handled
    once the imports are done, and the requeued job ends with the same numbers."""
    runs = tmp_path / "runs"
    r = ltbench("submit", SMOKE, "--override", "runtime.threads=1", "--runs-root", str(runs), env=slurm)
    assert r.returncode == 0, r.stderr
    run_dir = next(runs.glob("smoke/ce-*"))
    job = job_of(run_dir)
    started = lambda: any("Starting with" in p.read_text() for p in (runs / "_submitit").rglob("*_log.*"))  # noqa: E731
    t0 = time.time()
    while not started():               # submitit's handler is installed; the job imports torch next
        assert time.time() - t0 < 120, sacct(job, slurm)
        time.sleep(0.02)
    time.sleep(0.3)
    assert not (run_dir / "config.yaml").exists()      # still starting up: nothing trained yet
    subprocess.run(["scancel", "--signal=USR2", job], check=True, env=slurm)
    row = wait_done(job, slurm, timeout=600)
    assert row["state"] == "COMPLETED", sacct(job, slurm)
    assert json.loads((run_dir / "requeues.json").read_text())["requeues"] == 1
    # handled after the imports: the first attempt exits cleanly (handled inside `import torch`, it died
    # with a traceback there: "Submitted job triggered an exception")
    logs = "".join(p.read_text() for p in (runs / "_submitit").rglob("*_log.*"))
    assert "Traceback" not in logs and "triggered an exception" not in logs, logs
    a = json.loads((run_dir / "result.json").read_text())
    for key in ("metrics", "val_metrics", "per_class_acc", "selected_epoch"):
        assert a[key] == smoke_reference[key], key


def test_usr2_at_moments_across_a_jobs_life_requeues_and_ends_with_the_same_numbers(slurm, tmp_path):
    """Preemption signals at several moments of one job, each sent when the attempt's log shows it got
    there (not after a fixed delay, which a loaded or an idle machine shifts): while the data and model
    are built, then in training. Every attempt requeues cleanly, the last one resumes from the training
    attempt's checkpoint and ends with the numbers of an uninterrupted run (the signal during the imports
    has its own test above)."""
    args = ["runtime.threads=1", "runtime.checkpoint_every_steps=5", "train.epochs=12"]
    ref = ltbench("run", SMOKE, *args, "--runs-root", str(tmp_path / "ref"), env=slurm)
    assert ref.returncode == 0, ref.stderr
    reference = json.loads(next((tmp_path / "ref").glob("smoke/ce-*/result.json")).read_text())
    runs = tmp_path / "runs"
    r = ltbench("submit", SMOKE, *(x for a in args for x in ("--override", a)), "--runs-root", str(runs), env=slurm)
    assert r.returncode == 0, r.stderr
    run_dir = next(runs.glob("smoke/ce-*"))
    job = job_of(run_dir)

    def attempt_log() -> str:
        """The output of the current attempt (submitit appends every attempt to one log)."""
        out = "".join(p.read_text() for p in (runs / "_submitit").rglob("*_log.out"))
        return out.split("Starting with")[-1] if out.count("Starting with") == attempt else ""

    # (attempt, what its log shows first): the run directory is announced before the data and model are
    # built; an epoch line means training is under way (12 epochs of ~0.25 s leave time for the signal)
    for attempt, seen in ((1, "run directory:"), (2, "epoch 2/")):
        t0 = time.time()
        while seen not in attempt_log():
            assert time.time() - t0 < 180, (attempt, seen, sacct(job, slurm))
            time.sleep(0.02)
        subprocess.run(["scancel", "--signal=USR2", job], env=slurm)
    row = wait_done(job, slurm, timeout=600)
    logs = "".join(p.read_text() for p in (runs / "_submitit").rglob("*_log.*"))
    assert row["state"] == "COMPLETED", (sacct(job, slurm), logs[-4000:])
    assert "Traceback" not in logs and "triggered an exception" not in logs, logs
    assert json.loads((run_dir / "requeues.json").read_text())["requeues"] == 2   # the same job id, requeued
    assert any(r["state"].startswith("REQUEUED") for r in sacct(job, slurm) if r["id"] == job)
    assert "resuming" in logs                            # the second signal came after a checkpoint
    st = ltbench("status", str(runs / "smoke"), env=slurm)
    assert "done (requeued 2x)" in st.stdout and "12/12" in st.stdout, st.stdout
    a = json.loads((run_dir / "result.json").read_text())
    for key in ("metrics", "val_metrics", "per_class_acc", "selected_epoch"):
        assert a[key] == reference[key], key


def test_a_preemption_signal_after_the_run_is_complete_does_not_fail_the_job(tmp_path):
    """The submitted task's last moments: once the run is complete, USR2 (a preemption racing the job's end)
    is ignored. Python restores USR2's default action (terminate) as it shuts down, and SLURM then recorded
    a finished job as FAILED."""
    code = ("import os, signal, sys\nfrom bench.launch.submit import RunJob\n"
            f"assert RunJob({SMOKE!r}, ['runtime.threads=1'], sys.argv[1], 3)() == 0\n"
            "os.kill(os.getpid(), signal.SIGUSR2)\nprint('still here')\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "runs")], capture_output=True, text=True,
                       cwd=REPO, timeout=300)
    assert r.returncode == 0 and "still here" in r.stdout, (r.returncode, r.stderr[-2000:])
    assert json.loads(next((tmp_path / "runs").glob("smoke/ce-*/result.json")).read_text())["status"] == "complete"


def test_two_submits_at_once_submit_each_run_once(slurm, tmp_path):
    """Two `ltbench submit` of one two-stage plan started together on one runs root: each run is submitted once
    (the second waits for the first's lock, then finds both runs queued), and both stages complete."""
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "bench", "submit", STAGE2, "--override", "runtime.threads=1", "--runs-root", str(runs)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=slurm, cwd=REPO)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    submitted = [line for out, _ in outs for line in out.splitlines() if line.startswith("submitted ")]
    assert len(submitted) == 2 and sum("queued as" in out for out, _ in outs) == 1, outs
    parent, child = next(runs.glob("smoke/ce-*")), next(runs.glob("smoke/wb-*"))
    assert wait_done(job_of(parent), slurm)["state"] == "COMPLETED"
    assert wait_done(job_of(child), slurm)["state"] == "COMPLETED"
    assert not (runs / "_submitit" / ".lock").exists()
