"""Transformer model configurations: the built-in ones and user models from TOML.

A model is a ``[model]`` table (with optional ``[model.moe]`` and ``[model.mla]`` sub-tables); the
built-ins live in ``dynamiccl/workload/models/*.toml`` and are the templates for user files::

    [model]
    name = "my-model"
    num_layers = 32            # transformer layers
    hidden_size = 4096         # h
    ffn_hidden_size = 14336    # f (per dense MLP)
    num_attention_heads = 32   # a
    num_kv_heads = 8           # g (GQA groups); default a
    vocab_size = 128256        # V (padded to a multiple of 128 x TP, as Megatron does)
    seq_length = 8192          # default training sequence length s
    global_batch = 128         # default global batch, sequences
    norm = "rmsnorm"           # or "layernorm" (weight and bias)
    activation = "swiglu"      # or "gelu" (fc1 of width f instead of 2f)
    bias = false               # biases on linear layers
    position_embedding = "rope"  # or "learned" (s x h table on the first stage)
    tied_embeddings = false    # output layer shares the word embedding

    [model.moe]                # optional: mixture of experts in place of the dense MLP
    num_experts = 8
    top_k = 2
    expert_ffn_hidden_size = 14336
    shared_expert_ffn_hidden_size = 0   # always-on shared expert width (0 = none)
    first_dense_layers = 0              # the first k layers keep a dense MLP

    [model.mla]                # optional: multi-head latent attention (DeepSeek-V2/V3)
    q_lora_rank = 1536
    kv_lora_rank = 512
    qk_nope_head_dim = 128
    qk_rope_head_dim = 64
    v_head_dim = 128

Parameter counts follow the layer formulas: Llama layer h(h+2gh/a) + h² + 3hf (Q, K/V with g KV
heads, output projection, SwiGLU MLP; Llama 3, arXiv:2407.21783 Tab. 3); GPT layer 12h² + 13h
(Narayanan et al., arXiv:2104.04473 §5.1).
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass
from importlib import resources
from typing import Any

from dynamiccl import schema
from dynamiccl.errors import InputError


@dataclass(frozen=True)
class MoEConfig:
    num_experts: int
    top_k: int
    expert_ffn_hidden_size: int
    shared_expert_ffn_hidden_size: int = 0
    first_dense_layers: int = 0


@dataclass(frozen=True)
class MLAConfig:
    q_lora_rank: int
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int


@dataclass(frozen=True)
class ModelConfig:
    """A decoder-only transformer; see the module docstring for the meaning of each field."""

    name: str
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    vocab_size: int
    seq_length: int
    global_batch: int
    num_kv_heads: int = 0
    head_dim: int = 0
    norm: str = "rmsnorm"
    activation: str = "swiglu"
    bias: bool = False
    position_embedding: str = "rope"
    tied_embeddings: bool = False
    moe: MoEConfig | None = None
    mla: MLAConfig | None = None
    reference_params: float = 0.0
    source: str = ""

    def __post_init__(self):
        # 0 means "derive": GQA groups default to the head count, head_dim to h / a.
        if self.num_kv_heads == 0:
            object.__setattr__(self, "num_kv_heads", self.num_attention_heads)
        if self.head_dim == 0:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)

    # --- structure -------------------------------------------------------------------------------

    def is_moe_layer(self, layer: int) -> bool:
        """Whether transformer layer ``layer`` (0-based) has experts instead of a dense MLP."""
        return self.moe is not None and layer >= self.moe.first_dense_layers

    @property
    def norm_params(self) -> int:
        return self.hidden_size * (2 if self.norm == "layernorm" else 1)

    def _norm_tensor(self, name: str, width: int | None = None) -> "ParamTensor":
        """A norm's parameters: LayerNorm's weight and bias (two tensors), or RMSNorm's weight."""
        width = self.hidden_size if width is None else width
        if self.norm == "layernorm":
            return ParamTensor(name, 2 * width, "replicated", parts=(width, width))
        return ParamTensor(name, width, "replicated")

    @staticmethod
    def _linear_parts(weight: int, bias: int) -> tuple[int, ...]:
        """A linear layer's weight then its bias: the order autograd accumulates their gradients
        (one backward node, inputs in forward order)."""
        return (weight, bias) if bias else ()

    def padded_vocab(self, tp: int) -> int:
        """Megatron pads the vocabulary to a multiple of 128 × TP (make-vocab-size-divisible-by)."""
        multiple = 128 * tp
        return math.ceil(self.vocab_size / multiple) * multiple

    @property
    def attn_q_width(self) -> int:
        """Width of the attention output before the out-projection (a × v_head_dim)."""
        v_dim = self.mla.v_head_dim if self.mla else self.head_dim
        return self.num_attention_heads * v_dim

    def layer_tensors(self, layer: int) -> list["ParamTensor"]:
        """The parameters of one transformer layer, in forward order, full (unsharded) sizes."""
        h, b = self.hidden_size, self.bias
        out: list[ParamTensor] = [self._norm_tensor("attn.norm")]
        if self.mla:
            m = self.mla
            a = self.num_attention_heads
            out += [
                # Down-projections are small and duplicated on every TP rank (Megatron MLA).
                ParamTensor("attn.q_down", h * m.q_lora_rank, "replicated"),
                ParamTensor("attn.q_norm", m.q_lora_rank, "replicated"),
                ParamTensor("attn.q_up", m.q_lora_rank * a * (m.qk_nope_head_dim + m.qk_rope_head_dim), "column"),
                ParamTensor("attn.kv_down", h * (m.kv_lora_rank + m.qk_rope_head_dim), "replicated"),
                ParamTensor("attn.kv_norm", m.kv_lora_rank, "replicated"),
                ParamTensor("attn.kv_up", m.kv_lora_rank * a * (m.qk_nope_head_dim + m.v_head_dim), "column"),
            ]
        else:
            qkv_width = (self.num_attention_heads + 2 * self.num_kv_heads) * self.head_dim
            out.append(ParamTensor("attn.qkv", h * qkv_width + (qkv_width if b else 0), "column",
                                   parts=self._linear_parts(h * qkv_width, qkv_width if b else 0)))
        out.append(ParamTensor("attn.out", self.attn_q_width * h, "row"))
        if b:
            out.append(ParamTensor("attn.out.bias", h, "replicated"))
        out.append(self._norm_tensor("mlp.norm"))
        if self.is_moe_layer(layer):
            moe = self.moe
            out.append(ParamTensor("moe.router", h * moe.num_experts, "replicated"))
            if moe.shared_expert_ffn_hidden_size:
                out += self._mlp_tensors("moe.shared", moe.shared_expert_ffn_hidden_size, expert=False)
            out += self._mlp_tensors("moe.expert", moe.expert_ffn_hidden_size, expert=True)
        else:
            out += self._mlp_tensors("mlp", self.ffn_hidden_size, expert=False)
        return out

    def _mlp_tensors(self, prefix: str, ffn: int, expert: bool) -> list["ParamTensor"]:
        h, b = self.hidden_size, self.bias
        fc1_width = 2 * ffn if self.activation == "swiglu" else ffn
        count = self.moe.num_experts if expert else 1
        tensors = [
            ParamTensor(f"{prefix}.fc1", h * fc1_width + (fc1_width if b else 0), "column", expert, count,
                        parts=self._linear_parts(h * fc1_width, fc1_width if b else 0)),
            ParamTensor(f"{prefix}.fc2", ffn * h, "row", expert, count),
        ]
        if b:
            tensors.append(ParamTensor(f"{prefix}.fc2.bias", h, "replicated", expert, count))
        return tensors

    def embedding_tensors(self, tp: int) -> list["ParamTensor"]:
        """First-stage parameters: the vocab-parallel word embedding (+ learned positions)."""
        out = [ParamTensor("embedding.word", self.padded_vocab(tp) * self.hidden_size, "column")]
        if self.position_embedding == "learned":
            out.append(ParamTensor("embedding.position", self.seq_length * self.hidden_size, "replicated"))
        return out

    def head_tensors(self, tp: int, pp: int) -> list["ParamTensor"]:
        """Last-stage parameters: the final norm and the output layer (a copy of the word embedding
        on the last stage when tied and PP > 1; none of its own when tied on one stage)."""
        out = [self._norm_tensor("final_norm")]
        if not self.tied_embeddings or pp > 1:
            out.append(ParamTensor("output", self.padded_vocab(tp) * self.hidden_size, "column"))
        return out

    def total_params(self) -> int:
        """All parameters, unpadded vocabulary, tied embeddings counted once."""
        layers = sum(t.count * t.numel for i in range(self.num_layers) for t in self.layer_tensors(i))
        v, h = self.vocab_size, self.hidden_size
        embed = v * h * (1 if self.tied_embeddings else 2)
        if self.position_embedding == "learned":
            embed += self.seq_length * h
        return layers + embed + self.norm_params


@dataclass(frozen=True)
class ParamTensor:
    """One parameter tensor: ``numel`` elements per copy; ``tp`` says how TP shards it (column /
    row: split over TP ranks; replicated: whole on each); ``expert`` tensors exist once per expert
    (``count`` = number of experts) and reduce over the expert-data-parallel group."""

    name: str
    numel: int
    tp: str
    expert: bool = False
    count: int = 1
    parts: tuple[int, ...] = ()  # the tensors of one copy (e.g. weight, bias), gradient-ready order

    def per_rank_numel(self, tp: int, etp: int = 1) -> int:
        """Elements of one copy on one rank (experts sharded by the expert TP size ``etp``)."""
        if self.tp == "replicated":
            return self.numel
        return self.numel // (etp if self.expert else tp)

    def per_rank_parts(self, tp: int, etp: int = 1) -> tuple[int, ...]:
        """The tensors of one copy on one rank, in the order their gradients become ready; a
        column-parallel linear's weight and bias are both split over TP."""
        parts = self.parts or (self.numel,)
        if self.tp == "replicated":
            return parts
        split = etp if self.expert else tp
        return tuple(p // split for p in parts)


# --- loading -------------------------------------------------------------------------------------

# Upper bounds: about 8x the largest published configurations (Llama 3.1 405B: 126 layers, h 16384,
# f 53248, 128 heads; DeepSeek-V3: 256 routed experts, top-8, MLA ranks <= 1536; Gemma: a 256K vocabulary;
# "The Llama 3 Herd of Models", arXiv:2407.21783; DeepSeek-V3 technical report, arXiv:2412.19437), so
# that every size a trace holds (products of these) stays well inside 64 bits.
MAX_LAYERS, MAX_WIDTH, MAX_HEADS, MAX_VOCAB = 1024, 1 << 20, 1024, 1 << 22
MAX_SEQ_LENGTH, MAX_GLOBAL_BATCH, MAX_EXPERTS = 1 << 22, 1 << 16, 4096
MOE = schema.Schema(
    schema.integer("num_experts", low=1, high=MAX_EXPERTS),
    schema.integer("top_k", low=1, high=MAX_EXPERTS),
    schema.integer("expert_ffn_hidden_size", low=1, high=MAX_WIDTH),
    schema.integer("shared_expert_ffn_hidden_size", 0, low=0, high=MAX_WIDTH,
                   help="always-on shared expert width (0 = none)"),
    schema.integer("first_dense_layers", 0, low=0, high=MAX_LAYERS, help="the first k layers keep a dense MLP"),
)
MLA = schema.Schema(*(schema.integer(name, low=1, high=MAX_WIDTH) for name in (
    "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")))
MODEL = schema.Schema(
    schema.string("name", non_empty=True),
    schema.integer("num_layers", low=1, high=MAX_LAYERS, help="transformer layers"),
    schema.integer("hidden_size", low=1, high=MAX_WIDTH, help="h"),
    schema.integer("ffn_hidden_size", low=1, high=MAX_WIDTH, help="f (per dense MLP)"),
    schema.integer("num_attention_heads", low=1, high=MAX_HEADS, help="a"),
    schema.integer("num_kv_heads", None, low=1, high=MAX_HEADS, help="g (GQA groups); default a"),
    schema.integer("head_dim", None, low=1, high=MAX_WIDTH, help="default h / a"),
    schema.integer("vocab_size", low=1, high=MAX_VOCAB,
                   help="V (padded to a multiple of 128 x TP, as Megatron does)"),
    schema.integer("seq_length", low=1, high=MAX_SEQ_LENGTH, help="default training sequence length s"),
    schema.integer("global_batch", low=1, high=MAX_GLOBAL_BATCH, help="default global batch, sequences"),
    schema.choice("norm", ("rmsnorm", "layernorm"), "rmsnorm"),
    schema.choice("activation", ("swiglu", "gelu"), "swiglu", help="gelu: fc1 of width f instead of 2f"),
    schema.flag("bias", False, help="biases on linear layers"),
    schema.choice("position_embedding", ("rope", "learned"), "rope"),
    schema.flag("tied_embeddings", False, help="output layer shares the word embedding"),
    schema.table("moe", MOE, None, help="mixture of experts in place of the dense MLP"),
    schema.table("mla", MLA, None, help="multi-head latent attention (DeepSeek-V2/V3)"),
    schema.number("reference_params", 0.0, low=0, help="published parameter count, for the tests"),
    schema.string("source", "", help="where the configuration comes from"),
)
MODEL_FILE = schema.Schema(schema.table("model", MODEL), sections=True)


def model_from_dict(obj: dict[str, Any], source: str) -> ModelConfig:
    """Build a ``ModelConfig`` from a parsed TOML document.

    Raises:
        InputError: naming ``source`` and the key (e.g. ``model.hidden_size``) that is missing,
            unknown or of the wrong type or value.
    """
    values = MODEL_FILE.parse(obj, source)["model"]
    values["name"] = values["name"].strip()
    if "moe" in values:
        moe = values["moe"]
        if moe["top_k"] > moe["num_experts"]:
            raise InputError(source, "model.moe.top_k", f"top_k {moe['top_k']} exceeds num_experts {moe['num_experts']}")
        values["moe"] = MoEConfig(**moe)
    if "mla" in values:
        values["mla"] = MLAConfig(**values["mla"])
    cfg = ModelConfig(**values)
    if cfg.hidden_size % cfg.num_attention_heads and "head_dim" not in values:
        raise InputError(source, "model.hidden_size",
                         f"{cfg.hidden_size} is not divisible by num_attention_heads {cfg.num_attention_heads}; "
                         "set model.head_dim explicitly")
    if cfg.num_attention_heads % cfg.num_kv_heads:
        raise InputError(source, "model.num_kv_heads",
                         f"num_attention_heads {cfg.num_attention_heads} must be a multiple of num_kv_heads "
                         f"{cfg.num_kv_heads}")
    if cfg.moe and cfg.moe.first_dense_layers > cfg.num_layers:
        raise InputError(source, "model.moe.first_dense_layers", "exceeds num_layers")
    return cfg


def load_model_file(path: str | os.PathLike) -> ModelConfig:
    """Read a model TOML file; raises ``InputError`` naming the file and key on any problem."""
    return model_from_dict(schema.read_toml(path, "model"), os.fspath(path))


def _normal(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def builtin_models() -> dict[str, ModelConfig]:
    """The shipped models by name."""
    out = {}
    for entry in sorted(resources.files("dynamiccl.workload").joinpath("models").iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".toml"):
            cfg = model_from_dict(tomllib.loads(entry.read_text(encoding="utf-8")), f"<builtin>/{entry.name}")
            out[cfg.name] = cfg
    return out


def load_model(name_or_path: str, source: str = "--model", field: str | None = None) -> ModelConfig:
    """A built-in model by name (case, dashes and dots ignored: "Llama-3.1-405B"), or a TOML file.

    Raises:
        InputError: an unknown model name (naming ``source``/``field``, listing the built-ins), or a
            bad model file (naming that file and its key).
    """
    if name_or_path.endswith(".toml") or os.sep in name_or_path:
        return load_model_file(name_or_path)
    models = builtin_models()
    by_normal = {_normal(n): cfg for n, cfg in models.items()}
    found = by_normal.get(_normal(name_or_path))
    if found is None:
        raise InputError(source, field,
                         f"unknown model {name_or_path!r}; built-in models: {', '.join(models)} "
                         "(or give a path to a model TOML file)")
    return found
