"""The compiled tuner plugin, driven through ctypes exactly as NCCL drives it, for ABI v2..v6: what each
variant exports, the C side's vocabulary against dynamiccl.nccl, and the decisions (on the instrumented
variant, whose counters and reset the checks need; the production one is the same code, less those)."""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
from plugin_harness import use_table

from dynamiccl.nccl import ALGO_PROTO_IGNORE, FUNC_OP, MAX_CHANNELS, NUM_ALGORITHMS, NUM_PROTOCOLS, TUNABLE_FUNCS
from dynamiccl.nccl import Algorithm as A
from dynamiccl.nccl import Func, Protocol as P, is_supported, nccl_argmin
from dynamiccl.errors import InputError
from dynamiccl.knobs.chunk import check_chunk_bytes
from dynamiccl.plugin import NO_CHUNK_ENV, TABLE_ENV, binding
from dynamiccl.plugin.binding import (LOG_FLAG_TUNING, LOG_INFO, LOG_WARN, DecisionSource, InstrumentedTunerLibrary,
                                      TunerLibrary)
from dynamiccl.plugin.build import SOURCE_DIR
from dynamiccl.table import DecisionTable, Rule, StepShape, plugin_text

COST_ABIS = (3, 4, 5, 6)
ALL_ABIS = (2, 3, 4, 5, 6)
OFF = -1.0


def costs(**cells: float) -> list[list[float]]:
    """A 7x3 NCCL cost table: every cell disabled except the named ones (e.g. ring_simple=12.5)."""
    table = [[OFF] * 3 for _ in range(7)]
    for name, value in cells.items():
        algo, proto = name.rsplit("_", 1)
        table[A[algo.upper()]][P[proto.upper()]] = value
    return table


# H100, 16 ranks on 2 nodes, 1 MiB AllReduce: Tree and Ring enabled, NVLS/CollNet not, LL128 on.
H100 = costs(tree_ll=40.0, tree_ll128=22.0, tree_simple=30.0, ring_ll=55.0, ring_ll128=25.0,
             ring_simple=35.0)


def table(*rules: Rule, steps=()) -> DecisionTable:
    return DecisionTable(tuple(rules), {"test": "abi"}, steps=tuple(steps))


def rule(coll=Func.ALLREDUCE, min_bytes=0, max_bytes=2**64 - 1, **keys) -> Rule:
    return Rule(coll, min_bytes, max_bytes, **keys)


def changed_cells(before, after) -> dict:
    return {(a, p): after[a][p] for a in range(len(before)) for p in range(3) if before[a][p] != after[a][p]}


# --- what the libraries export ---------------------------------------------------------------------

NCCL_SYMBOLS = {f"ncclTunerPlugin_v{v}" for v in ALL_ABIS}
INSTRUMENTED_SYMBOLS = {"dynamiccl_tuner_version", "dynamiccl_tuner_override", "dynamiccl_tuner_stats",
                        "dynamiccl_tuner_supported", "dynamiccl_tuner_parse", "dynamiccl_tuner_check_file",
                        "dynamiccl_tuner_reset"}
LINKER_SYMBOLS = {"_init", "_fini", "__bss_start", "_edata", "_end"}  # some linkers define these


def exported_symbols(library) -> set[str]:
    """What a shared library exports (``nm -D --defined-only``), less the linker's own symbols."""
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm is not installed (binutils)")
    listing = subprocess.run([nm, "-D", "--defined-only", str(library)], capture_output=True, text=True, check=True)
    return {line.split()[-1] for line in listing.stdout.splitlines() if line.strip()} - LINKER_SYMBOLS


def test_the_production_library_exports_only_what_nccl_looks_up(plugin_path, instrumented_path):
    assert exported_symbols(plugin_path) == NCCL_SYMBOLS
    assert exported_symbols(instrumented_path) == NCCL_SYMBOLS | INSTRUMENTED_SYMBOLS
    production = TunerLibrary(plugin_path)
    assert not hasattr(production.lib, "dynamiccl_tuner_override")
    with pytest.raises(AttributeError):
        InstrumentedTunerLibrary(plugin_path)


def test_exports_every_abi_version_nccl_looks_up(plugin_path, tuner):
    for library in (TunerLibrary(plugin_path), tuner):
        assert library.exported_abi_versions() == [6, 5, 4, 3, 2]
        for version in ALL_ABIS:
            plugin = library.plugin(version)
            assert plugin.name == b"dynamiccl"
            assert plugin.init and plugin.getCollInfo
        assert library.plugin(6).getChunkSize


def test_the_production_library_decides_as_the_instrumented_one(plugin_path, tuner, tmp_path, monkeypatch):
    # The production library reads its table once per process: a fresh process per check.
    path = use_table(tuner, table(rule(max_bytes=1 << 20, algorithm=A.RING, protocol=P.LL128, channels=8),
                                  rule(coll=Func.ALLGATHER, channels=3)), tmp_path, monkeypatch)
    calls = [(Func.ALLREDUCE, 1 << 20), (Func.ALLREDUCE, (1 << 20) + 1), (Func.ALLGATHER, 64)]
    with tuner.open(6, 16, 2) as comm:
        expected = [dataclasses.astuple(comm.coll_info(coll, nbytes, H100)) for coll, nbytes in calls]
    program = textwrap.dedent(f"""
        import dataclasses, json, sys
        from dynamiccl.plugin.binding import TunerLibrary
        with TunerLibrary({str(plugin_path)!r}).open(6, 16, 2) as comm:
            print(json.dumps([dataclasses.astuple(comm.coll_info(coll, nbytes, {H100!r}))
                              for coll, nbytes in {[(int(c), n) for c, n in calls]!r}]))
    """)
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120,
                          env={**os.environ, TABLE_ENV: str(path)})
    assert done.returncode == 0, done.stderr
    assert [tuple(row) for row in json.loads(done.stdout)] == expected


# --- one vocabulary: the C side's numbers and names against dynamiccl.nccl --------------------------

def c_text(*names: str) -> str:
    return "\n".join((SOURCE_DIR / name).read_text() for name in names)


C_FILES = tuple(sorted(path.name for path in SOURCE_DIR.glob("*.[ch]") if path.name != "bench_getcollinfo.c"))


def c_defines() -> dict[str, str]:
    """Every ``#define DCCL_*`` of the plugin's C files and headers (each must be defined once)."""
    found = re.findall(r"^#define (DCCL_[A-Z0-9_]+) (.+?)(?:\s*/\*.*)?$", c_text(*C_FILES), re.MULTILINE)
    names = [name for name, _ in found]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    return dict(found)


def test_header_enums_match_the_python_vocabulary():
    header = (SOURCE_DIR / "tuner_abi.h").read_text()
    defines = dict(re.findall(r"#define DCCL_((?:ALGO|PROTO)_[A-Z_0-9]+) \(?(-?\d+)\)?", header))
    for algo in A:
        assert int(defines[f"ALGO_{algo.name}"]) == algo.value
    for proto in P:
        assert int(defines[f"PROTO_{proto.name}"]) == proto.value
    funcs = dict(re.findall(r"DCCL_FUNC_([A-Z]+) = (\d+)", header))
    for name, value in funcs.items():
        assert Func[name].value == int(value)
    assert "DCCL_NUM_ALGORITHMS 7" in header and "DCCL_NUM_PROTOCOLS 3" in header
    assert {Func[name] for name in funcs} >= set(TUNABLE_FUNCS)
    constants = c_defines()
    assert int(constants["DCCL_NUM_ALGORITHMS"]) == NUM_ALGORITHMS and int(constants["DCCL_NUM_PROTOCOLS"]) == NUM_PROTOCOLS
    assert int(constants["DCCL_NUM_TUNABLE_FUNCS"]) == len(TUNABLE_FUNCS)
    assert int(constants["DCCL_MAX_CHANNELS"]) == MAX_CHANNELS
    assert float(constants["DCCL_ALGO_PROTO_IGNORE"].strip("()f")) == ALGO_PROTO_IGNORE
    levels = dict(re.findall(r"DCCL_LOG_([A-Z]+) = (\d+)", header))
    assert (int(levels["WARN"]), int(levels["INFO"])) == (LOG_WARN, LOG_INFO)
    assert int(constants["DCCL_LOG_FLAG_TUNING"].rstrip("UL"), 16) == LOG_FLAG_TUNING


def test_c_names_and_limits_match_the_python_side():
    header = (SOURCE_DIR / "tuner_abi.h").read_text()
    numbers = {f"DCCL_{kind}_{name}": int(value)
               for kind, name, value in re.findall(r"DCCL_(ALGO|PROTO)_([A-Z_0-9]+) \(?(-?\d+)\)?", header)}
    numbers.update({f"DCCL_FUNC_{name}": int(value) for name, value in re.findall(r"DCCL_FUNC_([A-Z]+) = (\d+)", header)})
    table_c = c_text("table.c")

    def names(array: str) -> list[str]:
        body = re.search(rf"{array}\[[A-Z_]+\] = {{(.*?)}};", table_c, re.DOTALL).group(1)
        pairs = {numbers[key]: name for key, name in re.findall(r"\[(DCCL_[A-Z_0-9]+)\] = \"([a-z_0-9]+)\"", body)}
        return [pairs[i] for i in range(len(pairs))]

    assert names("dccl_coll_names") == [FUNC_OP[f] for f in TUNABLE_FUNCS]
    assert names("dccl_algo_names") == [a.name_lower for a in A]
    assert names("dccl_proto_names") == [p.name_lower for p in P]
    constants = c_defines()
    assert int(constants["DCCL_MAX_LINE_BYTES"]) == plugin_text.MAX_LINE_BYTES
    assert int(constants["DCCL_MAX_RULES"]) == plugin_text.MAX_RULES
    assert int(constants["DCCL_MAX_STEPS"]) == plugin_text.MAX_STEPS
    assert f'{constants["DCCL_TABLE_MAGIC"]} {constants["DCCL_TABLE_VERSION"]}'.replace('"', "") == plugin_text.HEADER
    assert int(constants["DCCL_ERR_BYTES"]) == binding._ERR_BYTES
    assert constants["DCCL_TABLE_ENV"] == f'"{TABLE_ENV}"'
    assert constants["DCCL_NO_CHUNK_ENV"] == f'"{NO_CHUNK_ENV}"'
    assert int(constants["DCCL_MIN_CHUNK_BYTES"]) == 4096
    assert constants["DCCL_MAX_CHUNK_BYTES"] == "(64 << 20)" and plugin_text.MAX_CHUNK_BYTES == 64 << 20


@pytest.mark.parametrize("value", [-1, 0, 1, 2048, 4095, 4096, 4097, 65536, 1 << 20, 3 << 20, 64 << 20, 128 << 20])
def test_plugin_accepts_the_chunk_sizes_knobs_accepts(tuner, value):
    text = f"dynamiccl-tuner-table 2\nrule allreduce 0 10 -1 -1 -1 -1 -1 ring ll -1 {value}\n".encode()
    try:
        check_chunk_bytes(value)
        accepted = True
    except ValueError:
        accepted = False
    if accepted:
        assert tuner.parse(text) == (1, 0) and plugin_text.read(text).rules[0].chunk_bytes == value
    else:
        with pytest.raises(InputError, match="line 2, field chunk_bytes"):
            tuner.parse(text)
        with pytest.raises(InputError, match="line 2, field chunk_bytes"):
            plugin_text.read(text)
    sources = dict(re.findall(r"DCCL_SOURCE_([A-Z]+) = (-?\d+)", c_text("tuner.h")))
    assert {name: int(value) for name, value in sources.items()} == {s.name: s.value for s in DecisionSource}


def test_support_rule_matches_python(tuner):
    for coll in range(5):
        for algo in A:
            for proto in P:
                assert tuner.supported(coll, algo, proto) == is_supported(Func(coll), algo, proto)


# --- cost-table ABIs (v3..v6) -----------------------------------------------------------------------

@pytest.mark.parametrize("abi", COST_ABIS)
def test_rule_selects_its_cell_and_channels(tuner, tmp_path, monkeypatch, abi):
    use_table(tuner, table(rule(max_bytes=1 << 20, nranks=16, nnodes=2, algorithm=A.RING,
                                protocol=P.LL128, channels=8)), tmp_path, monkeypatch)
    with tuner.open(abi, 16, 2, comm_id=0xABC) as comm:
        assert comm.init_return_code == 0
        result = comm.coll_info(Func.ALLREDUCE, 1 << 20, H100)
        assert result.return_code == 0
        assert changed_cells(H100, result.cost_table) == {(A.RING, P.LL128): 0.0}
        assert (result.algorithm, result.protocol, result.n_channels) == (A.RING, P.LL128, 8)
        # one byte more: no rule matches, so NCCL's table and channels are untouched
        result = comm.coll_info(Func.ALLREDUCE, (1 << 20) + 1, H100)
        assert result.cost_table == H100 and result.n_channels == 0
        assert (result.algorithm, result.protocol) == nccl_argmin(H100) == (A.TREE, P.LL128)


@pytest.mark.parametrize("abi", COST_ABIS)
def test_disabled_cell_is_never_revived(tuner, tmp_path, monkeypatch, abi):
    # NVLS is -1 on this cluster; the first rule must be skipped, the second applies.
    use_table(tuner, table(rule(algorithm=A.NVLS, protocol=P.SIMPLE, channels=4),
                           rule(algorithm=A.RING, protocol=None)), tmp_path, monkeypatch)
    with tuner.open(abi, 16, 2) as comm:
        result = comm.coll_info(Func.ALLREDUCE, 4096, H100)
        assert result.cost_table[A.NVLS][P.SIMPLE] == OFF
        assert changed_cells(H100, result.cost_table) == {(A.RING, P.LL128): 0.0}  # ring's cheapest
        assert result.n_channels == 0


@pytest.mark.parametrize("abi", COST_ABIS)
def test_user_masks_are_respected(tuner, tmp_path, monkeypatch, abi):
    # NCCL_ALGO=ring and NCCL_PROTO=^LL128 turn those cells to -1 before the tuner sees the table.
    masked = costs(ring_ll=55.0, ring_simple=35.0)
    use_table(tuner, table(rule(algorithm=A.TREE, protocol=P.LL128, channels=2),
                           rule(algorithm=None, protocol=P.LL128, channels=3)), tmp_path, monkeypatch)
    with tuner.open(abi, 16, 2) as comm:
        result = comm.coll_info(Func.ALLREDUCE, 4096, masked)
        assert result.cost_table == masked and result.n_channels == 0
        assert (result.algorithm, result.protocol) == (A.RING, P.SIMPLE)


@pytest.mark.parametrize("abi", COST_ABIS)
def test_channels_only_rule_keeps_nccls_cell(tuner, tmp_path, monkeypatch, abi):
    use_table(tuner, table(rule(channels=4)), tmp_path, monkeypatch)
    with tuner.open(abi, 16, 2) as comm:
        result = comm.coll_info(Func.ALLREDUCE, 4096, H100)
        assert result.cost_table == H100
        assert result.n_channels == 4


@pytest.mark.parametrize("abi", COST_ABIS)
def test_calls_nccl_never_asks_about_are_left_alone(tuner, tmp_path, monkeypatch, abi):
    use_table(tuner, table(rule(algorithm=A.RING, protocol=P.SIMPLE, channels=2)), tmp_path, monkeypatch)
    with tuner.open(abi, 16, 2) as comm:
        for coll in (Func.SENDRECV, Func.SEND, Func.RECV, 99, -3):
            result = comm.coll_info(coll, 4096, H100)
            assert result.return_code == 0 and result.cost_table == H100 and result.n_channels == 0
    # a NULL context (init ran out of memory): success, nothing touched
    flat = (ctypes.c_float * 21)(*[c for row in H100 for c in row])
    channels = ctypes.c_int(0)
    args = (None, int(Func.ALLREDUCE), 64, 1, ctypes.cast(flat, ctypes.c_void_p), 7, 3)
    args += () if abi == 3 else (0,)
    assert tuner.plugin(abi).getCollInfo(*args, ctypes.byref(channels)) == 0
    assert list(flat) == [c for row in H100 for c in row] and channels.value == 0


def test_flat_indexing_with_fewer_algorithms(tuner, tmp_path, monkeypatch):
    # NCCL 2.22 has no PAT: numAlgo 6. The table is float[6][3]; a PAT rule cannot apply.
    six = [row[:] for row in H100[:6]]
    use_table(tuner, table(rule(coll=Func.ALLREDUCE, algorithm=A.RING, protocol=P.SIMPLE)), tmp_path, monkeypatch)
    with tuner.open(3, 16, 2) as comm:
        result = comm.coll_info(Func.ALLREDUCE, 4096, six, num_algo=6)
        assert changed_cells(six, result.cost_table) == {(A.RING, P.SIMPLE): 0.0}
    use_table(tuner, table(rule(coll=Func.ALLGATHER, algorithm=A.PAT, protocol=P.SIMPLE)), tmp_path, monkeypatch)
    ag = [row[:] for row in costs(ring_ll=5.0, ring_simple=9.0)[:6]]
    with tuner.open(3, 16, 2) as comm:
        result = comm.coll_info(Func.ALLGATHER, 4096, ag, num_algo=6)
        assert result.cost_table == ag


def test_reg_buff_and_pipe_ops_keys(tuner, tmp_path, monkeypatch):
    use_table(tuner, table(rule(reg_buff=1, algorithm=A.RING, protocol=P.SIMPLE),
                           rule(num_pipe_ops=2, algorithm=A.TREE, protocol=P.SIMPLE)), tmp_path, monkeypatch)
    with tuner.open(4, 16, 2) as comm:
        assert comm.coll_info(Func.ALLREDUCE, 4096, H100, reg_buff=1).algorithm == A.RING
        assert (comm.coll_info(Func.ALLREDUCE, 4096, H100, num_pipe_ops=2).protocol) == P.SIMPLE
        assert comm.coll_info(Func.ALLREDUCE, 4096, H100).cost_table == H100
    with tuner.open(3, 16, 2) as comm:  # v3 has no regBuff: NCCL means 0
        assert comm.coll_info(Func.ALLREDUCE, 4096, H100).cost_table == H100


def test_chunk_size_is_left_to_nccl_without_a_rule_chunk(tuner, tmp_path, monkeypatch):
    use_table(tuner, table(rule(algorithm=A.RING, protocol=P.SIMPLE)), tmp_path, monkeypatch)
    with tuner.open(6, 16, 2) as comm:
        comm.coll_info(Func.ALLREDUCE, 1 << 20, H100)
        assert comm.chunk_size(Func.ALLREDUCE, 1 << 20, A.RING, P.SIMPLE, 8, 131072) == (0, 131072)


def test_get_chunk_size_gives_the_deciding_rules_chunk_to_its_parts_in_its_cell(tuner, tmp_path, monkeypatch):
    monkeypatch.delenv(NO_CHUNK_ENV, raising=False)
    use_table(tuner, table(rule(max_bytes=1 << 20, algorithm=A.RING, protocol=P.SIMPLE, chunk_bytes=524288),
                           rule(coll=Func.ALLGATHER, algorithm=A.RING, protocol=P.SIMPLE)), tmp_path, monkeypatch)
    before = tuner.stats()
    with tuner.open(6, 16, 2) as comm:
        # nothing decided yet on this communicator: NCCL's chunk, and a NULL pointer is left alone
        assert comm.chunk_size(Func.ALLREDUCE, 4096, A.RING, P.SIMPLE, 1, 131072) == (0, 131072)
        assert comm.chunk_size(Func.ALLREDUCE, 4096, A.RING, P.SIMPLE, 1, None) == (0, None)
        result = comm.coll_info(Func.ALLREDUCE, 1 << 20, H100)
        assert (result.algorithm, result.protocol) == (A.RING, P.SIMPLE)
        assert tuner.stats()["last"]["chunk_bytes"] == 524288
        # NCCL's scheduler asks per part of the task (one channel's bytes, nChannels 1)
        assert comm.chunk_size(Func.ALLREDUCE, 1 << 20, A.RING, P.SIMPLE, 8, 131072) == (0, 524288)
        assert comm.chunk_size(Func.ALLREDUCE, 1 << 16, A.RING, P.SIMPLE, 1, 131072) == (0, 524288)
        assert tuner.stats()["last"]["chunk_returned"] == 524288
        assert comm.chunk_size(Func.ALLREDUCE, 1 << 16, A.RING, P.SIMPLE, 1, None) == (0, None)
        # not a part of that call, another cell than the rule's, another collective: NCCL's value
        assert comm.chunk_size(Func.ALLREDUCE, (1 << 20) + 1, A.RING, P.SIMPLE, 1, 131072) == (0, 131072)
        assert comm.chunk_size(Func.ALLREDUCE, 1 << 16, A.RING, P.LL128, 1, 131072) == (0, 131072)
        assert comm.chunk_size(Func.ALLGATHER, 1 << 16, A.RING, P.SIMPLE, 1, 131072) == (0, 131072)
        assert comm.chunk_size(Func.SENDRECV, 1 << 16, A.RING, P.SIMPLE, 1, 131072) == (0, 131072)
        # a decision on another collective does not replace this one's
        comm.coll_info(Func.ALLGATHER, 1 << 16, H100)
        assert comm.chunk_size(Func.ALLREDUCE, 1 << 16, A.RING, P.SIMPLE, 1, 131072) == (0, 524288)
        # the next allreduce decided by no chunk rule: NCCL's again
        comm.coll_info(Func.ALLREDUCE, 1 << 24, H100)
        assert comm.chunk_size(Func.ALLREDUCE, 1 << 16, A.RING, P.SIMPLE, 1, 131072) == (0, 131072)
        assert tuner.stats()["last"]["chunk_returned"] == 131072
    after = tuner.stats()
    assert after["chunk_calls"] - before["chunk_calls"] == 8  # not the NULL-pointer and SendRecv calls
    assert after["chunk_set"] - before["chunk_set"] == 3
    with tuner.open(5, 16, 2) as comm:  # ABI v5 has no getChunkSize
        assert not hasattr(comm.plugin, "getChunkSize")


@pytest.mark.parametrize("value, keeps", [("1", True), ("0", False), ("11", False), ("", False)])
def test_no_chunk_switch_keeps_nccls_chunk_on_communicators_opened_with_it(tuner, tmp_path, monkeypatch, value, keeps):
    use_table(tuner, table(rule(algorithm=A.RING, protocol=P.SIMPLE, chunk_bytes=1 << 20)), tmp_path, monkeypatch)
    monkeypatch.setenv(NO_CHUNK_ENV, value)
    with tuner.open(6, 16, 2) as comm:
        monkeypatch.delenv(NO_CHUNK_ENV)  # read at init, as the launcher sets it before the job starts
        comm.coll_info(Func.ALLREDUCE, 1 << 20, H100)
        expected = 131072 if keeps else 1 << 20
        assert comm.chunk_size(Func.ALLREDUCE, 1 << 20, A.RING, P.SIMPLE, 8, 131072) == (0, expected)


# --- ABI v2 (no cost table) ---------------------------------------------------------------------------

def test_v2_applies_only_rules_it_can_check(tuner, tmp_path, monkeypatch):
    monkeypatch.delenv("NCCL_ALGO", raising=False)
    monkeypatch.delenv("NCCL_PROTO", raising=False)
    use_table(tuner, table(rule(max_bytes=99, algorithm=A.RING, protocol=P.LL128),  # LL128: unknowable
                           rule(max_bytes=99, algorithm=A.COLLNET_DIRECT, protocol=P.SIMPLE),
                           rule(max_bytes=99, algorithm=A.TREE, protocol=None),  # needs the table
                           rule(max_bytes=99, algorithm=A.RING, protocol=P.LL, channels=2),
                           rule(min_bytes=100, channels=6)), tmp_path, monkeypatch)
    with tuner.open(2, 16, 2) as comm:
        result = comm.coll_info(Func.ALLREDUCE, 64)
        assert (result.algorithm, result.protocol, result.n_channels) == (A.RING, P.LL, 2)
        result = comm.coll_info(Func.ALLREDUCE, 64, coll_net_support=1)
        assert (result.algorithm, result.protocol, result.n_channels) == (A.COLLNET_DIRECT, P.SIMPLE, 0)
        result = comm.coll_info(Func.ALLREDUCE, 4096)  # channels only: NCCL keeps algo/proto
        assert (result.algorithm, result.protocol, result.n_channels) == (-1, -1, 6)


def test_v2_with_user_masks_sets_no_algorithm(tuner, tmp_path, monkeypatch):
    monkeypatch.setenv("NCCL_ALGO", "ring")
    use_table(tuner, table(rule(algorithm=A.RING, protocol=P.SIMPLE, channels=2)), tmp_path, monkeypatch)
    with tuner.open(2, 16, 2) as comm:
        result = comm.coll_info(Func.ALLREDUCE, 64)
        assert (result.algorithm, result.protocol, result.n_channels) == (-1, -1, 0)


# --- failing open ------------------------------------------------------------------------------------

BAD_TABLES = {
    "unknown algorithm": b"dynamiccl-tuner-table 1\nrule allreduce 0 10 -1 -1 -1 -1 -1 warp simple -1\n",
    "no header": b"rule allreduce 0 10 -1 -1 -1 -1 -1 ring simple -1\n",
    "empty": b"",
    "binary": bytes(range(256)) * 4,
    "min > max": b"dynamiccl-tuner-table 1\nrule allreduce 10 0 -1 -1 -1 -1 -1 ring simple -1\n",
    "NVLS with LL": b"dynamiccl-tuner-table 1\nrule allreduce 0 10 -1 -1 -1 -1 -1 nvls ll -1\n",
    "byte overflow": b"dynamiccl-tuner-table 1\nrule allreduce 0 18446744073709551616 -1 -1 -1 -1 -1 ring ll -1\n",
    "long line": b"dynamiccl-tuner-table 1\n# " + b"x" * 600 + b"\n",
}


@pytest.mark.parametrize("abi", ALL_ABIS)
@pytest.mark.parametrize("case", sorted(BAD_TABLES))
def test_bad_table_warns_once_and_leaves_nccl_in_charge(tuner, tmp_path, monkeypatch, abi, case):
    path = use_table(tuner, None, tmp_path, monkeypatch, text=BAD_TABLES[case])
    comms = [tuner.open(abi, 16, 2, comm_id=i) for i in range(3)]
    for comm in comms:
        assert comm.init_return_code == 0
        result = comm.coll_info(Func.ALLREDUCE, 64, None if abi == 2 else H100)
        assert result.return_code == 0 and result.n_channels == 0
        assert result.cost_table in (None, H100)
        assert comm.close() == 0
    warnings = [log for log in tuner.logs if log.level == LOG_WARN]
    assert len(warnings) == 1, warnings
    assert warnings[0].flags == LOG_FLAG_TUNING
    assert str(path) in warnings[0].message and "NCCL chooses every collective" in warnings[0].message


def test_missing_file_and_unset_variable_warn_once(tuner, tmp_path, monkeypatch):
    tuner.reset()
    monkeypatch.setenv("DYNAMICCL_TUNER_TABLE", str(tmp_path / "nope.txt"))
    with tuner.open(5, 8, 1) as comm:
        assert comm.coll_info(Func.ALLREDUCE, 64, H100).cost_table == H100
    assert [log.message for log in tuner.logs if log.level == LOG_WARN] == [
        f"dynamiccl tuner: ignoring decision table {tmp_path / 'nope.txt'}: cannot open: No such file "
        "or directory; NCCL chooses every collective"]
    use_table(tuner, None, tmp_path, monkeypatch)
    with tuner.open(5, 8, 1) as comm:
        assert comm.coll_info(Func.ALLREDUCE, 64, H100).cost_table == H100
    warnings = [log.message for log in tuner.logs if log.level == LOG_WARN]
    assert len(warnings) == 1 and "DYNAMICCL_TUNER_TABLE is not set" in warnings[0]


def test_loaded_table_is_reported_at_info(tuner, tmp_path, monkeypatch):
    use_table(tuner, table(rule(channels=2), steps=[StepShape(16, 2, 4, Func.ALLREDUCE, 64)]), tmp_path, monkeypatch)
    with tuner.open(6, 16, 2, comm_id=0x1234):
        pass
    infos = [log.message for log in tuner.logs if log.level == LOG_INFO]
    assert any("loaded 1 rules and 1 step lines" in m for m in infos)
    assert any("communicator 1234 with 16 ranks on 2 nodes (tuner ABI v6); position rules active" in m
               for m in infos)


def test_reset_is_refused_while_communicators_are_open(tuner, tmp_path, monkeypatch):
    use_table(tuner, table(rule(channels=2)), tmp_path, monkeypatch)
    comm = tuner.open(5, 8, 1)
    with pytest.raises(RuntimeError, match="still open"):
        tuner.reset()
    comm.close()
    tuner.reset()


# --- positions, per communicator ---------------------------------------------------------------------

def test_positions_are_counted_per_communicator(tuner, tmp_path, monkeypatch):
    steps = [StepShape(8, 1, 3, Func.ALLREDUCE, 1000)]
    use_table(tuner, table(rule(position=1, algorithm=A.RING, protocol=P.SIMPLE, channels=5), steps=steps),
              tmp_path, monkeypatch)
    a, b = tuner.open(5, 8, 1, comm_id=1), tuner.open(5, 8, 1, comm_id=2)
    warmup = a.coll_info(Func.BROADCAST, 77, H100)  # before the first anchor: position unknown
    assert warmup.n_channels == 0 and tuner.stats()["last"]["position"] == -1
    for step in range(3):
        for comm in (a, b):  # interleaved: each communicator keeps its own count
            sizes = [1000, 2000, 3000]
            results = [comm.coll_info(Func.ALLREDUCE, size, H100) for size in sizes]
            assert [r.n_channels for r in results] == [0, 5, 0], (step, comm.context)
    # a step that goes wrong: the call after a full step is not the anchor -> unknown until one is
    assert a.coll_info(Func.ALLREDUCE, 5, H100).n_channels == 0
    assert tuner.stats()["last"]["position"] == -1
    assert a.coll_info(Func.ALLREDUCE, 2000, H100).n_channels == 0
    assert [a.coll_info(Func.ALLREDUCE, s, H100).n_channels for s in (1000, 2000)] == [0, 5]
    a.close()
    b.close()


def test_communicators_of_one_shape_are_told_apart_by_their_anchors(tuner, tmp_path, monkeypatch):
    # A DP group (steps start with a 4 MiB bucket, 2 calls) and a world group (a 4-byte loss
    # AllReduce, 1 call) both have 8 ranks on 1 node.
    steps = [StepShape(8, 1, 2, Func.ALLREDUCE, 4 << 20), StepShape(8, 1, 1, Func.ALLREDUCE, 4)]
    use_table(tuner, table(rule(position=1, channels=6), rule(position=0, channels=2), steps=steps),
              tmp_path, monkeypatch)
    with tuner.open(5, 8, 1, comm_id=1) as dp, tuner.open(5, 8, 1, comm_id=2) as world:
        for _ in range(2):
            assert [dp.coll_info(Func.ALLREDUCE, s, H100).n_channels for s in (4 << 20, 1 << 20)] == [2, 6]
            assert world.coll_info(Func.ALLREDUCE, 4, H100).n_channels == 2


def test_a_shape_without_step_line_has_unknown_positions(tuner, tmp_path, monkeypatch):
    use_table(tuner, table(rule(position=0, channels=5), rule(channels=1),
                           steps=[StepShape(8, 1, 3, Func.ALLREDUCE, 1000)]), tmp_path, monkeypatch)
    with tuner.open(5, 16, 2) as comm:
        assert [comm.coll_info(Func.ALLREDUCE, 1000, H100).n_channels for _ in range(4)] == [1, 1, 1, 1]


# --- the live-measurement override -------------------------------------------------------------------

@pytest.mark.parametrize("abi", COST_ABIS)
def test_override_forces_the_next_calls(tuner, tmp_path, monkeypatch, abi):
    use_table(tuner, table(rule(algorithm=A.TREE, protocol=P.SIMPLE)), tmp_path, monkeypatch)
    with tuner.open(abi, 16, 2) as comm:
        tuner.override(algorithm=A.RING, protocol=P.LL, channels=3, count=2)
        for _ in range(2):
            result = comm.coll_info(Func.ALLREDUCE, 64, H100)
            assert (result.algorithm, result.protocol, result.n_channels) == (A.RING, P.LL, 3)
        assert comm.coll_info(Func.ALLREDUCE, 64, H100).algorithm == A.TREE  # back to the table
        tuner.override(algorithm=A.NVLS, protocol=P.SIMPLE, count=-1)  # disabled here: refused
        result = comm.coll_info(Func.ALLREDUCE, 64, H100)
        assert result.cost_table == H100 and result.n_channels == 0
        assert comm.coll_info(Func.ALLREDUCE, 64, H100).cost_table == H100  # until cleared
        tuner.clear_override()
        assert comm.coll_info(Func.ALLREDUCE, 64, H100).algorithm == A.TREE
    stats = tuner.stats()
    assert (stats["calls"], stats["ruled"], stats["overridden"], stats["refused"]) == (6, 2, 2, 2)


def test_override_sets_the_chunk_of_the_forced_cell(tuner, tmp_path, monkeypatch):
    use_table(tuner, table(rule(algorithm=A.TREE, protocol=P.SIMPLE, chunk_bytes=65536)), tmp_path, monkeypatch)
    with tuner.open(6, 16, 2) as comm:
        tuner.override(algorithm=A.RING, protocol=P.SIMPLE, chunk_bytes=262144, count=1)
        comm.coll_info(Func.ALLREDUCE, 1 << 20, H100)
        assert comm.chunk_size(Func.ALLREDUCE, 1 << 18, A.RING, P.SIMPLE, 1, 131072) == (0, 262144)
        assert tuner.stats()["last"]["source"] == "override"
        comm.coll_info(Func.ALLREDUCE, 1 << 20, H100)  # the table again: its rule's chunk
        assert comm.chunk_size(Func.ALLREDUCE, 1 << 18, A.TREE, P.SIMPLE, 1, 131072) == (0, 65536)
        tuner.override(algorithm=A.RING, protocol=P.SIMPLE, count=1)  # no chunk: NCCL's
        comm.coll_info(Func.ALLREDUCE, 1 << 20, H100)
        assert comm.chunk_size(Func.ALLREDUCE, 1 << 18, A.RING, P.SIMPLE, 1, 131072) == (0, 131072)


def test_override_works_without_a_table(tuner, tmp_path, monkeypatch):
    use_table(tuner, None, tmp_path, monkeypatch)
    with tuner.open(4, 16, 2) as comm:
        tuner.override(channels=7, count=1)
        result = comm.coll_info(Func.ALLGATHER, 64, costs(ring_ll=3.0, ring_simple=9.0))
        assert result.n_channels == 7 and (result.algorithm, result.protocol) == (A.RING, P.LL)


@pytest.mark.parametrize("args", [dict(algorithm=7), dict(protocol=3), dict(channels=0),
                                  dict(channels=65), dict(count=-2), dict(algorithm=-2), dict(chunk_bytes=0),
                                  dict(chunk_bytes=1000), dict(chunk_bytes=2048), dict(chunk_bytes=128 << 20)])
def test_override_rejects_out_of_range(tuner, args):
    with pytest.raises(ValueError, match="out of range"):
        tuner.override(**args)
