"""Step timer: each rank of any PyTorch job records when its training steps end, with no code change.

``dynamiccl verify`` sets ``DYNAMICCL_STEP_TIMES_DIR`` (and puts ``dynamiccl/profiler/autostart`` on
``PYTHONPATH``, as ``dynamiccl profile`` does); the autostart ``sitecustomize`` then calls
:func:`start_from_environment` in every Python process of the job. A step ends at every optimizer
step (PyTorch's global optimizer step post-hook), as in :mod:`dynamiccl.profiler.auto`; step 1 runs
from the timer's start (interpreter start-up) to the first optimizer step, so it holds the job's
setup: ``verify`` drops warm-up steps.

What it records at each boundary, without adding a synchronisation to the job:

- on a job that uses CUDA (``torch.cuda.is_initialized()`` at the boundary): a CUDA event recorded on
  the current stream; the events are resolved (``elapsed_time``, milliseconds) once, at exit, so the
  steps are timed as the GPU ran them;
- always: ``time.perf_counter()`` (the step times on CPU, and the fallback when events fail).

At exit the process writes ``$DYNAMICCL_STEP_TIMES_DIR/rank<RANK>.json`` atomically (a process with
no optimizer step, like torchrun's agent, writes nothing). It fails open: if anything here breaks,
the job runs untimed and says so once on stderr.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import time

ENV_DIR = "DYNAMICCL_STEP_TIMES_DIR"
ENV_ARM = "DYNAMICCL_VERIFY_ARM"  # which arm of `dynamiccl verify` this run is (A1, B1, A2, ...)
FORMAT = "dynamiccl-step-times/1"
_active = None


class StepTimer:
    """The boundaries of one process's training steps; ``write`` puts them in ``out_dir``."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.start_s = time.perf_counter()
        self.boundaries_s: list[float] = []   # perf_counter at each optimizer step
        self.events: list = []                # CUDA events, one per boundary from the first CUDA one
        self.first_event_step = None          # index of the boundary the first event belongs to
        self.cuda_problem: str | None = None
        self.job: dict = {}                   # backend, NCCL version: read at the first boundary
        self.broken = False                   # a boundary failed: no record is written

    def boundary(self) -> None:
        """Called at every optimizer step: record the time (and a CUDA event on a CUDA job)."""
        self.boundaries_s.append(time.perf_counter())
        if len(self.boundaries_s) == 1:
            self.job = describe_job()
        if self.cuda_problem is None:
            try:
                import torch

                if torch.cuda.is_initialized():
                    event = torch.cuda.Event(enable_timing=True)
                    event.record()
                    if self.first_event_step is None:
                        self.first_event_step = len(self.boundaries_s) - 1
                    self.events.append(event)
            except Exception as exc:  # CPU timing stays
                self.cuda_problem = f"{type(exc).__name__}: {exc}"
                self.events, self.first_event_step = [], None

    def hook(self, optimizer, args, kwargs) -> None:
        """The optimizer step post-hook: :meth:`boundary`, failing open (said once, then off)."""
        if self.broken:
            return
        try:
            self.boundary()
        except Exception as exc:
            self.broken = True
            print(f"dynamiccl: step timing disabled ({type(exc).__name__}: {exc})", file=sys.stderr)

    def step_times_s(self) -> tuple[list[float], str]:
        """(the step times in seconds, the clock): CUDA events where every boundary after the first
        has one, else perf_counter. Step 1 is measured from the timer's start."""
        wall = [b - a for a, b in zip([self.start_s] + self.boundaries_s[:-1], self.boundaries_s)]
        if self.events and len(self.events) >= 2 and self.cuda_problem is None:
            try:
                self.events[-1].synchronize()
                gpu = [a.elapsed_time(b) / 1e3 for a, b in zip(self.events[:-1], self.events[1:])]
                # steps before the first event keep their CPU times (CUDA was not in use yet)
                return wall[:self.first_event_step + 1] + gpu, "cuda-event"
            except Exception as exc:
                self.cuda_problem = f"{type(exc).__name__}: {exc}"
        return wall, "perf_counter"

    def record(self) -> dict:
        """The JSON record of this process (see :func:`read_rank_file`)."""
        times, clock = self.step_times_s()
        return {"format": FORMAT, "rank": rank_of_process(),
                "world_size": int(os.environ.get("WORLD_SIZE", 1)), "arm": os.environ.get(ENV_ARM),
                "pid": os.getpid(), "clock": clock, "step_times_s": times,
                "cuda_problem": self.cuda_problem,
                "tuner_plugin": os.environ.get("NCCL_TUNER_PLUGIN"),
                "tuner_table": os.environ.get("DYNAMICCL_TUNER_TABLE"), **self.job}

    def write(self) -> None:
        """Write ``rank<RANK>.json`` atomically (nothing if no step ended in this process)."""
        if not self.boundaries_s or self.broken:
            return
        from dynamiccl.atomic import write_text

        rank = rank_of_process()
        write_text(os.path.join(self.out_dir, f"rank{rank}.json"), json.dumps(self.record()) + "\n")


def rank_of_process() -> int:
    """This process's rank: torchrun's ``RANK``, else Slurm's ``SLURM_PROCID``, else 0."""
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0)))


def describe_job() -> dict:
    """The job's communication backend and, when it uses NCCL, NCCL's version (as torch reports it)."""
    info: dict = {"backend": None, "nccl_version": None}
    try:
        import torch
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            info["backend"] = str(dist.get_backend())
        if info["backend"] and "nccl" in info["backend"]:
            raw = torch.cuda.nccl.version()
            info["nccl_version"] = ".".join(map(str, raw)) if isinstance(raw, tuple) else str(raw)
    except Exception as exc:  # a description, never a reason to stop the job
        info["describe_problem"] = f"{type(exc).__name__}: {exc}"
    return info


def start_from_environment():
    """Start timing if ``DYNAMICCL_STEP_TIMES_DIR`` is set; returns the StepTimer or None."""
    global _active
    out_dir = os.environ.get(ENV_DIR)
    if not out_dir or _active is not None:
        return _active
    try:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        timer = StepTimer(out_dir)
        register_optimizer_step_post_hook(timer.hook)
        atexit.register(_finish, timer)
        _active = timer
    except Exception as exc:  # fail open: the job must run even if timing cannot
        print(f"dynamiccl: step timing disabled ({type(exc).__name__}: {exc})", file=sys.stderr)
    return _active


def _finish(timer: StepTimer) -> None:
    try:
        timer.write()
    except Exception as exc:
        print(f"dynamiccl: could not write the step times ({type(exc).__name__}: {exc})", file=sys.stderr)
