"""Conditions that change over time: background network traffic and run-to-run noise.

``CongestionProcess`` plays the ``[dynamics]`` background-traffic process of an environment spec:
a two-state (quiet / congested) continuous-time Markov chain. Periods are exponential with mean
``mean_period_ms``, split so that the long-run congested share is ``congested_fraction``; while
congested, background traffic takes ``congested_share`` of each NIC. Shared clusters show exactly
this on/off pattern from other jobs' collectives and checkpoints; the process is seeded, so a
replay is reproducible.

``noise_factors`` draws the multiplicative run-to-run variation (log-normal with the spec's
``noise_cv``; nccl-tests repeats typically vary by a few percent).
"""

from __future__ import annotations

import numpy as np

from dynamiccl.envspec import DynamicsSpec


class CongestionProcess:
    """Seeded on/off background traffic. ``share_at(time_us)`` is the NIC share taken then (0..0.95).

    Args:
        dynamics: the spec's ``[dynamics]`` table.
        seed: random seed; the same seed gives the same timeline.
    """

    def __init__(self, dynamics: DynamicsSpec, seed: int = 0):
        self.dynamics = dynamics
        self.rng = np.random.default_rng(seed)
        self._edges = np.zeros(1)        # start time of each period, µs
        self._congested = np.zeros(1, dtype=bool)
        active = dynamics.congestion == "markov" and dynamics.congested_fraction > 0 and dynamics.congested_share > 0
        self._active = active
        if active:
            self._congested[0] = self.rng.random() < dynamics.congested_fraction

    def _period_us(self, congested: bool) -> float:
        d = self.dynamics
        # Two states with mean lengths m_c and m_q: m_c / (m_c + m_q) = fraction, mean of both = period.
        mean_ms = 2 * d.mean_period_ms * (d.congested_fraction if congested else 1 - d.congested_fraction)
        return float(self.rng.exponential(max(mean_ms, 1e-6) * 1000.0))

    def period_at(self, time_us: float) -> tuple[bool, float]:
        """(congested?, end of that period in µs) for the period holding ``time_us``; inactive
        processes are one quiet period that never ends."""
        if not self._active:
            return False, float("inf")
        self.share_at(time_us)  # draws periods up to time_us
        index = int(np.searchsorted(self._edges, time_us, side="right")) - 1
        return bool(self._congested[max(index, 0)]), float(self._edges[index + 1])

    def share_at(self, time_us) -> np.ndarray:
        """Background share of NIC bandwidth at each time (µs, any order), as an array."""
        times = np.asarray(time_us, dtype=np.float64)
        if not self._active:
            return np.zeros_like(times)
        horizon = float(times.max(initial=0.0))
        # Periods are drawn in order, each exactly once, only as far as asked: the timeline of a
        # seed is the same however (and in whatever chunks) it is queried.
        while self._edges[-1] <= horizon:
            end = self._edges[-1] + self._period_us(bool(self._congested[-1]))
            self._edges = np.append(self._edges, end)
            self._congested = np.append(self._congested, ~self._congested[-1])
        index = np.searchsorted(self._edges, times, side="right") - 1
        return np.where(self._congested[np.clip(index, 0, None)], self.dynamics.congested_share, 0.0)


def noise_factors(dynamics: DynamicsSpec, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` multiplicative noise factors with mean 1 and coefficient of variation ``noise_cv``."""
    cv = dynamics.noise_cv
    if cv <= 0:
        return np.ones(count)
    sigma = np.sqrt(np.log1p(cv * cv))
    return rng.lognormal(-sigma * sigma / 2, sigma, size=count)
