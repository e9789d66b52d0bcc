"""``dynamiccl measure``: time the trace's collectives on the user's cluster under every configuration
the tuner plugin can force (:mod:`dynamiccl.measure`)."""

from __future__ import annotations

import argparse

from dynamiccl.cli.common import wrapped_command


def add(sub) -> None:
    """Add ``measure`` to the sub-command parsers ``sub``."""
    p = sub.add_parser(
        "measure", help="time the trace's collectives on your cluster under NCCL's default and every configuration "
                        "the tuner can force; writes calibration CSV rows",
        description="Run LAUNCHER (torchrun --nproc-per-node N, srun ... python) with `-m dynamiccl.measure.worker` "
                    "appended: every communicator shape and size band the trace issues is timed under NCCL's default "
                    "and each (algorithm, protocol, channels), forced per call through the instrumented tuner plugin's "
                    "override in the same processes. Writes the calibration CSV (read by `--model measured "
                    "--measurements CSV` and `dynamiccl calibrate --measurements CSV --env SPEC`), an nccl-tests-style "
                    "table, and with --json everything, including which configurations NCCL "
                    "applied. The override is always cleared when a rank ends.")
    p.add_argument("--trace", required=True, help="trace of the job's step (.parquet) whose collectives are timed")
    p.add_argument("-o", "--output", required=True, metavar="CSV", help="calibration CSV to write")
    p.add_argument("--budget", default="10m", help="wall-clock budget for the whole command: 90s, 10m, 1h (default 10m)")
    p.add_argument("--with-gemm", action="store_true",
                   help="also time the configurations left with a GEMM beside the collective (a CUDA stream on "
                        "GPU, a thread on CPU): the collective's time and the GEMM's slowdown")
    p.add_argument("--system", default="", help="text appended to each row's system column (e.g. the fabric)")
    p.add_argument("--json", metavar="OUT", help="also write the whole report (plan, probes, applied flags) as JSON")
    p.add_argument("--channels", default=None,
                   help="forced channel counts, comma-separated; 0 or nccl = NCCL's own (default 0,1,2,4,8,16,32,64)")
    p.add_argument("--chunks", action="store_true",
                   help="also time each collective under NCCL's own choice with each chunk size 64K..1M set through "
                        "the plugin's getChunkSize (tuner ABI v6: NCCL >= 2.30.3; refused on gloo and older NCCL; "
                        "sizes dynamiccl.knobs.safety refuses on the NCCL and network found are never timed)")
    p.add_argument("--iters", type=int, default=20, help="timed repetitions per configuration (default 20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls before a configuration's first repetitions "
                                                         "(default 5)")
    p.add_argument("--max-bytes", default=None, help="skip size bands above this size (1G, 256M, ...)")
    p.add_argument("--backend", choices=("auto", "nccl", "gloo"), default="auto",
                   help="auto: NCCL when every rank has a GPU, else gloo on CPU (NCCL's knobs then do nothing)")
    p.add_argument("--plugin", help="prebuilt libnccl-tuner-dynamiccl.so with its -instrumented.so beside it "
                                    "(default: build or find the cached one)")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- LAUNCHER ARGS... (without a script)")
    p.set_defaults(func=cmd_measure)


def cmd_measure(args) -> int:
    from dynamiccl.costmodel.table import parse_size
    from dynamiccl.measure.plan import DEFAULT_CHANNELS, parse_budget, parse_channels
    from dynamiccl.measure.run import format_rows, measure

    channels = parse_channels(args.channels) if args.channels is not None else DEFAULT_CHANNELS
    report = measure(args.trace, args.output, wrapped_command(args.cmd), budget_s=parse_budget(args.budget),
                     with_gemm=args.with_gemm, system=args.system, json_out=args.json, channels=channels,
                     iters=args.iters, warmup=args.warmup,
                     max_bytes=parse_size(args.max_bytes, "--max-bytes") if args.max_bytes else None,
                     plugin=args.plugin, backend=args.backend, chunks=args.chunks)
    from dynamiccl.measure.plan import Plan

    print(format_rows(Plan.from_json(report.report["plan"]), report.rows))
    return 0
