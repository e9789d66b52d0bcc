"""``TraceBuilder``: record ops rank by rank and get a validated ``Trace``.

Used by the workload generator, the live profiler and the importers, so that every source fills the
bookkeeping columns (op_index, stream, group_seq, group size and nodes, per-rank bytes) the same way.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections import defaultdict
from typing import Iterable, Iterator

import pandas as pd

from dynamiccl import nccl
from dynamiccl.trace.schema import (
    COLUMN_NAMES, COMPUTE_STREAM, Group, RankRole, TraceMeta, bytes_per_rank_of, comm_stream, ranges_of,
)
from dynamiccl.trace.store import Trace


@functools.lru_cache(maxsize=None)
def _dtype_name(dtype: str) -> str:
    return nccl.parse_dtype(dtype).name_lower


class TraceBuilder:
    """Collects groups, ranks and their ops; ``build()`` returns the ``Trace``.

    Args:
        source: where the trace comes from ("generator", "profiler", "import:kineto", ...).
        world_size: number of ranks in the job.
        gpus_per_node: used to count the nodes a group spans (rank // gpus_per_node).
    """

    def __init__(self, *, source: str, world_size: int, gpus_per_node: int, description: str = ""):
        self.source = source
        self.world_size = world_size
        self.gpus_per_node = gpus_per_node
        self.description = description
        self.groups: dict[str, Group] = {}
        self.roles: dict[int, RankRole] = {}
        self._rows: list[tuple] = []

    def node_of(self, rank: int) -> int:
        return rank // self.gpus_per_node

    def add_group(self, group_id: str, kind: str, ranks: Iterable[int], desc: str = "",
                  nnodes: int | None = None) -> Group:
        """Declare a process group (idempotent for the same id and ranks); returns it."""
        ranks = tuple(int(r) for r in ranks)
        if nnodes is None:
            nnodes = len({self.node_of(r) for r in ranks})
        group = Group(group_id, kind, ranks, nnodes, desc)
        existing = self.groups.get(group_id)
        if existing is not None:
            if existing.ranks != ranks or existing.kind != kind:
                raise ValueError(f"group {group_id!r} declared twice with different ranks or kind")
            return existing
        self.groups[group_id] = group
        return group

    def rank(self, rank: int, *, represents: Iterable[int] | None = None, role: str = "",
             step: int = 0) -> "RankRecorder":
        """Start recording ``rank``'s ops for ``step``; ``represents`` defaults to the rank itself."""
        reps = ranges_of(represents) if represents is not None else ((rank, rank),)
        if rank not in self.roles:
            self.roles[rank] = RankRole(rank, reps, role)
        return RankRecorder(self, rank, step)

    def _append(self, row: tuple) -> None:
        self._rows.append(row)

    def build(self, *, workload: dict | None = None, compute: dict | None = None) -> Trace:
        """The recorded trace (validated when written; call ``Trace.validate`` to check earlier)."""
        ops = pd.DataFrame.from_records(self._rows, columns=list(COLUMN_NAMES))
        meta = TraceMeta(source=self.source, world_size=self.world_size, gpus_per_node=self.gpus_per_node,
                         groups=dict(self.groups), roles=dict(self.roles), workload=workload or {},
                         compute=compute or {}, description=self.description)
        return Trace(ops=ops, meta=meta)


class RankRecorder:
    """Appends one rank's ops in issue order; each method returns the new op's ``op_index``."""

    def __init__(self, builder: TraceBuilder, rank: int, step: int):
        self.builder = builder
        self.rank = rank
        self.step = step
        self.count = 0
        self._seq: dict[tuple[str, bool], int] = defaultdict(int)
        self._nccl_groups = 0
        self._open_nccl_group = -1

    @contextlib.contextmanager
    def nccl_group(self) -> Iterator[int]:
        """Ops recorded inside share one ``nccl_group`` id (one ncclGroupStart/End)."""
        if self._open_nccl_group != -1:
            yield self._open_nccl_group  # nested groups merge, as NCCL's do
            return
        self._open_nccl_group = self._nccl_groups
        self._nccl_groups += 1
        try:
            yield self._open_nccl_group
        finally:
            self._open_nccl_group = -1

    def _row(self, *, kind, op, phase, label, microbatch, layer, stream, deps, duration_us=math.nan,
             flops=math.nan, bytes_moved=math.nan, group: Group | None = None, group_seq=-1, peer=-1, dtype="",
             bytes_per_rank=0,
             bytes_total=0, start_us=math.nan, end_us=math.nan, nccl_algo="", nccl_proto="",
             nccl_channels=-1, nccl_group=-1) -> int:
        index = self.count
        dep_list = sorted({int(d) for d in deps if d is not None and d >= 0})
        self.builder._append((
            self.rank, self.step, index, kind, op, phase, label, microbatch, layer, stream, dep_list,
            duration_us, flops, bytes_moved,
            group.group_id if group else "", group.kind if group else "", group.size if group else 0,
            group.nnodes if group else 0, group_seq, nccl_group, peer, dtype, bytes_per_rank, bytes_total,
            start_us, end_us, nccl_algo, nccl_proto, nccl_channels,
        ))
        self.count += 1
        return index

    def compute(self, label: str, *, phase: str, flops: float = math.nan, duration_us: float = math.nan,
                bytes_moved: float = math.nan, deps: Iterable[int | None] = (), microbatch: int = -1,
                layer: int = -1, start_us: float = math.nan, end_us: float = math.nan) -> int:
        """A compute segment on the compute stream (``flops`` and/or ``duration_us``; ``bytes_moved``
        when the source knows the device-memory traffic)."""
        return self._row(kind="compute", op="compute", phase=phase, label=label, microbatch=microbatch,
                         layer=layer, stream=COMPUTE_STREAM, deps=deps, duration_us=duration_us,
                         flops=flops, bytes_moved=bytes_moved, start_us=start_us, end_us=end_us)

    def _comm(self, kind: str, op: str, group: Group, bytes_total: int, dtype: str, peer: int, *,
              phase: str, label: str, deps, microbatch: int, layer: int, **measured) -> int:
        dtype_name = _dtype_name(dtype)
        seq_key = (group.group_id, kind == "p2p")
        seq = self._seq[seq_key]
        self._seq[seq_key] = seq + 1
        return self._row(kind=kind, op=op, phase=phase, label=label, microbatch=microbatch, layer=layer,
                         stream=comm_stream(group.group_id), deps=deps, group=group, group_seq=seq,
                         peer=peer, dtype=dtype_name, bytes_total=int(bytes_total),
                         bytes_per_rank=bytes_per_rank_of(op, int(bytes_total), group.size),
                         nccl_group=self._open_nccl_group, **measured)

    def collective(self, op: str, group: Group, bytes_total: int, dtype: str, *, phase: str,
                   label: str = "", deps: Iterable[int | None] = (), root: int = -1, microbatch: int = -1,
                   layer: int = -1, **measured) -> int:
        """A collective on ``group``; ``bytes_total`` is the full buffer (nccl-tests size).

        ``root`` (global rank) is required for broadcast/reduce. ``measured`` may give start_us,
        end_us, nccl_algo, nccl_proto, nccl_channels.
        """
        if op not in nccl.COLLECTIVE_OPS:
            raise ValueError(f"not a collective: {op!r}")
        return self._comm("coll", op, group, bytes_total, dtype, root, phase=phase, label=label, deps=deps,
                          microbatch=microbatch, layer=layer, **measured)

    def send(self, peer: int, group: Group, nbytes: int, dtype: str, *, phase: str, label: str = "",
             deps: Iterable[int | None] = (), microbatch: int = -1, layer: int = -1, **measured) -> int:
        """A send of ``nbytes`` to global rank ``peer`` over ``group``'s communicator."""
        return self._comm("p2p", "send", group, nbytes, dtype, peer, phase=phase, label=label, deps=deps,
                          microbatch=microbatch, layer=layer, **measured)

    def recv(self, peer: int, group: Group, nbytes: int, dtype: str, *, phase: str, label: str = "",
             deps: Iterable[int | None] = (), microbatch: int = -1, layer: int = -1, **measured) -> int:
        """A receive of ``nbytes`` from global rank ``peer`` over ``group``'s communicator."""
        return self._comm("p2p", "recv", group, nbytes, dtype, peer, phase=phase, label=label, deps=deps,
                          microbatch=microbatch, layer=layer, **measured)
