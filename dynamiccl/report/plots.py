"""The report's figures, each rendered to PNG bytes with matplotlib's Agg canvas (no global backend
or pyplot state: a report can be built inside another program)."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

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


def decision_map(cells: pd.DataFrame, coll: str, agent: str) -> bytes:
    """Two heat maps of one collective, NCCL's default beside ``agent``: rows (nranks, nnodes), columns
    log2 size buckets; colour = algorithm/protocol, text = channels. ``cells``: ``decision_cells`` rows
    of this collective."""
    shapes = sorted({(int(r), int(n)) for r, n in zip(cells["nranks"], cells["nnodes"])})
    buckets = list(range(int(cells["bucket"].min()), int(cells["bucket"].max()) + 1))
    choices = pd.concat([cells["nccl"], cells["choice"]])
    kinds = sorted({c.rsplit("/", 1)[0] for c in choices})
    palette = ListedColormap([f"C{i % 10}" for i in range(len(kinds))])
    width = max(6.0, 2 * (1.5 + 0.45 * len(buckets)))
    fig = Figure(figsize=(width, 1.4 + 0.45 * len(shapes)))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, column, title in zip(axes, ("nccl", "choice"), ("NCCL default", agent)):
        grid = np.full((len(shapes), len(buckets)), np.nan)
        for _, row in cells.iterrows():
            y, x = shapes.index((int(row["nranks"]), int(row["nnodes"]))), buckets.index(int(row["bucket"]))
            kind, channels = row[column].rsplit("/", 1)
            grid[y, x] = kinds.index(kind)
            ax.text(x, y, channels, ha="center", va="center", fontsize=7, color="white")
        ax.imshow(np.ma.masked_invalid(grid), cmap=palette, vmin=-0.5, vmax=len(kinds) - 0.5, aspect="auto")
        ax.set_xticks(range(len(buckets)), [human_bytes(b) for b in buckets], rotation=90, fontsize=7)
        ax.set_yticks(range(len(shapes)), [f"{r} ranks / {n} nodes" for r, n in shapes], fontsize=7)
        ax.set_title(f"{coll}: {title}", fontsize=9)
        ax.set_xlabel("message size (log2 bucket)", fontsize=8)
    handles = [axes[0].scatter([], [], marker="s", color=f"C{i % 10}", label=k) for i, k in enumerate(kinds)]
    # Beside the maps, not under them, where it would cover the axis labels.
    fig.legend(handles=handles, loc="center left", fontsize=7, bbox_to_anchor=(1.0, 0.5),
               title="algorithm/protocol\n(number: channels)", title_fontsize=7)
    return png(fig)


def grouped_bars(table: pd.DataFrame, ylabel: str, title: str, percent_of_one: bool = True) -> bytes:
    """Grouped bars: one group per row of ``table`` (its index joined as the label), one bar per column
    (agent). ``percent_of_one``: plot (value - 1) x 100 (a speedup as % change), else value x 100.
    Symmetric-log axis so that a 0.1% gain is visible next to a 50% loss."""
    labels = [" | ".join(map(str, key)) if isinstance(key, tuple) else str(key) for key in table.index]
    agents = list(table.columns)
    values = (table.to_numpy(dtype=np.float64) - (1.0 if percent_of_one else 0.0)) * 100.0
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
    return png(fig)


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
