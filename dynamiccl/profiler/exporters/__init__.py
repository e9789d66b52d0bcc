"""Exporters: a dynamiccl trace in other tools' formats, one file per rank of the job.

``export_trace("chakra", trace, out_dir)`` writes Chakra execution traces for ASTRA-sim
(``chakra.py``); ``export_trace("param", trace, out_dir)`` writes PARAM comms-replay JSON
(``param.py``). Representative traces are expanded to every rank (``plan.py``); an export's files
appear together or not at all.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any, Callable

from dynamiccl.errors import InputError
from dynamiccl.profiler.exporters.chakra import export_chakra, read_chakra
from dynamiccl.profiler.exporters.param import export_param
from dynamiccl.trace.store import Trace

EXPORTERS: dict[str, Callable[..., list[Path]]] = {"chakra": export_chakra, "param": export_param}


def export_trace(kind: str, trace: Trace, out_dir: str | os.PathLike, **options: Any) -> list[Path]:
    """Write ``trace`` in format ``kind`` (a key of ``EXPORTERS``) under ``out_dir``.

    ``options`` go to the exporter (chakra: ``prefix``, ``comm_size``; param: ``compute``).

    Returns:
        The paths of the files written.

    Raises:
        InputError: an unknown ``kind`` or option, or a trace the format cannot hold; no file of the
            export is changed then.
    """
    exporter = EXPORTERS.get(kind)
    if exporter is None:
        raise InputError("export", "kind", f"unknown export format {kind!r}; expected one of {', '.join(EXPORTERS)}")
    accepted = [name for name, p in inspect.signature(exporter).parameters.items() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise InputError("export", "options", f"{kind} has no option {', '.join(map(repr, unknown))}; "
                                              f"its options are {', '.join(accepted) or 'none'}")
    return exporter(trace, out_dir, **options)


__all__ = ["EXPORTERS", "export_chakra", "export_param", "export_trace", "read_chakra"]
