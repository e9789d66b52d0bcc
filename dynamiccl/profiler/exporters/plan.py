"""Which rows every rank of the job runs, for exporters that write one file per rank.

A generated trace may hold one *representative* rank per pipeline stage (``TraceMeta.roles``): the
other ranks of that stage run the same step on their own process groups with their own peers.
Simulators and replayers need a file for every rank, so ``plan_export`` maps each rank of the job
(0 .. world_size-1) to the rows it runs:

- a rank present in the trace runs its own rows;
- a rank that is only represented runs its representative's rows, with every process group
  replaced by the rank's own group of the same kind and every peer moved with it: a send/recv
  peer keeps its offset from the rank within the group (the next rank of a context-parallel ring
  stays the next one, the next pipeline stage stays the next stage), a broadcast/reduce root keeps
  its position in the group. Stream names ``comm:<group>`` follow the group; op order, deps,
  sizes, durations and ``group_seq`` are unchanged.

The groups of a represented rank come from the parallel layout the generator records in the
metadata (``workload.layout``, Megatron's rank order), after checking that the layout reproduces the
representative's own groups. Expanding ``dynamiccl generate`` output this way gives exactly the
trace ``--all-ranks`` generates (a test checks it for TP/PP/DP, CP, EP, VPP and FSDP layouts).

Refused with ``InputError`` (nothing is written): a representative trace without a usable layout,
or one whose groups the layout does not reproduce; a trace whose ranks, present or represented, do
not cover every rank of the job.

Process groups are numbered once for the whole job (``ExportPlan.pg_ids``), so every rank's file
names a group by the same integer: the group of kind ``world`` spanning ranks 0..n-1 in order is 0
(PyTorch's default group), the others 1, 2, ... ordered by (kind, ranks). The Chakra export adds
one to every number, since ASTRA-sim reserves 0 (``chakra.comm_group_ids``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from dynamiccl.errors import InputError
from dynamiccl.trace.schema import GROUP_KINDS, Group, RankRole, TraceMeta, comm_stream, validate_ops
from dynamiccl.trace.store import Trace, _canonical


@dataclass
class RankPlan:
    """Rank ``rank`` runs the rows of ``source`` with ``groups`` (source group id -> own group)."""

    rank: int
    source: int
    groups: dict[str, Group]


@dataclass
class ExportPlan:
    """Every rank of the job, the rows it runs and the numbering of its process groups.

    Attributes:
        trace: the trace being exported (validated).
        plans: one ``RankPlan`` per rank 0 .. world_size-1.
        groups: every process group some rank's rows use, by group id.
        pg_ids: a job-wide integer per group id (see the module docstring).
    """

    trace: Trace
    plans: dict[int, RankPlan]
    groups: dict[str, Group]
    pg_ids: dict[str, int] = field(default_factory=dict)
    _frames: dict[int, pd.DataFrame] = field(default_factory=dict, repr=False)

    @property
    def world_size(self) -> int:
        return self.trace.meta.world_size

    @property
    def ranks(self) -> list[int]:
        return sorted(self.plans)

    @property
    def expanded(self) -> bool:
        """True when some rank runs another rank's rows (the trace was representative)."""
        return any(p.rank != p.source for p in self.plans.values())

    def ops(self, rank: int) -> pd.DataFrame:
        """The rows ``rank`` runs, in issue order (step, op_index), with its own groups and peers."""
        plan = self.plans[rank]
        frame = self._frames[plan.source]
        if plan.rank == plan.source:
            return frame
        out = frame.copy()
        out["rank"] = np.int32(rank)
        gid = frame["group_id"].to_numpy(dtype=object)
        new_gid = np.array([plan.groups[g].group_id if g else "" for g in gid], dtype=object)
        out["group_id"] = new_gid
        out["group_nnodes"] = np.array([plan.groups[g].nnodes if g else 0 for g in gid], dtype=np.int32)
        streams = frame["stream"].to_numpy(dtype=object)
        renamed = {comm_stream(old): comm_stream(new.group_id) for old, new in plan.groups.items()}
        out["stream"] = np.array([renamed.get(s, s) for s in streams], dtype=object)
        peer = frame["peer"].to_numpy().copy()
        kind = frame["kind"].to_numpy(dtype=object)
        for i in np.flatnonzero(peer >= 0):
            old = self.trace.meta.groups[gid[i]]
            new = plan.groups[gid[i]]
            pos = old.ranks.index(int(peer[i]))
            if kind[i] == "p2p":
                offset = pos - old.ranks.index(plan.source)
                peer[i] = new.ranks[(new.ranks.index(rank) + offset) % new.size]
            else:
                peer[i] = new.ranks[pos]
        out["peer"] = peer.astype(np.int32)
        return out

    def expanded_trace(self) -> Trace:
        """The trace with every rank's rows materialised (memory grows with the world size)."""
        ops = pd.concat([self.ops(r) for r in self.ranks], ignore_index=True)
        meta = self.trace.meta
        roles = {r: RankRole(r, ((r, r),), meta.roles[self.plans[r].source].role) for r in self.ranks}
        groups = dict(meta.groups)
        groups.update(self.groups)
        new_meta = TraceMeta(source=meta.source, world_size=meta.world_size, gpus_per_node=meta.gpus_per_node,
                             groups=groups, roles=roles, workload=meta.workload, compute=meta.compute,
                             description=meta.description, created_by=meta.created_by,
                             schema_version=meta.schema_version)
        trace = Trace(ops=ops, meta=new_meta)
        trace.validate("expanded trace")
        return trace


def plan_export(trace: Trace, source: str = "trace") -> ExportPlan:
    """Validate ``trace`` and work out what every rank of the job runs (module docstring).

    Raises:
        InputError: the trace is invalid, or cannot be expanded to every rank (the message says why
            and how to get a trace with every rank).
    """
    ops = _canonical(trace.ops, source)  # schema dtypes (deps as int32 arrays), sorted by (step, rank, op_index)
    validate_ops(ops, trace.meta, source)
    meta = trace.meta
    frames = {int(r): f.reset_index(drop=True) for r, f in ops.groupby("rank", sort=True)}
    for rank in meta.roles:
        if rank not in frames:
            raise InputError(source, "metadata 'roles'", f"rank {rank} is listed but has no operations")

    covered: dict[int, int] = {}
    for role in meta.roles.values():
        for lo, hi in role.represents:
            for r in range(lo, hi + 1):
                covered[r] = role.rank
    missing = [r for r in range(meta.world_size) if r not in covered]
    if missing:
        raise InputError(source, "metadata 'roles'",
                         f"ranks {_ranges_text(missing)} of the {meta.world_size}-rank job have no operations and "
                         "no representative; an export needs every rank (write a trace with every rank, e.g. "
                         "`dynamiccl generate --all-ranks`)")

    registry = _GroupRegistry(meta)
    used = {rank: [g for g in pd.unique(frame["group_id"]) if g] for rank, frame in frames.items()}
    layout = None
    if any(covered[r] != r for r in covered):
        layout = _layout_of(meta, source)
        for rep, gids in used.items():
            for gid in gids:
                group = meta.groups[gid]
                try:
                    expected = tuple(int(x) for x in layout.group_ranks(group.kind, rep))
                except ValueError:
                    expected = None
                if expected != group.ranks:
                    raise InputError(source, f"group '{gid}'",
                                     f"representative rank {rep} uses group {gid} ({group.kind}, ranks "
                                     f"{list(group.ranks)}) that the recorded parallel layout does not produce, so "
                                     "the ranks it represents cannot be derived; export a trace with every rank "
                                     "(e.g. `dynamiccl generate --all-ranks`)")
    plans: dict[int, RankPlan] = {}
    for rank in range(meta.world_size):
        rep = covered[rank]
        if rep == rank:
            plans[rank] = RankPlan(rank, rank, {gid: meta.groups[gid] for gid in used[rep]})
        else:
            mapping = {}
            for gid in used[rep]:
                group = meta.groups[gid]
                if group.kind == "world":  # every rank's, checked above; skip building n-rank tuples n times
                    mapping[gid] = group
                    continue
                ranks = tuple(int(x) for x in layout.group_ranks(group.kind, rank))
                mapping[gid] = registry.get(group.kind, ranks, group.desc)
            plans[rank] = RankPlan(rank, rep, mapping)
    groups: dict[str, Group] = {}
    for plan in plans.values():
        for group in plan.groups.values():
            groups[group.group_id] = group
    return ExportPlan(trace=trace, plans=plans, groups=groups, pg_ids=number_groups(groups, meta.world_size),
                      _frames=frames)


def number_groups(groups: dict[str, Group], world_size: int) -> dict[str, int]:
    """A job-wide integer per group id: the ``world`` group over 0..n-1 is 0, others 1.. by (kind, ranks)."""
    out: dict[str, int] = {}
    world = tuple(range(world_size))
    rest = []
    for gid, group in groups.items():
        if group.kind == "world" and group.ranks == world and 0 not in out.values():
            out[gid] = 0
        else:
            rest.append(group)
    order = {kind: i for i, kind in enumerate(GROUP_KINDS)}
    rest.sort(key=lambda g: (order.get(g.kind, len(order)), g.ranks, g.group_id))
    for i, group in enumerate(rest, start=1):
        out[group.group_id] = i
    return out


class _GroupRegistry:
    """Groups of represented ranks: reuse the metadata's group with the same kind and ranks."""

    def __init__(self, meta: TraceMeta):
        self.meta = meta
        self.by_key = {(g.kind, g.ranks): g for g in meta.groups.values()}
        self.ids = set(meta.groups)

    def get(self, kind: str, ranks: tuple[int, ...], desc: str) -> Group:
        found = self.by_key.get((kind, ranks))
        if found is not None:
            return found
        gid = f"{kind}.{min(ranks)}"
        n = 1
        while gid in self.ids:
            gid = f"{kind}.{min(ranks)}.{n}"
            n += 1
        nnodes = len({r // self.meta.gpus_per_node for r in ranks})
        group = Group(gid, kind, ranks, nnodes, desc)
        self.by_key[(kind, ranks)] = group
        self.ids.add(gid)
        return group


def _layout_of(meta: TraceMeta, source: str):
    from dynamiccl.workload.layout import ParallelLayout

    raw = meta.workload.get("layout") if isinstance(meta.workload, dict) else None
    reps = ", ".join(
        f"rank {r.rank} stands for {_ranges_text([x for lo, hi in r.represents for x in range(lo, hi + 1)])}"
        for r in sorted(meta.roles.values(), key=lambda r: r.rank) if r.count > 1)
    if not isinstance(raw, dict):
        raise InputError(source, "metadata 'workload.layout'",
                         f"this is a representative trace ({reps}) without the parallel layout that says which "
                         "groups and peers the represented ranks use, so it cannot be expanded to every rank; "
                         "export a trace with every rank (e.g. `dynamiccl generate --all-ranks`)")
    try:
        layout = ParallelLayout(**raw)
    except TypeError as exc:
        raise InputError(source, "metadata 'workload.layout'", f"not a parallel layout this dynamiccl reads ({exc})") \
            from None
    if layout.world_size != meta.world_size:
        raise InputError(source, "metadata 'workload.layout'",
                         f"the layout spans {layout.world_size} ranks but the trace's world size is {meta.world_size}")
    return layout


def _ranges_text(ranks: list[int]) -> str:
    parts = []
    start = prev = None
    for r in sorted(ranks):
        if start is None:
            start = prev = r
        elif r == prev + 1:
            prev = r
        else:
            parts.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = r
    if start is not None:
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ", ".join(parts)
