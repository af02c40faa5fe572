"""A full or read-only disk under a running `ltbench run`: one line naming the path, the last checkpoint
intact, and the run resumable once there is room again. On a small real tmpfs (needs root to mount)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.slow

SMOKE = str(REPO / "configs" / "smoke.yaml")
ARGS = ["runtime.threads=1", "wandb.mode=disabled", "runtime.plot=false", "train.epochs=30"]


@pytest.fixture
def tmpfs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); `make test` runs as root")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _run_until_checkpoint(run_dir: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "bench", "run", SMOKE, *ARGS, "--run-dir", str(run_dir)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    t0 = time.time()
    while not (run_dir / "checkpoints" / "last.pt").is_file():
        assert proc.poll() is None and time.time() - t0 < 120
        time.sleep(0.02)
    return proc


def _fill(mnt: Path) -> Path:
    filler = mnt / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


@pytest.mark.parametrize("kind", ["full", "read-only"])
def test_checkpoint_write_failure_keeps_the_run_resumable(tmpfs, kind):
    run_dir = tmpfs / "run"
    proc = _run_until_checkpoint(run_dir)
    if kind == "full":
        filler = _fill(tmpfs)
    else:
        subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, out + err
    assert "Traceback" not in err and err.strip().count("\n") == 0, err
    expected = "No space left on device" if kind == "full" else "Read-only file system"
    assert err.startswith(f"ltbench: error: {expected}: {run_dir}"), err
    saved = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)     # intact, loadable
    assert saved["state"]["epoch"] >= 1
    assert not list(run_dir.rglob(".*.tmp*"))                                      # no torn temporaries
    if kind == "full":
        filler.unlink()
    else:
        subprocess.run(["mount", "-o", "remount,rw", str(tmpfs)], check=True)
    r = run_cli("run", SMOKE, *ARGS, "--run-dir", str(run_dir))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resuming" in r.stdout
