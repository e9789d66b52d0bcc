"""PARAM comms-replay traces (facebookresearch/param, trace type "basic"): one JSON list per rank.

``export_param`` writes ``rank-<r>.json`` for every rank 0..world_size-1 (the per-rank naming of
PARAM's replay, ``{trace-path}/rank-{r}.json``). Each file is a JSON list of dicts, in this order:

1. one ``init`` record per process group of the job, the same list on every rank (PyTorch creates
   every group on every rank, in one order): ``{"comms": "init", "req": -1, "pg_id", "global_ranks",
   "world_size"}``. ``pg_id`` is the job-wide group number (``plan.number_groups``: the world group
   is 0).
2. the rank's operations in issue order (all steps, in order):

   - a collective or send/recv: ``comms`` (PARAM's name: all_reduce, all_gather, reduce_scatter,
     all_to_all, broadcast, reduce, gather, scatter, send, recv), ``req`` (the call's position
     among this rank's collectives — p2p ops separately — on its group, counted over all steps:
     ``group_seq`` for a one-step trace), ``pg_id``,
     ``global_ranks`` and ``world_size`` (the group's ranks and size), ``in_msg_size`` and
     ``out_msg_size`` in *elements* of ``dtype`` (PyTorch's local tensors: AllGather/Gather in =
     one rank's shard, out = the full buffer; ReduceScatter/Scatter the reverse; others the buffer),
     ``dtype`` (PARAM's name: bfloat16, float16, float32, ...), ``markers`` ([label]);
     send/recv add ``src_rank``, ``dst_rank`` (global) and ``use_batch`` (inside an NCCL group);
     broadcast/reduce/gather/scatter add ``root`` (global); measured ops add ``startTime_ns``
     (relative to the trace's earliest measured start) and ``duration_us``.
   - a compute segment, with ``compute="gemm"`` (default): PARAM's compute element
     ``{"compute": "gemm", "count": 1, "mm_dim", "dtype", "markers"}``, a square GEMM with the
     segment's FLOPs (2·mm_dim³ ≈ flops), so a replay keeps the compute gaps between collectives;
     ``flops`` and ``duration_us`` ride along. Segments without FLOPs, and element-wise ones with
     fewer FLOPs than bytes moved (the generator's memory-bound optimizer step and embedding; a
     GEMM of the trace's sizes does many FLOPs per byte), have no GEMM equivalent and are left
     out. ``compute="none"`` writes communication only.

The basic format replays in issue order and has no dependency graph: overlap beyond issue order
(collectives PARAM runs asynchronously with ``-z 0``) is not expressed. Data types PARAM lacks are
written as one of the same width: uint32 as int32, uint64 as long, fp8 as uint8.

A representative trace is expanded to every rank it stands for (``plan.py``); one that cannot be is
refused with ``InputError`` before anything is written. All files of an export appear together or
not at all.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from dynamiccl import nccl
from dynamiccl.errors import InputError
from dynamiccl.profiler.exporters.output import atomic_files, check_out_dir
from dynamiccl.profiler.exporters.progress import announce, estimate_bytes, file_bar
from dynamiccl.profiler.exporters.plan import ExportPlan, plan_export
from dynamiccl.trace.store import Trace

COMPUTE_MODES = ("gemm", "none")

PARAM_COMMS = {
    "allreduce": "all_reduce", "allgather": "all_gather", "reducescatter": "reduce_scatter",
    "alltoall": "all_to_all", "broadcast": "broadcast", "reduce": "reduce", "gather": "gather",
    "scatter": "scatter", "send": "send", "recv": "recv",
}
PARAM_DTYPES = {
    "int8": "int8", "uint8": "uint8", "int32": "int32", "uint32": "int32", "int64": "long", "uint64": "long",
    "fp16": "float16", "fp32": "float32", "fp64": "float64", "bf16": "bfloat16",
    "fp8e4m3": "uint8", "fp8e5m2": "uint8",
}


def export_param(trace: Trace, out_dir: str | os.PathLike, *, compute: str = "gemm") -> list[Path]:
    """Write ``trace`` as PARAM basic comms-replay JSON, one ``rank-<r>.json`` per rank (module docstring).

    Args:
        trace: the trace; a representative trace is expanded to every rank it stands for.
        out_dir: directory to write into (created if missing).
        compute: "gemm" (compute segments as GEMMs of their FLOPs) or "none" (communication only).

    Returns:
        The files written, by rank.

    Raises:
        InputError: a bad option, or a trace that is invalid or cannot be expanded to every rank;
            nothing is written then, and on any error no file of the export is changed.
    """
    if compute not in COMPUTE_MODES:
        raise InputError("compute", None, f"expected one of {', '.join(COMPUTE_MODES)}, got {compute!r}")
    out = check_out_dir(out_dir)
    plan = plan_export(trace)
    starts = trace.ops["start_us"].to_numpy(dtype=float)
    finite = starts[np.isfinite(starts)]
    t0 = float(finite.min()) if finite.size else 0.0
    paths = [out / f"rank-{rank}.json" for rank in plan.ranks]
    init = _init_records(plan)
    encode = json.JSONEncoder(separators=(", ", ": ")).encode

    def rank_text(rank: int) -> str:
        records = init + param_records(plan, rank, compute=compute, t0=t0)
        return "[\n" + ",\n".join(map(encode, records)) + "\n]\n"

    announce("export param", len(paths), estimate_bytes(plan, lambda rank: len(rank_text(rank).encode())), out)
    with atomic_files(paths) as tmps, file_bar(len(paths), "export param") as bar:
        for rank, tmp in zip(plan.ranks, tmps):
            tmp.write_text(rank_text(rank), encoding="utf-8")
            bar.update()
    return paths


def _init_records(plan: ExportPlan) -> list[dict]:
    out = []
    for gid, pg in sorted(plan.pg_ids.items(), key=lambda kv: kv[1]):
        group = plan.groups[gid]
        out.append({"comms": "init", "req": -1, "pg_id": pg, "global_ranks": list(group.ranks),
                    "world_size": group.size, "markers": [f"{group.kind}:{gid}"]})
    return out


def param_records(plan: ExportPlan, rank: int, *, compute: str = "gemm", t0: float = 0.0) -> list[dict]:
    """The operation records of ``rank`` (without the ``init`` records), in issue order."""
    ops = plan.ops(rank)
    # Python lists: element access is many times faster than on numpy arrays.
    kind, op, label = ops["kind"].tolist(), ops["op"].tolist(), ops["label"].tolist()
    gid, peer = ops["group_id"].tolist(), ops["peer"].tolist()
    nccl_group, dtype = ops["nccl_group"].tolist(), ops["dtype"].tolist()
    total, per_rank = ops["bytes_total"].tolist(), ops["bytes_per_rank"].tolist()
    flops = ops["flops"].to_numpy(dtype=float).tolist()
    moved = ops["bytes_moved"].to_numpy(dtype=float).tolist()
    duration = ops["duration_us"].to_numpy(dtype=float).tolist()
    start = ops["start_us"].to_numpy(dtype=float).tolist()
    end = ops["end_us"].to_numpy(dtype=float).tolist()
    layout = plan.trace.meta.workload.get("layout") if isinstance(plan.trace.meta.workload, dict) else None
    act_dtype = PARAM_DTYPES.get(str((layout or {}).get("dtype", "bf16")), "bfloat16")
    esize = {d: nccl.DataType[d.upper()].size_bytes for d in set(dtype) if d}
    ranks_of = {g: list(plan.groups[g].ranks) for g in set(gid) if g}
    calls: dict[tuple[str, str], int] = defaultdict(int)  # (group, coll|p2p) -> calls so far, all steps

    out: list[dict] = []
    for i in range(len(kind)):
        k = kind[i]
        name = label[i] or op[i]
        if k == "compute":
            if compute == "none" or not math.isfinite(flops[i]) or flops[i] < moved[i]:  # docstring
                continue
            rec = {"compute": "gemm", "count": 1, "mm_dim": max(1, round((flops[i] / 2.0) ** (1.0 / 3.0))),
                   "dtype": act_dtype, "markers": [name], "flops": flops[i]}
            if math.isfinite(duration[i]):
                rec["duration_us"] = duration[i]
            out.append(rec)
            continue
        group = plan.groups[gid[i]]
        o = op[i]
        e = esize[dtype[i]]
        full, shard = total[i] // e, per_rank[i] // e
        if o in ("allgather", "gather"):
            in_size, out_size = shard, full
        elif o in ("reducescatter", "scatter"):
            in_size, out_size = full, shard
        else:
            in_size = out_size = full
        family = (gid[i], k)
        req = calls[family]
        calls[family] = req + 1
        rec = {"comms": PARAM_COMMS[o], "req": req, "pg_id": plan.pg_ids[gid[i]],
               "global_ranks": ranks_of[gid[i]], "world_size": group.size, "in_msg_size": in_size,
               "out_msg_size": out_size, "dtype": PARAM_DTYPES[dtype[i]], "markers": [name]}
        if k == "p2p":
            other = peer[i]
            rec["src_rank"], rec["dst_rank"] = (rank, other) if o == "send" else (other, rank)
            rec["use_batch"] = nccl_group[i] >= 0
        elif o in nccl.ROOTED_OPS:
            rec["root"] = peer[i]
        if math.isfinite(start[i]):
            rec["startTime_ns"] = int(round((start[i] - t0) * 1000.0))
            if math.isfinite(end[i]):
                rec["duration_us"] = float(end[i] - start[i])
        out.append(rec)
    return out
