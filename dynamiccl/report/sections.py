"""The report's sections, each a list of blocks that ``html`` renders: ``("p", text)``, ``("note", text)``,
``("headline", [lines])``, ``("pre", text)``, ``("table", (header, rows))`` or ``("plot", (name, png, caption))``.
A section appears only when its data is present; otherwise a note says what is missing."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import pandas as pd

from dynamiccl.report import comm_breakdown, plots
from dynamiccl.report.data import (
    DEFAULT_AGENT, HEADROOM_HEADER, MINUTES_PER_DAY, SEARCH_AGENT, SUMMARY_HEADER, ReportData, comm_time,
    decision_cells, fmt, headline, headroom, headroom_rows, online_efficiency, per_case, provenance, share_note,
    share_text, simulation_line, speedup_text, summary_rows,
)
from dynamiccl.tuning.evaluate import NOTHING_TO_GAIN


@dataclass
class Section:
    id: str
    title: str
    blocks: list[tuple[str, object]] = field(default_factory=list)

    def plots(self) -> list[tuple[str, bytes]]:
        return [(payload[0], payload[1]) for kind, payload in self.blocks if kind == "plot"]


def headline_lines(data: ReportData) -> list[str]:
    """The headline, shared by the HTML page and summary.md."""
    h = headline(data)
    lines = [simulation_line(data),
             f"{h['agent']}: geomean step-time speedup {h['geomean_speedup']:.4f}x over NCCL's default "
             f"({h['episodes']} episodes, {h['cases']} cases)",
             f"worst case: {h['worst_case']} at {h['worst_case_speedup']:.4f}x (geomean over its episodes); "
             f"worst episode {h['min_speedup']:.4f}x; {100 * h['slower_share']:.0f}% of cases more than 1% slower"]
    failures = data.meta.get("failures") or []
    if failures:  # tasks of `dynamiccl evaluate` that failed twice: their rows are not in the file
        lines.insert(0, f"incomplete: {len(failures)} evaluation task(s) failed twice, so these results lack "
                        + "; ".join(str(f.get("missing", f.get("task", "?"))) for f in failures)
                        + "; rerun `dynamiccl evaluate` once the cause is fixed")
    searchless = sorted({str(f.get("case")) for f in failures if f.get("agent") == SEARCH_AGENT})
    if math.isnan(h["search_geomean_speedup"]) and searchless:
        lines.append(f"search reference: missing on {', '.join(searchless)} (its task failed), so no geomean over "
                     "every case; per case in the headroom table")
    elif math.isnan(h["search_geomean_speedup"]):
        lines.append("search reference: not in these results (written before it existed); rerun `dynamiccl evaluate`")
    else:
        lines.append(f"search (the best decision table per case): geomean {h['search_geomean_speedup']:.4f}x; "
                     f"line-rate bound {h['line_rate_bound_geomean_speedup']:.4f}x; no-communication ceiling "
                     f"{h['no_comm_geomean_speedup']:.4f}x")
        share = (f"share of the search's gain {share_text(h['gain_share'])} over the {h['gain_share_cases']} "
                 f"case(s) where the search gains at least {100 * NOTHING_TO_GAIN:.1f}%; " if h["gain_share_cases"]
                 else "")
        lines.append(f"{h['agent']}: mean gap to the search {100 * h['mean_gap_to_search']:+.3f}% of its step time; "
                     f"{share}nothing to gain (search gain < {100 * NOTHING_TO_GAIN:.1f}%, "
                     f"inside run-to-run noise) on {h['nothing_to_gain_cases']} of {h['cases']} cases")
    if "most_saved_case" in h:
        spread = (f"from {h['least_saved_ms']:+.3f} ms ({h['least_saved_min_per_day']:+.1f} min per day) on "
                  f"{h['least_saved_case']} to {h['most_saved_ms']:+.3f} ms ({h['most_saved_min_per_day']:+.1f} min "
                  f"per day) on {h['most_saved_case']}" if h["most_saved_case"] != h["least_saved_case"] else
                  f"{h['most_saved_ms']:+.3f} ms ({h['most_saved_min_per_day']:+.1f} min per day) on "
                  f"{h['most_saved_case']}")
        lines.append(f"{h['agent']} saves per step (NCCL default's mean step time - its own, negative: slower) "
                     f"{spread}; per day = the minutes by which a day of steps at NCCL default's pace finishes "
                     f"sooner ({MINUTES_PER_DAY} x saved / default step time)")
    if "greedy_geomean_speedup" in h:
        lines.append(f"greedy-per-call (a baseline, not an optimum): geomean speedup {h['greedy_geomean_speedup']:.4f}x")
    return lines


def overview(data: ReportData) -> Section:
    blocks: list = [("headline", headline_lines(data)), ("table", (list(SUMMARY_HEADER), summary_rows(data))),
                    ("p", share_note(data))]
    blocks += [("note", note) for note in data.notes]
    return Section("overview", "Overview", blocks)


def decision_maps(data: ReportData) -> Section:
    section = Section("decision-maps", "Decision maps per collective")
    cells = decision_cells(data, data.agent)
    if cells.empty:
        section.blocks.append(("note", data.notes[0] if data.calls is None and data.notes else
                               f"no recorded calls of {data.agent}: the decision maps need them"))
        return section
    section.blocks.append(("p", f"What ran per collective, message size (log2 bucket) and communicator shape: "
                                f"NCCL's default choice beside {data.agent}'s (the most common choice of the "
                                f"bucket's calls over all recorded episodes)."))
    for coll, group in cells.groupby("coll"):
        changed = float((group["changed"] * group["calls"]).sum() / group["calls"].sum())
        section.blocks.append(("plot", (f"decisions-{coll}", plots.decision_map(group, coll, data.agent),
                                        f"{coll}: {int(group['calls'].sum())} calls, {100 * changed:.1f}% "
                                        f"differ from NCCL's default")))
    rows = [[r.coll, str(r.nranks), str(r.nnodes), plots.human_bytes(int(r.bucket)), str(r.calls), r.nccl, r.choice,
             f"{100 * r.changed:.0f}%"] for r in cells.itertuples(index=False)]
    section.blocks.append(("table", (["collective", "nranks", "nnodes", "size >=", "calls", "NCCL default",
                                      data.agent, "changed"], rows)))
    return section


def speedup(data: ReportData) -> Section:
    table = per_case(data)
    return Section("speedup", "Step-time speedup per case", [
        ("p", "Per case (model and layout on its cluster) and dynamics state: the speedup is NCCL default's step "
              "time divided by the agent's. Bars show what it does to the step time, "
              "(agent / default - 1) x 100 = (1 / speedup - 1) x 100, on a symmetric-log axis: below zero the step "
              "is shorter (faster), above zero longer (slower)."),
        ("plot", ("speedup", plots.grouped_bars(table, plots.STEP_TIME_CHANGE_LABEL,
                                                "step-time change per case and dynamics state"),
                  "step-time change against NCCL's default per case | state, every agent (negative: faster)")),
        ("pre", speedup_text(data))])


def time_breakdown(data: ReportData) -> Section:
    section = Section("time", "Where the time goes")
    if data.calls is None:
        section.blocks.append(("note", data.notes[0] if data.notes else "no calls table"))
        return section
    section.blocks.append(("p", f"Summed durations of the recorded collectives (ms per recorded step; "
                                f"overlapped with compute or not), {DEFAULT_AGENT} before and {data.agent} after."))
    if DEFAULT_AGENT not in set(data.calls["agent"]):
        section.blocks.append(("note", f"no {DEFAULT_AGENT} calls recorded: only {data.agent}'s times are shown"))
    for by, what in (("group_kind", "parallelism"), ("coll", "collective")):
        frame = comm_time(data, by)
        if frame.empty:
            continue
        section.blocks.append(("plot", (f"time-by-{by}", plots.comm_time_bars(frame, what),
                                        f"communication time by {what}")))
        rows = [[str(k)] + [fmt(v, 3) for v in row] for k, row in zip(frame.index, frame.to_numpy())]
        section.blocks.append(("table", ([what] + [f"{a} (ms)" for a in frame.columns], rows)))
    return section


def headroom_section(data: ReportData) -> Section:
    section = Section("headroom", "Headroom per case")
    refs = headroom(data)
    if refs.empty or refs["search_speedup"].isna().all():
        section.blocks.append(("note", "no search reference in these results (written before it existed): rerun "
                                       "`dynamiccl evaluate` to get the search, line-rate bound and ceiling columns"))
        return section
    section.blocks.append(("p", f"Per case, speedup over NCCL's default (geomean over its states) of {data.agent}, the "
                                "search reference (the best decision table keyed like the deployed one, found by "
                                "replaying the whole step), every collective at its links' datasheet line rate with no "
                                "interference (the most any NCCL setting could give), and communication costing "
                                f"nothing (the ceiling). Gain share = ({data.agent} - 1) / (search - 1); where the "
                                f"search gains less than {100 * NOTHING_TO_GAIN:.1f}% (run-to-run noise) there is "
                                "nothing to gain and no share."))
    bars = pd.DataFrame({DEFAULT_AGENT: 1.0, data.agent: refs["agent_speedup"], SEARCH_AGENT: refs["search_speedup"],
                         "line-rate bound": refs["line_rate_bound_speedup"],
                         "no-comm ceiling": refs["no_comm_speedup"]}, index=refs.index)
    bars = bars.loc[:, ~bars.columns.duplicated()]
    section.blocks.append(("plot", ("headroom", plots.grouped_bars(bars, plots.STEP_TIME_CHANGE_LABEL,
                                                                   "default, agent, search and the bounds per case"),
                                    "step-time change per case (negative: faster): NCCL default, the agent, the "
                                    "search, the line-rate bound and the no-communication ceiling")))
    section.blocks.append(("table", (list(HEADROOM_HEADER[:2]) + [data.agent] + list(HEADROOM_HEADER[3:]),
                                     headroom_rows(data))))
    section.blocks.append(("p", f"Saved per step: NCCL default's mean step time minus {data.agent}'s (simulated; "
                                f"negative: {data.agent} is slower). Saved per day: the minutes by which the steps "
                                f"of one day of training at NCCL default's pace finish sooner with {data.agent}, "
                                f"{MINUTES_PER_DAY} x saved per step / default step time."))
    return section


def comm_breakdown_section(data: ReportData) -> Section:
    """Where each case's communication goes and whether tuning is worth it (``dynamiccl headroom``'s
    figures, :mod:`dynamiccl.report.comm_breakdown`)."""
    return Section("comm-breakdown", comm_breakdown.TITLE, comm_breakdown.blocks(data))


def regret(data: ReportData) -> Section:
    section = Section("regret", "Gap to the search reference")
    if SEARCH_AGENT not in data.agents or data.steps["gap_to_search"].isna().all():
        section.blocks.append(("note", "no search rows in the results"))
        return section
    gap = per_case(data, "gap_to_search", by_state=False)
    gap = gap[[a for a in gap.columns if a != SEARCH_AGENT]]
    section.blocks.append(("p", "gap_to_search = agent step time / search step time - 1 (mean over the counted "
                                "episodes of each case); negative: faster than the best searched table (an agent that "
                                "decides per call or per state can be)."))
    section.blocks.append(("plot", ("regret", plots.grouped_bars(gap, "step time vs the search's (%; negative = "
                                                                      "faster)", "gap to the search per case",
                                                                 quantity="fraction"),
                                    "gap to the search reference per case")))
    rows = [[str(case)] + [f"{100 * v:+.3f}%" for v in row] for case, row in zip(gap.index, gap.to_numpy())]
    section.blocks.append(("table", (["case"] + list(gap.columns), rows)))
    online = data.steps[data.steps["iteration"] >= 0]
    if not online.empty:
        eff = online_efficiency(data)
        section.blocks.append(("plot", ("online", plots.online_curves(online.assign(case=online["case"].map(data.name))),
                                        "online learners per iteration")))
        rows = [[r.agent, data.name(r.case), str(r.iterations_run), fmt(r.final_speedup), fmt(r.iterations, 0),
                 fmt(r.measurements, 0), str(r.total_measurements), "yes" if r.reached else "no"]
                for r in eff.itertuples(index=False)]
        section.blocks.append(("table", (["agent", "case", "iterations", "final speedup", "iterations to 95%",
                                          "measurements to 95%", "measurements", "reached"], rows)))
    return section


def training(data: ReportData) -> Section:
    curve = data.training_curve
    last = curve.sort_values("timesteps").tail(50)
    return Section("training", "Training curve", [
        ("plot", ("training-curve", plots.training_curve(curve), f"episode speedups during training "
                                                                 f"({len(curve)} episodes)")),
        ("p", f"{len(curve)} training episodes up to {int(curve['timesteps'].max()):,} timesteps; mean speedup "
              f"of the last {len(last)}: {last['speedup'].mean():.4f}x.")])


def calibration(data: ReportData) -> Section:
    from dynamiccl.costmodel.calibration import format_summary

    parts = [
        ("p", "Median relative error of the world simulator's predicted collective time (busbw) against the "
              "measured nccl-tests tables, NCCL's own model beside it."),
        ("plot", ("calibration", plots.calibration_errors(data.calibration), "calibration error per measured table"))]
    if data.calibration.get("points"):
        parts.append(("plot", ("calibration-scatter", plots.calibration_scatter(data.calibration["points"]),
                               "predicted against measured busbw, every measured row")))
    else:
        parts.append(("p", "This calibration JSON has no per-row points (written by an older `dynamiccl validate "
                           "--json`), so there is no predicted-versus-measured scatter."))
    parts.append(("pre", format_summary(data.calibration)))
    return Section("calibration", "Simulator calibration", parts)


def table_section(data: ReportData) -> Section:
    table = data.table
    return Section("table", "Decision table", [
        ("p", f"{len(table.rules)} rules, format version {table.version}, {len(table.steps)} step lines, "
              f"job environment: {table.job_env or 'none'}."),
        ("pre", table.describe())])


def provenance_section(data: ReportData) -> Section:
    return Section("provenance", "Provenance", [("table", (["field", "value"], [list(r) for r in provenance(data)]))])


def builders(data: ReportData, extra: Sequence[Callable[[ReportData], Section]] = ()
             ) -> list[Callable[[ReportData], Section]]:
    """The section builders that apply to ``data``, in page order; ``extra`` (sections other
    modules build on this one, e.g. ``report.verify``) go before the provenance."""
    out = [overview, headroom_section, comm_breakdown_section, decision_maps, speedup, time_breakdown, regret]
    if data.training_curve is not None:
        out.append(training)
    if data.calibration is not None:
        out.append(calibration)
    if data.table is not None:
        out.append(table_section)
    return out + list(extra) + [provenance_section]


__all__ = ["Section", "builders", "headline_lines"]
