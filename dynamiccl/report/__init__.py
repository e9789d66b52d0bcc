"""``dynamiccl report``: an HTML report, a Markdown summary and PNG plots from evaluation results.

``build_report(results, out_dir, ...)`` reads a results file written by ``dynamiccl evaluate``
(and optionally a training curve CSV, a calibration summary JSON and a decision table) and writes
``out_dir/report.html`` (self-contained: inline CSS, plots as base64 PNG data URIs, no scripts or
URLs), ``out_dir/summary.md`` and ``out_dir/plots/*.png``, each atomically.
"""

from __future__ import annotations

import os
from pathlib import Path

from tqdm.auto import tqdm

from dynamiccl import atomic
from dynamiccl.report import html, markdown
from dynamiccl.report.data import (
    ReportData, case_names, choose_agent, load_calibration, load_results, load_training_curve,
)
from dynamiccl.report.sections import builders, headline_lines


def load(results: str | os.PathLike, *, training_curve=None, calibration=None, table=None, verify=None,
         agent: str | None = None, online: str = "all", command: str | None = None) -> ReportData:
    """Read every input of a report.

    Raises:
        InputError: an input is missing or invalid (naming the file and what was expected), or
            ``agent`` is not in the results.
        ValueError: ``online`` is not ``all`` or ``last``.
    """
    if online not in ("all", "last"):
        raise ValueError(f"online must be 'all' or 'last', got {online!r}")
    steps, calls, meta, note = load_results(results)
    data = ReportData(Path(results), steps, calls, meta, "", online, command=command, notes=[note] if note else [])
    data.agent = choose_agent(data.agents, agent, os.fspath(results))
    data.case_names = case_names(meta, steps)
    if training_curve is not None:
        data.training_curve, data.training_curve_path = load_training_curve(training_curve), Path(training_curve)
    if calibration is not None:
        data.calibration, data.calibration_path = load_calibration(calibration), Path(calibration)
    if table is not None:
        from dynamiccl.table import load as load_table

        data.table, data.table_path = load_table(table), Path(table)
    if verify is not None:
        from dynamiccl.report.verify import load_verify_record

        data.verify, data.verify_path = load_verify_record(verify), Path(verify)
    return data


def write_report(data: ReportData, out_dir: str | os.PathLike, progress: bool = True) -> dict[str, Path]:
    """Write report.html, summary.md and plots/*.png under ``out_dir``; returns their paths
    (``html``, ``summary``, ``plots``: the plots directory)."""
    out = Path(out_dir)
    sections = []
    extra = []
    if data.table is not None:  # what the table sets beyond the per-call choice
        from dynamiccl.report.knobs import knobs_report_section

        extra.append(knobs_report_section)
    if data.verify is not None:
        from dynamiccl.report.verify import verify_report_section

        extra.append(verify_report_section)
    for build in tqdm(builders(data, extra), desc="report", unit="section", disable=not progress, delay=2.0):
        sections.append(build(data))
    plot_paths = []
    for section in sections:
        for name, png in section.plots():
            path = out / "plots" / f"{name}.png"
            atomic.write_with(path, lambda tmp, png=png: tmp.write_bytes(png))
            plot_paths.append(path.relative_to(out).as_posix())
    title = f"dynamiccl report: {data.results_path.name} ({data.agent} vs NCCL default)"
    atomic.write_text(out / "report.html", html.render(title, sections))
    atomic.write_text(out / "summary.md", markdown.render(data, headline_lines(data), plot_paths,
                                                          [s.title for s in sections]))
    return {"html": out / "report.html", "summary": out / "summary.md", "plots": out / "plots"}


def build_report(results: str | os.PathLike, out_dir: str | os.PathLike, *, progress: bool = True,
                 **inputs) -> dict[str, Path]:
    """``write_report(load(results, **inputs), out_dir)``."""
    return write_report(load(results, **inputs), out_dir, progress=progress)


__all__ = ["ReportData", "build_report", "load", "write_report"]
