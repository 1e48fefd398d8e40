"""Read a Hugging Face `config.json` into a ModelSpec.

Supported model_type values and how their keys map (key names from transformers' configuration_*.py):
- llama, mistral, qwen2: num_hidden_layers, hidden_size, num_attention_heads, num_key_value_heads,
  intermediate_size, vocab_size, max_position_embeddings, tie_word_embeddings (default False);
  gated MLP (gate/up/down, counted as swiglu whatever hidden_act says), RMSNorm, RoPE.
  Mistral's sliding_window is ignored (it changes attention cost, not parameters). Qwen2 has q/k/v biases
  (h + 2*kv_dim per layer, < 0.01% of parameters); they are not counted (bias=False).
  Llama's attention_bias / mlp_bias set bias=True.
- mixtral: as llama plus num_local_experts, num_experts_per_tok; intermediate_size is the expert FFN.
- qwen3: as llama; head_dim (128) may differ from hidden_size / num_attention_heads (attention_head_dim).
- qwen2_moe, qwen3_moe: num_experts, num_experts_per_tok, moe_intermediate_size, shared_expert_intermediate_size
  (must be a multiple of moe_intermediate_size: counted as that many shared experts),
  decoder_sparse_step -> layer_freq; mlp_only_layers must be empty. The shared-expert gate (h per layer)
  is not counted.
- gpt2: n_layer, n_embd, n_head, n_positions, vocab_size, n_inner (null -> 4h); learned positions, tied
  embeddings, biases, LayerNorm, GELU.
- gpt_neox: as llama's key names, LayerNorm, GELU, biases, rotary, untied by default.

dropout: true when any of the config's dropout probabilities is above 0 (llama/mistral/mixtral/qwen2:
attention_dropout, default 0.0; gpt_neox: hidden_dropout, attention_dropout, default 0.0; gpt2:
resid_pdrop, embd_pdrop, attn_pdrop, default 0.1 as GPT2Config); it decides whether the planner counts
dropout masks.

seq_len (the planning default) is min(max_position_embeddings, 8192): long-context models are rarely
pre-trained at their full context, and the planner's user can override it. For learned position tables
(gpt2) it is n_positions, the table size, uncapped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .model import MLASpec, ModelError, ModelSpec, MoESpec

__all__ = ["from_hf_config", "SUPPORTED_MODEL_TYPES", "SEQ_LEN_CAP"]

SUPPORTED_MODEL_TYPES = ("deepseek_v2", "deepseek_v3", "gpt2", "gpt_neox", "llama", "mistral", "mixtral", "qwen2",
                         "qwen2_moe", "qwen3", "qwen3_moe")
SEQ_LEN_CAP = 8192
_REQUIRED = object()


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, str):
        return "string"
    if isinstance(v, (int, float)):
        return "number"
    return "array" if isinstance(v, list) else "object"


class _Reader:
    """Typed access to the config dict; every failure is a one-line ModelError naming file and key."""

    def __init__(self, cfg: dict, where: str, model_type: str) -> None:
        self.cfg, self.where, self.model_type = cfg, where, model_type

    def fail(self, msg: str) -> ModelError:
        return ModelError(f"{self.where}: {msg}")

    def pos_int(self, key: str, default: Any = _REQUIRED) -> Any:
        v = self.cfg.get(key)
        if v is None:  # absent or null
            if default is _REQUIRED:
                what = "missing required key" if key not in self.cfg else "null value for required key"
                return self._raise(f"{what} '{key}' (model_type '{self.model_type}')")
            return default
        if isinstance(v, float) and not math.isfinite(v):
            return self._raise(f"'{key}' must be a finite positive integer, got {v}")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return self._raise(f"'{key}' must be an integer, got {_json_type(v)} {json.dumps(v)}")
        if isinstance(v, float) and not v.is_integer():
            return self._raise(f"'{key}' must be an integer, got {v}")
        if v <= 0:
            return self._raise(f"'{key}' must be a positive integer, got {v}")
        return int(v)

    def flag(self, key: str, default: bool) -> bool:
        v = self.cfg.get(key)
        if v is None:
            return default
        if not isinstance(v, bool):
            return self._raise(f"'{key}' must be true or false, got {_json_type(v)} {json.dumps(v)}")
        return v

    def _raise(self, msg: str) -> Any:
        raise self.fail(msg)


def _dropout(r: _Reader, keys: tuple[str, ...], default: float) -> bool:
    """True when a dropout probability in the config (transformers' configuration_*.py key names) is > 0."""
    for key in keys:
        v = r.cfg.get(key, default)
        if v is None:
            v = default
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return r._raise(f"'{key}' must be a number, got {_json_type(v)} {json.dumps(v)}")
        if v > 0:
            return True
    return False


def _llama_like(r: _Reader) -> dict:
    heads = r.pos_int("num_attention_heads")
    hidden = r.pos_int("hidden_size")
    head_dim = r.pos_int("head_dim", None)
    if head_dim is None and hidden % heads:
        r._raise(f"'hidden_size' {hidden} is not a multiple of 'num_attention_heads' {heads} and no 'head_dim' "
                 "is given")
    llama_bias = r.model_type == "llama" and (r.flag("attention_bias", False) or r.flag("mlp_bias", False))
    return dict(
        layers=r.pos_int("num_hidden_layers"), hidden=hidden, heads=heads,
        kv_heads=r.pos_int("num_key_value_heads", heads), ffn_hidden=r.pos_int("intermediate_size"),
        ffn_type="swiglu", vocab=r.pos_int("vocab_size"),
        seq_len=min(r.pos_int("max_position_embeddings"), SEQ_LEN_CAP),
        max_context=r.pos_int("max_position_embeddings"),
        tied_embeddings=r.flag("tie_word_embeddings", False), position_embedding="rope", bias=llama_bias,
        norm="rmsnorm", dropout=_dropout(r, ("attention_dropout", "hidden_dropout"), 0.0),
        attention_head_dim=head_dim if head_dim is not None and head_dim * heads != hidden else None,
    )


def _mixtral(r: _Reader) -> dict:
    d = _llama_like(r)
    d["moe"] = MoESpec(experts=r.pos_int("num_local_experts"), top_k=r.pos_int("num_experts_per_tok"),
                       expert_ffn_hidden=d["ffn_hidden"])
    return d


def _qwen2_moe(r: _Reader) -> dict:
    """qwen2_moe and qwen3_moe (Qwen3-MoE has no shared expert, and head_dim 128 on any hidden size)."""
    d = _llama_like(r)
    f = r.pos_int("moe_intermediate_size")
    shared_f = r.cfg.get("shared_expert_intermediate_size") or 0
    if shared_f:
        shared_f = r.pos_int("shared_expert_intermediate_size")
    if shared_f % f:
        r._raise(f"'shared_expert_intermediate_size' {shared_f} is not a multiple of 'moe_intermediate_size' "
                 f"{f}; only shared experts of the routed experts' size are supported")
    if r.cfg.get("mlp_only_layers"):
        r._raise("'mlp_only_layers' is not empty; only evenly spaced MoE layers (decoder_sparse_step) "
                 "are supported")
    d["moe"] = MoESpec(experts=r.pos_int("num_experts"), top_k=r.pos_int("num_experts_per_tok"),
                       expert_ffn_hidden=f, shared_experts=shared_f // f,
                       layer_freq=r.pos_int("decoder_sparse_step", 1))
    return d


def _deepseek(r: _Reader) -> dict:
    """deepseek_v2 / deepseek_v3: multi-head latent attention (q_lora_rank, kv_lora_rank, qk_nope_head_dim,
    qk_rope_head_dim, v_head_dim), the first first_k_dense_replace layers dense, then MoE every
    moe_layer_freq layers with n_routed_experts of moe_intermediate_size and n_shared_experts of the same
    size. The multi-token-prediction module (num_nextn_predict_layers) is not modelled."""
    heads = r.pos_int("num_attention_heads")
    q_lora = r.cfg.get("q_lora_rank")
    mla = MLASpec(kv_lora_rank=r.pos_int("kv_lora_rank"), qk_nope_head_dim=r.pos_int("qk_nope_head_dim"),
                  qk_rope_head_dim=r.pos_int("qk_rope_head_dim"), v_head_dim=r.pos_int("v_head_dim"),
                  q_lora_rank=r.pos_int("q_lora_rank") if q_lora is not None else None)
    layers = r.pos_int("num_hidden_layers")
    first_dense = r.cfg.get("first_k_dense_replace") or 0
    if not isinstance(first_dense, int) or isinstance(first_dense, bool) or not 0 <= first_dense < layers:
        r._raise(f"'first_k_dense_replace' {first_dense!r} must be a whole number below num_hidden_layers {layers}")
    return dict(
        layers=layers, hidden=r.pos_int("hidden_size"), heads=heads,
        kv_heads=r.pos_int("num_key_value_heads", heads), ffn_hidden=r.pos_int("intermediate_size"),
        ffn_type="swiglu", vocab=r.pos_int("vocab_size"),
        seq_len=min(r.pos_int("max_position_embeddings"), SEQ_LEN_CAP),
        max_context=r.pos_int("max_position_embeddings"),
        tied_embeddings=r.flag("tie_word_embeddings", False), position_embedding="rope", bias=False,
        norm="rmsnorm", dropout=_dropout(r, ("attention_dropout",), 0.0), mla=mla,
        moe=MoESpec(experts=r.pos_int("n_routed_experts"), top_k=r.pos_int("num_experts_per_tok"),
                    expert_ffn_hidden=r.pos_int("moe_intermediate_size"),
                    shared_experts=r.pos_int("n_shared_experts", 0) if r.cfg.get("n_shared_experts") else 0,
                    layer_freq=r.pos_int("moe_layer_freq", 1), first_dense=first_dense),
    )


def _gpt2(r: _Reader) -> dict:
    hidden = r.pos_int("n_embd")
    return dict(
        layers=r.pos_int("n_layer"), hidden=hidden, heads=r.pos_int("n_head"),
        ffn_hidden=r.pos_int("n_inner", 4 * hidden), ffn_type="gelu", vocab=r.pos_int("vocab_size"),
        seq_len=r.pos_int("n_positions"), tied_embeddings=r.flag("tie_word_embeddings", True),
        position_embedding="learned", bias=True, norm="layernorm",
        dropout=_dropout(r, ("resid_pdrop", "embd_pdrop", "attn_pdrop"), 0.1),
    )


def _gpt_neox(r: _Reader) -> dict:
    return dict(
        layers=r.pos_int("num_hidden_layers"), hidden=r.pos_int("hidden_size"),
        heads=r.pos_int("num_attention_heads"), ffn_hidden=r.pos_int("intermediate_size"), ffn_type="gelu",
        vocab=r.pos_int("vocab_size"), seq_len=min(r.pos_int("max_position_embeddings"), SEQ_LEN_CAP),
        max_context=r.pos_int("max_position_embeddings"),
        tied_embeddings=r.flag("tie_word_embeddings", False), position_embedding="rope",
        bias=r.flag("attention_bias", True), norm="layernorm",
        dropout=_dropout(r, ("hidden_dropout", "attention_dropout"), 0.0),
    )


_BUILDERS = {"llama": _llama_like, "mistral": _llama_like, "qwen2": _llama_like, "qwen3": _llama_like,
             "mixtral": _mixtral, "qwen2_moe": _qwen2_moe, "qwen3_moe": _qwen2_moe, "gpt2": _gpt2,
             "gpt_neox": _gpt_neox, "deepseek_v2": _deepseek, "deepseek_v3": _deepseek}
assert tuple(sorted(_BUILDERS)) == SUPPORTED_MODEL_TYPES


def _locate(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if p.is_dir():
        f = p / "config.json"
        if not f.is_file():
            raise ModelError(f"no config.json in directory {p}")
        return f
    if not p.exists():
        raise ModelError(f"config.json at {p} does not exist")
    return p


def from_hf_config(path: str | Path) -> ModelSpec:
    """ModelSpec from a Hugging Face config.json (or a directory containing one)."""
    file = _locate(path)
    where = f"config.json at {file}"
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ModelError(f"{where} cannot be read ({getattr(e, 'strerror', None) or e})") from None
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelError(f"{where} is not valid JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(cfg, dict):
        raise ModelError(f"{where} must hold a JSON object, got {_json_type(cfg)}")
    supported = ", ".join(SUPPORTED_MODEL_TYPES)
    mt = cfg.get("model_type")
    if mt is None:
        raise ModelError(f"{where} has no 'model_type'; supported: {supported}")
    if mt not in _BUILDERS:
        shown = f"'{mt}'" if isinstance(mt, str) else json.dumps(mt)
        raise ModelError(f"model_type {shown} in {file} is not supported; supported: {supported}")
    name = cfg.get("_name_or_path")
    if not isinstance(name, str) or not name.strip():
        name = file.parent.resolve().name if file.name == "config.json" else file.stem
    try:
        fields = _BUILDERS[mt](_Reader(cfg, where, mt))
        return ModelSpec(name=name or "hf-model", source=f"Hugging Face {where}", **fields)
    except ModelError as e:
        raise (e if str(e).startswith(where) else ModelError(f"{where}: {e}")) from None
