"""One writer per run directory / prepare folder, tested with real processes."""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.slow

SMOKE = str(REPO / "configs" / "smoke.yaml")
ARGS = ["runtime.threads=1", "wandb.mode=disabled", "runtime.plot=false"]


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _wait_for(cond, timeout: float = 120) -> None:
    t0 = time.time()
    while not cond():
        assert time.time() - t0 < timeout
        time.sleep(0.05)


def test_a_second_run_of_the_same_directory_refuses_or_waits(tmp_path):
    d = tmp_path / "run"
    first = _start("run", SMOKE, *ARGS, "train.epochs=4", "--run-dir", str(d))
    _wait_for(lambda: (d / "config.yaml").is_file())          # the first holds the lock and is training
    # stopped, it holds the lock without taking the CPU the others need (its 4 epochs last seconds)
    os.kill(first.pid, signal.SIGSTOP)
    log = tmp_path / "waiting.log"
    try:
        holder = json.loads((d / ".lock").read_text())
        assert holder["pid"] == first.pid and holder["host"] == platform.node()
        second = run_cli("run", SMOKE, *ARGS, "train.epochs=4", "--run-dir", str(d))
        assert second.returncode == 2 and second.stderr.strip().count("\n") == 0, second.stderr
        assert f"is in use by pid {first.pid} on {platform.node()}" in second.stderr
        with open(log, "w") as out:
            waiting = subprocess.Popen([sys.executable, "-m", "bench", "run", SMOKE, *ARGS, "train.epochs=4",
                                        "--run-dir", str(d), "--wait"], cwd=REPO, stdout=out,
                                       stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        _wait_for(lambda: "waiting" in log.read_text() or waiting.poll() is not None)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert first.wait(timeout=120) == 0
    assert waiting.wait(timeout=120) == 0
    out = log.read_text()
    assert "waiting" in out and "run complete, nothing to do" in out, out
    assert not (d / ".lock").exists()


def test_a_stale_lock_is_taken_over(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    d = tmp_path / "run"
    d.mkdir()
    (d / ".lock").write_text(json.dumps({"pid": int(gone.stdout), "host": platform.node(),
                                         "started": "2026-01-01 00:00:00", "slurm_job": None}))
    r = run_cli("run", SMOKE, *ARGS, "train.epochs=1", "--run-dir", str(d))
    assert r.returncode == 0, r.stderr
    assert f"taking over the lock of pid {int(gone.stdout)}" in r.stdout and "is not running" in r.stdout


def test_prepare_into_a_folder_in_use_refuses(tmp_path):
    out = tmp_path / "shards"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".lock").write_text(json.dumps({"pid": sleeper.pid, "host": platform.node(),
                                               "started": "2026-11-30 10:00:00", "slurm_job": None}))
        r = run_cli("prepare", "synthetic", "--out", str(out), "imbalance_factor=10")
        assert r.returncode == 2 and f"prepare output folder {out} is in use by pid {sleeper.pid}" in r.stderr
        assert sorted(p.name for p in out.iterdir()) == [".lock"]                # nothing written
    finally:
        sleeper.kill()
