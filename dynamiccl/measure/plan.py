"""What ``dynamiccl measure`` times: the plan, built from a trace, and where each shape runs.

An **item** is one collective on one communicator shape (ranks, nodes) at one size band that the
trace issues: the bands are powers of two of ``bytes_total`` (nccl-tests' size, the ``nBytes`` the
tuner sees), and an item is timed at the size the trace issues most often in its band (ties: the
larger), with the dtype that size is issued with most often. Each item is timed under NCCL's
default and every (algorithm, protocol) NCCL can run for the collective (``dynamiccl.nccl``'s support
rule, the one the plugin's ``dynamiccl_tuner_supported`` compiles) times every forced channel count
of ``channels`` (0: NCCL's own count). AlltoAll (NCCL runs it as send/recv, which never reaches the
tuner) is timed under NCCL's default only; send/recv, gather and scatter are not timed (reported).

With ``chunks`` (``dynamiccl measure --chunks``: :data:`~dynamiccl.knobs.chunk.CHUNK_CHOICES_BYTES`)
each collective item is also timed under NCCL's own (algorithm, protocol, channels) with each chunk
size set through the plugin's getChunkSize (tuner ABI v6): no public measurement relates a
collective's time to its chunk size, so this is how a user prices chunk sizes on their own NCCL.
Only an NCCL with that ABI asks for a chunk size: :func:`chunks_refusal` says why a job cannot time
them (the workers find the NCCL), and :func:`chunk_refusals` which chunk sizes
:func:`dynamiccl.knobs.safety.refusals` forbids on that NCCL and transport (never timed).

A shape is **placed** on the job's ranks by :func:`place`: ``nnodes`` nodes of the job (rank 0's
node first), ``nranks / nnodes`` ranks on each, so a shape's communicator spans as many nodes as the
trace's did. A shape larger than the job, or spanning more nodes than the job has with enough ranks
on each, is skipped and reported.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dynamiccl.errors import InputError
from dynamiccl.knobs.chunk import GET_CHUNK_SIZE_MIN_NCCL
from dynamiccl.knobs.safety import PER_CALL_CHUNK, refusals
from dynamiccl.nccl import (MAX_CHANNELS, OP_FUNC, TUNABLE_FUNCS, Algorithm, DataType, Protocol, parse_dtype,
                            parse_version, supported_configs)

# The channel counts forced by default: NCCL's own, then powers of two up to MAXCHANNELS (NCCL's
# device.h). The tuner can only lower the count below the communicator's pool, which NCCL fixes at
# init (a forced count above it runs at the pool's size).
DEFAULT_CHANNELS = (0, 1, 2, 4, 8, 16, 32, 64)
TUNABLE_OPS = tuple(op for op, func in OP_FUNC.items() if func in TUNABLE_FUNCS)
DEFAULT_ONLY_OPS = ("alltoall",)  # NCCL runs it as send/recv: the tuner is never asked
PLAN_VERSION = 2  # 2: configurations with a chunk size, the plan's chunks


@dataclass(frozen=True)
class Config:
    """One configuration: a forced (algorithm, protocol, channels), NCCL's own (algorithm, protocol,
    channels) with a chunk size set, or NCCL's default (-1, -1, 0, 0)."""

    algo: int = -1
    proto: int = -1
    channels: int = 0  # 0: NCCL's own count
    chunk_bytes: int = 0  # 0: NCCL's own chunk size

    @property
    def is_default(self) -> bool:
        return self.algo < 0 and self.proto < 0 and self.channels == 0 and self.chunk_bytes == 0

    @property
    def label(self) -> str:
        """``default``, ``ring/simple`` (NCCL's channel count), ``ring/ll/ch8`` or ``chunk256K``
        (NCCL's algorithm, protocol and channels with a 256 KiB chunk)."""
        if self.is_default:
            return "default"
        parts = [] if self.algo < 0 and self.proto < 0 else \
            [f"{Algorithm(self.algo).name_lower}/{Protocol(self.proto).name_lower}"]
        parts += [f"ch{self.channels}"] if self.channels else []
        parts += [f"chunk{self.chunk_bytes // 1024}K"] if self.chunk_bytes else []
        return "/".join(parts)


DEFAULT = Config()


@dataclass(frozen=True)
class Shape:
    """A communicator shape: ``nranks`` ranks over ``nnodes`` nodes (``nranks // nnodes`` per node)."""

    nranks: int
    nnodes: int

    @property
    def key(self) -> str:
        return f"{self.nranks}x{self.nnodes}"

    @property
    def ranks_per_node(self) -> int:
        return self.nranks // self.nnodes


@dataclass
class Item:
    """One collective on one shape at one size band, and the configurations to time it under
    (``configs[0]`` is NCCL's default). ``calls``: how many calls of the trace's ranks fall in the
    band; ``group_kinds``: the trace's group kinds that issue them."""

    coll: str
    shape: Shape
    size_bytes: int
    dtype: str  # NCCL's dtype name (bf16, fp32, ...)
    band: int  # floor(log2(size_bytes)) of the band
    calls: int
    group_kinds: tuple[str, ...]
    configs: list[Config] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.coll} {self.shape.key} {self.size_bytes} B"

    def op_spec(self, backend: str) -> dict:
        """The query :func:`dynamiccl.costmodel.live.make_op` runs. gloo has no fp8 collectives: an
        fp8 item runs as uint8 there (the same bytes)."""
        from dynamiccl.costmodel.live import FP8, TORCH_DTYPES

        dtype = parse_dtype(self.dtype)
        if dtype not in TORCH_DTYPES or (dtype in FP8 and backend == "gloo"):
            dtype = DataType.UINT8
        return {"coll": self.coll, "size_bytes": self.size_bytes, "torch_dtype": TORCH_DTYPES[dtype],
                "dtype_size": dtype.size_bytes}


@dataclass
class Plan:
    """Everything the workers time, in order, and what the trace issues that is not timed."""

    trace: str
    items: list[Item]
    skipped: list[dict]  # {"what", "reason"}
    channels: tuple[int, ...]
    chunks: tuple[int, ...] = ()  # chunk sizes (bytes) timed with NCCL's own choice (--chunks)

    @property
    def shapes(self) -> list[Shape]:
        """The distinct shapes of the items, in first-use order."""
        return list(dict.fromkeys(item.shape for item in self.items))

    @property
    def n_configs(self) -> int:
        return sum(len(item.configs) for item in self.items)

    def to_json(self) -> dict:
        return {"version": PLAN_VERSION, "trace": self.trace, "channels": list(self.channels),
                "chunks": list(self.chunks), "skipped": self.skipped,
                "items": [{**asdict(item), "shape": asdict(item.shape),
                           "configs": [asdict(c) for c in item.configs], "group_kinds": list(item.group_kinds)}
                          for item in self.items]}

    @classmethod
    def from_json(cls, obj: dict) -> "Plan":
        """The plan a :meth:`to_json` wrote (our own file, between our own processes)."""
        items = [Item(coll=i["coll"], shape=Shape(**i["shape"]), size_bytes=i["size_bytes"], dtype=i["dtype"],
                      band=i["band"], calls=i["calls"], group_kinds=tuple(i["group_kinds"]),
                      configs=[Config(**c) for c in i["configs"]]) for i in obj["items"]]
        return cls(obj["trace"], items, obj["skipped"], tuple(obj["channels"]), tuple(obj.get("chunks", ())))

    def write(self, path: str | os.PathLike) -> None:
        from dynamiccl import atomic

        atomic.write_text(path, json.dumps(self.to_json()))

    @classmethod
    def read(cls, path: str | os.PathLike) -> "Plan":
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))


def configs_for(coll: str, channels: tuple[int, ...] = DEFAULT_CHANNELS, chunks: tuple[int, ...] = ()) -> list[Config]:
    """NCCL's default, then every supported (algorithm, protocol) x ``channels``, algorithm-major,
    then NCCL's own choice with each of ``chunks`` (bytes)."""
    if coll not in TUNABLE_OPS:
        return [DEFAULT]
    pairs = supported_configs(OP_FUNC[coll])
    return [DEFAULT] + [Config(int(a), int(p), c) for a, p in pairs for c in channels] + \
        [Config(chunk_bytes=c) for c in chunks]


def chunks_refusal(backend: str, nccl_version: str | None) -> str | None:
    """Why a job on ``backend`` with ``nccl_version`` cannot time chunk sizes (``--chunks``), in one
    line; None when it can: NCCL asks a tuner for a chunk size only through ABI v6's getChunkSize
    (NCCL >= :data:`~dynamiccl.knobs.chunk.GET_CHUNK_SIZE_MIN_NCCL`)."""
    if backend != "nccl":
        return (f"chunk sizes need NCCL >= {GET_CHUNK_SIZE_MIN_NCCL} (tuner ABI v6 getChunkSize); the job runs on "
                f"{backend}, where no NCCL runs, so there is no chunk size to set")
    if nccl_version is None or parse_version(nccl_version) < parse_version(GET_CHUNK_SIZE_MIN_NCCL):
        return (f"chunk sizes need NCCL >= {GET_CHUNK_SIZE_MIN_NCCL} (tuner ABI v6 getChunkSize); the job runs NCCL "
                f"{nccl_version or 'of unknown version'}, which never asks a tuner for a chunk size")
    return None


def chunk_refusals(plan: "Plan", nccl_version: str, transport: str | None) -> dict[tuple[int, int], str]:
    """(item, configuration) -> why it is never timed: the chunk sizes
    :func:`dynamiccl.knobs.safety.refusals` forbids on ``nccl_version`` over the transport the item's
    communicator crosses: ``transport`` (the network's: ib, roce, ...; None: unknown, so every rule
    applies) for a shape spanning nodes; none for a one-node shape, whose chunks never cross the network."""
    refused = {}
    for i, item in enumerate(plan.items):
        crosses = transport if item.shape.nnodes > 1 else "intra-node"
        for c, config in enumerate(item.configs):
            if config.chunk_bytes > 0:
                found = refusals({PER_CALL_CHUNK: config.chunk_bytes}, nccl_version, crosses)
                if found:
                    refused[(i, c)] = str(found[0])
    return refused


def parse_channels(text: str) -> tuple[int, ...]:
    """``--channels``: a comma list of forced channel counts, ``nccl`` or 0 for NCCL's own count.

    Raises:
        InputError: naming ``--channels``, for a count outside 0..MAX_CHANNELS or a repeat.
    """
    values = []
    for token in (t.strip().lower() for t in text.split(",")):
        value = 0 if token == "nccl" else (int(token) if token.isdigit() else None)
        if value is None or not 0 <= value <= MAX_CHANNELS:
            raise InputError("--channels", None, f"expected a comma list of channel counts 0..{MAX_CHANNELS} "
                                                 f"(0 or nccl: NCCL's own), got {token!r}")
        if value in values:
            raise InputError("--channels", None, f"{token} is given twice")
        values.append(value)
    return tuple(values)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600}


def parse_budget(text: str) -> float:
    """``--budget``: ``90s``, ``10m``, ``1h`` or a number of seconds -> seconds (> 0).

    Raises:
        InputError: naming ``--budget``, for anything else.
    """
    match = _DURATION.match(str(text).lower())
    seconds = float(match.group(1)) * _UNIT_S[match.group(2)] if match else 0.0
    if not seconds > 0:
        raise InputError("--budget", None, f"expected a duration like 90s, 10m or 1h, got {text!r}")
    return seconds


def build_plan(trace, trace_path: str, channels: tuple[int, ...] = DEFAULT_CHANNELS,
               max_bytes: int | None = None, chunks: tuple[int, ...] = ()) -> Plan:
    """The plan for a :class:`~dynamiccl.trace.store.Trace` (see the module docstring); ``chunks``:
    chunk sizes (bytes) to time each collective item with too.

    Raises:
        InputError: naming the trace, when it issues no collective that can be timed.
    """
    ops = trace.communication_ops
    skipped: list[dict] = []
    for op, rows in ops[~ops["op"].isin(TUNABLE_OPS + DEFAULT_ONLY_OPS)].groupby("op", sort=True):
        reason = ("point-to-point: the tuner is never asked, and NCCL_P2P_* settings apply at init"
                  if op in ("send", "recv") else "not a collective torch.distributed times here")
        skipped.append({"what": f"{op} ({len(rows)} calls)", "reason": reason})
    colls = ops[ops["op"].isin(TUNABLE_OPS + DEFAULT_ONLY_OPS)]
    items = []
    for (op, nranks, nnodes), rows in colls.groupby(["op", "group_size", "group_nnodes"], sort=True):
        shape = Shape(int(nranks), int(nnodes))
        if shape.nranks < 2:
            skipped.append({"what": f"{op} on 1 rank ({len(rows)} calls)", "reason": "no communication"})
            continue
        bands: dict[int, list] = {}
        for size, dtype, kind in zip(rows["bytes_total"].tolist(), rows["dtype"].tolist(), rows["group_kind"].tolist()):
            bands.setdefault(int(math.floor(math.log2(size))) if size > 0 else -1, []).append((int(size), dtype, kind))
        for band, calls in sorted(bands.items()):
            sizes = Counter(size for size, _, _ in calls)
            size = max(sizes, key=lambda s: (sizes[s], s))
            if size <= 0:
                continue
            if max_bytes is not None and size > max_bytes:
                skipped.append({"what": f"{op} {shape.key} {size} B ({len(calls)} calls)",
                                "reason": f"larger than --max-bytes {max_bytes}"})
                continue
            dtypes = Counter(dtype for s, dtype, _ in calls if s == size)
            items.append(Item(coll=op, shape=shape, size_bytes=size, dtype=max(dtypes, key=lambda d: (dtypes[d], d)),
                              band=band, calls=len(calls), group_kinds=tuple(sorted({k for _, _, k in calls})),
                              configs=configs_for(op, channels, chunks)))
    if not items:
        raise InputError(trace_path, None, "issues no collective dynamiccl measure can time (allreduce, allgather, "
                                           "reducescatter, broadcast, reduce, alltoall on 2 or more ranks)")
    return Plan(trace_path, items, skipped, tuple(channels), tuple(chunks))


def place(shape: Shape, rank_nodes: list[int]) -> tuple[int, ...] | str:
    """The global ranks that run ``shape`` in a job whose rank ``r`` is on node ``rank_nodes[r]``,
    or the reason it cannot run there.

    ``shape.nnodes`` nodes, rank 0's node first (rank 0 decides and must take part), then the
    others in the order of their lowest rank; on each, its lowest ``shape.ranks_per_node`` ranks
    (on rank 0's node: rank 0 and the next lowest).
    """
    world = len(rank_nodes)
    if shape.nranks > world:
        return f"needs {shape.nranks} ranks, the job has {world}"
    if shape.nranks % shape.nnodes:
        return f"{shape.nranks} ranks do not split evenly over {shape.nnodes} nodes"
    by_node: dict[int, list[int]] = {}
    for rank, node in enumerate(rank_nodes):
        by_node.setdefault(node, []).append(rank)
    per = shape.ranks_per_node
    nodes = [n for n in by_node if len(by_node[n]) >= per]  # dict order: by lowest rank
    if rank_nodes[0] not in nodes:
        return f"needs {per} ranks per node, rank 0's node has {len(by_node[rank_nodes[0]])}"
    nodes.remove(rank_nodes[0])
    nodes.insert(0, rank_nodes[0])
    if len(nodes) < shape.nnodes:
        return (f"spans {shape.nnodes} nodes with {per} ranks each; the job has {len(nodes)} such node(s) "
                f"({len(by_node)} node(s), ranks per node {sorted({len(v) for v in by_node.values()})})")
    return tuple(sorted(r for n in nodes[:shape.nnodes] for r in by_node[n][:per]))
