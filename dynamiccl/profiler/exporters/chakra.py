"""Chakra execution traces (MLCommons ``schema/protobuf/et_def.proto``), written and read without protobuf.

``export_chakra`` writes what ASTRA-sim's ``--workload-configuration=<out_dir>/<prefix>`` loads:

- ``<prefix>.<rank>.et`` for every rank 0..world_size-1: a sequence of length-delimited protobuf
  messages (varint byte length, then the message): one ``GlobalMetadata``, then one ``Node`` per
  trace row of that rank in issue order (all steps, in order), node ids 0, 1, 2, ...;
- ``<prefix>.comm_groups.json``, for ``--comm-group-configuration``: ``{"<pg id>": [global ranks]}``
  for every process group the export uses, the world group included. Ids are the job-wide group
  numbers of ``plan.number_groups`` plus one, the same in every rank's file, so the world group is
  "1": ASTRA-sim reserves id 0 (``CommunicatorGroup::set_id`` asserts id > 0) for an implicit
  all-NPU group that it reaches for ``pg_name`` "" or "0" without a ``CommunicatorGroup``, and
  exports that used it hung at the first world collective of pipeline/expert-parallel jobs, while
  the same collectives on an explicit world group finish (issue 15, item 20).

Each trace row becomes one node (field numbers and types of ``et_def.proto``):

=========  ================  ===================================================================
row        ``type``          attributes (name: oneof member)
=========  ================  ===================================================================
compute    COMP_NODE         ``is_cpu_op``: bool_val false; ``num_ops``: int64_val FLOPs (when known);
                             ``tensor_size``: uint64_val bytes moved (when known); see below
coll       COMM_COLL_NODE    ``is_cpu_op`` false; ``comm_type``: int64_val ``CollectiveCommType``;
                             ``comm_size``: int64_val bytes; ``pg_name``: string_val group id;
                             ``comm_root``: int32_val global root (broadcast/reduce/gather/scatter)
send       COMM_SEND_NODE    ``is_cpu_op`` false; ``comm_size``; ``comm_src`` (this rank),
                             ``comm_dst`` (peer), ``comm_tag``: int32_val each; ``pg_name``
recv       COMM_RECV_NODE    as send, with ``comm_src`` the peer and ``comm_dst`` this rank
=========  ================  ===================================================================

- ``name`` is the row's label (its op when the label is empty).
- ``num_ops`` and ``tensor_size`` are what ASTRA-sim's roofline mode (``roofline-enabled``) reads on
  a GPU compute node: it runs the node for ``num_ops / min(local-mem-bw * num_ops / tensor_size,
  peak-perf)``, skips a node whose ``tensor_size`` is 0 and stops on one that lacks either
  attribute (astra-sim/astra-sim 518bd51 ``Workload::issue_comp``, ``Roofline::get_perf``; its
  Chakra feeder v3 registers ``num_ops`` and ``tensor_size`` without defaults). The members are
  those Chakra's feeder reads (``num_ops`` int64_val, ``tensor_size`` uint64_val). ``num_ops`` is
  the row's ``flops``, ``tensor_size`` its ``bytes_moved``, each written when the trace knows it.
  A generated trace knows both for every compute row (GEMMs: FLOPs from their shapes, bytes of
  their operands and results; the memory-bound optimizer step and embedding: their bytes and
  element-wise FLOPs; ``workload/flops.py``). A row of 0 FLOPs (an embedding lookup is a gather)
  is written with ``num_ops`` 1: ASTRA-sim's time is then tensor_size / local-mem-bw, the row's
  memory-bound time (the same for any small positive count), where 0 would make it 0 / 0.
  Profiled and imported traces, and generated ones written before the trace had ``bytes_moved``,
  have no bytes: their compute nodes carry ``num_ops`` where the source gave FLOPs and no
  ``tensor_size``, so they run in ASTRA-sim's replay mode (by duration); its roofline mode stops
  at their first compute node.
- ``duration_micros``: compute rows' ``duration_us`` rounded to the nearest µs (Chakra's unit is an
  integer µs; ASTRA-sim replays 0 as 1 ns); communication rows carry ``end_us - start_us`` when the
  trace measured them, else 0 (the simulator times them). ``start_time_micros``: measured start
  relative to the earliest measured start in the trace; absent when not measured.
- ``comm_size`` is ``bytes_total`` (nccl-tests' size, NCCL's ``nBytes``, the global buffer as SimAI
  counts) with ``comm_size="total"`` (default), or the op's input buffer with ``comm_size="input"``
  (Chakra's PyTorch converter: ``bytes_per_rank`` for AllGather/Gather, ``bytes_total`` otherwise).
  ASTRA-sim's meaning for AllGather is unsettled upstream, hence the choice; the metadata records it.
- ``comm_tag`` numbers the messages between one (sender, receiver) pair, ordered by (group number,
  k) where k counts the pair's messages on that group, so the k-th send of a group matches the k-th
  receive of that group on the other side, whatever order the simulator issues them in.
- Dependencies (all in ``data_deps``, the list Chakra's feeder and ASTRA-sim resolve by default;
  ``ctrl_deps`` stays empty): the row's ``deps`` and the previous op on the same stream, so streams
  stay FIFO and overlap is exactly the trace's. Ops of one ``ncclGroupStart/End`` on a stream are
  launched together: each depends on the op(s) before the group, not on each other, and the op
  after the group depends on all of them. Streams continue across steps.
- ``GlobalMetadata``: ``version`` "1.0.0"; attributes ``schema``, ``source``, ``description``,
  ``comm_size_convention`` (string_val) and ``rank``, ``world_size``, ``represented_by`` (uint64_val).

A representative trace (one rank per pipeline stage) is expanded to every rank it stands for, with
each rank's own groups and peers (``plan.py``); one that cannot be expanded is refused with
``InputError`` before anything is written. All files of an export appear together or not at all.

``read_chakra`` decodes such files generically — framing, then every field by number and wire type
against its own table of ``et_def.proto`` — so that it can check the writer rather than mirror it.
It accepts gzip-compressed files (as Chakra's ``protolib`` does), packed and unpacked repeated
fields, and keeps unknown fields' numbers.

ASTRA-sim simulates ALL_REDUCE, ALL_GATHER, REDUCE_SCATTER and ALL_TO_ALL, replays BROADCAST by its
duration and rejects REDUCE/GATHER/SCATTER; those are still written (the schema has them).
"""

from __future__ import annotations

import enum
import json
import os
import struct
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from dynamiccl.errors import InputError
from dynamiccl.nccl import ROOTED_OPS
from dynamiccl.profiler.importers._common import read_bytes
from dynamiccl.profiler.exporters.output import atomic_files, check_out_dir
from dynamiccl.profiler.exporters.progress import announce, estimate_bytes, file_bar
from dynamiccl.profiler.exporters.plan import ExportPlan, plan_export
from dynamiccl.trace.store import Trace

ET_VERSION = "1.0.0"
SCHEMA = "dynamiccl-chakra-export/1"
COMM_SIZE_CONVENTIONS = ("total", "input")


class NodeType(enum.IntEnum):
    """``ChakraProtoMsg.NodeType``."""

    INVALID_NODE = 0
    METADATA_NODE = 1
    MEM_LOAD_NODE = 2
    MEM_STORE_NODE = 3
    COMP_NODE = 4
    COMM_SEND_NODE = 5
    COMM_RECV_NODE = 6
    COMM_COLL_NODE = 7
    STORAGE_NODE = 8
    BATCH_NODE = 9
    CHECKPOINT_NODE = 10


class CollectiveCommType(enum.IntEnum):
    """``ChakraProtoMsg.CollectiveCommType``."""

    ALL_REDUCE = 0
    REDUCE = 1
    ALL_GATHER = 2
    GATHER = 3
    SCATTER = 4
    BROADCAST = 5
    ALL_TO_ALL = 6
    REDUCE_SCATTER = 7
    REDUCE_SCATTER_BLOCK = 8
    BARRIER = 9


COMM_TYPE_OF_OP = {
    "allreduce": CollectiveCommType.ALL_REDUCE, "reduce": CollectiveCommType.REDUCE,
    "allgather": CollectiveCommType.ALL_GATHER, "gather": CollectiveCommType.GATHER,
    "scatter": CollectiveCommType.SCATTER, "broadcast": CollectiveCommType.BROADCAST,
    "alltoall": CollectiveCommType.ALL_TO_ALL, "reducescatter": CollectiveCommType.REDUCE_SCATTER,
}

# ================================================================================================
# Writing: protobuf wire format by hand
# ================================================================================================

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


def _varint_slow(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_CACHED_VARINTS = [_varint_slow(i) for i in range(1 << 16)]


def encode_varint(value: int) -> bytes:
    """Base-128 varint; a negative value as its 64-bit two's complement (10 bytes), as protobuf
    encodes negative int32/int64."""
    if 0 <= value < 65536:
        return _CACHED_VARINTS[value]
    if value < 0:
        value += 1 << 64
    if value >> 64:
        raise ValueError(f"{value} does not fit in 64 bits")
    return _varint_slow(value)


def _key(field_number: int, wire_type: int) -> bytes:
    return encode_varint((field_number << 3) | wire_type)


def _len_delimited(field_number: int, payload: bytes) -> bytes:
    return _key(field_number, _LEN) + encode_varint(len(payload)) + payload


def _varint_field(field_number: int, value: int) -> bytes:
    return _key(field_number, _VARINT) + encode_varint(value)


def _packed_varints(field_number: int, values: Sequence[int]) -> bytes:
    if not values:
        return b""
    return _len_delimited(field_number, b"".join(encode_varint(int(v)) for v in values))


# AttributeProto oneof members the writer supports: member -> (field number, how to encode)
_ATTR_MEMBERS = {
    "double_val": 3, "int32_val": 7, "int64_val": 9, "uint32_val": 11, "uint64_val": 13, "bool_val": 27,
    "string_val": 29, "bytes_val": 31,
    "int64_list": 10, "uint64_list": 14, "bool_list": 28, "string_list": 30,
}


def encode_attribute(name: str, member: str, value: Any) -> bytes:
    """An ``AttributeProto`` message: ``name`` and one oneof ``member`` (e.g. "int64_val") = ``value``.

    Raises:
        ValueError: an unsupported member, or a value out of the member's range.
    """
    number = _ATTR_MEMBERS.get(member)
    if number is None:
        raise ValueError(f"unsupported AttributeProto member {member!r}; one of {', '.join(_ATTR_MEMBERS)}")
    head = _len_delimited(1, name.encode("utf-8"))
    if member == "double_val":
        return head + _key(number, _I64) + struct.pack("<d", float(value))
    if member in ("int32_val", "int64_val", "uint32_val", "uint64_val"):
        value = int(value)
        bits = 32 if "32" in member else 64
        signed = not member.startswith("u")
        low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        if not low <= value <= high:
            raise ValueError(f"attribute {name!r}: {value} is out of range for {member}")
        return head + _varint_field(number, value)
    if member == "bool_val":
        return head + _varint_field(number, 1 if value else 0)
    if member == "string_val":
        return head + _len_delimited(number, str(value).encode("utf-8"))
    if member == "bytes_val":
        return head + _len_delimited(number, bytes(value))
    if member in ("int64_list", "uint64_list"):
        return head + _len_delimited(number, _packed_varints(1, [int(v) for v in value]))
    if member == "bool_list":
        return head + _len_delimited(number, _packed_varints(1, [1 if v else 0 for v in value]))
    # string_list: repeated string, never packed
    return head + _len_delimited(number, b"".join(_len_delimited(1, str(v).encode("utf-8")) for v in value))


def encode_global_metadata(version: str, attrs: Sequence[bytes] = ()) -> bytes:
    """A ``GlobalMetadata`` message; ``attrs`` are ``encode_attribute`` results."""
    parts = [_len_delimited(1, version.encode("utf-8")) if version else b""]
    parts.extend(_len_delimited(2, a) for a in attrs)
    return b"".join(parts)


def encode_io_info(values: str = "", shapes: str = "", types: str = "") -> bytes:
    """An ``IOInfo`` message."""
    return b"".join(_len_delimited(n, s.encode("utf-8")) for n, s in ((1, values), (2, shapes), (3, types)) if s)


def encode_node(*, node_id: int, name: str, node_type: int, ctrl_deps: Sequence[int] = (),
                data_deps: Sequence[int] = (), start_time_micros: int = 0, duration_micros: int = 0,
                inputs: bytes | None = None, outputs: bytes | None = None, attrs: Sequence[bytes] = ()) -> bytes:
    """A ``Node`` message, fields in number order and proto3 defaults omitted (as protobuf serialises).

    ``inputs``/``outputs`` are ``encode_io_info`` results, ``attrs`` ``encode_attribute`` results.
    Repeated ids are packed.
    """
    parts = []
    if node_id:
        parts.append(_varint_field(1, node_id))
    if name:
        parts.append(_len_delimited(2, name.encode("utf-8")))
    if node_type:
        parts.append(_varint_field(3, int(node_type)))
    parts.append(_packed_varints(4, ctrl_deps))
    parts.append(_packed_varints(5, data_deps))
    if start_time_micros:
        parts.append(_varint_field(6, start_time_micros))
    if duration_micros:
        parts.append(_varint_field(7, duration_micros))
    if inputs is not None:
        parts.append(_len_delimited(8, inputs))
    if outputs is not None:
        parts.append(_len_delimited(9, outputs))
    parts.extend(_len_delimited(10, a) for a in attrs)
    return b"".join(parts)


def frame(message: bytes) -> bytes:
    """Length-delimited framing of Chakra files: varint byte length, then the message."""
    return encode_varint(len(message)) + message


# ================================================================================================
# Export
# ================================================================================================


def export_chakra(trace: Trace, out_dir: str | os.PathLike, *, prefix: str = "trace",
                  comm_size: str = "total") -> list[Path]:
    """Write ``trace`` as Chakra execution traces, one ``<prefix>.<rank>.et`` per rank (module docstring).

    Args:
        trace: the trace; a representative trace is expanded to every rank it stands for.
        out_dir: directory to write into (created if missing).
        prefix: file-name prefix, ASTRA-sim's ``--workload-configuration=<out_dir>/<prefix>``.
        comm_size: "total" (bytes_total, default) or "input" (the op's input buffer) for ``comm_size``.

    Returns:
        The files written: the ``.et`` files by rank, then ``<prefix>.comm_groups.json``.

    Raises:
        InputError: a bad option, or a trace that is invalid or cannot be expanded to every rank;
            nothing is written then, and on any error no file of the export is changed.
    """
    if comm_size not in COMM_SIZE_CONVENTIONS:
        raise InputError("comm_size", None, f"expected one of {', '.join(COMM_SIZE_CONVENTIONS)}, got {comm_size!r}")
    _check_prefix(prefix)
    out = check_out_dir(out_dir)
    plan = plan_export(trace)
    starts = trace.ops["start_us"].to_numpy(dtype=float)
    finite = starts[np.isfinite(starts)]
    t0 = float(finite.min()) if finite.size else 0.0
    paths = [out / f"{prefix}.{rank}.et" for rank in plan.ranks]
    groups_path = out / f"{prefix}.comm_groups.json"
    pg_names = comm_group_ids(plan)
    groups_json = {str(pg): list(plan.groups[gid].ranks) for gid, pg in sorted(pg_names.items(), key=lambda kv: kv[1])}
    announce("export chakra", len(paths) + 1,
             estimate_bytes(plan, lambda rank: sum(map(len, _rank_chunks(plan, rank, comm_size, t0)))), out)
    with atomic_files(paths + [groups_path]) as tmps, file_bar(len(paths), "export chakra") as bar:
        for rank, tmp in zip(plan.ranks, tmps):
            _write_rank_file(plan, rank, tmp, comm_size, t0)
            bar.update()
        lines = [f"  {json.dumps(pg)}: {json.dumps(ranks)}" for pg, ranks in groups_json.items()]
        tmps[-1].write_text("{\n" + ",\n".join(lines) + "\n}\n" if lines else "{}\n", encoding="utf-8")
    return paths + [groups_path]


def comm_group_ids(plan: ExportPlan) -> dict[str, int]:
    """The ``pg_name`` number of every process group of ``plan`` (group id -> integer >= 1).

    ASTRA-sim keys ``comm_groups.json`` by integers and reserves 0 for its implicit group of all
    NPUs, so every group, the world group included, gets ``plan.pg_ids`` + 1 (module docstring).
    """
    return {gid: pg + 1 for gid, pg in plan.pg_ids.items()}


def _check_prefix(prefix: str) -> None:
    if not prefix or "/" in prefix or os.sep in prefix or prefix in (".", ".."):
        raise InputError("prefix", None, f"expected a file-name prefix without directories, got {prefix!r}")


def _rank_chunks(plan: ExportPlan, rank: int, comm_size: str, t0: float) -> Iterator[bytes]:
    """The bytes of ``rank``'s file, in pieces of about 1 MB: its framed metadata, then its framed nodes."""
    chunk: list[bytes] = [frame(_metadata_message(plan, rank, comm_size))]
    size = 0
    for message in _rank_nodes(plan, rank, comm_size, t0):
        chunk.append(encode_varint(len(message)))
        chunk.append(message)
        size += len(message)
        if size > 1 << 20:
            yield b"".join(chunk)
            chunk, size = [], 0
    yield b"".join(chunk)


def _write_rank_file(plan: ExportPlan, rank: int, path: Path, comm_size: str, t0: float) -> None:
    with open(path, "wb") as handle:
        for chunk in _rank_chunks(plan, rank, comm_size, t0):
            handle.write(chunk)


def _metadata_message(plan: ExportPlan, rank: int, comm_size: str) -> bytes:
    meta = plan.trace.meta
    attrs = [
        encode_attribute("schema", "string_val", SCHEMA),
        encode_attribute("source", "string_val", meta.source),
        encode_attribute("description", "string_val", meta.description),
        encode_attribute("rank", "uint64_val", rank),
        encode_attribute("world_size", "uint64_val", meta.world_size),
        encode_attribute("represented_by", "uint64_val", plan.plans[rank].source),
        encode_attribute("comm_size_convention", "string_val", comm_size),
    ]
    return encode_global_metadata(ET_VERSION, attrs)


def _node_attr(name: str, member: str, value: Any) -> bytes:
    """An attribute as a complete ``Node.attr`` field (key, length, message)."""
    return _len_delimited(10, encode_attribute(name, member, value))


class _AttrCache(dict):
    """``Node.attr`` fields of one (name, member), encoded once per value."""

    def __init__(self, name: str, member: str):
        super().__init__()
        self.name, self.member = name, member

    def __missing__(self, value):
        encoded = self[value] = _node_attr(self.name, self.member, value)
        return encoded


_IS_GPU_OP = _node_attr("is_cpu_op", "bool_val", False)
_COMM_TYPE = {o: _node_attr("comm_type", "int64_val", int(t)) for o, t in COMM_TYPE_OF_OP.items()}
_ID, _NAME, _TYPE, _DATA_DEPS, _START, _DURATION = (_key(1, _VARINT), _key(2, _LEN), _key(3, _VARINT),
                                                     _key(5, _LEN), _key(6, _VARINT), _key(7, _VARINT))
_TYPE_FIELD = {t: _TYPE + encode_varint(int(t)) for t in NodeType}


def _rank_nodes(plan: ExportPlan, rank: int, comm_size: str, t0: float) -> Iterator[bytes]:
    """The encoded ``Node`` messages of ``rank``, in issue order.

    The bytes are those of ``encode_node`` (a test checks it), assembled from cached pieces.
    """
    ops = plan.ops(rank)
    n = len(ops)
    kind_arr, op_arr = ops["kind"].to_numpy(dtype=object), ops["op"].to_numpy(dtype=object)
    gid_arr, peer_arr = ops["group_id"].to_numpy(dtype=object), ops["peer"].to_numpy()
    step_arr, op_index_arr = ops["step"].to_numpy(), ops["op_index"].to_numpy()
    # Python lists: element access is many times faster than on numpy arrays.
    kind, op, gid, peer = kind_arr.tolist(), op_arr.tolist(), gid_arr.tolist(), peer_arr.tolist()
    label = ops["label"].tolist()
    stream = ops["stream"].tolist()
    deps = [d.tolist() for d in ops["deps"]]
    step = step_arr.tolist()
    nccl_group = ops["nccl_group"].tolist()
    duration = ops["duration_us"].to_numpy(dtype=float).tolist()
    flops = ops["flops"].to_numpy(dtype=float).tolist()
    moved = ops["bytes_moved"].to_numpy(dtype=float).tolist()
    total = ops["bytes_total"].tolist()
    per_rank = ops["bytes_per_rank"].tolist()
    start = ops["start_us"].to_numpy(dtype=float).tolist()
    end = ops["end_us"].to_numpy(dtype=float).tolist()

    # Node id = position in issue order; (step, op_index) -> id via the step's first position.
    positions = np.arange(n)
    step_base = {int(s): int(positions[step_arr == s][0] - op_index_arr[step_arr == s][0])
                 for s in np.unique(step_arr)}

    tags = _p2p_tags(plan, rank, kind_arr, op_arr, gid_arr, peer_arr)
    pg_names = comm_group_ids(plan)
    pg_attr = {g: _node_attr("pg_name", "string_val", str(pg_names[g])) for g in set(gid) if g}
    sizes = _AttrCache("comm_size", "int64_val")
    srcs = _AttrCache("comm_src", "int32_val")
    dsts = _AttrCache("comm_dst", "int32_val")
    roots = _AttrCache("comm_root", "int32_val")
    num_ops = _AttrCache("num_ops", "int64_val")
    tensor_sizes = _AttrCache("tensor_size", "uint64_val")
    names: dict[str, bytes] = {}
    varint = encode_varint

    # Stream FIFO: per stream, the members of the current launch unit and of the unit before it.
    units: dict[str, tuple[Any, list[int], list[int]]] = {}
    for i in range(n):
        step_i = step[i]
        base = step_base[step_i]
        s = stream[i]
        g = nccl_group[i]
        key = (step_i, g) if g >= 0 else None
        current = units.get(s)
        if current is not None and key is not None and current[0] == key:
            before = current[2]
            current[1].append(i)
        else:
            before = current[1] if current is not None else []
            units[s] = (key, [i], before)
        dep_list = deps[i]
        if dep_list:
            data_deps = sorted({base + d for d in dep_list}.union(before))
        else:
            data_deps = before

        k = kind[i]
        if k == "compute":
            node_type = NodeType.COMP_NODE
            dur = duration[i]
            dur_micros = int(round(dur)) if dur == dur else 0
            attrs = _IS_GPU_OP
            if flops[i] == flops[i]:
                attrs += num_ops[max(1, int(round(flops[i])))]  # 0 FLOPs as 1 (module docstring)
            if moved[i] == moved[i]:
                attrs += tensor_sizes[int(round(moved[i]))]
        else:
            measured = start[i] == start[i] and end[i] == end[i]
            dur_micros = int(round(end[i] - start[i])) if measured else 0
            o = op[i]
            nbytes = per_rank[i] if comm_size == "input" and o in ("allgather", "gather") else total[i]
            if k == "coll":
                node_type = NodeType.COMM_COLL_NODE
                attrs = _IS_GPU_OP + _COMM_TYPE[o] + sizes[nbytes] + pg_attr[gid[i]]
                if o in ROOTED_OPS:
                    attrs += roots[peer[i]]
            else:
                if o == "send":
                    node_type = NodeType.COMM_SEND_NODE
                    src, dst = srcs[rank], dsts[peer[i]]
                else:
                    node_type = NodeType.COMM_RECV_NODE
                    src, dst = srcs[peer[i]], dsts[rank]
                attrs = (_IS_GPU_OP + sizes[nbytes] + src + dst + _node_attr("comm_tag", "int32_val", tags[i])
                         + pg_attr[gid[i]])
        name = label[i] or op[i]
        name_field = names.get(name)
        if name_field is None:
            encoded = name.encode("utf-8")
            name_field = names[name] = _NAME + varint(len(encoded)) + encoded
        parts = [_ID + varint(i) if i else b"", name_field, _TYPE_FIELD[node_type]]
        if len(data_deps):
            packed = b"".join([varint(d) for d in data_deps])
            parts.append(_DATA_DEPS + varint(len(packed)) + packed)
        if start[i] == start[i]:
            start_micros = int(round(start[i] - t0))
            if start_micros > 0:
                parts.append(_START + varint(start_micros))
        if dur_micros > 0:
            parts.append(_DURATION + varint(dur_micros))
        parts.append(attrs)
        yield b"".join(parts)


def _p2p_tags(plan: ExportPlan, rank: int, kind, op, gid, peer) -> dict[int, int]:
    """``comm_tag`` per p2p row: the message's position among the (sender, receiver) pair's messages,
    ordered by (group number, position on that group)."""
    rows = np.flatnonzero(kind == "p2p")
    keys = [(op[i], int(peer[i]), plan.pg_ids[gid[i]]) for i in rows]
    counts: dict[tuple, int] = defaultdict(int)
    for key in keys:
        counts[key] += 1
    offsets: dict[tuple, int] = {}
    running: dict[tuple[str, int], int] = defaultdict(int)
    for key in sorted(counts, key=lambda kv: (kv[0], kv[1], kv[2])):
        pair = key[:2]
        offsets[key] = running[pair]
        running[pair] += counts[key]
    seen: dict[tuple, int] = defaultdict(int)
    tags = {}
    for i, key in zip(rows, keys):
        tag = offsets[key] + seen[key]
        seen[key] += 1
        if tag >= 1 << 31:
            raise InputError("trace", "p2p", f"rank {rank}: more than 2^31 messages to one peer do not fit comm_tag")
        tags[int(i)] = tag
    return tags


# ================================================================================================
# Reading: a generic protobuf decoder with its own table of et_def.proto
# ================================================================================================


class WireError(ValueError):
    """Bytes that are not a valid protobuf message of the expected type."""


def decode_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """(value, next position) of the varint at ``pos``; raises WireError if truncated or over 10 bytes."""
    value = 0
    shift = 0
    start = pos
    while True:
        if pos >= len(buf):
            raise WireError(f"truncated varint at byte {start}")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            break
        shift += 7
        if shift >= 70:
            raise WireError(f"varint longer than 10 bytes at byte {start}")
    if value >> 64:
        raise WireError(f"varint over 64 bits at byte {start}")
    return value, pos


def iter_fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """Every field of a message as (field number, wire type, raw value), in file order.

    Raw values: wire type 0 an unsigned int, 1 eight bytes, 2 the payload bytes, 5 four bytes.
    Raises WireError on a truncated message, field number 0 or a wire type protobuf 3 does not use.
    """
    pos = 0
    n = len(buf)
    while pos < n:
        key, pos = decode_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise WireError(f"field number 0 at byte {pos}")
        if wire == 0:
            value, pos = decode_varint(buf, pos)
        elif wire == 1:
            if pos + 8 > n:
                raise WireError(f"field {number}: truncated 64-bit value")
            value, pos = bytes(buf[pos:pos + 8]), pos + 8
        elif wire == 2:
            length, pos = decode_varint(buf, pos)
            if pos + length > n:
                raise WireError(f"field {number}: length {length} runs past the end of the message")
            value, pos = bytes(buf[pos:pos + length]), pos + length
        elif wire == 5:
            if pos + 4 > n:
                raise WireError(f"field {number}: truncated 32-bit value")
            value, pos = bytes(buf[pos:pos + 4]), pos + 4
        else:
            raise WireError(f"field {number}: wire type {wire} is not used by proto3 messages")
        yield number, wire, value


def split_frames(data: bytes) -> list[bytes]:
    """The messages of a length-delimited stream; the stream must end exactly after the last one."""
    out = []
    pos = 0
    while pos < len(data):
        length, body = decode_varint(data, pos)
        if body + length > len(data):
            raise WireError(f"message at byte {pos} declares {length} bytes but only {len(data) - body} remain")
        out.append(data[body:body + length])
        pos = body + length
    return out


# Scalar types: wire type and decoding of the raw value.
_SCALARS = {
    "double": (1, lambda raw: struct.unpack("<d", raw)[0]),
    "float": (5, lambda raw: struct.unpack("<f", raw)[0]),
    "int32": (0, lambda v: _signed(v & 0xFFFFFFFF, 32)),
    "int64": (0, lambda v: _signed(v, 64)),
    "uint32": (0, lambda v: v & 0xFFFFFFFF),
    "uint64": (0, lambda v: v),
    "sint32": (0, lambda v: (v >> 1) ^ -(v & 1)),
    "sint64": (0, lambda v: (v >> 1) ^ -(v & 1)),
    "fixed32": (5, lambda raw: struct.unpack("<I", raw)[0]),
    "fixed64": (1, lambda raw: struct.unpack("<Q", raw)[0]),
    "sfixed32": (5, lambda raw: struct.unpack("<i", raw)[0]),
    "sfixed64": (1, lambda raw: struct.unpack("<q", raw)[0]),
    "bool": (0, lambda v: v != 0),
    "enum": (0, lambda v: _signed(v & 0xFFFFFFFF, 32)),
    "string": (2, lambda raw: raw.decode("utf-8")),
    "bytes": (2, lambda raw: raw),
}


def _signed(value: int, bits: int) -> int:
    return value - (1 << bits) if value >> (bits - 1) else value


def _scalar(type_name: str, number: int, wire: int, raw: Any) -> Any:
    expected, convert = _SCALARS[type_name]
    if wire != expected:
        raise WireError(f"field {number} ({type_name}): wire type {wire}, expected {expected}")
    try:
        return convert(raw)
    except UnicodeDecodeError:
        raise WireError(f"field {number}: string is not valid UTF-8") from None


def _repeated(type_name: str, number: int, wire: int, raw: Any) -> list:
    """One occurrence of a repeated scalar field: packed (wire type 2) or a single element."""
    expected, _ = _SCALARS[type_name]
    if wire == 2 and expected != 2:
        out = []
        pos = 0
        while pos < len(raw):
            if expected == 0:
                v, pos = decode_varint(raw, pos)
            else:
                width = 8 if expected == 1 else 4
                if pos + width > len(raw):
                    raise WireError(f"field {number}: packed {type_name} list has a partial element")
                v, pos = raw[pos:pos + width], pos + width
            out.append(_scalar(type_name, number, expected, v))
        return out
    return [_scalar(type_name, number, wire, raw)]


# et_def.proto, read side. Node: number -> (name, type, repeated)
_NODE_FIELDS = {
    1: ("id", "uint64", False), 2: ("name", "string", False), 3: ("type", "enum", False),
    4: ("ctrl_deps", "uint64", True), 5: ("data_deps", "uint64", True),
    6: ("start_time_micros", "uint64", False), 7: ("duration_micros", "uint64", False),
    8: ("inputs", "IOInfo", False), 9: ("outputs", "IOInfo", False), 10: ("attr", "AttributeProto", True),
    11: ("storage", "bytes", False),
}
_METADATA_FIELDS = {1: ("version", "string", False), 2: ("attr", "AttributeProto", True)}
_IOINFO_FIELDS = {1: "values", 2: "shapes", 3: "types"}
# AttributeProto oneof "value": number -> (member name, element type, is a *List message)
_ATTR_VALUE_FIELDS = {}
for _i, _t in enumerate(("double", "float", "int32", "int64", "uint32", "uint64", "sint32", "sint64", "fixed32",
                         "fixed64", "sfixed32", "sfixed64", "bool", "string", "bytes")):
    _ATTR_VALUE_FIELDS[3 + 2 * _i] = (f"{_t}_val", _t, False)
    _ATTR_VALUE_FIELDS[4 + 2 * _i] = (f"{_t}_list", _t, True)


@dataclass
class Attribute:
    """A decoded ``AttributeProto``: ``member`` is the oneof member set (e.g. "int64_val") or None."""

    name: str = ""
    member: str | None = None
    value: Any = None
    doc_string: str = ""


@dataclass
class ChakraNode:
    """A decoded ``Node``; ``unknown_fields`` lists field numbers this reader's schema lacks."""

    id: int = 0
    name: str = ""
    type: int = 0
    ctrl_deps: list[int] = field(default_factory=list)
    data_deps: list[int] = field(default_factory=list)
    start_time_micros: int = 0
    duration_micros: int = 0
    inputs: dict[str, str] | None = None
    outputs: dict[str, str] | None = None
    attrs: list[Attribute] = field(default_factory=list)
    unknown_fields: list[int] = field(default_factory=list)

    def attr(self, name: str) -> Attribute | None:
        """The last attribute called ``name`` (None if absent)."""
        found = None
        for a in self.attrs:
            if a.name == name:
                found = a
        return found

    def value(self, name: str, default: Any = None) -> Any:
        a = self.attr(name)
        return default if a is None else a.value


@dataclass
class GlobalMetadata:
    version: str = ""
    attrs: list[Attribute] = field(default_factory=list)
    unknown_fields: list[int] = field(default_factory=list)

    def value(self, name: str, default: Any = None) -> Any:
        found = default
        for a in self.attrs:
            if a.name == name:
                found = a.value
        return found


@dataclass
class ChakraFile:
    """A decoded ``.et`` file: its ``GlobalMetadata`` and nodes in file order."""

    path: str
    metadata: GlobalMetadata
    nodes: list[ChakraNode]


def decode_attribute(buf: bytes) -> Attribute:
    """Decode an ``AttributeProto`` message (raises WireError)."""
    out = Attribute()
    for number, wire, raw in iter_fields(buf):
        if number == 1:
            out.name = _scalar("string", number, wire, raw)
        elif number == 2:
            out.doc_string = _scalar("string", number, wire, raw)
        elif number in _ATTR_VALUE_FIELDS:
            member, type_name, is_list = _ATTR_VALUE_FIELDS[number]
            if is_list:
                if wire != 2:
                    raise WireError(f"field {number} ({member}): wire type {wire}, expected 2")
                values = []
                for inner_number, inner_wire, inner_raw in iter_fields(raw):
                    if inner_number != 1:
                        raise WireError(f"{member}: unexpected field {inner_number}")
                    values.extend(_repeated(type_name, inner_number, inner_wire, inner_raw))
                out.member, out.value = member, values
            else:
                out.member, out.value = member, _scalar(type_name, number, wire, raw)
    return out


def _decode_io_info(buf: bytes) -> dict[str, str]:
    out = {"values": "", "shapes": "", "types": ""}
    for number, wire, raw in iter_fields(buf):
        if number in _IOINFO_FIELDS:
            out[_IOINFO_FIELDS[number]] = _scalar("string", number, wire, raw)
    return out


def _decode_message(buf: bytes, fields: dict, target) -> None:
    for number, wire, raw in iter_fields(buf):
        spec = fields.get(number)
        if spec is None:
            target.unknown_fields.append(number)
            continue
        name, type_name, repeated = spec
        if type_name == "AttributeProto":
            if wire != 2:
                raise WireError(f"field {number} (attr): wire type {wire}, expected 2")
            target.attrs.append(decode_attribute(raw))
        elif type_name == "IOInfo":
            if wire != 2:
                raise WireError(f"field {number} ({name}): wire type {wire}, expected 2")
            setattr(target, name, _decode_io_info(raw))
        elif repeated:
            getattr(target, name).extend(_repeated(type_name, number, wire, raw))
        elif name == "storage":
            target.unknown_fields.append(number)
        else:
            setattr(target, name, _scalar(type_name, number, wire, raw))


def decode_node(buf: bytes) -> ChakraNode:
    """Decode a ``Node`` message (raises WireError)."""
    node = ChakraNode()
    _decode_message(buf, _NODE_FIELDS, node)
    return node


def decode_global_metadata(buf: bytes) -> GlobalMetadata:
    """Decode a ``GlobalMetadata`` message (raises WireError)."""
    meta = GlobalMetadata()
    _decode_message(buf, _METADATA_FIELDS, meta)
    return meta


def read_chakra(path: str | os.PathLike) -> ChakraFile:
    """Read a Chakra ``.et`` file (optionally gzip-compressed): GlobalMetadata, then Nodes.

    Raises:
        InputError: the file is missing, its framing does not end exactly at the end of the file, or
            a message is not a valid GlobalMetadata / Node — naming the file and the message.
    """
    source = os.fspath(path)
    data = read_bytes(source)
    try:
        messages = split_frames(data)
    except WireError as exc:
        raise InputError(source, "framing", str(exc)) from None
    if not messages:
        raise InputError(source, None, "empty: expected a GlobalMetadata message and nodes")
    try:
        metadata = decode_global_metadata(messages[0])
    except WireError as exc:
        raise InputError(source, "message 0 (GlobalMetadata)", str(exc)) from None
    nodes = []
    for i, message in enumerate(messages[1:], start=1):
        try:
            nodes.append(decode_node(message))
        except WireError as exc:
            raise InputError(source, f"message {i} (Node)", str(exc)) from None
    return ChakraFile(path=source, metadata=metadata, nodes=nodes)
