"""Capture overhead: the reference job's median step time with and without ``capture``.

    python -m dynamiccl.profiler.overhead --runs 5 -o experiments/profiler/overhead.json
    python -m dynamiccl.profiler.overhead --runs 5 --capture-mode dispatch -o ...

Runs come in pairs with the same seed and arguments, one without capture and one with
``--profile`` (alternating which goes first, so slow drift on a shared machine hits both sides
alike). Each run is a fresh ``torchrun`` of :mod:`dynamiccl.profiler.reference_job`; its step time is
the median over the steps after the warm-up (step 1 includes lazy initialisation and DDP's
single-bucket first iteration, step 2 DDP's bucket rebuild). The overhead is reported as the median
over pairs of (with / without - 1) and as the ratio of the medians; the target is at most 2 %.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from dynamiccl import atomic

TARGET = 0.02


def default_capture_mode() -> str:
    from dynamiccl.profiler.capture import capture

    return inspect.signature(capture).parameters["mode"].default


def run_job(job_args: list[str], steps: int, nproc: int, profile: bool, workdir: Path,
            capture_mode: str | None = None) -> list[float]:
    """One torchrun of the reference job; returns its per-step wall times (seconds)."""
    result = workdir / "result.json"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--standalone",
           "-m", "dynamiccl.profiler.reference_job", *job_args, "--steps", str(steps), "--quiet",
           "--json-out", str(result)]
    if profile:
        cmd += ["--profile", str(workdir / "capture")]
        if capture_mode:
            cmd += ["--capture-mode", capture_mode]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir,
                          env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    if done.returncode != 0:
        raise RuntimeError(f"reference job failed ({shlex.join(cmd)}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return json.loads(result.read_text())["step_seconds"]


def measure(job_args: list[str], runs: int, steps: int, warmup: int, nproc: int, capture_mode: str | None = None,
            log=print) -> dict:
    pairs = []
    with tempfile.TemporaryDirectory(prefix="dynamiccl-overhead-") as tmp:
        workdir = Path(tmp)
        for i in range(runs):
            order = (False, True) if i % 2 == 0 else (True, False)
            pair = {}
            for profile in order:
                times = run_job(job_args, steps, nproc, profile, workdir, capture_mode)[warmup:]
                pair["on" if profile else "off"] = {"median_s": statistics.median(times), "step_s": times}
            pair["first"] = "on" if order[0] else "off"
            pair["overhead"] = pair["on"]["median_s"] / pair["off"]["median_s"] - 1
            pairs.append(pair)
            log(f"pair {i + 1}/{runs}: without {pair['off']['median_s'] * 1e3:8.2f} ms   with capture "
                f"{pair['on']['median_s'] * 1e3:8.2f} ms   overhead {pair['overhead'] * 100:+6.2f} %")
    off = statistics.median(p["off"]["median_s"] for p in pairs)
    on = statistics.median(p["on"]["median_s"] for p in pairs)
    overhead = statistics.median(p["overhead"] for p in pairs)
    return {
        "benchmark": "capture overhead on dynamiccl.profiler.reference_job",
        "capture_mode": capture_mode or default_capture_mode(),
        "job_args": job_args, "nproc": nproc, "steps_per_run": steps, "warmup_steps_dropped": warmup,
        "pairs": runs,
        "median_step_ms_without": off * 1e3, "median_step_ms_with": on * 1e3,
        "overhead_median_of_pairs": overhead, "overhead_ratio_of_medians": on / off - 1,
        "overhead_min_pair": min(p["overhead"] for p in pairs),
        "overhead_max_pair": max(p["overhead"] for p in pairs),
        "target": TARGET, "within_target": overhead <= TARGET,
        "machine": {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "backend": "gloo (CPU)"},
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "detail": pairs,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dynamiccl.profiler.overhead",
                                description="Median step time of the reference job with and without capture "
                                            "(paired runs, same seed).")
    p.add_argument("--runs", type=int, default=5, help="pairs of runs (default 5)")
    p.add_argument("--steps", type=int, default=12, help="training steps per run (default 12)")
    p.add_argument("--warmup", type=int, default=2, help="first steps not timed (default 2)")
    p.add_argument("--nproc", type=int, default=4, help="processes (default 4)")
    p.add_argument("--job-args", default="--tp 2 --dp 2",
                   help="reference-job arguments (default '--tp 2 --dp 2')")
    p.add_argument("--capture-mode", choices=["api", "dispatch"],
                   help="capture's interception point (default: capture's default)")
    p.add_argument("-o", "--output", help="write the figures as JSON here")
    args = p.parse_args(argv)
    if args.runs < 1 or args.steps <= args.warmup:
        p.error("need --runs >= 1 and --steps > --warmup")
    job_args = shlex.split(args.job_args)
    print(f"# capture overhead ({args.capture_mode or default_capture_mode()} mode): reference job "
          f"{args.job_args!r}, {args.nproc} gloo processes, {args.runs} pairs "
          f"of {args.steps} steps ({args.warmup} warm-up steps not timed)", flush=True)
    result = measure(job_args, args.runs, args.steps, args.warmup, args.nproc, args.capture_mode,
                     log=lambda line: print(line, flush=True))
    print(f"median step time: without capture {result['median_step_ms_without']:.2f} ms, with capture "
          f"{result['median_step_ms_with']:.2f} ms")
    print(f"overhead: {result['overhead_median_of_pairs'] * 100:+.2f} % (median of pairs; ratio of medians "
          f"{result['overhead_ratio_of_medians'] * 100:+.2f} %, pairs from {result['overhead_min_pair'] * 100:+.2f} "
          f"to {result['overhead_max_pair'] * 100:+.2f} %); target <= {TARGET * 100:.0f} %: "
          f"{'met' if result['within_target'] else 'NOT met'}")
    if args.output:
        atomic.write_text(args.output, json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
