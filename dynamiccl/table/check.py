"""``dynamiccl table check``: does a decision table make a user's step faster or slower?

``check_cases(table, cases)`` replays each case (a trace step on an environment spec) under a few
dynamics states with NCCL's own choices and with the table applied as the plugin applies it
(``TableAgent``), in the world simulator (or another registered cost model). Per case:

- both step times (mean over the states, µs) and the *noise*: the run-to-run spread of NCCL's
  default step over those states (coefficient of variation) -- what separates a real effect from
  a lucky draw, as an A/B/A run of the real job would;
- the ratio ``NCCL's default step / the table's step``, paired per state (same congestion timeline
  and noise), as a geometric mean with its lowest and highest state;
- the calls responsible for any loss: every call the table changed, grouped by (collective, size,
  communicator, the table's choice), with NCCL's choice beside the table's and the time the change
  added to the step (µs per step, mean over the states; ``dynamiccl.tuning.attribution``).

A table is *refused* on a case when its ratio is below ``1 - tolerance``. ``TOLERANCE`` is 0.5%:
run-to-run step-time SD on a quiet allocation is ~0.5% (FastVideo GB200 FSDP2 A/B/A report; GH200
MoE campaign), so a smaller loss cannot be told from noise by measuring the real job, and it is the
bound issue 14 sets for every shipped table ("never slower than 0.995x NCCL's default").
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Sequence

from tqdm.auto import tqdm

from dynamiccl.costmodel.protocol import CostModelOptions
from dynamiccl.costmodel.registry import DEFAULT_COST_MODEL
from dynamiccl.nccl import FUNC_OP, Algorithm, Func, Protocol
from dynamiccl.table.model import DecisionTable
from dynamiccl.tuning.agents import TableAgent
from dynamiccl.tuning.attribution import compare_with_default
from dynamiccl.tuning.cases import Case, load_case

TOLERANCE = 0.005
CHECK_STATES = 4          # dynamics states a single check replays (noise needs more than one)
CHECK_STATE_OFFSET = 2000  # states no experiment config of the project trains or evaluates on
RESPONSIBLE_SHOWN = 10    # calls listed when a table is refused


@dataclass(frozen=True)
class ResponsibleCall:
    """Calls of one kind the table changed: collective ``coll``, ``nbytes`` (NCCL's nBytes),
    communicator ``nranks`` / ``nnodes``, ``calls_per_step`` of them; ``nccl_choice`` and
    ``table_choice`` in words; ``lost_us``: what the change added to the step (µs per step, mean
    over the states; negative = saved)."""

    coll: str
    nbytes: int
    nranks: int
    nnodes: int
    calls_per_step: float
    nccl_choice: str
    table_choice: str
    lost_us: float

    def describe(self) -> str:
        """One line: the call, both choices and the time lost."""
        return (f"{self.coll} {self.nbytes:,} B on {self.nranks} rank(s)/{self.nnodes} node(s) "
                f"(x{self.calls_per_step:g} per step): NCCL {self.nccl_choice} -> table {self.table_choice}, "
                f"{self.lost_us:+,.1f} us per step")


@dataclass(frozen=True)
class CaseCheck:
    """The check of one case (module docstring). Times in µs; ``ratio`` > 1 = the table is faster."""

    label: str
    trace: str
    env: str
    states: tuple[int, ...]
    default_step_us: float
    table_step_us: float
    ratio: float
    ratio_low: float
    ratio_high: float
    noise: float
    tolerance: float
    changed_calls: float
    calls: tuple[ResponsibleCall, ...] = field(default=())

    @property
    def passed(self) -> bool:
        """Whether the table's step is at most ``tolerance`` slower than NCCL's default."""
        return self.ratio >= 1.0 - self.tolerance

    @property
    def responsible(self) -> tuple[ResponsibleCall, ...]:
        """The changed calls that made the step longer, largest loss first."""
        return tuple(call for call in self.calls if call.lost_us > 0.0)

    def to_json(self) -> dict:
        """JSON-serialisable form (what ``--json`` and the sweep's results file hold)."""
        return {"case": self.label, "trace": self.trace, "env": self.env, "states": list(self.states),
                "default_step_us": self.default_step_us, "table_step_us": self.table_step_us,
                "ratio": self.ratio, "ratio_low": self.ratio_low, "ratio_high": self.ratio_high,
                "noise": self.noise, "tolerance": self.tolerance, "passed": self.passed,
                "changed_calls_per_step": self.changed_calls,
                "responsible": [vars(call) for call in self.responsible]}

    def render(self) -> str:
        """The human report: both step times with the noise, the ratio, the verdict, the calls."""
        lines = [f"{self.label}: {len(self.states)} dynamics state(s)",
                 f"  NCCL's default  {self.default_step_us / 1e3:12,.3f} ms   (run-to-run noise {self.noise:.2%})",
                 f"  with the table  {self.table_step_us / 1e3:12,.3f} ms   "
                 f"({self.changed_calls:g} call(s) per step changed)",
                 f"  ratio           {self.ratio:12.4f}x  (states {self.ratio_low:.4f}x .. {self.ratio_high:.4f}x; "
                 f"> 1 = the table is faster)"]
        if self.passed:
            lines.append(f"  verdict: passes (tolerance {self.tolerance:.1%})")
        else:
            lines.append(f"  verdict: REFUSED: the table makes this step {1 - self.ratio:.2%} slower "
                         f"(tolerance {self.tolerance:.1%}); the calls responsible:")
            shown = self.responsible[:RESPONSIBLE_SHOWN]
            lines += [f"    {call.describe()}" for call in shown]
            if len(self.responsible) > len(shown):
                lines.append(f"    ... and {len(self.responsible) - len(shown)} more")
        return "\n".join(lines) + "\n"


def _choice_names(costs, row: int, action: int) -> str:
    """What the call really runs under ``action``: algorithm/protocol/channels."""
    algo, proto, channels = int(costs.algo[row, action]), int(costs.proto[row, action]), int(costs.channels[row, action])
    algo_name = Algorithm(algo).name_lower if algo >= 0 else "?"
    proto_name = Protocol(proto).name_lower if proto >= 0 else "?"
    return f"{algo_name}/{proto_name}/{channels}ch"


def check_cases(table: DecisionTable, cases: Sequence[Case], *, states: Sequence[int] | None = None,
                model: str = DEFAULT_COST_MODEL, tolerance: float = TOLERANCE,
                progress: bool = False, cost_options: CostModelOptions | None = None) -> list[CaseCheck]:
    """Check ``table`` on every case (module docstring); one ``CaseCheck`` per case, in order.

    Args:
        states: the dynamics states replayed (default ``CHECK_STATE_OFFSET`` ..
            ``+CHECK_STATES - 1``); model: the registered cost model (made with ``cost_options``);
            tolerance: the share of
            step time the table may lose before it is refused.

    Raises:
        InputError: a case that cannot be replayed (unreadable trace or spec, nodes too small).
        ValueError: no states, or a tolerance outside [0, 1).
    """
    from dynamiccl.tuning.env import TuningEnv

    states = tuple(range(CHECK_STATE_OFFSET, CHECK_STATE_OFFSET + CHECK_STATES) if states is None else states)
    if not states:
        raise ValueError("a check needs at least one dynamics state")
    if not 0.0 <= tolerance < 1.0:
        raise ValueError(f"tolerance must be in [0, 1), got {tolerance}")
    results = []
    bar = tqdm(total=len(cases) * len(states), disable=not progress, unit="step", desc="check")
    try:
        for case in cases:
            env = TuningEnv([case], model=model, states=1, cost_options=cost_options)
            agent = TableAgent(table)
            costs = load_case(case, model, cost_options).costs
            comparisons = []
            for state in states:
                bar.set_postfix_str(case.label, refresh=False)
                comparisons.append(compare_with_default(env, agent, 0, state))
                bar.update()
            results.append(_case_check(case, comparisons, costs, tolerance))
    finally:
        bar.close()
    return results


def _case_check(case: Case, comparisons, costs, tolerance: float) -> CaseCheck:
    ratios = [c.ratio for c in comparisons]
    defaults = [c.default_step_time_us for c in comparisons]
    n = len(comparisons)
    grouped: dict[tuple, list[float]] = {}  # (coll, nbytes, nranks, nnodes, row, action) -> [count, lost_us]
    for comparison in comparisons:
        for effect in comparison.effects:
            key = (effect.key.coll, effect.key.nbytes, effect.key.nranks, effect.key.nnodes,
                   costs.call_row[effect.call], effect.action)
            entry = grouped.setdefault(key, [0.0, 0.0])
            entry[0] += 1
            entry[1] += effect.lost_us
    calls = sorted((ResponsibleCall(FUNC_OP[Func(coll)], nbytes, nranks, nnodes, count / n,
                                    _choice_names(costs, row, 0),
                                    _choice_names(costs, row, action), lost / n)
                    for (coll, nbytes, nranks, nnodes, row, action), (count, lost) in grouped.items()),
                   key=lambda call: -call.lost_us)
    return CaseCheck(
        label=case.label, trace=case.trace, env=case.env, states=tuple(c.state for c in comparisons),
        default_step_us=statistics.fmean(defaults), table_step_us=statistics.fmean(c.step_time_us for c in comparisons),
        ratio=math.exp(statistics.fmean(math.log(r) for r in ratios)), ratio_low=min(ratios), ratio_high=max(ratios),
        noise=statistics.pstdev(defaults) / statistics.fmean(defaults) if n > 1 else 0.0, tolerance=tolerance,
        changed_calls=sum(len(c.effects) for c in comparisons) / n, calls=tuple(calls))


__all__ = ["CHECK_STATES", "CHECK_STATE_OFFSET", "TOLERANCE", "CaseCheck", "ResponsibleCall", "check_cases"]
