"""``dynamiccl export``: the old spelling of ``table export --policy`` and ``trace export``, kept
for one release.

``dynamiccl export --policy P -o table.json ...`` runs ``table export``'s handler and
``dynamiccl export {chakra,param} TRACE -o DIR`` runs ``trace export``'s, each after one line on
stderr that names the new spelling.
"""

from __future__ import annotations

import sys

from dynamiccl.cli.table import add_policy_export_arguments, cmd_table_export
from dynamiccl.cli.trace import EXPORT_FORMATS, cmd_trace_export
from dynamiccl.errors import InputError


def add(sub) -> None:
    """Add ``export`` to the sub-command parsers ``sub``."""
    p = sub.add_parser("export", help="old spelling of `table export --policy` and `trace export` (goes in the "
                                      "next release)",
                       description="`dynamiccl export --policy policy.zip -o table.json [--nccl-csv table.csv]` is "
                                   "now `dynamiccl table export --policy ...`, and `dynamiccl export {chakra,param} "
                                   "TRACE -o DIR` is now `dynamiccl trace export {chakra,param} TRACE -o DIR`. The "
                                   "old spellings still work in this release.")
    p.add_argument("format", nargs="?", choices=EXPORT_FORMATS, help="trace format (trace export)")
    p.add_argument("trace", nargs="?", help="trace file (.parquet) (trace export)")
    p.add_argument("-o", "--output", required=True, help="table file (.json) or output directory (trace export)")
    add_policy_export_arguments(p, policy_required=False)
    p.set_defaults(func=cmd_export)


def _note(old: str, new: str) -> None:
    print(f"dynamiccl: note: '{old}' is now '{new}'; the old spelling goes in the next release", file=sys.stderr)


def cmd_export(args) -> int:
    """Run the handler of the new spelling of what ``args`` asks for."""
    if args.policy:
        if args.format or args.trace:
            raise InputError("export", None, "give either --policy (a decision table) or FORMAT TRACE (a trace)")
        _note("dynamiccl export --policy", "dynamiccl table export --policy")
        return cmd_table_export(args)
    if not args.format or not args.trace:
        raise InputError("export", None, "expected --policy POLICY, or a format (chakra, param) and a trace file")
    _note(f"dynamiccl export {args.format}", f"dynamiccl trace export {args.format}")
    return cmd_trace_export(args)
