"""FLOPs of each compute segment of a transformer layer on one rank, per micro-batch.

A GEMM of (m × k) by (k × n) costs 2·m·k·n FLOPs. Per rank, tokens are b·s/cp and every
tensor-parallel GEMM is split t ways (Narayanan et al., arXiv:2104.04473 §5.1 give the whole-model
count 24·b·s·h² + 4·b·s²·h per layer forward for GPT; this module counts the same GEMMs one by one
so that GQA, SwiGLU, MoE and MLA come out right). Causal attention scores cost half the full s²
product (FlashAttention skips masked blocks). Backward GEMMs cost 2× forward (one dgrad, one wgrad
of the same size); attention backward costs 2.5× forward (5 matmuls instead of 2, FlashAttention-2,
Dao 2023 §3.1).
"""

from __future__ import annotations

from dataclasses import dataclass

from dynamiccl.workload.layout import ParallelLayout
from dynamiccl.workload.models import ModelConfig

ATTENTION_BACKWARD_FACTOR = 2.5
CAUSAL_FRACTION = 0.5


@dataclass(frozen=True)
class BlockFlops:
    """Forward FLOPs of one TP region of a layer, split the way Megatron issues its work.

    ``column``: the column-parallel GEMM(s) that read the region's input (QKV / fc1); its backward
    splits into a dgrad and a wgrad of the same size. ``inner``: what runs between (attention core,
    activation). ``row``: the row-parallel GEMM that writes the output (out-proj / fc2).
    """

    column: float
    inner: float
    row: float
    inner_backward_factor: float = 2.0

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
        else:
            qkv_width = (a + 2 * m.num_kv_heads) * m.head_dim
            column = 2 * n * h * qkv_width / t
            qk_dim = v_dim = m.head_dim
        # Scores and weighted values: this rank's s/cp queries against the whole sequence.
        keys = self.layout.seq_len
        core = 2 * n * keys * (a / t) * (qk_dim + v_dim) * CAUSAL_FRACTION
        row = 2 * n * m.attn_q_width * h / t
        return BlockFlops(column, core, row, ATTENTION_BACKWARD_FACTOR)

    def mlp(self, ffn: int, tp: int | None = None, tokens: float | None = None) -> BlockFlops:
        m = self.model
        t = self.layout.tp if tp is None else tp
        n = self.tokens if tokens is None else tokens
        fc1_width = 2 * ffn if m.activation == "swiglu" else ffn
        return BlockFlops(2 * n * m.hidden_size * fc1_width / t, 0.0, 2 * n * ffn * m.hidden_size / t)

    def router(self, local_tokens: int) -> float:
        """The router GEMM over this rank's tokens (``local_tokens``: /t under SP)."""
        return 2.0 * local_tokens * self.model.hidden_size * self.model.moe.num_experts

    def experts(self, local_tokens: int) -> BlockFlops:
        """Routed experts: with balanced routing every rank processes local_tokens × top_k
        token-expert pairs. Expert TP gathers etp times as many tokens and splits the weights etp
        ways, which leaves the FLOPs per rank unchanged."""
        moe = self.model.moe
        return self.mlp(moe.expert_ffn_hidden_size, tp=1, tokens=local_tokens * moe.top_k)

    def lm_head(self) -> float:
        return 2.0 * self.tokens * self.model.hidden_size * self.model.padded_vocab(self.layout.tp) / self.layout.tp
