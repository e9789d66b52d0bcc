"""The report's figures, each rendered to PNG bytes with matplotlib's Agg canvas (no global backend
or pyplot state: a report can be built inside another program)."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

DPI = 100
_AGENT_COLORS = {"nccl-default": "#7f7f7f", "search": "#2ca02c", "greedy-per-call": "#98df8a", "policy": "#d62728",
                 "static-best": "#1f77b4", "line-rate bound": "#17becf", "no-comm ceiling": "#000000",
                 "random": "#bcbd22", "ucb-bandit": "#9467bd", "coordinate-descent": "#8c564b"}
_SPARE = ["#e377c2", "#ff7f0e", "#aec7e8", "#c5b0d5", "#ffbb78"]


def agent_color(agent: str, index: int) -> str:
    return _AGENT_COLORS.get(agent, _SPARE[index % len(_SPARE)])


def png(fig: Figure) -> bytes:
    """The figure as PNG bytes."""
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def human_bytes(log2: int) -> str:
    """2**log2 bytes as 1B .. 512K, 1M .. 512G, 1T ..."""
    for unit, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if log2 >= shift:
            return f"{1 << (log2 - shift)}{unit}"
    return f"{1 << max(log2, 0)}B"


# A decision map is read at its natural size: no wider than the report page (max-width 1300 px at
# DPI 100), so the browser never scales its 9-point text down.
DECISION_MAP_MAX_WIDTH_IN = 12.5
DECISION_CELL_IN = (0.62, 0.42)  # width, height of one (shape, size bucket) cell when there is room
MAP_FONT_PT = 9


def decision_map(cells: pd.DataFrame, coll: str, agent: str) -> bytes:
    """:func:`decision_map_figure` as PNG bytes."""
    return png(decision_map_figure(cells, coll, agent))


def decision_map_figure(cells: pd.DataFrame, coll: str, agent: str) -> Figure:
    """Two heat maps of one collective, NCCL's default above ``agent``'s: rows (nranks, nnodes),
    columns the log2 size buckets that have calls (empty buckets are left out, so a few sizes spread
    over 1 B .. 1 GiB stay legible); colour = algorithm/protocol, number = channels; a black frame
    marks the cells where ``agent``'s choice differs from NCCL's. ``cells``: ``decision_cells`` rows of
    this collective."""
    shapes = sorted({(int(r), int(n)) for r, n in zip(cells["nranks"], cells["nnodes"])})
    buckets = sorted({int(b) for b in cells["bucket"]})
    choices = pd.concat([cells["nccl"], cells["choice"]])
    kinds = sorted({c.rsplit("/", 1)[0] for c in choices})
    palette = ListedColormap([f"C{i % 10}" for i in range(len(kinds))])
    label_in = 1.8  # the row labels
    cell_in = min(DECISION_CELL_IN[0], (DECISION_MAP_MAX_WIDTH_IN - label_in) / len(buckets))
    panel_in = 0.8 + DECISION_CELL_IN[1] * len(shapes)
    fig = Figure(figsize=(label_in + cell_in * max(len(buckets), 4), 2 * panel_in + 1.4), layout="constrained")
    axes = fig.subplots(2, 1, sharex=True)
    for ax, column, title in zip(axes, ("nccl", "choice"), ("NCCL default", agent)):
        grid = np.full((len(shapes), len(buckets)), np.nan)
        for row in cells.itertuples(index=False):
            y, x = shapes.index((int(row.nranks), int(row.nnodes))), buckets.index(int(row.bucket))
            kind, channels = getattr(row, column).rsplit("/", 1)
            grid[y, x] = kinds.index(kind)
            ax.text(x, y, channels, ha="center", va="center", fontsize=MAP_FONT_PT, color="white", fontweight="bold")
            if column == "choice" and row.changed > 0:
                ax.add_patch(Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="black", lw=2.0))
        ax.imshow(np.ma.masked_invalid(grid), cmap=palette, vmin=-0.5, vmax=len(kinds) - 0.5, aspect="auto")
        ax.set_yticks(range(len(shapes)), [f"{r} ranks / {n} node{'s' if n > 1 else ''}" for r, n in shapes],
                      fontsize=MAP_FONT_PT)
        ax.set_title(f"{coll}: {title}", fontsize=MAP_FONT_PT + 1)
    axes[-1].set_xticks(range(len(buckets)), [human_bytes(b) for b in buckets], rotation=90, fontsize=MAP_FONT_PT)
    axes[-1].set_xlabel("message size (log2 bucket; sizes without calls left out)", fontsize=MAP_FONT_PT)
    handles = [axes[0].scatter([], [], marker="s", color=f"C{i % 10}", label=k) for i, k in enumerate(kinds)]
    handles.append(Rectangle((0, 0), 1, 1, fill=False, edgecolor="black", lw=2.0, label=f"{agent} differs"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4), fontsize=MAP_FONT_PT,
               title="algorithm/protocol (number in a cell: channels)", title_fontsize=MAP_FONT_PT)
    return fig


STEP_TIME_CHANGE_LABEL = "step-time change vs NCCL default (%; negative = shorter step, faster)"


def step_time_change(speedup):
    """The change of the step time a speedup (default / agent step time) means, as a fraction:
    ``1 / speedup - 1`` (-0.1: a 10% shorter step; a speedup of 1/1.1 gives +0.1, a 10% longer step)."""
    return 1.0 / speedup - 1.0


def grouped_bars(table: pd.DataFrame, ylabel: str, title: str, quantity: str = "speedup") -> bytes:
    """:func:`grouped_bars_figure` as PNG bytes."""
    return png(grouped_bars_figure(table, ylabel, title, quantity))


def grouped_bars_figure(table: pd.DataFrame, ylabel: str, title: str, quantity: str = "speedup") -> Figure:
    """Grouped bars: one group per row of ``table`` (its index joined as the label), one bar per column
    (agent), in percent. ``quantity``: ``"speedup"`` (values are speedups over NCCL's default; bars
    are the step-time change they mean, :func:`step_time_change` x 100) or ``"fraction"`` (values are
    already relative changes; bars are value x 100). Symmetric-log axis so that a 0.1% gain is visible
    next to a 50% loss.

    Raises:
        ValueError: another ``quantity``.
    """
    if quantity not in ("speedup", "fraction"):
        raise ValueError(f"quantity must be 'speedup' or 'fraction', got {quantity!r}")
    labels = [" | ".join(map(str, key)) if isinstance(key, tuple) else str(key) for key in table.index]
    agents = list(table.columns)
    values = table.to_numpy(dtype=np.float64)
    values = (step_time_change(values) if quantity == "speedup" else values) * 100.0
    fig = Figure(figsize=(min(16.0, max(8.0, 0.25 * len(labels) * len(agents) + 2)), 5.0))
    ax = fig.subplots()
    width = 0.8 / max(len(agents), 1)
    x = np.arange(len(labels))
    for i, agent in enumerate(agents):
        ax.bar(x + (i - (len(agents) - 1) / 2) * width, values[:, i], width, label=agent, color=agent_color(agent, i))
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set_yscale("symlog", linthresh=0.1)
    finite = values[np.isfinite(values)]
    if finite.size:  # at least +-1% so that the axis has ticks beyond the linear band
        ax.set_ylim(min(-1.0, 1.5 * finite.min()), max(1.0, 1.5 * finite.max()))
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=min(len(agents), 4))
    return fig


def comm_time_bars(frame: pd.DataFrame, what: str) -> bytes:
    """Horizontal bars: communication time (ms per step) by ``what`` (the index), one bar per agent."""
    fig = Figure(figsize=(8.0, 1.2 + 0.5 * len(frame) * max(len(frame.columns), 1)))
    ax = fig.subplots()
    y = np.arange(len(frame))
    height = 0.8 / max(len(frame.columns), 1)
    for i, agent in enumerate(frame.columns):
        ax.barh(y + i * height, frame[agent].to_numpy(), height, label=agent, color=agent_color(agent, i))
    ax.set_yticks(y + height * (len(frame.columns) - 1) / 2, [str(k) for k in frame.index])
    ax.invert_yaxis()
    ax.set_xlabel("summed collective time (ms per recorded step)")
    ax.set_title(f"communication time by {what}", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8)
    return png(fig)


def training_curve(curve: pd.DataFrame, window: int = 20) -> bytes:
    """Episode speedups over training timesteps (one colour per case) and their rolling mean."""
    fig = Figure(figsize=(9.0, 4.5))
    ax = fig.subplots()
    groups = curve.groupby("case", sort=False) if "case" in curve.columns else [("episodes", curve)]
    for i, (case, group) in enumerate(groups):
        ax.scatter(group["timesteps"], group["speedup"], s=8, alpha=0.6, color=f"C{i % 10}", label=str(case))
    ordered = curve.sort_values("timesteps")
    ax.plot(ordered["timesteps"], ordered["speedup"].rolling(window, min_periods=1).mean(), color="black",
            lw=1.5, label=f"rolling mean ({window} episodes)")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("training timesteps (decisions)")
    ax.set_ylabel("episode speedup vs NCCL default")
    ax.set_title("training curve", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return png(fig)


def online_curves(online: pd.DataFrame) -> bytes:
    """Speedup per iteration of each online learner (one panel per learner, one line per case)."""
    agents = list(pd.unique(online["agent"]))
    fig = Figure(figsize=(9.0, 3.2 * len(agents)))
    axes = np.atleast_1d(fig.subplots(len(agents), 1, squeeze=False)[:, 0])
    for ax, agent in zip(axes, agents):
        for i, (case, group) in enumerate(online[online["agent"] == agent].groupby("case", sort=False)):
            group = group.sort_values("iteration")
            ax.plot(group["iteration"], group["speedup"], marker="o", ms=3, color=f"C{i % 10}", label=str(case))
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_title(f"{agent}: speedup per online iteration", fontsize=10)
        ax.set_xlabel("iteration")
        ax.set_ylabel("speedup")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return png(fig)


def calibration_errors(calibration: dict) -> bytes:
    """Median |predicted - measured| / measured time per measured table (and overall), the world
    simulator beside NCCL's own model, for all sizes, <= 64 KiB and >= 64 MiB."""
    names = list(calibration["tables"]) + ["overall"]
    entries = list(calibration["tables"].values()) + [calibration["overall"]]
    fig = Figure(figsize=(max(8.0, 1.3 * len(names)), 4.8))
    ax = fig.subplots()
    x = np.arange(len(names))
    series = [("world", "all", "world simulator (all sizes)", "C0", None),
              ("world", "small", "world simulator (<= 64 KiB)", "C0", "//"),
              ("world", "large", "world simulator (>= 64 MiB)", "C0", ".."),
              ("nccl_model", "all", "NCCL's model (all sizes)", "C1", None)]
    width = 0.8 / len(series)
    for i, (model, size, label, color, hatch) in enumerate(series):
        values = [np.nan if e[model].get(size) is None else 100.0 * float(e[model][size]) for e in entries]
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=label, color=color, hatch=hatch,
               alpha=0.85 if hatch is None else 0.5, edgecolor="black", lw=0.3)
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("median |predicted - measured| / measured (%)")
    ax.set_title("simulator calibration error against measured nccl-tests tables", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    return png(fig)


def calibration_scatter(points: dict) -> bytes:
    """Predicted against measured busbw (GB/s), one marker per measured row, coloured by table: the
    world simulator (filled) and NCCL's model (hollow); the diagonal is a perfect prediction."""
    fig = Figure(figsize=(7.5, 6.0))
    ax = fig.subplots()
    low, high = np.inf, 0.0
    for i, (name, table) in enumerate(points.items()):
        measured = np.asarray(table["measured_busbw_gbytes_per_s"], dtype=float)
        for key, style in (("predicted_busbw_gbytes_per_s", dict(marker="o", color=f"C{i % 10}", label=name)),
                           ("nccl_model_busbw_gbytes_per_s", dict(marker="o", facecolors="none", edgecolors=f"C{i % 10}"))):
            predicted = np.asarray(table[key], dtype=float)
            ax.scatter(measured, predicted, s=14, lw=0.8, **style)
            positive = np.concatenate([measured, predicted])
            positive = positive[positive > 0]
            if len(positive):
                low, high = min(low, positive.min()), max(high, positive.max())
    if high > 0:
        ax.plot([low, high], [low, high], color="black", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured busbw (GB/s)")
    ax.set_ylabel("predicted busbw (GB/s)")
    ax.set_title("world simulator (filled) and NCCL's model (hollow) against nccl-tests", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6, loc="upper left")
    return png(fig)
