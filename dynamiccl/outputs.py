"""What a command writes: checked before it works, claimed while it writes, cleaned up when it fails.

Every ``dynamiccl`` command that writes follows the same three rules, all of them here:

- **Checked first.** :func:`check_outputs` (files) and :func:`claim_output_dir` (a directory) look
  at each output path before the command does any work, so that a path it cannot write fails in a
  second with ``PATH: cannot write (reason)`` rather than after an hour of training with a
  traceback. ``dynamiccl.errors.OutputError`` is that message; the command line prints it as
  ``dynamiccl: error: PATH: cannot write (reason)`` with exit status 2. ``dynamiccl.atomic`` raises
  it too when the disk fills up (or the filesystem turns read-only) in the middle of a write.
- **One run per directory.** :func:`claim_output_dir` takes an exclusive ``flock`` on
  ``DIR/.dynamiccl.lock`` that holds who took it (pid, host, command, start time); a second run
  into the same directory fails at once and names the holder. The kernel drops the lock when the
  holder dies, however it dies, so a stale lock file never blocks a later run.
- **Nothing half-made.** :func:`command_scope` wraps one command: it turns SIGTERM into an
  exception (:class:`Terminated`, a ``KeyboardInterrupt`` like Ctrl-C's SIGINT) so that ``finally``
  blocks run - the temporary files of ``dynamiccl.atomic``, the worker processes of the live cost
  model - and, if the command fails or is stopped, it removes what the command added to the
  directories it claimed (and the directories it created) before it releases their locks.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from dynamiccl import atomic
from dynamiccl.errors import OutputError

LOCK_NAME = ".dynamiccl.lock"
# Kernel filesystems that hold no user files (what /proc/self/mounts calls them): a path on one of
# them fails with a confusing errno (ENOENT under /proc), so the check names the filesystem instead.
PSEUDO_FILESYSTEMS = frozenset({"proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs",
                                "tracefs", "securityfs", "configfs", "bpf", "pstore", "efivarfs", "fusectl",
                                "mqueue", "binfmt_misc", "rpc_pipefs", "nsfs"})


class Terminated(KeyboardInterrupt):
    """SIGTERM (or SIGHUP) received: raised where the program is, like Ctrl-C's KeyboardInterrupt,
    so that cleanup runs; ``signum`` gives the exit status 128 + signum."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"{signal.Signals(signum).name} received")


# --- checks before any work -----------------------------------------------------------------------


def check_outputs(*paths: str | os.PathLike | None) -> None:
    """Check that each output file in ``paths`` can be written (``None`` entries are skipped).

    A file can be written when it is not a directory nor a special file (a device, a FIFO: an
    atomic write would replace it), and its nearest existing ancestor directory accepts new files
    (its parents are created on writing). Nothing is created or changed.

    Raises:
        OutputError: naming the first path that cannot be written and why.
    """
    for path in paths:
        if path is None:
            continue
        target = Path(path)
        if target.is_dir():
            raise OutputError(path, "it is a directory; expected a file name")
        if target.exists() and not target.is_file():
            raise OutputError(path, "it is not a regular file (a device, FIFO or socket)")
        _check_creatable(path, target.parent)


def check_output_dir(path: str | os.PathLike) -> None:
    """Check that files can be written into directory ``path`` (created on writing if missing).

    Raises:
        OutputError: ``path`` is a file, or it (or, if missing, its nearest existing ancestor) does
            not accept new files.
    """
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise OutputError(path, "it is a file; expected a directory")
    _check_creatable(path, target)


def _check_creatable(path: str | os.PathLike, directory: Path) -> None:
    """Raise OutputError(path, ...) unless a new file can be made in ``directory`` (or, if it is
    missing, in its nearest existing ancestor, where its missing parents would be made)."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.exists():
        raise OutputError(path, "no existing parent directory")
    if not existing.is_dir():
        raise OutputError(path, f"{existing} is a file, not a directory")
    fs = _pseudo_filesystem(existing)
    if fs:
        where = f"{existing} is" if str(existing.resolve()) == fs[1] else f"{existing} is on {fs[1]},"
        raise OutputError(path, f"{where} a kernel {fs[0]} filesystem that holds no files")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(path, f"permission denied: {existing} is not writable")
    # What os.access cannot see: a read-only mount, a full inode table, an ACL or SELinux rule.
    try:
        fd, probe = tempfile.mkstemp(prefix=".dynamiccl-probe-", dir=existing)
    except OSError as exc:
        raise OutputError(path, f"{existing}: {exc.strerror or exc}") from None
    os.close(fd)
    os.unlink(probe)


def _pseudo_filesystem(directory: Path) -> tuple[str, str] | None:
    """(filesystem type, mount point) when ``directory`` is on a kernel filesystem, else None
    (also where the mount table cannot be read: the probe write still catches those)."""
    try:
        lines = Path("/proc/self/mounts").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    resolved = str(directory.resolve())
    best: tuple[str, str] | None = None
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), parts[1])  # a space is \040
        inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
        if inside and (best is None or len(mount) >= len(best[1])):
            best = (parts[2], mount)
    return best if best and best[0] in PSEUDO_FILESYSTEMS else None


# --- one run per directory, and nothing half-made --------------------------------------------------


@dataclass
class _Claim:
    """A directory a command holds: its lock, what it held before, what the command created."""

    directory: Path
    lock_fd: int
    lock_path: Path
    entries_before: frozenset[str]
    made_dirs: list[Path]  # the directory and the missing parents it was created with, deepest first
    keep: Callable[[Path], bool] | None

    def undo(self) -> None:
        """Remove the entries the failed command added to the directory."""
        for name in sorted(set(os.listdir(self.directory)) - self.entries_before - {LOCK_NAME}):
            entry = self.directory / name
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

    def release(self) -> None:
        """Remove the lock file (if it is still ours) and drop the lock."""
        try:
            mine = os.fstat(self.lock_fd)
            now = os.stat(self.lock_path)
            if os.path.samestat(mine, now):
                os.unlink(self.lock_path)  # under the lock: a waiting run re-checks the inode
        except OSError:
            pass
        os.close(self.lock_fd)


@dataclass
class _Scope:
    claims: list[_Claim] = field(default_factory=list)


_scopes: list[_Scope] = []
_held: dict[Path, int] = {}  # directories this process holds, with how many nested claims


def claim_output_dir(path: str | os.PathLike, command: str,
                     keep: Callable[[Path], bool] | None = None) -> Path:
    """Check, create and lock output directory ``path`` for the rest of the current command.

    Held until :func:`command_scope` ends. If the command then fails (an exception, Ctrl-C,
    SIGTERM), the entries it added to the directory are removed, and the directory itself (with
    any parents) if this call created it, unless ``keep(directory)`` is true (a training run with a
    checkpoint is resumable, not half-made). A directory this process already holds (a command run
    in-process by another, like the demo's steps) is claimed again without a second lock.

    Args:
        path: the output directory.
        command: the command line holding it, for the message a second run gets.
        keep: on failure, whether the directory's new contents are kept.

    Returns:
        ``path`` as a Path.

    Raises:
        OutputError: ``path`` cannot be written (see :func:`check_output_dir`), or another run holds
            it: the message names its pid, host, start time and command.
        RuntimeError: called outside :func:`command_scope` (a programming error).
    """
    directory = Path(path)
    return _claim(path, command, directory, directory / LOCK_NAME, keep)


def claim_replaced_dir(path: str | os.PathLike, command: str) -> Path:
    """Lock output directory ``path`` for a command that replaces it as a whole (the demo sets an
    earlier output aside and renames directories itself), for the rest of the current command.

    The lock sits beside the directory, ``.NAME.dynamiccl.lock`` in its parent, because a lock
    inside would move with the renamed directory and the next run would find none. Nothing is
    undone on failure: the command restores its own output. The directory itself is not created.

    Raises:
        OutputError: ``path`` cannot be written (see :func:`check_output_dir`), or another run holds
            it: the message names its pid, host, start time and command.
        RuntimeError: called outside :func:`command_scope` (a programming error).
    """
    directory = Path(path)
    return _claim(path, command, directory.parent, directory.parent / f".{directory.name}{LOCK_NAME}",
                  lambda _: True)


def _claim(path: str | os.PathLike, command: str, create: Path, lock_path: Path,
           keep: Callable[[Path], bool] | None) -> Path:
    """Check ``path``, create directory ``create`` (``path`` or its parent), take ``lock_path``
    (none when this process holds ``path`` already) and record the claim in the current scope."""
    if not _scopes:
        raise RuntimeError("an output directory claimed outside command_scope")
    directory = Path(path)
    check_output_dir(path)
    made = atomic.make_dirs(create, path)
    key = directory.resolve()
    if key in _held:
        _held[key] += 1
        _scopes[-1].claims.append(_Claim(directory, -1, lock_path, frozenset(), made, keep))
        return directory
    try:
        lock_fd = _lock(path, lock_path, command)
    except BaseException:
        atomic.remove_dirs(made)
        raise
    _held[key] = 1
    before = frozenset(os.listdir(directory)) - {LOCK_NAME} if directory.is_dir() else frozenset()
    _scopes[-1].claims.append(_Claim(directory, lock_fd, lock_path, before, made, keep))
    return directory


def _lock(path: str | os.PathLike, lock_path: Path, command: str) -> int:
    """Take the exclusive lock of ``lock_path``; return its descriptor (written with the holder)."""
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputError(path, f"{lock_path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputError(path, f"another run is writing into it: {_holder(lock_path)}; wait for it "
                                        "to finish or give another output directory") from None
            raise OutputError(path, f"{lock_path}: cannot lock: {exc.strerror or exc}") from None
        # The holder before us may have removed the file between our open and our lock: then we
        # hold a lock on a file nobody else will open, so start again on the file that is there now.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock_path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
              "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")}
    os.ftruncate(fd, 0)
    os.write(fd, (json.dumps(holder) + "\n").encode())
    return fd


def _holder(lock_path: Path) -> str:
    """Who holds ``lock_path``, as its holder wrote it."""
    try:
        holder = json.loads(lock_path.read_text(encoding="utf-8"))
        return (f"pid {holder['pid']} on {holder['host']} since {holder['started']} "
                f"({holder['command']})")
    except (OSError, ValueError, KeyError, TypeError):
        return f"a process that holds {lock_path}"  # taken a moment ago: its record is not written yet


@contextlib.contextmanager
def command_scope() -> Iterator[None]:
    """Run one command: SIGTERM/SIGHUP raise :class:`Terminated` meanwhile (in the main thread),
    and the directories it claims are released at the end, after their new contents are removed
    if the command failed.

    A command has failed when an exception leaves the block, except ``SystemExit(0)`` and
    ``BrokenPipeError`` (the reader of stdout went away, as ``| head`` does: what the command
    wrote stays).
    """
    scope = _Scope()
    _scopes.append(scope)
    failed = False
    try:
        with _signals_raise():
            try:
                yield
            except BaseException as exc:
                failed = _failed(exc)
                raise
            finally:
                _release(scope, failed)
    finally:
        _scopes.remove(scope)


def _failed(exc: BaseException) -> bool:
    if isinstance(exc, SystemExit):
        return exc.code not in (0, None)
    return not isinstance(exc, BrokenPipeError)


def _release(scope: _Scope, failed: bool) -> None:
    """Release the claims of ``scope``, last first; after a failure, undo what they hold first."""
    for claim in reversed(scope.claims):
        key = claim.directory.resolve()
        if claim.lock_fd < 0:  # a nested claim: the outer one releases
            _held[key] -= 1
            continue
        undone = failed and not (claim.keep is not None and claim.keep(claim.directory))
        try:
            if undone:
                claim.undo()  # under the lock, so that no other run sees a half-removed directory
        finally:
            _held.pop(key, None)
            claim.release()
        if undone:
            atomic.remove_dirs(claim.made_dirs)


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """SIGTERM and SIGHUP raise :class:`Terminated` once; a repeat during the cleanup is ignored
    (so that the cleanup finishes); the previous handlers come back at the end. A signal whose
    handler is not the default is left alone: ignored under ``nohup``, or already raising in an
    enclosing command (the demo's steps run in-process)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    received: list[int] = []

    def handler(signum, _frame):
        if received:
            return
        received.append(signum)
        raise Terminated(signum)

    previous = {}
    for s in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(s) is signal.SIG_DFL:
            previous[s] = signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
