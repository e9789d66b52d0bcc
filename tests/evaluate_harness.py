"""A small evaluation for the tests of ``dynamiccl evaluate``'s fan-out (dynamiccl.sweep): two shipped
traces on dgx-h100 under two dynamics states, every kind of agent (the search reference, the
baselines, static-best fitted offline, an online learner, the shipped default policy). It runs in a
few seconds in one process. ``small_evaluation(Parallelism(...))`` runs it anywhere -- this process,
a local pool, a Ray cluster -- and ``assert_same_results`` says whether two runs agree row for row."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dynamiccl.tuning.agents import Agent, SearchAgent
from dynamiccl.tuning.evaluate import Evaluation, EvaluationPlan, Results, evaluate_plan, meta_without_timing

REPOSITORY = Path(__file__).resolve().parents[1]
# Absolute: a worker (a Ray node's included) finds them wherever it starts.
TRACES = [str(REPOSITORY / "traces/ref-pp2-dp2.parquet"), str(REPOSITORY / "traces/llama3-8b_tp1-pp1-dp8.parquet")]
POLICY = str(REPOSITORY / "experiments/default/run/policy.zip")
AGENTS = ("nccl-default", "random", "greedy-per-call", "static-best", "ucb-bandit", "policy")
ONLINE_STEPS = 3


def small_plan() -> EvaluationPlan:
    """Both traces on dgx-h100 under states 1000 and 1001; static-best fitted on states 0 and 1."""
    return EvaluationPlan.from_traces(TRACES, ["dgx-h100"], states=2)


def small_evaluation(parallel) -> Evaluation:
    """The small plan's evaluation, its tasks run where ``parallel`` (a ``dynamiccl.sweep.Parallelism``) says."""
    return evaluate_plan(small_plan(), AGENTS, policy=POLICY, online_steps=ONLINE_STEPS, progress=False,
                         parallel=parallel)


def assert_same_results(got: Results, expected: Results) -> None:
    """The same ``steps`` and ``calls`` frames, row for row, and the same metadata but for timing."""
    pd.testing.assert_frame_equal(got.steps, expected.steps)
    pd.testing.assert_frame_equal(got.calls, expected.calls)
    assert meta_without_timing(got.meta) == meta_without_timing(expected.meta)


class FailsOn(Agent):
    """NCCL's default, but raises on the case ``label``: a task that fails wherever it runs (a module-level
    class, so that a worker process, whose ``sys.path`` is this one's, unpickles it)."""

    name = "fails-on"

    def __init__(self, label: str) -> None:
        self.label = label

    def act(self, env, obs, mask) -> int:
        if env.simulator.case.case.label == self.label:
            raise RuntimeError(f"cannot act on {self.label}")
        return 0


class SearchFailsOn(SearchAgent):
    """The search reference, but its search raises on the case ``label``."""

    def __init__(self, label: str) -> None:
        super().__init__()
        self.label = label

    def begin_episode(self, env) -> None:
        if env.simulator.case.case.label == self.label:
            raise RuntimeError(f"cannot search {self.label}")
        super().begin_episode(env)
