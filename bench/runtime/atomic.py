"""Atomic file writes: a temporary file in the same folder, then os.replace.

A crash, kill or full disk at any moment leaves either the old complete file or the new complete one,
never a torn one; the temporary file is removed on failure (it would eat the space a retry needs), and an
OSError names the file the user must make room for (torch.save and write report ENOSPC without a name).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomic(path: Path, write: Callable[[BinaryIO], object], durable: bool = False) -> None:
    """`write(f)` into a temporary file beside `path`, then rename it over `path`. durable: fsync the file
    and the folder too, so the new file survives a power loss (checkpoints)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror, str(e.filename or path)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
