"""Tests of dynamiccl.table.policy_export: a policy exported as a decision table reproduces the policy
exactly on the calls it was built from, generalises to unseen sizes by the geometric-midpoint rule,
stays small for smooth policies, and survives JSON and (lossy) CSV round trips."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from dynamiccl.callkey import CallKey
from dynamiccl.nccl import KEEP, TUNABLE_FUNCS, Algorithm, Func, Protocol, supported_configs
from dynamiccl.table import MAX_BYTES, DecisionTable, Rule, json_format, nvidia_csv
from dynamiccl.table.policy_export import (
    QUERY_COLUMNS,
    csv_compatible,
    decisions_of_table,
    rule_choice,
    size_grid,
    table_from_policy,
)
from dynamiccl.tuning.actions import (
    ACTION_ALGO,
    ACTION_CHUNK,
    ACTION_CHANNELS,
    ACTION_PROTO,
    NUM_ACTIONS,
    NUM_CALL_ACTIONS,
    action_index,
)

PROVENANCE = {"policy": "test", "seed": 0}

# --- valid actions per collective --------------------------------------------------------------------


def _valid_actions(coll: Func) -> np.ndarray:
    """Action 0 and every action whose (algorithm, protocol) NCCL can run for ``coll``."""
    pairs = {(int(a), int(p)) for a, p in supported_configs(coll)}
    return np.array([0] + [a for a in range(1, NUM_ACTIONS)
                           if (int(ACTION_ALGO[a]), int(ACTION_PROTO[a])) in pairs])


VALID = {int(f): _valid_actions(f) for f in TUNABLE_FUNCS}


def _pick(coll: np.ndarray, choice: np.ndarray) -> np.ndarray:
    """A valid action for each row: ``VALID[coll][choice % len(VALID[coll])]``."""
    out = np.empty(len(coll), dtype=np.int64)
    for value in np.unique(coll):
        rows = coll == value
        valid = VALID[int(value)]
        out[rows] = valid[choice[rows] % len(valid)]
    return out


# --- policies (vectorised, deterministic) ------------------------------------------------------------


def _mix(frame: pd.DataFrame, columns=QUERY_COLUMNS) -> np.ndarray:
    """A seeded 64-bit hash of the given columns of each row (splitmix-style; wraps mod 2**64)."""
    h = np.full(len(frame), 0x9E3779B97F4A7C15, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for index, col in enumerate(columns):
            h ^= frame[col].to_numpy().astype(np.uint64) + np.uint64(0x632BE59BD9B4E019 * (index + 1) % 2**64)
            h *= np.uint64(0xBF58476D1CE4E5B9)
            h ^= h >> np.uint64(31)
    return h


def hash_policy(frame: pd.DataFrame) -> np.ndarray:
    """Worst case: an unrelated valid action for every distinct call."""
    return _pick(frame["coll"].to_numpy(), (_mix(frame) % np.uint64(1 << 20)).astype(np.int64))


THRESHOLDS = (4096, 3 * 2**20)  # bytes: < 4 KiB, < 3 MiB, the rest


def _size_band(nbytes: np.ndarray) -> np.ndarray:
    return np.searchsorted(np.array(THRESHOLDS), nbytes, side="right")


def threshold_policy(frame: pd.DataFrame) -> np.ndarray:
    """Depends only on the group and the size band; band 2 of even-nranks groups is NCCL's default."""
    group_salt = (_mix(frame, ("coll", "nranks", "nnodes", "num_pipe_ops", "reg_buff"))
                  % np.uint64(1000)).astype(np.int64)
    band = _size_band(frame["nbytes"].to_numpy())
    # 1 + band*7 + salt never repeats an action across bands (7 > 3 bands, valid sets are >= 24).
    actions = _pick(frame["coll"].to_numpy(), 1 + band * 7 + group_salt * 21)
    default = (band == 2) & (frame["nranks"].to_numpy() % 2 == 0)
    return np.where(default, 0, actions)


def position_policy(frame: pd.DataFrame) -> np.ndarray:
    """The threshold policy, except every 7th position and positions < 3 take other actions."""
    base = threshold_policy(frame)
    position = frame["position"].to_numpy()
    coll = frame["coll"].to_numpy()
    special = _pick(coll, 5 + position % 2)
    early = _pick(coll, np.full(len(frame), 11))
    return np.where(position < 3, early, np.where(position % 7 == 0, special, base))


POLICIES = {"hash": hash_policy, "threshold": threshold_policy, "position": position_policy}


# --- random call sets --------------------------------------------------------------------------------


def random_calls(seed: int, n_calls: int = 2000, n_groups: int = 6, sizes_per_group: int = 40) -> pd.DataFrame:
    """Several groups; per group a pool of sizes (1 B .. 1 GiB, log-uniform) seen at many positions
    (0..500), plus exact duplicate rows."""
    rng = np.random.default_rng(seed)
    groups = []
    for _ in range(n_groups):
        nnodes = int(rng.choice([1, 2, 4]))
        groups.append(dict(coll=int(rng.choice([int(f) for f in TUNABLE_FUNCS])),
                           nranks=nnodes * int(rng.choice([1, 4, 8])), nnodes=nnodes,
                           num_pipe_ops=int(rng.choice([1, 2])), reg_buff=int(rng.choice([0, 1]))))
    rows = []
    for group in groups:
        pool = np.unique(np.rint(np.exp2(rng.uniform(0, 30, sizes_per_group))).astype(np.int64))
        count = n_calls // n_groups
        rows.append(pd.DataFrame({**group,
                                  "nbytes": rng.choice(pool, count),
                                  "position": rng.integers(0, 501, count)}))
    calls = pd.concat(rows, ignore_index=True)
    duplicates = calls.sample(n=len(calls) // 4, replace=True, random_state=seed)
    calls = pd.concat([calls, duplicates], ignore_index=True)
    calls["step"] = 0  # an extra column the exporter must ignore
    return calls.sample(frac=1.0, random_state=seed + 1).reset_index(drop=True)


def _lookup(table: DecisionTable, row) -> Rule | None:
    return table.lookup(CallKey(Func(int(row.coll)), int(row.nbytes), int(row.nranks), int(row.nnodes),
                                position=int(row.position), num_pipe_ops=int(row.num_pipe_ops),
                                reg_buff=int(row.reg_buff)))


def _choice(rule: Rule) -> dict:
    return {"algorithm": rule.algorithm, "protocol": rule.protocol, "channels": rule.channels,
            "chunk_bytes": rule.chunk_bytes}


def _is_position_rule(rule: Rule) -> bool:
    return rule.position != KEEP


def _group_key(rule_or_row) -> tuple:
    return tuple(int(getattr(rule_or_row, col)) for col in ("coll", "nranks", "nnodes", "num_pipe_ops", "reg_buff"))


# --- rule_choice ---------------------------------------------------------------------------------------


def test_rule_choice_maps_actions_to_rule_fields():
    assert rule_choice(0) == {"algorithm": None, "protocol": None, "channels": KEEP, "chunk_bytes": KEEP}
    assert rule_choice(action_index(Algorithm.RING, Protocol.LL, 0)) == {
        "algorithm": Algorithm.RING, "protocol": Protocol.LL, "channels": KEEP, "chunk_bytes": KEEP}
    assert rule_choice(np.int64(action_index(Algorithm.TREE, Protocol.SIMPLE, 8))) == {
        "algorithm": Algorithm.TREE, "protocol": Protocol.SIMPLE, "channels": 8, "chunk_bytes": KEEP}
    assert rule_choice(action_index(Algorithm.RING, Protocol.SIMPLE, 0, 262144)) == {
        "algorithm": Algorithm.RING, "protocol": Protocol.SIMPLE, "channels": KEEP, "chunk_bytes": 262144}
    for action in range(1, NUM_CALL_ACTIONS):
        choice = rule_choice(action)
        expected_channels = int(ACTION_CHANNELS[action]) or KEEP
        assert (int(choice["algorithm"]), int(choice["protocol"]), choice["channels"], choice["chunk_bytes"]) == (
            ACTION_ALGO[action], ACTION_PROTO[action], expected_channels, int(ACTION_CHUNK[action]) or KEEP)
    with pytest.raises(ValueError):
        rule_choice(NUM_CALL_ACTIONS)
    with pytest.raises(ValueError):
        rule_choice(-1)
    with pytest.raises(TypeError):
        rule_choice(1.0)


# --- exact reproduction --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", sorted(POLICIES))
def test_table_reproduces_policy_on_every_call(name, seed):
    policy = POLICIES[name]
    calls = random_calls(seed, n_calls=600 if name == "hash" else 2000)
    table = table_from_policy(policy, calls, provenance=PROVENANCE)
    expected = policy(calls[list(QUERY_COLUMNS)])

    # Reference semantics: DecisionTable.lookup, one distinct call at a time.
    distinct = calls[list(QUERY_COLUMNS)].assign(action=expected).drop_duplicates()
    for row in distinct.itertuples(index=False):
        rule = _lookup(table, row)
        assert rule is not None, row
        assert _choice(rule) == rule_choice(int(row.action)), row

    # Vectorised semantics, every call including duplicates.
    np.testing.assert_array_equal(decisions_of_table(table, calls), expected)

    # Structure: every position rule is exact and precedes every range rule; range rules key the group.
    kinds = [_is_position_rule(rule) for rule in table.rules]
    assert kinds == sorted(kinds, reverse=True)
    for rule in table.rules:
        assert KEEP not in (rule.nranks, rule.nnodes, rule.num_pipe_ops, rule.reg_buff)
        if _is_position_rule(rule):
            assert rule.min_bytes == rule.max_bytes
    assert table.provenance["policy"] == "test"
    assert table.provenance["policy_export"]["position_rules"] == sum(kinds)


def test_range_rules_tile_each_group_without_gaps_or_overlap():
    calls = random_calls(3)
    table = table_from_policy(position_policy, calls, provenance=PROVENANCE)
    by_group: dict[tuple, list[Rule]] = {}
    for rule in table.rules:
        if not _is_position_rule(rule):
            by_group.setdefault(_group_key(rule), []).append(rule)
    assert set(by_group) == {_group_key(row) for row in calls.itertuples()}
    for rules in by_group.values():
        assert rules[0].min_bytes == 0 and rules[-1].max_bytes == MAX_BYTES
        for before, after in zip(rules, rules[1:]):
            assert after.min_bytes == before.max_bytes + 1
            assert _choice(after) != _choice(before)  # equal neighbours would have been merged


def test_policy_is_queried_in_one_batch_with_query_columns_only():
    calls = random_calls(4)
    batches = []

    def recording(frame):
        batches.append(frame)
        return threshold_policy(frame)

    table_from_policy(recording, calls, provenance=PROVENANCE)
    assert len(batches) == 1
    assert tuple(batches[0].columns) == QUERY_COLUMNS
    assert all(dtype == np.int64 for dtype in batches[0].dtypes)
    # distinct calls + per group the grid sizes that are not seen sizes
    grid = size_grid(2)
    expected = len(calls[list(QUERY_COLUMNS)].drop_duplicates()) + sum(
        len(np.setdiff1d(grid, group["nbytes"])) for _, group in calls.groupby(
            ["coll", "nranks", "nnodes", "num_pipe_ops", "reg_buff"]))
    assert len(batches[0]) == expected


def test_majority_decides_position_free_rule_and_ties_take_lowest_action():
    # One group, one size seen at positions 0..4: actions 9, 9, 4, 4, 2 -> tie 9/4, majority 4.
    ring = [a for a in VALID[int(Func.ALLREDUCE)] if a]
    by_position = {0: ring[9], 1: ring[9], 2: ring[4], 3: ring[4], 4: ring[2]}

    def policy(frame):
        return np.array([by_position.get(int(p), ring[4]) for p in frame["position"]])

    calls = pd.DataFrame({"coll": int(Func.ALLREDUCE), "nbytes": 1 << 20, "nranks": 8, "nnodes": 1,
                          "position": list(by_position), "num_pipe_ops": 1, "reg_buff": 0})
    table = table_from_policy(policy, calls, provenance=PROVENANCE)
    position_rules = [rule for rule in table.rules if _is_position_rule(rule)]
    assert sorted(rule.position for rule in position_rules) == [0, 1, 4]
    size_rule = table.lookup(CallKey(Func.ALLREDUCE, 1 << 20, 8, 1, position=77))  # an unseen position
    assert _choice(size_rule) == rule_choice(ring[4])
    np.testing.assert_array_equal(decisions_of_table(table, calls), policy(calls))


# --- size-threshold policy: few rules, generalisation ---------------------------------------------------


def test_threshold_policy_gives_one_range_rule_per_run_and_no_position_rules():
    calls = random_calls(5, n_calls=6000)
    table = table_from_policy(threshold_policy, calls, provenance=PROVENANCE)
    n_groups = len({_group_key(row) for row in calls.itertuples()})
    assert not any(_is_position_rule(rule) for rule in table.rules)
    # Three size bands, each covered by grid points, three distinct actions: 3 rules per group.
    assert len(table.rules) == 3 * n_groups
    assert len(table.rules) < 100  # thousands of calls, a handful of rules


def test_smooth_position_policy_stays_small():
    calls = random_calls(6, n_calls=6000)
    table = table_from_policy(position_policy, calls, provenance=PROVENANCE)
    assert len(calls) >= 7000
    assert len(table.rules) < 1000
    np.testing.assert_array_equal(decisions_of_table(table, calls), position_policy(calls))


@pytest.mark.parametrize("points_per_octave", [1, 2, 4])
def test_unseen_sizes_take_the_decision_of_the_log_nearest_point(points_per_octave):
    rng = np.random.default_rng(7)
    calls = random_calls(7, n_calls=1200)
    table = table_from_policy(threshold_policy, calls, provenance=PROVENANCE,
                              grid_points_per_octave=points_per_octave)
    grid = size_grid(points_per_octave)
    for _, group in calls.groupby(["coll", "nranks", "nnodes", "num_pipe_ops", "reg_buff"]):
        seen = np.unique(group["nbytes"])
        points = np.union1d(seen, grid)  # the sizes the table was built from
        decision = threshold_policy(group.iloc[[0] * len(points)].assign(nbytes=points).reset_index(drop=True))

        # Random unseen sizes, including beyond the grid.
        probes = np.unique(np.rint(np.exp2(rng.uniform(0, 45, 400))).astype(np.int64))
        probes = np.setdiff1d(probes, points)
        right = np.searchsorted(points, probes)  # first point > probe
        expected = []
        for probe, r in zip(probes, right):
            if r == len(points):
                expected.append(decision[-1])
            elif r == 0:
                expected.append(decision[0])
            else:
                a, c = int(points[r - 1]), int(points[r])
                expected.append(decision[r - 1] if int(probe) ** 2 <= a * c else decision[r])
        queries = group.iloc[[0] * len(probes)].assign(nbytes=probes, position=-1).reset_index(drop=True)
        np.testing.assert_array_equal(decisions_of_table(table, queries), expected)

        # Around each threshold: the boundary is the geometric midpoint of the neighbouring points.
        for threshold in THRESHOLDS:
            r = np.searchsorted(points, threshold)  # first point >= threshold
            a, c = int(points[r - 1]), int(points[r])
            midpoint = math.isqrt(a * c)
            sides = group.iloc[[0, 0, 0, 0]].assign(nbytes=[a, midpoint, midpoint + 1, c]).reset_index(drop=True)
            got = decisions_of_table(table, sides)
            assert got[0] == got[1] == decision[r - 1]
            assert got[2] == got[3] == decision[r]
            assert a <= midpoint < c


def test_unseen_sizes_between_seen_ones_follow_the_policy_away_from_thresholds():
    calls = random_calls(8)
    table = table_from_policy(threshold_policy, calls, provenance=PROVENANCE)
    rng = np.random.default_rng(8)
    probes = calls.sample(500, random_state=8).reset_index(drop=True)
    probes["nbytes"] = np.rint(np.exp2(rng.uniform(0, 30, len(probes)))).astype(np.int64)
    # At least a factor 2 from a threshold, a grid point lies between the probe and the threshold.
    far = np.ones(len(probes), dtype=bool)
    for threshold in THRESHOLDS:
        ratio = probes["nbytes"] / threshold
        far &= (ratio <= 0.5) | (ratio >= 2)
    probes = probes[far].reset_index(drop=True)
    np.testing.assert_array_equal(decisions_of_table(table, probes), threshold_policy(probes))


# --- formats -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_json_round_trip(name):
    calls = random_calls(9, n_calls=500)
    table = table_from_policy(POLICIES[name], calls, provenance=PROVENANCE)
    again = json_format.read(json_format.write(table))
    assert again == table
    np.testing.assert_array_equal(decisions_of_table(again, calls), POLICIES[name](calls))


def nccl_shapes_of(calls: pd.DataFrame) -> dict:
    """Each (coll, nranks, nnodes, num_pipe_ops) of ``calls`` -> NCCL's model of one shipped cluster."""
    from dynamiccl.costmodel.nccl_model import NcclModel
    from dynamiccl.envspec import resolve_env

    model = NcclModel(resolve_env("dgx-h100"))
    shapes = calls[["coll", "nranks", "nnodes", "num_pipe_ops"]].drop_duplicates()
    return {(Func(int(c)), int(r), int(n), int(p)): model for c, r, n, p in shapes.itertuples(index=False)}


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_csv_compatible_writes_and_reads_back(name):
    calls = random_calls(10, n_calls=500)
    table = table_from_policy(POLICIES[name], calls, provenance=PROVENANCE)
    compatible = csv_compatible(table, nccl_shapes_of(calls))
    text = nvidia_csv.write(compatible)  # lossy=False: must not need to drop anything
    back = nvidia_csv.read(text)
    assert back.rules == compatible.rules
    assert compatible.rules[-5:] == nvidia_csv.example_default_rules()  # other shapes: the plugin's 1 channel
    assert not any(_is_position_rule(rule) or rule.algorithm is None for rule in compatible.rules[:-5])
    note = compatible.provenance["csv_compatible"]
    assert note["source_rules"] == len(table.rules)
    assert note["dropped_position_rules"] == sum(_is_position_rule(rule) and not rule.keeps_nccl
                                                 for rule in table.rules)
    assert note["keep_rules_written_as_nccl_choice"] == sum(rule.keeps_nccl for rule in table.rules)
    # The acting rules it keeps stay in table order.
    kept = [rule for rule in compatible.rules if rule in table.rules]
    assert kept == [rule for rule in table.rules if rule in kept]


# --- decisions_of_table ----------------------------------------------------------------------------------


def test_decisions_of_table_matches_lookup_semantics():
    ar = int(Func.ALLREDUCE)
    table = DecisionTable((
        Rule(Func.ALLREDUCE, 0, 100, position=3, algorithm=Algorithm.TREE, protocol=Protocol.LL, channels=4),
        Rule(Func.ALLREDUCE, 0, 100, nranks=8, algorithm=Algorithm.RING, protocol=Protocol.SIMPLE, channels=12),
        Rule(Func.ALLREDUCE, 50, 1000),  # explicit NCCL default
        Rule(Func.ALLREDUCE, 0, MAX_BYTES, algorithm=Algorithm.RING, protocol=Protocol.LL),
    ))
    calls = pd.DataFrame({
        "coll": [ar, ar, ar, ar, ar, int(Func.BROADCAST)],
        "nbytes": [10, 10, 60, 5000, 2**62, 10],
        "nranks": [8, 8, 16, 16, 16, 8],
        "nnodes": [1, 1, 2, 2, 2, 1],
        "position": [3, -1, 2, 0, -1, 3],
        "num_pipe_ops": 1, "reg_buff": 0,
    })
    expected = [
        action_index(Algorithm.TREE, Protocol.LL, 4),
        action_index(Algorithm.RING, Protocol.SIMPLE, 8),  # 12 channels -> nearest choice below
        0,  # the explicit default rule
        action_index(Algorithm.RING, Protocol.LL, 0),
        action_index(Algorithm.RING, Protocol.LL, 0),
        0,  # no rule for broadcast
    ]
    np.testing.assert_array_equal(decisions_of_table(table, calls), expected)
    rules = [_lookup(table, row) for row in calls.itertuples(index=False)]
    assert [table.rules.index(rule) if rule else None for rule in rules] == [0, 1, 2, 3, 3, None]


def test_decisions_of_table_refuses_rules_without_an_action():
    table = DecisionTable((Rule(Func.ALLREDUCE, 0, MAX_BYTES, algorithm=Algorithm.RING),))
    calls = pd.DataFrame({"coll": [int(Func.ALLREDUCE)], "nbytes": [1], "nranks": [2], "nnodes": [1],
                          "position": [0], "num_pipe_ops": [1], "reg_buff": [0]})
    with pytest.raises(ValueError, match="keeps NCCL's protocol"):
        decisions_of_table(table, calls)


# --- errors ----------------------------------------------------------------------------------------------


def _one_call(**overrides) -> pd.DataFrame:
    row = {"coll": int(Func.ALLREDUCE), "nbytes": 1024, "nranks": 8, "nnodes": 1, "position": 0,
           "num_pipe_ops": 1, "reg_buff": 0}
    row.update(overrides)
    return pd.DataFrame({key: [value] for key, value in row.items()})


def test_bad_policy_outputs_are_refused():
    calls = _one_call(coll=int(Func.BROADCAST))
    tree = action_index(Algorithm.TREE, Protocol.SIMPLE, 0)  # broadcast runs ring only
    with pytest.raises(ValueError, match="cannot run"):
        table_from_policy(lambda f: np.full(len(f), tree), calls, provenance={})
    with pytest.raises(ValueError, match="out of range|expected a call action 0"):
        table_from_policy(lambda f: np.full(len(f), NUM_CALL_ACTIONS), calls, provenance={})
    with pytest.raises(ValueError, match="one action per row"):
        table_from_policy(lambda f: np.zeros(len(f) + 1, dtype=int), calls, provenance={})
    with pytest.raises(TypeError, match="integer"):
        table_from_policy(lambda f: np.zeros(len(f)), calls, provenance={})


@pytest.mark.parametrize("overrides, column", [
    ({"position": -1}, "position"), ({"coll": int(Func.SEND)}, "coll"), ({"nnodes": 9}, "nnodes"),
    ({"reg_buff": 2}, "reg_buff"), ({"nbytes": -1}, "nbytes"),
])
def test_bad_calls_are_refused(overrides, column):
    with pytest.raises(ValueError, match=column):
        table_from_policy(threshold_policy, _one_call(**overrides), provenance={})


def test_missing_column_and_bad_grid_are_refused():
    with pytest.raises(ValueError, match="reg_buff"):
        table_from_policy(threshold_policy, _one_call().drop(columns="reg_buff"), provenance={})
    with pytest.raises(ValueError, match="grid_points_per_octave"):
        table_from_policy(threshold_policy, _one_call(), provenance={}, grid_points_per_octave=0)


def test_no_calls_gives_an_empty_table_without_querying():
    def never(frame):
        raise AssertionError("decide must not be called")

    table = table_from_policy(never, _one_call().iloc[:0], provenance=PROVENANCE)
    assert table.rules == ()
