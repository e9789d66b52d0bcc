"""Export a learned policy as a decision table that the NCCL tuner plugin applies.

A policy (``decide``) maps a call -- the ``QUERY_COLUMNS`` -- to an action of
``dynamiccl.tuning.actions``. The plugin cannot run the policy, so ``table_from_policy`` samples it
and writes down what it chose as ``Rule``s, such that the table reproduces the policy *exactly* on
every call it was built from and generalises to sizes it has not seen.

Construction
------------
Calls are grouped by (coll, nranks, nnodes, num_pipe_ops, reg_buff); every rule of a group sets
those keys to the group's values, so rules of different groups never match the same call. In a
group:

(a) Each distinct seen ``nbytes`` is queried at every position it was seen at. The majority action
    over those positions (ties: the lowest action) is the size's position-free decision. Each
    (position, nbytes) whose action differs gets an exact rule (min_bytes = max_bytes = nbytes,
    that position). Exact rules of all groups come first in the table, so they win over the range
    rules below.
(b) To generalise to unseen sizes, the policy is also queried on a log2 grid of sizes,
    ``grid_points_per_octave`` per octave from 1 byte to 2**40 bytes, at the group's *median seen
    position* (the lower median of the positions of the group's calls, duplicates counted, so it
    is a position that really occurs). A grid size that equals a seen size is dropped: the seen
    size's majority decision is the one the calls need.
(c) All (size, decision) points, sorted by size, are merged into runs of equal decisions, and each
    run becomes one range rule (position -1 = any) whose bounds split the gap to the neighbouring
    run at the integer geometric midpoint: with a the last size of one run and c the first of the
    next, sizes <= isqrt(a*c) belong to the first. So an unseen size gets the decision of its
    nearest point in log scale (ties: the smaller point), and a seen size always lies in its own
    run (a <= isqrt(a*c) < c). The first run starts at 0 bytes, the last ends at 2**64-1, so the
    group's range rules tile every size without overlap.

Runs of action 0 are written as explicit "NCCL default" rules (algorithm and protocol None,
channels -1) rather than left uncovered: that keeps ``lookup`` returning a rule for every call,
and a table concatenated after this one (or a catch-all rule appended later) cannot take those
calls over.

Why this is exact on the calls it was built from: the policy is deterministic and sees only the
query columns, so one (group, nbytes, position) always gets one action. A call whose action is its
size's majority matches no exact rule (those exist only for differing actions) and falls to the
range rule holding its size, whose decision is that majority; any other call matches its exact
rule first.

One difference under ``DecisionTable.choose`` (not ``lookup``): if NCCL has disabled the cell an
exact position rule asks for, the plugin skips that rule and the call gets its size's range rule
(the majority decision) instead of NCCL's default. A policy trained with action masking never
picks a disabled cell on the calls it was built from.

From a policy file
------------------
``export_policy_tables`` is the whole of ``dynamiccl table export --policy``: it collects the calls of an
experiment config's cases with their action masks, decides them with a saved policy, confines the
table to its evidence (``dynamiccl.table.evidence``: each acting rule kept only on the call sizes
where its choice beat NCCL's default when the cases were replayed; NCCL's own choice elsewhere) and
returns the table, its form for NVIDIA's example CSV (``csv_compatible``) and the notes for the
user. ``table_from_policy`` alone is the unconfined write-down, exact on the calls and extrapolating to every size.

A policy trained with the knobs (``TuningEnv(knobs=True)``) also chooses chunk sizes (its rules then
carry ``chunk_bytes``, through ``rule_choice``) and communicator configs: the policy is evaluated at
the communicator observation of every communicator shape (group kind, nranks, nnodes) of the cases,
under the intersection of that shape's masks, and each shape whose choice is not NCCL's default
becomes a ``CommunicatorRule`` of the table's ``communicators`` (:func:`policy_communicators`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import pandas as pd

from dynamiccl.callkey import FIELDS as CALL_KEY_FIELDS
from dynamiccl.errors import InputError
from dynamiccl.nccl import FUNC_OP, KEEP, TUNABLE_FUNCS, Func, is_supported
from dynamiccl.knobs.chunk import CHUNK_CHOICES_BYTES
from dynamiccl.knobs.comm_config import COMM_CHOICES
from dynamiccl.tuning.actions import (
    ACTION_ALGO,
    ACTION_PROTO,
    COMM_ACTION_BASE,
    DEFAULT_ACTION,
    NUM_CALL_ACTIONS,
    NUM_COMM_ACTIONS,
    action_index,
    describe_action,
    nearest_channels,
    rule_choice,
)
from dynamiccl.table.model import MAX_BYTES, CommunicatorRule, DecisionTable, Rule, StepShape
from dynamiccl.table.nccl_choice import ChoosesLikeNccl, nccl_choice_rules
from dynamiccl.table.nvidia_csv import example_default_rules, inexpressible

QUERY_COLUMNS = CALL_KEY_FIELDS  # one column per CallKey field
GROUP_COLUMNS = ("coll", "nranks", "nnodes", "num_pipe_ops", "reg_buff")

GRID_MAX_BYTES = 2**40  # top of the generalisation grid; larger sizes take the last run's decision
# Rows per call of ``decide``: large enough to be "few batches" for any realistic call set, small
# enough that a neural-network policy does not run out of (GPU) memory on one batch.
DECIDE_BATCH_ROWS = 1 << 16
# Dynamics states per case replayed for a table's evidence (``export_policy_tables``): two, so that a
# choice must win under two congestion/noise draws, at two replays per case.
EVIDENCE_STATES = 2
EVIDENCE_SPLITS = ("train", "all")  # which cases give a confined table its evidence
_INT64_MAX = 2**63 - 1

Policy = Callable[[pd.DataFrame], np.ndarray]


# --- actions <-> rule choices ----------------------------------------------------------------------

def _rule_action(rule: Rule, index: int) -> int:
    """The catalogue action a rule stands for (see ``decisions_of_table``)."""
    if rule.keeps_nccl:
        return DEFAULT_ACTION
    if rule.algorithm is None or rule.protocol is None:
        # "Keep NCCL's algorithm (or protocol) but force the other one / the channels" has no
        # action: every action 1.. fixes both. Guessing one would misreport what the plugin does.
        raise ValueError(f"rules[{index}] keeps NCCL's "
                         f"{'algorithm' if rule.algorithm is None else 'protocol'} but sets "
                         "other choices; no action of the catalogue expresses that")
    channels = 0 if rule.channels == KEEP else nearest_channels(rule.channels)
    if rule.chunk_bytes in CHUNK_CHOICES_BYTES and channels == 0:  # a chunk-size action (knobs)
        return action_index(int(rule.algorithm), int(rule.protocol), 0, rule.chunk_bytes)
    return action_index(int(rule.algorithm), int(rule.protocol), channels)


# --- input checks ----------------------------------------------------------------------------------

def _validated_calls(calls: pd.DataFrame, *, allow_unknown_position: bool) -> pd.DataFrame:
    """The query columns of ``calls`` as int64, fresh 0..n-1 index; ValueError naming the column."""
    if not isinstance(calls, pd.DataFrame):
        raise TypeError(f"calls must be a pandas DataFrame, got {type(calls).__name__}")
    missing = [col for col in QUERY_COLUMNS if col not in calls.columns]
    if missing:
        raise ValueError(f"calls lacks column(s) {', '.join(missing)}; expected {', '.join(QUERY_COLUMNS)}")
    for col in QUERY_COLUMNS:
        if not pd.api.types.is_integer_dtype(calls[col]) or pd.api.types.is_bool_dtype(calls[col]):
            raise ValueError(f"calls column {col!r} must hold integers, has dtype {calls[col].dtype}")
    if calls.empty:
        return pd.DataFrame({col: np.zeros(0, dtype=np.int64) for col in QUERY_COLUMNS})
    if calls["nbytes"].max() > _INT64_MAX:  # only reachable with a uint64 column
        raise ValueError("calls column 'nbytes' holds values above 2**63-1 bytes")
    frame = pd.DataFrame({col: calls[col].to_numpy().astype(np.int64) for col in QUERY_COLUMNS})

    lowest_position = -1 if allow_unknown_position else 0
    tunable = [int(func) for func in TUNABLE_FUNCS]
    checks = (
        ("coll", frame["coll"].isin(tunable), f"a tunable ncclFunc_t {tunable}"),
        ("nbytes", frame["nbytes"] >= 0, "bytes >= 0"),
        ("nranks", frame["nranks"] >= 1, ">= 1"),
        ("nnodes", (frame["nnodes"] >= 1) & (frame["nnodes"] <= frame["nranks"]), "1 .. nranks"),
        ("position", frame["position"] >= lowest_position,
         ">= -1 (-1 = unknown)" if allow_unknown_position else
         ">= 0 (a table can only reproduce a call whose position it can key on)"),
        ("num_pipe_ops", frame["num_pipe_ops"] >= 1, ">= 1"),
        ("reg_buff", frame["reg_buff"].isin([0, 1]), "0 or 1"),
    )
    for col, ok, expected in checks:
        if not ok.all():
            row = int(np.flatnonzero(~ok.to_numpy())[0])
            raise ValueError(f"calls row {row}, column {col!r}: {frame[col].iloc[row]} is out of "
                             f"range; expected {expected}")
    return frame


def _run_policy(decide: Policy, queries: pd.DataFrame) -> np.ndarray:
    """``decide`` over ``queries`` in batches of DECIDE_BATCH_ROWS, checked: one valid action per row."""
    parts = []
    for start in range(0, len(queries), DECIDE_BATCH_ROWS):
        batch = queries.iloc[start:start + DECIDE_BATCH_ROWS].reset_index(drop=True)
        result = np.asarray(decide(batch))
        if result.shape != (len(batch),):
            raise ValueError(f"decide returned shape {result.shape} for {len(batch)} queries; "
                             "expected one action per row")
        if result.dtype.kind not in "iu":
            raise TypeError(f"decide must return integer actions, got dtype {result.dtype}")
        parts.append(result.astype(np.int64))
    actions = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    bad = (actions < 0) | (actions >= NUM_CALL_ACTIONS)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"decide returned action {actions[row]} for query {queries.iloc[row].to_dict()}; "
                         f"expected a call action 0 .. {NUM_CALL_ACTIONS - 1}")
    # Rule refuses (algorithm, protocol) pairs NCCL cannot run; say which policy output caused it.
    for coll, action in {(int(c), int(a)) for c, a in zip(queries["coll"], actions)}:
        if action != DEFAULT_ACTION and not is_supported(Func(coll), ACTION_ALGO[action], ACTION_PROTO[action]):
            raise ValueError(f"decide chose action {action} ({describe_action(action)}) for "
                             f"{FUNC_OP[Func(coll)]}, which NCCL cannot run")
    return actions


def size_grid(points_per_octave: int) -> np.ndarray:
    """The generalisation grid: sorted distinct integer sizes round(2**(i/k)), 1 .. 2**40 bytes."""
    if isinstance(points_per_octave, bool) or not isinstance(points_per_octave, (int, np.integer)) \
            or points_per_octave < 1:
        raise ValueError(f"grid_points_per_octave must be an integer >= 1, got {points_per_octave!r}")
    octaves = int(math.log2(GRID_MAX_BYTES))
    exponents = np.arange(octaves * points_per_octave + 1) / points_per_octave
    # Below a few bytes neighbouring points round to the same integer; keep each size once.
    return np.unique(np.rint(np.exp2(exponents)).astype(np.int64))


# --- table construction ----------------------------------------------------------------------------

def _majority(seen: pd.DataFrame) -> pd.Series:
    """Per nbytes, the most frequent action over its distinct positions (ties: lowest action).

    Counting distinct positions (not calls) minimises the number of exact rules, which is one per
    (position, nbytes) whose action differs from the majority.
    """
    counts = seen.groupby(["nbytes", "action"]).size().reset_index(name="count")
    counts = counts.sort_values(["nbytes", "count", "action"], ascending=[True, False, True])
    return counts.drop_duplicates("nbytes").set_index("nbytes")["action"]


def _range_bounds(sizes: np.ndarray, decisions: np.ndarray) -> list[tuple[int, int, int]]:
    """(min_bytes, max_bytes, action) per run of equal decisions over the sorted points."""
    starts = [0] + [i for i in range(1, len(sizes)) if decisions[i] != decisions[i - 1]]
    runs = []
    for number, first in enumerate(starts):
        last = (starts[number + 1] if number + 1 < len(starts) else len(sizes)) - 1
        if number + 1 < len(starts):
            # Python ints: a*c overflows int64 above 2**31.5 bytes.
            max_bytes = math.isqrt(int(sizes[last]) * int(sizes[last + 1]))
        else:
            max_bytes = MAX_BYTES
        min_bytes = 0 if number == 0 else runs[-1][1] + 1
        runs.append((min_bytes, max_bytes, int(decisions[first])))
    return runs


def table_from_policy(decide: Policy, calls: pd.DataFrame, *, provenance: dict,
                      grid_points_per_octave: int = 2, steps: tuple[StepShape, ...] = ()) -> DecisionTable:
    """A decision table that reproduces ``decide`` on every call of ``calls`` (see the module docstring).

    Args:
        decide: the policy, vectorised and deterministic: given a DataFrame with ``QUERY_COLUMNS``
            (int64) it returns one action per row. It is called once per DECIDE_BATCH_ROWS
            queries (usually once): the distinct calls plus the grid queries of every group.
        calls: one row per call the table must reproduce, with ``QUERY_COLUMNS`` as integers
            (other columns are ignored; duplicates are fine). ``coll`` is a tunable ncclFunc_t
            (0..4); ``position`` >= 0 is the call's index among the collectives on its
            communicator within the step.
        provenance: JSON-serialisable description of the policy (stored in the table); this
            function adds a ``"policy_export"`` entry describing the construction.
        grid_points_per_octave: density of the size grid queried to generalise to unseen sizes.
        steps: the step lines the plugin counts positions with (``step_shapes``); stored in the table.

    Returns:
        Exact (position-specific) rules of every group first, then each group's range rules.

    Raises:
        ValueError / TypeError: for malformed ``calls``, a bad grid density, or a policy output
            that is not one valid action per row, or an action NCCL cannot run for the collective.
    """
    frame = _validated_calls(calls, allow_unknown_position=False)
    grid = size_grid(grid_points_per_octave)
    group_cols = list(GROUP_COLUMNS)

    # One query frame for every group: distinct seen calls, then each group's grid at its median
    # seen position. Querying in one go lets a neural policy run on a few large batches.
    seen = frame.drop_duplicates().sort_values(list(GROUP_COLUMNS) + ["nbytes", "position"],
                                               ignore_index=True)
    grid_parts = []
    for keys, group in frame.groupby(group_cols, sort=True):
        positions = np.sort(group["position"].to_numpy())
        median_position = int(positions[(len(positions) - 1) // 2])  # lower median: a seen position
        sizes = np.setdiff1d(grid, group["nbytes"].to_numpy())
        part = pd.DataFrame({"nbytes": sizes, "position": median_position})
        for col, value in zip(group_cols, keys):
            part[col] = int(value)
        grid_parts.append(part)
    grid_queries = (pd.concat(grid_parts, ignore_index=True) if grid_parts
                    else pd.DataFrame(columns=list(QUERY_COLUMNS), dtype=np.int64))
    queries = pd.concat([seen, grid_queries[list(QUERY_COLUMNS)]], ignore_index=True)
    queries = queries.astype(np.int64)[list(QUERY_COLUMNS)]
    actions = _run_policy(decide, queries)
    seen = seen.assign(action=actions[:len(seen)])
    grid_queries = grid_queries.assign(action=actions[len(seen):])

    exact_rules: list[Rule] = []
    range_rules: list[Rule] = []
    grid_by_group = {keys: part for keys, part in grid_queries.groupby(group_cols, sort=False)}
    for keys, group_seen in seen.groupby(group_cols, sort=True):
        keyed = dict(zip(group_cols, (int(value) for value in keys)))
        majority = _majority(group_seen)

        # (a) exact rules for the (position, nbytes) whose action is not the size's majority
        differs = group_seen["action"].to_numpy() != majority.loc[group_seen["nbytes"]].to_numpy()
        for row in group_seen[differs].itertuples(index=False):
            exact_rules.append(Rule(min_bytes=int(row.nbytes), max_bytes=int(row.nbytes),
                                    position=int(row.position), **keyed,
                                    **rule_choice(int(row.action))))

        # (b) + (c) range rules over seen sizes (majority) and grid sizes (median position)
        grid_part = grid_by_group.get(keys)
        sizes = majority.index.to_numpy(dtype=np.int64)
        decisions = majority.to_numpy(dtype=np.int64)
        if grid_part is not None and len(grid_part):
            sizes = np.concatenate([sizes, grid_part["nbytes"].to_numpy(dtype=np.int64)])
            decisions = np.concatenate([decisions, grid_part["action"].to_numpy(dtype=np.int64)])
        order = np.argsort(sizes, kind="stable")  # seen and grid sizes are disjoint: no ties
        for min_bytes, max_bytes, action in _range_bounds(sizes[order], decisions[order]):
            range_rules.append(Rule(min_bytes=min_bytes, max_bytes=max_bytes, **keyed,
                                    **rule_choice(action)))

    info = {
        "method": "dynamiccl.table.policy_export.table_from_policy",
        "calls": int(len(frame)),
        "distinct_calls": int(len(seen)),
        "groups": int(frame.groupby(group_cols).ngroups) if len(frame) else 0,
        "grid_points_per_octave": int(grid_points_per_octave),
        "grid_max_bytes": GRID_MAX_BYTES,
        "grid_position": "lower median of the group's call positions",
        "position_rules": len(exact_rules),
        "range_rules": len(range_rules),
    }
    shapes = {(step.nranks, step.nnodes) for step in steps}  # a rule's shape may count positions
    info["position_rules_without_step_line"] = sum(
        1 for rule in exact_rules if (rule.nranks, rule.nnodes) not in shapes)
    return DecisionTable(tuple(exact_rules + range_rules), {**provenance, "policy_export": info}, steps=steps)


def policy_communicators(decide: Callable[[np.ndarray, np.ndarray], np.ndarray], loaded_cases) -> tuple[CommunicatorRule, ...]:
    """A knobs policy's communicator configs: ``decide(obs, masks)`` (``PolicyNetwork.decide``) at the
    communicator observation of every communicator shape of ``loaded_cases`` (cases loaded with the
    knobs), under the intersection of the shape's masks over the cases; one ``CommunicatorRule`` per
    shape whose choice is not NCCL's default (the launcher applies them by group kind and shape).

    Raises:
        ValueError: the policy chose something other than action 0 or a communicator action.
    """
    shapes: dict = {}
    for loaded in loaded_cases:
        communicators = loaded.communicators
        for row, shape in enumerate(communicators.shapes):
            obs, mask = shapes.get(shape, (communicators.obs[row], communicators.masks[row]))
            shapes[shape] = (obs, mask & communicators.masks[row])
    if not shapes:
        return ()
    order = sorted(shapes, key=lambda shape: (shape.kind, shape.nranks, shape.nnodes))
    obs = np.stack([shapes[shape][0] for shape in order])
    masks = np.zeros((len(order), COMM_ACTION_BASE + NUM_COMM_ACTIONS), dtype=bool)
    masks[:, COMM_ACTION_BASE:] = np.stack([shapes[shape][1] for shape in order])
    masks[:, COMM_ACTION_BASE] = False  # NCCL's default is action 0, as in the env
    masks[:, DEFAULT_ACTION] = True
    actions = np.asarray(decide(obs, masks))
    rules = []
    for shape, action in zip(order, actions.tolist()):
        if action == DEFAULT_ACTION:
            continue
        if not COMM_ACTION_BASE < action < COMM_ACTION_BASE + NUM_COMM_ACTIONS:
            raise ValueError(f"the policy chose action {action} for communicator {shape.describe()}; expected 0 or "
                             f"{COMM_ACTION_BASE + 1} .. {COMM_ACTION_BASE + NUM_COMM_ACTIONS - 1}")
        rules.append(CommunicatorRule(shape.kind, shape.nranks, shape.nnodes, COMM_CHOICES[action - COMM_ACTION_BASE]))
    return tuple(rules)


def step_shapes(programs) -> tuple[tuple[StepShape, ...], list[str]]:
    """The step lines that let the plugin count positions, from compiled step programs.

    A communicator's line is its number of tunable calls per step and its step's first call (the
    anchor). Groups of one shape (nranks, nnodes) with the same anchor must agree on the count,
    else that anchor gets no line; a shape with a group that also runs collectives NCCL's tuner
    never sees (AlltoAll) gets none, since the plugin's count would differ from the trace's
    positions. Returns (step lines, reasons for what was left out).
    """
    per_shape: dict[tuple[int, int], set] = {}
    broken: dict[tuple[int, int], str] = {}
    for program in programs:
        by_group: dict[str, list[int]] = {}
        for call in range(program.num_calls):
            if program.call_key[call].coll in TUNABLE_FUNCS or program.call_key[call].coll == Func.ALLTOALL:
                by_group.setdefault(program.call_group[call], []).append(call)
        for group, calls in by_group.items():
            keys = sorted((program.call_key[c] for c in calls), key=lambda key: key.position)
            shape = (keys[0].nranks, keys[0].nnodes)
            if any(key.coll not in TUNABLE_FUNCS for key in keys) or [key.position for key in keys] != list(range(len(keys))):
                broken[shape] = f"group {group} runs collectives NCCL's tuner never sees"
                continue
            per_shape.setdefault(shape, set()).add((len(keys), keys[0].coll, keys[0].nbytes))
    steps, left_out = [], []
    for shape, variants in sorted(per_shape.items()):
        if shape in broken:
            left_out.append(f"{shape[0]} ranks on {shape[1]} nodes: {broken[shape]}")
            continue
        counts: dict[tuple[int, int], set[int]] = {}
        for count, func, nbytes in variants:
            counts.setdefault((func, nbytes), set()).add(count)
        for (func, nbytes), options in sorted(counts.items()):
            if len(options) > 1:
                left_out.append(f"{shape[0]} ranks on {shape[1]} nodes: groups whose steps start with "
                                f"{FUNC_OP[Func(func)]} of {nbytes} bytes run {sorted(options)} calls per step")
            else:
                steps.append(StepShape(shape[0], shape[1], options.pop(), func, nbytes))
    return tuple(steps), left_out


# --- applying and converting tables ----------------------------------------------------------------

def decisions_of_table(table: DecisionTable, calls: pd.DataFrame) -> np.ndarray:
    """The action each call gets from ``table`` by ``lookup`` (first match wins), as int64[len(calls)].

    No matching rule -> 0 (NCCL's default); an all-keep rule -> 0; otherwise the rule's
    (algorithm, protocol) with channels -1 -> 0 and a count outside ``CHANNEL_CHOICES`` rounded
    down by ``nearest_channels``; a chunk size of ``CHUNK_CHOICES_BYTES`` with NCCL's channels -> that
    chunk-size action. ``position`` -1 (unknown) is allowed and matches only rules with
    position -1, as in ``lookup``.

    Vectorised first-match: rules are walked in table order and each claims the calls it matches
    among those still unclaimed -- the same result as ``table.lookup`` per call, in numpy time.

    Raises:
        ValueError: for malformed ``calls``, or a matching rule that keeps NCCL's algorithm or
            protocol while setting the other (no catalogue action expresses it).
    """
    frame = _validated_calls(calls, allow_unknown_position=True)
    cols = {col: frame[col].to_numpy(dtype=np.int64) for col in QUERY_COLUMNS}
    actions = np.full(len(frame), DEFAULT_ACTION, dtype=np.int64)
    unclaimed = np.ones(len(frame), dtype=bool)
    for index, rule in enumerate(table.rules):
        if not unclaimed.any():
            break
        if rule.min_bytes > _INT64_MAX:
            continue  # no int64 size reaches it
        match = (unclaimed & (cols["coll"] == int(rule.coll))
                 & (cols["nbytes"] >= rule.min_bytes)
                 & (cols["nbytes"] <= min(rule.max_bytes, _INT64_MAX)))
        for key in ("nranks", "nnodes", "position", "num_pipe_ops", "reg_buff"):
            value = getattr(rule, key)
            if value != KEEP:
                match &= cols[key] == value
        if match.any():
            actions[match] = _rule_action(rule, index)
            unclaimed &= ~match
    return actions


def csv_compatible(table: DecisionTable, nccl_shapes: Mapping[tuple[Func, int, int, int], ChoosesLikeNccl]
                   ) -> DecisionTable:
    """``table`` as rules that NVIDIA's example CSV can express, such that NVIDIA's example plugin
    does what ``table`` means on calls of the shapes in ``nccl_shapes``.

    ``nccl_shapes`` maps each (coll, nranks, nnodes, num_pipe_ops) the table is for (the calls of
    the cases it was built from) to NCCL's model of its cluster (``NcclModel``). The CSV has no
    position key, cannot say "keep NCCL's algorithm/protocol", and NVIDIA's plugin runs a call no
    line takes on 1 channel (``nvidia_csv``). So, in table order:

    - a rule the CSV can hold is kept;
    - a rule keeping NCCL's algorithm and/or protocol (any position) becomes NCCL's choice written
      out, for each shape in ``nccl_shapes`` that it could match, over its byte range
      (``nccl_choice_rules``: bands of explicit cells, channels as the rule's); its range is also cut
      out of every later acting rule that could match the same calls (position aside), so that no
      call of another shape is handed to an acting rule the table did not apply to it;
    - an acting position-specific rule is dropped: its calls get their size's range rule.

    Then, per shape in ``nccl_shapes``, NCCL's choice over all sizes (the calls no rule takes) and
    finally ``nvidia_csv.example_default_rules``: calls of any other shape run NCCL's algorithm and
    protocol on 1 channel, which is what NVIDIA's plugin does with them and is said in the table.
    The result always saves as CSV without ``lossy``. It differs from ``table`` only where the CSV
    cannot follow: a call whose action differed from its size's majority at its position gets the
    majority (or, where that action was NCCL's own, NCCL's choice at every position); a call of a
    shape not in ``nccl_shapes`` that no kept rule takes runs on 1 channel; and NCCL's choice is
    its model's (a cell NCCL enables only at run time is not known to it). The returned provenance
    records what was dropped and written out.
    """
    out: list[Rule] = []
    cut_keeps: list[Rule] = []
    bands: dict[tuple, list[Rule]] = {}
    done: set[tuple] = set()  # shapes whose every call some written-out keep rule already takes

    def nccl_rules(rule: Rule) -> list[Rule]:
        written = []
        for shape, model in nccl_shapes.items():
            coll, nranks, nnodes, num_pipe_ops = shape
            if not rule.overlaps(Rule(coll, rule.min_bytes, rule.max_bytes, nranks=nranks, nnodes=nnodes,
                                      num_pipe_ops=num_pipe_ops), position=False):
                continue
            if rule.keeps_nccl and (rule.min_bytes, rule.max_bytes, rule.reg_buff) == (0, MAX_BYTES, KEEP):
                done.add(shape)  # every call of the shape that reaches this rule: nothing left for the end
            key = (shape, rule.algorithm, rule.protocol)
            if key not in bands:
                bands[key] = nccl_choice_rules(model, *shape, algorithm=rule.algorithm, protocol=rule.protocol)
            for band in bands[key]:
                low, high = max(band.min_bytes, rule.min_bytes), min(band.max_bytes, rule.max_bytes)
                if low <= high:
                    written.append(dataclasses.replace(band, min_bytes=low, max_bytes=high, reg_buff=rule.reg_buff,
                                                       channels=rule.channels))
        return written

    dropped_position = written_out = 0
    for rule in table.rules:
        if not inexpressible(rule):
            pieces = [rule]
            for keep in cut_keeps:
                pieces, _ = _cut(pieces, keep)
            out += pieces
        elif rule.algorithm is not None and rule.protocol is not None:
            dropped_position += 1
        else:
            resolved = nccl_rules(rule)
            written_out += 1
            out += resolved
            cut_keeps.append(rule)
    catch_all = []
    for shape, model in nccl_shapes.items():
        if shape not in done:
            catch_all += bands.get((shape, None, None)) or nccl_choice_rules(model, *shape)
    note = {
        "source_rules": len(table.rules),
        "dropped_position_rules": dropped_position,
        "keep_rules_written_as_nccl_choice": written_out,
        "shapes_with_nccl_choice": len(nccl_shapes),
        "note": "NVIDIA's example CSV: NCCL's choice is written out (NCCL's model) for the shapes of the cases; "
                "calls of other shapes that no line takes run on 1 channel under NVIDIA's plugin; no position "
                "key; the JSON table is the faithful one",
    }
    return DecisionTable(tuple(out + catch_all) + example_default_rules(),
                         {**table.provenance, "csv_compatible": note}, table.version)


def _cut(pieces: list[Rule], keep: Rule) -> tuple[list[Rule], int]:
    """``pieces`` with ``keep``'s byte range removed from those that could match its calls (position
    aside); returns the new pieces and how many were cut."""
    out, cuts = [], 0
    for piece in pieces:
        if not piece.overlaps(keep, position=False):
            out.append(piece)
            continue
        cuts += 1
        if piece.min_bytes < keep.min_bytes:
            out.append(dataclasses.replace(piece, max_bytes=keep.min_bytes - 1))
        if keep.max_bytes < piece.max_bytes:
            out.append(dataclasses.replace(piece, min_bytes=keep.max_bytes + 1))
    return out, cuts


# --- from a policy file ---------------------------------------------------------------------------

@dataclass(frozen=True)
class PolicyExport:
    """What ``export_policy_tables`` built.

    ``table``: the table that reproduces the policy on every call of the cases; ``csv_table``: the
    same for NVIDIA's example CSV (``csv_compatible``: NCCL's choice written out for the cases'
    shapes); ``notes``: what the user should know, one line each, in order; ``calls`` / ``cases``: how many calls of how many cases
    ``table`` was built from.
    """

    table: DecisionTable
    csv_table: DecisionTable
    notes: tuple[str, ...]
    calls: int
    cases: int


def export_policy_tables(policy_path: str | os.PathLike, *, cases_config: str | os.PathLike | None = None,
                         env: str | None = None, run_dir: str | os.PathLike | None = None,
                         evidence_states: int = EVIDENCE_STATES, evidence_split: str = "train",
                         progress: bool = False) -> PolicyExport:
    """A saved policy as a decision table for the calls of an experiment config's cases.

    Every tunable call of the config's train and held-out cases (only those on environment spec
    ``env`` if given) is a call the table must reproduce; the policy decides each under the
    intersection of the action masks its (coll, nranks, nnodes, num_pipe_ops) gets in those cases,
    and the step lines come from the cases' step programs (``step_shapes``).

    Args:
        policy_path: ``policy.zip`` from ``dynamiccl train``.
        cases_config: the experiment config whose cases give the calls (default: the one the
            policy names as its training config).
        env: the environment spec name the table is for (default: every env of the config).
        run_dir: the training run's directory, where the config's workloads are generated
            (default ``experiments/<name>/run``).
        evidence_states: dynamics states per case replayed to confine the table to its evidence
            (``dynamiccl.table.evidence``: the first of the config's training states for training
            cases, of its held-out states for held-out ones); 0 writes the policy down unconfined
            (every rule spans all sizes: for comparison only, not for deployment).
        evidence_split: ``"train"`` (default): evidence comes from the training cases only, so the
            held-out cases and the layout sweep judge the table on steps it never saw (a rule whose
            calls only the held-out cases make keeps NCCL's choice); ``"all"``: the held-out cases
            count as evidence too (for a table deployed after its evaluation; its held-out numbers
            are then in-sample).
        progress: show a progress bar while collecting evidence.

    Raises:
        InputError: (naming ``--cases-config`` / ``--env``, the command's options) if the policy
            names no config and none is given, or no case runs on ``env``; and whatever reading the
            policy, the config or its cases raises.
    """
    from dynamiccl.costmodel.nccl_model import NcclModel
    from dynamiccl.table.evidence import confine_to_evidence
    from dynamiccl.tuning.cases import load_case
    from dynamiccl.tuning.env import TuningEnv
    from dynamiccl.tuning.observation import encode, with_knobs_entries
    from dynamiccl.tuning.policy_file import load_policy
    from dynamiccl.tuning.config import load_config

    policy = load_policy(policy_path)
    config_path = cases_config or policy.provenance.get("config_path")
    if not config_path:
        raise InputError("--cases-config", None, "the policy does not name its training config; give one")
    config = load_config(config_path)
    where = config.run_dir(run_dir)
    if isinstance(evidence_states, bool) or not isinstance(evidence_states, int) or evidence_states < 0:
        raise InputError("--evidence-states", None, f"expected an integer >= 0, got {evidence_states!r}")
    if evidence_split not in EVIDENCE_SPLITS:
        raise InputError("--evidence-from", None, f"expected one of {', '.join(EVIDENCE_SPLITS)}, got {evidence_split!r}")
    train_cases = [c for c in config.train_cases(where) if not env or c.env == env]
    cases = train_cases + [c for c in config.heldout_cases(where) if not env or c.env == env]
    if not cases:
        raise InputError("--env", None, f"no case of {config_path} runs on {env!r}")
    envs = sorted({c.env for c in cases})
    notes = []
    if len(envs) > 1 and not env:
        notes.append(f"cases span {len(envs)} environment specs; the table is built over all of them "
                     "(masks are taken per call, so build one table per cluster with --env for deployment)")
    rows, masks, programs, loaded_cases = [], [], [], []
    nccl_models, nccl_shapes = {}, {}  # NCCL's model per env; per call shape, the model of its first case's env
    shape_envs: dict[tuple, set] = {}
    for case in cases:
        loaded = load_case(case, config.model, config.cost_options(), knobs=policy.knobs)
        loaded_cases.append(loaded)
        p = loaded.program
        programs.append(p)
        rows += [p.call_key[c] for c in p.tunable_calls]
        masks += list(loaded.costs.call_masks(p.tunable_calls))
        if case.env not in nccl_models:
            nccl_models[case.env] = NcclModel(loaded.env)
        for c in p.tunable_calls:
            key = p.call_key[c]
            shape = (key.coll, key.nranks, key.nnodes, key.num_pipe_ops)
            nccl_shapes.setdefault(shape, nccl_models[case.env])
            shape_envs.setdefault(shape, set()).add(case.env)
    calls = pd.DataFrame([key.as_tuple() for key in rows], columns=list(QUERY_COLUMNS))
    mask_of = {}  # the actions valid for every call of one (coll, nranks, nnodes, num_pipe_ops)
    for key, mask in zip(rows, masks):
        shape = (int(key.coll), key.nranks, key.nnodes, key.num_pipe_ops)
        mask_of[shape] = mask_of.get(shape, mask) & mask

    def decide(frame: pd.DataFrame) -> np.ndarray:
        obs = encode(frame)
        m = np.stack([mask_of[(a, b, c, d)] for a, b, c, d in
                      zip(frame["coll"], frame["nranks"], frame["nnodes"], frame["num_pipe_ops"])])
        if policy.knobs:  # the knobs layout: call entries, then phase 0 and no kind; no communicator action
            obs = with_knobs_entries(obs)
            m = np.concatenate([m, np.zeros((len(m), policy.num_actions - m.shape[1]), dtype=bool)], axis=1)
        return policy.decide(obs, m)

    provenance = {"policy": str(policy_path), "config": str(config_path), "envs": envs,
                  "cases": [c.label for c in cases], "policy_provenance": policy.provenance}
    shared = sum(len(envs_of) > 1 for envs_of in shape_envs.values())
    if shared:
        notes.append(f"NVIDIA's CSV: {shared} call shape(s) occur on more than one environment spec; NCCL's choice "
                     "is written out for them from the first spec's NCCL model (use --env for one cluster's CSV)")
    steps, left_out = step_shapes(programs)
    table = table_from_policy(decide, calls, provenance=provenance, steps=steps)
    notes += [f"no step line (position rules cannot apply) for {reason}" for reason in left_out]
    if policy.knobs:
        table = dataclasses.replace(table, communicators=policy_communicators(policy.decide, loaded_cases))
        notes.append(f"communicators: {len(table.communicators)} shape(s) get a config other than NCCL's default "
                     f"({', '.join(f'{r.kind} {r.nranks}x{r.nnodes}: {r.config.describe()}' for r in table.communicators) or 'none'})")
    if evidence_states:
        # Training cases under the first training states (and, with evidence_split "all", held-out
        # ones under the first held-out states): the conditions the policy was trained (evaluated) in.
        train_states = range(min(evidence_states, config.train.states))
        offset = config.heldout.state_offset
        heldout_states = range(offset, offset + min(evidence_states, config.heldout.states))
        episodes = [(index, state) for index in range(len(cases))
                    if index < len(train_cases) or evidence_split == "all"
                    for state in (train_states if index < len(train_cases) else heldout_states)]
        acting = sum(not rule.keeps_nccl for rule in table.rules)
        table, _ = confine_to_evidence(table, TuningEnv(cases, model=config.model, cost_options=config.cost_options()), episodes, progress=progress)
        kept = sum(not rule.keeps_nccl for rule in table.rules)
        notes.append(f"confined to evidence: {kept} acting rule(s) (from {acting}) over {len(episodes)} replayed "
                     f"step(s) of the {'training' if evidence_split == 'train' else 'training and held-out'} "
                     "cases; NCCL's own choice everywhere else")
    else:
        notes.append("not confined to evidence: every rule spans all sizes (for comparison only; do not deploy)")
    if table.communicators:
        notes.append("NVIDIA's CSV has no communicators: the launcher applies them from the JSON table")
    return PolicyExport(table, csv_compatible(table, nccl_shapes), tuple(notes), len(calls), len(cases))


__all__ = [
    "step_shapes",
    "DECIDE_BATCH_ROWS", "EVIDENCE_SPLITS", "EVIDENCE_STATES", "GRID_MAX_BYTES", "GROUP_COLUMNS", "QUERY_COLUMNS",
    "PolicyExport", "csv_compatible", "decisions_of_table", "export_policy_tables", "policy_communicators",
    "rule_choice", "size_grid",
    "table_from_policy",
]
