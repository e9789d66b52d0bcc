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
  the links' bandwidth, not their latency.

A call's remaining work is a fraction of it; when rates change, each activity keeps the work done
so far and continues at its new rate (processor sharing). Congestion changes at the edges of the
seeded Markov periods. The step time is the makespan: when the last op of any rank ends.

Tunable calls wait for a decision when they become ready (``next_decision`` / ``decide``); others
start with NCCL's configuration. Decisions are taken in the order calls become ready (ties: call
id), which is the same on every replay of the same choices.
"""

from __future__ import annotations

import heapq
import math

import numpy as np

from dynamiccl.costmodel.dynamics import CongestionProcess
from dynamiccl.tuning.actions import DEFAULT_ACTION
from dynamiccl.tuning.costs import CostTable
from dynamiccl.tuning.program import StepProgram

_COMPUTE, _CALL, _CONGESTION = 0, 1, 2


def _duration(cost, congested: int, overlap: int, sharing: int) -> float:
    """A call's duration (µs) from its cost row (``CostTable.rows`` order) in given conditions:
    concurrent calls on the same links share bandwidth, not latency."""
    lat = cost[4 + congested]
    return lat + (cost[2 * congested + overlap] - lat) * sharing


class DeadlockError(RuntimeError):
    """The step cannot finish: some op waits on something that never happens."""


class Replay:
    """One replay of ``program`` with costs from ``costs``.

    Args:
        program: the compiled step.
        costs: the cost table of the step on its environment spec.
        congestion: the seeded background-traffic process (None: always quiet).
        noise: per-call multiplicative run-to-run factor (None: 1).

    After ``next_decision()`` returns None the step is done: ``makespan_us``, and per call
    ``call_start_us``, ``call_end_us``, ``call_action``.
    """

    def __init__(self, program: StepProgram, costs: CostTable, congestion: CongestionProcess | None = None,
                 noise: np.ndarray | None = None, latest_finish_us: list[float] | None = None):
        self.program = program
        self.latest_finish_us = latest_finish_us
        self.costs = costs
        self.congestion = congestion
        n_ops, n_calls, n_ranks = program.num_ops, program.num_calls, len(program.ranks)
        self.noise = [1.0] * n_calls if noise is None else [float(x) for x in noise]
        self.now = 0.0
        self.makespan_us = 0.0
        self._npred = list(program.op_npred)
        self._ready_members = [0] * n_calls
        self._done_ops = 0
        self.call_action = [-1] * n_calls
        self.call_start_us = [math.nan] * n_calls
        self.call_end_us = [math.nan] * n_calls
        self.call_time_at_start_us = [math.nan] * n_calls  # duration under the conditions at start
        self.op_start_us = [math.nan] * n_ops
        self.op_end_us = [math.nan] * n_ops
        self._call_domain = [1 if program.call_nnodes[c] > 1 else 0 for c in range(n_calls)]
        self._heap: list[tuple[float, int, int, int, int]] = []
        self._seq = 0
        # Compute per rank: running op (-1 none), remaining work (µs at full speed), rate, last update, version.
        self._comp_op = [-1] * n_ranks
        self._comp_rem = [0.0] * n_ranks
        self._comp_rate = [1.0] * n_ranks
        self._comp_t = [0.0] * n_ranks
        self._comp_ver = [0] * n_ranks
        self._chain_pos = [0] * n_ranks          # compute-chain index of the running / next compute op
        self._chain_index = {}                   # op id -> position in its rank's chain
        self._chain_prefix = []                  # per rank: prefix sums of chain work
        for r, chain in enumerate(program.compute_chain):
            prefix = [0.0]
            for i, g in enumerate(chain):
                self._chain_index[g] = i
                prefix.append(prefix[-1] + program.op_base_us[g])
            self._chain_prefix.append(prefix)
        self._block = _first_waiting_compute(program, self._chain_index)
        # Calls: remaining fraction, rate, last update, version; running calls per rank and domain.
        self._call_rem = [1.0] * n_calls
        self._call_rate = [0.0] * n_calls
        self._call_t = [0.0] * n_calls
        self._call_ver = [0] * n_calls
        self._rank_calls: list[list[int]] = [[] for _ in range(n_ranks)]
        self._rank_domain = [[0, 0] for _ in range(n_ranks)]
        # The cost rows of each call's key, as Python lists for scalar speed.
        self._key = costs.call_key
        self._time = costs.time_us
        self._lat = costs.latency_us
        self._slow = costs.slowdown
        self._rows = costs.rows()
        self._call_cost: list[tuple] = [()] * n_calls
        self._congested = False
        if congestion is not None:
            self._congested, end = congestion.period_at(0.0)
            self._push(end, _CONGESTION, 0, 0)
        self._pending: list[int] = []   # calls ready and waiting for a decision, in readiness order
        self._ready_ops: list[int] = [g for g in range(n_ops) if self._npred[g] == 0]
        self._started = False

    # --- public ---

    def next_decision(self) -> int | None:
        """Advance until a tunable call is ready and undecided; return it, or None when the step is done.

        Raises:
            DeadlockError: the step cannot finish (a call whose ranks never all arrive).
        """
        while True:
            if self._pending:
                return self._pending[0]
            if self._ready_ops:
                self._start_ready_ops()
                continue
            if not self._advance_one_event():
                if self._done_ops < self.program.num_ops:
                    waiting = [c for c in range(self.program.num_calls)
                               if 0 < self._ready_members[c] < len(self.program.call_ops[c])]
                    what = (f"call {self.program.call_label[waiting[0]]!r} on group {self.program.call_group[waiting[0]]}"
                            if waiting else "an op")
                    raise DeadlockError(f"{self.program.source}: step {self.program.step} cannot finish: "
                                        f"{what} waits for ranks that never reach it")
                return None

    def decide(self, call: int, action: int) -> None:
        """Start the pending ``call`` with ``action`` (an index into the action catalogue)."""
        self._pending.remove(call)
        self._start_call(call, int(action))

    def run(self, choose=None) -> float:
        """Replay to the end; ``choose(call) -> action`` (default: NCCL's own). Returns the makespan."""
        while (call := self.next_decision()) is not None:
            self.decide(call, DEFAULT_ACTION if choose is None else choose(call))
        return self.makespan_us

    def conditions(self, call: int) -> tuple[int, int, int]:
        """(congested 0/1, compute running beside it 0/1, calls sharing its links incl. itself) now."""
        ranks = self.program.call_ranks[call]
        dom = self._call_domain[call]
        congested = 1 if (self._congested and dom) else 0
        overlap = 1 if any(self._comp_op[r] >= 0 for r in ranks) else 0
        sharing = 1 + max(self._rank_domain[r][dom] for r in ranks)
        return congested, overlap, sharing

    def durations(self, call: int) -> np.ndarray:
        """Duration (µs) of the pending ``call`` under every action, in the conditions now (inf: masked)."""
        congested, overlap, sharing = self.conditions(call)
        k = self._key[call]
        lat = self._lat[k, :, congested]
        with np.errstate(invalid="ignore"):  # masked actions: inf - inf
            duration = (lat + (self._time[k, :, congested, overlap] - lat) * sharing) * self.noise[call]
        return np.where(self.costs.mask[k], duration, np.inf)

    def hideable_us(self, call: int) -> float:
        """Compute work (µs at full speed) left on the call's ranks that does not wait for it: what
        can run beside it. The smallest over its ranks (where it is least hidden)."""
        best = math.inf
        for g in self.program.call_ops[call]:
            r = self.program.op_rank[g]
            prefix = self._chain_prefix[r]
            done = prefix[self._chain_pos[r]]
            if self._comp_op[r] >= 0:
                base = self.program.op_base_us[self._comp_op[r]]
                rem = self._comp_rem[r] - (self.now - self._comp_t[r]) * self._comp_rate[r]
                done += base - max(rem, 0.0)
            best = min(best, max(0.0, prefix[self._block[g]] - done))
        return 0.0 if best == math.inf else best

    def exposed_cost(self, call: int, actions) -> list[float]:
        """What the pending ``call`` adds to the step (µs) under each of ``actions``, in the
        conditions now (inf where masked).

        Two parts: (1) *delay*: with the call's latest finish ``LF`` from NCCL's default schedule of
        the same step (``latest_finish_us``: the latest it may end without delaying the step), its
        slack now is ``LF - (now + D(default))``; an action that lengthens the call by ``dD`` delays
        the step by ``max(0, dD - max(slack, 0))``, one that shortens it saves ``-dD`` only if the
        call is critical (slack <= 1% of its default duration), and ``-dD x (1 - slack / D(default))``
        of it when the call is near-critical (slack below its duration). Without ``latest_finish_us`` the
        slack is the compute left on its ranks that does not wait for it (``hideable_us``).
        (2) *interference*: ``min(D(a), hideable) x (slowdown(a) - 1)``: the overlapped compute its
        channels and HBM traffic stretch. Relative to the default action the first part is 0.
        """
        congested, overlap, sharing = self.conditions(call)
        rows = self._rows[self._key[call]]
        hideable = self.hideable_us(call)
        noise = self.noise[call]
        base = _duration(rows[DEFAULT_ACTION], congested, overlap, sharing) * noise
        if self.latest_finish_us is not None:
            slack = self.latest_finish_us[call] - (self.now + base)
        else:
            slack = hideable - base
        critical = slack <= 0.01 * base
        slack = max(slack, 0.0)
        out = []
        for a in actions:
            row = rows[a]
            if row is None:
                out.append(math.inf)
                continue
            d = _duration(row, congested, overlap, sharing) * noise
            delta = d - base
            if delta > 0:
                delay = max(0.0, delta - slack)
            else:  # a shorter call helps in proportion to how close it is to the critical path
                delay = delta if critical else delta * max(0.0, 1.0 - slack / base) if base > 0 else 0.0
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

    def _push(self, time: float, kind: int, ident: int, version: int) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (time, self._seq, kind, ident, version))

    def _start_ready_ops(self) -> None:
        ready, self._ready_ops = self._ready_ops, []
        program = self.program
        for g in ready:
            call = program.op_call[g]
            if call < 0:
                self._start_compute(g)
                continue
            self._ready_members[call] += 1
            if self._ready_members[call] == len(program.call_ops[call]):
                if program.call_tunable[call]:
                    self._pending.append(call)
                else:
                    self._start_call(call, DEFAULT_ACTION)

    def _advance_one_event(self) -> bool:
        heap = self._heap
        while heap:
            time, _, kind, ident, version = heapq.heappop(heap)
            if kind == _COMPUTE:
                if version != self._comp_ver[ident] or self._comp_op[ident] < 0:
                    continue
                self.now = time
                self._finish_compute(ident)
            elif kind == _CALL:
                if version != self._call_ver[ident] or self._call_rate[ident] == 0.0:
                    continue
                self.now = time
                self._finish_call(ident)
            else:
                if self._done_ops >= self.program.num_ops:
                    continue
                self.now = time
                self._congested, end = self.congestion.period_at(time + 1e-9)
                self._push(end, _CONGESTION, 0, 0)
                seen = set()
                for calls in self._rank_calls:
                    for c in calls:
                        if self._call_domain[c] and c not in seen:
                            seen.add(c)
                            self._update_call(c)
            return True
        return False

    def _release(self, g: int) -> None:
        self._done_ops += 1
        self.op_end_us[g] = self.now
        if self.now > self.makespan_us:
            self.makespan_us = self.now
        npred = self._npred
        for s in self.program.op_succ[g]:
            npred[s] -= 1
            if npred[s] == 0:
                self._ready_ops.append(s)

    def _start_compute(self, g: int) -> None:
        r = self.program.op_rank[g]
        self._comp_op[r] = g
        self.op_start_us[g] = self.now
        self._chain_pos[r] = self._chain_index[g]
        self._comp_rem[r] = self.program.op_base_us[g]
        self._comp_t[r] = self.now
        self._comp_rate[r] = 0.0
        self._update_compute(r)
        for c in self._rank_calls[r]:
            self._update_call(c)

    def _finish_compute(self, r: int) -> None:
        g = self._comp_op[r]
        self._comp_op[r] = -1
        self._chain_pos[r] = self._chain_index[g] + 1
        self._comp_ver[r] += 1
        for c in self._rank_calls[r]:
            self._update_call(c)
        self._release(g)

    def _update_compute(self, r: int) -> None:
        if self._comp_op[r] < 0:
            return
        now = self.now
        rem = self._comp_rem[r] - (now - self._comp_t[r]) * self._comp_rate[r]
        slow = 1.0
        for c in self._rank_calls[r]:
            slow += self._call_cost[c][6] - 1.0
        rate = 1.0 / slow
        self._comp_rem[r] = rem if rem > 0.0 else 0.0
        self._comp_t[r] = now
        self._comp_rate[r] = rate
        self._comp_ver[r] += 1
        self._push(now + self._comp_rem[r] / rate, _COMPUTE, r, self._comp_ver[r])

    def _start_call(self, call: int, action: int) -> None:
        row = self._rows[self._key[call]][action]
        noise = self.noise[call]
        self._call_cost[call] = tuple(x * noise for x in row[:6]) + (row[6],)  # times x noise, slowdown
        self.call_action[call] = action
        self.call_start_us[call] = self.now
        for g in self.program.call_ops[call]:
            self.op_start_us[g] = self.now
        self.call_time_at_start_us[call] = _duration(self._call_cost[call], *self.conditions(call))
        dom = self._call_domain[call]
        ranks = self.program.call_ranks[call]
        for r in ranks:
            self._rank_calls[r].append(call)
            self._rank_domain[r][dom] += 1
        self._call_rem[call] = 1.0
        self._call_t[call] = self.now
        self._call_rate[call] = 0.0
        self._update_call(call)
        for r in ranks:
            self._update_compute(r)
            for other in self._rank_calls[r]:
                if other != call and self._call_domain[other] == dom:
                    self._update_call(other)

    def _finish_call(self, call: int) -> None:
        self.call_end_us[call] = self.now
        self._call_rate[call] = 0.0
        self._call_ver[call] += 1
        dom = self._call_domain[call]
        ranks = self.program.call_ranks[call]
        for r in ranks:
            self._rank_calls[r].remove(call)
            self._rank_domain[r][dom] -= 1
        for r in ranks:
            self._update_compute(r)
            for other in self._rank_calls[r]:
                if self._call_domain[other] == dom:
                    self._update_call(other)
        for g in self.program.call_ops[call]:
            self._release(g)

    def _update_call(self, call: int) -> None:
        now = self.now
        rate = self._call_rate[call]
        rem = self._call_rem[call] - (now - self._call_t[call]) * rate
        c = self._call_cost[call]
        ranks = self.program.call_ranks[call]
        dom = self._call_domain[call]
        congested = 1 if (self._congested and dom) else 0
        overlap = 0
        sharing = 1
        for r in ranks:
            if self._comp_op[r] >= 0:
                overlap = 1
            n = self._rank_domain[r][dom]
            if n > sharing:
                sharing = n
        duration = _duration(c, congested, overlap, sharing)
        new_rate = 1.0 / duration if duration > 0 else math.inf
        self._call_rem[call] = rem if rem > 0.0 else 0.0
        self._call_t[call] = now
        if new_rate == rate:
            return
        self._call_rate[call] = new_rate
        self._call_ver[call] += 1
        finish = now + (self._call_rem[call] / new_rate if new_rate != math.inf else 0.0)
        self._push(finish, _CALL, call, self._call_ver[call])


def _first_waiting_compute(program: StepProgram, chain_index: dict[int, int]) -> list[int]:
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
    start, end = replay.op_start_us, replay.op_end_us
    makespan = replay.makespan_us
    n = program.num_ops
    latest_start = [makespan] * n
    done = [False] * n
    call_finish = [makespan] * program.num_calls
    for g in sorted(range(n), key=lambda g: (end[g], start[g], g), reverse=True):
        if done[g]:
            continue
        call = program.op_call[g]
        members = program.call_ops[call] if call >= 0 else (g,)
        finish = makespan
        for m in members:
            for s in program.op_succ[m]:
                if latest_start[s] < finish:
                    finish = latest_start[s]
        for m in members:
            latest_start[m] = finish - (end[m] - start[m])
            done[m] = True
        if call >= 0:
            call_finish[call] = finish
    return call_finish
