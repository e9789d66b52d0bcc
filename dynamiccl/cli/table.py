"""``dynamiccl table show|convert|lookup|export``: decision tables in every format ``dynamiccl.table``
reads, and a trained policy written down as one."""

from __future__ import annotations

import argparse
import json
import os
import sys

from dynamiccl.cli.common import add_measurements, add_parallel, add_world_params, cost_options, parallelism
from dynamiccl.cli.workload import add_workload_arguments, workload_from_args
from dynamiccl.errors import InputError
from dynamiccl.outputs import check_outputs


def add(sub) -> None:
    """Add ``table`` and its sub-commands to the sub-command parsers ``sub``."""
    p = sub.add_parser("table", help="decision tables: show, convert (JSON, NCCL example CSV, plugin text), look up, "
                                     "export a policy as one")
    tsub = p.add_subparsers(dest="table_command", required=True)
    s = tsub.add_parser("show", help="print a table's rules")
    s.add_argument("file")
    s.set_defaults(func=cmd_table_show)
    c = tsub.add_parser("convert", help="convert between .json, NCCL's example-plugin .csv/.conf and the plugin's .txt")
    c.add_argument("file")
    c.add_argument("-o", "--output", required=True)
    c.add_argument("--lossy", action="store_true",
                   help="write what the output can express and drop the rest (CSV: position-specific and "
                        "keep-NCCL algorithm/protocol rules, and calls no rule takes run on NVIDIA's plugin's 1 "
                        "channel, chunk sizes, communicators and job_env; .txt: communicators and job_env)")
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
    lk.add_argument("--as", dest="as_plugin", choices=("dynamiccl", "nvidia-example"), default="dynamiccl",
                    help="nvidia-example: also show what NVIDIA's example tuner plugin does with the table as its "
                         "CSV (the file itself if it is one): its first-match walk and its channel rules")
    lk.set_defaults(func=cmd_table_lookup)
    e = tsub.add_parser("export", help="write a trained policy as a decision table the tuner plugin applies",
                        description="`dynamiccl table export --policy policy.zip -o table.json [--nccl-csv "
                                    "table.csv]` decides every call of the policy's experiment cases with the "
                                    "policy and writes the decisions as a decision table (and, lossy, NVIDIA's "
                                    "example-plugin CSV).")
    e.add_argument("-o", "--output", required=True, help="table file (.json)")
    add_policy_export_arguments(e, policy_required=True)
    add_world_params(e)
    e.set_defaults(func=cmd_table_export)
    ck = tsub.add_parser(
        "check", help="replay a step with and without the table; refuse a table that makes it slower",
        description="Replay one training step (a trace, or a workload given with the `dynamiccl generate` flags) "
                    "on an environment spec with NCCL's own choices and with the table, under a few dynamics "
                    "states; print both step times, the ratio and the run-to-run noise. Exit status 1 when the "
                    "table makes the step slower than the tolerance allows, listing the calls responsible. With "
                    "--sweep FILE: the same on every layout of a sweep file, with a results table.")
    ck.add_argument("table", help="decision table (.json, .csv/.conf, .txt)")
    ck.add_argument("--trace", help="trace file of the step (default: generate the workload the flags describe)")
    ck.add_argument("--env", help="environment spec name or path (with --trace or a workload)")
    ck.add_argument("--sweep", help="sweep file (TOML) of layouts to check instead, e.g. experiments/sweep/layouts.toml")
    ck.add_argument("-o", "--output", help="with --sweep: results to write as OUTPUT.md and OUTPUT.json")
    ck.add_argument("--states", type=int, default=None, help="dynamics states replayed (default 4; a sweep file "
                                                            "sets its own)")
    ck.add_argument("--tolerance", type=float, default=None,
                    help="share of step time the table may lose before it is refused (default 0.005: run-to-run "
                         "noise of a real step)")
    ck.add_argument("--cost-model", default=None, help="registered cost model to replay with (default world)")
    add_measurements(ck, model_flag="--cost-model")
    add_world_params(ck)
    add_parallel(ck, "layouts of --sweep")
    ck.add_argument("--json", action="store_true", help="print the result as JSON")
    add_workload_arguments(ck, required=False, with_env=False)
    ck.set_defaults(func=cmd_table_check)


def add_policy_export_arguments(parser: argparse.ArgumentParser, policy_required: bool) -> None:
    """The options of ``table export`` but ``-o`` (``policy_required=False`` for the old ``export``
    spelling, where ``--policy`` is what tells a table from a trace export)."""
    parser.add_argument("--policy", required=policy_required, help="policy.zip to export as a decision table "
                                                                   "(-o table.json)")
    parser.add_argument("--cases-config", help="experiment config whose train and held-out cases give the calls "
                                               "the table must reproduce (default: the policy's training config)")
    parser.add_argument("--env", help="environment spec the table is for (masks depend on the cluster); "
                                      "default: every env of the config")
    parser.add_argument("--nccl-csv", help="also write NVIDIA's example-plugin CSV (no position rules; NCCL's own "
                                           "choice written out for the shapes of the cases)")
    parser.add_argument("--run-dir", help="the training run's directory, where the config's workloads are "
                                          "generated (default experiments/<name>/run)")
    parser.add_argument("--megatron-yaml", help="also write the table's communicator settings as Megatron-LM's "
                                                "--nccl-communicator-config-path YAML")
    parser.add_argument("--evidence-states", type=int, default=None,
                        help="dynamics states per case replayed to confine every rule to the sizes where it beat "
                             "NCCL's default (default 2); 0: write the policy down unconfined, every rule over "
                             "all sizes (for comparison only, not for deployment)")
    parser.add_argument("--evidence-from", choices=("train", "all"), default="train",
                        help="cases whose replays are the evidence: train (default; held-out cases and the layout "
                             "sweep then judge the table out of sample) or all (held-out cases too: for a table "
                             "deployed after its evaluation)")


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

    check_outputs(args.output)
    table = load(args.file)
    save(table, args.output, lossy=args.lossy)
    print(f"wrote {args.output} ({len(table.rules)} rule(s) read from {args.file})")
    return 0


def cmd_table_lookup(args) -> int:
    from pathlib import Path

    from dynamiccl import nccl
    from dynamiccl.callkey import CallKey
    from dynamiccl.table import format_of, load, nvidia_csv

    table = load(args.file)
    for warning in table.provenance.get("warnings", []):
        print(f"warning: {args.file}: {warning}", file=sys.stderr)
    call = CallKey(nccl.parse_func(args.coll, "--coll"), args.bytes, args.nranks, args.nnodes, position=args.position,
                   num_pipe_ops=args.num_pipe_ops, reg_buff=args.reg_buff)
    prefix = "dynamiccl: " if args.as_plugin == "nvidia-example" else ""
    rule = table.lookup(call)
    if rule is None:
        print(f"{prefix}no rule matches: NCCL's own choice")
    else:
        index = table.rules.index(rule)
        if rule.keeps_nccl:
            print(f"{prefix}rule {index}: NCCL's own choice: no evidence here that another choice wins")
        else:
            algo = rule.algorithm.name_lower if rule.algorithm is not None else "nccl's"
            proto = rule.protocol.name_lower if rule.protocol is not None else "nccl's"
            channels = "nccl's" if rule.channels == nccl.KEEP else str(rule.channels)
            print(f"{prefix}rule {index}: algorithm {algo}, protocol {proto}, channels {channels}")
    if args.as_plugin == "nvidia-example":
        if format_of(args.file) == "csv":
            text, how = Path(args.file).read_text(encoding="utf-8"), ""
        else:
            try:
                text, how = nvidia_csv.write(table), " (as `dynamiccl table convert` writes it)"
            except InputError:
                text = nvidia_csv.write(table, lossy=True)
                how = (" (as `dynamiccl table convert --lossy` writes it: the CSV cannot hold this table exactly, "
                       "`table convert` without --lossy says why)")
        lines, _ = nvidia_csv.parse_example(text)
        print(_describe_example_choice(nvidia_csv.example_choice(lines, call), how))
    return 0


def _describe_example_choice(choice, how: str) -> str:
    """One line: what NVIDIA's example plugin does (``nvidia_csv.example_choice``)."""
    passed = "".join(f"; passes over line {line.lineno} (NCCL never runs that pair for the collective)"
                     for line in choice.passed_over)
    if choice.line is None:
        return (f"nvidia-example{how}: no line applies: NCCL's algorithm and protocol on 1 channel (the plugin "
                f"sets *nChannels = 1 before matching){passed}")
    line = choice.line
    if line.channels == -1:
        channels = "1 (channels -1 keeps the plugin's default of 1)"
    elif choice.channels == 0:
        channels = "nccl's (0)"
    else:
        channels = str(choice.channels)
    return (f"nvidia-example{how}: line {line.lineno} ({','.join(line.tokens)}): algorithm "
            f"{line.algorithm.name_lower}, protocol {line.protocol.name_lower}, channels {channels}{passed}")


def cmd_table_export(args) -> int:
    """``dynamiccl table export --policy P -o table.json [--nccl-csv table.csv]``."""
    from dynamiccl.table import save
    from dynamiccl.table.policy_export import export_policy_tables

    from dynamiccl.table.policy_export import EVIDENCE_STATES

    check_outputs(args.output, args.nccl_csv, args.megatron_yaml)
    states = EVIDENCE_STATES if args.evidence_states is None else args.evidence_states
    exported = export_policy_tables(args.policy, cases_config=args.cases_config, env=args.env, run_dir=args.run_dir,
                                    evidence_states=states, evidence_split=args.evidence_from,
                                    progress=sys.stderr.isatty())
    save(exported.table, args.output)
    for note in exported.notes:
        print(f"note: {note}")
    what = "confined to where they beat NCCL's default" if states else "reproducing the policy"
    print(f"wrote {args.output}: {len(exported.table.rules)} rules {what} on {exported.calls:,} calls "
          f"of {exported.cases} case(s)")
    if args.nccl_csv:
        save(exported.csv_table, args.nccl_csv)
        print(f"wrote {args.nccl_csv}: {len(exported.csv_table.rules)} rules for NVIDIA's example plugin (no position "
              "rules; NCCL's choice written out for the cases' shapes, other shapes on the plugin's 1 channel)")
    if args.megatron_yaml:
        from dynamiccl.megatron_yaml import write_megatron_yaml

        for note in write_megatron_yaml(exported.table, args.megatron_yaml, os.fspath(args.output)):
            print(f"note: {note}")
        print(f"wrote {args.megatron_yaml}: {len(exported.table.communicators)} communicator rule(s) for Megatron-LM "
              f"(--nccl-communicator-config-path {args.megatron_yaml})")
    return 0


def cmd_table_check(args) -> int:
    """``dynamiccl table check TABLE (--trace T | workload flags) --env SPEC`` or ``--sweep FILE``;
    exit status 1 when the table is refused."""
    from dynamiccl.costmodel.registry import DEFAULT_COST_MODEL, cost_model_entry
    from dynamiccl.table import load

    if args.sweep and args.output:
        from dynamiccl.table.sweep import output_paths

        check_outputs(*output_paths(args.output))
    model = args.cost_model or DEFAULT_COST_MODEL
    cost_model_entry(model, "--cost-model", None)  # an unknown name fails here, listing the registered ones
    options = cost_options(args, model, "--cost-model")
    table = load(args.table)
    if args.sweep:
        return _check_sweep(args, table, model, options)
    from dynamiccl.table.check import CHECK_STATE_OFFSET, CHECK_STATES, TOLERANCE, check_cases
    from dynamiccl.tuning.cases import Case

    case = check_case(args.trace, args.env, args, "dynamiccl table check")
    states = range(CHECK_STATE_OFFSET, CHECK_STATE_OFFSET + (args.states or CHECK_STATES))
    tolerance = TOLERANCE if args.tolerance is None else args.tolerance
    result = check_cases(table, [Case(*case)], states=states, model=model, tolerance=tolerance, progress=True,
                         cost_options=options)[0]
    if args.json:
        print(json.dumps(result.to_json(), indent=1))
    else:
        print(f"{args.table} on {args.trace or 'the generated workload'} @ {args.env} ({model})")
        print(result.render(), end="")
    return 0 if result.passed else 1


def check_case(trace: str | None, env: str | None, args, command: str) -> tuple[str, str]:
    """(trace path, env spec) of a check: ``trace``, or the workload of the generate flags in ``args``
    generated once into the workload cache.

    Raises:
        InputError: no --env, neither a trace nor --model/--tp/--pp/--dp, or a layout the model cannot run.
    """
    from dynamiccl.table.sweep import workload_trace

    if not env:
        raise InputError("--env", None, "give the environment spec the step runs on")
    if trace:
        return trace, env
    if not all(getattr(args, name) for name in ("model", "tp", "pp", "dp")):
        raise InputError("--trace", None, "give a trace, or a workload with --model, --tp, --pp and --dp "
                                          "(the flags of `dynamiccl generate`)")
    return workload_trace(workload_from_args(args, command), env, command, "workload"), env


def _check_sweep(args, table, model: str, options) -> int:
    from dataclasses import replace

    from dynamiccl.sweep import SweepOutcome, ran_on
    from dynamiccl.table.sweep import load_sweep, run_sweep

    sweep = load_sweep(args.sweep)
    if args.states:
        sweep = replace(sweep, states=tuple(range(sweep.states[0], sweep.states[0] + args.states)))
    if args.tolerance is not None:
        sweep = replace(sweep, tolerance=args.tolerance)
    result = run_sweep(table, sweep, table_path=args.table, model=model, progress=True, cost_options=options,
                       parallel=parallelism(args))
    print(f"checked {len(result.checks)} of {len(sweep.layouts)} layouts {ran_on(result.backend, result.workers)}", file=sys.stderr)
    if result.failed:
        failed = SweepOutcome({}, [failure for _, failure in result.failed])
        print(f"table check: {len(result.failed)} layout(s) could not be checked (the table does not pass):\n"
              + failed.failure_text(), file=sys.stderr)
    if args.output:
        md, js = result.write(args.output)
        print(f"wrote {md} and {js}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.to_json(), indent=1))
    else:
        print(result.markdown(), end="")
    return 0 if result.passed else 1
