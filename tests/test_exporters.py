"""Exporters: Chakra execution traces and PARAM comms-replay JSON, decoded back and checked row by row."""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dynamiccl.errors import InputError
from dynamiccl.profiler.exporters import EXPORTERS, export_trace
from dynamiccl.profiler.exporters import chakra, param
from dynamiccl.profiler.exporters.chakra import (
    CollectiveCommType, NodeType, WireError, decode_node, decode_varint, encode_attribute, encode_node,
    encode_varint, read_chakra, split_frames,
)
from dynamiccl.profiler.exporters.plan import plan_export
from dynamiccl.trace import Trace, TraceBuilder
from dynamiccl.trace.consistency import check_consistency
from dynamiccl.workload.context import ComputeRate
from dynamiccl.workload.generator import generate
from dynamiccl.workload.layout import ParallelLayout
from dynamiccl.workload.models import ModelConfig, load_model

RATE = ComputeRate("H100-SXM", 989.4, 0.45, 3350.0)
FIXTURES = Path(__file__).parent / "fixtures"


def _gen(model: str, all_ranks: bool, **layout) -> Trace:
    return generate(load_model(model), ParallelLayout(**layout), RATE, all_ranks=all_ranks, progress=False)


DENSE = dict(tp=2, pp=2, dp=2, sp=True, global_batch=4)  # 8 ranks, TP/PP/DP
CP = dict(tp=1, pp=2, cp=2, dp=1, global_batch=4)  # 4 ranks, context-parallel p2p ring + pipeline
MOE = dict(tp=2, pp=2, dp=2, ep=2, sp=True, global_batch=4)  # 8 ranks, expert all-to-all


@pytest.fixture(scope="module")
def dense_full() -> Trace:
    return _gen("llama3-8b", True, **DENSE)


@pytest.fixture(scope="module")
def dense_rep() -> Trace:
    return _gen("llama3-8b", False, **DENSE)


@pytest.fixture(scope="module")
def cp_rep() -> Trace:
    return _gen("llama3-8b", False, **CP)


@pytest.fixture(scope="module")
def moe_rep() -> Trace:
    return _gen("mixtral-8x7b", False, **MOE)


@pytest.fixture(scope="module")
def measured() -> Trace:
    """Two steps on 4 ranks: measured times, every rooted collective, an NCCL group of send/recv."""
    b = TraceBuilder(source="test", world_size=4, gpus_per_node=2)
    world = b.add_group("world.0", "world", range(4))
    tp = b.add_group("tp.0", "tp", [0, 1, 2, 3])
    for step in (0, 1):
        for r in range(4):
            rec = b.rank(r, step=step)
            t = 1000.0 + 100 * step + r
            c = rec.compute("fwd", phase="forward", flops=3e12, duration_us=12.6, start_us=t, end_us=t + 12.6)
            rec.collective("broadcast", tp, 4096, "fp32", phase="forward", root=2, deps=[c],
                           start_us=t + 13, end_us=t + 20.4)
            rec.collective("gather", tp, 4096, "bf16", phase="forward", root=1)
            rec.collective("scatter", tp, 4096, "bf16", phase="forward", root=0)
            rec.collective("reduce", tp, 4096, "bf16", phase="forward", root=3)
            rec.collective("alltoall", tp, 4096 * 4, "fp8e4m3", phase="forward")
            with rec.nccl_group():
                rec.send((r + 1) % 4, world, 1 << 20, "uint64", phase="forward", label="ring.send")
                rec.recv((r - 1) % 4, world, 1 << 20, "uint64", phase="forward", label="ring.recv")
            with rec.nccl_group():  # the same pairs again, over another communicator
                rec.send((r + 1) % 4, tp, 1 << 20, "uint64", phase="forward", label="tp.send")
                rec.recv((r - 1) % 4, tp, 1 << 20, "uint64", phase="forward", label="tp.recv")
            rec.collective("allreduce", tp, 8192, "bf16", phase="step", label="grads")
            rec.compute("optim", phase="step", duration_us=0.4)
            rec.compute("flops-only", phase="step", flops=1e9)
    return b.build()


# A model small enough to count its GEMMs by hand: h 64, 4 heads of 16 (2 KV heads), SwiGLU ffn 256,
# vocabulary 1024; TP 2, micro-batch 1 of 32 tokens, bf16 (2 bytes).
TINY = ModelConfig(name="tiny", num_layers=2, hidden_size=64, ffn_hidden_size=256, num_attention_heads=4,
                   num_kv_heads=2, vocab_size=1024, seq_length=32, global_batch=4)
TINY_LAYOUT = dict(tp=2, pp=1, dp=2, micro_batch=1, global_batch=4)


def _by_hand_gemm(m: int, k: int, n: int) -> tuple[int, int]:
    """(FLOPs, bytes) of an (m x k) by (k x n) bf16 GEMM: 2mkn; operands read and result written once."""
    return 2 * m * k * n, (m * k + k * n + m * n) * 2


def test_chakra_generated_compute_nodes_carry_num_ops_and_tensor_size(tmp_path):
    """ASTRA-sim's roofline mode needs both on every GPU compute node (issue 15, item 20)."""
    trace = generate(TINY, ParallelLayout(**TINY_LAYOUT), RATE, all_ranks=True, progress=False)
    export_trace("chakra", trace, tmp_path)
    files, _ = _read_all(tmp_path, 4)
    # fc1 (32 x 64 by 64 x 2*256/2) then fc2 (32 x 256/2 by 256/2 x 64), one TP rank's share.
    fc1, fc2 = _by_hand_gemm(32, 64, 256), _by_hand_gemm(32, 128, 64)
    assert (fc1[0] + fc2[0], fc1[1] + fc2[1]) == (1_572_864, 81_920)
    output = _by_hand_gemm(32, 64, 512)  # logits: 32 tokens x h by h x 1024/2 vocabulary entries
    embedding_bytes = 32 * 64 * 2  # the lookup writes one bf16 row per token; a gather has no FLOPs
    for f in files.values():
        computes = [n for n in f.nodes if n.type == NodeType.COMP_NODE]
        assert computes and all(n.value("is_cpu_op") is False for n in computes)
        for node in computes:
            assert node.attr("num_ops").member == "int64_val" and node.value("num_ops") > 0, node.name
            assert node.attr("tensor_size").member == "uint64_val" and node.value("tensor_size") > 0, node.name
        by_name = {n.name: n for n in computes}
        def work(name):
            return by_name[name].value("num_ops"), by_name[name].value("tensor_size")

        assert work("mb0.L0.mlp") == (1_572_864, 81_920)
        assert work("mb0.output") == output
        # backward: a dgrad and a wgrad, each the forward's FLOPs and bytes
        assert by_name["mb0.output.column_dgrad"].value("tensor_size") == output[1]
        assert work("mb0.embedding") == (1, embedding_bytes)
        step = by_name["optimizer.step"]  # AdamW: 16 FLOPs and 30 bytes per parameter
        assert step.value("num_ops") * 30 == step.value("tensor_size") * 16


def test_chakra_trace_without_bytes_moved_loads_and_exports_without_tensor_size(tmp_path):
    """A trace written before ``bytes_moved`` existed: the column reads as unknown, the export has no
    ``tensor_size`` and keeps ``num_ops`` where the trace has FLOPs."""
    import pyarrow.parquet as pq

    generated = generate(TINY, ParallelLayout(**TINY_LAYOUT), RATE, progress=False)
    generated.write(tmp_path / "new.parquet")
    table = pq.read_table(tmp_path / "new.parquet")
    pq.write_table(table.drop(["bytes_moved"]), tmp_path / "old.parquet")
    old = Trace.read(tmp_path / "old.parquet")
    assert old.ops["bytes_moved"].isna().all()
    new = Trace.read(tmp_path / "new.parquet")
    assert new.ops["bytes_moved"].notna().any()
    pd.testing.assert_frame_equal(old.ops.drop(columns="bytes_moved"), new.ops.drop(columns="bytes_moved"))
    export_trace("chakra", old, tmp_path / "out")
    files, _ = _read_all(tmp_path / "out", 4)
    for rank, f in files.items():
        rows = old.rank_ops(f.metadata.value("represented_by")).sort_values(["step", "op_index"])
        computes = [(n, r) for n, r in zip(f.nodes, rows.itertuples(index=False)) if r.kind == "compute"]
        assert computes
        for node, row in computes:
            assert node.attr("tensor_size") is None
            assert node.value("num_ops") == max(1, round(row.flops))


# --- independent expectations -----------------------------------------------------------------


def _expected_deps(rows) -> list[list[int]]:
    """data_deps the export must write, derived directly from the schema's rules: explicit deps plus
    the previous launch (one op, or all ops of one ncclGroupStart/End) on the same stream."""
    rows = rows.sort_values(["step", "op_index"])
    ids = {(int(s), int(i)): n for n, (s, i) in enumerate(zip(rows["step"], rows["op_index"]))}
    launches: dict[str, list[list[tuple]]] = defaultdict(list)  # stream -> [[(id, step, nccl_group)], ...]
    out = []
    for n, row in enumerate(rows.itertuples(index=False)):
        deps = {ids[(int(row.step), int(d))] for d in row.deps}
        history = launches[row.stream]
        grouped = row.nccl_group >= 0 and history and history[-1][0][1:] == (row.step, row.nccl_group)
        if grouped:
            deps |= {m[0] for m in history[-2]} if len(history) > 1 else set()
            history[-1].append((n, row.step, row.nccl_group))
        else:
            deps |= {m[0] for m in history[-1]} if history else set()
            history.append([(n, row.step, row.nccl_group if row.nccl_group >= 0 else -1 - n)])
        out.append(sorted(deps))
    return out


def _replay(files: dict[int, chakra.ChakraFile], groups: dict[str, list[int]]) -> int:
    """Run the exported graphs of all ranks together as a simulator would: a node starts when its
    data_deps are done; a collective finishes once every member of its pg has started its k-th call on
    that pg; a send/recv once the matching (src, dst, tag, size) other side has started. Returns the
    number of nodes that never finished (0 = the export replays to the end)."""
    world = sorted(files)
    members = {pg: set(r) for pg, r in groups.items()}
    nodes = {r: {n.id: n for n in f.nodes} for r, f in files.items()}
    coll_key = {}
    for r, f in files.items():
        count = defaultdict(int)
        for n in f.nodes:
            if n.type == NodeType.COMM_COLL_NODE:
                pg = n.value("pg_name")
                coll_key[(r, n.id)] = (pg, count[pg])
                count[pg] += 1
    started = {r: set() for r in world}
    done = {r: set() for r in world}
    arrivals = defaultdict(set)
    posted = defaultdict(int)
    progress = True
    while progress:
        progress = False
        for r in world:
            for n in nodes[r].values():
                if n.id in done[r]:
                    continue
                if n.id not in started[r]:
                    if not all(d in done[r] for d in n.data_deps):
                        continue
                    started[r].add(n.id)
                    progress = True
                    if n.type == NodeType.COMM_COLL_NODE:
                        arrivals[coll_key[(r, n.id)]].add(r)
                    elif n.type in (NodeType.COMM_SEND_NODE, NodeType.COMM_RECV_NODE):
                        posted[(n.type, n.value("comm_src"), n.value("comm_dst"), n.value("comm_tag"),
                                n.value("comm_size"))] += 1
                if n.type == NodeType.COMM_COLL_NODE:
                    key = coll_key[(r, n.id)]
                    finished = arrivals[key] >= members[key[0]]
                elif n.type in (NodeType.COMM_SEND_NODE, NodeType.COMM_RECV_NODE):
                    other = NodeType.COMM_RECV_NODE if n.type == NodeType.COMM_SEND_NODE else NodeType.COMM_SEND_NODE
                    finished = posted[(other, n.value("comm_src"), n.value("comm_dst"), n.value("comm_tag"),
                                       n.value("comm_size"))] > 0
                else:
                    finished = True
                if finished:
                    done[r].add(n.id)
                    progress = True
    return sum(len(nodes[r]) - len(done[r]) for r in world)


def _read_all(out_dir, world: int, prefix: str = "trace") -> tuple[dict, dict]:
    files = {r: read_chakra(out_dir / f"{prefix}.{r}.et") for r in range(world)}
    groups = json.loads((out_dir / f"{prefix}.comm_groups.json").read_text())
    return files, groups


# --- wire format ------------------------------------------------------------------------------


def test_varints_and_hand_encoded_messages():
    assert encode_varint(0) == b"\x00" and encode_varint(127) == b"\x7f"
    assert encode_varint(128) == b"\x80\x01" and encode_varint(300) == b"\xac\x02"
    assert encode_varint(1 << 40) == bytes([0x80, 0x80, 0x80, 0x80, 0x80, 0x20])
    assert encode_varint(-1) == b"\xff" * 9 + b"\x01"  # negative int32/int64: 10-byte two's complement
    for value in (0, 1, 127, 128, 300, 65535, 65536, 1 << 40, (1 << 64) - 1):
        assert decode_varint(encode_varint(value), 0) == (value, len(encode_varint(value)))
    # A Node written by hand from et_def.proto: id=1 (field 1 varint), name="a" (2, bytes),
    # type=COMM_COLL_NODE (3), data_deps=[3, 300] packed (5), attr comm_size int64_val=1 (10 -> 1, 9).
    attr = b"\x0a\x09comm_size" + b"\x48\x01"
    expected = b"\x08\x01" + b"\x12\x01a" + b"\x18\x07" + b"\x2a\x03\x03\xac\x02" + b"\x52" + bytes([len(attr)]) + attr
    got = encode_node(node_id=1, name="a", node_type=NodeType.COMM_COLL_NODE, data_deps=[3, 300],
                      attrs=[encode_attribute("comm_size", "int64_val", 1)])
    assert got == expected
    # A oneof member is written even at its default value (bool_val=false is field 27, key 0xd8 0x01).
    assert encode_attribute("is_cpu_op", "bool_val", False) == b"\x0a\x09is_cpu_op\xd8\x01\x00"
    assert encode_attribute("comm_src", "int32_val", -2).endswith(b"\x38" + b"\xfe" + b"\xff" * 8 + b"\x01")
    node = decode_node(got)
    assert (node.id, node.name, node.type, node.data_deps) == (1, "a", 7, [3, 300])
    assert (node.attrs[0].name, node.attrs[0].member, node.attrs[0].value) == ("comm_size", "int64_val", 1)
    with pytest.raises(ValueError):
        encode_attribute("comm_tag", "int32_val", 1 << 31)


def test_decoder_is_generic_and_strict(tmp_path):
    # Unpacked repeated data_deps (proto2 style), an unknown field, string_val and a signed int32.
    x = b"\x0a\x01x" + b"\xea\x01\x01z"  # name "x", string_val (field 29, wire 2) "z"
    y = b"\x0a\x01y" + b"\x38" + b"\xfe" + b"\xff" * 8 + b"\x01"  # name "y", int32_val -2
    raw = (b"\x08\x05" + b"\x28\x01" + b"\x28\x02" + b"\xf8\x06\x07"
           + b"\x52" + bytes([len(x)]) + x + b"\x52" + bytes([len(y)]) + y)
    node = decode_node(raw)
    assert node.id == 5 and node.data_deps == [1, 2] and node.unknown_fields == [111]
    assert (node.attr("x").member, node.value("x")) == ("string_val", "z") and node.value("y") == -2
    with pytest.raises(WireError):  # name (a string) sent as a varint
        decode_node(b"\x10\x01")
    with pytest.raises(WireError):  # length runs past the message
        decode_node(b"\x12\x05ab")
    with pytest.raises(WireError):  # group wire types are not proto3
        decode_node(b"\x0b")
    meta = chakra.encode_global_metadata("1.0.0", [encode_attribute("rank", "uint64_val", 3)])
    body = chakra.frame(meta) + chakra.frame(encode_node(node_id=0, name="n", node_type=NodeType.COMP_NODE))
    (tmp_path / "ok.et").write_bytes(body)
    (tmp_path / "ok.et.gz").write_bytes(gzip.compress(body))
    (tmp_path / "cut.et").write_bytes(body[:-1])
    (tmp_path / "junk.et").write_bytes(body + b"\x05ab")
    for name in ("ok.et", "ok.et.gz"):
        f = read_chakra(tmp_path / name)
        assert f.metadata.version == "1.0.0" and f.metadata.value("rank") == 3
        assert [(n.id, n.name, n.type) for n in f.nodes] == [(0, "n", NodeType.COMP_NODE)]
    for name in ("cut.et", "junk.et"):
        with pytest.raises(InputError, match="framing"):
            read_chakra(tmp_path / name)


# --- Chakra -----------------------------------------------------------------------------------


def test_chakra_round_trip_every_node(dense_full, tmp_path):
    paths = export_trace("chakra", dense_full, tmp_path)
    world = dense_full.meta.world_size
    assert [p.name for p in paths] == [f"trace.{r}.et" for r in range(world)] + ["trace.comm_groups.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)
    files, groups = _read_all(tmp_path, world)
    ranks_of_pg = {pg: tuple(ranks) for pg, ranks in groups.items()}
    assert groups["1"] == list(range(world))  # the world group is explicit: ASTRA-sim reserves 0
    comm_types = {"allreduce": CollectiveCommType.ALL_REDUCE, "allgather": CollectiveCommType.ALL_GATHER,
                  "reducescatter": CollectiveCommType.REDUCE_SCATTER}
    for rank in range(world):
        f = files[rank]
        # framing: the messages account for every byte of the file
        data = (tmp_path / f"trace.{rank}.et").read_bytes()
        frames = split_frames(data)
        assert sum(len(encode_varint(len(m))) + len(m) for m in frames) == len(data)
        assert len(frames) == 1 + len(f.nodes)
        if rank == 0:  # the exporter's fast path writes exactly what the generic encode_node writes
            for node, message in zip(f.nodes, frames[1:]):
                assert message == encode_node(
                    node_id=node.id, name=node.name, node_type=node.type, data_deps=node.data_deps,
                    start_time_micros=node.start_time_micros, duration_micros=node.duration_micros,
                    attrs=[encode_attribute(a.name, a.member, a.value) for a in node.attrs])
        assert f.metadata.version == "1.0.0"
        assert (f.metadata.value("rank"), f.metadata.value("world_size")) == (rank, world)
        assert f.metadata.value("comm_size_convention") == "total"
        rows = dense_full.rank_ops(rank).sort_values(["step", "op_index"]).reset_index(drop=True)
        assert len(f.nodes) == len(rows)
        memory_bound = 0
        expected_deps = _expected_deps(rows)
        for i, (node, row) in enumerate(zip(f.nodes, rows.itertuples(index=False))):
            assert node.id == i and node.name == (row.label or row.op)
            assert node.unknown_fields == [] and node.ctrl_deps == []
            assert node.data_deps == expected_deps[i]
            assert node.attr("is_cpu_op").member == "bool_val" and node.value("is_cpu_op") is False
            if row.kind == "compute":
                assert node.type == NodeType.COMP_NODE
                assert node.duration_micros == round(row.duration_us)
                # A generated trace knows both for every compute row (flops.py); 0 FLOPs are written as 1.
                assert node.attr("num_ops").member == "int64_val" and node.value("num_ops") == max(1, round(row.flops))
                assert node.attr("tensor_size").member == "uint64_val"
                assert node.value("tensor_size") == round(row.bytes_moved) > 0
                if row.label.split(".")[-1] in ("embedding", "embedding_wgrad", "step"):  # memory-bound
                    assert RATE.memory_bound_us(node.value("tensor_size")) == pytest.approx(row.duration_us, abs=1e-6)
                    memory_bound += 1
                continue
            assert node.attr("comm_size").member == "int64_val" and node.value("comm_size") == row.bytes_total
            pg = node.attr("pg_name")
            assert pg.member == "string_val"
            group = dense_full.meta.groups[row.group_id]
            assert ranks_of_pg[pg.value] == group.ranks
            if row.kind == "coll":
                assert node.type == NodeType.COMM_COLL_NODE
                assert node.attr("comm_type").member == "int64_val"
                assert node.value("comm_type") == comm_types[row.op]
            else:
                assert node.type == (NodeType.COMM_SEND_NODE if row.op == "send" else NodeType.COMM_RECV_NODE)
                src, dst = (rank, row.peer) if row.op == "send" else (row.peer, rank)
                for name, value in (("comm_src", src), ("comm_dst", dst)):
                    assert node.attr(name).member == "int32_val" and node.value(name) == value
                assert node.attr("comm_tag").member == "int32_val"
        assert memory_bound > 0
    # The same pg number means the same group in every file.
    seen: dict[str, set] = defaultdict(set)
    for rank, f in files.items():
        rows = dense_full.rank_ops(rank).sort_values(["step", "op_index"])
        for node, gid in zip(f.nodes, rows["group_id"]):
            if gid:
                seen[node.value("pg_name")].add(gid)
    assert all(len(gids) == 1 for gids in seen.values())
    assert _replay(files, groups) == 0


def test_chakra_representative_trace_expands_to_the_all_ranks_export(dense_rep, dense_full, tmp_path):
    assert dense_rep.meta.representative and len(dense_rep.ranks) == 2
    export_trace("chakra", dense_rep, tmp_path / "rep")
    export_trace("chakra", dense_full, tmp_path / "full")
    names = sorted(p.name for p in (tmp_path / "full").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "rep").iterdir())
    assert len(names) == dense_full.meta.world_size + 1
    for name in names:
        rep, full = (tmp_path / "rep" / name).read_bytes(), (tmp_path / "full" / name).read_bytes()
        if name.endswith(".et"):  # metadata differs in represented_by only; every node is identical
            assert split_frames(rep)[1:] == split_frames(full)[1:]
            rank = int(name.split(".")[1])
            assert read_chakra(tmp_path / "rep" / name).metadata.value("represented_by") == (0 if rank < 4 else 4)
        else:
            assert rep == full


@pytest.mark.parametrize("fixture", ["cp_rep", "moe_rep"])
def test_chakra_cp_ring_and_expert_alltoall_replay_to_the_end(fixture, request, tmp_path):
    rep = request.getfixturevalue(fixture)
    expanded = plan_export(rep).expanded_trace()
    assert check_consistency(expanded).ok
    export_trace("chakra", rep, tmp_path)
    files, groups = _read_all(tmp_path, rep.meta.world_size)
    sends, recvs = defaultdict(list), defaultdict(list)
    for rank, f in files.items():
        rows = expanded.rank_ops(rank).sort_values(["step", "op_index"]).reset_index(drop=True)
        assert [n.data_deps for n in f.nodes] == _expected_deps(rows)
        for node, row in zip(f.nodes, rows.itertuples(index=False)):
            if node.type == NodeType.COMM_SEND_NODE:
                assert (node.value("comm_src"), node.value("comm_dst")) == (rank, row.peer)
                sends[(rank, row.peer, node.value("comm_tag"))].append(node.value("comm_size"))
            elif node.type == NodeType.COMM_RECV_NODE:
                assert (node.value("comm_src"), node.value("comm_dst")) == (row.peer, rank)
                recvs[(row.peer, rank, node.value("comm_tag"))].append(node.value("comm_size"))
            elif node.type == NodeType.COMM_COLL_NODE and row.op == "alltoall":
                assert node.value("comm_type") == CollectiveCommType.ALL_TO_ALL
    assert sends and sends == recvs and all(len(v) == 1 for v in sends.values())  # tags are unique per pair
    assert _replay(files, groups) == 0


def test_chakra_measured_rooted_grouped_and_multi_step(measured, tmp_path):
    export_trace("chakra", measured, tmp_path, prefix="job", comm_size="input")
    files, groups = _read_all(tmp_path, 4, prefix="job")
    assert groups == {"1": [0, 1, 2, 3], "2": [0, 1, 2, 3]}  # world.0, and tp.0: the same ranks, its own group
    for rank, f in files.items():
        assert f.metadata.value("comm_size_convention") == "input"
        rows = measured.rank_ops(rank).sort_values(["step", "op_index"]).reset_index(drop=True)
        assert [n.id for n in f.nodes] == list(range(len(rows)))  # ids continue across steps
        assert [n.data_deps for n in f.nodes] == _expected_deps(rows)
        by_name = defaultdict(list)
        for n in f.nodes:
            by_name[n.name].append(n)
        fwd0, fwd1 = by_name["fwd"]
        assert (fwd0.start_time_micros, fwd1.start_time_micros) == (rank, 100 + rank)  # from the earliest start
        assert fwd0.duration_micros == 13 and by_name["optim"][0].duration_micros == 0  # nearest µs
        assert by_name["flops-only"][0].value("num_ops") == 10 ** 9
        assert by_name["optim"][0].attr("tensor_size") is None  # a measured row: bytes unknown
        assert by_name["optim"][0].attr("num_ops") is None and by_name["flops-only"][0].attr("tensor_size") is None
        bcast = by_name["broadcast"][0]
        assert bcast.duration_micros == 7 and bcast.start_time_micros == 13 + rank
        for op, root, size in (("broadcast", 2, 4096), ("gather", 1, 1024), ("scatter", 0, 4096), ("reduce", 3, 4096)):
            node = by_name[op][0]
            assert node.value("comm_root") == root and node.value("comm_size") == size
            assert node.value("comm_type") == CollectiveCommType[op.upper()]
        # comm_tag numbers a pair's messages by (pg number, order on that pg): world (pg 1) first.
        tags = [(n.name, n.value("comm_dst"), n.value("comm_tag"))
                for n in f.nodes if n.type == NodeType.COMM_SEND_NODE]
        assert tags == [("ring.send", (rank + 1) % 4, 0), ("tp.send", (rank + 1) % 4, 2),
                        ("ring.send", (rank + 1) % 4, 1), ("tp.send", (rank + 1) % 4, 3)]
        send, recv = by_name["ring.send"][1], by_name["ring.recv"][1]  # step 1
        assert (send.value("comm_dst"), recv.value("comm_src")) == ((rank + 1) % 4, (rank - 1) % 4)
        assert send.value("pg_name") == "1" and send.value("comm_tag") == 1  # second message of the pair
        assert recv.data_deps == send.data_deps  # launched together (one ncclGroupStart/End)
        # Streams continue across steps and never wait for other streams unless a dep says so.
        assert by_name["grads"][1].data_deps == [by_name["tp.send"][1].id, by_name["tp.recv"][1].id]
        assert by_name["tp.send"][1].data_deps == by_name["tp.recv"][1].data_deps == [by_name["alltoall"][1].id]
        assert fwd1.data_deps == [by_name["flops-only"][0].id]
        assert by_name["broadcast"][1].data_deps == sorted([fwd1.id, by_name["grads"][0].id])
    assert _replay(files, groups) == 0


# --- the official Chakra schema and ASTRA-sim's conventions -------------------------------------

# The AttributeProto member each attribute is read from: Chakra's ETFeederNode (mlcommons/chakra
# src/feeder/et_feeder_node.cpp) reads num_ops/comm_type/comm_size with int64_val(), tensor_size with
# uint64_val(), comm_src/comm_dst/comm_tag with int32_val(), pg_name with string_val(), is_cpu_op with
# bool_val(); any other member reads as 0 there. comm_root, which no feeder reads, is an int32_val like
# the other ranks.
FEEDER_MEMBERS = {"is_cpu_op": "bool_val", "num_ops": "int64_val", "tensor_size": "uint64_val",
                  "comm_type": "int64_val", "comm_size": "int64_val", "comm_src": "int32_val",
                  "comm_dst": "int32_val", "comm_tag": "int32_val", "pg_name": "string_val",
                  "comm_root": "int32_val"}


@pytest.fixture(scope="module")
def et_def(tmp_path_factory):
    """Chakra's ``et_def.proto`` (tests/fixtures/chakra) compiled by protobuf's compiler and imported."""
    from grpc_tools import protoc  # dev dependency (pyproject.toml)

    proto = FIXTURES / "chakra" / "et_def.proto"
    out = tmp_path_factory.mktemp("et_def")
    assert protoc.main(["protoc", f"-I{proto.parent}", f"--python_out={out}", str(proto)]) == 0
    spec = importlib.util.spec_from_file_location("et_def_pb2", out / "et_def_pb2.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _official_read(et_def, path) -> tuple[list[bytes], object, list]:
    """Chakra's way (protolib.decodeMessage): a varint length, then ParseFromString, to the end."""
    from google.protobuf.internal.decoder import _DecodeVarint32

    data = path.read_bytes()
    frames, pos = [], 0
    while pos < len(data):
        size, pos = _DecodeVarint32(data, pos)
        frames.append(data[pos:pos + size])
        pos += size
    assert pos == len(data)
    metadata = et_def.GlobalMetadata.FromString(frames[0])
    return frames, metadata, [et_def.Node.FromString(f) for f in frames[1:]]


def _attr_value(attr):
    member = attr.WhichOneof("value")
    return member, getattr(attr, member)


@pytest.mark.parametrize("fixture", ["moe_rep", "cp_rep", "measured"])
def test_chakra_export_reads_with_the_official_schema(fixture, et_def, request, tmp_path):
    trace = request.getfixturevalue(fixture)
    export_trace("chakra", trace, tmp_path)
    world = trace.meta.world_size
    ours, groups = _read_all(tmp_path, world)
    for rank in range(world):
        frames, metadata, nodes = _official_read(et_def, tmp_path / f"trace.{rank}.et")
        # Every message is what protobuf itself writes for the decoded content, byte for byte.
        assert metadata.SerializeToString(deterministic=True) == frames[0]
        assert [n.SerializeToString(deterministic=True) for n in nodes] == frames[1:]
        assert metadata.version == "1.0.0"
        assert {a.name: _attr_value(a)[1] for a in metadata.attr}["rank"] == rank
        assert len(nodes) == len(ours[rank].nodes)
        for node, mine in zip(nodes, ours[rank].nodes):
            assert (node.id, node.name, node.type) == (mine.id, mine.name, mine.type)
            assert (list(node.data_deps), list(node.ctrl_deps)) == (mine.data_deps, mine.ctrl_deps)
            assert (node.start_time_micros, node.duration_micros) == (mine.start_time_micros, mine.duration_micros)
            attrs = {a.name: _attr_value(a) for a in node.attr}
            assert attrs == {a.name: (a.member, a.value) for a in mine.attrs}
            for name, (member, _) in attrs.items():
                assert member == FEEDER_MEMBERS[name], (name, member)
            assert et_def.NodeType.Name(node.type) in ("COMP_NODE", "COMM_COLL_NODE", "COMM_SEND_NODE",
                                                       "COMM_RECV_NODE")
            if node.type == et_def.COMM_COLL_NODE:
                assert et_def.CollectiveCommType.Name(attrs["comm_type"][1]) == CollectiveCommType(
                    attrs["comm_type"][1]).name


@pytest.mark.parametrize("fixture", ["moe_rep", "dense_rep", "measured"])
def test_chakra_every_process_group_has_an_explicit_astra_sim_id(fixture, request, tmp_path):
    """ASTRA-sim (astra-sim/workload/Workload.cc ``extract_comm_group``) sends ``pg_name`` "" and "0"
    to an implicit all-NPU group, on which pipeline/expert-parallel exports hung at their world
    all-reduce; ids from comm_groups.json are integers and 0 is reserved (CommunicatorGroup::set_id
    asserts id > 0). So every collective names a listed group with id >= 1, the world group too."""
    trace = request.getfixturevalue(fixture)
    export_trace("chakra", trace, tmp_path)
    world = trace.meta.world_size
    files, groups = _read_all(tmp_path, world)
    assert all(int(key) >= 1 and str(int(key)) == key for key in groups)
    used = set()
    for rank, f in files.items():
        for node in f.nodes:
            if node.type in (NodeType.COMM_COLL_NODE, NodeType.COMM_SEND_NODE, NodeType.COMM_RECV_NODE):
                pg = node.value("pg_name")
                assert pg in groups, (rank, node.name, pg)
                assert rank in groups[pg]
                used.add(pg)
    assert used == set(groups)
    world_pgs = {pg for pg in used if sorted(groups[pg]) == list(range(world))}
    assert world_pgs, "the trace's world collectives name an explicit group"
    assert _replay(files, groups) == 0


# --- PARAM ------------------------------------------------------------------------------------


def test_param_round_trip(dense_full, tmp_path):
    paths = export_trace("param", dense_full, tmp_path)
    world = dense_full.meta.world_size
    assert [p.name for p in paths] == [f"rank-{r}.json" for r in range(world)]
    names = {"allreduce": "all_reduce", "allgather": "all_gather", "reducescatter": "reduce_scatter",
             "send": "send", "recv": "recv"}
    inits = None
    for rank in range(world):
        records = json.loads(paths[rank].read_text())
        init = [r for r in records if r.get("comms") == "init"]
        inits = inits or init
        assert init == inits and records[:len(init)] == init  # same groups, same order, on every rank
        pg_ranks = {r["pg_id"]: r["global_ranks"] for r in init}
        assert pg_ranks[0] == list(range(world))
        rows = dense_full.rank_ops(rank).sort_values(["step", "op_index"])
        comm_rows = rows[rows["kind"] != "compute"]
        comms = [r for r in records[len(init):] if "comms" in r]
        computes = [r for r in records[len(init):] if "compute" in r]
        assert len(comms) == len(comm_rows)
        # Element-wise rows (fewer FLOPs than bytes: optimizer step, embedding) have no GEMM equivalent.
        gemm_like = rows[np.isfinite(rows["flops"]) & ~(rows["flops"] < rows["bytes_moved"])]
        assert len(computes) == len(gemm_like) < int(np.isfinite(rows["flops"]).sum())
        for rec, row in zip(comms, comm_rows.itertuples(index=False)):
            esize = 2 if row.dtype == "bf16" else 4
            assert rec["comms"] == names[row.op] and rec["req"] == row.group_seq
            assert rec["dtype"] == {"bf16": "bfloat16", "fp32": "float32"}[row.dtype]
            group = dense_full.meta.groups[row.group_id]
            assert pg_ranks[rec["pg_id"]] == rec["global_ranks"] == list(group.ranks)
            assert rec["world_size"] == group.size
            full, shard = row.bytes_total // esize, row.bytes_per_rank // esize
            expected = {"allgather": (shard, full), "reducescatter": (full, shard)}.get(row.op, (full, full))
            assert (rec["in_msg_size"], rec["out_msg_size"]) == expected
            assert rec["markers"] == [row.label]
            if row.kind == "p2p":
                src, dst = (rank, row.peer) if row.op == "send" else (row.peer, rank)
                assert (rec["src_rank"], rec["dst_rank"], rec["use_batch"]) == (src, dst, row.nccl_group >= 0)
        for rec in computes:
            assert rec["compute"] == "gemm" and rec["count"] == 1
            assert abs(2 * rec["mm_dim"] ** 3 / rec["flops"] - 1) < 0.01
    only_comms = export_trace("param", dense_full, tmp_path / "none", compute="none")
    assert not any("compute" in r for r in json.loads(only_comms[0].read_text()))


def test_param_representative_and_measured(dense_rep, dense_full, measured, tmp_path):
    rep = export_trace("param", dense_rep, tmp_path / "rep")
    full = export_trace("param", dense_full, tmp_path / "full")
    assert [p.read_bytes() for p in rep] == [p.read_bytes() for p in full]
    records = json.loads(export_trace("param", measured, tmp_path / "m")[1].read_text())
    bcast = [r for r in records if r.get("comms") == "broadcast"]
    assert [r["startTime_ns"] for r in bcast] == [14000, 114000] and bcast[0]["root"] == 2
    assert math.isclose(bcast[0]["duration_us"], 7.4)
    a2a = next(r for r in records if r.get("comms") == "all_to_all")
    assert (a2a["in_msg_size"], a2a["dtype"]) == (16384, "uint8")
    sends = [r for r in records if r.get("comms") == "send"]
    assert [(r["src_rank"], r["dst_rank"], r["use_batch"], r["in_msg_size"], r["dtype"]) for r in sends] == \
        [(1, 2, True, 1 << 17, "long")] * 4
    assert [(r["markers"], r["pg_id"], r["req"]) for r in sends] == \
        [(["ring.send"], 0, 0), (["tp.send"], 1, 0), (["ring.send"], 0, 2), (["tp.send"], 1, 2)]
    assert [r["root"] for r in records if r.get("comms") in ("gather", "scatter", "reduce")] == [1, 0, 3] * 2


# --- all or nothing; refusals -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["chakra", "param"])
def test_an_error_midway_leaves_no_file_behind(kind, dense_full, tmp_path, monkeypatch):
    old = tmp_path / ("trace.0.et" if kind == "chakra" else "rank-0.json")
    old.write_bytes(b"previous export")
    if kind == "chakra":
        original = chakra._write_rank_file

        def failing(plan, rank, path, *args):
            if rank == 3:
                raise RuntimeError("disk full")
            original(plan, rank, path, *args)

        monkeypatch.setattr(chakra, "_write_rank_file", failing)
    else:
        original = param.param_records

        def failing(plan, rank, **kwargs):
            if rank == 3:
                raise RuntimeError("disk full")
            return original(plan, rank, **kwargs)

        monkeypatch.setattr(param, "param_records", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        export_trace(kind, dense_full, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [old.name]  # no new file, no temporary file
    assert old.read_bytes() == b"previous export"


def test_traces_that_cannot_be_exported_are_refused(dense_rep, dense_full, tmp_path):
    out = tmp_path / "out"

    def refused(trace, match, kind="chakra", **options):
        with pytest.raises(InputError, match=match):
            export_trace(kind, trace, out, **options)
        assert not out.exists() or not any(out.iterdir())

    no_layout = Trace(ops=dense_rep.ops, meta=_meta_copy(dense_rep, workload={}))
    refused(no_layout, "representative trace .*--all-ranks")
    refused(no_layout, "representative trace", kind="param")
    wrong = dict(dense_rep.meta.workload, layout=dict(dense_rep.meta.workload["layout"], tp=4, dp=1))
    refused(Trace(ops=dense_rep.ops, meta=_meta_copy(dense_rep, workload=wrong)), "does not produce")
    # A trace with every rank but one: that rank has no operations and nobody stands for it.
    keep = dense_full.ops[dense_full.ops["rank"] != 5].reset_index(drop=True)
    roles = {r: role for r, role in dense_full.meta.roles.items() if r != 5}
    refused(Trace(ops=keep, meta=_meta_copy(dense_full, roles=roles)), r"ranks 5 of the 8-rank job")
    bad = dense_full.ops.copy()
    bad.loc[3, "bytes_total"] = -1
    refused(Trace(ops=bad, meta=dense_full.meta), "bytes_total")
    refused(dense_full, "comm_size", comm_size="global")
    refused(dense_full, "prefix", prefix="a/b")
    refused(dense_full, "compute", kind="param", compute="fft")
    refused(dense_full, "no option 'prefix'", kind="param", prefix="x")
    refused(dense_full, "unknown export format", kind="nccl-log")
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match="not a directory"):
        export_trace("chakra", dense_full, tmp_path / "file")
    assert set(EXPORTERS) == {"chakra", "param"}


def _meta_copy(trace: Trace, **changes):
    from dataclasses import replace

    return replace(trace.meta, **changes)
