"""Trace commands: ``dynamiccl trace summary|check|export``, ``dynamiccl import`` (traces people
already have) and ``dynamiccl profile`` (record a real job)."""

from __future__ import annotations

import argparse
import json
import sys

from dynamiccl import schema
from dynamiccl.cli.common import invocation, wrapped_command
from dynamiccl.cluster import MAX_GPUS_PER_NODE, MAX_NODES
from dynamiccl.errors import InputError
from dynamiccl.outputs import check_outputs, claim_output_dir

# The keys of dynamiccl.profiler.importers.IMPORTERS and dynamiccl.profiler.exporters.EXPORTERS, listed here so
# that building the parser imports neither (they need pandas); a test checks that they agree.
TRACE_IMPORT_FORMATS = ("kineto", "flight-recorder", "nccl-log", "inspector")
EXPORT_FORMATS = ("chakra", "param")
# `import nccl-tests` reads nccl-tests output into a measurements CSV (dynamiccl.costmodel.nccl_tests_log), not a trace.
NCCL_TESTS_FORMAT = "nccl-tests"
IMPORT_FORMATS = (*TRACE_IMPORT_FORMATS, NCCL_TESTS_FORMAT)
# Options of one kind of import only (dest -> flag), refused for the other kind.
_NCCL_TESTS_ONLY = {"system": "--system", "nodes": "--nodes", "coll": "--coll", "algo": "--algo", "proto": "--proto",
                    "nccl_version": "--nccl-version", "table": "--table", "in_place": "--in-place"}
_TRACE_ONLY = {"trust_pickle": "--trust-pickle"}
_GPUS_PER_NODE = schema.argument(schema.integer("--gpus-per-node", low=1, high=MAX_GPUS_PER_NODE))
_NODES = schema.argument(schema.integer("--nodes", low=1, high=MAX_NODES))


def add(sub) -> None:
    """Add ``trace``, ``profile`` and ``import`` to the sub-command parsers ``sub``."""
    p = sub.add_parser("trace", help="inspect, check and export trace files")
    tsub = p.add_subparsers(dest="trace_command", required=True)
    s = tsub.add_parser("summary", help="collectives per group kind and op, sizes, compute vs communication")
    s.add_argument("file")
    s.add_argument("--json", action="store_true", help="machine-readable: {group_kind: {op: {count, total_bytes, ...}}}")
    s.add_argument("--rank", type=int, help="rank to detail (default: the first in the file)")
    s.add_argument("--all-ranks", action="store_true", help="with --json: an object per rank")
    s.add_argument("--step", type=int, help="step to summarise (default: the first full training step, "
                                            "step 1 of a profiled or imported trace, whose step 0 is setup)")
    s.set_defaults(func=cmd_trace_summary)
    c = tsub.add_parser("check", help="validate the schema and the cross-rank consistency (no deadlock)")
    c.add_argument("file")
    c.add_argument("--step", type=int, help="step to check (default: the first full training step)")
    c.set_defaults(func=cmd_trace_check)
    e = tsub.add_parser("export", help="write a trace for other simulators: Chakra (ASTRA-sim) or PARAM comms replay",
                        description="`dynamiccl trace export {chakra,param} TRACE -o DIR` writes a trace as Chakra "
                                    "execution traces (one protobuf file per rank, what ASTRA-sim reads) or PARAM "
                                    "comms-replay JSON.")
    e.add_argument("format", choices=EXPORT_FORMATS, help="trace format")
    e.add_argument("trace", help="trace file (.parquet)")
    e.add_argument("-o", "--output", required=True, help="output directory")
    e.set_defaults(func=cmd_trace_export)

    p = sub.add_parser("profile", help="run a training command with capture on and merge its trace",
                       description="Run CMD (torchrun ..., python ..., srun ...) unchanged with dynamiccl's capture "
                                   "on in every process, then merge the per-rank records into one trace. Steps end "
                                   "at each optimizer step; DDP construction, barriers and what runs after the last "
                                   "optimizer step are marked setup (step 0). The job always runs: if capture "
                                   "fails, one line says why. Exits with the job's status.")
    p.add_argument("-o", "--output", default="dynamiccl-profile", help="output directory (default dynamiccl-profile)")
    p.add_argument("--gpus-per-node", type=int, default=0, help="for node counts (default: torchrun's local world size)")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("import", help="convert traces people already have into a dynamiccl trace, or nccl-tests "
                                      "output into a measurements CSV",
                       description="Import PyTorch profiler (Kineto) JSON, Flight Recorder dumps, NCCL_DEBUG=INFO "
                                   "logs (COLL, TUNING) or NCCL Inspector JSON into the trace format; or (`import "
                                   "nccl-tests`) the output of all_reduce_perf and the other nccl-tests binaries into "
                                   "a measurements CSV that `dynamiccl validate` and `calibrate` read.")
    p.add_argument("format", choices=IMPORT_FORMATS)
    p.add_argument("files", nargs="+", help="input files (one per rank, or merged; nccl-tests: logs as pasted)")
    p.add_argument("-o", "--output", required=True,
                   help="trace file to write (.parquet); nccl-tests: measurements CSV to write")
    p.add_argument("--gpus-per-node", type=_GPUS_PER_NODE, default=None,
                   help="GPUs per node (traces: for node counts, default 8; nccl-tests: default from the log's "
                        "'# Using devices' lines)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow pickled Flight Recorder dumps (only for files you trust: unpickling runs code)")
    n = p.add_argument_group("nccl-tests only")
    n.add_argument("--system", help="the hardware, as the measurements' system text (e.g. \"8x H100 SXM, NVSwitch, "
                                    "2 nodes, IB\"); the log's GPU name is added when it lacks one (default: the "
                                    "log's GPU and layout)")
    n.add_argument("--nodes", type=_NODES, default=None, help="nodes the run spanned (default: from the log)")
    n.add_argument("--coll", help="the collective, where the log names no nccl-tests binary (allreduce, allgather, "
                                  "reducescatter, broadcast, reduce, alltoall, sendrecv)")
    n.add_argument("--algo", help="the algorithm NCCL_ALGO forced, where the log does not show it (default: the "
                                  "log's NCCL_ALGO, else NCCL's own choice)")
    n.add_argument("--proto", help="the protocol NCCL_PROTO forced (default: the log's NCCL_PROTO, else NCCL's)")
    n.add_argument("--nccl-version", help="the NCCL version, where the log does not print it (e.g. 2.23.4)")
    n.add_argument("--table", help="table id prefix (default: each log's file name)")
    n.add_argument("--in-place", action="store_true",
                   help="take the in-place columns (default: out-of-place, the first group nccl-tests prints)")
    p.set_defaults(func=cmd_import)


def _step(args, trace) -> tuple[int, str | None]:
    """The step a trace command looks at: ``--step``, else the first full training step, with the
    line that says so (None for ``--step``)."""
    from dynamiccl.trace.summary import first_training_step

    if args.step is not None:
        return args.step, None
    step = first_training_step(trace)
    if step is None:
        step = int(trace.ops["step"].min()) if not trace.ops.empty else 0
        return step, f"step {step}: the trace has no training step, only setup traffic (--step N for another)"
    return step, f"step {step}: the first full training step (--step N for another)"


def cmd_trace_summary(args) -> int:
    from dynamiccl.trace.store import Trace
    from dynamiccl.trace.summary import rank_summary, render_text

    trace = Trace.read(args.file)
    if args.rank is not None and args.rank not in trace.ranks:
        raise InputError(args.file, "--rank", f"rank {args.rank} is not in the trace (ranks: {trace.ranks})")
    step, which = _step(args, trace)
    try:
        if args.json:
            if args.all_ranks:
                obj = {str(r): rank_summary(trace, r, step) for r in trace.ranks}
            else:
                obj = rank_summary(trace, args.rank if args.rank is not None else trace.ranks[0], step)
            if which:
                print(which, file=sys.stderr)  # stdout stays JSON
            print(json.dumps(obj, indent=2))
        else:
            text = render_text(trace, args.file, args.rank, step)
            if which:
                print(which)
            print(text)
    except KeyError as exc:
        raise InputError(args.file, "--step", str(exc.args[0])) from None
    return 0


def cmd_trace_check(args) -> int:
    from dynamiccl.trace.consistency import check_consistency
    from dynamiccl.trace.store import Trace

    trace = Trace.read(args.file)  # schema validation
    step, which = _step(args, trace)
    steps = sorted(int(s) for s in trace.ops["step"].unique())
    if step not in steps:  # checking no ops would print a meaningless OK
        raise InputError(args.file, "--step", f"step {step} is not in the trace (it has steps {steps})")
    report = check_consistency(trace, step)
    print(f"{args.file}: schema OK; {len(trace.ops)} ops on ranks {trace.ranks}")
    print(f"  {which or f'step {step}'}")
    print(f"  cross-rank checks on {len(report.checked_groups)} group(s) with all members present"
          + (f", {len(report.skipped_groups)} skipped (members not in the file)" if report.skipped_groups else ""))
    print(f"  replay: {report.completed_ops} of {report.total_ops} ops complete")
    for problem in report.problems:
        print(f"  problem: {problem}")
    print("  OK" if report.ok else "  FAILED")
    return 0 if report.ok else 1


def cmd_trace_export(args) -> int:
    """``dynamiccl trace export {chakra,param} TRACE -o DIR``."""
    from dynamiccl.profiler.exporters import export_trace
    from dynamiccl.trace.store import Trace

    claim_output_dir(args.output, invocation(args.argv))
    written = export_trace(args.format, Trace.read(args.trace), args.output)
    print(f"wrote {len(written)} {args.format} file(s) to {args.output}")
    return 0


def cmd_profile(args) -> int:
    """Run the command with capture on, merge and summarise; the exit status is always the
    command's (capture fails open: a problem with it is one line on stderr)."""
    from dynamiccl.profiler.merge import training_steps
    from dynamiccl.profiler.run import merge_after_run, run_profiled, say
    from dynamiccl.trace.summary import render_text

    command = wrapped_command(args.cmd)
    status, capture_dir = run_profiled(command, args.output)
    if capture_dir is None:  # ran unprofiled; run_profiled said why
        return status
    if status != 0:
        say("profile", f"the command exited with status {status}; merging what was recorded")
    merged = merge_after_run(capture_dir, command, args.gpus_per_node, "profile")
    if merged is None:
        return status
    out, trace = merged
    steps = training_steps(trace)
    if steps:
        try:
            print(render_text(trace, str(out), step=steps))  # the last complete training step; step 0 is setup
        except KeyError as exc:  # a rank without ops in that step: the trace is written all the same
            say("profile", f"no summary of step {steps}: {exc.args[0]}")
        print(f"wrote {out} ({steps} training step(s) after setup)")
    else:
        print(f"wrote {out} (0 training steps: no optimizer step was seen, so everything recorded is setup "
              "traffic in step 0)")
    return status


def _refuse_other_kind(args) -> None:
    """Refuse options that belong to the other kind of import (traces vs nccl-tests).

    Raises:
        InputError: naming the first such option.
    """
    nccl_tests = args.format == NCCL_TESTS_FORMAT
    for dest, flag in (_TRACE_ONLY if nccl_tests else _NCCL_TESTS_ONLY).items():
        if getattr(args, dest) not in (None, False):
            kind = ("trace formats" + f" ({', '.join(TRACE_IMPORT_FORMATS)})") if nccl_tests else "`import nccl-tests`"
            raise InputError(flag, None, f"only for {kind}, not for `import {args.format}`")


def cmd_import(args) -> int:
    _refuse_other_kind(args)
    if args.format == NCCL_TESTS_FORMAT:
        return cmd_import_nccl_tests(args)
    from dynamiccl.profiler.importers import import_files

    check_outputs(args.output)
    gpus_per_node = args.gpus_per_node if args.gpus_per_node is not None else 8
    trace = import_files(args.format, args.files, gpus_per_node=gpus_per_node, trust_pickle=args.trust_pickle)
    trace.write(args.output)
    print(f"wrote {args.output}: {len(trace.communication_ops)} communication ops on {len(trace.ranks)} rank(s) "
          f"from {len(args.files)} {args.format} file(s)")
    return 0


def cmd_import_nccl_tests(args) -> int:
    """``dynamiccl import nccl-tests LOG... -o M.csv``: warnings on stderr, then each table nccl-tests
    style, then the spec in ``envs/`` each table maps to (what validate and calibrate will cost it on)."""
    from dynamiccl.costmodel.measurements import load_env_dir, load_measurements, map_table, write_measurements
    from dynamiccl.costmodel.nccl_tests_log import ImportOptions, import_logs
    from dynamiccl.envspec import env_dir

    check_outputs(args.output)
    options = ImportOptions(system=args.system, gpus_per_node=args.gpus_per_node, nodes=args.nodes, coll=args.coll,
                            algo=args.algo, proto=args.proto, nccl_version=args.nccl_version, table=args.table,
                            in_place=args.in_place)
    tables, warnings = import_logs(args.files, options)
    for warning in warnings:
        print(f"import nccl-tests: warning: {warning}", file=sys.stderr)
    write_measurements(args.output, [row for table in tables for row in table.rows])
    for table in tables:
        print(f"# {table.table}: {table.coll} on {table.gpus_per_node} GPU(s) x {table.nodes} node(s), "
              f"algo {table.algo}, proto {table.proto}, NCCL {table.nccl_version}")
        print(f"#   system: {table.system}")
        print(f"#   how: {table.how}")
        print(f"# {'size(B)':>12}  {'time(us)':>10}  {'algbw(GB/s)':>11}  {'busbw(GB/s)':>11}")
        for row in table.rows:
            print(f"  {row['size_bytes']:>12}  {row['time_us']:>10.2f}  {row['algbw_gbytes_per_s']:>11.2f}  "
                  f"{row['busbw_gbytes_per_s']:>11.2f}")
    print(f"wrote {args.output}: {len(tables)} table(s), {sum(len(t.rows) for t in tables)} row(s) from "
          f"{len(args.files)} log(s)")
    try:
        specs = load_env_dir(env_dir())
    except InputError as exc:  # an installed package without the repository's envs/
        print(f"import nccl-tests: no spec mapping shown ({exc})", file=sys.stderr)
        return 0
    for measured in load_measurements(args.output):  # what validate/calibrate read back
        try:
            print(f"# {measured.table}: costed on spec {map_table(measured, specs).name} by validate/calibrate")
        except InputError as exc:
            print(f"import nccl-tests: warning: {measured.table}: {exc.problem}; validate/calibrate will refuse it "
                  "(name the GPU in --system, or add a spec)", file=sys.stderr)
    return 0
