"""What an export says before and while it writes: its size first, then a progress bar.

An export writes one file per rank of the job, and a representative trace of a large job expands to
thousands of ranks (the Llama 3.1 405B trace: 8,192 Chakra files, over 2 GB). Before writing, an
export estimates its bytes from one rank per representative (every rank a representative stands for
runs the same rows, so its file has the same size but for its own group and peer numbers), says
it on stderr when it is large (:data:`ANNOUNCE_BYTES`; small exports stay quiet), and refuses
when the output's file system has less room than that; while writing, a bar counts the files (shown
once an export has run for 2 s).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from dynamiccl.errors import InputError
from dynamiccl.profiler.exporters.plan import ExportPlan


# Exports from this size on say theirs before they start: they take seconds or more to write.
ANNOUNCE_BYTES = 64 * 10**6


def estimate_bytes(plan: ExportPlan, rank_bytes: Callable[[int], int], samples: int = 16) -> int:
    """The bytes of every rank's file: ``rank_bytes(rank)`` (the size of one rank's file, built
    in memory and not written) for one rank per representative, times the ranks it stands for. A
    trace of more than ``samples`` representatives (every rank recorded) is estimated from
    ``samples`` of them, evenly spaced, so that the estimate costs a bounded share of the export."""
    ranks_of: dict[int, list[int]] = {}
    for rank in plan.ranks:
        ranks_of.setdefault(plan.plans[rank].source, []).append(rank)
    groups = list(ranks_of.values())
    picked = groups if len(groups) <= samples else [groups[i * len(groups) // samples] for i in range(samples)]
    sampled = sum(rank_bytes(ranks[0]) * len(ranks) for ranks in picked)
    return round(sampled * len(plan.ranks) / sum(len(ranks) for ranks in picked))


def announce(what: str, files: int, nbytes: int, out_dir: str | os.PathLike) -> None:
    """Say on stderr what an export will write (from :data:`ANNOUNCE_BYTES` on); refuse it when
    the file system of ``out_dir`` (or of its nearest existing parent) has less free space than
    ``nbytes``.

    Raises:
        InputError: naming ``out_dir``, with the bytes needed and free.
    """
    existing = Path(out_dir).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        free = shutil.disk_usage(existing).free
    except OSError:
        free = None
    if free is not None and nbytes > free:
        raise InputError(os.fspath(out_dir), None, f"{what} needs ~{_size(nbytes)} for {files:,} files; "
                                                   f"only {_size(free)} free there")
    if nbytes < ANNOUNCE_BYTES:
        return
    room = f" ({_size(free)} free)" if free is not None else ""
    print(f"{what}: writing {files:,} file(s), ~{_size(nbytes)}, to {os.fspath(out_dir)}{room}", file=sys.stderr)


def file_bar(files: int, what: str) -> tqdm:
    """A progress bar over the files of an export (on stderr; shown after 2 s)."""
    return tqdm(total=files, desc=what, unit="file", delay=2.0, file=sys.stderr)


def _size(nbytes: float) -> str:
    """Bytes in decimal units, as disk sizes are sold: ``2.1 GB``."""
    for unit in ("B", "kB", "MB", "GB"):
        if nbytes < 1000:
            return f"{nbytes:,.0f} {unit}" if unit == "B" else f"{nbytes:,.1f} {unit}"
        nbytes /= 1000
    return f"{nbytes:,.1f} TB"
