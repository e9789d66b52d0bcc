"""``TuningEnv``: choose NCCL's algorithm, protocol and channels for every collective of a training step
(and, with the knobs, each communicator's CTA settings and each call's chunk size)."""

from __future__ import annotations

import os
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from dynamiccl.callkey import CallKey
from dynamiccl.errors import InputError
from dynamiccl.nccl import NUM_ALGORITHMS, NUM_PROTOCOLS
from dynamiccl.knobs.comm_config import DEFAULT_COMM_CHOICE
from dynamiccl.tuning.actions import (
    COMM_ACTION_BASE, DEFAULT_ACTION, NUM_ACTIONS, NUM_COMM_ACTIONS, NUM_KNOBS_ACTIONS,
)
from dynamiccl.envspec import resolve_env
from dynamiccl.tuning.cases import (
    Case, LoadedCase, default_schedule, default_step_time_us, load_case, new_replay,
)
from dynamiccl.costmodel.protocol import CostModelOptions
from dynamiccl.costmodel.registry import DEFAULT_COST_MODEL, cost_model_entry
from dynamiccl.tuning.communicators import Shape
from dynamiccl.tuning.observation import KNOBS_OBS_SIZE, OBS_SIZE
from dynamiccl.tuning.timeline import Replay
from dynamiccl.workload.spec import WorkloadSpec

ENV_ID = "dynamiccl/Tuning-v0"
# The id to give gym.make in a program that imported only gymnasium: gymnasium >= 1.0 (the version this
# package requires) imports the module named before ':' first, and importing this module registers
# ENV_ID. Gymnasium 1.0 removed the entry-point plugin loader (group "gymnasium.envs") of 0.26-0.29,
# so no installed package registers on `import gymnasium` alone any more; the module prefix is how
# gymnasium 1.x loads a package's environments (Farama-Foundation/Arcade-Learning-Environment#487:
# gymnasium.make("ale_py:...")).
IMPORTING_ENV_ID = f"dynamiccl.tuning.env:{ENV_ID}"

# The built-in case (``gym.make(ENV_ID)`` with no arguments): Llama-3 8B with TP2 x DP8 on two
# H100 nodes whose collectives mostly run beside memory-bound compute.
DEFAULT_WORKLOAD = WorkloadSpec.from_dict({"model": "llama3-8b", "tp": 2, "pp": 1, "dp": 8, "sp": True,
                                           "global_batch": 64}, "TuningEnv default")
DEFAULT_ENV = "h100-ib-2x8-heavy-compute"


def default_cases() -> list[Case]:
    """The built-in case; its trace is generated once into the user's cache directory."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dynamiccl" / "workloads"
    return [Case(str(DEFAULT_WORKLOAD.cached_trace(cache, resolve_env(DEFAULT_ENV).cluster)), DEFAULT_ENV)]


class TuningEnv(gym.Env):
    """Replay one training step of a trace; choose NCCL's configuration for each collective in it.

    Each episode replays one step of one case (a trace on an environment spec) under one dynamics
    state (a seed for the network's background traffic and the run-to-run noise) with the
    timeline of :mod:`dynamiccl.tuning.timeline`: compute and communication streams, the trace's
    dependencies, compute slowed by the SMs and HBM bandwidth of the collectives beside it,
    concurrent collectives sharing links, congestion that comes and goes. Costs come from the
    world simulator (``model="world"``), NCCL's own model (``"nccl"``) or live measurement
    (``"live"``). Every collective NCCL's tuner is asked about (Broadcast, Reduce, AllGather,
    ReduceScatter, AllReduce) is one decision when it is ready to start on all its ranks; one
    decision per communicator call, applied on every rank alike. Send/recv and AlltoAll keep
    NCCL's choice (the tuner never sees them).

    ## Action space
    ``Discrete(169)``: 0 = NCCL's default (leave the cost table and channels alone); 1..168 =
    (algorithm, protocol, channels) over NCCL's 7 x 3 cells and channels in
    ``(0 = NCCL's count for that pair, 1, 2, 4, 8, 16, 24, 32)``
    (:mod:`dynamiccl.tuning.actions`). ``action_masks()`` gives the valid ones for the pending
    call: the cell is enabled in NCCL's cost table for this collective and cluster (never an entry
    NCCL marked -1), and the channels fit the communicator's pool (NVLS: its NVLS pool). An
    invalid action is applied as the plugin applies a rule whose cell NCCL disabled: NCCL's
    default is used (``info["invalid_action"]`` is True).

    With ``knobs=True``: ``Discrete(285)``, call actions then communicator actions:

    =========  =====================================================================================
    0          NCCL's default (a call: NCCL's algorithm, protocol, channels and chunk; a
               communicator: NCCL's default config, ``COMM_CHOICES[0]``)
    1..168     (algorithm, protocol, channels) as above
    169..273   (algorithm, protocol, NCCL's channels, chunk size) for every cell x
               ``CHUNK_CHOICES_BYTES`` (64 KiB .. 1 MiB; tuner ABI v6 ``getChunkSize``)
    274..284   communicator config ``COMM_CHOICES[a - 274]`` (maxCTAs 2/4/8/16, minCTAs 16/32,
               nvlsCTAs 4/8/16, CTA policy zero; 274 itself is masked: action 0 says it)
    =========  =====================================================================================

    An episode then starts with one *communicator decision* per communicator shape of the step
    (group kind, nranks, nnodes; :mod:`dynamiccl.tuning.communicators`), then the calls as above.
    In the communicator phase the mask allows action 0 and the configs ``comm_choice_mask`` allows
    for the env's NCCL version, the shape's NVLS, its NVLink domain (one node) and
    ``[nccl] symmetric_memory`` (zero-CTA needs NCCL >= 2.28 and symmetric buffers); in the call
    phase it allows the call actions valid under the chosen config (channels above the capped pool
    masked) and, since neither the world nor NCCL's model prices chunk sizes
    (``knobs.KNOBS["chunk_size"].masked_why``), chunk actions only with a model whose
    ``prices_chunk`` is True. ``pending_communicator`` is the shape being decided (None in the call
    phase); ``pending`` is None in the communicator phase.

    ## Observation space
    ``Box(0, 1, (11,), float32)``: what the tuner plugin sees on every rank alike: collective
    (one-hot), log2 bytes, log2 nranks, log2 nnodes, log2 numPipeOps, regBuff, log2 position of
    the call among its communicator's collectives in the step
    (:mod:`dynamiccl.tuning.observation`). No simulator state.

    With ``knobs=True``: ``Box(0, 1, (23,), float32)``: the 11 entries, a phase flag (1: a
    communicator decision) and the group kind one-hot over ``trace.schema.GROUP_KINDS`` (11). A
    communicator decision's observation holds its log2 nranks, log2 nnodes, the flag and its kind;
    a call's has the flag and kind 0 (the plugin does not see the kind).

    ## Reward
    ``T0`` is the step time (makespan, µs) when every call keeps NCCL's default, in the same case
    and dynamics state (same congestion timeline and noise); ``T`` the episode's step time. For the
    call decided at step k, with ``C(a)`` = the time it adds to the step under action ``a`` in the
    conditions when it starts (its duration -- congestion, overlap, links shared with running
    calls, noise -- minus what compute left on its ranks can hide, plus
    ``hidden x (compute slowdown - 1)``: the overlapped compute it stretches)::

        r_k = 100 x (C(default) - C(a_k)) / T0

    and the last step adds ``100 x (T0 - T) / T0 - sum of the r_k so far``, so the undiscounted
    return is exactly the step time saved, in per cent of NCCL's default step time
    (``100 x (1 - T / T0)``; 0 for NCCL's default, positive when faster).

    With ``knobs=True`` a communicator decision gets its own marginal effect on the step,

        r = 100 x (T(configs before it) - T(configs after it)) / T0

    where ``T(configs)`` is the step time with the communicators decided so far created with their
    configs, the others with NCCL's default, and every call at NCCL's default action (replays cached
    per case, state and configs), so that ``gamma = 0`` still learns communicator choices. Calls are
    then rewarded as above, relative to the chosen configs (``C(a)`` under the configs, the slack from
    the configs' default schedule); ``T0`` stays NCCL's default step time, and the last step keeps the
    return exact: ``100 x (1 - T / T0)``.

    ## Starting state
    ``reset`` draws a case uniformly from ``cases`` and a dynamics state uniformly from
    ``state_offset .. state_offset + states - 1`` with the environment's seeded generator;
    ``options={"case": i, "state": s}`` pins them.

    ## Episode end
    Terminated when the step's last op ends (every call of the step decided). Never truncated.
    ``info`` at the end holds ``step_time_us``, ``default_step_time_us``, ``speedup`` (T0 / T),
    ``case`` and ``state``; with ``knobs=True`` also ``communicators`` (shape -> config in words).

    ## Arguments
    - ``cases``: list of :class:`~dynamiccl.tuning.cases.Case` or ``(trace path, env spec)``
      pairs; default the built-in case (Llama-3 8B TP2 x DP8 on ``h100-ib-2x8-heavy-compute``).
    - ``model``: a registered cost model (``dynamiccl.costmodel.COST_MODELS``): ``"world"`` (default),
      ``"nccl"``, ``"live"``, ``"measured"``; ``cost_options``: its options (the measured model's
      CSVs: ``CostModelOptions(measurements=...)``).
    - ``states``: number of dynamics states to draw from (default 8); ``state_offset``: the first.
    - ``reward_scale``: the 100 above.
    - ``knobs``: the knobs beyond (algorithm, protocol, channels): communicator decisions and
      chunk-size actions (default False: today's spaces exactly, so policies trained before keep
      working).

    ## What agents may read
    Besides the observation and ``action_masks()``, what the deployed plugin sees:
    ``pending_call()`` / ``call_key(call)`` (:class:`~dynamiccl.callkey.CallKey`), ``nccl_costs()``
    (the cost table NCCL hands ``getCollInfo``), ``communicator_calls()`` (each communicator's
    sequence of calls in the step, to emulate the plugin's position counter), ``episode_calls()``
    (to decide a stateless policy's calls in one batch) and ``case_id`` (a cache key); once a call
    has started, ``measured(call)`` (its action and duration, what NCCL's profiler plugin reports).
    ``simulator`` is privileged -- congestion, overlap and link sharing now, the compiled step, the
    timeline -- for the baselines that may see it (greedy-per-call, static-best's fit, the search
    reference) and evaluation records only.
    """

    metadata = {"render_modes": []}

    def __init__(self, cases: Sequence[Case | tuple] | None = None, model: str = DEFAULT_COST_MODEL, states: int = 8,
                 state_offset: int = 0, reward_scale: float = 100.0, cost_options: CostModelOptions | None = None,
                 knobs: bool = False):
        super().__init__()
        cost_model_entry(model)  # an unknown name fails here, listing the registered models
        if states < 1 or state_offset < 0:
            raise InputError(None, "states", f"expected states >= 1 and state_offset >= 0, got {states}, {state_offset}")
        cases = default_cases() if cases is None else [c if isinstance(c, Case) else Case(*c) for c in cases]
        if not cases:
            raise InputError(None, "cases", "expected at least one (trace, env spec) case")
        self.cases = cases
        self.model = model
        self.cost_options = cost_options or CostModelOptions()
        self.states = int(states)
        self.state_offset = int(state_offset)
        self.reward_scale = float(reward_scale)
        self.knobs = bool(knobs)
        self.num_actions = NUM_KNOBS_ACTIONS if self.knobs else NUM_ACTIONS
        self.observation_space = spaces.Box(0.0, 1.0, (KNOBS_OBS_SIZE if self.knobs else OBS_SIZE,), dtype=np.float32)
        self.action_space = spaces.Discrete(self.num_actions)
        self._cases = [load_case(c, model, self.cost_options, knobs=self.knobs) for c in cases]
        # Per case, for the scalar path of step(): per cost row, its mask as a Python list by action
        # (padded to the env's actions), and per call its observation row; the episode's calls' masks
        # are _call_valid (under the configs chosen) and their observations _call_obs.
        self._case_masks, self._case_row_valid, self._case_obs = [], [], []
        for loaded in self._cases:
            masks = np.zeros((len(loaded.costs.keys), self.num_actions), dtype=bool)
            masks[:, :loaded.costs.num_actions] = loaded.costs.mask
            self._case_masks.append(masks)
            self._case_row_valid.append(masks.tolist())
            self._case_obs.append(list(loaded.obs))
        self._call_rows: list[int] = list(self._cases[0].costs.call_row)
        self._call_valid = [self._case_row_valid[0][r] for r in self._call_rows]
        self._call_obs = self._case_obs[0]
        self._case: LoadedCase = self._cases[0]
        self._replay: Replay | None = None
        self.pending: int | None = None
        self.pending_communicator: int | None = None
        self.configs: list[int] = []
        self.case_index = 0
        self.state = state_offset

    # --- gymnasium API ---

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = options or {}
        self.case_index = int(options["case"]) if "case" in options else int(self.np_random.integers(len(self.cases)))
        self.state = int(options["state"]) if "state" in options else \
            self.state_offset + int(self.np_random.integers(self.states))
        if not 0 <= self.case_index < len(self.cases):
            raise InputError(None, "options.case", f"expected 0..{len(self.cases) - 1}, got {self.case_index}")
        self._case = self._cases[self.case_index]
        self._call_obs = self._case_obs[self.case_index]
        self.default_time_us, latest = default_schedule(self._case, self.state)
        self.decisions = 0
        self._reward_sum = 0.0
        info = {"case": self._case.case.label, "state": self.state}
        if self.knobs:
            self._communicators = self._case.communicators
            self.configs = [DEFAULT_COMM_CHOICE] * len(self._communicators.shapes)
            # Until the call phase: the calls' rows under NCCL's default configs (episode_calls, nccl_costs).
            self._call_rows = list(self._case.costs.call_row)
            self._configs_time_us = self.default_time_us
            self._replay = None
            self.pending = None
            self.pending_communicator = 0
            return self._communicators.obs[0].copy(), info
        self._start_calls(list(self._case.costs.call_row), latest)
        return self._case.obs[self.pending].copy(), info

    def _start_calls(self, call_rows: list[int], latest: list[float]) -> None:
        """Begin the call phase: the replay on ``call_rows`` (the chosen configs'), at its first decision."""
        row_valid = self._case_row_valid[self.case_index]
        self._call_rows = call_rows
        self._call_valid = [row_valid[r] for r in call_rows]
        configs = tuple(self.configs) if self.knobs else None
        self._replay = new_replay(self._case, self.state, latest, configs=configs)
        self.pending_communicator = None
        self.pending = self._replay.next_decision()

    def step(self, action):
        if self.pending_communicator is not None:
            return self._step_communicator(action)
        replay, call = self._replay, self.pending
        if replay is None or call is None:
            raise RuntimeError("step() called before reset() or after the episode ended")
        action = int(action)
        invalid = not (0 <= action < self.num_actions and self._call_valid[call][action])
        if invalid:
            action = DEFAULT_ACTION
        if action == DEFAULT_ACTION:
            reward = 0.0
        else:
            default_cost, chosen_cost = replay.exposed_cost(call, (DEFAULT_ACTION, action))
            reward = self.reward_scale * (default_cost - chosen_cost) / self.default_time_us
        replay.decide(call, action)
        self.decisions += 1
        self.pending = pending = replay.next_decision()
        info: dict[str, Any] = {"invalid_action": True} if invalid else {}
        if pending is None:
            step_time = replay.makespan_us
            total = self.reward_scale * (self.default_time_us - step_time) / self.default_time_us
            reward += total - (self._reward_sum + reward)
            info.update(step_time_us=step_time, default_step_time_us=self.default_time_us,
                        speedup=self.default_time_us / step_time, case=self._case.case.label, state=self.state)
            if self.knobs:
                info["communicators"] = self._communicators.describe(self.configs)
            obs = self._call_obs[call].copy()  # terminal observation: the last call's
            self._reward_sum = total
            return obs, float(reward), True, False, info
        self._reward_sum += reward
        return self._call_obs[pending].copy(), float(reward), False, False, info

    def _step_communicator(self, action):
        """A communicator decision (knobs): the pending shape gets the config ``action`` stands for."""
        shape = self.pending_communicator
        action = int(action)
        mask = self.action_masks()
        invalid = not (0 <= action < self.num_actions and mask[action])
        choice = DEFAULT_COMM_CHOICE if invalid or action == DEFAULT_ACTION else action - COMM_ACTION_BASE
        self.configs[shape] = choice
        before = self._configs_time_us
        last = shape + 1 == len(self._communicators.shapes)
        if last:  # the call phase needs the configs' schedule (slack); before it, the step time will do
            after, latest = default_schedule(self._case, self.state, tuple(self.configs))
        else:
            after = default_step_time_us(self._case, self.state, tuple(self.configs))
        self._configs_time_us = after
        reward = self.reward_scale * (before - after) / self.default_time_us
        self.decisions += 1
        self._reward_sum += reward
        info: dict[str, Any] = {"invalid_action": True} if invalid else {}
        if shape + 1 < len(self._communicators.shapes):
            self.pending_communicator = shape + 1
            return self._communicators.obs[shape + 1].copy(), float(reward), False, False, info
        self._start_calls(self._communicators.call_rows(self.configs), latest)
        return self._call_obs[self.pending].copy(), float(reward), False, False, info

    def action_masks(self) -> np.ndarray:
        """Valid actions for the pending decision (sb3-contrib's MaskablePPO calls this): the pending
        call's, or (knobs) the pending communicator's (action 0 and its allowed configs)."""
        if self.pending_communicator is not None:
            mask = np.zeros(self.num_actions, dtype=bool)
            allowed = self._communicators.masks[self.pending_communicator]
            mask[COMM_ACTION_BASE:COMM_ACTION_BASE + NUM_COMM_ACTIONS] = allowed
            mask[COMM_ACTION_BASE + DEFAULT_COMM_CHOICE] = False  # action 0 says it
            mask[DEFAULT_ACTION] = True
            return mask
        if self.pending is None:
            mask = np.zeros(self.num_actions, dtype=bool)
            mask[DEFAULT_ACTION] = True
            return mask
        return self._case_masks[self.case_index][self._call_rows[self.pending]]

    @property
    def communicator_shapes(self) -> tuple[Shape, ...]:
        """The episode's communicator shapes in decision order (knobs; () without)."""
        return self._case.communicators.shapes if self.knobs else ()

    def pending_shape(self) -> Shape:
        """The shape of the pending communicator decision (what the launcher knows of the group)."""
        return self._case.communicators.shapes[self.pending_communicator]

    # --- what the deployed tuner plugin sees (any agent may use it) ---------------------------------

    def call_key(self, call: int) -> CallKey:
        """What the plugin sees about ``call`` (an id of the episode's step; ``position`` is the
        trace's)."""
        return self._case.program.call_key[call]

    def pending_call(self) -> CallKey:
        """What the plugin sees about the pending call."""
        return self.call_key(self.pending)

    def nccl_costs(self, call: int | None = None) -> np.ndarray:
        """NCCL's cost table for ``call`` (default: the pending one): predicted µs per
        [algorithm][protocol], -1 where NCCL disabled the cell -- what ``getCollInfo`` is handed."""
        row = self._call_rows[self.pending if call is None else call]
        return self._case.costs.nccl_cost[row].reshape(NUM_ALGORITHMS, NUM_PROTOCOLS)

    def communicator_calls(self) -> dict[str, list[int]]:
        """Per communicator (process group) of the episode's step, its tunable calls in issue order:
        the sequence the plugin's per-communicator context sees once per step."""
        program = self._case.program
        by_group: dict[str, list[int]] = {}
        for call in program.tunable_calls:
            by_group.setdefault(program.call_group[call], []).append(call)
        for calls in by_group.values():
            calls.sort(key=lambda c: program.call_key[c].position)
        return by_group

    def episode_calls(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(call ids, observations, masks) of every tunable call of the episode's step, for an agent
        whose answer depends only on (observation, mask) and that decides them in one batch (the
        masks under the communicator configs chosen so far: NCCL's default ones before the call phase)."""
        calls = np.asarray(self._case.program.tunable_calls, dtype=np.int64)
        rows = np.asarray(self._call_rows, dtype=np.int64)[calls]
        return calls, self._case.obs[calls].astype(np.float32), self._case_masks[self.case_index][rows]

    @property
    def case_id(self) -> tuple:
        """The episode's case and what costs it (``CostTable.source``: model, options, world
        parameters) and whether the knobs are on: answers that depend only on them can be cached on it."""
        return self._case.case, self._case.costs.source, self.knobs

    # --- measured: what NCCL's profiler plugin reports once a call has started ---------------------

    def measured(self, call: int) -> tuple[int, float]:
        """(the action that ran, its duration in µs under the conditions at its start, noise
        included) for a call of this episode that has been decided."""
        return int(self._replay.call_action[call]), float(self._replay.call_time_at_start_us[call])

    # --- privileged: the simulator's state ----------------------------------------------------------

    @property
    def simulator(self) -> "SimulatorView":
        """What the simulator knows and no deployed tuner does. For the baselines that are allowed
        to see it (greedy-per-call, static-best's offline fit, the search reference) and for evaluation records;
        never for a policy."""
        return SimulatorView(self._case, self._replay, self.pending, self.action_masks(), self.state,
                             tuple(self.configs), self.pending_communicator)


@dataclass(frozen=True)
class SimulatorView:
    """Privileged state of a :class:`TuningEnv` episode (see ``TuningEnv.simulator``).

    ``case``: the compiled step (``program``), its cost table (``costs``) and environment spec
    (``env``); ``replay``: the timeline as far as it has run; ``pending``/``mask``: the pending
    decision; ``state``: the dynamics state; ``configs``/``pending_communicator``: the communicator
    configs so far and the shape being decided (knobs).
    """

    case: LoadedCase
    replay: Replay | None
    pending: int | None
    mask: np.ndarray
    state: int = 0
    configs: tuple[int, ...] = ()
    pending_communicator: int | None = None

    def exposed_costs(self) -> np.ndarray:
        """Per action, what the pending call adds to the step (µs) in the simulator's state now --
        congestion, overlap, links shared with running calls, noise; inf where invalid (what the
        greedy-per-call baseline minimises)."""
        costs = np.full(len(self.mask), np.inf)
        got = self.replay.exposed_costs(self.pending)
        costs[:len(got)] = got
        return np.where(self.mask, costs, np.inf)

    def communicator_step_times(self) -> np.ndarray:
        """Per action, the step time (µs) if the pending communicator shape took the config the
        action stands for (the shapes decided so far with theirs, the rest NCCL's default, every call
        at NCCL's default action: the replays its reward compares); inf where invalid. What the
        greedy-per-call and static-best baselines minimise in the communicator phase."""
        times = np.full(len(self.mask), np.inf)
        for action in np.flatnonzero(self.mask).tolist():
            configs = list(self.configs)
            configs[self.pending_communicator] = DEFAULT_COMM_CHOICE if action == DEFAULT_ACTION \
                else action - COMM_ACTION_BASE
            times[action] = default_step_time_us(self.case, self.state, tuple(configs))
        return times


if ENV_ID not in gym.registry:  # gym.make(ENV_ID) once this module is imported; gym.make(IMPORTING_ENV_ID) anywhere
    gym.register(id=ENV_ID, entry_point="dynamiccl.tuning.env:TuningEnv")
