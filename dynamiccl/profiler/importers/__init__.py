"""Importers: traces people already have, turned into dynamiccl traces.

=================  =============================================================================
format             input
=================  =============================================================================
kineto             torch.profiler Chrome-trace JSON, one file per rank (NCCL ``record_param_comms``
                   + ``ncclDevKernel_*`` kernels, or gloo ``c10d::*`` + ``gloo:*`` events)
flight-recorder    PyTorch Flight Recorder dumps, one per rank (JSON; pickle only when trusted)
nccl-log           ``NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,COLL[,TUNING]`` logs, per rank or merged
inspector          NCCL Inspector plugin JSON (``<host>-pid<pid>.log``), one per process
=================  =============================================================================

Every importer returns a validated ``Trace`` (``source`` = ``import:<format>``) whose metadata
``workload`` lists the input files and ``notes``: what the source could not say (no timestamps,
no steps, an assumed broadcast root, ...). What each source gives and how its sizes are counted
is in the importer's module docstring.
"""

from __future__ import annotations

import os
from typing import Callable

from dynamiccl.errors import InputError
from dynamiccl.profiler.importers.flight_recorder import read_flight_recorder
from dynamiccl.profiler.importers.inspector import read_inspector
from dynamiccl.profiler.importers.kineto import read_kineto
from dynamiccl.profiler.importers.nccl_log import read_nccl_log
from dynamiccl.trace.store import Trace

IMPORTERS: dict[str, Callable[..., Trace]] = {
    "kineto": read_kineto,
    "flight-recorder": read_flight_recorder,
    "nccl-log": read_nccl_log,
    "inspector": read_inspector,
}


def import_files(kind: str, paths: list[str | os.PathLike], *, gpus_per_node: int = 8,
                 trust_pickle: bool = False) -> Trace:
    """Import ``paths`` (files, or directories of files) of format ``kind`` into one trace.

    Args:
        kind: one of ``IMPORTERS`` ("kineto", "flight-recorder", "nccl-log", "inspector").
        paths: the input files; one per rank, or merged where the format allows it.
        gpus_per_node: GPUs per node, for the node count of groups whose hosts the source does not
            name.
        trust_pickle: allow pickled Flight Recorder dumps. Unpickling untrusted data can run
            code, so it is refused unless asked for (and even then only plain data is accepted).

    Raises:
        InputError: an unknown format, or a malformed input (naming the file, the record or line,
            and the field).
    """
    if kind not in IMPORTERS:
        raise InputError("format", None, f"unknown import format {kind!r}; expected one of {', '.join(IMPORTERS)}")
    if not paths:
        raise InputError("files", None, "no input files given")
    paths = [os.fspath(p) for p in paths]
    if kind == "flight-recorder":
        return read_flight_recorder(paths, gpus_per_node=gpus_per_node, trust_pickle=trust_pickle)
    return IMPORTERS[kind](paths, gpus_per_node=gpus_per_node)


__all__ = ["IMPORTERS", "import_files", "read_flight_recorder", "read_inspector", "read_kineto", "read_nccl_log"]
