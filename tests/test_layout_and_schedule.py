"""Parallel layout (Megatron rank order, groups, checks) and the pipeline schedules."""

from __future__ import annotations

import pytest

from dynamiccl.errors import LayoutError
from dynamiccl.workload.context import ComputeRate
from dynamiccl.workload.generator import generate
from dynamiccl.workload.layout import ParallelLayout
from dynamiccl.workload.models import ModelConfig, load_model
from dynamiccl.workload.pipeline_parallel import schedule

RATE = ComputeRate("H100-SXM", 989.4, 0.45, 3350.0)


def test_megatron_rank_order_tp_fastest_pp_slowest():
    lay = ParallelLayout(tp=4, cp=2, dp=2, pp=2).resolved(load_model("llama3-70b"))
    assert lay.world_size == 32
    assert lay.group_ranks("tp", 5) == (4, 5, 6, 7)
    assert lay.group_ranks("cp", 5) == (1, 5)
    assert lay.group_ranks("dp", 5) == (1, 5, 9, 13)  # DP×CP, as gradients reduce over it
    assert lay.group_ranks("pp", 5) == (5, 21)
    assert lay.coords(21) == {"tp": 1, "cp": 1, "dp": 0, "pp": 1, "etp": 1, "ep": 0, "edp": 1}
    assert lay.group_ranks("embd", 5) == (5, 21)
    assert lay.group_ranks("mp", 5) == (4, 5, 6, 7, 20, 21, 22, 23)


def test_expert_groups_resplit_each_stage():
    lay = ParallelLayout(tp=2, dp=8, ep=4, sp=True).resolved(load_model("mixtral-8x7b"))
    assert lay.edp == 2
    assert lay.group_ranks("ep", 0) == (0, 2, 4, 6)
    assert lay.group_ranks("edp", 0) == (0, 8)
    # With expert TP = TP the expert TP group is the dense TP group.
    assert lay.group_ranks("tp", 3) == (2, 3)


def test_stage_layers_even_uneven_and_interleaved():
    model = load_model("llama3.1-405b")
    lay = ParallelLayout(tp=8, pp=16, dp=64, first_stage_layers=7, last_stage_layers=7).resolved(model)
    counts = lay.stage_layer_counts(model)
    assert counts[0] == counts[-1] == 7 and set(counts[1:-1]) == {8} and sum(counts) == 126
    toy = ModelConfig(name="toy", num_layers=8, hidden_size=64, ffn_hidden_size=256, num_attention_heads=4,
                      vocab_size=1000, seq_length=64, global_batch=8)
    lay = ParallelLayout(pp=2, vpp=2, global_batch=8).resolved(toy)
    # Virtual pipeline order: chunk 0 of stages 0,1 then chunk 1 of stages 0,1.
    assert lay.stage_chunks(toy, 0) == [[0, 1], [4, 5]]
    assert lay.stage_chunks(toy, 1) == [[2, 3], [6, 7]]


@pytest.mark.parametrize("model,layout,fragment", [
    ("llama3-8b", dict(tp=3), "not divisible by TP 3"),
    ("llama3-70b", dict(tp=16), "KV heads"),
    ("llama3-8b", dict(pp=3), "32 layers are not divisible by PP × VPP = 3"),
    ("llama3.1-405b", dict(tp=8, pp=16, dp=64), "--first-stage-layers"),
    ("llama3.1-405b", dict(pp=16, first_stage_layers=8, last_stage_layers=7), "cannot be split"),
    ("llama3-8b", dict(dp=3), "global batch 128 is not divisible"),
    ("llama3-8b", dict(pp=4, vpp=2, global_batch=6), "divisible by PP 4"),
    ("llama3-8b", dict(vpp=2), "needs --pp >= 2"),
    ("llama3-8b", dict(ep=2), "has no experts"),
    ("mixtral-8x7b", dict(tp=2, dp=4), "needs sequence parallelism"),
    ("mixtral-8x7b", dict(dp=8, ep=3), "not divisible by EP 3"),
    ("mixtral-8x7b", dict(dp=8, ep=8, dp_mode="ddp"), "no expert-data-parallel"),
    ("deepseek-v3", dict(tp=2, pp=1, dp=32, ep=64, sp=True), "must divide"),
    ("llama3-8b", dict(cp=3), "2 × CP"),
    ("llama3-8b", dict(tp=0), "--tp must be a positive integer"),
    ("llama3-8b", dict(dp_mode="zero"), "--dp-mode"),
])
def test_inconsistent_layouts_fail_before_any_work(model, layout, fragment):
    with pytest.raises(LayoutError) as info:
        generate(load_model(model), ParallelLayout(**layout), RATE, progress=False)
    assert fragment in str(info.value)


def test_sequence_parallel_is_dropped_at_tp1_like_megatron():
    lay = ParallelLayout(tp=1, dp=8, sp=True).resolved(load_model("llama3-8b"))
    assert lay.sp is False


def test_1f1b_schedule_warmup_and_order():
    order = schedule(pp=4, stage=1, num_microbatches=6)
    kinds = "".join(p.direction for p in order)
    assert kinds == "FF" + "FB" * 4 + "BB"  # warm-up p-r-1 = 2
    assert [p.microbatch for p in order if p.direction == "B"] == list(range(6))
    last = schedule(pp=4, stage=3, num_microbatches=6)
    assert "".join(p.direction for p in last) == "FB" * 6
    few = schedule(pp=8, stage=0, num_microbatches=3)
    assert "".join(p.direction for p in few) == "FFFBBB"  # warm-up capped at m


def test_interleaved_schedule_runs_every_chunk_and_microbatch_once():
    p, v, m = 4, 3, 8
    for stage in range(p):
        order = schedule(pp=p, stage=stage, num_microbatches=m, vpp=v)
        fwd = [(x.microbatch, x.chunk) for x in order if x.direction == "F"]
        bwd = [(x.microbatch, x.chunk) for x in order if x.direction == "B"]
        assert sorted(fwd) == sorted(bwd) == [(i, c) for i in range(m) for c in range(v)]
        first_backward = next(i for i, x in enumerate(order) if x.direction == "B")
        warmup = min((p - stage - 1) * 2 + (v - 1) * p, m * v)
        assert first_backward == warmup + 1  # warm-up forwards, then the first 1F1B pair
        # A micro-batch's chunk c forward precedes its chunk c+1 forward; backward goes the other way.
        for i in range(m):
            assert [c for mb, c in fwd if mb == i] == list(range(v))
            assert [c for mb, c in bwd if mb == i] == list(reversed(range(v)))


def test_representative_ranks_stand_for_their_stage():
    trace = generate(load_model("llama3-8b"), ParallelLayout(tp=2, pp=4, dp=2, global_batch=8), RATE,
                     progress=False)
    assert trace.ranks == [0, 4, 8, 12]
    roles = trace.meta.roles
    assert roles[4].represents == ((4, 7),) and roles[4].role == "pipeline stage 1 of 4"
    assert sum(r.count for r in roles.values()) == 16
    assert trace.meta.representative


def test_representative_rank_matches_its_symmetric_peers():
    model = load_model("llama3-8b")
    layout = ParallelLayout(tp=2, pp=2, dp=2, sp=True, global_batch=4)
    rep = generate(model, layout, RATE, progress=False)
    full = generate(model, layout, RATE, all_ranks=True, progress=False)
    columns = ["kind", "op", "group_kind", "bytes_total", "dtype", "phase", "deps", "nccl_group"]
    for peer in (1, 2, 3):  # same stage as representative rank 0
        a = rep.rank_ops(0)[columns].reset_index(drop=True)
        b = full.rank_ops(peer)[columns].reset_index(drop=True)
        assert a.drop(columns="deps").equals(b.drop(columns="deps"))
        assert all(list(x) == list(y) for x, y in zip(a["deps"], b["deps"]))
