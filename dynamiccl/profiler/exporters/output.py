"""All-or-nothing output of an export: every file appears complete, or none of them changes.

Each file is written to a temporary file beside its destination (``dynamiccl.atomic``); only when
every file of the export has been written are they renamed into place. If anything fails before
that, every temporary file is removed and the destinations keep what they held.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Sequence

from dynamiccl import atomic
from dynamiccl.errors import InputError


def check_out_dir(out_dir: str | os.PathLike) -> Path:
    """``out_dir`` as a Path; raises InputError if it exists and is not a directory."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(out, None, "not a directory: exports write one file per rank into a directory")
    return out


@contextlib.contextmanager
def atomic_files(paths: Sequence[str | os.PathLike]) -> Iterator[list[Path]]:
    """Yield one temporary path per destination; rename them all into place when the block succeeds."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(atomic.atomic_path(p)) for p in paths]
