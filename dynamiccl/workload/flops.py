"""FLOPs of each compute segment of a transformer layer on one rank, per micro-batch.

A GEMM of (m × k) by (k × n) costs 2·m·k·n FLOPs. Per rank, tokens are b·s/cp and every
tensor-parallel GEMM is split t ways (Narayanan et al., arXiv:2104.04473 §5.1 give the whole-model
count 24·b·s·h² + 4·b·s²·h per layer forward for GPT; this module counts the same GEMMs one by one
so that GQA, SwiGLU, MoE and MLA come out right). Causal attention scores cost half the full s²
product (FlashAttention skips masked blocks). Backward GEMMs cost 2× forward (one dgrad, one wgrad
of the same size); attention backward costs 2.5× forward (5 matmuls instead of 2, FlashAttention-2,
Dao 2023 §3.1).

Each segment also records the bytes its work moves through device memory, for a roofline
(Williams, Waterman & Patterson, "Roofline", CACM 52(4), 2009: time = max(FLOPs / peak, bytes /
bandwidth)). The count is the compulsory traffic of the same operations the FLOPs count: a GEMM of
(m × k) by (k × n) reads both operands and writes its result once, (m·k + k·n + m·n) elements of
the trace's dtype (``gemm_bytes``); the attention core, as FlashAttention runs it, reads Q, K, V and
writes O (Dao et al. arXiv:2205.14135 §3; the s² scores never reach memory). Backward moves twice
the forward bytes: a GEMM's dgrad and wgrad each touch three tensors of the forward's sizes;
FlashAttention-2's backward reads Q, K, V, O, dO and writes dQ, dK, dV. Element-wise work the FLOPs
leave out (norms, activations, residual adds) is left out of the bytes too.
"""

from __future__ import annotations

from dataclasses import dataclass

from dynamiccl import nccl
from dynamiccl.workload.layout import ParallelLayout
from dynamiccl.workload.models import ModelConfig

ATTENTION_BACKWARD_FACTOR = 2.5
CAUSAL_FRACTION = 0.5
BACKWARD_BYTES_FACTOR = 2.0  # backward moves twice the forward bytes (module docstring)


def gemm_bytes(m: float, k: float, n: float, element_bytes: int) -> float:
    """Bytes a GEMM of (``m`` × ``k``) by (``k`` × ``n``) moves: both operands read and the result
    written once, at ``element_bytes`` per element (the roofline's compulsory traffic)."""
    return (m * k + k * n + m * n) * element_bytes


@dataclass(frozen=True)
class BlockFlops:
    """Forward FLOPs of one TP region of a layer, split the way Megatron issues its work.

    ``column``: the column-parallel GEMM(s) that read the region's input (QKV / fc1); its backward
    splits into a dgrad and a wgrad of the same size. ``inner``: what runs between (attention core,
    activation). ``row``: the row-parallel GEMM that writes the output (out-proj / fc2).
    ``*_bytes``: the bytes each part moves in forward (module docstring); a dgrad or a wgrad moves
    as many, a whole backward ``BACKWARD_BYTES_FACTOR`` times as many.
    """

    column: float
    inner: float
    row: float
    column_bytes: float
    inner_bytes: float
    row_bytes: float
    inner_backward_factor: float = 2.0

    @property
    def forward_bytes(self) -> float:
        return self.column_bytes + self.inner_bytes + self.row_bytes

    @property
    def backward_upper_bytes(self) -> float:
        """Bytes of ``backward_upper``: the row GEMM's and the inner part's backward."""
        return BACKWARD_BYTES_FACTOR * (self.row_bytes + self.inner_bytes)

    @property
    def forward(self) -> float:
        return self.column + self.inner + self.row

    @property
    def backward_upper(self) -> float:
        """Backward of row GEMM and inner part: done before the column GEMM's dgrad."""
        return 2.0 * self.row + self.inner_backward_factor * self.inner


class LayerFlops:
    """FLOPs per micro-batch on one rank for ``model`` under ``layout``."""

    def __init__(self, model: ModelConfig, layout: ParallelLayout):
        self.model = model
        self.layout = layout
        self.tokens = layout.micro_batch * layout.seq_len // layout.cp  # tokens this rank computes
        self.element_bytes = nccl.parse_dtype(layout.dtype).size_bytes  # activations and weights

    def gemm_bytes(self, m: float, k: float, n: float) -> float:
        """``gemm_bytes`` at the trace's dtype."""
        return gemm_bytes(m, k, n, self.element_bytes)

    def attention_core_bytes(self, keys: int) -> float:
        """Bytes the attention core moves for this rank's queries against ``keys`` keys per sequence:
        Q read, K and V read, O written (FlashAttention), this rank's a/t heads."""
        m, t, lay = self.model, self.layout.tp, self.layout
        a = m.num_attention_heads
        if m.mla:  # keys and values are per head after the up-projection
            qk_dim, v_dim, kv_heads = m.mla.qk_nope_head_dim + m.mla.qk_rope_head_dim, m.mla.v_head_dim, a
        else:
            qk_dim = v_dim = m.head_dim
            kv_heads = m.num_kv_heads
        queries = self.tokens * (a / t) * (qk_dim + v_dim)
        key_values = lay.micro_batch * keys * (kv_heads / t) * (qk_dim + v_dim)
        return (queries + key_values) * self.element_bytes

    def attention(self) -> BlockFlops:
        m, t, n = self.model, self.layout.tp, self.tokens
        h, a = m.hidden_size, m.num_attention_heads
        if m.mla:
            x = m.mla
            # Down-projections are duplicated on every TP rank; up-projections are column-parallel.
            column = 2 * n * (h * x.q_lora_rank + h * (x.kv_lora_rank + x.qk_rope_head_dim)
                              + (x.q_lora_rank * a * (x.qk_nope_head_dim + x.qk_rope_head_dim)
                                 + x.kv_lora_rank * a * (x.qk_nope_head_dim + x.v_head_dim)) / t)
            qk_dim, v_dim = x.qk_nope_head_dim + x.qk_rope_head_dim, x.v_head_dim
            column_bytes = (self.gemm_bytes(n, h, x.q_lora_rank)
                            + self.gemm_bytes(n, h, x.kv_lora_rank + x.qk_rope_head_dim)
                            + self.gemm_bytes(n, x.q_lora_rank, a * qk_dim / t)
                            + self.gemm_bytes(n, x.kv_lora_rank, a * (x.qk_nope_head_dim + v_dim) / t))
        else:
            qkv_width = (a + 2 * m.num_kv_heads) * m.head_dim
            column = 2 * n * h * qkv_width / t
            column_bytes = self.gemm_bytes(n, h, qkv_width / t)
            qk_dim = v_dim = m.head_dim
        # Scores and weighted values: this rank's s/cp queries against the whole sequence.
        keys = self.layout.seq_len
        core = 2 * n * keys * (a / t) * (qk_dim + v_dim) * CAUSAL_FRACTION
        row = 2 * n * m.attn_q_width * h / t
        return BlockFlops(column, core, row, column_bytes, self.attention_core_bytes(keys),
                          self.gemm_bytes(n, m.attn_q_width / t, h), ATTENTION_BACKWARD_FACTOR)

    def mlp(self, ffn: int, tp: int | None = None, tokens: float | None = None,
            weight_copies: float = 1) -> BlockFlops:
        """fc1 (column) and fc2 (row) of an MLP of ``ffn`` hidden units split ``tp`` ways over
        ``tokens`` tokens; ``weight_copies`` distinct weight sets are read (experts held locally)."""
        m = self.model
        t = self.layout.tp if tp is None else tp
        n = self.tokens if tokens is None else tokens
        h = m.hidden_size
        fc1_width = 2 * ffn if m.activation == "swiglu" else ffn
        extra_weights = (weight_copies - 1) * self.element_bytes
        fc1_bytes = self.gemm_bytes(n, h, fc1_width / t) + extra_weights * h * fc1_width / t
        fc2_bytes = self.gemm_bytes(n, ffn / t, h) + extra_weights * ffn / t * h
        return BlockFlops(2 * n * m.hidden_size * fc1_width / t, 0.0, 2 * n * ffn * m.hidden_size / t,
                          fc1_bytes, 0.0, fc2_bytes)

    def router(self, local_tokens: int) -> float:
        """The router GEMM over this rank's tokens (``local_tokens``: /t under SP)."""
        return 2.0 * local_tokens * self.model.hidden_size * self.model.moe.num_experts

    def router_bytes(self, local_tokens: int) -> float:
        """Bytes of the router GEMM (tokens × h by h × experts)."""
        return self.gemm_bytes(local_tokens, self.model.hidden_size, self.model.moe.num_experts)

    def experts(self, local_tokens: int) -> BlockFlops:
        """Routed experts: with balanced routing every rank processes local_tokens × top_k
        token-expert pairs. Expert TP gathers etp times as many tokens and splits the weights etp
        ways, which leaves the FLOPs per rank unchanged."""
        moe = self.model.moe
        lay = self.layout
        etp = lay.etp or lay.tp
        # Bytes: etp × the tokens through 1/etp of the weights of each of this rank's experts.
        local_experts = moe.num_experts / lay.ep
        bytes_shape = self.mlp(moe.expert_ffn_hidden_size, tp=etp, tokens=local_tokens * moe.top_k * etp,
                               weight_copies=local_experts)
        flops = self.mlp(moe.expert_ffn_hidden_size, tp=1, tokens=local_tokens * moe.top_k)
        return BlockFlops(flops.column, flops.inner, flops.row, bytes_shape.column_bytes, bytes_shape.inner_bytes,
                          bytes_shape.row_bytes)

    def lm_head(self) -> float:
        return 2.0 * self.tokens * self.model.hidden_size * self.model.padded_vocab(self.layout.tp) / self.layout.tp

    def lm_head_bytes(self) -> float:
        """Bytes of the output layer's GEMM (tokens × h by h × vocab/t)."""
        vocab_share = self.model.padded_vocab(self.layout.tp) / self.layout.tp
        return self.gemm_bytes(self.tokens, self.model.hidden_size, vocab_share)
