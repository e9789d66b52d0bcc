"""Conditions that change over time: background network traffic and run-to-run noise.

``CongestionProcess`` plays the ``[dynamics]`` background-traffic process of an environment spec:
a two-state (quiet / congested) continuous-time Markov chain. Periods are exponential with mean
``mean_period_ms``, split so that the long-run congested share is ``congested_fraction``; while
congested, background traffic takes ``congested_share`` of each NIC. Shared clusters show exactly
this on/off pattern from other jobs' collectives and checkpoints; the process is seeded, so a
replay is reproducible.

A replay visits every period boundary (the calls in flight change speed there), so its work grows
with the periods in a step: a process draws at most ``max_periods`` of them (:data:`MAX_PERIODS`),
and asking past that is an :class:`~dynamiccl.errors.InputError` naming the spec's
``dynamics.mean_period_ms``, instead of a replay that runs for hours; :func:`check_period` refuses
such a spec before a replay starts, from a lower bound of the step's length.
Periods are drawn in bulk (a chunk at a time, each chunk twice the last), the same numbers in the
same order as one at a time.

``noise_factors`` draws the multiplicative run-to-run variation (log-normal with the spec's
``noise_cv``; nccl-tests repeats typically vary by a few percent).
"""

from __future__ import annotations

import numpy as np

from dynamiccl.envspec import DynamicsSpec
from dynamiccl.errors import InputError

# Periods one replay may visit. A 20 ms default period gives 50 per second of step, so this bound
# leaves a replayed step of over half an hour; each period costs a pass over the calls in flight.
MAX_PERIODS = 100_000


class CongestionProcess:
    """Seeded on/off background traffic. ``share_at(time_us)`` is the NIC share taken then (0..0.95).

    Args:
        dynamics: the spec's ``[dynamics]`` table.
        seed: random seed; the same seed gives the same timeline.
        source: the spec file, named in errors.
        max_periods: periods drawn at most (see the module docstring).
    """

    def __init__(self, dynamics: DynamicsSpec, seed: int = 0, source: str | None = None,
                 max_periods: int = MAX_PERIODS):
        self.dynamics = dynamics
        self.source = source
        self.max_periods = max_periods
        self.rng = np.random.default_rng(seed)
        self._edges = np.zeros(1)        # start time of each period, µs
        self._congested = np.zeros(1, dtype=bool)
        active = dynamics.congestion == "markov" and dynamics.congested_fraction > 0 and dynamics.congested_share > 0
        self._active = active
        if active:
            self._congested[0] = self.rng.random() < dynamics.congested_fraction

    def _mean_us(self, congested: bool) -> float:
        d = self.dynamics
        # Two states with mean lengths m_c and m_q: m_c / (m_c + m_q) = fraction, mean of both = period.
        mean_ms = 2 * d.mean_period_ms * (d.congested_fraction if congested else 1 - d.congested_fraction)
        return max(mean_ms, 1e-6) * 1000.0

    def _draw(self, count: int) -> None:
        """Append the next ``count`` periods: exactly what ``count`` calls of ``rng.exponential(mean)``
        would give (numpy scales a standard exponential draw by the mean, in the same stream order),
        accumulated left to right as one at a time would. The last period's end is open: its state
        is known, its length is drawn with the next chunk."""
        last = bool(self._congested[-1])
        drawn = np.resize(np.array([last, not last]), count)  # the state of each period drawn now
        periods = self.rng.standard_exponential(count) * np.where(drawn, self._mean_us(True), self._mean_us(False))
        edges = np.cumsum(np.concatenate(([self._edges[-1]], periods)))[1:]
        self._edges = np.concatenate((self._edges, edges))
        self._congested = np.concatenate((self._congested, ~drawn))

    def _too_many_periods(self, horizon_us: float) -> InputError:
        return InputError(self.source or "environment spec", "dynamics.mean_period_ms",
                          f"{self.dynamics.mean_period_ms:g} ms periods are too short for this step: the replay "
                          f"passed {self.max_periods:,} congestion periods {horizon_us / 1e3:,.3g} ms into the step; "
                          f"expected a mean period of at least (step time) / {self.max_periods:,} (background "
                          "traffic that changes faster is steady congestion: congested_fraction x congested_share)")

    def period_at(self, time_us: float) -> tuple[bool, float]:
        """(congested?, end of that period in µs) for the period holding ``time_us``; inactive
        processes are one quiet period that never ends."""
        if not self._active:
            return False, float("inf")
        self.share_at(time_us)  # draws periods up to time_us
        index = int(np.searchsorted(self._edges, time_us, side="right")) - 1
        return bool(self._congested[max(index, 0)]), float(self._edges[index + 1])

    def share_at(self, time_us) -> np.ndarray:
        """Background share of NIC bandwidth at each time (µs, any order), as an array.

        Raises:
            InputError: a time beyond ``max_periods`` periods (naming ``dynamics.mean_period_ms``).
        """
        times = np.asarray(time_us, dtype=np.float64)
        if not self._active:
            return np.zeros_like(times)
        horizon = float(times.max(initial=0.0))
        # Periods are drawn in order, each exactly once, in chunks ahead of what is asked: the
        # timeline of a seed is the same however (and in whatever chunks) it is queried.
        while self._edges[-1] <= horizon:
            if len(self._edges) > self.max_periods:
                raise self._too_many_periods(horizon)
            self._draw(min(max(64, len(self._edges)), self.max_periods + 1 - len(self._edges)))
        index = np.searchsorted(self._edges, times, side="right") - 1
        return np.where(self._congested[np.clip(index, 0, None)], self.dynamics.congested_share, 0.0)


def check_period(dynamics: DynamicsSpec, step_us: float, source: str | None, max_periods: int = MAX_PERIODS) -> None:
    """Refuse, before a replay starts, a congestion process whose periods are too short for a step
    of at least ``step_us`` µs (e.g. its busiest rank's compute): more than ``max_periods`` of them.

    Raises:
        InputError: naming ``source``, ``dynamics.mean_period_ms`` and the shortest period that fits.
    """
    if dynamics.congestion != "markov" or not step_us > 0:
        return
    periods = step_us / (dynamics.mean_period_ms * 1e3)
    if periods > max_periods:
        raise InputError(source or "environment spec", "dynamics.mean_period_ms",
                         f"expected at least {step_us / 1e3 / max_periods:.3g} ms for a step of at least "
                         f"{step_us / 1e3:,.1f} ms (at most {max_periods:,} congestion periods a replay), got "
                         f"{dynamics.mean_period_ms:g} ({periods:,.0f} periods)")


def noise_factors(dynamics: DynamicsSpec, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` multiplicative noise factors with mean 1 and coefficient of variation ``noise_cv``."""
    cv = dynamics.noise_cv
    if cv <= 0:
        return np.ones(count)
    sigma = np.sqrt(np.log1p(cv * cv))
    return rng.lognormal(-sigma * sigma / 2, sigma, size=count)
