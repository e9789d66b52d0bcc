"""``dynamiccl profile -- CMD``: run a command with capture on, then merge what it recorded.

The command runs unchanged (``torchrun ...``, ``python train.py``, ``srun ...``): the environment
gets ``DYNAMICCL_PROFILE_DIR=<out>/capture`` and ``PYTHONPATH`` gains the ``autostart`` directory
(:mod:`dynamiccl.profiler.auto`). SIGINT and SIGTERM are forwarded to the command's process group;
the exit status is the command's. Afterwards the rank files are merged into ``<out>/trace.parquet``.
``dynamiccl launch`` runs its command through the same ``run_forwarding_signals``.

Capture fails open, here as in the job: a capture directory that cannot be created (the command
then runs unprofiled) or a capture that cannot be merged is one line on stderr, and the exit status
stays the command's.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from typing import TYPE_CHECKING

from dynamiccl.errors import DynamicclError, InputError
from dynamiccl.profiler.auto import ENV_DIR

if TYPE_CHECKING:  # the trace store needs pandas; the launcher imports this module without it
    from dynamiccl.trace.store import Trace

AUTOSTART_DIR = Path(__file__).resolve().parent / "autostart"


def profile_environment(capture_dir: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment that makes every Python process of a job record into ``capture_dir``."""
    return autostart_environment({ENV_DIR: str(capture_dir)}, base)


def autostart_environment(settings: dict[str, str], base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default ``os.environ``) with ``settings`` and the ``autostart`` directory (and this
    package) first on ``PYTHONPATH``, so every Python process of a job runs the autostart
    ``sitecustomize``, which reads ``settings`` (``DYNAMICCL_PROFILE_DIR``, ``DYNAMICCL_STEP_TIMES_DIR``,
    ``DYNAMICCL_COMM_CONFIG``). Applied twice (a launch that profiles), the path is not repeated."""
    env = dict(os.environ if base is None else base)
    env.update(settings)
    first = [str(AUTOSTART_DIR), str(Path(__file__).resolve().parents[2])]
    rest = [entry for entry in (env.get("PYTHONPATH") or "").split(os.pathsep) if entry and entry not in first]
    env["PYTHONPATH"] = os.pathsep.join(first + rest)
    return env


def say(who: str, line: str) -> None:
    """Print one line of ``dynamiccl WHO`` (``profile``, ``launch``) to stderr, prefixed with the
    command's name, so that the job's own output stays clean."""
    print(f"dynamiccl {who}: {line}", file=sys.stderr, flush=True)


def create_capture_dir(capture_dir: str | os.PathLike) -> str | None:
    """Empty (a stale rank file would merge into this run) and create ``capture_dir``.

    Returns:
        None, or why it cannot be done, as one line (``not profiling: cannot create DIR: reason``):
        the caller then runs the job unprofiled. Never raises for a filesystem problem.
    """
    capture_dir = Path(capture_dir)
    try:
        if capture_dir.exists():
            shutil.rmtree(capture_dir)
        capture_dir.mkdir(parents=True)
    except OSError as exc:
        return f"not profiling: cannot create {capture_dir}: {exc.strerror or exc}"
    return None


def merge_after_run(capture_dir: Path, command: list[str], gpus_per_node: int,
                    who: str) -> "tuple[Path, Trace] | None":
    """Merge what the job recorded into ``trace.parquet`` beside ``capture_dir``
    (:func:`dynamiccl.profiler.merge.write_merged_trace`), failing open.

    Returns:
        (the trace's path, the trace), or None after saying why in one line (``no trace: ...``):
        nothing recorded (the job died before its process group existed), a malformed capture,
        a trace that cannot be written.
    """
    from dynamiccl.profiler.merge import write_merged_trace

    try:
        return write_merged_trace(capture_dir, gpus_per_node=gpus_per_node, description=shlex.join(command))
    except (DynamicclError, OSError) as exc:
        say(who, f"no trace: {exc}")
        return None


def run_forwarding_signals(command: list[str], env: dict[str, str], who: str) -> int:
    """Run ``command`` with ``env`` in its own process group (session) and wait for it.

    SIGINT and SIGTERM that this process receives meanwhile go to the whole group (a torchrun and
    its workers alike); this process's own handlers are restored afterwards. ``who`` ("profile",
    "launch") names the command in errors.

    Returns:
        The command's exit status, as a shell reports it: 128 + N for a death by signal N.

    Raises:
        InputError: if the command cannot be started (not found, not executable).
    """
    try:
        child = subprocess.Popen(command, env=env, start_new_session=True)
    except OSError as exc:
        raise InputError(who, None, f"cannot run {command[0]!r}: {exc.strerror}") from None

    def forward(signum, _frame):
        try:
            os.killpg(child.pid, signum)
        except ProcessLookupError:
            pass

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        status = child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 128 - status if status < 0 else status


def run_profiled(command: list[str], out_dir: str | os.PathLike) -> tuple[int, Path | None]:
    """Run ``command`` with capture on into ``out_dir/capture``; returns (its exit status, the
    capture directory). If that directory cannot be created, one line says why and the command
    runs unprofiled (the directory returned is then None).

    Raises:
        InputError: an empty command or one that cannot be started.
    """
    if not command:
        raise InputError("profile", None, "no command given; usage: dynamiccl profile -o DIR -- CMD ...")
    capture_dir = Path(out_dir).absolute() / "capture"
    problem = create_capture_dir(capture_dir)
    if problem is not None:
        say("profile", f"{problem}; the command runs unprofiled")
        return run_forwarding_signals(command, dict(os.environ), "profile"), None
    return run_forwarding_signals(command, profile_environment(capture_dir), "profile"), capture_dir
