"""Tests of dynamiccl.costmodel.live: real gloo collectives in 4 worker processes, query checks,
worker failures and timeouts (no mocks of torch.distributed)."""

from __future__ import annotations

import statistics
import time

import pytest

from dynamiccl.costmodel.live import (LiveCostModel, LiveMeasurementError, LiveQuery, LiveResult,
                                      format_results)
from dynamiccl.errors import DynamicclError, InputError
from dynamiccl.nccl import Algorithm, Protocol, busbw_factor

NPROCS, ITERS = 4, 3
QUERIES = [
    LiveQuery("allreduce", 1024),
    LiveQuery("allgather", 4096),
    LiveQuery("reducescatter", 4096),
    LiveQuery("broadcast", 1024),
    LiveQuery("sendrecv", 1024),
    LiveQuery("allreduce", 256 * 1024, dtype="bf16"),
    LiveQuery("allgather", 256 * 1024),
    LiveQuery("reducescatter", 256 * 1024),
    LiveQuery("broadcast", 256 * 1024),
    LiveQuery("sendrecv", 256 * 1024),
    # NCCL knobs on gloo: still measured, marked as not applied.
    LiveQuery("allreduce", 4096, algo=Algorithm.RING, proto=Protocol.LL, channels=2),
]


@pytest.fixture(scope="module")
def gloo_results() -> list[LiveResult]:
    model = LiveCostModel(nprocs=NPROCS, backend="gloo", warmup=1, iters=ITERS, timeout_s=120)
    return model.measure(QUERIES)


def test_results_come_back_in_query_order_with_positive_times(gloo_results):
    assert [r.query for r in gloo_results] == QUERIES
    for r in gloo_results:
        assert r.nranks == NPROCS and r.backend == "gloo"
        assert len(r.times_us) == ITERS and all(t > 0 for t in r.times_us)
        assert r.time_us == statistics.median(r.times_us)


def test_bandwidths_follow_nccl_tests_definitions(gloo_results):
    expected_factor = {"allreduce": 1.5, "allgather": 0.75, "reducescatter": 0.75, "broadcast": 1.0,
                       "sendrecv": 1.0}  # 2(n-1)/n, (n-1)/n, 1 for n = 4
    for r in gloo_results:
        algbw = r.query.size_bytes / (r.time_us * 1e-6) / 1e9  # 1 GB = 1e9 B
        assert r.algbw_gbytes_per_s == pytest.approx(algbw, rel=1e-12)
        assert busbw_factor(r.query.coll, NPROCS) == expected_factor[r.query.coll]
        assert r.busbw_gbytes_per_s == pytest.approx(algbw * expected_factor[r.query.coll], rel=1e-12)


def test_gloo_says_nccl_config_was_not_applied(gloo_results):
    for r in gloo_results:
        assert r.config_applied is False
        assert "gloo" in r.note and "not applied" in r.note
    # The note names the torch call used, e.g. the single-tensor or list reduce-scatter.
    assert "reduce_scatter" in gloo_results[2].note and "batch_isend_irecv" in gloo_results[4].note


def test_format_results_is_an_nccl_tests_table(gloo_results):
    table = format_results(gloo_results)
    lines = table.splitlines()
    assert all(line.startswith("#") for line in lines[:2])
    columns = next(line for line in lines if "busbw" in line)
    for column in ("size", "count", "type", "redop", "time", "algbw", "busbw", "algo", "proto", "channels"):
        assert column in columns
    assert any("not applied" in line for line in lines if line.startswith("#"))
    rows = [line.split() for line in lines if not line.startswith("#")]
    assert len(rows) == len(QUERIES)
    assert rows[0][:4] == ["1024", "256", "fp32", "sum"]
    assert rows[1][:4] == ["4096", "256", "fp32", "none"]  # allgather: count per rank (4 ranks)
    assert rows[5][:4] == ["262144", "131072", "bf16", "sum"]
    assert rows[-1][-3:] == ["ring", "ll", "2"]
    for row, result in zip(rows, gloo_results):
        assert float(row[4]) == pytest.approx(result.time_us, abs=0.01)
        assert float(row[6]) == pytest.approx(result.busbw_gbytes_per_s, abs=0.01)


@pytest.mark.parametrize("query, field, words", [
    (LiveQuery("allscatter", 1024), "coll", "unknown collective"),
    (LiveQuery("allreduce", 0), "size_bytes", "positive"),
    (LiveQuery("allreduce", 1026), "size_bytes", "whole number"),
    (LiveQuery("allgather", 1000), "size_bytes", "multiple of 4 ranks x 4 B = 16 B"),
    (LiveQuery("alltoall", 24, dtype="fp64"), "size_bytes", "32 B"),
    (LiveQuery("allreduce", 1024, dtype="float13"), "dtype", "unknown dtype"),
    (LiveQuery("allreduce", 1024, dtype="uint32"), "dtype", "no gloo collectives"),
    (LiveQuery("allreduce", 1024, dtype="fp8_e4m3"), "dtype", "no gloo collectives"),
    (LiveQuery("broadcast", 1024, algo=Algorithm.TREE), "algo", "cannot run broadcast"),
    (LiveQuery("allreduce", 1024, algo=Algorithm.NVLS, proto=Protocol.LL), "algo", "nvls/ll"),
    (LiveQuery("sendrecv", 1024, algo=Algorithm.RING), "algo", "point-to-point"),
    (LiveQuery("alltoall", 1024, proto=Protocol.SIMPLE), "proto", "point-to-point"),
    (LiveQuery("sendrecv", 1024, channels=4), "channels", "point-to-point"),
    (LiveQuery("allreduce", 1024, algo="bogus"), "algo", "unknown algorithm"),
    (LiveQuery("allreduce", 1024, channels=0), "channels", "1..64"),
    (LiveQuery("allreduce", 1024, channels=65), "channels", "1..64"),
])
def test_bad_query_raises_input_error_naming_index_and_field(query, field, words):
    model = LiveCostModel(nprocs=NPROCS, backend="gloo", timeout_s=5)
    start = time.monotonic()
    with pytest.raises(InputError) as info:
        model.measure([LiveQuery("allreduce", 1024), query])  # checked before any process starts
    assert info.value.field == f"queries[1].{field}"
    assert words in str(info.value)
    assert time.monotonic() - start < 2.0


def test_sendrecv_needs_two_ranks():
    with pytest.raises(InputError, match=r"queries\[0\]\.coll: sendrecv needs at least 2 ranks"):
        LiveCostModel(nprocs=1, backend="gloo").measure([LiveQuery("sendrecv", 1024)])


@pytest.mark.parametrize("kwargs, field", [
    (dict(nprocs=0), "nprocs"), (dict(iters=0), "iters"), (dict(warmup=-1), "warmup"),
    (dict(timeout_s=0), "timeout_s"), (dict(backend="mpi"), "backend"),
])
def test_bad_model_arguments(kwargs, field):
    with pytest.raises(InputError) as info:
        LiveCostModel(**kwargs)
    assert info.value.field == field


def test_nccl_without_enough_gpus_is_refused():
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() >= 64:
        pytest.skip("this machine has 64 GPUs")
    with pytest.raises(InputError, match="nccl needs 64 CUDA devices"):
        LiveCostModel(nprocs=64, backend="nccl")


def test_worker_failure_raises_with_its_output_instead_of_hanging():
    # 1 PiB per rank cannot be allocated (beyond a 47-bit address space): the workers die at the
    # second query, after the first ran; a rank still waiting on a dead peer must not hang us.
    # Two workers: the fewest with a peer to wait on (each one more is an interpreter importing torch).
    model = LiveCostModel(nprocs=2, backend="gloo", warmup=1, iters=2, timeout_s=120)
    start = time.monotonic()
    with pytest.raises(LiveMeasurementError) as info:
        model.measure([LiveQuery("allreduce", 1024), LiveQuery("allreduce", 2**50)])
    assert time.monotonic() - start < 60
    assert isinstance(info.value, DynamicclError)
    message = str(info.value)
    assert "exited with status" in message and "allocate" in message.splitlines()[0]


def test_a_dead_workers_summary_names_the_exception_not_the_teardown_noise():
    # As seen in CI: gloo's threads abort after the traceback, so the output's last line is noise.
    from dynamiccl.costmodel.live import cause_line

    tail = ("Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
            "RuntimeError: [enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: not enough "
            "memory: you tried to allocate 1125899906842624 bytes. Error code 12 (Cannot allocate memory)\n"
            "terminate called without an active exception\n")
    assert cause_line(tail).startswith("RuntimeError:") and "allocate" in cause_line(tail)
    assert cause_line("warming up\nSegmentation fault\n") == "Segmentation fault"
    assert cause_line("") == "(no output)"


def test_timeout_kills_the_workers_and_raises():
    model = LiveCostModel(nprocs=NPROCS, backend="gloo", warmup=1, iters=2, timeout_s=0.5)
    start = time.monotonic()
    with pytest.raises(LiveMeasurementError, match="ran past timeout_s=0.5"):
        model.measure([LiveQuery("allreduce", 1024)])
    assert time.monotonic() - start < 10
