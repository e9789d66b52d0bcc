"""Online learners: tuners that learn from measurements taken while the job runs.

They are the baselines for our pre-trained policy, which picks an action from the call's
description alone. These two have to try configurations on the live job and time them first:

- ``UCBBandit``: a UCB1 bandit per size bucket over a few (algorithm, protocol) arms, like the
  Stanford CS244C bandit tuner (GitHub ``madanva/CS244C-project-repo``,
  ``tuner/rl_bandit_tuner_v2.c``).
- ``CoordinateDescent``: AutoCCL's search (NSDI'25; GitHub ``gbxu/autoccl``). It searches each
  (algorithm, protocol) subspace in turn, runs coordinate descent over the channel count inside it,
  and then exploits the best configuration it measured.

Both have the same interface. ``act(key, mask)`` picks the action for a call.
``observe(key, action, time_us)`` gives back the duration of that call, as NCCL's profiler plugin
reports it. ``state()`` returns a JSON summary for the results. The key is what the plugin sees:
``(coll, nbytes, nranks, nnodes)``.

There is no randomness anywhere. Every rank runs its own copy of the learner, so the ranks must
all pick the same action for the same call. If one rank chose differently, the ranks would run
mismatched algorithms and the collective would hang. The CS244C author lists "RNG divergence
across ranks" among his v1 bugs. So the exploration order is a fixed order, and every tie goes to
the lowest action index.
"""

from __future__ import annotations

import abc

import math

import numpy as np

from dynamiccl.callkey import size_band
from dynamiccl.nccl import NUM_PROTOCOLS
from dynamiccl.tuning.actions import (
    ACTION_CELL, ACTION_CHANNELS, CHANNEL_CHOICES, DEFAULT_ACTION, NUM_ACTIONS, action_index,
    describe_action,
)

SAFETY_MARGIN = 0.05  # CS244C's safety gate: an arm more than 5% slower than NCCL's default is dropped


def _check(key: tuple, mask: np.ndarray) -> tuple[int, int, int, int]:
    """The key as four ints. Raises ValueError for a malformed key or mask, because a wrong shape
    would otherwise pick an arbitrary action."""
    if len(key) != 4:
        raise ValueError(f"key must be (coll, nbytes, nranks, nnodes), got {key!r}")
    if mask is not None and np.shape(mask) != (NUM_ACTIONS,):
        raise ValueError(f"mask must be bool[{NUM_ACTIONS}], got shape {np.shape(mask)}")
    coll, nbytes, nranks, nnodes = (int(v) for v in key)
    return coll, nbytes, nranks, nnodes


def _key_name(key: tuple) -> str:
    """The key as a string, because JSON object keys must be strings."""
    coll, nbytes, nranks, nnodes = (int(v) for v in key)
    return f"coll={coll} nbytes={nbytes} nranks={nranks} nnodes={nnodes}"


def _cell_action(cell: int, channels: int) -> int:
    return action_index(cell // NUM_PROTOCOLS, cell % NUM_PROTOCOLS, channels)


def _enabled_cells(mask: np.ndarray) -> list[int]:
    """The enabled (algorithm, protocol) cells in cell order. A cell is enabled when its
    channels-0 action is valid: 0 channels is under any channel cap, so only the cost table can
    mask that action."""
    return [int(ACTION_CELL[a]) for a in np.flatnonzero(mask)
            if a != DEFAULT_ACTION and ACTION_CHANNELS[a] == 0]


class OnlineLearner(abc.ABC):
    """The interface shared by the online baselines (see the module docstring)."""

    name: str = "online"

    def __init__(self) -> None:
        self.measurements = 0  # observe() calls so far, i.e. how many collectives were timed

    @abc.abstractmethod
    def act(self, key: tuple, mask: np.ndarray) -> int:
        """The action for one call. ``mask`` is bool[NUM_ACTIONS] with mask[0] True. The returned
        action is always valid under ``mask``."""

    @abc.abstractmethod
    def observe(self, key: tuple, action: int, time_us: float) -> None:
        """The measured duration of the call that ran with ``action``."""

    @abc.abstractmethod
    def state(self) -> dict:
        """A JSON-serialisable summary: for each bucket, the chosen action and the tries."""


# --- UCB1 bandit (CS244C-style) ------------------------------------------------------------------


class _Bucket:
    """What the bandit knows about one (coll, log2 size, nranks, nnodes) bucket."""

    def __init__(self) -> None:
        self.tries: dict[int, int] = {}          # arm -> measurements used
        self.cost_sum: dict[int, float] = {}     # arm -> sum of normalised costs
        self.gated: set[int] = set()             # arms the safety gate has dropped for good
        self.default_at: dict[int, float] = {}   # nbytes -> most recent default-arm time (us)
        self.default_sum = 0.0                   # all default-arm times in the bucket (us)
        self.default_count = 0

    def mean(self, arm: int) -> float:
        return self.cost_sum[arm] / self.tries[arm]

    def reference(self, nbytes: int) -> float | None:
        """The default time used to normalise a non-default measurement at ``nbytes``: the most
        recent default time at exactly ``nbytes``. If there is none, the bucket's mean default time
        (only reached when the caller played something ``act`` did not choose). None when the
        default arm has not been measured in this bucket."""
        if nbytes in self.default_at:
            return self.default_at[nbytes]
        return self.default_sum / self.default_count if self.default_count else None

    def greedy(self) -> int | None:
        """The tried, ungated arm with the lowest mean cost (lowest index on ties)."""
        best, best_mean = None, math.inf
        for arm in sorted(self.tries):
            if arm not in self.gated and self.mean(arm) < best_mean:
                best, best_mean = arm, self.mean(arm)
        return best


class UCBBandit(OnlineLearner):
    """UCB1 over (algorithm, protocol) arms, one bandit per size bucket (CS244C-style).

    Measured: the duration of each call (``time_us``, from NCCL's profiler plugin), divided by a
    reference time of NCCL's default at the same size in the same bucket.

    Arms: there is one bandit per bucket ``(coll, floor(log2 nbytes), nranks, nnodes)``, with size
    bucket 0 for nbytes < 1. Its arms are the default action 0 and, for each (algorithm, protocol)
    cell that the mask enables, that cell with channels 0 (NCCL's runtime channel count). The
    channel counts are not arms. That keeps the arm set small, like the Stanford CS244C bandit
    tuner (``madanva/CS244C-project-repo: tuner/rl_bandit_tuner_v2.c``), whose arms were
    Tree+Simple, Tree+LL128, Ring+Simple and AUTO. The arms come from the current mask, so an arm
    whose cell gets disabled stops being played.

    Cost normalisation: sizes within a bucket differ by up to 2x, so raw times cannot be averaged
    together. Each measurement is turned into ``time_us / reference``, where the reference is the
    most recent default-arm time at the same exact nbytes. The default arm therefore has cost 1 when
    it sets a size's reference, and ``time / previous reference`` after that. Its mean is ~1, and it
    is estimated the same way as the other arms.

    Every non-default measurement needs a reference at its own size, so ``act`` plays the default
    whenever the call's exact nbytes has no default time yet. This costs nothing against NCCL,
    because the default is what NCCL would run anyway. Normalising by the bucket's mean default time
    instead would be biased: with sizes up to 2x apart, an arm first tried at the large end of a
    bucket would look up to 2x slower, and the safety gate would drop it. The bucket mean is used
    only when the caller observes a non-default action that ``act`` did not choose, at a size with
    no reference. Such a measurement is counted in ``measurements``, and used only if the bucket
    has some default time at all.

    Choice: the arms are first played once each, in action-index order. This is CS244C's
    deterministic round robin, which keeps every rank on the same arm. After that the bandit plays
    UCB1 on reward = -mean normalised cost: it plays the arm that maximises
    ``-mean + c * sqrt(2 ln N / n_arm)``. N is the bucket's total number of tries, and ties go to
    the lowest action index. ``c`` defaults to 0.2, because normalised costs differ by a few
    percent and the textbook c = 1 would keep exploring for a long time.

    Stopping rule: UCB1 never stops exploring, but its exploration decays as ln N / n. With
    ``safety`` (the default), CS244C's 5% gate applies. Once every arm has been tried, any arm whose
    mean cost is more than 5% above the default arm's mean is dropped for good. A bad
    configuration therefore costs at most one call per bucket.
    """

    name = "ucb-bandit"

    def __init__(self, c: float = 0.2, safety: bool = True) -> None:
        super().__init__()
        self.c = float(c)
        self.safety = bool(safety)
        self._buckets: dict[tuple, _Bucket] = {}

    @staticmethod
    def bucket_of(key: tuple) -> tuple[int, int, int, int]:
        coll, nbytes, nranks, nnodes = _check(key, None)
        return coll, size_band(nbytes), nranks, nnodes

    @staticmethod
    def arms(mask: np.ndarray) -> list[int]:
        """The default action and the channels-0 action of every enabled cell, ascending."""
        return [DEFAULT_ACTION] + [_cell_action(cell, 0) for cell in _enabled_cells(mask)]

    def act(self, key: tuple, mask: np.ndarray) -> int:
        _, nbytes, _, _ = _check(key, mask)
        bucket = self._buckets.setdefault(self.bucket_of(key), _Bucket())
        arms = self.arms(mask)

        # A size seen for the first time gets NCCL's default, to give its reference time.
        if nbytes not in bucket.default_at:
            return DEFAULT_ACTION

        # Phase 1: play each arm once, in index order (the same on every rank).
        for arm in arms:
            if arm not in bucket.tries:
                return arm

        # The safety gate, checked once every arm has a mean. The default arm is never gated:
        # it is what NCCL would have done anyway.
        if self.safety:
            limit = bucket.mean(DEFAULT_ACTION) * (1.0 + SAFETY_MARGIN)
            bucket.gated.update(a for a in arms if a != DEFAULT_ACTION and bucket.mean(a) > limit)

        # Phase 2: UCB1. Iterating in ascending order with a strict > sends ties to the lowest index.
        total = sum(bucket.tries.values())
        best, best_score = DEFAULT_ACTION, -math.inf
        for arm in arms:
            if arm in bucket.gated:
                continue
            bonus = self.c * math.sqrt(2.0 * math.log(total) / bucket.tries[arm])
            score = -bucket.mean(arm) + bonus
            if score > best_score:
                best, best_score = arm, score
        return best

    def observe(self, key: tuple, action: int, time_us: float) -> None:
        self.measurements += 1
        _, nbytes, _, _ = _check(key, None)
        action, time_us = int(action), float(time_us)
        bucket = self._buckets.setdefault(self.bucket_of(key), _Bucket())

        if action == DEFAULT_ACTION:
            # The first default time at a size defines the scale there, so its cost is 1.
            previous = bucket.default_at.get(nbytes)
            cost = time_us / previous if previous else 1.0
            bucket.default_at[nbytes] = time_us
            bucket.default_sum += time_us
            bucket.default_count += 1
        elif (reference := bucket.reference(nbytes)) is not None and reference > 0:
            cost = time_us / reference
        else:
            return  # no default time to normalise by yet (see the class docstring)
        bucket.tries[action] = bucket.tries.get(action, 0) + 1
        bucket.cost_sum[action] = bucket.cost_sum.get(action, 0.0) + cost

    def state(self) -> dict:
        buckets = {}
        for (coll, size_bucket, nranks, nnodes), bucket in self._buckets.items():
            chosen = bucket.greedy()
            buckets[f"coll={coll} size=2^{size_bucket} nranks={nranks} nnodes={nnodes}"] = {
                "chosen_action": chosen,
                "chosen": describe_action(chosen) if chosen is not None else None,
                "arms": {str(arm): {"name": describe_action(arm), "tries": bucket.tries[arm],
                                    "mean_cost": bucket.mean(arm)}
                         for arm in sorted(bucket.tries)},
                "gated": sorted(bucket.gated),
            }
        return {"name": self.name, "c": self.c, "safety": self.safety,
                "measurements": self.measurements, "buckets": buckets}


# --- Coordinate descent (AutoCCL-style) ----------------------------------------------------------


class _Search:
    """The state of the coordinate-descent search for one workload key.

    The point being measured is ``pending``. In the reference phase (``cell_pos == -1``) it is the
    default action. Inside a subspace it is channel count ``counts[trial]`` of cell
    ``cells[cell_pos]``.
    """

    def __init__(self) -> None:
        self.times: dict[int, list[float]] = {}  # action -> measured times (us)
        self.mask: np.ndarray | None = None      # the mask of the latest act(), read when a subspace starts
        self.cells: list[int] | None = None      # subspaces to search, fixed at the first act()
        self.cell_pos = -1                       # -1: measuring the default as the reference
        self.counts: list[int] = []              # allowed channel counts in the current subspace
        self.best_idx: int | None = None         # best point so far in the current subspace
        self.trial = 0                           # index into counts being measured
        self.direction = 0                       # +1 or -1 once probing a neighbour
        self.moved = False                       # whether the current direction already improved
        self.done = False
        self.skipped: set[int] = set()           # points that were masked when their turn came


class CoordinateDescent(OnlineLearner):
    """AutoCCL-style search: each (algorithm, protocol) subspace in turn, coordinate descent over the
    channel count inside it, then exploit the best configuration (AutoCCL, NSDI'25, ``gbxu/autoccl``).

    Measured: the duration of each call (``time_us``, from NCCL's profiler plugin), separately for
    each exact workload key ``(coll, nbytes, nranks, nnodes)``, as AutoCCL tunes per workload.
    Each configuration is measured ``repeats`` times and the times are averaged.

    Search space: AutoCCL splits the parameters into "implementation" parameters (algorithm,
    protocol, transport), which form a small discrete set, and "resource" parameters (channels,
    threads, chunk size), which it argues have a unimodal effect on bandwidth. Here every
    (algorithm, protocol) cell the mask enables, in cell order, is one subspace, and the one
    resource parameter is the channel count. Within a subspace the counts searched are the
    nonzero ``CHANNEL_CHOICES`` the mask allows for that cell. If there are none, the subspace is
    just the cell with NCCL's runtime count (channels 0).

    Procedure: measure the default action first, as the reference and the fallback. Then, in each
    subspace, measure the middle allowed count (the lower middle for an even number). Probe the next
    larger count. If it is faster by more than ``tolerance`` (default 1%), keep moving up while
    each step improves. If not, probe the next smaller count and move down the same way.

    Stopping rule: a subspace has converged at the first step that does not improve, or at the end
    of the range. When every subspace has converged, the learner plays the fastest configuration it
    measured, from any subspace or the default, for ever. On a unimodal curve over n counts the
    search measures at most ``(n - 1) // 2 + 2`` points per subspace: 5 of the 7 counts
    (1..32), where exhaustive search measures all n. If a remembered best action becomes masked,
    the learner plays the default action instead.
    """

    name = "coordinate-descent"

    def __init__(self, tolerance: float = 0.01, repeats: int = 1) -> None:
        super().__init__()
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        self.tolerance = float(tolerance)
        self.repeats = int(repeats)
        self._searches: dict[tuple, _Search] = {}

    def converged(self, key: tuple) -> bool:
        search = self._searches.get(_check(key, None))
        return search is not None and search.done

    # The search as a state machine. _pending says what to measure next. _advance moves on once
    # that point has ``repeats`` measurements.

    def _pending(self, s: _Search) -> int:
        if s.cell_pos < 0:
            return DEFAULT_ACTION
        return _cell_action(s.cells[s.cell_pos], s.counts[s.trial])

    def _pending_at(self, s: _Search, idx: int) -> int:
        return _cell_action(s.cells[s.cell_pos], s.counts[idx])

    def _mean(self, s: _Search, action: int) -> float:
        if action in s.skipped:
            return math.inf  # a masked point can never be the best one
        times = s.times[action]
        return sum(times) / len(times)

    def _measured(self, s: _Search, action: int) -> bool:
        return action in s.skipped or len(s.times.get(action, ())) >= self.repeats

    def _start_cell(self, s: _Search, cell_pos: int) -> None:
        s.cell_pos = cell_pos
        if cell_pos >= len(s.cells):
            s.done = True
            return
        cell = s.cells[cell_pos]
        s.counts = [ch for ch in CHANNEL_CHOICES
                    if ch > 0 and s.mask[_cell_action(cell, ch)]] or [0]
        s.best_idx, s.trial = None, (len(s.counts) - 1) // 2
        s.direction, s.moved = 0, False

    def _advance(self, s: _Search) -> None:
        """The pending point is measured, so decide the next one (the coordinate-descent step)."""
        if s.cell_pos < 0:
            self._start_cell(s, 0)
            return
        j = s.trial
        if s.best_idx is None:  # the starting point of this subspace: probe upwards first
            s.best_idx, s.direction = j, +1
        else:
            best = self._mean(s, self._pending_at(s, s.best_idx))
            if self._mean(s, self._pending_at(s, j)) < best * (1.0 - self.tolerance):
                s.best_idx, s.moved = j, True   # improved: keep going the same way
            elif s.direction > 0 and not s.moved:
                s.direction = -1                # the first step up failed: try downwards
            else:
                self._start_cell(s, s.cell_pos + 1)  # first non-improvement: converged
                return
        nxt = s.best_idx + s.direction
        if 0 <= nxt < len(s.counts):
            s.trial = nxt
        elif s.direction > 0 and not s.moved and s.best_idx - 1 >= 0:
            s.direction, s.trial = -1, s.best_idx - 1  # nothing above the start: go down
        else:
            self._start_cell(s, s.cell_pos + 1)    # end of the range: converged

    def _best(self, s: _Search) -> int:
        """The fastest fully measured configuration (lowest index on ties), the default if none."""
        best, best_mean = DEFAULT_ACTION, math.inf
        for action in sorted(s.times):
            if self._measured(s, action) and self._mean(s, action) < best_mean:
                best, best_mean = action, self._mean(s, action)
        return best

    def act(self, key: tuple, mask: np.ndarray) -> int:
        s = self._searches.setdefault(_check(key, mask), _Search())
        s.mask = np.array(mask, dtype=bool)  # a copy: the caller may reuse its array
        if s.cells is None:
            s.cells = _enabled_cells(mask)
        # Move past points that are already measured (the caller may have observed them on its
        # own) or that the mask no longer allows.
        while not s.done:
            action = self._pending(s)
            if not mask[action]:
                s.skipped.add(action)
            if not self._measured(s, action):
                return action
            self._advance(s)
        best = self._best(s)
        return best if mask[best] else DEFAULT_ACTION

    def observe(self, key: tuple, action: int, time_us: float) -> None:
        self.measurements += 1
        s = self._searches.setdefault(_check(key, None), _Search())
        action = int(action)
        s.times.setdefault(action, []).append(float(time_us))
        # Only the point the search is waiting for moves it on. Other observations are stored
        # and reused if the search reaches them later.
        if s.cells is not None and not s.done and action == self._pending(s) \
                and len(s.times[action]) == self.repeats:
            self._advance(s)

    def state(self) -> dict:
        keys = {}
        for key, s in self._searches.items():
            best = self._best(s)
            keys[_key_name(key)] = {
                "converged": s.done,
                "chosen_action": best,
                "chosen": describe_action(best),
                "tries": {str(a): {"name": describe_action(a), "tries": len(t),
                                   "mean_us": sum(t) / len(t)}
                          for a, t in sorted(s.times.items())},
                "measurements": sum(len(t) for t in s.times.values()),
            }
        return {"name": self.name, "tolerance": self.tolerance, "repeats": self.repeats,
                "measurements": self.measurements, "keys": keys}
