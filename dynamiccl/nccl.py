"""NCCL's vocabulary, with NCCL's own numbers: algorithms, protocols, functions, data types.

Everything here is a fact about NCCL that the rest of dynamiccl (and the C tuner plugin) must agree
on; the plugin's header is checked against this module by a test. Sources:

- enums: NVIDIA/nccl ``src/include/plugin/nccl_tuner.h`` and ``src/include/nccl_common.h``
  (algorithms, protocols, ``ncclFunc_t``; ``NCCL_NUM_FUNCTIONS`` = 5, "Send/Recv not included") and
  ``src/nccl.h.in`` (data types, reductions);
- which (function, algorithm, protocol) NCCL can run: NVIDIA/nccl ``src/graph/tuning.cc``
  (``ncclTopoTuneModel``'s protocol/algorithm enablement) and the availability of each algorithm by
  version in ``docs/userguide/source/env.rst`` (``NCCL_ALGO``);
- bus-bandwidth factors: NVIDIA/nccl-tests ``doc/PERFORMANCE.md``.

What depends on the cluster (NVLS needs NVSwitch and sm90, CollNet needs SHARP, LL128 needs safe
paths, PAT needs one GPU per node...) is decided by the cost model from an environment spec; this
module only says what NCCL can express at all.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Sequence

from dynamiccl.errors import InputError


class Algorithm(enum.IntEnum):
    """``NCCL_ALGO_*``; ``name_lower`` is the spelling of NCCL's example tuner CSV, ``nccl_name``
    NCCL's own."""

    TREE = 0
    RING = 1
    COLLNET_DIRECT = 2
    COLLNET_CHAIN = 3
    NVLS = 4
    NVLS_TREE = 5
    PAT = 6

    @property
    def name_lower(self) -> str:
        return self.name.lower()

    @property
    def nccl_name(self) -> str:
        """NCCL's name (``ncclAlgoStr``): what NCCL_ALGO takes and TUNING log lines print, e.g.
        "CollNetDirect"."""
        return _ALGORITHM_NCCL_NAMES[self]


class Protocol(enum.IntEnum):
    """``NCCL_PROTO_*``; ``name_lower`` is the spelling of NCCL's example tuner CSV, ``nccl_name``
    NCCL's own."""

    LL = 0
    LL128 = 1
    SIMPLE = 2

    @property
    def name_lower(self) -> str:
        return self.name.lower()

    @property
    def nccl_name(self) -> str:
        """NCCL's name (``ncclProtoStr``): what NCCL_PROTO takes, e.g. "Simple"."""
        return _PROTOCOL_NCCL_NAMES[self]


# ncclAlgoStr / ncclProtoStr (NVIDIA/nccl src/include/device.h, defined in src/init.cc).
_ALGORITHM_NCCL_NAMES = {
    Algorithm.TREE: "Tree", Algorithm.RING: "Ring", Algorithm.COLLNET_DIRECT: "CollNetDirect",
    Algorithm.COLLNET_CHAIN: "CollNetChain", Algorithm.NVLS: "NVLS", Algorithm.NVLS_TREE: "NVLSTree",
    Algorithm.PAT: "PAT",
}
_PROTOCOL_NCCL_NAMES = {Protocol.LL: "LL", Protocol.LL128: "LL128", Protocol.SIMPLE: "Simple"}


NUM_ALGORITHMS = len(Algorithm)  # NCCL_NUM_ALGORITHMS = 7
NUM_PROTOCOLS = len(Protocol)  # NCCL_NUM_PROTOCOLS = 3
NUM_COST_CELLS = NUM_ALGORITHMS * NUM_PROTOCOLS  # cells of NCCL's cost table collCostTable[algorithm][protocol]
ALGO_PROTO_IGNORE = -1.0  # NCCL_ALGO_PROTO_IGNORE: a cost-table entry NCCL cannot use
MAX_CHANNELS = 64  # MAXCHANNELS in NCCL's device.h
KEEP = -1  # "keep NCCL's choice" / "any" in decision tables and NCCL's example CSV


class Func(enum.IntEnum):
    """``ncclFunc_t``. 0..7 are in the tuner plugin header; 8..10 only in NCCL's core header."""

    BROADCAST = 0
    REDUCE = 1
    ALLGATHER = 2
    REDUCESCATTER = 3
    ALLREDUCE = 4
    SENDRECV = 5
    SEND = 6
    RECV = 7
    ALLTOALL = 8
    SCATTER = 9
    GATHER = 10


# The tuner's getCollInfo is only called for these (NCCL_NUM_FUNCTIONS = 5 in the plugin header).
TUNABLE_FUNCS = (Func.BROADCAST, Func.REDUCE, Func.ALLGATHER, Func.REDUCESCATTER, Func.ALLREDUCE)
NUM_TUNABLE_FUNCS = len(TUNABLE_FUNCS)  # NCCL_NUM_FUNCTIONS; they are Func 0 .. NUM_TUNABLE_FUNCS - 1


class DataType(enum.IntEnum):
    """``ncclDataType_t`` (fp8 types from NCCL 2.24)."""

    INT8 = 0
    UINT8 = 1
    INT32 = 2
    UINT32 = 3
    INT64 = 4
    UINT64 = 5
    FP16 = 6
    FP32 = 7
    FP64 = 8
    BF16 = 9
    FP8E4M3 = 10
    FP8E5M2 = 11

    @property
    def size_bytes(self) -> int:
        return _DTYPE_SIZE_BYTES[self]

    @property
    def name_lower(self) -> str:
        return self.name.lower()


_DTYPE_SIZE_BYTES = {
    DataType.INT8: 1, DataType.UINT8: 1, DataType.INT32: 4, DataType.UINT32: 4,
    DataType.INT64: 8, DataType.UINT64: 8, DataType.FP16: 2, DataType.FP32: 4,
    DataType.FP64: 8, DataType.BF16: 2, DataType.FP8E4M3: 1, DataType.FP8E5M2: 1,
}

# Spellings met in the wild, mapped to NCCL's type: torch (``torch.bfloat16``, ``c10::toString``
# names in Flight Recorder / Kineto such as "BFloat16", "Float", "Long"), NCCL's own names.
_DTYPE_ALIASES = {
    "char": DataType.INT8, "byte": DataType.UINT8, "int": DataType.INT32, "long": DataType.INT64,
    "half": DataType.FP16, "float": DataType.FP32, "double": DataType.FP64,
    "bfloat16": DataType.BF16, "float16": DataType.FP16, "float32": DataType.FP32,
    "float64": DataType.FP64, "bool": DataType.UINT8,
    "float8_e4m3fn": DataType.FP8E4M3, "float8_e5m2": DataType.FP8E5M2,
    "fp8_e4m3": DataType.FP8E4M3, "fp8_e5m2": DataType.FP8E5M2,
    "float8e4m3": DataType.FP8E4M3, "float8e5m2": DataType.FP8E5M2,  # ncclFloat8e4m3 / e5m2
}

DTYPE_NAMES = tuple(d.name_lower for d in DataType)


def parse_dtype(name: str, source: str | None = None, field: str | None = None) -> DataType:
    """Map a dtype spelling ("bf16", "BFloat16", "torch.float32", "ncclFloat16", 9) to ``DataType``.

    Raises:
        InputError: for an unknown spelling, naming ``source`` and ``field``.
    """
    if isinstance(name, int) and not isinstance(name, bool):
        try:
            return DataType(name)
        except ValueError:
            raise InputError(source, field, f"unknown ncclDataType_t {name}; expected 0..11") from None
    key = str(name).strip()
    for prefix in ("torch.", "nccl"):
        if key.startswith(prefix):
            key = key[len(prefix):]
    key = key.lower()
    if key in DTYPE_NAMES:
        return DataType[key.upper()]
    found = _DTYPE_ALIASES.get(key)
    if found is None:
        raise InputError(source, field, f"unknown dtype {name!r}; expected one of {', '.join(DTYPE_NAMES)}")
    return found


# --- Operations as dynamiccl traces name them ----------------------------------------------------

COLLECTIVE_OPS = ("allreduce", "allgather", "reducescatter", "broadcast", "reduce", "alltoall",
                  "gather", "scatter")
P2P_OPS = ("send", "recv")

OP_FUNC = {
    "broadcast": Func.BROADCAST, "reduce": Func.REDUCE, "allgather": Func.ALLGATHER,
    "reducescatter": Func.REDUCESCATTER, "allreduce": Func.ALLREDUCE, "send": Func.SEND,
    "recv": Func.RECV, "alltoall": Func.ALLTOALL, "scatter": Func.SCATTER, "gather": Func.GATHER,
}
FUNC_OP = {func: op for op, func in OP_FUNC.items()}

# Ops whose per-rank contribution is 1/n of the full buffer (NCCL's count is per rank: AllGather's
# sendcount, ReduceScatter's recvcount; AlltoAll's per-peer count).
SHARDED_OPS = frozenset({"allgather", "reducescatter", "alltoall", "gather", "scatter"})
# Ops whose NCCL call names a root rank (ncclBroadcast, ncclReduce, ncclGather, ncclScatter in
# src/nccl.h.in); Send/Recv name a peer instead.
ROOTED_OPS = frozenset({"broadcast", "reduce", "gather", "scatter"})
# Functions that reduce (ncclAllReduce, ncclReduceScatter, ncclReduce take an ncclRedOp_t).
REDUCING_FUNCS = frozenset({Func.ALLREDUCE, Func.REDUCESCATTER, Func.REDUCE})


def nccl_tests_op(func: Func) -> str:
    """The op name of ``func`` in nccl-tests style tables: its trace op name, but "sendrecv" for
    SendRecv, Send and Recv (nccl-tests' ``sendrecv_perf`` times one send and one receive per rank)."""
    return "sendrecv" if func in (Func.SENDRECV, Func.SEND, Func.RECV) else FUNC_OP[Func(func)]


def busbw_factor(op: str, nranks: int) -> float:
    """nccl-tests' busbw = algbw × factor (``doc/PERFORMANCE.md``).

    AllReduce 2(n-1)/n; ReduceScatter, AllGather, AlltoAll (n-1)/n; Broadcast, Reduce, SendRecv 1.
    """
    if nranks < 1:
        raise ValueError(f"nranks must be >= 1, got {nranks}")
    if op == "allreduce":
        return 2.0 * (nranks - 1) / nranks
    if op in SHARDED_OPS:
        return (nranks - 1) / nranks
    if op in ("broadcast", "reduce", "send", "recv", "sendrecv"):
        return 1.0
    raise ValueError(f"no bus-bandwidth factor for op {op!r}")


# --- Which (function, algorithm, protocol) NCCL can run -----------------------------------------

_ALL_PROTOCOLS = (Protocol.LL, Protocol.LL128, Protocol.SIMPLE)
_SIMPLE_ONLY = (Protocol.SIMPLE,)

# tuning.cc: Broadcast/Reduce run Ring only; AllGather/ReduceScatter run Ring, PAT, NVLS and
# CollNetDirect; AllReduce runs everything but PAT. CollNet has no LL/LL128 bandwidth (0), NVLS,
# NVLSTree and PAT are Simple only.
_SUPPORTED: dict[Func, dict[Algorithm, tuple[Protocol, ...]]] = {
    Func.BROADCAST: {Algorithm.RING: _ALL_PROTOCOLS},
    Func.REDUCE: {Algorithm.RING: _ALL_PROTOCOLS},
    Func.ALLGATHER: {
        Algorithm.RING: _ALL_PROTOCOLS, Algorithm.COLLNET_DIRECT: _SIMPLE_ONLY,
        Algorithm.NVLS: _SIMPLE_ONLY, Algorithm.PAT: _SIMPLE_ONLY,
    },
    Func.REDUCESCATTER: {
        Algorithm.RING: _ALL_PROTOCOLS, Algorithm.COLLNET_DIRECT: _SIMPLE_ONLY,
        Algorithm.NVLS: _SIMPLE_ONLY, Algorithm.PAT: _SIMPLE_ONLY,
    },
    Func.ALLREDUCE: {
        Algorithm.TREE: _ALL_PROTOCOLS, Algorithm.RING: _ALL_PROTOCOLS,
        Algorithm.COLLNET_DIRECT: _SIMPLE_ONLY, Algorithm.COLLNET_CHAIN: _SIMPLE_ONLY,
        Algorithm.NVLS: _SIMPLE_ONLY, Algorithm.NVLS_TREE: _SIMPLE_ONLY,
    },
}

# First NCCL release with each algorithm (NCCL env docs: Ring/Tree 2.5, CollNet 2.14, NVLS 2.17,
# NVLSTree 2.18, PAT 2.23).
ALGORITHM_SINCE = {
    Algorithm.TREE: (2, 5, 0), Algorithm.RING: (2, 5, 0), Algorithm.COLLNET_DIRECT: (2, 14, 0),
    Algorithm.COLLNET_CHAIN: (2, 14, 0), Algorithm.NVLS: (2, 17, 0),
    Algorithm.NVLS_TREE: (2, 18, 0), Algorithm.PAT: (2, 23, 0),
}


def parse_version(version: str) -> tuple[int, int, int]:
    """"2.23.4" (or "2.23.4-1", "v2.23.4") -> (2, 23, 4).

    Raises:
        ValueError: if it is not of the form MAJOR.MINOR[.PATCH].
    """
    text = version.strip().lstrip("v").split("-", 1)[0].split("+", 1)[0]
    parts = text.split(".")
    if not 2 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"not an NCCL version: {version!r} (expected e.g. 2.23.4)")
    nums = [int(p) for p in parts] + [0] * (3 - len(parts))
    return nums[0], nums[1], nums[2]


def is_supported(func: Func, algo: Algorithm, proto: Protocol,
                 nccl_version: str | tuple[int, int, int] | None = None) -> bool:
    """Whether NCCL (optionally: this NCCL version) can run ``func`` with ``algo``/``proto`` at all."""
    protocols = _SUPPORTED.get(Func(func), {}).get(Algorithm(algo))
    if protocols is None or Protocol(proto) not in protocols:
        return False
    if nccl_version is not None:
        version = parse_version(nccl_version) if isinstance(nccl_version, str) else nccl_version
        if version < ALGORITHM_SINCE[Algorithm(algo)]:
            return False
    return True


def supported_configs(func: Func, nccl_version: str | None = None) -> list[tuple[Algorithm, Protocol]]:
    """All (algorithm, protocol) pairs NCCL can express for ``func``, algorithm-major."""
    return [(a, p) for a in Algorithm for p in Protocol if is_supported(func, a, p, nccl_version)]


def nccl_argmin(cost_table: Sequence[Sequence[float]], algorithm: Algorithm | None = None,
                protocol: Protocol | None = None) -> tuple[Algorithm, Protocol] | None:
    """NCCL's pick from its cost table ``collCostTable[algorithm][protocol]`` (µs): the cheapest
    enabled cell, scanning algorithm-major then protocol and keeping the first of equal costs (strict
    ``<``). A cell < 0 (``NCCL_ALGO_PROTO_IGNORE``) or NaN is disabled. NVIDIA/nccl ``src/enqueue.cc``
    (``topoGetAlgoInfo``); the tuner plugin's ``cheapest`` in ``decide.c`` scans the same way.

    Args:
        cost_table: rows of costs, one per algorithm (NCCL may pass fewer than ``NUM_ALGORITHMS``).
        algorithm, protocol: scan only this row / column (a rule that names one of them).

    Returns:
        The cheapest (algorithm, protocol), or None when no enabled cell is left (NCCL fails the
        call then).
    """
    best, pick = 0.0, None
    for a, row in enumerate(cost_table):
        if algorithm is not None and a != algorithm:
            continue
        for p, cost in enumerate(row):
            if (protocol is None or p == protocol) and cost >= 0 and (pick is None or cost < best):
                best, pick = cost, (Algorithm(a), Protocol(p))
    return pick


def _parse_enum(enum_type, text: str, what: str, source, field):
    """The member whose ``name_lower`` or ``nccl_name`` is ``text`` (without case). Raises InputError."""
    key = str(text).strip().lower()
    for member in enum_type:
        if key in (member.name_lower, member.nccl_name.lower()):
            return member
    names = ", ".join(m.name_lower for m in enum_type)
    raise InputError(source, field, f"unknown {what} {text!r}; expected one of {names}")


def parse_algorithm(text: str, source: str | None = None, field: str | None = None) -> Algorithm:
    """"ring", "RING", "collnetdirect" / "CollNetDirect" (NCCL's name, as NCCL_ALGO takes it) or
    "collnet_direct" (the tuner CSV's) -> ``Algorithm``.

    Raises:
        InputError: an unknown name, naming ``source`` and ``field`` and listing the accepted names.
    """
    return _parse_enum(Algorithm, text, "algorithm", source, field)


def parse_protocol(text: str, source: str | None = None, field: str | None = None) -> Protocol:
    """"ll", "LL128", "simple" / "Simple" -> ``Protocol``.

    Raises:
        InputError: an unknown name, naming ``source`` and ``field`` and listing the accepted names.
    """
    return _parse_enum(Protocol, text, "protocol", source, field)


# Collective spellings parse_func accepts, compared without case, "_" or "-": dynamiccl's trace ops,
# NCCL's names ("AllReduce") and nccl-tests' ("all_reduce", "reduce_scatter", "sendrecv"). nccl-tests'
# sendrecv is costed as one send of the bytes each rank sends.
_FUNC_SPELLINGS = {**OP_FUNC, "sendrecv": Func.SEND}


def parse_func(text: str, source: str | None = None, field: str | None = None,
               allowed: Collection[Func] | None = None) -> Func:
    """A collective's name -> ``Func``: a trace op ("allreduce", "send"), NCCL's spelling
    ("AllReduce") or nccl-tests' ("all_reduce", "reduce-scatter", "sendrecv" -> ``Func.SEND``).

    Args:
        allowed: the functions the caller can handle (default: every one); a name of any other is
            refused like an unknown one.

    Raises:
        InputError: an unknown or refused name, naming ``source`` and ``field`` and listing the
            accepted names.
    """
    key = str(text).strip().lower().replace("_", "").replace("-", "")
    func = _FUNC_SPELLINGS.get(key)
    if func is None or (allowed is not None and func not in allowed):
        names = [name for name, f in _FUNC_SPELLINGS.items() if allowed is None or f in allowed]
        raise InputError(source, field, f"unknown collective {text!r}; expected one of {', '.join(names)}")
    return func
