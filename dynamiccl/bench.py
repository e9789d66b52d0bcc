"""``dynamiccl bench``: the benchmark suite, whose figures are recorded under ``experiments/bench``.

Speed and quality targets live here, never in unit tests. Each benchmark runs a real command in a
fresh process (``dynamiccl ...`` or ``python -m MODULE ...``: start-up and imports included, what a
user waits for), ``repeat`` times, and judges either the median wall time (``target_s``) or a
figure the command reports as JSON (on stdout, or in ``json_file``): ``rate_key`` (dotted path; a
``*`` part takes the worst, i.e. largest, of every entry there) must reach ``min_rate`` or stay
under ``max_value``. With ``--record DIR`` each result is written
as ``DIR/<name>.json`` and ``DIR/README.md`` gets one table of every recorded result in ``DIR``,
each with the command that reproduces it.

Commands run in the repository root (:data:`REPOSITORY`), whatever the caller's working directory:
their relative paths (``traces/...``, ``experiments/...``) name files of the repository, and
:meth:`Benchmark.repository_files` lists them so that a missing one is reported before anything
runs. A command that fails is reported as FAILED with the end of its error output, and the other
benchmarks still run.
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
from dynamiccl.errors import InputError

# The repository the package sits in; benchmark commands run here (see the module docstring).
REPOSITORY = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Benchmark:
    name: str
    description: str
    args: tuple[str, ...]  # arguments; "{tmp}" is replaced by a scratch directory
    target_s: float = 0.0
    # Figure benchmarks: the command reports JSON; ``rate_key`` (a dotted path) in it must reach
    # ``min_rate``, or stay at or under ``max_value`` when that is set.
    rate_key: str = ""
    min_rate: float = 0.0
    max_value: float | None = None
    module: str = "dynamiccl"  # run as ``python -m module args...``
    json_file: str = ""  # where the command writes its JSON ("{tmp}/..."); default: stdout
    unit: str = ""

    @property
    def command(self) -> str:
        head = "dynamiccl" if self.module == "dynamiccl" else f"python -m {self.module}"
        return head + " " + shlex.join(a.replace("{tmp}", "OUT") for a in self.args)

    def repository_files(self) -> list[str]:
        """The arguments that name files of the repository (relative paths with a directory part;
        ``{tmp}`` ones are the benchmark's own outputs)."""
        return [a for a in self.args if "/" in a and "{tmp}" not in a and not a.startswith("-")]

    def judge(self, value: float) -> bool:
        return value <= self.max_value if self.max_value is not None else value >= self.min_rate

    @property
    def target_text(self) -> str:
        if not self.rate_key:
            return f"<= {self.target_s:g} s"
        return f"<= {self.max_value:g}" if self.max_value is not None else f">= {self.min_rate:g}"


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
        ("replay", "traces/llama3.1-405b_tp8-pp16-dp64.parquet", "--env", "h100-ib-1024x8", "--random-steps",
         "200000", "--json"),
        rate_key="env_steps_per_s", min_rate=20000),
    Benchmark(
        "train-n-envs",
        "training throughput (timesteps/s) with [train] n_envs = 2 (SubprocVecEnv workers) over n_envs = 1, as a "
        "ratio measured in one run, on an env-bound config (Mixtral EP over IB with the communicator knobs, fresh "
        "dynamics states, a small network, one epoch); target >= 1.6 on 2 cores (issue 18)",
        ("--config", "experiments/train-throughput.toml", "--timesteps", "8192"),
        module="dynamiccl.tuning.throughput", rate_key="ratio", min_rate=1.6),
    Benchmark(
        "replay-405b",
        "replay one Llama-3.1 405B step (8192 GPUs, 17,080 tunable calls) with NCCL's choices: "
        "replays per second, target >= 0.5 (at most 2 s)",
        ("replay", "traces/llama3.1-405b_tp8-pp16-dp64.parquet", "--env", "h100-ib-1024x8", "--json"),
        rate_key="replays_per_s", min_rate=0.5),
    Benchmark(
        "plugin-getcollinfo",
        "tuner plugin getCollInfo with a 1,000-rule table (ABI v6, net of NCCL's cost-table copy): calls per "
        "second, target >= 1e7 (median <= 100 ns); also table load time and binary size",
        ("plugin", "bench", "--json"),
        rate_key="getcollinfo_calls_per_s", min_rate=1e7),
    Benchmark(
        "plugin-getcollinfo-chunk",
        "tuner plugin getCollInfo + getChunkSize per call with a 1,000-rule table with chunk sizes (ABI v6, net of "
        "NCCL's cost-table copy and arg-min): calls per second, target >= 1e7 (median <= 100 ns; issue 17)",
        ("plugin", "bench", "--json"),
        rate_key="getcollinfo_chunk_calls_per_s", min_rate=1e7),
    Benchmark(
        "profiler-overhead",
        "capture overhead on the reference job (4 gloo processes, TP2 DP2): median over 3 run pairs of "
        "step time with / without capture - 1; target <= 2 %",
        ("--runs", "3", "-o", "{tmp}/overhead.json"), module="dynamiccl.profiler.overhead",
        json_file="{tmp}/overhead.json", rate_key="overhead_median_of_pairs", max_value=0.02),
    Benchmark(
        "calibration-error",
        "world simulator against the default calibration set (measurements.csv + more-systems.csv), leave "
        "one table out: the worst hardware class's median |error| of predicted time on messages >= 64 MiB; "
        "target <= 10 % in every class (issue 14)",
        ("validate", "--leave-one-out", "--plot", "{tmp}/v.png", "--json", "{tmp}/v.json"),
        json_file="{tmp}/v.json", rate_key="classes.*.world.large", max_value=0.10),
    Benchmark(
        "calibration-error-small",
        "as calibration-error, on messages <= 64 KiB; target <= 20 % in every class (issue 14)",
        ("validate", "--leave-one-out", "--plot", "{tmp}/v.png", "--json", "{tmp}/v.json"),
        json_file="{tmp}/v.json", rate_key="classes.*.world.small", max_value=0.20),
    Benchmark(
        "search-8b",
        "search the best decision table for one Llama-3 8B step (TuningEnv's built-in case: TP2 x DP8 on two "
        "H100 nodes beside memory-bound compute, 4 dynamics states, whole-step replay per candidate); "
        "target <= 300 s on 2 cores (issue 14)",
        ("search", "-o", "{tmp}/table.json", "--json", "{tmp}/search.json"), target_s=300.0),
    Benchmark(
        "heldout-gain-share",
        "the default experiment's trained policy on its held-out split (world simulator): on every case where "
        "the searched table gains >= 2% over NCCL's default, the smallest share of that gain the policy "
        "reaches; target >= 0.90 (issue 14)",
        ("evaluate", "--config", "experiments/default.toml", "--policy", "experiments/default/run/policy.zip",
         "--agents", "nccl-default,policy", "-o", "{tmp}/results.parquet", "--json", "{tmp}/summary.json"),
        json_file="{tmp}/summary.json", rate_key="summary.policy.min_gain_share_on_headroom", min_rate=0.90),
    Benchmark(
        "heldout-worst",
        "as heldout-gain-share: the policy's worst held-out episode, step-time speedup over NCCL's default; "
        "target >= 0.995 (never more than 0.5% slower, issue 14)",
        ("evaluate", "--config", "experiments/default.toml", "--policy", "experiments/default/run/policy.zip",
         "--agents", "nccl-default,policy", "-o", "{tmp}/results.parquet", "--json", "{tmp}/summary.json"),
        json_file="{tmp}/summary.json", rate_key="summary.policy.min_speedup", min_rate=0.995),
    Benchmark(
        "evaluate-workers",
        "`dynamiccl evaluate` of the default experiment's held-out split (every agent, the shipped policy) on 2 "
        "worker processes vs 1, each a fresh process, in one run: wall-time ratio, target >= 1.7 on 2 cores "
        "(issue 18); the two results must be the same row for row",
        ("--config", "experiments/default.toml", "--policy", "experiments/default/run/policy.zip", "--workers", "2"),
        module="dynamiccl.tuning.evaluate_scaling", rate_key="ratio", min_rate=1.7, unit="x"),
)}


def _figure(data: dict, dotted: str) -> float:
    """The number at ``dotted`` in ``data``; a ``*`` part is the largest over every entry there that
    has one (None or NaN: no figure, e.g. a class without rows in that size range).

    Raises:
        KeyError: a part of the path is missing. ValueError: no entry under a ``*`` has a figure.
    """
    head, _, rest = dotted.partition(".")
    if head == "*":
        values = [_figure(entry, rest) for entry in data.values()]
        values = [v for v in values if v == v]
        if not values:
            raise ValueError(f"no figure at any '*.{rest}'")
        return max(values)
    value = data[head]
    if rest:
        return _figure(value, rest)
    return float("nan") if value is None else float(value)


def _machine() -> dict:
    return {"python": platform.python_version(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}


class BenchmarkFailed(RuntimeError):
    """A benchmark's command exited with an error; the message ends with its error output."""


def run_benchmark(bench: Benchmark, repeat: int) -> dict:
    """Run one benchmark ``repeat`` times in :data:`REPOSITORY`; returns its result record: the
    median wall time and, for a figure benchmark, the median of the figure over the runs (every
    run's value is kept).

    Raises:
        BenchmarkFailed: the command exited with an error status.
    """
    times, figures = [], []
    with tempfile.TemporaryDirectory() as tmp:
        args = [a.replace("{tmp}", tmp) for a in bench.args]
        for _ in tqdm(range(repeat), desc=bench.name, unit="run", leave=False):
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", bench.module, *args], capture_output=True, text=True,
                                  cwd=REPOSITORY)
            times.append(time.perf_counter() - started)
            # A figure benchmark may exit 1 when its own target is missed; the verdict is ours.
            if done.returncode not in ((0, 1) if bench.rate_key else (0,)):
                raise BenchmarkFailed(f"`{bench.command}` exited with status {done.returncode}:\n"
                                      f"{done.stderr.strip()[-2000:]}")
            output = done.stdout.strip()
            if bench.json_file:
                output = Path(bench.json_file.replace("{tmp}", tmp)).read_text(encoding="utf-8").strip()
            if bench.rate_key:
                figures.append(_figure(json.loads(output), bench.rate_key))
    median = statistics.median(times)
    if bench.rate_key:
        rate = statistics.median(figures)
        return {
            "benchmark": bench.name, "description": bench.description,
            "command": bench.command, "runs": repeat, bench.rate_key: rate, "value": rate, "values": figures,
            "target": bench.target_text, "min_rate": bench.min_rate, "max_value": bench.max_value,
            "within_target": bench.judge(rate), "last_output": output[-20000:],
            "wall_s": {"median": median, "all": times}, "dynamiccl": __version__, "machine": _machine(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "reproduce": f"dynamiccl bench {bench.name} --repeat {repeat}",
        }
    return {
        "benchmark": bench.name, "description": bench.description,
        "command": bench.command,
        "runs": repeat, "wall_s": {"median": median, "min": min(times), "max": max(times), "all": times},
        "value": median, "target": bench.target_text,
        "target_s": bench.target_s, "within_target": median <= bench.target_s,
        "last_output": output, "dynamiccl": __version__, "machine": _machine(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "reproduce": f"dynamiccl bench {bench.name} --repeat {repeat}",
    }


def _format_value(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.4g}"


def _row(result: dict) -> tuple[str, ...]:
    """(benchmark, figure, value, target, median wall s, verdict) of a recorded result."""
    bench = BENCHMARKS[result["benchmark"]]
    figure = bench.rate_key or "wall time (s)"
    value = result[bench.rate_key] if bench.rate_key else result["wall_s"]["median"]
    return (result["benchmark"], figure, _format_value(value), bench.target_text,
            f"{result['wall_s']['median']:.1f}", "ok" if result["within_target"] else "MISSED")


def write_summary(record_dir: Path) -> Path:
    """``record_dir/README.md``: one table of every ``*.json`` result there, with its command."""
    results = []
    for path in sorted(record_dir.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and data.get("benchmark") in BENCHMARKS and "within_target" in data:
            results.append(data)
    lines = ["# Benchmarks", "",
             "Written by `dynamiccl bench --record` from the JSON files beside it (one per benchmark, with "
             "the machine, the date and every run). Rerun one with `dynamiccl bench NAME --record "
             f"{record_dir}`.", "",
             "| benchmark | figure | value | target | wall s (median) | verdict | recorded | reproduce |",
             "|---|---|---:|---|---:|---|---|---|"]
    for result in results:
        row = _row(result)
        lines.append(f"| {row[0]} | {row[1]} | {row[2]} | {row[3]} | {row[4]} | {row[5]} | "
                     f"{result.get('date', '')[:10]} | `{result.get('command', '')}` |")
    path = record_dir / "README.md"
    atomic.write_text(path, "\n".join(lines) + "\n")
    return path


def run_benchmarks(names: list[str], repeat: int = 3, record_dir: Path | None = None) -> int:
    """Run benchmarks by name, print a table, optionally record JSON; exit status 1 if any misses."""
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise InputError("bench", None, f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    for name in names:
        for relative in BENCHMARKS[name].repository_files():
            if not (REPOSITORY / relative).exists():
                raise InputError(REPOSITORY / relative, None, f"missing: benchmark {name} needs this file of the "
                                 "dynamiccl repository (benchmarks run from a clone, not an installed package)")
    status = 0
    print(f"{'benchmark':<24} {'figure':<32} {'value':>12} {'target':>12} {'wall s':>8}  verdict")
    for name in names:
        try:
            result = run_benchmark(BENCHMARKS[name], repeat)
        except BenchmarkFailed as failure:
            status = 1
            print(f"{name:<24} {'':<32} {'':>12} {BENCHMARKS[name].target_text:>12} {'':>8}  FAILED", flush=True)
            print("  " + str(failure).replace("\n", "\n  "), flush=True)
            continue
        status |= 0 if result["within_target"] else 1
        row = _row(result)
        print(f"{row[0]:<24} {row[1]:<32} {row[2]:>12} {row[3]:>12} {row[4]:>8}  {row[5]}", flush=True)
        if record_dir is not None:
            path = record_dir / f"{name}.json"
            atomic.write_text(path, json.dumps(result, indent=2) + "\n")
            print(f"  recorded {path}")
    if record_dir is not None:
        print(f"  summary {write_summary(record_dir)}")
    return status
