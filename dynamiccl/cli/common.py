"""What several handlers share: how a command line is recorded, the command after ``--``, the
``--params FILE`` option of every command that costs with the world simulator, and the
``--measurements CSV`` option of every command that can cost with the measured model."""

from __future__ import annotations

import contextlib
import os
import shlex
from typing import Iterator

# Where ``--params`` lands in a command's parsed arguments (``main`` reads it for every command).
WORLD_PARAMS_DEST = "world_params_file"


def invocation(argv: list[str]) -> str:
    """The command line that ran, as provenance records it: ``dynamiccl ARGS...`` (shell-quoted)."""
    return "dynamiccl " + shlex.join(argv)


def wrapped_command(remainder: list[str]) -> list[str]:
    """The command a wrapper runs (``dynamiccl profile``/``launch ... -- CMD ARGS``): what follows
    the ``--`` (argparse's REMAINDER keeps it)."""
    return remainder[1:] if remainder[:1] == ["--"] else remainder


def add_world_params(parser, note: str = "") -> None:
    """Give a command that costs with the world simulator ``--params FILE``: a user's own fit
    (``dynamiccl calibrate -o FILE``) in place of the shipped parameters, for this command only (the
    same as ``DYNAMICCL_WORLD_PARAMS=FILE``, which it overrides). ``note``: what the flag means for
    this command beyond that, appended to its help."""
    parser.add_argument("--params", dest=WORLD_PARAMS_DEST, metavar="FILE", default=None,
                        help="world parameters JSON from `dynamiccl calibrate -o FILE` (default: "
                             "$DYNAMICCL_WORLD_PARAMS, else the shipped calibration)" + (f"; {note}" if note else ""))


# The cost model that reads ``--measurements`` (dynamiccl.costmodel.measured).
MEASURED_MODEL = "measured"


def add_measurements(parser, model_flag: str = "--model") -> None:
    """Give a command that takes a cost model (``model_flag``) ``--measurements CSV`` (repeatable):
    the measured model's measurements (:func:`cost_options`)."""
    parser.add_argument("--measurements", action="append", default=None, metavar="CSV",
                        help=f"with {model_flag} {MEASURED_MODEL}: a measurements CSV (`dynamiccl measure -o CSV`, "
                             "the calibration format) to interpolate; repeat to merge several")


def cost_options(args, model: str, model_flag: str = "--model"):
    """The :class:`~dynamiccl.costmodel.protocol.CostModelOptions` of ``args``' ``--measurements``
    for cost model ``model``.

    Raises:
        InputError: ``--measurements`` with a model other than the measured one (which would ignore them).
    """
    from dynamiccl.costmodel.protocol import CostModelOptions
    from dynamiccl.errors import InputError

    paths = tuple(getattr(args, "measurements", None) or ())
    if paths and model != MEASURED_MODEL:
        raise InputError("--measurements", None, f"only {model_flag} {MEASURED_MODEL} reads measurements "
                                                 f"(the model is {model!r})")
    return CostModelOptions(measurements=paths)


@contextlib.contextmanager
def world_params_from(args) -> Iterator[None]:
    """Inside: every world the command makes uses ``args``' ``--params FILE`` (when given), and so do
    the processes it starts; the previous ``DYNAMICCL_WORLD_PARAMS`` comes back on leaving.

    Raises:
        InputError: the file is missing or not a valid parameters file (naming it and ``--params``).
    """
    path = getattr(args, WORLD_PARAMS_DEST, None)
    if not path:
        yield
        return
    from dynamiccl.costmodel.world import PARAMS_ENV, WorldParams
    from dynamiccl.errors import InputError

    if not os.path.isfile(path):
        raise InputError(path, "--params", "no such world parameters file (write one with `dynamiccl calibrate -o FILE`)")
    WorldParams.load(path)  # a bad file fails here, before any work
    previous = os.environ.get(PARAMS_ENV)
    os.environ[PARAMS_ENV] = os.path.abspath(path)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(PARAMS_ENV, None)
        else:
            os.environ[PARAMS_ENV] = previous


def add_parallel(parser, what: str = "tasks") -> None:
    """Give a command that fans out (:mod:`dynamiccl.sweep`) ``--workers N`` and ``--ray auto|ADDRESS``;
    ``what``: its tasks, for the help ("(case, state, agent) episodes")."""
    from dynamiccl import schema

    workers = schema.argument(schema.integer("--workers", low=1, high=4096))
    parser.add_argument("--workers", type=workers, default=None, metavar="N",
                        help=f"run the {what} on N local processes (default: every core; 1: in this process); "
                             "with --ray: at most N in flight")
    parser.add_argument("--ray", metavar="auto|ADDRESS", default=None,
                        help=f"run the {what} on a Ray cluster instead: auto (the cluster `ray start` made here, or "
                             "$RAY_ADDRESS) or HEAD:6379 / ray://HEAD:10001; needs `pip install 'dynamiccl[ray]'`")


def parallelism(args):
    """The :class:`~dynamiccl.sweep.Parallelism` of ``args``' ``--workers`` and ``--ray``."""
    from dynamiccl.sweep import Parallelism

    return Parallelism(workers=getattr(args, "workers", None), ray=getattr(args, "ray", None) or None)
