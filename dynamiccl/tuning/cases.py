"""Episode sources: (trace step, environment spec) cases, and the caches that make resets cheap.

A ``Case`` names a trace file (generated workloads are cached traces, see ``WorkloadSpec``), the environment
spec it runs on and the step to replay. Compiling a trace and costing its distinct calls happen
once per process and case (``load_case``); the NCCL-default step time of a (case, dynamics state)
once as well (``default_schedule``).

A *dynamics state* is an integer: it seeds the background-traffic timeline and the run-to-run noise
of one replay (:func:`dynamics_seed`), so "the same step under the same conditions" is a (case,
state) pair, and a training split and a held-out split can use disjoint states.
"""

from __future__ import annotations

import os
import zlib
from collections import OrderedDict
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dynamiccl.costmodel.dynamics import CongestionProcess, check_period, noise_factors
from dynamiccl.costmodel.protocol import CostModelOptions
from dynamiccl.costmodel.registry import DEFAULT_COST_MODEL
from dynamiccl.costmodel.world import PARAMS_ENV
from dynamiccl.envspec import EnvSpec, resolve_env
from dynamiccl.errors import InputError
from dynamiccl.trace.consistency import require_consistent, require_fit
from dynamiccl.trace.store import Trace
from dynamiccl.tuning.costs import CostTable, require_node_fit
from dynamiccl.tuning.program import StepProgram
from dynamiccl.tuning.timeline import Replay, latest_finish

if TYPE_CHECKING:
    from dynamiccl.tuning.communicators import Communicators


@dataclass(frozen=True)
class Case:
    """One (trace step, environment spec) pair. ``trace``: a trace file path; ``env``: a spec name
    (``envs/NAME.toml``) or path; ``step``: the step to replay (None: the trace's last)."""

    trace: str
    env: str
    step: int | None = None

    @property
    def label(self) -> str:
        return f"{Path(self.trace).stem}@{Path(self.env).stem}"


@dataclass
class LoadedCase:
    case: Case
    env: EnvSpec
    program: StepProgram
    costs: CostTable
    obs: np.ndarray          # [calls, OBS_SIZE] observation of every call (tuning.observation.observe_calls)
    knobs: bool = False      # costed with communicator configs and chunk sizes; obs in the knobs layout

    @property
    def communicators(self) -> "Communicators":
        """The step's communicator shapes and their config masks (built once per loaded case)."""
        found = self.__dict__.get("_communicators")
        if found is None:
            from dynamiccl.tuning.communicators import Communicators

            found = self.__dict__["_communicators"] = Communicators.of(self)
        return found

    @property
    def layout_label(self) -> str:
        """The case for a reader: :func:`layout_label` of its trace's workload provenance."""
        return layout_label(self.case, self.program.workload, self.program.world_size)


def layout_label(case: Case, workload: dict, world_size: int) -> str:
    """A readable name of ``case`` (whose ``label`` carries a digest, e.g.
    ``mixtral-8x7b-3a5237e60398@aws-p5-2x8``): for a generated workload, its model and parallel layout
    on its cluster ("mixtral-8x7b TP1 PP1 DP16 EP8 (16 GPUs, dp-mode distopt) on aws-p5-2x8"); for a
    trace without that provenance (captured, imported), its file stem and GPU count on its cluster.
    ``workload``: the trace's ``TraceMeta.workload`` (the generator records ``model`` and ``layout``)."""
    from dynamiccl.workload.layout import ParallelLayout

    cluster = Path(case.env).stem
    model, layout = workload.get("model"), workload.get("layout")
    if isinstance(model, dict) and isinstance(model.get("name"), str) and isinstance(layout, dict):
        known = {f.name for f in fields(ParallelLayout)}
        try:
            described = ParallelLayout(**{k: v for k, v in layout.items() if k in known}).describe()
        except (TypeError, ValueError):  # provenance of another generator version: fall back to the file
            described = None
        if described:
            return f"{model['name']} {described} on {cluster}"
    return f"{Path(case.trace).stem} ({world_size} GPUs) on {cluster}"


def dynamics_seed(case: Case, state: int) -> int:
    """A stable 32-bit seed for (case, dynamics state): the same on every machine and run."""
    # File names, not paths: the same trace and spec give the same conditions wherever they live
    # (generated workloads carry a content digest in their names).
    return zlib.crc32(f"{Path(case.trace).name}|{Path(case.env).stem}|{case.step}|{state}".encode())


@lru_cache(maxsize=64)
def _program(trace: str, step: int | None) -> StepProgram:
    """The compiled step of a trace whose ranks fit together (checked once per process and step)."""
    data = Trace.read(trace)
    program = StepProgram.from_trace(data, step, source=trace)
    require_consistent(data, program.step, trace)
    return program


def check_case(case: Case) -> tuple[EnvSpec, StepProgram]:
    """(spec, compiled step) of ``case`` once what :func:`load_case` refuses before costing is
    checked: the spec and the trace read, the step's ranks fit together, into the spec and into its
    nodes, the congestion periods long enough, a collective to tune. No costing (the compiled step is
    cached per process): a command that fans its cases out checks them all here first, and refuses
    bad input before any work.

    Raises:
        InputError: as :func:`load_case`.
    """
    env = resolve_env(case.env)
    program = _program(case.trace, case.step)
    require_fit(program.world_size, program.gpus_per_node, env.world_size, case.trace,
                env.name)
    require_node_fit(program.call_key, env, program.source)
    # The step lasts at least its busiest rank's compute: too many congestion periods in that
    # already is refused before any replay starts (a replay visits every period).
    check_period(env.dynamics, program.busiest_rank_compute_us(), env.source)
    if not program.tunable_calls:
        raise InputError(case.trace, "ops", "the step has no collective NCCL's tuner is asked about; nothing to tune")
    return env, program


def load_case(case: Case, model: str = DEFAULT_COST_MODEL, options: CostModelOptions | None = None,
              knobs: bool = False) -> LoadedCase:
    """Compile and cost ``case`` with the registered cost model ``model`` made with ``options``
    (cached per process, per model, options, ``knobs`` and world parameters file in effect:
    ``DYNAMICCL_WORLD_PARAMS``, which ``--params`` sets). ``knobs``: also cost every communicator
    config and chunk size (``CostTable.build``); observations in the knobs layout.

    Raises:
        InputError: unreadable trace or spec, a step not in the trace, ranks that do not fit together
            (what ``dynamiccl trace check`` rejects), a trace of more GPUs than the spec has, nodes
            smaller than the trace's (see ``CostTable.build``), or congestion periods too short
            for the step (``dynamics.check_period``).
    """
    return _load_case(case, model, options or CostModelOptions(), os.environ.get(PARAMS_ENV) or None, bool(knobs))


@lru_cache(maxsize=256)
def _load_case(case: Case, model: str, options: CostModelOptions, world_params_file: str | None,
               knobs: bool = False) -> LoadedCase:
    """:func:`load_case`, cached on everything its costs depend on (``world_params_file`` is read by
    the world itself, from the environment)."""
    from dynamiccl.tuning.observation import observe_calls

    env, program = check_case(case)
    costs = CostTable.build(program, env, model, options, knobs=knobs)
    return LoadedCase(case, env, program, costs, observe_calls(program, knobs), knobs)


def new_replay(loaded: LoadedCase, state: int, latest_finish_us: list[float] | None = None,
               configs: tuple[int, ...] | None = None) -> Replay:
    """A fresh replay of ``loaded`` under dynamics ``state`` (seeded congestion and noise);
    ``latest_finish_us`` (from ``default_schedule``) lets it price a call's slack; ``configs``: per
    communicator shape of the step (``loaded.communicators``), its ``COMM_CHOICES`` index (None:
    NCCL's default everywhere)."""
    seed = dynamics_seed(loaded.case, state)
    dynamics = loaded.env.dynamics
    congestion = CongestionProcess(dynamics, seed, loaded.env.source) if dynamics.congestion == "markov" else None
    noise = noise_factors(dynamics, loaded.program.num_calls, np.random.default_rng(seed + 1))
    call_row = loaded.communicators.call_rows(configs) if configs is not None and any(configs) else None
    return Replay(loaded.program, loaded.costs, congestion, noise, latest_finish_us, call_row)


_DEFAULT_SCHEDULES: dict[tuple, tuple[float, list[float]]] = {}
# With communicator configs: (case, ..., configs) -> schedule, least recently used first. Bounded: a
# knobs training run meets up to len(COMM_CHOICES) ** shapes configs per state, and a schedule holds
# a float per call of the step (17,000 for a 405B step).
_CONFIG_SCHEDULES: OrderedDict[tuple, tuple[float, list[float]]] = OrderedDict()
_CONFIG_SCHEDULES_MAX = 512
_CONFIG_STEP_TIMES: dict[tuple, float] = {}  # the step times alone (what a communicator reward needs)


def default_schedule(loaded: LoadedCase, state: int, configs: tuple[int, ...] | None = None
                     ) -> tuple[float, list[float]]:
    """(step time in µs, latest finish of every call in µs) with NCCL's own choices for every
    call, under dynamics ``state``, the step's communicators created with ``configs`` (see
    :func:`new_replay`; None or all 0: NCCL's default configs) (cached per process; the schedules
    of other configs in a bounded least-recently-used cache)."""
    configs = tuple(int(c) for c in configs) if configs is not None and any(configs) else None
    key = (loaded.case, loaded.costs.source, loaded.knobs, state, configs)
    if configs is None:
        if key not in _DEFAULT_SCHEDULES:
            _DEFAULT_SCHEDULES[key] = _schedule(loaded, state, None)
        return _DEFAULT_SCHEDULES[key]
    if key in _CONFIG_SCHEDULES:
        _CONFIG_SCHEDULES.move_to_end(key)
        return _CONFIG_SCHEDULES[key]
    found = _CONFIG_SCHEDULES[key] = _schedule(loaded, state, configs)
    _CONFIG_STEP_TIMES[key] = found[0]
    if len(_CONFIG_SCHEDULES) > _CONFIG_SCHEDULES_MAX:
        _CONFIG_SCHEDULES.popitem(last=False)
    return found


def default_step_time_us(loaded: LoadedCase, state: int, configs: tuple[int, ...] | None = None) -> float:
    """The step time (µs) of :func:`default_schedule`, cached without the schedule (a float per
    (case, state, configs))."""
    configs = tuple(int(c) for c in configs) if configs is not None and any(configs) else None
    if configs is None:
        return default_schedule(loaded, state)[0]
    key = (loaded.case, loaded.costs.source, loaded.knobs, state, configs)
    if key not in _CONFIG_STEP_TIMES:
        if key in _CONFIG_SCHEDULES:
            _CONFIG_STEP_TIMES[key] = _CONFIG_SCHEDULES[key][0]
        else:
            replay = new_replay(loaded, state, configs=configs)
            _CONFIG_STEP_TIMES[key] = replay.run()
    return _CONFIG_STEP_TIMES[key]


def _schedule(loaded: LoadedCase, state: int, configs: tuple[int, ...] | None) -> tuple[float, list[float]]:
    replay = new_replay(loaded, state, configs=configs)
    replay.run()
    return replay.makespan_us, latest_finish(replay)
