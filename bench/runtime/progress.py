"""Progress output: one log line per event, plus a tqdm bar for long loops on a terminal."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


def log(msg: str) -> None:
    """One line on stdout, from global rank 0 only (one write per line: parallel threads never interleave)."""
    # A process group exists only once torch is loaded; a command that never loads it (config, status, table,
    # submit: run on login nodes) must not load it just to log.
    if "torch" in sys.modules:
        from bench.runtime import dist

        if not dist.is_main():
            return
    sys.stdout.write(f"[{time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stdout.flush()


class Progress:
    """A tqdm bar when mode is 'on', or 'auto' and stderr is a terminal; otherwise silent."""

    def __init__(self, total: int, desc: str, mode: str = "auto", start: int = 0) -> None:
        show = mode == "on" or (mode == "auto" and sys.stderr.isatty())
        self.bar = tqdm(total=total, initial=start, desc=desc, leave=False, dynamic_ncols=True) if show else None

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def format_pct(v: float | None) -> str:
    """An accuracy in % for a log line or a status table: two decimals, or a dash for an empty group."""
    return "—" if v is None else f"{v:.2f}"
