"""Fixtures of the shard tests (test_shards.py, test_shards_access.py): prepared once per module."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.shardtools import SMOKE_DATA, fake_cards


@pytest.fixture(scope="module")
def smoke_shards(tmp_path_factory) -> Path:
    """The smoke config's data (synthetic, 772 training images of 16 px) as PNG shards of 100 samples."""
    out = tmp_path_factory.mktemp("smoke-shards")
    r = run_cli("prepare", "synthetic", *SMOKE_DATA, "--out", str(out), "--samples-per-shard", "100")
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def cards(tmp_path_factory) -> Path:
    """Dataset cards whose statistics match the fake ImageNet-LT / Places-LT / iNat trees (tests/shardtools.py)."""
    return fake_cards(tmp_path_factory.mktemp("cards"))
