"""Tests of the importers (``dynamiccl.profiler.importers``) on the fixtures of
``tests/fixtures/profiler`` (see its README: gloo Kineto / Flight Recorder recorded with torch 2.13,
NCCL Kineto, NCCL logs and Inspector JSON written to the documented formats).

Each importer must give a trace that validates and survives a Parquet round trip, with the right
ops, both byte counts (per rank and total, under each source's counting convention), dtypes,
groups, p2p peers and, where the source says, the algorithm/protocol NCCL ran. Malformed inputs
must fail quickly with an ``InputError`` naming the file, the record or line, and the field.
"""

from __future__ import annotations

import json
import pickle
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from dynamiccl.errors import InputError
from dynamiccl.profiler.importers import IMPORTERS, import_files
from dynamiccl.trace import Trace
from dynamiccl.trace.consistency import check_consistency

FIX = Path(__file__).parent / "fixtures" / "profiler"
KINETO_GLOO = sorted(str(p) for p in (FIX / "kineto_gloo").glob("rank*.json"))
KINETO_GLOO_SYNC = [str(FIX / "kineto_gloo_sync" / f"rank{r}.json") for r in range(4)]
KINETO_NCCL = [str(FIX / "kineto_nccl" / f"rank{r}.json") for r in range(2)]
FR_JSON = [str(FIX / "fr_gloo" / f"rank{r}.json") for r in range(4)]
FR_PICKLE = [str(FIX / "fr_gloo" / f"rank{r}.pickle") for r in range(4)]
NCCL_LOG = str(FIX / "nccl_log" / "merged.log")
NCCL_LOG_221 = [str(FIX / "nccl_log" / f"v2.21_rank{r}.log") for r in range(2)]
INSPECTOR_43 = str(FIX / "inspector_v4.3")
INSPECTOR_42 = str(FIX / "inspector_v4.2")


def comm(trace: Trace, rank: int | None = None, step: int | None = None):
    ops = trace.ops[trace.ops["kind"] != "compute"]
    if rank is not None:
        ops = ops[ops["rank"] == rank]
    if step is not None:
        ops = ops[ops["step"] == step]
    return ops


def round_trip(trace: Trace, tmp_path: Path) -> Trace:
    trace.validate()
    path = tmp_path / "imported.parquet"
    trace.write(path)
    back = Trace.read(path)
    assert back.meta.source == trace.meta.source
    assert len(back.ops) == len(trace.ops)
    assert (back.ops["bytes_total"].to_numpy() == trace.ops["bytes_total"].to_numpy()).all()
    return back


def consistent(trace: Trace) -> None:
    for step in sorted(trace.ops["step"].unique()):
        report = check_consistency(trace, step=int(step))
        assert report.ok, report.problems


@pytest.fixture(scope="module")
def kineto_gloo() -> Trace:
    return import_files("kineto", KINETO_GLOO)


@pytest.fixture(scope="module")
def kineto_nccl() -> Trace:
    return import_files("kineto", KINETO_NCCL)


@pytest.fixture(scope="module")
def fr() -> Trace:
    return import_files("flight-recorder", FR_JSON)


@pytest.fixture(scope="module")
def nccl_log() -> Trace:
    return import_files("nccl-log", [NCCL_LOG])


@pytest.fixture(scope="module")
def inspector() -> Trace:
    return import_files("inspector", [INSPECTOR_43])


def test_registry() -> None:
    assert set(IMPORTERS) == {"kineto", "flight-recorder", "nccl-log", "inspector"}
    with pytest.raises(InputError, match="unknown import format"):
        import_files("nsys", [NCCL_LOG])
    with pytest.raises(InputError, match="no such file"):
        import_files("nccl-log", [str(FIX / "missing.log")])


# --- Kineto, gloo (recorded) ---------------------------------------------------------------------


def test_kineto_gloo_steps_groups_and_sizes(kineto_gloo: Trace, tmp_path: Path) -> None:
    t = round_trip(kineto_gloo, tmp_path)
    assert t.meta.source == "import:kineto" and t.meta.world_size == 4 and t.ranks == [0, 1, 2, 3]
    kinds = {g: (grp.kind, grp.ranks) for g, grp in t.meta.groups.items()}
    assert kinds == {"0": ("world", (0, 1, 2, 3)), "1": ("tp", (0, 1)), "2": ("tp", (2, 3)),
                     "3": ("dp", (0, 2)), "4": ("dp", (1, 3))}
    # DDP construction before the first ProfilerStep marker: setup traffic on the DP group, step 0.
    setup = comm(t, 0, 0)
    assert list(setup["op"]) == ["allgather", "broadcast", "broadcast"]
    assert set(setup["phase"]) == {"setup"} and set(setup["group_id"]) == {"3"}
    assert list(setup["bytes_total"]) == [16, 48, 4224]  # Long[1] x 2 ranks, Long[6], Float[1056]
    assert list(setup["dtype"]) == ["int64", "int64", "fp32"]
    assert set(t.ops["step"]) == {0, 1, 2}
    step = comm(t, 0, 1)
    tp = step[step["group_id"] == "1"]
    assert list(tp["op"]) == ["allreduce", "allgather", "reducescatter"]
    assert set(tp["dtype"]) == {"bf16"} and set(tp["group_size"]) == {2}
    assert list(tp["bytes_total"]) == [512, 512, 512]           # 256 bf16; gathered 256; RS input 256
    assert list(tp["bytes_per_rank"]) == [512, 256, 256]        # NCCL counts: AG send, RS recv per rank
    ddp = step[(step["group_id"] == "3") & (step["op"] == "allreduce")]
    assert list(ddp["phase"]) == ["backward"] and list(ddp["bytes_total"]) == [4224]
    a2a = step[step["op"] == "alltoall"]
    assert list(a2a["bytes_total"]) == [256] and list(a2a["bytes_per_rank"]) == [64]
    # send 0 -> 2 and 1 -> 3, received on 2 and 3.
    for src, dst in ((0, 2), (1, 3)):
        send = comm(t, src, 1).query("op == 'send'")
        recv = comm(t, dst, 1).query("op == 'recv'")
        assert list(send["peer"]) == [dst] and list(recv["peer"]) == [src]
        assert list(send["bytes_total"]) == [2048] == list(recv["bytes_total"])
    # Broadcast roots are global ranks of the DP groups' first members.
    assert set(comm(t, 3).query("op == 'broadcast'")["peer"]) == {1}
    consistent(t)


def test_kineto_gloo_compute_gaps_are_measured(kineto_gloo: Trace) -> None:
    ops = kineto_gloo.rank_ops(0, step=1)
    compute = ops[ops["kind"] == "compute"]
    assert len(compute) >= 5
    assert (compute["duration_us"] >= 1.0).all()
    assert np.isfinite(compute["start_us"]).all() and np.isfinite(compute["end_us"]).all()
    assert np.allclose(compute["end_us"] - compute["start_us"], compute["duration_us"])
    comm_ops = ops[ops["kind"] != "compute"]
    assert np.isfinite(comm_ops["start_us"]).all()
    assert ops.iloc[0]["kind"] == "compute"  # from the step's start to its first collective


def test_kineto_gloo_single_rank_matches_the_full_import(kineto_gloo: Trace) -> None:
    alone = import_files("kineto", [KINETO_GLOO[0]])
    full = comm(kineto_gloo, 0)[["step", "op", "group_id", "bytes_total", "dtype", "peer"]]
    one = comm(alone, 0)[["step", "op", "group_id", "bytes_total", "dtype", "peer"]]
    assert one.reset_index(drop=True).equals(full.reset_index(drop=True))


def test_kineto_gloo_barriers_and_scatter(tmp_path: Path) -> None:
    """Recorded with record_shapes=True (make_gloo_sync_fixtures.py): gloo:barrier events never carry
    shapes, nor does gloo:scatter on the ranks that only receive; they import all the same."""
    t = round_trip(import_files("kineto", KINETO_GLOO_SYNC), tmp_path)
    assert t.meta.world_size == 4 and t.ranks == [0, 1, 2, 3] and set(t.ops["step"]) == {0, 1, 2}
    kinds = {g: (grp.kind, grp.ranks) for g, grp in t.meta.groups.items()}
    assert kinds == {"0": ("world", (0, 1, 2, 3)), "1": ("tp", (0, 1)), "2": ("tp", (2, 3))}
    for rank in range(4):
        pair, first = str(1 + rank // 2), rank // 2 * 2
        setup = comm(t, rank, 0)
        assert list(zip(setup["op"], setup["label"], setup["group_id"], setup["phase"])) == [
            ("allreduce", "barrier", "0", "setup")]
        for step in (1, 2):
            ops = comm(t, rank, step)
            got = list(zip(ops["op"], ops["group_id"], ops["dtype"], ops["bytes_total"], ops["bytes_per_rank"],
                           ops["peer"]))
            assert got == [
                ("allreduce", "0", "fp32", 64, 64, -1),        # 16 floats
                ("allreduce", "0", "fp32", 4, 4, -1),          # dist.barrier(): one fp32 element (kineto.BARRIER)
                ("scatter", pair, "bf16", 32, 16, first),      # 8 bf16 to each of 2 ranks, root = pair's first
                ("gather", "0", "fp32", 64, 16, 1),            # 4 floats from each of 4 ranks to rank 1
                ("reduce", pair, "fp32", 128, 128, first + 1),
                ("allreduce", pair, "fp32", 4, 4, -1),         # dist.barrier(group=pair)
            ], (rank, step)
            assert list(ops["label"])[1::4] == ["barrier", "barrier"]
            assert np.isfinite(ops["start_us"]).all()
    consistent(t)


def test_kineto_gloo_receiving_scatter_alone_is_dropped_with_a_note() -> None:
    """One receiving rank's trace cannot tell its scatter's dtype (only the root's events name it)."""
    alone = import_files("kineto", [KINETO_GLOO_SYNC[1]])
    assert "scatter" not in set(comm(alone, 1)["op"])
    assert list(comm(alone, 1, 1)["op"]) == ["allreduce", "allreduce", "gather", "reduce", "allreduce"]
    assert any("name a dtype" in n for n in alone.meta.workload["notes"])
    root = import_files("kineto", [KINETO_GLOO_SYNC[0]])
    assert list(comm(root, 0, 1).query("op == 'scatter'")["dtype"]) == ["bf16"]


def test_kineto_gloo_missing_shapes_advice_is_accurate(tmp_path: Path) -> None:
    """record_shapes=True was on (other c10d events have shapes): the message must not advise it."""
    doc = json.loads(Path(KINETO_GLOO_SYNC[0]).read_text())
    scatter = next(e for e in doc["traceEvents"] if e.get("name") == "c10d::scatter_")
    scatter["args"].pop("Input Dims")
    path = tmp_path / "rank0.json"
    path.write_text(json.dumps(doc))
    err = _fails("kineto", [path], "rank0.json", "c10d::scatter_", "'Input Dims'", "record_shapes was on")
    assert "record_shapes=True" not in str(err)


# --- Kineto, NCCL (written to the format) ----------------------------------------------------------


def test_kineto_nccl(kineto_nccl: Trace, tmp_path: Path) -> None:
    t = round_trip(kineto_nccl, tmp_path)
    assert t.meta.workload["profiler_steps"] == [5, 6]
    setup = comm(t, 1, 0)
    assert list(setup["op"]) == ["broadcast"] and list(setup["phase"]) == ["setup"]
    assert list(setup["peer"]) == [0] and list(setup["bytes_total"]) == [1056 * 4]
    s1 = comm(t, 0, 1)
    assert list(s1["op"]) == ["allreduce", "allgather", "reducescatter", "send", "allreduce", "allreduce",
                              "allreduce"]
    assert list(s1["bytes_total"]) == [2 << 20, 1 << 20, 1 << 20, 16384, 8 << 20, 4, 4]
    assert list(s1["bytes_per_rank"]) == [2 << 20, 512 << 10, 512 << 10, 16384, 8 << 20, 4, 4]
    assert list(s1["dtype"]) == ["bf16", "bf16", "bf16", "fp32", "fp32", "fp32", "fp32"]
    assert list(s1["group_kind"]) == ["tp", "tp", "tp", "world", "world", "world", "world"]
    assert list(s1["label"])[5] == "barrier"
    assert list(s1["phase"])[:5] == ["forward", "forward", "forward", "forward", "backward"]
    # Execution times are the kernels': by External id, by (group, Seq), by launch correlation.
    assert list(s1["start_us"])[:3] == [2510.0, 3210.0, 3680.0]
    assert list(s1["end_us"])[:3] == [2810.0, 3360.0, 3840.0]
    # Kernel names do not say which algorithm/protocol ran (NVIDIA/nccl src/device/generate.py builds
    # only the "best kernel" specialisations).
    assert set(t.ops["nccl_algo"]) == {""} and set(t.ops["nccl_proto"]) == {""}
    assert list(comm(t, 0, 1).query("op == 'send'")["peer"]) == [1]
    assert list(comm(t, 1, 1).query("op == 'recv'")["peer"]) == [0]
    compute = t.rank_ops(0, step=1).query("kind == 'compute'")
    assert compute.iloc[0]["duration_us"] == 400.0  # the GEMM launched before the first collective
    assert (compute["duration_us"] <= compute["end_us"] - compute["start_us"] + 1e-9).all()  # busy time
    assert list(comm(t, 0, 2)["op"]) == ["allreduce"]
    consistent(t)


def test_kineto_gzip(kineto_nccl: Trace, tmp_path: Path) -> None:
    import gzip

    for path in KINETO_NCCL:
        (tmp_path / (Path(path).name + ".gz")).write_bytes(gzip.compress(Path(path).read_bytes()))
    t = import_files("kineto", [str(tmp_path)])
    assert t.ops[["rank", "op", "bytes_total"]].equals(kineto_nccl.ops[["rank", "op", "bytes_total"]])


# --- Flight Recorder (recorded) ----------------------------------------------------------------


def test_flight_recorder_json(fr: Trace, tmp_path: Path) -> None:
    t = round_trip(fr, tmp_path)
    assert t.meta.world_size == 4 and set(t.ops["step"]) == {0}
    assert {g: grp.ranks for g, grp in t.meta.groups.items()} == {
        "0": (0, 1, 2, 3), "1": (0, 1), "2": (2, 3), "3": (0, 2), "4": (1, 3)}
    r0 = comm(t, 0)
    first = r0.iloc[0]
    assert (first["op"], first["group_kind"], first["dtype"], first["bytes_total"], first["bytes_per_rank"]) == \
        ("allgather", "dp", "int64", 16, 8)  # gloo records the output as [2, 1]
    tp = r0[r0["group_id"] == "1"]
    # gloo runs reduce_scatter_tensor as an all_reduce of the full input, and FR says so.
    assert list(tp["op"])[:3] == ["allreduce", "allgather", "allreduce"]
    assert list(tp["bytes_total"])[:3] == [512, 512, 512] and list(tp["bytes_per_rank"])[:3] == [512, 256, 512]
    assert list(r0["label"])[-1] == "gloo:barrier" and list(r0["bytes_total"])[-1] == 4
    assert (r0.query("op == 'broadcast'")["peer"] == 0).all()
    assert any("root" in n for n in t.meta.workload["notes"])
    assert np.isnan(t.ops["start_us"]).all()  # gloo records no durations
    consistent(t)


def test_flight_recorder_pickle_needs_trust(fr: Trace) -> None:
    with pytest.raises(InputError, match="--trust-pickle") as err:
        import_files("flight-recorder", FR_PICKLE)
    assert "rank0.pickle" in str(err.value)
    trusted = import_files("flight-recorder", FR_PICKLE, trust_pickle=True)
    cols = ["rank", "op", "group_id", "bytes_total", "dtype", "peer"]
    assert trusted.ops[cols].equals(fr.ops[cols])


def test_flight_recorder_pickle_refuses_code_even_when_trusted(tmp_path: Path) -> None:
    path = tmp_path / "rank0.pickle"
    path.write_bytes(pickle.dumps({"entries": [], "hook": print}))
    with pytest.raises(InputError, match="refusing builtins.print"):
        import_files("flight-recorder", [str(path)], trust_pickle=True)


def test_flight_recorder_needs_every_member(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"rank0\.json.*record_id 0.*give the dumps of all its ranks"):
        import_files("flight-recorder", [FR_JSON[0]])


def test_flight_recorder_p2p_and_timing(tmp_path: Path) -> None:
    """NCCL-style entries: p2p names carry group-local ranks; duration_ms gives measured times."""
    def entry(i, name, ins, outs, dt="BFloat16", pg=("5", "PIPELINE_MODEL_PARALLEL_GROUP")):
        return {"record_id": i, "pg_id": 1, "process_group": list(pg), "collective_seq_id": i, "p2p_seq_id": i,
                "op_id": i, "profiling_name": name, "time_created_ns": 1_000_000 * (i + 1), "input_sizes": ins,
                "input_dtypes": [dt], "output_sizes": outs, "output_dtypes": [dt], "state": "completed",
                "duration_ms": 0.25, "is_p2p": "send" in name or "recv" in name}
    for rank in (1, 3):
        me, peer = (0, 1) if rank == 1 else (1, 0)
        op = "send" if rank == 1 else "recv"
        arrow = "->" if op == "send" else "<-"
        doc = {"version": "2.10", "pg_config": {"5": {"name": "5", "desc": "PIPELINE_MODEL_PARALLEL_GROUP",
                                                      "ranks": "[1, 3]"}},
               "entries": [entry(0, f"nccl:{op} {me}{arrow}{peer}", [[4096]], [[4096]]),
                           entry(1, "nccl:_all_gather_base", [[1024]], [[2048]])]}
        (tmp_path / f"nccl_trace_rank_{rank}").write_text(json.dumps(doc))
    t = import_files("flight-recorder", [str(tmp_path)], gpus_per_node=2)
    assert t.meta.groups["5"].ranks == (1, 3) and t.meta.groups["5"].kind == "pp"
    assert t.meta.groups["5"].nnodes == 2
    send, recv = comm(t, 1).iloc[0], comm(t, 3).iloc[0]
    assert (send["op"], send["peer"], send["bytes_total"]) == ("send", 3, 8192)
    assert (recv["op"], recv["peer"]) == ("recv", 1)
    ag = comm(t, 1).iloc[1]
    assert (ag["bytes_total"], ag["bytes_per_rank"]) == (4096, 2048)
    assert ag["end_us"] - ag["start_us"] == pytest.approx(250.0)
    consistent(t)


# --- NCCL logs (written to the format) -----------------------------------------------------------


def test_nccl_log_merged(nccl_log: Trace, tmp_path: Path) -> None:
    t = round_trip(nccl_log, tmp_path)
    assert t.meta.world_size == 4 and t.meta.workload["nccl_version"] == ["2.24.3+cuda12.4"]
    groups = t.meta.groups
    world = groups["0x7f3a5be1c2d40e11"]
    assert world.kind == "world" and world.ranks == (0, 1, 2, 3) and world.nnodes == 2  # 2 hosts
    tp0 = groups["0x7f3a5be1c2d40e11/split1/color0"]
    assert tp0.ranks == (0, 1) and tp0.nnodes == 1
    assert groups["0x1c9e2f0a77b54d01"].ranks == (0, 2)
    for rank in range(4):
        ops = comm(t, rank)
        assert list(ops["op"]) == ["allreduce", "allgather", "reducescatter", "broadcast",
                                   *(["send", "recv"] if rank < 2 else ["recv", "send"]), "allreduce"]
        assert list(ops["dtype"]) == ["fp32", "bf16", "bf16", "fp32", "bf16", "bf16", "bf16"]
        # NCCL count: AllGather sendcount, ReduceScatter recvcount, per rank; totals are n x count.
        assert list(ops["bytes_per_rank"]) == [4 << 20, 512 << 10, 512 << 10, 4096, 8192, 8192, 16384]
        assert list(ops["bytes_total"]) == [4 << 20, 1 << 20, 1 << 20, 4096, 8192, 8192, 16384]
        # TUNING lines are printed by each communicator's rank 0 and hold for every member.
        assert list(ops["nccl_algo"]) == ["ring", "ring", "pat", "ring", "", "", "tree"]
        assert list(ops["nccl_proto"]) == ["simple", "ll128", "simple", "ll", "", "", "ll"]
        assert list(ops["nccl_channels"]) == [16, 8, 4, 2, -1, -1, 2]
        p2p = ops[ops["kind"] == "p2p"]
        assert set(p2p["peer"]) == {rank ^ 2}
        assert p2p["nccl_group"].nunique() == 1 and (p2p["nccl_group"] >= 0).all()  # same opCount
        assert list(ops.query("op == 'broadcast'")["peer"]) == [rank % 2]
    consistent(t)


def test_nccl_log_old_forms() -> None:
    t = import_files("nccl-log", NCCL_LOG_221)
    ops = comm(t)
    assert list(ops["rank"]) == [0, 0, 1, 1]
    assert list(ops["bytes_total"]) == [4 << 20, 256] * 2
    assert list(ops["nccl_algo"]) == ["ring", "tree"] * 2 and list(ops["nccl_proto"]) == ["simple", "ll"] * 2
    assert set(ops["nccl_channels"]) == {-1}


def test_nccl_log_missing_ranks_are_inferred(tmp_path: Path) -> None:
    lines = [ln for ln in Path(NCCL_LOG).read_text().splitlines() if "node-a:4101:" in ln]
    path = tmp_path / "rank0_only.log"
    path.write_text("\n".join(lines) + "\n")
    t = import_files("nccl-log", [str(path)])
    assert t.ranks == [0] and t.meta.world_size == 4
    assert t.meta.groups["0x1c9e2f0a77b54d01"].ranks == (0, 1)  # a consecutive block: a guess, noted
    assert any("inferred" in n for n in t.meta.workload["notes"])


# --- Inspector (written to the format) -----------------------------------------------------------


def test_inspector_v43_verbose(inspector: Trace, tmp_path: Path) -> None:
    t = round_trip(inspector, tmp_path)
    assert t.meta.world_size == 4
    kinds = {g.desc or g.group_id: (g.kind, g.ranks, g.nnodes) for g in t.meta.groups.values()}
    assert kinds["TP Group 0"] == ("tp", (0, 1), 1) and kinds["PP Group 1"] == ("pp", (1, 3), 2)
    assert kinds["0x7f3a5be1c2d40e11"] == ("world", (0, 1, 2, 3), 2)
    for rank in range(4):
        ops = comm(t, rank)
        assert list(ops["op"]) == ["allreduce", "allgather", "reducescatter",
                                   *(["send", "recv"] if rank < 2 else ["recv", "send"]), "allreduce"]
        assert list(ops["bytes_total"]) == [4 << 20, 1 << 20, 1 << 20, 65536, 65536, 16384]
        assert list(ops["bytes_per_rank"]) == [4 << 20, 512 << 10, 512 << 10, 65536, 65536, 16384]
        assert set(ops["dtype"]) == {"uint8"}
        assert list(ops["nccl_algo"]) == ["ring", "ring", "ring", "", "", "tree"]
        assert list(ops["nccl_proto"]) == ["simple", "ll128", "simple", "", "", "ll"]
        assert list(ops["nccl_channels"]) == [4, 8, 8, 1, 1, 2]
        assert set(ops[ops["kind"] == "p2p"]["peer"]) == {rank ^ 2}
        first = ops.iloc[0]
        assert first["end_us"] - first["start_us"] == 61.0 and np.isnan(first["duration_us"])
    consistent(t)


def test_inspector_v42_untimed() -> None:
    t = import_files("inspector", [INSPECTOR_42])
    ops = comm(t, 0)
    assert list(ops["op"]) == ["allreduce", "broadcast", "send"]
    assert list(ops["duration_us"]) == [1064.0, 18.0, 25.0]
    assert np.isnan(ops["start_us"]).all()
    assert list(ops["nccl_algo"])[:2] == ["nvls", "ring"] and list(ops["peer"]) == [-1, 0, 1]
    assert any("duration_us" in n for n in t.meta.workload["notes"])
    consistent(t)


# --- malformed inputs ----------------------------------------------------------------------------


def _copy(src: str | Path, tmp_path: Path, name: str | None = None) -> Path:
    src = Path(src)
    if src.is_dir():
        dst = tmp_path / src.name
        shutil.copytree(src, dst)
        return dst
    dst = tmp_path / (name or src.name)
    shutil.copy(src, dst)
    return dst


def _fails(kind: str, paths: list, *parts: str, **kwargs) -> InputError:
    started = time.perf_counter()
    with pytest.raises(InputError) as err:
        import_files(kind, [str(p) for p in paths], **kwargs)
    assert time.perf_counter() - started < 5.0
    for part in parts:
        assert part in str(err.value), (part, str(err.value))
    return err.value


def _edit_kineto(tmp_path: Path, edit) -> Path:
    doc = json.loads(Path(KINETO_NCCL[0]).read_text())
    rpc = next(e for e in doc["traceEvents"] if e.get("name") == "record_param_comms"
               and e["args"].get("Collective name") == "allreduce")
    edit(rpc["args"])
    path = tmp_path / "rank0.json"
    path.write_text(json.dumps(doc))
    return path


def test_kineto_malformed(tmp_path: Path) -> None:
    text = Path(KINETO_NCCL[0]).read_text()
    cut = tmp_path / "cut.json"
    cut.write_text(text[: len(text) // 2])
    _fails("kineto", [cut], "cut.json", "line ", "truncated")
    path = _edit_kineto(tmp_path, lambda a: a.pop("Group size"))
    _fails("kineto", [path], "rank0.json", "traceEvents[", "record_param_comms", "'Group size'")
    path = _edit_kineto(tmp_path, lambda a: a.update({"In msg nelems": "many"}))
    _fails("kineto", [path], "rank0.json", "traceEvents[", "'In msg nelems'")
    path = _edit_kineto(tmp_path, lambda a: a.update({"dtype": "ComplexFloat"}))
    _fails("kineto", [path], "rank0.json", "'dtype'", "unknown dtype")
    path = _edit_kineto(tmp_path, lambda a: a.update({"Collective name": "allreduce_magic"}))
    _fails("kineto", [path], "'Collective name'", "unknown collective")
    doc = json.loads(Path(KINETO_GLOO[0]).read_text())
    for e in doc["traceEvents"]:
        if e.get("name", "").startswith("c10d::"):
            e["args"].pop("Input Dims", None)
    nodims = tmp_path / "rank0_noshapes.json"
    nodims.write_text(json.dumps(doc))
    _fails("kineto", [nodims], "rank0_noshapes.json", "c10d::", "'Input Dims'", "record_shapes=True")
    doc["traceEvents"][5]["ts"] = "soon"
    doc["traceEvents"][5]["ph"] = "X"
    doc["traceEvents"][5]["name"] = "c10d::allreduce_"
    badts = tmp_path / "rank0_badts.json"
    badts.write_text(json.dumps(doc))
    _fails("kineto", [badts], "traceEvents[5]", "'ts'")


def _edit_fr(tmp_path: Path, edit) -> list[Path]:
    paths = [_copy(p, tmp_path) for p in FR_JSON]
    doc = json.loads(paths[1].read_text())
    edit(doc["entries"][2])
    paths[1].write_text(json.dumps(doc))
    return paths


def test_flight_recorder_malformed(tmp_path: Path) -> None:
    text = Path(FR_JSON[0]).read_text()
    cut = tmp_path / "rank0.json"
    cut.write_text(text[:-100])
    _fails("flight-recorder", [cut], "rank0.json", "line 1 column", "truncated")
    _fails("flight-recorder", _edit_fr(tmp_path, lambda e: e.pop("profiling_name")),
           "rank1.json", "entries[2] (record_id 2)", "'profiling_name'", "missing")
    _fails("flight-recorder", _edit_fr(tmp_path, lambda e: e.update(input_sizes="[1056]")),
           "rank1.json", "entries[2]", "'input_sizes'")
    _fails("flight-recorder", _edit_fr(tmp_path, lambda e: e.update(input_dtypes=["ComplexFloat"])),
           "rank1.json", "entries[2]", "'input_dtypes'", "unknown dtype")
    _fails("flight-recorder", _edit_fr(tmp_path, lambda e: e.update(profiling_name="gloo:teleport")),
           "rank1.json", "entries[2]", "'profiling_name'", "unknown operation")
    _fails("flight-recorder", _edit_fr(tmp_path, lambda e: e.update(record_id="two")),
           "rank1.json", "entries[2]", "'record_id'")
    nameless = tmp_path / "dump.json"
    shutil.copy(FR_JSON[0], nameless)
    _fails("flight-recorder", [nameless], "dump.json", "which rank")


def _edit_log(tmp_path: Path, old: str, new: str) -> Path:
    text = Path(NCCL_LOG).read_text()
    assert old in text
    path = tmp_path / "merged.log"
    path.write_text(text.replace(old, new, 1))
    return path


def _line_of(path: Path, needle: str) -> int:
    return next(i for i, ln in enumerate(path.read_text().splitlines(), 1) if needle in ln)


def test_nccl_log_malformed(tmp_path: Path) -> None:
    path = _edit_log(tmp_path, "count 1048576 datatype 7", "count 1048576 datatype 12")
    _fails("nccl-log", [path], "merged.log", f"line {_line_of(path, 'datatype 12')} field 'datatype'",
           "unknown ncclDataType_t 12")
    path = _edit_log(tmp_path, "count 262144 datatype 9", "count lots datatype 9")
    _fails("nccl-log", [path], f"line {_line_of(path, 'count lots')} field 'count'", "integer")
    path = _edit_log(tmp_path, "Algo PAT proto SIMPLE", "Algo WARP proto SIMPLE")
    _fails("nccl-log", [path], f"line {_line_of(path, 'Algo WARP')} field 'Algo'", "unknown algorithm")
    path = _edit_log(tmp_path, " op 0 root 0 comm 0x55d0a1c0", " root 0 comm 0x55d0a1c0")
    _fails("nccl-log", [path], "merged.log", "malformed COLL line")
    text = Path(NCCL_LOG).read_text()
    no_init = tmp_path / "noinit.log"
    no_init.write_text("\n".join(ln for ln in text.splitlines() if "Init COMPLETE" not in ln))
    _fails("nccl-log", [no_init], "noinit.log", "field 'comm'", "Init COMPLETE", "NCCL_DEBUG_SUBSYS=INIT,COLL")
    empty = tmp_path / "empty.log"
    empty.write_text("hello\n")
    _fails("nccl-log", [empty], "empty.log", "no NCCL COLL lines")


def _edit_inspector(tmp_path: Path, edit) -> Path:
    folder = _copy(INSPECTOR_43, tmp_path)
    path = folder / "node-a-pid4102.log"
    lines = path.read_text().splitlines()
    i = next(i for i, ln in enumerate(lines) if "coll_perf" in ln)
    obj = json.loads(lines[i])
    edit(obj)
    lines[i] = json.dumps(obj)
    path.write_text("\n".join(lines) + "\n")
    return folder


def test_inspector_malformed(tmp_path: Path) -> None:
    folder = _edit_inspector(tmp_path / "a", lambda o: o["coll_perf"].pop("coll_msg_size_bytes"))
    _fails("inspector", [folder], "node-a-pid4102.log", "line 2 coll_perf field 'coll_msg_size_bytes'", "missing")
    folder = _edit_inspector(tmp_path / "b", lambda o: o["coll_perf"].update(coll_exec_time_us="fast"))
    _fails("inspector", [folder], "node-a-pid4102.log", "line 2", "'coll_exec_time_us'")
    folder = _edit_inspector(tmp_path / "c", lambda o: o["coll_perf"].update(coll_algo="WARP"))
    _fails("inspector", [folder], "line 2", "'coll_algo'", "unknown algorithm")
    path = tmp_path / "cut.log"
    text = (Path(INSPECTOR_43) / "node-a-pid4101.log").read_text()
    path.write_text(text[: len(text) - 40])
    _fails("inspector", [path], "cut.log", "line ", "truncated")
    orphan = tmp_path / "orphan.log"
    orphan.write_text("\n".join(text.splitlines()[1:]) + "\n")
    _fails("inspector", [orphan], "orphan.log", "line 1", "dump_stats marker")
