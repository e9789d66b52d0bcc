"""Expert parallelism (Megatron-LM MoE, ``--moe-token-dispatcher-type alltoall``).

Per MoE layer and micro-batch (NVIDIA/Megatron-LM
``megatron/core/transformer/moe/token_dispatcher.py`` and the ``README.md`` beside it), with T =
this rank's tokens (b·s/cp, /t under sequence parallelism), k = top-k, w = activation bytes:

forward: shared expert (a dense TP region, if the model has one) → router → AllGather of per-expert
token counts over EP (int64) → AlltoAll of tokens over EP (T·k·h·w) → AlltoAll of routing
probabilities (fp32, T·k) → [expert TP > 1: AllGather over TP] → experts → [ReduceScatter over TP]
→ AlltoAll combining tokens back (T·k·h·w).
backward mirrors it: AlltoAll of the combine's gradient → [AllGather] → expert dgrad/wgrad →
[ReduceScatter] → AlltoAll of the dispatch's gradient and of the probabilities' gradient.

All of it is on the critical path (Megatron's default, without shared-expert or A2A overlap).
Simplification: the token-count AllGather runs over the TP×EP group in Megatron; here over EP.
"""

from __future__ import annotations

from dynamiccl.workload import tensor_parallel
from dynamiccl.workload.context import StepContext
from dynamiccl.workload.flops import BACKWARD_BYTES_FACTOR, LayerFlops


def local_tokens(ctx: StepContext) -> int:
    lay = ctx.layout
    tokens = lay.micro_batch * (lay.seq_len // lay.cp)
    return tokens // lay.tp if lay.sp else tokens


def dispatch_bytes(ctx: StepContext) -> int:
    """Bytes a rank sends in one token AlltoAll: T · top_k · h · w."""
    return local_tokens(ctx) * ctx.model.moe.top_k * ctx.model.hidden_size * ctx.act_size


def _experts_through_alltoall(ctx: StepContext, flops: LayerFlops, backward: bool) -> None:
    lay, moe = ctx.layout, ctx.model.moe
    tokens_k = local_tokens(ctx) * moe.top_k
    a2a = dispatch_bytes(ctx)
    experts = flops.experts(local_tokens(ctx))
    if not backward:
        if lay.ep > 1:
            ctx.blocking("allgather", "ep", lay.ep * moe.num_experts * 8, dtype="int64", name="moe.token_counts")
        ctx.blocking("alltoall", "ep", a2a, name="moe.dispatch")
        ctx.blocking("alltoall", "ep", tokens_k * 4, dtype="fp32", name="moe.dispatch_probs")
    else:
        ctx.blocking("alltoall", "ep", a2a, name="moe.combine_grad")
    if lay.etp > 1:
        ctx.blocking("allgather", "tp", lay.etp * tokens_k * ctx.model.hidden_size * ctx.act_size,
                     name="moe.etp_allgather")
    if backward:
        ctx.compute("moe.experts_bwd", 2 * experts.forward, BACKWARD_BYTES_FACTOR * experts.forward_bytes)
    else:
        ctx.compute("moe.experts", experts.forward, experts.forward_bytes)
    if lay.etp > 1:
        ctx.blocking("reducescatter", "tp", lay.etp * tokens_k * ctx.model.hidden_size * ctx.act_size,
                     name="moe.etp_reducescatter")
    if not backward:
        ctx.blocking("alltoall", "ep", a2a, name="moe.combine")
    else:
        ctx.blocking("alltoall", "ep", a2a, name="moe.dispatch_grad")
        ctx.blocking("alltoall", "ep", tokens_k * 4, dtype="fp32", name="moe.dispatch_probs_grad")


def moe_forward(ctx: StepContext, flops: LayerFlops) -> None:
    """The MoE block of one layer, forward."""
    moe = ctx.model.moe
    if moe.shared_expert_ffn_hidden_size:
        shared = flops.mlp(moe.shared_expert_ffn_hidden_size)
        tensor_parallel.region_forward(ctx, "moe.shared",
                                       lambda: ctx.compute("moe.shared", shared.forward, shared.forward_bytes))
    ctx.compute("moe.router", flops.router(local_tokens(ctx)), flops.router_bytes(local_tokens(ctx)))
    _experts_through_alltoall(ctx, flops, backward=False)


def moe_backward(ctx: StepContext, flops: LayerFlops) -> None:
    """The MoE block of one layer, backward (reverse order of ``moe_forward``)."""
    moe = ctx.model.moe
    _experts_through_alltoall(ctx, flops, backward=True)
    ctx.compute("moe.router_bwd", 2 * flops.router(local_tokens(ctx)),
                BACKWARD_BYTES_FACTOR * flops.router_bytes(local_tokens(ctx)))
    if moe.shared_expert_ffn_hidden_size:
        shared = flops.mlp(moe.shared_expert_ffn_hidden_size)
        tensor_parallel.region_backward(ctx, "moe.shared",
                                        lambda: ctx.compute("moe.shared.row_bwd", shared.backward_upper,
                                                                    shared.backward_upper_bytes), shared)
