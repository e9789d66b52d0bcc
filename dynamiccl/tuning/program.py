"""A trace step compiled for replay: ops with their predecessors, and the calls that join them.

``StepProgram.from_trace(trace, step)`` turns one step of a trace into flat lists the timeline
(:mod:`dynamiccl.tuning.timeline`) walks without pandas:

- **ops**: every op of every rank in the file, with its predecessors: the trace's ``deps`` plus the
  previous op on the same stream (streams are FIFO). Ops issued inside one ``ncclGroupStart/End``
  (same ``nccl_group`` on the same stream) are launched together: each waits for what preceded the
  group, and whatever follows the group waits for all of them. Consecutive compute ops that nothing
  else waits on in between are merged into one (exact for the replay: no event can fall between
  them), which keeps the replay of a 405B step small; the merged op keeps the durations of the
  trace's compute ops in it (``op_segments_us``: a collective launched beside one waits for it to
  end, the launch delay of :mod:`dynamiccl.costmodel.interference`).
- **calls**: one communication event shared by the ranks taking part. A collective is one call per
  (group, position on that group), joining that call's op on every rank of the group present in
  the file. A send and the matching receive (the k-th send from rank class A to class B with the
  k-th receive on B from A, where a class is the ranks one file rank represents) form one call, as
  NCCL's rendezvous makes them start and end together. A transfer whose peer is represented by the
  same file rank (symmetric ranks) has nobody to wait for in the file and is a call of its own.

Only the five collectives NCCL's tuner is asked about are *tunable*; send/recv and AlltoAll (which
NCCL runs as grouped send/recv) always get NCCL's own configuration, as the tuner ABI does not route
them (NVIDIA/nccl ``src/enqueue.cc`` asks the tuner plugin only about the ``NCCL_NUM_FUNCTIONS`` = 5
collectives of ``src/include/nccl_common.h``, "Send/Recv not included").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dynamiccl.callkey import CallKey
from dynamiccl.costmodel.batch import COSTED_FUNCS
from dynamiccl.errors import InputError
from dynamiccl.nccl import OP_FUNC, TUNABLE_FUNCS, Func
from dynamiccl.trace.store import Trace

_TUNABLE = {int(f) for f in TUNABLE_FUNCS}


@dataclass
class StepProgram:
    """One compiled training step. Op and call ids index the parallel lists below.

    Ops: ``op_rank`` (index into ``ranks``), ``op_is_compute``, ``op_base_us`` (compute work in µs at
    full speed; 0 for communication), ``op_segments_us`` (the trace compute ops merged into it, µs at
    full speed, in order, summing to ``op_base_us``; empty for communication), ``op_call`` (call id or
    -1), ``op_succ`` (ops that list this one as a predecessor), ``op_npred``.

    Calls: ``call_key`` (the :class:`~dynamiccl.callkey.CallKey` the tuner plugin sees: collective,
    NCCL's nBytes, nranks, nnodes, numPipeOps and ``position``, the index among the collectives
    of its communicator in this step), ``call_ops`` (member op per file rank), ``call_ranks``,
    ``call_tunable``, ``call_group`` / ``call_kind`` (process group id and kind), ``call_label``.

    Ranks: ``ranks`` (the file's global ranks) and ``rank_gpus`` (per file rank, the GPUs it stands
    for: 1, or the size of its role in a representative trace), for figures "per GPU of the step".
    """

    source: str
    step: int
    ranks: list[int]
    rank_gpus: list[int] = field(default_factory=list)
    op_rank: list[int] = field(default_factory=list)
    op_is_compute: list[bool] = field(default_factory=list)
    op_base_us: list[float] = field(default_factory=list)
    op_segments_us: list[list[float]] = field(default_factory=list)
    op_call: list[int] = field(default_factory=list)
    op_succ: list[list[int]] = field(default_factory=list)
    op_npred: list[int] = field(default_factory=list)
    call_key: list[CallKey] = field(default_factory=list)
    call_ops: list[list[int]] = field(default_factory=list)
    call_ranks: list[list[int]] = field(default_factory=list)
    call_tunable: list[bool] = field(default_factory=list)
    call_group: list[str] = field(default_factory=list)
    call_kind: list[str] = field(default_factory=list)
    call_label: list[str] = field(default_factory=list)
    # Per file rank: op ids of its compute chain in order, and prefix sums of their work (µs).
    compute_chain: list[list[int]] = field(default_factory=list)
    gpus_per_node: int = 1
    world_size: int = 1
    workload: dict = field(default_factory=dict)
    compute: dict = field(default_factory=dict)  # the trace's compute provenance (GPU, peak, efficiency)

    @property
    def num_ops(self) -> int:
        return len(self.op_rank)

    @property
    def num_calls(self) -> int:
        return len(self.call_key)

    @property
    def tunable_calls(self) -> list[int]:
        return [c for c, t in enumerate(self.call_tunable) if t]

    def compute_us(self) -> float:
        """Total compute work of the step at full speed, summed over file ranks (µs)."""
        return float(sum(b for b, c in zip(self.op_base_us, self.op_is_compute) if c))

    def busiest_rank_compute_us(self) -> float:
        """Compute work at full speed (µs) of the file rank with the most: the step time if every
        collective were free or hidden."""
        return max(sum(self.op_base_us[op] for op in chain) for chain in self.compute_chain)

    @classmethod
    def from_trace(cls, trace: Trace, step: int | None = None, source: str = "<trace>") -> "StepProgram":
        """Compile ``step`` of ``trace`` (default: the last step, a steady-state one in recorded traces).

        Raises:
            InputError: the step is not in the trace, or an op uses a collective the cost models
                cannot cost (gather/scatter), naming the source, rank and op.
        """
        ops = trace.ops
        steps = sorted(int(s) for s in ops["step"].unique())
        if step is None:
            step = steps[-1]
        if step not in steps:
            raise InputError(source, "step", f"step {step} is not in the trace (it has {steps})")
        prog = cls(source=source, step=step, ranks=[], gpus_per_node=trace.meta.gpus_per_node,
                   world_size=trace.meta.world_size, workload=dict(trace.meta.workload),
                   compute=dict(trace.meta.compute))
        rep_of = {}
        roles = trace.meta.roles
        for role in roles.values():
            for lo, hi in role.represents:
                for r in range(lo, hi + 1):
                    rep_of[r] = role.rank
        groups = trace.meta.groups
        frame = ops[ops["step"] == step]
        coll_calls: dict[tuple[str, int], int] = {}
        sends: dict[tuple, list[int]] = {}
        recvs: dict[tuple, list[int]] = {}
        for rank in sorted(int(r) for r in frame["rank"].unique()):
            ri = len(prog.ranks)
            prog.ranks.append(rank)
            prog.rank_gpus.append(roles[rank].count if rank in roles else 1)
            _compile_rank(prog, frame[frame["rank"] == rank], ri, rank, rep_of, groups, coll_calls,
                          sends, recvs, source)
        _pair_transfers(prog, sends, recvs)
        for c, members in enumerate(prog.call_ops):
            prog.call_ranks[c] = sorted({prog.op_rank[g] for g in members})
        return prog


def _new_call(prog: StepProgram, func: int, nbytes: int, nranks: int, nnodes: int, pipe_ops: int,
              position: int, group: str, kind: str, label: str) -> int:
    prog.call_key.append(CallKey(func, nbytes, nranks, nnodes, position=position, num_pipe_ops=pipe_ops))
    prog.call_ops.append([])
    prog.call_ranks.append([])
    prog.call_tunable.append(func in _TUNABLE)
    prog.call_group.append(group)
    prog.call_kind.append(kind)
    prog.call_label.append(label)
    return len(prog.call_key) - 1


def _compile_rank(prog, rows, ri, rank, rep_of, groups, coll_calls, sends, recvs, source) -> None:
    kind = rows["kind"].tolist()
    opname = rows["op"].tolist()
    stream = rows["stream"].tolist()
    deps = [list(map(int, d)) for d in rows["deps"]]
    duration = np.nan_to_num(rows["duration_us"].to_numpy(dtype=float)).tolist()
    group_id = rows["group_id"].tolist()
    group_seq = rows["group_seq"].tolist()
    nccl_group = rows["nccl_group"].tolist()
    peer = rows["peer"].tolist()
    nbytes = rows["bytes_total"].tolist()
    size = rows["group_size"].tolist()
    nnodes = rows["group_nnodes"].tolist()
    label = rows["label"].tolist()
    op_index = rows["op_index"].tolist()
    n = len(kind)
    local = {op_index[i]: i for i in range(n)}  # op_index -> row (a step of a multi-step file starts > 0)

    # Predecessors: deps plus the stream order, with ncclGroup members launched together.
    preds: list[list[int]] = []
    last_on_stream: dict[str, list[int]] = {}   # ops the next op on the stream waits for
    open_group: dict[str, tuple[int, list[int], list[int]]] = {}  # stream -> (nccl_group, before, members)
    for i in range(n):
        p = [local[d] for d in deps[i] if d in local]
        s, g = stream[i], nccl_group[i]
        current = open_group.get(s)
        if g >= 0 and current is not None and current[0] == g:
            p.extend(current[1])
            current[2].append(i)
        else:
            before = last_on_stream.get(s, [])
            p.extend(before)
            if g >= 0:
                open_group[s] = (g, list(before), [i])
            else:
                open_group.pop(s, None)
        current = open_group.get(s)
        last_on_stream[s] = list(current[2]) if current is not None and current[0] == g and g >= 0 else [i]
        preds.append(sorted(set(p)))

    # numPipeOps: collectives of the same kind fused in one ncclGroup on one communicator.
    pipe: dict[tuple, int] = {}
    for i in range(n):
        if kind[i] == "coll" and nccl_group[i] >= 0:
            key = (nccl_group[i], group_id[i], opname[i])
            pipe[key] = pipe.get(key, 0) + 1

    # Merge a compute op into the compute op before it when nothing but it waits on that op and it
    # waits on no communication: the two then run back to back whatever the timeline does.
    waited_by_comm = [False] * n
    for i in range(n):
        if kind[i] != "compute":
            for d in preds[i]:
                waited_by_comm[d] = True
    merged_into = list(range(n))
    segments = [[max(0.0, d)] for d in duration]  # per head: the compute ops merged into it
    last_compute = -1
    for i in range(n):
        if kind[i] != "compute":
            continue
        only_compute_preds = all(kind[d] == "compute" for d in preds[i])
        if (last_compute >= 0 and only_compute_preds and not waited_by_comm[last_compute]
                and last_compute in preds[i]):
            head = merged_into[last_compute]
            merged_into[i] = head
            duration[head] += duration[i]
            segments[head].append(max(0.0, duration[i]))
        last_compute = i

    gid_of_row: dict[int, int] = {}
    chain: list[int] = []
    for i in range(n):
        if merged_into[i] != i:
            gid_of_row[i] = gid_of_row[merged_into[i]]
            continue
        g = len(prog.op_rank)
        gid_of_row[i] = g
        prog.op_rank.append(ri)
        is_compute = kind[i] == "compute"
        prog.op_is_compute.append(is_compute)
        prog.op_base_us.append(max(0.0, duration[i]) if is_compute else 0.0)
        prog.op_segments_us.append(segments[i] if is_compute else [])
        prog.op_succ.append([])
        prog.op_npred.append(0)
        call = -1
        if is_compute:
            chain.append(g)
        else:
            func = OP_FUNC.get(opname[i])
            if func not in COSTED_FUNCS:
                raise InputError(source, f"rank {rank} op {op_index[i]}",
                                 f"cannot replay a {opname[i]!r} (the cost models do not cost it)")
            func = int(func)
            gk = groups[group_id[i]].kind if group_id[i] in groups else "unknown"
            if kind[i] == "coll":
                key = (group_id[i], group_seq[i])
                call = coll_calls.get(key, -1)
                if call < 0:
                    npo = pipe.get((nccl_group[i], group_id[i], opname[i]), 1) if nccl_group[i] >= 0 else 1
                    call = _new_call(prog, func, int(nbytes[i]), int(size[i]), int(nnodes[i]), npo,
                                     int(group_seq[i]), group_id[i], gk, label[i])
                    coll_calls[key] = call
            else:  # send / recv: paired after every rank is read
                src_cls = rank if opname[i] == "send" else rep_of.get(int(peer[i]), -1)
                dst_cls = rep_of.get(int(peer[i]), -1) if opname[i] == "send" else rank
                cross_node = rank // prog.gpus_per_node != int(peer[i]) // prog.gpus_per_node
                call = _new_call(prog, int(Func.SEND), int(nbytes[i]), 2, 2 if cross_node else 1, 1,
                                 int(group_seq[i]), group_id[i], gk, label[i])
                if src_cls != dst_cls and src_cls >= 0 and dst_cls >= 0:
                    (sends if opname[i] == "send" else recvs).setdefault((group_id[i], src_cls, dst_cls), []).append(call)
            prog.call_ops[call].append(g)
        prog.op_call.append(call)
    prog.compute_chain.append(chain)
    # Edges between the surviving ops (a merged op's edges are its head's).
    for i in range(n):
        g = gid_of_row[i]
        for d in preds[i]:
            h = gid_of_row[d]
            if h != g and g not in prog.op_succ[h]:
                prog.op_succ[h].append(g)
                prog.op_npred[g] += 1


def _pair_transfers(prog: StepProgram, sends: dict, recvs: dict) -> None:
    """Join the k-th send from class A to class B with the k-th receive on B from A into one call
    (the receive's call is emptied and marked dead by an empty op list)."""
    dead = set()
    for key, send_calls in sends.items():
        recv_calls = recvs.get(key, [])
        for s, r in zip(send_calls, recv_calls):
            prog.call_ops[s].extend(prog.call_ops[r])
            for g in prog.call_ops[r]:
                prog.op_call[g] = s
            prog.call_ops[r] = []
            dead.add(r)
    if not dead:
        return
    # Renumber calls without the emptied ones.
    keep = [c for c in range(prog.num_calls) if c not in dead]
    new_id = {c: i for i, c in enumerate(keep)}
    for name in ("call_key", "call_ops", "call_ranks", "call_tunable", "call_group", "call_kind", "call_label"):
        values = getattr(prog, name)
        setattr(prog, name, [values[c] for c in keep])
    prog.op_call = [new_id[c] if c >= 0 else -1 for c in prog.op_call]
