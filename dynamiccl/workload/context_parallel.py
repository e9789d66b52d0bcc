"""Context parallelism (Megatron-LM ``--cp-comm-type p2p``): a ring exchange of key/value chunks.

The sequence is split over cp ranks; attention needs every rank's keys and values, so each layer's
attention runs cp steps: step i computes attention against the KV chunk received in step i-1 while
the ring passes that chunk on (NVIDIA/Megatron-LM ``docs/user-guide/features/context_parallel.md``;
Transformer Engine's ``AttnFuncWithCPAndKVP2P``). Forward: cp-1 exchanges of the local KV chunk,
2·b·(s/cp)·g·(h/a)·w bytes with GQA (here per TP rank: g/t KV heads). Backward: cp-1 exchanges of KV
and of the dKV being accumulated — twice the forward volume (same sources).
"""

from __future__ import annotations

from dynamiccl.workload.context import StepContext


def kv_chunk_bytes(ctx: StepContext) -> int:
    """Bytes of one rank's key + value chunk for one micro-batch."""
    m, lay = ctx.model, ctx.layout
    tokens = lay.micro_batch * (lay.seq_len // lay.cp)
    if m.mla:  # MLA attention runs on per-head keys (nope + rope dims) and values
        heads = m.num_attention_heads // lay.tp
        width = heads * (m.mla.qk_nope_head_dim + m.mla.qk_rope_head_dim + m.mla.v_head_dim)
    else:
        width = (m.num_kv_heads // lay.tp) * 2 * m.head_dim
    return tokens * width * ctx.act_size


def _ring_peers(ctx: StepContext) -> tuple[int, int]:
    ranks = ctx.group("cp").ranks
    me = ranks.index(ctx.rank)
    return ranks[(me + 1) % len(ranks)], ranks[(me - 1) % len(ranks)]


def _ring(ctx: StepContext, name: str, flops: float, chunk_bytes: float, messages_per_step: int) -> None:
    """cp compute chunks of flops / cp and ``chunk_bytes`` each; chunk i overlaps ring exchange i
    (``messages_per_step`` chunks each way)."""
    cp = ctx.layout.cp
    if cp == 1:
        ctx.compute(name, flops, chunk_bytes)
        return
    nxt, prev = _ring_peers(ctx)
    nbytes = kv_chunk_bytes(ctx)
    for step in range(cp - 1):
        ring = ctx.p2p_group("cp", [(nxt, nbytes)] * messages_per_step, [(prev, nbytes)] * messages_per_step,
                             name=f"{name}.cp_ring{step}", blocking=False)
        ctx.compute(f"{name}_chunk{step}", flops / cp, chunk_bytes)
        ctx.wait(*ring)
    ctx.compute(f"{name}_chunk{cp - 1}", flops / cp, chunk_bytes)


def attention_forward(ctx: StepContext, core_flops: float, chunk_bytes: float) -> None:
    """Attention core over the ring: each step passes the KV chunk on; ``chunk_bytes`` per step."""
    _ring(ctx, "attn.core", core_flops, chunk_bytes, messages_per_step=1)


def attention_backward(ctx: StepContext, core_backward_flops: float, chunk_bytes: float) -> None:
    """Attention backward over the ring: each step passes KV on and the partial dKV back."""
    _ring(ctx, "attn.core_bwd", core_backward_flops, chunk_bytes, messages_per_step=2)
