"""Tests of dynamiccl.trace.overlap (which compute a communication op can hide behind) and
dynamiccl.trace.summary (per-rank counts, bytes, critical calls, size histograms, human_bytes).

Every trace is hand-built for one rank, written to a real file and read back, so the functions see
the frame ``Trace.read`` returns. Compute positions count compute ops only (0 = first compute).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dynamiccl.trace import Trace, TraceBuilder
from dynamiccl.trace.overlap import overlap_windows
from dynamiccl.trace.summary import first_training_step, human_bytes, rank_summary, render_text, size_bucket

MiB = 1 << 20


def new_builder() -> TraceBuilder:
    return TraceBuilder(source="generator", world_size=2, gpus_per_node=2, description="hand-built")


def saved(builder: TraceBuilder, tmp_path: Path) -> Trace:
    path = tmp_path / "trace.parquet"
    builder.build().write(path)
    return Trace.read(path)


def windows_of(trace: Trace, rank: int = 0):
    """The overlap windows keyed by op_index: {op_index: (first, last, overlap_us, critical)}."""
    ops = trace.rank_ops(rank)
    w = overlap_windows(ops)
    assert list(w.index) == list(ops.index[ops["kind"] != "compute"])
    index = ops.loc[w.index, "op_index"].tolist()
    return {int(k): (int(row.first_compute), int(row.last_compute), float(row.overlap_compute_us),
                     bool(row.critical))
            for k, row in zip(index, w.itertuples())}


# --- overlap_windows -----------------------------------------------------------------------------

def test_blocking_allreduce_is_critical(tmp_path):
    b = new_builder()
    dp = b.add_group("dp", "dp", [0, 1])
    r = b.rank(0)
    a = r.compute("A", phase="backward", duration_us=10.0)
    x = r.collective("allreduce", dp, MiB, "bf16", phase="backward", deps=[a])
    r.compute("B", phase="backward", duration_us=20.0, deps=[x])
    w = windows_of(saved(b, tmp_path))
    first, last, overlap, critical = w[x]
    assert critical is True
    assert overlap == 0.0
    assert last < first
    assert first == 1 and last == 0  # it may start after A (position 0), B (position 1) waits for it


def test_async_allreduce_overlaps_exactly_the_independent_compute(tmp_path):
    b = new_builder()
    dp = b.add_group("dp", "dp", [0, 1])
    r = b.rank(0)
    a = r.compute("A", phase="backward", duration_us=10.0)
    x = r.collective("allreduce", dp, MiB, "bf16", phase="backward", deps=[a])
    r.compute("B", phase="backward", duration_us=20.0)
    r.compute("C", phase="backward", duration_us=30.0, deps=[x])
    assert windows_of(saved(b, tmp_path))[x] == (1, 1, 20.0, False)


def test_collective_nobody_waits_for_overlaps_all_later_compute(tmp_path):
    b = new_builder()
    dp = b.add_group("dp", "dp", [0, 1])
    r = b.rank(0)
    a = r.compute("A", phase="backward", duration_us=10.0)
    x = r.collective("allreduce", dp, MiB, "bf16", phase="step", deps=[a])
    r.compute("B", phase="step", duration_us=20.0)
    r.compute("C", phase="step", duration_us=30.0)
    assert windows_of(saved(b, tmp_path))[x] == (1, 2, 50.0, False)


def test_collective_without_deps_may_overlap_from_the_first_compute(tmp_path):
    b = new_builder()
    dp = b.add_group("dp", "dp", [0, 1])
    r = b.rank(0)
    x = r.collective("allgather", dp, MiB, "bf16", phase="forward")
    r.compute("A", phase="forward", duration_us=10.0)
    r.compute("B", phase="forward", duration_us=20.0, deps=[x])
    assert windows_of(saved(b, tmp_path))[x] == (0, 0, 10.0, False)


def test_compute_measured_only_in_flops_counts_zero_time(tmp_path):
    b = new_builder()
    dp = b.add_group("dp", "dp", [0, 1])
    r = b.rank(0)
    a = r.compute("A", phase="backward", duration_us=10.0)
    x = r.collective("allreduce", dp, MiB, "bf16", phase="backward", deps=[a])
    r.compute("B", phase="backward", flops=1e9)  # no duration
    r.compute("C", phase="backward", duration_us=7.0)
    r.compute("D", phase="backward", duration_us=1.0, deps=[x])
    assert windows_of(saved(b, tmp_path))[x] == (1, 2, 7.0, False)


def test_chained_ops_on_one_stream_end_together(tmp_path):
    # x and y run on the dp group's stream (FIFO): whatever waits for y also waits for x.
    b = new_builder()
    dp = b.add_group("dp", "dp", [0, 1])
    r = b.rank(0)
    a = r.compute("A", phase="backward", duration_us=1.0)  # position 0
    x = r.collective("allreduce", dp, MiB, "bf16", phase="backward", deps=[a])
    r.compute("B", phase="backward", duration_us=2.0)  # position 1
    y = r.collective("allreduce", dp, MiB, "bf16", phase="backward")
    r.compute("C", phase="backward", duration_us=4.0)  # position 2
    r.compute("D", phase="backward", duration_us=8.0, deps=[y])  # position 3
    w = windows_of(saved(b, tmp_path))
    assert w[y] == (1, 2, 6.0, False)  # y follows x on the stream, so it cannot start before A ends
    assert w[x] == (1, 2, 6.0, False)  # D waits for y, hence for x: x's window ends where y's does
    assert w[x][1] == w[y][1]


def test_ops_on_different_streams_are_independent(tmp_path):
    b = new_builder()
    dp = b.add_group("dp", "dp", [0, 1])
    tp = b.add_group("tp", "tp", [0, 1])
    r = b.rank(0)
    a = r.compute("A", phase="backward", duration_us=1.0)
    x = r.collective("allreduce", dp, MiB, "bf16", phase="backward", deps=[a])
    r.compute("B", phase="backward", duration_us=2.0)
    z = r.collective("allreduce", tp, MiB, "bf16", phase="backward")
    r.compute("C", phase="backward", duration_us=4.0)
    r.compute("D", phase="backward", duration_us=8.0, deps=[z])
    w = windows_of(saved(b, tmp_path))
    assert w[x] == (1, 3, 14.0, False)  # nobody waits for x
    assert w[z] == (0, 2, 7.0, False)  # z has no predecessor: A, B and C


def test_dependency_between_comm_ops_on_different_streams(tmp_path):
    b = new_builder()
    dp = b.add_group("dp", "dp", [0, 1])
    tp = b.add_group("tp", "tp", [0, 1])
    r = b.rank(0)
    a = r.compute("A", phase="forward", duration_us=1.0)
    x = r.collective("allgather", tp, MiB, "bf16", phase="forward", deps=[a])
    w_op = r.collective("reducescatter", dp, MiB, "bf16", phase="forward", deps=[x])
    r.compute("B", phase="forward", duration_us=2.0)
    r.compute("C", phase="forward", duration_us=4.0, deps=[w_op])
    w = windows_of(saved(b, tmp_path))
    assert w[w_op] == (1, 1, 2.0, False)  # after A (through x), before C
    assert w[x] == (1, 1, 2.0, False)  # C waits for w, which waits for x


def test_p2p_in_an_nccl_group(tmp_path):
    b = new_builder()
    pp = b.add_group("pp", "pp", [0, 1])
    r = b.rank(0)
    a = r.compute("A", phase="forward", duration_us=5.0)
    with r.nccl_group():
        s = r.send(1, pp, MiB, "bf16", phase="forward", deps=[a])
        v = r.recv(1, pp, MiB, "bf16", phase="forward")
    r.compute("B", phase="forward", duration_us=6.0, deps=[v])
    w = windows_of(saved(b, tmp_path))
    assert w[v] == (1, 0, 0.0, True)
    assert w[s] == (1, 0, 0.0, True)  # same stream as the recv that B waits for


# --- rank_summary --------------------------------------------------------------------------------

@pytest.fixture
def summary_trace(tmp_path) -> Trace:
    b = new_builder()
    dp = b.add_group("dp0", "dp", [0, 1])
    tp = b.add_group("tp0", "tp", [0, 1])
    pp = b.add_group("pp0", "pp", [0, 1])
    r = b.rank(0)
    a = r.compute("A", phase="backward", flops=1e12, duration_us=1000.0)
    big = r.collective("allreduce", dp, MiB, "bf16", phase="backward", deps=[a])  # critical
    b_ = r.compute("B", phase="backward", flops=2e12, duration_us=2000.0, deps=[big])
    r.collective("allreduce", dp, 3000, "bf16", phase="step", deps=[b_])  # overlaps C
    r.collective("allgather", tp, 4096, "fp32", phase="step")
    with r.nccl_group():
        r.send(1, pp, 2048, "bf16", phase="step")
        r.recv(1, pp, 2048, "bf16", phase="step")
    r.compute("C", phase="step", duration_us=500.0)  # flops unknown
    # Another rank and another step must not leak into rank 0, step 0.
    r1 = b.rank(1)
    r1.collective("allreduce", dp, 8 * MiB, "bf16", phase="step")
    r_step1 = b.rank(0, step=1)
    r_step1.collective("broadcast", dp, 64, "int8", phase="setup", root=1)
    r_step1.compute("D", phase="step", duration_us=1.0)
    return saved(b, tmp_path)


def test_rank_summary_structure(summary_trace):
    s = rank_summary(summary_trace, 0)
    assert set(s) == {"dp", "tp", "pp", "compute"}
    assert set(s["dp"]) == {"allreduce"}
    assert set(s["pp"]) == {"send", "recv"}


def test_rank_summary_allreduce_counts_and_bytes(summary_trace):
    e = rank_summary(summary_trace, 0)["dp"]["allreduce"]
    assert e["count"] == 2
    assert e["total_bytes"] == MiB + 3000
    assert e["bytes_per_rank"] == MiB + 3000
    assert e["critical_count"] == 1
    assert e["critical_bytes"] == MiB
    assert e["min_bytes"] == 3000 and e["max_bytes"] == MiB
    assert e["median_bytes"] == pytest.approx((MiB + 3000) / 2)
    assert e["size_histogram"] == {"4096": 1, "1048576": 1}


def test_rank_summary_sharded_op_bytes(summary_trace):
    e = rank_summary(summary_trace, 0)["tp"]["allgather"]
    assert e["count"] == 1
    assert e["total_bytes"] == 4096  # nccl-tests size
    assert e["bytes_per_rank"] == 2048  # one rank's shard
    assert e["critical_count"] == 0
    assert e["size_histogram"] == {"4096": 1}


def test_rank_summary_p2p(summary_trace):
    s = rank_summary(summary_trace, 0)["pp"]
    for op in ("send", "recv"):
        assert s[op]["count"] == 1
        assert s[op]["total_bytes"] == 2048
        assert s[op]["critical_count"] == 0
        assert s[op]["size_histogram"] == {"2048": 1}


def test_rank_summary_compute_pseudo_kind(summary_trace):
    c = rank_summary(summary_trace, 0)["compute"]["compute"]
    assert c["count"] == 3
    assert c["flops"] == pytest.approx(3e12)  # the unknown (NaN) flops of C are skipped
    assert c["time_us"] == pytest.approx(3500.0)
    assert c["total_bytes"] == 0


def test_rank_summary_other_rank_and_step(summary_trace):
    s1 = rank_summary(summary_trace, 1)
    assert s1["dp"]["allreduce"]["count"] == 1
    assert s1["dp"]["allreduce"]["total_bytes"] == 8 * MiB
    assert s1["compute"]["compute"]["count"] == 0
    step1 = rank_summary(summary_trace, 0, step=1)
    assert set(step1) == {"dp", "compute"}
    assert step1["dp"]["broadcast"]["count"] == 1
    assert step1["dp"]["broadcast"]["size_histogram"] == {"64": 1}


def test_rank_summary_unknown_rank(summary_trace):
    with pytest.raises(KeyError, match="rank 5"):
        rank_summary(summary_trace, 5)


def test_render_text_mentions_ops_and_sizes(summary_trace):
    text = render_text(summary_trace, "trace.parquet", rank=0)
    assert "trace trace.parquet: hand-built" in text
    assert "rank 0, step 0" in text
    assert "allreduce" in text and "allgather" in text
    assert "1M:1" in text  # the 1 MiB allreduce's histogram bucket


@pytest.mark.parametrize("nbytes, bucket", [
    (0, 0), (1, 1), (2, 2), (3, 4), (1000, 1024), (1024, 1024), (1025, 2048), (3000, 4096),
    (MiB, MiB), (MiB + 1, 2 * MiB), (2**40 + 1, 2**41),
    (2**50 + 1, 2**51),
])
def test_size_bucket_is_power_of_two_upper_bound(nbytes, bucket):
    assert size_bucket(nbytes) == bucket
    assert size_bucket(nbytes) >= nbytes


# --- human_bytes ---------------------------------------------------------------------------------

@pytest.mark.parametrize("n, text", [
    (0, "0"), (1, "1"), (1023, "1023"), (1024, "1K"), (1536, "1.5K"), (3000, "2.93K"),
    (10 * 1024, "10K"), (64 * MiB, "64M"), (1.5 * (1 << 30), "1.5G"), (1 << 30, "1G"),
    (1536.0, "1.5K"),
])
def test_human_bytes(n, text):
    assert human_bytes(n) == text


@pytest.mark.parametrize("n", [1000 * 1024, MiB - 1, 1000 * MiB])
def test_human_bytes_never_uses_exponent_notation(n):
    text = human_bytes(n)
    assert "e" not in text
    value = float(text[:-1]) * {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[text[-1]]
    assert value == pytest.approx(n, rel=0.01)


# --- the default step: the first full training step ------------------------------------------------

FIXTURES = Path(__file__).parent / "fixtures" / "profiler"


def test_first_training_step_skips_setup_and_steps_without_every_rank(tmp_path):
    b = new_builder()
    world = b.add_group("w", "world", [0, 1])
    for rank in (0, 1):
        b.rank(rank, step=0).collective("broadcast", world, 64, "fp32", phase="setup", root=0)
    b.rank(0, step=1).collective("allreduce", world, 64, "fp32", phase="backward")  # rank 1 not recorded
    for rank in (0, 1):
        b.rank(rank, step=2).collective("allreduce", world, 64, "fp32", phase="backward")
    assert first_training_step(saved(b, tmp_path)) == 2


def test_a_trace_of_setup_traffic_only_has_no_training_step(tmp_path, capsys):
    from dynamiccl.cli import main

    b = new_builder()
    world = b.add_group("w", "world", [0, 1])
    for rank in (0, 1):
        b.rank(rank, step=0).collective("broadcast", world, 64, "fp32", phase="setup", root=0)
    path = tmp_path / "setup.parquet"
    b.build().write(path)
    assert first_training_step(Trace.read(path)) is None
    assert main(["trace", "summary", str(path)]) == 0
    assert capsys.readouterr().out.startswith("step 0: the trace has no training step, only setup traffic")


def test_first_training_step_of_imported_and_generated_traces(summary_trace):
    from dynamiccl.profiler.importers import import_files

    kineto = import_files("kineto", sorted(str(p) for p in (FIXTURES / "kineto_gloo").glob("rank*.json")))
    assert set(kineto.ops[kineto.ops["step"] == 0]["phase"]) == {"setup"} and first_training_step(kineto) == 1
    flight_recorder = import_files("flight-recorder", [str(FIXTURES / "fr_gloo" / f"rank{r}.json") for r in range(4)])
    assert first_training_step(flight_recorder) == 0  # no step boundaries: its only step
    assert first_training_step(summary_trace) == 0  # generated: step 0 is the training step


@pytest.fixture(scope="module")
def imported_without_setup(tmp_path_factory) -> Path:
    """The gloo Kineto fixture imported, as if the profiler had started after setup: steps 1 and 2."""
    from dynamiccl.profiler.importers import import_files

    trace = import_files("kineto", sorted(str(p) for p in (FIXTURES / "kineto_gloo").glob("rank*.json")))
    trace.ops = trace.ops[trace.ops["step"] != 0].reset_index(drop=True)
    path = tmp_path_factory.mktemp("imported") / "kineto.parquet"
    trace.write(path)
    return path


def test_summary_and_check_of_an_imported_trace_use_its_first_training_step(imported_without_setup, capsys):
    from dynamiccl.cli import main

    path = str(imported_without_setup)
    assert main(["trace", "summary", path]) == 0
    out = capsys.readouterr().out
    assert out.startswith("step 1: the first full training step (--step N for another)\n")
    assert "rank 0, step 1: communication" in out
    assert main(["trace", "summary", path, "--json"]) == 0
    printed = capsys.readouterr()
    assert printed.err == "step 1: the first full training step (--step N for another)\n"
    assert printed.out.startswith("{")  # stdout stays JSON
    assert main(["trace", "check", path]) == 0
    out = capsys.readouterr().out
    assert "  step 1: the first full training step (--step N for another)\n" in out
    assert "replay: 0 of 0" not in out and "cross-rank checks on 5 group(s)" in out


def test_check_of_a_step_not_in_the_trace_is_an_error_not_ok(imported_without_setup, capsys):
    from dynamiccl.cli import main

    assert main(["trace", "check", str(imported_without_setup), "--step", "0"]) == 2
    captured = capsys.readouterr()
    assert "OK" not in captured.out
    assert captured.err == f"dynamiccl: error: {imported_without_setup}: --step: step 0 is not in the trace " \
                           "(it has steps [1, 2])\n"
