"""Step time: breakdown, pipeline bubble, communication, and the published Megatron-LM step times."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from costmodels import ModelSpec, Strategy
from costmodels.performance import stage_costs as stage_parts
from costmodels.calibration import calibration_for
from costmodels.comm import Link, collective_time, group_link
from costmodels.presets import PRESETS
from hardware import load_catalog, parse_cluster
from planner.solve.evaluate import evaluate
from planner.solve.stages import BYTE_PARTS, coefficients


def stage_costs(*args):
    """The planner's integer coefficients of a structure (planner.solve.stages)."""
    return coefficients(stage_parts(*args))

RUNS = Path(__file__).resolve().parents[1] / "planner/validation/data/runs-public.json"   # bundled copy


def rel_eq(got: float, want: float, rel: float) -> bool:
    return math.isclose(got, want, rel_tol=rel, abs_tol=0.0)


MODEL = PRESETS["gpt3-1.3b"]       # 24 layers, 16 heads
C64 = parse_cluster("64xA100")

# A spread of strategies: pp = 1 and pp > 1, interleaved, ZeRO 0-3, recompute none/selective/full, tp 1..8.
SPREAD = [
    Strategy(tp=1, pp=1, dp=64, micro_batch=1, global_batch=512, zero_stage=0, recompute="none"),
    Strategy(tp=1, pp=1, dp=64, micro_batch=2, global_batch=512, zero_stage=1, recompute="selective"),
    Strategy(tp=2, pp=1, dp=32, micro_batch=4, global_batch=512, zero_stage=2, recompute="full"),
    Strategy(tp=4, pp=1, dp=16, micro_batch=2, global_batch=512, zero_stage=3, recompute="none"),
    Strategy(tp=8, pp=1, dp=8, micro_batch=1, global_batch=512, zero_stage=3, recompute="full"),
    Strategy(tp=8, pp=4, dp=2, micro_batch=1, global_batch=512, zero_stage=1, recompute="selective"),
    Strategy(tp=2, pp=4, dp=8, micro_batch=2, global_batch=512, zero_stage=0, recompute="full",
             recompute_layers=(3, 1, 0, 6)),
    Strategy(tp=4, pp=2, dp=8, micro_batch=1, global_batch=512, zero_stage=0, recompute="none",
             virtual_stages=3),
    Strategy(tp=1, pp=8, dp=8, micro_batch=1, global_batch=512, zero_stage=1, recompute="selective",
             virtual_stages=3, flash_attention=False),
    Strategy(tp=2, pp=8, dp=4, micro_batch=4, global_batch=512, zero_stage=0, recompute="full",
             stage_layers=(2, 3, 3, 4, 4, 3, 3, 2)),
    Strategy(tp=8, pp=2, dp=4, micro_batch=1, global_batch=64, zero_stage=2, recompute="none",
             sequence_parallel=False, flash_attention=False),
    Strategy(tp=2, pp=1, dp=32, micro_batch=1, global_batch=64, zero_stage=1, recompute="selective",
             offload_optimizer=True),
    Strategy(tp=1, pp=1, dp=64, micro_batch=1, global_batch=64, zero_stage=3, recompute="full",
             offload_optimizer=True, offload_params=True),
    Strategy(tp=8, pp=8, dp=1, micro_batch=1, global_batch=64, zero_stage=0, recompute="full",
             recompute_layers=(1, 0, 2, 0, 0, 3, 0, 0), virtual_stages=3),
    Strategy(tp=8, pp=1, dp=8, micro_batch=1, global_batch=64, zero_stage=3, recompute="selective"),
]


@pytest.mark.parametrize("st", SPREAD, ids=lambda s: f"tp{s.tp}-pp{s.pp}v{s.virtual_stages}-z{s.zero_stage}-{s.recompute}")
def test_breakdown_sums_to_step_time(st):
    ev = evaluate(MODEL, st, C64)
    # each part is its own term (planner.solve.evaluate.time_breakdown): they add up to float precision
    assert rel_eq(sum(ev.time_s.values()), ev.step_time_s, 1e-12)
    assert set(ev.time_s) == {"compute", "recompute", "tp_comm", "cp_comm", "ep_comm", "pp_comm",
                              "embedding_and_head", "dp_comm", "optimizer", "bubble"}
    # every part is a real share of the step
    assert all(v >= -1e-12 * ev.step_time_s for v in ev.time_s.values()), ev.time_s
    assert ev.time_s["compute"] > 0
    if st.pp == 1:
        assert abs(ev.time_s["bubble"]) <= 1e-9 * ev.step_time_s
        assert ev.time_s["pp_comm"] == 0
    else:
        assert ev.time_s["bubble"] > 0
        assert ev.time_s["pp_comm"] > 0
    if st.tp == 1:
        assert ev.time_s["tp_comm"] == 0
    if st.recompute == "none":
        assert ev.time_s["recompute"] == 0
    else:
        assert ev.time_s["recompute"] > 0
    # step time = the pipeline formula on the integer stage times
    sc = stage_costs(MODEL, st, C64)
    Ls, Rs = ev.stage_layers, ev.recompute_layers
    assert rel_eq(ev.step_time_s, sc.step_scaled(Ls, Rs) / sc.v * 1e-9, 1e-12)
    assert rel_eq(ev.tokens_per_s, st.global_batch * MODEL.seq_len / ev.step_time_s, 1e-12)


@pytest.mark.parametrize("st", SPREAD, ids=lambda s: f"tp{s.tp}-pp{s.pp}v{s.virtual_stages}-z{s.zero_stage}-{s.recompute}")
def test_breakdown_parts_are_their_own_terms(st):
    # no part is a remainder: m x the slowest stage's layer parts, the bubble sum_{i != k} T_i / v
    # (Narayanan et al. 2021, 2.2 / 2.2.2), and the tail stage's exposed sync and optimizer step
    ev = evaluate(MODEL, st, C64)
    sc = stage_costs(MODEL, st, C64)
    k, m, NS = ev.bottleneck_stage, st.micro_batches, 1e-9
    L, R = ev.stage_layers[k], ev.recompute_layers[k]
    assert rel_eq(ev.time_s["compute"], m * L * sc.compute_ns * NS, 1e-12)
    assert ev.time_s["tp_comm"] == pytest.approx(m * L * sc.tp_ns * NS, rel=1e-12)
    assert ev.time_s["recompute"] == pytest.approx(m * (R * sc.recompute_ns + L * sc.selective_ns) * NS, rel=1e-12)
    assert ev.time_s["pp_comm"] == pytest.approx(m * sc.p2p_ns * NS, rel=1e-12)
    times = [t / NS for t in ev.stage_time_s]
    assert ev.time_s["bubble"] == pytest.approx((sum(times) - times[k]) / st.virtual_stages * NS, rel=1e-9, abs=1e-15)
    # the parts of one layer add up to the layer's (rounded) time exactly, and a zero cost stays zero
    assert sc.compute_ns + sc.tp_ns + sc.cp_ns + sc.ep_ns + sc.selective_ns == sc.layer_ns
    assert sc.cp_ns == sc.ep_ns == 0
    assert (sc.selective_ns > 0) == (st.recompute == "selective")
    if st.zero_stage < 3:
        assert ev.time_s["optimizer"] > 0
    # the memory anatomy adds up to the peak exactly (integer bytes)
    mem = ev.memory_b
    assert sum(mem[key] for key in BYTE_PARTS) == mem["peak"]
    assert mem["peak"] == max(ev.stage_memory_b) or not ev.fits


@pytest.mark.parametrize("pp, v", [(1, 1), (4, 1), (4, 2)])
def test_no_data_parallel_no_dp_comm(pp, v):
    # dp = 1 and no ZeRO-3: nothing is data-parallel, so the breakdown shows exactly 0 (not a rounding
    # remainder)
    cluster = parse_cluster(f"{8 * pp}xA100")
    st = Strategy(tp=8, pp=pp, dp=1, micro_batch=1, global_batch=16, virtual_stages=v, recompute="selective")
    ev = evaluate(MODEL, st, cluster)
    assert ev.time_s["dp_comm"] == 0.0
    assert rel_eq(sum(ev.time_s.values()), ev.step_time_s, 1e-12)


def _sc(p: int, m: int, v: int):
    base = stage_costs(MODEL, Strategy(tp=1, pp=2, dp=1, global_batch=8), C64)
    return dataclasses.replace(base, p=p, m=m, v=v)


@pytest.mark.parametrize("p, m", [(2, 1), (4, 8), (8, 8), (8, 64), (3, 17)])
def test_1f1b_pipeline_time_is_m_plus_p_minus_1(p, m):
    # Narayanan et al. 2021, section 2.2: equal stages of time T -> (m + p - 1) T; bubble (p - 1)/m of m T.
    T = 1_234_567
    sc = _sc(p, m, 1)
    total = sc.pipeline_scaled([T] * p)
    assert total == (m + p - 1) * T
    assert rel_eq((total - m * T) / (m * T), (p - 1) / m, 1e-12)


@pytest.mark.parametrize("p, m, v", [(2, 4, 2), (4, 8, 2), (4, 16, 3), (8, 8, 4), (8, 32, 6)])
def test_interleaved_bubble_share(p, m, v):
    # Narayanan et al. 2021, section 2.2.2: v model chunks per device shrink the bubble to (p - 1)/(v m).
    T = 987_654  # time of all v chunks of one stage for one micro-batch
    sc = _sc(p, m, v)
    pipe = sc.pipeline_scaled([T] * p) / v
    assert rel_eq((pipe - m * T) / (m * T), (p - 1) / (v * m), 1e-12)
    # interleaving never lengthens the pipeline for equal stages
    assert pipe <= _sc(p, m, 1).pipeline_scaled([T] * p)


def test_pipeline_uses_the_slowest_stage():
    # 1F1B steady state runs at the pace of the slowest stage: (m - 1) max T + sum T
    sc = _sc(3, 5, 1)
    assert sc.pipeline_scaled([10, 30, 20]) == 4 * 30 + 60


@pytest.mark.parametrize("pp, v", [(2, 1), (4, 1), (4, 3), (8, 1)])
def test_more_micro_batches_lower_the_bubble_share(pp, v):
    shares = []
    for gb in (16, 32, 64, 128, 256):
        st = Strategy(tp=2, pp=pp, dp=4, micro_batch=1, global_batch=gb, recompute="selective",
                      virtual_stages=v)
        if v > 1 and st.micro_batches % pp:
            continue
        ev = evaluate(MODEL, st, C64)
        shares.append(ev.time_s["bubble"] / ev.step_time_s)
    assert len(shares) >= 3
    assert all(a > b for a, b in zip(shares, shares[1:])), shares


def test_evaluated_bubble_matches_formula_for_even_stages():
    # 24 layers over 4 stages; no ZeRO, one replica: only the first/last stage extras break the symmetry,
    # so the bubble share is close to (p - 1)/m.
    st = Strategy(tp=8, pp=4, dp=1, micro_batch=1, global_batch=64, recompute="selective")
    ev = evaluate(MODEL, st, parse_cluster("32xA100"))
    pipe = ev.step_time_s - ev.time_s["optimizer"] - ev.time_s["dp_comm"]
    busy = pipe - ev.time_s["bubble"]
    assert rel_eq(ev.time_s["bubble"] / busy, 3 / 64, 0.15)


CATALOG = load_catalog()
GPUS = [g for g in CATALOG.gpus.values() if g.tflops["bf16"] is not None]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gpu=hs.sampled_from(GPUS), tp=hs.sampled_from([1, 2, 4, 8]), pp=hs.sampled_from([1, 2, 4]),
       mb=hs.sampled_from([1, 2, 4]), zero=hs.sampled_from([0, 1, 2, 3]),
       rec=hs.sampled_from(["none", "selective", "full"]), cap_gb=hs.floats(4, 100), extra_gb=hs.floats(0, 200))
def test_more_gpu_memory_never_unfits(gpu, tp, pp, mb, zero, rec, cap_gb, extra_gb):
    model = PRESETS["gpt3-2.7b"]
    small = dataclasses.replace(parse_cluster(f"64x{gpu.name}"), gpu=gpu.model_copy(update={"memory_gb": cap_gb}))
    big = dataclasses.replace(small, gpu=gpu.model_copy(update={"memory_gb": cap_gb + extra_gb}))
    dp = 64 // (tp * pp)
    st = Strategy(tp=tp, pp=pp, dp=dp, micro_batch=mb, global_batch=dp * mb * 4, zero_stage=zero, recompute=rec)
    a, b = evaluate(model, st, small), evaluate(model, st, big)
    assert b.capacity_b == (cap_gb + extra_gb) * 1e9
    if a.fits:
        assert b.fits
    # memory needs do not depend on the capacity
    assert a.stage_memory_b == b.stage_memory_b
    assert a.fits == (max(a.stage_memory_b) <= cap_gb * 1e9)


# ---- communication --------------------------------------------------------------------------------


def test_all_reduce_inside_a_dgx_a100():
    # Ring all-reduce over 8 GPUs moves 2 (n-1)/n of the buffer per GPU (Thakur et al. 2005); NVLink3 300 GB/s
    # per direction at the calibrated 77% bus efficiency (docs/reference/hardware.md: ~230 of 300 GB/s on DGX A100).
    gpu = CATALOG.gpus["A100-80GB"]
    cal = calibration_for(gpu.family)
    t = collective_time("all_reduce", 1e9, Link(size=8, per_node=8), gpu, cal)
    bw_term = 2 * (7 / 8) * 1e9 / (300e9 * 0.77)
    # plus a latency: 2 (n - 1) ring steps of microseconds each (alpha-beta model)
    assert 1e-6 < t - bw_term < 2e-4, t - bw_term
    assert rel_eq(t, 7.6e-3, 0.02)               # ~7.6 ms for 1 GB
    # reduce-scatter and all-gather are each half the all-reduce volume
    rs = collective_time("reduce_scatter", 1e9, Link(8, 8), gpu, cal)
    ag = collective_time("all_gather", 1e9, Link(8, 8), gpu, cal)
    assert rel_eq(rs + ag, t, 1e-9)
    # a group of one costs nothing; bigger buffers cost more
    assert collective_time("all_reduce", 1e9, Link(1, 1), gpu, cal) == 0
    assert collective_time("all_reduce", 2e9, Link(8, 8), gpu, cal) > t


@pytest.mark.parametrize("gpu_name", ["A100-80GB", "H100-SXM", "V100-32GB"])
@pytest.mark.parametrize("kind", ["all_reduce", "reduce_scatter", "all_gather", "all_to_all"])
def test_group_across_nodes_is_slower_than_inside_one(gpu_name, kind):
    gpu = CATALOG.gpus[gpu_name]
    cal = calibration_for(gpu.family)
    inside = group_link(8, 1, 8)          # tp-like group: consecutive ranks, one node
    assert inside == Link(8, 8, span=8)
    two_nodes = group_link(8, 4, 8)       # stride 4: 2 members per node over 4 nodes
    spread = group_link(8, 8, 8)          # stride 8: one member per node
    assert spread == Link(8, 1, span=64) and two_nodes == Link(8, 2, span=32)
    for nbytes in (1e6, 1e8, 1e9):
        t_in = collective_time(kind, nbytes, inside, gpu, cal)
        t_two = collective_time(kind, nbytes, two_nodes, gpu, cal)
        t_spread = collective_time(kind, nbytes, spread, gpu, cal)
        assert 0 < t_in < t_two, (nbytes, t_in, t_two)
        assert t_in < t_spread


# ---- Korthikanti et al. 2022, Table 5 ----------------------------------------------------------------


def _korthikanti_runs():
    runs = json.loads(RUNS.read_text())["runs"]
    return [r for r in runs if r["id"].startswith("korthikanti22")]


def test_korthikanti_runs_present():
    runs = _korthikanti_runs()
    assert len(runs) == 8
    assert all("Table 5" in r["source"] for r in runs)


@pytest.mark.parametrize("run", _korthikanti_runs(), ids=lambda r: r["id"])
def test_korthikanti_table5_step_times(run):
    # Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models", Table 5:
    # measured iteration times of 22B / 175B / 530B / 1T on A100-80GB (Selene, Megatron-LM), with full
    # recompute and with selective recompute + sequence parallel. Model within 12%.
    m, s, h = run["model"], run["strategy"], run["hardware"]
    model = ModelSpec(name=m["name"], layers=m["layers"], hidden=m["hidden"], heads=m["heads"],
                      kv_heads=m["kv_heads"], ffn_hidden=m["ffn_hidden"], vocab=m["vocab"], seq_len=m["seq_len"],
                      ffn_type=m["ffn_type"] or "gelu", position_embedding="learned", bias=True,
                      tied_embeddings=True)
    st = Strategy(tp=s["tp"], pp=s["pp"], dp=s["dp"], micro_batch=s["micro_batch"], global_batch=s["global_batch"],
                  zero_stage=s["zero_stage"] or 0, recompute=s["recompute"],
                  sequence_parallel=bool(s["sequence_parallel"]), precision=s["precision"],
                  flash_attention=False, virtual_stages=s["virtual_stages"] or 1)
    cluster = parse_cluster(f"{h['num_gpus']}x{h['gpu']}")
    assert cluster.num_gpus == st.num_gpus
    ev = evaluate(model, st, cluster)
    measured = run["measured"]["step_time_s"]
    err = ev.step_time_s / measured - 1
    print(f"{run['id']}: predicted {ev.step_time_s:.2f} s, measured {measured:.2f} s, error {err:+.1%}")
    assert abs(err) < 0.12, f"{run['id']}: {ev.step_time_s:.2f} s vs {measured} s ({err:+.1%})"
    assert ev.fits  # the paper ran these on 80 GB GPUs


def test_korthikanti_selective_beats_full_recompute():
    # Table 5: selective recompute + sequence parallel is faster than full recompute for every model;
    # the model must order each pair the same way.
    by_model: dict[str, dict[str, float]] = {}
    for run in _korthikanti_runs():
        m, s, h = run["model"], run["strategy"], run["hardware"]
        model = ModelSpec(name=m["name"], layers=m["layers"], hidden=m["hidden"], heads=m["heads"], vocab=m["vocab"],
                          seq_len=m["seq_len"], position_embedding="learned", bias=True, tied_embeddings=True)
        st = Strategy(tp=s["tp"], pp=s["pp"], dp=s["dp"], micro_batch=s["micro_batch"],
                      global_batch=s["global_batch"], recompute=s["recompute"],
                      sequence_parallel=bool(s["sequence_parallel"]), precision=s["precision"],
                      flash_attention=False, virtual_stages=s["virtual_stages"] or 1)
        ev = evaluate(model, st, parse_cluster(f"{h['num_gpus']}x{h['gpu']}"))
        by_model.setdefault(m["name"], {})[s["recompute"]] = ev.step_time_s
    assert len(by_model) == 4
    for name, t in by_model.items():
        assert t["selective"] < t["full"], (name, t)


# ---- groups that do not fill whole nodes -------------------------------------------------------------


def test_group_partly_across_nodes_pays_for_the_network():
    gpu = CATALOG.gpus["A100-80GB"]
    cal = calibration_for(gpu.family)
    link = group_link(12, 1, 8)           # data-parallel group of 12 consecutive ranks: 8 on one node, 4 on the next
    assert link == Link(12, 8, span=12)
    t12 = collective_time("all_reduce", 1e9, link, gpu, cal)
    t8 = collective_time("all_reduce", 1e9, Link(8, 8), gpu, cal)
    t12_one_node = collective_time("all_reduce", 1e9, Link(12, 12), gpu, cal)
    # the network hop (25 GB/s per GPU vs 300 GB/s NVLink) must cost something
    assert t12 > t8
    assert t12 > t12_one_node


def test_data_parallel_sync_on_24_gpus_crosses_nodes():
    cluster = parse_cluster("24xA100")
    assert cluster.num_nodes == 3
    across = stage_costs(MODEL, Strategy(tp=1, pp=2, dp=12, global_batch=96, recompute="selective"), cluster)
    inside = stage_costs(MODEL, Strategy(tp=1, pp=3, dp=8, global_batch=96, recompute="selective"), cluster)
    # same per-layer gradient bytes (tp = 1 in both); dp = 12 over two nodes must be slower than dp = 8 in one
    assert across.dp_layer_ns > inside.dp_layer_ns


def test_loss_and_head_terms_of_the_end_stages():
    # last stage: final norm + output-layer inputs 4sbh/t (sequence parallel), the fp32 softmax 4sbV/t and
    # the 16-bit logits 2sbV/t; the final norm's weights with the output layer's; stage 0: only the
    # embedding-dropout mask sbh/t (the embedding output is the first layer's input); with full recompute the
    # last stage holds max(logits, working set), not their sum
    st = Strategy(tp=2, pp=4, dp=8, micro_batch=1, global_batch=64, recompute="full")
    s, h, V, t = MODEL.seq_len, MODEL.hidden, MODEL.vocab, 2
    parts = stage_parts(MODEL, st, C64)
    assert parts.head_act_b == pytest.approx(4 * s * h / t) and parts.logits_b == pytest.approx(6 * s * V / t)
    assert parts.embedding_act_b == pytest.approx(s * h / t)
    nodrop = MODEL.model_copy(update={"dropout": False})
    assert stage_parts(nodrop, st, C64).embedding_act_b == 0
    norm = 2 * h          # LayerNorm weight + bias, replicated over tp
    assert parts.last_states.weights == pytest.approx(2 * (V * h / t + norm))
    sc = coefficients(parts)
    last = st.pp - 1
    assert sc.recompute_peak_b(last) == max(0, sc.act_full_b - sc.last_act_b) and sc.recompute_peak_b(0) == sc.act_full_b
    ev = evaluate(MODEL, st, C64)
    assert ev.stage_memory_b[last] == sc.stage_bytes(last, ev.stage_layers[last], ev.recompute_layers[last])
    assert sum(v for k, v in ev.memory_b.items() if k in BYTE_PARTS or k == "host_offload") == \
        pytest.approx(ev.memory_b["peak"], abs=1)
    assert ev.memory_b["allocated"] == ev.memory_b["peak"] - ev.memory_b["runtime"]


def test_dualpipe_schedule_as_deepseek_describes_it():
    """DualPipe (DeepSeek-V3 report 3.2.1 and Table 2): micro-batches fed from both ends, so an even pipeline and
    no interleaving; two copies of the weights; up to pp + 1 micro-batches of activations on a stage; the MoE
    all-to-all overlapped with the other direction's computation without interleaving. No exporter writes it
    (Megatron-LM, DeepSpeed and torchtitan schedule otherwise), and validation reads it from a run that names it."""
    from costmodels.strategy import StrategyError
    from planner.frameworks.api import unsupported
    from planner.validation.runs import candidate_strategies, run_cluster, run_model
    model = PRESETS["deepseek-v3"]
    cluster = parse_cluster("2048xH800")
    base = Strategy(pp=16, dp=128, ep=64, micro_batch=1, global_batch=15360, zero_stage=1, recompute="selective",
                    precision="fp8", moe_dispatcher="deepep")
    with pytest.raises(StrategyError, match="interleaving"):
        base.with_(moe_a2a_overlap=True)
    dual = base.with_(pipeline_schedule="dualpipe", moe_a2a_overlap=True)
    with pytest.raises(StrategyError, match="even pipeline"):
        Strategy(pp=3, dp=8, global_batch=24, pipeline_schedule="dualpipe")
    with pytest.raises(StrategyError, match="interleaving"):
        dual.with_(virtual_stages=2)
    one, two = stage_parts(model, base, cluster), stage_parts(model, dual, cluster)
    assert two.layer_states.weights == pytest.approx(2 * one.layer_states.weights, rel=1e-12)
    assert two.inflight == (17.0,) * 16 and one.inflight[0] == 16.0
    # the all-to-all it overlaps no longer sticks out: a faster step
    assert evaluate(model, dual, cluster).time_s["ep_comm"] < evaluate(model, base, cluster).time_s["ep_comm"]
    assert "DualPipe" in unsupported("megatron", model, dual)
    run = json.loads((Path(__file__).parents[1] / "planner/validation/data/runs-modern.json").read_text())["runs"]
    row = next(r for r in run if r["id"] == "dsv3-paper-h800-2048gpu-fp8-pretrain")
    cands = candidate_strategies(run_model(row["model"], row["notes"]), {**row["strategy"], "global_batch": 15360},
                                 run_cluster(row["hardware"]), True, False, "megatron", row["notes"])
    assert {(c.pipeline_schedule, c.moe_a2a_overlap, c.virtual_stages) for c in cands} == {("dualpipe", True, 1)}


def test_moe_token_copies_are_memory_traffic_the_deepep_dispatcher_halves():
    # Megatron-core's alltoall dispatcher permutes the routed tokens, sorts the received chunks by local
    # expert, and undoes both after the combine (4 copies); the flex (DeepEP) dispatcher permutes once after
    # its kernel (2 copies). Each copy reads and writes a 16-bit token of `hidden` values.
    from costmodels.calibration import calibration_for
    from costmodels.performance import layer_times
    model = PRESETS["qwen3-235b-a22b"]
    cluster = parse_cluster("256xH100")
    st = Strategy(tp=2, pp=8, dp=16, ep=8, expert_tp=1, micro_batch=1, global_batch=2048, zero_stage=1)
    cal = calibration_for("hopper")
    a2a = layer_times(model, st, cluster, cal)
    dee = layer_times(model, st.with_(moe_dispatcher="deepep"), cluster, cal)
    routed = model.seq_len / st.tp * model.moe.top_k             # tokens each rank sends and receives
    two_copies = 2 * 2 * 2.0 * routed * model.hidden / (cluster.gpu.hbm_gbps * 1e9 * cal.hbm_efficiency)
    assert a2a.compute_fwd - dee.compute_fwd == pytest.approx(two_copies, rel=1e-9)
    assert a2a.compute_bwd - dee.compute_bwd == pytest.approx(two_copies, rel=1e-9)     # the gradients, once
