"""Per-GPU memory: model states (ZeRO), activations (Korthikanti et al. 2022) and the memory anatomy.

Figures come from docs/reference/formulas.md ("Memory per GPU") and the papers it cites.
"""

from __future__ import annotations

import dataclasses

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from costmodels import ModelSpec, Strategy
from costmodels.performance import stage_costs as stage_parts
from costmodels.memory import layer_activation_bytes, model_state_bytes, state_bytes_per_param
from costmodels.presets import get_model
from hardware import parse_cluster
from planner.solve.evaluate import evaluate
from planner.solve.stages import BYTE_PARTS, coefficients
from planner.validation.paper_memory import MODES, TABLE3, figure1_bars


def stage_costs(*args):
    """The planner's integer coefficients of a structure (planner.solve.stages)."""
    return coefficients(stage_parts(*args))

GB = 1e9


def rel_eq(got: float, want: float, rel: float = 1e-9) -> bool:
    return math.isclose(got, want, rel_tol=rel, abs_tol=0.0)


# ---- model states -------------------------------------------------------------------------------


def test_mixed_precision_adam_is_16_bytes_per_param():
    # ZeRO paper (Rajbhandari et al. 2020) section 3: 2 (16-bit weights) + 2 (grads) + 12 (fp32 master,
    # momentum, variance), the accounting with 16-bit gradients.
    for precision in ("bf16", "fp16"):
        sb = state_bytes_per_param(precision, "adam", fp32_grads=False)
        assert (sb.weights, sb.gradients, sb.optimizer, sb.reduce) == (2.0, 2.0, 12.0, 2.0)


def test_megatron_holds_fp32_gradients_by_default():
    # Megatron-LM docs/distrib_optimizer.md: bf16 param + fp32 grads 18 B/param, fp16 param + fp16 grads 20
    # (an fp32 grad copy beside the master weights), fp32 16; bf16 reduces in fp32 (arguments.py)
    assert dataclasses.astuple(state_bytes_per_param("bf16", "adam")) == (2.0, 4.0, 12.0, 4.0)
    assert dataclasses.astuple(state_bytes_per_param("fp16", "adam")) == (2.0, 2.0, 16.0, 2.0)
    assert dataclasses.astuple(state_bytes_per_param("fp32", "adam")) == (4.0, 4.0, 8.0, 4.0)


def test_gpt3_175b_model_states_about_2800_gb():
    # seed article 002 / docs/reference/formulas.md: 175B x 16 bytes ~ 2800 GB = 350 weights + 350 grads + 2100 optimizer.
    model, _ = get_model("175b")
    assert model.name == "gpt3-175b"
    n = model.params_total()
    w, g, o = model_state_bytes(n, state_bytes_per_param("bf16", "adam", fp32_grads=False), zero_stage=0, shard=1)
    assert rel_eq(w + g + o, 2800 * GB, 0.01), (w + g + o) / GB
    assert rel_eq(w, 350 * GB, 0.01), w / GB
    assert rel_eq(g, 350 * GB, 0.01), g / GB
    assert rel_eq(o, 2100 * GB, 0.01), o / GB
    # exactly 16 bytes per parameter, the split 2 : 2 : 12
    assert w + g + o == 16 * n and o == 6 * w and g == w


@pytest.mark.parametrize("zero, want_gb", [(0, 120.0), (1, 31.4), (2, 16.6), (3, 1.9)])
def test_zero_paper_7_5b_on_64_gpus(zero, want_gb):
    # Rajbhandari et al. 2020 (ZeRO), Figure 1 / section 5: 7.5B parameters, Nd = 64, K = 12:
    # baseline 120 GB, P_os 31.4 GB, P_os+g 16.6 GB, P_os+g+p 1.9 GB per GPU.
    sb = state_bytes_per_param("fp16", "adam", fp32_grads=False)
    w, g, o = model_state_bytes(7.5e9, sb, zero, 64)
    assert abs((w + g + o) / GB - want_gb) < 0.1, (zero, (w + g + o) / GB)


def test_zero_shards_exactly_the_right_parts():
    sb = state_bytes_per_param("bf16", "adam", fp32_grads=False)
    n, d = 1e9, 8
    assert model_state_bytes(n, sb, 0, d) == (2 * n, 2 * n, 12 * n)
    assert model_state_bytes(n, sb, 1, d) == (2 * n, 2 * n, 12 * n / d)
    assert model_state_bytes(n, sb, 2, d) == (2 * n, 2 * n / d, 12 * n / d)
    assert model_state_bytes(n, sb, 3, d) == (2 * n / d, 2 * n / d, 12 * n / d)


# ---- activations: Korthikanti et al. 2022, eqs. 1-6 -------------------------------------------------


def gpt_shape(h: int, a: int, s: int, layers: int = 4) -> ModelSpec:
    """A GPT block as in the paper: MHA, f = 4h GELU."""
    return ModelSpec(name="gpt-test", layers=layers, hidden=h, heads=a, vocab=51200, seq_len=s,
                     ffn_type="gelu", position_embedding="learned", bias=True, tied_embeddings=True)


def acts(model: ModelSpec, **kw):
    return layer_activation_bytes(model, Strategy(**kw))


SHAPES = [
    # (model, b, t): the 175B shape of the paper's Table 3 (s = 2048, b = 1, t = 8) and a small shape
    pytest.param(get_model("gpt3-175b")[0], 1, 8, id="175b-b1-t8"),
    pytest.param(gpt_shape(512, 8, 256), 2, 4, id="small-b2-t4"),
    pytest.param(gpt_shape(1024, 16, 1024), 3, 2, id="small-b3-t2"),
]


@pytest.mark.parametrize("model, b, t", SHAPES)
def test_korthikanti_activation_equations(model, b, t):
    s, h, a = model.seq_len, model.hidden, model.heads
    assert model.ffn_hidden == 4 * h and model.kv_heads == a
    sbh = s * b * h
    score = 5 * a * s / h
    common = dict(micro_batch=b, global_batch=b, flash_attention=False)

    # eq. 1: no parallelism, sbh(34 + 5as/h)
    none1 = acts(model, tp=1, recompute="none", **common)
    assert rel_eq(none1.stored, sbh * (34 + score))
    assert rel_eq(none1.full, sbh * (34 + score))
    # eq. 2: tensor parallel t without sequence parallel, sbh(10 + 24/t + 5as/(ht))
    tp_only = acts(model, tp=t, recompute="none", sequence_parallel=False, **common)
    assert rel_eq(tp_only.stored, sbh * (10 + 24 / t + score / t))
    # eq. 4: tensor + sequence parallel, sbh(34/t + 5as/(ht))
    tp_sp = acts(model, tp=t, recompute="none", sequence_parallel=True, **common)
    assert rel_eq(tp_sp.stored, sbh * (34 / t + score / t))
    # eq. 6: selective recompute + sequence parallel, 34 sbh / t
    sel_sp = acts(model, tp=t, recompute="selective", sequence_parallel=True, **common)
    assert rel_eq(sel_sp.stored, 34 * sbh / t)
    # selective without sequence parallel: the score terms go, the rest of eq. 2 stays
    sel = acts(model, tp=t, recompute="selective", sequence_parallel=False, **common)
    assert rel_eq(sel.stored, sbh * (10 + 24 / t))
    # section 4.1 / 5: full recompute keeps only the layer input, 2sbh (split over t with sequence parallel)
    full = acts(model, tp=t, recompute="full", sequence_parallel=False, **common)
    assert rel_eq(full.checkpoint, 2 * sbh)
    full_sp = acts(model, tp=t, recompute="full", sequence_parallel=True, **common)
    assert rel_eq(full_sp.checkpoint, 2 * sbh / t)
    # the working set of a recomputed layer is the whole eq. 2 / eq. 4 footprint
    assert rel_eq(full.full, tp_only.stored)
    assert rel_eq(full_sp.full, tp_sp.stored)


def test_korthikanti_175b_numbers():
    # The eq. 1 value for the 175B shape at s = 2048, b = 1: sbh = 2048 * 12288 = 25.17M;
    # 34 + 5 * 96 * 2048 / 12288 = 34 + 80 = 114 -> 2.869 GB per layer; with t = 8 and SP: 14.25 sbh.
    model, _ = get_model("gpt3-175b")
    sbh = 2048 * 12288
    a1 = acts(model, tp=1, recompute="none", flash_attention=False)
    assert a1.stored == 114 * sbh
    a8 = acts(model, tp=8, recompute="none", sequence_parallel=True, flash_attention=False)
    assert rel_eq(a8.stored, 114 * sbh / 8)
    s8 = acts(model, tp=8, recompute="selective", sequence_parallel=True, flash_attention=False)
    assert rel_eq(s8.stored, 34 * sbh / 8)


def test_korthikanti_selective_saves_70_and_65_percent():
    # Korthikanti et al. 2022, section 5: 5as/h = 80 (GPT-3) and 64 (MT-NLG) against 34 for the rest of the
    # layer, so selective recompute saves 70% and 65% of the activation memory
    for name, want in (("gpt3-175b", 0.70), ("megatron-530b", 0.65)):
        model, _ = get_model(name)
        full = acts(model, tp=8, recompute="none", sequence_parallel=True, flash_attention=False)
        sel = acts(model, tp=8, recompute="selective", sequence_parallel=True, flash_attention=False)
        assert abs((1 - sel.stored / full.stored) - want) < 0.005, name


def _korthikanti_memory(name: str, precision: str) -> dict:
    """mode -> (peak, activations, capacity) in bytes of the most loaded GPU (planner/validation/paper_memory.py)."""
    return {b.mode: (b.peak_gb * GB, b.activations_gb * GB, b.capacity_gb * GB)
            for b in figure1_bars(precision) if b.model == name}


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("name", [c[0] for c in TABLE3])
def test_korthikanti_figure1_only_sp_plus_selective_fits(name, precision):
    # Figure 1 and section 1: "for all these cases, the required memory for the baseline cases is above the
    # 80GB"; section 6.1: "Without the memory savings provided by sequence parallelism and selective
    # recompute together, none of these models will fit into memory"; Figure 1: the present work fits.
    # (The figure's bar heights are not published as numbers; these are the claims its text makes.)
    # Configurations: Table 3 (tp = 8, no dp) with section 6's interleaving (planner.validation.paper_memory.TABLE3).
    mem = _korthikanti_memory(name, precision)
    cap = mem["baseline"][2]
    assert cap == 80e9
    for mode in ("baseline", "sp", "selective"):
        assert mem[mode][0] > cap, (mode, mem[mode][0] / GB)
    assert mem["present"][0] <= cap, mem["present"][0] / GB


@pytest.mark.parametrize("name", [c[0] for c in TABLE3])
def test_korthikanti_figure7_activation_shares(name):
    # Figure 7 / section 6.1, activation memory as a share of the tensor-parallel baseline (eq. 2):
    # "Individually, both techniques cut the memory requirement nearly in half, and combined provide a 5x
    # reduction bringing the memory requirements to under 20%. This is only ~2x of the full activation
    # recomputation which is at 10% of the baseline." (Table 2 itself gives 20.2% for 530B and 1T, and full
    # recompute here also holds one layer's working set while it is recomputed: up to 14%.)
    mem = _korthikanti_memory(name, "fp16")
    share = {k: mem[k][1] / mem["baseline"][1] for k in MODES}
    assert 0.45 <= share["sp"] <= 0.70 and 0.45 <= share["selective"] <= 0.70, share
    assert 0.14 <= share["present"] <= 0.205, share
    assert 0.08 <= share["full"] <= 0.15 and share["present"] / share["full"] <= 2.1, share


@pytest.mark.parametrize("model, b, t", SHAPES)
def test_flash_attention_removes_the_score_term(model, b, t):
    s, a = model.seq_len, model.heads
    for sp in (False, True):
        kw = dict(tp=t, micro_batch=b, global_batch=b, recompute="none", sequence_parallel=sp)
        plain = acts(model, flash_attention=False, **kw)
        flash = acts(model, flash_attention=True, **kw)
        assert rel_eq(plain.stored - flash.stored, 5 * a * s * s * b / t)
        # with flash nothing is left for selective recompute to drop
        sel = acts(model, flash_attention=True, **{**kw, "recompute": "selective"})
        assert rel_eq(sel.stored, flash.stored)


def test_gqa_stores_smaller_k_and_v():
    gqa, _ = get_model("llama2-70b")
    assert gqa.kv_heads == 8
    mha = ModelSpec(**{**gqa.model_dump(), "kv_heads": 64})
    s, h, d = gqa.seq_len, gqa.hidden, gqa.head_dim
    for t in (1, 8):
        kw = dict(tp=t, micro_batch=1, global_batch=1, recompute="selective")
        a_gqa = layer_activation_bytes(gqa, Strategy(**kw))
        a_mha = layer_activation_bytes(mha, Strategy(**kw))
        assert a_gqa.stored < a_mha.stored
        # exactly the K and V tensors: 2 tensors x 2 bytes x s x (64 - 8) heads x d, split over t
        assert rel_eq(a_mha.stored - a_gqa.stored, 4 * s * (64 - 8) * d / t)
    # and fewer parameters, so fewer model-state bytes too
    assert gqa.params_total() < mha.params_total()
    assert mha.params_attention() - gqa.params_attention() == 2 * h * (64 - 8) * d


# ---- invariants (hypothesis) ------------------------------------------------------------------------

CLUSTER = parse_cluster("64xA100")


@hs.composite
def dense_models(draw) -> ModelSpec:
    heads = draw(hs.sampled_from([1, 2, 4, 8, 16]))
    head_dim = draw(hs.sampled_from([16, 32, 64, 128]))
    kv = draw(hs.sampled_from([k for k in (1, 2, 4, 8, 16) if heads % k == 0]))
    return ModelSpec(
        name="rand", layers=draw(hs.integers(1, 12)), hidden=heads * head_dim, heads=heads, kv_heads=kv,
        ffn_type=draw(hs.sampled_from(["gelu", "swiglu"])), vocab=draw(hs.integers(100, 60000)),
        seq_len=draw(hs.sampled_from([64, 128, 512, 1000, 2048, 4096])),
        position_embedding=draw(hs.sampled_from(["learned", "rope"])), bias=draw(hs.booleans()),
        tied_embeddings=draw(hs.booleans()), norm=draw(hs.sampled_from(["layernorm", "rmsnorm"])))


@hs.composite
def model_and_strategy(draw, pipeline: bool = True):
    model = draw(dense_models())
    tp = draw(hs.sampled_from([t for t in (1, 2, 4, 8) if model.kv_heads % t == 0]))
    pp = draw(hs.integers(1, min(4, model.layers))) if pipeline else 1
    dp = draw(hs.sampled_from([1, 2, 4, 8]))
    mb = draw(hs.sampled_from([1, 2, 4]))
    gb = dp * mb * draw(hs.integers(1, 12))
    vs = [v for v in (1, 2, 3) if pp > 1 and model.layers % (pp * v) == 0] or [1]
    v = draw(hs.sampled_from(vs)) if pp > 1 else 1
    recompute = draw(hs.sampled_from(["none", "selective", "full"]))
    stage_layers = recompute_layers = None
    if v == 1 and pp > 1 and draw(hs.booleans()):
        cuts = sorted(draw(hs.sets(hs.integers(1, model.layers - 1), min_size=pp - 1, max_size=pp - 1)))
        bounds = [0, *cuts, model.layers]
        stage_layers = tuple(bounds[i + 1] - bounds[i] for i in range(pp))
    if recompute == "full" and draw(hs.booleans()):
        Ls = stage_layers or (model.layers // pp,) * pp
        recompute_layers = tuple(draw(hs.integers(0, L)) for L in Ls)
    st = Strategy(tp=tp, pp=pp, dp=dp, micro_batch=mb, global_batch=gb,
                  zero_stage=draw(hs.sampled_from([0, 1, 2, 3])), recompute=recompute,
                  sequence_parallel=draw(hs.booleans()), precision=draw(hs.sampled_from(["bf16", "fp16", "fp32"])),
                  flash_attention=draw(hs.booleans()), virtual_stages=v, stage_layers=stage_layers,
                  recompute_layers=recompute_layers)
    return model, st


def stored_per_layer(model: ModelSpec, st: Strategy) -> float:
    """Activation bytes a layer keeps between its forward and backward for the strategy's recompute."""
    a = layer_activation_bytes(model, st)
    return a.checkpoint if st.recompute == "full" else a.stored


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model_and_strategy(pipeline=False))
def test_more_recompute_never_stores_more_per_layer(ms):
    model, st = ms
    none, sel, full = (stored_per_layer(model, st.with_(recompute=r, recompute_layers=None))
                       for r in ("none", "selective", "full"))
    assert none >= sel >= full > 0
    # the same ordering in the planner's integer coefficients (in-flight micro-batches x one layer)
    scs = {r: stage_costs(model, st.with_(recompute=r, recompute_layers=None), CLUSTER) for r in ("none", "selective")}
    for i in range(st.pp):
        assert scs["none"].act_stored_b[i] >= scs["selective"].act_stored_b[i] >= scs["none"].act_ckpt_b[i]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model_and_strategy(pipeline=True))
def test_higher_zero_stage_never_holds_more_model_states(ms):
    model, st = ms
    shard = st.dp * st.cp
    sb = state_bytes_per_param(st.precision, st.optimizer)
    n = model.params_total() / st.tp
    states = [sum(model_state_bytes(n, sb, z, shard)) for z in range(4)]
    assert all(a >= b for a, b in zip(states, states[1:])), states
    if shard > 1:
        assert states[0] > states[1] > states[2] > states[3]
    # through the full evaluation (one stage, so the most loaded stage is always the same one)
    one = st.with_(pp=1, virtual_stages=1, stage_layers=None, recompute_layers=None)
    per_gpu = [sum(evaluate(model, one.with_(zero_stage=z), CLUSTER).memory_b[k]
                   for k in ("weights", "gradients", "optimizer")) for z in range(4)]
    assert all(a >= b * (1 - 1e-12) for a, b in zip(per_gpu, per_gpu[1:])), per_gpu
    # the model states of any one stage never grow with the ZeRO stage (compare stage by stage)
    scs = [stage_costs(model, st.with_(zero_stage=z), CLUSTER) for z in range(4)]
    for a, b in zip(scs, scs[1:]):
        assert a.layer_static_b >= b.layer_static_b
        assert a.first_static_b >= b.first_static_b
        assert a.last_static_b >= b.last_static_b


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model_and_strategy(pipeline=True))
def test_memory_anatomy_sums_to_peak(ms):
    model, st = ms
    ev = evaluate(model, st, CLUSTER)
    mem = ev.memory_b
    parts = sum(mem[k] for k in BYTE_PARTS)
    # each part is a term of the stage's bytes (planner.solve.stages.StageCoeffs.bytes_parts): exact
    assert parts == mem["peak"], (parts, mem)
    assert max(ev.stage_memory_b) == mem["peak"]
    assert len(ev.stage_memory_b) == st.pp
    assert all(mem[k] >= 0 for k in BYTE_PARTS)
    assert ev.fits == (mem["peak"] <= CLUSTER.gpu.memory_bytes)
    # the model-state split follows the ZeRO stage: 2 : 2 : 12 bytes per parameter before sharding
    sb = state_bytes_per_param(st.precision, st.optimizer)
    d = st.dp * st.cp
    w_per = sb.weights / (d if st.zero_stage >= 3 else 1)
    g_per = sb.gradients / (d if st.zero_stage >= 2 else 1)
    assert rel_eq(mem["weights"] * g_per, mem["gradients"] * w_per, 1e-9)


def test_no_dropout_drops_the_masks():
    # Llama-style training (dropout 0): no 1-byte masks after attention and MLP (2sbh of eq. 1's 34sbh) and
    # none next to the attention scores (as^2b of 5as^2b): sbh(32 + 4as/h); the Table 2 GPT keeps them
    model = gpt_shape(1024, 16, 1024)
    nodrop = model.model_copy(update={"dropout": False})
    s, h, a, b = model.seq_len, model.hidden, model.heads, 2
    sbh = s * b * h
    with_masks = acts(model, tp=1, micro_batch=b, global_batch=b, recompute="none", flash_attention=False)
    without = acts(nodrop, tp=1, micro_batch=b, global_batch=b, recompute="none", flash_attention=False)
    assert rel_eq(with_masks.stored, sbh * (34 + 5 * a * s / h))
    assert rel_eq(without.stored, sbh * (32 + 4 * a * s / h))
    t8 = acts(nodrop, tp=8, micro_batch=b, global_batch=b, recompute="none", sequence_parallel=True,
              flash_attention=True)
    assert rel_eq(t8.stored, sbh * 32 / 8)          # flash, SP: (34 - 2 masks) sbh / t
