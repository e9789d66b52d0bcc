"""Generated steps fit together across ranks and replay to the end (no hang), for many layouts;
and the checker catches traces that would hang or corrupt."""

from __future__ import annotations

import numpy as np
import pytest

from dynamiccl.trace.consistency import check_consistency
from dynamiccl.trace.store import Trace
from dynamiccl.workload.context import ComputeRate
from dynamiccl.workload.generator import generate
from dynamiccl.workload.layout import ParallelLayout
from dynamiccl.workload.models import ModelConfig, MoEConfig, load_model

RATE = ComputeRate("H100-SXM", 989.4, 0.45, 3350.0)
TOY = ModelConfig(name="toy", num_layers=8, hidden_size=256, ffn_hidden_size=1024, num_attention_heads=8,
                  num_kv_heads=4, vocab_size=1024, seq_length=256, global_batch=8)
TOY_MOE = ModelConfig(name="toy-moe", num_layers=4, hidden_size=256, ffn_hidden_size=1024, num_attention_heads=8,
                      vocab_size=1024, seq_length=256, global_batch=8,
                      moe=MoEConfig(num_experts=8, top_k=2, expert_ffn_hidden_size=512,
                                    shared_expert_ffn_hidden_size=256))

LAYOUTS = [
    (TOY, dict(tp=2, pp=2, dp=2, sp=True)),
    (TOY, dict(tp=2, pp=2, dp=2, dp_mode="ddp")),
    (TOY, dict(pp=4, dp=2, vpp=2, global_batch=16, dp_mode="megatron")),
    (TOY, dict(pp=4, vpp=2, global_batch=4)),  # m == p: all warm-up
    (TOY, dict(pp=2, vpp=4, global_batch=6, dp=1)),
    (TOY, dict(tp=2, pp=2, cp=2, sp=True, global_batch=4)),
    (TOY, dict(pp=2, dp=2, dp_mode="fsdp", overlap_grad_reduce=False)),
    (TOY, dict(dp=4, dp_mode="fsdp", reshard_after_forward=False)),
    (TOY, dict(tp=2, pp=2, dp=2, dp_mode="distopt", overlap_grad_reduce=False)),
    (TOY_MOE, dict(pp=2, dp=4, ep=4)),
    (TOY_MOE, dict(tp=2, dp=4, ep=4, sp=True)),
    (TOY_MOE, dict(tp=2, dp=4, ep=8, etp=1, sp=True)),
]


@pytest.mark.parametrize("model,layout", LAYOUTS, ids=[str(layout) for _, layout in LAYOUTS])
def test_every_rank_generated_fits_together(model, layout):
    layout = {"global_batch": 8, **layout}
    trace = generate(model, ParallelLayout(**layout), RATE, all_ranks=True, progress=False)
    report = check_consistency(trace)
    assert report.ok, report.problems
    assert not report.skipped_groups
    assert report.completed_ops == report.total_ops == len(trace.ops)


def test_representative_trace_checks_the_pipeline_it_holds():
    trace = generate(load_model("llama3-8b"), ParallelLayout(tp=2, pp=4, dp=2, global_batch=8), RATE,
                     progress=False)
    report = check_consistency(trace)
    assert report.ok, report.problems
    assert "pp.0" in report.checked_groups and report.skipped_groups  # tp/dp peers are not in the file


@pytest.fixture()
def small_trace():
    return generate(TOY, ParallelLayout(tp=2, pp=2, dp=1, global_batch=2), RATE, all_ranks=True, progress=False)


def _with_ops(trace: Trace, ops) -> Trace:
    return Trace(ops=ops.reset_index(drop=True), meta=trace.meta)


def test_detects_a_collective_with_different_sizes(small_trace):
    ops = small_trace.ops.copy()
    row = ops.index[(ops["rank"] == 1) & (ops["op"] == "allreduce")][3]
    ops.loc[row, "bytes_total"] *= 2
    ops.loc[row, "bytes_per_rank"] *= 2
    report = check_consistency(_with_ops(small_trace, ops))
    assert not report.ok
    assert any("differs across ranks" in p for p in report.problems)


def test_detects_an_unmatched_send_and_the_hang_it_causes(small_trace):
    ops = small_trace.ops.copy()
    recv = ops.index[(ops["rank"] == 2) & (ops["op"] == "recv")][0]
    ops.loc[recv, "peer"] = 3  # a rank that never sends to it: the matching must fail
    report = check_consistency(_with_ops(small_trace, ops))
    assert not report.ok
    assert any("sends 1 messages" in p or "receives" in p for p in report.problems)
    assert any(p.startswith("deadlock") for p in report.problems)


def test_detects_collectives_issued_in_different_orders(small_trace):
    ops = small_trace.ops.copy()
    # Rank 1 waits for a TP all-reduce before it issues the previous one: swap two deps chains by
    # making an early compute depend on a later collective (a classic hang).
    r1 = ops[ops["rank"] == 1]
    later = int(r1[r1["op"] == "allreduce"]["op_index"].iloc[5])
    first_compute = r1.index[r1["kind"] == "compute"][3]
    deps = list(ops.at[first_compute, "deps"])
    ops.at[first_compute, "deps"] = np.asarray(deps + [later], dtype=np.int32)
    report = check_consistency(_with_ops(small_trace, ops))
    assert not report.ok and any(p.startswith("deadlock") for p in report.problems)
