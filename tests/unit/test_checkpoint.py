"""Atomic checkpoint writes, clear errors on torn files, RNG round trip."""

import random

import numpy as np
import pytest
import torch

from bench.train.checkpoint import CheckpointError, load, rng_state, save_atomic, set_rng_state


def test_save_atomic_round_trip_leaves_no_temp(tmp_path):
    p = tmp_path / "ck" / "last.pt"
    save_atomic({"a": torch.arange(3), "epoch": 2}, p)
    assert load(p)["epoch"] == 2
    assert [f.name for f in p.parent.iterdir()] == ["last.pt"]


def test_truncated_checkpoint_names_the_file(tmp_path):
    p = tmp_path / "last.pt"
    save_atomic({"w": torch.randn(1000)}, p)
    p.write_bytes(p.read_bytes()[:500])
    with pytest.raises(CheckpointError, match=r"checkpoint .*last.pt is truncated or corrupt"):
        load(p)


def test_rng_state_round_trip_is_exact():
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    state = rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random(), np.random.randn())
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    set_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), random.random(), np.random.randn())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2:] == b[2:]


def test_rng_state_survives_save_and_load(tmp_path):
    torch.manual_seed(5)
    np.random.seed(5)
    save_atomic({"rng": rng_state()}, tmp_path / "r.pt")
    expected = (torch.rand(2), np.random.rand(2))
    set_rng_state(load(tmp_path / "r.pt")["rng"])
    assert torch.equal(torch.rand(2), expected[0]) and np.array_equal(np.random.rand(2), expected[1])
