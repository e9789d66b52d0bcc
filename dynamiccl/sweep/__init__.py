"""Fan a sweep out: the tasks of ``evaluate``, ``search`` and an experiment's held-out runs on a local
process pool (``--workers N``, default the cores) or a Ray cluster (``--ray auto|ADDRESS``).

A sweep is a *job* and its *tasks*:

- the job (:class:`SweepJob`) is picklable and sent once to every worker; ``job.setup()`` builds what
  its tasks share in one process (loaded cases, fitted agents) the first time that process runs one
  of its tasks, and ``job.run(context, args)`` runs one task and returns a picklable result;
- a :class:`Task` is a sortable ``key`` (its place in the merged results), a ``label`` (what a failure
  names: the case, the agent) and ``args`` for ``job.run``.

:func:`run_sweep` runs every task once, whichever backend: in this process (``workers=1``), on a
process pool, or on Ray; a task that raises (or whose worker dies) is retried once, then reported as
a :class:`Failure` with its label, and the others' results are kept. Results come back keyed by task
key and ordered by it, so a job whose tasks are deterministic in their ``args`` gives the same
results whichever way and in whatever order they ran. Nothing is written here: the caller writes
the merged results once, atomically. Ray is imported only by :mod:`dynamiccl.sweep.ray_backend`,
and only when ``--ray`` asks for it.
"""

from __future__ import annotations

import os
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any, Hashable, Protocol, Sequence

from dynamiccl.errors import InputError

ATTEMPTS = 2  # a task runs at most twice: once, and once more if it failed
# Thread pools of numpy's BLAS, OpenMP and torch: one thread per worker process, N workers on N cores.
ONE_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class SweepJob(Protocol):
    """What runs a sweep's tasks (see the module docstring). Must pickle (a module-level class)."""

    def setup(self) -> Any:
        """What this process's tasks of the job share, built once per process."""

    def run(self, context: Any, args: Any) -> Any:
        """One task's result (picklable) from ``args``; must depend on ``args`` only."""


@dataclass(frozen=True)
class Task:
    """One unit of a sweep: ``key`` orders the merged results (tuples of ints and strings),
    ``label`` names it in progress and failures, ``args`` go to ``job.run``."""

    key: Hashable
    label: str
    args: Any


@dataclass(frozen=True)
class Failure:
    """A task that failed twice: its key and label, the attempts it had, and the last error (its
    type, message and the line of our code that raised it)."""

    key: Hashable
    label: str
    error: str
    attempts: int = ATTEMPTS


@dataclass
class SweepOutcome:
    """What :func:`run_sweep` gives back: ``results`` (task key -> result, in key order; failed tasks
    absent), ``failures`` (in key order), and how it ran (``backend``: "this process", "process
    pool" or "ray <address>"; ``workers``: processes or Ray CPUs used at most)."""

    results: dict[Hashable, Any]
    failures: list[Failure] = field(default_factory=list)
    backend: str = "this process"
    workers: int = 1

    def ran_on(self) -> str:
        """Where the tasks ran, in words (:func:`ran_on`)."""
        return ran_on(self.backend, self.workers)

    def failure_text(self) -> str:
        """One line per failed task (empty when none failed)."""
        return "\n".join(f"  {f.label}: failed {f.attempts} times; last error: {f.error}" for f in self.failures)


def ran_on(backend: str, workers: int) -> str:
    """Where a sweep's tasks ran (a :class:`SweepOutcome`'s ``backend`` and ``workers``), for the line
    a command prints after it: "in this process", "on 2 local worker processes" or "on the Ray
    cluster ADDRESS (at most N tasks at a time)"."""
    if backend.startswith("ray "):
        return f"on the Ray cluster {backend[4:]} (at most {workers} tasks at a time)"
    if backend == "this process":
        return "in this process"
    return f"on {workers} local worker processes"


@dataclass(frozen=True)
class Parallelism:
    """Where a sweep runs: ``workers`` processes of this machine (None: every core this process may
    use), or a Ray cluster at ``ray`` ("auto": the one ``ray start`` made on this machine or
    ``RAY_ADDRESS`` names; else an address such as ``10.0.0.1:6379`` or ``ray://head:10001``), where
    ``workers``, if given, caps the tasks in flight."""

    workers: int | None = None
    ray: str | None = None

    def local_workers(self) -> int:
        """The processes a local sweep uses: ``workers``, or the cores this process may run on."""
        return self.workers if self.workers is not None else available_cores()

    def describe(self) -> str:
        if self.ray:
            return f"Ray cluster {self.ray}" + (f", at most {self.workers} tasks at a time" if self.workers else "")
        n = self.local_workers()
        return "this process" if n == 1 else f"{n} local worker processes"


def available_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS
        return max(1, os.cpu_count() or 1)


def run_sweep(job: SweepJob, tasks: Sequence[Task], parallel: Parallelism = Parallelism(), *,
              progress: bool = True, desc: str = "sweep") -> SweepOutcome:
    """Run every task of ``job`` (see the module docstring) where ``parallel`` says.

    Args:
        job: picklable; its ``run`` must not print progress bars of its own (workers share stderr).
        tasks: with unique, mutually comparable keys.
        parallel: local workers (1: in this process, no pool) or a Ray cluster.
        progress: a tqdm bar over tasks on stderr.
        desc: the bar's title.

    Returns:
        The results by key (key order) and the failures (each retried once first).

    Raises:
        ValueError: two tasks with the same key.
        InputError: ``--ray`` without Ray installed, or a Ray cluster that cannot be reached.
        KeyboardInterrupt: passed on once the pool's workers are stopped.
    """
    keys = [task.key for task in tasks]
    if len(set(keys)) != len(keys):
        raise ValueError("sweep tasks need unique keys")
    if parallel.ray:
        from dynamiccl.sweep.ray_backend import run_on_ray

        outcome = run_on_ray(job, tasks, parallel.ray, parallel.workers, progress=progress, desc=desc)
    else:
        from dynamiccl.sweep.local import run_locally

        outcome = run_locally(job, tasks, parallel.local_workers(), progress=progress, desc=desc)
    order = sorted(outcome.results)
    outcome.results = {key: outcome.results[key] for key in order}
    outcome.failures.sort(key=lambda f: f.key)
    return outcome


# --- what runs inside a worker (any backend) ----------------------------------------------------------

_CONTEXT: dict[str, Any] = {}  # job token -> job.setup() of this process; one job at a time


def execute(token: str, job: SweepJob, args: Any) -> tuple[bool, Any]:
    """Run one task in this process: ``(True, result)``, or ``(False, error text)`` when it raised
    (the error travels as text: an exception need not pickle). The job's context is built on the
    first task of ``token`` in this process and kept for the next ones."""
    try:
        if token not in _CONTEXT:
            _CONTEXT.clear()  # a worker serves one sweep at a time: drop an earlier sweep's cases
            _CONTEXT[token] = job.setup()
        return True, job.run(_CONTEXT[token], args)
    except Exception as exc:  # reported to the parent, which retries once
        return False, error_text(exc)


def forget(token: str) -> None:
    """Drop this process's context of the sweep ``token`` (the caller's own process, once its
    sweep ran there: its cases and agents are not kept alive past the sweep)."""
    _CONTEXT.pop(token, None)


def error_text(exc: BaseException) -> str:
    """``Type: message (file:line)``, the line being the innermost frame of dynamiccl's own code (not
    counting this runner's)."""
    where = ""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        inside = frame.filename.rsplit(f"{os.sep}dynamiccl{os.sep}", 1)
        if len(inside) == 2 and not inside[1].startswith(f"sweep{os.sep}"):
            where = f" ({inside[1]}:{frame.lineno})"
            break
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {message}{where}"


# What a worker takes from the process that started the sweep: its variables that change what a task
# computes (DYNAMICCL_WORLD_PARAMS from --params, DYNAMICCL_CACHE_DIR, ...) and where modules are found.
PASSED_ENV_PREFIXES = ("DYNAMICCL_",)
PASSED_ENV = ("PYTHONPATH",)


def submitter_setting() -> tuple[str, dict[str, str]]:
    """(working directory, the variables a worker takes) of this process, for :func:`enter_setting`."""
    env = {k: v for k, v in os.environ.items() if k in PASSED_ENV or k.startswith(PASSED_ENV_PREFIXES)}
    return os.getcwd(), env


def enter_setting(cwd: str, env: dict[str, str]) -> None:
    """In a worker: the submitter's ``DYNAMICCL_*`` variables (and no others of that prefix), its
    working directory where this machine has it (relative paths of a sweep resolve as they did
    there), and one thread per numeric library."""
    for name in [k for k in os.environ if k.startswith(PASSED_ENV_PREFIXES) and k not in env]:
        del os.environ[name]
    os.environ.update({k: v for k, v in env.items() if k != "PYTHONPATH"})  # sys.path is set by now
    for name in ONE_THREAD_ENV:
        os.environ[name] = "1"
    if os.path.isdir(cwd) and os.getcwd() != cwd:
        os.chdir(cwd)


def say_failed(bar, label: str, attempt: int, error: str, where: str = "") -> None:
    """One line on stderr (above the progress bar) for a failed attempt of the task ``label``."""
    again = "retrying once" if attempt < ATTEMPTS else "giving up"
    bar.write(f"sweep: {label} failed{where} (attempt {attempt} of {ATTEMPTS}: {error}); {again}", file=sys.stderr)


def ray_missing() -> InputError:
    """The error for ``--ray`` where Ray is not installed."""
    return InputError("--ray", None, "needs Ray, an optional extra: pip install 'dynamiccl[ray]' "
                                     f"(into {sys.prefix}), on this machine and on the cluster's")


__all__ = ["ATTEMPTS", "ONE_THREAD_ENV", "Failure", "Parallelism", "SweepJob", "SweepOutcome", "Task", "available_cores",
           "enter_setting", "execute", "forget", "ran_on", "run_sweep", "submitter_setting"]
