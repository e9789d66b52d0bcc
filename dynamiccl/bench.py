"""``dynamiccl bench``: timed benchmarks whose figures are recorded under ``experiments/bench``.

Speed targets live here, never in unit tests. Each benchmark runs a real ``dynamiccl`` command in a
fresh process (start-up and imports included: what a user waits for), ``repeat`` times, and
reports the median wall time against its target.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from dynamiccl import __version__, atomic


@dataclass(frozen=True)
class Benchmark:
    name: str
    description: str
    args: tuple[str, ...]  # dynamiccl arguments; "{tmp}" is replaced by a scratch directory
    target_s: float = 0.0
    # Rate benchmarks: the command prints JSON; ``rate_key`` in it must reach ``min_rate``.
    rate_key: str = ""
    min_rate: float = 0.0


BENCHMARKS = {b.name: b for b in (
    Benchmark(
        "generate-405b",
        "generate Llama-3.1 405B on 8192 GPUs (TP8 PP16 DP64, Llama 3's 7-layer first/last stages)",
        ("generate", "--model", "llama3.1-405b", "--tp", "8", "--pp", "16", "--dp", "64",
         "--first-stage-layers", "7", "--last-stage-layers", "7", "-o", "{tmp}/llama3.1-405b.parquet"),
        target_s=10.0),
    Benchmark(
        "costmodel-evals",
        "world-simulator evaluations per second on one core: 1M random (collective, forced config, "
        "conditions) rows on 4 nodes of 8 H100",
        ("simulate", "--env", "h100-ib-4x8", "--coll", "allreduce", "--throughput", "1000000"),
        rate_key="world_evals_per_s", min_rate=5e6),
    Benchmark(
        "costmodel-evals-mixed",
        "as costmodel-evals, with a third of the rows left to NCCL's choice (the baseline's path)",
        ("simulate", "--env", "h100-ib-4x8", "--coll", "allreduce", "--throughput", "1000000", "--mixed"),
        rate_key="world_evals_per_s", min_rate=1e6),
    Benchmark(
        "env-steps",
        "TuningEnv steps per second with random valid actions (one core), on the Llama-3.1 405B step",
        ("replay", "traces/llama3.1-405b_tp8-pp16-dp64.parquet", "--env", "h100-ib-16x8", "--random-steps",
         "200000", "--json"),
        rate_key="env_steps_per_s", min_rate=20000),
    Benchmark(
        "replay-405b",
        "replay one Llama-3.1 405B step (8192 GPUs, 17,080 tunable calls) with NCCL's choices: "
        "replays per second, target >= 0.5 (at most 2 s)",
        ("replay", "traces/llama3.1-405b_tp8-pp16-dp64.parquet", "--env", "h100-ib-16x8", "--json"),
        rate_key="replays_per_s", min_rate=0.5),
    Benchmark(
        "plugin-getcollinfo",
        "tuner plugin getCollInfo with a 1,000-rule table (ABI v6, net of NCCL's cost-table copy): calls per "
        "second, target >= 1e7 (median <= 100 ns); also table load time and binary size",
        ("plugin", "bench", "--json"),
        rate_key="getcollinfo_calls_per_s", min_rate=1e7),
)}


def _machine() -> dict:
    return {"python": platform.python_version(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}


def run_benchmark(bench: Benchmark, repeat: int) -> dict:
    """Run one benchmark ``repeat`` times; returns its result record (seconds, verdict)."""
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        args = [a.replace("{tmp}", tmp) for a in bench.args]
        for _ in tqdm(range(repeat), desc=bench.name, unit="run", leave=False):
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "dynamiccl", *args], capture_output=True, text=True)
            times.append(time.perf_counter() - started)
            if done.returncode != 0:
                raise RuntimeError(f"{bench.name}: `dynamiccl {shlex.join(args)}` failed:\n{done.stderr}")
        output = done.stdout.strip()
    median = statistics.median(times)
    if bench.rate_key:
        rate = json.loads(output)[bench.rate_key]
        return {
            "benchmark": bench.name, "description": bench.description,
            "command": "dynamiccl " + shlex.join(bench.args), "runs": repeat, bench.rate_key: rate,
            "min_rate": bench.min_rate, "within_target": rate >= bench.min_rate, "last_output": output,
            "wall_s": {"median": median, "all": times}, "dynamiccl": __version__, "machine": _machine(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "reproduce": f"dynamiccl bench {bench.name} --repeat {repeat}",
        }
    return {
        "benchmark": bench.name, "description": bench.description,
        "command": "dynamiccl " + shlex.join(a.replace("{tmp}", "OUT") for a in bench.args),
        "runs": repeat, "wall_s": {"median": median, "min": min(times), "max": max(times), "all": times},
        "target_s": bench.target_s, "within_target": median <= bench.target_s,
        "last_output": output, "dynamiccl": __version__, "machine": _machine(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "reproduce": f"dynamiccl bench {bench.name} --repeat {repeat}",
    }


def run_benchmarks(names: list[str], repeat: int = 3, record_dir: Path | None = None) -> int:
    """Run benchmarks by name, print a table, optionally record JSON; exit status 1 if any misses."""
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        from dynamiccl.errors import InputError
        raise InputError("bench", None, f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    status = 0
    print(f"{'benchmark':<20} {'runs':>4} {'median s':>9} {'min s':>7} {'max s':>7} {'target s':>9}  verdict")
    for name in names:
        result = run_benchmark(BENCHMARKS[name], repeat)
        wall = result["wall_s"]
        verdict = "ok" if result["within_target"] else "MISSED"
        status |= 0 if result["within_target"] else 1
        if BENCHMARKS[name].rate_key:
            rate = result[BENCHMARKS[name].rate_key]
            print(f"{name:<20} {repeat:>4} {BENCHMARKS[name].rate_key} {rate:,.0f} (target >= "
                  f"{BENCHMARKS[name].min_rate:,.0f})  {verdict}")
        else:
            print(f"{name:<20} {repeat:>4} {wall['median']:>9.2f} {wall['min']:>7.2f} {wall['max']:>7.2f} "
                  f"{result['target_s']:>9.1f}  {verdict}")
        if record_dir is not None:
            path = record_dir / f"{name}.json"
            atomic.write_text(path, json.dumps(result, indent=2) + "\n")
            print(f"  recorded {path}")
    return status
