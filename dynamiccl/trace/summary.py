"""``dynamiccl trace summary``: what a rank's step communicates, how much, and what hides it.

Per (group kind, op): count, total bytes (nccl-tests size, summed), a power-of-two size histogram
and how many of those calls sit on the critical path (nothing can overlap them). Per step: compute
segments, FLOPs and modelled compute time against communication volume.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dynamiccl.trace.overlap import overlap_windows
from dynamiccl.trace.store import Trace


def human_bytes(n: float) -> str:
    """1536 -> '1.5K', 64 MiB -> '64M', 3 significant digits (binary units)."""
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f}{unit}" if value >= 999.5 else f"{value:.3g}{unit}"  # no 1e+03
    return f"{int(n)}"


def size_bucket(nbytes: int) -> int:
    """The power of two at or above ``nbytes`` (histogram bin upper bound)."""
    return 1 << (int(nbytes) - 1).bit_length() if nbytes > 0 else 0  # exact for any size


def first_training_step(trace: Trace) -> int | None:
    """The step ``trace summary`` and ``trace check`` look at by default: the first full training step.

    That is the lowest step in which every rank of the file has an op outside the ``setup`` phase:
    step 1 of a profiled or imported trace (whose step 0 is setup traffic: DDP construction,
    barriers), step 0 of a generated trace or of a source without step boundaries (Flight Recorder,
    NCCL Inspector). With no such step, the lowest step that has any op outside ``setup``; None if
    every op is setup traffic (a profiled job that never reached an optimizer step).
    """
    training = trace.ops[trace.ops["phase"] != "setup"]
    if training.empty:
        return None
    ranks_per_step = training.groupby("step")["rank"].nunique()
    full = ranks_per_step[ranks_per_step == len(trace.ranks)]
    return int(full.index.min() if not full.empty else training["step"].min())


def measured_step_time_us(trace: Trace, step: int) -> float | None:
    """The measured time (µs) of ``step``: per rank, from its first measured op's start to its last
    measured op's end (``start_us`` / ``end_us``, which a profiled or imported trace carries and a
    generated one leaves NaN), the slowest rank's, as nccl-tests and A/B step comparisons take it.
    None when no op of the step has measured timestamps."""
    ops = trace.ops[(trace.ops["step"] == step) & np.isfinite(trace.ops["start_us"].to_numpy(dtype=float))
                    & np.isfinite(trace.ops["end_us"].to_numpy(dtype=float))]
    if ops.empty:
        return None
    spans = ops.groupby("rank").agg(start=("start_us", "min"), end=("end_us", "max"))
    return float((spans["end"] - spans["start"]).max())


def rank_summary(trace: Trace, rank: int, step: int = 0) -> dict:
    """Summary of one rank's step as a JSON-ready dict: {group_kind: {op: {...}}, "compute": {...}}.

    Each op entry has ``count``, ``total_bytes`` (per rank: the sum of the calls' bytes_total),
    ``bytes_per_rank`` (sum of NCCL counts in bytes), ``critical_count``, ``critical_bytes`` and
    ``size_histogram`` ({upper bound bytes: count}). The pseudo-kind ``compute`` has count, flops
    and time_us.

    Raises:
        KeyError: the rank has no ops in that step.
    """
    ops = trace.rank_ops(rank, step)
    if ops.empty:
        raise KeyError(f"rank {rank} has no ops in step {step}")
    windows = overlap_windows(ops)
    comm = ops.loc[windows.index].assign(critical=windows["critical"].to_numpy())
    out: dict[str, dict] = {}
    for (kind, op), frame in comm.groupby(["group_kind", "op"], sort=True):
        sizes = frame["bytes_total"].to_numpy()
        buckets = pd.Series([size_bucket(int(b)) for b in sizes]).value_counts().sort_index()
        critical = frame["critical"].to_numpy()
        out.setdefault(kind, {})[op] = {
            "count": int(len(frame)),
            "total_bytes": int(sizes.sum()),
            "bytes_per_rank": int(frame["bytes_per_rank"].sum()),
            "critical_count": int(critical.sum()),
            "critical_bytes": int(sizes[critical].sum()),
            "min_bytes": int(sizes.min()),
            "median_bytes": float(np.median(sizes)),
            "max_bytes": int(sizes.max()),
            "size_histogram": {str(k): int(v) for k, v in buckets.items()},
        }
    compute = ops[ops["kind"] == "compute"]
    out["compute"] = {"compute": {
        "count": int(len(compute)),
        "total_bytes": 0,
        "flops": float(np.nansum(compute["flops"].to_numpy(dtype=float))),
        "time_us": float(np.nansum(compute["duration_us"].to_numpy(dtype=float))),
    }}
    return out


def _comm_totals(summary: dict) -> tuple[int, int]:
    """(total bytes, bytes on the critical path) of a ``rank_summary``'s communication."""
    entries = [e for kind, ops in summary.items() if kind != "compute" for e in ops.values()]
    return sum(e["total_bytes"] for e in entries), sum(e["critical_bytes"] for e in entries)


def render_text(trace: Trace, source: str, rank: int | None = None, step: int = 0) -> str:
    """The human-readable summary: trace header, per-rank overview, one rank in detail."""
    meta = trace.meta
    lines = [f"trace {source}: {meta.description or meta.source} (schema v{meta.schema_version}, "
             f"source {meta.source})"]
    lines.append(f"  world {meta.world_size} ranks, {meta.gpus_per_node} per node; "
                 f"{len(meta.roles)} rank(s) in the file"
                 + (", each standing for its symmetric peers" if meta.representative else ""))
    if meta.compute:
        c = meta.compute
        lines.append(f"  compute time modelled for {c.get('gpu')} at {c.get('peak_bf16_tflops')} TFLOPS × "
                     f"{c.get('efficiency')} efficiency")
    lines.append("")
    lines.append(f"  {'rank':>6}  {'stands for':>10}  {'role':<24} {'ops':>7} {'compute ms':>11} "
                 f"{'comm bytes':>11} {'critical':>9}")
    summaries = {}
    for r in trace.ranks:
        s = rank_summary(trace, r, step)
        summaries[r] = s
        comm_bytes, crit = _comm_totals(s)
        n_ops = sum(e["count"] for ops in s.values() for e in ops.values())
        role = meta.roles[r]
        lines.append(f"  {r:>6}  {role.count:>10}  {role.role[:24]:<24} {n_ops:>7} "
                     f"{s['compute']['compute']['time_us'] / 1e3:>11.1f} {human_bytes(comm_bytes):>11} "
                     f"{(100 * crit / comm_bytes if comm_bytes else 0):>8.0f}%")
    show = trace.ranks[0] if rank is None else rank
    s = summaries[show]
    lines.append("")
    lines.append(f"rank {show}, step {step}: communication per group kind and op "
                 f"(bytes = nccl-tests size; critical = nothing overlaps it)")
    lines.append(f"  {'group':<6} {'op':<14} {'count':>7} {'total':>9} {'min':>7} {'median':>7} {'max':>7} "
                 f"{'critical':>9}  sizes (count per power-of-two bucket, labelled by upper bound)")
    for kind in sorted(k for k in s if k != "compute"):
        for op, e in sorted(s[kind].items()):
            hist = " ".join(f"{human_bytes(int(b))}:{n}" for b, n in e["size_histogram"].items())
            lines.append(f"  {kind:<6} {op:<14} {e['count']:>7} {human_bytes(e['total_bytes']):>9} "
                         f"{human_bytes(e['min_bytes']):>7} {human_bytes(e['median_bytes']):>7} "
                         f"{human_bytes(e['max_bytes']):>7} {e['critical_count']:>9}  {hist}")
    c = s["compute"]["compute"]
    comm_total, crit_total = _comm_totals(s)
    lines.append("")
    lines.append(f"  step volume: compute {c['count']} segments, {c['flops'] / 1e12:.1f} TFLOP, "
                 f"{c['time_us'] / 1e3:.1f} ms modelled; communication {human_bytes(comm_total)}B, "
                 f"{human_bytes(crit_total)}B of it on the critical path")
    return "\n".join(lines)
