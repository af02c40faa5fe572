"""Shared test helpers: the repo root and a runner for the real `ltbench` CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Runs made by the tests do not track to W&B (each offline run costs ~1 s and a wandb-core process);
# tests/integration/test_wandb.py turns it on, offline, where W&B itself is under test.
os.environ["WANDB_MODE"] = "disabled"


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m bench ARGS` in a subprocess (the same code path as the console script)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd or REPO, capture_output=True,
                          text=True, timeout=timeout, env=full_env)


@pytest.fixture
def repo() -> Path:
    return REPO


# The heaviest test files, longest first (seconds in a full `make test`, 2026-12-06: 279, 202, 200, 190, 107, ...).
# `make test` gives whole files to two xdist workers in this order (--no-loadscope-reorder: by default xdist
# starts with the files that hold the most tests, the quick unit files, and a long file begun last keeps one
# worker busy while the other idles). Longest first, the two workers finish together.
HEAVY_FIRST = ("test_slurm.py", "test_shards.py", "test_ddp.py", "test_run_e2e.py", "test_pipeline.py", "test_perf.py",
               "test_wandb.py", "test_disk.py", "test_run_guard.py", "test_lock.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(HEAVY_FIRST)))   # stable: order within a file kept
