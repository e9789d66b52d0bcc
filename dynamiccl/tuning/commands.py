"""The tuning commands: ``dynamiccl train``, ``evaluate``, ``export --policy`` and ``replay``."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

from dynamiccl.errors import InputError
from dynamiccl.tuning.agent_registry import AGENTS

def add_commands(sub) -> None:
    from dynamiccl.costmodel.registry import COST_MODELS, DEFAULT_COST_MODEL, cost_models_help, simulated_cost_models

    p = sub.add_parser("train", help="train a MaskablePPO policy from an experiment config (TOML)",
                       description="Train a policy on the config's training cases. Writes policy.zip, checkpoints, "
                                   "TensorBoard logs and the training curve to the output directory.")
    p.add_argument("--config", required=True, help="experiment config, e.g. experiments/default.toml")
    p.add_argument("--output-dir", help="default: experiments/<name>/run next to the config")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in the output directory")
    p.add_argument("--timesteps", type=int, help="override [train] total_timesteps")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="compare a policy with NCCL's default, the oracle and the baselines",
                       description="Replay held-out steps with every agent and write per-step and per-collective "
                                   "results (RESULTS.parquet and RESULTS.calls.parquet).")
    p.add_argument("--policy", help="policy.zip from `dynamiccl train`, or a decision table (.json/.csv/.conf/.txt)")
    p.add_argument("--config", help="experiment config: evaluate its held-out split; static-best is fitted "
                                    "on its training split")
    p.add_argument("--run-dir", help="with --config: the training run's directory, where its workloads are "
                                     "generated (default experiments/<name>/run)")
    p.add_argument("--traces", nargs="+", help="trace files (instead of --config)")
    p.add_argument("--envs", nargs="+", help="environment specs, crossed with --traces")
    p.add_argument("--agents", default=",".join(AGENTS),
                   help=f"comma-separated agents (default all: {','.join(AGENTS)})")
    p.add_argument("--states", type=int, default=4, help="dynamics states per case (with --traces)")
    p.add_argument("--state-offset", type=int, default=1000, help="first dynamics state (with --traces)")
    p.add_argument("--online-steps", type=int, default=20, help="training steps the online learners get per case")
    p.add_argument("--model", default=DEFAULT_COST_MODEL, choices=list(COST_MODELS), help=cost_models_help())
    p.add_argument("-o", "--output", required=True, help="results file (.parquet)")
    p.add_argument("--json", help="also write the per-agent summary as JSON here")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("replay", help="replay a trace step on an environment spec with NCCL's choices",
                       description="Replay one step of a trace with NCCL's default choices on a cluster; print the "
                                   "step time and where it goes. --random-steps measures environment throughput.")
    p.add_argument("trace")
    p.add_argument("--env", required=True, help="environment spec name or path")
    p.add_argument("--state", type=int, default=0, help="dynamics state (seed of congestion and noise)")
    p.add_argument("--model", default=DEFAULT_COST_MODEL, choices=simulated_cost_models(),
                   help=cost_models_help(simulated_cost_models()))
    p.add_argument("--random-steps", type=int, default=0,
                   help="also take this many environment steps with random valid actions and report steps/s")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_replay)


def cmd_train(args) -> int:
    from dynamiccl.tuning.config import load_config
    from dynamiccl.tuning.train import train

    config = load_config(args.config)
    output = Path(args.output_dir) if args.output_dir else config.default_output_dir() / "run"
    result = train(config, output, resume=args.resume, max_timesteps=args.timesteps)
    print(f"trained {result.timesteps:,} steps in {result.wall_s:.0f} s; policy: {output / 'policy.zip'}")
    print(f"TensorBoard: tensorboard --logdir {output / 'tensorboard'}")
    return 0


def cmd_evaluate(args) -> int:
    from dynamiccl.tuning.cases import Case
    from dynamiccl.tuning.env import TuningEnv
    from dynamiccl.tuning.agent_registry import AgentInputs, make_agents
    from dynamiccl.tuning.evaluate import evaluate

    names = [n.strip() for n in args.agents.split(",") if n.strip()]
    if "policy" in names and not args.policy:
        names.remove("policy")
    if args.config:
        from dynamiccl.tuning.config import load_config

        config = load_config(args.config)
        where = Path(args.run_dir) if args.run_dir else config.default_output_dir() / "run"
        cases = config.heldout_cases(where)
        if not cases:
            raise InputError(args.config, "heldout.cases", "the config has no held-out cases to evaluate")
        states = list(range(config.heldout.state_offset, config.heldout.state_offset + config.heldout.states))
        fit_cases, fit_states = config.train_cases(where), list(range(config.train.states))
        model = config.model
    else:
        if not args.traces or not args.envs:
            raise InputError("evaluate", None, "give --config, or --traces and --envs")
        cases = [Case(t, e) for t in args.traces for e in args.envs]
        states = list(range(args.state_offset, args.state_offset + args.states))
        fit_cases, fit_states = cases, list(range(args.states))  # in-sample cases, other dynamics states
        model = args.model
    env = TuningEnv(cases, model=model)
    fit = lambda: (TuningEnv(fit_cases, model=model), [(c, s) for c in range(len(fit_cases)) for s in fit_states])  # noqa: E731
    agents = make_agents(names, AgentInputs(policy=args.policy, fit=fit))
    started = time.perf_counter()
    results = evaluate(agents, env, states, online_steps=args.online_steps)
    results.write(args.output, command="dynamiccl " + shlex.join(args.argv))
    summary = results.summary()
    print(summary.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    if args.json:
        from dynamiccl import atomic

        rows = {row["agent"]: {k: None if isinstance(v, float) and v != v else v  # NaN is not JSON
                               for k, v in row.items() if k != "agent"} for row in summary.to_dict("records")}
        atomic.write_text(args.json, json.dumps({"results": args.output, "summary": rows,
                                                 "cost_model": env.simulator.case.costs.description}, indent=1) + "\n")
    print(f"wrote {args.output} and its .calls.parquet in {time.perf_counter() - started:.0f} s "
          f"(cost model: {env.simulator.case.costs.description})")
    return 0


def cmd_replay(args) -> int:
    import numpy as np

    from dynamiccl.tuning.cases import Case, load_case, new_replay
    from dynamiccl.tuning.env import TuningEnv

    started = time.perf_counter()
    loaded = load_case(Case(args.trace, args.env), args.model)
    compiled_s = time.perf_counter() - started
    started = time.perf_counter()
    replay = new_replay(loaded, args.state)
    step_us = replay.run()
    replay_s = time.perf_counter() - started
    program = loaded.program
    compute_us = max(sum(program.op_base_us[g] for g in chain) for chain in program.compute_chain)
    out = {"trace": args.trace, "env": args.env, "state": args.state, "cost_model": loaded.costs.description,
           "nccl_version": loaded.env.nccl_version, "ops": program.num_ops, "calls": program.num_calls,
           "decisions": len(program.tunable_calls), "step_time_us": step_us,
           "busiest_rank_compute_us": compute_us, "compile_and_cost_s": compiled_s, "replay_s": replay_s,
           "replays_per_s": 1.0 / replay_s if replay_s > 0 else float("inf")}
    if args.random_steps > 0:
        env = TuningEnv([Case(args.trace, args.env)], model=args.model)
        rng = np.random.default_rng(0)
        env.reset(seed=0)
        # The random agent: a uniform draw among the valid actions of env.action_masks(). It keeps
        # its own cost out of the figure: uniform numbers drawn in blocks, the valid actions of each
        # distinct mask listed once.
        valid_of: dict[bytes, list[int]] = {}
        draws: list[float] = []
        steps, started = 0, time.perf_counter()
        while steps < args.random_steps:
            mask = env.action_masks()
            valid = valid_of.get(mask.tobytes())
            if valid is None:
                valid = valid_of[mask.tobytes()] = np.flatnonzero(mask).tolist()
            if not draws:
                draws = rng.random(4096).tolist()
            _, _, terminated, _, _ = env.step(valid[int(draws.pop() * len(valid))])
            steps += 1
            if terminated:
                env.reset()
        out["env_steps_per_s"] = steps / (time.perf_counter() - started)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{args.trace} on {args.env} (state {args.state}); {out['cost_model']}")
    print(f"  {out['ops']:,} ops, {out['calls']:,} calls of which {out['decisions']:,} tunable")
    print(f"  step time {step_us / 1e3:,.1f} ms with NCCL's choices; busiest rank's compute alone "
          f"{compute_us / 1e3:,.1f} ms")
    print(f"  compiled and costed in {compiled_s:.2f} s, replayed in {replay_s:.2f} s")
    if "env_steps_per_s" in out:
        print(f"  environment: {out['env_steps_per_s']:,.0f} steps/s with random valid actions")
    return 0


def add_policy_export(parser) -> None:
    """Options of ``dynamiccl export --policy`` (the trace formats share the command)."""
    parser.add_argument("--policy", help="policy.zip to export as a decision table (-o table.json)")
    parser.add_argument("--cases-config", help="experiment config whose train and held-out cases give the calls "
                                               "the table must reproduce (default: the policy's training config)")
    parser.add_argument("--env", help="environment spec the table is for (masks depend on the cluster); "
                                      "default: every env of the config")
    parser.add_argument("--nccl-csv", help="also write NVIDIA's example-plugin CSV (lossy: no position rules)")
    parser.add_argument("--run-dir", help="the training run's directory, where the config's workloads are "
                                          "generated (default experiments/<name>/run)")


def export_policy(args) -> int:
    """``dynamiccl export --policy P -o table.json [--nccl-csv table.csv]``."""
    from dynamiccl.table import save
    from dynamiccl.table.policy_export import export_policy_tables

    exported = export_policy_tables(args.policy, cases_config=args.cases_config, env=args.env, run_dir=args.run_dir)
    save(exported.table, args.output)
    for note in exported.notes:
        print(f"note: {note}")
    print(f"wrote {args.output}: {len(exported.table.rules)} rules reproducing the policy on {exported.calls:,} calls "
          f"of {exported.cases} case(s)")
    if args.nccl_csv:
        save(exported.csv_table, args.nccl_csv)
        print(f"wrote {args.nccl_csv}: {len(exported.csv_table.rules)} rules for NVIDIA's example plugin (lossy: no "
              "position or explicit-default rules)")
    return 0
