"""summary.md: the headline, the per-agent table and where the rest of the report is."""

from __future__ import annotations

from dynamiccl.report import comm_breakdown
from dynamiccl.report.data import (
    HEADROOM_HEADER, MINUTES_PER_DAY, SUMMARY_HEADER, ReportData, headroom_rows, share_note, summary_rows,
)


def _row(cells) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def render(data: ReportData, headline: list[str], plots: list[str], sections: list[str]) -> str:
    """The Markdown summary; ``plots`` are paths relative to the report directory."""
    lines = [f"# dynamiccl report: {data.results_path}", "", "## Headline", ""]
    lines += [f"- {line}" for line in headline]
    lines += ["", "## Per agent", "", _row(SUMMARY_HEADER), _row(["---"] * len(SUMMARY_HEADER))]
    lines += [_row(row) for row in summary_rows(data)]
    lines += ["", share_note(data) + "."]
    rows = headroom_rows(data)
    if rows:
        header = list(HEADROOM_HEADER[:2]) + [data.agent] + list(HEADROOM_HEADER[3:])
        lines += ["", "## Headroom per case (speedup over NCCL's default)", "", _row(header), _row(["---"] * len(header))]
        lines += [_row(row) for row in rows]
        lines += ["", f"Saved per step: NCCL default's mean step time minus {data.agent}'s (simulated; negative: "
                      f"slower). Saved per day: minutes by which a day of steps at NCCL default's pace finishes "
                      f"sooner ({MINUTES_PER_DAY} x saved / default step time)."]
    lines += [""] + comm_breakdown.markdown_lines(data)
    if data.verify is not None:
        lines += ["", f"## Verified on the job ({data.verify_path})", "", f"**{data.verify['sentence']}** (measured: "
                  f"`dynamiccl verify`, order {data.verify['order']}; the section in report.html has the arms and the "
                  "per-step plot)"]
    online = "every online iteration counts" if data.online == "all" else "online agents: last iteration per case"
    lines += ["", f"Speedup = NCCL default's step time / the agent's (geometric means; {online}).", ""]
    if data.notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in data.notes] + [""]
    lines += ["## Files", "", "- `report.html`: the full report (open it first): " + ", ".join(sections)]
    lines += [f"- `{path}`" for path in plots]
    return "\n".join(lines) + "\n"
