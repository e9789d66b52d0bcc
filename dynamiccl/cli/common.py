"""What several handlers share: how a command line is recorded, and the command after ``--``."""

from __future__ import annotations

import shlex


def invocation(argv: list[str]) -> str:
    """The command line that ran, as provenance records it: ``dynamiccl ARGS...`` (shell-quoted)."""
    return "dynamiccl " + shlex.join(argv)


def wrapped_command(remainder: list[str]) -> list[str]:
    """The command a wrapper runs (``dynamiccl profile``/``launch ... -- CMD ARGS``): what follows
    the ``--`` (argparse's REMAINDER keeps it)."""
    return remainder[1:] if remainder[:1] == ["--"] else remainder
