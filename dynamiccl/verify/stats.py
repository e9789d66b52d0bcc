"""Is the job faster with the table than without it, beyond the noise of its runs?

``dynamiccl verify`` runs the job in arms, A (NCCL alone) and B (with the table), in the order
A1 B1 A2 (ABA) or A1 B1 B2 A2 (ABBA), and hands :func:`compare` each arm's step times (seconds,
steps x ranks). The method is the one experts use to prove an NCCL setting (A/B/A runs of the real
job, warm-up dropped, slowest-rank median step time, the control's drift reported beside the
delta, and no change adopted when the delta is inside the drift: the GB200 A/B/A report of
hao-ai-lab/FastVideo PR #1630):

1. per step, the slowest rank's time: the job's step ends when its slowest rank's does;
2. per arm, the first ``warmup_steps`` steps are dropped and the next ``steps`` kept; the arm's
   figure is their median;
3. control = the mean of the A arms' medians, treatment = the mean of the B arms' medians;
   ``ratio`` = treatment / control and ``delta`` = ratio - 1 (negative: faster). B sits between the
   A runs, so a drift linear in time cancels;
4. ``drift`` = A2 / A1 - 1, the control against itself (and B2 / B1 - 1 under ABBA);
5. a 95% confidence interval of ``delta``: a percentile bootstrap. Each of ``RESAMPLES`` resamples
   (seeded) draws every arm's kept steps with replacement (the noise of the steps within a run) and
   moves every arm's median by a factor exp(N(0, level SD)) (~ 1 + N(0, level SD) when it is small,
   and never negative when it is not): the arms are separate runs of the job,
   and the level of a run moves from one run to the next by more than its own steps can show. The
   level SD is ``run_to_run_sd`` (~0.5% on a quiet allocation) or what the repeated arms show,
   ``|A2/A1 - 1| / sqrt(2)`` (with ``|B2/B1 - 1|`` under ABBA), whichever is larger; when the
   repeated arms show more than 3x the stated SD, their estimate (from 1 or 2 pairs of runs) is
   widened by Student's t (:func:`level_sd_of`), so a noisy machine widens the interval instead of
   producing a verdict;
6. the verdict: ``faster`` when the whole interval is below 0 and the gain exceeds the control's
   drift; ``slower`` the mirror image; otherwise ``no difference detectable at this noise`` (a delta
   inside the drift is no evidence, however narrow its interval).

``tests/test_verify.py`` measures this function's false-positive rate over simulated null runs
(step noise, run-to-run level shifts and a drift, as real runs have) and its power against a
stated slowdown.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from dynamiccl.errors import InputError

FASTER = "faster"
NO_DIFFERENCE = "no difference detectable at this noise"
SLOWER = "slower"
VERDICTS = (FASTER, NO_DIFFERENCE, SLOWER)

ORDERS = {"ABA": ("A1", "B1", "A2"), "ABBA": ("A1", "B1", "B2", "A2")}
RESAMPLES = 2000
CONFIDENCE = 0.95
# Run-to-run SD of a training job's step time on a quiet allocation: ~0.5% (a 64x GH200 + Slingshot
# MoE training campaign, where switch-group placement moved the step 2.5-6.6% against this SD); a
# user who knows the SD of their own runs passes it (`dynamiccl verify --run-to-run-sd`).
RUN_TO_RUN_SD = 0.005
SEED = 0
Z_975 = 1.959964                   # the standard normal's 97.5% quantile
T_975 = {1: 12.7062, 2: 4.3027}    # Student's t 97.5% quantiles for 1 and 2 degrees of freedom
CONTRADICTED = 3.0                 # repeated arms this many times the stated SD contradict it
METHOD = ("per step the slowest rank; per arm the median of the steps after warm-up; delta = mean of the B arms' "
          "medians / mean of the A arms' medians - 1; 95% percentile bootstrap CI ({resamples} resamples, seed "
          "{seed}: the steps of each arm resampled with replacement, each arm's median moved by a log-normal run-to-run "
          "level factor of SD max({sd:.2%}, the repeated arms' |A2/A1 - 1|/sqrt(2)), the latter widened by Student's t "
          "when above 3 x {sd:.2%}); a verdict needs the CI to exclude 0 and |delta| to exceed the control's "
          "drift (A2/A1 - 1)")


def arms_of(order: str) -> tuple[str, ...]:
    """The arms of ``order`` ("ABA" or "ABBA") in the order they run.

    Raises:
        InputError: another order.
    """
    if order not in ORDERS:
        raise InputError("--order", None, f"{order!r}; expected one of {', '.join(ORDERS)}")
    return ORDERS[order]


@dataclass(frozen=True)
class Arm:
    """One arm after step 2: ``step_times_s`` are the kept steps' slowest-rank times (seconds)."""

    name: str
    step_times_s: tuple[float, ...]
    median_s: float
    recorded_steps: int
    ranks: int


@dataclass(frozen=True)
class Comparison:
    """The outcome of :func:`compare`; ``delta``, ``ci_*``, ``drift``, ``run_to_run_sd`` (stated) and
    ``level_sd`` (used in the interval) are fractions (0.01 = 1%; a negative delta is a faster job);
    ``contradicted``: the repeated arms varied more than 3x the stated run-to-run SD."""

    arms: tuple[Arm, ...]
    ratio: float
    delta: float
    ci_low: float
    ci_high: float
    drift: float
    b_drift: float | None
    run_to_run_sd: float
    level_sd: float
    contradicted: bool
    verdict: str
    method: str

    def to_json(self) -> dict:
        """A JSON-ready dict (the arms with their kept step times)."""
        out = asdict(self)
        out["arms"] = [asdict(arm) | {"step_times_s": list(arm.step_times_s)} for arm in self.arms]
        return out

    def sentence(self) -> str:
        """One line a user can act on: the verdict, the delta with its CI, the drift and the floor."""
        change = f"{self.delta:+.2%} (95% CI {self.ci_low:+.2%} .. {self.ci_high:+.2%})"
        yardstick = f"control drift A2/A1 {self.drift:+.2%}; run-to-run SD {self.level_sd:.2%} in the CI"
        if self.verdict == FASTER:
            return f"faster: the step takes {change} with the table ({yardstick})"
        if self.verdict == SLOWER:
            return f"slower: the step takes {change} with the table ({yardstick})"
        return f"no difference detectable at this noise: {change} is inside the noise ({yardstick})"


def slowest_rank(step_times_s: np.ndarray) -> np.ndarray:
    """Step 1: per step (row) the slowest rank's time (columns are ranks)."""
    return np.asarray(step_times_s, dtype=float).max(axis=1)


def kept_steps(name: str, step_times_s: np.ndarray, warmup_steps: int, steps: int) -> Arm:
    """Step 2 for one arm: drop ``warmup_steps``, keep the next ``steps`` slowest-rank times.

    Raises:
        InputError: the arm recorded fewer than ``warmup_steps + steps`` steps (naming the arm,
            what it recorded and what is needed).
    """
    matrix = np.asarray(step_times_s, dtype=float).reshape(len(step_times_s), -1)
    recorded = matrix.shape[0]
    if recorded < warmup_steps + steps:
        raise InputError(f"arm {name}", None, f"the job recorded {recorded} step(s); verify needs at least "
                         f"{warmup_steps + steps} ({warmup_steps} warm-up + {steps} analysed): run the job for "
                         f"more steps, or lower --warmup-steps / --steps")
    kept = slowest_rank(matrix)[warmup_steps:warmup_steps + steps]
    return Arm(name, tuple(float(t) for t in kept), float(np.median(kept)), recorded, matrix.shape[1])


def shown_sd(repeats: list[float]) -> float:
    """The SD of one run's level that the repeated arms' changes show: their root mean square / sqrt(2)."""
    return math.sqrt(sum(d * d for d in repeats) / len(repeats) / 2)


def level_sd_of(repeats: list[float], run_to_run_sd: float) -> float:
    """Step 5's level SD, from ``run_to_run_sd`` (stated) and the repeated arms' changes
    (``repeats``: A2/A1 - 1 and, under ABBA, B2/B1 - 1).

    ``shown`` (:func:`shown_sd`) is the SD of one run's level when two runs differ by that much.
    While it is at most ``CONTRADICTED`` (3) x the stated SD, the larger of the two is used. Beyond that the repeated arms contradict the stated SD (a noisy machine), and ``shown``
    alone is the evidence: an estimate from 1 (ABA) or 2 (ABBA) pairs of runs, so it is widened by
    Student's t quantile for that many degrees of freedom over the normal's (12.7 / 1.96 for ABA).
    """
    shown = shown_sd(repeats)
    if shown <= CONTRADICTED * run_to_run_sd:
        return max(run_to_run_sd, shown)
    return shown * T_975[len(repeats)] / Z_975


def bootstrap_deltas(arms: list[Arm], rng: np.random.Generator, level_sd: float,
                     resamples: int = RESAMPLES) -> np.ndarray:
    """Step 5: ``resamples`` deltas, each from the steps of every arm resampled with replacement and
    every arm's median moved by a run-to-run level factor exp(N(0, ``level_sd``))."""
    medians = {}
    for arm in arms:
        times = np.asarray(arm.step_times_s)
        picks = rng.integers(0, len(times), size=(resamples, len(times)))
        level = np.exp(rng.normal(0.0, level_sd, size=resamples))
        medians[arm.name] = np.median(times[picks], axis=1) * level
    return _ratio(medians) - 1.0


def _ratio(medians: dict) -> np.ndarray | float:
    """Step 3: mean of the B arms' medians / mean of the A arms' (arrays: one per resample)."""
    a = [m for name, m in medians.items() if name.startswith("A")]
    b = [m for name, m in medians.items() if name.startswith("B")]
    return (sum(b) / len(b)) / (sum(a) / len(a))


def decide(delta: float, ci_low: float, ci_high: float, drift: float) -> str:
    """Step 6: the verdict from the delta, its interval and the control's drift."""
    beyond_drift = abs(delta) > abs(drift)
    if ci_high < 0 and beyond_drift:
        return FASTER
    if ci_low > 0 and beyond_drift:
        return SLOWER
    return NO_DIFFERENCE


def compare(step_times_s: dict[str, np.ndarray], warmup_steps: int, steps: int, *,
            run_to_run_sd: float = RUN_TO_RUN_SD, seed: int = SEED, resamples: int = RESAMPLES) -> Comparison:
    """Compare the B arms with the A arms (steps 1-6 of the module docstring).

    Args:
        step_times_s: arm name (``A1``, ``B1``, ``A2``[, ``B2``]) -> step times in seconds, one row
            per step and one column per rank, in the order the arms ran.
        warmup_steps: steps dropped at the start of every arm.
        steps: steps analysed per arm after the warm-up.
        run_to_run_sd: the SD of a run's level, as a fraction of the step time (step 5).
        seed: the bootstrap's seed (the same data give the same interval).
        resamples: bootstrap resamples.

    Raises:
        InputError: an arm recorded too few steps; no A1 and A2 arm or no B arm; ``steps`` < 2.
    """
    if steps < 2 or warmup_steps < 0:
        raise InputError("--steps", None, f"{steps} analysed step(s) after {warmup_steps} warm-up; expected "
                         "--steps >= 2 and --warmup-steps >= 0")
    if not 0 <= run_to_run_sd < 0.5:
        raise InputError("--run-to-run-sd", None, f"{run_to_run_sd}; expected a fraction of the step time in "
                         "[0, 0.5), e.g. 0.005 for 0.5%")
    names = list(step_times_s)
    if not {"A1", "A2"} <= set(names) or not any(n.startswith("B") for n in names):
        raise InputError("verify", None, f"arms {names}; expected A1, A2 and at least one B arm")
    arms = [kept_steps(name, step_times_s[name], warmup_steps, steps) for name in names]
    by_name = {arm.name: arm for arm in arms}
    ratio = float(_ratio({arm.name: arm.median_s for arm in arms}))
    drift = by_name["A2"].median_s / by_name["A1"].median_s - 1
    b_drift = by_name["B2"].median_s / by_name["B1"].median_s - 1 if "B2" in by_name else None
    repeats = [drift] + ([b_drift] if b_drift is not None else [])
    level_sd = level_sd_of(repeats, run_to_run_sd)
    deltas = bootstrap_deltas(arms, np.random.default_rng(seed), level_sd, resamples)
    tail = (1 - CONFIDENCE) / 2 * 100
    ci_low, ci_high = (float(q) for q in np.percentile(deltas, [tail, 100 - tail]))
    delta = ratio - 1
    contradicted = shown_sd(repeats) > CONTRADICTED * run_to_run_sd
    return Comparison(tuple(arms), ratio, delta, ci_low, ci_high, drift, b_drift, run_to_run_sd, level_sd, contradicted,
                      decide(delta, ci_low, ci_high, drift),
                      METHOD.format(resamples=resamples, seed=seed, sd=run_to_run_sd))
