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
