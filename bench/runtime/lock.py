"""One writer per run directory (and per `ltbench prepare` output folder).

Two `ltbench run` of one config at once (a double submit, a requeue racing a manual rerun) would both write
the same checkpoints. The first takes `<dir>/.lock` (created with O_EXCL, so exactly one process wins) and
writes its holder into it: pid, host, start time, SLURM job id. While it runs, a background thread touches
the file every HEARTBEAT_S seconds. A later process refuses with one line naming the holder, or waits when
asked, unless the lock is stale:
- same host and the pid is gone (a killed run);
- the same SLURM job id as ours (a requeued job continuing its own run, perhaps on another node);
- another host, and no heartbeat for STALE_S seconds (a node that died; shared file systems).
A stale lock is taken over, and the log says whose it was.
"""

from __future__ import annotations

import json
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any

from bench.config import ConfigError
from bench.runtime.progress import log

HEARTBEAT_S = 30.0
STALE_S = 600.0


class LockError(ConfigError):
    """The directory is in use by another live process (one line: who holds it)."""


def _holder() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": platform.node(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "slurm_job": os.environ.get("SLURM_JOB_ID")}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True        # someone else's live process
    return True


def _why_stale(info: dict[str, Any], age_s: float) -> str | None:
    """Why the lock described by `info` (heartbeat `age_s` seconds ago) may be taken over, or None."""
    me = _holder()
    if info.get("slurm_job") and info.get("slurm_job") == me["slurm_job"]:
        return f"it is this SLURM job's ({me['slurm_job']}) earlier attempt"
    if info.get("host") == me["host"]:
        pid = info.get("pid")
        if not isinstance(pid, int) or not _alive(pid):
            return f"process {pid} is not running"
        return None
    if age_s > STALE_S:
        return f"no heartbeat for {age_s:.0f} s"
    return None


class DirLock:
    """`with DirLock(dir, "run directory"):` holds dir/.lock for the block (see the module docstring)."""

    def __init__(self, directory: Path, what: str, wait: bool = False, poll_s: float = 2.0) -> None:
        self.path = Path(directory) / ".lock"
        self.what, self.wait, self.poll_s = what, wait, poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._created: list[Path] = []

    def _try_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(_holder(), f)
        return True

    def _read(self) -> tuple[dict[str, Any], float]:
        try:
            info = json.loads(self.path.read_text())
            age = time.time() - self.path.stat().st_mtime
        except (OSError, ValueError):
            return {}, 0.0      # vanished or half-written: look again
        return (info if isinstance(info, dict) else {}), age

    def acquire(self) -> None:
        # the folders this creates are removed again if nothing else is written there (bad input leaves none)
        self._created = [d for d in (self.path.parent, *self.path.parent.parents) if not d.exists()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        announced = False
        while not self._try_create():
            info, age = self._read()
            if not info:
                time.sleep(0.05)
                continue
            why = _why_stale(info, age)
            if why is not None:
                # rename first: of two processes taking over the same stale lock, one rename wins
                aside = self.path.with_name(f".lock.stale{os.getpid()}")
                try:
                    os.replace(self.path, aside)
                except FileNotFoundError:
                    continue
                if json.loads(aside.read_text() or "{}") != info:   # another process took it over first
                    os.replace(aside, self.path)
                    continue
                aside.unlink()
                log(f"{self.what} {self.path.parent}: taking over the lock of pid {info.get('pid')} on "
                    f"{info.get('host')} (since {info.get('started')}): {why}")
                continue
            who = f"pid {info.get('pid')} on {info.get('host')} since {info.get('started')}"
            if info.get("slurm_job"):
                who += f" (SLURM job {info['slurm_job']})"
            if not self.wait:
                raise LockError(f"{self.what} {self.path.parent} is in use by {who}; wait for it (--wait) or "
                                f"remove {self.path} if that process is really gone")
            if not announced:
                log(f"{self.what} {self.path.parent} is in use by {who}: waiting")
                announced = True
            time.sleep(self.poll_s)
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        self._stop.set()
        try:
            info, _ = self._read()
            if info.get("pid") == os.getpid() and info.get("host") == platform.node():
                self.path.unlink()
            for d in self._created:           # deepest first
                if any(d.iterdir()):
                    break
                d.rmdir()
        except OSError:
            pass

    def __enter__(self) -> DirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
