"""Live capture on real gloo processes: the explicit API, zero-code mode, merge errors, fail-open."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dynamiccl.errors import InputError
from dynamiccl.profiler.merge import group_kind, merge_capture
from dynamiccl.trace.store import Trace

# release_groups_before_exit: the jobs below drop what holds their gloo groups (a DDP model, a
# group) before the interpreter shuts down. A gloo group destroyed during finalization can abort
# the process from its worker threads (pytorch/pytorch PR #179291); CI saw it once in these jobs.
JOB = textwrap.dedent("""
    import gc, sys, torch, torch.distributed as dist
    import torch.distributed._functional_collectives as fc
    from dynamiccl.profiler.capture import capture
    dist.init_process_group("gloo")
    r, n = dist.get_rank(), dist.get_world_size()
    tp = dist.new_group([0, 1], group_desc="TENSOR_MODEL_PARALLEL_GROUP")
    with capture(sys.argv[1], mode=sys.argv[2]) as cap:
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(32, 32))
        dist.barrier()
        for _ in range(2):
            with cap.step():
                y = model(torch.randn(4, 32))
                dist.all_reduce(y.detach(), group=tp)                                  # 4*32*4 = 512 B
                out = torch.empty(8, 32, dtype=torch.bfloat16)
                dist.all_gather_into_tensor(out, torch.ones(4, 32, dtype=torch.bfloat16), group=tp)  # 512 B
                rs = torch.empty(2, 32)
                dist.reduce_scatter_tensor(rs, torch.ones(4, 32), group=tp)          # full input 512 B
                dist.broadcast(torch.ones(10), src=1)                                 # root 1, 40 B
                a2a = torch.empty(8)
                dist.all_to_all_single(a2a, torch.ones(8))                            # 32 B
                peer = 1 - r
                ops = [dist.P2POp(dist.isend, torch.ones(6), peer), dist.P2POp(dist.irecv, torch.empty(6), peer)]
                for w in dist.batch_isend_irecv(ops):
                    w.wait()
                y.sum().backward()                                                   # DDP bucket: 32*33*4 B
                fc.all_reduce(torch.ones(16), "sum", tp).wait()                       # functional, 64 B
    dist.destroy_process_group()
    del model, tp, y  # RELEASE: see release_groups_before_exit
    gc.collect()
""")


def torchrun(tmp_path: Path, script: str, *args: str, env: dict | None = None, nprocs: int = 2):
    path = tmp_path / "job.py"
    path.write_text(script)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nprocs}",
                           "--standalone", str(path), *args], capture_output=True, text=True, timeout=180,
                          env={**os.environ, **(env or {})}, cwd=tmp_path)


@pytest.fixture(scope="module", params=["api", "dispatch"])
def captured(request, tmp_path_factory):
    """The same job recorded by each capture mode: every test below must hold for both."""
    tmp = tmp_path_factory.mktemp(f"capture-{request.param}")
    done = torchrun(tmp, JOB, str(tmp / "out"), request.param)
    assert done.returncode == 0, done.stderr[-3000:]
    return merge_capture(tmp / "out")


def comm(trace: Trace, rank: int, step: int):
    df = trace.ops
    return df[(df["rank"] == rank) & (df["step"] == step) & (df["kind"] != "compute")]


def test_every_op_is_recorded_with_bytes_group_and_peer(captured):
    captured.validate()
    ops = comm(captured, 0, 1)
    rows = [(o.op, o.group_kind, int(o.bytes_total)) for o in ops.itertuples()]
    assert rows[:5] == [("allreduce", "tp", 512), ("allgather", "tp", 512), ("reducescatter", "tp", 512),
                        ("broadcast", "world", 40), ("alltoall", "world", 32)]
    assert [(o.op, int(o.peer)) for o in ops.itertuples()][5:7] == [("send", 1), ("recv", 1)]
    assert int(ops.iloc[5]["nccl_group"]) == int(ops.iloc[6]["nccl_group"]) >= 0  # one batch_isend_irecv
    assert int(ops.iloc[3]["peer"]) == 1  # broadcast root, global rank
    assert ops.iloc[1]["dtype"] == "bf16"
    ddp = ops.iloc[7]
    assert (ddp.op, ddp.phase, int(ddp.bytes_total)) == ("allreduce", "backward", 32 * 33 * 4)
    functional = ops.iloc[8]
    assert (functional.op, functional.group_kind, int(functional.bytes_total), functional.label) == \
        ("allreduce", "tp", 64, "all_reduce")
    assert set(comm(captured, 1, 1)["op"]) == set(ops["op"])


def test_setup_traffic_and_steps(captured):
    setup = comm(captured, 0, 0)
    assert set(setup["phase"]) == {"setup"}
    assert "broadcast" in set(setup["op"])  # DDP's parameter broadcast at construction
    assert "barrier" in set(setup["label"])
    assert sorted(captured.ops["step"].unique()) == [0, 1, 2]
    compute = captured.ops[(captured.ops["kind"] == "compute") & (captured.ops["step"] == 1)]
    assert (compute["duration_us"] > 0).all() and len(compute) >= 1


def test_measured_timestamps_are_ordered(captured):
    ops = captured.ops[(captured.ops["rank"] == 0) & (captured.ops["step"] == 1)]
    assert ops["start_us"].notna().all()
    assert (ops["end_us"] >= ops["start_us"]).all()
    assert ops["start_us"].is_monotonic_increasing


PLAIN = textwrap.dedent("""
    import gc, torch, torch.distributed as dist
    dist.init_process_group("gloo")
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(16, 16))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        model(torch.randn(4, 16)).sum().backward()
        opt.step()
        opt.zero_grad()
    dist.destroy_process_group()
    del model, opt  # RELEASE: see release_groups_before_exit
    gc.collect()
""")


def test_profile_fails_open_when_capture_cannot_be_written(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    done = torchrun(tmp_path, PLAIN, env={"DYNAMICCL_PROFILE_DIR": str(blocker / "capture"),
                                          "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] /
                                                                             "dynamiccl" / "profiler" / "autostart"),
                                                                         os.environ.get("PYTHONPATH", "")])})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "dynamiccl: could not write the capture" in done.stderr


FIVE_STEPS = textwrap.dedent("""
    import gc, torch, torch.distributed as dist
    dist.init_process_group("gloo")
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(16, 16))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(5):
        loss = model(torch.randn(4, 16)).sum()
        loss.backward()
        opt.step()
        opt.zero_grad()
    dist.all_reduce(loss.detach())  # a loss report after the last optimizer step: no training step
    dist.destroy_process_group()
    del model, opt, loss  # RELEASE: see release_groups_before_exit
    gc.collect()
""")


def dynamiccl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dynamiccl", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def five_steps(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """``dynamiccl profile`` (zero-code: the job has no dynamiccl line) of a 2-rank gloo DDP job of 5
    optimizer steps under torchrun: (the run, its trace)."""
    tmp = tmp_path_factory.mktemp("five-steps")
    (tmp / "job.py").write_text(FIVE_STEPS)
    done = dynamiccl("profile", "-o", str(tmp / "prof"), "--", sys.executable, "-m", "torch.distributed.run",
                     "--nproc-per-node=2", "--standalone", str(tmp / "job.py"), cwd=tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    return done, tmp / "prof" / "trace.parquet"


def test_profile_counts_only_complete_steps(five_steps):
    from dynamiccl.profiler.merge import training_steps

    done, path = five_steps
    trace = Trace.read(path)
    assert sorted(trace.ops["step"].unique()) == [0, 1, 2, 3, 4, 5] and training_steps(trace) == 5
    assert done.stdout.splitlines()[-1] == f"wrote {path} (5 training step(s) after setup)"
    assert "rank 0, step 5: communication" in done.stdout  # the summary is of the last complete step
    for step in range(1, 6):  # DDP's bucket, in the backward pass, nothing else
        ops = comm(trace, 0, step)
        assert list(ops["bytes_total"]) == [16 * 17 * 4] and list(ops["phase"]) == ["backward"]
    setup = comm(trace, 0, 0)
    assert list(setup["op"])[-1] == "allreduce" and int(setup["bytes_total"].iloc[-1]) == 4  # the loss report
    assert set(setup["phase"]) == {"setup"}
    # No compute in step 0 stands for the training that ran between setup and the loss report.
    training_us = float(trace.ops[trace.ops["step"] >= 1]["duration_us"].sum())
    assert float(trace.ops[trace.ops["step"] == 0]["duration_us"].fillna(0).sum()) < training_us


@pytest.mark.parametrize("command", ["summary", "check"])
def test_trace_summary_and_check_default_to_the_first_training_step(five_steps, command):
    _, path = five_steps
    done = dynamiccl("trace", command, str(path), cwd=path.parent)
    assert done.returncode == 0, done.stderr
    assert "step 1: the first full training step (--step N for another)" in done.stdout
    if command == "summary":
        assert "rank 0, step 1: communication" in done.stdout
        assert "world  allreduce            1     1.06K" in done.stdout  # step 1's DDP bucket, not setup's
    else:
        assert "cross-rank checks on 1 group(s)" in done.stdout and "replay: 6 of 6 ops complete" in done.stdout


JOB_THAT_EXITS = textwrap.dedent("""
    import json, os, sys, torch, torch.distributed as dist
    dist.init_process_group("gloo", init_method="file://" + sys.argv[1] + "/rendezvous", rank=0, world_size=1)
    dist.all_reduce(torch.ones(4))
    dist.destroy_process_group()
    with open(os.path.join(sys.argv[1], "ran.json"), "w") as f:
        json.dump({"DYNAMICCL_PROFILE_DIR": os.environ.get("DYNAMICCL_PROFILE_DIR")}, f)
    sys.exit(3)
""")


def test_profile_with_an_unwritable_output_runs_the_job_and_passes_its_status(tmp_path):
    (tmp_path / "job.py").write_text(JOB_THAT_EXITS)
    blocker = tmp_path / "a-file"  # a directory under a file cannot be made, not even by root
    blocker.write_text("")
    done = dynamiccl("profile", "-o", str(blocker / "prof"), "--", sys.executable, str(tmp_path / "job.py"),
                     str(tmp_path), cwd=tmp_path)
    assert done.returncode == 3, done.stderr[-3000:]
    assert json.loads((tmp_path / "ran.json").read_text()) == {"DYNAMICCL_PROFILE_DIR": None}  # ran, unprofiled
    ours = [line for line in done.stderr.splitlines() if line.startswith("dynamiccl")]
    assert ours == [f"dynamiccl profile: not profiling: cannot create {blocker / 'prof' / 'capture'}: Not a "
                    "directory; the command runs unprofiled"], done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_profile_passes_the_status_through_when_nothing_can_be_merged(tmp_path):
    quiet = [sys.executable, "-I", "-c", "import sys; sys.exit(5)"]  # -I: no autostart, so nothing recorded
    done = dynamiccl("profile", "-o", str(tmp_path / "prof"), "--", *quiet, cwd=tmp_path)
    assert done.returncode == 5, done.stderr
    ours = [line for line in done.stderr.splitlines() if line.startswith("dynamiccl")]
    assert ours[0] == "dynamiccl profile: the command exited with status 5; merging what was recorded"
    assert len(ours) == 2 and ours[1].startswith("dynamiccl profile: no trace: ") and "no capture files" in ours[1]


def write_rank(directory: Path, rank: int, **changes) -> None:
    doc = {"format": "dynamiccl-capture", "version": 1, "rank": rank, "world_size": 2, "groups":
           {"0": {"desc": "default_pg", "ranks": [0, 1]}},
           "ops": [{"op": "allreduce", "pg": "0", "bytes_total": 64, "dtype": "float32", "peer": -1, "start_ns": 0,
                    "end_ns": 1000, "step": 0, "async": False, "backward": False}]}
    doc.update(changes)
    directory.mkdir(exist_ok=True)
    (directory / f"rank{rank}.json").write_text(json.dumps(doc))


def test_merge_reports_bad_captures(tmp_path):
    with pytest.raises(InputError, match="no capture files"):
        merge_capture(tmp_path)
    write_rank(tmp_path, 0)
    with pytest.raises(InputError, match=r"missing for rank\(s\) \[1\]"):
        merge_capture(tmp_path)
    write_rank(tmp_path, 1, format="other")
    with pytest.raises(InputError, match="rank1.json: format"):
        merge_capture(tmp_path)
    write_rank(tmp_path, 1, ops=[{"op": "allreduce"}])
    with pytest.raises(InputError, match=r"rank1.json: ops\[0\].pg: missing"):
        merge_capture(tmp_path)
    (tmp_path / "rank1.json").write_text("{not json")
    with pytest.raises(InputError, match="rank1.json: not valid JSON"):
        merge_capture(tmp_path)
    write_rank(tmp_path, 1)
    assert len(merge_capture(tmp_path).ops) == 2


@pytest.mark.parametrize("desc, kind", [("TENSOR_MODEL_PARALLEL_GROUP", "tp"), ("DATA_PARALLEL_GROUP", "dp"),
                                        ("PIPELINE_MODEL_PARALLEL_GROUP", "pp"), ("EXPERT_DATA_PARALLEL_GROUP", "edp"),
                                        ("EXPERT_MODEL_PARALLEL_GROUP", "ep"), ("CONTEXT_PARALLEL_GROUP", "cp"),
                                        ("DATA_PARALLEL_GROUP_WITH_CP", "dp"), ("tp", "tp"), ("default_pg", "world"),
                                        ("EMBEDDING_GROUP", "embd"), ("", "unknown")])
def test_group_kinds_from_descriptions(desc, kind):
    assert group_kind(desc, 2, 4) == kind


def test_write_merged_trace_writes_beside_the_capture_and_counts_training_steps(tmp_path):
    from dynamiccl.profiler.merge import training_steps, write_merged_trace

    capture = tmp_path / "prof" / "capture"
    op = {"op": "allreduce", "pg": "0", "bytes_total": 64, "dtype": "float32", "peer": -1, "async": False,
          "backward": False}
    # Capture steps: -1 is setup (merged as step 0), then two training steps.
    ops = [{**op, "start_ns": 1000 * i, "end_ns": 1000 * i + 500, "step": step} for i, step in enumerate((-1, 0, 1))]
    capture.parent.mkdir()
    for rank in (0, 1):
        write_rank(capture, rank, ops=ops)
    out, trace = write_merged_trace(capture, description="job")
    assert out == tmp_path / "prof" / "trace.parquet"
    written = Trace.read(out)
    assert len(written.ops) == len(trace.ops) == 6 and written.meta.description == "job"
    assert training_steps(trace) == 2
