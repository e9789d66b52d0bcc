"""Tests of dynamiccl.tuning.online, the online baselines (UCB bandit, AutoCCL-style coordinate
descent). They run against synthetic cost functions over the action catalogue, with small
multiplicative noise from a seeded rng. No wall-clock timing is involved.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from dynamiccl.nccl import NUM_ALGORITHMS, NUM_PROTOCOLS, Algorithm, Protocol
from dynamiccl.tuning.actions import (
    ACTION_CELL, ACTION_CHANNELS, CHANNEL_CHOICES, DEFAULT_ACTION, action_index, action_mask,
)
from dynamiccl.tuning.online import CoordinateDescent, OnlineLearner, UCBBandit

ALLREDUCE = 4
NUM_CELLS = NUM_ALGORITHMS * NUM_PROTOCOLS
NONZERO_CHANNELS = [c for c in CHANNEL_CHOICES if c > 0]


def cell(algo: Algorithm, proto: Protocol) -> int:
    return int(algo) * NUM_PROTOCOLS + int(proto)


# AllReduce on one node without NVLS/CollNet: Tree and Ring with the three protocols.
TREE_LL, TREE_LL128, TREE_SIMPLE = (cell(Algorithm.TREE, p) for p in Protocol)
RING_LL, RING_LL128, RING_SIMPLE = (cell(Algorithm.RING, p) for p in Protocol)
SIX_CELLS = (TREE_LL, TREE_LL128, TREE_SIMPLE, RING_LL, RING_LL128, RING_SIMPLE)


def make_mask(cells=SIX_CELLS, channel_cap: int = 32, nvls_channel_cap: int = 16) -> np.ndarray:
    enabled = np.zeros(NUM_CELLS, dtype=bool)
    enabled[list(cells)] = True
    return action_mask(enabled, channel_cap, nvls_channel_cap)


def arm(c: int) -> int:
    """The bandit arm of a cell: that cell with NCCL's runtime channel count."""
    return action_index(c // NUM_PROTOCOLS, c % NUM_PROTOCOLS, 0)


def run(learner: OnlineLearner, cost, keys, mask, rng, noise: float = 0.01) -> list[int]:
    """Feed ``learner`` one call per key. The time is ``cost(action, nbytes)`` times (1 + noise)."""
    actions = []
    for key in keys:
        action = learner.act(key, mask)
        assert mask[action]
        actions.append(action)
        learner.observe(key, action, cost(action, key[1]) * (1.0 + noise * rng.standard_normal()))
    return actions


# --- UCB bandit ----------------------------------------------------------------------------------

# Relative cost of each arm against NCCL's default (1.0). Ring/Simple is best. Tree/LL and Ring/LL
# are more than 5% worse (the safety gate should drop them). Tree/LL128 is 3% worse, which is
# within the gate.
ARM_FACTOR = {DEFAULT_ACTION: 1.0, arm(TREE_LL): 1.30, arm(TREE_LL128): 1.03, arm(TREE_SIMPLE): 0.95,
              arm(RING_LL): 1.20, arm(RING_LL128): 0.90, arm(RING_SIMPLE): 0.80}
BEST_ARM = arm(RING_SIMPLE)


def arm_cost(action: int, nbytes: int) -> float:
    """Latency plus bandwidth term, so sizes within one log2 bucket differ by up to ~2x."""
    return (5.0 + nbytes / 1e4) * ARM_FACTOR[action]


def bucket_keys(rng, n: int, sizes=(1 << 20, 3 << 19, (1 << 21) - 4096)) -> list[tuple]:
    """AllReduce calls whose sizes all fall in the 2^20 bucket but differ by up to 2x."""
    return [(ALLREDUCE, int(rng.choice(sizes)), 8, 1) for _ in range(n)]


def test_bandit_buckets_by_floor_log2():
    assert UCBBandit.bucket_of((ALLREDUCE, 0, 8, 1)) == (ALLREDUCE, 0, 8, 1)
    assert UCBBandit.bucket_of((ALLREDUCE, 1, 8, 1)) == (ALLREDUCE, 0, 8, 1)
    assert UCBBandit.bucket_of((ALLREDUCE, 1 << 20, 8, 1)) == (ALLREDUCE, 20, 8, 1)
    assert UCBBandit.bucket_of((ALLREDUCE, (1 << 21) - 1, 8, 1)) == (ALLREDUCE, 20, 8, 1)
    assert UCBBandit.bucket_of((2, 1 << 21, 16, 2)) == (2, 21, 16, 2)


def test_bandit_arms_are_default_plus_nccl_channel_cells():
    assert UCBBandit.arms(make_mask()) == sorted(ARM_FACTOR)
    assert UCBBandit.arms(make_mask(cells=(RING_SIMPLE,))) == [DEFAULT_ACTION, BEST_ARM]
    assert all(ACTION_CHANNELS[a] == 0 for a in UCBBandit.arms(make_mask()))


def test_bandit_tries_every_arm_once_in_index_order():
    rng = np.random.default_rng(0)
    bandit, mask = UCBBandit(), make_mask()
    keys = [(ALLREDUCE, 1 << 20, 8, 1)] * len(ARM_FACTOR)
    assert run(bandit, arm_cost, keys, mask, rng) == sorted(ARM_FACTOR)


def test_bandit_converges_to_the_best_arm():
    rng = np.random.default_rng(1)
    bandit, mask = UCBBandit(), make_mask()
    actions = run(bandit, arm_cost, bucket_keys(rng, 3000), mask, rng)
    # Every arm was tried. Sizes span 2x within the bucket, and each size has its own default
    # reference, so the best arm was not mistaken for a slow one and gated.
    assert set(actions) == set(ARM_FACTOR)
    assert np.mean(np.array(actions[-500:]) == BEST_ARM) > 0.9
    (summary,) = bandit.state()["buckets"].values()
    assert summary["chosen_action"] == BEST_ARM
    assert BEST_ARM not in summary["gated"]


def test_bandit_safety_gate_drops_arms_more_than_5pct_worse_than_default():
    rng = np.random.default_rng(2)
    keys = bucket_keys(rng, 3000)
    mask = make_mask()
    slow = {arm(TREE_LL), arm(RING_LL)}

    # Low noise here: the gate decides on one try per arm, and 3% vs 5% must not be a coin flip.
    gated = UCBBandit(safety=True)
    actions = run(gated, arm_cost, keys, mask, np.random.default_rng(3), noise=0.003)
    for a in slow:
        assert actions.count(a) == 1  # tried once, then never again
    assert actions.count(arm(TREE_LL128)) >= 1  # 3% worse: within the gate, still an arm
    (summary,) = gated.state()["buckets"].values()
    assert set(summary["gated"]) == slow

    ungated = UCBBandit(safety=False)
    actions = run(ungated, arm_cost, keys, mask, np.random.default_rng(3), noise=0.003)
    assert all(actions.count(a) > 1 for a in slow)  # UCB alone keeps revisiting them
    (summary,) = ungated.state()["buckets"].values()
    assert summary["gated"] == []


def test_bandit_plays_default_first_for_each_new_size():
    bandit, mask = UCBBandit(), make_mask()
    small, large = (ALLREDUCE, 1 << 20, 8, 1), (ALLREDUCE, (1 << 21) - 4096, 8, 1)
    assert bandit.act(small, mask) == DEFAULT_ACTION
    bandit.observe(small, DEFAULT_ACTION, arm_cost(DEFAULT_ACTION, small[1]))
    assert bandit.act(small, mask) == arm(TREE_LL)  # the next arm, at a size with a reference
    # Same bucket, but no default time at this size yet: measure the reference first.
    assert bandit.act(large, mask) == DEFAULT_ACTION


def test_bandit_drops_an_arm_whose_cell_gets_masked():
    rng = np.random.default_rng(4)
    bandit = UCBBandit()
    run(bandit, arm_cost, bucket_keys(rng, 500), make_mask(), rng)
    no_ring_simple = make_mask(cells=[c for c in SIX_CELLS if c != RING_SIMPLE])
    # Ring/LL128 (0.90) and Tree/Simple (0.95) are close, so UCB needs a while to settle.
    actions = run(bandit, arm_cost, bucket_keys(rng, 2000), no_ring_simple, rng)
    assert BEST_ARM not in actions
    assert np.mean(np.array(actions[-200:]) == arm(RING_LL128)) > 0.9  # the next best arm


# --- Coordinate descent --------------------------------------------------------------------------

# Per cell: a cost factor, and the index in NONZERO_CHANNELS (1, 2, 4, 8, 16, 24, 32) of the channel
# count that minimises its unimodal curve. Ring/Simple at 16 channels is the global optimum.
CELL_FACTOR = {TREE_LL: 1.4, TREE_LL128: 1.1, TREE_SIMPLE: 0.95,
               RING_LL: 1.3, RING_LL128: 0.9, RING_SIMPLE: 0.7}
CELL_OPT = {TREE_LL: 0, TREE_LL128: 6, TREE_SIMPLE: 3, RING_LL: 1, RING_LL128: 5, RING_SIMPLE: 4}
GLOBAL_BEST = action_index(Algorithm.RING, Protocol.SIMPLE, 16)


def channel_cost(action: int, nbytes: int) -> float:
    """Unimodal in the channel index inside each cell: 8% slower per step away from the optimum.
    NCCL's own count (channels 0) costs like the optimum plus one step."""
    base = 5.0 + nbytes / 1e4
    if action == DEFAULT_ACTION:
        return base
    c, ch = int(ACTION_CELL[action]), int(ACTION_CHANNELS[action])
    steps = 1 if ch == 0 else abs(NONZERO_CHANNELS.index(ch) - CELL_OPT[c])
    return base * CELL_FACTOR[c] * (1.0 + 0.08 * steps)


def run_until_converged(learner: CoordinateDescent, key, mask, rng, limit: int = 1000) -> int:
    """Feed calls with ``key`` until the search converges. Returns the number of calls."""
    for calls in range(1, limit + 1):
        run(learner, channel_cost, [key], mask, rng, noise=0.002)
        if learner.converged(key):
            return calls
    raise AssertionError("coordinate descent did not converge")


def best_channels_per_cell(learner: CoordinateDescent, key) -> dict[int, int]:
    """Per cell: the channel count with the lowest mean measured time."""
    best: dict[int, tuple[float, int]] = {}
    (summary,) = learner.state()["keys"].values()
    for action, entry in summary["tries"].items():
        a = int(action)
        if a == DEFAULT_ACTION:
            continue
        c = int(ACTION_CELL[a])
        if c not in best or entry["mean_us"] < best[c][0]:
            best[c] = (entry["mean_us"], int(ACTION_CHANNELS[a]))
    return {c: ch for c, (_, ch) in best.items()}


def test_coordinate_descent_measures_default_first_then_the_middle_count():
    learner, mask, key = CoordinateDescent(), make_mask(), (ALLREDUCE, 1 << 20, 8, 1)
    assert learner.act(key, mask) == DEFAULT_ACTION
    learner.observe(key, DEFAULT_ACTION, 100.0)
    # The first subspace in cell order is Tree/LL, and 8 is the middle of 1..32.
    assert learner.act(key, mask) == action_index(Algorithm.TREE, Protocol.LL, 8)


def test_coordinate_descent_finds_each_subspace_optimum_then_exploits():
    rng = np.random.default_rng(5)
    learner, mask, key = CoordinateDescent(), make_mask(), (ALLREDUCE, 1 << 20, 8, 1)
    assert not learner.converged(key)
    calls = run_until_converged(learner, key, mask, rng)

    exhaustive = 1 + len(SIX_CELLS) * len(NONZERO_CHANNELS)
    assert calls == learner.measurements < exhaustive
    assert best_channels_per_cell(learner, key) == {c: NONZERO_CHANNELS[CELL_OPT[c]] for c in SIX_CELLS}

    exploit = run(learner, channel_cost, [key] * 100, mask, rng, noise=0.002)
    assert exploit == [GLOBAL_BEST] * 100
    assert learner.state()["keys"][next(iter(learner.state()["keys"]))]["chosen_action"] == GLOBAL_BEST


def test_coordinate_descent_respects_the_channel_cap():
    rng = np.random.default_rng(6)
    learner, key = CoordinateDescent(), (ALLREDUCE, 1 << 22, 8, 1)
    mask = make_mask(channel_cap=16)  # counts 1..16. Ring/LL128's optimum (24) is out of reach.
    run_until_converged(learner, key, mask, rng)
    best = best_channels_per_cell(learner, key)
    assert best[RING_LL128] == 16 and best[TREE_LL128] == 16  # clipped optima: the range's end
    assert best[RING_SIMPLE] == 16 and best[TREE_LL] == 1


def test_coordinate_descent_repeats_and_averages():
    rng = np.random.default_rng(7)
    once, thrice = CoordinateDescent(), CoordinateDescent(repeats=3)
    key, mask = (ALLREDUCE, 1 << 20, 8, 1), make_mask()
    run_until_converged(once, key, mask, rng)
    run_until_converged(thrice, key, mask, rng)
    assert thrice.measurements == 3 * once.measurements
    (summary,) = thrice.state()["keys"].values()
    assert all(entry["tries"] == 3 for entry in summary["tries"].values())
    assert thrice.act(key, mask) == GLOBAL_BEST


def test_coordinate_descent_falls_back_to_default_when_best_is_masked():
    rng = np.random.default_rng(8)
    learner, key = CoordinateDescent(), (ALLREDUCE, 1 << 20, 8, 1)
    run_until_converged(learner, key, make_mask(), rng)
    assert learner.act(key, make_mask()) == GLOBAL_BEST
    assert learner.act(key, make_mask(cells=(TREE_SIMPLE,))) == DEFAULT_ACTION


def test_coordinate_descent_tunes_each_exact_workload_separately():
    rng = np.random.default_rng(9)
    learner, mask = CoordinateDescent(), make_mask()
    a, b = (ALLREDUCE, 1 << 20, 8, 1), (ALLREDUCE, (1 << 20) + 4096, 8, 1)
    run_until_converged(learner, a, mask, rng)
    assert not learner.converged(b)
    assert learner.act(b, mask) == DEFAULT_ACTION  # a new key starts with its reference
    assert len(learner.state()["keys"]) == 2


# --- Both learners -------------------------------------------------------------------------------

LEARNERS = [UCBBandit, CoordinateDescent]


@pytest.mark.parametrize("make", LEARNERS)
def test_new_key_gets_the_default_action(make):
    assert make().act((ALLREDUCE, 12345, 4, 1), make_mask()) == DEFAULT_ACTION


@pytest.mark.parametrize("make", LEARNERS)
def test_never_returns_a_masked_action(make):
    rng = np.random.default_rng(10)
    learner = make()
    keys = [(coll, nbytes, 8, nnodes) for coll in (2, 3, 4) for nbytes in (0, 4096, 1 << 20, 1 << 26)
            for nnodes in (1, 2)]
    caps = (0, 1, 2, 4, 8, 16, 24, 32, 64)
    for _ in range(5000):
        enabled = rng.random(NUM_CELLS) < 0.4
        mask = action_mask(enabled, int(rng.choice(caps)), int(rng.choice(caps)))
        key = keys[rng.integers(len(keys))]
        action = learner.act(key, mask)
        assert isinstance(action, int) and mask[action], (key, action)
        learner.observe(key, action, float(rng.uniform(10.0, 1000.0)))


@pytest.mark.parametrize("make", LEARNERS)
def test_deterministic_given_the_same_calls(make):
    cost = arm_cost if make is UCBBandit else channel_cost
    sequences = []
    states = []
    for _ in range(2):
        rng = np.random.default_rng(11)
        keys = [(ALLREDUCE, int(rng.choice([1 << 20, 3 << 19, 1 << 24])), 8, 1) for _ in range(1500)]
        learner = make()
        sequences.append(run(learner, cost, keys, make_mask(), rng))
        states.append(json.dumps(learner.state(), sort_keys=True))
    assert sequences[0] == sequences[1]
    assert states[0] == states[1]
    assert len(set(sequences[0])) > 3  # it actually explored


@pytest.mark.parametrize("make", LEARNERS)
def test_measurements_counts_observe_calls(make):
    learner, mask, key = make(), make_mask(), (ALLREDUCE, 1 << 20, 8, 1)
    assert learner.measurements == 0
    for i in range(1, 26):
        learner.observe(key, learner.act(key, mask), 100.0 + i)
        assert learner.measurements == i
    # An observation of an action that act() did not choose still counts.
    learner.observe(key, action_index(Algorithm.RING, Protocol.LL, 4), 50.0)
    assert learner.measurements == 26


@pytest.mark.parametrize("make", LEARNERS)
def test_state_is_json_serialisable(make):
    rng = np.random.default_rng(12)
    learner = make()
    cost = arm_cost if make is UCBBandit else channel_cost
    keys = bucket_keys(rng, 300) + [(3, 4096, 16, 2)] * 50
    run(learner, cost, keys, make_mask(), rng)
    state = json.loads(json.dumps(learner.state()))
    assert state["name"] == learner.name
    assert state["measurements"] == learner.measurements == len(keys)
    entries = state["buckets" if make is UCBBandit else "keys"]
    assert len(entries) == (2 if make is UCBBandit else 4)
    assert all("chosen_action" in entry for entry in entries.values())
