"""Tests of Trace.write / Trace.read: Parquet round trip, metadata, validation on write and on read,
and atomic writes.

Invalid rows are produced two ways: by editing the in-memory ops frame before ``write`` (must be
refused on write) and by tampering with a valid file's Parquet table directly with pyarrow while
keeping its dynamiccl metadata (must be refused on read).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dynamiccl.errors import InputError
from dynamiccl.trace import SCHEMA_VERSION, Trace, TraceBuilder
from dynamiccl.trace.schema import COLUMN_NAMES, METADATA_KEY

WORKLOAD = {"model": "llama3-8b", "tp": 1, "pp": 2, "dp": 2, "microbatches": [0, 1]}
COMPUTE = {"gpu": "H100-SXM", "peak_bf16_tflops": 989.4, "efficiency": 0.5}

# Row layout of build_trace() for each of ranks 0 and 1 (peer = the other one):
#   0 compute fwd        1 allreduce dpA (measured)   2 allgather dpA
#   3 send -> peer (pp0) 4 recv <- peer (pp0)          5 compute bwd (deps 1, 4)
#   6 broadcast dpA from root rank 0
# ops 3 and 4 are issued inside one ncclGroupStart/End.


def build_trace(*, represents: dict[int, list[int]] | None = None) -> Trace:
    """A small valid two-rank trace; rank r stands for ranks {r, r + 2} unless told otherwise."""
    b = TraceBuilder(source="generator", world_size=4, gpus_per_node=4, description="store test")
    dp_a = b.add_group("dpA", "dp", [0, 1], desc="data parallel A")
    b.add_group("dpB", "dp", [2, 3], desc="data parallel B")
    pp = b.add_group("pp0", "pp", [0, 1])
    represents = represents or {0: [0, 2], 1: [1, 3]}
    for rank, peer in ((0, 1), (1, 0)):
        r = b.rank(rank, represents=represents[rank], role=f"stage{rank}")
        fwd = r.compute("fwd", phase="forward", flops=2e9, duration_us=10.0, microbatch=0, layer=3)
        ar = r.collective("allreduce", dp_a, 1 << 20, "bf16", phase="step", label="grads", deps=[fwd],
                          start_us=100.0, end_us=200.0, nccl_algo="ring", nccl_proto="simple",
                          nccl_channels=8)
        r.collective("allgather", dp_a, 4096, "fp32", phase="forward", label="params")
        with r.nccl_group():
            r.send(peer, pp, 2048, "bf16", phase="forward", label="act")
            recv = r.recv(peer, pp, 2048, "bf16", phase="backward", label="grad")
        r.compute("bwd", phase="backward", duration_us=5.0, deps=[ar, recv])
        r.collective("broadcast", dp_a, 64, "int8", phase="setup", label="seed", root=0)
    return b.build(workload=WORKLOAD, compute=COMPUTE)


def row_position(ranks, op_indices, rank: int, op_index: int) -> int:
    found = [i for i, (r, k) in enumerate(zip(ranks, op_indices)) if r == rank and k == op_index]
    assert len(found) == 1, (rank, op_index)
    return found[0]


def with_cell(trace: Trace, rank: int, op_index: int, column: str, value) -> Trace:
    """A copy of ``trace`` with one cell of its ops frame replaced."""
    ops = trace.ops.copy()
    i = row_position(ops["rank"].tolist(), ops["op_index"].tolist(), rank, op_index)
    values = ops[column].tolist()
    values[i] = value
    ops[column] = pd.Series(values, index=ops.index, dtype=object if column == "deps" else None)
    return Trace(ops=ops, meta=trace.meta)


def tamper_cell(path: Path, rank: int, op_index: int, column: str, value) -> None:
    """Replace one cell of a trace file's column with pyarrow, keeping the schema and its metadata."""
    table = pq.read_table(path)
    meta = table.schema.metadata
    i = row_position(table.column("rank").to_pylist(), table.column("op_index").to_pylist(), rank, op_index)
    values = table.column(column).to_pylist()
    values[i] = value
    field = table.schema.field(column)
    table = table.set_column(table.schema.get_field_index(column), field, pa.array(values, type=field.type))
    assert table.schema.metadata == meta
    pq.write_table(table, path)


def rewrite_table(path: Path, change) -> None:
    """Rewrite a trace file as ``change(table)``."""
    pq.write_table(change(pq.read_table(path)), path)


def rewrite_meta(path: Path, edit) -> None:
    """Edit the dynamiccl JSON metadata of a trace file in place (``edit`` mutates the dict)."""
    table = pq.read_table(path)
    obj = json.loads(table.schema.metadata[METADATA_KEY])
    edit(obj)
    pq.write_table(table.replace_schema_metadata({METADATA_KEY: json.dumps(obj)}), path)


def read_error(path: Path) -> str:
    with pytest.raises(InputError) as info:
        Trace.read(path)
    message = str(info.value)
    assert str(path) in message
    return message


@pytest.fixture
def trace_file(tmp_path) -> Path:
    path = tmp_path / "trace.parquet"
    build_trace().write(path)
    return path


# --- round trip ----------------------------------------------------------------------------------

def test_builder_trace_is_valid():
    build_trace().validate()


def test_round_trip_ops(tmp_path):
    trace = build_trace()
    path = tmp_path / "trace.parquet"
    trace.write(path)
    back = Trace.read(path)

    assert list(back.ops.columns) == list(COLUMN_NAMES)
    assert len(back.ops) == 14
    pd.testing.assert_frame_equal(back.ops.drop(columns="deps"), trace.ops.drop(columns="deps"),
                                  check_dtype=False)
    assert [[int(d) for d in deps] for deps in back.ops["deps"]] == [list(d) for d in trace.ops["deps"]]
    # Spot checks of what the builder filled and the file kept.
    r0 = back.rank_ops(0).set_index("op_index")
    assert r0.loc[3, "nccl_group"] == r0.loc[4, "nccl_group"] != -1
    assert r0.loc[1, "nccl_group"] == -1
    assert list(r0.loc[5, "deps"]) == [1, 4]
    assert r0.loc[1, "nccl_algo"] == "ring" and r0.loc[1, "nccl_channels"] == 8
    assert r0.loc[1, "end_us"] == 200.0
    assert np.isnan(r0.loc[2, "start_us"])
    assert r0.loc[2, "bytes_per_rank"] == 2048 and r0.loc[2, "bytes_total"] == 4096
    assert r0.loc[0, "flops"] == 2e9 and r0.loc[0, "layer"] == 3
    assert r0.loc[6, "peer"] == 0 and r0.loc[6, "group_seq"] == 2 and r0.loc[6, "dtype"] == "int8"
    assert r0.loc[4, "group_seq"] == 1  # p2p ops count separately from collectives on their group


def test_round_trip_column_types(trace_file):
    ops = Trace.read(trace_file).ops
    assert ops["rank"].dtype == np.int32
    assert ops["op_index"].dtype == np.int32
    assert ops["bytes_total"].dtype == np.int64
    assert ops["duration_us"].dtype == np.float64
    assert pq.read_schema(trace_file).field("bytes_total").type == pa.int64()
    assert pq.read_schema(trace_file).field("deps").type == pa.list_(pa.int32())


def test_round_trip_metadata(tmp_path):
    trace = build_trace()
    path = tmp_path / "trace.parquet"
    trace.write(path)
    meta = Trace.read(path).meta
    assert meta.groups == trace.meta.groups
    assert meta.groups["dpA"].ranks == (0, 1) and meta.groups["dpA"].desc == "data parallel A"
    assert meta.roles == trace.meta.roles
    assert meta.workload == WORKLOAD
    assert meta.compute == COMPUTE
    assert meta.world_size == 4 and meta.gpus_per_node == 4
    assert meta.source == "generator" and meta.description == "store test"
    assert meta.schema_version == SCHEMA_VERSION
    assert meta.created_by.startswith("dynamiccl ")


def test_file_is_self_describing_parquet(trace_file):
    table = pq.read_table(trace_file)
    obj = json.loads(table.schema.metadata[METADATA_KEY])
    assert obj["schema_version"] == SCHEMA_VERSION
    assert obj["world_size"] == 4
    assert obj["representative"] is True
    assert table.num_rows == 14


def test_round_trip_is_stable(tmp_path):
    first, second = tmp_path / "a.parquet", tmp_path / "b.parquet"
    build_trace().write(first)
    once = Trace.read(first)
    once.write(second)
    twice = Trace.read(second)
    pd.testing.assert_frame_equal(twice.ops.drop(columns="deps"), once.ops.drop(columns="deps"))
    assert twice.meta == once.meta


@pytest.mark.parametrize("represents, expected", [
    ({0: [0, 2], 1: [1, 3]}, {0: ((0, 0), (2, 2)), 1: ((1, 1), (3, 3))}),
    ({0: [0], 1: [1, 2, 3]}, {0: ((0, 0),), 1: ((1, 3),)}),
    ({0: [0, 2, 3], 1: [1]}, {0: ((0, 0), (2, 3)), 1: ((1, 1),)}),
])
def test_representative_roles_survive(tmp_path, represents, expected):
    path = tmp_path / "trace.parquet"
    build_trace(represents=represents).write(path)
    meta = Trace.read(path).meta
    assert {r: role.represents for r, role in meta.roles.items()} == expected
    assert meta.roles[0].role == "stage0"
    assert sum(role.count for role in meta.roles.values()) == 4
    assert meta.representative is True


def test_unsorted_rows_are_written_in_canonical_order(tmp_path):
    trace = build_trace()
    shuffled = Trace(ops=trace.ops.iloc[::-1].reset_index(drop=True), meta=trace.meta)
    path = tmp_path / "trace.parquet"
    shuffled.write(path)
    back = Trace.read(path).ops
    assert back["rank"].tolist() == [0] * 7 + [1] * 7
    assert back["op_index"].tolist() == list(range(7)) * 2


def test_write_creates_missing_directories(tmp_path):
    path = tmp_path / "a" / "b" / "trace.parquet"
    build_trace().write(path)
    assert Trace.read(path).ranks == [0, 1]


# --- unreadable files ----------------------------------------------------------------------------

def test_read_missing_file(tmp_path):
    message = read_error(tmp_path / "absent.parquet")
    assert "no such trace file" in message


def test_read_directory(tmp_path):
    read_error(tmp_path)


def test_read_random_bytes(tmp_path):
    path = tmp_path / "garbage.parquet"
    path.write_bytes(bytes((i * 37 + 11) % 256 for i in range(8192)))
    assert "Parquet" in read_error(path)


def test_read_parquet_without_dynamiccl_metadata(tmp_path):
    path = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"rank": pa.array([0], pa.int32()), "op": ["allreduce"]}), path)
    message = read_error(path)
    assert "dynamiccl.trace" in message and "not a dynamiccl trace" in message


def test_read_trace_table_with_metadata_stripped(trace_file):
    rewrite_table(trace_file, lambda t: t.replace_schema_metadata(None))
    assert "dynamiccl.trace" in read_error(trace_file)


def test_read_metadata_not_json(trace_file):
    rewrite_table(trace_file, lambda t: t.replace_schema_metadata({METADATA_KEY: b"{not json"}))
    message = read_error(trace_file)
    assert "dynamiccl.trace" in message and "JSON" in message


@pytest.mark.parametrize("column", ["bytes_total", "op_index", "deps", "nccl_algo"])
def test_read_column_dropped(trace_file, column):
    def drop(table):
        out = table.drop_columns([column])
        assert out.schema.metadata == table.schema.metadata
        return out

    rewrite_table(trace_file, drop)
    message = read_error(trace_file)
    assert f"column '{column}'" in message and "missing" in message


@pytest.mark.parametrize("column, array_of", [
    ("bytes_total", lambda values: pa.array([str(v) for v in values], pa.string())),
    ("rank", lambda values: pa.array([float(v) for v in values], pa.float64())),
    ("kind", lambda values: pa.array(range(len(values)), pa.int64())),
    ("deps", lambda values: pa.array([[str(d) for d in v] for v in values], pa.list_(pa.string()))),
])
def test_read_column_of_wrong_type(trace_file, column, array_of):
    def retype(table):
        arr = array_of(table.column(column).to_pylist())
        return table.set_column(table.schema.get_field_index(column), pa.field(column, arr.type), arr)

    rewrite_table(trace_file, retype)
    message = read_error(trace_file)
    assert f"column '{column}'" in message and "expected type" in message


def test_read_file_without_the_optional_bytes_moved_column(trace_file):
    """Files written before ``bytes_moved`` existed read it as unknown (NaN) on every row."""
    rewrite_table(trace_file, lambda table: table.drop_columns(["bytes_moved"]))
    ops = Trace.read(trace_file).ops
    assert list(ops.columns) == list(COLUMN_NAMES) and ops["bytes_moved"].isna().all()


def test_read_accepts_other_integer_widths(trace_file):
    # "any int width for int columns": a file written by another tool with int64 ranks is fine.
    def widen(table):
        arr = table.column("rank").cast(pa.int64())
        return table.set_column(table.schema.get_field_index("rank"), pa.field("rank", pa.int64()), arr)

    rewrite_table(trace_file, widen)
    assert Trace.read(trace_file).ranks == [0, 1]


# --- invalid rows: refused on write and on read --------------------------------------------------

# (id, rank, op_index, column to change, new value, column named in the error, op_index named, problem)
ROW_CASES = [
    ("negative-bytes_total", 1, 1, "bytes_total", -8, "bytes_total", 1, ">= 0"),
    ("dep-forward", 1, 0, "deps", [3], "deps", 0, "earlier"),
    ("dep-self", 1, 1, "deps", [1], "deps", 1, "earlier"),
    ("dep-negative", 1, 2, "deps", [-1], "deps", 2, "earlier"),
    ("unknown-kind", 1, 0, "kind", "kernel", "kind", 0, "compute, coll, p2p"),
    ("unknown-phase", 1, 0, "phase", "warmup", "phase", 0, "expected one of"),
    ("unknown-group", 1, 1, "group_id", "ghost", "group_id", 1, "not described"),
    ("rank-not-in-group", 1, 1, "group_id", "dpB", "rank", 1, "not a member"),
    ("p2p-peer-is-self", 1, 3, "peer", 1, "peer", 3, "other than itself"),
    ("p2p-peer-outside-group", 1, 4, "peer", 3, "peer", 4, "peer"),
    ("wrong-group_seq", 1, 2, "group_seq", 5, "group_seq", 2, "position"),
    ("allgather-bytes", 1, 2, "bytes_total", 4000, "bytes_per_rank", 2, "group_size"),
    ("unknown-dtype", 1, 1, "dtype", "int16", "dtype", 1, "bf16"),
    ("end-before-start", 1, 1, "end_us", 50.0, "end_us", 1, "before start_us"),
    ("end-without-start", 1, 2, "end_us", 50.0, "end_us", 2, "together"),
    ("unknown-algo", 1, 1, "nccl_algo", "foo", "nccl_algo", 1, "collnet_direct"),
    ("unknown-proto", 1, 1, "nccl_proto", "ll256", "nccl_proto", 1, "ll128"),
    ("channels-65", 1, 1, "nccl_channels", 65, "nccl_channels", 1, "1..64"),
    ("channels-0", 1, 1, "nccl_channels", 0, "nccl_channels", 1, "1..64"),
    ("op_index-gap", 1, 6, "op_index", 9, "op_index", 9, "without gaps"),
    ("op_index-repeat", 1, 6, "op_index", 5, "op_index", 5, "without gaps"),
    ("wrong-group_kind", 1, 1, "group_kind", "tp", "group_kind", 1, "kind of the group"),
    ("wrong-group_size", 1, 1, "group_size", 3, "group_size", 1, "number of ranks"),
    ("wrong-group_nnodes", 1, 1, "group_nnodes", 2, "group_nnodes", 1, "node count"),
    ("allreduce-with-peer", 1, 1, "peer", 0, "peer", 1, "other collectives -1"),
    ("broadcast-root-outside-group", 1, 6, "peer", 3, "peer", 6, "root"),
    ("broadcast-without-root", 1, 6, "peer", -1, "peer", 6, "root"),
    ("compute-with-group", 1, 0, "group_id", "dpA", "group_id", 0, "empty group_id"),
    ("comm-on-compute-stream", 1, 1, "stream", "compute", "stream", 1, "compute stream"),
    ("compute-without-time", 1, 5, "duration_us", float("nan"), "duration_us", 5, "duration_us or flops"),
    ("negative-duration", 1, 0, "duration_us", -1.0, "duration_us", 0, ">= 0"),
    ("negative-flops", 1, 0, "flops", -1.0, "flops", 0, ">= 0"),
    ("negative-bytes_moved", 1, 0, "bytes_moved", -1.0, "bytes_moved", 0, ">= 0"),
    ("comm-with-bytes_moved", 1, 1, "bytes_moved", 8.0, "bytes_moved", 1, "only compute rows"),
]


def _row_params():
    return [pytest.param(*case[1:], id=case[0]) for case in ROW_CASES]


def check_row_error(message: str, path: Path, column: str, rank: int, op_index: int, problem: str):
    assert str(path) in message
    assert f"column '{column}'" in message
    assert f"rank {rank}, step 0, op_index {op_index}" in message
    assert problem in message


@pytest.mark.parametrize("rank, op_index, column, value, err_column, err_index, problem", _row_params())
def test_invalid_row_refused_on_write(tmp_path, rank, op_index, column, value, err_column, err_index,
                                      problem):
    bad = with_cell(build_trace(), rank, op_index, column, value)
    path = tmp_path / "out" / "bad.parquet"
    with pytest.raises(InputError) as info:
        bad.write(path)
    check_row_error(str(info.value), path, err_column, rank, err_index, problem)
    assert not path.exists()
    assert not path.parent.exists() or list(path.parent.iterdir()) == []


@pytest.mark.parametrize("rank, op_index, column, value, err_column, err_index, problem", _row_params())
def test_invalid_row_refused_on_read(trace_file, rank, op_index, column, value, err_column, err_index,
                                     problem):
    tamper_cell(trace_file, rank, op_index, column, value)
    check_row_error(read_error(trace_file), trace_file, err_column, rank, err_index, problem)


@pytest.mark.parametrize("rank, op_index, column, value, err_column, err_index, problem", _row_params())
def test_validate_names_the_row(rank, op_index, column, value, err_column, err_index, problem):
    bad = with_cell(build_trace(), rank, op_index, column, value)
    with pytest.raises(InputError) as info:
        bad.validate("mem")
    assert str(info.value).startswith("mem: ")
    assert f"column '{err_column}'" in str(info.value)


def test_write_refuses_wrongly_typed_column(tmp_path):
    bad = with_cell(build_trace(), 0, 1, "bytes_total", "lots")
    path = tmp_path / "bad.parquet"
    with pytest.raises(InputError, match="column 'bytes_total'") as info:
        bad.write(path)
    assert str(path) in str(info.value)
    assert not path.exists()


def test_write_refuses_missing_column(tmp_path):
    trace = build_trace()
    bad = Trace(ops=trace.ops.drop(columns="group_seq"), meta=trace.meta)
    with pytest.raises(InputError, match="column 'group_seq'"):
        bad.write(tmp_path / "bad.parquet")


def test_write_refuses_empty_trace(tmp_path):
    trace = build_trace()
    with pytest.raises(InputError, match="no operations"):
        Trace(ops=trace.ops.iloc[:0], meta=trace.meta).write(tmp_path / "empty.parquet")
    assert list(tmp_path.iterdir()) == []


def test_write_refuses_rank_without_role(tmp_path):
    trace = build_trace()
    meta = trace.meta
    roles = {r: role for r, role in meta.roles.items() if r != 1}
    bad = Trace(ops=trace.ops, meta=dataclasses.replace(meta, roles=roles))
    with pytest.raises(InputError) as info:
        bad.write(tmp_path / "bad.parquet")
    assert "column 'rank'" in str(info.value) and "roles" in str(info.value)


# --- metadata checks on read ---------------------------------------------------------------------

def test_newer_schema_version_is_rejected_with_upgrade_hint(trace_file):
    rewrite_meta(trace_file, lambda m: m.update(schema_version=SCHEMA_VERSION + 1))
    message = read_error(trace_file)
    assert "schema_version" in message and "upgrade" in message


def _set_group_ranks(meta):
    meta["groups"][0]["ranks"] = [0, 7]


def _overlap_roles(meta):
    meta["roles"][1]["represents"] = [[1, 3]]  # rank 2 is already represented by rank 0


def _role_outside_its_ranges(meta):
    meta["roles"][0]["represents"] = [[2, 2]]


@pytest.mark.parametrize("edit, key, problem", [
    (_set_group_ranks, "groups[0].ranks", "0..3"),
    (lambda m: m["groups"][0].update(ranks=[0, 0]), "groups[0].ranks", "distinct"),
    (lambda m: m["groups"][0].update(kind="zz"), "groups[0].kind", "unknown group kind"),
    (lambda m: m["groups"][0].update(nnodes=5), "groups[0].nnodes", "1..2"),
    (lambda m: m["groups"][1].update(group_id="dpA"), "groups[1].group_id", "duplicate"),
    (_overlap_roles, "'roles'", "ranks 2..2 are represented by both"),
    (_role_outside_its_ranges, "roles[0].represents", "include rank 0"),
    (lambda m: m.pop("world_size"), "world_size", "missing"),
    (lambda m: m.update(gpus_per_node="8"), "gpus_per_node", "integer"),
    (lambda m: m.update(schema_version=0), "schema_version", "not supported"),
])
def test_bad_metadata_rejected_on_read(trace_file, edit, key, problem):
    rewrite_meta(trace_file, edit)
    message = read_error(trace_file)
    assert key in message and problem in message


@pytest.mark.parametrize("case", ["overlapping-roles", "group-rank-out-of-range"])
def test_bad_metadata_refused_on_write(tmp_path, case):
    b = TraceBuilder(source="generator", world_size=4, gpus_per_node=4)
    g = b.add_group("dp", "dp", [0, 1] if case == "overlapping-roles" else [0, 9])
    r0 = b.rank(0, represents=[0, 1] if case == "overlapping-roles" else None)
    r0.collective("allreduce", g, 1024, "bf16", phase="step")
    if case == "overlapping-roles":
        b.rank(1).collective("allreduce", g, 1024, "bf16", phase="step")  # rank 1 also in rank 0's range
    trace = b.build()
    path = tmp_path / "bad.parquet"
    with pytest.raises(InputError):
        trace.write(path)
    assert not path.exists()


# --- atomic writes -------------------------------------------------------------------------------

def test_failed_parquet_write_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "trace.parquet"
    build_trace().write(path)
    before = path.read_bytes()
    calls = []

    def broken_write_table(table, where, *args, **kwargs):
        calls.append(Path(where))
        Path(where).write_bytes(b"PAR1 half a file")  # a partial file, then the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq, "write_table", broken_write_table)
    replacement = with_cell(build_trace(), 0, 0, "label", "a new label")
    with pytest.raises(OSError, match="No space left"):
        replacement.write(path)

    assert len(calls) == 1 and calls[0] != path and calls[0].parent == tmp_path
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trace.parquet"]
    monkeypatch.undo()
    assert Trace.read(path).rank_ops(0)["label"].iloc[0] == "fwd"


def test_failed_first_write_leaves_nothing(tmp_path, monkeypatch):
    def broken_write_table(table, where, *args, **kwargs):
        Path(where).write_bytes(b"PAR1")
        raise RuntimeError("interrupted")

    monkeypatch.setattr(pq, "write_table", broken_write_table)
    with pytest.raises(RuntimeError):
        build_trace().write(tmp_path / "trace.parquet")
    assert list(tmp_path.iterdir()) == []


def test_failed_validation_does_not_touch_existing_file(trace_file):
    before = trace_file.read_bytes()
    bad = with_cell(build_trace(), 0, 1, "nccl_channels", 65)
    with pytest.raises(InputError):
        bad.write(trace_file)
    assert trace_file.read_bytes() == before
    assert sorted(p.name for p in trace_file.parent.iterdir()) == [trace_file.name]


def test_successful_overwrite_replaces_file_and_leaves_no_temp(trace_file):
    with_cell(build_trace(), 0, 0, "label", "renamed").write(trace_file)
    assert Trace.read(trace_file).rank_ops(0)["label"].iloc[0] == "renamed"
    assert sorted(p.name for p in trace_file.parent.iterdir()) == [trace_file.name]


def test_communication_ops_are_every_op_but_compute():
    trace = Trace.read(Path(__file__).resolve().parents[1] / "traces" / "ref-pp2-dp2.parquet")
    comm = trace.communication_ops
    assert len(comm) and (comm["kind"] != "compute").all()
    assert len(comm) + int((trace.ops["kind"] == "compute").sum()) == len(trace.ops)
    assert list(comm.index) == sorted(comm.index)  # trace order kept
