"""Error types shared by every module.

Every error a user can cause names where the problem is (file, field or column, row) and what was
expected, so that the message alone is enough to fix the input.
"""

from __future__ import annotations

import os


class DynamicclError(Exception):
    """Base class of errors that the CLI reports as one clear line (exit status 2)."""


class InputError(DynamicclError):
    """Bad user input: a file, a field in it, or a command-line value.

    Args:
        source: the file (or "--flag" / "model") the bad value came from.
        field: the column, key or field name, including a row or line number where useful.
        problem: what is wrong and what was expected.
    """

    def __init__(self, source: str | os.PathLike | None, field: str | None, problem: str):
        self.source = os.fspath(source) if source is not None else None
        self.field = field
        self.problem = problem
        where = ": ".join(part for part in (self.source, field) if part)
        super().__init__(f"{where}: {problem}" if where else problem)


class LayoutError(InputError):
    """A parallel layout that cannot run the chosen model (raised before any work is done)."""

    def __init__(self, problem: str):
        super().__init__("layout", None, problem)


class OutputError(DynamicclError, OSError):
    """An output path that cannot be written: ``PATH: cannot write (reason)``.

    Also an ``OSError``, so that code written against the ``OSError`` of a failed write (a full
    disk) still catches it.

    Args:
        path: the output as the user gave it.
        reason: why, naming the path component at fault where it is not ``path`` itself.
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: cannot write ({reason})")
