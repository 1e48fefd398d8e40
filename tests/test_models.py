"""Model descriptions: presets, parameter counts, validation, Hugging Face config.json import."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from costmodels.hf_config import from_hf_config
from costmodels.model import ModelError, ModelSpec, MoESpec
from costmodels.presets import ALIASES, PRESETS, get_model, list_models

B = 1e9


def close(x: float, want: float, rel: float) -> bool:
    return abs(x - want) <= rel * want


# ---- parameter counts of the presets against published figures --------------------------------------


@pytest.mark.parametrize(
    "name, want, rel, cite",
    [
        # docs/reference/formulas.md: 12*l*h^2 + V*h ~ 174.6B; Brown et al. 2020 call it 175B.
        ("gpt3-175b", 174.6 * B, 0.005, "docs/reference/formulas.md / Brown et al. 2020 Table 2.1"),
        ("llama3-405b", 405 * B, 0.01, "Llama Team 2024, The Llama 3 Herd of Models, Table 3"),
        ("llama3-8b", 8.03 * B, 0.01, "meta-llama/Meta-Llama-3-8B model card: 8.03B"),
        ("llama2-70b", 69 * B, 0.01, "meta-llama/Llama-2-70b-hf model card: 69B"),
        ("llama2-7b", 6.74 * B, 0.01, "meta-llama/Llama-2-7b-hf model card: 6.74B"),
        ("llama2-13b", 13.0 * B, 0.01, "meta-llama/Llama-2-13b-hf model card: 13.0B"),
        ("mixtral-8x7b", 46.7 * B, 0.02, "Jiang et al. 2024 / mistralai model card: 46.7B total"),
        ("mixtral-8x22b", 141 * B, 0.02, "mistral.ai/news/mixtral-8x22b: 141B total"),
        ("megatron-530b", 529.6 * B, 0.001, "Narayanan et al. 2021 Table 1: 529.6B"),
        ("megatron-1t", 1008.0 * B, 0.001, "Narayanan et al. 2021 Table 1: 1008.0B"),
        ("megatron-22b", 22 * B, 0.01, "Korthikanti et al. 2022 Table 3: 22B"),
        ("gpt3-6.7b", 6.7 * B, 0.01, "Brown et al. 2020 Table 2.1"),
        ("gpt3-1.3b", 1.3 * B, 0.02, "Brown et al. 2020 Table 2.1"),
        ("gpt3-125m", 125e6, 0.01, "Brown et al. 2020 Table 2.1"),
        # seed article 000: 16 experts of ~111B each plus ~55B shared attention.
        ("gpt4moe-1.8t", (16 * 111 + 55) * B, 0.02, "seed article 000"),
    ],
)
def test_total_params_match_published(name, want, rel, cite):
    got = PRESETS[name].params_total()
    assert close(got, want, rel), f"{name}: {got / B:.3f}B vs {want / B:.3f}B ({cite})"


@pytest.mark.parametrize(
    "name, want, rel, cite",
    [
        ("mixtral-8x7b", 12.9 * B, 0.02, "mistralai/Mixtral-8x7B model card: 12.9B active"),
        ("mixtral-8x22b", 39 * B, 0.02, "mistral.ai/news/mixtral-8x22b: 39B active"),
        ("gpt4moe-1.8t", 277 * B, 0.02, "seed article 000: ~277B per forward pass (2 x 111B + 55B)"),
        ("llama3-70b", PRESETS["llama3-70b"].params_total(), 0, "dense: active == total"),
    ],
)
def test_active_params_match_published(name, want, rel, cite):
    got = PRESETS[name].params_active()
    assert close(got, want, rel), f"{name}: {got / B:.3f}B vs {want / B:.3f}B ({cite})"


def test_gpt3_175b_matches_closed_form():
    # 12*l*h^2 (4h^2 attention + 8h^2 MLP) + V*h + s*h + 13h per layer (biases, norms) + 2h final norm.
    m = PRESETS["gpt3-175b"]
    l, h, V, s = 96, 12288, 50257, 2048
    assert m.params_total() == 12 * l * h * h + V * h + s * h + 13 * h * l + 2 * h


def test_llama2_7b_exact():
    # The Hugging Face checkpoint of Llama-2-7b-hf holds 6,738,415,616 parameters.
    assert PRESETS["llama2-7b"].params_total() == 6_738_415_616


def test_gpt4moe_components():
    m = PRESETS["gpt4moe-1.8t"]
    assert m.head_dim == 128
    assert close(m.params_expert() * m.layers, 111 * B, 0.01)  # one expert across all layers
    assert close(m.params_attention() * m.layers, 55.5 * B, 0.01)
    assert m.num_moe_layers == 120


def test_per_layer_pieces_llama3_405b():
    m = PRESETS["llama3-405b"]
    h, kv, f = 16384, 8 * 128, 53248
    assert m.params_attention() == 2 * h * h + 2 * h * kv
    assert m.params_mlp_dense() == 3 * h * f
    assert m.params_norms() == 2 * h
    assert m.params_embedding() == 128256 * h
    assert m.params_output() == 128256 * h + h
    assert m.params_expert() == m.params_router() == 0


def test_mixtral_layer_pieces():
    m = PRESETS["mixtral-8x7b"]
    assert m.params_router() == 4096 * 8
    assert m.params_expert() == 3 * 4096 * 14336
    assert m.params_layer(0) - m.params_layer_active(0) == 6 * m.params_expert()


# ---- presets -----------------------------------------------------------------------------------------


def test_preset_names_and_aliases():
    assert len(list_models()) == len(PRESETS) >= 20
    for key, m in PRESETS.items():
        assert key == m.name == key.lower() and m.source
    for alias, canon in ALIASES.items():
        assert alias == alias.lower() and alias not in PRESETS and canon in PRESETS
    # separator-insensitive lookup ("GPT-3-175B") must not make two names collide
    squashed = [n.replace("-", "") for n in PRESETS]
    assert len(set(squashed)) == len(squashed)


def test_preset_training_defaults():
    gpt3 = PRESETS["gpt3-175b"]
    assert (gpt3.seq_len, gpt3.global_batch, gpt3.train_tokens) == (2048, 1536, 300e9)
    assert gpt3.tied_embeddings and gpt3.position_embedding == "learned" and gpt3.bias
    l405 = PRESETS["llama3-405b"]
    assert (l405.seq_len, l405.global_batch, l405.train_tokens) == (8192, 2048, 15.6e12)  # 16M tokens
    assert PRESETS["llama2-70b"].global_batch == 1024 and PRESETS["llama2-70b"].kv_heads == 8  # 4M tokens
    assert PRESETS["gpt3-125m"].global_batch == 256  # 0.5M tokens
    assert PRESETS["mixtral-8x7b"].seq_len == 4096


@pytest.mark.parametrize(
    "alias, canon",
    [("175b", "gpt3-175b"), ("gpt3", "gpt3-175b"), ("405b", "llama3-405b"), ("70b", "llama3-70b"),
     ("8b", "llama3-8b"), ("1t", "megatron-1t"), ("530b", "megatron-530b"), ("gpt4-moe", "gpt4moe-1.8t")],
)
def test_aliases(alias, canon):
    m, note = get_model(alias)
    assert m.name == canon and note is not None and note.startswith(f"{alias} -> {canon} (")


def test_get_model_case_and_separators():
    assert get_model("GPT3-175B") == (PRESETS["gpt3-175b"], None)
    m, note = get_model("Llama-3-405B")
    assert m.name == "llama3-405b" and "llama3-405b" in note
    assert get_model("175B")[0].name == "gpt3-175b"


def test_get_model_unknown_suggests():
    with pytest.raises(ModelError) as e:
        get_model("llama3-7b")
    msg = str(e.value)
    assert "\n" not in msg and "unknown model 'llama3-7b'" in msg and "did you mean" in msg
    assert "llama3-70b" in msg and "config.json" in msg
    with pytest.raises(ModelError, match="unknown model 'zzzz'; known: "):
        get_model("zzzz")


def test_get_model_reads_path(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA2_7B))
    m, note = get_model(str(tmp_path))
    assert note is None and m.params_total() == PRESETS["llama2-7b"].params_total()
    m2, _ = get_model(str(tmp_path / "config.json"))
    assert m2 == m
    with pytest.raises(ModelError, match="does not exist"):
        get_model(str(tmp_path / "nope.json"))


# ---- ModelSpec validation and derived values -------------------------------------------------------

BASE = dict(name="t", layers=4, hidden=256, heads=8, vocab=1000, seq_len=512)


def test_defaults_normalised():
    m = ModelSpec(**BASE)
    assert m.kv_heads == 8 and m.ffn_hidden == 1024 and m.head_dim == 32 and m.kv_dim == 256
    # SwiGLU default: 8h/3 rounded up to a multiple of 64 (int(8*4096/3) = 10922 -> 10944).
    assert ModelSpec(**{**BASE, "hidden": 4096, "heads": 32, "ffn_type": "swiglu"}).ffn_hidden == 10944
    assert ModelSpec(**{**BASE, "kv_heads": 2}).kv_dim == 64


def test_frozen_and_hashable():
    m = ModelSpec(**BASE)
    with pytest.raises(Exception):
        m.hidden = 512  # type: ignore[misc]
    assert hash(m) == hash(ModelSpec(**BASE)) and m == ModelSpec(**BASE)


@pytest.mark.parametrize(
    "change, words",
    [
        (dict(hidden=250), "hidden=250 is not divisible by heads=8"),
        (dict(kv_heads=3), "heads=8 is not divisible by kv_heads=3"),
        (dict(layers=0), "layers=0 is out of range"),
        (dict(layers=-1), "layers=-1 is out of range"),
        (dict(layers=100_001), "layers=100001 is out of range; allowed 1..100_000"),
        (dict(hidden=2_000_000, heads=8), "hidden=2000000 is out of range"),
        (dict(vocab=10**8), "vocab=100000000 is out of range"),
        (dict(seq_len=10**8), "seq_len=100000000 is out of range"),
        (dict(hidden="256"), "hidden must be a number, got '256'"),
        (dict(hidden=True), "hidden must be a number, got True"),
        (dict(hidden=256.5), "hidden: Input should be a valid integer"),
        (dict(train_tokens=float("inf")), "train_tokens must be finite"),
        (dict(train_tokens=float("nan")), "train_tokens must be finite"),
        (dict(global_batch=0), "global_batch=0 is out of range"),
        (dict(ffn_type="relu"), "ffn_type: Input should be 'gelu' or 'swiglu'"),
        (dict(precision="int3"), "precision"),
        (dict(heads_typo=3), "unknown field 'heads_typo'"),
        (dict(name=""), "name must be a non-empty string"),
        (dict(moe=dict(experts=8, top_k=9, expert_ffn_hidden=64)), "top_k=9 exceeds experts=8"),
        (dict(moe=dict(experts=8, top_k=2)), "missing required field 'expert_ffn_hidden'"),
        (dict(moe=dict(experts=8, top_k=2, expert_ffn_hidden=64, layer_freq=5)), "layer_freq=5 exceeds layers=4"),
        (dict(moe=dict(experts=8, top_k=2, expert_ffn_hidden=64, capacity_factor=float("nan"))), "finite"),
    ],
)
def test_validation_errors(change, words):
    with pytest.raises(ModelError) as e:
        ModelSpec(**{**BASE, **change})
    msg = str(e.value)
    assert words in msg and "\n" not in msg, msg
    assert msg.startswith("model '") or msg.startswith("model:"), msg


def test_missing_field_and_model_validate():
    with pytest.raises(ModelError, match="missing required field 'vocab'"):
        ModelSpec(name="x", layers=1, hidden=8, heads=1, seq_len=8)
    with pytest.raises(ModelError, match="hidden=9 is not divisible"):
        ModelSpec.model_validate({**BASE, "hidden": 9})
    with pytest.raises(ModelError, match="top_k=3 exceeds experts=2"):
        MoESpec(experts=2, top_k=3, expert_ffn_hidden=8)


def test_layer_index_checked():
    m = ModelSpec(**BASE)
    with pytest.raises(ModelError, match="layer index 4 out of range 0..3"):
        m.params_layer(4)


def test_moe_layer_freq_and_shared_experts():
    moe = MoESpec(experts=4, top_k=1, expert_ffn_hidden=128, shared_experts=1, layer_freq=2)
    m = ModelSpec(**{**BASE, "layers": 5, "moe": moe})
    assert [m.is_moe_layer(i) for i in range(5)] == [False, True, False, True, False]
    assert m.num_moe_layers == 2
    dense = m.params_attention() + m.params_mlp_dense() + m.params_norms()
    assert m.params_layer(0) == m.params_layer_active(0) == dense
    moe_base = m.params_attention() + m.params_norms() + m.params_router()
    assert m.params_layer(1) == moe_base + 5 * m.params_expert()
    assert m.params_layer_active(1) == moe_base + 2 * m.params_expert()


def test_bias_and_norm_counts():
    h, f = 256, 1024
    m = ModelSpec(**{**BASE, "bias": True})
    assert m.params_attention() == 4 * h * h + 4 * h
    assert m.params_mlp_dense() == 2 * h * f + f + h
    assert m.params_norms() == 4 * h
    r = ModelSpec(**{**BASE, "norm": "rmsnorm", "ffn_type": "swiglu", "ffn_hidden": 640})
    assert r.params_norms() == 2 * h and r.params_mlp_dense() == 3 * h * 640
    learned = ModelSpec(**{**BASE, "position_embedding": "learned", "tied_embeddings": True})
    assert learned.params_embedding() == 1000 * h + 512 * h and learned.params_output() == 2 * h


@st.composite
def specs(draw):
    heads = draw(st.sampled_from([1, 2, 4, 8, 16]))
    kv = draw(st.sampled_from([k for k in (1, 2, 4, 8, 16) if heads % k == 0]))
    hidden = heads * draw(st.integers(1, 64))
    layers = draw(st.integers(1, 40))
    moe = None
    if draw(st.booleans()):
        experts = draw(st.integers(1, 16))
        moe = MoESpec(experts=experts, top_k=draw(st.integers(1, experts)),
                      expert_ffn_hidden=draw(st.integers(1, 512)), shared_experts=draw(st.integers(0, 2)),
                      layer_freq=draw(st.integers(1, layers)))
    return ModelSpec(
        name="h", layers=layers, hidden=hidden, heads=heads, kv_heads=kv, vocab=draw(st.integers(1, 5000)),
        seq_len=draw(st.integers(1, 4096)), ffn_type=draw(st.sampled_from(["gelu", "swiglu"])),
        bias=draw(st.booleans()), norm=draw(st.sampled_from(["layernorm", "rmsnorm"])),
        tied_embeddings=draw(st.booleans()),
        position_embedding=draw(st.sampled_from(["learned", "rope", "alibi"])), moe=moe,
    )


@settings(max_examples=200, deadline=None)
@given(specs())
def test_totals_are_sums_of_parts(m):
    layers = [m.params_layer(i) for i in range(m.layers)]
    active = [m.params_layer_active(i) for i in range(m.layers)]
    assert m.params_layers_total() == sum(layers)
    assert m.params_total() == m.params_embedding() + sum(layers) + m.params_output()
    assert m.params_active() == m.params_embedding() + sum(active) + m.params_output()
    assert 0 < m.params_active() <= m.params_total()
    assert m.num_moe_layers == sum(m.is_moe_layer(i) for i in range(m.layers))
    if m.moe is None or m.moe.top_k == m.moe.experts:
        assert m.params_active() == m.params_total()
    assert all(isinstance(x, int) for x in (m.params_total(), m.params_active(), m.kv_dim, m.head_dim))


# ---- Hugging Face config.json -----------------------------------------------------------------------

# meta-llama/Llama-2-7b-hf config.json (published values).
LLAMA2_7B = {
    "_name_or_path": "meta-llama/Llama-2-7b-hf", "architectures": ["LlamaForCausalLM"], "bos_token_id": 1,
    "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
    "intermediate_size": 11008, "max_position_embeddings": 4096, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32, "pretraining_tp": 1,
    "rms_norm_eps": 1e-05, "rope_scaling": None, "tie_word_embeddings": False, "torch_dtype": "float16",
    "transformers_version": "4.31.0.dev0", "use_cache": True, "vocab_size": 32000,
}
# mistralai/Mixtral-8x7B-v0.1 config.json (published values).
MIXTRAL_8X7B = {
    "architectures": ["MixtralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2,
    "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
    "max_position_embeddings": 32768, "model_type": "mixtral", "num_attention_heads": 32,
    "num_experts_per_tok": 2, "num_hidden_layers": 32, "num_key_value_heads": 8, "num_local_experts": 8,
    "output_router_logits": False, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0,
    "router_aux_loss_coef": 0.02, "sliding_window": None, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "transformers_version": "4.36.0.dev0", "use_cache": True, "vocab_size": 32000,
}
# mistralai/Mistral-7B-v0.1 config.json (published values).
MISTRAL_7B = {
    "architectures": ["MistralForCausalLM"], "hidden_act": "silu", "hidden_size": 4096,
    "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mistral",
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
    "rope_theta": 10000.0, "sliding_window": 4096, "tie_word_embeddings": False, "vocab_size": 32000,
}
# openai-community/gpt2 config.json (published values).
GPT2 = {
    "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
    "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_layer": 12, "n_positions": 1024, "vocab_size": 50257,
    "layer_norm_epsilon": 1e-05,
}
# EleutherAI/gpt-neox-20b config.json (published values).
NEOX_20B = {
    "architectures": ["GPTNeoXForCausalLM"], "hidden_act": "gelu_fast", "hidden_size": 6144,
    "intermediate_size": 24576, "layer_norm_eps": 1e-05, "max_position_embeddings": 2048,
    "model_type": "gpt_neox", "num_attention_heads": 64, "num_hidden_layers": 44, "rotary_emb_base": 10000,
    "rotary_pct": 0.25, "tie_word_embeddings": False, "use_parallel_residual": True, "vocab_size": 50432,
}
# Qwen/Qwen1.5-MoE-A2.7B config.json (published values).
QWEN_MOE = {
    "model_type": "qwen2_moe", "hidden_size": 2048, "intermediate_size": 5632, "moe_intermediate_size": 1408,
    "shared_expert_intermediate_size": 5632, "num_experts": 60, "num_experts_per_tok": 4,
    "num_hidden_layers": 24, "num_attention_heads": 16, "num_key_value_heads": 16, "vocab_size": 151936,
    "max_position_embeddings": 8192, "decoder_sparse_step": 1, "tie_word_embeddings": False,
    "mlp_only_layers": [], "hidden_act": "silu",
}


def write(tmp_path, cfg, name="config.json", raw=None):
    p = tmp_path / name
    p.write_text(raw if raw is not None else json.dumps(cfg))
    return p


def test_hf_llama2_7b_matches_preset(tmp_path):
    m = from_hf_config(write(tmp_path, LLAMA2_7B))
    want = PRESETS["llama2-7b"]
    assert close(m.params_total(), want.params_total(), 0.005)
    assert m.name == "meta-llama/Llama-2-7b-hf" and m.seq_len == 4096 and m.ffn_type == "swiglu"
    assert m.max_context == want.max_context == 4096
    assert m.norm == "rmsnorm" and not m.tied_embeddings and not m.bias and m.kv_heads == 32


def test_hf_mixtral_matches_preset(tmp_path):
    write(tmp_path, MIXTRAL_8X7B)
    m = from_hf_config(tmp_path)  # a directory holding config.json
    want = PRESETS["mixtral-8x7b"]
    assert close(m.params_total(), want.params_total(), 0.005)
    assert close(m.params_active(), want.params_active(), 0.005)
    assert m.moe == MoESpec(experts=8, top_k=2, expert_ffn_hidden=14336)
    assert m.seq_len == 8192  # min(max_position_embeddings 32768, 8192)
    assert m.max_context == want.max_context == 32768    # the positions' reach, for --seq-len and serving
    assert m.name == tmp_path.name  # no _name_or_path: directory name


def test_hf_mistral_7b(tmp_path):
    # mistralai/Mistral-7B-v0.1 holds 7,241,732,096 parameters (model card: 7.3B).
    assert from_hf_config(write(tmp_path, MISTRAL_7B)).params_total() == 7_241_732_096


def test_hf_gpt2_exact(tmp_path):
    # GPT-2 small: 124,439,808 parameters in the Hugging Face checkpoint (Radford et al. 2019: "117M").
    m = from_hf_config(write(tmp_path, GPT2, name="gpt2.json"))
    assert m.params_total() == 124_439_808
    assert m.name == "gpt2" and m.tied_embeddings and m.position_embedding == "learned" and m.ffn_hidden == 3072


def test_hf_gpt_neox_20b(tmp_path):
    # Black et al. 2022, GPT-NeoX-20B: 20.55B parameters (HF checkpoint 20,554,567,680).
    m = from_hf_config(write(tmp_path, NEOX_20B))
    assert close(m.params_total(), 20.55 * B, 0.001) and m.bias and m.position_embedding == "rope"


def test_hf_qwen2_moe(tmp_path):
    # Qwen1.5-MoE-A2.7B model card: 14.3B total, 2.7B activated.
    m = from_hf_config(write(tmp_path, QWEN_MOE))
    assert m.moe.shared_experts == 4 and m.moe.experts == 60 and m.moe.top_k == 4
    assert close(m.params_total(), 14.3 * B, 0.02) and close(m.params_active(), 2.7 * B, 0.02)


def test_hf_qwen2_dense(tmp_path):
    cfg = {**LLAMA2_7B, "model_type": "qwen2", "num_key_value_heads": 8}
    m = from_hf_config(write(tmp_path, cfg))
    assert m.kv_heads == 8 and not m.bias


def _err(tmp_path, cfg=None, raw=None) -> str:
    p = write(tmp_path, cfg, raw=raw)
    with pytest.raises(ModelError) as e:
        from_hf_config(p)
    msg = str(e.value)
    assert "\n" not in msg and str(p) in msg, msg
    return msg


@pytest.mark.parametrize(
    "change, words",
    [
        ({"hidden_size": None}, "null value for required key 'hidden_size'"),
        ({"hidden_size": "4096"}, "'hidden_size' must be an integer, got string \"4096\""),
        ({"hidden_size": True}, "'hidden_size' must be an integer, got boolean"),
        ({"hidden_size": 4096.5}, "'hidden_size' must be an integer, got 4096.5"),
        ({"num_hidden_layers": -2}, "'num_hidden_layers' must be a positive integer, got -2"),
        ({"num_hidden_layers": 0}, "'num_hidden_layers' must be a positive integer, got 0"),
        ({"vocab_size": float("nan")}, "'vocab_size' must be a finite positive integer, got nan"),
        ({"vocab_size": float("inf")}, "'vocab_size' must be a finite positive integer, got inf"),
        ({"tie_word_embeddings": "no"}, "'tie_word_embeddings' must be true or false"),
        ({"model_type": "bert"},
         "model_type 'bert' in {p} is not supported; supported: deepseek_v2, deepseek_v3, gpt2, gpt_neox, llama, mistral, mixtral, qwen2"),
        ({"hidden_size": 4100}, "'hidden_size' 4100 is not a multiple of 'num_attention_heads' 32"),
        ({"num_key_value_heads": 5}, "not divisible by kv_heads=5"),
        ({"head_dim": 0}, "'head_dim'"),
        ({"vocab_size": 10**9}, "vocab=1000000000 is out of range"),
    ],
)
def test_hf_errors(tmp_path, change, words):
    msg = _err(tmp_path, {**LLAMA2_7B, **change})
    assert words.format(p=tmp_path / "config.json") in msg, msg


def test_hf_missing_key(tmp_path):
    cfg = dict(LLAMA2_7B)
    del cfg["intermediate_size"]
    assert "missing required key 'intermediate_size' (model_type 'llama')" in _err(tmp_path, cfg)
    del cfg["model_type"]
    assert "has no 'model_type'; supported: " in _err(tmp_path, cfg)


def test_hf_moe_errors(tmp_path):
    cfg = {**MIXTRAL_8X7B, "num_experts_per_tok": 9}
    assert "top_k=9 exceeds experts=8" in _err(tmp_path, cfg)
    cfg = {**QWEN_MOE, "shared_expert_intermediate_size": 1000}
    assert "not a multiple of 'moe_intermediate_size'" in _err(tmp_path, cfg)
    cfg = {**QWEN_MOE, "mlp_only_layers": [0]}
    assert "'mlp_only_layers' is not empty" in _err(tmp_path, cfg)


def test_hf_bad_json(tmp_path):
    msg = _err(tmp_path, raw='{\n  "model_type": "llama",\n  "hidden_size": ,\n}')
    assert msg == f"config.json at {tmp_path / 'config.json'} is not valid JSON (line 3: Expecting value)"
    assert "must hold a JSON object, got array" in _err(tmp_path, raw="[1, 2]")


def test_hf_missing_file(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        from_hf_config(tmp_path / "config.json")
    with pytest.raises(ModelError, match="no config.json in directory"):
        from_hf_config(tmp_path)


def test_dropout_follows_the_training_recipe(tmp_path):
    # GPT-style presets train with dropout (Korthikanti et al. 2022 Table 2 counts the masks); Llama and
    # Mixtral without (config.json attention_dropout 0.0, no hidden dropout)
    assert all(PRESETS[n].dropout for n in PRESETS if n.startswith(("gpt3-", "megatron-")))
    assert not any(PRESETS[n].dropout for n in PRESETS if n.startswith(("llama", "mixtral")))
    assert not from_hf_config(write(tmp_path, LLAMA2_7B)).dropout
    assert not from_hf_config(write(tmp_path, MIXTRAL_8X7B)).dropout           # attention_dropout 0.0
    assert from_hf_config(write(tmp_path, GPT2, name="gpt2.json")).dropout      # resid/embd/attn_pdrop 0.1
    assert from_hf_config(write(tmp_path, {**LLAMA2_7B, "attention_dropout": 0.1}, name="d.json")).dropout
    with pytest.raises(ModelError, match="attention_dropout"):
        from_hf_config(write(tmp_path, {**LLAMA2_7B, "attention_dropout": "x"}, name="e.json"))


def test_qwen3_moe_config_and_preset():
    """Qwen3-235B-A22B (Hugging Face config.json, model_type qwen3_moe): 64 query heads of 128 on hidden 4096
    (attention 8192 wide), 128 experts top-8: 235B total and 22B activated parameters, as the model card
    states; the preset is the same shape."""
    import json as _json
    import tempfile

    from costmodels.hf_config import from_hf_config
    from costmodels.presets import get_model
    cfg = {"model_type": "qwen3_moe", "attention_bias": False, "attention_dropout": 0.0, "decoder_sparse_step": 1,
           "head_dim": 128, "hidden_size": 4096, "intermediate_size": 12288, "max_position_embeddings": 40960,
           "mlp_only_layers": [], "moe_intermediate_size": 1536, "num_attention_heads": 64, "num_experts": 128,
           "num_experts_per_tok": 8, "num_hidden_layers": 94, "num_key_value_heads": 4,
           "tie_word_embeddings": False, "vocab_size": 151936}
    with tempfile.TemporaryDirectory() as d:
        path = f"{d}/config.json"
        with open(path, "w") as fh:
            _json.dump(cfg, fh)
        m = from_hf_config(path)
    assert (m.head_dim, m.q_dim, m.kv_dim) == (128, 8192, 512)
    assert round(m.params_total() / 1e9) == 235 and round(m.params_active() / 1e9) == 22
    preset, _ = get_model("qwen3-235b")
    assert preset.params_total() == m.params_total() and preset.params_active() == m.params_active()


def test_deepseek_v3_config_and_preset():
    """DeepSeek-V3 (Hugging Face config.json, model_type deepseek_v3; DeepSeek-AI 2024, arXiv 2412.19437
    section 4.2): MLA with q_lora 1536, kv_lora 512, 128 + 64 qk and 128 v per head, the first 3 layers dense,
    then 256 routed experts (top 8) and 1 shared: 671B total and 37B activated, as the report states (the
    multi-token-prediction module apart); the preset is the same shape."""
    import json as _json
    import tempfile

    from costmodels.hf_config import from_hf_config
    from costmodels.presets import get_model
    cfg = {"model_type": "deepseek_v3", "first_k_dense_replace": 3, "hidden_size": 7168, "intermediate_size": 18432,
           "kv_lora_rank": 512, "max_position_embeddings": 163840, "moe_intermediate_size": 2048, "moe_layer_freq": 1,
           "n_routed_experts": 256, "n_shared_experts": 1, "num_attention_heads": 128, "num_experts_per_tok": 8,
           "num_hidden_layers": 61, "num_key_value_heads": 128, "num_nextn_predict_layers": 1, "q_lora_rank": 1536,
           "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "tie_word_embeddings": False, "v_head_dim": 128,
           "vocab_size": 129280, "attention_dropout": 0.0}
    with tempfile.TemporaryDirectory() as d:
        path = f"{d}/config.json"
        with open(path, "w") as fh:
            _json.dump(cfg, fh)
        m = from_hf_config(path)
    assert round(m.params_total() / 1e9) == 671 and round(m.params_active() / 1e9) in (37, 38)
    assert m.num_moe_layers == 58 and not m.is_moe_layer(2) and m.is_moe_layer(3)
    # MLA's attention: 187M parameters per layer; its core runs QK^T over 192 and AV over 128 per head
    assert round(m.params_attention() / 1e6) == 187 and m.q_dim == 128 * (192 + 128) // 2
    preset, _ = get_model("deepseek-v3")
    assert preset.params_total() == m.params_total() and preset.mla == m.mla


def test_deepseek_v3_exports_as_megatron_mla():
    """The Megatron export names MLA and the dense first layers as megatron-core's MLATransformerConfig
    accepts them (multi_latent_attention, q/kv LoRA ranks, qk/rope/v head dims, moe_layer_freq list)."""
    pytest.importorskip("megatron.core")
    from megatron.core.transformer.transformer_config import MLATransformerConfig

    from costmodels.presets import get_model
    from costmodels.strategy import Strategy
    from planner.frameworks.megatron import megatron_args, parse_megatron_args
    model, _ = get_model("deepseek-v3")
    st = Strategy(tp=1, pp=8, dp=32, ep=32, micro_batch=1, global_batch=2048, zero_stage=1, recompute="selective",
                  virtual_stages=4, stage_layers=(7, 8, 8, 8, 8, 8, 8, 6), precision="bf16")
    args = parse_megatron_args(" ".join(" ".join(g) for g in megatron_args(model, st)).replace('"', "'"))
    assert args["--multi-latent-attention"] is True
    freq = eval(args["--moe-layer-freq"])      # noqa: S307 - Megatron's moe_freq_type evaluates the same expression
    assert freq == [0] * 3 + [1] * 58
    MLATransformerConfig(num_layers=61, hidden_size=7168, num_attention_heads=128, num_moe_experts=256,
                         moe_layer_freq=freq, multi_latent_attention=True, q_lora_rank=int(args["--q-lora-rank"]),
                         kv_lora_rank=int(args["--kv-lora-rank"]), qk_head_dim=int(args["--qk-head-dim"]),
                         qk_pos_emb_head_dim=int(args["--qk-pos-emb-head-dim"]), v_head_dim=int(args["--v-head-dim"]),
                         ffn_hidden_size=18432, moe_ffn_hidden_size=2048, moe_router_topk=8)
