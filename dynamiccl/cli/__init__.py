"""The ``dynamiccl`` command line.

One module per group of commands; each exposes ``add(subparsers)``, which adds its commands with
their handlers. A handler parses its arguments, calls library functions and prints; it imports the
library when it runs, so that building the parser (``dynamiccl --help``, a mistyped flag) imports
neither numpy, pandas, torch nor gymnasium.
"""

from __future__ import annotations

import argparse
import sys

from dynamiccl import __version__
from dynamiccl.cli import bench, costmodel, demo, export_alias, plugin, report, table, trace, tuning, workload
from dynamiccl.errors import DynamicclError

# The command groups, in the order `dynamiccl --help` lists their commands.
COMMAND_MODULES = (demo, workload, trace, table, costmodel, tuning, plugin, report, bench, export_alias)


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

    A ``DynamicclError`` (bad input) is printed as ``dynamiccl: error: ...`` with status 2, an
    interrupt with status 130; argparse exits with status 2 on a malformed command line.
    """
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv
    args.run_command = main  # for handlers that run other commands in-process (the demo's steps)
    try:
        return args.func(args)
    except DynamicclError as exc:
        print(f"dynamiccl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dynamiccl: interrupted", file=sys.stderr)
        return 130
