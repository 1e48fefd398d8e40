"""Floating-point work of a training step, and the utilisation figures built on it.

Conventions (each counts multiply-add as 2 FLOPs):
- model FLOPs: forward + backward = 3 x forward, no recompute (PaLM, Chowdhery et al. 2022, app. B);
- hardware FLOPs: model FLOPs + the recomputed forward work (Korthikanti et al. 2022, section 6);
- Narayanan et al. 2021, eq. 3: 96*B*s*l*h^2*(1 + s/(6h) + V/(16*l*h)) per step (full recompute counted);
- llm-foundry: per sequence 6*N*s + 12*l*h*s^2 (N including position embeddings).
"""
from __future__ import annotations

from costmodels.model import ModelSpec


def layer_forward_flops(model: ModelSpec, tokens: float, seq_len: int, layer: int = 0) -> float:
    """Forward FLOPs of one transformer layer over `tokens` tokens (whole model, before any split).

    Matrix work 2 * tokens * (active matrix params) plus attention scores and values 2 x 2*tokens*s*q, q the
    query width heads x head_dim (= h for GPT; Narayanan et al. 2021, section 5.1: 24bsh^2 + 4bs^2h per layer).
    """
    q = model.q_dim
    attn_matrix = sum(n * k for n, k in model.attention_gemm_widths(1))   # h(q + 2 kv) + qh; MLA's own GEMMs
    mlp_matrix = _mlp_matrix_params_active(model, layer)
    return 2.0 * tokens * (attn_matrix + mlp_matrix) + 4.0 * tokens * seq_len * q


def _mlp_matrix_params_active(model: ModelSpec, layer: int) -> float:
    if model.moe is not None and model.is_moe_layer(layer):
        moe = model.moe
        experts = moe.top_k + moe.shared_experts
        return experts * model.params_expert() + model.params_router()
    return model.params_mlp_dense()


def logits_forward_flops(model: ModelSpec, tokens: float) -> float:
    """Output projection to the vocabulary: 2 * tokens * h * V."""
    return 2.0 * tokens * model.hidden * model.vocab


def model_forward_flops(model: ModelSpec, tokens: float, seq_len: int) -> float:
    """Forward FLOPs of the whole model over `tokens` tokens."""
    return sum(layer_forward_flops(model, tokens, seq_len, i) for i in _layer_kinds(model)) * _kind_weight(model) + \
        logits_forward_flops(model, tokens)


def _layer_kinds(model: ModelSpec) -> list[int]:
    # Dense models: one representative layer. MoE: one full period of dense/MoE layers (every layer when the
    # first ones are dense apart from the period).
    if model.moe is None:
        return [0]
    return list(range(model.layers)) if model.moe.first_dense else list(range(model.moe.layer_freq))


def _kind_weight(model: ModelSpec) -> float:
    return model.layers / len(_layer_kinds(model))


def model_flops_per_step(model: ModelSpec, global_batch: int, seq_len: int) -> float:
    """Model FLOPs per optimizer step: 3 x forward (PaLM appendix B convention)."""
    return 3.0 * model_forward_flops(model, global_batch * seq_len, seq_len)


def causal_model_flops_per_step(model: ModelSpec, global_batch: int, seq_len: int) -> float:
    """Model FLOPs per step counting only the causal (unmasked) half of attention's scores and values:
    the work causal kernels do (FlashAttention skips the masked blocks). model_flops_per_step counts the full
    4*tokens*s*q per layer forward (PaLM, Narayanan et al.), which makes MFU grow with the context length."""
    tokens = global_batch * seq_len
    return model_flops_per_step(model, global_batch, seq_len) - 3.0 * model.layers * 2.0 * tokens * seq_len * model.q_dim


def narayanan_flops_per_step(model: ModelSpec, global_batch: int, seq_len: int) -> float:
    """Narayanan et al. 2021, eq. 3 (counts the recomputed forward): 96 B s l h^2 (1 + s/6h + V/16lh)."""
    l, h, s, v = model.layers, model.hidden, seq_len, model.vocab
    return 96.0 * global_batch * s * l * h * h * (1 + s / (6 * h) + v / (16 * l * h))


def llm_foundry_flops_per_step(model: ModelSpec, global_batch: int, seq_len: int, params: float | None = None) -> float:
    """llm-foundry (MosaicML) model FLOPs: per sequence 6*N*s + 12*l*h*s^2 (N incl. position embeddings;
    `params` overrides N with the count a source reports)."""
    n = model.params_total() if params is None else params
    return global_batch * (6.0 * n * seq_len + 12.0 * model.layers * model.hidden * seq_len * seq_len)


def training_flops(model: ModelSpec, tokens: float, full_recompute: bool = False) -> float:
    """Whole-run estimate 6*N*D, or 8*N*D with full recompute (Kaplan et al. 2020); MoE uses active N."""
    return (8.0 if full_recompute else 6.0) * model.params_active() * tokens
