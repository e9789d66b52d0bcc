"""The report's "Where the communication goes, and is tuning worth it" section (``dynamiccl headroom`` per case).

For every case of the results: NCCL default's step broken down as ``dynamiccl headroom`` does
(:func:`dynamiccl.tuning.headroom.default_breakdown`: per group kind and collective, hidden behind
compute, exposed, and the compute it slows down), the four step times the results hold (NCCL's
default, the search reference, the line-rate bound and the no-communication ceiling, means over the
case's states), the measured step time where the case's trace carries timestamps, and the verdict
(:func:`dynamiccl.tuning.headroom.verdict`, against the default run-to-run noise).

The results record step times, not where the communication went: the breakdown is recomputed from
the case's trace and cluster spec with the results' cost model, over the results' states. A case
whose trace is no longer on this machine, a results file priced by a model that runs real
collectives, or a recomputed default step time that differs from the recorded one (the trace, the
spec or the world's parameters changed since) is said in a note, never silently replaced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from dynamiccl.errors import InputError
from dynamiccl.report.data import SEARCH_AGENT, ReportData
from dynamiccl.tuning.evaluate import NOTHING_TO_GAIN

TITLE = "Where the communication goes, and is tuning worth it"
BREAKDOWN_HEADER = ("group", "collective", "calls", "total (ms)", "hidden (ms)", "exposed (ms)",
                    "slowed compute (ms)")
STEP_HEADER = ("step time", "ms", "% of default")
RECOMPUTED_TOLERANCE = 1e-6  # relative: a recomputed default step time this close is the recorded one


@dataclass
class CaseHeadroom:
    """One case of the results: its readable ``name``; ``times``: (what, step time µs) as
    ``Headroom.step_times`` orders them; ``verdict`` (None when the results hold no search);
    ``breakdown``: a :class:`~dynamiccl.tuning.headroom.CommBreakdown` or None; ``notes``."""

    name: str
    times: list[tuple[str, float]]
    verdict: str | None
    breakdown: object | None
    notes: list[str]


def _recorded_times(rows) -> dict[str, float]:
    return {column: float(rows[column].mean()) for column in
            ("default_step_time_us", "search_step_time_us", "line_rate_bound_step_time_us", "no_comm_step_time_us")}


def case_headrooms(data: ReportData) -> list[CaseHeadroom]:
    """Every case's :class:`CaseHeadroom`, computed once per report (kept on ``data``)."""
    if data.case_headrooms is not None:
        return data.case_headrooms
    from dynamiccl.costmodel.registry import COST_MODELS

    model = str(data.meta.get("cost_model") or "")
    entry = COST_MODELS.get(model)
    steps = data.steps
    reference = steps[(steps["agent"] == SEARCH_AGENT) & (steps["iteration"] < 0)]
    if reference.empty:
        reference = steps
    out = []
    for case, rows in reference.groupby("case", sort=False):
        recorded = _recorded_times(rows)
        states = sorted(int(s) for s in rows["state"].unique())
        notes: list[str] = []
        times = [("NCCL default", recorded["default_step_time_us"]),
                 ("best table found (search)", recorded["search_step_time_us"]),
                 ("every collective at line rate", recorded["line_rate_bound_step_time_us"]),
                 ("communication free", recorded["no_comm_step_time_us"])]
        verdict_text = None
        if any(math.isnan(value) for _, value in times):
            notes.append("no search reference or bounds in these results (written before them): rerun "
                         "`dynamiccl evaluate`")
            times = times[:1]
        else:
            from dynamiccl.tuning.headroom import verdict

            verdict_text = verdict(*(value for _, value in times), noise=NOTHING_TO_GAIN)
        breakdown = None
        trace, env = str(rows["trace"].iloc[0]), str(rows["env_spec"].iloc[0])
        if entry is None or entry.runs_collectives:
            notes.append(f"the breakdown is not recomputed: the results' cost model '{model}' "
                         + ("is unknown to this dynamiccl" if entry is None else "runs real collectives"))
        elif not Path(trace).is_file():
            notes.append(f"the breakdown needs the case's trace {trace}, which is not on this machine")
        else:
            breakdown, measured, note = _recompute(trace, env, model, states, recorded["default_step_time_us"])
            if note:
                notes.append(note)
            if measured is not None:
                times.append(("measured (trace timestamps, slowest rank)", measured))
        out.append(CaseHeadroom(data.name(case), times, verdict_text, breakdown, notes))
    data.case_headrooms = out
    return out


def _recompute(trace: str, env: str, model: str, states: list[int], recorded_default_us: float):
    """(breakdown, measured step time µs or None, a note or None) of one case, recomputed."""
    from dynamiccl.trace.store import Trace
    from dynamiccl.trace.summary import measured_step_time_us
    from dynamiccl.tuning.cases import Case, load_case
    from dynamiccl.tuning.headroom import default_breakdown

    try:
        loaded = load_case(Case(trace, env), model)
    except InputError as err:
        return None, None, f"the breakdown could not be recomputed: {err}"
    breakdown = default_breakdown(loaded, states)
    measured = measured_step_time_us(Trace.read(trace), loaded.program.step)
    note = None
    if abs(breakdown.step_time_us - recorded_default_us) > RECOMPUTED_TOLERANCE * recorded_default_us:
        note = (f"recomputed now, NCCL default's step takes {breakdown.step_time_us / 1e3:.3f} ms, not the "
                f"{recorded_default_us / 1e3:.3f} ms of the results: the trace, the spec or the world's parameters "
                "changed since; the breakdown is today's")
    return breakdown, measured, note


def breakdown_rows(breakdown) -> list[list[str]]:
    """The breakdown as text cells (:data:`BREAKDOWN_HEADER`, ms per step per GPU), "all" last."""
    from dynamiccl.tuning.headroom import BREAKDOWN_FIELDS, calls_text

    return [[row.group_kind, row.collective, calls_text(row.calls)]
            + [f"{getattr(row, name) / 1e3:.3f}" for name in BREAKDOWN_FIELDS[1:]]
            for row in [*breakdown.rows, breakdown.union]]


def step_rows(case: CaseHeadroom) -> list[list[str]]:
    """The step times as text cells (:data:`STEP_HEADER`)."""
    default = case.times[0][1]
    return [[what, f"{value / 1e3:.3f}", f"{100 * value / default:.2f}%"] for what, value in case.times]


def step_line(breakdown) -> str:
    """How one GPU's step adds up."""
    return (f"A GPU's step: compute {breakdown.compute_us / 1e3:.3f} ms + slowed by communication beside it "
            f"{breakdown.union.slowed_compute_us / 1e3:.3f} ms + exposed communication "
            f"{breakdown.union.exposed_us / 1e3:.3f} ms + idle {breakdown.idle_us / 1e3:.3f} ms = "
            f"{breakdown.step_time_us / 1e3:.3f} ms.")


def blocks(data: ReportData) -> list[tuple[str, object]]:
    """The section's blocks (``dynamiccl.report.sections``' kinds): an explanation, then per case its
    verdict, breakdown table, how a GPU's step adds up, step times and notes."""
    out: list[tuple[str, object]] = []
    out.append(("p", "Per case, as `dynamiccl headroom` prints it: where NCCL default's communication time "
                            "goes, per GPU of the step (mean over its GPUs, ms per step, mean over the states): "
                            "total running time (a call waiting for a compute kernel's SMs is not running yet), "
                            "hidden (the GPU computes meanwhile), exposed (it computes nothing meanwhile), and "
                            "the compute time the calls add by running beside compute. "
                            "Calls of different groups can run at once, so the rows can add up to more than "
                            "'all communication'. Then the four step times and a verdict against the "
                            f"~{100 * NOTHING_TO_GAIN:.1f}% run-to-run noise of a training step (pass your own runs' "
                            "noise to `dynamiccl headroom --noise-pct`). Simulated, not measured, except the "
                            "measured line of a trace with timestamps."))
    for case in case_headrooms(data):
        out.append(("p", f"{case.name}" + (f": {case.verdict}." if case.verdict else ".")))
        if case.breakdown is not None:
            out.append(("table", (list(BREAKDOWN_HEADER), breakdown_rows(case.breakdown))))
            out.append(("p", step_line(case.breakdown)))
        out.append(("table", (list(STEP_HEADER), step_rows(case))))
        out += [("note", note) for note in case.notes]
    return out


def markdown_lines(data: ReportData) -> list[str]:
    """summary.md's part: one verdict per case."""
    cases = case_headrooms(data)
    if not cases:
        return []
    lines = ["## Is tuning worth it (per case)", ""]
    for case in cases:
        default_ms = case.times[0][1] / 1e3
        exposed = (f"; exposed communication {case.breakdown.union.exposed_us / 1e3:.3f} ms per GPU"
                   if case.breakdown is not None else "")
        lines.append(f"- {case.name} (NCCL default {default_ms:.3f} ms{exposed}): "
                     + (case.verdict or "no search reference in these results"))
    return lines


__all__ = ["BREAKDOWN_HEADER", "CaseHeadroom", "STEP_HEADER", "TITLE", "blocks", "breakdown_rows", "case_headrooms",
           "markdown_lines", "step_rows"]
