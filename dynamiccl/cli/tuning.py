"""Tuning commands: ``dynamiccl train`` (a policy from an experiment config), ``evaluate`` (agents
against NCCL's default and the search reference), ``search`` (the best decision table for a case,
and the bounds beside it), ``headroom`` (how much a step can gain from tuning NCCL, where its
communication goes, and whether it is worth a change) and ``replay`` (one step with NCCL's choices,
and how fast)."""

from __future__ import annotations

import json
import sys
import time

from dynamiccl import schema
from dynamiccl.cli.common import add_measurements, add_parallel, add_world_params, cost_options, invocation, \
    parallelism
from dynamiccl.errors import InputError
from dynamiccl.outputs import check_outputs, claim_output_dir

# Command-line ranges, checked by argparse (one `usage` line and exit status 2 for a bad value).
STATES = schema.argument(schema.integer("--states", low=1, high=100_000))
STATE = schema.argument(schema.integer("--state", low=0, high=2**31 - 1))
STATE_OFFSET = schema.argument(schema.integer("--state-offset", low=0, high=2**31 - 1))
ONLINE_STEPS = schema.argument(schema.integer("--online-steps", low=0, high=1_000_000))
TIMESTEPS = schema.argument(schema.integer("--timesteps", low=1, high=10**12))
MAX_SWEEPS = schema.argument(schema.integer("--max-sweeps", low=0, high=1000))
RANDOM_STEPS = schema.argument(schema.integer("--random-steps", low=0, high=100_000_000))
STEP = schema.argument(schema.integer("--step", low=0, high=2**31 - 1))
NOISE_PCT = schema.argument(schema.number("--noise-pct", low=0, high=50))


def add(sub) -> None:
    """Add ``train``, ``evaluate``, ``search``, ``headroom`` and ``replay`` to the sub-command parsers ``sub``."""
    from dynamiccl.costmodel.registry import COST_MODELS, DEFAULT_COST_MODEL, cost_models_help, simulated_cost_models
    from dynamiccl.tuning.agent_registry import AGENTS

    p = sub.add_parser("train", help="train a MaskablePPO policy from an experiment config (TOML)",
                       description="Train a policy on the config's training cases. Writes policy.zip, checkpoints, "
                                   "TensorBoard logs and the training curve to the output directory.")
    p.add_argument("--config", required=True, help="experiment config, e.g. experiments/default.toml")
    p.add_argument("--output-dir", help="default: experiments/<name>/run next to the config")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in the output directory")
    p.add_argument("--timesteps", type=TIMESTEPS, help="override [train] total_timesteps (a resumed run trains "
                                                       "on to this many in all)")
    add_world_params(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="compare a policy with NCCL's default, the search reference and the baselines",
                       description="Replay held-out steps with every agent and write per-step and per-collective "
                                   "results (RESULTS.parquet and RESULTS.calls.parquet).")
    p.add_argument("--policy", help="policy.zip from `dynamiccl train`, or a decision table (.json/.csv/.conf/.txt)")
    p.add_argument("--config", help="experiment config: evaluate its held-out split; static-best is fitted "
                                    "on its training split")
    p.add_argument("--run-dir", help="with --config: the training run's directory, where its workloads are "
                                     "generated (default experiments/<name>/run)")
    p.add_argument("--split", choices=("heldout", "train"), default="heldout",
                   help="with --config: heldout (default), or train: the training cases under the held-out "
                        "dynamics states, to see how well the policy fits what it learned from")
    p.add_argument("--traces", nargs="+", help="trace files (instead of --config)")
    p.add_argument("--envs", nargs="+", help="environment specs, crossed with --traces")
    p.add_argument("--agents", default=",".join(AGENTS),
                   help=f"comma-separated agents (default all: {','.join(AGENTS)})")
    p.add_argument("--states", type=STATES, default=4, help="dynamics states per case (with --traces)")
    p.add_argument("--state-offset", type=STATE_OFFSET, default=1000, help="first dynamics state (with --traces)")
    p.add_argument("--online-steps", type=ONLINE_STEPS, default=20,
                   help="training steps the online learners get per case")
    p.add_argument("--model", default=DEFAULT_COST_MODEL, choices=list(COST_MODELS), help=cost_models_help())
    p.add_argument("-o", "--output", required=True, help="results file (.parquet)")
    p.add_argument("--json", help="also write the per-agent summary as JSON here")
    add_measurements(p)
    add_world_params(p)
    add_parallel(p, "episodes (per case, agent and state)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("search", help="search the best decision table for a case (the reference of every gain share)",
                       description="Search the decision table itself (one rule per collective, communicator shape and "
                                   "size band of the step), scoring each candidate by replaying the whole step in every "
                                   "dynamics state; write it as a table the plugin applies, and print it beside NCCL's "
                                   "default, the line-rate bound and the no-communication ceiling.")
    p.add_argument("--config", help="experiment config: search its held-out cases (--split train: its training cases)")
    p.add_argument("--split", choices=("heldout", "train"), default="heldout", help="with --config (default heldout)")
    p.add_argument("--case", help="with --config: only the cases whose label contains this text")
    p.add_argument("--run-dir", help="with --config: where its workloads are generated (default experiments/<name>/run)")
    p.add_argument("--trace", help="a trace file (instead of --config), with --env; with neither: the built-in "
                                   "case (Llama-3 8B TP2 x DP8 on h100-ib-2x8-heavy-compute)")
    p.add_argument("--env", help="environment spec name or path, with --trace")
    p.add_argument("--states", type=STATES, default=4, help="dynamics states (without --config, which has its own)")
    p.add_argument("--state-offset", type=STATE_OFFSET, default=1000, help="first dynamics state (without --config)")
    p.add_argument("--model", default=DEFAULT_COST_MODEL, choices=simulated_cost_models(),
                   help=cost_models_help(simulated_cost_models()))
    p.add_argument("--max-sweeps", type=MAX_SWEEPS, default=4, help="coordinate-descent sweeps at most (default 4)")
    p.add_argument("-o", "--output", required=True,
                   help="the table (.json/.csv/.conf/.txt) for one case; for several, a directory of <case>.json")
    p.add_argument("--json", help="also write the per-case figures as JSON here")
    add_measurements(p)
    add_world_params(p)
    add_parallel(p, "searches (one per case)")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("headroom", help="how much a step can gain from tuning NCCL, and where its communication goes",
                       description="Replay one step of a trace on a cluster with NCCL's default choices and say where "
                                   "its communication time goes (per group kind and collective: hidden behind compute, "
                                   "exposed, and the compute it slows down); search the best decision table and print "
                                   "its step time beside NCCL's default, every collective at line rate and "
                                   "communication free; end with a verdict against the run-to-run noise of a training "
                                   "step. Simulated, not measured: the cost model and NCCL version are printed.")
    p.add_argument("trace", help="a trace file: generated (`dynamiccl generate`), profiled (`dynamiccl profile`) or "
                                 "imported (`dynamiccl import ...`)")
    p.add_argument("--env", required=True, help="environment spec name or path (the cluster)")
    p.add_argument("--step", type=STEP, help="the trace step to replay (default: its last)")
    p.add_argument("--model", default=DEFAULT_COST_MODEL, choices=simulated_cost_models(),
                   help=cost_models_help(simulated_cost_models()))
    p.add_argument("--states", type=STATES, default=4, help="dynamics states the times are averaged over (default 4)")
    p.add_argument("--state-offset", type=STATE_OFFSET, default=1000, help="first dynamics state (default 1000)")
    p.add_argument("--max-sweeps", type=MAX_SWEEPS, default=4, help="the search's coordinate-descent sweeps at most "
                                                                     "(default 4)")
    p.add_argument("--noise-pct", type=NOISE_PCT, default=None,
                   help="run-to-run noise of your step time, in %% of the step (e.g. the control's drift from "
                        "`dynamiccl verify`); default 0.5, the SD of a quiet allocation's A/B/A runs")
    p.add_argument("--knobs", action="store_true",
                   help="also price each communicator setting (CTA budget, CTA policy: ncclConfig_t) one at a time, "
                        "and let the search choose them per communicator shape")
    p.add_argument("--table", help="also write the best table found here (.json/.csv/.conf/.txt)")
    p.add_argument("--json", help="also write every figure as JSON here")
    add_measurements(p)
    add_world_params(p)
    p.set_defaults(func=cmd_headroom)

    p = sub.add_parser("replay", help="replay a trace step on an environment spec with NCCL's choices",
                       description="Replay one step of a trace with NCCL's default choices on a cluster; print the "
                                   "step time and where it goes. --random-steps measures environment throughput.")
    p.add_argument("trace")
    p.add_argument("--env", required=True, help="environment spec name or path")
    p.add_argument("--state", type=STATE, default=0, help="dynamics state (seed of congestion and noise)")
    p.add_argument("--model", default=DEFAULT_COST_MODEL, choices=simulated_cost_models(),
                   help=cost_models_help(simulated_cost_models()))
    p.add_argument("--random-steps", type=RANDOM_STEPS, default=0,
                   help="also take this many environment steps with random valid actions and report steps/s")
    p.add_argument("--json", action="store_true")
    add_measurements(p)
    add_world_params(p)
    p.set_defaults(func=cmd_replay)


def cmd_train(args) -> int:
    from dataclasses import replace

    from dynamiccl.tuning.config import load_config

    config = load_config(args.config)
    if args.timesteps is not None:  # the override: train to this many, more or fewer than the config says
        raw_train = {**config.raw.get("train", {}), "total_timesteps": args.timesteps}
        config = replace(config, train=replace(config.train, total_timesteps=args.timesteps),
                         raw={**config.raw, "train": raw_train})
    output = config.run_dir(args.output_dir)
    # A failed run with a checkpoint is resumable (--resume); without one it is removed, whole.
    claim_output_dir(output, invocation(args.argv), keep=_resumable)
    from dynamiccl.tuning.train import train  # after the claim: loading torch takes seconds
    result = train(config, output, resume=args.resume)
    print(f"trained {result.timesteps:,} steps in {result.wall_s:.0f} s; policy: {output / 'policy.zip'}")
    print(f"TensorBoard: tensorboard --logdir {output / 'tensorboard'}")
    return 0


def _resumable(run_dir) -> bool:
    """Whether a stopped run holds a checkpoint (``tuning.callbacks.latest_checkpoint``'s files, each
    written atomically), globbed here because that module loads torch, which a SIGTERM may have cut."""
    return any((run_dir / "checkpoints").glob("*_steps.zip"))


def cmd_evaluate(args) -> int:
    """Evaluate the agents on the plan of ``args`` (its tasks on ``--workers`` processes or ``--ray``)
    and write the results once. Exit status 1 when a task failed twice: the other tasks' rows are
    written, with ``meta["failures"]`` naming the failed tasks and the rows they leave out."""
    import sys

    from dynamiccl import atomic
    from dynamiccl.tuning.evaluate import EvaluationPlan, failure_text, prepare_evaluation

    check_outputs(args.output, args.json)
    if args.config:
        _config_has_measurements(args)
        plan = EvaluationPlan.from_config(args.config, args.run_dir, split=args.split)
    elif args.traces and args.envs:
        plan = EvaluationPlan.from_traces(args.traces, args.envs, args.states, args.state_offset, args.model,
                                          cost_options(args, args.model))
    else:
        raise InputError("evaluate", None, "give --config, or --traces and --envs")
    names = [n.strip() for n in args.agents.split(",") if n.strip()]
    if plan.model == "live":
        _say_live_plan(plan)
    run = prepare_evaluation(plan, names, policy=args.policy, online_steps=args.online_steps,
                             parallel=parallelism(args))
    print(f"evaluate: {len(plan.cases)} case(s) x {len(plan.states)} state(s) on {run.ran_on}", file=sys.stderr)
    started = time.perf_counter()
    evaluation = run.run()
    results = evaluation.results
    results.write(args.output, command=invocation(args.argv))
    print(results.summary().to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    # Every cluster's description, not only the last case's: each names its cluster and its NCCL version.
    descriptions = results.meta.get("cost_model_descriptions") or [evaluation.cost_model]
    if args.json:
        atomic.write_text(args.json, json.dumps({"results": args.output, "summary": results.summary_by_agent(),
                                                 "cost_model": evaluation.cost_model,
                                                 "cost_model_descriptions": descriptions}, indent=1) + "\n")
    clusters = list(dict.fromkeys(results.steps["env_spec"]))
    priced_by = (evaluation.cost_model if len(clusters) == 1 else
                 f"{results.meta.get('cost_model', plan.model)} on {len(clusters)} clusters: {', '.join(clusters)}")
    print(f"wrote {args.output} and its .calls.parquet in {time.perf_counter() - started:.0f} s "
          f"(cost model: {priced_by})")
    if evaluation.failures:
        print(f"evaluate: {len(evaluation.failures)} task(s) failed twice; {args.output} lacks their rows "
              f"(listed in its metadata, key 'failures'):\n{failure_text(evaluation.failures)}", file=sys.stderr)
        return 1
    return 0


def _say_live_plan(plan) -> None:
    """Before a live evaluation starts: its worker processes, cores and buffer memory (the largest
    call of its traces is measured for real on this machine)."""
    import sys

    from dynamiccl.cli.costmodel import live_plan
    from dynamiccl.costmodel.protocol import CostModelOptions
    from dynamiccl.trace.store import Trace

    traces = sorted({case.trace for case in (*plan.cases, *plan.fit_cases)})
    largest = max(int(Trace.read(path).communication_ops["bytes_total"].max()) for path in traces)
    print(f"evaluate: live measurement of the calls of {len(traces)} trace(s) with "
          f"{live_plan(CostModelOptions().live_nprocs, largest)}", file=sys.stderr)


def _config_has_measurements(args) -> None:
    """With --config, the cost model and its measurements are the config's own.

    Raises:
        InputError: ``--measurements`` given beside ``--config``.
    """
    if args.measurements:
        raise InputError("--measurements", None, "not with --config: give the config's cost model its CSVs in "
                                                 '[experiment] (model = "measured", measurements = ["M.csv"])')


def _search_cases(args):
    """(cases, states, cost model, its options, knobs) that ``dynamiccl search`` searches: a config's split
    (with its ``knobs``), a
    trace on an environment spec, or by default ``TuningEnv``'s built-in case (Llama-3 8B TP2 x DP8 on
    two H100 nodes)."""
    from dynamiccl.tuning.cases import Case
    from dynamiccl.tuning.evaluate import EvaluationPlan

    if args.config:
        _config_has_measurements(args)
        plan = EvaluationPlan.from_config(args.config, args.run_dir, split=args.split)
        cases, states = ((plan.cases, plan.states) if args.split == "heldout" else (plan.fit_cases, plan.fit_states))
        if args.case:
            cases = tuple(c for c in cases if args.case in c.label)
            if not cases:
                raise InputError("--case", None, f"no {args.split} case of {args.config} has {args.case!r} in its label")
        return list(cases), list(states), plan.model, plan.cost_options, plan.knobs
    states = list(range(args.state_offset, args.state_offset + args.states))
    if args.trace and args.env:
        return [Case(args.trace, args.env)], states, args.model, cost_options(args, args.model), False
    if args.trace or args.env:
        raise InputError("--trace" if not args.trace else "--env", None, "give --trace and --env together")
    from dynamiccl.tuning.env import default_cases

    return default_cases(), states, args.model, cost_options(args, args.model), False


def cmd_search(args) -> int:
    """``dynamiccl search``: one sweep task per case (:class:`~dynamiccl.tuning.search.SearchJob`) where
    ``--workers``/``--ray`` say; every table and the JSON written once at the end. Exit status 1 when a
    case failed twice (the others' tables and rows are written)."""
    from pathlib import Path

    from dynamiccl import atomic
    from dynamiccl import table as table_io
    from dynamiccl.sweep import Task, run_sweep
    from dynamiccl.tuning.cases import check_case
    from dynamiccl.tuning.search import SearchJob, search_report_text

    output = Path(args.output)
    check_outputs(args.json)
    if output.suffix.lower() in table_io.FORMATS:
        check_outputs(output)
    else:
        claim_output_dir(output, invocation(args.argv))
    cases, states, model, options, knobs = _search_cases(args)
    if len(cases) == 1 and output.suffix.lower() in table_io.FORMATS:
        destinations = [output]
    elif output.suffix.lower() in table_io.FORMATS:
        raise InputError("--output", None, f"{len(cases)} cases give {len(cases)} tables: give a directory, "
                         "or pick one case with --case")
    else:
        destinations = [output / f"{case.label}.json" for case in cases]
    calls = [len(check_case(case)[1].tunable_calls) for case in cases]  # bad input is refused here, before any search
    # The biggest steps first, so that no worker starts the longest search last (results come back in case order).
    tasks = sorted((Task(i, case.label, case) for i, case in enumerate(cases)), key=lambda task: -calls[task.key])
    job = SearchJob(model, options, knobs, tuple(states), args.max_sweeps)
    outcome = run_sweep(job, tasks, parallelism(args), desc="search")
    rows = []
    for i, found in outcome.results.items():
        table_io.save(found.table, destinations[i])
        rows.append(found.row(str(destinations[i])))
    if rows:
        print(search_report_text(rows))
    if args.json:
        failures = [{"case": f.label, "attempts": f.attempts, "error": f.error} for f in outcome.failures]
        atomic.write_text(args.json, json.dumps({"cost_model": model, "cases": rows, "failures": failures},
                                                indent=1) + "\n")
    print(f"searched {len(rows)} of {len(cases)} case(s) {outcome.ran_on()}")
    if rows:
        print("wrote " + ", ".join(row["table"] for row in rows))
    if outcome.failures:
        print(f"search: {len(outcome.failures)} case(s) failed, no table written for them:\n"
              + outcome.failure_text(), file=sys.stderr)
        return 1
    return 0


def cmd_headroom(args) -> int:
    from tqdm.auto import tqdm

    from dynamiccl import atomic
    from dynamiccl import table as table_io
    from dynamiccl.tuning.cases import Case
    from dynamiccl.tuning.evaluate import NOTHING_TO_GAIN
    from dynamiccl.tuning.headroom import headroom_case, headroom_text

    check_outputs(args.json, args.table)
    options = cost_options(args, args.model)
    if args.table:
        table_io.format_of(args.table)  # a bad extension fails before the search
    noise = NOTHING_TO_GAIN if args.noise_pct is None else args.noise_pct / 100.0
    case = Case(args.trace, args.env, args.step)
    states = list(range(args.state_offset, args.state_offset + args.states))
    # The search is most of the work: a bar once it has taken more than a moment.
    with tqdm(desc=f"headroom search {case.label}", unit="key", leave=False, delay=2.0) as bar:
        result = headroom_case(case, states, model=args.model, options=options, max_sweeps=args.max_sweeps, noise=noise,
                               knobs=args.knobs, progress=bar)
    print(headroom_text(result))
    if args.table:
        table_io.save(result.table, args.table)
        print(f"wrote the best table found to {args.table}")
    if args.json:
        atomic.write_text(args.json, schema.json_text(result.to_json()))
    return 0


def cmd_replay(args) -> int:
    from dynamiccl.tuning.cases import Case
    from dynamiccl.tuning.throughput import env_steps_per_s, replay_case

    case = Case(args.trace, args.env)
    options = cost_options(args, args.model)
    figures = replay_case(case, args.state, args.model, options)
    out = figures.to_json()
    if args.random_steps > 0:
        out["env_steps_per_s"] = env_steps_per_s(case, args.random_steps, args.model, cost_options=options)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{args.trace} on {args.env} (state {args.state}); {figures.cost_model}")
    print(f"  {figures.ops:,} ops, {figures.calls:,} calls of which {figures.decisions:,} tunable")
    print(f"  step time {figures.step_time_us / 1e3:,.1f} ms with NCCL's choices; busiest rank's compute alone "
          f"{figures.busiest_rank_compute_us / 1e3:,.1f} ms")
    print(f"  compiled and costed in {figures.compile_and_cost_s:.2f} s, replayed in {figures.replay_s:.2f} s")
    if "env_steps_per_s" in out:
        print(f"  environment: {out['env_steps_per_s']:,.0f} steps/s with random valid actions")
    return 0
