"""Commands around the NCCL tuner plugin: ``dynamiccl plugin build|check|bench``, ``launch`` (a job
with the plugin and a table) and ``doctor`` (what tuning a job here needs)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dynamiccl.cli.common import wrapped_command
from dynamiccl.outputs import check_outputs


def add(sub) -> None:
    """Add ``plugin``, ``launch`` and ``doctor`` to the sub-command parsers ``sub``."""
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
    bench = psub.add_parser("bench", help="time getCollInfo with a 1,000-rule table (median target <= 100 ns), "
                                          "table load time and binary size")
    bench.add_argument("--json", action="store_true", help="print the record as JSON only")
    bench.add_argument("--record", type=Path, help="also write the record (JSON) here")
    bench.add_argument("--calls-per-batch", type=int, default=100, help="calls per timed batch (default 100)")
    bench.add_argument("--batches", type=int, default=20000, help="timed batches (default 20000)")
    bench.set_defaults(func=cmd_plugin_bench)

    p = sub.add_parser("launch", help="run a training command with the tuner plugin and a decision table",
                       description="Run CMD (torchrun ..., srun ..., python ...) with NCCL_TUNER_PLUGIN and "
                                   "DYNAMICCL_TUNER_TABLE set, the table's per-job NCCL settings exported (minus "
                                   "those known to corrupt data on the NCCL and transport found), its "
                                   "per-communicator settings given to every process group (a zero-code hook; a "
                                   "Megatron-LM --nccl-communicator-config-path YAML is written too) and, "
                                   "with --profile, dynamiccl's capture on. Fails open: if the plugin or the table "
                                   "cannot be used, CMD runs with NCCL's own choices and one line says why "
                                   "(--dry-run and --strict exit 2 instead). Exits with CMD's status.")
    p.add_argument("--table", help="decision table: .json, NCCL example CSV (.csv/.conf) or plugin text (.txt)")
    p.add_argument("--plugin", help="prebuilt libnccl-tuner-dynamiccl.so, with the -instrumented.so of its build "
                                    "beside it (default: build or find the cached one)")
    p.add_argument("--trace", help="a trace of the job's step: use the table only if `dynamiccl table check` passes it "
                                   "there (needs --env)")
    p.add_argument("--env", dest="env_spec", help="the environment spec of the job's cluster: its transport decides "
                                                  "which table settings are refused as unsafe (default: the RDMA "
                                                  "devices' link layer); with --trace, the cluster it is replayed on")
    p.add_argument("--profile", metavar="DIR", help="also record the job; merged into DIR/trace.parquet")
    p.add_argument("--gpus-per-node", type=int, default=0,
                   help="with --profile: for node counts (default: torchrun's local world size)")
    p.add_argument("--dry-run", action="store_true", help="print what would be set and the command; run nothing "
                                                         "(exit 2 if the table cannot be applied)")
    p.add_argument("--strict", action="store_true", help="do not fail open: if the table cannot be applied, exit 2 "
                                                        "without running CMD")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    p.set_defaults(func=cmd_launch)

    p = sub.add_parser("doctor", help="check what tuning a job here needs: NCCL, tuner ABI, plugin, table, env",
                       description="A checklist (ok / warn / missing / fail) that works without GPUs: the NCCL "
                                   "libraries and their versions, the tuner ABI each looks up, the plugin build, "
                                   "the table (--table), the environment, and what `dynamiccl launch` would set. "
                                   "Exit status 1 if a check fails.")
    p.add_argument("--table", help="decision table to check")
    p.add_argument("--trace", help="a trace of the job's step: also replay it with and without the table "
                                   "(`dynamiccl table check`; needs --env)")
    p.add_argument("--env", dest="env_spec", help="the environment spec of the job's cluster: its transport decides "
                                                  "which table settings are refused as unsafe; with --trace, the "
                                                  "cluster it is replayed on")
    p.add_argument("--plugin", help="prebuilt plugin to check (default: build or find the cached one)")
    p.add_argument("--nccl", action="append", default=[], metavar="PATH",
                   help="an NCCL library to check besides those found (repeatable)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_doctor)


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


def cmd_plugin_check(args) -> int:
    from dynamiccl.launcher import open_checker, prepare_table, resolve_plugin

    check_outputs(args.output)
    prepared = prepare_table(args.table, open_checker(resolve_plugin(args.plugin)), args.output)
    print(f"{args.table}: the plugin's parser accepts it: {prepared.rules} rule(s), {prepared.step_lines} "
          f"step line(s)")
    print(f"  plugin text: {prepared.text_path}")
    return 0


def cmd_plugin_bench(args) -> int:
    """Run the benchmark; exit status 1 if the median misses the target."""
    from dynamiccl import atomic
    from dynamiccl.plugin.benchmark import print_table, record, run

    check_outputs(args.record)
    argv = [f"--calls-per-batch={args.calls_per_batch}", f"--batches={args.batches}"]
    argv += [f"--record={args.record}"] if args.record else []
    rec = record(run(args.calls_per_batch, args.batches), argv)
    if args.record:
        atomic.write_text(args.record, json.dumps(rec, indent=2) + "\n")
    if args.json:
        print(json.dumps(rec))
    else:
        print_table(rec)
    return 0 if rec["within_target"] else 1


def cmd_launch(args) -> int:
    from dynamiccl.launcher import launch

    return launch(wrapped_command(args.cmd), table=args.table, plugin=args.plugin, profile_dir=args.profile,
                  dry_run=args.dry_run, gpus_per_node=args.gpus_per_node, trace=args.trace,
                  env_spec=args.env_spec, strict=args.strict)


def cmd_doctor(args) -> int:
    from dynamiccl.doctor import run_doctor

    report = run_doctor(table=args.table, plugin=args.plugin, nccl=args.nccl, trace=args.trace,
                        env_spec=args.env_spec)
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        print(report.render(), end="")
    return report.exit_status
