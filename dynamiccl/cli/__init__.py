"""The ``dynamiccl`` command line.

One module per group of commands; each exposes ``add(subparsers)``, which adds its commands with
their handlers. A handler parses its arguments, calls library functions and prints; it imports the
library when it runs, so that building the parser (``dynamiccl --help``, a mistyped flag) imports
neither numpy, pandas, torch nor gymnasium.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from dynamiccl import __version__
from dynamiccl.cli import (bench, costmodel, demo, export_alias, measure, plugin, report, table, trace, tuning, verify,
                           workload)
from dynamiccl.atomic import WRITE_ERRNOS
from dynamiccl.cli.common import world_params_from
from dynamiccl.errors import DynamicclError, OutputError
from dynamiccl.outputs import Terminated, command_scope

# The command groups, in the order `dynamiccl --help` lists their commands.
COMMAND_MODULES = (demo, workload, trace, table, costmodel, measure, tuning, plugin, verify, report, bench, export_alias)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every ``dynamiccl`` command; each parsed command's ``func`` is its handler."""
    parser = argparse.ArgumentParser(prog="dynamiccl", description="Learned NCCL algorithm/protocol/channel choices "
                                     "for large-transformer training.")
    parser.add_argument("--version", action="version", version=f"dynamiccl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one ``dynamiccl`` command line (default ``sys.argv[1:]``); returns the exit status.

    A ``DynamicclError`` (bad input, an output it cannot write, a full disk) is printed as
    ``dynamiccl: error: ...`` with status 2; an interrupt (SIGINT, or SIGTERM/SIGHUP, which raise the same way while a
    command runs: ``dynamiccl.outputs.command_scope``) as one line with status 128 + the signal
    number, after the command's temporary files and half-written outputs are removed. When stdout's
    reader goes away (``dynamiccl models | head -1``) the command ends quietly with status 141
    (128 + SIGPIPE), as a C program killed by SIGPIPE would. argparse exits with status 2 on a
    malformed command line.
    """
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv
    args.run_command = main  # for handlers that run other commands in-process (the demo's steps)
    try:
        with command_scope(), world_params_from(args):
            status = args.func(args)
            sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return status
    except BrokenPipeError:
        # Python's recipe (docs: signal, "Note on SIGPIPE"): point stdout at /dev/null so that
        # the flush at exit does not fail again and print a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + signal.SIGPIPE
    except DynamicclError as exc:
        print(f"dynamiccl: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in WRITE_ERRNOS:
            raise
        # a full disk under a writer that is not dynamiccl.atomic's (TensorBoard's event files)
        print(f"dynamiccl: error: {OutputError(exc.filename or 'an output', exc.strerror or str(exc))}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, Terminated) else signal.SIGINT
        print(f"dynamiccl: {'interrupted' if signum == signal.SIGINT else 'terminated'} "
              f"({signal.Signals(signum).name})", file=sys.stderr)
        return 128 + signum
