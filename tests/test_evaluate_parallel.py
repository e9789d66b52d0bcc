"""``dynamiccl evaluate`` fanned out (dynamiccl.sweep): the same rows, in the same order, with the
same metadata in this process and on a pool of worker processes; a task that fails twice is reported
with its case while every other task's rows are kept and written (exit status 1)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from dynamiccl.cli import main
from dynamiccl.sweep import Parallelism
from dynamiccl.tuning.agents import NcclDefaultAgent, RandomAgent
from dynamiccl.tuning.env import TuningEnv
from dynamiccl.tuning.evaluate import EvaluationFailed, Results, evaluate, prepare_evaluation, run_episode
from evaluate_harness import (
    AGENTS, ONLINE_STEPS, POLICY, TRACES, FailsOn, SearchFailsOn, assert_same_results, small_evaluation, small_plan,
)


def test_a_pool_of_two_gives_what_this_process_gives_row_for_row():
    here = small_evaluation(Parallelism(workers=1))
    pool = small_evaluation(Parallelism(workers=2))
    assert (here.ran_on, pool.ran_on) == ("this process", "2 local worker processes")
    assert not here.failures and not pool.failures and "failures" not in pool.results.meta
    assert_same_results(pool.results, here.results)
    assert pool.cost_model == here.cost_model and "dgx-h100" in pool.cost_model
    # Left to its default (every core), an evaluation this small runs here: a pool would cost more.
    default = prepare_evaluation(small_plan(), AGENTS, policy=POLICY, online_steps=ONLINE_STEPS)
    assert default.parallel == Parallelism(workers=1) and default.ran_on.startswith("this process (a small evaluation")

    # Today's row order: per case, the search, the offline agents, then the online one.
    steps = pool.results.steps
    cases = list(pd.unique(steps["case"]))
    assert len(cases) == 2
    first = steps[steps["case"] == cases[0]]
    assert list(pd.unique(first["agent"])) == ["search", "nccl-default", "random", "greedy-per-call", "static-best",
                                               "policy", "ucb-bandit"]
    assert list(first["state"][first["agent"] == "random"]) == [1000, 1001]
    assert list(first["iteration"][first["agent"] == "ucb-bandit"]) == list(range(ONLINE_STEPS))
    assert pool.results.meta["agents"] == ["search", *AGENTS]
    assert set(pool.results.meta["search"]) == set(cases) == set(pool.results.meta["case_layout"])
    # Every row but the search's own is relative to its case's search, finished in the parent.
    search = steps[steps["agent"] == "search"].set_index(["case", "state"])["step_time_us"]
    offline = steps[steps["agent"] != "search"]
    assert (offline["search_step_time_us"].to_numpy() ==
            search.loc[list(zip(offline["case"], offline["state"]))].to_numpy()).all()

    # A random episode is the same whatever ran before it: here, alone in a fresh environment.
    alone = run_episode(TuningEnv([(TRACES[1], "dgx-h100")]), RandomAgent(0), 0, 1001)["step"]
    row = steps[(steps["agent"] == "random") & (steps["case"] == alone["case"]) & (steps["state"] == 1001)]
    assert row["step_time_us"].item() == alone["step_time_us"]


def test_failed_tasks_are_retried_reported_and_the_rest_written(tmp_path, capsys, monkeypatch):
    from dynamiccl.tuning import agent_registry

    first, second = (f"{Path(trace).stem}@dgx-h100" for trace in TRACES)
    # The search fails on the second case, the agent "fails-on" on the first, in the worker processes.
    monkeypatch.setitem(agent_registry.AGENTS, "search",
                        agent_registry.AgentEntry(lambda inputs: SearchFailsOn(second), "test search"))
    monkeypatch.setitem(agent_registry.AGENTS, "fails-on",
                        agent_registry.AgentEntry(lambda inputs: FailsOn(first), "test agent"))
    out, summary = tmp_path / "results.parquet", tmp_path / "summary.json"
    status = main(["evaluate", "--traces", *TRACES, "--envs", "dgx-h100", "--states", "1", "--agents",
                   "search,nccl-default,fails-on", "--workers", "2", "-o", str(out), "--json", str(summary)])
    said = capsys.readouterr()
    assert status == 1
    assert "2 case(s) x 1 state(s) on 2 local worker processes" in said.err
    assert f"search on {second} (states 1000) failed (attempt 1 of 2: RuntimeError: cannot search" in said.err
    assert "retrying once" in said.err and "2 task(s) failed twice" in said.err
    assert f"fails-on on {first}, state 1000: failed 2 times (RuntimeError: cannot act on {first}" in said.err
    assert f"missing: the search rows of case {second} (its other agents' rows are kept" in said.err

    results = Results.read(out)  # written once, with every other task's rows
    steps = results.steps
    assert list(zip(steps["case"], steps["agent"])) == [(first, "search"), (first, "nccl-default"),
                                                        (second, "nccl-default"), (second, "fails-on")]
    assert steps["search_step_time_us"].notna().tolist() == [True, True, False, False]
    failures = results.meta["failures"]
    assert [(f["case"], f["agent"], f["state"], f["attempts"]) for f in failures] == [
        (first, "fails-on", 1000, 2), (second, "search", None, 2)]
    assert set(results.meta["search"]) == {first} and results.meta["cases"] == [first, second]
    assert summary.is_file()
    # The report reads it, and says what is missing.
    assert main(["report", str(out), "-o", str(tmp_path / "report")]) == 0
    headline = (tmp_path / "report" / "summary.md").read_text()
    assert f"incomplete: 2 evaluation task(s) failed twice, so these results lack fails-on on {first}" in headline
    assert f"search reference: missing on {second} (its task failed)" in headline


def test_evaluate_in_this_process_raises_with_the_other_rows():
    env = TuningEnv([(TRACES[0], "dgx-h100"), (TRACES[1], "dgx-h100")])
    with pytest.raises(EvaluationFailed, match="fails-on on llama3-8b_tp1-pp1-dp8@dgx-h100, state 0") as caught:
        evaluate([NcclDefaultAgent(), FailsOn("llama3-8b_tp1-pp1-dp8@dgx-h100")], env, [0], progress=False)
    steps = caught.value.results.steps
    assert len(steps) == 5 and set(steps[steps["agent"] == "fails-on"]["case"]) == {"ref-pp2-dp2@dgx-h100"}
    [failure] = caught.value.failures
    assert (failure["case"], failure["agent"], failure["state"]) == ("llama3-8b_tp1-pp1-dp8@dgx-h100", "fails-on", 0)
    assert "RuntimeError: cannot act on" in failure["error"]
