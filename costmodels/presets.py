"""Published model shapes with the defaults of their published training runs.

Each preset's `source` cites the paper or model card; global_batch is in sequences (tokens / seq_len).
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

from .model import MLASpec, ModelError, ModelSpec, MoESpec

__all__ = ["PRESETS", "ALIASES", "get_model", "list_models"]

# `source` is "<title>, <short cite>; <details>"; the part before ";" is used in alias notes.
_GPT3 = "Language Models are Few-Shot Learners, Table 2.1"
_LLAMA2 = "Llama 2 paper Table 1 and model card config.json"
_LLAMA3 = "The Llama 3 Herd of Models, Table 3 and section 3.4; model card config.json"
_MEGATRON = ("Korthikanti et al. 2022 (Reducing Activation Recomputation) Table 3; "
             "Narayanan et al. 2021 (Efficient Large-Scale Training on GPU Clusters) Table 1")


def _gpt3(size: str, layers: int, hidden: int, heads: int, batch: int, batch_label: str) -> ModelSpec:
    # GPT-2 style: learned positions, biases, LayerNorm, tied input/output embedding, GELU 4h MLP; dropout
    # kept (ModelSpec default; GPT-3 does not state it, GPT-2 trained with 0.1, Megatron's GPT-3 recipe 0.1).
    return ModelSpec(
        name=f"gpt3-{size}", layers=layers, hidden=hidden, heads=heads, vocab=50257, seq_len=2048, max_context=2048,
        tied_embeddings=True, position_embedding="learned", bias=True, norm="layernorm", ffn_type="gelu",
        global_batch=batch, precision="fp16", train_tokens=300e9,
        source=f"GPT-3 {size.upper()}, Brown et al. 2020; {_GPT3}; batch {batch_label} tokens = {batch} x 2048; "
               "300B tokens; "
               "fp16 mixed precision on V100 assumed",
    )


def _llama(name: str, layers: int, hidden: int, heads: int, kv: int, ffn: int, vocab: int, seq: int,
           batch: int | None, tokens: float, source: str, context: int) -> ModelSpec:
    # Llama: RoPE, RMSNorm, SwiGLU, no biases, untied output layer.
    return ModelSpec(
        name=name, layers=layers, hidden=hidden, heads=heads, kv_heads=kv, ffn_hidden=ffn, ffn_type="swiglu",
        vocab=vocab, seq_len=seq, max_context=context, position_embedding="rope", norm="rmsnorm", bias=False,
        tied_embeddings=False, global_batch=batch, precision="bf16", train_tokens=tokens, source=source,
        dropout=False,   # config.json attention_dropout 0.0, no hidden dropout (Llama 2/3 trained without)
    )


def _megatron(name: str, layers: int, hidden: int, heads: int, batch: int | None, tokens: float | None,
              precision: str, source: str) -> ModelSpec:
    # Megatron GPT: learned positions, biases, LayerNorm, tied embeddings (Narayanan et al. eq. 2);
    # hidden and attention dropout 0.1 (Megatron-LM defaults; Korthikanti et al. 2022 Table 2 counts the masks).
    return ModelSpec(
        name=name, layers=layers, hidden=hidden, heads=heads, vocab=51200, seq_len=2048, max_context=2048,
        ffn_type="gelu",
        position_embedding="learned", bias=True, norm="layernorm", tied_embeddings=True,
        global_batch=batch, precision=precision, train_tokens=tokens, source=source,
    )


def _mixtral(name: str, layers: int, hidden: int, heads: int, expert_ffn: int, vocab: int,
             source: str, context: int) -> ModelSpec:
    return ModelSpec(
        name=name, layers=layers, hidden=hidden, heads=heads, kv_heads=8, ffn_hidden=expert_ffn,
        ffn_type="swiglu", vocab=vocab, seq_len=4096, max_context=context, position_embedding="rope",
        norm="rmsnorm", moe=MoESpec(experts=8, top_k=2, expert_ffn_hidden=expert_ffn), precision="bf16", source=source,
        dropout=False,   # model card config.json: attention_dropout 0.0, no hidden dropout
    )


_ALL = [
    # Table 2.1 batch sizes in tokens -> sequences of 2048: 0.5M = 2^19 = 256, 1M = 512, 2M = 1024,
    # 3.2M -> 1536 (3.1M tokens, the value Megatron uses for 175B).
    _gpt3("125m", 12, 768, 12, 256, "0.5M"),
    _gpt3("350m", 24, 1024, 16, 256, "0.5M"),
    _gpt3("760m", 24, 1536, 16, 256, "0.5M"),
    _gpt3("1.3b", 24, 2048, 16, 512, "1M"),  # Table 2.1 prints 24 heads of 128 (!= 2048); 16 x 128 used
    _gpt3("2.7b", 32, 2560, 32, 512, "1M"),
    _gpt3("6.7b", 32, 4096, 32, 1024, "2M"),
    _gpt3("13b", 40, 5120, 40, 1024, "2M"),  # Table 2.1 prints d_model 5140; 40 heads x 128 = 5120
    _gpt3("175b", 96, 12288, 96, 1536, "3.2M"),
    _llama("llama2-7b", 32, 4096, 32, 32, 11008, 32000, 4096, 1024, 2e12,
           f"Llama 2 7B, Touvron et al. 2023; {_LLAMA2}; batch 4M tokens; 2T tokens", 4096),
    _llama("llama2-13b", 40, 5120, 40, 40, 13824, 32000, 4096, 1024, 2e12,
           f"Llama 2 13B, Touvron et al. 2023; {_LLAMA2}; batch 4M tokens; 2T tokens", 4096),
    _llama("llama2-70b", 80, 8192, 64, 8, 28672, 32000, 4096, 1024, 2e12,
           f"Llama 2 70B, Touvron et al. 2023; {_LLAMA2}; GQA 8 KV heads; batch 4M tokens; 2T tokens", 4096),
    _llama("llama3-8b", 32, 4096, 32, 8, 14336, 128256, 8192, None, 15e12,
           f"Llama 3 8B, Llama Team 2024; {_LLAMA3}; 15T+ tokens; batch not published", 131072),
    _llama("llama3-70b", 80, 8192, 64, 8, 28672, 128256, 8192, None, 15e12,
           f"Llama 3 70B, Llama Team 2024; {_LLAMA3}; 15T+ tokens; batch not published", 131072),
    _llama("llama3-405b", 126, 16384, 128, 8, 53248, 128256, 8192, 2048, 15.6e12,
           f"Llama 3 405B, Llama Team 2024; {_LLAMA3}; final batch 16M tokens = 2048 x 8192; 15.6T tokens", 131072),
    _mixtral("mixtral-8x7b", 32, 4096, 32, 14336, 32000,
             "Mixtral 8x7B, Jiang et al. 2024; Mixtral of Experts, Table 1; model card allows 32768-token "
             "context, seq_len 4096 here is a planning default (training run not published)", 32768),
    _mixtral("mixtral-8x22b", 56, 6144, 48, 16384, 32768,
             "Mixtral 8x22B, Mistral AI 2024; mistral.ai/news/mixtral-8x22b and model card config.json; "
             "vocab 32768 of the "
             "v0.3 tokenizer (base v0.1 has 32000); seq_len 4096 is a planning default; context 65536", 65536),
    _megatron("megatron-22b", 48, 6144, 64, None, None, "fp16",
              f"Megatron 22B, Korthikanti et al. 2022; {_MEGATRON}; benchmark model, no training run"),
    _megatron("megatron-530b", 105, 20480, 128, 1920, 270e9, "bf16",
              f"MT-NLG 530B, Smith et al. 2022; {_MEGATRON}; MT-NLG training run: batch 1920, 270B tokens; "
              "bf16 mixed precision assumed"),
    _megatron("megatron-1t", 128, 25600, 160, 3072, None, "fp16",
              f"Megatron 1T, Narayanan et al. 2021; {_MEGATRON}; batch 3072 from Narayanan Table 1 "
              "(benchmark, never trained)"),
    ModelSpec(
        # 120 x (4h^2 attention = 55.5B total; 16 experts x 2*h*4h = 111B each); top-2 routing.
        name="gpt4moe-1.8t", layers=120, hidden=10752, heads=84, ffn_hidden=43008, ffn_type="gelu",
        vocab=100256, seq_len=8192, position_embedding="rope", norm="layernorm", bias=False,
        moe=MoESpec(experts=16, top_k=2, expert_ffn_hidden=43008), precision="bf16",
        source="GPT-4-like MoE 1.8T, seed article 000; 16 experts of ~111B, 2 routed per token, ~55B shared "
               "attention; shape chosen to match those figures, not published by OpenAI",
    ),
    ModelSpec(
        # 94 MoE layers; 64 query heads of 128 (8192 wide on hidden 4096), 4 KV heads; 235.1B / 22.2B active
        name="qwen3-235b-a22b", layers=94, hidden=4096, heads=64, kv_heads=4, attention_head_dim=128,
        ffn_hidden=12288, ffn_type="swiglu", vocab=151936, seq_len=4096, max_context=40960, position_embedding="rope",
        norm="rmsnorm", bias=False, tied_embeddings=False, dropout=False,
        moe=MoESpec(experts=128, top_k=8, expert_ffn_hidden=1536), precision="bf16",
        source="Qwen3-235B-A22B, Qwen team 2025 (Qwen3 technical report; Hugging Face Qwen/Qwen3-235B-A22B "
               "config.json: qwen3_moe, head_dim 128, 128 experts, top-8, moe_intermediate_size 1536); 235B "
               "total, 22B activated; the per-head q/k norms (2 x 128 per layer) are not counted; seq_len 4096 "
               "is the first pre-training stage's length; context 40960 (config max_position_embeddings)",
    ),
]

_ALL.append(ModelSpec(
    # 61 layers, the first 3 dense (ffn 18432), 58 MoE (256 routed of 2048 + 1 shared, top 8); MLA with
    # q_lora 1536, kv_lora 512, 128 + 64 qk and 128 v per head; 671.0B total, 37.6B activated
    name="deepseek-v3", layers=61, hidden=7168, heads=128, ffn_hidden=18432, ffn_type="swiglu", vocab=129280,
    seq_len=4096, max_context=163840, position_embedding="rope", norm="rmsnorm", bias=False, tied_embeddings=False,
    dropout=False, moe=MoESpec(experts=256, top_k=8, expert_ffn_hidden=2048, shared_experts=1, first_dense=3),
    mla=MLASpec(q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128),
    global_batch=15360, precision="fp8", train_tokens=14.8e12,
    source="DeepSeek-V3, DeepSeek-AI 2024 (technical report arXiv 2412.19437, sections 2.1 and 4.2; Hugging Face "
           "deepseek-ai/DeepSeek-V3 config.json: deepseek_v3, first_k_dense_replace 3, n_routed_experts 256, "
           "n_shared_experts 1, moe_intermediate_size 2048); 671B total, 37B activated; 4K pre-training "
           "sequences, batch ramped to 15360, 14.8T tokens, FP8 training; the multi-token-prediction module "
           "(14B) and the router's bias terms are not counted; context 163840 (config max_position_embeddings)",
))

PRESETS: dict[str, ModelSpec] = {m.name: m for m in _ALL}

# Short, unambiguous aliases. "70b" and "8b" mean Llama 3 (the serving docs use `--model 70b` for it);
# use "llama2-70b" for Llama 2. "7b", "13b", "22b" are ambiguous and deliberately absent.
ALIASES: dict[str, str] = {
    "gpt3": "gpt3-175b",
    "175b": "gpt3-175b",
    "405b": "llama3-405b",
    "70b": "llama3-70b",
    "8b": "llama3-8b",
    "llama3.1-8b": "llama3-8b",
    "llama3.1-70b": "llama3-70b",
    "llama3.1-405b": "llama3-405b",
    "mixtral": "mixtral-8x7b",
    "530b": "megatron-530b",
    "mt-nlg": "megatron-530b",
    "mt-nlg-530b": "megatron-530b",
    "1t": "megatron-1t",
    "gpt4-moe": "gpt4moe-1.8t",
    "gpt4moe": "gpt4moe-1.8t",
    "1.8t": "gpt4moe-1.8t",
    "qwen3-235b": "qwen3-235b-a22b",
    "qwen3-moe": "qwen3-235b-a22b",
    "dsv3": "deepseek-v3",
    "deepseek": "deepseek-v3",
}


def _squash(s: str) -> str:
    return re.sub(r"[-_\s]", "", s.lower())


# "GPT-3-175B", "llama_3_70b", "Llama-3-405B" -> canonical (separators ignored)
_SQUASHED: dict[str, str] = {_squash(n): n for n in [*PRESETS, *ALIASES]}


def _title(canon: str) -> str:
    return PRESETS[canon].source.split(";")[0]


def _looks_like_path(s: str) -> bool:
    p = Path(s).expanduser()
    return s.lower().endswith(".json") or p.is_file() or (p.is_dir() and (p / "config.json").exists())


def get_model(name_or_path: str) -> tuple[ModelSpec, str | None]:
    """A preset by name or alias (case-insensitive), or a model read from a Hugging Face config.json.

    Returns (spec, note); note says which preset an alias resolved to, else None.
    """
    raw = str(name_or_path).strip()
    key = raw.lower()
    if key in PRESETS:
        return PRESETS[key], None
    canon = ALIASES.get(key) or _SQUASHED.get(_squash(key))
    if canon is not None:
        canon = ALIASES.get(canon, canon)
        return PRESETS[canon], f"{raw} -> {canon} ({_title(canon)})"
    if raw and _looks_like_path(raw):
        from .hf_config import from_hf_config

        return from_hf_config(raw), None
    known = list(PRESETS)
    close = difflib.get_close_matches(key, [*known, *ALIASES], n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ModelError(f"unknown model '{raw}'; {hint}known: {', '.join(known)}; "
                     "or a path to a Hugging Face config.json")


def list_models() -> list[ModelSpec]:
    return list(PRESETS.values())
