"""The trace schema: one row per operation of one training step on one rank, plus file metadata.

A trace says what each rank does in a training step, in issue order: compute segments, collectives
and point-to-point operations, and which of them must finish before another may start. Overlap is
explicit: an op starts when every op in its ``deps`` has finished *and* the previous op on the same
``stream`` has finished (streams are FIFO, as CUDA streams are). PyTorch runs each process group's
NCCL calls on that group's own stream, so collectives of different groups may run concurrently, and
a collective overlaps exactly the compute that neither waits for it nor is waited for by it.

Columns (``COLUMNS`` below is the authoritative list, with types):

========================  ======================================================================
rank                      global rank whose step this row belongs to
step                      training-step index (0 for generated traces)
op_index                  issue order on this rank within the step, 0..n-1 without gaps
kind                      ``compute`` | ``coll`` (collective) | ``p2p`` (send/recv)
op                        ``compute``; a collective (allreduce, allgather, reducescatter, broadcast,
                          reduce, alltoall, gather, scatter); or ``send`` / ``recv``
phase                     setup | forward | backward | step (grad sync, optimizer) | other;
                          ``setup`` marks one-off traffic (DDP construction, barriers)
label                     human-readable name, e.g. ``mb3.L12.attn.out_proj``
microbatch, layer         -1 when not applicable
stream                    ``compute`` or ``comm:<group_id>``
deps                      op_index values (same rank, smaller than this op's) that must finish
                          before this op starts, beyond the stream order
duration_us               compute: modelled or measured duration (µs); communication: the measured
                          duration when a source gives one without timestamps (NCCL Inspector), else NaN
flops                     compute: floating-point operations on this rank; NaN when unknown
bytes_moved               compute: bytes the row's work reads from and writes to device memory
                          (operands and results; the generator's roofline count, ``workload/flops.py``);
                          NaN when unknown. Optional: a file written before it existed reads as NaN
group_id                  process group ("" for compute); described in the metadata ``groups``
group_kind                dp, tp, pp, cp, ep, edp, fsdp, embd, mp, world or unknown
group_size, group_nnodes  ranks and nodes of the group (0 for compute)
group_seq                 the call's position within the step among this rank's collectives (or,
                          separately, p2p ops) on that group, from 0 — what a tuner plugin can
                          count on its communicator
nccl_group                ops issued inside one ncclGroupStart/End share a value; -1 if alone
peer                      p2p: the peer's global rank; broadcast/reduce: the root; else -1
dtype                     NCCL data type name (bf16, fp32, ...); "" for compute
bytes_per_rank            NCCL's ``count`` × element size: the buffer for AllReduce/Broadcast/
                          Reduce/Send/Recv, one rank's shard for AllGather (sendcount),
                          ReduceScatter (recvcount) and AlltoAll (per peer)
bytes_total               nccl-tests' size = the ``nBytes`` NCCL's tuner sees: the full buffer
                          (AllGather/ReduceScatter: n × count × size; AlltoAll: a rank's buffer)
start_us, end_us          measured timestamps (µs, any epoch), NaN when not measured
nccl_algo, nccl_proto     what NCCL used, when the source says (NCCL's CSV names); "" unknown
nccl_channels             channels NCCL used; -1 unknown
========================  ======================================================================

File metadata (``TraceMeta``): schema version, source, world size, GPUs per node, every process
group (kind, global ranks, node count, description), and for each rank in the file the ranks it
stands for: a generated trace may hold one *representative* rank per distinct role (e.g. one per
pipeline stage) when all other ranks are symmetric to it, and says so here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from dynamiccl import nccl, schema
from dynamiccl.errors import InputError

SCHEMA_VERSION = 1
METADATA_KEY = b"dynamiccl.trace"

KINDS = ("compute", "coll", "p2p")
PHASES = ("setup", "forward", "backward", "step", "other")
GROUP_KINDS = ("dp", "tp", "pp", "cp", "ep", "edp", "fsdp", "embd", "mp", "world", "unknown")
COMPUTE_STREAM = "compute"

_STR = pa.string()
_I32 = pa.int32()
_I64 = pa.int64()
_F64 = pa.float64()

# (name, arrow type, default for rows that do not use it)
COLUMNS: tuple[tuple[str, pa.DataType, Any], ...] = (
    ("rank", _I32, None),
    ("step", _I32, 0),
    ("op_index", _I32, None),
    ("kind", _STR, None),
    ("op", _STR, None),
    ("phase", _STR, "other"),
    ("label", _STR, ""),
    ("microbatch", _I32, -1),
    ("layer", _I32, -1),
    ("stream", _STR, None),
    ("deps", pa.list_(_I32), ()),
    ("duration_us", _F64, math.nan),
    ("flops", _F64, math.nan),
    ("bytes_moved", _F64, math.nan),
    ("group_id", _STR, ""),
    ("group_kind", _STR, ""),
    ("group_size", _I32, 0),
    ("group_nnodes", _I32, 0),
    ("group_seq", _I32, -1),
    ("nccl_group", _I32, -1),
    ("peer", _I32, -1),
    ("dtype", _STR, ""),
    ("bytes_per_rank", _I64, 0),
    ("bytes_total", _I64, 0),
    ("start_us", _F64, math.nan),
    ("end_us", _F64, math.nan),
    ("nccl_algo", _STR, ""),
    ("nccl_proto", _STR, ""),
    ("nccl_channels", _I32, -1),
)
COLUMN_NAMES = tuple(name for name, _, _ in COLUMNS)
# Columns added after schema version 1 was fixed: a file without one reads it as its default (unknown).
OPTIONAL_COLUMNS = ("bytes_moved",)
REQUIRED_COLUMNS = tuple(name for name in COLUMN_NAMES if name not in OPTIONAL_COLUMNS)
# Float columns are nullable because pandas writes NaN ("not measured") as null.
ARROW_SCHEMA = pa.schema([pa.field(name, typ, nullable=pa.types.is_floating(typ)) for name, typ, _ in COLUMNS])


def comm_stream(group_id: str) -> str:
    """The stream name of a process group's NCCL calls."""
    return f"comm:{group_id}"


def bytes_per_rank_of(op: str, bytes_total: int, nranks: int) -> int:
    """NCCL's per-rank count in bytes for an op whose full (nccl-tests) size is ``bytes_total``."""
    return bytes_total // nranks if op in nccl.SHARDED_OPS else bytes_total


# --- metadata ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Group:
    """A process group (one NCCL communicator): ``ranks`` are global ranks in group-rank order."""

    group_id: str
    kind: str
    ranks: tuple[int, ...]
    nnodes: int
    desc: str = ""

    @property
    def size(self) -> int:
        return len(self.ranks)


@dataclass(frozen=True)
class RankRole:
    """A rank present in the trace and the ranks it stands for (inclusive ranges, itself included)."""

    rank: int
    represents: tuple[tuple[int, int], ...]
    role: str = ""

    @property
    def count(self) -> int:
        return sum(hi - lo + 1 for lo, hi in self.represents)


def ranges_of(ranks) -> tuple[tuple[int, int], ...]:
    """Compress sorted unique ranks into inclusive (lo, hi) ranges."""
    out: list[tuple[int, int]] = []
    for r in sorted(set(int(x) for x in ranks)):
        if out and r == out[-1][1] + 1:
            out[-1] = (out[-1][0], r)
        else:
            out.append((r, r))
    return tuple(out)


@dataclass
class TraceMeta:
    """File-level facts about a trace. ``workload`` and ``compute`` are free-form provenance."""

    source: str
    world_size: int
    gpus_per_node: int
    groups: dict[str, Group]
    roles: dict[int, RankRole]
    workload: dict = field(default_factory=dict)
    compute: dict = field(default_factory=dict)
    description: str = ""
    created_by: str = ""
    schema_version: int = SCHEMA_VERSION

    @property
    def representative(self) -> bool:
        """True when some rank in the trace stands for other, symmetric ranks."""
        return any(role.count > 1 for role in self.roles.values())

    def to_json_obj(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "source": self.source,
            "created_by": self.created_by,
            "description": self.description,
            "world_size": self.world_size,
            "gpus_per_node": self.gpus_per_node,
            "representative": self.representative,
            "roles": [
                {"rank": r.rank, "represents": [list(x) for x in r.represents], "role": r.role}
                for r in sorted(self.roles.values(), key=lambda r: r.rank)
            ],
            "groups": [
                {"group_id": g.group_id, "kind": g.kind, "ranks": list(g.ranks), "nnodes": g.nnodes,
                 "desc": g.desc}
                for g in self.groups.values()
            ],
            "workload": self.workload,
            "compute": self.compute,
        }

    @classmethod
    def from_json_obj(cls, obj: Any, source: str) -> "TraceMeta":
        """Parse and check the metadata object (:data:`TRACE_METADATA`).

        Raises:
            InputError: naming ``source`` and the metadata key that is missing or wrong.
        """
        try:
            values = TRACE_METADATA.parse(obj, source)
        except InputError as err:
            raise InputError(source, f"metadata '{err.field}'", err.problem) from None
        version = values["schema_version"]
        if not 1 <= version <= SCHEMA_VERSION:
            raise InputError(source, "metadata 'schema_version'",
                             f"version {version} is not supported (this dynamiccl reads 1..{SCHEMA_VERSION}); "
                             "upgrade dynamiccl to read it")
        world = values["world_size"]
        groups: dict[str, Group] = {}
        for i, g in enumerate(values["groups"]):
            where = f"metadata 'groups[{i}]"
            if g["kind"] not in GROUP_KINDS:
                raise InputError(source, f"{where}.kind'",
                                 f"unknown group kind {g['kind']!r}; expected one of {', '.join(GROUP_KINDS)}")
            ranks = g["ranks"]
            if not ranks or any(r >= world for r in ranks) or len(set(ranks)) != len(ranks):
                raise schema.expected(source, f"{where}.ranks'", f"distinct global ranks in 0..{world - 1}", ranks)
            if g["nnodes"] > len(ranks):
                raise schema.expected(source, f"{where}.nnodes'", f"1..{len(ranks)}", g["nnodes"])
            if g["group_id"] in groups:
                raise InputError(source, f"{where}.group_id'", f"duplicate group id {g['group_id']!r}")
            groups[g["group_id"]] = Group(g["group_id"], g["kind"], tuple(ranks), g["nnodes"], g["desc"])
        roles: dict[int, RankRole] = {}
        covered: list[tuple[int, int, int]] = []
        for i, r in enumerate(values["roles"]):
            where, rank = f"metadata 'roles[{i}]", r["rank"]
            try:
                ranges = tuple((int(lo), int(hi)) for lo, hi in r["represents"])
            except (TypeError, ValueError):
                raise schema.expected(source, f"{where}.represents'", "a list of [first, last] rank ranges",
                                      r["represents"]) from None
            if not ranges or any(lo > hi or lo < 0 or hi >= world for lo, hi in ranges) or \
                    not any(lo <= rank <= hi for lo, hi in ranges):
                raise schema.expected(source, f"{where}.represents'",
                                      f"ranges within 0..{world - 1} that include rank {rank}", r["represents"])
            if rank in roles:
                raise InputError(source, f"{where}.rank'", f"rank {rank} listed twice")
            roles[rank] = RankRole(rank, ranges, r["role"])
            covered.extend((lo, hi, rank) for lo, hi in ranges)
        covered.sort()
        for (lo1, hi1, r1), (lo2, hi2, r2) in zip(covered, covered[1:]):
            if lo2 <= hi1:
                raise InputError(source, "metadata 'roles'",
                                 f"ranks {lo2}..{min(hi1, hi2)} are represented by both rank {r1} and rank {r2}")
        return cls(source=values["source"], world_size=world, gpus_per_node=values["gpus_per_node"], groups=groups,
                   roles=roles, workload=values["workload"], compute=values["compute"],
                   description=values["description"], created_by=values["created_by"],
                   schema_version=values["schema_version"])


# The metadata JSON a trace file carries (``TraceMeta.to_json_obj`` writes it), declared once.
TRACE_METADATA = schema.Schema(
    schema.integer("schema_version", help=f"trace format version; this dynamiccl reads 1..{SCHEMA_VERSION}"),
    schema.string("source", help="what produced the trace (generator, profiler, an importer)"),
    schema.string("created_by", ""),
    schema.string("description", ""),
    schema.integer("world_size", low=1),
    schema.integer("gpus_per_node", low=1),
    schema.flag("representative", False, help="written for readers: some rank stands for others"),
    schema.tables("roles", schema.Schema(
        schema.integer("rank", low=0),
        schema.json_list("represents", expect="a list of [first, last] rank ranges"),
        schema.string("role", ""),
    )),
    schema.tables("groups", schema.Schema(
        schema.string("group_id"),
        schema.string("kind", help=f"one of {', '.join(GROUP_KINDS)}"),
        schema.int_list("ranks", low=0, high=2**31 - 1, max_len=2**31 - 1, help="global ranks"),
        schema.integer("nnodes", low=1),
        schema.string("desc", ""),
    )),
    schema.json_value("workload", {}, help="free-form provenance of the generator or capture"),
    schema.json_value("compute", {}, help="free-form provenance of compute durations"),
)


# --- validation ----------------------------------------------------------------------------------


class _Checker:
    """Reports the first bad row of a column with enough context to find it."""

    def __init__(self, df: pd.DataFrame, source: str):
        self.df = df
        self.source = source

    def fail(self, column: str, bad: np.ndarray, problem: str) -> None:
        idx = np.flatnonzero(bad)
        if idx.size == 0:
            return
        i = int(idx[0])
        row = self.df.iloc[i]
        more = f" ({idx.size} rows in all)" if idx.size > 1 else ""
        raise InputError(self.source, f"column '{column}'",
                         f"row {i} (rank {row['rank']}, step {row['step']}, op_index {row['op_index']}): "
                         f"{problem}{more}")


def validate_ops(df: pd.DataFrame, meta: TraceMeta, source: str) -> None:
    """Check every row of a trace against the schema and the metadata.

    ``df`` must be sorted by (step, rank, op_index) with a default RangeIndex.

    Raises:
        InputError: naming ``source``, the column and the first offending row.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(source, f"column '{missing[0]}'",
                         f"missing (required columns missing: {', '.join(missing)})")
    if len(df) == 0:
        raise InputError(source, None, "the trace has no operations")
    chk = _Checker(df, source)
    kind = df["kind"].to_numpy(dtype=object)
    op = df["op"].to_numpy(dtype=object)
    rank = df["rank"].to_numpy()
    step = df["step"].to_numpy()
    op_index = df["op_index"].to_numpy()

    chk.fail("kind", ~np.isin(kind, KINDS), f"expected one of {', '.join(KINDS)}")
    is_compute = kind == "compute"
    is_p2p = kind == "p2p"
    is_coll = kind == "coll"
    is_comm = ~is_compute
    chk.fail("op", is_compute & (op != "compute"), "compute rows must have op 'compute'")
    chk.fail("op", is_coll & ~np.isin(op, nccl.COLLECTIVE_OPS),
             f"collective rows need one of {', '.join(nccl.COLLECTIVE_OPS)}")
    chk.fail("op", is_p2p & ~np.isin(op, nccl.P2P_OPS), "p2p rows need 'send' or 'recv'")
    chk.fail("phase", ~np.isin(df["phase"].to_numpy(dtype=object), PHASES),
             f"expected one of {', '.join(PHASES)}")

    # op_index: 0..n-1 per (step, rank), rows sorted.
    chk.fail("rank", ~np.isin(rank, list(meta.roles)),
             "rank is not listed in the metadata 'roles'")
    new_block = np.ones(len(df), dtype=bool)
    new_block[1:] = (rank[1:] != rank[:-1]) | (step[1:] != step[:-1])
    block_start = np.maximum.accumulate(np.where(new_block, np.arange(len(df)), 0))
    expected_index = np.arange(len(df)) - block_start
    chk.fail("op_index", op_index != expected_index,
             "expected op_index to count 0, 1, 2, ... within each (step, rank) without gaps or repeats")

    # deps: earlier ops of the same rank and step.
    deps = df["deps"].to_numpy(dtype=object)
    lengths = np.fromiter(map(len, deps), dtype=np.int64, count=len(deps))
    if lengths.sum():
        flat = np.concatenate(list(deps)).astype(np.int64)
        owner = np.repeat(np.arange(len(df)), lengths)
        bad_owner = np.zeros(len(df), dtype=bool)
        bad_owner[owner[(flat < 0) | (flat >= op_index[owner])]] = True
        chk.fail("deps", bad_owner, "deps must name earlier op_index values of the same rank and step")

    stream = df["stream"].to_numpy(dtype=object)
    gid = df["group_id"].to_numpy(dtype=object)
    chk.fail("stream", is_compute & (stream == ""), "compute rows need a stream name")
    chk.fail("group_id", is_compute & (gid != ""), "compute rows must have an empty group_id")

    duration = df["duration_us"].to_numpy(dtype=float)
    flops = df["flops"].to_numpy(dtype=float)
    chk.fail("duration_us", is_compute & ~(np.isfinite(duration) | np.isfinite(flops)),
             "compute rows need a duration_us or flops")
    chk.fail("duration_us", np.isfinite(duration) & (duration < 0), "expected >= 0")
    chk.fail("flops", np.isfinite(flops) & (flops < 0), "expected >= 0")
    if "bytes_moved" in df.columns:
        moved = df["bytes_moved"].to_numpy(dtype=float)
        chk.fail("bytes_moved", np.isfinite(moved) & (moved < 0), "expected >= 0")
        chk.fail("bytes_moved", ~is_compute & ~np.isnan(moved), "only compute rows move bytes (NaN elsewhere)")

    # Communication rows against the group table.
    known = np.isin(gid, list(meta.groups))
    chk.fail("group_id", is_comm & ~known, "group not described in the metadata 'groups'")
    gkind = df["group_kind"].to_numpy(dtype=object)
    gsize = df["group_size"].to_numpy()
    gnodes = df["group_nnodes"].to_numpy()
    peer = df["peer"].to_numpy()
    codes, uniques = pd.factorize(gid)
    groups = [meta.groups.get(g) for g in uniques]
    kinds = np.array([g.kind if g else "" for g in groups], dtype=object)[codes]
    sizes = np.array([g.size if g else -1 for g in groups])[codes]
    nodes = np.array([g.nnodes if g else -1 for g in groups])[codes]
    members = pd.MultiIndex.from_tuples([(g, r) for g, grp in meta.groups.items() for r in grp.ranks])
    rank_in = pd.MultiIndex.from_arrays([gid, rank]).isin(members)
    peer_in = pd.MultiIndex.from_arrays([gid, peer]).isin(members)
    rooted = np.isin(op, list(nccl.ROOTED_OPS))
    bad_kind = is_comm & known & (gkind != kinds)
    bad_size = is_comm & known & (gsize != sizes)
    bad_nodes = is_comm & known & (gnodes != nodes)
    bad_member = is_comm & known & ~rank_in
    bad_peer = known & ((is_p2p & (~peer_in | (peer == rank))) | (is_coll & rooted & ~peer_in)
                        | (is_coll & ~rooted & (peer != -1)))
    chk.fail("group_kind", bad_kind, "does not match the kind of the group in the metadata")
    chk.fail("group_size", bad_size, "does not match the number of ranks of the group in the metadata")
    chk.fail("group_nnodes", bad_nodes, "does not match the group's node count in the metadata")
    chk.fail("rank", bad_member, "this rank is not a member of the op's group")
    chk.fail("peer", bad_peer, "p2p needs a peer in the group other than itself; broadcast/reduce need "
                               "the root's global rank; other collectives -1")
    chk.fail("stream", is_comm & (stream == COMPUTE_STREAM), "communication cannot run on the compute stream")

    dtype = df["dtype"].to_numpy(dtype=object)
    chk.fail("dtype", is_comm & ~np.isin(dtype, nccl.DTYPE_NAMES),
             f"expected one of {', '.join(nccl.DTYPE_NAMES)}")
    per_rank = df["bytes_per_rank"].to_numpy()
    total = df["bytes_total"].to_numpy()
    chk.fail("bytes_total", is_comm & (total < 0), "expected >= 0")
    chk.fail("bytes_per_rank", is_comm & (per_rank < 0), "expected >= 0")
    sharded = np.isin(op, list(nccl.SHARDED_OPS))
    exact = is_comm & ~sharded
    chk.fail("bytes_per_rank", exact & (per_rank != total),
             "must equal bytes_total for allreduce, broadcast, reduce, send and recv")
    chk.fail("bytes_per_rank", is_comm & sharded & (op != "alltoall") & (per_rank * gsize != total),
             "bytes_total must be group_size × bytes_per_rank for allgather/reducescatter/gather/scatter")
    chk.fail("bytes_per_rank", is_comm & (op == "alltoall") & (np.abs(per_rank * gsize - total) >= gsize),
             "bytes_per_rank must be bytes_total / group_size for alltoall")
    dcodes, dnames = pd.factorize(dtype)
    esize = np.array([nccl.DataType[d.upper()].size_bytes if d in nccl.DTYPE_NAMES else 1
                      for d in dnames], dtype=np.int64)[dcodes] if len(dnames) else np.ones(len(df), np.int64)
    chk.fail("bytes_per_rank", exact & (per_rank % esize != 0), "not a whole number of dtype elements")

    # group_seq is the position among this rank's collectives (p2p separately) on the group.
    fam = np.where(is_p2p, "p", "c")
    keyed = pd.DataFrame({"s": step, "r": rank, "g": gid, "f": fam})
    expected_seq = keyed.groupby(["s", "r", "g", "f"], sort=False).cumcount().to_numpy()
    expected_seq = np.where(is_comm, expected_seq, -1)
    chk.fail("group_seq", df["group_seq"].to_numpy() != expected_seq,
             "expected the 0-based position of the call among this rank's collectives (or p2p ops) "
             "on its group within the step")

    start = df["start_us"].to_numpy(dtype=float)
    end = df["end_us"].to_numpy(dtype=float)
    chk.fail("end_us", np.isfinite(start) != np.isfinite(end), "start_us and end_us come together")
    chk.fail("end_us", np.isfinite(start) & np.isfinite(end) & (end < start), "end_us before start_us")

    algos = [""] + [a.name_lower for a in nccl.Algorithm]
    protos = [""] + [p.name_lower for p in nccl.Protocol]
    chk.fail("nccl_algo", ~np.isin(df["nccl_algo"].to_numpy(dtype=object), algos),
             f"expected '' or one of {', '.join(algos[1:])}")
    chk.fail("nccl_proto", ~np.isin(df["nccl_proto"].to_numpy(dtype=object), protos),
             f"expected '' or one of {', '.join(protos[1:])}")
    ch = df["nccl_channels"].to_numpy()
    chk.fail("nccl_channels", (ch != -1) & ((ch < 1) | (ch > nccl.MAX_CHANNELS)),
             f"expected -1 (unknown) or 1..{nccl.MAX_CHANNELS}")


def check_arrow_schema(schema: pa.Schema, source: str) -> None:
    """Check that a file's columns exist and have usable types (any int width for int columns...).

    Raises:
        InputError: naming the first missing column or the first column of the wrong type.
    """
    names = set(schema.names)
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise InputError(source, f"column '{missing[0]}'",
                         f"missing (required columns missing: {', '.join(missing)})")
    for name, typ, _ in COLUMNS:
        if name not in names:  # an optional column (OPTIONAL_COLUMNS)
            continue
        actual = schema.field(name).type
        if pa.types.is_dictionary(actual):
            actual = actual.value_type
        ok = (
            (pa.types.is_integer(typ) and pa.types.is_integer(actual))
            or (pa.types.is_floating(typ) and (pa.types.is_floating(actual) or pa.types.is_integer(actual)))
            or (pa.types.is_string(typ) and (pa.types.is_string(actual) or pa.types.is_large_string(actual)))
            or (pa.types.is_list(typ) and (pa.types.is_list(actual) or pa.types.is_large_list(actual))
                and pa.types.is_integer(actual.value_type))
        )
        if not ok:
            raise InputError(source, f"column '{name}'", f"expected type {typ}, found {actual}")
