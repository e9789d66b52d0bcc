"""Import torch.profiler (Kineto) Chrome traces, one file per rank.

Format: pytorch/pytorch ``torch/csrc/profiler/util.cpp`` (``saveNcclMeta``: the collective's args)
and pytorch/kineto ``libkineto/src/output_json.cpp`` (copies them onto the NCCL kernel event).

The file's rank is ``distributedInfo.rank``; else the ``Rank`` arg of a collective on the world
group; else the last number in the file name. Process groups (id = PyTorch's group name, ranks,
description) come from ``distributedInfo.pg_config`` of every file, else from the events'
``Process Group Ranks`` / ``Global rank start``/``stride``; the kind (tp, dp, ...) from the
description (Megatron-LM names, ``default_pg`` = world).

**NCCL traces**: one ``record_param_comms`` CPU op per collective (args ``Collective name``,
``dtype``, ``In msg nelems``/``Out msg nelems`` = local input/output numel, ``Group size``,
``Process Group Name``/``Description``/``Ranks``, ``Rank`` = own group rank, the root for
broadcast/reduce/gather/scatter, the peer for send/recv; ``Dst Rank``/``Src Rank`` global). Its
execution time is the matched NCCL kernel's (``ncclDevKernel_*``/``ncclKernel_*``: same ``External
id``, else same group and ``Seq`` in the metadata Kineto copies onto the kernel, else the kernel
launched between this call and the next); a kernel carrying that metadata without a CPU op is
imported on its own. The kernel *name* gives the op only: its ``_RING_LL``-style suffix is a
specialisation bucket, not the algorithm/protocol NCCL ran (NVIDIA/nccl ``src/device/generate.py``
builds only the "best kernel" specialisations), so ``nccl_algo``/``nccl_proto`` stay unknown.
Compute segments are the GPU kernels launched between two collectives (start/end = their span,
duration = their busy time); without GPU kernels, the host gaps.

**gloo traces** (no ``record_param_comms``): ``c10d::*`` CPU ops (sizes from ``Input Dims``, root
and peer from ``Concrete Inputs``; needs ``record_shapes=True``) matched to the ``gloo:*``
annotations that execute them on gloo's worker threads (execution time and dtype). gloo's events
carry no shapes where a rank has no payload, even with ``record_shapes=True``: ``gloo:barrier``
never, ``gloo:scatter`` not on the ranks that only receive; those match by order alone, and a
receiving rank's scatter takes its dtype from the same call on the group's other ranks (the root's
``gloo:scatter`` names it), its size from its own ``c10d::scatter_`` output. The c10d op
does not name its process group: each op gets one of the rank's groups such that (1) the sizes fit
(an all-gather's output is n × its input, a root/peer is a rank of the group), (2) ops run by one
gloo worker thread share a group (each group has its own threads) and (3) every member of a group
issues the same sequence of collectives on it. Among assignments that satisfy these, the most
plausible is taken: each group on at most gloo's default two worker threads, and threads created
later (larger thread id) serving groups created later. Send/recv name a group-local peer; when
several groups fit, the world group is taken. Ambiguities left (e.g. one rank's trace alone) are
noted.

Sizes: ``bytes_total`` is nccl-tests' size — AllReduce/Broadcast/Reduce: the buffer; AllGather:
the output (n × input); ReduceScatter: the input; AlltoAll: a rank's input; Send: the input; Recv:
the output; Gather/Scatter: n × the per-rank tensor. ``bytes_per_rank`` follows NCCL's count.
Barriers (``dist.barrier()``, no payload) become 1-element fp32 all-reduces labelled ``barrier``
(``BARRIER``): what PyTorch's NCCL backend runs for a barrier (``ProcessGroupNCCL::barrier``
all-reduces a one-element tensor). The trace schema has no payload-free operation, and a
zero-byte collective would not stand for one: NCCL returns at once on a zero count without
synchronising the ranks.

Steps: ``ProfilerStep#N`` events mark training steps 1..K (N renumbered from the smallest N in
all files). Ops before the first marker are setup traffic (DDP construction, barriers): step 0,
phase ``setup``. Inside a step an op is ``backward`` inside autograd's backward, ``step`` after the
step's last backward op, else ``forward``; ops after a step's end stay in that step. Without
markers everything is step 0, phase ``other``. The time between one op and the next becomes a
compute segment with its measured duration; dependencies follow the timestamps.
"""

from __future__ import annotations

import bisect
import itertools
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field

from dynamiccl import nccl
from dynamiccl.errors import InputError
from dynamiccl.profiler.importers._common import (
    CommRecord, ComputeRecord, GroupInfo, Notes, assemble, compute_gaps, dtype_name, expand_paths, is_type, load_json,
    parse_rank_list, rank_from_name,
)
from dynamiccl.trace.store import Trace

# c10d names in record_param_comms (torch/csrc/distributed/c10d) -> trace op
RPC_OPS = {
    "allreduce": "allreduce", "allreduce_coalesced": "allreduce", "all_reduce": "allreduce",
    "broadcast": "broadcast", "_broadcast_oop": "broadcast", "reduce": "reduce", "_reduce_oop": "reduce",
    "all_gather": "allgather", "allgather": "allgather", "_allgather_base": "allgather",
    "allgather_into_tensor_coalesced": "allgather", "allgather_coalesced": "allgather",
    "reduce_scatter": "reducescatter", "_reduce_scatter_base": "reducescatter",
    "reduce_scatter_tensor_coalesced": "reducescatter",
    "all_to_all": "alltoall", "all_to_allv": "alltoall", "alltoall": "alltoall", "alltoall_base": "alltoall",
    "gather": "gather", "scatter": "scatter", "send": "send", "recv": "recv", "recvAnySource": "recv",
    "barrier": "barrier",
}
RPC_SKIP = {"wait", "init", "coalesced", "startCoalescing", "endCoalescing"}
KERNEL_RE = re.compile(r"^(?:void )?nccl(?:Dev)?Kernel_(?P<func>[A-Za-z]+)")
STEP_RE = re.compile(r"^ProfilerStep#(\d+)$")
# How a barrier is recorded (module docstring): (op, dtype, bytes_total, label).
BARRIER = ("allreduce", "fp32", 4, "barrier")
BACKWARD_PREFIX = "autograd::engine::evaluate_function"


@dataclass(frozen=True)
class _C10dSpec:
    """How to read one c10d dispatcher op (schemas of torch.ops.c10d in PyTorch 2.13)."""

    op: str
    total_arg: int          # argument whose numel is the op's size
    times_n: bool = False   # size = numel × group size (list-of-outputs forms)
    local_arg: int = -1     # argument whose numel every member shares (for matching across ranks)
    async_arg: int | None = None
    root_arg: int | None = None   # Concrete Inputs index of the group-local root / peer
    ratio: tuple[int, int] | None = None  # (numerator arg, denominator arg): numel ratio = group size
    gloo: tuple[str, ...] = ()


C10D = {
    "allreduce_": _C10dSpec("allreduce", 0, local_arg=0, async_arg=4, gloo=("all_reduce",)),
    "allreduce_coalesced_": _C10dSpec("allreduce", 0, local_arg=0, async_arg=3, gloo=("all_reduce",)),
    "_allgather_base_": _C10dSpec("allgather", 0, local_arg=1, async_arg=3, ratio=(0, 1), gloo=("all_gather",)),
    "allgather_": _C10dSpec("allgather", 1, True, local_arg=1, async_arg=3, gloo=("all_gather",)),
    "allgather_coalesced_": _C10dSpec("allgather", 1, True, local_arg=1, async_arg=3, gloo=("all_gather",)),
    "allgather_into_tensor_coalesced_": _C10dSpec("allgather", 0, local_arg=1, async_arg=3, ratio=(0, 1),
                                                  gloo=("all_gather",)),
    "_reduce_scatter_base_": _C10dSpec("reducescatter", 1, local_arg=0, async_arg=4, ratio=(1, 0),
                                       gloo=("reduce_scatter", "all_reduce")),
    "reduce_scatter_": _C10dSpec("reducescatter", 0, True, local_arg=0, async_arg=4,
                                 gloo=("reduce_scatter", "all_reduce")),
    "reduce_scatter_tensor_coalesced_": _C10dSpec("reducescatter", 1, local_arg=0, async_arg=4, ratio=(1, 0),
                                                  gloo=("reduce_scatter", "all_reduce")),
    "broadcast_": _C10dSpec("broadcast", 0, local_arg=0, async_arg=4, root_arg=2, gloo=("broadcast",)),
    "reduce_": _C10dSpec("reduce", 0, local_arg=0, async_arg=5, root_arg=3, gloo=("reduce",)),
    "gather_": _C10dSpec("gather", 1, True, local_arg=1, async_arg=4, root_arg=3, gloo=("gather",)),
    "scatter_": _C10dSpec("scatter", 0, True, local_arg=0, async_arg=4, root_arg=3, gloo=("scatter",)),
    "alltoall_": _C10dSpec("alltoall", 1, local_arg=1, async_arg=3, gloo=("all_to_all", "alltoall")),
    "alltoall_base_": _C10dSpec("alltoall", 1, local_arg=1, async_arg=5, gloo=("all_to_all", "alltoall")),
    "send": _C10dSpec("send", 0, local_arg=0, root_arg=2, gloo=("send",)),
    "recv_": _C10dSpec("recv", 0, local_arg=0, root_arg=2, gloo=("recv",)),
    "barrier": _C10dSpec("barrier", 0, async_arg=3, gloo=("barrier",)),
    "monitored_barrier_": _C10dSpec("barrier", 0, gloo=("barrier",)),
}
_CPP_TYPES = {"long int": "int64", "long": "int64", "long long": "int64", "signed char": "int8",
              "unsigned char": "uint8", "unsigned int": "uint32", "unsigned long": "uint64",
              "unsigned long int": "uint64", "bool": "uint8"}
_NOT_DTYPES = {"", "TensorList", "Scalar", "ScalarList", "GenericList", "Tensor"}


@dataclass(eq=False)
class _Event:
    index: int
    name: str
    cat: str
    tid: object
    ts: float
    end: float
    args: dict

    @property
    def dur(self) -> float:
        return self.end - self.ts


@dataclass
class _Doc:
    path: str
    rank: int
    world: int | None
    dist: dict
    host: str
    events: list[_Event]
    pg_config: dict[str, tuple[list[int], str]] = field(default_factory=dict)


def _load(path: str, notes: Notes) -> _Doc:
    obj = load_json(path)
    if not isinstance(obj, dict) or not isinstance(obj.get("traceEvents"), list):
        raise InputError(path, "traceEvents", "missing: not a Chrome trace written by torch.profiler")
    dist = obj.get("distributedInfo") if isinstance(obj.get("distributedInfo"), dict) else {}
    events: list[_Event] = []
    for i, e in enumerate(obj["traceEvents"]):
        if not isinstance(e, dict) or e.get("ph") != "X":
            continue
        name = e.get("name")
        if not isinstance(name, str):
            raise InputError(path, f"traceEvents[{i}] field 'name'", f"expected a string, got {name!r}"[:200])
        interesting = (name == "record_param_comms" or name.startswith(("c10d::", "gloo:", "ProfilerStep#",
                                                                        BACKWARD_PREFIX))
                       or e.get("cat") in ("kernel", "cuda_runtime", "cuda_driver"))
        if not interesting:
            continue
        for key in ("ts", "dur"):
            if not is_type(e.get(key), float):
                raise InputError(path, f"traceEvents[{i}] ('{name}') field '{key}'",
                                 f"expected a number, got {e.get(key)!r}"[:200])
        args = e.get("args", {})
        if not isinstance(args, dict):
            raise InputError(path, f"traceEvents[{i}] ('{name}') field 'args'", "expected an object")
        events.append(_Event(i, name, str(e.get("cat", "")), e.get("tid"), float(e["ts"]),
                             float(e["ts"]) + max(float(e["dur"]), 0.0), args))
    rank = dist.get("rank") if is_type(dist.get("rank"), int) else None
    world = dist.get("world_size") if is_type(dist.get("world_size"), int) else None
    doc = _Doc(path, -1, world, dist, str(obj.get("host_name", "")), events)
    for j, cfg in enumerate(dist.get("pg_config") or []):
        if not isinstance(cfg, dict) or "pg_name" not in cfg:
            raise InputError(path, f"distributedInfo.pg_config[{j}] field 'pg_name'", "missing")
        ranks = parse_rank_list(cfg.get("ranks"))
        size = cfg.get("pg_size")
        if ranks is None and is_type(size, int) and world and size == world:
            ranks = list(range(world))
        if ranks is not None:
            doc.pg_config[str(cfg["pg_name"])] = (ranks, str(cfg.get("pg_desc", "") or ""))
    if rank is None:
        rank = _rank_from_events(doc)
    if rank is None:
        rank = rank_from_name(path)
        if rank is not None:
            notes.add(f"{path}: no distributedInfo; rank {rank} taken from the file name")
    if rank is None:
        raise InputError(path, "distributedInfo.rank", "missing, and neither the events nor the file name tell "
                                                       "the rank (name files like rank<R>.json)")
    doc.rank = rank
    return doc


def _rank_from_events(doc: _Doc) -> int | None:
    for e in doc.events:
        if e.name == "record_param_comms" and e.args.get("Collective name") in ("allreduce", "_allgather_base",
                                                                               "all_gather", "_reduce_scatter_base"):
            pg = str(e.args.get("Process Group Name", ""))
            ranks = doc.pg_config.get(pg, ([], ""))[0]
            rank = e.args.get("Rank")
            if is_type(rank, int) and doc.world and e.args.get("Group size") == doc.world:
                return ranks[rank] if ranks else rank
    return None


# --- steps and phases ------------------------------------------------------------------------------


class _Timeline:
    """Step windows and backward intervals of one rank's trace."""

    def __init__(self, doc: _Doc, first_step: int | None):
        self.steps: list[tuple[float, float, int]] = []
        for e in doc.events:
            m = STEP_RE.match(e.name)
            if m:
                self.steps.append((e.ts, e.end, int(m.group(1)) - first_step + 1 if first_step is not None else 1))
        self.steps.sort()
        self.starts = [s for s, _, _ in self.steps]
        backward: dict[object, list[tuple[float, float]]] = defaultdict(list)
        for e in doc.events:
            if e.name.startswith(BACKWARD_PREFIX):
                backward[e.tid].append((e.ts, e.end))
        self.backward = {tid: _merge(iv) for tid, iv in backward.items()}

    @property
    def windows(self) -> dict[int, tuple[float, float]]:
        return {n: (s, e) for s, e, n in self.steps}

    def place(self, ts: float) -> tuple[int, bool]:
        """(step, is setup) for an op issued at ``ts``."""
        if not self.steps:
            return 0, False
        i = bisect.bisect_right(self.starts, ts) - 1
        if i < 0:
            return 0, True
        return self.steps[i][2], False

    def in_backward(self, tid, ts: float) -> bool:
        intervals = self.backward.get(tid)
        if not intervals:
            return False
        i = bisect.bisect_right(intervals, (ts, math.inf)) - 1
        return i >= 0 and intervals[i][0] <= ts <= intervals[i][1]


def _merge(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for s, e in sorted(intervals):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def _phases(records: list[tuple[CommRecord, object]], timeline: _Timeline) -> None:
    """Set step and phase of (record, issuing tid) pairs sorted by issue time."""
    for rec, tid in records:
        step, setup = timeline.place(rec.issue_start_us)
        rec.step = step
        if setup:
            rec.phase = "setup"
        elif not timeline.steps:
            rec.phase = "other"
        else:
            rec.phase = "backward" if timeline.in_backward(tid, rec.issue_start_us) else "forward"
    last_backward: dict[int, int] = {}
    for i, (rec, _) in enumerate(records):
        if rec.phase == "backward":
            last_backward[rec.step] = i
    for i, (rec, _) in enumerate(records):
        if rec.phase == "forward" and rec.step in last_backward and i > last_backward[rec.step]:
            rec.phase = "step"


# --- groups ----------------------------------------------------------------------------------------


def _groups(docs: list[_Doc], world: int) -> dict[str, GroupInfo]:
    groups: dict[str, GroupInfo] = {}
    for doc in docs:
        for name, (ranks, desc) in doc.pg_config.items():
            old = groups.get(name)
            if old is not None and list(old.ranks) != ranks:
                raise InputError(doc.path, f"distributedInfo.pg_config '{name}'",
                                 f"ranks {ranks} differ from {list(old.ranks)} in another file")
            if old is None:
                groups[name] = GroupInfo(group_id=name, ranks=tuple(ranks), desc=desc)
    return groups


def _group_from_args(args: dict, world: int, path: str, where: str) -> tuple[list[int] | None, str]:
    ranks = parse_rank_list(args.get("Process Group Ranks"))
    size = args.get("Group size")
    start, stride = args.get("Global rank start"), args.get("Global rank stride")
    if ranks is None and is_type(start, int) and is_type(stride, int) and is_type(size, int) and start >= 0 \
            and stride > 0:
        ranks = [start + i * stride for i in range(size)]
    if ranks is None and is_type(size, int) and size == world:
        ranks = list(range(world))
    return ranks, str(args.get("Process Group Description", "") or "")


# --- entry point -----------------------------------------------------------------------------------


def read_kineto(paths: list[str], *, gpus_per_node: int = 8) -> Trace:
    """Import torch.profiler Chrome traces (``.json`` or ``.json.gz``), one per rank.

    Raises:
        InputError: naming the file, the event (``traceEvents[i]`` and its name) and the field:
            truncated JSON, a missing or mistyped field, an unknown collective or dtype, two files
            of one rank, a process group whose ranks no file gives, or gloo collectives that cannot
            be attributed to process groups.
    """
    files = expand_paths(paths)
    notes = Notes()
    docs = [_load(p, notes) for p in files]
    seen: dict[int, str] = {}
    for doc in docs:
        if doc.rank in seen:
            raise InputError(doc.path, "distributedInfo.rank", f"rank {doc.rank} again (also in {seen[doc.rank]})")
        seen[doc.rank] = doc.path
    world = max([d.world or 0 for d in docs] + [d.rank + 1 for d in docs]
                + [max(r) + 1 for d in docs for r, _ in d.pg_config.values()])
    markers = [int(m.group(1)) for d in docs for e in d.events if (m := STEP_RE.match(e.name))]
    first_step = min(markers) if markers else None
    if not markers:
        notes.add("no ProfilerStep#N markers: one step, setup traffic not told apart")
    groups = _groups(docs, world)
    records: dict[int, list] = {}
    gloo_docs = []
    for doc in docs:
        timeline = _Timeline(doc, first_step)
        if any(e.name == "record_param_comms" for e in doc.events) or any(
                e.cat == "kernel" and KERNEL_RE.match(e.name) for e in doc.events):
            records[doc.rank] = _nccl_rank(doc, timeline, groups, world, notes)
            cpu_side = sum(1 for e in doc.events if e.name.startswith("gloo:"))
            if cpu_side:
                notes.add(f"{doc.path}: {cpu_side} gloo:* operation(s) of CPU (gloo) groups in this NCCL trace are "
                          "not imported")
        else:
            gloo_docs.append((doc, timeline))
    if gloo_docs:
        records.update(_gloo_ranks(gloo_docs, groups, world, notes))
    used = {r.group_id for recs in records.values() for r in recs if isinstance(r, CommRecord)}
    return assemble(fmt="kineto", paths=files, world_size=world, gpus_per_node=gpus_per_node,
                    groups={g: groups[g] for g in used}, records=records, timed=True, notes=notes,
                    extra={"profiler_steps": sorted(set(markers))} if markers else None)


# --- NCCL: record_param_comms + kernels --------------------------------------------------------------


def _nccl_rank(doc: _Doc, timeline: _Timeline, groups: dict[str, GroupInfo], world: int, notes: Notes) -> list:
    rpcs = sorted((e for e in doc.events if e.name == "record_param_comms"), key=lambda e: (e.ts, e.index))
    kernels = [e for e in doc.events if e.cat == "kernel" and KERNEL_RE.match(e.name)]
    launches = {e.args.get("correlation"): e for e in doc.events
                if e.cat in ("cuda_runtime", "cuda_driver") and e.args.get("correlation") is not None}
    recs: list[tuple[CommRecord, object]] = []
    by_ext: dict = {}
    by_seq: dict = {}
    for e in rpcs:
        rec = _rpc_record(e, e.args, doc, groups, world, f"traceEvents[{e.index}] ('record_param_comms')")
        if rec is None:
            continue
        recs.append((rec, e.tid))
        ext = e.args.get("External id")
        if ext is not None:
            by_ext[ext] = rec
        seq = e.args.get("Seq")
        if seq is not None:
            by_seq[(str(e.args.get("Process Group Name", "")), seq, rec.kind == "p2p")] = rec
    issue_order = [(r.issue_start_us, r, tid) for r, tid in recs]
    starts_by_tid: dict = defaultdict(list)
    for t, r, tid in issue_order:
        starts_by_tid[tid].append((t, r))
    for lst in starts_by_tid.values():
        lst.sort(key=lambda x: x[0])
    start_keys = {tid: [t for t, _ in lst] for tid, lst in starts_by_tid.items()}
    exec_spans: dict[int, list[float]] = {}
    orphans = 0
    for k in kernels:
        rec = by_ext.get(k.args.get("External id"))
        if rec is None and k.args.get("Seq") is not None and k.args.get("Process Group Name") is not None:
            coll = k.args.get("Collective name")
            rec = by_seq.get((str(k.args["Process Group Name"]), k.args["Seq"], coll in ("send", "recv")))
        if rec is None:
            launch = launches.get(k.args.get("correlation"))
            if launch is not None:
                i = bisect.bisect_right(start_keys.get(launch.tid, []), launch.ts) - 1
                if i >= 0:
                    rec = starts_by_tid[launch.tid][i][1]
        if rec is None:
            if "Collective name" in k.args:
                own = _rpc_record(k, k.args, doc, groups, world, f"traceEvents[{k.index}] ('{k.name[:60]}')")
                if own is not None:
                    own.start_us, own.end_us = k.ts, k.end
                    recs.append((own, k.tid))
                continue
            orphans += 1
            continue
        span = exec_spans.setdefault(id(rec), [k.ts, k.end])
        span[0], span[1] = min(span[0], k.ts), max(span[1], k.end)
    if orphans:
        notes.add(f"{doc.path}: {orphans} NCCL kernel(s) matched no record_param_comms and carry no metadata; skipped")
    unmatched = 0
    for rec, _ in recs:
        span = exec_spans.get(id(rec))
        if span is not None:
            rec.start_us, rec.end_us = span
        elif not kernels:  # a CPU-only trace: the host call is all there is
            rec.start_us, rec.end_us = rec.issue_start_us, rec.issue_end_us
        elif not math.isfinite(rec.start_us):
            unmatched += 1  # host time would not compare with the GPU times of the rest: leave unmeasured
    if unmatched:
        notes.add(f"{doc.path}: {unmatched} collective(s) without a matching NCCL kernel have no measured time")
    recs.sort(key=lambda x: (x[0].issue_start_us, x[0].start_us))
    _phases(recs, timeline)
    comms = [r for r, _ in recs]
    compute_kernels = [e for e in doc.events if e.cat == "kernel" and not KERNEL_RE.match(e.name)]
    if compute_kernels:
        return _gpu_compute(comms, compute_kernels, launches, timeline)
    return compute_gaps(comms, timeline.windows)


def _rpc_record(e: _Event, args: dict, doc: _Doc, groups: dict[str, GroupInfo], world: int,
                where: str) -> CommRecord | None:
    path = doc.path
    name = args.get("Collective name")
    if not isinstance(name, str):
        raise InputError(path, f"{where} field 'Collective name'", f"expected a string, got {name!r}")
    if name in RPC_SKIP:
        return None
    if name not in RPC_OPS:
        raise InputError(path, f"{where} field 'Collective name'",
                         f"unknown collective {name!r}; expected one of {', '.join(sorted(RPC_OPS))}")
    op = RPC_OPS[name]
    pg = args.get("Process Group Name")
    if not is_type(pg, (str, int)):
        raise InputError(path, f"{where} field 'Process Group Name'", f"missing or not a string ({pg!r})")
    gid = str(pg)
    size = args.get("Group size")
    if not is_type(size, int) or size < 1:
        raise InputError(path, f"{where} field 'Group size'", f"expected a positive integer, got {size!r}")
    if gid not in groups:
        ranks, desc = _group_from_args(args, world, path, where)
        if ranks is None:
            raise InputError(path, f"{where} field 'Process Group Ranks'",
                             f"the ranks of process group {gid!r} are unknown (no distributedInfo.pg_config entry and "
                             "the event's list is missing or truncated)")
        groups[gid] = GroupInfo(group_id=gid, ranks=tuple(ranks), desc=desc)
    group = groups[gid]
    n = len(group.ranks)
    if size != n:
        raise InputError(path, f"{where} field 'Group size'", f"{size} but process group {gid!r} has {n} ranks")
    if doc.rank not in group.ranks:
        raise InputError(path, f"{where} field 'Process Group Name'",
                         f"rank {doc.rank} is not a member of process group {gid!r} (ranks {list(group.ranks)})")
    n_in = args.get("In msg nelems")
    n_out = args.get("Out msg nelems")
    for key, value in (("In msg nelems", n_in), ("Out msg nelems", n_out)):
        if not is_type(value, int) or value < 0:
            raise InputError(path, f"{where} field '{key}'", f"expected an integer >= 0, got {value!r}")
    if op == "barrier":
        op, dtype, total, label = BARRIER
        return CommRecord(kind="coll", op=op, group_id=gid, bytes_total=total, dtype=dtype, label=label,
                          issue_start_us=e.ts, issue_end_us=e.end)
    dtype_arg = args.get("dtype")
    if not isinstance(dtype_arg, str):
        raise InputError(path, f"{where} field 'dtype'", f"expected a dtype name, got {dtype_arg!r}")
    dtype = dtype_name(dtype_arg, path, f"{where} field 'dtype'")
    esize = nccl.DataType[dtype.upper()].size_bytes
    numel = {"allgather": n_out, "recv": n_out, "gather": n_in * n, "scatter": n_out * n}.get(op, n_in)
    peer = -1
    if op in nccl.ROOTED_OPS or op in nccl.P2P_OPS:
        key = {"send": "Dst Rank", "recv": "Src Rank"}.get(op)
        value = args.get(key) if key else None
        if is_type(value, int) and value in group.ranks:
            peer = value
        else:
            local = args.get("Rank")
            if not is_type(local, int) or not 0 <= local < n:
                raise InputError(path, f"{where} field 'Rank'",
                                 f"expected the {'peer' if op in nccl.P2P_OPS else 'root'}'s rank in the group "
                                 f"(0..{n - 1}), got {local!r}")
            peer = group.ranks[local]
        if op in nccl.P2P_OPS and peer == doc.rank:
            raise InputError(path, f"{where} field 'Rank'", f"{name} to itself")
    return CommRecord(kind="p2p" if op in nccl.P2P_OPS else "coll", op=op, group_id=gid, bytes_total=numel * esize,
                      dtype=dtype, peer=peer, label=name, issue_start_us=e.ts, issue_end_us=e.end)


def _gpu_compute(comms: list[CommRecord], kernels: list[_Event], launches: dict, timeline: _Timeline) -> list:
    """Interleave compute segments made of the GPU kernels launched between consecutive collectives."""
    launched = sorted(((launches[k.args["correlation"]].ts if k.args.get("correlation") in launches else k.ts), k)
                      for k in kernels)
    times = [t for t, _ in launched]
    windows = timeline.windows
    out: list = []

    def segment(lo: float, hi: float, step: int, phase: str) -> None:
        i, j = bisect.bisect_left(times, lo), bisect.bisect_left(times, hi)
        ks = [k for _, k in launched[i:j]]
        if not ks:
            return
        busy = sum(e - s for s, e in _merge([(k.ts, k.end) for k in ks]))
        out.append(ComputeRecord(step=step, phase=phase, start_us=min(k.ts for k in ks), end_us=max(k.end for k in ks),
                                 duration_us=busy, label="gpu compute"))

    prev: CommRecord | None = None
    for rec in comms:
        if prev is None or prev.step != rec.step:
            if prev is not None and prev.step in windows:
                segment(prev.issue_start_us, windows[prev.step][1], prev.step, "step")
            if rec.step in windows:
                segment(windows[rec.step][0], rec.issue_start_us, rec.step, rec.phase)
        elif not (prev.kind == rec.kind == "p2p" and prev.group_id == rec.group_id):
            segment(prev.issue_start_us, rec.issue_start_us, rec.step, rec.phase)
        out.append(rec)
        prev = rec
    if prev is not None and prev.step in windows:
        segment(prev.issue_start_us, windows[prev.step][1], prev.step, "step")
    return out


# --- gloo: c10d ops + gloo annotations -------------------------------------------------------------


@dataclass
class _GlooOp:
    event: _Event
    spec: _C10dSpec
    numels: list[int]
    concrete: list
    dtype: str | None
    exec: _Event | None = None
    candidates: list[str] = field(default_factory=list)
    group: str | None = None

    @property
    def local(self) -> int:
        return self.numels[self.spec.local_arg] if self.spec.local_arg >= 0 else 0

    def signature(self) -> tuple:
        return (self.spec.op, self.local)


def _arg_numels(e: _Event, path: str, where: str, shapes_recorded: bool = False) -> list[int]:
    """Element counts of the event's arguments (``Input Dims``).

    Raises:
        InputError: the shapes are missing (the advice depends on ``shapes_recorded``: whether
            other c10d events of the file have shapes, i.e. whether ``record_shapes`` was on) or
            are not shapes.
    """
    dims = e.args.get("Input Dims")
    types = e.args.get("Input type")
    if not isinstance(dims, list) or not isinstance(types, list):
        advice = ("although other c10d events of this trace have them (record_shapes was on): the trace is "
                  "damaged or edited" if shapes_recorded else
                  "profile with record_shapes=True so that collective sizes are recorded")
        raise InputError(path, f"{where} field 'Input Dims'", f"missing: {advice}")
    out = []
    for d, t in zip(dims, types + [""] * (len(dims) - len(types))):
        try:
            if t == "TensorList" or (d and isinstance(d[0], list)):
                out.append(sum(math.prod(int(x) for x in s) for s in d))
            elif t in ("Scalar", "ScalarList", "GenericList", "") and not d:
                out.append(0)
            else:
                out.append(math.prod(int(x) for x in d))
        except (TypeError, ValueError):
            raise InputError(path, f"{where} field 'Input Dims'", f"expected tensor shapes, got {d!r}") from None
    return out


def _cpp_dtype(text: str, path: str, where: str) -> str:
    key = text.strip()
    key = key[len("c10::"):] if key.startswith("c10::") else key
    return dtype_name(_CPP_TYPES.get(key, key), path, where)


def _gloo_ops(doc: _Doc, notes: Notes) -> list[_GlooOp]:
    path = doc.path
    c10d = sorted((e for e in doc.events if e.name.startswith("c10d::")), key=lambda e: (e.ts, e.index))
    shapes_recorded = any("Input Dims" in e.args for e in c10d)
    ops: list[_GlooOp] = []
    open_until: dict = {}
    unsupported: dict[str, int] = defaultdict(int)
    for e in c10d:
        if e.ts < open_until.get(e.tid, -math.inf):
            continue  # nested inside another c10d op (its own implementation)
        short = e.name[len("c10d::"):]
        spec = C10D.get(short)
        if spec is None:
            unsupported[short] += 1
            continue
        open_until[e.tid] = e.end
        where = f"traceEvents[{e.index}] ('{e.name}')"
        numels = _arg_numels(e, path, where, shapes_recorded)
        concrete = e.args.get("Concrete Inputs") or []
        dtype = None
        for t in e.args.get("Input type") or []:
            if isinstance(t, str) and t not in _NOT_DTYPES:
                dtype = _cpp_dtype(t, path, f"{where} field 'Input type'")
                break
        ops.append(_GlooOp(e, spec, numels, concrete, dtype))
    for name, count in sorted(unsupported.items()):
        notes.add(f"{path}: {count} c10d::{name} call(s) skipped (not an operation the trace format has)")
    # Match each op to the gloo annotation that executed it: same family and size, first after the call.
    annotations: dict[str, list[_Event]] = defaultdict(list)
    for e in doc.events:
        if e.name.startswith("gloo:"):
            annotations[e.name[5:].split(" ")[0]].append(e)
    starts: dict[str, list[float]] = {}
    for family, lst in annotations.items():
        lst.sort(key=lambda e: (e.ts, e.index))
        starts[family] = [e.ts for e in lst]
    used: set[int] = set()
    sizes: dict[int, list[int] | None] = {}
    for op in ops:
        best = None
        for family in op.spec.gloo:
            lst = annotations.get(family, [])
            for j in range(bisect.bisect_left(starts.get(family, []), op.event.ts - 1.0), len(lst)):
                cand = lst[j]
                if cand.index in used or (op.spec.op in nccl.P2P_OPS and cand.tid != op.event.tid):
                    continue
                if op.spec.op != "barrier":  # a barrier has no payload to compare
                    if cand.index not in sizes:  # None: no shapes on this event (a receiving rank's scatter)
                        sizes[cand.index] = (_arg_numels(cand, path, f"traceEvents[{cand.index}] ('{cand.name}')")
                                             if "Input Dims" in cand.args else None)
                    size = sizes[cand.index]
                    wanted = op.numels[op.spec.total_arg if op.spec.op == "reducescatter" and family == "all_reduce"
                                       else max(op.spec.local_arg, 0)]
                    if size and size[0] != wanted:
                        continue
                if best is None or cand.ts < best.ts:
                    best = cand
                break
        if best is not None:
            op.exec = best
            used.add(best.index)
            if op.dtype is None and op.spec.op != "barrier":
                types = best.args.get("Input type") or []
                if types and isinstance(types[0], str) and types[0] not in _NOT_DTYPES:
                    op.dtype = _cpp_dtype(types[0], path, f"traceEvents[{best.index}] ('{best.name}') field 'Input type'")
    return ops


def _concrete_int(op: _GlooOp, index: int, path: str) -> int:
    values = op.concrete
    value = values[index] if index < len(values) else None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InputError(path, f"traceEvents[{op.event.index}] ('{op.event.name}') field 'Concrete Inputs'",
                         f"expected an integer rank at position {index}, got {value!r}") from None


def _candidates(op: _GlooOp, rank: int, pgs: list[GroupInfo], path: str) -> list[str]:
    out = []
    for g in pgs:
        n = len(g.ranks)
        if op.spec.ratio is not None:
            num, den = op.numels[op.spec.ratio[0]], op.numels[op.spec.ratio[1]]
            if den and num != den * n:
                continue
        if op.spec.root_arg is not None:
            local = _concrete_int(op, op.spec.root_arg, path)
            if not 0 <= local < n:
                continue
            if op.spec.op in nccl.P2P_OPS and g.ranks[local] == rank:
                continue
        out.append(g.group_id)
    return out


def _gloo_ranks(docs: list[tuple[_Doc, _Timeline]], groups: dict[str, GroupInfo], world: int,
                notes: Notes) -> dict[int, list]:
    per_rank: dict[int, list[_GlooOp]] = {}
    clusters: dict[int, list[tuple[list[int], list[str]]]] = {}
    tids: dict[int, list] = {}
    orders: dict[int, dict[str, int]] = {}
    for doc, _ in docs:
        if not doc.pg_config:
            raise InputError(doc.path, "distributedInfo.pg_config",
                             "missing: a gloo trace needs the process groups torch.profiler records there")
        pgs = [groups[name] for name in doc.pg_config]
        ops = _gloo_ops(doc, notes)
        unexecuted = [o for o in ops if o.dtype is None and o.exec is None and o.spec.op != "barrier"]
        if unexecuted:
            notes.add(f"{doc.path}: {len(unexecuted)} op(s) skipped: no gloo:* event executed them (work that "
                      "finished after the profiler stopped)")
            ops = [o for o in ops if o not in unexecuted]
        for o in ops:
            o.candidates = _candidates(o, doc.rank, pgs, doc.path)
            if not o.candidates:
                raise InputError(doc.path, f"traceEvents[{o.event.index}] ('{o.event.name}')",
                                 "fits none of this rank's process groups (sizes, root or peer)")
            if o.spec.op in nccl.P2P_OPS:
                world_pg = [g for g in o.candidates if len(groups[g].ranks) == world]
                o.group = (world_pg or o.candidates)[0]
                if len(o.candidates) > 1:
                    notes.add(f"{doc.path}: a {o.spec.op} fits several process groups; the "
                              f"{'world' if world_pg else 'first'} one was taken")
        per_rank[doc.rank] = ops
        by_tid: dict = defaultdict(list)
        singles = []
        for i, o in enumerate(ops):
            if o.group is not None:
                continue
            if o.exec is not None and o.exec.tid != o.event.tid:
                by_tid[o.exec.tid].append(i)
            else:
                singles.append([i])
        rank_clusters = []
        for members in list(by_tid.values()) + singles:
            domain = [g for g in ops[members[0]].candidates if all(g in ops[m].candidates for m in members)]
            if domain:
                rank_clusters.append((members, domain))
            else:  # a thread shared by groups (unexpected): decide op by op
                rank_clusters.extend(([m], ops[m].candidates) for m in members)
        clusters[doc.rank] = rank_clusters
        tids[doc.rank] = [ops[members[0]].exec.tid if len(members) and ops[members[0]].exec is not None
                          and ops[members[0]].exec.tid != ops[members[0]].event.tid else None
                          for members, _ in rank_clusters]
        orders[doc.rank] = {name: i for i, name in enumerate(doc.pg_config)}
    _attribute(per_rank, clusters, tids, orders, groups, notes, docs[0][0].path)
    _dtypes_from_peers(per_rank, groups, notes)
    out: dict[int, list] = {}
    for doc, timeline in docs:
        recs = []
        for o in per_rank[doc.rank]:
            group = groups[o.group]
            n = len(group.ranks)
            spec = o.spec
            peer = -1
            if spec.root_arg is not None:
                peer = group.ranks[_concrete_int(o, spec.root_arg, doc.path)]
            if spec.op == "barrier":
                op, dtype, total, label = BARRIER
            else:
                op, dtype = spec.op, o.dtype
                total = o.numels[spec.total_arg] * (n if spec.times_n else 1) * nccl.DataType[dtype.upper()].size_bytes
                label = o.event.name
            flag = o.concrete[spec.async_arg] if spec.async_arg is not None and spec.async_arg < len(o.concrete) else None
            exec_ev = o.exec or o.event
            blocking = flag == "False" or (o.exec is not None and o.exec.tid == o.event.tid) or (
                spec.async_arg is None and o.exec is None)
            rec = CommRecord(kind="p2p" if op in nccl.P2P_OPS else "coll", op=op, group_id=o.group,
                             bytes_total=total, dtype=dtype, peer=peer, label=label, start_us=exec_ev.ts,
                             end_us=exec_ev.end, issue_start_us=o.event.ts, issue_end_us=o.event.end, blocking=blocking)
            recs.append((rec, o.event.tid))
        recs.sort(key=lambda x: x[0].issue_start_us)
        _phases(recs, timeline)
        out[doc.rank] = compute_gaps([r for r, _ in recs], timeline.windows)
    return out


def _dtypes_from_peers(per_rank: dict[int, list[_GlooOp]], groups: dict[str, GroupInfo], notes: Notes) -> None:
    """Give ops whose own events name no dtype (a receiving rank's scatter) the dtype of the same call
    on another rank of its group: the k-th collective on a group is one call on every member. Ops no
    member's events type are dropped with a note."""
    calls: dict[tuple[str, int], str] = {}
    position: dict[int, list[tuple[str, int] | None]] = {}
    for rank, ops in per_rank.items():
        count: dict[str, int] = defaultdict(int)
        keys = []
        for o in ops:
            if o.spec.op in nccl.P2P_OPS:
                keys.append(None)
                continue
            key = (o.group, count[o.group])
            count[o.group] += 1
            keys.append(key)
            if o.dtype is not None:
                calls.setdefault(key, o.dtype)
        position[rank] = keys
    for rank, ops in per_rank.items():
        untyped = []
        for o, key in zip(ops, position[rank]):
            if o.dtype is None and o.spec.op != "barrier":
                o.dtype = calls.get(key)
                if o.dtype is None:
                    untyped.append(o)
        if untyped:
            notes.add(f"rank {rank}: {len(untyped)} op(s) skipped: neither their own gloo:* events nor those of "
                      "the same call on other ranks name a dtype")
            per_rank[rank] = [o for o in ops if o not in untyped]


_SEARCH_BUDGET = 50_000
_THREADS_PER_GROUP = 2  # ProcessGroupGloo's default worker threads per group


def _ranked_choices(rank_clusters: list, tids: list, order: dict[str, int]) -> list[tuple[str, ...]] | None:
    """This rank's possible assignments, most plausible first.

    Plausible = each group runs on at most its default two worker threads, and threads created
    later (larger thread id) belong to groups created later (gloo starts a group's threads when
    the group is made).
    """
    domains = [d for _, d in rank_clusters]
    total = math.prod(len(d) for d in domains)
    if total > _SEARCH_BUDGET:
        return None
    scored = []
    for n, choice in enumerate(itertools.product(*domains)):
        by_group: dict[str, int] = defaultdict(int)
        threaded = []
        for tid, g in zip(tids, choice):
            if tid is not None:
                by_group[g] += 1
                threaded.append((tid, order.get(g, 0)))
        crowded = sum(max(0, c - _THREADS_PER_GROUP) for c in by_group.values())
        threaded.sort(key=lambda x: str(x[0]).zfill(20) if not isinstance(x[0], int) else x[0])
        inversions = sum(1 for i in range(len(threaded)) for j in range(i + 1, len(threaded))
                         if threaded[i][1] > threaded[j][1])
        scored.append((10 * crowded + inversions, n, choice))
    scored.sort()
    return [c for _, _, c in scored]


def _attribute(per_rank: dict[int, list[_GlooOp]], clusters: dict[int, list], tids: dict[int, list],
               orders: dict[int, dict[str, int]], groups: dict[str, GroupInfo], notes: Notes, source: str) -> None:
    """Give every undecided gloo op a group so that each group's members issue identical sequences."""
    ranks = sorted(per_rank)
    fixed: dict[tuple[int, str], list] = {}
    budget = [_SEARCH_BUDGET]
    choices = {r: _ranked_choices(clusters[r], tids[r], orders[r]) for r in ranks}
    if any(c is None for c in choices.values()):
        budget[0] = -1

    def sequences(rank: int, choice: tuple[str, ...]) -> dict[str, list]:
        ops = per_rank[rank]
        chosen = {}
        for (members, _), g in zip(clusters[rank], choice):
            for m in members:
                chosen[m] = g
        seqs: dict[str, list] = defaultdict(list)
        for i, o in enumerate(ops):
            g = o.group if o.group is not None else chosen.get(i)
            if o.spec.op not in nccl.P2P_OPS:
                seqs[g].append(o.signature())
        return seqs

    def consistent(rank: int, seqs: dict[str, list]) -> bool:
        for r2 in ranks:
            if (r2, "*") not in fixed:
                continue
            for g, group in groups.items():
                if rank in group.ranks and r2 in group.ranks and fixed.get((r2, g), []) != seqs.get(g, []):
                    return False
        return True

    def search(k: int) -> bool:
        if k == len(ranks):
            return True
        rank = ranks[k]
        for choice in choices[rank]:
            budget[0] -= 1
            if budget[0] < 0:
                return False
            seqs = sequences(rank, choice)
            if not consistent(rank, seqs):
                continue
            for g, s in seqs.items():
                fixed[(rank, g)] = s
            fixed[(rank, "*")] = choice
            if search(k + 1):
                return True
            for key in [key for key in fixed if key[0] == rank]:
                del fixed[key]
        return False

    if budget[0] < 0 or not search(0):
        why = "the search gave up (too many ways)" if budget[0] < 0 else "no assignment makes the ranks agree"
        raise InputError(source, None, "cannot tell which process group each gloo collective ran on: " + why +
                         "; give the traces of every rank of the job, or import NCCL traces or Flight Recorder dumps")
    ambiguous = 0
    for rank in ranks:
        choice = fixed[(rank, "*")]
        for (members, domain), g in zip(clusters[rank], choice):
            if len(domain) > 1:
                present = all(r in per_rank for r in groups[g].ranks)
                ambiguous += 0 if present else len(members)
            for m in members:
                per_rank[rank][m].group = g
    notes.add("gloo: c10d ops do not name their process group; groups were chosen to fit sizes, gloo worker threads "
              "and the order of calls across ranks")
    if ambiguous:
        notes.add(f"gloo: {ambiguous} op(s) fit several process groups whose other members' traces are missing; "
                  "the most plausible one (by gloo worker threads) was taken")
