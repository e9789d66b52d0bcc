"""Tensor parallelism (Megatron-LM): the communication of one column → row parallel region.

A region is a column-parallel GEMM (QKV, fc1) → local work → a row-parallel GEMM (out-proj, fc2).
Per region and micro-batch (Shoeybi et al. arXiv:1909.08053; NVIDIA/Megatron-LM
``megatron/core/tensor_parallel/layers.py``):

- without sequence parallelism: forward one AllReduce of the output (blocking); backward one
  AllReduce of the column GEMM's input gradient, issued async and overlapped with the wgrad GEMM
  (Megatron ``LinearWithGradAccumulationAndAsyncCommunication``);
- with sequence parallelism (Korthikanti et al. arXiv:2205.05198): forward AllGather of the input and
  ReduceScatter of the output (both blocking); backward AllGather of the output gradient (blocking),
  an async AllGather re-gathering the saved sharded input for wgrad, overlapped with the dgrad GEMM,
  and an async ReduceScatter of the input gradient overlapped with the wgrad GEMM.

Every collective moves the full activation b·(s/cp)·h (the total; each rank holds 1/t under SP).
"""

from __future__ import annotations

from typing import Callable

from dynamiccl.workload.context import StepContext
from dynamiccl.workload.flops import BACKWARD_BYTES_FACTOR, BlockFlops


def activation_elements(ctx: StepContext) -> int:
    """b · (s / cp) · h: the elements of one micro-batch's activation on this rank's sequence share."""
    lay = ctx.layout
    return lay.micro_batch * (lay.seq_len // lay.cp) * ctx.model.hidden_size


def activation_bytes(ctx: StepContext) -> int:
    """b · (s / cp) · h elements of the activation dtype: the TP collectives' full buffer."""
    return activation_elements(ctx) * ctx.act_size


def region_forward(ctx: StepContext, name: str, emit_compute: Callable[[], None]) -> None:
    """Forward of one TP region; ``emit_compute`` emits the compute between the collectives."""
    if ctx.layout.tp == 1:
        emit_compute()
        return
    nbytes = activation_bytes(ctx)
    if ctx.layout.sp:
        ctx.blocking("allgather", "tp", nbytes, name=f"{name}.sp_allgather")
    emit_compute()
    if ctx.layout.sp:
        ctx.blocking("reducescatter", "tp", nbytes, name=f"{name}.sp_reducescatter")
    else:
        ctx.blocking("allreduce", "tp", nbytes, name=f"{name}.allreduce")


def region_backward(ctx: StepContext, name: str, emit_upper: Callable[[], None], block: BlockFlops) -> None:
    """Backward of one TP region: ``emit_upper`` emits the row GEMM and inner backward; then the
    column GEMM's dgrad and wgrad with their overlapped communication."""
    if ctx.layout.tp > 1 and ctx.layout.sp:
        ctx.blocking("allgather", "tp", activation_bytes(ctx), name=f"{name}.sp_grad_allgather")
    emit_upper()
    column_backward(ctx, name, block.column, block.column_bytes)


def column_backward(ctx: StepContext, name: str, column_flops: float, column_bytes: float) -> None:
    """dgrad and wgrad of a column-parallel GEMM of ``column_flops`` / ``column_bytes`` forward
    (each moves as many bytes as the forward) and the reduction of its input gradient."""
    if ctx.layout.tp == 1:
        ctx.compute(f"{name}.column_bwd", 2 * column_flops, BACKWARD_BYTES_FACTOR * column_bytes)
        return
    nbytes = activation_bytes(ctx)
    if ctx.layout.sp:
        regather = ctx.start("allgather", "tp", nbytes, name=f"{name}.sp_input_allgather")
        ctx.compute(f"{name}.column_dgrad", column_flops, column_bytes)
        ctx.wait(regather)
        reduce = ctx.start("reducescatter", "tp", nbytes, name=f"{name}.sp_grad_reducescatter")
    else:
        ctx.compute(f"{name}.column_dgrad", column_flops, column_bytes)
        reduce = ctx.start("allreduce", "tp", nbytes, name=f"{name}.grad_allreduce")
    ctx.compute(f"{name}.column_wgrad", column_flops, column_bytes)
    ctx.wait(reduce)


def embedding_forward(ctx: StepContext) -> None:
    """Vocab-parallel embedding: each TP rank looks up its vocabulary slice, then the partial
    embeddings are summed: AllReduce, or ReduceScatter into the sequence-parallel layout. With
    learned position embeddings Megatron all-reduces even under SP (the positions are added to the
    whole sequence first) and then splits the sequence locally (``LanguageModelEmbedding``:
    ``reduce_scatter_embeddings`` only without learned positions; then
    ``scatter_to_sequence_parallel_region``). The lookup is a gather (no arithmetic); learned
    position embeddings add one FLOP per output element."""
    learned = ctx.model.position_embedding == "learned"
    ctx.compute_memory_bound("embedding", activation_bytes(ctx), activation_elements(ctx) if learned else 0)
    if ctx.layout.tp > 1:
        reduce_scatter = ctx.layout.sp and ctx.model.position_embedding != "learned"
        op = "reducescatter" if reduce_scatter else "allreduce"
        ctx.blocking(op, "tp", activation_bytes(ctx), name=f"embedding.{op}")


def embedding_backward(ctx: StepContext) -> None:
    """The embedding's input gradient: the AllReduce's backward is the identity; under SP the
    ReduceScatter's backward (or, with learned positions, the sequence split's) is an AllGather."""
    if ctx.layout.tp > 1 and ctx.layout.sp:
        ctx.blocking("allgather", "tp", activation_bytes(ctx), name="embedding.sp_grad_allgather")
    ctx.compute_memory_bound("embedding_wgrad", activation_bytes(ctx), activation_elements(ctx))  # scatter-add


def output_forward(ctx: StepContext, head_flops: float, head_bytes: float) -> None:
    """Column-parallel output layer (forward: identity or SP AllGather of its input), then the
    vocab-parallel cross entropy's three fp32 AllReduces of b·s/cp values over TP (max logit,
    target logit, sum of exponentials; Megatron ``tensor_parallel/cross_entropy.py``)."""
    lay = ctx.layout
    if lay.tp > 1 and lay.sp:
        ctx.blocking("allgather", "tp", activation_bytes(ctx), name="output.sp_allgather")
    ctx.compute("output", head_flops, head_bytes)
    if lay.tp > 1:
        tokens = lay.micro_batch * (lay.seq_len // lay.cp)
        for what in ("max", "target", "sum_exp"):
            ctx.blocking("allreduce", "tp", tokens * 4, dtype="fp32", name=f"cross_entropy.{what}")


def output_backward(ctx: StepContext, head_flops: float, head_bytes: float) -> None:
    """Output layer backward: a column GEMM's dgrad and wgrad with its input-gradient reduction."""
    column_backward(ctx, "output", head_flops, head_bytes)
