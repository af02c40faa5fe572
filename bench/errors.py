"""Errors that are the user's input (a config, a data directory, a model name, a checkpoint, a path): shown as
one line naming the problem, never a traceback. Shared by the CLI and the SLURM job.

Every bad-input error of ltbench subclasses UserError (ConfigError, DatasetError, ModelError, CheckpointError,
...), so this module, at the bottom of the package, imports nothing of it."""

from __future__ import annotations


class UserError(Exception):
    """Bad input: its message is the one line the user sees (what is wrong, with the file, key or value)."""


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception types of bad input: ltbench's own, and an OSError on a path the user gave."""
    return (UserError, OSError)


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
