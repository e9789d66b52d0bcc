"""How fast a case compiles, replays and steps: the figures of ``dynamiccl replay``.

:func:`replay_case` compiles and costs a (trace, environment spec) case, replays one step of it with
NCCL's own choice for every call, and reports the step time, the busiest rank's compute and how long
each stage took (``dynamiccl bench replay-405b`` records ``replays_per_s``).
:func:`env_steps_per_s` measures the tuning environment itself: ``TuningEnv.step`` calls per second
with uniformly random valid actions (``dynamiccl bench env-steps``), the number that bounds training
speed. :func:`training_timesteps_per_s` measures training itself, with ``n_envs`` environments;
``python -m dynamiccl.tuning.throughput --config FILE`` trains a config with one environment and
with two and prints both rates and their ratio as JSON (``dynamiccl bench train-n-envs``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from dynamiccl.costmodel.protocol import CostModelOptions
from dynamiccl.costmodel.registry import DEFAULT_COST_MODEL
from dynamiccl.tuning.cases import Case, load_case, new_replay
from dynamiccl.tuning.config import ExperimentConfig, load_config
from dynamiccl.tuning.env import TuningEnv

RANDOM_BLOCK = 4096  # uniform numbers drawn per numpy call by the throughput loop's random agent


@dataclass(frozen=True)
class ReplayFigures:
    """One step of a case replayed with NCCL's choices (times in µs, durations in s).

    ``cost_model``: what priced the calls (the cost model's one-line description);
    ``ops``/``calls``/``decisions``: the compiled step's ops, communication calls and the calls
    NCCL's tuner is asked about; ``step_time_us``: the step's makespan; ``busiest_rank_compute_us``:
    the compute of the rank with the most, alone (the step time if communication were free and
    hidden); ``compile_and_cost_s``: reading, compiling and costing the case (0 when this process
    had it cached); ``replay_s``: the replay alone.
    """

    case: Case
    state: int
    cost_model: str
    nccl_version: str
    ops: int
    calls: int
    decisions: int
    step_time_us: float
    busiest_rank_compute_us: float
    compile_and_cost_s: float
    replay_s: float

    @property
    def replays_per_s(self) -> float:
        """Replays of the step per second (inf if the replay took no measurable time)."""
        return 1.0 / self.replay_s if self.replay_s > 0 else float("inf")

    def to_json(self) -> dict:
        """The figures as ``dynamiccl replay --json`` prints them (the case as ``trace`` and ``env``)."""
        return {"trace": self.case.trace, "env": self.case.env, "state": self.state, "cost_model": self.cost_model,
                "nccl_version": self.nccl_version, "ops": self.ops, "calls": self.calls,
                "decisions": self.decisions, "step_time_us": self.step_time_us,
                "busiest_rank_compute_us": self.busiest_rank_compute_us,
                "compile_and_cost_s": self.compile_and_cost_s, "replay_s": self.replay_s,
                "replays_per_s": self.replays_per_s}


def replay_case(case: Case, state: int = 0, model: str = DEFAULT_COST_MODEL,
                cost_options: CostModelOptions | None = None) -> ReplayFigures:
    """Compile and cost ``case`` under cost model ``model`` (made with ``cost_options``), then replay
    it once with NCCL's choice for every call under dynamics ``state``.

    Raises:
        InputError: an unreadable trace or spec, an unknown cost model, or a step without tunable
            calls (see :func:`~dynamiccl.tuning.cases.load_case`).
    """
    started = time.perf_counter()
    loaded = load_case(case, model, cost_options)
    compiled_s = time.perf_counter() - started
    started = time.perf_counter()
    replay = new_replay(loaded, state)
    step_us = replay.run()
    replay_s = time.perf_counter() - started  # before the replay is freed: freeing it is not replaying
    program = loaded.program
    return ReplayFigures(case, state, loaded.costs.description, loaded.env.nccl_version, program.num_ops,
                         program.num_calls, len(program.tunable_calls), step_us, program.busiest_rank_compute_us(),
                         compiled_s, replay_s)


class _UniformValidActions:
    """A uniform draw among the valid actions of ``env.action_masks()``, from ``np.random.default_rng(seed)``.

    Not :class:`~dynamiccl.tuning.agents.RandomAgent`: a numpy ``choice`` per call would cost more
    than the step being measured. This one keeps its own cost out of the figure: uniform numbers
    are drawn in blocks of ``RANDOM_BLOCK``, and the valid actions of each distinct mask listed once.
    """

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.valid_of: dict[bytes, list[int]] = {}
        self.draws: list[float] = []

    def act(self, mask: np.ndarray) -> int:
        key = mask.tobytes()
        valid = self.valid_of.get(key)
        if valid is None:
            valid = self.valid_of[key] = np.flatnonzero(mask).tolist()
        if not self.draws:
            self.draws = self.rng.random(RANDOM_BLOCK).tolist()
        return valid[int(self.draws.pop() * len(valid))]


def env_steps_per_s(case: Case, steps: int, model: str = DEFAULT_COST_MODEL, seed: int = 0,
                    cost_options: CostModelOptions | None = None, knobs: bool = False) -> float:
    """``TuningEnv.step`` calls per second over ``steps`` steps on ``case``, each with a uniformly
    random valid action (seeded by ``seed``); episodes restart as they end. Compiling and costing
    the case, and the first reset, are not timed. ``knobs``: ``TuningEnv(knobs=True)`` (its
    communicator decisions are steps too).

    Raises:
        InputError: as :func:`replay_case`.
        ValueError: ``steps`` < 1.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    env = TuningEnv([case], model=model, cost_options=cost_options, knobs=knobs)
    agent = _UniformValidActions(seed)
    env.reset(seed=seed)
    taken, started = 0, time.perf_counter()
    while taken < steps:
        _, _, terminated, _, _ = env.step(agent.act(env.action_masks()))
        taken += 1
        if terminated:
            env.reset()
    return taken / (time.perf_counter() - started)


def training_timesteps_per_s(config: ExperimentConfig, n_envs: int, timesteps: int,
                             output_dir: str | os.PathLike) -> float:
    """Timesteps per second of training ``config`` with ``[train] n_envs`` set to ``n_envs`` for
    ``timesteps`` timesteps (rounded up to whole rollouts) into the fresh directory ``output_dir``:
    :attr:`~dynamiccl.tuning.train.TrainResult.timesteps_per_s`, i.e. rollouts and updates, not
    starting the workers. No checkpoint is taken before the end.

    Raises:
        InputError: as :func:`~dynamiccl.tuning.train.train`; ``batch_size`` above a rollout of
            ``n_steps * n_envs`` decisions.
        ValueError: ``n_envs`` or ``timesteps`` < 1.
    """
    from dynamiccl import schema
    from dynamiccl.tuning.train import train  # torch and SB3: only when training

    if n_envs < 1 or timesteps < 1:
        raise ValueError(f"n_envs and timesteps must be >= 1, got {n_envs}, {timesteps}")
    t = config.train
    if t.batch_size > t.n_steps * n_envs:
        raise schema.expected(config.source, "train.batch_size", f"at most train.n_steps * {n_envs} environments "
                                                                 f"({t.n_steps * n_envs})", t.batch_size)
    config = replace(config, train=replace(t, n_envs=n_envs, total_timesteps=timesteps, checkpoint_every=timesteps))
    return train(config, output_dir, progress=False).timesteps_per_s


def main(argv: list[str] | None = None) -> int:
    """``python -m dynamiccl.tuning.throughput --config FILE [--timesteps N] [--n-envs N]``: train
    the config with one environment and with ``--n-envs``, one after the other in this process,
    and print ``{"timesteps_per_s_1", "timesteps_per_s_<N>", "ratio", ...}`` as JSON."""
    parser = argparse.ArgumentParser(prog="python -m dynamiccl.tuning.throughput",
                                     description="Training throughput with one environment and with N (SubprocVecEnv "
                                                 "workers): timesteps per second of each and their ratio, as JSON.")
    parser.add_argument("--config", required=True, help="an experiment config (its [train] cases and hyperparameters)")
    parser.add_argument("--timesteps", type=int, default=8192, help="timesteps each run trains (default 8192)")
    parser.add_argument("--n-envs", type=int, default=2, help="environments of the second run (default 2)")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n_envs in (1, args.n_envs):
            print(f"training {args.timesteps} timesteps with n_envs = {n_envs}", file=sys.stderr, flush=True)
            rates[n_envs] = training_timesteps_per_s(config, n_envs, args.timesteps, Path(tmp) / f"n{n_envs}")
    load_1, load_5, _ = os.getloadavg()
    print(json.dumps({"config": args.config, "timesteps": args.timesteps, "n_envs": args.n_envs,
                      "timesteps_per_s_1": rates[1], f"timesteps_per_s_{args.n_envs}": rates[args.n_envs],
                      "ratio": rates[args.n_envs] / rates[1], "cpu_count": os.cpu_count(),
                      "load_average_1min_5min": [load_1, load_5]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
