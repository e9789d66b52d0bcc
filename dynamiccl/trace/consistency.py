"""Cross-rank consistency of a trace: do the ranks' steps fit together and run to the end?

For every process group whose members are all present in the trace:

- each collective call (the k-th collective on the group) is the same op with the same size and
  dtype on every member — NCCL hangs or corrupts data otherwise;
- every send has a matching receive on the peer (same group, same bytes, k-th with k-th);
- the step completes when replayed with the trace's dependencies, FIFO streams, collectives that
  finish only when all members have called them and p2p ops that finish only when both sides have —
  i.e. the schedule cannot deadlock.

Groups with members missing from the trace (a representative trace) are skipped and counted.
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass, field

import numpy as np

from dynamiccl.errors import InputError
from dynamiccl.trace.store import Trace


@dataclass
class ConsistencyReport:
    checked_groups: list[str] = field(default_factory=list)
    skipped_groups: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    completed_ops: int = 0
    total_ops: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def check_consistency(trace: Trace, step: int = 0, max_problems: int = 20) -> ConsistencyReport:
    """Check ``step`` of ``trace`` as described in the module docstring; never raises on bad data."""
    report = ConsistencyReport()
    ops = trace.ops[trace.ops["step"] == step]
    present = set(int(r) for r in ops["rank"].unique())
    full_groups = set()
    for gid, group in trace.meta.groups.items():
        (report.checked_groups if set(group.ranks) <= present else report.skipped_groups).append(gid)
        if set(group.ranks) <= present:
            full_groups.add(gid)

    def problem(text: str) -> None:
        if len(report.problems) < max_problems:
            report.problems.append(text)

    # Per-rank arrays.
    per_rank = {}
    for rank, frame in ops.groupby("rank", sort=True):
        per_rank[int(rank)] = {
            "kind": frame["kind"].to_numpy(dtype=object), "op": frame["op"].to_numpy(dtype=object),
            "stream": frame["stream"].to_numpy(dtype=object), "deps": list(frame["deps"]),
            "group": frame["group_id"].to_numpy(dtype=object), "seq": frame["group_seq"].to_numpy(),
            "peer": frame["peer"].to_numpy(), "bytes": frame["bytes_total"].to_numpy(),
            "dtype": frame["dtype"].to_numpy(dtype=object), "nccl_group": frame["nccl_group"].to_numpy(),
        }

    # Collectives: same sequence on every member.
    calls: dict[tuple[str, int], dict[int, tuple]] = defaultdict(dict)
    for rank, a in per_rank.items():
        for i in np.flatnonzero(a["kind"] == "coll"):
            if a["group"][i] in full_groups:
                calls[(a["group"][i], int(a["seq"][i]))][rank] = (a["op"][i], int(a["bytes"][i]), a["dtype"][i])
    for (gid, seq), by_rank in calls.items():
        members = trace.meta.groups[gid].ranks
        missing = [r for r in members if r not in by_rank]
        if missing:
            problem(f"group {gid}: collective #{seq} is called by ranks {sorted(by_rank)} but not by {missing}")
        elif len(set(by_rank.values())) > 1:
            variants = {v: r for r, v in by_rank.items()}
            problem(f"group {gid}: collective #{seq} differs across ranks: " +
                    "; ".join(f"rank {r}: {op} {b} B {dt}" for (op, b, dt), r in variants.items()))

    # P2P: k-th send r->q matches k-th recv at q from r on the same group.
    sends: dict[tuple, list[int]] = defaultdict(list)
    recvs: dict[tuple, list[int]] = defaultdict(list)
    for rank, a in per_rank.items():
        for i in np.flatnonzero(a["kind"] == "p2p"):
            gid, peer = a["group"][i], int(a["peer"][i])
            if gid not in full_groups:
                continue
            if a["op"][i] == "send":
                sends[(gid, rank, peer)].append(int(a["bytes"][i]))
            else:
                recvs[(gid, peer, rank)].append(int(a["bytes"][i]))
    for key in set(sends) | set(recvs):
        s, r = sends.get(key, []), recvs.get(key, [])
        if s != r:
            gid, src, dst = key
            problem(f"group {gid}: rank {src} sends {len(s)} messages to rank {dst}, which receives {len(r)}"
                    + ("" if len(s) != len(r) else " of different sizes"))

    # Replay to completion.
    finished: dict[int, np.ndarray] = {r: np.zeros(len(a["kind"]), dtype=bool) for r, a in per_rank.items()}
    launched: dict[int, np.ndarray] = {r: np.zeros(len(a["kind"]), dtype=bool) for r, a in per_rank.items()}
    # A stream's queue holds units: one op, or the ops of one ncclGroupStart/End, launched together.
    queues: dict[int, dict[str, deque]] = {}
    for rank, a in per_rank.items():
        q: dict[str, deque] = defaultdict(deque)
        for i, s in enumerate(a["stream"]):
            grp = int(a["nccl_group"][i])
            if grp >= 0 and q[s] and int(a["nccl_group"][q[s][-1][0]]) == grp:
                q[s][-1].append(i)
            else:
                q[s].append([i])
        queues[rank] = q
    coll_arrivals: dict[tuple[str, int], set[int]] = defaultdict(set)
    p2p_count: dict[tuple, int] = defaultdict(int)  # launched ops per (gid, src, dst, op)
    p2p_index: dict[tuple[int, int], tuple] = {}
    for rank, a in per_rank.items():
        counters: dict[tuple, int] = defaultdict(int)
        for i in np.flatnonzero(a["kind"] == "p2p"):
            src, dst = (rank, int(a["peer"][i])) if a["op"][i] == "send" else (int(a["peer"][i]), rank)
            key = (a["group"][i], src, dst, a["op"][i])
            p2p_index[(rank, i)] = (key, counters[key])
            counters[key] += 1

    def done(rank: int, i: int) -> bool:
        a = per_rank[rank]
        kind, gid = a["kind"][i], a["group"][i]
        if kind == "compute" or gid not in full_groups:
            return True
        if kind == "coll":
            return len(coll_arrivals[(gid, int(a["seq"][i]))]) == len(trace.meta.groups[gid].ranks)
        (g, src, dst, op), k = p2p_index[(rank, i)]
        other = "recv" if op == "send" else "send"
        return p2p_count[(g, src, dst, other)] > k

    progress = True
    while progress:
        progress = False
        for rank, streams in queues.items():
            a, fin, lau = per_rank[rank], finished[rank], launched[rank]
            for queue in streams.values():
                while queue:
                    unit = queue[0]
                    if not lau[unit[0]]:
                        if not all(fin[d] for i in unit for d in a["deps"][i]):
                            break
                        for i in unit:
                            lau[i] = True
                            if a["kind"][i] == "coll":
                                coll_arrivals[(a["group"][i], int(a["seq"][i]))].add(rank)
                            elif a["kind"][i] == "p2p":
                                p2p_count[p2p_index[(rank, i)][0]] += 1
                        progress = True
                    if not all(done(rank, i) for i in unit):
                        break
                    fin[unit] = True
                    queue.popleft()
                    progress = True
    report.total_ops = sum(len(f) for f in finished.values())
    report.completed_ops = sum(int(f.sum()) for f in finished.values())
    if report.completed_ops < report.total_ops:
        for rank, streams in queues.items():
            a = per_rank[rank]
            for stream, queue in streams.items():
                if queue:
                    i = queue[0][0]
                    state = ("waiting for its peers" if launched[rank][i] else
                             "waiting for op_index " + ", ".join(str(d) for j in queue[0] for d in a["deps"][j]
                                                                if not finished[rank][d]))
                    problem(f"deadlock: rank {rank} stream {stream} stuck at op_index {i} "
                            f"({a['op'][i]} on {a['group'][i] or 'compute'}, {state})")
    return report


def require_consistent(trace: Trace, step: int, source: str) -> ConsistencyReport:
    """:func:`check_consistency` for commands that replay a step (``replay``, ``train``,
    ``evaluate``, ``search``): a step ``dynamiccl trace check`` rejects is refused, not replayed.

    Raises:
        InputError: naming ``source`` and the step, with the first problems found.
    """
    report = check_consistency(trace, step, max_problems=3)
    if not report.ok:
        raise InputError(source, f"step {step}", "the ranks do not fit together: " + "; ".join(report.problems)
                         + f" (see `dynamiccl trace check {source} --step {step}`)")
    return report


def require_fit(world_size: int, gpus_per_node: int, cluster_world_size: int, source: str, cluster: str) -> None:
    """A trace of a job on ``world_size`` GPUs (``gpus_per_node`` a node) runs on a cluster of
    ``cluster_world_size`` GPUs only if the cluster holds the job: its calls span the job's nodes.

    Raises:
        InputError: naming the trace (``source``), its ``world_size`` and the cluster (a spec name).
    """
    if world_size > cluster_world_size:
        raise InputError(source, "world_size", f"a {world_size}-GPU trace ({gpus_per_node} GPUs a node) does not "
                         f"fit {cluster} ({cluster_world_size} GPUs); expected an environment spec with at least "
                         f"{world_size} GPUs")
