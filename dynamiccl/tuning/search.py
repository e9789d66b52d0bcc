"""``search``: the best decision table for one case, found by searching the table itself.

This is the reference every "share of the gain" is measured against: what a static decision table
keyed like the deployed one could reach on a case, in the simulator that prices the case. It is a
reference, not a tuner: it sees the case's whole step and the dynamics states it is scored on.

The table
---------
One rule per :class:`RuleKey`: the keys the exported tables group calls by
(``dynamiccl.table.policy_export.GROUP_COLUMNS``: collective, nranks, nnodes, numPipeOps, regBuff)
and a size band, ``floor(log2 nbytes)`` (:func:`dynamiccl.callkey.size_band`),
written as the byte range ``[2**b, 2**(b+1) - 1]`` (band 0: ``[0, 1]``). Only the bands that occur
in the step are searched and written; a band whose best action is NCCL's default gets an explicit
"keep NCCL's" rule, and a size no rule covers keeps NCCL's choice too. Each rule's choice is one
action of :mod:`dynamiccl.tuning.actions`, applied to a call as the plugin applies it
(:class:`~dynamiccl.tuning.agents.TableAgent`): an action the call's mask forbids runs NCCL's default.

The objective
-------------
A table's score is the mean step time (makespan, µs) over the given dynamics states, each a full
replay of the step (:class:`~dynamiccl.tuning.timeline.Replay`: overlap, link sharing, compute
slowed by the collectives beside it, congestion and noise of that state). Per-call costs come from
the case's :class:`~dynamiccl.tuning.costs.CostTable`, built once per case and indexed by the
replay, so a candidate costs one replay per state and no cost-model call.

The search
----------
1. Starts: NCCL's default everywhere, and the greedy table (per key, the action with the least
   summed per-call exposed cost -- ``Replay.exposed_costs`` -- along NCCL default's trajectory in
   every state: what the per-call greedy baseline would pick, as a table). The better one is the
   incumbent, so the result is never worse than either (on the mean over the states searched).
2. Coordinate descent: sweep the keys, busiest first (summed default duration of their calls); for
   each key try every action valid for at least one of its calls (skipping those that change no
   call's effective action). Candidates are screened on the first state; the ``verify`` best that
   beat the incumbent there are replayed on every state, and the best of those replaces the
   incumbent when its mean step time is lower. Sweeps stop when one changes nothing or after
   ``max_sweeps``.

Scoring is incremental: the candidates of one key agree with the incumbent on every call decided
before the key's first call, so that prefix is replayed once per (key, state) and each candidate
continues from a fork of it (:meth:`~dynamiccl.tuning.timeline.Replay.fork`; the same step time,
bit for bit, as a replay from the start). Every table scored is memoised on its effective per-call
actions, so a candidate that the masks make identical to one already replayed costs nothing.

With the knobs
--------------
On a case loaded with the knobs (``load_case(..., knobs=True)``) the table also has one communicator
config per communicator shape of the step (:mod:`dynamiccl.tuning.communicators`; ``COMM_CHOICES``
masked as the env masks them) and its rules may choose chunk sizes (the chunk-size actions, where
the cost model prices them; never in the world or NCCL's model). The descent first runs exactly
as without the knobs (every communicator at NCCL's default config, the same starts, sweeps and
result), then continues with sweeps that visit each communicator shape -- every valid config,
each scored on the whole step in every state -- and then every rule key again, until a sweep
changes nothing or after ``max_sweeps`` more. Only improvements are accepted, so the result with
the knobs is never slower than without them (on the mean over the states searched). The table
carries the configs as ``communicators`` (``CommunicatorRule`` per shape whose config is not NCCL's).

The bounds
----------
:func:`step_bounds` gives the two bounds reported beside the search: every collective at its links'
datasheet line rate with no interference (:meth:`~dynamiccl.costmodel.world.WorldModel.line_rate_time_us`),
and communication costing nothing (the ceiling).

Several cases
-------------
``dynamiccl search`` over several cases is a sweep (:mod:`dynamiccl.sweep`): :class:`SearchJob` searches
one case per task (:func:`search_one`: the search, its bounds, and the table as data), on a local
process pool or a Ray cluster, and the command writes every table and the figures once at the end.
A case's search depends on the case, the states, the cost model and ``max_sweeps`` only, so the
tables are byte for byte the same whichever way the cases ran, and so are the figures but for each
case's ``wall_s``.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from dynamiccl.callkey import CallKey, size_band
from dynamiccl.costmodel.protocol import CostModelOptions
from dynamiccl.costmodel.world import WorldModel
from dynamiccl.envspec import EnvSpec
from dynamiccl.nccl import FUNC_OP, NUM_ALGORITHMS, NUM_PROTOCOLS, Algorithm, Func
from dynamiccl.knobs.comm_config import COMM_CHOICES, NO_EFFECT_SHARE
from dynamiccl.table.model import MAX_BYTES, CommunicatorRule, DecisionTable, Rule
from dynamiccl.tuning.actions import DEFAULT_ACTION, ActionCostTotals, rule_choice
from dynamiccl.tuning.cases import Case, LoadedCase, default_schedule, load_case, new_replay
from dynamiccl.tuning.costs import CostTable
from dynamiccl.tuning.timeline import Replay

SEARCH_METHOD = "dynamiccl.tuning.search.search_case"
DEFAULT_MAX_SWEEPS = 4
DEFAULT_VERIFY = 3


# --- rule keys ------------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class RuleKey:
    """What one rule of a searched table matches: the exported tables' group keys and a size band.

    ``band`` is ``floor(log2 nbytes)`` (0 for nbytes < 2); the rule covers ``band_bytes(band)``.
    """

    coll: int
    nranks: int
    nnodes: int
    num_pipe_ops: int
    reg_buff: int
    band: int

    @classmethod
    def of(cls, call: CallKey) -> "RuleKey":
        """The key of the rule a call falls under."""
        return cls(int(call.coll), int(call.nranks), int(call.nnodes), int(call.num_pipe_ops), int(call.reg_buff),
                   size_band(call.nbytes))

    def describe(self) -> str:
        low, high = band_bytes(self.band)
        return (f"{FUNC_OP[Func(self.coll)]} {self.nranks} ranks/{self.nnodes} nodes, {low}..{high} B"
                + (f", {self.num_pipe_ops} pipe ops" if self.num_pipe_ops != 1 else ""))


def band_bytes(band: int) -> tuple[int, int]:
    """The inclusive byte range of size band ``band`` (floor(log2 nbytes)): ``[2**b, 2**(b+1) - 1]``,
    band 0 from 0 bytes (so 0 and 1 byte share it).

    Raises:
        ValueError: a negative band or one beyond 64 bits.
    """
    if not 0 <= band < 64:
        raise ValueError(f"size band {band} is out of range; expected 0 .. 63 (floor(log2 nbytes))")
    return (0 if band == 0 else 1 << band), min((1 << (band + 1)) - 1, MAX_BYTES)


def table_of(actions: dict[RuleKey, int], provenance: dict, communicators: dict | None = None) -> DecisionTable:
    """The decision table with one rule per key of ``actions`` (sorted by key), choosing that action
    (``dynamiccl.tuning.actions.rule_choice``: action 0 keeps NCCL's choice, explicitly), and a
    ``CommunicatorRule`` per communicator shape of ``communicators`` (``Shape`` -> ``COMM_CHOICES``
    index) whose config is not NCCL's default."""

    rules = []
    for key in sorted(actions):
        low, high = band_bytes(key.band)
        rules.append(Rule(coll=key.coll, min_bytes=low, max_bytes=high, nranks=key.nranks, nnodes=key.nnodes,
                          num_pipe_ops=key.num_pipe_ops, reg_buff=key.reg_buff, **rule_choice(int(actions[key]))))
    comm_rules = tuple(CommunicatorRule(shape.kind, shape.nranks, shape.nnodes, COMM_CHOICES[choice])
                       for shape, choice in (communicators or {}).items() if choice)
    return DecisionTable(tuple(rules), provenance, communicators=comm_rules)


# --- scoring --------------------------------------------------------------------------------------


class StepScorer:
    """Scores tables on one case: the step time (µs) of a full replay per dynamics state.

    ``keys`` are the rule keys of the step's tunable calls (sorted); a table is an int array of one
    action per key. ``replays`` counts the replays run; scores are memoised on the effective
    per-call actions (what really runs once masks are applied). With the knobs, ``configs`` holds
    the communicator configs (one ``COMM_CHOICES`` index per shape of ``loaded.communicators``) every
    method scores under unless given others; () without the knobs.

    Raises:
        ValueError: no states.
    """

    def __init__(self, loaded: LoadedCase, states: Sequence[int]):
        states = [int(s) for s in states]
        if not states:
            raise ValueError("a search needs at least one dynamics state")
        self.loaded = loaded
        self.states = states
        program, costs = loaded.program, loaded.costs
        self.calls = np.asarray(program.tunable_calls, dtype=np.int64)
        key_of_call = [RuleKey.of(program.call_key[c]) for c in self.calls]
        self.keys: list[RuleKey] = sorted(set(key_of_call))
        index = {key: i for i, key in enumerate(self.keys)}
        self.call_key_index = np.array([index[k] for k in key_of_call], dtype=np.int64)
        self.knobs = loaded.knobs
        self.configs: tuple[int, ...] = (0,) * len(loaded.communicators.shapes) if self.knobs else ()
        self._masks: dict[tuple[int, ...], np.ndarray] = {self.configs: costs.call_masks(self.calls)}
        self.replays = 0
        self._memo: dict[tuple, float] = {}
        self._num_calls = program.num_calls
        self._key_of_call = [-1] * program.num_calls  # call id -> rule key index (-1: not tunable)
        for call, key in zip(self.calls.tolist(), self.call_key_index.tolist()):
            self._key_of_call[call] = key

    @property
    def masks(self) -> np.ndarray:
        """[tunable calls, actions]: the valid actions of each call under ``configs``."""
        return self.masks_under(self.configs)

    def masks_under(self, configs: tuple[int, ...]) -> np.ndarray:
        """The tunable calls' masks when the communicators have ``configs``."""
        configs = tuple(configs)
        if configs not in self._masks:
            rows = self.loaded.communicators.call_rows(configs)
            self._masks[configs] = self.loaded.costs.call_masks(self.calls, rows)
        return self._masks[configs]

    def effective(self, table: np.ndarray, configs: tuple[int, ...] | None = None) -> np.ndarray:
        """Per tunable call, the action that runs under ``table``: the key's action where the call's
        mask (under ``configs``, default ``self.configs``) allows it, else NCCL's default (0)."""
        masks = self.masks_under(self.configs if configs is None else configs)
        chosen = np.asarray(table, dtype=np.int64)[self.call_key_index]
        ok = masks[np.arange(len(self.calls)), chosen]
        return np.where(ok, chosen, DEFAULT_ACTION)

    def _per_call(self, effective: np.ndarray) -> list[int]:
        per_call = [DEFAULT_ACTION] * self._num_calls
        for call, action in zip(self.calls.tolist(), effective.tolist()):
            per_call[call] = action
        return per_call

    def step_time_us(self, table: np.ndarray, state: int,
                     prefix: Callable[[], Replay | None] | None = None, configs: tuple[int, ...] | None = None) -> float:
        """The step time (µs) of one replay of the case under ``table`` in dynamics ``state``.

        ``prefix``, called only when the table's step time is not memoised yet, returns a replay
        (from :meth:`prefix`) of a table that agrees with ``table`` on every call decided so far,
        or None: the replay continues from a fork of it instead of from the start (the same result,
        bit for bit, in a fraction of the time). ``configs``: the communicator configs (default
        ``self.configs``)."""
        configs = self.configs if configs is None else tuple(configs)
        effective = self.effective(table, configs)
        memo_key = (int(state), configs, effective.tobytes())
        if memo_key not in self._memo:
            start = prefix() if prefix is not None else None
            replay = start.fork() if start is not None else new_replay(self.loaded, int(state), configs=configs or None)
            self._memo[memo_key] = float(replay.run(self._per_call(effective).__getitem__))
            self.replays += 1
        return self._memo[memo_key]

    def prefix(self, table: np.ndarray, state: int, key: int) -> Replay | None:
        """The replay of ``table`` in ``state`` advanced to the first pending decision of a call of
        rule key ``key`` (None if the step has none): the common prefix of every table that differs
        from ``table`` only at ``key``, for :meth:`step_time_us`. Never decide on it: fork it."""
        per_call = self._per_call(self.effective(table))
        key_of = self._key_of_call
        replay = new_replay(self.loaded, int(state), configs=self.configs or None)
        while (call := replay.next_decision()) is not None:
            if key_of[call] == key:
                return replay
            replay.decide(call, per_call[call])
        return None

    def step_times_us(self, table: np.ndarray, states: Sequence[int] | None = None,
                      prefix: Callable[[int], Replay | None] | None = None,
                      configs: tuple[int, ...] | None = None) -> np.ndarray:
        """``step_time_us`` in each of ``states`` (default: all the scorer's states), each continuing
        from ``prefix(state)`` where given (called only for a table not memoised in that state)."""
        return np.array([self.step_time_us(table, s, None if prefix is None else functools.partial(prefix, s), configs)
                         for s in (self.states if states is None else states)])

    def greedy_table(self) -> np.ndarray:
        """Per key, the action with the least summed per-call exposed cost (µs, ``Replay.exposed_costs``)
        along NCCL default's trajectory in every state (:class:`~dynamiccl.tuning.actions.ActionCostTotals`):
        the per-call greedy choice as a table (ties: the lowest action, so NCCL's default where
        nothing is cheaper)."""
        totals = ActionCostTotals()
        key_of = dict(zip(self.calls.tolist(), self.call_key_index.tolist()))
        for state in self.states:
            _, latest = default_schedule(self.loaded, state)
            replay = new_replay(self.loaded, state, latest)
            while (call := replay.next_decision()) is not None:
                with np.errstate(invalid="ignore"):  # masked actions: inf - inf inside the replay
                    totals.add(key_of[call], replay.exposed_costs(call))  # inf where masked: never chosen
                replay.decide(call, DEFAULT_ACTION)
            self.replays += 1
        best = totals.best()
        return np.array([best.get(key, DEFAULT_ACTION) for key in range(len(self.keys))], dtype=np.int64)

    def key_weight_us(self) -> np.ndarray:
        """Per key, the summed quiet, alone duration (µs) of its calls under NCCL's default: the
        order in which the descent visits keys (busiest first)."""
        costs = self.loaded.costs
        rows = np.asarray(costs.call_row, dtype=np.int64)[self.calls]
        duration = costs.time_us[rows, DEFAULT_ACTION, 0, 0]
        return np.bincount(self.call_key_index, weights=np.where(np.isfinite(duration), duration, 0.0),
                           minlength=len(self.keys))

    def candidates(self, key: int) -> np.ndarray:
        """The actions valid for at least one call of key ``key`` under ``configs`` (NCCL's default first)."""
        return np.flatnonzero(self.masks[self.call_key_index == key].any(axis=0))

    def config_candidates(self, shape: int) -> list[int]:
        """The ``COMM_CHOICES`` indices communicator shape ``shape`` may take (NCCL's default first)."""
        return np.flatnonzero(self.loaded.communicators.masks[shape]).tolist()


# --- the search -----------------------------------------------------------------------------------


@dataclass
class SearchResult:
    """What :func:`search_case` found for one case.

    ``actions``: the searched table as one action per rule key; ``table``: it as a
    :class:`~dynamiccl.table.model.DecisionTable`; per state (``states`` order) the step times (µs)
    of NCCL's default (``default_step_time_us``), of the better start (``start_step_time_us``, named
    by ``start``: "nccl-default" or "greedy") and of the searched table (``step_time_us``);
    ``replays`` run, ``sweeps`` done, ``improvements`` accepted and ``wall_s`` spent.
    """

    case: str
    states: list[int]
    actions: dict[RuleKey, int]
    table: DecisionTable
    default_step_time_us: list[float]
    start: str
    start_step_time_us: list[float]
    step_time_us: list[float]
    replays: int
    sweeps: int
    improvements: int
    wall_s: float
    history: list[dict] = field(default_factory=list)
    communicators: dict = field(default_factory=dict)  # knobs: Shape -> COMM_CHOICES index

    @property
    def speedup(self) -> float:
        """Mean default step time over mean searched step time."""
        return float(np.mean(self.default_step_time_us) / np.mean(self.step_time_us))

    def to_json(self) -> dict:
        """A JSON-ready summary (no table): case, states, times (µs), speedup, work done."""
        return {"case": self.case, "states": self.states, "default_step_time_us": self.default_step_time_us,
                "start": self.start, "start_step_time_us": self.start_step_time_us,
                "search_step_time_us": self.step_time_us, "search_speedup": self.speedup,
                "rules": len(self.table.rules), "changed_rules": sum(1 for r in self.table.rules if not r.keeps_nccl),
                "replays": self.replays, "sweeps": self.sweeps, "improvements": self.improvements,
                "wall_s": self.wall_s,
                **({"communicators": {shape.describe(): COMM_CHOICES[c].describe()
                                      for shape, c in self.communicators.items()}} if self.communicators else {})}


def search_case(loaded: LoadedCase, states: Sequence[int], *, max_sweeps: int = DEFAULT_MAX_SWEEPS,
                verify: int = DEFAULT_VERIFY, start: np.ndarray | None = None, greedy_start: bool = True,
                incremental: bool = True, progress=None) -> SearchResult:
    """Search the best decision table for ``loaded`` over the dynamics ``states`` (module docstring).

    Args:
        loaded: the case (``dynamiccl.tuning.cases.load_case``).
        states: the dynamics states the mean step time is taken over.
        max_sweeps: coordinate-descent sweeps at most (each visits every key once).
        verify: candidates per key replayed on every state after screening on the first.
        start: an extra start (one action per key of ``StepScorer(loaded, states).keys``), tried
            beside NCCL's default and the greedy table.
        greedy_start: whether the greedy table is a start (False: the descent starts from NCCL's
            default, or ``start`` if better).
        incremental: continue candidates from forks of their common prefix (False: replay each from
            the start; the same result, slower).
        progress: a tqdm-like bar (``update``, ``set_postfix_str``) advanced once per key visited.

    Raises:
        ValueError: no states, ``max_sweeps`` < 0, ``verify`` < 1, or a ``start`` of the wrong length.
    """
    if max_sweeps < 0 or verify < 1:
        raise ValueError(f"max_sweeps must be >= 0 and verify >= 1, got {max_sweeps}, {verify}")
    started = time.perf_counter()
    scorer = StepScorer(loaded, states)
    n = len(scorer.keys)
    default = np.zeros(n, dtype=np.int64)
    starts = {"nccl-default": default}
    if greedy_start:
        starts["greedy"] = scorer.greedy_table()
    if start is not None:
        start = np.asarray(start, dtype=np.int64)
        if start.shape != (n,):
            raise ValueError(f"start must hold one action per rule key ({n}), got shape {start.shape}")
        starts["given"] = start
    means = {name: float(scorer.step_times_us(table).mean()) for name, table in starts.items()}
    start_name = min(means, key=lambda name: (means[name], name != "nccl-default"))
    incumbent = starts[start_name].copy()
    best = means[start_name]
    history = [{"sweep": 0, "step_time_us": best, "start": start_name}]
    order = np.argsort(-scorer.key_weight_us(), kind="stable")
    screen_state = scorer.states[0]
    sweeps = improvements = 0

    def sweep_keys(sweep: int) -> bool:
        """One coordinate-descent sweep over the rule keys; whether it changed the incumbent."""
        nonlocal incumbent, best, improvements
        changed = False
        for key in order.tolist():
            if progress is not None:
                progress.set_postfix_str(f"sweep {sweep}, {scorer.keys[key].describe()}", refresh=False)
            current = scorer.effective(incumbent).tobytes()
            prefixes: dict[int, Replay | None] = {}

            def prefix(state: int, key: int = key, incumbent: np.ndarray = incumbent) -> Replay | None:
                # The incumbent's replay up to the key's first call, once per state, only if a
                # candidate needs a replay (and only when scoring is incremental).
                if incremental and state not in prefixes:
                    prefixes[state] = scorer.prefix(incumbent, state, key)
                return prefixes.get(state)

            incumbent_screen = scorer.step_time_us(incumbent, screen_state, functools.partial(prefix, screen_state))
            screened = []
            for action in scorer.candidates(key).tolist():
                if action == incumbent[key]:
                    continue
                trial = incumbent.copy()
                trial[key] = action
                if scorer.effective(trial).tobytes() == current:
                    continue
                time_us = scorer.step_time_us(trial, screen_state, functools.partial(prefix, screen_state))
                if time_us < incumbent_screen:
                    screened.append((time_us, action))
            screened.sort()
            better = None
            for _, action in screened[:verify]:
                trial = incumbent.copy()
                trial[key] = action
                mean = float(scorer.step_times_us(trial, prefix=prefix).mean())
                if mean < best * (1.0 - 1e-12):
                    best, better = mean, trial
            if better is not None:
                incumbent, changed = better, True
                improvements += 1
            if progress is not None:
                progress.update()
        return changed

    def sweep_communicators(sweep: int) -> bool:
        """One sweep over the communicator shapes (knobs): each takes its best config, every candidate
        scored on the whole step in every state; whether it changed the incumbent configs."""
        nonlocal best, improvements
        changed = False
        for shape in range(len(scorer.configs)):
            if progress is not None:
                progress.set_postfix_str(f"sweep {sweep}, {communicators.shapes[shape].describe()} communicator",
                                         refresh=False)
            better = None
            for choice in scorer.config_candidates(shape):
                if choice == scorer.configs[shape]:
                    continue
                trial = scorer.configs[:shape] + (choice,) + scorer.configs[shape + 1:]
                mean = float(scorer.step_times_us(incumbent, configs=trial).mean())
                if mean < best * (1.0 - NO_EFFECT_SHARE):  # a setting must earn its change to the job
                    best, better = mean, trial
            if better is not None:
                scorer.configs, changed = better, True
                improvements += 1
        return changed

    # Without the knobs' communicators first (exactly the search without knobs), then with them.
    for sweep in range(1, max_sweeps + 1):
        sweeps = sweep
        changed = sweep_keys(sweep)
        history.append({"sweep": sweep, "step_time_us": best, "improvements": improvements})
        if not changed:
            break
    communicators = loaded.communicators if scorer.knobs else None
    if scorer.knobs:
        for sweep in range(sweeps + 1, sweeps + max_sweeps + 1):
            changed = sweep_communicators(sweep)
            changed = sweep_keys(sweep) or changed
            history.append({"sweep": sweep, "step_time_us": best, "improvements": improvements,
                            "communicators": communicators.describe(scorer.configs)})
            sweeps = sweep
            if not changed:
                break
    actions = {key: int(incumbent[i]) for i, key in enumerate(scorer.keys)}
    chosen = dict(zip(communicators.shapes, scorer.configs)) if communicators is not None else {}
    default_configs = (0,) * len(scorer.configs)
    default_times = scorer.step_times_us(default, configs=default_configs).tolist()
    result_times = scorer.step_times_us(incumbent).tolist()
    wall_s = time.perf_counter() - started
    provenance = {
        "method": SEARCH_METHOD, "case": loaded.case.label, "trace": loaded.case.trace, "env": loaded.case.env,
        "cost_model": loaded.costs.model, "states": scorer.states,
        "objective": "mean step time (us) over the states, full replay of the step",
        "rule_keys": "coll, nranks, nnodes, num_pipe_ops, reg_buff, size band floor(log2 nbytes)",
        "start": start_name, "default_step_time_us": float(np.mean(default_times)),
        "start_step_time_us": means[start_name], "search_step_time_us": float(np.mean(result_times)),
        "replays": scorer.replays, "sweeps": sweeps,
    }  # no wall time: the same search writes the same table, wherever and however fast it ran
    if communicators is not None:
        provenance["knobs"] = True
        provenance["communicators"] = communicators.describe(scorer.configs)
    return SearchResult(loaded.case.label, scorer.states, actions, table_of(actions, provenance, chosen), default_times,
                        start_name, scorer.step_times_us(starts[start_name], configs=default_configs).tolist(),
                        result_times, scorer.replays, sweeps, improvements, wall_s, history, chosen)


# --- the bounds -------------------------------------------------------------------------------------


def line_rate_times_us(costs: CostTable, env: EnvSpec) -> np.ndarray:
    """The line-rate time (:meth:`~dynamiccl.costmodel.world.WorldModel.line_rate_time_us`, µs) of
    every key of ``costs``, by key row, over the algorithms NCCL's cost table enables for it
    (``costs.nccl_cost`` >= 0 for some protocol)."""
    world = WorldModel(env)
    out = np.zeros(len(costs.keys))
    for row, key in enumerate(costs.keys):
        enabled = (costs.nccl_cost[row].reshape(NUM_ALGORITHMS, NUM_PROTOCOLS) >= 0).any(axis=1)
        out[row] = world.line_rate_time_us(Func(key.coll), float(key.nbytes), key.nranks, key.nnodes,
                                           [Algorithm(a) for a in np.flatnonzero(enabled)])
    return out


def _uniform_costs(costs: CostTable, time_us: np.ndarray) -> CostTable:
    """``costs`` with every valid action of key ``k`` taking ``time_us[k]`` in every condition, all of
    it size-dependent (no latency) and slowing no compute: a call that shares nothing but its links."""
    every = np.where(costs.mask[:, :, None, None], time_us[:, None, None, None], np.inf)
    every = np.broadcast_to(every, costs.time_us.shape).copy()
    return dataclasses.replace(costs, time_us=every, latency_us=np.where(costs.mask[:, :, None], 0.0, np.inf)
                               * np.ones(costs.latency_us.shape), slowdown=np.ones_like(costs.slowdown))


@dataclass(frozen=True)
class StepBounds:
    """Two bounds on one (case, state)'s step time (µs): every call at its links' line rate with no
    interference (``line_rate_step_time_us``), and communication costing nothing (``no_comm_step_time_us``)."""

    line_rate_step_time_us: float
    no_comm_step_time_us: float


_BOUNDS: dict[tuple, StepBounds] = {}


def step_bounds(loaded: LoadedCase, state: int) -> StepBounds:
    """The step replayed twice in dynamics ``state`` (the same noise): once with every call
    (collectives and point-to-point alike) taking :func:`line_rate_times_us` -- no latency, no
    congestion, no slowdown of the compute beside it, concurrent calls still sharing their links --
    and once with every call taking 0 µs (the ceiling: compute alone, with its dependencies).
    Cached per (case, cost model, state)."""
    cache_key = (loaded.case, loaded.costs.source, int(state))
    if cache_key not in _BOUNDS:
        costs = loaded.costs
        line = _uniform_costs(costs, line_rate_times_us(costs, loaded.env))
        free = _uniform_costs(costs, np.zeros(len(costs.keys)))
        times = []
        for table in (line, free):
            bound = dataclasses.replace(loaded, costs=table)
            times.append(float(new_replay(bound, int(state)).run()))
        _BOUNDS[cache_key] = StepBounds(*times)
    return _BOUNDS[cache_key]


# --- several cases: one sweep task each ---------------------------------------------------------------


@dataclass(frozen=True)
class CaseSearch:
    """One case searched (:func:`search_one`): ``summary`` (``SearchResult.to_json()``), the bounds per
    state (µs, ``states`` order) and the searched ``table``. Plain data: it travels back from a worker."""

    summary: dict
    line_rate_bound_step_time_us: list[float]
    no_comm_step_time_us: list[float]
    table: DecisionTable

    def row(self, table_path: str) -> dict:
        """The case's row of ``dynamiccl search --json`` (and of :func:`search_report_text`), its
        table written at ``table_path``."""
        return {**self.summary, "table": table_path,
                "line_rate_bound_step_time_us": self.line_rate_bound_step_time_us,
                "no_comm_step_time_us": self.no_comm_step_time_us}


def search_one(loaded: LoadedCase, states: Sequence[int], *, max_sweeps: int = DEFAULT_MAX_SWEEPS) -> CaseSearch:
    """:func:`search_case` on ``loaded`` and the two :func:`step_bounds` in each of ``states``.

    Raises:
        ValueError: as :func:`search_case`.
    """
    result = search_case(loaded, states, max_sweeps=max_sweeps)
    bounds = [step_bounds(loaded, state) for state in states]
    return CaseSearch(result.to_json(), [b.line_rate_step_time_us for b in bounds],
                      [b.no_comm_step_time_us for b in bounds], result.table)


@dataclass(frozen=True)
class SearchJob:
    """``dynamiccl search`` as a sweep job (:class:`dynamiccl.sweep.SweepJob`): a task's args are a
    :class:`~dynamiccl.tuning.cases.Case`, its result the :class:`CaseSearch` of that case under
    ``states`` priced by the registered cost model ``model`` (made with ``options``; ``knobs``: the
    case loaded with the knobs)."""

    model: str
    options: CostModelOptions
    knobs: bool
    states: tuple[int, ...]
    max_sweeps: int = DEFAULT_MAX_SWEEPS

    def setup(self) -> None:
        return None  # load_case caches each case per process

    def run(self, context: None, case: Case) -> CaseSearch:
        """Search ``case`` (no progress bar: workers share the terminal, the sweep has its own).

        Raises:
            InputError: the case cannot be loaded (``load_case``).
        """
        loaded = load_case(case, self.model, self.options, knobs=self.knobs)
        return search_one(loaded, self.states, max_sweeps=self.max_sweeps)


# --- text ----------------------------------------------------------------------------------------------


def search_report_text(rows: Sequence[dict]) -> str:
    """An nccl-tests-style table, one line per searched case: mean step times (ms) of NCCL's default,
    the searched table, the line-rate bound and the no-communication ceiling, each bound's speedup
    over the default, the rules the table changes and the search's work. ``rows``: ``SearchResult.to_json()``
    with ``line_rate_bound_step_time_us`` and ``no_comm_step_time_us`` lists (per state) added."""
    head = ("# case", "default", "search", "speedup", "line-rate", "speedup", "no-comm", "speedup", "rules",
            "replays", "wall")
    units = ("#", "(ms)", "(ms)", "", "(ms)", "", "(ms)", "", "changed", "", "(s)")
    width = max([len("# case")] + [len(row["case"]) for row in rows])
    fmt_row = f"{{:<{width}}}  {{:>11}}  {{:>11}}  {{:>8}}  {{:>11}}  {{:>8}}  {{:>11}}  {{:>8}}  {{:>8}}  {{:>8}}  {{:>6}}"
    lines = ["# the searched decision table beside NCCL's default and the two bounds (mean over the states)",
             fmt_row.format(*head), fmt_row.format(*units)]
    for row in rows:
        default = float(np.mean(row["default_step_time_us"]))
        times = [float(np.mean(row[k])) for k in ("search_step_time_us", "line_rate_bound_step_time_us",
                                                    "no_comm_step_time_us")]
        cells = [row["case"], f"{default / 1e3:.3f}"]
        for value in times:
            cells += [f"{value / 1e3:.3f}", f"{default / value:.4f}"]
        cells += [f"{row['changed_rules']}/{row['rules']}", str(row["replays"]), f"{row['wall_s']:.1f}"]
        lines.append(fmt_row.format(*cells))
    return "\n".join(lines)


__all__ = ["DEFAULT_MAX_SWEEPS", "CaseSearch", "RuleKey", "SearchJob", "SearchResult", "StepBounds", "StepScorer",
           "band_bytes", "line_rate_times_us", "search_case", "search_one", "search_report_text", "step_bounds",
           "table_of"]
