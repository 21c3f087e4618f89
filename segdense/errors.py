"""The project's error types for mistakes a user can fix.

A command-line tool prints a :class:`UserError` as one ``error:`` line and exits with status 2; any other
exception is a bug of segdense and keeps its traceback. Each specific type also derives from the built-in
exception its callers have always caught (``ValueError``, ``FileNotFoundError``, ...), so library code and
scripts that catch those keep working.
"""
from __future__ import annotations

import contextlib
import difflib
from typing import Iterable, Iterator


class UserError(Exception):
    """Something the user gave (a config value, a file, a dataset) cannot be used; the message says what was
    wrong and what was expected."""


class ConfigError(UserError, ValueError):
    """An invalid configuration; the message lists every problem found."""


class CheckpointError(UserError, ValueError):
    """A checkpoint or weights file that cannot give a model; the message names the file."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist, or holds nothing usable."""


class NotWritableError(UserError, PermissionError):
    """An output location the user named cannot be written."""


class TrainingDivergedError(UserError, FloatingPointError):
    """Training stopped because the loss (or every fp16 step) stopped being finite; the message names the
    iteration and the last good checkpoint."""


class ProcessGroupError(UserError, RuntimeError):
    """The processes of a multi-process run lost each other: one was not started, ended, or stopped answering;
    the message names this process and where it waited."""


@contextlib.contextmanager
def config_values(what: str) -> Iterator[None]:
    """Turn a ``ValueError``/``TypeError`` raised while building ``what`` from the user's configuration (the
    constructors check their arguments) into a :class:`ConfigError` naming it; the original stays chained."""
    try:
        yield
    except UserError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{what}: {e}") from e


def closest_match(name: object, valid: Iterable[str]) -> str | None:
    """The entry of ``valid`` closest to ``name`` (for a "did you mean" hint), or None when nothing is close."""
    close = difflib.get_close_matches(str(name), list(valid), n=1)
    return close[0] if close else None
