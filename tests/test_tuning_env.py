"""Tests of the tuning environment: compiled steps, the timeline, costs, masks, rewards, gym API."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from dynamiccl.costmodel.nccl_model import NcclModel
from dynamiccl.errors import InputError
from dynamiccl.nccl import TUNABLE_FUNCS
from dynamiccl.trace.store import Trace
from dynamiccl.tuning.actions import (
    ACTION_ALGO, ACTION_CELL, ACTION_CHANNELS, DEFAULT_ACTION, NUM_ACTIONS, action_index, describe_action,
)
from dynamiccl.tuning.cases import Case, default_schedule, load_case, new_replay
from dynamiccl.tuning.env import ENV_ID, TuningEnv  # importing it registers ENV_ID with gymnasium
from dynamiccl.tuning.observation import encode, key_columns
from dynamiccl.tuning.program import StepProgram
from dynamiccl.tuning.timeline import latest_finish

PP = ("traces/ref-pp2-dp2.parquet", "dgx-h100")
TP_SP = ("traces/ref-tp2-pp2-sp.parquet", "dgx-h100")
LLAMA = ("traces/llama3-8b_tp1-pp1-dp8.parquet", "dgx-h100")
# A 64-GPU trace: on 16 H100 nodes (a spec must hold the trace's GPUs).
LLAMA70 = ("traces/llama3-70b_tp4-pp4-cp2-dp2-sp.parquet", "h100-ib-16x8")


@pytest.fixture(scope="module")
def congested_16x8(tmp_path_factory) -> str:
    """h100-ib-4x8-congested on 16 nodes: h100-ib-16x8's hardware on a busy fabric."""
    busy = (Path(__file__).resolve().parents[1] / "envs" / "h100-ib-4x8-congested.toml").read_text()
    assert busy.count("nodes = 4\n") == 1
    path = tmp_path_factory.mktemp("envs") / "h100-ib-16x8-congested.toml"
    path.write_text(busy.replace("nodes = 4\n", "nodes = 16\n"))
    return str(path)


def run(env: TuningEnv, choose, case: int = 0, state: int = 0):
    obs, _ = env.reset(options={"case": case, "state": state})
    total = 0.0
    while True:
        obs, reward, terminated, truncated, info = env.step(choose(env, obs))
        total += reward
        assert not truncated
        if terminated:
            return total, info


# --- the compiled step ---------------------------------------------------------------------------

def test_program_joins_ranks_and_pairs_sends_with_receives():
    trace = Trace.read(PP[0])
    program = StepProgram.from_trace(trace)
    assert program.step == 4 and program.ranks == [0, 1, 2, 3]
    sends = [c for c in range(program.num_calls) if not program.call_tunable[c]]
    # Every pipeline transfer joins the sending and the receiving rank: one call, two members.
    assert sends and all(len(program.call_ops[c]) == 2 for c in sends)
    # DP all-reduces of a stage join both ranks of the DP group.
    dp = [c for c in program.tunable_calls if program.call_kind[c] == "dp"]
    assert dp and all(len(program.call_ranks[c]) == 2 for c in dp)
    assert sum(program.op_npred) == sum(len(s) for s in program.op_succ)


def test_program_rejects_a_missing_step():
    with pytest.raises(InputError, match="step 9 is not in the trace"):
        StepProgram.from_trace(Trace.read(PP[0]), 9, source=PP[0])


def test_nodes_smaller_than_the_trace_are_refused():
    with pytest.raises(InputError, match="GPUs per node"):
        load_case(Case("traces/llama3-8b_tp1-pp1-dp8.parquet", "gh200-4x4"))  # 8 GPUs a node on 4


# --- the timeline ----------------------------------------------------------------------------------

@pytest.mark.parametrize("case", [PP, TP_SP, LLAMA])
def test_default_replay_respects_dependencies_and_compute(case):
    loaded = load_case(Case(*case))
    replay = new_replay(loaded, 0)
    makespan = replay.run()
    program = loaded.program
    assert all(not math.isnan(t) for t in replay.op_end_us)
    for g in range(program.num_ops):
        for s in program.op_succ[g]:
            assert replay.op_start_us[s] >= replay.op_end_us[g] - 1e-6
    for chain in program.compute_chain:  # compute never runs faster than its work
        assert makespan >= sum(program.op_base_us[g] for g in chain) - 1e-6
    for c in range(program.num_calls):  # a call never beats its duration alone and quiet
        key = loaded.costs.call_row[c]
        alone = loaded.costs.time_us[key, DEFAULT_ACTION, 0, 0] * replay.noise[c]
        assert replay.call_end_us[c] - replay.call_start_us[c] >= alone * (1 - 1e-9)


def test_channels_beside_compute_slow_the_compute():
    import copy

    from dynamiccl.tuning.timeline import Replay

    loaded = load_case(Case(*LLAMA))
    free = copy.copy(loaded.costs)  # the same step if channels cost compute nothing
    free.slowdown = np.ones_like(free.slowdown)
    free._rows = None
    real = new_replay(loaded, 0)
    assert real.run() > Replay(loaded.program, free, None, real.noise).run()


def test_concurrent_calls_share_links():
    loaded = load_case(Case(*LLAMA70))
    shared = new_replay(loaded, 0)
    shared.run()
    durations = [(e - s) / t for s, e, t in zip(shared.call_start_us, shared.call_end_us, shared.call_time_at_start_us)]
    # Some calls got slower after they started: other calls joined their links.
    assert max(durations) > 1.05


def test_congestion_lengthens_the_step_and_is_seeded(congested_16x8):
    quiet = default_schedule(load_case(Case(*LLAMA70)), 3)[0]
    busy = load_case(Case(LLAMA70[0], congested_16x8))
    assert default_schedule(busy, 3)[0] > quiet
    assert new_replay(busy, 3).run() == new_replay(busy, 3).run()
    assert new_replay(busy, 3).run() != new_replay(busy, 4).run()


def test_latest_finish_is_never_before_the_default_end():
    loaded = load_case(Case(*TP_SP))
    replay = new_replay(loaded, 0)
    replay.run()
    finish = latest_finish(replay)
    slack = [f - e for f, e in zip(finish, replay.call_end_us)]
    assert min(slack) >= -1e-6
    assert min(slack) < 1e-3  # something is on the critical path


def test_a_fork_copies_what_a_replay_writes_and_shares_only_what_it_reads(congested_16x8):
    """``Replay.fork`` copies the lists a replay writes (``_STATE_LISTS``) and shares the others
    (``_SHARED_LISTS``): every list a replay holds is one or the other, and replays from a fork to
    the end leave the shared ones as they were."""
    import copy

    from dynamiccl.tuning.timeline import Replay

    loaded = load_case(Case(LLAMA70[0], congested_16x8))
    replay = new_replay(loaded, 0, default_schedule(loaded, 0)[1])
    for _ in range(len(loaded.program.tunable_calls) // 3):
        replay.decide(replay.next_decision(), DEFAULT_ACTION)
    lists = {name for name, value in vars(replay).items() if isinstance(value, list)}
    assert lists == set(Replay._STATE_LISTS) | set(Replay._SHARED_LISTS) | {"_rank_calls"}
    assert not set(Replay._STATE_LISTS) & set(Replay._SHARED_LISTS)
    shared = copy.deepcopy({name: getattr(replay, name) for name in Replay._SHARED_LISTS})
    fork = replay.fork()
    assert all(getattr(fork, name) is getattr(replay, name) for name in Replay._SHARED_LISTS)
    assert not any(getattr(fork, name) is getattr(replay, name) for name in Replay._STATE_LISTS)
    fork.run(lambda call: int(np.flatnonzero(loaded.costs.mask[loaded.costs.call_row[call]])[-1]))
    replay.run()
    assert {name: getattr(replay, name) for name in Replay._SHARED_LISTS} == shared


# --- actions and masks --------------------------------------------------------------------------

def test_action_catalogue_round_trips():
    assert describe_action(DEFAULT_ACTION) == "nccl-default"
    for action in range(1, NUM_ACTIONS):
        algo, proto, channels = ACTION_ALGO[action], ACTION_CELL[action] % 3, ACTION_CHANNELS[action]
        assert action_index(int(algo), int(proto), int(channels)) == action
    with pytest.raises(ValueError):
        action_index(1, 2, 3)


def test_masks_never_allow_a_cell_nccl_disabled():
    loaded = load_case(Case(*LLAMA70))
    costs = loaded.costs
    nccl = NcclModel(loaded.env)
    for key, call in enumerate(costs.keys):
        func, nranks, nnodes = int(call.coll), call.nranks, call.nnodes
        mask = costs.mask[key]
        assert mask[DEFAULT_ACTION]
        if func not in [int(f) for f in TUNABLE_FUNCS]:
            assert mask.sum() == 1
            continue
        topo = nccl.topology(nranks, nnodes)
        for action in np.flatnonzero(mask[1:]) + 1:
            assert costs.nccl_cost[key, ACTION_CELL[action]] >= 0
            assert ACTION_CHANNELS[action] <= max(topo.comm_channels, topo.nvls_channels)
            assert np.isfinite(costs.time_us[key, action]).all()


# --- the gymnasium environment ---------------------------------------------------------------------

def test_passes_gymnasium_and_sb3_checkers():
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = TuningEnv([PP, LLAMA], states=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(env)
        sb3_check_env(env)


def test_registered_under_the_dynamiccl_namespace():
    env = gym.make(ENV_ID, cases=[PP])
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs) and info["case"] == "ref-pp2-dp2@dgx-h100"


def test_nccl_default_scores_zero_and_speedup_one():
    env = TuningEnv([PP, LLAMA])
    for case in (0, 1):
        total, info = run(env, lambda e, o: DEFAULT_ACTION, case=case)
        assert total == 0.0 and info["speedup"] == 1.0
        assert info["step_time_us"] == info["default_step_time_us"]


def test_return_is_the_step_time_saved_in_percent():
    env = TuningEnv([TP_SP, LLAMA])
    rng = np.random.default_rng(0)
    for case in (0, 1):
        total, info = run(env, lambda e, o: int(rng.choice(np.flatnonzero(e.action_masks()))), case=case)
        assert total == pytest.approx(100 * (1 - info["step_time_us"] / info["default_step_time_us"]), abs=1e-9)


def test_invalid_action_falls_back_to_nccl_default():
    env = TuningEnv([LLAMA])
    env.reset(options={"case": 0, "state": 0})
    invalid = int(np.flatnonzero(~env.action_masks())[0])
    call = env.pending
    _, reward, _, _, info = env.step(invalid)
    assert info["invalid_action"] and reward == 0.0
    assert env.measured(call)[0] == DEFAULT_ACTION


def test_observation_holds_only_what_the_plugin_sees():
    env = TuningEnv([TP_SP])
    obs, _ = env.reset(options={"case": 0, "state": 0})
    for _ in range(50):
        call = env.pending_call()
        assert np.array_equal(obs, encode(key_columns([call]))[0])
        assert call.reg_buff == 0  # traces do not record buffer registration
        obs, *_ = env.step(DEFAULT_ACTION)


def test_seeded_resets_draw_the_same_episodes():
    def draws(seed):
        env = TuningEnv([PP, LLAMA], states=5)
        env.reset(seed=seed)
        out = []
        for _ in range(6):
            _, info = env.reset()
            out.append((info["case"], info["state"]))
        return out

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)


def test_states_offset_selects_held_out_dynamics():
    env = TuningEnv([PP], states=3, state_offset=1000)
    env.reset(seed=0)
    assert all(1000 <= env.reset()[1]["state"] < 1003 for _ in range(10))


def test_exposed_costs_price_every_valid_action():
    env = TuningEnv([LLAMA])
    env.reset(options={"case": 0, "state": 0})
    costs = env.simulator.exposed_costs()
    mask = env.action_masks()
    assert np.isfinite(costs[mask]).all() and np.isinf(costs[~mask]).all()
    assert costs[DEFAULT_ACTION] >= 0


# --- replay figures and environment throughput (dynamiccl replay) ------------------------------------

def test_busiest_rank_compute_is_the_rank_with_the_most_compute():
    program = StepProgram.from_trace(Trace.read(TP_SP[0]))
    per_rank = [0.0] * len(program.ranks)
    for op in range(program.num_ops):
        if program.op_is_compute[op]:
            per_rank[program.op_rank[op]] += program.op_base_us[op]
    assert len(set(per_rank)) > 1  # the stages differ, so "busiest" means something
    assert program.busiest_rank_compute_us() == pytest.approx(max(per_rank), rel=1e-12)


def test_replay_case_reports_the_default_replay_of_the_case():
    from dynamiccl.tuning.throughput import replay_case

    case = Case(*PP)
    figures = replay_case(case, state=3)
    loaded = load_case(case)
    program = loaded.program
    assert figures.step_time_us == new_replay(loaded, 3).run()
    assert 0 < figures.busiest_rank_compute_us == program.busiest_rank_compute_us() < figures.step_time_us
    assert (figures.ops, figures.calls, figures.decisions) == (program.num_ops, program.num_calls,
                                                               len(program.tunable_calls))
    assert figures.cost_model == loaded.costs.description and figures.nccl_version == loaded.env.nccl_version
    assert figures.replay_s > 0 and figures.replays_per_s == 1.0 / figures.replay_s
    assert list(figures.to_json()) == ["trace", "env", "state", "cost_model", "nccl_version", "ops", "calls",
                                       "decisions", "step_time_us", "busiest_rank_compute_us", "compile_and_cost_s",
                                       "replay_s", "replays_per_s"]
    assert figures.to_json()["trace"] == PP[0] and figures.to_json()["state"] == 3
    assert replay_case(case, state=4, model="nccl").cost_model.startswith("NCCL ")


def test_env_steps_per_s_steps_the_environment_with_valid_random_actions():
    from dynamiccl.tuning.throughput import _UniformValidActions, env_steps_per_s

    assert env_steps_per_s(Case(*PP), 300) > 0  # more steps than one episode: it resets as episodes end
    with pytest.raises(ValueError, match="steps must be >= 1"):
        env_steps_per_s(Case(*PP), 0)
    mask = np.zeros(NUM_ACTIONS, dtype=bool)
    mask[[DEFAULT_ACTION, 5, 17]] = True
    agent = _UniformValidActions(0)
    drawn = [agent.act(mask) for _ in range(3000)]
    counts = {action: drawn.count(action) for action in set(drawn)}
    assert set(counts) == {DEFAULT_ACTION, 5, 17} and min(counts.values()) > 900
