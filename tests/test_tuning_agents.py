"""Tests of dynamiccl.tuning.agents and dynamiccl.tuning.evaluate on a small real TuningEnv: two
shipped traces on dgx-h100, two dynamics states (the whole module runs in a few seconds)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from dynamiccl import __version__
from dynamiccl.errors import InputError
from dynamiccl.nccl import Algorithm, Func, Protocol
from dynamiccl.table import MAX_BYTES, DecisionTable, Rule
from dynamiccl.tuning.actions import DEFAULT_ACTION, NUM_ACTIONS, action_index
from dynamiccl.tuning.agents import (
    Agent, GreedyPerCallAgent, NcclDefaultAgent, OnlineAgent, PolicyAgent, RandomAgent, SearchAgent, StaticBestAgent,
    TableAgent,
)
from dynamiccl.tuning.env import TuningEnv
from dynamiccl.tuning.evaluate import (
    CALL_COLUMNS, METADATA_KEY, NOTHING_TO_GAIN, STEP_COLUMNS, SUMMARY_COLUMNS, Results, calls_path, evaluate,
    run_episode, sample_efficiency,
)
from dynamiccl.tuning.online import CoordinateDescent, UCBBandit

CASES = [("traces/ref-pp2-dp2.parquet", "dgx-h100"), ("traces/llama3-8b_tp1-pp1-dp8.parquet", "dgx-h100")]
STATES = [0, 1]
RING_SIMPLE = action_index(Algorithm.RING, Protocol.SIMPLE, 0)


@pytest.fixture(scope="module")
def env() -> TuningEnv:
    return TuningEnv(cases=CASES, states=len(STATES))


class CheckingAgent(Agent):
    """Wraps an agent and records whether every action it chose was valid under the mask."""

    def __init__(self, inner: Agent) -> None:
        self.inner, self.name = inner, inner.name
        self.masked_picks = 0
        self.actions: list[int] = []

    def begin_episode(self, env) -> None:
        self.inner.begin_episode(env)

    def act(self, env, obs, mask) -> int:
        action = self.inner.act(env, obs, mask)
        self.masked_picks += not mask[action]
        self.actions.append(action)
        return action


class ForcedAgent(Agent):
    """``action`` on every call of collective ``func`` where it is valid, NCCL's default elsewhere."""

    name = "forced"

    def __init__(self, func: Func, action: int) -> None:
        self.func, self.action = int(func), action

    def act(self, env, obs, mask) -> int:
        return self.action if env.pending_call().coll == self.func and mask[self.action] else DEFAULT_ACTION


def all_episodes(env, agent):
    return [run_episode(env, agent, case, state, record_calls=True)
            for case in range(len(env.cases)) for state in STATES]


# --- agents -----------------------------------------------------------------------------------------


def test_nccl_default_speedup_is_exactly_one(env):
    for out in all_episodes(env, NcclDefaultAgent()):
        assert out["step"]["speedup"] == 1.0
        assert out["step"]["step_time_us"] == out["step"]["default_step_time_us"]
        assert (out["calls"]["action"] == DEFAULT_ACTION).all()


def test_greedy_per_call_is_valid_and_within_half_a_percent_of_default(env):
    # Greedy per call, the greedy baseline does not see what its choice does to later calls: with the launch
    # delay (a call launched while a compute kernel runs waits for it, NVIDIA/nccl#1431) a call that
    # ends sooner can make the next one on its stream wait for a kernel, and the step can end a
    # little later than with NCCL's default (Llama-3 8B DP8 here: 0.07%). It is a baseline, not a
    # bound; it stays within the 0.5% no policy may lose to NCCL's default.
    agent = CheckingAgent(GreedyPerCallAgent())
    for out in all_episodes(env, agent):
        assert out["step"]["speedup"] >= 0.995
        assert out["step"]["invalid_actions"] == 0
    assert agent.masked_picks == 0
    assert any(a != DEFAULT_ACTION for a in agent.actions)  # it does find something better


def test_random_picks_only_valid_actions(env):
    agent = CheckingAgent(RandomAgent(seed=3))
    outs = all_episodes(env, agent)
    assert agent.masked_picks == 0
    assert all(out["step"]["invalid_actions"] == 0 for out in outs)
    assert len(set(agent.actions)) > 10
    # Seeded: the same seed gives the same episode.
    again = run_episode(env, RandomAgent(seed=3), 0, 0)
    assert again["step"]["step_time_us"] == outs[0]["step"]["step_time_us"]


def test_static_best_fit_and_json_round_trip(env):
    agent = StaticBestAgent.fit(env, [(0, 0), (1, 0)])
    assert agent.table and all(0 <= a < NUM_ACTIONS for a in agent.table.values())
    assert any(a != DEFAULT_ACTION for a in agent.table.values())
    fitted = [run_episode(env, agent, case, 0)["step"] for case in range(len(env.cases))]
    assert agent.fallbacks == 0  # a fitted action is valid at every call of its bucket
    assert all(step["speedup"] >= 1.0 - 1e-9 for step in fitted)

    text = agent.to_json()
    json.loads(text)  # plain JSON
    loaded = StaticBestAgent.from_json(text)
    assert loaded.table == agent.table and loaded.name == agent.name
    assert loaded.provenance["episodes"] == [[env.cases[0].label, 0], [env.cases[1].label, 0]]
    for case, step in enumerate(fitted):
        assert run_episode(env, loaded, case, 0)["step"]["step_time_us"] == step["step_time_us"]

    # Fitting an existing agent replaces its table in place.
    named = StaticBestAgent(name="static-mine")
    assert named.fit(env, [(0, 0), (1, 0)]) is named
    assert named.table == agent.table and named.name == "static-mine"

    # An unseen bucket gets NCCL's default.
    assert run_episode(env, StaticBestAgent({}), 0, 0)["step"]["speedup"] == 1.0
    with pytest.raises(InputError, match="format"):
        StaticBestAgent.from_json('{"format": "other"}')
    with pytest.raises(InputError, match=r"rules\[0\]"):
        StaticBestAgent.from_json(json.dumps({"format": "dynamiccl-static-best", "version": 1,
                                              "rules": [{"coll": 4, "size_bucket": 3, "action": 1}]}))
    with pytest.raises(ValueError):
        StaticBestAgent.fit(env, [])


def test_empty_table_is_nccl_default(env):
    agent = TableAgent(DecisionTable(()))
    for out in all_episodes(env, agent):
        assert out["step"]["speedup"] == 1.0
        assert (out["calls"]["action"] == DEFAULT_ACTION).all()
    assert agent.fallbacks == 0


def test_table_forcing_ring_simple_equals_forced_action(env):
    table = DecisionTable((Rule(coll=Func.ALLREDUCE, min_bytes=0, max_bytes=MAX_BYTES,
                                algorithm=Algorithm.RING, protocol=Protocol.SIMPLE),))
    agent = TableAgent(table, name="ring-simple")
    forced = ForcedAgent(Func.ALLREDUCE, RING_SIMPLE)
    for case in range(len(env.cases)):
        for state in STATES:
            got = run_episode(env, agent, case, state, record_calls=True)
            want = run_episode(env, forced, case, state, record_calls=True)
            assert got["step"]["step_time_us"] == want["step"]["step_time_us"]
            np.testing.assert_array_equal(got["calls"]["action"], want["calls"]["action"])
    # The reference case has allreduces, so the rule really applied.
    out = run_episode(env, agent, 0, 0, record_calls=True)
    assert (out["calls"]["action"] == RING_SIMPLE).any()
    assert set(out["calls"]["algo"][out["calls"]["coll"] == "allreduce"]) == {"ring"}


def test_table_position_rules_need_the_plugins_step_lines(env):
    # A position-0 rule applies at run time only where a step line lets the plugin count.
    from dynamiccl.table import StepShape
    from dynamiccl.table.policy_export import step_shapes

    rule = Rule(coll=Func.ALLREDUCE, min_bytes=0, max_bytes=MAX_BYTES, position=0,
                algorithm=Algorithm.RING, protocol=Protocol.SIMPLE)
    run_episode(env, NcclDefaultAgent(), 1, 0)  # loads the llama3-8b case
    steps, _ = step_shapes([env.simulator.case.program])
    assert steps and all(isinstance(step, StepShape) for step in steps)
    counted = run_episode(env, TableAgent(DecisionTable((rule,), steps=steps)), 1, 0, record_calls=True)
    uncounted = run_episode(env, TableAgent(DecisionTable((rule,))), 1, 0, record_calls=True)
    assert (counted["calls"]["action"] == RING_SIMPLE).any()
    assert (uncounted["calls"]["action"] == DEFAULT_ACTION).all()


def test_table_keep_rule_is_default_and_masked_choice_falls_back(env):
    keep = DecisionTable((Rule(coll=Func.ALLREDUCE, min_bytes=0, max_bytes=MAX_BYTES),))
    assert run_episode(env, TableAgent(keep), 0, 0)["step"]["speedup"] == 1.0
    # 64 channels round down to 32, more than the channel pool of these communicators (24 on
    # dgx-h100): such calls fall back to NCCL's default and are counted.
    wide = TableAgent(DecisionTable((Rule(coll=Func.ALLREDUCE, min_bytes=0, max_bytes=MAX_BYTES,
                                          algorithm=Algorithm.RING, protocol=Protocol.SIMPLE, channels=64),)))
    out = run_episode(env, wide, 0, 0, record_calls=True)
    wide_action = action_index(Algorithm.RING, Protocol.SIMPLE, 32)
    actions = out["calls"]["action"][out["calls"]["coll"] == "allreduce"]
    assert set(actions) <= {DEFAULT_ACTION, wide_action}
    assert wide.fallbacks == int((actions == DEFAULT_ACTION).sum()) > 0
    assert out["step"]["invalid_actions"] == 0


class ScorePolicy:
    """A deterministic policy: masked argmax of a fixed score per action, counting its calls."""

    def __init__(self, seed: int = 0) -> None:
        self.scores = np.random.default_rng(seed).standard_normal(NUM_ACTIONS)
        self.calls = 0
        self.rows = 0

    def decide(self, obs_batch: np.ndarray, masks: np.ndarray) -> np.ndarray:
        assert obs_batch.shape[0] == masks.shape[0] and masks.shape[1] == NUM_ACTIONS
        self.calls += 1
        self.rows += len(obs_batch)
        return np.argmax(np.where(masks, self.scores, -np.inf), axis=1)


def test_policy_agent_batches_and_caches(env):
    policy = ScorePolicy()
    agent = PolicyAgent(policy, name="score")
    first = all_episodes(env, agent)
    # One batched decide per case; the second state and a rerun hit the cache only.
    assert policy.calls == len(env.cases)
    second = all_episodes(env, agent)
    assert policy.calls == len(env.cases)
    for a, b in zip(first, second):
        assert a["step"]["step_time_us"] == b["step"]["step_time_us"]
    scores = policy.scores
    for out in first:
        for action in out["calls"]["action"]:
            assert action == DEFAULT_ACTION or scores[action] >= scores[DEFAULT_ACTION]
    with pytest.raises(ValueError, match="decide"):
        bad = PolicyAgent(type("Bad", (), {"decide": lambda self, o, m: np.zeros(len(o) + 1, dtype=int)})())
        run_episode(env, bad, 0, 0)


class InvalidThenValid(Agent):
    """An online stand-in: returns an invalid action first, then action 0; records observations."""

    name = "recorder"
    needs_measurements = True

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, float]] = []

    @property
    def measurements(self) -> int:
        return len(self.seen)

    def fresh(self) -> "InvalidThenValid":
        return InvalidThenValid()

    def act(self, env, obs, mask) -> int:
        invalid = np.flatnonzero(~mask)
        return int(invalid[0]) if not self.seen and len(invalid) else DEFAULT_ACTION

    def observe(self, env, call, action, time_us) -> None:
        assert time_us == env.measured(call)[1] and time_us > 0
        self.seen.append((call, action, time_us))


def test_online_observe_gets_the_action_that_ran(env):
    agent = InvalidThenValid()
    out = run_episode(env, agent, 0, 0)
    assert out["step"]["invalid_actions"] == 1
    assert len(agent.seen) == out["step"]["decisions"] == out["step"]["measurements"]
    assert [action for _, action, _ in agent.seen] == [DEFAULT_ACTION] * len(agent.seen)


def test_online_agents_learn_across_iterations(env):
    steps_per_case = 30
    results = evaluate([OnlineAgent(UCBBandit()), OnlineAgent(CoordinateDescent())], env, STATES,
                       online_steps=steps_per_case, progress=False)
    online = results.steps[results.steps["iteration"] >= 0]
    assert set(online["agent"]) == {"ucb-bandit", "coordinate-descent"}
    for (_, _), group in online.groupby(["agent", "case"]):
        group = group.sort_values("iteration")
        assert list(group["iteration"]) == list(range(steps_per_case))
        assert list(group["state"]) == [STATES[i % len(STATES)] for i in range(steps_per_case)]
        # A fresh learner per case, kept across its iterations: one measurement per decision.
        assert list(group["measurements"]) == list(np.cumsum(group["decisions"]))
        speedup = group["speedup"].to_numpy()
        assert speedup[-3:].mean() > speedup[:3].mean()     # exploration cost paid early
        assert speedup[-1] >= 1.0 - 1e-5                    # and it ends near or above NCCL
    # Calls are recorded for the last iteration only.
    online_calls = results.calls[results.calls["agent"].isin(["ucb-bandit", "coordinate-descent"])]
    assert set(online_calls["iteration"]) == {steps_per_case - 1}
    with pytest.raises(TypeError, match="fresh"):
        evaluate([type("NoFresh", (Agent,), {"name": "x", "needs_measurements": True})()], env, STATES,
                 progress=False)


# --- evaluation and results -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def results(env) -> Results:
    agents = [NcclDefaultAgent(), RandomAgent(0), StaticBestAgent.fit(env, [(0, 0), (1, 0)]),
              OnlineAgent(UCBBandit())]
    return evaluate(agents, env, STATES, online_steps=4, progress=False)


def test_evaluate_rows(env, results):
    steps, calls = results.steps, results.calls
    assert list(steps.columns) == list(STEP_COLUMNS) and list(calls.columns) == list(CALL_COLUMNS)
    offline = steps[steps["iteration"] == -1]
    # search (added), nccl-default, random, static-best: one row per (case, state).
    assert offline.groupby("agent").size().to_dict() == {a: len(CASES) * len(STATES) for a in
                                                         ("search", "nccl-default", "random", "static-best")}
    assert (steps[steps["agent"] == "ucb-bandit"].groupby("case").size() == 4).all()
    search = steps[steps["agent"] == "search"]
    assert (search["gap_to_search"] == 0.0).all()
    np.testing.assert_allclose(search["step_time_us"], search["search_step_time_us"])
    default = steps[steps["agent"] == "nccl-default"]
    assert (default["speedup"] == 1.0).all() and (default["measurements"] == 0).all()
    np.testing.assert_allclose(steps["speedup"], steps["default_step_time_us"] / steps["step_time_us"])
    np.testing.assert_allclose(steps["search_speedup"], steps["default_step_time_us"] / steps["search_step_time_us"])
    np.testing.assert_allclose(steps["gap_to_search"], steps["step_time_us"] / steps["search_step_time_us"] - 1)
    defined = steps["search_speedup"] - 1 >= NOTHING_TO_GAIN
    np.testing.assert_allclose(steps.loc[defined, "gain_share"],
                               (steps.loc[defined, "speedup"] - 1) / (steps.loc[defined, "search_speedup"] - 1))
    assert steps.loc[~defined, "gain_share"].isna().all()
    # The bounds, per (case, state): ceiling <= line-rate bound <= search; the search is never worse than
    # NCCL's default on the mean over the states it was searched on.
    assert (steps["no_comm_step_time_us"] <= steps["line_rate_bound_step_time_us"]).all()
    assert (steps["line_rate_bound_step_time_us"] <= steps["search_step_time_us"]).all()
    per_case = search.groupby("case")[["search_step_time_us", "default_step_time_us"]].mean()
    assert (per_case["search_step_time_us"] <= per_case["default_step_time_us"]).all()
    assert (steps["cost_model"].str.startswith("world simulator")).all()
    assert set(steps["nccl_version"]) == {env.simulator.case.env.nccl_version}
    # Calls: one row per decided call of each recorded episode, consistent times and choices.
    n_decisions = offline.set_index(["agent", "case", "state"])["decisions"]
    per_episode = calls[calls["iteration"] == -1].groupby(["agent", "case", "state"]).size()
    assert per_episode.sort_index().equals(n_decisions.sort_index().rename(None))
    assert (calls["duration_us"] > 0).all()
    np.testing.assert_allclose(calls["duration_us"], calls["end_us"] - calls["start_us"])
    nccl = calls["action"] == DEFAULT_ACTION
    assert (calls.loc[nccl, "algo"] == "nccl").all() and (calls.loc[~nccl, "algo"] != "nccl").all()
    assert (calls["channels"] > 0).all() and (calls["nccl_default_channels"] > 0).all()
    assert set(calls["coll"]) <= {"allreduce", "allgather", "reducescatter", "broadcast", "reduce"}


def test_results_write_read_round_trip(tmp_path, results):
    path = tmp_path / "out" / "results.parquet"
    results.write(path, command="dynamiccl evaluate --test")
    assert calls_path(path) == tmp_path / "out" / "results.calls.parquet" and calls_path(path).is_file()
    for file, kind in ((path, "steps"), (calls_path(path), "calls")):
        meta = json.loads(pq.read_schema(file).metadata[METADATA_KEY])
        assert meta["dynamiccl_version"] == __version__
        assert meta["cost_model"] == "world" and meta["states"] == STATES
        assert meta["command"] == "dynamiccl evaluate --test" and meta["table"] == kind
    back = Results.read(path)
    pd.testing.assert_frame_equal(back.steps, results.steps, check_dtype=False)
    pd.testing.assert_frame_equal(back.calls, results.calls, check_dtype=False)
    assert back.meta["command"] == "dynamiccl evaluate --test"
    with pytest.raises(InputError, match="no such results file"):
        Results.read(tmp_path / "missing.parquet")


def test_min_gain_share_is_judged_only_where_the_search_gains_two_percent():
    # Case a: search 1.04x, agent 1.03x (share 0.75); case b: search 1.05x, agent 1.045x (0.9); case c:
    # search 1.01x, agent 1.0x -- under 2%, not judged.
    rows = []
    for case, search_speedup, agent_speedup in (("a", 1.04, 1.03), ("b", 1.05, 1.045), ("c", 1.01, 1.0)):
        default = 1000.0
        for agent, speedup in (("search", search_speedup), ("policy", agent_speedup)):
            rows.append({"agent": agent, "case": case, "iteration": -1, "speedup": speedup,
                         "step_time_us": default / speedup, "default_step_time_us": default,
                         "search_step_time_us": default / search_speedup, "gain_share": math.nan,
                         "gap_to_search": search_speedup / speedup - 1.0})
    summary = Results(pd.DataFrame(rows), pd.DataFrame(), {}).summary().set_index("agent")
    assert summary.loc["policy", "min_gain_share_on_headroom"] == pytest.approx(0.75)
    assert summary.loc["search", "min_gain_share_on_headroom"] == pytest.approx(1.0)
    flat = [dict(row, search_step_time_us=row["default_step_time_us"] / 1.01) for row in rows]
    assert math.isnan(Results(pd.DataFrame(flat), pd.DataFrame(), {}).summary().set_index("agent").loc[
        "policy", "min_gain_share_on_headroom"])


def test_summary(results):
    summary = results.summary()
    assert list(summary.columns) == SUMMARY_COLUMNS == [
        "agent", "episodes", "geomean_speedup", "min_speedup", "mean_gain_share", "mean_gap_to_search", "slower_share",
        "search_geomean_speedup", "line_rate_bound_geomean_speedup", "no_comm_geomean_speedup",
        "min_gain_share_on_headroom"]
    assert list(summary["agent"]) == ["search", "nccl-default", "random", "static-best", "ucb-bandit"]
    row = summary.set_index("agent")
    assert row.loc["nccl-default", "geomean_speedup"] == 1.0 and row.loc["nccl-default", "slower_share"] == 0.0
    assert row.loc["search", "mean_gap_to_search"] == 0.0
    # The reference columns are the same for every agent evaluated on the same episodes.
    offline = row.drop(index="ucb-bandit")
    for column in ("search_geomean_speedup", "line_rate_bound_geomean_speedup", "no_comm_geomean_speedup"):
        assert offline[column].nunique() == 1
    assert (row["no_comm_geomean_speedup"] >= row["line_rate_bound_geomean_speedup"]).all()
    assert (row["line_rate_bound_geomean_speedup"] >= row["search_geomean_speedup"]).all()
    assert row.loc["search", "search_geomean_speedup"] == pytest.approx(row.loc["search", "geomean_speedup"])
    assert row.loc["ucb-bandit", "episodes"] == 4 * len(CASES)
    assert results.summary(online="last").set_index("agent").loc["ucb-bandit", "episodes"] == len(CASES)
    assert ((summary["slower_share"] >= 0) & (summary["slower_share"] <= 1)).all()


def test_summary_slower_share_on_known_frame():
    steps = pd.DataFrame({"agent": ["a"] * 4, "case": ["x", "x", "y", "z"], "iteration": -1,
                          "speedup": [0.98, 0.98, 1.2, 0.995], "gain_share": [np.nan, 0.5, 1.0, 0.0],
                          "gap_to_search": 0.0})
    row = Results(steps, pd.DataFrame()).summary().iloc[0]
    assert row["slower_share"] == pytest.approx(1 / 3)   # x only (z is within 1%)
    assert row["min_speedup"] == 0.98 and row["mean_gain_share"] == pytest.approx(0.5)
    assert row["geomean_speedup"] == pytest.approx((0.98 * 0.98 * 1.2 * 0.995) ** 0.25)


def test_sample_efficiency_known_answer():
    def run(agent, case, speedups):
        return pd.DataFrame({"agent": agent, "case": case, "iteration": range(len(speedups)),
                             "speedup": speedups, "measurements": [10 * (i + 1) for i in range(len(speedups))]})

    steps = pd.concat([
        run("learner", "a", [1.0, 1.10, 1.02, 1.096, 1.1, 1.1, 1.1]),  # reaches at 1, dips, stays from 3
        run("learner", "b", [1.0, 1.1, 1.2, 1.0]),                       # last one below: never settles
        run("learner", "c", [0.9, 0.95, 0.95, 0.95]),                    # a loss: within 5% of it from 1
        pd.DataFrame({"agent": "static", "case": "a", "iteration": [-1], "speedup": [2.0], "measurements": [0]}),
    ], ignore_index=True)
    got = sample_efficiency(steps).set_index("case")
    assert list(got.index) == ["a", "b", "c"] and set(got["agent"]) == {"learner"}
    a = got.loc["a"]
    assert a["final_speedup"] == pytest.approx(1.1) and a["reached"]
    assert (a["converged_iteration"], a["iterations"], a["measurements"], a["total_measurements"]) == (3, 4, 40, 70)
    b = got.loc["b"]
    assert not b["reached"] and np.isnan(b["measurements"]) and b["final_gain"] == pytest.approx(0.1)
    c = got.loc["c"]
    assert c["reached"] and c["converged_iteration"] == 1 and c["measurements"] == 20
    with pytest.raises(ValueError, match="measurements"):
        sample_efficiency(steps.drop(columns="measurements"))


# --- the agent registry ------------------------------------------------------------------------------


def test_agent_registry_builds_each_agent_by_name():
    from dynamiccl.tuning.agent_registry import AGENTS, AgentInputs, make_agents

    built = make_agents(["nccl-default", "random", "greedy-per-call", "search", "ucb-bandit", "coordinate-descent",
                         "policy"], AgentInputs(seed=3))
    assert [a.name for a in built] == ["nccl-default", "random", "greedy-per-call", "search", "ucb-bandit",
                                       "coordinate-descent"]
    assert built[1].seed == 3  # "policy" without a policy file is not applicable: left out
    assert set(AGENTS) >= {"nccl-default", "random", "greedy-per-call", "search", "static-best", "ucb-bandit",
                           "coordinate-descent", "policy"}
    assert "oracle" not in AGENTS  # renamed: a per-call greedy is no optimum
    with pytest.raises(InputError, match="'oracle' is now greedy-per-call"):
        make_agents(["oracle"], AgentInputs())
    with pytest.raises(InputError, match="unknown agent 'greedy'; expected some of nccl-default"):
        make_agents(["greedy"], AgentInputs())
    with pytest.raises(InputError, match="static-best is fitted on training episodes"):
        make_agents(["static-best"], AgentInputs())


def test_a_new_agent_is_one_registry_entry(monkeypatch, capsys, tmp_path):
    from dynamiccl.cli import main
    from dynamiccl.tuning import agent_registry, agents

    class Always(agents.Agent):
        name = "always-ring"

        def act(self, env, obs, mask):
            return int(np.flatnonzero(mask)[-1])

    monkeypatch.setitem(agent_registry.AGENTS, "always-ring",
                        agent_registry.AgentEntry(lambda inputs: Always(), "test agent"))
    out = tmp_path / "r.parquet"
    # --workers 1: a class defined in a test is not importable by a worker process.
    assert main(["evaluate", "--traces", CASES[0][0], "--envs", "dgx-h100", "--states", "1", "--agents",
                 "nccl-default,always-ring", "--workers", "1", "-o", str(out)]) == 0
    assert "always-ring" in capsys.readouterr().out


# --- what an evaluation replays (dynamiccl evaluate) ------------------------------------------------


def test_evaluation_plan_from_traces_crosses_traces_with_envs_and_fits_in_sample():
    from dynamiccl.tuning.cases import Case
    from dynamiccl.tuning.evaluate import EvaluationPlan

    plan = EvaluationPlan.from_traces(["a.parquet", "b.parquet"], ["dgx-h100", "dgx-a100"], states=2,
                                      state_offset=10, model="nccl")
    assert plan.cases == (Case("a.parquet", "dgx-h100"), Case("a.parquet", "dgx-a100"),
                          Case("b.parquet", "dgx-h100"), Case("b.parquet", "dgx-a100"))
    assert plan.states == (10, 11) and plan.fit_cases == plan.cases and plan.fit_states == (0, 1)
    assert plan.model == "nccl"
    env, episodes = EvaluationPlan.from_traces([CASES[0][0]], ["dgx-h100"], states=3).fit_episodes()
    assert env.cases == [Case(CASES[0][0], "dgx-h100")] and episodes == [(0, 0), (0, 1), (0, 2)]


def test_evaluation_plan_from_config_takes_the_heldout_split_and_fits_on_training(tmp_path):
    from dynamiccl.tuning.cases import Case
    from dynamiccl.tuning.evaluate import EvaluationPlan

    config = tmp_path / "plan.toml"
    text = (f'[experiment]\nname = "plan"\nmodel = "nccl"\n[train]\nstates = 3\n'
            f'[[train.cases]]\ntrace = "{CASES[0][0]}"\nenv = "dgx-h100"\n'
            f'[heldout]\nstates = 2\nstate_offset = 100\n')
    config.write_text(text + f'[[heldout.cases]]\ntrace = "{CASES[1][0]}"\nenv = "dgx-a100"\n')
    plan = EvaluationPlan.from_config(config, tmp_path / "run")
    assert [Path(c.trace).name for c in plan.cases] == [Path(CASES[1][0]).name]
    assert [c.env for c in plan.cases] == ["dgx-a100"] and plan.states == (100, 101)
    assert [Path(c.trace).name for c in plan.fit_cases] == [Path(CASES[0][0]).name]
    assert plan.fit_states == (0, 1, 2) and plan.model == "nccl"
    assert all(isinstance(c, Case) for c in plan.cases + plan.fit_cases)
    train = EvaluationPlan.from_config(config, tmp_path / "run", split="train")
    assert [(Path(c.trace).name, c.env) for c in train.cases] == [(Path(CASES[0][0]).name, "dgx-h100")]
    assert train.states == (100, 101) and train.fit_cases == plan.fit_cases and train.fit_states == (0, 1, 2)
    with pytest.raises(InputError, match="split: expected 'heldout' or 'train'"):
        EvaluationPlan.from_config(config, tmp_path / "run", split="test")
    config.write_text(text)
    with pytest.raises(InputError, match="heldout.cases: the config has no held-out cases") as info:
        EvaluationPlan.from_config(config)
    assert info.value.source == str(config)


def test_evaluate_plan_builds_the_registered_agents_and_names_the_cost_model():
    from dynamiccl.tuning.cases import Case, load_case
    from dynamiccl.tuning.evaluate import EvaluationPlan, evaluate_plan

    plan = EvaluationPlan.from_traces([CASES[0][0]], ["dgx-h100"], states=1)
    evaluation = evaluate_plan(plan, ["nccl-default", "static-best", "policy"], online_steps=1, progress=False)
    # "policy" without a policy file is left out; the search reference always runs
    assert list(evaluation.results.steps["agent"]) == ["search", "nccl-default", "static-best"]
    assert list(evaluation.results.meta["search"]) == [evaluation.results.steps["case"].iloc[0]]
    assert evaluation.results.meta["states"] == [1000]
    assert evaluation.cost_model == load_case(Case(CASES[0][0], "dgx-h100"), "world").costs.description
    with pytest.raises(InputError, match="unknown agent 'greedy'"):
        evaluate_plan(plan, ["greedy"], progress=False)


def test_summary_by_agent_is_the_summary_as_json_with_nan_as_null():
    steps = pd.DataFrame({"agent": ["a", "a", "b"], "case": ["x", "y", "x"], "iteration": [-1, -1, -1],
                          "speedup": [1.0, 1.2, 0.9], "gain_share": [float("nan"), 0.5, float("nan")],
                          "gap_to_search": [0.1, 0.0, 0.2]})
    results = Results(steps, pd.DataFrame())
    by_agent = results.summary_by_agent()
    assert list(by_agent) == ["a", "b"]
    assert by_agent["a"]["mean_gain_share"] == 0.5 and by_agent["b"]["mean_gain_share"] is None
    assert by_agent["a"]["episodes"] == 2 and by_agent["b"]["min_speedup"] == 0.9
    json.dumps(by_agent, allow_nan=False)  # strict JSON
    summary = results.summary().set_index("agent")
    for agent, row in by_agent.items():
        assert set(row) == set(summary.columns)
        assert all(v is None or v == summary.loc[agent, k] for k, v in row.items())


def test_evaluate_uses_a_given_search_agent_as_its_reference(env):
    search = SearchAgent(max_sweeps=0)  # the better of its starts, no descent
    results = evaluate([NcclDefaultAgent(), search], env, [0], progress=False)
    assert list(pd.unique(results.steps["agent"])) == ["search", "nccl-default"]  # not run twice
    assert search.states == [0] and set(search.results) == {case.label for case in env.cases}
    assert all(result.sweeps == 0 and result.states == [0] for result in search.results.values())
    assert set(results.meta["search"]) == set(search.results)
