"""A sweep on this machine: in this process (one worker) or on a pool of worker processes.

The pool is ``concurrent.futures``' ``ProcessPoolExecutor`` started with ``forkserver`` (a worker is
not a fork of a process that holds threads: tqdm's, torch's). Each worker process runs on one
thread (``OMP_NUM_THREADS=1`` and friends, set before it imports numpy or torch) so that N workers
use N cores, in this process's working directory with its ``DYNAMICCL_*`` variables. The job is sent to each worker once (the pool's initializer); each task then carries
only its arguments. A worker that dies (killed, out of memory) breaks the pool: its tasks count one
failed attempt each, a fresh pool takes over, and what had finished is kept.
"""

from __future__ import annotations

import multiprocessing
import signal
import uuid
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Sequence

from tqdm.auto import tqdm

from dynamiccl.sweep import ATTEMPTS, Failure, SweepJob, SweepOutcome, Task, enter_setting, execute, forget, \
    say_failed, submitter_setting

_WORKER_JOB: tuple[str, SweepJob] | None = None  # (token, job) of this worker process


def run_locally(job: SweepJob, tasks: Sequence[Task], workers: int, *, progress: bool = True,
                desc: str = "sweep") -> SweepOutcome:
    """Run ``tasks`` on ``workers`` processes (1: here, without a pool); see :func:`dynamiccl.sweep.run_sweep`."""
    workers = max(1, min(workers, len(tasks)))
    bar = tqdm(total=len(tasks), disable=not progress, unit="task", desc=desc)
    try:
        if workers == 1:
            return _run_here(job, tasks, bar)
        return _run_pool(job, tasks, workers, bar)
    finally:
        bar.close()


def _run_here(job: SweepJob, tasks: Sequence[Task], bar) -> SweepOutcome:
    token = uuid.uuid4().hex
    outcome = SweepOutcome({}, [], "this process", 1)
    try:
        for task in tasks:
            for attempt in range(1, ATTEMPTS + 1):
                bar.set_postfix_str(task.label, refresh=False)
                ok, value = execute(token, job, task.args)
                if ok:
                    outcome.results[task.key] = value
                    break
                say_failed(bar, task.label, attempt, value)
                if attempt == ATTEMPTS:
                    outcome.failures.append(Failure(task.key, task.label, value, attempt))
            bar.update()
    finally:
        forget(token)
    return outcome


def _run_pool(job: SweepJob, tasks: Sequence[Task], workers: int, bar) -> SweepOutcome:
    token = uuid.uuid4().hex
    outcome = SweepOutcome({}, [], "process pool", workers)
    attempts = {task.key: 0 for task in tasks}
    waiting = list(tasks)  # submitted in the caller's order: put the longest tasks first
    while waiting:
        pool = _pool(token, job, workers)
        running: dict[Future, Task] = {}
        try:
            for task in waiting:
                attempts[task.key] += 1
                running[pool.submit(_worker_run, task.args)] = task
            waiting = []
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    task = running.pop(future)
                    try:
                        ok, value = future.result()
                    except BrokenProcessPool:
                        # A worker died: every unfinished task of this pool has used an attempt.
                        lost = [task, *running.values()]
                        running.clear()
                        for t in lost:
                            error = "its worker process died (killed, or out of memory)"
                            if attempts[t.key] < ATTEMPTS:
                                say_failed(bar, t.label, attempts[t.key], error)
                                waiting.append(t)
                            else:
                                outcome.failures.append(Failure(t.key, t.label, error, attempts[t.key]))
                                bar.update()
                        break
                    if ok:
                        outcome.results[task.key] = value
                        bar.set_postfix_str(task.label, refresh=False)
                        bar.update()
                        continue
                    say_failed(bar, task.label, attempts[task.key], value)
                    if attempts[task.key] < ATTEMPTS:
                        attempts[task.key] += 1
                        running[pool.submit(_worker_run, task.args)] = task
                    else:
                        outcome.failures.append(Failure(task.key, task.label, value, attempts[task.key]))
                        bar.update()
        except BaseException:
            _stop(pool)
            raise
        pool.shutdown(wait=True, cancel_futures=True)
    return outcome


def _pool(token: str, job: SweepJob, workers: int) -> ProcessPoolExecutor:
    context = multiprocessing.get_context("forkserver")
    return ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_init,
                               initargs=(token, job, *submitter_setting()))


def _stop(pool: ProcessPoolExecutor) -> None:
    """Stop a pool now (Ctrl-C, an error): cancel what has not started, end the workers."""
    processes = list(getattr(pool, "_processes", {}).values())  # no public API lists them
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=5)


def _worker_init(token: str, job: SweepJob, cwd: str, env: dict[str, str]) -> None:
    # The forkserver's children start from the server's directory and variables, which are those of
    # the first pool this process made: a later sweep's are applied here.
    # Ctrl-C reaches the whole process group: the parent stops its workers (``_stop``), so a worker
    # ignores it instead of dying with a traceback of its own.
    global _WORKER_JOB
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    enter_setting(cwd, env)
    _WORKER_JOB = (token, job)


def _worker_run(args: Any) -> tuple[bool, Any]:
    assert _WORKER_JOB is not None, "the pool's initializer sets the job"
    token, job = _WORKER_JOB
    _one_torch_thread()
    return execute(token, job, args)


def _one_torch_thread() -> None:
    """torch (if a task imported it) on one thread: N workers, N cores."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)
