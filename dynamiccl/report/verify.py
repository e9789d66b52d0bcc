"""The report section of ``dynamiccl verify``: the verdict, the arms and the per-step plot.

:func:`write_verify_report` writes, beside ``verify.json``, ``verify.md`` (Markdown),
``verify.html`` (self-contained, as ``dynamiccl report``'s page) and ``plots/verify-step-times.png``;
:func:`verify_section` is the same content as a :class:`~dynamiccl.report.sections.Section`, for a
page that holds several sections. Input: the record ``dynamiccl.verify.run.verify`` writes as JSON.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from dynamiccl import atomic, schema
from dynamiccl.errors import InputError
from dynamiccl.report import html
from dynamiccl.report.plots import png
from dynamiccl.report.sections import Section
from dynamiccl.verify import FORMAT

PLOT_NAME = "verify-step-times"
ARM_HEADER = ["arm", "what ran", "ranks", "steps recorded", "steps analysed", "median step (ms)", "vs the A arms"]
_ARM_COLORS = {"A1": "#7f7f7f", "A2": "#404040", "B1": "#d62728", "B2": "#ff7f0e"}


# What a record must hold for the section (``dynamiccl.verify.run`` writes them; a record of a table
# that could not be applied has no ``comparison``).
_RECORD_FIELDS = ("verdict", "sentence", "order", "warmup_steps", "steps", "command")
_COMPARISON_FIELDS = ("arms", "delta", "ci_low", "ci_high", "drift", "method")
_ARM_FIELDS = ("name", "ranks", "recorded_steps", "step_times_s", "median_s")


def load_verify_record(path: str | Path) -> dict:
    """The ``verify.json`` that ``dynamiccl verify`` wrote, checked for what the section reads.

    Raises:
        InputError: naming the file and the field: not JSON, not a verify record of this format,
            or a field missing.
    """
    source = str(path)
    record = schema.read_json(path, "verify results")
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise InputError(source, "format", f"expected {FORMAT!r}: the verify.json that `dynamiccl verify -o DIR` writes")

    def require(obj, fields, where):
        missing = [f for f in fields if not isinstance(obj, dict) or f not in obj]
        if missing:
            raise InputError(source, where or None, f"missing {', '.join(missing)}")

    require(record, _RECORD_FIELDS, "")
    if "comparison" in record:
        require(record["comparison"], _COMPARISON_FIELDS, "comparison")
        if not isinstance(record["comparison"]["arms"], list) or not record["comparison"]["arms"]:
            raise InputError(source, "comparison.arms", "expected a non-empty list of arms")
        for index, arm in enumerate(record["comparison"]["arms"]):
            require(arm, _ARM_FIELDS, f"comparison.arms[{index}]")
    return record


def step_times_figure(record: dict) -> Figure:
    """Per arm, the slowest rank's time of each analysed step (ms) over the step number, with the
    arm's median as a dashed line; the warm-up steps (dropped) are left of the first point."""
    comparison = record["comparison"]
    fig = Figure(figsize=(9, 3.8), layout="constrained")
    ax = fig.subplots()
    first = record["warmup_steps"] + 1
    for arm in comparison["arms"]:
        times_ms = [t * 1e3 for t in arm["step_times_s"]]
        color = _ARM_COLORS.get(arm["name"], "C0")
        label = f"{arm['name']} ({'with the table' if arm['name'].startswith('B') else 'NCCL alone'})"
        ax.plot(range(first, first + len(times_ms)), times_ms, marker=".", lw=1, color=color, label=label)
        ax.axhline(arm["median_s"] * 1e3, color=color, ls="--", lw=1)
    ax.set_xlabel(f"training step (steps 1-{first - 1} dropped as warm-up)" if first > 1 else "training step")
    ax.set_ylabel("slowest rank's step time (ms)")
    ax.set_title(f"{record['verdict']}: delta {comparison['delta']:+.2%} "
                 f"(95% CI {comparison['ci_low']:+.2%} .. {comparison['ci_high']:+.2%}), "
                 f"control drift {comparison['drift']:+.2%}", fontsize=10)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def arm_rows(record: dict) -> list[list[str]]:
    """One row per arm, as :data:`ARM_HEADER`."""
    arms = record["comparison"]["arms"]
    a_medians = [arm["median_s"] for arm in arms if arm["name"].startswith("A")]
    a_mean = sum(a_medians) / len(a_medians)
    return [[arm["name"], "with the table" if arm["name"].startswith("B") else "NCCL alone", str(arm["ranks"]),
             str(arm["recorded_steps"]), str(len(arm["step_times_s"])), f"{arm['median_s'] * 1e3:.3f}",
             f"{arm['median_s'] / a_mean - 1:+.2%}"] for arm in arms]


def setup_lines(record: dict) -> list[str]:
    """Which NCCL, tuner ABI and table; the command; the method."""
    nccl = record.get("nccl", {})
    if nccl.get("nccl_versions"):
        used = "; ".join(nccl.get("nccl_tuner_abi", []))
    else:
        used = f"backend {'/'.join(nccl.get('backends', []))}: NCCL not used (on gloo/CPU the table cannot change anything)"
    abi = ", ".join(f"v{v}" for v in nccl.get("plugin_abi_versions", []))
    return [f"NCCL: {used}",
            f"plugin: {nccl.get('plugin')} (exports tuner ABI {abi})",
            f"table: {nccl.get('table')} ({nccl.get('table_rules')} rule(s); plugin text {nccl.get('table_text')})",
            f"job: {' '.join(record['command'])} (order {record['order']}, {record['warmup_steps']} warm-up + "
            f"{record['steps']} analysed steps per arm)",
            f"method: {record['comparison']['method']}"]


def kept_line(record: dict) -> str | None:
    """What ``--keep`` did, or None when it was not asked."""
    if record.get("kept"):
        return f"the table was kept as {record['kept']} (the job was faster with it)"
    if record.get("keep"):
        return f"the table was not kept as {record['keep']}: the verdict is {record['verdict']!r}"
    return None


def verify_report_section(data) -> Section:
    """The section of ``dynamiccl report --verify`` (``data``: the report's ``ReportData``)."""
    return verify_section(data.verify)


def verify_section(record: dict, plot_png: bytes | None = None) -> Section:
    """The verify results as a report section: verdict, setup, arms table, plot and notes (the
    verdict and notes alone for a table that could not be applied: nothing was compared)."""
    section = Section("verify", "Verify on the job: A/B runs")
    section.blocks.append(("headline", [record["sentence"]] + ([kept_line(record)] if kept_line(record) else [])))
    if "comparison" not in record:
        section.blocks += [("note", note) for note in record.get("notes", [])]
        return section
    section.blocks.append(("table", (ARM_HEADER, arm_rows(record))))
    section.blocks.append(("plot", (PLOT_NAME, plot_png if plot_png is not None else png(step_times_figure(record)),
                                    "Slowest rank's step time per analysed step, per arm; dashed: the arm's median")))
    section.blocks += [("p", line) for line in setup_lines(record)]
    section.blocks += [("note", note) for note in record.get("notes", [])]
    return section


def verify_markdown(record: dict, plot_path: str) -> str:
    """The verify results as Markdown (``plot_path`` relative to the Markdown file)."""
    def row(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    lines = ["## Verify on the job: A/B runs", "", f"**{record['sentence']}**", ""]
    if kept_line(record):
        lines += [kept_line(record), ""]
    lines += [row(ARM_HEADER), row(["---"] * len(ARM_HEADER))] + [row(r) for r in arm_rows(record)]
    lines += ["", f"![per-step times]({plot_path})", ""] + [f"- {line}" for line in setup_lines(record)]
    lines += [f"- note: {note}" for note in record.get("notes", [])]
    return "\n".join(lines) + "\n"


def write_verify_report(record: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write ``verify.md``, ``verify.html`` and ``plots/verify-step-times.png`` under ``out_dir``
    (each atomically); returns their paths (``markdown``, ``html``, ``plot``)."""
    out = Path(out_dir)
    plot_png = png(step_times_figure(record))
    plot_path = out / "plots" / f"{PLOT_NAME}.png"
    atomic.write_with(plot_path, lambda tmp: tmp.write_bytes(plot_png))
    atomic.write_text(out / "verify.md", "# dynamiccl verify\n\n" +
                      verify_markdown(record, plot_path.relative_to(out).as_posix()))
    atomic.write_text(out / "verify.html", html.render("dynamiccl verify", [verify_section(record, plot_png)]))
    return {"markdown": out / "verify.md", "html": out / "verify.html", "plot": plot_path}
