"""``dynamiccl bench``: run the benchmark suite of :mod:`dynamiccl.bench` and record its figures."""

from __future__ import annotations

from pathlib import Path

from dynamiccl.cli.common import invocation
from dynamiccl.outputs import claim_output_dir


def add(sub) -> None:
    """Add ``bench`` to the sub-command parsers ``sub``."""
    p = sub.add_parser("bench", help="run benchmarks and record their figures under experiments/")
    p.add_argument("names", nargs="*", help="benchmarks to run (default: all); see --list")
    p.add_argument("--list", action="store_true", help="list the benchmarks")
    p.add_argument("--repeat", type=int, default=3, help="runs per benchmark (median reported)")
    p.add_argument("--record", metavar="DIR", help="write each result as DIR/<name>.json (e.g. experiments/bench)")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    from dynamiccl.bench import BENCHMARKS, run_benchmarks

    if args.list:
        for name, bench in BENCHMARKS.items():
            print(f"{name:<20} {bench.description}")
        return 0
    if args.record:
        claim_output_dir(args.record, invocation(args.argv))
    return run_benchmarks(args.names or list(BENCHMARKS), repeat=args.repeat,
                          record_dir=Path(args.record) if args.record else None)
