"""``dynamiccl measure`` (issue 16, items 2 and 5): the plan from a trace, placement, the rank-0
scheduler (budget, pruning), and two real runs on gloo under ``python -m torch.distributed.run``:
the compiled instrumented plugin is loaded in every worker, and every configuration goes through its
override exactly as under NCCL."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dynamiccl.cli import main
from dynamiccl.costmodel.measurements import load_measurements
from dynamiccl.errors import InputError
from dynamiccl.measure.plan import DEFAULT, Config, Shape, build_plan, configs_for, parse_budget, parse_channels, place
from dynamiccl.measure.schedule import END, MEASURE, MEASURE_GEMM, PRUNE_RATIO, SCREEN_REPS, Scheduler
from dynamiccl.nccl import OP_FUNC, Algorithm, Protocol, is_supported
from dynamiccl.trace.store import Trace

LAUNCHER = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node"]


@pytest.fixture(scope="module")
def tiny_trace(tmp_path_factory) -> Path:
    """gpt-tiny TP2 DP2 on one 8-GPU node: allreduce/allgather/reducescatter on 2 ranks, allreduce on 4."""
    path = tmp_path_factory.mktemp("trace") / "tiny.parquet"
    assert main(["generate", "--model", "gpt-tiny", "--tp", "2", "--pp", "1", "--dp", "2", "-o", str(path)]) == 0
    return path


# --- the plan ------------------------------------------------------------------------------------------

def test_plan_has_every_shape_and_band_the_trace_issues(tiny_trace):
    trace = Trace.read(tiny_trace)
    plan = build_plan(trace, str(tiny_trace), channels=(0, 4))
    colls = trace.communication_ops
    issued = {(op, int(n), int(k)) for op, n, k in zip(colls["op"], colls["group_size"], colls["group_nnodes"])}
    assert {(i.coll, i.shape.nranks, i.shape.nnodes) for i in plan.items} == issued
    assert set(plan.shapes) == {Shape(2, 1), Shape(4, 1)}
    bands = {(i.coll, i.shape, i.band) for i in plan.items}
    assert len(bands) == len(plan.items)  # one item per (collective, shape, size band)
    tp_allreduce = sorted(i.size_bytes for i in plan.items if i.coll == "allreduce" and i.shape == Shape(2, 1))
    assert tp_allreduce == [8, 128, 8192]  # the trace's sizes: 8 B (dp), 128 B and 8 KiB (tp)
    for item in plan.items:
        assert item.configs[0] == DEFAULT and len(set(item.configs)) == len(item.configs)
        forced = item.configs[1:]
        assert all(is_supported(OP_FUNC[item.coll], c.algo, c.proto) and c.channels in (0, 4) for c in forced)
        pairs = {(c.algo, c.proto) for c in forced}
        assert len(forced) == 2 * len(pairs)


def test_planned_configurations_are_the_ones_the_plugin_supports():
    from dynamiccl.launcher import resolve_plugin
    from dynamiccl.plugin.binding import InstrumentedTunerLibrary
    from dynamiccl.plugin.build import instrumented_beside

    library = InstrumentedTunerLibrary(instrumented_beside(resolve_plugin()))
    for coll in ("allreduce", "allgather", "reducescatter", "broadcast", "reduce"):
        planned = {(c.algo, c.proto) for c in configs_for(coll, (0,))[1:]}
        plugin = {(int(a), int(p)) for a in Algorithm for p in Protocol
                  if library.supported(int(OP_FUNC[coll]), int(a), int(p))}
        assert planned == plugin, coll
    assert configs_for("alltoall") == [DEFAULT]  # send/recv inside NCCL: nothing to force


def test_place_spans_the_shapes_nodes_or_says_why_not():
    two_nodes = [0, 0, 1, 1]
    assert place(Shape(2, 2), two_nodes) == (0, 2)
    assert place(Shape(4, 2), two_nodes) == (0, 1, 2, 3)
    assert place(Shape(2, 1), two_nodes) == (0, 1)
    assert "needs 8 ranks, the job has 4" in place(Shape(8, 1), two_nodes)
    assert "needs 4 ranks per node" in place(Shape(4, 1), two_nodes)
    assert "spans 2 nodes" in place(Shape(2, 2), [0, 0, 0, 0])


def test_budget_and_channel_arguments():
    assert [parse_budget(t) for t in ("90s", "10m", "1h", "45", "1.5m")] == [90, 600, 3600, 45, 90]
    for bad in ("", "0s", "10 minutes", "-5m"):
        with pytest.raises(InputError, match="--budget"):
            parse_budget(bad)
    assert parse_channels("nccl,2,8") == (0, 2, 8)
    for bad in ("65", "2,2", "x"):
        with pytest.raises(InputError, match="--channels"):
            parse_channels(bad)


def test_chunk_sizes_are_planned_and_refused_where_nccl_cannot_set_them_or_safety_forbids(tiny_trace):
    """`--chunks`: every collective item gets NCCL's own choice with each chunk size; an NCCL without
    tuner ABI v6 (or gloo) refuses them all with the reason; knobs.safety's refusals are never timed."""
    from dynamiccl.knobs.chunk import CHUNK_CHOICES_BYTES
    from dynamiccl.measure.plan import Item, Plan, chunk_refusals, chunks_refusal

    plan = build_plan(Trace.read(tiny_trace), str(tiny_trace), channels=(0,), chunks=CHUNK_CHOICES_BYTES)
    for item in plan.items:
        chunked = [c for c in item.configs if c.chunk_bytes]
        assert [c.chunk_bytes for c in chunked] == list(CHUNK_CHOICES_BYTES)
        assert all(c.algo == c.proto == -1 and c.channels == 0 and not c.is_default for c in chunked)
    assert Config(chunk_bytes=262144).label == "chunk256K"
    assert Plan.from_json(plan.to_json()).chunks == CHUNK_CHOICES_BYTES
    # whether the job's NCCL asks a tuner for a chunk size at all
    assert chunks_refusal("nccl", "2.30.3") is None and chunks_refusal("nccl", "2.31.2") is None
    assert "NCCL >= 2.30.3" in chunks_refusal("nccl", "2.28.3") and "2.28.3" in chunks_refusal("nccl", "2.28.3")
    assert "runs on gloo" in chunks_refusal("gloo", None)
    # nccl#2408: chunks >= 1 MiB on NCCL 2.31.2 over RoCE; a one-node communicator never crosses the network
    one, two = (Item("allreduce", shape, 1 << 24, "bf16", 24, 4, ("dp",), configs_for("allreduce", (0,),
                                                                                     CHUNK_CHOICES_BYTES))
                for shape in (Shape(8, 1), Shape(16, 2)))
    plan = Plan("t.parquet", [one, two], [], (0,), CHUNK_CHOICES_BYTES)
    mib = two.configs.index(Config(chunk_bytes=1 << 20))
    refused = chunk_refusals(plan, "2.31.2", "roce")
    assert list(refused) == [(1, mib)] and "nccl#2408" in refused[(1, mib)]
    assert chunk_refusals(plan, "2.31.2", None) == refused  # an unknown network: refused when in doubt
    assert chunk_refusals(plan, "2.31.2", "ib") == {} and chunk_refusals(plan, "2.30.3", "roce") == {}
    scheduler = Scheduler([len(one.configs), len(two.configs)], deadline=1e9, clock=Clock(), iters=3, warmup=0,
                          drop_unapplied=True, unavailable=refused)
    steps = drive(scheduler, lambda i, c: 10.0)
    assert (1, mib) not in {(s.item, s.config) for s in steps}  # never timed
    assert scheduler.states[1][mib].status == "unavailable" and "nccl#2408" in scheduler.states[1][mib].reason


def test_network_transport_reads_the_rdma_link_layers(tmp_path):
    from dynamiccl.measure.worker import network_transport

    assert network_transport(tmp_path) is None  # no RDMA device: sockets or unknown
    for device, layer in (("mlx5_0", "InfiniBand"), ("mlx5_1", "InfiniBand")):
        (tmp_path / device / "ports" / "1").mkdir(parents=True)
        (tmp_path / device / "ports" / "1" / "link_layer").write_text(layer + "\n")
    assert network_transport(tmp_path) == "ib"
    (tmp_path / "mlx5_1" / "ports" / "1" / "link_layer").write_text("Ethernet\n")
    assert network_transport(tmp_path) is None  # both kinds: unknown
    (tmp_path / "mlx5_0" / "ports" / "1" / "link_layer").write_text("Ethernet\n")
    assert network_transport(tmp_path) == "roce"


# --- the scheduler (rank 0's decisions) ----------------------------------------------------------------

class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def drive(scheduler: Scheduler, time_of, clock: Clock | None = None, step_s: float = 0.0, applied=lambda c: True):
    """Run a scheduler to its END with synthetic per-configuration times; returns the steps."""
    steps = []
    while (step := scheduler.next()).kind != END:
        steps.append(step)
        if clock is not None:
            clock.now += step_s
        scheduler.record([time_of(step.item, step.config)] * step.reps, applied(step.config))
        done, total = scheduler.progress()
        assert 0 <= done <= total
    assert scheduler.progress()[0] == scheduler.progress()[1]  # the bar ends full
    return steps


def test_clearly_slower_configurations_are_dropped_after_screening():
    times = {0: 100.0, 1: 100.0, 2: 100.0 * PRUNE_RATIO * 1.01, 3: 90.0}
    scheduler = Scheduler([4], deadline=1e9, clock=Clock(), iters=12, warmup=2, drop_unapplied=True)
    steps = drive(scheduler, lambda i, c: times[c])
    states = scheduler.states[0]
    assert [s.status for s in states] == ["done", "done", "pruned", "done"]
    assert len(states[2].times_us) == SCREEN_REPS and all(len(states[c].times_us) == 12 for c in (0, 1, 3))
    assert steps[0] == type(steps[0])(MEASURE, 0, 0, SCREEN_REPS, 2)  # NCCL's default first, with warm-up
    assert all(s.warmup <= 1 for s in steps[4:])  # refinement: one warm-up call per turn


def test_a_new_best_drops_earlier_configurations_but_never_the_default():
    times = {0: 300.0, 1: 200.0, 2: 100.0}
    scheduler = Scheduler([3], deadline=1e9, clock=Clock(), iters=6, warmup=0, drop_unapplied=True)
    drive(scheduler, lambda i, c: times[c])
    assert [s.status for s in scheduler.states[0]] == ["done", "pruned", "done"]
    assert "1.2 x best median 100.0 us" in scheduler.states[0][1].reason


def test_unapplied_configurations_are_dropped_under_nccl_only():
    for drop, expected in ((True, ["done", "not applied"]), (False, ["done", "done"])):
        scheduler = Scheduler([2], deadline=1e9, clock=Clock(), iters=4, warmup=0, drop_unapplied=drop)
        drive(scheduler, lambda i, c: 10.0, applied=lambda c: c == 0)
        assert [s.status for s in scheduler.states[0]] == expected


def test_the_budget_is_shared_out_and_stops_the_run():
    clock = Clock()
    scheduler = Scheduler([3, 3, 3, 3], deadline=100.0, iters=10**6, warmup=0, drop_unapplied=True, clock=clock,
                          skip_items={3: "needs 8 ranks, the job has 4"})
    steps = drive(scheduler, lambda i, c: 1.0, clock=clock, step_s=1.0)
    assert scheduler.stopped_by_budget and clock.now <= 100.0 + 1.0
    per_item = [sum(1 for s in steps if s.item == i) for i in range(4)]
    assert per_item[3] == 0 and all(abs(n - 33) <= 2 for n in per_item[:3])  # an equal share each
    assert all(s.status == "not placed" for s in scheduler.states[3])
    assert all(s.times_us for states in scheduler.states[:3] for s in states)  # every config reached


def test_with_gemm_times_the_default_and_the_survivors_beside_a_gemm():
    times = {0: 100.0, 1: 500.0, 2: 95.0}
    scheduler = Scheduler([3], deadline=1e9, clock=Clock(), iters=4, warmup=1, drop_unapplied=True, with_gemm=True)
    steps = drive(scheduler, lambda i, c: times[c])
    assert sorted(s.config for s in steps if s.kind == MEASURE_GEMM) == [0, 2]
    assert [len(s.gemm_times_us) for s in scheduler.states[0]] == [4, 0, 4]


# --- real runs on gloo ---------------------------------------------------------------------------------

def run_measure(trace: Path, out: Path, nprocs: int, *extra: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "dynamiccl", "measure", "--trace", str(trace), "-o",
                           str(out / "m.csv"), "--json", str(out / "m.json"), *extra, "--", *LAUNCHER, str(nprocs)],
                          capture_output=True, text=True, timeout=300)
    return done, time.monotonic() - start


@pytest.fixture(scope="module")
def full_run(tiny_trace, tmp_path_factory):
    """4 ranks, both shapes, a GEMM beside: runs to the end of its plan."""
    out = tmp_path_factory.mktemp("full")
    done, _ = run_measure(tiny_trace, out, 4, "--channels", "0", "--iters", "4", "--warmup", "1",
                          "--with-gemm", "--budget", "5m", "--system", "test box")
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done, json.loads((out / "m.json").read_text())


def test_every_process_had_each_configuration_set_in_turn_and_cleared_at_the_end(full_run):
    _, _, report = full_run
    results = report["results"]
    plan_items = report["plan"]["items"]
    assert results["backend"] == "gloo" and results["placements"] == {"2x1": [0, 1], "4x1": [0, 1, 2, 3]}
    seen = set()
    for entry in results["steps"]:
        kind, i, c = entry["step"][:3]
        config = Config(**plan_items[i]["configs"][c])
        shape = plan_items[i]["shape"]
        assert len(entry["members"]) == shape["nranks"] == len(entry["ranks"])
        for member in entry["members"]:
            if config.is_default:
                assert member["probe_source"] == "nccl" and member["probe_channels"] == 0
            else:  # what the plugin's getCollInfo answers in that process while the override is set
                assert member["probe_source"] == "override"
                assert (member["probe_algorithm"], member["probe_protocol"]) == (config.algo, config.proto)
                assert member["probe_channels"] == config.channels  # 0: NCCL's own count
            assert member["plugin_calls"] == 0  # gloo: NCCL never asked the plugin
        assert entry["applied"] is config.is_default
        seen.add((i, c))
    assert seen == {(i, c) for i, item in enumerate(plan_items) for c in range(len(item["configs"]))}
    assert len(results["after_end"]) == 4 and all(p["source"] == "nccl" for p in results["after_end"])
    assert not results["stopped_by_budget"]


def test_rows_are_nccl_default_only_on_gloo_and_calibrate_reads_them(full_run):
    out, done, report = full_run
    tables = load_measurements(out / "m.csv")
    items = report["plan"]["items"]
    plain = [t for t in tables if not t.table.endswith("-gemm")]
    assert {(t.coll, t.nranks, t.nodes) for t in plain} == {(i["coll"], i["shape"]["nranks"], i["shape"]["nnodes"])
                                                             for i in items}
    assert all(t.algo == -1 and t.proto == -1 and t.channels == 0 for t in tables)
    assert all("gloo on CPU; test box" in t.system and t.nccl_version == "" for t in tables)
    for t in plain:  # the median of the slowest rank's repetitions, as the JSON has them
        i = next(k for k, it in enumerate(items) if (it["coll"], it["shape"]["nranks"]) == (t.coll, t.nranks)
                 and it["size_bytes"] == t.size_bytes[0])
        assert t.time_us[0] == pytest.approx(statistics.median(report["results"]["items"][i]["configs"][0]["times_us"]),
                                             abs=1e-3)
    assert "gloo: NCCL is not involved" in done.stderr and "override after the run: cleared on every rank" in done.stderr
    assert "# dynamiccl measure: allreduce, 4 ranks on 1 node(s)" in done.stdout and "busbw" in done.stdout


def test_rank_zeros_decisions_replay_exactly_from_the_logged_times(full_run):
    """The run's steps are the scheduler's decisions on the times it was given: replaying the logged
    times through a fresh Scheduler gives the same steps, the same pruned configurations and reasons."""
    from dynamiccl.measure.schedule import Step

    _, _, report = full_run
    results = report["results"]
    replay = Scheduler([len(i["configs"]) for i in report["plan"]["items"]], deadline=float("inf"), iters=4,
                       warmup=1, drop_unapplied=False, with_gemm=True, clock=Clock())
    for entry in results["steps"]:
        assert replay.next() == Step.decode(entry["step"])
        replay.record(entry["times_us"], entry["applied"])
    assert replay.next().kind == END
    pruned = 0
    for states, item in zip(replay.states, results["items"]):
        assert [(s.status, s.reason) for s in states] == [(c["status"], c["reason"]) for c in item["configs"]]
        for s in states:
            if s.status == "pruned":
                pruned += 1
                assert len(s.times_us) >= SCREEN_REPS and f"> {PRUNE_RATIO} x best median" in s.reason
                assert min(s.times_us) > PRUNE_RATIO * float(s.reason.split("best median ")[1].split()[0]) - 0.1
        assert item["configs"][0]["status"] == "done" and len(item["configs"][0]["times_us"]) == 4
    assert pruned == sum(c["status"] == "pruned" for i in results["items"] for c in i["configs"])


def test_with_gemm_rows_have_their_own_table_and_the_gemm_slowdown(full_run):
    from dynamiccl.measure.plan import Plan
    from dynamiccl.measure.run import gemm_slowdowns

    out, done, report = full_run
    gemm = [t for t in load_measurements(out / "m.csv") if t.table.endswith("-gemm")]
    assert sum(len(t.size_bytes) for t in gemm) == len(report["plan"]["items"])  # every item's default
    assert all("GEMM in a thread beside" in t.how for t in gemm)
    slowdowns = gemm_slowdowns(Plan.from_json(report["plan"]), report["results"])
    assert slowdowns and all(s["gemm_slowdown"] > 0 and s["collective_beside_gemm_us"] > 0 for s in slowdowns)
    assert report["gemm_slowdowns"] == slowdowns and "GEMM beside allreduce 4x1 4 B default" in done.stderr


def test_a_budget_stops_the_run_on_time_and_a_shape_too_big_is_reported(tiny_trace, tmp_path):
    budget_s = 14
    done, elapsed = run_measure(tiny_trace, tmp_path, 2, "--channels", "0", "--iters", "100000", "--warmup", "0",
                                "--budget", f"{budget_s}s")
    assert done.returncode == 0, done.stderr[-3000:]
    assert elapsed < budget_s + 8  # the job's teardown and Python's start beyond the budget's reserve
    report = json.loads((tmp_path / "m.json").read_text())
    results = report["results"]
    assert results["stopped_by_budget"] and "stopped by the budget" in done.stderr
    assert results["placements"]["4x1"] == "needs 4 ranks, the job has 2"
    assert "shape 4x1 skipped: needs 4 ranks, the job has 2" in done.stderr
    for item, plan_item in zip(results["items"], report["plan"]["items"]):
        if plan_item["shape"]["nranks"] == 4:
            assert {s["status"] for s in item["configs"]} == {"not placed"}
        else:
            assert item["configs"][0]["times_us"]  # every placed item got NCCL's default timed
    rows = sum(len(t.size_bytes) for t in load_measurements(tmp_path / "m.csv"))
    assert rows == sum(1 for i in report["plan"]["items"] if i["shape"]["nranks"] == 2)


def test_a_failing_job_is_reported_with_the_reason(tiny_trace, tmp_path):
    done = subprocess.run([sys.executable, "-m", "dynamiccl", "measure", "--trace", str(tiny_trace), "-o",
                           str(tmp_path / "m.csv"), "--", sys.executable], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "the job exited with status 1: RuntimeError: no RANK/WORLD_SIZE (torchrun) or SLURM_PROCID" in done.stderr
    assert not (tmp_path / "m.csv").exists() and not list(tmp_path.glob(".dynamiccl-measure-*"))


def test_chunks_are_refused_on_gloo_with_the_reason(tiny_trace, tmp_path, capsys):
    """Asked of gloo, before anything runs; found by the workers (auto backend on this CPU machine),
    after they start and before anything is timed. Nothing is written either way."""
    assert main(["measure", "--trace", str(tiny_trace), "-o", str(tmp_path / "m.csv"), "--chunks", "--backend",
                 "gloo", "--", *LAUNCHER, "2"]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "--chunks: chunk sizes need NCCL >= 2.30.3 (tuner ABI v6 getChunkSize); the job runs on gloo, where no NCCL "
        "runs, so there is no chunk size to set")
    # One rank started directly (as torchrun would set it up): the workers' own check, without a launcher's cost.
    import os
    import socket

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    one_rank = {**os.environ, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port)}
    done = subprocess.run([sys.executable, "-m", "dynamiccl", "measure", "--trace", str(tiny_trace), "-o",
                           str(tmp_path / "m.csv"), "--chunks", "--budget", "2m", "--", sys.executable],
                          capture_output=True, text=True, timeout=300, env=one_rank)
    assert done.returncode == 2, done.stderr[-3000:]
    assert ("--chunks: chunk sizes need NCCL >= 2.30.3 (tuner ABI v6 getChunkSize); the job runs on gloo"
            in done.stderr.splitlines()[-1])
    assert not (tmp_path / "m.csv").exists() and not list(tmp_path.glob(".dynamiccl-measure-*"))


# --- the NCCL side of the bookkeeping, without a GPU ----------------------------------------------------

def member(calls_made: int, overridden: int, refused: int = 0, chunk_set: int = 0) -> list[float]:
    # probe (ring/simple/ch 0, override, chunk), plugin calls, overridden, refused, getChunkSize calls and
    # chunks set, the cell the plugin recorded (ring/simple), calls made, no GEMM
    return [1, 2, 0, 2, 65536, overridden + refused, overridden, refused, calls_made, chunk_set, 1, 2, calls_made,
            float("nan")]


def test_a_forced_configuration_counts_as_applied_only_if_nccl_took_it_on_every_call_of_every_rank():
    from dynamiccl.measure.worker import STEP_FIELDS, applied_on_every_rank

    assert len(member(1, 1)) == len(STEP_FIELDS)
    ring = Config(int(Algorithm.RING), int(Protocol.SIMPLE))
    assert applied_on_every_rank("nccl", ring, [member(9, 9), member(9, 9)])
    assert not applied_on_every_rank("nccl", ring, [member(9, 9), member(9, 8)])  # one call decided by NCCL
    assert not applied_on_every_rank("nccl", ring, [member(9, 0, refused=9)] * 2)  # NCCL disabled the cell
    assert not applied_on_every_rank("nccl", ring, [member(9, 0)] * 2)  # the plugin was never asked
    assert not applied_on_every_rank("gloo", ring, [member(9, 9)] * 2)
    assert applied_on_every_rank("gloo", DEFAULT, [member(9, 0)] * 2)  # NCCL's default: nothing to apply
    chunk = Config(chunk_bytes=65536)  # getChunkSize must have given the chunk on every call too
    assert applied_on_every_rank("nccl", chunk, [member(9, 9, chunk_set=9)] * 2)
    assert not applied_on_every_rank("nccl", chunk, [member(9, 9, chunk_set=9), member(9, 9, chunk_set=3)])
    assert not applied_on_every_rank("nccl", chunk, [member(9, 9)] * 2)  # NCCL never asked for a chunk


def test_the_cell_nccl_ran_is_kept_only_where_every_member_of_every_applied_step_agrees():
    from dynamiccl.measure.worker import ran_cells

    def entry(item, config, applied, *cells):
        return {"step": [1, item, config, 3, 0], "applied": applied,
                "members": [{"ran_algorithm": a, "ran_protocol": p} for a, p in cells]}

    log = [entry(0, 5, True, (1, 2), (1, 2)), entry(0, 5, True, (1, 2), (1, 2)),  # ring/simple throughout
           entry(0, 6, True, (1, 2), (0, 2)),  # members disagree: unknown
           entry(0, 7, False, (1, 2), (1, 2)),  # not applied: nothing to say
           entry(1, 5, True, (-1, -1), (-1, -1))]  # no decision recorded
    assert ran_cells(log) == {(0, 5): [1, 2]}


def test_nccl_rows_carry_forced_configurations_and_channels_and_never_unapplied_ones(tmp_path):
    from dynamiccl.costmodel.measurements import write_measurements
    from dynamiccl.measure.plan import Item, Plan
    from dynamiccl.measure.run import measurement_rows

    ring_ll_8, nvls = Config(int(Algorithm.RING), int(Protocol.LL), 8), Config(int(Algorithm.NVLS), int(Protocol.SIMPLE), 0)
    item = Item("allreduce", Shape(16, 2), 1 << 20, "bf16", 20, 5, ("dp",),
                [DEFAULT, ring_ll_8, nvls, Config(chunk_bytes=262144), Config(chunk_bytes=524288)])
    plan = Plan("t.parquet", [item], [], (0, 8))
    state = lambda applied, t, status="done": {"status": status, "reason": "", "applied": applied,  # noqa: E731
                                               "times_us": t, "gemm_times_us": []}
    for version, expected_cell in (("2.21.5", "2.21.5"), ("2.99.1", "unknown (measured with NCCL 2.99.1, "
                                                                     "outside the modelled range)")):
        results = {"backend": "nccl", "nccl_version": version, "device": "NVIDIA H100 80GB HBM3", "warmup": 5,
                   "items": [{"configs": [state(True, [30.0, 10.0, 20.0]), state(True, [8.0]),
                                          state(False, [50.0], "not applied"),
                                          {**state(True, [12.0]), "ran": [int(Algorithm.RING), int(Protocol.SIMPLE)]},
                                          state(True, [13.0])]}], "gemm": None}
        rows, not_written = measurement_rows(plan, results, "IB", "RUN")
        assert [(r["algo"], r["proto"], r["channels"], r["chunk_bytes"]) for r in rows] == \
            [("default", "default", 0, 0), ("ring", "ll", 8, 0), ("ring", "simple", 0, 262144),
             ("default", "default", 0, 524288)]  # the cell NCCL chose, where the plugin recorded one
        assert rows[2]["table"] == "measure-RUN-allreduce-16x2-chunk256K" and "262144 B chunk set" in rows[2]["how"]
        assert "NCCL chose ring/simple on every call" in rows[2]["how"]
        assert rows[0]["time_us"] == 20.0 and rows[0]["gpus_per_node"] == 8 and rows[0]["nodes"] == 2
        assert rows[1]["table"] == "measure-RUN-allreduce-16x2-ring-ll-ch8"
        assert rows[0]["system"] == f"NVIDIA H100 80GB HBM3, 8 per node x 2 node(s), NCCL {version}; IB"
        assert rows[0]["nccl_version"] == expected_cell and "nvls/simple" in not_written[0]
        write_measurements(tmp_path / "m.csv", rows)
        tables = load_measurements(tmp_path / "m.csv")  # the calibration reader takes both
        assert [(t.algo, t.proto, t.channels, t.chunk_bytes, t.nranks) for t in tables] == \
            [(-1, -1, 0, 0, 16), (1, 0, 8, 0, 16), (1, 2, 0, 262144, 16), (-1, -1, 0, 524288, 16)]


def test_ctrl_c_or_sigterm_stops_the_job_and_leaves_nothing_behind(tiny_trace, tmp_path):
    import os
    import signal

    command = subprocess.Popen([sys.executable, "-m", "dynamiccl", "measure", "--trace", str(tiny_trace), "-o",
                                str(tmp_path / "m.csv"), "--iters", "100000", "--budget", "5m", "--", *LAUNCHER, "2"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".dynamiccl-measure-*/progress.json")):  # the ranks are timing
        assert time.monotonic() < deadline and command.poll() is None
        time.sleep(0.2)
    work = next(tmp_path.glob(".dynamiccl-measure-*"))
    command.send_signal(signal.SIGTERM)
    _, err = command.communicate(timeout=60)
    assert command.returncode == 128 + signal.SIGTERM and "terminated (SIGTERM)" in err
    assert not work.exists() and not (tmp_path / "m.csv").exists()
    ranks = [pid for pid in os.listdir("/proc") if pid.isdigit() and str(work).encode() in _cmdline(pid)]
    assert ranks == []  # the launcher and its ranks are gone with the command


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
