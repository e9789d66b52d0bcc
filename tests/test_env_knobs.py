"""TuningEnv with the knobs: communicator decisions before the calls, chunk-size actions, their masks,
rewards, agents, the search reference and the export of a knobs policy."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from dynamiccl.knobs.comm_config import COMM_CHOICES, NO_EFFECT_SHARE, CommConfig
from dynamiccl.nccl import Algorithm, Func
from dynamiccl.table.policy_export import export_policy_tables
from dynamiccl.tuning.actions import (
    ACTION_ALGO, ACTION_CHANNELS, ACTION_CHUNK, COMM_ACTION_BASE, DEFAULT_ACTION, NUM_ACTIONS, NUM_CALL_ACTIONS,
    NUM_KNOBS_ACTIONS, comm_action, describe_action,
)
from dynamiccl.tuning.agents import (
    GreedyPerCallAgent, NcclDefaultAgent, OnlineAgent, PolicyAgent, RandomAgent, SearchAgent, StaticBestAgent,
    TableAgent, earned_setting,
)
from dynamiccl.tuning.cases import Case, default_schedule, load_case, new_replay
from dynamiccl.tuning.config import load_config
from dynamiccl.tuning.env import TuningEnv
from dynamiccl.tuning.evaluate import evaluate, run_episode
from dynamiccl.tuning.observation import KNOBS_OBS_SIZE, OBS_SIZE
from dynamiccl.tuning.online import UCBBandit
from dynamiccl.tuning.policy_file import PolicyNetwork, load_policy, save_policy
from dynamiccl.tuning.search import search_case
from dynamiccl.tuning.timeline import Replay

REPO = Path(__file__).resolve().parents[1]
SMALL = (str(REPO / "traces" / "ref-dp2-tp2.parquet"), "h100-ib-2x8-heavy-compute")  # 4 ranks, 3 shapes
MAX_CTAS_2 = COMM_CHOICES.index(CommConfig(max_ctas=2))
ZERO = COMM_CHOICES.index(CommConfig(cta_policy="zero"))


def spec(tmp_path: Path, version: str, symmetric: bool) -> str:
    """dgx-h100 with another NCCL version and [nccl] symmetric_memory."""
    text = (REPO / "envs" / "dgx-h100.toml").read_text()
    assert text.count('version = "2.23.4"') == 1
    text = text.replace('version = "2.23.4"', f'version = "{version}"\nsymmetric_memory = {str(symmetric).lower()}')
    path = tmp_path / f"h100-{version}-{symmetric}.toml"
    path.write_text(text)
    return str(path)


def play(env: TuningEnv, choose, state: int = 0):
    """One episode with ``choose(env, mask)``; (rewards, final info)."""
    env.reset(options={"case": 0, "state": state})
    rewards = []
    while True:
        _, reward, terminated, truncated, info = env.step(choose(env, env.action_masks()))
        rewards.append(reward)
        assert not truncated
        if terminated:
            return rewards, info


@pytest.fixture(scope="module")
def env() -> TuningEnv:
    return TuningEnv([SMALL], knobs=True)


def test_spaces_and_the_gymnasium_checker(env):
    assert env.action_space.n == NUM_KNOBS_ACTIONS == 285 and env.observation_space.shape == (KNOBS_OBS_SIZE,) == (23,)
    plain = TuningEnv([SMALL])
    assert plain.action_space.n == NUM_ACTIONS == 169 and plain.observation_space.shape == (OBS_SIZE,)
    check_env(env, skip_render_check=True)
    sb3_check_env(env)
    obs, _ = env.reset(options={"case": 0, "state": 0})
    # The communicator phase first: one decision per shape, the phase flag and the kind set.
    shapes = env.communicator_shapes
    assert [s.kind for s in shapes] == ["dp", "tp", "mp"] and env.pending is None
    assert obs[OBS_SIZE] == 1.0 and obs[OBS_SIZE + 1:].sum() == 1.0
    mask = env.action_masks()
    assert mask[DEFAULT_ACTION] and not mask[1:COMM_ACTION_BASE].any() and not mask[COMM_ACTION_BASE]
    for _ in shapes:
        obs, reward, *_ = env.step(DEFAULT_ACTION)
        assert reward == 0.0
    # Then the calls: phase 0, no kind, no communicator action, no chunk action (the world has no
    # measurement of chunk size).
    assert env.pending is not None and env.pending_communicator is None
    assert obs[OBS_SIZE:].sum() == 0.0
    mask = env.action_masks()
    assert mask.shape == (NUM_KNOBS_ACTIONS,) and not mask[NUM_CALL_ACTIONS:].any()
    assert not mask[NUM_ACTIONS:NUM_CALL_ACTIONS].any() and mask[1:NUM_ACTIONS].any()
    assert describe_action(comm_action(MAX_CTAS_2)) == "comm:max_ctas=2"
    assert describe_action(NUM_ACTIONS) == "tree/ll/nccl-ch/64KiB"


@pytest.mark.parametrize("version, symmetric, zero_allowed", [
    ("2.28.3", True, True), ("2.28.3", False, False), ("2.27.3", True, False)])
def test_zero_cta_needs_nccl_2_28_and_symmetric_memory(tmp_path, version, symmetric, zero_allowed):
    loaded = load_case(Case(SMALL[0], spec(tmp_path, version, symmetric)), knobs=True)
    masks = loaded.communicators.masks  # every shape is on one node (one NVLink domain)
    assert masks[:, ZERO].tolist() == [zero_allowed] * len(masks)
    assert masks[:, MAX_CTAS_2].all() and masks[:, 0].all()


def test_a_cap_masks_channels_above_it_and_chunks_stay_masked_in_the_world():
    costs = load_case(Case(*SMALL), knobs=True).costs
    assert costs.mask.shape[1] == NUM_CALL_ACTIONS and not costs.mask[:, NUM_ACTIONS:].any()
    capped_some = False
    for row in np.flatnonzero(costs.row_config == MAX_CTAS_2):
        nvls = np.isin(ACTION_ALGO, [Algorithm.NVLS, Algorithm.NVLS_TREE])
        assert not (costs.mask[row] & ~nvls & (ACTION_CHANNELS > 2)).any()
        assert costs.channels[row, DEFAULT_ACTION] <= 2  # NCCL's own choice runs on the capped pool
        default_row = costs.config_row[row, 0]
        capped_some |= bool((costs.mask[default_row] & ~nvls & (ACTION_CHANNELS > 2)).any())
    assert capped_some  # the default config allowed more channels than the cap
    assert (ACTION_CHUNK[costs.mask.any(axis=0)] == 0).all()


def test_a_forced_cap_replays_the_capped_rows_and_its_reward_is_its_step_effect(env):
    loaded = env._cases[0]
    shape = 0  # the dp communicator
    configs = tuple(MAX_CTAS_2 if s == shape else 0 for s in range(len(loaded.communicators.shapes)))
    rows = loaded.communicators.call_rows(configs)
    changed = [c for c, (a, b) in enumerate(zip(rows, loaded.costs.call_row)) if a != b]
    assert changed and all(loaded.communicators.call_shape[c] == shape for c in changed)
    # The cost table says the capped calls run differently (fewer channels, other times) ...
    costs = loaded.costs
    assert any(costs.time_us[rows[c], 0, 0, 0] != costs.time_us[costs.call_row[c], 0, 0, 0] for c in changed)
    # ... and the replay under the config is exactly a replay of a table holding those rows as NCCL's.
    swapped = dataclasses.replace(costs, call_row=rows)
    capped_time = new_replay(loaded, 3, configs=configs).run()
    reference = new_replay(dataclasses.replace(loaded, costs=swapped), 3)
    assert isinstance(reference, Replay) and reference.run() == capped_time
    default_time = default_schedule(loaded, 3)[0]
    assert capped_time != default_time
    # The env credits that decision with its own effect on the step.
    env.reset(options={"case": 0, "state": 3})
    _, reward, *_ = env.step(comm_action(MAX_CTAS_2))
    assert reward == pytest.approx(100.0 * (default_time - capped_time) / default_time, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_the_return_is_exactly_the_step_time_saved(env, seed):
    rng = np.random.default_rng(seed)
    rewards, info = play(env, lambda env, mask: int(rng.choice(np.flatnonzero(mask))), state=seed)
    assert sum(rewards) == pytest.approx(100.0 * (1.0 - info["step_time_us"] / info["default_step_time_us"]),
                                         abs=1e-9)
    assert set(info["communicators"]) == {"dp 2x1", "tp 2x1", "mp 2x1"}


def test_agents_act_with_the_knobs(env):
    default = run_episode(env, NcclDefaultAgent(), 0, 5)["step"]
    assert default["speedup"] == 1.0 and default["invalid_actions"] == 0
    assert default["communicators"] == '{"dp 2x1": "nccl-default", "mp 2x1": "nccl-default", "tp 2x1": "nccl-default"}'
    for agent in (RandomAgent(0), GreedyPerCallAgent(), OnlineAgent(UCBBandit())):
        step = run_episode(env, agent, 0, 5)["step"]
        assert step["invalid_actions"] == 0 and step["decisions"] > 3
    # Greedy's communicator choice is the config with the shortest step replay, when it earns its
    # change to the job: here the best gains 0.6 us of a 544 ms step, so NCCL's default stays.
    env.reset(options={"case": 0, "state": 5})
    times = env.simulator.communicator_step_times()
    best = int(np.argmin(times))
    assert best != DEFAULT_ACTION and times[best] > times[DEFAULT_ACTION] * (1 - NO_EFFECT_SHARE)
    assert GreedyPerCallAgent().act_communicator(env, None, env.action_masks()) == DEFAULT_ACTION
    earned = times.copy()
    earned[best] = times[DEFAULT_ACTION] * (1 - 2 * NO_EFFECT_SHARE)
    assert earned_setting(earned) == best and earned_setting(times) == DEFAULT_ACTION
    assert np.isfinite(times[DEFAULT_ACTION]) and np.isinf(times[1:COMM_ACTION_BASE + 1]).all()
    # A policy deciding every call of a new case in one batch at the episode's start (before its
    # communicator decisions) sees the calls under NCCL's default configs.
    calls, _, masks = env.episode_calls()
    assert masks.shape == (len(calls), NUM_KNOBS_ACTIONS)
    assert (masks == env._case_masks[0][np.asarray(env._case.costs.call_row)[calls]]).all()
    static = StaticBestAgent.fit(env, [(0, 0), (0, 1)])
    assert set(static.communicators) == {("dp", 2, 1), ("tp", 2, 1), ("mp", 2, 1)}
    again = StaticBestAgent.from_json(static.to_json())
    assert again.communicators == static.communicators and again.table == static.table
    assert run_episode(env, static, 0, 5)["step"]["invalid_actions"] == 0


def test_search_with_the_knobs_is_never_worse_and_evaluate_records_the_configs(env):
    plain = search_case(load_case(Case(*SMALL)), [0])
    search = SearchAgent()
    results = evaluate([search, NcclDefaultAgent()], env, [0], progress=False)
    knobs = next(iter(search.results.values()))
    assert knobs.step_time_us[0] <= plain.step_time_us[0]
    assert knobs.default_step_time_us == plain.default_step_time_us
    # No setting moves this step by NO_EFFECT_SHARE: the search changes no communicator.
    assert not any(knobs.communicators.values()) and not knobs.table.communicators
    assert "communicators" in results.steps.columns and results.meta["knobs"] is True
    search_row = results.steps[results.steps["agent"] == "search"].iloc[0]
    assert search_row["speedup"] == pytest.approx(knobs.speedup, rel=1e-12)


def test_the_search_takes_a_setting_that_earns_it_and_its_table_replays_the_step(tmp_path):
    case = fsdp_case(tmp_path)
    found = search_case(load_case(case, knobs=True), [0], max_sweeps=1)
    chosen = {shape.kind: COMM_CHOICES[c] for shape, c in found.communicators.items() if c}
    assert "fsdp" in chosen and len(found.table.communicators) == len(chosen)
    assert found.step_time_us[0] < found.default_step_time_us[0] * (1 - NO_EFFECT_SHARE)
    # The searched table, applied as the plugin and the launcher apply it, replays the search's step time.
    table_step = run_episode(TuningEnv([case], knobs=True), TableAgent(found.table), 0, 0)["step"]
    assert table_step["step_time_us"] == pytest.approx(found.step_time_us[0], rel=1e-12)


def test_a_knobs_policy_exports_its_communicators(tmp_path, env):
    config_path = tmp_path / "knobs.toml"
    config_path.write_text(f"""
[experiment]
name = "knobs"
knobs = true
[train]
states = 2
[[train.cases]]
trace = "{SMALL[0]}"
env = "{SMALL[1]}"
""")
    config = load_config(config_path)
    assert config.knobs and config.resume_fingerprint()["experiment.knobs"] is True
    in_train = tmp_path / "train-knobs.toml"
    in_train.write_text(config_path.read_text().replace("knobs = true\n", "").replace("[train]\n", "[train]\nknobs = true\n"))
    assert load_config(in_train).knobs and not load_config(in_train).raw["experiment"].get("knobs")
    rng = np.random.default_rng(0)
    bias = rng.normal(0, 0.1, NUM_KNOBS_ACTIONS)
    bias[comm_action(MAX_CTAS_2)] = 50.0  # every communicator: max_ctas=2
    network = PolicyNetwork(((rng.normal(0, 1.0, (8, KNOBS_OBS_SIZE)), np.zeros(8)),),
                            (rng.normal(0, 0.1, (NUM_KNOBS_ACTIONS, 8)), bias), knobs=True,
                            provenance={"config_path": str(config_path)})
    path = save_policy(tmp_path / "policy.zip", network, network.provenance)
    assert load_policy(path).knobs and load_policy(path).num_actions == NUM_KNOBS_ACTIONS
    table = export_policy_tables(path, evidence_states=0).table
    assert {(r.kind, r.nranks, r.nnodes) for r in table.communicators} == {("dp", 2, 1), ("tp", 2, 1), ("mp", 2, 1)}
    assert all(r.config == CommConfig(max_ctas=2) for r in table.communicators)
    # The table gives every communicator what the policy gives it.
    policy, exported = PolicyAgent(network), TableAgent(table)
    env.reset(options={"case": 0, "state": 0})
    while env.pending_communicator is not None:
        obs, mask = env._communicators.obs[env.pending_communicator], env.action_masks()
        action = policy.act_communicator(env, obs, mask)
        assert action == exported.act_communicator(env, obs, mask) == comm_action(MAX_CTAS_2)
        env.step(action)
    # The CLI writes the same table, and Megatron-LM's YAML of its communicator settings beside it.
    import yaml

    from dynamiccl.cli import main
    from dynamiccl.table import load

    out, megatron = tmp_path / "table.json", tmp_path / "nccl.yaml"
    assert main(["table", "export", "--policy", str(path), "-o", str(out), "--evidence-states", "0",
                 "--megatron-yaml", str(megatron)]) == 0
    assert load(out).communicators == table.communicators
    groups = yaml.safe_load(megatron.read_text())
    assert groups and all(fields == {"max_ctas": 2} for fields in groups.values())


def fsdp_case(tmp_path: Path, symmetric: bool = True) -> Case:
    """Llama-3 8B FSDP over one GB200 NVL4 node on NCCL 2.28.3: every AllGather one NVLink domain."""
    from dynamiccl.envspec import resolve_env
    from dynamiccl.workload.spec import WorkloadSpec

    text = (REPO / "envs" / "gb200-nvl4.toml").read_text()
    assert text.count('version = "2.25.1"') == 1
    text = text.replace('version = "2.25.1"', f'version = "2.28.3"\nsymmetric_memory = {str(symmetric).lower()}')
    env_path = tmp_path / "gb200-nvl4-symmetric.toml"
    env_path.write_text(text)
    workload = WorkloadSpec.from_dict({"model": "llama3-8b", "tp": 1, "pp": 1, "dp": 4, "dp_mode": "fsdp",
                                       "global_batch": 8}, "test")
    return Case(str(workload.cached_trace(tmp_path, resolve_env(str(env_path)).cluster)), str(env_path))


def test_zero_cta_allgathers_run_on_copy_engines_without_a_launch_delay(tmp_path):
    loaded = load_case(fsdp_case(tmp_path), knobs=True)
    kinds = [shape.kind for shape in loaded.communicators.shapes]
    assert "fsdp" in kinds and loaded.communicators.masks[kinds.index("fsdp"), ZERO]
    configs = tuple(ZERO if kind == "fsdp" else 0 for kind in kinds)
    default, zero = new_replay(loaded, 0), new_replay(loaded, 0, configs=configs)
    default_us, zero_us = default.run(), zero.run()
    program = loaded.program
    gathers = [c for c in program.tunable_calls if program.call_key[c].coll == Func.ALLGATHER]
    scatters = [c for c in program.tunable_calls if program.call_key[c].coll == Func.REDUCESCATTER]
    assert gathers and scatters
    # NCCL's CTAs wait for a GEMM to free SMs (nccl#1431); copy engines hold none, so they never wait.
    assert sum(default.call_launch_delay_us[c] for c in gathers) > 0
    assert sum(zero.call_launch_delay_us[c] for c in gathers) == 0
    # The rows say why: copy collectives on the copy engines, reductions still on CTAs.
    rows = loaded.costs.rows_under([configs[s] if s >= 0 else 0 for s in loaded.communicators.call_shape])
    assert all(loaded.costs.copy_engines[rows[c]] for c in gathers)
    assert not any(loaded.costs.copy_engines[rows[c]] for c in scatters)
    assert zero_us < default_us

