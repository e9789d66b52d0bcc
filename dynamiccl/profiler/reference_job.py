"""The reference training job: a small GPT trained with real tensor, sequence, pipeline and data
parallelism on gloo, written to be read top to bottom (one file, no framework).

    torchrun --nproc-per-node 4 -m dynamiccl.profiler.reference_job --tp 2 --dp 2
    torchrun --nproc-per-node 4 -m dynamiccl.profiler.reference_job --tp 2 --pp 2 --sp --profile DIR

It exists to check the workload generator against what PyTorch really issues: run it with
``--profile DIR`` (every collective recorded by :mod:`dynamiccl.profiler.capture`, one ``cap.step()``
per training step), merge the capture, and compare with ``dynamiccl generate`` for the same model and
layout (``DIR/job.json`` holds the exact generator command; ``tests/test_profiler_crossvalidation.py``
does the comparison). Everything follows NVIDIA/Megatron-LM:

- process groups: Megatron's rank order (TP fastest, then DP, then PP) and group descriptions
  (``TENSOR_MODEL_PARALLEL_GROUP``, ``DATA_PARALLEL_GROUP_WITH_CP``, ...), created in the order of
  ``megatron/core/parallel_state.py``;
- tensor parallelism: column-parallel linears whose input gradient is all-reduced in backward and
  row-parallel linears whose output is all-reduced in forward (Megatron's f / g conjugate ops, as
  autograd Functions); a vocab-parallel embedding and cross entropy (three fp32 all-reduces);
- sequence parallelism (``--sp``): activations between TP regions are split along the sequence;
  all-gather before each column-parallel linear (re-gathered in backward for the weight gradient),
  reduce-scatter after each row-parallel one; the gradients of replicated parameters (norms,
  row-parallel biases) are all-reduced over TP once per step;
- pipeline parallelism (``--pp``): Megatron's non-interleaved 1F1B schedule with its batched
  ``send_forward_recv_backward`` / ``send_backward_recv_forward`` exchanges (``batch_isend_irecv``);
  tied embeddings keep a copy on the last stage whose gradient is all-reduced over the embedding group;
- data parallelism: ``--dp-mode ddp`` wraps each stage in torch ``DistributedDataParallel`` (gradients
  reduced during the last micro-batch's backward, as ``torch.distributed.pipelining`` does);
  ``--dp-mode fsdp`` shards every layer and the stage with FSDP2 ``fully_shard``;
- end of step (Megatron ``finalize_model_grads`` + optimizer): SP gradients, embedding gradients,
  the gradient norm (one fp32 all-reduce over the model-parallel group, the world under FSDP), clip,
  AdamW, and the loss report (one all-reduce of [loss sum, tokens] over DP on the last stage).

Precision: ``--dtype fp32`` (default) or ``bf16`` (parameters, activations and gradients in bf16;
DDP / FSDP then reduce gradients in bf16, so generate with ``--grad-reduce-dtype bf16``).
The model comes from a model TOML (``--model gpt-tiny``, the default, or a path), the same file
``dynamiccl generate --model`` reads; ``--layers`` / ``--hidden`` / ... override it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import shlex
import sys
import time
import zlib
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.autograd import Function

from dynamiccl.workload.models import ModelConfig, load_model

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# =================================================================================================
# 1. Configuration
# =================================================================================================

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m dynamiccl.profiler.reference_job",
                                description="Reference GPT training job with real TP/SP/PP/DP on gloo "
                                            "(run under torchrun).")
    p.add_argument("--model", default="gpt-tiny", help="built-in model name or model TOML (default gpt-tiny)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size")
    p.add_argument("--pp", type=int, default=1, help="pipeline-parallel size")
    p.add_argument("--dp", type=int, default=0, help="data-parallel size (default: world / (tp * pp))")
    p.add_argument("--sp", action="store_true", help="sequence parallelism (needs --tp > 1)")
    p.add_argument("--dp-mode", default="ddp", choices=["ddp", "fsdp"], help="torch DDP or FSDP2 fully_shard")
    p.add_argument("--layers", type=int, help="override the model's num_layers")
    p.add_argument("--hidden", type=int, help="override hidden_size")
    p.add_argument("--heads", type=int, help="override num_attention_heads (and num_kv_heads)")
    p.add_argument("--ffn", type=int, help="override ffn_hidden_size")
    p.add_argument("--vocab", type=int, help="override vocab_size")
    p.add_argument("--seq-len", type=int, help="override seq_length")
    p.add_argument("--micro-batch", type=int, default=1, help="sequences per micro-batch")
    batch = p.add_mutually_exclusive_group()
    batch.add_argument("--global-batch", type=int, help="sequences per step (default: the model's)")
    batch.add_argument("--microbatches", type=int, help="micro-batches per step and DP rank (sets the global batch)")
    p.add_argument("--steps", type=int, default=4, help="training steps")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="parameter/activation dtype")
    p.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and data (same on every layout)")
    p.add_argument("--profile", metavar="DIR", help="record every collective into DIR (rank<R>.json, job.json)")
    p.add_argument("--capture-mode", choices=["api", "dispatch"],
                   help="with --profile: capture's interception point (default: capture's own, 'api'); "
                        "'dispatch' also sees DDP's C++-internal metadata collectives")
    p.add_argument("--trace", metavar="FILE", help="with --profile: merge the capture into this trace (.parquet)")
    p.add_argument("--json-out", metavar="FILE", help="write losses, grad norms and step times as JSON")
    p.add_argument("--quiet", action="store_true", help="no per-step lines")
    args = p.parse_args(argv)
    if (args.trace or args.capture_mode) and not args.profile:
        p.error("--trace and --capture-mode need --profile DIR")
    return args


def model_config(args) -> ModelConfig:
    """The model TOML with command-line overrides; refuses what this job does not implement."""
    model = load_model(args.model)
    overrides = {"num_layers": args.layers, "hidden_size": args.hidden, "num_attention_heads": args.heads,
                 "ffn_hidden_size": args.ffn, "vocab_size": args.vocab, "seq_length": args.seq_len}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if args.heads is not None:
        overrides["num_kv_heads"] = args.heads
    if args.hidden is not None or args.heads is not None:
        overrides["head_dim"] = 0  # derive h / a again
    if overrides:
        model = dataclasses.replace(model, name=f"{model.name}-custom", **overrides)
    if model.moe is not None or model.mla is not None:
        sys.exit(f"reference_job: {model.name} has experts or MLA, which this job does not implement")
    return model


@dataclasses.dataclass(frozen=True)
class Layout:
    """Sizes, this rank's coordinates and the derived batch shape."""
    tp: int
    pp: int
    dp: int
    sp: bool
    micro_batch: int
    global_batch: int
    seq_len: int

    @property
    def num_microbatches(self) -> int:
        return self.global_batch // (self.micro_batch * self.dp)


def make_layout(args, model: ModelConfig, world: int) -> Layout:
    dp = args.dp or world // (args.tp * args.pp)
    if dp < 1 or args.tp * args.pp * dp != world:
        sys.exit(f"reference_job: tp {args.tp} x pp {args.pp}" + (f" x dp {args.dp}" if args.dp else "")
                 + f" does not fit the world size {world} (torchrun --nproc-per-node)")
    if args.microbatches:
        global_batch = args.microbatches * args.micro_batch * dp
    else:
        global_batch = args.global_batch or model.global_batch
    lay = Layout(args.tp, args.pp, dp, args.sp and args.tp > 1, args.micro_batch, global_batch, model.seq_length)
    problems = []
    if global_batch % (args.micro_batch * dp):
        problems.append(f"global batch {global_batch} not divisible by micro-batch x dp")
    if model.num_attention_heads % lay.tp or model.num_kv_heads % lay.tp or model.ffn_hidden_size % lay.tp:
        problems.append("heads, KV heads and FFN size must divide by TP")
    if model.num_layers % lay.pp:
        problems.append(f"{model.num_layers} layers do not split into {lay.pp} stages")
    if lay.sp and lay.seq_len % lay.tp:
        problems.append("sequence parallelism needs the sequence length divisible by TP")
    if problems:
        sys.exit("reference_job: " + "; ".join(problems))
    return lay


# =================================================================================================
# 2. Process groups (Megatron-LM parallel_state: rank order tp-cp-dp-pp, group descriptions)
# =================================================================================================

@dataclasses.dataclass
class Groups:
    rank: int
    tp_rank: int
    dp_rank: int
    pp_rank: int
    tp: object = None
    dp: object = None          # DATA_PARALLEL_GROUP_WITH_CP: gradients and the loss report
    pp: object = None
    mp: object = None          # MODEL_PARALLEL_GROUP (tp x pp): gradient norm
    embd: object = None        # first + last pipeline stage: tied embedding gradient
    pp_ranks: tuple = ()
    embd_ranks: tuple = ()


def rank_grid(lay: Layout, kind: str) -> list[list[int]]:
    """All groups of one kind as lists of global ranks; rank = tp + TP * (dp + DP * pp)."""
    def rank(t, d, p):
        return t + lay.tp * (d + lay.dp * p)
    if kind == "tp":
        return [[rank(t, d, p) for t in range(lay.tp)] for p in range(lay.pp) for d in range(lay.dp)]
    if kind == "dp":
        return [[rank(t, d, p) for d in range(lay.dp)] for p in range(lay.pp) for t in range(lay.tp)]
    if kind == "pp":
        return [[rank(t, d, p) for p in range(lay.pp)] for d in range(lay.dp) for t in range(lay.tp)]
    if kind == "mp":  # tp-pp
        return [[rank(t, d, p) for p in range(lay.pp) for t in range(lay.tp)] for d in range(lay.dp)]
    raise ValueError(kind)


def create_groups(lay: Layout) -> Groups:
    """Every rank creates every group, in Megatron's order (dp, dp-cp, tp-pp, tp, pp + embedding)."""
    rank = dist.get_rank()
    g = Groups(rank, rank % lay.tp, (rank // lay.tp) % lay.dp, rank // (lay.tp * lay.dp))

    def make(ranks, desc):
        return dist.new_group(ranks, group_desc=desc)

    for ranks in rank_grid(lay, "dp"):
        make(ranks, "DATA_PARALLEL_GROUP")  # Megatron's DP group without CP (same ranks here; unused)
    for ranks in rank_grid(lay, "dp"):
        group = make(ranks, "DATA_PARALLEL_GROUP_WITH_CP")
        if rank in ranks:
            g.dp = group
    for ranks in rank_grid(lay, "mp"):
        group = make(ranks, "MODEL_PARALLEL_GROUP")
        if rank in ranks:
            g.mp = group
    for ranks in rank_grid(lay, "tp"):
        group = make(ranks, "TENSOR_MODEL_PARALLEL_GROUP")
        if rank in ranks:
            g.tp = group
    for ranks in rank_grid(lay, "pp"):
        group = make(ranks, "PIPELINE_MODEL_PARALLEL_GROUP")
        if rank in ranks:
            g.pp, g.pp_ranks = group, tuple(ranks)
        embd = [ranks[0], ranks[-1]] if len(ranks) > 1 else ranks
        group = make(embd, "EMBEDDING_GROUP")
        if rank in embd:
            g.embd, g.embd_ranks = group, tuple(embd)
    return g


# =================================================================================================
# 3. Tensor-parallel communication as autograd Functions (megatron/core/tensor_parallel/mappings.py)
#    Activations are [sequence, batch, hidden]; sequence parallelism splits dimension 0.
# =================================================================================================

def _gather_seq(x: torch.Tensor, group, async_op: bool = False):
    out = torch.empty((x.shape[0] * dist.get_world_size(group), *x.shape[1:]), dtype=x.dtype)
    work = dist.all_gather_into_tensor(out, x.contiguous(), group=group, async_op=async_op)
    return (out, work) if async_op else out


def _reduce_scatter_seq(x: torch.Tensor, group, async_op: bool = False):
    out = torch.empty((x.shape[0] // dist.get_world_size(group), *x.shape[1:]), dtype=x.dtype)
    work = dist.reduce_scatter_tensor(out, x.contiguous(), group=group, async_op=async_op)
    return (out, work) if async_op else out


class ReduceFromTP(Function):
    """g: all-reduce in forward, identity in backward (after a row-parallel linear)."""

    @staticmethod
    def forward(ctx, x, group):
        x = x.clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class ReduceScatterToSP(Function):
    """g under SP: reduce-scatter along the sequence in forward, all-gather in backward."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _reduce_scatter_seq(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _gather_seq(grad, ctx.group), None


class ScatterToSP(Function):
    """Split along the sequence (no communication) in forward, all-gather in backward."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        n, r = dist.get_world_size(group), dist.get_rank(group)
        return x.chunk(n, dim=0)[r].clone()

    @staticmethod
    def backward(ctx, grad):
        return _gather_seq(grad, ctx.group), None


class ColumnParallelLinearFn(Function):
    """Megatron's LinearWithGradAccumulationAndAsyncCommunication for a column-parallel weight.

    Forward: (SP: all-gather the sequence-sharded input) then input @ W^T + b. Backward: the input
    gradient is all-reduced over TP (SP: reduce-scattered), issued async and overlapped with the
    weight-gradient GEMM; under SP the saved sharded input is first re-gathered (async, overlapped
    with the input-gradient GEMM) because only the shard was kept.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, group, sp):
        ctx.save_for_backward(x, weight)
        ctx.group, ctx.sp, ctx.has_bias = group, sp, bias is not None
        total = _gather_seq(x, group) if sp else x
        out = total.matmul(weight.t())
        return out + bias if bias is not None else out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        group, sp = ctx.group, ctx.sp
        if sp:
            total, gather = _gather_seq(x, group, async_op=True)
        grad_input = grad_out.matmul(weight)
        if sp:
            gather.wait()
        else:
            total = x
        reduce = None
        if group is not None:
            if sp:
                grad_input, reduce = _reduce_scatter_seq(grad_input, group, async_op=True)
            else:
                grad_input = grad_input.contiguous()
                reduce = dist.all_reduce(grad_input, group=group, async_op=True)
        g2 = grad_out.reshape(-1, grad_out.shape[-1])
        grad_weight = g2.t().matmul(total.reshape(-1, total.shape[-1]))
        grad_bias = g2.sum(0) if ctx.has_bias else None
        if reduce is not None:
            reduce.wait()
        return grad_input, grad_weight, grad_bias, None, None


class VocabParallelCrossEntropy(Function):
    """Megatron's tensor_parallel/cross_entropy.py: logits are split over the vocabulary; three fp32
    all-reduces over TP (max logit, target logit, sum of exponentials); no communication backward."""

    @staticmethod
    def forward(ctx, logits, target, vocab_start, group):
        logits_max = logits.max(dim=-1).values
        if group is not None:
            dist.all_reduce(logits_max, op=dist.ReduceOp.MAX, group=group)
        logits = logits - logits_max.unsqueeze(-1)
        vocab_end = vocab_start + logits.shape[-1]
        outside = (target < vocab_start) | (target >= vocab_end)
        local = (target - vocab_start).masked_fill(outside, 0)
        predicted = logits.gather(-1, local.unsqueeze(-1)).squeeze(-1).masked_fill(outside, 0.0)
        if group is not None:
            dist.all_reduce(predicted, group=group)
        exp_logits = logits.exp()
        sum_exp = exp_logits.sum(dim=-1)
        if group is not None:
            dist.all_reduce(sum_exp, group=group)
        softmax = exp_logits / sum_exp.unsqueeze(-1)
        ctx.save_for_backward(softmax, local, outside)
        return sum_exp.log() - predicted

    @staticmethod
    def backward(ctx, grad):
        softmax, local, outside = ctx.saved_tensors
        grad_input = softmax.clone()
        grad_input.scatter_add_(-1, local.unsqueeze(-1), -(~outside).float().unsqueeze(-1))
        return grad_input * grad.unsqueeze(-1), None, None, None


# =================================================================================================
# 4. The model, one pipeline stage of it. Weights are drawn full-size from (seed, name) and sliced,
#    so every layout starts from the same model and computes the same losses.
# =================================================================================================

def full_weight(seed: int, name: str, shape: tuple, std: float) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    return torch.randn(shape, generator=gen) * std


class Ctx:
    """What every module needs: the model, layout, groups and dtype."""

    def __init__(self, model: ModelConfig, lay: Layout, groups: Groups, dtype: torch.dtype, seed: int):
        self.model, self.lay, self.groups, self.dtype, self.seed = model, lay, groups, dtype, seed
        self.tp_group = groups.tp if lay.tp > 1 else None

    def param(self, data: torch.Tensor, *, seq_parallel: bool = False, tp_duplicate: bool = False) -> nn.Parameter:
        p = nn.Parameter(data.to(self.dtype).contiguous())
        p.sequence_parallel = seq_parallel and self.lay.sp  # gradient all-reduced over TP under SP
        p.tp_duplicate = tp_duplicate  # the same on every TP rank: counted once in the grad norm
        return p


class Norm(nn.Module):
    def __init__(self, c: Ctx):
        super().__init__()
        h = c.model.hidden_size
        self.kind = c.model.norm
        self.weight = c.param(torch.ones(h), seq_parallel=True, tp_duplicate=True)
        if self.kind == "layernorm":
            self.bias = c.param(torch.zeros(h), seq_parallel=True, tp_duplicate=True)

    def forward(self, x):
        if self.kind == "layernorm":
            return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, eps=1e-5)
        return F.rms_norm(x, x.shape[-1:], self.weight, eps=1e-5)


def column_slice(full: torch.Tensor, parts: list[int], c: Ctx) -> torch.Tensor:
    """This TP rank's rows of a column-parallel weight made of blocks (e.g. [q; k; v] or [gate; up])."""
    out, start = [], 0
    for rows in parts:
        block = full[start:start + rows]
        out.append(block.chunk(c.lay.tp, dim=0)[c.groups.tp_rank])
        start += rows
    return torch.cat(out)


class ColumnParallelLinear(nn.Module):
    def __init__(self, c: Ctx, name: str, in_features: int, parts: list[int], bias: bool):
        super().__init__()
        self.c = c
        full = full_weight(c.seed, name, (sum(parts), in_features), 0.02)
        self.weight = c.param(column_slice(full, parts, c))
        self.bias = c.param(torch.zeros(sum(parts) // c.lay.tp)) if bias else None

    def forward(self, x):
        return ColumnParallelLinearFn.apply(x, self.weight, self.bias, self.c.tp_group, self.c.lay.sp)


class RowParallelLinear(nn.Module):
    def __init__(self, c: Ctx, name: str, in_features: int, out_features: int, bias: bool, std: float):
        super().__init__()
        self.c = c
        full = full_weight(c.seed, name, (out_features, in_features), std)
        self.weight = c.param(full.chunk(c.lay.tp, dim=1)[c.groups.tp_rank])
        # Replicated bias, added after the reduction (Megatron); partial gradients under SP.
        self.bias = c.param(torch.zeros(out_features), seq_parallel=True, tp_duplicate=True) if bias else None

    def forward(self, x):
        y = x.matmul(self.weight.t())
        if self.c.tp_group is not None:
            y = (ReduceScatterToSP if self.c.lay.sp else ReduceFromTP).apply(y, self.c.tp_group)
        return y + self.bias if self.bias is not None else y


def rotary(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding (rotate-half form) of x [b, heads, s, d] over its full sequence."""
    s, d = x.shape[-2], x.shape[-1]
    freqs = torch.outer(torch.arange(s, dtype=torch.float32), base ** (-torch.arange(0, d, 2).float() / d))
    cos, sin = torch.cat([freqs, freqs], -1).cos().to(x.dtype), torch.cat([freqs, freqs], -1).sin().to(x.dtype)
    half1, half2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-half2, half1], dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, c: Ctx, layer: int):
        super().__init__()
        m, t = c.model, c.lay.tp
        self.c, self.d = c, m.head_dim
        self.heads, self.kv_heads = m.num_attention_heads // t, m.num_kv_heads // t
        q, kv = m.num_attention_heads * m.head_dim, m.num_kv_heads * m.head_dim
        self.qkv = ColumnParallelLinear(c, f"layer{layer}.qkv", m.hidden_size, [q, kv, kv], m.bias)
        std = 0.02 / math.sqrt(2 * m.num_layers)
        self.out = RowParallelLinear(c, f"layer{layer}.out", q, m.hidden_size, m.bias, std)

    def forward(self, x):
        qkv = self.qkv(x)  # [s, b, (heads + 2 kv_heads) * d] on this TP rank
        s, b = qkv.shape[:2]
        q, k, v = qkv.split([self.heads * self.d, self.kv_heads * self.d, self.kv_heads * self.d], dim=-1)
        q, k, v = (t.reshape(s, b, -1, self.d).permute(1, 2, 0, 3) for t in (q, k, v))
        if self.kv_heads != self.heads:
            k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
            v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
        if self.c.model.position_embedding == "rope":
            q, k = rotary(q), rotary(k)
        ctx = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [b, heads, s, d]
        return self.out(ctx.permute(2, 0, 1, 3).reshape(s, b, -1))


class MLP(nn.Module):
    def __init__(self, c: Ctx, layer: int):
        super().__init__()
        m = c.model
        self.swiglu = m.activation == "swiglu"
        parts = [m.ffn_hidden_size] * (2 if self.swiglu else 1)
        self.fc1 = ColumnParallelLinear(c, f"layer{layer}.fc1", m.hidden_size, parts, m.bias)
        std = 0.02 / math.sqrt(2 * m.num_layers)
        self.fc2 = RowParallelLinear(c, f"layer{layer}.fc2", m.ffn_hidden_size, m.hidden_size, m.bias, std)

    def forward(self, x):
        y = self.fc1(x)
        if self.swiglu:
            gate, up = y.chunk(2, dim=-1)
            y = F.silu(gate) * up
        else:
            y = F.gelu(y)
        return self.fc2(y)


class TransformerLayer(nn.Module):
    def __init__(self, c: Ctx, layer: int):
        super().__init__()
        self.attn_norm, self.attn = Norm(c), Attention(c, layer)
        self.mlp_norm, self.mlp = Norm(c), MLP(c, layer)

    def forward(self, x):
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class VocabParallelEmbedding(nn.Module):
    """Each TP rank holds rows [start, end) of the padded vocabulary; partial lookups are summed:
    all-reduce, or reduce-scatter into the sequence-parallel layout when there are no learned
    positions to add first (Megatron LanguageModelEmbedding.reduce_scatter_embeddings)."""

    def __init__(self, c: Ctx, weight: torch.Tensor):
        super().__init__()
        self.c = c
        self.weight = c.param(weight)
        self.start = c.groups.tp_rank * weight.shape[0]
        self.reduce_scatter = c.lay.sp and c.model.position_embedding != "learned"

    def forward(self, ids):  # ids [b, s] -> [s, b, h]
        end = self.start + self.weight.shape[0]
        outside = (ids < self.start) | (ids >= end)
        out = F.embedding((ids - self.start).masked_fill(outside, 0), self.weight)
        out = out.masked_fill(outside.unsqueeze(-1), 0.0).transpose(0, 1).contiguous()
        if self.c.tp_group is None:
            return out
        return (ReduceScatterToSP if self.reduce_scatter else ReduceFromTP).apply(out, self.c.tp_group)


class Stage(nn.Module):
    """The layers of one pipeline stage; the first holds the embedding, the last the output layer
    and the loss (with tied embeddings and PP > 1 the last stage keeps a copy of the word embedding,
    zero-initialised and all-reduced over the embedding group at setup, as Megatron does)."""

    def __init__(self, c: Ctx):
        super().__init__()
        m, lay, g = c.model, c.lay, c.groups
        self.c = c
        self.first, self.last = g.pp_rank == 0, g.pp_rank == lay.pp - 1
        vocab = math.ceil(m.vocab_size / (128 * lay.tp)) * 128 * lay.tp  # Megatron's padded vocabulary
        self.vocab_shard = vocab // lay.tp
        word = full_weight(c.seed, "embedding.word", (vocab, m.hidden_size), 0.02).chunk(lay.tp)[g.tp_rank]
        per_stage = m.num_layers // lay.pp
        first_layer = g.pp_rank * per_stage
        if self.first:
            self.embedding = VocabParallelEmbedding(c, word)
            if m.position_embedding == "learned":
                self.position = c.param(full_weight(c.seed, "embedding.position", (m.seq_length, m.hidden_size), 0.02),
                                        tp_duplicate=True)
        self.layers = nn.ModuleList(TransformerLayer(c, i) for i in range(first_layer, first_layer + per_stage))
        if self.last:
            self.final_norm = Norm(c)
            if not m.tied_embeddings:
                self.output = c.param(full_weight(c.seed, "output", (vocab, m.hidden_size), 0.02)
                                      .chunk(lay.tp)[g.tp_rank])
            elif not self.first:
                self.output = c.param(torch.zeros_like(word))
                self.output.shared = True  # the tied copy: counted once (on the first stage) in the norm

    def output_weight(self):
        return self.output if hasattr(self, "output") else self.embedding.weight

    def forward(self, hidden, tokens, labels):
        c = self.c
        if self.first:
            hidden = self.embedding(tokens)
            if hasattr(self, "position"):
                hidden = hidden + self.position[: hidden.shape[0]].unsqueeze(1)
                if c.lay.sp:
                    hidden = ScatterToSP.apply(hidden, c.tp_group)
        for layer in self.layers:
            hidden = layer(hidden)
        if not self.last:
            return hidden
        hidden = self.final_norm(hidden)
        logits = ColumnParallelLinearFn.apply(hidden, self.output_weight(), None, c.tp_group, c.lay.sp)
        start = c.groups.tp_rank * self.vocab_shard
        losses = VocabParallelCrossEntropy.apply(logits.float(), labels.t(), start, c.tp_group)  # [s, b]
        return losses.mean()


# =================================================================================================
# 5. Data: a learnable synthetic corpus (arithmetic progressions mod V), the same for every layout.
#    Megatron's sampler: DP rank d reads its contiguous share of the global batch.
# =================================================================================================

def global_batch_tokens(step: int, model: ModelConfig, lay: Layout, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed * 7919 + step)
    start = torch.randint(0, model.vocab_size, (lay.global_batch, 1), generator=gen)
    stride = torch.randint(1, 8, (lay.global_batch, 1), generator=gen)
    return (start + stride * torch.arange(lay.seq_len + 1)) % model.vocab_size


def microbatch(tokens: torch.Tensor, lay: Layout, dp_rank: int, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    per_rank = lay.global_batch // lay.dp
    rows = tokens[dp_rank * per_rank + i * lay.micro_batch: dp_rank * per_rank + (i + 1) * lay.micro_batch]
    return rows[:, :-1], rows[:, 1:]


# =================================================================================================
# 6. Pipeline communication (megatron/core/pipeline_parallel/p2p_communication.py, batch_p2p_comm)
# =================================================================================================

class Pipe:
    def __init__(self, c: Ctx):
        g, lay = c.groups, c.lay
        self.group, self.dtype = g.pp, c.dtype
        self.prev = g.pp_ranks[g.pp_rank - 1] if g.pp_rank > 0 else None
        self.next = g.pp_ranks[g.pp_rank + 1] if g.pp_rank < lay.pp - 1 else None
        seq = lay.seq_len // lay.tp if lay.sp else lay.seq_len
        self.shape = (seq, lay.micro_batch, c.model.hidden_size)

    def communicate(self, send_next=None, send_prev=None, recv_prev=False, recv_next=False):
        """One batch_isend_irecv in Megatron's order (send_prev, recv_prev, send_next, recv_next),
        waited for completely; returns the received (from prev, from next) tensors."""
        ops, from_prev, from_next = [], None, None
        recv_prev, recv_next = recv_prev and self.prev is not None, recv_next and self.next is not None
        if send_prev is not None and self.prev is not None:
            ops.append(dist.P2POp(dist.isend, send_prev.detach().contiguous(), self.prev, self.group))
        if recv_prev:
            from_prev = torch.empty(self.shape, dtype=self.dtype)
            ops.append(dist.P2POp(dist.irecv, from_prev, self.prev, self.group))
        if send_next is not None and self.next is not None:
            ops.append(dist.P2POp(dist.isend, send_next.detach().contiguous(), self.next, self.group))
        if recv_next:
            from_next = torch.empty(self.shape, dtype=self.dtype)
            ops.append(dist.P2POp(dist.irecv, from_next, self.next, self.group))
        if ops:
            for work in dist.batch_isend_irecv(ops):
                work.wait()
        if from_prev is not None:
            from_prev.requires_grad_()
        return from_prev, from_next

    def recv_forward(self):
        return self.communicate(recv_prev=True)[0]

    def send_forward(self, y):
        self.communicate(send_next=y)

    def recv_backward(self):
        return self.communicate(recv_next=True)[1]

    def send_backward(self, dx):
        self.communicate(send_prev=dx)

    def send_forward_recv_backward(self, y):
        return self.communicate(send_next=y, recv_next=True)[1]

    def send_backward_recv_forward(self, dx):
        return self.communicate(send_prev=dx, recv_prev=True)[0]


# =================================================================================================
# 7. One training step: 1F1B (forward_backward_pipelining_without_interleaving), then
#    finalize_model_grads, grad-norm clipping, the optimizer and the loss report.
# =================================================================================================

class Trainer:
    def __init__(self, c: Ctx, stage: Stage, model: nn.Module, dp_mode: str, lr: float):
        self.c, self.stage, self.model = c, stage, model
        self.dp_mode = dp_mode if c.lay.dp > 1 else "none"  # DP of size 1: no DDP / FSDP wrapper
        self.sharded_optimizer = dp_mode == "fsdp"  # gradient norm over every rank (as the generator)
        self.pipe = Pipe(c)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, foreach=False)

    # --- micro-batch passes --------------------------------------------------------------------

    def forward_step(self, x, tokens, labels):
        m = self.c.lay.num_microbatches
        if self.dp_mode == "ddp":
            with self.model.no_sync():  # no gradient reduction before the last backward
                y = self.model(x, tokens, labels)
        else:
            y = self.model(x, tokens, labels)
        return y / m if self.stage.last else y

    def backward_step(self, x, y, dy, last: bool):
        if self.dp_mode == "ddp" and last:
            # Reduce gradients during this backward (torch.distributed.pipelining does the same).
            self.model.reducer.prepare_for_backward([])
        elif self.dp_mode == "fsdp":
            self.model.set_requires_gradient_sync(last)
            self.model.set_is_last_backward(last)
        torch.autograd.backward(y, grad_tensors=None if dy is None else dy)
        return x.grad if x is not None else None

    def forward_backward(self, step_tokens):
        """Megatron's non-interleaved 1F1B; returns the summed (scaled) losses of the last stage."""
        lay, pipe, g = self.c.lay, self.pipe, self.c.groups
        m = lay.num_microbatches
        warmup = min(lay.pp - g.pp_rank - 1, m)
        remaining = m - warmup
        inputs, outputs, losses = [], [], []
        batches = [microbatch(step_tokens, lay, g.dp_rank, i) for i in range(m)]
        backwards_done = 0

        def run_forward(i, x):
            y = self.forward_step(x, *batches[i])
            if self.stage.last:
                losses.append(y.detach())
            inputs.append(x)
            outputs.append(y)
            return y

        def run_backward(dy):
            nonlocal backwards_done
            x, y = inputs.pop(0), outputs.pop(0)
            backwards_done += 1
            return self.backward_step(x, y, dy, last=backwards_done == m)

        for i in range(warmup):
            x = pipe.recv_forward()
            pipe.send_forward(run_forward(i, x))
        x = pipe.recv_forward() if remaining > 0 else None
        for i in range(remaining):
            y = run_forward(warmup + i, x)
            dy = pipe.send_forward_recv_backward(y)
            dx = run_backward(dy)
            if i == remaining - 1:
                x = None
                pipe.send_backward(dx)
            else:
                x = pipe.send_backward_recv_forward(dx)
        for _ in range(warmup):
            dy = pipe.recv_backward()
            pipe.send_backward(run_backward(dy))
        return torch.stack(losses).sum() if losses else None

    # --- end of step ---------------------------------------------------------------------------

    def local_grad(self, p):
        grad = p.grad
        return grad.to_local() if hasattr(grad, "to_local") else grad

    def finalize_grads(self) -> None:
        """After DP gradient sync (done by DDP/FSDP in the last backward): the SP-replicated
        gradients over TP (one flat all-reduce), then the tied embedding over the embedding group."""
        c, stage = self.c, self.stage
        named = dict(stage.named_parameters())
        if c.lay.sp:
            grads = [self.local_grad(p) for n, p in named.items() if n in c.sp_param_names and p.grad is not None]
            if grads:
                flat = torch._utils._flatten_dense_tensors(grads)
                dist.all_reduce(flat, group=c.tp_group)
                for buf, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
                    buf.copy_(synced)
        if c.model.tied_embeddings and c.lay.pp > 1 and (stage.first or stage.last):
            weight = stage.embedding.weight if stage.first else stage.output
            dist.all_reduce(self.local_grad(weight), group=c.groups.embd)

    def clip_grad_norm(self, max_norm: float = 1.0) -> float:
        """Megatron's get_grad_norm_fp32: squares of the non-duplicated gradients, one fp32
        all-reduce over the model-parallel group (over every rank when the gradients are sharded)."""
        c = self.c
        total = torch.zeros(1, dtype=torch.float32)
        for name, p in self.stage.named_parameters():
            if p.grad is None or name in c.shared_names or (name in c.tp_duplicate_names and c.groups.tp_rank != 0):
                continue
            total += self.local_grad(p).float().pow(2).sum()
        group = None if self.sharded_optimizer else c.groups.mp  # None: the default (world) group
        if dist.get_world_size(group) > 1:
            dist.all_reduce(total, group=group)
        norm = float(total.sqrt())
        scale = max_norm / (norm + 1e-6)
        if scale < 1.0:
            for p in self.stage.parameters():
                if p.grad is not None:
                    p.grad.mul_(scale)
        return norm

    def train_step(self, step: int) -> tuple[float | None, float]:
        c = self.c
        tokens = global_batch_tokens(step, c.model, c.lay, c.seed)
        loss_sum = self.forward_backward(tokens)
        self.finalize_grads()
        norm = self.clip_grad_norm()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss = None
        if self.stage.last:  # Megatron train_step: [loss, tokens] summed over DP once per step
            report = torch.stack([loss_sum.float(), torch.tensor(1.0)])
            if c.lay.dp > 1:
                dist.all_reduce(report, group=c.groups.dp)
            loss = float(report[0] / report[1])
        return loss, norm


# =================================================================================================
# 8. Setup and main loop
# =================================================================================================

def wrap_data_parallel(stage: Stage, c: Ctx, dp_mode: str) -> nn.Module:
    if c.lay.dp == 1:
        return stage  # nothing to reduce over (and the generator issues no DP collectives)
    if dp_mode == "ddp":
        # bucket_cap_mb default (25 MiB, first bucket 1 MiB after the rebuild); no buffers to broadcast.
        return nn.parallel.DistributedDataParallel(stage, process_group=c.groups.dp)
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import fully_shard

    mesh = DeviceMesh.from_group(c.groups.dp, "cpu")
    for layer in stage.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(stage, mesh=mesh)  # root: embedding, positions, final norm, output layer
    return stage


def sync_tied_embedding(stage: Stage, c: Ctx) -> None:
    """Megatron setup_embeddings_and_output_layer: the last stage's zeroed copy gets the first
    stage's weights by an all-reduce over the embedding group (setup traffic)."""
    if c.model.tied_embeddings and c.lay.pp > 1 and (stage.first or stage.last):
        weight = stage.embedding.weight if stage.first else stage.output
        with torch.no_grad():
            dist.all_reduce(weight.data, group=c.groups.embd)


def generator_command(args, lay: Layout, model_toml: str, out: str) -> list[str]:
    """The ``dynamiccl generate`` call that predicts this job's communication."""
    grad = args.dtype  # torch DDP / FSDP reduce gradients in the parameters' dtype
    cmd = ["dynamiccl", "generate", "--model", model_toml, "--tp", str(lay.tp), "--pp", str(lay.pp),
           "--dp", str(lay.dp), "--micro-batch", str(lay.micro_batch), "--global-batch", str(lay.global_batch),
           "--seq-len", str(lay.seq_len), "--dp-mode", args.dp_mode, "--dtype", args.dtype,
           "--grad-reduce-dtype", grad, "--all-ranks", "-o", out]
    if lay.sp:
        cmd.insert(cmd.index("--micro-batch"), "--sp")
    return cmd


def model_toml(model: ModelConfig) -> str:
    keys = ("name", "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_kv_heads",
            "vocab_size", "seq_length", "global_batch", "norm", "activation", "bias", "position_embedding",
            "tied_embeddings")
    lines = ["[model]"]
    for key in keys:
        value = getattr(model, key)
        lines.append(f"{key} = " + (json.dumps(value) if not isinstance(value, bool) else str(value).lower()))
    return "\n".join(lines) + "\n"


def write_job_description(directory: Path, args, model: ModelConfig, lay: Layout, argv: list[str]) -> None:
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.toml").write_text(model_toml(model), encoding="utf-8")
    doc = {
        "job": "dynamiccl.profiler.reference_job",
        "argv": argv,
        "model": dataclasses.asdict(model),
        "layout": dataclasses.asdict(lay) | {"dp_mode": args.dp_mode, "dtype": args.dtype,
                                               "grad_reduce_dtype": args.dtype,
                                               "num_microbatches": lay.num_microbatches},
        "steps": args.steps,
        "capture_mode": args.capture_mode or "default",
        "generate": generator_command(args, lay, str(directory / "model.toml"), str(directory / "generated.parquet")),
    }
    (directory / "job.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    dist.init_process_group("gloo")
    torch.manual_seed(args.seed)
    model_cfg = model_config(args)
    lay = make_layout(args, model_cfg, dist.get_world_size())
    groups = create_groups(lay)
    c = Ctx(model_cfg, lay, groups, DTYPES[args.dtype], args.seed)
    report_rank = (lay.pp - 1) * lay.tp * lay.dp  # last stage, tp 0, dp 0: prints the loss
    if args.profile and groups.rank == 0:
        write_job_description(Path(args.profile), args, model_cfg, lay, argv)

    if args.profile:
        from dynamiccl.profiler.capture import capture
        recorder = capture(args.profile, **({"mode": args.capture_mode} if args.capture_mode else {}))
    else:
        recorder = contextlib.nullcontext()
    results = {"losses": [], "grad_norms": [], "step_seconds": []}
    with recorder as cap:
        stage = Stage(c)
        c.sp_param_names = {n for n, p in stage.named_parameters() if p.sequence_parallel}
        c.tp_duplicate_names = {n for n, p in stage.named_parameters() if p.tp_duplicate}
        c.shared_names = {n for n, p in stage.named_parameters() if getattr(p, "shared", False)}
        sync_tied_embedding(stage, c)
        model = wrap_data_parallel(stage, c, args.dp_mode)
        trainer = Trainer(c, stage, model, args.dp_mode, args.lr)
        for step in range(1, args.steps + 1):
            started = time.perf_counter()
            with cap.step() if cap is not None else contextlib.nullcontext():
                loss, norm = trainer.train_step(step)
            results["step_seconds"].append(time.perf_counter() - started)
            results["losses"].append(loss)
            results["grad_norms"].append(norm)
            if groups.rank == report_rank and not args.quiet:
                print(f"step {step:3d}  loss {loss:.4f}  grad norm {norm:.4f}  "
                      f"{results['step_seconds'][-1] * 1e3:.1f} ms", flush=True)
    if args.profile:
        dist.barrier()  # every rank's file is written (outside the capture: not recorded)
        if args.trace and groups.rank == 0:
            from dynamiccl.profiler.merge import merge_capture
            trace = merge_capture(args.profile, description=f"reference job: {shlex.join(argv)}")
            trace.write(args.trace)
            print(f"wrote {args.trace}", flush=True)
    if args.json_out and groups.rank == report_rank:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps({"argv": argv, **results}, indent=1) + "\n", encoding="utf-8")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
