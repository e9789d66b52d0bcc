"""A sweep on a Ray cluster (``--ray auto|ADDRESS``; Ray is the optional extra ``dynamiccl[ray]``).

Ray, not a scheduler of ours: the cluster is the user's (``ray start --head`` on one machine, ``ray
start --address HEAD:6379`` on the others). Each task is a Ray task of one CPU running the same
:func:`dynamiccl.sweep.execute` as a local worker; the job is put in Ray's object store once and each
task carries only its arguments. Ray's own retries are off (``max_retries=0``): a task that raised or
whose worker died is resubmitted once here, so that a failure is reported with its case whichever
backend ran it.

The workers run where Ray starts them: they need dynamiccl (and Ray) installed, and the sweep's
files (traces, environment specs, policies) at the same paths as on this machine -- a shared file
system, or the same checkout everywhere. Paths are sent absolute; the workers change to this
process's working directory when it exists there, and get its ``DYNAMICCL_*`` and ``PYTHONPATH``
variables (Ray's ``runtime_env``).
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any, Sequence

from tqdm.auto import tqdm

from dynamiccl.errors import InputError
from dynamiccl.sweep import ATTEMPTS, Failure, SweepJob, SweepOutcome, Task, enter_setting, execute, ray_missing, \
    say_failed, submitter_setting


HEAD_ANSWER_S = 5.0  # how long the head of a cluster may take to accept a connection


def check_head_answers(address: str) -> None:
    """Fail in seconds where nothing listens at ``address`` (HOST:PORT or ray://HOST:PORT; "auto":
    $RAY_ADDRESS when set): ``ray.init`` retries a head that is not there for minutes.

    Raises:
        InputError: naming ``--ray``, when a connection to the head is refused or times out.
    """
    target = os.environ.get("RAY_ADDRESS", "") if address == "auto" else address
    host, _, port = target.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" without $RAY_ADDRESS, or a malformed address: ray.init says what is wrong at once
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=HEAD_ANSWER_S):
            pass
    except OSError as exc:
        raise InputError("--ray", None, f"no Ray cluster answers at {target!r} ({exc.strerror or exc}); start one "
                                        "with `ray start --head`, or give its address (HEAD:6379 or "
                                        "ray://HEAD:10001)") from None


def run_on_ray(job: SweepJob, tasks: Sequence[Task], address: str, max_in_flight: int | None, *,
               progress: bool = True, desc: str = "sweep") -> SweepOutcome:
    """Run ``tasks`` on the Ray cluster at ``address``; see :func:`dynamiccl.sweep.run_sweep`.

    Raises:
        InputError: Ray is not installed, or no cluster answers at ``address``.
    """
    try:
        import ray
    except ImportError:
        raise ray_missing() from None
    started_here = not ray.is_initialized()
    if started_here:
        check_head_answers(address)
        env_vars = submitter_setting()[1]
        try:
            ray.init(address=address, runtime_env={"env_vars": env_vars} if env_vars else None,
                     log_to_driver=False, logging_level="error", configure_logging=True)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise InputError("--ray", None, f"no Ray cluster at {address!r} ({exc}); start one with `ray start "
                                            "--head`, or give its address (HEAD:6379 or ray://HEAD:10001)") from None
    try:
        return _run(ray, job, tasks, address, max_in_flight, progress, desc)
    finally:
        if started_here:
            ray.shutdown()


def _run(ray, job: SweepJob, tasks: Sequence[Task], address: str, max_in_flight: int | None, progress: bool,
         desc: str) -> SweepOutcome:
    cpus = int(ray.cluster_resources().get("CPU", 1))
    limit = max(1, min(max_in_flight or cpus, len(tasks)))
    remote = ray.remote(num_cpus=1, max_retries=0)(_ray_task)
    token, job_ref, setting = uuid.uuid4().hex, ray.put(job), submitter_setting()
    outcome = SweepOutcome({}, [], f"ray {address}", min(limit, cpus))
    attempts = {task.key: 0 for task in tasks}
    waiting = list(reversed(tasks))  # popped from the end: the caller's order
    running: dict[Any, Task] = {}
    bar = tqdm(total=len(tasks), disable=not progress, unit="task", desc=f"{desc} (Ray)")
    try:
        while waiting or running:
            while waiting and len(running) < limit:
                task = waiting.pop()
                attempts[task.key] += 1
                running[remote.remote(token, job_ref, setting, task.args)] = task
            done, _ = ray.wait(list(running), num_returns=1)
            for ref in done:
                task = running.pop(ref)
                try:
                    ok, value = ray.get(ref)
                except ray.exceptions.RayError as exc:  # the worker died, or Ray lost the task
                    ok, value = False, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
                if ok:
                    outcome.results[task.key] = value
                    bar.set_postfix_str(task.label, refresh=False)
                    bar.update()
                    continue
                say_failed(bar, task.label, attempts[task.key], value, " on Ray")
                if attempts[task.key] < ATTEMPTS:
                    waiting.append(task)
                else:
                    outcome.failures.append(Failure(task.key, task.label, value, attempts[task.key]))
                    bar.update()
    except BaseException:
        for ref in running:
            ray.cancel(ref, force=True)
        raise
    finally:
        bar.close()
    return outcome


def _ray_task(token: str, job: SweepJob, setting: tuple[str, dict[str, str]], args: Any) -> tuple[bool, Any]:
    """One task in a Ray worker, in the submitter's setting (:func:`dynamiccl.sweep.enter_setting`)."""
    enter_setting(*setting)
    return execute(token, job, args)
