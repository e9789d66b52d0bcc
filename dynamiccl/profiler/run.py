"""``dynamiccl profile -- CMD``: run a command with capture on, then merge what it recorded.

The command runs unchanged (``torchrun ...``, ``python train.py``, ``srun ...``): the environment
gets ``DYNAMICCL_PROFILE_DIR=<out>/capture`` and ``PYTHONPATH`` gains the ``autostart`` directory
(:mod:`dynamiccl.profiler.auto`). SIGINT and SIGTERM are forwarded to the command's process group;
the exit status is the command's. Afterwards the rank files are merged into ``<out>/trace.parquet``.
``dynamiccl launch`` runs its command through the same ``run_forwarding_signals``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

from dynamiccl.errors import InputError
from dynamiccl.profiler.auto import ENV_DIR

AUTOSTART_DIR = Path(__file__).resolve().parent / "autostart"


def profile_environment(capture_dir: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment that makes every Python process of a job record into ``capture_dir``."""
    env = dict(os.environ if base is None else base)
    env[ENV_DIR] = str(capture_dir)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(AUTOSTART_DIR), package_root, env.get("PYTHONPATH")]))
    return env


def fresh_capture_dir(out_dir: str | os.PathLike) -> Path:
    """``out_dir/capture``, emptied (a stale rank file would merge into this run) and created."""
    capture_dir = Path(out_dir) / "capture"
    if capture_dir.exists():
        shutil.rmtree(capture_dir)
    capture_dir.mkdir(parents=True)
    return capture_dir


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


def run_profiled(command: list[str], out_dir: str | os.PathLike) -> tuple[int, Path]:
    """Run ``command`` with capture on; returns (its exit status, the capture directory).

    Raises:
        InputError: an empty command or one that cannot be started.
    """
    if not command:
        raise InputError("profile", None, "no command given; usage: dynamiccl profile -o DIR -- CMD ...")
    capture_dir = fresh_capture_dir(out_dir)
    return run_forwarding_signals(command, profile_environment(capture_dir), "profile"), capture_dir
