"""The ``dynamiccl`` command line. Each sub-command is a thin wrapper over a module's function."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from dynamiccl import __version__
from dynamiccl.errors import DynamicclError, InputError
from dynamiccl.workload.spec import DEFAULT_EFFICIENCY


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate a Megatron-style training step as a trace",
                       description="Generate one training step of a model under a parallel layout (Megatron-LM "
                                   "rank order and communication), one representative rank per pipeline stage.")
    p.add_argument("--model", required=True, help="built-in model name (see `dynamiccl models`) or a model TOML file")
    p.add_argument("--tp", type=int, required=True, help="tensor-parallel size")
    p.add_argument("--pp", type=int, required=True, help="pipeline-parallel size")
    p.add_argument("--dp", type=int, required=True, help="data-parallel size")
    p.add_argument("--cp", type=int, default=1, help="context-parallel size (p2p ring)")
    p.add_argument("--ep", type=int, default=1, help="expert-parallel size (MoE models)")
    p.add_argument("--etp", type=int, default=0, help="expert tensor-parallel size: 1 or TP (default TP)")
    p.add_argument("--sp", action="store_true", help="sequence parallelism")
    p.add_argument("--vpp", type=int, default=1, help="virtual pipeline stages per rank (interleaved 1F1B)")
    p.add_argument("--micro-batch", type=int, default=1, help="sequences per micro-batch")
    p.add_argument("--global-batch", type=int, default=0, help="sequences per step (default: the model's)")
    p.add_argument("--seq-len", type=int, default=0, help="tokens per sequence (default: the model's)")
    p.add_argument("--dp-mode", default="distopt", choices=["ddp", "megatron", "distopt", "fsdp"],
                   help="data-parallel scheme (default distopt: Megatron's distributed optimizer)")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="activation/parameter dtype")
    p.add_argument("--grad-reduce-dtype", default="", choices=["", "fp32", "bf16", "fp16"],
                   help="dtype of DP gradient reduction (default fp32, Megatron's default for bf16 runs)")
    p.add_argument("--no-overlap-grad-reduce", action="store_true",
                   help="reduce gradients after the pipeline drains instead of during the last backward")
    p.add_argument("--no-reshard-after-forward", action="store_true",
                   help="FSDP keeps gathered parameters from forward to backward")
    p.add_argument("--first-stage-layers", type=int, default=0, help="layers on the first pipeline stage (uneven split)")
    p.add_argument("--last-stage-layers", type=int, default=0, help="layers on the last pipeline stage (uneven split)")
    hw = p.add_argument_group("hardware (compute time and node placement)")
    hw.add_argument("--env", help="environment spec (file or shipped name, e.g. dgx-a100): its GPU and GPUs per node")
    hw.add_argument("--gpu", help="GPU name (default H100-SXM unless --env)")
    hw.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node (default 8 unless --env)")
    hw.add_argument("--peak-tflops", type=float, default=0.0, help="dense BF16 peak TFLOPS (overrides the GPU's)")
    hw.add_argument("--efficiency", type=float, default=DEFAULT_EFFICIENCY,
                    help="fraction of peak the GEMMs achieve (default 0.45, a typical MFU)")
    p.add_argument("--all-ranks", action="store_true", help="generate every rank, not one per pipeline stage")
    p.add_argument("-o", "--output", required=True, help="trace file to write (.parquet)")
    p.set_defaults(func=cmd_generate)


def cmd_generate(args) -> int:
    from dynamiccl.envspec import resolve_env
    from dynamiccl.workload.spec import WorkloadSpec, workload_field_flag

    output = Path(args.output)
    if output.suffix != ".parquet":
        raise InputError("-o", None, f"expected a .parquet file name, got {args.output!r}")
    values = {key: getattr(args, key) for key in (
        "model", "tp", "pp", "dp", "cp", "ep", "etp", "vpp", "sp", "micro_batch", "global_batch", "seq_len", "dp_mode",
        "dtype", "grad_reduce_dtype", "first_stage_layers", "last_stage_layers", "gpus_per_node", "peak_tflops",
        "efficiency")}
    values.update(gpu=args.gpu or "", overlap_grad_reduce=not args.no_overlap_grad_reduce,
                  reshard_after_forward=not args.no_reshard_after_forward)
    try:
        spec = WorkloadSpec.from_dict(values, "dynamiccl generate")
    except InputError as exc:
        raise workload_field_flag(exc) from None
    started = time.perf_counter()
    command = "dynamiccl " + " ".join(shlex.quote(a) for a in args.argv)
    trace = spec.generate(resolve_env(args.env).cluster if args.env else None, all_ranks=args.all_ranks, progress=True,
                          command=command)
    trace.write(output)
    elapsed = time.perf_counter() - started
    print(f"wrote {output}: {trace.meta.description}; {len(trace.ops)} ops on {len(trace.meta.roles)} rank(s) "
          f"in {elapsed:.1f} s")
    return 0


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list the built-in models")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_models)


def cmd_models(args) -> int:
    from dataclasses import asdict

    from dynamiccl.workload.models import builtin_models

    models = builtin_models()
    if args.json:
        print(json.dumps({name: asdict(cfg) | {"total_params": cfg.total_params()} for name, cfg in models.items()},
                         indent=2))
        return 0
    print(f"{'model':<16} {'params':>9} {'layers':>6} {'hidden':>6} {'heads/kv':>9} {'seq':>6} {'gbs':>6}  experts")
    for name, m in models.items():
        experts = f"{m.moe.num_experts} top-{m.moe.top_k}" if m.moe else "-"
        print(f"{name:<16} {m.total_params() / 1e9:>8.1f}B {m.num_layers:>6} {m.hidden_size:>6} "
              f"{m.num_attention_heads:>4}/{m.num_kv_heads:<4} {m.seq_length:>6} {m.global_batch:>6}  {experts}")
    print("\nUser models: a TOML file with a [model] table (copy one from dynamiccl/workload/models/).")
    return 0


def _add_trace(sub) -> None:
    p = sub.add_parser("trace", help="inspect and check trace files")
    tsub = p.add_subparsers(dest="trace_command", required=True)
    s = tsub.add_parser("summary", help="collectives per group kind and op, sizes, compute vs communication")
    s.add_argument("file")
    s.add_argument("--json", action="store_true", help="machine-readable: {group_kind: {op: {count, total_bytes, ...}}}")
    s.add_argument("--rank", type=int, help="rank to detail (default: the first in the file)")
    s.add_argument("--all-ranks", action="store_true", help="with --json: an object per rank")
    s.add_argument("--step", type=int, default=0, help="step to summarise (default 0)")
    s.set_defaults(func=cmd_trace_summary)
    c = tsub.add_parser("check", help="validate the schema and the cross-rank consistency (no deadlock)")
    c.add_argument("file")
    c.add_argument("--step", type=int, default=0)
    c.set_defaults(func=cmd_trace_check)


def cmd_trace_summary(args) -> int:
    from dynamiccl.trace.store import Trace
    from dynamiccl.trace.summary import rank_summary, render_text

    trace = Trace.read(args.file)
    if args.rank is not None and args.rank not in trace.ranks:
        raise InputError(args.file, "--rank", f"rank {args.rank} is not in the trace (ranks: {trace.ranks})")
    try:
        if args.json:
            if args.all_ranks:
                obj = {str(r): rank_summary(trace, r, args.step) for r in trace.ranks}
            else:
                obj = rank_summary(trace, args.rank if args.rank is not None else trace.ranks[0], args.step)
            print(json.dumps(obj, indent=2))
        else:
            print(render_text(trace, args.file, args.rank, args.step))
    except KeyError as exc:
        raise InputError(args.file, "--step", str(exc.args[0])) from None
    return 0


def cmd_trace_check(args) -> int:
    from dynamiccl.trace.consistency import check_consistency
    from dynamiccl.trace.store import Trace

    trace = Trace.read(args.file)  # schema validation
    report = check_consistency(trace, args.step)
    print(f"{args.file}: schema OK; {len(trace.ops)} ops on ranks {trace.ranks}")
    print(f"  cross-rank checks on {len(report.checked_groups)} group(s) with all members present"
          + (f", {len(report.skipped_groups)} skipped (members not in the file)" if report.skipped_groups else ""))
    print(f"  replay: {report.completed_ops} of {report.total_ops} ops complete")
    for problem in report.problems:
        print(f"  problem: {problem}")
    print("  OK" if report.ok else "  FAILED")
    return 0 if report.ok else 1


def _add_table(sub) -> None:
    p = sub.add_parser("table", help="decision tables: show, convert (JSON, NCCL example CSV, plugin text), look up")
    tsub = p.add_subparsers(dest="table_command", required=True)
    s = tsub.add_parser("show", help="print a table's rules")
    s.add_argument("file")
    s.set_defaults(func=cmd_table_show)
    c = tsub.add_parser("convert", help="convert between .json, NCCL's example-plugin .csv/.conf and the plugin's .txt")
    c.add_argument("file")
    c.add_argument("-o", "--output", required=True)
    c.add_argument("--lossy", action="store_true",
                   help="drop what the output cannot express (CSV: position-specific and keep-NCCL "
                        "algorithm/protocol rules; .txt: nccl_env)")
    c.set_defaults(func=cmd_table_convert)
    lk = tsub.add_parser("lookup", help="which rule applies to a call (first match wins)")
    lk.add_argument("file")
    lk.add_argument("--coll", required=True, help="allreduce, allgather, reducescatter, broadcast or reduce")
    lk.add_argument("--bytes", type=int, required=True, help="NCCL's nBytes for the call")
    lk.add_argument("--nranks", type=int, required=True)
    lk.add_argument("--nnodes", type=int, required=True)
    lk.add_argument("--position", type=int, default=-1, help="call's position in the step on its communicator")
    lk.add_argument("--num-pipe-ops", type=int, default=1)
    lk.add_argument("--reg-buff", type=int, default=0)
    lk.set_defaults(func=cmd_table_lookup)


def cmd_table_show(args) -> int:
    from dynamiccl.table import load

    table = load(args.file)
    print(f"{args.file}: {len(table.rules)} rule(s), format version {table.version}")
    if table.provenance:
        print(f"provenance: {json.dumps(table.provenance, sort_keys=True)}")
    print(table.describe(), end="")
    return 0


def cmd_table_convert(args) -> int:
    from dynamiccl.table import load, save

    table = load(args.file)
    save(table, args.output, lossy=args.lossy)
    print(f"wrote {args.output} ({len(table.rules)} rule(s) read from {args.file})")
    return 0


def cmd_table_lookup(args) -> int:
    from dynamiccl import nccl
    from dynamiccl.callkey import CallKey
    from dynamiccl.table import load

    table = load(args.file)
    call = CallKey(nccl.parse_func(args.coll, "--coll"), args.bytes, args.nranks, args.nnodes, position=args.position,
                   num_pipe_ops=args.num_pipe_ops, reg_buff=args.reg_buff)
    rule = table.lookup(call)
    if rule is None:
        print("no rule matches: NCCL's own choice")
        return 0
    index = table.rules.index(rule)
    algo = rule.algorithm.name_lower if rule.algorithm is not None else "nccl's"
    proto = rule.protocol.name_lower if rule.protocol is not None else "nccl's"
    channels = "nccl's" if rule.channels == nccl.KEEP else str(rule.channels)
    print(f"rule {index}: algorithm {algo}, protocol {proto}, channels {channels}")
    return 0


def _add_simulate(sub) -> None:
    from dynamiccl.costmodel.registry import COST_MODELS, DEFAULT_COST_MODEL, cost_models_help

    p = sub.add_parser("simulate", help="nccl-tests-style table of a collective under a cost model",
                       description="Cost one collective over a size sweep, nccl-tests style, under the world "
                                   "simulator (default), NCCL's own model, or live on this machine. Each size "
                                   "gets NCCL's choice unless --algo/--proto/--channels force one.")
    p.add_argument("--env", required=True, help="environment spec TOML (or the name of a shipped one, e.g. dgx-h100)")
    p.add_argument("--coll", required=True,
                   help="allreduce, allgather, reducescatter, broadcast, reduce, alltoall or sendrecv")
    p.add_argument("-b", "--minbytes", default="8", help="smallest size (nccl-tests suffixes: 8, 1K, 8M, 1G)")
    p.add_argument("-e", "--maxbytes", default="8G", help="largest size")
    p.add_argument("-f", "--stepfactor", type=float, default=2.0, help="multiply the size by this each step")
    p.add_argument("-i", "--stepbytes", default="0", help="add this many bytes each step instead of -f")
    p.add_argument("-d", "--dtype", default="float32", help="element type (count = size / its bytes)")
    p.add_argument("--nranks", type=int, default=0, help="communicator size (default: every GPU of the spec)")
    p.add_argument("--nnodes", type=int, default=0, help="nodes the communicator spans (default: all)")
    p.add_argument("--algo", help="force an algorithm (ring, tree, nvls, nvlstree, collnetdirect, collnetchain, pat)")
    p.add_argument("--proto", help="force a protocol (ll, ll128, simple)")
    p.add_argument("--channels", type=int, default=0, help="force a channel count (1..64)")
    p.add_argument("--model", default=DEFAULT_COST_MODEL, choices=list(COST_MODELS), help=cost_models_help())
    p.add_argument("--overlap", type=float, default=None,
                   help="share of each call's time with compute beside it (default: the spec's dynamics)")
    p.add_argument("--congestion", type=float, default=0.0, help="share of NIC bandwidth taken by other traffic")
    p.add_argument("--nprocs", type=int, default=4, help="processes for --model live")
    p.add_argument("--json", action="store_true", help="print a JSON list of rows instead of the table")
    p.add_argument("--throughput", type=int, default=0, metavar="ROWS",
                   help="benchmark instead: time ROWS random evaluations of the spec (JSON evaluations/s)")
    p.add_argument("--mixed", action="store_true", help="with --throughput: leave a third of rows to NCCL's choice")
    p.set_defaults(func=cmd_simulate)


def cmd_simulate(args) -> int:
    from dynamiccl.costmodel.simulate import SweepRequest, run_sweep
    from dynamiccl.costmodel.table import format_table, parse_size, sweep_sizes
    from dynamiccl.envspec import resolve_env
    from dynamiccl.nccl import parse_algorithm, parse_protocol

    env = resolve_env(args.env)
    if args.throughput:
        from dynamiccl.costmodel.throughput import measure

        if args.throughput < 1000:
            raise InputError("--throughput", None, f"expected at least 1000 rows, got {args.throughput}")
        print(json.dumps(measure(env, args.throughput, mixed=args.mixed)))
        return 0
    sizes = sweep_sizes(parse_size(args.minbytes, "-b"), parse_size(args.maxbytes, "-e"), args.stepfactor,
                        parse_size(args.stepbytes, "-i"))
    if args.channels < 0 or args.channels > 64:
        raise InputError("--channels", None, f"expected 1..64, got {args.channels}")
    for flag, value in (("--nranks", args.nranks), ("--nnodes", args.nnodes), ("--nprocs", args.nprocs)):
        if value < 0:
            raise InputError(flag, None, f"expected a positive integer, got {value}")
    if args.overlap is not None and not 0 <= args.overlap <= 1:
        raise InputError("--overlap", None, f"expected a fraction in [0, 1], got {args.overlap}")
    if not 0 <= args.congestion <= 0.95:
        raise InputError("--congestion", None, f"expected a share in [0, 0.95], got {args.congestion}")
    req = SweepRequest(coll=args.coll, sizes_bytes=sizes, dtype=args.dtype, nranks=args.nranks, nnodes=args.nnodes,
                       algo=parse_algorithm(args.algo, "--algo") if args.algo else None,
                       proto=parse_protocol(args.proto, "--proto") if args.proto else None,
                       channels=args.channels, overlap=args.overlap, congestion=args.congestion,
                       model=args.model, live_nprocs=args.nprocs)
    rows, header = run_sweep(env, req)
    if args.json:
        print(json.dumps([r.to_json() for r in rows], indent=1))
    else:
        print(format_table(rows, header))
    return 0


def _add_calibrate(sub) -> None:
    p = sub.add_parser("calibrate", help="fit the world simulator's parameters to measured nccl-tests tables",
                       description="Fit the world simulator's free parameters (per hardware class) to measured "
                                   "nccl-tests tables and write them as JSON. Then run `dynamiccl validate`.")
    p.add_argument("--measurements", required=True, help="measurements CSV (columns of ../shared/calibration)")
    p.add_argument("--env-dir", default=None, help="directory of environment specs to map tables to (default envs/)")
    p.add_argument("-o", "--output", default=None,
                   help="parameters JSON to write (default: the package's world_params.json)")
    p.set_defaults(func=cmd_calibrate)


def cmd_calibrate(args) -> int:
    from dynamiccl import atomic
    from dynamiccl.costmodel.calibration import calibrate, format_summary, predict, summarize
    from dynamiccl.costmodel.measurements import load_env_dir, load_measurements
    from dynamiccl.costmodel.world import PARAMS_PATH
    from dynamiccl.envspec import env_dir

    tables = load_measurements(args.measurements)
    specs = load_env_dir(args.env_dir or env_dir())
    print(f"calibrating on {len(tables)} tables, {sum(len(t.time_us) for t in tables)} rows ...", file=sys.stderr)
    params, report = calibrate(tables, specs, source=args.measurements)
    output = Path(args.output) if args.output else PARAMS_PATH
    atomic.write_text(output, params.to_json())
    print(f"# fitted parameters ({report['evaluations']} evaluations, rms log error "
          f"{report['cost_rms_log_error']:.3f}) -> {output}")
    for name, value in report["parameters"].items():
        print(f"  {name:<40} {value:10.4f}")
    print(format_summary(summarize(predict(tables, specs, params))))
    return 0


def _add_validate(sub) -> None:
    p = sub.add_parser("validate", help="error of the world simulator against measured nccl-tests tables",
                       description="Map each measured table to an environment spec, cost it with the world "
                                   "simulator (NCCL's chosen or the table's forced algorithm) and print the error "
                                   "of predicted against measured time per table and overall; plot predicted vs "
                                   "measured busbw per table.")
    p.add_argument("--measurements", required=True, help="measurements CSV")
    p.add_argument("--env-dir", default=None, help="directory of environment specs (default envs/)")
    p.add_argument("--params", default=None, help="world parameters JSON (default: the shipped calibration)")
    p.add_argument("--plot", default="validation.png", help="PNG to write (default validation.png)")
    p.add_argument("--json", default=None, help="also write the error summary as JSON here")
    p.add_argument("--leave-one-out", action="store_true",
                   help="predict each table with parameters fitted on the other tables only (out-of-sample)")
    p.set_defaults(func=cmd_validate)


def cmd_validate(args) -> int:
    from dynamiccl import atomic
    from dynamiccl.costmodel.calibration import format_summary, plot, predict, summarize
    from dynamiccl.costmodel.measurements import load_env_dir, load_measurements
    from dynamiccl.costmodel.world import WorldParams, default_params
    from dynamiccl.envspec import env_dir

    tables = load_measurements(args.measurements)
    specs = load_env_dir(args.env_dir or env_dir())
    params = WorldParams.load(args.params) if args.params else default_params()
    if args.leave_one_out:
        from dynamiccl.costmodel.calibration import leave_one_out

        results = leave_one_out(tables, specs, params)
        print("# out-of-sample: each table predicted by parameters fitted on the other tables only")
    else:
        results = predict(tables, specs, params)
        print(f"# world parameters: {params.provenance or args.params}")
    summary = summarize(results)
    print(format_summary(summary))
    if args.plot:
        plot(results, args.plot)
        print(f"# plot: {args.plot}")
    if args.json:
        from dynamiccl.costmodel.calibration import points

        atomic.write_text(args.json, json.dumps({**summary, "points": points(results)}, indent=1) + "\n")
    return 0


def _add_profile(sub) -> None:
    p = sub.add_parser("profile", help="run a training command with capture on and merge its trace",
                       description="Run CMD (torchrun ..., python ..., srun ...) unchanged with dynamiccl's capture "
                                   "on in every process, then merge the per-rank records into one trace. Steps end "
                                   "at each optimizer step; DDP construction and barriers are marked setup.")
    p.add_argument("-o", "--output", default="dynamiccl-profile", help="output directory (default dynamiccl-profile)")
    p.add_argument("--gpus-per-node", type=int, default=0, help="for node counts (default: torchrun's local world size)")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    p.set_defaults(func=cmd_profile)


def cmd_profile(args) -> int:
    from dynamiccl.profiler.merge import merge_capture
    from dynamiccl.profiler.run import run_profiled
    from dynamiccl.trace.summary import render_text

    command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    status, capture_dir = run_profiled(command, args.output)
    if status != 0:
        print(f"dynamiccl profile: the command exited with status {status}; merging what was recorded",
              file=sys.stderr)
    trace = merge_capture(capture_dir, gpus_per_node=args.gpus_per_node, description=shlex.join(command))
    out = Path(args.output) / "trace.parquet"
    trace.write(out)
    steps = int(trace.ops["step"].max())
    print(render_text(trace, str(out), step=steps))  # the last training step; step 0 is setup
    print(f"wrote {out} ({steps} training step(s) after setup)")
    return status


def _add_import(sub) -> None:
    p = sub.add_parser("import", help="convert traces people already have into a dynamiccl trace",
                       description="Import PyTorch profiler (Kineto) JSON, Flight Recorder dumps, NCCL_DEBUG=INFO "
                                   "logs (COLL, TUNING) or NCCL Inspector JSON into the trace format.")
    p.add_argument("format", choices=["kineto", "flight-recorder", "nccl-log", "inspector"])
    p.add_argument("files", nargs="+", help="input files (one per rank, or merged)")
    p.add_argument("-o", "--output", required=True, help="trace file to write (.parquet)")
    p.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node, for node counts (default 8)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow pickled Flight Recorder dumps (only for files you trust: unpickling runs code)")
    p.set_defaults(func=cmd_import)


def cmd_import(args) -> int:
    from dynamiccl.profiler.importers import import_files

    trace = import_files(args.format, args.files, gpus_per_node=args.gpus_per_node, trust_pickle=args.trust_pickle)
    trace.write(args.output)
    comm = trace.ops[trace.ops["kind"] != "compute"]
    print(f"wrote {args.output}: {len(comm)} communication ops on {trace.ops['rank'].nunique()} rank(s) "
          f"from {len(args.files)} {args.format} file(s)")
    return 0


def _add_export(sub) -> None:
    from dynamiccl.tuning.commands import add_policy_export

    p = sub.add_parser("export", help="write a policy as a decision table, or a trace for other simulators",
                       description="`dynamiccl export --policy policy.zip -o table.json [--nccl-csv table.csv]` "
                                   "writes a trained policy as a decision table the tuner plugin applies. "
                                   "`dynamiccl export {chakra,param} TRACE -o DIR` writes a trace as Chakra "
                                   "execution traces (one protobuf file per rank, what ASTRA-sim reads) or "
                                   "PARAM comms-replay JSON.")
    p.add_argument("format", nargs="?", choices=["chakra", "param"], help="trace format (trace export)")
    p.add_argument("trace", nargs="?", help="trace file (.parquet) (trace export)")
    p.add_argument("-o", "--output", required=True, help="table file (.json) or output directory (trace export)")
    add_policy_export(p)
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    if args.policy:
        if args.format or args.trace:
            raise InputError("export", None, "give either --policy (a decision table) or FORMAT TRACE (a trace)")
        from dynamiccl.tuning.commands import export_policy

        return export_policy(args)
    if not args.format or not args.trace:
        raise InputError("export", None, "expected --policy POLICY, or a format (chakra, param) and a trace file")
    from dynamiccl.profiler.exporters import export_trace
    from dynamiccl.trace.store import Trace

    written = export_trace(args.format, Trace.read(args.trace), args.output)
    print(f"wrote {len(written)} {args.format} file(s) to {args.output}")
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="run the end-to-end demo on a built-in default")
    p.add_argument("--out", default="demo-output", help="directory for the demo's files (default ./demo-output)")
    p.add_argument("--timesteps", type=int, default=None,
                   help="training decisions (default 24576: a few minutes on 2 cores)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from dynamiccl.demo import run_demo

    return run_demo(Path(args.out), main, args.timesteps)


def _add_bench(sub) -> None:
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
    return run_benchmarks(args.names or list(BENCHMARKS), repeat=args.repeat,
                          record_dir=Path(args.record) if args.record else None)


def _add_plugin(sub) -> None:
    p = sub.add_parser("plugin", help="the NCCL tuner plugin: build it, check a table with its parser")
    psub = p.add_subparsers(dest="plugin_command", required=True)
    b = psub.add_parser("build", help="compile libnccl-tuner-dynamiccl.so and its instrumented variant (cached by "
                                      "source hash); print the path NCCL loads")
    b.add_argument("--force", action="store_true", help="rebuild even if a cached build exists")
    b.add_argument("--cache-dir", help="where builds live (default $DYNAMICCL_CACHE_DIR/plugin or "
                                       "~/.cache/dynamiccl/plugin)")
    b.set_defaults(func=cmd_plugin_build)
    c = psub.add_parser("check", help="convert a table to the plugin's text and check it with the plugin's C parser")
    c.add_argument("table", help="decision table: .json, NCCL example CSV (.csv/.conf) or plugin text (.txt)")
    c.add_argument("--plugin", help="prebuilt libnccl-tuner-dynamiccl.so whose build checks the table (the "
                                    "instrumented library beside it; default: build or find the cached one)")
    c.add_argument("-o", "--output", help="where to write the plugin text (default: the cache)")
    c.set_defaults(func=cmd_plugin_check)
    from dynamiccl.plugin.benchmark import add_arguments

    bench = psub.add_parser("bench", help="time getCollInfo with a 1,000-rule table (median target <= 100 ns), "
                                          "table load time and binary size")
    add_arguments(bench)
    bench.set_defaults(func=cmd_plugin_bench)


def cmd_plugin_build(args) -> int:
    from dynamiccl.launcher import open_checker, open_plugin
    from dynamiccl.plugin.build import build_plugin

    path = build_plugin(Path(args.cache_dir) if args.cache_dir else None, force=args.force)
    library, checker = open_plugin(path), open_checker(path)
    versions = ", ".join(f"v{v}" for v in library.exported_abi_versions())
    print(path)
    print(f"  {path.stat().st_size} bytes; plugin version {checker.version}; exports tuner ABI {versions}; "
          f"beside it {checker.path.name} ({checker.path.stat().st_size} bytes) adds dynamiccl's test and "
          "measurement entry points")
    return 0


def cmd_plugin_bench(args) -> int:
    from dynamiccl.plugin.benchmark import main

    return main(args)


def cmd_plugin_check(args) -> int:
    from dynamiccl.launcher import open_checker, prepare_table, resolve_plugin

    prepared = prepare_table(args.table, open_checker(resolve_plugin(args.plugin)), args.output)
    print(f"{args.table}: the plugin's parser accepts it: {prepared.rules} rule(s), {prepared.step_lines} "
          f"step line(s)")
    print(f"  plugin text: {prepared.text_path}")
    return 0


def _add_launch(sub) -> None:
    p = sub.add_parser("launch", help="run a training command with the tuner plugin and a decision table",
                       description="Run CMD (torchrun ..., srun ..., python ...) with NCCL_TUNER_PLUGIN and "
                                   "DYNAMICCL_TUNER_TABLE set, the table's init-time NCCL settings exported and, "
                                   "with --profile, dynamiccl's capture on. Fails open: if the plugin or the table "
                                   "cannot be used, CMD runs with NCCL's own choices and one line says why. "
                                   "Exits with CMD's status.")
    p.add_argument("--table", help="decision table: .json, NCCL example CSV (.csv/.conf) or plugin text (.txt)")
    p.add_argument("--plugin", help="prebuilt libnccl-tuner-dynamiccl.so, with the -instrumented.so of its build "
                                    "beside it (default: build or find the cached one)")
    p.add_argument("--profile", metavar="DIR", help="also record the job; merged into DIR/trace.parquet")
    p.add_argument("--gpus-per-node", type=int, default=0,
                   help="with --profile: for node counts (default: torchrun's local world size)")
    p.add_argument("--dry-run", action="store_true", help="print what would be set and the command; run nothing")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    p.set_defaults(func=cmd_launch)


def cmd_launch(args) -> int:
    from dynamiccl.launcher import launch

    command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    return launch(command, table=args.table, plugin=args.plugin, profile_dir=args.profile, dry_run=args.dry_run,
                  gpus_per_node=args.gpus_per_node)


def _add_doctor(sub) -> None:
    p = sub.add_parser("doctor", help="check what tuning a job here needs: NCCL, tuner ABI, plugin, table, env",
                       description="A checklist (ok / warn / missing / fail) that works without GPUs: the NCCL "
                                   "libraries and their versions, the tuner ABI each looks up, the plugin build, "
                                   "the table (--table), the environment, and what `dynamiccl launch` would set. "
                                   "Exit status 1 if a check fails.")
    p.add_argument("--table", help="decision table to check")
    p.add_argument("--plugin", help="prebuilt plugin to check (default: build or find the cached one)")
    p.add_argument("--nccl", action="append", default=[], metavar="PATH",
                   help="an NCCL library to check besides those found (repeatable)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args) -> int:
    from dynamiccl.doctor import run_doctor

    report = run_doctor(table=args.table, plugin=args.plugin, nccl=args.nccl)
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        print(report.render(), end="")
    return report.exit_status


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="HTML report, Markdown summary and plots from `dynamiccl evaluate` results",
                       description="Read a results file of `dynamiccl evaluate` (and its .calls.parquet companion, "
                                   "if present) and write DIR/report.html (self-contained: plots embedded, no "
                                   "scripts or URLs), DIR/summary.md and DIR/plots/*.png: decision maps, speedup "
                                   "per case, communication time by parallelism and collective, regret against "
                                   "the oracle, training curve, simulator calibration and provenance.")
    p.add_argument("results", help="results .parquet written by `dynamiccl evaluate -o`")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="directory to write the report into")
    p.add_argument("--training-curve", metavar="CSV", help="training_curve.csv of `dynamiccl train`")
    p.add_argument("--calibration", metavar="JSON", help="error summary of `dynamiccl validate --json`")
    p.add_argument("--table", help="decision table (.json/.csv) to list with its provenance")
    p.add_argument("--agent", help="the agent compared with NCCL's default (default: policy, else the first "
                                   "agent that is not a baseline)")
    p.add_argument("--online", default="all", choices=["all", "last"],
                   help="which iterations of online learners count (default all: the cost of learning included)")
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    from dynamiccl.report import build_report

    paths = build_report(args.results, args.output, training_curve=args.training_curve,
                         calibration=args.calibration, table=args.table, agent=args.agent, online=args.online,
                         command="dynamiccl " + shlex.join(args.argv), progress=sys.stderr.isatty())
    print(f"wrote {paths['html']} (open this first), {paths['summary']} and {paths['plots']}/*.png")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dynamiccl", description="Learned NCCL algorithm/protocol/channel choices "
                                     "for large-transformer training.")
    parser.add_argument("--version", action="version", version=f"dynamiccl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_demo, _add_generate, _add_models, _add_trace, _add_table, _add_simulate, _add_calibrate,
                _add_validate, _add_profile, _add_import, _add_export, _add_bench, _add_plugin, _add_launch,
                _add_doctor, _add_report):
        add(sub)
    from dynamiccl.tuning.commands import add_commands

    add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except DynamicclError as exc:
        print(f"dynamiccl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dynamiccl: interrupted", file=sys.stderr)
        return 130
