"""FLOP counts and utilisation: Narayanan et al. 2021 eq. 3, 6ND / 8ND, MFU vs HFU."""

from __future__ import annotations

import math

import pytest

from costmodels import ModelSpec, Strategy
from costmodels import flops
from planner.solve.evaluate import evaluate
from costmodels.presets import PRESETS, get_model
from hardware import parse_cluster


def rel_eq(got: float, want: float, rel: float) -> bool:
    return math.isclose(got, want, rel_tol=rel, abs_tol=0.0)


def narayanan_eq3(B: int, s: int, l: int, h: int, V: int, factor: float = 96.0) -> float:
    """Narayanan et al. 2021 (Efficient Large-Scale Language Model Training on GPU Clusters), eq. 3."""
    return factor * B * s * l * h ** 2 * (1 + s / (6 * h) + V / (16 * l * h))


def test_narayanan_eq3_gpt3_175b():
    model, _ = get_model("gpt3-175b")
    B, s = 1536, 2048
    want = narayanan_eq3(B, s, 96, 12288, 50257)
    got = flops.narayanan_flops_per_step(model, B, s)
    assert rel_eq(got, want, 1e-12)
    # order of magnitude check by hand: 96 * 1536 * 2048 * 96 * 12288^2 * 1.0305 ~ 4.5e18 FLOPs per step
    assert 4.4e18 < got < 4.6e18


@pytest.mark.parametrize("name", ["gpt3-175b", "megatron-530b", "megatron-1t", "gpt3-13b"])
def test_model_flops_without_recompute_match_72_factor(name):
    # Narayanan eq. 3 counts four passes (forward, recomputed forward, backward = 2 x forward) -> 96;
    # without recompute three passes -> 72 (docs/reference/formulas.md, "FLOPs"). The vocabulary term V/(16lh) assumes the
    # logits are recomputed too, so model FLOPs differ from the 72 form by a fraction of a percent.
    model = PRESETS[name]
    B, s = model.global_batch or 512, model.seq_len
    want = narayanan_eq3(B, s, model.layers, model.hidden, model.vocab, factor=72.0)
    got = flops.model_flops_per_step(model, B, s)
    assert rel_eq(got, want, 0.02), (got / want - 1)
    # the exact count of this convention: 72 B s l h^2 (1 + s/6h + V/12lh) plus the bias FLOPs of the MLP
    l, h, V = model.layers, model.hidden, model.vocab
    exact = 72.0 * B * s * l * h * h * (1 + s / (6 * h) + V / (12 * l * h))
    assert rel_eq(got, exact, 1e-3)
    # and 3/4 of eq. 3 up to that vocabulary term
    assert rel_eq(got, 0.75 * flops.narayanan_flops_per_step(model, B, s), 0.02)


def test_training_flops_6nd_and_8nd():
    # seed article 000 / Kaplan et al. 2020: GPT-3 175B on 300B tokens: 6ND = 3.15e23 FLOPs.
    model, _ = get_model("gpt3-175b")
    six = flops.training_flops(model, 300e9)
    assert rel_eq(six, 3.15e23, 0.01), six
    assert six == 6.0 * model.params_active() * 300e9
    eight = flops.training_flops(model, 300e9, full_recompute=True)
    assert rel_eq(eight, 8.0 / 6.0 * six, 1e-12)
    # MoE: active parameters, not all of them (Mixtral: ~12.9B active of 46.7B)
    mix = PRESETS["mixtral-8x7b"]
    assert flops.training_flops(mix, 1e12) == 6.0 * mix.params_active() * 1e12
    assert flops.training_flops(mix, 1e12) < 6.0 * mix.params_total() * 1e12 / 3


def test_model_flops_close_to_6nd_per_token():
    # 6 N per token plus attention 6 * 2 * l * s * h per token (12 l h s^2 per sequence, llm-foundry)
    model, _ = get_model("gpt3-175b")
    B, s = 1536, 2048
    got = flops.model_flops_per_step(model, B, s)
    foundry = flops.llm_foundry_flops_per_step(model, B, s)
    assert rel_eq(got, foundry, 0.01), got / foundry - 1


CLUSTER = parse_cluster("64xA100")


def small_model() -> ModelSpec:
    return ModelSpec(name="m", layers=16, hidden=2048, heads=16, vocab=50000, seq_len=2048,
                     position_embedding="learned", bias=True, tied_embeddings=True)


@pytest.mark.parametrize("tp, pp, dp", [(8, 1, 8), (4, 4, 4), (2, 2, 16)])
def test_hfu_over_mfu_with_full_recompute_is_four_thirds(tp, pp, dp):
    # Korthikanti et al. 2022, section 6 / PaLM appendix B: full recompute adds one forward (1 of 3 passes)
    # to the hardware FLOPs, so HFU / MFU = 4/3.
    model = small_model()
    st = Strategy(tp=tp, pp=pp, dp=dp, micro_batch=1, global_batch=dp * 8, recompute="full",
                  flash_attention=False)
    ev = evaluate(model, st, CLUSTER)
    assert rel_eq(ev.hfu / ev.mfu, 4 / 3, 0.03), ev.hfu / ev.mfu
    assert rel_eq(ev.hardware_flops / ev.model_flops, 4 / 3, 0.03)
    # MFU is model FLOPs per second over the cluster's peak
    peak = CLUSTER.gpu.peak_tflops("bf16") * 1e12 * st.num_gpus
    assert rel_eq(ev.mfu, ev.model_flops / ev.step_time_s / peak, 1e-12)
    assert 0 < ev.mfu < ev.hfu < 1


@pytest.mark.parametrize("tp, pp, dp", [(8, 1, 8), (4, 4, 4), (1, 1, 64)])
def test_hfu_equals_mfu_without_recompute(tp, pp, dp):
    model = small_model()
    st = Strategy(tp=tp, pp=pp, dp=dp, micro_batch=1, global_batch=dp * 8, recompute="none")
    ev = evaluate(model, st, CLUSTER)
    assert ev.hfu == ev.mfu
    assert ev.hardware_flops == ev.model_flops == flops.model_flops_per_step(model, st.global_batch, model.seq_len)
    assert rel_eq(ev.tflops_per_gpu * 1e12, ev.model_flops / ev.step_time_s / st.num_gpus, 1e-12)


def test_selective_recompute_adds_the_attention_core_forward():
    # Korthikanti et al. 2022, section 5: selective recompute repeats only QK^T, softmax and AV:
    # 4 B s^2 h FLOPs per layer forward.
    model = small_model()
    st = Strategy(tp=4, pp=2, dp=8, micro_batch=1, global_batch=64, recompute="selective", flash_attention=False)
    ev = evaluate(model, st, CLUSTER)
    extra = 4.0 * 64 * model.seq_len ** 2 * model.hidden * model.layers
    assert rel_eq(ev.hardware_flops - ev.model_flops, extra, 1e-9)
    assert ev.hfu > ev.mfu


def test_causal_mfu_does_not_grow_with_context():
    """Attention's FLOPs counted in full (PaLM's convention) make Llama 3 70B at 128k context look more
    efficient than at 8k although causal kernels skip the masked half; counted causally the long context is
    the less efficient one, as its attention runs below GEMM efficiency."""
    from costmodels.flops import causal_model_flops_per_step, model_flops_per_step
    from costmodels.presets import get_model
    from costmodels.strategy import Strategy
    from hardware import parse_cluster
    from planner.solve.evaluate import evaluate

    m, _ = get_model("llama3-70b")
    # the causal count removes exactly half of the scores-and-values FLOPs: 3 x L x 2 x tokens x s x q
    full, causal = model_flops_per_step(m, 8, 8192), causal_model_flops_per_step(m, 8, 8192)
    assert full - causal == 3 * m.layers * 2 * 8 * 8192 * 8192 * m.q_dim
    c = parse_cluster("512xH100")
    out = {}
    # 4M tokens per step each; context parallel only where the context needs it
    for s, cp in ((8192, 1), (131072, 8)):
        ms = m.model_copy(update={"seq_len": s})
        ev = evaluate(ms, Strategy(tp=8, pp=4, dp=16 // cp, cp=cp, micro_batch=1, global_batch=4194304 // s,
                                   recompute="full"), c)
        out[s] = (ev.mfu, ev.mfu_causal)
    # the full count's artefact: it inflates the long context's MFU far more than the short one's
    assert out[131072][0] / out[131072][1] > 1.3 * out[8192][0] / out[8192][1]
    assert out[131072][1] < out[8192][1]          # causal: long context is not more efficient
