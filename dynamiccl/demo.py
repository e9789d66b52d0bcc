"""``dynamiccl demo``: the main job end to end on a built-in default.

Today: generate a realistic 3D-parallel training step (Llama-3 8B, TP2 PP2 DP2 with sequence
parallelism, on one 8-GPU H100 node), write it as a trace, read it back, check that its ranks fit
together, and summarise what it communicates. Later stages (cost model, policy, export, report)
join here as they land.
"""

from __future__ import annotations

from pathlib import Path

from dynamiccl.gpus import gpu_spec
from dynamiccl.trace.consistency import check_consistency
from dynamiccl.trace.store import Trace
from dynamiccl.trace.summary import render_text
from dynamiccl.workload.context import ComputeRate
from dynamiccl.workload.generator import generate
from dynamiccl.workload.layout import ParallelLayout
from dynamiccl.workload.models import load_model

DEMO_MODEL = "llama3-8b"
DEMO_LAYOUT = ParallelLayout(tp=2, pp=2, dp=2, sp=True, global_batch=16, dp_mode="distopt", gpus_per_node=8)
DEMO_GPU = "H100-SXM"
DEMO_EFFICIENCY = 0.45


def run_demo(out_dir: Path) -> int:
    """Run the demo, writing its files under ``out_dir``; returns the process exit status."""
    model = load_model(DEMO_MODEL)
    gpu = gpu_spec(DEMO_GPU)
    rate = ComputeRate(gpu.name, gpu.peak_bf16_tflops, DEMO_EFFICIENCY, gpu.hbm_gbytes_per_s)
    print(f"[1/3] generating one training step: {model.name}, {DEMO_LAYOUT.describe()}, on {gpu.name}")
    trace = generate(model, DEMO_LAYOUT, rate, all_ranks=True,
                     command="dynamiccl generate --model llama3-8b --tp 2 --pp 2 --dp 2 --sp --global-batch 16 "
                             "--all-ranks")
    path = out_dir / "llama3-8b_tp2-pp2-dp2-sp.parquet"
    trace.write(path)
    trace = Trace.read(path)
    print(f"      wrote {path} ({path.stat().st_size / 1e6:.2f} MB, {len(trace.ops)} ops on {len(trace.ranks)} ranks)")
    print("[2/3] checking that the ranks' steps fit together (matching collectives, sends, no deadlock)")
    report = check_consistency(trace)
    print(f"      {len(report.checked_groups)} process groups checked; "
          f"{report.completed_ops}/{report.total_ops} ops complete in replay: {'OK' if report.ok else 'FAILED'}")
    for problem in report.problems:
        print(f"      problem: {problem}")
    print("[3/3] summary (same as `dynamiccl trace summary " + str(path) + "`)\n")
    print(render_text(trace, str(path)))
    return 0 if report.ok else 1
