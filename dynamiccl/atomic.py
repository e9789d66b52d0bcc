"""Atomic file writes: a reader sees the old file or the complete new one, never half of either.

The content goes to a temporary file in the destination's directory (same filesystem), is flushed
and fsync'ed, then renamed over the destination with os.replace, which POSIX makes atomic.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from dynamiccl.errors import OutputError


# errno values that say the write itself failed (not a file the writer was reading): these become
# an OutputError naming the destination, the one line a user gets for a full disk.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO})


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it over ``path``.

    Write the whole file to the yielded path inside the ``with`` block. If the block raises
    (KeyboardInterrupt and ``dynamiccl.outputs.Terminated`` included), the temporary file is
    removed, so are the parent directories this call created, and ``path`` is left untouched.

    Raises:
        OutputError: the destination's directory cannot be made or written, the
            rename fails, or the block fails for want of space (ENOSPC, EDQUOT, EFBIG), on a
            read-only filesystem (EROFS) or with an I/O error (EIO); the message names ``path``.
    """
    dest = Path(path)
    made = make_dirs(dest.parent, path)
    tmp: Path | None = None
    try:
        try:
            fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        except OSError as exc:
            raise OutputError(path, exc.strerror or str(exc)) from None
        tmp = Path(tmp_name)
        os.close(fd)
        os.chmod(tmp, _mode_for(dest))  # mkstemp makes 0600; a replaced file keeps its mode
        try:
            yield tmp
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        except OSError as exc:
            if exc.errno in WRITE_ERRNOS:
                raise OutputError(path, exc.strerror or str(exc)) from exc
            raise
        try:
            os.replace(tmp, dest)
        except OSError as exc:
            raise OutputError(path, exc.strerror or str(exc)) from exc
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        remove_dirs(made)
        raise


def make_dirs(directory: Path, path: str | os.PathLike) -> list[Path]:
    """Create ``directory`` and its missing parents; return those this call created, deepest first
    (for :func:`remove_dirs`). ``path``: the output they are for, named in the error.

    Raises:
        OutputError: one cannot be created (a file in the way, no permission).
    """
    missing = []
    while not directory.exists() and directory != directory.parent:
        missing.append(directory)
        directory = directory.parent
    made: list[Path] = []
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except FileExistsError:
            if directory.is_dir():  # made by another process meanwhile
                continue
            remove_dirs(made)
            raise OutputError(path, f"{directory} is a file, not a directory") from None
        except OSError as exc:
            remove_dirs(made)
            raise OutputError(path, f"{directory}: {exc.strerror or exc}") from None
        made.insert(0, directory)
    return made


def remove_dirs(made: list[Path]) -> None:
    """Remove the directories of ``make_dirs`` (deepest first), stopping at the first not empty."""
    for directory in made:
        try:
            directory.rmdir()
        except OSError:
            break  # another file is in it (or it is gone): leave it and its parents


def _mode_for(dest: Path) -> int:
    try:
        return dest.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_with(path: str | os.PathLike, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` to produce the file, then move it to ``path`` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)
