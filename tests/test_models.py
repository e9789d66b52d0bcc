"""Tests of dynamiccl.workload.models: built-in parameter counts against published figures, the
layer formulas, name lookup, user TOML files and their errors, and Megatron's vocabulary padding.

Expected parameter counts are the papers' figures (GPT-3 arXiv:2005.14165; Llama 3 arXiv:2407.21783;
Mixtral arXiv:2401.04088; DeepSeek-V3 arXiv:2412.19437, without the MTP module; OLMoE
arXiv:2409.02060, Table 1), written here
independently of the ``reference_params`` in the shipped TOML files.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest

from dynamiccl.errors import InputError
from dynamiccl.workload.models import builtin_models, load_model, load_model_file, model_from_dict

PUBLISHED_PARAMS = {
    "gpt3-175b": 174.6e9,
    "llama3-8b": 8.03e9,
    "llama3-70b": 70.6e9,
    "llama3.1-405b": 405.9e9,
    "mixtral-8x7b": 46.7e9,
    "deepseek-v3": 671e9,
    "olmoe-1b-7b": 6.9e9,
}
# gpt-tiny: the reference job's model (dynamiccl/profiler/reference_job.py); its reference_params is
# its exact count, not a published figure.
BUILTIN_NAMES = sorted([*PUBLISHED_PARAMS, "gpt-tiny"])

TINY = """\
[model]
name = "tiny"
num_layers = 2
hidden_size = 256
ffn_hidden_size = 1024
num_attention_heads = 8
num_kv_heads = 2
vocab_size = 1000
seq_length = 128
global_batch = 4
"""

MOE = """
[model.moe]
num_experts = 4
top_k = 2
expert_ffn_hidden_size = 512
"""

MLA = """
[model.mla]
q_lora_rank = 64
kv_lora_rank = 32
qk_nope_head_dim = 16
qk_rope_head_dim = 8
v_head_dim = 16
"""


def layer_params(cfg, layer: int = 0) -> int:
    return sum(t.count * t.numel for t in cfg.layer_tensors(layer))


def write_model(tmp_path: Path, text: str, name: str = "model.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- built-in models -----------------------------------------------------------------------------

def test_builtin_names():
    assert sorted(builtin_models()) == BUILTIN_NAMES


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_total_params_match_published_figure(name):
    cfg = builtin_models()[name]
    assert cfg.total_params() == pytest.approx(PUBLISHED_PARAMS[name], rel=0.005)


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_total_params_match_reference_params(name):
    cfg = builtin_models()[name]
    assert cfg.reference_params > 0
    assert cfg.total_params() == pytest.approx(cfg.reference_params, rel=0.005)


def test_gpt_layer_is_12h2_plus_13h():
    cfg = builtin_models()["gpt3-175b"]
    h = cfg.hidden_size
    assert h == 12288
    assert layer_params(cfg) == 12 * h * h + 13 * h


def test_gpt3_total_is_layers_plus_tied_embedding_positions_and_final_norm():
    cfg = builtin_models()["gpt3-175b"]
    h, L, V, s = 12288, 96, 50257, 2048
    # Tied word embedding counted once, learned positions s x h, final LayerNorm weight and bias.
    assert cfg.total_params() == L * (12 * h * h + 13 * h) + V * h + s * h + 2 * h


@pytest.mark.parametrize("name, h, a, g, f", [
    ("llama3-8b", 4096, 32, 8, 14336),
    ("llama3-70b", 8192, 64, 8, 28672),
    ("llama3.1-405b", 16384, 128, 8, 53248),
])
def test_llama_layer_formula(name, h, a, g, f):
    cfg = builtin_models()[name]
    # h(h + 2gh/a) (QKV) + h² (out) + 3hf (SwiGLU), plus the two RMSNorm weight vectors.
    assert layer_params(cfg) == h * (h + 2 * g * h // a) + h * h + 3 * h * f + 2 * h


@pytest.mark.parametrize("name, L, h, a, g, f, V", [
    ("llama3-8b", 32, 4096, 32, 8, 14336, 128256),
    ("llama3.1-405b", 126, 16384, 128, 8, 53248, 128256),
])
def test_llama_total_is_layers_plus_untied_embeddings(name, L, h, a, g, f, V):
    layer = h * (h + 2 * g * h // a) + h * h + 3 * h * f + 2 * h
    assert builtin_models()[name].total_params() == L * layer + 2 * V * h + h


def test_mixtral_moe_layer():
    cfg = builtin_models()["mixtral-8x7b"]
    h, a, g, E, fe = 4096, 32, 8, 8, 14336
    attn = h * (h + 2 * g * h // a) + h * h
    assert layer_params(cfg) == attn + 2 * h + h * E + E * 3 * h * fe  # router h x E, 8 SwiGLU experts


def test_deepseek_v3_mla_and_moe_layers():
    cfg = builtin_models()["deepseek-v3"]
    h, a = 7168, 128
    q_lora, kv_lora, nope, rope, v = 1536, 512, 128, 64, 128
    attn = (h * q_lora + q_lora + q_lora * a * (nope + rope)
            + h * (kv_lora + rope) + kv_lora + kv_lora * a * (nope + v) + a * v * h)
    dense = attn + 2 * h + 3 * h * 18432
    moe = attn + 2 * h + h * 256 + 3 * h * 2048 + 256 * 3 * h * 2048  # router, shared, 256 routed
    assert [layer_params(cfg, i) for i in (0, 2)] == [dense, dense]
    assert [layer_params(cfg, i) for i in (3, 60)] == [moe, moe]
    assert not cfg.is_moe_layer(2) and cfg.is_moe_layer(3)


def test_derived_defaults():
    models = builtin_models()
    assert models["gpt3-175b"].num_kv_heads == 96  # no GQA: one KV head per head
    assert models["gpt3-175b"].head_dim == 128
    assert models["llama3-8b"].head_dim == 128


# --- lookup --------------------------------------------------------------------------------------

@pytest.mark.parametrize("spelling, name", [
    ("Llama-3.1-405B", "llama3.1-405b"),
    ("LLAMA3-8B", "llama3-8b"),
    ("llama3_70b", "llama3-70b"),
    ("Mixtral 8x7B", "mixtral-8x7b"),
    ("DeepSeek-V3", "deepseek-v3"),
    ("gpt3-175b", "gpt3-175b"),
])
def test_load_model_by_normalised_name(spelling, name):
    assert load_model(spelling).name == name


def test_unknown_model_lists_builtins():
    with pytest.raises(InputError) as info:
        load_model("gpt-5")
    message = str(info.value)
    assert "'gpt-5'" in message
    for name in BUILTIN_NAMES:
        assert name in message


def test_load_user_model_file(tmp_path):
    path = write_model(tmp_path, TINY + 'norm = "layernorm"\nbias = true\n' + MOE)
    cfg = load_model(str(path))
    assert cfg.name == "tiny" and cfg.num_layers == 2 and cfg.num_kv_heads == 2
    assert cfg.norm == "layernorm" and cfg.bias is True
    assert cfg.moe is not None and cfg.moe.num_experts == 4 and cfg.moe.top_k == 2
    assert cfg.moe.shared_expert_ffn_hidden_size == 0 and cfg.moe.first_dense_layers == 0
    assert cfg.head_dim == 32
    assert load_model_file(path) == cfg


def test_user_file_copy_of_a_builtin_gives_the_same_model(tmp_path):
    text = resources.files("dynamiccl.workload").joinpath("models").joinpath("llama3-8b.toml").read_text("utf-8")
    cfg = load_model(str(write_model(tmp_path, text, "copy.toml")))
    assert cfg.total_params() == builtin_models()["llama3-8b"].total_params()


def test_user_mla_model(tmp_path):
    cfg = load_model(str(write_model(tmp_path, TINY + MLA)))
    assert cfg.mla is not None and cfg.mla.v_head_dim == 16
    assert cfg.attn_q_width == 8 * 16


# --- errors --------------------------------------------------------------------------------------

def _replace(line: str, new: str):
    def edit(text: str) -> str:
        assert line in text
        return text.replace(line, new)
    return edit


def _append(extra: str):
    return lambda text: text + extra


@pytest.mark.parametrize("edit, key, problem", [
    pytest.param(_replace("hidden_size = 256\n", ""), "model.hidden_size", "missing", id="missing-key"),
    pytest.param(_replace('name = "tiny"\n', ""), "model.name", "missing", id="missing-name"),
    pytest.param(_append("hiden_size = 256\n"), "model.hiden_size", "unknown key", id="unknown-key"),
    pytest.param(_replace("num_layers = 2", 'num_layers = "2"'), "model.num_layers", "integer",
                 id="string-for-int"),
    pytest.param(_replace("num_layers = 2", "num_layers = true"), "model.num_layers", "integer",
                 id="bool-for-int"),
    pytest.param(_replace("num_layers = 2", "num_layers = 2.0"), "model.num_layers", "integer",
                 id="float-for-int"),
    pytest.param(_replace("num_layers = 2", "num_layers = 0"), "model.num_layers", ">= 1", id="zero-layers"),
    pytest.param(_append("bias = 1\n"), "model.bias", "true or false", id="int-for-bool"),
    pytest.param(_append('norm = "batchnorm"\n'), "model.norm", "rmsnorm, layernorm", id="bad-norm"),
    pytest.param(_append('activation = "relu"\n'), "model.activation", "swiglu, gelu", id="bad-activation"),
    pytest.param(_replace('name = "tiny"', 'name = "  "'), "model.name", "non-empty", id="blank-name"),
    pytest.param(_replace("num_kv_heads = 2", "num_kv_heads = 3"), "model.num_kv_heads", "multiple",
                 id="heads-not-multiple-of-kv-heads"),
    pytest.param(_replace("hidden_size = 256", "hidden_size = 250"), "model.hidden_size", "divisible",
                 id="hidden-not-divisible-by-heads"),
    pytest.param(_append(MOE.replace("top_k = 2", "top_k = 8")), "model.moe.top_k", "exceeds",
                 id="top_k-over-experts"),
    pytest.param(_append(MOE.replace("top_k = 2\n", "")), "model.moe.top_k", "missing", id="moe-missing"),
    pytest.param(_append(MOE.replace("num_experts = 4", "num_experts = true")), "model.moe.num_experts",
                 "integer", id="moe-bool"),
    pytest.param(_append(MOE + "capacity = 1.0\n"), "model.moe.capacity", "unknown key", id="moe-unknown"),
    pytest.param(_append(MOE + "first_dense_layers = 3\n"), "model.moe.first_dense_layers", "num_layers",
                 id="moe-dense-layers-over-layers"),
    pytest.param(_append(MLA + "rope_theta = 10000\n"), "model.mla.rope_theta", "unknown key",
                 id="mla-unknown-key"),
    pytest.param(_append(MLA.replace("v_head_dim = 16\n", "")), "model.mla.v_head_dim", "missing",
                 id="mla-missing"),
    pytest.param(lambda text: text + "\n[training]\nsteps = 3\n", "training", "[model]", id="extra-table"),
])
def test_model_file_errors_name_file_and_key(tmp_path, edit, key, problem):
    path = write_model(tmp_path, edit(TINY))
    with pytest.raises(InputError) as info:
        load_model(str(path))
    err = info.value
    assert err.source == str(path)
    assert err.field == key
    assert str(info.value).startswith(f"{path}: {key}: ")
    assert problem in str(info.value)


def test_invalid_toml_syntax(tmp_path):
    path = write_model(tmp_path, TINY.replace("num_layers = 2", "num_layers = "))
    with pytest.raises(InputError) as info:
        load_model(str(path))
    assert str(path) in str(info.value) and "not valid TOML" in str(info.value)


def test_missing_model_file(tmp_path):
    path = tmp_path / "absent.toml"
    with pytest.raises(InputError) as info:
        load_model(str(path))
    assert str(path) in str(info.value) and "cannot read" in str(info.value)


def test_missing_model_table():
    with pytest.raises(InputError) as info:
        model_from_dict({}, "mem.toml")
    assert str(info.value).startswith("mem.toml: model: ")


# --- vocabulary padding (Megatron --make-vocab-size-divisible-by 128, times TP) ------------------

@pytest.mark.parametrize("name, tp, padded", [
    ("gpt3-175b", 1, 50304),  # GPT-2 vocabulary 50257 -> Megatron's well-known 50304
    ("gpt3-175b", 8, 51200),
    ("llama3-8b", 1, 128256),  # already a multiple of 128
    ("llama3-8b", 2, 128256),  # and of 256
    ("llama3-8b", 8, 129024),
    ("mixtral-8x7b", 4, 32256),
    ("deepseek-v3", 2, 129280),
])
def test_padded_vocab(name, tp, padded):
    cfg = builtin_models()[name]
    assert cfg.padded_vocab(tp) == padded
    assert padded % (128 * tp) == 0 and 0 <= padded - cfg.vocab_size < 128 * tp


def test_embedding_uses_padded_vocab():
    cfg = builtin_models()["gpt3-175b"]
    word = cfg.embedding_tensors(8)[0]
    assert word.numel == 51200 * 12288
    assert word.per_rank_numel(8) == 6400 * 12288
