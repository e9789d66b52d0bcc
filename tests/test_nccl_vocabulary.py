"""Tests of dynamiccl.nccl: NCCL's numbering, what NCCL can run, version gating, busbw, parsers.

Expected values come from NVIDIA/nccl, not from the code under test: ``src/include/plugin/nccl_tuner.h``
and ``src/include/nccl_common.h`` (enums), ``docs/userguide/source/env.rst`` (algorithm availability by
version, ``NCCL_ALGO``), ``src/nccl.h.in`` (data types and their sizes), ``src/graph/tuning.cc``
(protocol/algorithm enablement); and from NVIDIA/nccl-tests ``doc/PERFORMANCE.md`` (busbw).
"""

from __future__ import annotations

import itertools

import pytest

from dynamiccl import nccl
from dynamiccl.errors import InputError
from dynamiccl.nccl import Algorithm, DataType, Func, Protocol

# --- numbering (NVIDIA/nccl src/include/plugin/nccl_tuner.h, src/include/nccl_common.h, src/nccl.h.in)

ALGORITHM_NUMBERS = {"TREE": 0, "RING": 1, "COLLNET_DIRECT": 2, "COLLNET_CHAIN": 3, "NVLS": 4,
                     "NVLS_TREE": 5, "PAT": 6}
PROTOCOL_NUMBERS = {"LL": 0, "LL128": 1, "SIMPLE": 2}
FUNC_NUMBERS = {"BROADCAST": 0, "REDUCE": 1, "ALLGATHER": 2, "REDUCESCATTER": 3, "ALLREDUCE": 4,
                "SENDRECV": 5, "SEND": 6, "RECV": 7, "ALLTOALL": 8, "SCATTER": 9, "GATHER": 10}
# name: (ncclDataType_t value, bytes per element)
DATATYPES = {"INT8": (0, 1), "UINT8": (1, 1), "INT32": (2, 4), "UINT32": (3, 4), "INT64": (4, 8),
             "UINT64": (5, 8), "FP16": (6, 2), "FP32": (7, 4), "FP64": (8, 8), "BF16": (9, 2),
             "FP8E4M3": (10, 1), "FP8E5M2": (11, 1)}


@pytest.mark.parametrize("enum_type, expected", [
    (Algorithm, ALGORITHM_NUMBERS),
    (Protocol, PROTOCOL_NUMBERS),
    (Func, FUNC_NUMBERS),
    (DataType, {name: value for name, (value, _) in DATATYPES.items()}),
], ids=["algorithm", "protocol", "func", "datatype"])
def test_enum_numbering_matches_nccl(enum_type, expected):
    assert {m.name: int(m) for m in enum_type} == expected


@pytest.mark.parametrize("name, value_and_size", sorted(DATATYPES.items()))
def test_datatype_sizes(name, value_and_size):
    value, size = value_and_size
    assert DataType(value).name == name
    assert DataType(value).size_bytes == size


def test_nccl_constants():
    assert nccl.NUM_ALGORITHMS == 7  # NCCL_NUM_ALGORITHMS
    assert nccl.NUM_PROTOCOLS == 3  # NCCL_NUM_PROTOCOLS
    assert nccl.ALGO_PROTO_IGNORE == -1.0  # NCCL_ALGO_PROTO_IGNORE
    assert nccl.MAX_CHANNELS == 64  # MAXCHANNELS (NVIDIA/nccl src/include/device.h)


def test_name_lower_is_the_csv_spelling():
    assert Algorithm.COLLNET_DIRECT.name_lower == "collnet_direct"
    assert Algorithm.NVLS_TREE.name_lower == "nvls_tree"
    assert Protocol.LL128.name_lower == "ll128"
    assert DataType.BF16.name_lower == "bf16"


def test_nccl_name_is_ncclAlgoStr_and_ncclProtoStr():
    # NVIDIA/nccl src/init.cc: ncclAlgoStr, ncclProtoStr (the names NCCL_ALGO / NCCL_PROTO take).
    assert [a.nccl_name for a in Algorithm] == ["Tree", "Ring", "CollNetDirect", "CollNetChain", "NVLS",
                                                "NVLSTree", "PAT"]
    assert [p.nccl_name for p in Protocol] == ["LL", "LL128", "Simple"]


def test_tunable_funcs_are_the_five_collectives():
    # The plugin header's NCCL_NUM_FUNCTIONS = 5: Broadcast, Reduce, AllGather, ReduceScatter, AllReduce.
    assert [int(f) for f in nccl.TUNABLE_FUNCS] == [0, 1, 2, 3, 4]
    assert [nccl.FUNC_OP[f] for f in nccl.TUNABLE_FUNCS] == ["broadcast", "reduce", "allgather", "reducescatter", "allreduce"]


# --- what NCCL can run (NVIDIA/nccl src/graph/tuning.cc: protocol enablement, CollNet LL/LL128 = 0) --

ALL = {"LL", "LL128", "SIMPLE"}
SIMPLE = {"SIMPLE"}
# func -> {algorithm -> protocols}; anything not listed is unsupported.
REFERENCE_SUPPORT = {
    "BROADCAST": {"RING": ALL},  # Broadcast and Reduce: Ring only
    "REDUCE": {"RING": ALL},
    # AG/RS: Ring, PAT, NVLS, CollNetDirect; PAT and NVLS Simple only; CollNet LL/LL128 bandwidth 0.
    "ALLGATHER": {"RING": ALL, "PAT": SIMPLE, "NVLS": SIMPLE, "COLLNET_DIRECT": SIMPLE},
    "REDUCESCATTER": {"RING": ALL, "PAT": SIMPLE, "NVLS": SIMPLE, "COLLNET_DIRECT": SIMPLE},
    # AllReduce: everything except PAT; NVLS/NVLSTree Simple only; CollNet Simple only.
    "ALLREDUCE": {"TREE": ALL, "RING": ALL, "COLLNET_DIRECT": SIMPLE, "COLLNET_CHAIN": SIMPLE,
                  "NVLS": SIMPLE, "NVLS_TREE": SIMPLE},
}


def _support_cases():
    for func, algo, proto in itertools.product(REFERENCE_SUPPORT, ALGORITHM_NUMBERS, PROTOCOL_NUMBERS):
        expected = proto in REFERENCE_SUPPORT[func].get(algo, set())
        yield pytest.param(func, algo, proto, expected, id=f"{func}-{algo}-{proto}".lower())


@pytest.mark.parametrize("func, algo, proto, expected", list(_support_cases()))
def test_is_supported_matches_reference(func, algo, proto, expected):
    assert nccl.is_supported(Func[func], Algorithm[algo], Protocol[proto]) is expected


@pytest.mark.parametrize("func, algo, proto, expected", [
    ("BROADCAST", "TREE", "SIMPLE", False),  # broadcast is ring only
    ("BROADCAST", "RING", "LL", True),
    ("REDUCE", "NVLS", "SIMPLE", False),
    ("ALLGATHER", "TREE", "SIMPLE", False),  # never tree for AG/RS
    ("REDUCESCATTER", "TREE", "LL", False),
    ("ALLGATHER", "RING", "LL128", True),
    ("ALLGATHER", "PAT", "LL", False),
    ("REDUCESCATTER", "NVLS", "SIMPLE", True),
    ("ALLGATHER", "COLLNET_CHAIN", "SIMPLE", False),
    ("ALLREDUCE", "PAT", "SIMPLE", False),  # allreduce: everything but PAT
    ("ALLREDUCE", "TREE", "LL128", True),
    ("ALLREDUCE", "NVLS", "LL", False),  # NVLS + LL forbidden
    ("ALLREDUCE", "NVLS_TREE", "LL128", False),
    ("ALLREDUCE", "COLLNET_DIRECT", "LL", False),  # CollNet LL / LL128 forbidden
    ("ALLREDUCE", "COLLNET_CHAIN", "LL128", False),
    ("ALLREDUCE", "COLLNET_CHAIN", "SIMPLE", True),
])
def test_is_supported_named_cases(func, algo, proto, expected):
    assert nccl.is_supported(Func[func], Algorithm[algo], Protocol[proto]) is expected


@pytest.mark.parametrize("func", ["SENDRECV", "SEND", "RECV"])
def test_point_to_point_has_no_algorithm_choice(func):
    assert not any(nccl.is_supported(Func[func], a, p) for a in Algorithm for p in Protocol)


def test_is_supported_accepts_plain_integers():
    # The C plugin hands over ints: AllReduce=4, NVLS=4, Simple=2; AllGather=2, PAT=6, LL=0.
    assert nccl.is_supported(4, 4, 2) is True
    assert nccl.is_supported(2, 6, 0) is False


def test_supported_configs_for_broadcast_is_ring_with_every_protocol():
    assert nccl.supported_configs(Func.BROADCAST) == [
        (Algorithm.RING, Protocol.LL), (Algorithm.RING, Protocol.LL128), (Algorithm.RING, Protocol.SIMPLE)]


# --- version gating (NVIDIA/nccl docs/userguide/source/env.rst, NCCL_ALGO: Ring/Tree 2.5, CollNet 2.14,
# NVLS 2.17, NVLSTree 2.18, PAT 2.23) ---------------------------------------------------------------

@pytest.mark.parametrize("func, algo, version, expected", [
    ("ALLGATHER", "PAT", "2.22.3", False),
    ("ALLGATHER", "PAT", "2.23.4", True),
    ("REDUCESCATTER", "PAT", "2.23", True),
    ("ALLGATHER", "PAT", (2, 22, 99), False),
    ("ALLGATHER", "PAT", (2, 23, 0), True),
    ("ALLREDUCE", "NVLS", "2.16.5", False),
    ("ALLREDUCE", "NVLS", "2.17.1", True),
    ("ALLREDUCE", "NVLS_TREE", "2.17.1", False),
    ("ALLREDUCE", "NVLS_TREE", "2.18.1", True),
    ("ALLREDUCE", "COLLNET_DIRECT", "2.13.4", False),
    ("ALLREDUCE", "COLLNET_CHAIN", "2.14.3", True),
    ("ALLREDUCE", "RING", "2.4.8", False),
    ("ALLREDUCE", "TREE", "2.5.6", True),
    ("ALLREDUCE", "PAT", "2.28.3", False),  # a new version does not enable an impossible combination
    ("ALLGATHER", "PAT", "v2.23.4-1", True),
])
def test_version_gating(func, algo, version, expected):
    assert nccl.is_supported(Func[func], Algorithm[algo], Protocol.SIMPLE, version) is expected


def test_supported_configs_before_pat():
    before = nccl.supported_configs(Func.ALLGATHER, "2.22.3")
    after = nccl.supported_configs(Func.ALLGATHER, "2.23.4")
    assert (Algorithm.PAT, Protocol.SIMPLE) not in before
    assert set(after) - set(before) == {(Algorithm.PAT, Protocol.SIMPLE)}


def test_is_supported_rejects_a_bad_version():
    with pytest.raises(ValueError, match="not an NCCL version"):
        nccl.is_supported(Func.ALLREDUCE, Algorithm.RING, Protocol.SIMPLE, "two.twenty")


# --- NCCL's arg-min over its cost table (NVIDIA/nccl src/enqueue.cc topoGetAlgoInfo) -----------

IGNORE = nccl.ALGO_PROTO_IGNORE


def _table(cells: dict[tuple[int, int], float]) -> list[list[float]]:
    return [[cells.get((a, p), IGNORE) for p in range(nccl.NUM_PROTOCOLS)] for a in range(nccl.NUM_ALGORITHMS)]


def test_nccl_argmin_takes_the_cheapest_enabled_cell():
    table = _table({(0, 0): 9.0, (1, 1): 3.0, (1, 2): 4.0, (4, 2): -2.0})
    assert nccl.nccl_argmin(table) == (Algorithm.RING, Protocol.LL128)


def test_nccl_argmin_keeps_the_first_of_equal_costs_algorithm_major():
    table = _table({(0, 2): 5.0, (1, 0): 5.0, (1, 1): 5.0})
    assert nccl.nccl_argmin(table) == (Algorithm.TREE, Protocol.SIMPLE)


def test_nccl_argmin_never_picks_a_disabled_or_nan_cell():
    table = _table({(0, 0): float("nan"), (1, 0): -0.5, (2, 2): 7.0})
    assert nccl.nccl_argmin(table) == (Algorithm.COLLNET_DIRECT, Protocol.SIMPLE)
    assert nccl.nccl_argmin(_table({(0, 0): float("nan")})) is None
    assert nccl.nccl_argmin(_table({})) is None


def test_nccl_argmin_restricted_to_a_row_or_column():
    table = _table({(0, 0): 1.0, (1, 0): 2.0, (1, 2): 1.5, (4, 2): 3.0})
    assert nccl.nccl_argmin(table, algorithm=Algorithm.RING) == (Algorithm.RING, Protocol.SIMPLE)
    assert nccl.nccl_argmin(table, protocol=Protocol.SIMPLE) == (Algorithm.RING, Protocol.SIMPLE)
    assert nccl.nccl_argmin(table, Algorithm.NVLS, Protocol.SIMPLE) == (Algorithm.NVLS, Protocol.SIMPLE)
    assert nccl.nccl_argmin(table, Algorithm.PAT) is None


def test_nccl_argmin_reads_a_shorter_table():
    # NCCL before PAT (2.23) passes 6 algorithm rows.
    table = _table({(1, 2): 2.0, (5, 2): 1.0})[:6]
    assert nccl.nccl_argmin(table) == (Algorithm.NVLS_TREE, Protocol.SIMPLE)


# --- bus-bandwidth factors (NVIDIA/nccl-tests doc/PERFORMANCE.md) ---------------------------------

def _reference_busbw(op: str, n: int) -> float:
    if op == "allreduce":
        return 2 * (n - 1) / n
    if op in ("allgather", "reducescatter", "alltoall"):
        return (n - 1) / n
    return 1.0


@pytest.mark.parametrize("n", [1, 2, 3, 8, 16, 1024])
@pytest.mark.parametrize("op", ["allreduce", "allgather", "reducescatter", "alltoall", "broadcast",
                                "reduce", "send", "recv"])
def test_busbw_factor(op, n):
    assert nccl.busbw_factor(op, n) == pytest.approx(_reference_busbw(op, n), rel=1e-12)


def test_busbw_single_rank_edge():
    assert nccl.busbw_factor("allreduce", 1) == 0.0
    assert nccl.busbw_factor("allgather", 1) == 0.0
    assert nccl.busbw_factor("broadcast", 1) == 1.0
    assert nccl.busbw_factor("allreduce", 8) == pytest.approx(1.75)


@pytest.mark.parametrize("op, n", [("allreduce", 0), ("allreduce", -4), ("barrier", 8)])
def test_busbw_factor_errors(op, n):
    with pytest.raises(ValueError):
        nccl.busbw_factor(op, n)


# --- parse_dtype ---------------------------------------------------------------------------------

@pytest.mark.parametrize("spelling, expected", [
    ("bf16", "BF16"),
    ("BFloat16", "BF16"),
    ("torch.bfloat16", "BF16"),
    ("torch.float32", "FP32"),
    ("ncclFloat16", "FP16"),
    ("Half", "FP16"),
    ("Float", "FP32"),
    ("Long", "INT64"),
    (" fp32 ", "FP32"),
    ("torch.float8_e4m3fn", "FP8E4M3"),
    (9, "BF16"),
    (0, "INT8"),
    (11, "FP8E5M2"),
])
def test_parse_dtype_spellings(spelling, expected):
    assert nccl.parse_dtype(spelling) is DataType[expected]


# Every ncclDataType_t name of NCCL's src/nccl.h.in, with the "nccl" prefix.
NCCL_HEADER_NAMES = [
    ("ncclInt8", 0), ("ncclChar", 0), ("ncclUint8", 1), ("ncclInt32", 2), ("ncclInt", 2),
    ("ncclUint32", 3), ("ncclInt64", 4), ("ncclUint64", 5), ("ncclFloat16", 6), ("ncclHalf", 6),
    ("ncclFloat32", 7), ("ncclFloat", 7), ("ncclFloat64", 8), ("ncclDouble", 8), ("ncclBfloat16", 9),
    ("ncclFloat8e4m3", 10), ("ncclFloat8e5m2", 11),
]


@pytest.mark.parametrize("spelling, value", NCCL_HEADER_NAMES)
def test_parse_dtype_nccl_header_names(spelling, value):
    assert int(nccl.parse_dtype(spelling)) == value


@pytest.mark.parametrize("spelling", ["complex64", "torch.int16", "", 12, -1])
def test_parse_dtype_unknown_raises_input_error(spelling):
    with pytest.raises(InputError) as info:
        nccl.parse_dtype(spelling, "trace.json", "dtype")
    message = str(info.value)
    assert message.startswith("trace.json: dtype: ")
    assert str(spelling) in message or spelling == ""


# --- parse_algorithm / parse_protocol / parse_func / parse_version -------------------------------

@pytest.mark.parametrize("text, expected", [
    ("ring", "RING"), ("RING", "RING"), ("Tree", "TREE"), (" nvls ", "NVLS"),
    ("collnetdirect", "COLLNET_DIRECT"), ("CollNetDirect", "COLLNET_DIRECT"),
    ("collnet_direct", "COLLNET_DIRECT"), ("CollNetChain", "COLLNET_CHAIN"),
    ("nvlstree", "NVLS_TREE"), ("NVLS_TREE", "NVLS_TREE"), ("pat", "PAT"),
])
def test_parse_algorithm(text, expected):
    assert nccl.parse_algorithm(text) is Algorithm[expected]


@pytest.mark.parametrize("text, expected", [("ll", "LL"), ("LL128", "LL128"), ("Simple", "SIMPLE")])
def test_parse_protocol(text, expected):
    assert nccl.parse_protocol(text) is Protocol[expected]


@pytest.mark.parametrize("parser, text, listed", [
    (nccl.parse_algorithm, "rings", "collnet_direct"),
    (nccl.parse_algorithm, "collnet", "nvls_tree"),
    (nccl.parse_algorithm, "", "ring"),
    (nccl.parse_protocol, "ll64", "ll128"),
    (nccl.parse_protocol, "simple2", "simple"),
])
def test_parse_enum_errors_name_source_field_and_choices(parser, text, listed):
    with pytest.raises(InputError) as info:
        parser(text, "tuner.csv", "line 3")
    err = info.value
    assert err.source == "tuner.csv" and err.field == "line 3"
    assert repr(text) in str(err)
    assert listed in str(err)


@pytest.mark.parametrize("text, expected", [
    ("allreduce", Func.ALLREDUCE), ("AllReduce", Func.ALLREDUCE), ("all_reduce", Func.ALLREDUCE),
    ("reduce_scatter", Func.REDUCESCATTER), ("AllGather", Func.ALLGATHER), ("send", Func.SEND),
    # nccl-tests' spellings (the binaries' names): sendrecv is costed as one send
    ("all-reduce", Func.ALLREDUCE), ("Reduce-Scatter", Func.REDUCESCATTER), (" alltoall ", Func.ALLTOALL),
    ("all_to_all", Func.ALLTOALL), ("sendrecv", Func.SEND), ("recv", Func.RECV), ("gather", Func.GATHER),
])
def test_parse_func(text, expected):
    assert nccl.parse_func(text) is expected


def test_parse_func_unknown():
    with pytest.raises(InputError, match="barrier"):
        nccl.parse_func("barrier")


def test_parse_func_refuses_what_the_caller_cannot_handle():
    costed = (Func.ALLREDUCE, Func.ALLGATHER, Func.SEND)
    assert nccl.parse_func("sendrecv", allowed=costed) is Func.SEND
    with pytest.raises(InputError) as info:
        nccl.parse_func("gather", "measurements.csv", "row 3, column coll", allowed=costed)
    err = info.value
    assert err.source == "measurements.csv" and err.field == "row 3, column coll"
    assert "unknown collective 'gather'" in str(err) and "allgather" in str(err) and "scatter" not in str(err)


@pytest.mark.parametrize("text, expected", [
    ("2.23.4", (2, 23, 4)), ("2.23.4-1", (2, 23, 4)), ("v2.23.4", (2, 23, 4)), ("2.18", (2, 18, 0)),
    (" 2.19.3+cuda12.2 ", (2, 19, 3)), ("2.30.3", (2, 30, 3)),
])
def test_parse_version(text, expected):
    assert nccl.parse_version(text) == expected


@pytest.mark.parametrize("text", ["2", "", "2.x.1", "2.23.4.1", "latest", "2..3"])
def test_parse_version_errors(text):
    with pytest.raises(ValueError, match="not an NCCL version"):
        nccl.parse_version(text)


def test_versions_compare_numerically():
    assert nccl.parse_version("2.9.9") < nccl.parse_version("2.10.0")
