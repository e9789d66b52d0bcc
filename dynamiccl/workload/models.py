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

Parameter counts follow the layer formulas of ``trace-formats.md`` §4.7 (Llama layer
h(h+2gh/a) + h² + 3hf; GPT layer 12h² + 13h).
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

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

_REQUIRED = ("name", "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "vocab_size",
             "seq_length", "global_batch")
_INT_KEYS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_kv_heads",
             "head_dim", "vocab_size", "seq_length", "global_batch")
_BOOL_KEYS = ("bias", "tied_embeddings")
_CHOICES = {"norm": ("rmsnorm", "layernorm"), "activation": ("swiglu", "gelu"),
            "position_embedding": ("rope", "learned")}
_MOE_REQUIRED = ("num_experts", "top_k", "expert_ffn_hidden_size")
_MOE_KEYS = _MOE_REQUIRED + ("shared_expert_ffn_hidden_size", "first_dense_layers")
_MLA_KEYS = ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")


def _int(table: dict, key: str, path: str, source: str, minimum: int = 1) -> int:
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(source, path, f"expected an integer >= {minimum}, got {value!r}")
    return value


def _subtable(table: dict, name: str, keys: tuple, required: tuple, source: str,
              optional_minimum: int = 1) -> dict[str, int]:
    """The integer keys of ``[model.<name>]``; optional keys may go down to ``optional_minimum``."""
    sub = table[name]
    if not isinstance(sub, dict):
        raise InputError(source, f"model.{name}", f"expected a table [model.{name}]")
    for key in sub:
        if key not in keys:
            raise InputError(source, f"model.{name}.{key}", f"unknown key; expected some of {', '.join(keys)}")
    for key in required:
        if key not in sub:
            raise InputError(source, f"model.{name}.{key}", f"missing (required in [model.{name}])")
    return {k: _int(sub, k, f"model.{name}.{k}", source, minimum=1 if k in required else optional_minimum)
            for k in sub}


def model_from_dict(obj: dict[str, Any], source: str) -> ModelConfig:
    """Build a ``ModelConfig`` from a parsed TOML document.

    Raises:
        InputError: naming ``source`` and the key (e.g. ``model.hidden_size``) that is missing,
            unknown or of the wrong type or value.
    """
    unknown_top = [k for k in obj if k != "model"]
    if unknown_top or "model" not in obj or not isinstance(obj["model"], dict):
        raise InputError(source, unknown_top[0] if unknown_top else "model",
                         "expected a single [model] table (with optional [model.moe] and [model.mla])")
    table = obj["model"]
    allowed = set(_REQUIRED) | set(_INT_KEYS) | set(_BOOL_KEYS) | set(_CHOICES) | {
        "moe", "mla", "reference_params", "source"}
    for key in table:
        if key not in allowed:
            raise InputError(source, f"model.{key}", f"unknown key; expected some of {', '.join(sorted(allowed))}")
    for key in _REQUIRED:
        if key not in table:
            raise InputError(source, f"model.{key}", "missing (required)")
    kwargs: dict[str, Any] = {}
    if not isinstance(table["name"], str) or not table["name"].strip():
        raise InputError(source, "model.name", "expected a non-empty string")
    kwargs["name"] = table["name"].strip()
    for key in _INT_KEYS:
        if key in table:
            kwargs[key] = _int(table, key, f"model.{key}", source)
    for key in _BOOL_KEYS:
        if key in table:
            if not isinstance(table[key], bool):
                raise InputError(source, f"model.{key}", f"expected true or false, got {table[key]!r}")
            kwargs[key] = table[key]
    for key, choices in _CHOICES.items():
        if key in table:
            if table[key] not in choices:
                raise InputError(source, f"model.{key}", f"expected one of {', '.join(choices)}, got {table[key]!r}")
            kwargs[key] = table[key]
    if "reference_params" in table:
        value = table["reference_params"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise InputError(source, "model.reference_params", f"expected a number >= 0, got {value!r}")
        kwargs["reference_params"] = float(value)
    if "source" in table:
        kwargs["source"] = str(table["source"])
    if "moe" in table:
        vals = _subtable(table, "moe", _MOE_KEYS, _MOE_REQUIRED, source, optional_minimum=0)
        if vals["top_k"] > vals["num_experts"]:
            raise InputError(source, "model.moe.top_k", f"top_k {vals['top_k']} exceeds num_experts {vals['num_experts']}")
        kwargs["moe"] = MoEConfig(**vals)
    if "mla" in table:
        kwargs["mla"] = MLAConfig(**_subtable(table, "mla", _MLA_KEYS, _MLA_KEYS, source))
    cfg = ModelConfig(**kwargs)
    if cfg.hidden_size % cfg.num_attention_heads and "head_dim" not in table:
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
    source = os.fspath(path)
    try:
        text = Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(source, None, f"cannot read model file ({exc.strerror})") from None
    try:
        obj = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(source, None, f"not valid TOML ({exc})") from None
    return model_from_dict(obj, source)


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


def load_model(name_or_path: str) -> ModelConfig:
    """A built-in model by name (case, dashes and dots ignored: "Llama-3.1-405B"), or a TOML file.

    Raises:
        InputError: unknown model name (listing the built-ins) or a bad model file.
    """
    if name_or_path.endswith(".toml") or os.sep in name_or_path:
        return load_model_file(name_or_path)
    models = builtin_models()
    by_normal = {_normal(n): cfg for n, cfg in models.items()}
    found = by_normal.get(_normal(name_or_path))
    if found is None:
        raise InputError("--model", None,
                         f"unknown model {name_or_path!r}; built-in models: {', '.join(models)} "
                         "(or give a path to a model TOML file)")
    return found
