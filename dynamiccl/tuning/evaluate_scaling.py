"""How much faster ``dynamiccl evaluate`` runs on N worker processes than in one: the figure of the
``evaluate-workers`` benchmark (``dynamiccl bench evaluate-workers``; issue 18's target >= 1.7x with
2 workers on a 2-core machine).

    python -m dynamiccl.tuning.evaluate_scaling --config experiments/default.toml \\
        --policy experiments/default/run/policy.zip [--workers 2] [-o FIGURES.json]

runs the same ``dynamiccl evaluate --config ... --policy ...`` twice, each in a fresh process (start-up,
imports, static-best's fit and the writing of the results included: what a user waits for), with
``--workers 1`` and then ``--workers N``, checks that the two results are the same row for row (and
metadata but for timing: the command and the searches' wall times), and prints JSON:
``{"workers": N, "wall_s_1": s, "wall_s_N": s, "ratio": wall_s_1 / wall_s_N, "identical": true,
"load_average_1min": [before, after], "cores": C, "command": ...}`` (the load average says whether
other work shared the cores). Exit status 3, with the first difference, when the results differ:
then the ratio compares two different computations and means nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from dynamiccl import atomic
from dynamiccl.sweep import available_cores
from dynamiccl.tuning.evaluate import Results, meta_without_timing


def results_difference(got: Results, expected: Results) -> str | None:
    """The first difference between two results (steps, calls, metadata but for timing), or None."""
    for name in ("steps", "calls"):
        try:
            pd.testing.assert_frame_equal(getattr(got, name), getattr(expected, name))
        except AssertionError as exc:
            return f"{name}: {str(exc).strip().splitlines()[0]}"
    meta, reference = meta_without_timing(got.meta), meta_without_timing(expected.meta)
    different = [key for key in sorted(set(meta) | set(reference)) if meta.get(key) != reference.get(key)]
    return f"metadata differs in {', '.join(different)}" if different else None


def timed_evaluation(args: list[str], workers: int, output: Path) -> float:
    """Wall time (s) of ``dynamiccl evaluate ARGS --workers WORKERS -o OUTPUT`` in a fresh process.

    Raises:
        RuntimeError: the command failed (with the end of its error output).
    """
    command = [sys.executable, "-m", "dynamiccl", "evaluate", *args, "--workers", str(workers), "-o", str(output)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall_s = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"`{shlex.join(command[2:])}` exited with status {done.returncode}:\n"
                           f"{done.stderr.strip()[-2000:]}")
    return wall_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dynamiccl.tuning.evaluate_scaling", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="experiment config: its held-out split is evaluated")
    parser.add_argument("--policy", help="the policy file given to `dynamiccl evaluate --policy`")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the parallel run (default 2)")
    parser.add_argument("-o", "--output", help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.workers < 2:
        parser.error("--workers must be at least 2 (it is compared with one process)")
    evaluate_args = ["--config", args.config] + (["--policy", args.policy] if args.policy else [])
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        outputs = {n: Path(tmp) / f"workers-{n}.parquet" for n in (1, args.workers)}
        try:
            wall_s = {n: timed_evaluation(evaluate_args, n, path) for n, path in outputs.items()}
        except RuntimeError as exc:
            print(f"evaluate_scaling: {exc}", file=sys.stderr)
            return 2
        difference = results_difference(Results.read(outputs[args.workers]), Results.read(outputs[1]))
    figures = {"workers": args.workers, "wall_s_1": wall_s[1], f"wall_s_{args.workers}": wall_s[args.workers],
               "ratio": wall_s[1] / wall_s[args.workers], "identical": difference is None,
               "load_average_1min": [load_before, os.getloadavg()[0]], "cores": available_cores(),
               "command": shlex.join(["dynamiccl", "evaluate", *evaluate_args, "--workers", "N", "-o", "OUT"])}
    text = json.dumps(figures, indent=1)
    print(text)
    if args.output:
        atomic.write_text(args.output, text + "\n")
    if difference is not None:
        print(f"evaluate_scaling: the results on {args.workers} workers differ from one process's: {difference}",
              file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
