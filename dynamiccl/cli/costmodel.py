"""Cost-model commands: ``dynamiccl simulate`` (an nccl-tests-style sweep), ``calibrate`` (fit the
world simulator to measured tables) and ``validate`` (its error against them)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from dynamiccl import schema
from dynamiccl.cli.common import WORLD_PARAMS_DEST, add_measurements, add_world_params, cost_options
from dynamiccl.outputs import check_outputs

# `simulate`'s ranges, checked by argparse (one `usage` line and exit status 2 for a bad value). A
# throughput batch holds ~0.1 kB a row (its int64/float64 columns) and several times that while it is
# evaluated: 10 million rows take a few GB.
THROUGHPUT_MAX_ROWS = 10_000_000
THROUGHPUT_ROWS = schema.argument(schema.integer("--throughput", low=0, high=THROUGHPUT_MAX_ROWS))
STEP_FACTOR = schema.argument(schema.number("--stepfactor", low=1, low_inclusive=False, high=1e6))

LIVE_NPROCS = schema.argument(schema.integer("--nprocs", low=1, high=1024))


def add(sub) -> None:
    """Add ``simulate``, ``calibrate`` and ``validate`` to the sub-command parsers ``sub``."""
    from dynamiccl.costmodel.registry import COST_MODELS, DEFAULT_COST_MODEL, cost_models_help
    from dynamiccl.nccl import Algorithm, Protocol

    p = sub.add_parser("simulate", help="nccl-tests-style table of a collective under a cost model",
                       description="Cost one collective over a size sweep, nccl-tests style, under the world "
                                   "simulator (default), NCCL's own model, or live on this machine. Each size "
                                   "gets NCCL's choice unless --algo/--proto/--channels force one.")
    p.add_argument("--env", required=True, help="environment spec TOML (or the name of a shipped one, e.g. dgx-h100)")
    p.add_argument("--coll", required=True,
                   help="allreduce, allgather, reducescatter, broadcast, reduce, alltoall or sendrecv")
    p.add_argument("-b", "--minbytes", default="8", help="smallest size (nccl-tests suffixes: 8, 1K, 8M, 1G)")
    p.add_argument("-e", "--maxbytes", default="8G", help="largest size")
    p.add_argument("-f", "--stepfactor", type=STEP_FACTOR, default=2.0, help="multiply the size by this each step")
    p.add_argument("-i", "--stepbytes", default="0", help="add this many bytes each step instead of -f")
    p.add_argument("-d", "--dtype", default="float32", help="element type (count = size / its bytes)")
    p.add_argument("--nranks", type=int, default=0, help="communicator size (default: every GPU of the spec)")
    p.add_argument("--nnodes", type=int, default=0, help="nodes the communicator spans (default: all)")
    p.add_argument("--algo", help=f"force an algorithm ({', '.join(a.nccl_name.lower() for a in Algorithm)})")
    p.add_argument("--proto", help=f"force a protocol ({', '.join(p.nccl_name.lower() for p in Protocol)})")
    p.add_argument("--channels", type=int, default=0, help="force a channel count (1..64)")
    p.add_argument("--model", default=DEFAULT_COST_MODEL, choices=list(COST_MODELS), help=cost_models_help())
    p.add_argument("--overlap", type=float, default=None,
                   help="share of each call's time with compute beside it (default: the spec's dynamics)")
    p.add_argument("--congestion", type=float, default=0.0, help="share of NIC bandwidth taken by other traffic")
    p.add_argument("--nprocs", type=LIVE_NPROCS, default=4, help="processes for --model live")
    p.add_argument("--json", action="store_true", help="print a JSON list of rows instead of the table")
    p.add_argument("--throughput", type=THROUGHPUT_ROWS, default=0, metavar="ROWS",
                   help="benchmark instead: time ROWS random evaluations of the spec (JSON evaluations/s)")
    p.add_argument("--mixed", action="store_true", help="with --throughput: leave a third of rows to NCCL's choice")
    add_world_params(p)
    add_measurements(p)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("calibrate", help="fit the world simulator's parameters to measured nccl-tests tables",
                       description="Fit the world simulator's free parameters (per hardware class) to measured "
                                   "nccl-tests tables and write them as JSON (-o). Then check them with "
                                   "`dynamiccl validate --params FILE`, and use them with --params FILE in "
                                   "any command that costs with the world (or DYNAMICCL_WORLD_PARAMS=FILE).")
    p.add_argument("--measurements", action="append", default=None, metavar="CSV",
                   help="measurements CSV (the columns of dynamiccl.costmodel.measurements.COLUMNS); repeat for "
                        "several (default: the shipped calibration set, measurements.csv and more-systems.csv "
                        "of dynamiccl/data/calibration)")
    _add_spec_choice(p)
    # Required: the shipped world_params.json is package data, never written by a command (a user's fit
    # is used where it is asked for: `validate --params`, or DYNAMICCL_WORLD_PARAMS for every command).
    p.add_argument("-o", "--output", required=True,
                   help="parameters JSON to write (required; the shipped world_params.json is never overwritten)")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("validate", help="error of the world simulator against measured nccl-tests tables",
                       description="Map each measured table to an environment spec, cost it with the world "
                                   "simulator (NCCL's chosen or the table's forced algorithm) and print the error "
                                   "of predicted against measured time per table and overall; plot predicted vs "
                                   "measured busbw per table.")
    p.add_argument("--measurements", action="append", default=None, metavar="CSV",
                   help="measurements CSV; repeat for several (default: the calibration set, "
                        "measurements.csv and more-systems.csv of dynamiccl/data/calibration)")
    _add_spec_choice(p)
    add_world_params(p, note="not with --leave-one-out, whose fits start from the unfitted priors")
    p.add_argument("--plot", default="validation.png", help="PNG to write (default validation.png)")
    p.add_argument("--json", default=None, help="also write the error summary as JSON here")
    p.add_argument("--leave-one-out", action="store_true",
                   help="predict each table with parameters fitted on the other tables only, each fit "
                        "started from the unfitted priors as `dynamiccl calibrate` is (out-of-sample)")
    p.set_defaults(func=cmd_validate)


def cmd_simulate(args) -> int:
    from dynamiccl.costmodel.simulate import SweepRequest, run_sweep
    from dynamiccl.costmodel.table import format_table, parse_size, sweep_sizes
    from dynamiccl.envspec import resolve_env
    from dynamiccl.nccl import parse_algorithm, parse_protocol

    env = resolve_env(args.env)
    if args.throughput:
        from dynamiccl.costmodel.throughput import measure

        print(json.dumps(measure(env, args.throughput, mixed=args.mixed)))
        return 0
    sizes = sweep_sizes(parse_size(args.minbytes, "-b"), parse_size(args.maxbytes, "-e"), args.stepfactor,
                        parse_size(args.stepbytes, "-i"))
    req = SweepRequest(coll=args.coll, sizes_bytes=sizes, dtype=args.dtype, nranks=args.nranks, nnodes=args.nnodes,
                       algo=parse_algorithm(args.algo, "--algo") if args.algo else None,
                       proto=parse_protocol(args.proto, "--proto") if args.proto else None,
                       channels=args.channels, overlap=args.overlap, congestion=args.congestion,
                       model=args.model, live_nprocs=args.nprocs,
                       measurements=cost_options(args, args.model).measurements)
    if args.model == "live":
        print(f"simulate: live measurement of {len(sizes)} size(s) with {live_plan(args.nprocs, max(sizes), '--nprocs')}",
              file=sys.stderr)
    rows, header = run_sweep(env, req)
    if args.json:
        print(json.dumps([r.to_json() for r in rows], indent=1))
    else:
        print(format_table(rows, header))
    return 0


def live_plan(nprocs: int, largest_bytes: int, nprocs_flag: str | None = None) -> str:
    """What a live measurement will take, said before it starts: its worker processes against this
    machine's cores (more ranks than cores time-share them, and the barrier skew grows to ms, see
    dynamiccl.costmodel.live) and their memory (each rank holds a send and a receive buffer of the
    largest size). ``nprocs_flag``: the flag that sets the processes, named in the advice."""
    cores = os.cpu_count() or 1
    worker_bytes = 2 * int(largest_bytes)
    text = (f"{nprocs} worker processes on {cores} core(s), each holding ~{worker_bytes / 2**30:.2f} GiB of buffers "
            f"({nprocs * worker_bytes / 2**30:.2f} GiB in all)")
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not every system says
        available = None
    if available is not None and nprocs * worker_bytes > available:
        text += (f"; WARNING: more than the {available / 2**30:.2f} GiB of memory free now (the workers may be "
                 "killed for memory, or swap)")
    if nprocs > cores:
        text += (f"; WARNING: {nprocs} ranks on {cores} cores time-share them, so the times include "
                 "scheduling delays of up to ms and the run is slow"
                 + (f" (give {nprocs_flag} <= {cores})" if nprocs_flag else ""))
    return text


def _measurements(args) -> tuple[list[str], list]:
    """(paths, tables) of ``--measurements`` (or the default calibration set), without the tables timed
    with compute beside the collective (``dynamiccl measure --with-gemm``: the world is fitted to and
    judged on calls alone) or with a chunk size set (``--chunks``: the world keeps NCCL's chunk), which
    it says it left out. Raises InputError."""
    from dynamiccl.costmodel.measurements import (default_measurement_paths, load_measurement_files,
                                                  measured_beside_compute)
    from dynamiccl.errors import InputError

    paths = args.measurements or [str(p) for p in default_measurement_paths()]
    tables = load_measurement_files(paths)
    alone = [t for t in tables if not measured_beside_compute(t)]
    if len(alone) < len(tables):
        print(f"# left out {len(tables) - len(alone)} table(s) timed with compute beside the collective "
              "(the world is fitted to and judged on calls alone)", file=sys.stderr)
    chunked = [t for t in alone if t.chunk_bytes]
    if chunked:  # the world keeps NCCL's chunk (dynamiccl.knobs.chunk): such a table is not its to fit
        alone = [t for t in alone if not t.chunk_bytes]
        print(f"# left out {len(chunked)} table(s) timed with a chunk size set (the world has no model of chunk "
              "size; the measured model prices them)", file=sys.stderr)
    if not alone:
        raise InputError(", ".join(paths), None, "no table timed alone with NCCL's chunk (every one has compute "
                                                 "beside or a chunk size set)")
    return paths, alone


def _convergence(report: dict) -> str:
    """One fit's convergence, as ``dynamiccl calibrate`` and ``validate --leave-one-out`` print it."""
    from dynamiccl.costmodel.calibration import CONVERGENCE_ITERATIONS

    change = report["last_cost_change"]
    last = (f"cost change over the last {CONVERGENCE_ITERATIONS} iterations {100 * change:.2g}%" if change == change
            else f"{len(report['cost_history'])} iterations")
    return f"{report['evaluations']} evaluations, {'converged' if report['converged'] else 'NOT converged'}, {last}"


def _add_spec_choice(p) -> None:
    """``--env-dir DIR`` (map each table to a spec by its system text) or ``--env SPEC`` (every table
    was measured on this cluster)."""
    where = p.add_mutually_exclusive_group()
    where.add_argument("--env-dir", default=None,
                       help="directory of environment specs; each table goes to the spec its system text names "
                            "(default envs/)")
    where.add_argument("--env", default=None,
                       help="the spec of the cluster every table was measured on (your own, for `dynamiccl "
                            "measure` output): tables of any communicator shape that fits it are costed on it")


def _specs(args):
    """The specs tables are mapped to (:func:`~dynamiccl.costmodel.measurements.map_table`): the one
    ``--env`` spec, else every spec of ``--env-dir`` (default envs/)."""
    from dynamiccl.costmodel.measurements import load_env_dir
    from dynamiccl.envspec import env_dir, resolve_env

    return resolve_env(args.env) if args.env else load_env_dir(args.env_dir or env_dir())


def cmd_calibrate(args) -> int:
    import dynamiccl
    from dynamiccl import atomic
    from dynamiccl.costmodel.calibration import calibrate, format_summary, predict, summarize
    from dynamiccl.errors import InputError

    output = Path(args.output)
    if output.resolve().is_relative_to(Path(dynamiccl.__file__).resolve().parent):
        raise InputError("-o", None, f"{output} is inside the dynamiccl package, whose data is never written; "
                                     "write the fit elsewhere and use it with DYNAMICCL_WORLD_PARAMS=FILE")
    check_outputs(args.output)
    sources, tables = _measurements(args)
    specs = _specs(args)
    print(f"calibrating on {len(tables)} tables, {sum(len(t.time_us) for t in tables)} rows ...", file=sys.stderr)
    params, report = calibrate(tables, specs, source=sources, progress=True)
    atomic.write_text(output, params.to_json())
    print(f"# fitted from the unfitted priors ({_convergence(report)}: {report['status']}), rms log error "
          f"{report['cost_rms_log_error']:.3f} -> {output}")
    for name, value in report["parameters"].items():
        print(f"  {name:<40} {value:10.4f}")
    print(format_summary(summarize(predict(tables, specs, params))))
    return 0


def cmd_validate(args) -> int:
    from dynamiccl import atomic, schema
    from dynamiccl.costmodel.calibration import format_summary, plot, predict, summarize
    from dynamiccl.costmodel.world import default_params

    if args.leave_one_out and getattr(args, WORLD_PARAMS_DEST):
        from dynamiccl.errors import InputError

        raise InputError("--params", None, "not with --leave-one-out: each fold fits the other tables from the "
                                           "unfitted priors, never from given parameters")
    check_outputs(args.plot or None, args.json)
    _, tables = _measurements(args)
    specs = _specs(args)
    folds = None
    if args.leave_one_out:
        from dynamiccl.costmodel.calibration import leave_one_out

        results, reports = leave_one_out(tables, specs)
        folds = [{key: r[key] for key in ("held_out", "evaluations", "converged", "status", "cost_rms_log_error",
                                          "last_cost_change", "cost_history")} for r in reports]
        print("# out-of-sample: each table predicted by parameters fitted on the other tables only, each fit "
              "started from the unfitted priors (as `dynamiccl calibrate`)")
        for r in reports:
            print(f"#   without {r['held_out']:<24} {_convergence(r)}, rms log error {r['cost_rms_log_error']:.3f}")
    else:
        params = default_params()  # --params's file, which `main` made the default for this command
        results = predict(tables, specs, params)
        print(f"# world parameters: {params.provenance or getattr(args, WORLD_PARAMS_DEST)}")
    summary = summarize(results)
    print(format_summary(summary))
    if args.plot:
        plot(results, args.plot)
        print(f"# plot: {args.plot}")
    if args.json:
        from dynamiccl.costmodel.calibration import points

        extra = {"folds": folds} if folds is not None else {}
        atomic.write_text(args.json, schema.json_text({**summary, "points": points(results), **extra}))  # NaN -> null
    return 0
