"""Replay of one compiled step: a fluid discrete-event timeline of compute and communication.

Every rank in the trace file has a compute stream and one stream per process group (the order and
dependencies are compiled into predecessors by :mod:`dynamiccl.tuning.program`). An op starts when
its predecessors have finished; a call (a collective, or a send with its receive) starts when its
op is ready on every file rank taking part, and ends on all of them together.

Running activities progress at rates that change whenever the set of running activities changes:

- **compute** on a rank runs at ``1 / (1 + sum over running calls on that rank of (slowdown - 1))``:
  each call's channels hold SMs and its traffic shares HBM (the world's ``compute_slowdown``);
- a **call** of configuration ``a`` runs at ``1 / D`` with
  ``D = latency + (time(a, congestion, overlap) - latency) x sharing``, where congestion is the
  network's state now (cross-node calls only), overlap says whether compute runs now on any of its
  ranks (HBM contention), and ``sharing`` counts the calls running at once on the same links (the
  same rank and the same domain: within the node, or across nodes): concurrent collectives split
  the links' bandwidth, not their latency;
- a call launched while compute runs on one of its ranks first waits for that rank's running
  compute kernel to end (the *launch delay*, :func:`dynamiccl.costmodel.interference.waits_for_kernel`:
  a training kernel fills every SM, and NCCL's CTAs get SMs only when it frees them,
  NVIDIA/nccl#1431). The kernel is the trace compute op running then (``op_segments_us``: a
  merged op keeps its parts); one that starts at the same instant as the call does not delay it.
  The call waits for that kernel's own end, an event of the timeline: if the kernel's rate changes
  meanwhile (another call on its rank starts or ends), its end moves and the call's start with it;
  the call takes the SMs the kernel frees before any later kernel on the rank does (its CTAs are
  queued behind the running kernel's blocks, not behind later kernels). On several ranks it waits
  for the last of their kernels. While the call waits its channels hold no SMs.

A call's remaining work is a fraction of it; when rates change, each activity keeps the work done
so far and continues at its new rate (processor sharing). Congestion changes at the edges of the
seeded Markov periods. The step time is the makespan: when the last op of any rank ends.

Tunable calls wait for a decision when they become ready (``next_decision`` / ``decide``); others
start with NCCL's configuration. Decisions are taken in the order calls become ready (ties: call
id), which is the same on every replay of the same choices.
"""

from __future__ import annotations

import copy
import math
import weakref
from heapq import heappop, heappush

import numpy as np

from dynamiccl.costmodel.dynamics import CongestionProcess
from dynamiccl.costmodel.interference import waits_for_kernel
from dynamiccl.tuning.actions import DEFAULT_ACTION
from dynamiccl.tuning.costs import CostTable
from dynamiccl.tuning.program import StepProgram

# Event kinds. ``_KERNEL_END``: a kernel that launched calls wait for ends inside its compute op
# (the op's last kernel ends with the op, at its ``_COMPUTE`` event).
_COMPUTE, _CALL, _CONGESTION, _KERNEL_END = 0, 1, 2, 3


def _duration(cost, congested: int, overlap: int, sharing: int) -> float:
    """A call's duration (µs) from its cost row (``CostTable.rows`` order) in given conditions:
    concurrent calls on the same links share bandwidth, not latency."""
    lat = cost[4 + congested]
    return lat + (cost[2 * congested + overlap] - lat) * sharing


class DeadlockError(RuntimeError):
    """The step cannot finish: some op waits on something that never happens."""


class _ProgramIndex:
    """What every replay of one program derives from it alone, built once per program: per op its
    position in its rank's compute chain (-1: not compute) and ``block`` (see
    ``_first_waiting_compute``); per rank the prefix sums of its chain's work; per call its link
    domain (0 within a node, 1 across nodes) and member count; the ops ready at the start; per
    compute op the work (µs at full speed) at which each of its trace compute ops ends."""

    def __init__(self, program: StepProgram):
        self.segment_ends: list[list[float]] = []
        for g, base in enumerate(program.op_base_us):
            parts = program.op_segments_us[g] if g < len(program.op_segments_us) else []
            ends, total = [], 0.0
            for part in parts or [base]:
                total += part
                ends.append(total)
            self.segment_ends.append(ends)
        self.chain_index = [-1] * program.num_ops
        self.chain_prefix = []
        for chain in program.compute_chain:
            prefix = [0.0]
            for i, g in enumerate(chain):
                self.chain_index[g] = i
                prefix.append(prefix[-1] + program.op_base_us[g])
            self.chain_prefix.append(prefix)
        self.block = _first_waiting_compute(program, self.chain_index)
        self.call_domain = [1 if key.nnodes > 1 else 0 for key in program.call_key]
        self.call_size = [len(ops) for ops in program.call_ops]
        self.sources = [g for g, n in enumerate(program.op_npred) if n == 0]


_INDEXES: dict[int, tuple[weakref.ref, _ProgramIndex]] = {}


def _program_index(program: StepProgram) -> _ProgramIndex:
    """The program's index, cached while the program lives (programs are never changed once compiled)."""
    key = id(program)
    entry = _INDEXES.get(key)
    if entry is not None and entry[0]() is program:
        return entry[1]

    def forget(ref, key=key):
        if _INDEXES.get(key, (None,))[0] is ref:
            del _INDEXES[key]

    index = _ProgramIndex(program)
    _INDEXES[key] = (weakref.ref(program, forget), index)
    return index


class Replay:
    """One replay of ``program`` with costs from ``costs``.

    Args:
        program: the compiled step.
        costs: the cost table of the step on its environment spec.
        congestion: the seeded background-traffic process (None: always quiet).
        noise: per-call multiplicative run-to-run factor (None: 1).
        call_row: per call, its row of ``costs`` (default ``costs.call_row``: NCCL's default
            communicator configs; ``CostTable.rows_under`` gives the rows for chosen configs).

    After ``next_decision()`` returns None the step is done: ``makespan_us``, and per call
    ``call_start_us`` (when it was launched), ``call_launch_delay_us`` (how long it then waited for
    SMs held by the compute kernel beside it), ``call_end_us``, ``call_action``.

    Events sit in a heap as ``(time, seq, kind, ident)``; ``seq`` counts pushes (ties run in push
    order) and doubles as the version of the activity's finish event: an activity's entry in
    ``_comp_ver`` / ``_call_ver`` / ``_wait_ver`` is the ``seq`` of its one live event (0: none), so
    an event pushed before its activity's rate last changed is stale and skipped.
    """

    # What a replay writes as it runs (per op / call / rank, the event heap, the queues): a fork
    # copies these lists, and the nested ``_rank_calls`` and ``_rank_domain``. Every other attribute
    # is written only in ``__init__`` and then read -- the program and its index, the cost table and
    # its rows per call, noise, latest finishes, the congestion process (whose timeline does not
    # depend on how it is queried) -- so forks share it (``_SHARED_LISTS``: the lists among them).
    _STATE_LISTS = ("_npred", "_ready_members", "call_action", "call_start_us", "call_end_us",
                    "call_time_at_start_us", "call_launch_delay_us", "op_start_us", "op_end_us", "_heap",
                    "_comp_op", "_comp_rem", "_comp_rate", "_comp_t", "_comp_ver", "_chain_pos",
                    "_call_rem", "_call_rate", "_call_t", "_call_ver", "_call_cost", "_call_slow",
                    "_wait_kernel", "_wait_ver", "_waiting", "_call_awaits", "_pending", "_ready_ops")
    _SHARED_LISTS = ("latest_finish_us", "noise", "_segment_ends", "_call_domain", "_call_size", "_call_ranks",
                     "_chain_index", "_chain_prefix", "_block", "_key", "_call_rows", "call_row",
                     "_call_copy_engines")

    def __init__(self, program: StepProgram, costs: CostTable, congestion: CongestionProcess | None = None,
                 noise: np.ndarray | None = None, latest_finish_us: list[float] | None = None,
                 call_row: list[int] | None = None):
        self.program = program
        self.latest_finish_us = latest_finish_us
        self.costs = costs
        self.congestion = congestion
        n_ops, n_calls, n_ranks = program.num_ops, program.num_calls, len(program.ranks)
        index = _program_index(program)
        self.noise = [1.0] * n_calls if noise is None else np.asarray(noise, dtype=np.float64).tolist()
        self.now = 0.0
        self.makespan_us = 0.0
        self._npred = list(program.op_npred)
        self._ready_members = [0] * n_calls
        self._done_ops = 0
        self.call_action = [-1] * n_calls
        self.call_start_us = [math.nan] * n_calls
        self.call_end_us = [math.nan] * n_calls
        self.call_time_at_start_us = [math.nan] * n_calls  # duration under the conditions at start
        self.call_launch_delay_us = [0.0] * n_calls
        self._segment_ends = index.segment_ends
        self.op_start_us = [math.nan] * n_ops
        self.op_end_us = [math.nan] * n_ops
        self._call_domain = index.call_domain
        self._call_size = index.call_size
        self._call_ranks = program.call_ranks
        self._heap: list[tuple[float, int, int, int]] = []
        self._seq = 0
        # Compute per rank: running op (-1 none), remaining work (µs at full speed), rate, last update, version.
        self._comp_op = [-1] * n_ranks
        self._comp_rem = [0.0] * n_ranks
        self._comp_rate = [1.0] * n_ranks
        self._comp_t = [0.0] * n_ranks
        self._comp_ver = [0] * n_ranks
        self._chain_pos = [0] * n_ranks          # compute-chain index of the running / next compute op
        self._chain_index = index.chain_index    # op id -> position in its rank's chain
        self._chain_prefix = index.chain_prefix  # per rank: prefix sums of chain work
        self._block = index.block
        # Calls: remaining fraction, rate, last update, version; running calls per rank, and their
        # count per rank in each domain (within the node, across nodes).
        self._call_rem = [1.0] * n_calls
        self._call_rate = [0.0] * n_calls
        self._call_t = [0.0] * n_calls
        self._call_ver = [0] * n_calls
        self._rank_calls: list[list[int]] = [[] for _ in range(n_ranks)]
        self._rank_domain = ([0] * n_ranks, [0] * n_ranks)
        self.call_row = list(costs.call_row if call_row is None else call_row)  # per call, its cost row
        self._key = self.call_row
        self._time = costs.time_us
        self._lat = costs.latency_us
        self._slow = costs.slowdown
        # Per call, the cost rows of its key, as Python lists for scalar speed.
        rows = costs.rows()
        self._call_rows = [rows[k] for k in self.call_row]
        copy = costs.copy_engines
        # Calls on the copy engines hold no SMs, so they never wait for a kernel to free some.
        self._call_copy_engines = [False] * n_calls if copy is None else [bool(copy[k]) for k in self.call_row]
        self._call_cost: list[tuple] = [()] * n_calls   # the running configuration's row, times x noise
        self._call_slow = [0.0] * n_calls               # its compute slowdown - 1
        # Launch waits: per rank, the kernel (index into its running op's ``op_segments_us``) that
        # launched calls wait for (-1: none) and the version of its end event (0: none, also when it is
        # the op's last kernel, which ends with the op); the waiting calls in launch order; per call
        # the ranks whose kernel it still waits for.
        self._wait_kernel = [-1] * n_ranks
        self._wait_ver = [0] * n_ranks
        self._waiting: list[int] = []
        self._call_awaits: list[tuple[int, ...]] = [()] * n_calls
        self._congested = False
        if congestion is not None:
            self._congested, end = congestion.period_at(0.0)
            self._push(end, _CONGESTION, 0)
        self._pending: list[int] = []   # calls ready and waiting for a decision, in readiness order
        self._ready_ops: list[int] = list(index.sources)
        self._events = None   # the event loop, suspended while a decision is pending

    # --- public ---

    def next_decision(self) -> int | None:
        """Advance until a tunable call is ready and undecided; return it, or None when the step is done.

        Raises:
            DeadlockError: the step cannot finish (a call whose ranks never all arrive).
        """
        if not self._pending:
            if self._events is None:
                self._events = self._event_loop(False)
            next(self._events, None)
            if not self._pending:  # the loop has ended
                self._events = None
                self._check_finished()
                return None
        return self._pending[0]

    def decide(self, call: int, action: int) -> None:
        """Start the pending ``call`` with ``action`` (an index into the action catalogue)."""
        self._pending.remove(call)
        self._start_call(call, int(action))

    def fork(self) -> "Replay":
        """An independent copy of this replay where it stands (at a pending decision, or before the
        first): deciding on the copy changes nothing here. What the replay writes as it runs
        (``_STATE_LISTS``) is copied; what it only reads -- the program and its index, the cost table
        and its rows, noise, latest finishes and the congestion timeline -- is shared. What makes
        incremental scoring cheap: replay the common prefix of several candidates once, fork it per
        candidate.
        """
        clone = copy.copy(self)  # scalars (now, makespan, counters) by value; read-only data shared
        for name in Replay._STATE_LISTS:  # flat lists of numbers, or of tuples (never changed in place)
            setattr(clone, name, list(getattr(self, name)))
        # The containers whose inner lists change as the replay runs.
        clone._rank_calls = [list(calls) for calls in self._rank_calls]
        clone._rank_domain = (list(self._rank_domain[0]), list(self._rank_domain[1]))
        # The suspended event loop keeps no state of its own between decisions (its locals are the
        # lists above, and now / makespan / done ops, written back before it yields): a new loop on
        # the copy starts where it stands.
        clone._events = None
        return clone

    def run(self, choose=None) -> float:
        """Replay to the end; ``choose(call) -> action`` (default: NCCL's own). Returns the makespan."""
        if choose is None:  # every call as it becomes ready, in the order next_decision would give
            self._events = None
            next(self._event_loop(True), None)
            self._check_finished()
            return self.makespan_us
        while (call := self.next_decision()) is not None:
            self.decide(call, choose(call))
        return self.makespan_us

    def conditions(self, call: int) -> tuple[int, int, int]:
        """(congested 0/1, compute running beside it 0/1, calls sharing its links incl. itself) now."""
        return self._exposure(call)[:3]

    def durations(self, call: int) -> np.ndarray:
        """Duration (µs) of the pending ``call`` under every action, in the conditions now (inf: masked)."""
        congested, overlap, sharing = self.conditions(call)
        k = self._key[call]
        lat = self._lat[k, :, congested]
        with np.errstate(invalid="ignore"):  # masked actions: inf - inf
            duration = (lat + (self._time[k, :, congested, overlap] - lat) * sharing) * self.noise[call]
        return np.where(self.costs.mask[k], duration, np.inf)

    def _exposure(self, call: int) -> tuple[int, int, int, float]:
        """``conditions(call)`` and the compute work (µs at full speed) left on the call's ranks that
        does not wait for it -- what can run beside it, the smallest over its ranks (where it is least
        hidden) -- in one pass over the call's member ops (one per rank)."""
        dom = self._call_domain[call]
        count = self._rank_domain[dom]
        op_rank, op_base = self.program.op_rank, self.program.op_base_us
        chain_prefix, chain_pos, block = self._chain_prefix, self._chain_pos, self._block
        comp_op, comp_rem, comp_t, comp_rate = self._comp_op, self._comp_rem, self._comp_t, self._comp_rate
        now = self.now
        overlap = 0
        most = 0
        best = math.inf
        for g in self.program.call_ops[call]:
            r = op_rank[g]
            if count[r] > most:
                most = count[r]
            prefix = chain_prefix[r]
            done = prefix[chain_pos[r]]
            running = comp_op[r]
            if running >= 0:
                overlap = 1
                rem = comp_rem[r] - (now - comp_t[r]) * comp_rate[r]
                done += op_base[running] - (0.0 if 0.0 > rem else rem)   # base - max(rem, 0)
            left = prefix[block[g]] - done
            left = left if left > 0.0 else 0.0                            # max(0, left)
            if left < best:
                best = left
        return (1 if (self._congested and dom) else 0), overlap, 1 + most, (0.0 if best == math.inf else best)

    def exposed_cost(self, call: int, actions) -> list[float]:
        """What the pending ``call`` adds to the step (µs) under each of ``actions``, in the
        conditions now (inf where masked).

        Two parts: (1) *delay*: with the call's latest finish ``LF`` from NCCL's default schedule of
        the same step (``latest_finish_us``: the latest it may end without delaying the step), its
        slack now is ``LF - (now + D(default))``; an action that lengthens the call by ``dD`` delays
        the step by ``max(0, dD - max(slack, 0))``, one that shortens it saves ``-dD`` only if the
        call is critical (slack <= 1% of its default duration), and ``-dD x (1 - slack / D(default))``
        of it when the call is near-critical (slack below its duration). Without ``latest_finish_us`` the
        slack is the compute left on its ranks that does not wait for it (``hideable``).
        (2) *interference*: ``min(D(a), hideable) x (slowdown(a) - 1)``: the overlapped compute its
        channels and HBM traffic stretch. Relative to the default action the first part is 0.
        """
        congested, overlap, sharing, hideable = self._exposure(call)
        rows = self._call_rows[call]
        noise = self.noise[call]
        base = _duration(rows[DEFAULT_ACTION], congested, overlap, sharing) * noise
        if self.latest_finish_us is not None:
            slack = self.latest_finish_us[call] - (self.now + base)
        else:
            slack = hideable - base
        critical = slack <= 0.01 * base
        slack = 0.0 if 0.0 > slack else slack  # max(slack, 0), as are the conditionals below
        out = []
        for a in actions:
            row = rows[a]
            if row is None:
                out.append(math.inf)
                continue
            d = _duration(row, congested, overlap, sharing) * noise
            delta = d - base
            if delta > 0:
                delay = delta - slack
                delay = delay if delay > 0.0 else 0.0
            elif critical:
                delay = delta
            elif base > 0:  # a shorter call helps in proportion to how close it is to the critical path
                share = 1.0 - slack / base
                delay = delta * (share if share > 0.0 else 0.0)
            else:
                delay = 0.0
            hidden = d if d < hideable else hideable
            out.append(delay + hidden * (row[6] - 1.0))
        return out

    def exposed_costs(self, call: int) -> np.ndarray:
        """``exposed_cost`` of the pending call for every action (inf where masked)."""
        mask = self.costs.mask[self._key[call]]
        costs = np.full(len(mask), np.inf)
        valid = np.flatnonzero(mask)
        costs[valid] = self.exposed_cost(call, valid.tolist())
        return costs

    # --- event loop ---

    def _push(self, time: float, kind: int, ident: int) -> None:
        self._seq += 1
        heappush(self._heap, (time, self._seq, kind, ident))

    def _check_finished(self) -> None:
        if self._done_ops < self.program.num_ops:
            program = self.program
            waiting = [c for c in range(program.num_calls) if 0 < self._ready_members[c] < self._call_size[c]]
            what = (f"call {program.call_label[waiting[0]]!r} on group {program.call_group[waiting[0]]}"
                    if waiting else "an op")
            raise DeadlockError(f"{program.source}: step {program.step} cannot finish: "
                                f"{what} waits for ranks that never reach it")

    def _event_loop(self, auto: bool):
        """Run the timeline; whenever a tunable call is ready and undecided, yield (``auto``: start
        such calls with NCCL's default, in readiness order, instead), and go on once no call is
        pending; return when no event is left.

        Ops made ready by one event start together, after it; a call starts when its last member op
        does (a tunable one: once decided, after the whole batch). This loop is the replay's hot
        path: the handlers of its events (compute ends, call ends, congestion changes) and the start
        of compute are inline, and as a generator it keeps its locals from one decision to the next.
        While suspended it holds no reference to the replay (only a weak one), so that a replay
        left mid-step is freed at once rather than by the cycle collector.
        """
        replay = weakref.ref(self)
        program = self.program
        op_call, op_rank, op_succ, op_base = program.op_call, program.op_rank, program.op_succ, program.op_base_us
        call_ops, call_ranks, tunable = program.call_ops, self._call_ranks, program.call_tunable
        call_size, call_domain = self._call_size, self._call_domain
        ready_members, npred, pending, heap, ready = (self._ready_members, self._npred, self._pending, self._heap,
                                                      self._ready_ops)
        comp_op, comp_rem, comp_rate, comp_t, comp_ver = (self._comp_op, self._comp_rem, self._comp_rate,
                                                          self._comp_t, self._comp_ver)
        chain_pos, chain_index = self._chain_pos, self._chain_index
        call_rate, call_ver, call_slow, call_end = self._call_rate, self._call_ver, self._call_slow, self.call_end_us
        rank_calls, rank_domain = self._rank_calls, self._rank_domain
        wait_kernel, wait_ver = self._wait_kernel, self._wait_ver
        op_start, op_end = self.op_start_us, self.op_end_us
        update_call, update_compute, start_call = Replay._update_call, Replay._update_compute, Replay._start_call
        kernel_ended = Replay._kernel_ended
        num_ops = program.num_ops
        done_ops, makespan, now = self._done_ops, self.makespan_us, self.now
        while True:
            if pending:
                if not auto:
                    self._done_ops, self.makespan_us = done_ops, makespan
                    self = None
                    yield
                    self = replay()
                    continue
                for call in pending:
                    start_call(self, call, DEFAULT_ACTION)
                pending.clear()
            if ready:  # starting ops releases none: the batch does not grow while it runs
                for g in ready:
                    call = op_call[g]
                    if call < 0:  # compute starts, at the rate the calls beside it leave
                        r = op_rank[g]
                        comp_op[r] = g
                        op_start[g] = now
                        chain_pos[r] = chain_index[g]
                        slow = 1.0
                        calls = rank_calls[r]
                        for c in calls:
                            slow += call_slow[c]
                        rate = 1.0 / slow
                        rem = op_base[g]
                        rem = rem if rem > 0.0 else 0.0
                        comp_rem[r] = rem
                        comp_t[r] = now
                        comp_rate[r] = rate
                        self._seq = seq = self._seq + 1
                        comp_ver[r] = seq
                        heappush(heap, (now + rem / rate, seq, _COMPUTE, r))
                        for c in calls:
                            update_call(self, c)
                        continue
                    n = ready_members[call] + 1
                    ready_members[call] = n
                    if n == call_size[call]:
                        if tunable[call]:
                            pending.append(call)
                        else:
                            start_call(self, call, DEFAULT_ACTION)
                ready.clear()
                continue
            if not heap:
                break
            time, seq, kind, ident = heappop(heap)
            if kind == _COMPUTE:
                if seq != comp_ver[ident]:  # stale: its rate changed since, or it ended
                    continue
                self.now = now = time
                g = comp_op[ident]
                comp_op[ident] = -1
                chain_pos[ident] = chain_index[g] + 1
                comp_ver[ident] = 0
                for c in rank_calls[ident]:
                    update_call(self, c)
                if wait_kernel[ident] >= 0:  # the op's last kernel: calls waiting for it take the SMs
                    kernel_ended(self, ident)  # before the compute it releases starts
                done_ops += 1
                released = (g,)
            elif kind == _CALL:
                if seq != call_ver[ident]:
                    continue
                self.now = now = time
                call_end[ident] = now
                call_rate[ident] = 0.0
                call_ver[ident] = 0
                dom = call_domain[ident]
                count = rank_domain[dom]
                ranks = call_ranks[ident]
                for r in ranks:
                    rank_calls[r].remove(ident)
                    count[r] -= 1
                for r in ranks:
                    if comp_op[r] >= 0:
                        update_compute(self, r)
                    for other in rank_calls[r]:
                        if call_domain[other] == dom:
                            update_call(self, other)
                done_ops += call_size[ident]
                released = call_ops[ident]
            elif kind == _KERNEL_END:  # a kernel that calls wait for ends inside its op
                if seq != wait_ver[ident]:
                    continue
                self.now = now = time
                kernel_ended(self, ident)
                continue
            else:
                if done_ops >= num_ops:
                    continue
                self.now = now = time
                self._congested, end = self.congestion.period_at(time + 1e-9)
                self._push(end, _CONGESTION, 0)
                seen = set()
                for calls in rank_calls:
                    for c in calls:
                        if call_domain[c] and c not in seen:
                            seen.add(c)
                            update_call(self, c)
                continue
            if now > makespan:
                makespan = now
            for g in released:
                op_end[g] = now
                for s in op_succ[g]:
                    n = npred[s] - 1
                    npred[s] = n
                    if n == 0:
                        ready.append(s)
        self._done_ops, self.makespan_us = done_ops, makespan

    def _update_compute(self, r: int) -> None:
        """New rate of the compute running on rank ``r`` (the callers check that one runs)."""
        now = self.now
        rem = self._comp_rem[r] - (now - self._comp_t[r]) * self._comp_rate[r]
        slow = 1.0
        call_slow = self._call_slow
        for c in self._rank_calls[r]:
            slow += call_slow[c]
        rate = 1.0 / slow
        rem = rem if rem > 0.0 else 0.0
        self._comp_rem[r] = rem
        self._comp_t[r] = now
        self._comp_rate[r] = rate
        self._seq = seq = self._seq + 1
        self._comp_ver[r] = seq
        heappush(self._heap, (now + rem / rate, seq, _COMPUTE, r))
        if self._wait_ver[r]:  # the kernel calls wait for ends at the new rate
            self._push_kernel_end(r)

    def _start_call(self, call: int, action: int) -> None:
        """Launch ``call`` with ``action`` now: it runs at once, or once the compute kernels running
        on its ranks have ended (:meth:`_await_kernels`)."""
        row = self._call_rows[call][action]
        noise = self.noise[call]
        self._call_cost[call] = (row[0] * noise, row[1] * noise, row[2] * noise, row[3] * noise,
                                 row[4] * noise, row[5] * noise, row[6])
        self._call_slow[call] = row[6] - 1.0
        self.call_action[call] = action
        now = self.now
        self.call_start_us[call] = now
        op_start = self.op_start_us
        for g in self.program.call_ops[call]:
            op_start[g] = now
        awaited = () if self._call_copy_engines[call] else self._await_kernels(call)
        if awaited:
            self._call_awaits[call] = awaited
            self._waiting.append(call)
            return
        self._run_call(call)

    def _await_kernels(self, call: int) -> tuple[int, ...]:
        """The ranks of ``call`` (launched now) whose running compute kernel it must wait for
        (:func:`~dynamiccl.costmodel.interference.waits_for_kernel`, NVIDIA/nccl#1431), each such
        kernel marked on its rank so that its end releases the call; () when it runs at once.

        A rank holds at most one such kernel: the one running now, which any call already waiting
        there also waits for (a waiting kernel is released when it ends)."""
        awaited = ()
        now = self.now
        comp_op, wait_kernel = self._comp_op, self._wait_kernel
        for r in self._call_ranks[call]:
            g = comp_op[r]
            if g < 0:
                continue
            left = self._comp_rem[r] - (now - self._comp_t[r]) * self._comp_rate[r]
            done = self.program.op_base_us[g] - (left if left > 0.0 else 0.0)  # the op's work done (µs)
            begin = 0.0
            for kernel, end in enumerate(self._segment_ends[g]):
                if end > done + 1e-9:  # the kernel running now began at ``begin`` and ends at ``end``
                    if waits_for_kernel(done - begin if done > begin else 0.0):
                        awaited += (r,)
                        if wait_kernel[r] < 0:
                            wait_kernel[r] = kernel
                            if end < self.program.op_base_us[g]:  # not the op's last: its own event
                                self._push_kernel_end(r)
                    break
                begin = end
        return awaited

    def _push_kernel_end(self, r: int) -> None:
        """(Re)schedule the end of the kernel launched calls wait for on rank ``r``, inside its
        compute op, at the op's rate now."""
        g = self._comp_op[r]
        rate = self._comp_rate[r]
        left = self._comp_rem[r] - (self.now - self._comp_t[r]) * rate  # the op's work left (µs)
        until = left - (self.program.op_base_us[g] - self._segment_ends[g][self._wait_kernel[r]])
        self._seq = seq = self._seq + 1
        self._wait_ver[r] = seq
        heappush(self._heap, (self.now + (until / rate if until > 0.0 else 0.0), seq, _KERNEL_END, r))

    def _kernel_ended(self, r: int) -> None:
        """The kernel launched calls wait for on rank ``r`` has ended: those waiting for no other
        rank's kernel run from now, in launch order (before any compute this end releases)."""
        self._wait_kernel[r] = -1
        self._wait_ver[r] = 0
        awaits, waiting = self._call_awaits, self._waiting
        free = []
        for call in waiting:
            ranks = awaits[call]
            if r in ranks:
                ranks = tuple(x for x in ranks if x != r)
                awaits[call] = ranks
                if not ranks:
                    free.append(call)
        now = self.now
        for call in free:
            waiting.remove(call)
            self.call_launch_delay_us[call] = now - self.call_start_us[call]
            self._run_call(call)

    def _run_call(self, call: int) -> None:
        """``call`` (launched, with its configuration set) takes its SMs and links now."""
        cost = self._call_cost[call]
        now = self.now
        # Its rate from now on: in the conditions now, counting itself among the calls on its links
        # (``conditions`` as it joins its ranks).
        dom = self._call_domain[call]
        ranks = self._call_ranks[call]
        rank_calls, count, comp_op = self._rank_calls, self._rank_domain[dom], self._comp_op
        overlap = 0
        sharing = 1
        for r in ranks:
            if comp_op[r] >= 0:
                overlap = 1
            n = count[r] + 1
            count[r] = n
            if n > sharing:
                sharing = n
            rank_calls[r].append(call)
        duration = _duration(cost, 1 if (self._congested and dom) else 0, overlap, sharing)
        self.call_time_at_start_us[call] = duration
        self._call_rem[call] = 1.0
        self._call_t[call] = now
        rate = 1.0 / duration if duration > 0 else math.inf
        self._call_rate[call] = rate
        if rate != 0.0:
            self._seq = seq = self._seq + 1
            self._call_ver[call] = seq
            heappush(self._heap, (now + (1.0 / rate if rate != math.inf else 0.0), seq, _CALL, call))
        call_domain = self._call_domain
        for r in ranks:
            if comp_op[r] >= 0:
                self._update_compute(r)
            for other in rank_calls[r]:
                if other != call and call_domain[other] == dom:
                    self._update_call(other)

    def _update_call(self, call: int) -> None:
        now = self.now
        rate = self._call_rate[call]
        rem = self._call_rem[call] - (now - self._call_t[call]) * rate
        dom = self._call_domain[call]
        count = self._rank_domain[dom]
        comp_op = self._comp_op
        overlap = 0
        sharing = 1
        for r in self._call_ranks[call]:
            if comp_op[r] >= 0:
                overlap = 1
            if count[r] > sharing:
                sharing = count[r]
        duration = _duration(self._call_cost[call], 1 if (self._congested and dom) else 0, overlap, sharing)
        new_rate = 1.0 / duration if duration > 0 else math.inf
        rem = rem if rem > 0.0 else 0.0
        self._call_rem[call] = rem
        self._call_t[call] = now
        if new_rate == rate:
            return
        self._call_rate[call] = new_rate
        self._seq = seq = self._seq + 1
        self._call_ver[call] = seq
        heappush(self._heap, (now + (rem / new_rate if new_rate != math.inf else 0.0), seq, _CALL, call))


def _first_waiting_compute(program: StepProgram, chain_index: list[int]) -> list[int]:
    """Per op: the chain position of the first compute op on its rank that waits for it (directly or
    through other ops of that rank); the chain length when none does."""
    n = program.num_ops
    block = [0] * n
    chain_len = [len(c) for c in program.compute_chain]
    for g in range(n - 1, -1, -1):  # successors on a rank always have larger ids
        r = program.op_rank[g]
        if program.op_is_compute[g]:
            block[g] = chain_index[g]
            continue
        best = chain_len[r]
        for s in program.op_succ[g]:
            if program.op_rank[s] == r and block[s] < best:
                best = block[s]
        block[g] = best
    return block


def latest_finish(replay: Replay) -> list[float]:
    """Per call: the latest time (µs) it could end without delaying the step, in the finished
    ``replay``'s schedule (critical-path analysis over the ops, their predecessors and the calls
    that tie ranks together, with the durations the replay realised)."""
    program = replay.program
    op_call, op_succ, call_ops = program.op_call, program.op_succ, program.call_ops
    start, end = replay.op_start_us, replay.op_end_us
    makespan = replay.makespan_us
    n = program.num_ops
    latest_start = [makespan] * n
    done = [False] * n
    call_finish = [makespan] * program.num_calls
    for _, _, g in sorted(zip(end, start, range(n)), reverse=True):
        if done[g]:
            continue
        call = op_call[g]
        members = call_ops[call] if call >= 0 else (g,)
        finish = makespan
        for m in members:
            for s in op_succ[m]:
                if latest_start[s] < finish:
                    finish = latest_start[s]
        for m in members:
            latest_start[m] = finish - (end[m] - start[m])
            done[m] = True
        if call >= 0:
            call_finish[call] = finish
    return call_finish
