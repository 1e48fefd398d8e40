"""Reading a row of the bundled schemas (runs/v1, serving/v1): typed fields, the model it describes, and
`RunSkipped`, the one declared reason a row is not predicted. Shared by training rows
(planner.validation.runs) and serving rows (planner.validation.serving)."""
from __future__ import annotations

import math
import re

from costmodels.model import MLASpec, ModelError, ModelSpec, MoESpec
from costmodels.presets import get_model


class RunSkipped(Exception):
    """One run cannot be predicted, for a declared reason that becomes the row's `skipped` text: the GPU
    is not in the catalog, a parallelism rule is broken, a feature is not modelled, a required field is
    missing, null or malformed (named), or nothing is measured. `validate_file` turns this (and the rule
    errors StrategyError / ModelError, whose messages name the offending value) into a skipped row; any
    other exception is a bug and propagates with its traceback."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def group(run: dict, name: str) -> dict:
    """`run[name]`, an object, or RunSkipped naming it."""
    g = run.get(name)
    if not isinstance(g, dict):
        raise RunSkipped(f"{name} is {'missing' if g is None else 'not an object'}")
    return g


def field(run: dict, name: str, key: str, kind: type = int, *, required: bool = True, default=None):
    """`run[name][key]` as `kind` (int: a whole number; float: a number; str; bool), or RunSkipped naming
    the field when it is missing, null (and required) or of the wrong type."""
    grp = group(run, name)
    value = grp.get(key)
    if value is None:
        if required:
            raise RunSkipped(f"{name}.{key} is {'null' if key in grp else 'missing'}")
        return default
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise RunSkipped(f"{name}.{key} is {value!r}; expected a whole number")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise RunSkipped(f"{name}.{key} is {value!r}; expected a number")
        value = float(value)
    elif not isinstance(value, kind):
        raise RunSkipped(f"{name}.{key} is {value!r}; expected {kind.__name__}")
    return value


def run_model(m: dict, notes: str = "") -> ModelSpec:
    """The run's shape. GELU models are GPT-style (learned positions, biases, tied embeddings);
    SwiGLU models Llama-style (RoPE, no biases, untied, no dropout). MoE layers: moe_layers of layers, evenly
    spaced when they divide the layers, else after dense first layers (DeepSeek's first_k_dense_replace).
    Multi-head latent attention (runs/v1 has no field for it) from the notes ("MLA: q_lora 1536, kv_lora 512,
    qk head 128 + rope 64, v head 128"), else from a preset of the same name and shape. A missing or malformed
    required field is named (RunSkipped); values outside the model's rules raise ModelError naming them."""
    r = {"model": m}
    ffn_type = field(r, "model", "ffn_type", str, required=False, default="gelu")
    if ffn_type not in ("gelu", "swiglu"):
        raise RunSkipped(f"model.ffn_type {ffn_type!r} is not modelled; known: gelu, swiglu")
    gpt_style = ffn_type == "gelu"
    layers = field(r, "model", "layers")
    moe = None
    if m.get("moe") is not None:
        e = {"model.moe": m["moe"]}
        moe_layers = field(e, "model.moe", "moe_layers", required=False)
        first_dense = layers - moe_layers if moe_layers and 0 < layers - moe_layers and layers % moe_layers else 0
        moe = MoESpec(experts=field(e, "model.moe", "experts"), top_k=field(e, "model.moe", "top_k"),
                      expert_ffn_hidden=field(e, "model.moe", "expert_ffn_hidden"),
                      shared_experts=field(e, "model.moe", "shared_experts", required=False, default=0),
                      layer_freq=1 if first_dense else _moe_freq(layers, moe_layers), first_dense=first_dense)
    spec = ModelSpec(
        name=field(r, "model", "name", str, required=False, default="run-model"), layers=layers,
        hidden=field(r, "model", "hidden"), heads=field(r, "model", "heads"),
        kv_heads=field(r, "model", "kv_heads", required=False), ffn_hidden=field(r, "model", "ffn_hidden", required=False),
        ffn_type=ffn_type, vocab=field(r, "model", "vocab", required=False, default=51200),
        seq_len=field(r, "model", "seq_len"), tied_embeddings=gpt_style,
        position_embedding="learned" if gpt_style else "rope", bias=gpt_style,
        norm="layernorm" if gpt_style else "rmsnorm", moe=moe,
        dropout=gpt_style,   # GPT-style runs train with dropout, Llama-style without (their recipes: 0.0)
    )
    mla = _mla(spec, notes)
    if mla is not None:
        return spec.model_copy(update={"mla": mla})
    head_dim = _head_dim(spec, notes)
    return spec if head_dim is None else ModelSpec(**{**spec.model_dump(), "attention_head_dim": head_dim})


def _head_dim(spec: ModelSpec, notes: str) -> int | None:
    """A per-head width other than hidden / heads (runs/v1 has no field for it): stated in the notes
    ("kv_channels 128", "head_dim 128"), else its preset's (same name and shape)."""
    m = re.search(r"(?:kv_channels|head_dim)\D{0,3}(\d+)", notes or "", re.IGNORECASE)
    if m:
        d = int(m.group(1))
        return d if d * spec.heads != spec.hidden else None
    preset = _same_shape_preset(spec)
    return preset.attention_head_dim if preset is not None else None


def _mla(spec: ModelSpec, notes: str) -> MLASpec | None:
    """The run's multi-head latent attention: stated in its notes, else its preset's (same name and shape)."""
    got = {k: re.search(pat, notes or "", re.IGNORECASE) for k, pat in (
        ("q_lora_rank", r"q_lora\D{0,12}(\d+)"), ("kv_lora_rank", r"kv_lora\D{0,12}(\d+)"),
        ("qk_nope_head_dim", r"qk head\D{0,3}(\d+)"), ("qk_rope_head_dim", r"rope\D{0,3}(\d+)"),
        ("v_head_dim", r"\bv head\D{0,3}(\d+)"))}
    if "mla" in (notes or "").lower() and all(got[k] for k in ("kv_lora_rank", "qk_nope_head_dim", "v_head_dim")):
        return MLASpec(**{k: int(v.group(1)) for k, v in got.items() if v is not None})
    preset = _same_shape_preset(spec)
    return preset.mla if preset is not None else None


def _same_shape_preset(spec: ModelSpec) -> ModelSpec | None:
    """The preset the run names (its model name, any spelling) when it has the run's layers, hidden and heads."""
    try:
        preset, _ = get_model(spec.name)
    except ModelError:
        return None
    same = (preset.layers, preset.hidden, preset.heads) == (spec.layers, spec.hidden, spec.heads)
    return preset if same else None


def _moe_freq(layers: int, moe_layers) -> int:
    if not moe_layers:
        return 1
    return max(1, round(layers / moe_layers))
