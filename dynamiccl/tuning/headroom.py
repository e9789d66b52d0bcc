"""``headroom``: how much one training step can gain from tuning NCCL, and where its communication goes.

Before anyone measures, applies or verifies a decision table, one question decides whether it is
worth the trouble: how much of the step could any NCCL choice give back? :func:`headroom_case`
answers it for a (trace step, cluster) case, in the simulator that prices the case:

- **Where the communication time goes** (:func:`comm_breakdown`, from NCCL default's replay of the
  step, :class:`~dynamiccl.tuning.timeline.Replay`): per group kind (tp, dp, pp, ep, cp, ...) and
  collective, the time its calls run (from when they take their SMs to their end: a call launched
  beside a compute kernel first waits for it, NVIDIA/nccl#1431, and that wait is the kernel's time,
  or idle time on a GPU that waits for another's kernel), the part of it hidden behind compute on
  the same GPU, the part exposed (the GPU computes nothing meanwhile: the step waits for it there),
  and the compute time those calls add by running beside compute (interference: the compute kernel
  runs at ``1 / (1 + sum of (slowdown - 1))`` of the calls running beside it,
  :mod:`dynamiccl.tuning.timeline`; each call is charged its share of the stretch). Every figure is
  per GPU of the step (the mean over the GPUs it runs on: a file rank that stands for k symmetric
  GPUs counts k times, ``StepProgram.rank_gpus``), in µs per step, mean over the dynamics states.
  Calls of different groups can run at once, so the rows may add up to more than the "all
  communication" line, which counts every instant once.
- **Four step times side by side**: NCCL's default, the best decision table the search finds
  (:func:`~dynamiccl.tuning.search.search_case`), every collective at its links' line rate (the most
  any NCCL setting could give) and communication costing nothing (the ceiling), the last two from
  :func:`~dynamiccl.tuning.search.step_bounds`; for a trace with measured timestamps (profiled,
  imported) also the measured step time (:func:`~dynamiccl.trace.summary.measured_step_time_us`).
- **Communicator settings** (with ``knobs``: :func:`communicator_settings`): for each communicator
  shape of the step (group kind, ranks, nodes) and each ``ncclConfig_t`` setting of
  :data:`~dynamiccl.knobs.comm_config.COMM_CHOICES` it may be created with on this NCCL and cluster,
  the step time with that one setting and every call at NCCL's default, against NCCL's default
  step; the search then also chooses settings per shape (the "best table found" line includes them).
- **A verdict** (:func:`verdict`): the gains set against the run-to-run noise of a training step.
  The default noise is :data:`~dynamiccl.tuning.evaluate.NOTHING_TO_GAIN` (0.5%: the step time's
  run-to-run SD on a quiet allocation, A/B/A runs of the FastVideo GB200 FSDP2 report,
  https://github.com/hao-ai-lab/FastVideo/pull/1630); a user passes the noise measured on their own
  runs (``dynamiccl verify`` reports the control arm's drift).

Everything here is simulated, not measured: the numbers come from the cost model named in
``Headroom.cost_model`` with the NCCL version of the cluster's spec.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from dynamiccl.costmodel.protocol import CostModelOptions
from dynamiccl.costmodel.registry import DEFAULT_COST_MODEL
from dynamiccl.knobs.comm_config import COMM_CHOICES, NO_EFFECT_SHARE
from dynamiccl.nccl import FUNC_OP, Func
from dynamiccl.tuning.cases import Case, LoadedCase, default_step_time_us, load_case, new_replay
from dynamiccl.tuning.evaluate import NOTHING_TO_GAIN
from dynamiccl.tuning.timeline import Replay

ALL_COMMUNICATION = ("all", "communication")   # the (group kind, collective) of the union line
BREAKDOWN_FIELDS = ("calls", "total_us", "hidden_us", "exposed_us", "slowed_compute_us")


# --- where the communication time goes ----------------------------------------------------------------


@dataclass
class CommRow:
    """One (group kind, collective) of a step, per GPU (µs per step): ``calls`` (calls a GPU takes
    part in), ``total_us`` (running time), ``hidden_us`` (of it, while the GPU computes),
    ``exposed_us`` (of it, while the GPU computes nothing), ``slowed_compute_us`` (compute time these
    calls add by running beside compute)."""

    group_kind: str
    collective: str
    calls: float = 0.0
    total_us: float = 0.0
    hidden_us: float = 0.0
    exposed_us: float = 0.0
    slowed_compute_us: float = 0.0

    def add(self, other: "CommRow", scale: float = 1.0) -> None:
        for name in BREAKDOWN_FIELDS:
            setattr(self, name, getattr(self, name) + scale * getattr(other, name))

    def to_json(self) -> dict:
        return {"group_kind": self.group_kind, "collective": self.collective,
                **{name: getattr(self, name) for name in BREAKDOWN_FIELDS}}


@dataclass
class CommBreakdown:
    """Where one step's communication time goes, per GPU (µs; see the module docstring).

    ``rows``: one :class:`CommRow` per (group kind, collective), largest total first; ``union``: every
    call together, each instant counted once (its ``slowed_compute_us`` is the rows' sum);
    ``step_time_us``: the replay's makespan; ``compute_us``: compute work at full speed;
    ``computing_us``: time the GPU computes (the work, stretched by the calls beside it: ``compute_us``
    + the rows' slowed compute); ``idle_us``: time it neither computes nor communicates (waiting for
    other ranks, pipeline bubbles): ``step = computing + exposed communication + idle``.
    """

    rows: list[CommRow]
    union: CommRow
    step_time_us: float
    compute_us: float
    computing_us: float
    idle_us: float

    def to_json(self) -> dict:
        return {"rows": [row.to_json() for row in self.rows], "all_communication": self.union.to_json(),
                **{name: getattr(self, name) for name in _STEP_FIELDS}}


_STEP_FIELDS = ("step_time_us", "compute_us", "computing_us", "idle_us")


def _rank_timeline(replay: Replay, compute_ops: list[int], calls: list[int],
                   slowdown: list[float]) -> tuple[dict[int, list[float]], list[float], float]:
    """Sweep one file rank's finished timeline: per call of ``calls`` on it ``[total, hidden, exposed,
    slowed compute]`` (µs), the union ``[total, hidden, exposed]`` and the compute's busy time (µs).

    Between two consecutive events the state is constant: compute runs or not, and a set ``R`` of
    calls runs (from the end of their launch delay, ``call_start_us + call_launch_delay_us``, to
    ``call_end_us``). Compute running beside ``R`` progresses at ``1 / (1 + S)``, ``S = sum over R of
    (s - 1)``: of ``dt`` µs, ``dt x S / (1 + S)`` are stretch, charged to call ``c`` as
    ``dt x (s_c - 1) / (1 + S)``.
    """
    events: list[tuple[float, int, int]] = []  # (time, kind, ident); kinds below, all at one time applied together
    COMPUTE_ON, COMPUTE_OFF, RUN, END = 0, 1, 2, 3
    for g in compute_ops:
        start, end = replay.op_start_us[g], replay.op_end_us[g]
        if end > start:
            events += [(start, COMPUTE_ON, g), (end, COMPUTE_OFF, g)]
    for c in calls:
        start, end = replay.call_start_us[c] + replay.call_launch_delay_us[c], replay.call_end_us[c]
        if end > start:
            events += [(start, RUN, c), (end, END, c)]
    events.sort()
    per_call = {c: [0.0, 0.0, 0.0, 0.0] for c in calls}
    union = [0.0, 0.0, 0.0]
    computing = 0
    busy = 0.0
    running: set[int] = set()
    i, n = 0, len(events)
    while i < n:
        now = events[i][0]
        while i < n and events[i][0] == now:
            _, kind, ident = events[i]
            if kind == COMPUTE_ON:
                computing += 1
            elif kind == COMPUTE_OFF:
                computing -= 1
            elif kind == RUN:
                running.add(ident)
            else:
                running.discard(ident)
            i += 1
        if i == n:
            break
        dt = events[i][0] - now
        if computing:
            busy += dt
        if running:
            where = 1 if computing else 2
            union[0] += dt
            union[where] += dt
            for c in running:
                row = per_call[c]
                row[0] += dt
                row[where] += dt
        if computing and running:
            extra = sum(slowdown[c] - 1.0 for c in running)
            for c in running:
                per_call[c][3] += dt * (slowdown[c] - 1.0) / (1.0 + extra)
    return per_call, union, busy


def comm_breakdown(replay: Replay) -> CommBreakdown:
    """Where the communication time of ``replay`` (a finished replay of a step) goes, per GPU of the
    step (module docstring). A send/recv pair or an AlltoAll is a row like the collectives
    (NCCL's own configuration always).

    Raises:
        ValueError: the replay has not finished (``next_decision`` has not returned None yet).
    """
    program, costs = replay.program, replay.costs
    if any(math.isnan(t) for t in replay.call_end_us):
        raise ValueError(f"{program.source}: the replay of step {program.step} has not finished")
    weights = np.asarray(program.rank_gpus or [1] * len(program.ranks), dtype=np.float64)
    weights = weights / weights.sum()
    slowdown = [float(costs.slowdown[costs.call_row[c], replay.call_action[c]]) for c in range(program.num_calls)]
    compute_of: list[list[int]] = [[] for _ in program.ranks]
    for g, is_compute in enumerate(program.op_is_compute):
        if is_compute:
            compute_of[program.op_rank[g]].append(g)
    calls_of: list[list[int]] = [[] for _ in program.ranks]
    for c, ranks in enumerate(program.call_ranks):
        for r in ranks:
            calls_of[r].append(c)
    rows: dict[tuple[str, str], CommRow] = {}
    union = CommRow(*ALL_COMMUNICATION)
    compute_us = busy_us = 0.0
    for r, weight in enumerate(weights.tolist()):
        per_call, rank_union, busy = _rank_timeline(replay, compute_of[r], calls_of[r], slowdown)
        for c, (total, hidden, exposed, slowed) in per_call.items():
            key = (program.call_kind[c], FUNC_OP[Func(program.call_key[c].coll)])
            row = rows.setdefault(key, CommRow(*key))
            row.add(CommRow(*key, 1.0, total, hidden, exposed, slowed), weight)
        union.add(CommRow(*ALL_COMMUNICATION, float(len(calls_of[r])), *rank_union, 0.0), weight)
        compute_us += weight * sum(program.op_base_us[g] for g in compute_of[r])
        busy_us += weight * busy
    union.slowed_compute_us = sum(row.slowed_compute_us for row in rows.values())
    ordered = sorted(rows.values(), key=lambda row: (-row.total_us, row.group_kind, row.collective))
    step = float(replay.makespan_us)
    idle = step - busy_us - union.exposed_us
    idle = 0.0 if abs(idle) <= 1e-9 * step else idle  # a GPU never idle: sums of the same intervals, rounded
    return CommBreakdown(ordered, union, step, compute_us, busy_us, idle)


def mean_breakdown(parts: Sequence[CommBreakdown]) -> CommBreakdown:
    """The mean of several breakdowns of one step (one per dynamics state), row by row.

    Raises:
        ValueError: no breakdowns.
    """
    if not parts:
        raise ValueError("mean_breakdown needs at least one breakdown")
    scale = 1.0 / len(parts)
    rows: dict[tuple[str, str], CommRow] = {}
    union = CommRow(*ALL_COMMUNICATION)
    for part in parts:
        for row in part.rows:
            rows.setdefault((row.group_kind, row.collective), CommRow(row.group_kind, row.collective)).add(row, scale)
        union.add(part.union, scale)
    ordered = sorted(rows.values(), key=lambda row: (-row.total_us, row.group_kind, row.collective))
    return CommBreakdown(ordered, union, *(float(np.mean([getattr(p, name) for p in parts])) for name in _STEP_FIELDS))


def default_breakdown(loaded: LoadedCase, states: Sequence[int]) -> CommBreakdown:
    """:func:`comm_breakdown` of NCCL default's replay of ``loaded`` in each of ``states``, averaged.

    Raises:
        ValueError: no states.
    """
    parts = []
    for state in states:
        replay = new_replay(loaded, int(state))
        replay.run()
        parts.append(comm_breakdown(replay))
    return mean_breakdown(parts)


# --- the verdict --------------------------------------------------------------------------------------------


def gain(default_us: float, other_us: float) -> float:
    """The share of the default step time that ``other_us`` saves: ``1 - other / default`` (negative:
    longer)."""
    return 1.0 - other_us / default_us if default_us > 0 else 0.0


def verdict(default_us: float, search_us: float, line_rate_us: float, no_comm_us: float,
            noise: float = NOTHING_TO_GAIN) -> str:
    """One line a user can act on: the most tuning NCCL could gain (the line-rate bound), what the best
    table found gains, and whether that is above ``noise`` (a share of the step: the run-to-run
    spread of the user's step times; default 0.5%, module docstring). Step times in µs.

    Raises:
        ValueError: a noise outside [0, 1).
    """
    if not 0.0 <= noise < 1.0:
        raise ValueError(f"noise must be a share of the step in [0, 1), got {noise}")
    most, found, ceiling = (100 * gain(default_us, t) for t in (line_rate_us, search_us, no_comm_us))
    noise_pct = 100 * noise
    if most < 0.0:
        # The line rate comes from the spec's datasheet; a cost model that prices the default faster
        # (a user's measurements on a cluster faster than its spec says) leaves it no bound to give.
        at_most = (f"NCCL's default is {-most:.2f}% faster than every collective at the spec's line rate as priced "
                   f"(the spec's datasheet bandwidths are below what the cost model prices, so that bound says "
                   f"nothing; communication free would gain {ceiling:.2f}%)")
        if found < noise_pct:
            return (f"{at_most}; the best table found gains {found:.2f}%, below the ~{noise_pct:.2g}% run-to-run "
                    f"noise of a training step: not worth a change")
        return (f"{at_most}; the best table found gains {found:.2f}%, above the ~{noise_pct:.2g}% run-to-run noise: "
                f"worth trying: write it (--table FILE), run it with `dynamiccl launch --table` and measure it "
                f"with `dynamiccl verify`")
    at_most = f"tuning NCCL can gain at most {most:.2f}% of this step (every collective at line rate)"
    if most < noise_pct:
        why = (f"; all communication costs it {ceiling:.2f}%" if ceiling >= noise_pct else "")
        return (f"nothing to gain here: {at_most}, below the ~{noise_pct:.2g}% run-to-run noise of a training "
                f"step{why}: not worth a change to NCCL's settings")
    if found < noise_pct:
        return (f"{at_most}; the best table found gains {found:.2f}%, below the ~{noise_pct:.2g}% run-to-run noise "
                f"of a training step: not worth a change")
    return (f"{at_most}; the best table found gains {found:.2f}%, above the ~{noise_pct:.2g}% run-to-run noise: "
            f"worth trying: write it (--table FILE), run it with `dynamiccl launch --table` and measure it "
            f"with `dynamiccl verify`")



@dataclass(frozen=True)
class SettingRow:
    """One communicator setting's effect: the shape (``kind``, ``nranks``, ``nnodes``), the setting
    (``COMM_CHOICES[choice]``) and the step time (µs, mean over the states) with it on that shape
    alone and every call at NCCL's default."""

    kind: str
    nranks: int
    nnodes: int
    choice: int
    step_time_us: float

    def to_json(self) -> dict:
        return {"kind": self.kind, "nranks": self.nranks, "nnodes": self.nnodes,
                "setting": COMM_CHOICES[self.choice].set_fields(), "step_time_us": self.step_time_us}


def communicator_settings(loaded: LoadedCase, states: Sequence[int]) -> list[SettingRow]:
    """Per communicator shape of ``loaded`` (loaded with the knobs) and per setting it may be created
    with (``Communicators.masks``; NCCL's default excluded), the step time with that setting alone
    (module docstring). Empty without the knobs."""
    if not loaded.knobs:
        return []
    shapes = loaded.communicators.shapes
    rows = []
    for s, shape in enumerate(shapes):
        for choice in np.flatnonzero(loaded.communicators.masks[s]).tolist():
            if choice == 0:
                continue
            configs = tuple(choice if i == s else 0 for i in range(len(shapes)))
            time_us = float(np.mean([default_step_time_us(loaded, state, configs) for state in states]))
            rows.append(SettingRow(shape.kind, shape.nranks, shape.nnodes, choice, time_us))
    return rows


# --- one case -------------------------------------------------------------------------------------------------


@dataclass
class Headroom:
    """What :func:`headroom_case` found for one case. Step times in µs, means over ``states``:
    ``default_us`` (NCCL's choices), ``search_us`` (the best table found), ``line_rate_us`` and
    ``no_comm_us`` (the bounds); ``measured_us``: the trace's own measured step time (None: the trace
    has no timestamps); ``breakdown`` of NCCL default's step; ``noise``: the run-to-run noise the
    verdict uses (a share of the step); ``table``: the searched decision table."""

    case: Case
    name: str
    cost_model: str
    nccl_version: str
    step: int
    states: list[int]
    default_us: float
    search_us: float
    line_rate_us: float
    no_comm_us: float
    measured_us: float | None
    breakdown: CommBreakdown
    noise: float
    search: dict = field(default_factory=dict)
    table: object | None = None
    settings: list[SettingRow] | None = None  # knobs: communicator settings one at a time (None: not asked)

    @property
    def verdict(self) -> str:
        return verdict(self.default_us, self.search_us, self.line_rate_us, self.no_comm_us, self.noise)

    def step_times(self) -> list[tuple[str, float]]:
        """(what, step time µs) in the order they are printed; the measured one last, where known."""
        rows = [("NCCL default", self.default_us), ("best table found (search)", self.search_us),
                ("every collective at line rate", self.line_rate_us), ("communication free", self.no_comm_us)]
        if self.measured_us is not None:
            rows.append(("measured (trace timestamps, slowest rank)", self.measured_us))
        return rows

    def to_json(self) -> dict:
        """A JSON-ready record: the case, provenance, the four step times (µs) and gains, the
        measured step time (or None), the breakdown, the noise and the verdict."""
        return {"trace": self.case.trace, "env": self.case.env, "step": self.step, "name": self.name,
                "simulated": True, "cost_model": self.cost_model, "nccl_version": self.nccl_version,
                "states": self.states, "default_step_time_us": self.default_us,
                "search_step_time_us": self.search_us, "line_rate_bound_step_time_us": self.line_rate_us,
                "no_comm_step_time_us": self.no_comm_us, "measured_step_time_us": self.measured_us,
                "search_gain": gain(self.default_us, self.search_us),
                "line_rate_gain": gain(self.default_us, self.line_rate_us),
                "no_comm_gain": gain(self.default_us, self.no_comm_us),
                "noise": self.noise, "verdict": self.verdict, "breakdown": self.breakdown.to_json(),
                "search": self.search,
                "communicator_settings": None if self.settings is None else [r.to_json() for r in self.settings]}


def headroom_case(case: Case, states: Sequence[int], *, model: str = DEFAULT_COST_MODEL,
                  options: CostModelOptions | None = None, max_sweeps: int | None = None,
                  noise: float = NOTHING_TO_GAIN, knobs: bool = False, progress=None) -> Headroom:
    """Search the best table for ``case``, replay the bounds and break NCCL default's step down, all
    over the dynamics ``states`` and priced by cost model ``model`` made with ``options`` (module
    docstring).

    Args:
        progress: a tqdm-like bar the search advances once per rule key it visits.
        max_sweeps: the search's coordinate-descent sweeps at most (default: the search's).
        knobs: also price each communicator setting alone and let the search choose them per shape.

    Raises:
        InputError: what :func:`~dynamiccl.tuning.cases.load_case` raises (unreadable trace or spec,
            a step not in the trace, a trace larger than the cluster, no tunable call).
        ValueError: no states, or a noise outside [0, 1).
    """
    from dynamiccl.trace.store import Trace
    from dynamiccl.trace.summary import measured_step_time_us
    from dynamiccl.tuning.search import DEFAULT_MAX_SWEEPS, search_case, step_bounds

    states = [int(s) for s in states]
    if not states:
        raise ValueError("headroom needs at least one dynamics state")
    if not 0.0 <= noise < 1.0:
        raise ValueError(f"noise must be a share of the step in [0, 1), got {noise}")
    loaded = load_case(case, model, options, knobs=knobs)
    result = search_case(loaded, states, max_sweeps=DEFAULT_MAX_SWEEPS if max_sweeps is None else max_sweeps,
                         progress=progress)
    bounds = [step_bounds(loaded, state) for state in states]
    breakdown = default_breakdown(loaded, states)
    measured = measured_step_time_us(Trace.read(case.trace), loaded.program.step)
    return Headroom(case, loaded.layout_label, loaded.costs.description, loaded.env.nccl_version,
                    loaded.program.step, states, float(np.mean(result.default_step_time_us)),
                    float(np.mean(result.step_time_us)), float(np.mean([b.line_rate_step_time_us for b in bounds])),
                    float(np.mean([b.no_comm_step_time_us for b in bounds])), measured, breakdown, noise,
                    result.to_json(), result.table, communicator_settings(loaded, states) if knobs else None)


# --- text ---------------------------------------------------------------------------------------------------


def calls_text(calls: float) -> str:
    """Calls per GPU for a table cell: a whole number, or one decimal where GPUs differ."""
    return f"{calls:.0f}" if abs(calls - round(calls)) < 0.05 else f"{calls:.1f}"


def breakdown_text(breakdown: CommBreakdown) -> str:
    """An nccl-tests-style table of :class:`CommBreakdown` (ms per step, per GPU) and the line that
    adds the step up."""
    head = ("# group", "collective", "calls", "total", "hidden", "exposed", "slowed")
    units = ("#", "", "", "(ms)", "(ms)", "(ms)", "compute (ms)")
    rows = breakdown.rows + [breakdown.union]
    kind_w = max([len(head[0])] + [len(r.group_kind) for r in rows])
    coll_w = max([len(head[1])] + [len(r.collective) for r in rows])
    fmt = f"{{:<{kind_w}}}  {{:<{coll_w}}}  {{:>7}}  {{:>11}}  {{:>11}}  {{:>11}}  {{:>12}}"
    lines = ["# where the communication time goes: per GPU of the step (mean over its GPUs), NCCL's default choices",
             fmt.format(*head), fmt.format(*units)]
    for row in rows:
        lines.append(fmt.format(row.group_kind, row.collective, calls_text(row.calls),
                                *(f"{getattr(row, name) / 1e3:.3f}" for name in BREAKDOWN_FIELDS[1:])))
    b = breakdown
    lines.append(f"# a GPU's step: compute {b.compute_us / 1e3:.3f} ms + slowed by communication beside it "
                 f"{b.union.slowed_compute_us / 1e3:.3f} ms + exposed communication {b.union.exposed_us / 1e3:.3f} ms"
                 f" + idle {b.idle_us / 1e3:.3f} ms = {b.step_time_us / 1e3:.3f} ms")
    if sum(row.total_us for row in breakdown.rows) > 1.001 * breakdown.union.total_us:
        lines.append("# calls of different groups ran at once: the rows add up to more than 'all'")
    return "\n".join(lines)


def step_times_text(result: Headroom) -> str:
    """The step times side by side (ms and % of NCCL default's step)."""
    rows = result.step_times()
    width = max(len(what) for what, _ in rows)
    lines = [f"# {'step time':<{width - 2}}  {'(ms)':>12}  {'% of default':>12}"]
    for what, value in rows:
        lines.append(f"{what:<{width}}  {value / 1e3:>12.3f}  {100 * value / result.default_us:>11.2f}%")
    return "\n".join(lines)


def settings_text(result: Headroom) -> str:
    """The communicator settings one at a time: step time (ms) and its change against NCCL's default."""
    rows = result.settings or []
    if not rows:
        return "# communicator settings: none this NCCL and cluster can apply to the step's communicators"
    fmt = "{:<8}  {:>6}  {:>6}  {:<22}  {:>12}  {:>9}"
    lines = ["# communicator settings (ncclConfig_t), one at a time, every call at NCCL's default",
             fmt.format("# group", "ranks", "nodes", "setting", "step (ms)", "change"),]
    unchanged = 0
    for row in rows:
        change = 100.0 * (row.step_time_us - result.default_us) / result.default_us
        if abs(change) < 100.0 * NO_EFFECT_SHARE:
            unchanged += 1
            continue
        lines.append(fmt.format(row.kind, row.nranks, row.nnodes, COMM_CHOICES[row.choice].describe(),
                                f"{row.step_time_us / 1e3:.3f}", f"{change:+.2f}%"))
    if unchanged:
        lines.append(f"# {unchanged} other setting(s) change the step by less than {100.0 * NO_EFFECT_SHARE:g}% "
                     "(the pool they bound is not the one the calls use, or the calls are too few to matter)")
    return "\n".join(lines)


def headroom_text(result: Headroom) -> str:
    """What ``dynamiccl headroom`` prints: provenance, the breakdown, the step times and the verdict."""
    states = result.states
    span = f"{states[0]}..{states[-1]}" if states == list(range(states[0], states[-1] + 1)) and len(states) > 1 \
        else ", ".join(map(str, states))
    lines = [f"headroom of {result.name}, step {result.step}",
             f"simulated step, not a measured one; its calls priced by {result.cost_model}; NCCL {result.nccl_version}'s own choices as the "
             f"default; mean over dynamics states {span}",
             "", breakdown_text(result.breakdown), "", step_times_text(result)]
    if result.settings is not None:
        lines += ["", settings_text(result)]
    if result.measured_us is not None:
        lines.append(f"# measured: the trace's own timestamps of step {result.step} on the machine that recorded it "
                     f"(not the simulated cluster)")
    lines += ["", f"verdict: {result.verdict}"]
    return "\n".join(lines)


__all__ = ["ALL_COMMUNICATION", "CommBreakdown", "CommRow", "Headroom", "breakdown_text", "calls_text",
           "SettingRow", "comm_breakdown", "communicator_settings", "default_breakdown", "gain", "headroom_case",
           "headroom_text", "mean_breakdown", "settings_text", "step_times_text", "verdict"]
