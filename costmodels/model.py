"""Transformer model description and exact parameter counts.

Formulas: docs/reference/formulas.md ("Parameters"); Narayanan et al. 2021 eq. 2 for the
GPT/Megatron block, Touvron et al. 2023 / Llama 3 paper for SwiGLU + GQA, Jiang et al. 2024 (Mixtral)
for MoE layers.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

__all__ = ["ModelError", "MLASpec", "MoESpec", "ModelSpec"]

# Sanity limits: far above any real model, low enough to catch typos and overflow-sized inputs.
MAX_LAYERS = 100_000
MAX_HIDDEN = 1_000_000
MAX_FFN = 10_000_000
MAX_VOCAB = 10_000_000
MAX_SEQ = 10_000_000
MAX_EXPERTS = 100_000
MAX_BATCH = 1_000_000_000
MAX_TOKENS = 1e18


class ModelError(ValueError):
    """One-line user-facing message naming the bad value, where it came from, and what is allowed."""


class _Bad(ValueError):
    """Raised inside validators; _first_error adds the model's name and nesting."""


def _first_error(e: ValidationError, what: str) -> ModelError:
    """Turn pydantic's multi-line ValidationError into a one-line ModelError."""
    err = e.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "value"
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, ModelError):  # from a nested MoESpec(**data): name the model too
        return ModelError(f"{what} {cause}") if what.startswith("model") else cause
    if isinstance(cause, _Bad):
        return ModelError(f"{what}: {cause}")
    if err["type"] == "extra_forbidden":
        return ModelError(f"{what}: unknown field '{field}'")
    if err["type"] == "missing":
        return ModelError(f"{what}: missing required field '{field}'")
    got = err.get("input")
    got_s = "" if isinstance(got, (dict, BaseModel)) else f" (got {got!r})"
    return ModelError(f"{what}: {field}: {err['msg']}{got_s}".replace("\n", " "))


class _Spec(BaseModel):
    """Frozen, strict base whose construction errors are one-line ModelErrors."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise _first_error(e, self._what(data)) from None

    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kwargs: Any):  # type: ignore[override]
        try:
            return super().model_validate(obj, *args, **kwargs)
        except ValidationError as e:
            raise _first_error(e, cls._what(obj if isinstance(obj, dict) else {})) from None

    @classmethod
    def _what(cls, data: dict) -> str:
        return cls.__name__

    _NUMERIC: ClassVar[tuple[str, ...]] = ()  # fields that must be real numbers

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_or_str_numbers(cls, v: Any, info) -> Any:
        # pydantic's lax mode would accept True as 1 and "4096" as 4096; a model shape wants real numbers.
        if info.field_name in cls._NUMERIC:
            if isinstance(v, (bool, str)):
                raise _Bad(f"{info.field_name} must be a number, got {v!r}")
            if isinstance(v, float) and not math.isfinite(v):
                raise _Bad(f"{info.field_name} must be finite, got {v!r}")
        return v


def _check_range(field: str, v: int | float | None, lo: float, hi: float) -> None:
    if v is not None and not (lo <= v <= hi):
        fmt = lambda x: f"{int(x):_}" if x == int(x) else f"{x:g}"  # noqa: E731
        raise _Bad(f"{field}={v} is out of range; allowed {fmt(lo)}..{fmt(hi)}")


class MoESpec(_Spec):
    experts: int
    top_k: int
    expert_ffn_hidden: int
    shared_experts: int = 0  # always-active experts of size expert_ffn_hidden
    layer_freq: int = 1  # every layer_freq-th layer is MoE (1 = all layers)
    capacity_factor: float = 1.0
    first_dense: int = 0  # the first layers stay dense (DeepSeek-V3 first_k_dense_replace)

    _NUMERIC: ClassVar[tuple[str, ...]] = (
        "experts", "top_k", "expert_ffn_hidden", "shared_experts", "layer_freq", "capacity_factor", "first_dense")

    @classmethod
    def _what(cls, data: dict) -> str:
        return "moe"

    @model_validator(mode="after")
    def _check(self) -> "MoESpec":
        _check_range("experts", self.experts, 1, MAX_EXPERTS)
        _check_range("top_k", self.top_k, 1, MAX_EXPERTS)
        _check_range("expert_ffn_hidden", self.expert_ffn_hidden, 1, MAX_FFN)
        _check_range("shared_experts", self.shared_experts, 0, MAX_EXPERTS)
        _check_range("layer_freq", self.layer_freq, 1, MAX_LAYERS)
        _check_range("capacity_factor", self.capacity_factor, 1e-6, 1e6)
        _check_range("first_dense", self.first_dense, 0, MAX_LAYERS)
        if self.top_k > self.experts:
            raise _Bad(f"top_k={self.top_k} exceeds experts={self.experts}; top_k must be <= experts")
        return self


class MLASpec(_Spec):
    """Multi-head latent attention (DeepSeek-V2 / V3, Liu et al. 2024 section 2.1.1): queries through an
    optional low-rank q_lora_rank, keys and values from one kv_lora_rank latent plus a shared RoPE key of
    qk_rope_head_dim; per head qk_nope + qk_rope query/key dims and v_head_dim value dims."""
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    q_lora_rank: int | None = None

    _NUMERIC: ClassVar[tuple[str, ...]] = (
        "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "q_lora_rank")

    @classmethod
    def _what(cls, data: dict) -> str:
        return "mla"

    @model_validator(mode="after")
    def _check(self) -> "MLASpec":
        for f in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "q_lora_rank"):
            _check_range(f, getattr(self, f), 1 if f != "qk_rope_head_dim" else 0, MAX_HIDDEN)
        return self

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim


def default_ffn_hidden(hidden: int, ffn_type: str) -> int:
    """4h for GELU; for SwiGLU 8h/3 (same parameters as a 4h GELU MLP) rounded up to a multiple of 64."""
    if ffn_type == "gelu":
        return 4 * hidden
    return -(-int(8 * hidden / 3) // 64) * 64


class ModelSpec(_Spec):
    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int | None = None  # normalised to heads
    ffn_hidden: int | None = None  # normalised by default_ffn_hidden
    ffn_type: Literal["gelu", "swiglu"] = "gelu"
    vocab: int
    seq_len: int  # published training sequence length (planning default)
    # the longest sequence the model's positions cover (Hugging Face config.json max_position_embeddings);
    # None: not stated
    max_context: int | None = None
    tied_embeddings: bool = False
    position_embedding: Literal["learned", "rope", "alibi"] = "rope"
    bias: bool = False  # linear-layer biases (GPT-2/3 style)
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    moe: MoESpec | None = None
    mla: MLASpec | None = None     # multi-head latent attention instead of (grouped-query) attention
    # per-head width when heads x head_dim differs from hidden (Qwen3: 64 heads x 128 = 8192 on hidden 4096;
    # Megatron-LM --kv-channels, Hugging Face head_dim); None: hidden / heads
    attention_head_dim: int | None = None
    # hidden/attention dropout in training: masks are stored activations (Korthikanti et al. 2022 Table 2,
    # GPT with dropout 0.1); Llama-style models train without (Llama 2/3, Mistral, Qwen configs: 0.0)
    dropout: bool = True
    # defaults from the preset's published training run (None where unknown)
    global_batch: int | None = None  # sequences per optimizer step
    precision: Literal["fp32", "bf16", "fp16", "fp8"] = "bf16"
    train_tokens: float | None = None
    source: str = ""

    _NUMERIC: ClassVar[tuple[str, ...]] = (
        "layers", "hidden", "heads", "kv_heads", "ffn_hidden", "vocab", "seq_len", "global_batch",
                "train_tokens", "attention_head_dim")

    @classmethod
    def _what(cls, data: dict) -> str:
        name = data.get("name") if isinstance(data, dict) else None
        return f"model '{name}'" if isinstance(name, str) and name else "model"

    @model_validator(mode="after")
    def _check(self) -> "ModelSpec":
        if not self.name.strip():
            raise _Bad("name must be a non-empty string")
        _check_range("layers", self.layers, 1, MAX_LAYERS)
        _check_range("hidden", self.hidden, 1, MAX_HIDDEN)
        _check_range("heads", self.heads, 1, MAX_HIDDEN)
        _check_range("kv_heads", self.kv_heads, 1, MAX_HIDDEN)
        _check_range("ffn_hidden", self.ffn_hidden, 1, MAX_FFN)
        _check_range("vocab", self.vocab, 1, MAX_VOCAB)
        _check_range("seq_len", self.seq_len, 1, MAX_SEQ)
        _check_range("global_batch", self.global_batch, 1, MAX_BATCH)
        _check_range("train_tokens", self.train_tokens, 1, MAX_TOKENS)
        _check_range("attention_head_dim", self.attention_head_dim, 1, MAX_HIDDEN)
        if self.attention_head_dim is None and self.hidden % self.heads:
            raise _Bad(f"hidden={self.hidden} is not divisible by heads={self.heads}; "
                             "hidden must be a multiple of heads (or give attention_head_dim)")
        kv = self.heads if self.kv_heads is None else self.kv_heads
        if self.heads % kv:
            raise _Bad(f"heads={self.heads} is not divisible by kv_heads={kv}; "
                             "kv_heads must divide heads")
        if self.moe is not None and self.moe.layer_freq > self.layers:
            raise _Bad(f"moe.layer_freq={self.moe.layer_freq} exceeds layers={self.layers}; "
                             "no layer would be MoE")
        if self.moe is not None and self.moe.first_dense >= self.layers:
            raise _Bad(f"moe.first_dense={self.moe.first_dense} leaves no layer of {self.layers} to be MoE")
        # Normalise defaults (frozen model: set the instance dict directly, once, at creation).
        object.__setattr__(self, "kv_heads", kv)
        if self.ffn_hidden is None:
            object.__setattr__(self, "ffn_hidden", default_ffn_hidden(self.hidden, self.ffn_type))
        return self

    # ---- derived shape -------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        """Per-head width; with MLA the mean of the query/key and value head widths (q_dim below)."""
        if self.mla is not None:
            return (self.mla.qk_head_dim + self.mla.v_head_dim) // 2
        return self.attention_head_dim or self.hidden // self.heads

    @property
    def q_dim(self) -> int:
        """Width of the queries and of the attention output: heads x head_dim (= hidden unless set apart).
        With MLA, heads x (qk + v head dims) / 2: Q plus the output-projection input is 2 q_dim wide, and the
        attention core (QK^T over qk, AV over v) does 4 s^2 q_dim FLOPs per sequence, as for GQA."""
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """K width (= V width): kv_heads x head_dim; with MLA (its K and V are per head) 2 kv_dim = K + V."""
        if self.mla is not None:
            return self.q_dim
        return self.kv_heads * self.head_dim  # type: ignore[operator]

    def attention_gemm_widths(self, t: int = 1) -> list[tuple[float, float]]:
        """(n, k) per token of the attention's GEMMs on one of t tensor-parallel ranks (Shoeybi et al. 2019:
        QKV column-split, output row-split). MLA (megatron/core/transformer/multi_latent_attention.py): the
        down projections (h -> q_lora, h -> kv_lora + rope) duplicated on every rank, the up projections
        column-split, the output projection row-split."""
        h = self.hidden
        if self.mla is None:
            return [((self.q_dim + 2 * self.kv_dim) / t, h), (h, self.q_dim / t)]
        a, H = self.mla, self.heads
        q = ([(a.q_lora_rank, h), (H * a.qk_head_dim / t, a.q_lora_rank)] if a.q_lora_rank
             else [(H * a.qk_head_dim / t, h)])
        return q + [(a.kv_lora_rank + a.qk_rope_head_dim, h), (H * (a.qk_nope_head_dim + a.v_head_dim) / t, a.kv_lora_rank),
                    (h, H * a.v_head_dim / t)]

    @property
    def num_moe_layers(self) -> int:
        # layers i >= first_dense with (i + 1) % layer_freq == 0 (is_moe_layer), counted in closed form
        return 0 if self.moe is None else self.layers // self.moe.layer_freq - self.moe.first_dense // self.moe.layer_freq

    def is_moe_layer(self, i: int) -> bool:
        return self.moe is not None and i >= self.moe.first_dense and (i + 1) % self.moe.layer_freq == 0

    # ---- parameter counts (docs/reference/formulas.md "Parameters") -------------------------------------------
    def params_attention(self) -> int:
        if self.mla is not None:    # the GEMMs of attention_gemm_widths, the q and kv latent norms (RMSNorm)
            a = self.mla
            return int(sum(n * k for n, k in self.attention_gemm_widths(1))) + (a.q_lora_rank or 0) + a.kv_lora_rank
        h, kv, q = self.hidden, self.kv_dim, self.q_dim
        # Q h*q and output q*h (q = h unless the heads are wider), K and V h*kv_dim each (GQA); biases q + 2*kv_dim + h.
        return 2 * h * q + 2 * h * kv + ((q + 2 * kv + h) if self.bias else 0)

    def _mlp(self, f: int) -> int:
        h = self.hidden
        if self.ffn_type == "swiglu":
            return 3 * h * f + ((2 * f + h) if self.bias else 0)  # gate, up (h x f) and down (f x h)
        return 2 * h * f + ((f + h) if self.bias else 0)  # up (h x f) and down (f x h)

    def params_mlp_dense(self) -> int:
        return self._mlp(self.ffn_hidden)  # type: ignore[arg-type]

    def params_expert(self) -> int:
        return 0 if self.moe is None else self._mlp(self.moe.expert_ffn_hidden)

    def params_router(self) -> int:
        return 0 if self.moe is None else self.hidden * self.moe.experts  # gate: h x E, no bias

    def _norm(self) -> int:
        return 2 * self.hidden if self.norm == "layernorm" else self.hidden  # weight (+ bias)

    def params_norms(self) -> int:
        return 2 * self._norm()  # pre-attention and pre-MLP norms

    def _dense_layer(self) -> int:
        return self.params_attention() + self.params_mlp_dense() + self.params_norms()

    def _moe_layer(self) -> int:
        m = self.moe
        assert m is not None
        return (self.params_attention() + self.params_norms() + self.params_router()
                + (m.experts + m.shared_experts) * self.params_expert())

    def _moe_layer_active(self) -> int:
        m = self.moe
        assert m is not None
        return (self.params_attention() + self.params_norms() + self.params_router()
                + (m.top_k + m.shared_experts) * self.params_expert())

    def _check_layer(self, i: int) -> None:
        if not 0 <= i < self.layers:
            raise ModelError(f"model '{self.name}': layer index {i} out of range 0..{self.layers - 1}")

    def params_layer(self, i: int) -> int:
        self._check_layer(i)
        return self._moe_layer() if self.is_moe_layer(i) else self._dense_layer()

    def params_layer_active(self, i: int) -> int:
        self._check_layer(i)
        return self._moe_layer_active() if self.is_moe_layer(i) else self._dense_layer()

    def params_lora(self, rank: int, layer: int = 0) -> int:
        """LoRA adapter parameters of one layer (Hu et al. 2021): rank x (in + out) per linear layer of the
        block (attention and MLP; an MoE layer's routed experts the top_k a token uses are counted once each
        expert, all of them)."""
        per = sum(n + k for n, k in self.attention_gemm_widths(1))
        f_in = 2 if self.ffn_type == "swiglu" else 1
        if self.moe is not None and self.is_moe_layer(layer):
            m = self.moe
            mlp = (m.experts + m.shared_experts) * (f_in * (self.hidden + m.expert_ffn_hidden)
                                                   + self.hidden + m.expert_ffn_hidden)
        else:
            mlp = f_in * (self.hidden + self.ffn_hidden) + self.hidden + self.ffn_hidden
        return rank * int(per + mlp)

    def params_embedding(self) -> int:
        pos = self.seq_len * self.hidden if self.position_embedding == "learned" else 0
        return self.vocab * self.hidden + pos  # token table (+ learned position table)

    def params_final_norm(self) -> int:
        """The norm before the output layer (replicated over tp, like the layer norms)."""
        return self._norm()

    def params_output(self) -> int:
        head = 0 if self.tied_embeddings else self.vocab * self.hidden
        return head + self._norm()  # final norm + untied LM head

    def params_layers_total(self) -> int:
        """Parameters of all transformer layers, dense and MoE."""
        n_moe = self.num_moe_layers
        total = (self.layers - n_moe) * self._dense_layer()
        return total + (n_moe * self._moe_layer() if n_moe else 0)

    def params_total(self) -> int:
        return self.params_embedding() + self.params_layers_total() + self.params_output()

    def params_active(self) -> int:
        """Parameters one token touches (embeddings and LM head included, as in Mixtral's 12.9B)."""
        n_moe = self.num_moe_layers
        layers = (self.layers - n_moe) * self._dense_layer()
        if n_moe:
            layers += n_moe * self._moe_layer_active()
        return self.params_embedding() + layers + self.params_output()
