"""Errors that are the user's input (a config, a data directory, a model name, a checkpoint, a path): shown as
one line naming the problem, never a traceback. Shared by the CLI and the SLURM job."""

from __future__ import annotations


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception types of bad input (imported here, when an error is being handled: some pull in torch)."""
    from bench.config import ConfigError
    from bench.data.cards import DatasetError
    from bench.models import ModelError
    from bench.train.checkpoint import CheckpointError

    return (ConfigError, DatasetError, ModelError, CheckpointError, OSError)


def error_line(e: BaseException) -> str:
    """The one line for a user error: its message; for an OSError (a path the user gave, or the disk behind
    it: missing, not a directory, read-only, full) the reason and the path."""
    if isinstance(e, OSError):
        return f"{e.strerror or type(e).__name__}{': ' + str(e.filename) if e.filename else ''}"
    return str(e)


def one_line(e: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (whitespace runs collapsed), at most `limit` characters."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."
