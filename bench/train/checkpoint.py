"""Atomic checkpoints and the RNG state that makes a resumed run bit-identical."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from bench.errors import UserError
from bench.runtime.atomic import write_atomic


class CheckpointError(UserError, RuntimeError):
    """An unreadable checkpoint; the message names the file."""


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same directory, fsync, then os.replace (bench.runtime.atomic): a crash
    at any moment leaves either the old complete file or the new complete file, never a torn one."""
    write_atomic(path, lambda f: torch.save(obj, f), durable=True)


def load(path: Path) -> dict[str, Any]:
    """Load on CPU with weights_only=True (no arbitrary pickles); a torn or foreign file is a CheckpointError."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # zipfile/pickle/RuntimeError variants for truncated files
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({msg}); move it away to restart "
                              "this run from scratch") from None


@contextlib.contextmanager
def fitting(path: Path) -> Iterator[None]:
    """Restoring a checkpoint into this run's model / optimizer / state: a file of another architecture or
    without the expected entries is one line naming it (torch's mismatch report runs to dozens of lines)."""
    try:
        yield
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"checkpoint {path} does not fit this run ({type(e).__name__}: {first[:200]}); "
                              "move it away to restart this run from scratch") from None


def rng_state() -> dict[str, Any]:
    """Every global RNG a training step can touch (dropout, init, any stray numpy/python use)."""
    # the legacy tuple (the default): ("MT19937", key, pos, has_gauss, cached_gaussian)
    np_state = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": [list(random.getstate()[1]), random.getstate()[0], random.getstate()[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    internal, version, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
