"""The order ``dynamiccl measure`` times configurations in, within a time budget: rank 0 runs a
:class:`Scheduler` and broadcasts each of its steps, so every rank takes the same decisions.

The budget is shared out item by item: an item starts with an equal share of the time left
(``(deadline - now) / items left``), so a budget too short for the whole plan still reaches every
item, and an item that finishes early leaves its time to the rest.

First, NCCL's default of every item gets ``warmup`` untimed calls and :data:`SCREEN_REPS` timed
repetitions, item after item, so that even a budget too short for anything else gives every item its
baseline. Then, within each item in turn:

1. **Screening.** Every configuration in plan order (NCCL's default first) gets ``warmup`` untimed
   calls and :data:`SCREEN_REPS` timed repetitions.
2. **Pruning rule.** A configuration is dropped as *clearly slower* when even its fastest
   repetition is slower than :data:`PRUNE_RATIO` x the median of the best configuration so far
   (lowest median among those still in). The rule is applied to every configuration still in after
   each step, so a new best drops earlier ones too. NCCL's default is never dropped (it is every
   comparison's baseline). Under NCCL a forced configuration the plugin reports as not applied (NCCL
   refused the cell, or never asked the plugin) is dropped at once: there is nothing of it to time.
3. **Refinement.** The configurations still in take turns, :data:`REFINE_REPS` repetitions (after
   one warm-up call) at a time, until each has ``iters`` repetitions.

An item ends when every configuration still in has ``iters`` repetitions or its share of the
budget is spent; the whole run ends when the plan is done or the deadline has passed (items not
reached are reported, with the configurations each did not get to).
With ``with_gemm`` each item then times NCCL's default and the configurations left in with a GEMM
running beside the collective (``iters`` repetitions each, within the same share).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

SCREEN_REPS = 3
REFINE_REPS = 5
PRUNE_RATIO = 1.2  # "clearly slower": its best repetition 20% over the best configuration's median

# Step kinds, as broadcast (an int tensor: kind, item, config, reps, warmup).
END, MEASURE, MEASURE_GEMM = 0, 1, 2


@dataclass(frozen=True)
class Step:
    """One thing every rank does next: ``kind`` END, or MEASURE / MEASURE_GEMM ``config`` of
    ``item`` for ``reps`` timed repetitions after ``warmup`` untimed calls."""

    kind: int
    item: int = -1
    config: int = -1
    reps: int = 0
    warmup: int = 0

    def encode(self) -> list[int]:
        return [self.kind, self.item, self.config, self.reps, self.warmup]

    @classmethod
    def decode(cls, values: list[int]) -> "Step":
        return cls(*[int(v) for v in values])


@dataclass
class ConfigState:
    """What happened to one configuration of one item. ``status``: ``waiting`` (not timed yet),
    ``in`` (still timed), ``done`` (reached ``iters``), ``pruned`` (clearly slower), ``not applied``,
    ``unavailable`` (this NCCL lacks the algorithm, or refuses the chunk size as unsafe: never
    timed), ``budget`` (time ran out before it was reached)."""

    status: str = "waiting"
    reason: str = ""
    times_us: list[float] = field(default_factory=list)  # slowest rank per repetition
    applied: bool | None = None  # None until timed
    gemm_times_us: list[float] = field(default_factory=list)

    @property
    def median_us(self) -> float:
        return statistics.median(self.times_us) if self.times_us else float("inf")

    @property
    def still_in(self) -> bool:
        return self.status in ("in", "done")


class Scheduler:
    """Rank 0's decisions (see the module docstring).

    Args:
        n_configs: configurations per item (index 0 of each: NCCL's default).
        deadline: ``clock()`` time by which the run must stop.
        iters, warmup: repetitions per configuration, untimed calls before its first ones.
        drop_unapplied: drop a forced configuration that was not applied (True under NCCL; on gloo
            nothing is applied, and every configuration is still run through the override).
        unavailable: (item, config) -> why it is not timed (this NCCL lacks the algorithm; a chunk
            size :mod:`dynamiccl.knobs.safety` refuses on it).
        skip_items: items not to time at all, with the reason (their shape cannot be placed).
        with_gemm: also time the default and the configurations left with a GEMM beside.
        clock: seconds (``time.time``: rank 0's deadline is wall-clock time shared with the command).
    """

    def __init__(self, n_configs: list[int], deadline: float, iters: int, warmup: int, drop_unapplied: bool,
                 unavailable: dict[tuple[int, int], str] | None = None, skip_items: dict[int, str] | None = None,
                 with_gemm: bool = False, clock: Callable[[], float] = time.time):
        self.deadline, self.iters, self.warmup = deadline, iters, warmup
        self.drop_unapplied, self.with_gemm, self.clock = drop_unapplied, with_gemm, clock
        self.states = [[ConfigState() for _ in range(n)] for n in n_configs]
        for (i, c), reason in (unavailable or {}).items():
            self.states[i][c].status, self.states[i][c].reason = "unavailable", reason
        self.skip_items = dict(skip_items or {})
        for i, reason in self.skip_items.items():
            self._close(i, "not placed", reason)
        self.todo = [i for i in range(len(n_configs)) if i not in self.skip_items]
        self.item = -1
        self.item_deadline = 0.0
        self.closed: set[int] = set()
        self.stopped_by_budget = False
        self._last: Step | None = None
        self._gemm_queue: list[int] = []
        self._first_pass = [i for i in self.todo if self.states[i][0].status == "waiting"]

    # --- what to do next -------------------------------------------------------------------------

    def next(self) -> Step:
        """The next step for every rank (END when the plan is done or the deadline has passed)."""
        now = self.clock()
        if self._first_pass and now < self.deadline:  # NCCL's default of every item first
            self._last = Step(MEASURE, self._first_pass.pop(0), 0, min(SCREEN_REPS, self.iters), self.warmup)
            return self._last
        self._first_pass.clear()
        while True:
            if self.item < 0 or self._item_over(now):
                if self.item >= 0:
                    self._close_item(now)
                if not self.todo:
                    return self._end()
                if now >= self.deadline:
                    self.stopped_by_budget = True
                    for i in self.todo:
                        self._close(i, "budget", "the budget ran out before this item was reached")
                        self.closed.add(i)
                    self.todo.clear()
                    return self._end()
                self.item = self.todo.pop(0)
                self.item_deadline = now + (self.deadline - now) / (len(self.todo) + 1)
                self._gemm_queue = []
            step = self._item_step()
            if step is not None:
                self._last = step
                return step
            self.item_deadline = now  # nothing left in this item: close it and go on

    def _item_over(self, now: float) -> bool:
        return now >= self.item_deadline or now >= self.deadline

    def _item_step(self) -> Step | None:
        states = self.states[self.item]
        for c, s in enumerate(states):  # screening, in plan order
            if s.status == "waiting":
                return Step(MEASURE, self.item, c, min(SCREEN_REPS, self.iters), self.warmup)
        behind = [c for c, s in enumerate(states) if s.status == "in" and len(s.times_us) < self.iters]
        if behind:  # the one furthest behind next: the configurations take turns
            c = min(behind, key=lambda k: (len(states[k].times_us), k))
            return Step(MEASURE, self.item, c, min(REFINE_REPS, self.iters - len(states[c].times_us)),
                        min(1, self.warmup))
        if self.with_gemm:
            if not self._gemm_queue and not any(s.gemm_times_us for s in states):
                self._gemm_queue = [c for c, s in enumerate(states) if s.still_in]
            while self._gemm_queue:
                c = self._gemm_queue.pop(0)
                return Step(MEASURE_GEMM, self.item, c, self.iters, min(1, self.warmup))
        return None

    # --- what happened ---------------------------------------------------------------------------

    def record(self, times_us: list[float], applied: bool) -> None:
        """The result of the last MEASURE / MEASURE_GEMM step: the slowest rank's time per
        repetition (µs) and whether the configuration was applied on every rank."""
        step = self._last
        if step is None or step.kind == END:
            raise RuntimeError("record() without a step to record")
        s = self.states[step.item][step.config]
        if step.kind == MEASURE_GEMM:
            s.gemm_times_us.extend(times_us)
            return
        s.times_us.extend(times_us)
        s.applied = applied if s.applied is None else (s.applied and applied)
        if s.status == "waiting":
            s.status = "in"
        if len(s.times_us) >= self.iters and s.status == "in":
            s.status = "done"
        if step.config != 0 and self.drop_unapplied and not applied:
            s.status, s.reason = "not applied", "the plugin reports NCCL did not run this configuration"
        self._prune(step.item)

    def _prune(self, item: int) -> None:
        states = self.states[item]
        timed = [s for s in states if s.still_in and s.times_us]
        if not timed:
            return
        best = min(s.median_us for s in timed)
        for c, s in enumerate(states):
            if c != 0 and s.still_in and s.times_us and min(s.times_us) > PRUNE_RATIO * best:
                s.status = "pruned"
                s.reason = (f"fastest of {len(s.times_us)} repetitions {min(s.times_us):.1f} us > "
                            f"{PRUNE_RATIO} x best median {best:.1f} us")

    def _close_item(self, now: float) -> None:
        cut = False
        for s in self.states[self.item]:
            if s.status == "waiting":
                s.status, s.reason, cut = "budget", "the item's share of the budget ran out before it was timed", True
            elif s.status == "in":
                s.status, cut = "done", True
                s.reason = f"{len(s.times_us)} of {self.iters} repetitions when the item's share of the budget ran out"
        self.stopped_by_budget |= cut
        self.closed.add(self.item)

    def _close(self, item: int, status: str, reason: str) -> None:
        for s in self.states[item]:
            if s.status in ("waiting", "in"):
                s.status, s.reason = status, reason

    def _end(self) -> Step:
        self.item = -1
        self._last = Step(END)
        return self._last

    # --- progress ---------------------------------------------------------------------------------

    def progress(self) -> tuple[int, int]:
        """(repetitions done or no longer needed, repetitions in all): a configuration or item that
        ended early counts its missing repetitions as done, so the bar reaches its end with the plan."""
        per_config = self.iters * (2 if self.with_gemm else 1)
        total = done = 0
        for i, states in enumerate(self.states):
            total += per_config * len(states)
            if i in self.closed or i in self.skip_items:
                done += per_config * len(states)
                continue
            for s in states:
                if s.status in ("waiting", "in", "done"):
                    done += min(len(s.times_us), self.iters)
                    done += min(len(s.gemm_times_us), self.iters) if self.with_gemm else 0
                else:
                    done += per_config
        return done, total
