"""Agents: everything that chooses actions in :class:`~dynamiccl.tuning.env.TuningEnv`, behind one interface.

An agent sees the unwrapped environment at every decision: what the deployed plugin sees
(``TuningEnv``'s "What agents may read"), and, for the baselines allowed to, the simulator's state
(``env.simulator``); what each one uses is said in its docstring. :func:`dynamiccl.tuning.evaluate.evaluate` drives them all the same way::

    agent.begin_episode(env)                       # after env.reset(...)
    while the episode runs:
        if env.pending_communicator is not None:   # TuningEnv(knobs=True): communicator decisions first
            env.step(agent.act_communicator(env, obs, env.action_masks()))
            continue
        action = agent.act(env, obs, env.action_masks())
        call = env.pending; env.step(action)
        if agent.needs_measurements:               # online learners only
            agent.observe(env, call, *env.measured(call))

With the knobs, each agent's communicator decision (``act_communicator``): NCCL's default config
(nccl-default, the online learners), uniform over the valid configs (random), the config whose
step replay is shortest (greedy-per-call now, static-best per shape over its fitted episodes), the
policy's own choice (a trained policy), the table's ``communicators`` (table, search).

Agents:

- ``NcclDefaultAgent`` ("nccl-default"): action 0 everywhere (NCCL's own choice).
- ``RandomAgent`` ("random"): uniform over the valid actions.
- ``GreedyPerCallAgent`` ("greedy-per-call"): per call, the action that adds the least to the step
  in the simulator's state now. A baseline, not an optimum: it does not plan ahead and can land
  below NCCL's default (it was called "oracle" before issue 14).
- ``SearchAgent`` ("search"): per case, the best decision table found by searching the table
  itself, every candidate scored by replaying the whole step (:mod:`dynamiccl.tuning.search`);
  the reference of every "share of the gain".
- ``StaticBestAgent`` ("static-best"): one action per (coll, floor(log2 nbytes), nranks, nnodes),
  fitted offline on chosen episodes; what a hand-tuned static table could reach.
- ``OnlineAgent``: an :class:`~dynamiccl.tuning.online.OnlineLearner` (UCB bandit, coordinate
  descent) that learns from measured call durations while the job runs.
- ``PolicyAgent``: a trained policy (anything with ``decide(obs_batch, masks)``).
- ``TableAgent``: a :class:`~dynamiccl.table.model.DecisionTable` applied as the tuner plugin
  applies it.

Per-call answers that cannot change within a case are cached per (case, call key), so an
evaluation of a 17,000-call step costs a dict lookup per call for the table-like agents.

The names ``dynamiccl evaluate --agents`` accepts, and how each agent is built, are the registry
:data:`dynamiccl.tuning.agent_registry.AGENTS`.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os
import zlib
from pathlib import Path
from typing import Protocol as TypingProtocol

import numpy as np

from dynamiccl import schema
from dynamiccl.callkey import CallKey, size_band as size_bucket
from dynamiccl.knobs.chunk import CHUNK_CHOICES_BYTES
from dynamiccl.knobs.comm_config import COMM_CHOICES, NO_EFFECT_SHARE
from dynamiccl.nccl import KEEP, TUNABLE_FUNCS
from dynamiccl.table.model import DecisionTable, PositionCounter
from dynamiccl.tuning.actions import (
    COMM_ACTION_BASE, DEFAULT_ACTION, NUM_ACTIONS, NUM_KNOBS_ACTIONS, ActionCostTotals, action_index, comm_action,
    describe_action, nearest_channels,
)
from dynamiccl.tuning.online import OnlineLearner

STATIC_BEST_FORMAT = "dynamiccl-static-best"
STATIC_BEST_VERSION = 1
_STATIC_BEST = schema.Schema(  # what StaticBestAgent.to_json writes
    schema.choice("format", (STATIC_BEST_FORMAT,)),
    schema.choice("version", (STATIC_BEST_VERSION,)),
    schema.string("name", "static-best"),
    schema.json_value("provenance", {}),
    schema.tables("rules", schema.Schema(
        schema.integer("coll", low=0, high=len(TUNABLE_FUNCS) - 1, help="a tunable ncclFunc_t"),
        schema.integer("size_bucket", low=0, high=64, help="floor(log2 nbytes)"),
        schema.integer("nranks", low=1), schema.integer("nnodes", low=1),
        schema.integer("action", low=0, high=NUM_KNOBS_ACTIONS - 1),
        schema.string("choice", "", help="the action in words (written for readers; not read)"),
    )),
    schema.tables("communicators", schema.Schema(
        schema.string("kind", help="a group kind (dynamiccl.trace.schema.GROUP_KINDS)"),
        schema.integer("nranks", low=1), schema.integer("nnodes", low=1),
        schema.integer("choice", low=0, high=len(COMM_CHOICES) - 1, help="an index into knobs.comm_config.COMM_CHOICES"),
        schema.string("config", "", help="the config in words (written for readers; not read)"),
    ), []),
)


class Agent:
    """The interface of everything that acts in ``TuningEnv`` (see the module docstring).

    ``env`` is always the unwrapped ``TuningEnv``; ``obs`` is the pending call's observation
    (float32[OBS_SIZE]) and ``mask`` its valid actions (bool[env.num_actions], ``mask[0]`` True).
    """

    name: str = "agent"
    needs_measurements: bool = False  # online learners: evaluate() feeds them measured durations

    @property
    def measurements(self) -> int:
        """How many call durations this agent has been given so far (0 for offline agents)."""
        return 0

    def begin_episode(self, env) -> None:
        """Called once per episode, after ``env.reset`` and before the first ``act``."""

    def act(self, env, obs: np.ndarray, mask: np.ndarray) -> int:
        """The action for the pending call ``env.pending``."""
        raise NotImplementedError

    def act_communicator(self, env, obs: np.ndarray, mask: np.ndarray) -> int:
        """The action for the pending communicator decision (``TuningEnv(knobs=True)``,
        ``env.pending_communicator``): here action 0, NCCL's default config."""
        return DEFAULT_ACTION

    def observe(self, env, call: int, action: int, time_us: float) -> None:
        """The measured duration (µs) of ``call``, which just started with ``action``."""


class _CaseCache:
    """Per case (``env.case_id``: the case and its cost model), a dict of answers that cannot change
    within that case."""

    def __init__(self) -> None:
        self._cases: dict[tuple, dict] = {}

    def __call__(self, env) -> dict:
        return self._cases.setdefault(env.case_id, {})

    def __contains__(self, env) -> bool:
        return env.case_id in self._cases


# --- simple baselines ------------------------------------------------------------------------------


class NcclDefaultAgent(Agent):
    """NCCL's own choice for every call (action 0): the reference every speedup is measured against."""

    name = "nccl-default"

    def act(self, env, obs, mask) -> int:
        return DEFAULT_ACTION


class RandomAgent(Agent):
    """Uniform over the valid actions of each call, from a seeded numpy ``Generator``.

    Every episode draws from a generator seeded by (``seed``, the case's label, the dynamics state),
    made at ``begin_episode``: an episode is the same whichever episodes ran before it, in this
    process or another (``evaluate`` runs episodes in any order, on any worker).
    """

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)

    def begin_episode(self, env) -> None:
        # crc32: a stable 32-bit number for the label (Python's hash() of a str changes per process).
        label = env.simulator.case.case.label
        self.rng = np.random.default_rng([self.seed, zlib.crc32(label.encode()), int(env.state)])

    def act(self, env, obs, mask) -> int:
        return int(self.rng.choice(np.flatnonzero(mask)))

    def act_communicator(self, env, obs, mask) -> int:
        return int(self.rng.choice(np.flatnonzero(mask)))


class GreedyPerCallAgent(Agent):
    """Per call, the action that adds the least to the step (µs) in the simulator's state now.

    It reads ``env.simulator.exposed_costs()``, i.e. the congestion, overlap and link sharing at the
    moment the call starts and the call's run-to-run noise: information no deployed tuner has. It
    is greedy on that per-call cost (it does not anticipate what a choice does to later calls or to
    the critical path), so it is a baseline and no optimum: it can be slower than NCCL's default,
    and a static table can beat it. The reference every gain is measured against is
    :class:`SearchAgent`. Ties go to the lowest action, so NCCL's default wins when nothing is better.
    """

    name = "greedy-per-call"

    def act(self, env, obs, mask) -> int:
        with np.errstate(invalid="ignore"):  # masked actions are inf - inf inside the replay
            costs = env.simulator.exposed_costs()
        return int(np.argmin(costs))

    def act_communicator(self, env, obs, mask) -> int:
        """The config whose step replay (every call at NCCL's default) is shortest now
        (``SimulatorView.communicator_step_times``), if it earns its change (:func:`earned_setting`)."""
        return earned_setting(env.simulator.communicator_step_times())


def earned_setting(step_times_us: np.ndarray) -> int:
    """The communicator action with the shortest step time (µs, per action; inf where invalid) when it
    beats NCCL's default (action 0) by at least ``NO_EFFECT_SHARE`` of the step, else NCCL's default:
    a setting is a change to the user's job and must earn it."""
    best = int(np.argmin(step_times_us))
    return best if step_times_us[best] < step_times_us[DEFAULT_ACTION] * (1.0 - NO_EFFECT_SHARE) else DEFAULT_ACTION


# --- static best table -----------------------------------------------------------------------------


class _class_or_instance_method:
    """A method that receives both the class and the instance (None when called on the class)."""

    def __init__(self, func) -> None:
        self.func = func
        functools.update_wrapper(self, func)

    def __get__(self, obj, cls):
        return functools.partial(self.func, cls, obj)


class StaticBestAgent(Agent):
    """One fixed action per (coll, size bucket = floor(log2 nbytes), nranks, nnodes), fitted offline.

    ``fit`` replays the given episodes with NCCL's default and, at every decision, adds the exposed
    cost (``SimulatorView.exposed_costs``, what :class:`GreedyPerCallAgent` minimises) of every
    action (µs, in the simulator's state at that call) to the call's bucket. An action that is
    invalid at any call of a bucket is never a candidate for it. Each bucket gets the action with
    the lowest total (:class:`~dynamiccl.tuning.actions.ActionCostTotals`, which the search's greedy
    start uses too; ties: the lowest action): the static table with this key that minimises the
    summed per-call cost along NCCL's default trajectory in the fitted conditions (a proxy for the
    step time, not the step time itself).

    At run time an unseen bucket gets action 0, and so does a call where the bucket's action is
    masked (counted in ``fallbacks``).

    With the knobs, ``communicators`` holds one config (a ``COMM_CHOICES`` index) per communicator
    shape (kind, nranks, nnodes): the one with the least summed step time
    (``SimulatorView.communicator_step_times``, every call at NCCL's default, the other shapes at
    NCCL's default config) over the fitted episodes; the call buckets are fitted along NCCL's
    default trajectory as without knobs.
    """

    name = "static-best"

    def __init__(self, table: dict[tuple[int, int, int, int], int] | None = None, name: str = "static-best",
                 provenance: dict | None = None, communicators: dict[tuple[str, int, int], int] | None = None) -> None:
        self.table = {tuple(int(v) for v in key): int(action) for key, action in (table or {}).items()}
        self.communicators = {(str(k), int(r), int(n)): int(c) for (k, r, n), c in (communicators or {}).items()}
        self.name = name
        self.provenance = dict(provenance or {})
        self.fallbacks = 0
        self._cache = _CaseCache()

    @staticmethod
    def bucket_key(env) -> tuple[int, int, int, int]:
        """(coll, floor(log2 nbytes), nranks, nnodes) of the pending call."""
        call = env.pending_call()
        return int(call.coll), size_bucket(call.nbytes), call.nranks, call.nnodes

    @_class_or_instance_method
    def fit(cls, self, env, episodes: list[tuple[int, int]]) -> "StaticBestAgent":
        """Fit the table on ``episodes`` ((case index, dynamics state) pairs) of ``env``.

        ``StaticBestAgent.fit(env, episodes)`` returns a new agent; ``agent.fit(env, episodes)``
        replaces that agent's table (keeping its name) and returns it. ``env`` is reset for each
        episode (its current episode is lost).

        Raises:
            ValueError: if ``episodes`` is empty.
            InputError: a case index outside ``env.cases`` (from ``env.reset``).
        """
        if not episodes:
            raise ValueError("StaticBestAgent.fit needs at least one (case, state) episode")
        base = env.unwrapped
        totals = ActionCostTotals()
        comm_totals = ActionCostTotals()
        for case, state in episodes:
            base.reset(options={"case": int(case), "state": int(state)})
            while base.pending_communicator is not None:
                shape = base.pending_shape()
                comm_totals.add((shape.kind, shape.nranks, shape.nnodes), base.simulator.communicator_step_times())
                base.step(DEFAULT_ACTION)
            while base.pending is not None:
                with np.errstate(invalid="ignore"):
                    costs = base.simulator.exposed_costs()
                # inf (invalid here) stays inf in the sum: the action is never a candidate.
                totals.add(cls.bucket_key(base), costs)
                base.step(DEFAULT_ACTION)
        self = self if self is not None else cls()
        self.table = totals.best()
        self.communicators = {}
        for shape, total in comm_totals.totals.items():
            action = earned_setting(total)
            self.communicators[shape] = 0 if action == DEFAULT_ACTION else action - COMM_ACTION_BASE
        self.provenance = {"method": "dynamiccl.tuning.agents.StaticBestAgent.fit",
                           "episodes": [[base.cases[int(c)].label, int(s)] for c, s in episodes],
                           "cost_model": base.model, "calls": int(sum(totals.calls.values()))}
        self.fallbacks = 0
        self._cache = _CaseCache()
        return self

    def act(self, env, obs, mask) -> int:
        cache = self._cache(env)
        key = (env.pending_call(), mask.tobytes())  # masks differ under other communicator configs
        if key not in cache:
            action = self.table.get(self.bucket_key(env), DEFAULT_ACTION)
            cache[key] = (action, False) if action < len(mask) and mask[action] else (DEFAULT_ACTION, True)
        action, fell_back = cache[key]
        self.fallbacks += fell_back
        return action

    def act_communicator(self, env, obs, mask) -> int:
        shape = env.pending_shape()
        choice = self.communicators.get((shape.kind, shape.nranks, shape.nnodes), 0)
        action = comm_action(choice) if choice else DEFAULT_ACTION
        if not mask[action]:
            self.fallbacks += 1
            return DEFAULT_ACTION
        return action

    def to_json(self) -> str:
        """The table as plain JSON: ``{"format", "version", "name", "provenance", "rules": [...]}``
        with one ``{"coll", "size_bucket", "nranks", "nnodes", "action", "choice"}`` per bucket."""
        rules = [{"coll": k[0], "size_bucket": k[1], "nranks": k[2], "nnodes": k[3], "action": a,
                  "choice": describe_action(a)} for k, a in sorted(self.table.items())]
        data = {"format": STATIC_BEST_FORMAT, "version": STATIC_BEST_VERSION, "name": self.name,
                "provenance": self.provenance, "rules": rules}
        if self.communicators:  # only with the knobs: files without them read as before
            data["communicators"] = [{"kind": k[0], "nranks": k[1], "nnodes": k[2], "choice": c,
                                      "config": COMM_CHOICES[c].describe()} for k, c in sorted(self.communicators.items())]
        return json.dumps(data, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "<json>") -> "StaticBestAgent":
        """Parse what ``to_json`` wrote.

        Raises:
            InputError: naming ``source`` and the field, for invalid JSON, a wrong format or
                version, or a rule with a missing key or an action outside 0..NUM_ACTIONS-1.
        """
        data = _STATIC_BEST.parse(schema.parse_json(text, source), source)
        table = {(r["coll"], r["size_bucket"], r["nranks"], r["nnodes"]): r["action"] for r in data["rules"]}
        communicators = {(c["kind"], c["nranks"], c["nnodes"]): c["choice"] for c in data["communicators"]}
        return cls(table, name=data["name"], provenance=data["provenance"], communicators=communicators)


# --- online learners -------------------------------------------------------------------------------


class OnlineAgent(Agent):
    """An online learner acting on measured call durations (``needs_measurements``).

    The learner sees what the plugin sees: key ``(coll, nbytes, nranks, nnodes)`` and the mask;
    ``observe`` hands it the duration of the call under the conditions at its start (µs, noise
    included), what NCCL's profiler plugin reports. ``fresh()`` returns a new agent with a copy of
    the learner as it was when this agent was made, so an evaluation can start from scratch per
    case.
    """

    needs_measurements = True

    def __init__(self, learner: OnlineLearner, name: str | None = None) -> None:
        self.learner = learner
        self.name = name or learner.name
        self._pristine = copy.deepcopy(learner)

    @property
    def measurements(self) -> int:
        return int(self.learner.measurements)

    def fresh(self) -> "OnlineAgent":
        """A new agent whose learner is a copy of this one's at construction (nothing learnt)."""
        return OnlineAgent(copy.deepcopy(self._pristine), name=self.name)

    @staticmethod
    def _arm_key(call: CallKey) -> tuple[int, int, int, int]:
        return int(call.coll), call.nbytes, call.nranks, call.nnodes

    def act(self, env, obs, mask) -> int:
        # The learners search (algorithm, protocol, channels): the catalogue without chunk sizes.
        return int(self.learner.act(self._arm_key(env.pending_call()), mask[:NUM_ACTIONS]))

    def observe(self, env, call, action, time_us) -> None:
        self.learner.observe(self._arm_key(env.call_key(call)), int(action), float(time_us))


# --- trained policies --------------------------------------------------------------------------------


class DecidingPolicy(TypingProtocol):
    def decide(self, obs_batch: np.ndarray, masks: np.ndarray) -> np.ndarray: ...


class PolicyAgent(Agent):
    """A deterministic policy over the plugin's observation.

    ``policy.decide(obs_batch float32[n, obs size], masks bool[n, env.num_actions]) -> int[n]`` (the
    masked argmax of a trained network; a policy trained with the knobs decides communicators too,
    at their observations). As the answer depends only on (observation, mask), it is
    cached on their bytes, per case; ``begin_episode`` decides every distinct call of a new case in one
    batch, the same batch whichever cases this agent saw before (a network's float results may depend
    on the batch it is evaluated in: per case, they do not depend on the order cases are evaluated in).

    Raises (from ``act`` / ``begin_episode``):
        ValueError: the policy returned something other than one integer action in range per row.
    """

    def __init__(self, policy: DecidingPolicy, name: str = "policy") -> None:
        self.policy = policy
        self.name = name
        self._decisions = _CaseCache()  # per case: (observation, mask) bytes -> action

    @staticmethod
    def _key(obs: np.ndarray, mask: np.ndarray) -> bytes:
        return np.asarray(obs, dtype=np.float32).tobytes() + np.packbits(np.asarray(mask, dtype=bool)).tobytes()

    def _decide(self, obs: np.ndarray, masks: np.ndarray) -> np.ndarray:
        actions = np.asarray(self.policy.decide(obs, masks))
        if actions.shape != (len(obs),) or actions.dtype.kind not in "iu":
            raise ValueError(f"{self.name}: decide must return int[{len(obs)}], "
                             f"got {actions.dtype}{list(actions.shape)}")
        if len(actions) and (actions.min() < 0 or actions.max() >= masks.shape[1]):
            raise ValueError(f"{self.name}: decide returned an action outside 0 .. {masks.shape[1] - 1}")
        return actions.astype(np.int64)

    def begin_episode(self, env) -> None:
        if env in self._decisions:
            return
        cache = self._decisions(env)
        calls, obs, masks = env.episode_calls()
        todo: dict[bytes, int] = {}
        for row in range(len(calls)):
            key = self._key(obs[row], masks[row])
            if key not in todo:
                todo[key] = row
        if todo:
            rows = np.fromiter(todo.values(), dtype=np.int64, count=len(todo))
            for key, action in zip(todo, self._decide(obs[rows], masks[rows])):
                cache[key] = int(action)

    def act(self, env, obs, mask) -> int:
        cache = self._decisions(env)
        key = self._key(obs, mask)
        if key not in cache:
            obs_batch = np.asarray(obs, dtype=np.float32).reshape(1, -1)
            cache[key] = int(self._decide(obs_batch, np.asarray(mask, dtype=bool).reshape(1, -1))[0])
        return cache[key]

    act_communicator = act  # the communicator observation says which decision it is


# --- decision tables ----------------------------------------------------------------------------------


class TableAgent(Agent):
    """A decision table applied exactly as the tuner plugin applies it.

    Per call: ``table.choose(NCCL's [algorithm][protocol] cost table, call)``, where the call's ``position`` is what
    the plugin's per-communicator counter gives it (``PositionCounter`` over the table's step lines, in steady state: the counter
    runs over three consecutive steps of each group and the last one counts), not the trace's --
    a shape without a step line has unknown positions (-1) at run time, so position rules do not
    apply there. No rule applies -> action 0. A rule that keeps NCCL's algorithm,
    protocol and channels -> action 0 too (the plugin then leaves NCCL's own arg-min cell and
    channel count in place, which is what action 0 runs; ``decisions_of_table`` maps it the same
    way). Otherwise the chosen (algorithm, protocol) with the rule's channels rounded down to the
    catalogue (``nearest_channels``; 0 = NCCL's) and its chunk size (a chunk action where the rule
    keeps NCCL's channels and its chunk is in ``CHUNK_CHOICES_BYTES``; where the cost model does not
    price chunk sizes -- the chunk action masked -- the same choice with NCCL's chunk, which is what
    such a model assumes). An action the call's mask forbids (e.g. more channels than the
    communicator's pool) -> action 0, counted in ``fallbacks`` (per call).

    With the knobs, a communicator gets ``table.communicator_config(kind, nranks, nnodes)``: the
    ``COMM_CHOICES`` entry equal to it (a config outside the catalogue, or one the communicator's mask
    forbids, -> NCCL's default, counted in ``fallbacks``).
    """

    def __init__(self, table: DecisionTable, name: str = "table") -> None:
        self.table = table
        self.name = name
        self.fallbacks = 0
        self._cache = _CaseCache()

    def _plugin_positions(self, env) -> dict[int, int]:
        """Tunable call -> the position the plugin's counter gives it at run time."""
        positions = {}
        for calls in env.communicator_calls().values():
            first = env.call_key(calls[0])
            counter = PositionCounter(self.table.steps_for(first.nranks, first.nnodes))
            for _ in range(3):  # steady state: the counter enters each step from the previous one
                for call in calls:
                    key = env.call_key(call)
                    positions[call] = counter.advance(key.coll, key.nbytes)
        return positions

    def _action(self, env, mask: np.ndarray, call: CallKey) -> tuple[int, bool]:
        choice = self.table.choose(env.nccl_costs(), call)
        if choice.rule_index is None:
            return DEFAULT_ACTION, False
        rule = self.table.rules[choice.rule_index]
        if rule.keeps_nccl:
            return DEFAULT_ACTION, False
        channels = nearest_channels(choice.channels)
        action = action_index(int(choice.algorithm), int(choice.protocol), channels)
        if choice.chunk_bytes in CHUNK_CHOICES_BYTES and rule.channels == KEEP:
            chunked = action_index(int(choice.algorithm), int(choice.protocol), 0, choice.chunk_bytes)
            if chunked < len(mask) and mask[chunked]:
                return chunked, False
        return (action, False) if mask[action] else (DEFAULT_ACTION, True)

    def act(self, env, obs, mask) -> int:
        cache = self._cache(env)
        if "positions" not in cache:
            cache["positions"] = self._plugin_positions(env)
        # What the plugin sees: the call with the position its counter gives (reg_buff 0).
        call = dataclasses.replace(env.pending_call(), position=cache["positions"][env.pending])
        key = (call, mask.tobytes()) if env.knobs else call  # with the knobs, masks follow the configs
        if key not in cache:
            cache[key] = self._action(env, mask, call)
        action, fell_back = cache[key]
        self.fallbacks += fell_back
        return action

    def act_communicator(self, env, obs, mask) -> int:
        shape = env.pending_shape()
        config = self.table.communicator_config(shape.kind, shape.nranks, shape.nnodes)
        if config.is_default:
            return DEFAULT_ACTION
        action = comm_action(COMM_CHOICES.index(config)) if config in COMM_CHOICES else None
        if action is None or not mask[action]:
            self.fallbacks += 1
            return DEFAULT_ACTION
        return action


class SearchAgent(Agent):
    """The searched decision table of each case (:func:`dynamiccl.tuning.search.search_case`), applied
    as the plugin applies it (a :class:`TableAgent` per case).

    The search runs once per case, at the first episode of that case, over ``states`` (the dynamics
    states it is scored on; None: the state of that first episode) -- ``evaluate`` sets them to the
    states it evaluates, so the table is the best one for exactly those episodes. It reads the
    simulator (the whole step, every state): a reference, not a tuner. ``results`` holds each case's
    :class:`~dynamiccl.tuning.search.SearchResult` by case label.
    """

    name = "search"

    def __init__(self, states: list[int] | None = None, max_sweeps: int | None = None, progress=None) -> None:
        self.states = None if states is None else [int(s) for s in states]
        self.max_sweeps = max_sweeps
        self.progress = progress
        self.results: dict[str, object] = {}
        self._tables: dict[tuple, TableAgent] = {}

    @property
    def fallbacks(self) -> int:
        return sum(agent.fallbacks for agent in self._tables.values())

    def begin_episode(self, env) -> None:
        if env.case_id in self._tables:
            return
        from dynamiccl.tuning.search import DEFAULT_MAX_SWEEPS, search_case

        loaded = env.simulator.case
        states = self.states if self.states else [env.state]
        sweeps = DEFAULT_MAX_SWEEPS if self.max_sweeps is None else self.max_sweeps
        result = search_case(loaded, states, max_sweeps=sweeps, progress=self.progress)
        self.results[loaded.case.label] = result
        self._tables[env.case_id] = TableAgent(result.table, name=self.name)

    def act(self, env, obs, mask) -> int:
        if env.case_id not in self._tables:
            self.begin_episode(env)
        return self._tables[env.case_id].act(env, obs, mask)

    def act_communicator(self, env, obs, mask) -> int:
        if env.case_id not in self._tables:
            self.begin_episode(env)
        return self._tables[env.case_id].act_communicator(env, obs, mask)


# --- policies from files -------------------------------------------------------------------------


def load_policy_agent(path: str | os.PathLike) -> Agent:
    """A trained policy (``policy.zip``) or a decision table (any format ``dynamiccl.table.load``
    reads), as an agent named "policy" or "table".

    Raises:
        InputError: the file is not a readable policy or table (naming it).
    """
    from dynamiccl import table

    if Path(path).suffix.lower() in table.FORMATS:
        return TableAgent(table.load(path), name="table")
    from dynamiccl.tuning.policy_file import load_policy

    return PolicyAgent(load_policy(path), name="policy")


__all__ = [
    "load_policy_agent", "Agent", "GreedyPerCallAgent", "NcclDefaultAgent", "OnlineAgent", "PolicyAgent",
    "RandomAgent", "SearchAgent", "StaticBestAgent", "TableAgent", "size_bucket",
]
