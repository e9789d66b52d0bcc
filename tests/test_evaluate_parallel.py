"""``dynamiccl evaluate`` fanned out (dynamiccl.sweep): the same rows, in the same order, with the
same metadata in this process and on a pool of worker processes; a task that fails twice is reported
with its case while every other task's rows are kept and written (exit status 1)."""

from __future__ import annotations

import pandas as pd
import pytest

from dynamiccl.cli import main
from dynamiccl.sweep import Parallelism
from dynamiccl.tuning.agents import Agent, NcclDefaultAgent, RandomAgent
from dynamiccl.tuning.env import TuningEnv
from dynamiccl.tuning.evaluate import EvaluationFailed, Results, evaluate, run_episode
from evaluate_harness import AGENTS, ONLINE_STEPS, TRACES, assert_same_results, small_evaluation


def test_a_pool_of_two_gives_what_this_process_gives_row_for_row():
    here = small_evaluation(Parallelism(workers=1))
    pool = small_evaluation(Parallelism(workers=2))
    assert (here.ran_on, pool.ran_on) == ("this process", "2 local worker processes")
    assert not here.failures and not pool.failures and "failures" not in pool.results.meta
    assert_same_results(pool.results, here.results)
    assert pool.cost_model == here.cost_model and "dgx-h100" in pool.cost_model

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


def test_a_failing_case_is_retried_reported_and_the_rest_written(tmp_path, capsys):
    bad = tmp_path / "damaged.parquet"
    bad.write_bytes(b"PAR1 not a trace")
    out, summary = tmp_path / "results.parquet", tmp_path / "summary.json"
    status = main(["evaluate", "--traces", TRACES[0], str(bad), "--envs", "dgx-h100", "--states", "1",
                   "--agents", "nccl-default,greedy-per-call", "--workers", "2", "-o", str(out), "--json", str(summary)])
    said = capsys.readouterr()
    assert status == 1
    assert "on 2 local worker processes" in said.err
    assert "search on damaged@dgx-h100 (states 1000) failed (attempt 1 of 2" in said.err and "retrying once" in said.err
    assert "3 task(s) failed twice" in said.err
    assert "nccl-default on damaged@dgx-h100, state 1000: failed 2 times" in said.err
    assert "missing: every row of case damaged@dgx-h100" in said.err

    results = Results.read(out)  # written once, with every other task's rows
    assert set(results.steps["case"]) == {"ref-pp2-dp2@dgx-h100"}
    assert list(results.steps["agent"]) == ["search", "nccl-default", "greedy-per-call"]
    assert results.steps["search_step_time_us"].notna().all()  # its case's search ran
    failures = results.meta["failures"]
    assert [(f["case"], f["agent"], f["state"]) for f in failures] == [
        ("damaged@dgx-h100", "search", None), ("damaged@dgx-h100", "nccl-default", 1000),
        ("damaged@dgx-h100", "greedy-per-call", 1000)]
    assert all(f["attempts"] == 2 and "damaged.parquet" in f["error"] for f in failures)
    assert results.meta["cases"] == ["ref-pp2-dp2@dgx-h100", "damaged@dgx-h100"]
    assert summary.is_file()
    # The report reads it, and says what is missing.
    assert main(["report", str(out), "-o", str(tmp_path / "report")]) == 0
    headline = (tmp_path / "report" / "summary.md").read_text()
    assert "incomplete: 3 evaluation task(s) failed twice, so these results lack every row of case damaged" in headline


class FailsOn(Agent):
    """NCCL's default, but raises on the case ``label``."""

    name = "fails-on"

    def __init__(self, label: str) -> None:
        self.label = label

    def act(self, env, obs, mask) -> int:
        if env.simulator.case.case.label == self.label:
            raise RuntimeError(f"cannot act on {self.label}")
        return 0


def test_evaluate_in_this_process_raises_with_the_other_rows():
    env = TuningEnv([(TRACES[0], "dgx-h100"), (TRACES[1], "dgx-h100")])
    with pytest.raises(EvaluationFailed, match="fails-on on llama3-8b_tp1-pp1-dp8@dgx-h100, state 0") as caught:
        evaluate([NcclDefaultAgent(), FailsOn("llama3-8b_tp1-pp1-dp8@dgx-h100")], env, [0], progress=False)
    steps = caught.value.results.steps
    assert len(steps) == 5 and set(steps[steps["agent"] == "fails-on"]["case"]) == {"ref-pp2-dp2@dgx-h100"}
    [failure] = caught.value.failures
    assert (failure["case"], failure["agent"], failure["state"]) == ("llama3-8b_tp1-pp1-dp8@dgx-h100", "fails-on", 0)
    assert "RuntimeError: cannot act on" in failure["error"]
