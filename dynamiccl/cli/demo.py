"""``dynamiccl demo``: the main job end to end on a built-in default (:mod:`dynamiccl.demo`)."""

from __future__ import annotations

from pathlib import Path

from dynamiccl.cli.common import add_world_params, invocation
from dynamiccl.outputs import claim_replaced_dir


def add(sub) -> None:
    """Add ``demo`` to the sub-command parsers ``sub``."""
    p = sub.add_parser("demo", help="run the end-to-end demo on a built-in default")
    p.add_argument("--out", default="demo-output",
                   help="directory for the demo's files (default ./demo-output); a rerun replaces the demo's "
                        "earlier output there once it has finished")
    p.add_argument("--timesteps", type=int, default=None,
                   help="training decisions (default 24576: a few minutes on 2 cores)")
    add_world_params(p)  # every step of the demo runs inside this command: all of them cost with it
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from dynamiccl.demo import run_demo

    claim_replaced_dir(args.out, invocation(args.argv))  # the demo renames its directory: lock beside it
    # Each step is a dynamiccl command run in-process by the command line's own entry point, which
    # dynamiccl.cli.main hands over in args.run_command (this module does not import it back).
    return run_demo(Path(args.out), args.run_command, args.timesteps)
