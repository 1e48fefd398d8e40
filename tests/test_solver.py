"""The CP-SAT layout model and the whole search, checked against brute force on small instances.

A brute-force enumerator tries every split of the layers into pipeline stages (when the structure allows
uneven stages) and every count of fully recomputed layers per stage (when the recompute count is free), and
keeps the fastest layout that fits. planner.solve.solver.solve_layout must find exactly that objective, and
planner.search must find exactly the best step time over every structure of planner.solve.space.
"""

from __future__ import annotations

import itertools
import math
import random
from functools import lru_cache

import pytest

from costmodels import ModelSpec, Strategy
from costmodels.performance import even_split, min_stage_layers, stage_costs as stage_parts
from hardware import Cluster, load_catalog
from planner import search
from planner.solve.solver import (balanced_layers, greedy_layout, layer_bounds, lower_bound, lower_bounds,
                                  memory_infeasible, solve_layout)
from planner.solve.evaluate import evaluate, evaluate_layout
from planner.solve.space import SpaceOptions, enumerate_space
from planner.solve.stages import Pipeline, StageCoeffs, coefficients


def stage_costs(*args) -> StageCoeffs:
    """The planner's integer coefficients of a structure (planner.solve.stages)."""
    return coefficients(stage_parts(*args))

CATALOG = load_catalog()
GPUS = [g for g in CATALOG.gpus.values() if g.tflops["bf16"] is not None]


# ---- brute force ---------------------------------------------------------------------------------


def compositions(n: int, k: int):
    """Every way to write n as an ordered sum of k positive parts."""
    for cuts in itertools.combinations(range(1, n), k - 1):
        bounds = (0, *cuts, n)
        yield tuple(bounds[i + 1] - bounds[i] for i in range(k))


def layer_splits(sc: StageCoeffs):
    """Every split with a layer per interleaved chunk (v per stage; the first and last stage one fewer:
    their first / last chunk may hold only the embedding / the loss)."""
    mins = [min_stage_layers(i, sc.p, sc.v) for i in range(sc.p)]
    for parts in compositions(sc.layers - sum(mins) + sc.p, sc.p):
        yield tuple(x - 1 + mins[i] for i, x in enumerate(parts))


def brute_force(sc: StageCoeffs, cap: int, free: bool) -> tuple[int, tuple, tuple] | None:
    """Exhaustive: every layer split x every recompute count R_i in 0..L_i (0 unless free)."""
    best = None
    for Ls in layer_splits(sc):
        ranges = [range(L + 1) if free else range(1) for L in Ls]
        for Rs in itertools.product(*ranges):
            if any(sc.stage_bytes(i, L, R) > cap for i, (L, R) in enumerate(zip(Ls, Rs))):
                continue
            obj = sc.step_scaled(list(Ls), list(Rs))
            if best is None or obj < best[0]:
                best = (obj, Ls, Rs)
    return best


def fewest_recompute(sc: StageCoeffs, i: int, L: int, cap: int, free: bool) -> int | None:
    for R in range(L + 1 if free else 1):
        if sc.stage_bytes(i, L, R) <= cap:
            return R
    return None


def brute_force_fast(sc: StageCoeffs, cap: int, free: bool) -> int | None:
    """Every layer split, each stage with the fewest recomputed layers that fit: stage time grows with
    R_i and nothing else depends on R_i, so this is the same optimum (checked against brute_force)."""
    best = None
    for Ls in layer_splits(sc):
        Rs = [fewest_recompute(sc, i, L, cap, free) for i, L in enumerate(Ls)]
        if None in Rs:
            continue
        obj = sc.step_scaled(list(Ls), Rs)
        best = obj if best is None or obj < best else best
    return best


# ---- random small instances -------------------------------------------------------------------------


def random_model(rng: random.Random, layers: int | None = None) -> ModelSpec:
    heads = rng.choice([4, 8, 16])
    kv = rng.choice([k for k in (1, 2, 4, 8, 16) if heads % k == 0])
    return ModelSpec(
        name="rand", layers=layers or rng.randint(4, 10), hidden=heads * rng.choice([16, 32, 64, 128]),
        heads=heads, kv_heads=kv, ffn_type=rng.choice(["gelu", "swiglu"]), vocab=rng.randint(1000, 50000),
        seq_len=rng.choice([256, 512, 1024, 2048, 4096]), position_embedding=rng.choice(["learned", "rope"]),
        bias=rng.random() < 0.5, tied_embeddings=rng.random() < 0.5)


def random_structure(rng: random.Random, model: ModelSpec, interleaved: bool) -> Strategy | None:
    tp = rng.choice([t for t in (1, 2, 4, 8) if model.kv_heads % t == 0])
    if interleaved:
        pairs = [(p, v) for p in (2, 3, 4) for v in (2, 3, 4, 5) if model.layers % (p * v) == 0]
        if not pairs:
            return None
        pp, v = rng.choice(pairs)
    else:
        pp, v = rng.randint(1, min(4, model.layers)), 1
    dp = rng.choice([1, 2, 4, 8])
    mb = rng.choice([1, 2, 4])
    m = rng.randint(1, 12) * (pp if v > 1 else 1)
    zero = rng.choice([0, 1, 2, 3] if dp > 1 else [0])
    return Strategy(tp=tp, pp=pp, dp=dp, micro_batch=mb, global_batch=dp * mb * m, zero_stage=zero,
                    recompute=rng.choice(["none", "selective", "full"]), sequence_parallel=rng.random() < 0.7,
                    precision="bf16", virtual_stages=v, flash_attention=rng.random() < 0.7,
                    # every accounting: torchtitan's has a second peak (the end of the backward)
                    framework=rng.choice(["megatron", "megatron", "torchtitan", "deepspeed"]))


def memory_range(sc: StageCoeffs, free: bool) -> tuple[int, int]:
    """Smallest and largest peak stage memory over every layout (the capacity that fits some / all)."""
    peaks = []
    for Ls in layer_splits(sc):
        ranges = [range(L + 1) if free else range(1) for L in Ls]
        for Rs in itertools.product(*ranges):
            peaks.append(max(sc.stage_bytes(i, L, R) for i, (L, R) in enumerate(zip(Ls, Rs))))
    return min(peaks), max(peaks)


def make_instance(seed: int):
    rng = random.Random(seed)
    while True:
        model = random_model(rng)
        st = random_structure(rng, model, interleaved=seed % 4 == 3)
        if st is not None:
            break
    gpu = rng.choice(GPUS)
    lo, hi = memory_range(stage_costs(model, st, Cluster(gpu=gpu, num_nodes=64, gpus_per_node=8)),
                          st.recompute == "full")
    # capacity from a bit below the leanest layout (infeasible) to above the fattest (anything fits)
    cap = rng.randint(int(lo * 0.97), int(hi * 1.02) + 1)
    if seed % 5 == 0:
        cap = rng.randint(lo, lo + (hi - lo) // 8)       # tight: only a few layouts fit
    gpu = gpu.model_copy(update={"memory_gb": cap / 1e9})
    cluster = Cluster(gpu=gpu, num_nodes=64, gpus_per_node=8)
    sc = stage_costs(model, st, cluster)
    return model, st, cluster, sc, cap


SEEDS = list(range(40))


@lru_cache(maxsize=None)
def instance(seed: int):
    return make_instance(seed)


def test_instances_cover_the_interesting_cases():
    kinds = set()
    for seed in SEEDS:
        model, st, cluster, sc, cap = instance(seed)
        best = brute_force_fast(sc, cap, st.recompute == "full")
        kinds.add(("interleaved" if sc.v > 1 else "flexible" if sc.p > 1 else "single"))
        kinds.add("infeasible" if best is None else "feasible")
        if st.recompute == "full" and best is not None:
            kinds.add("free")
        if best is not None and best != brute_force_fast(sc, 10 ** 15, st.recompute == "full"):
            kinds.add("memory binds")
        kinds.add(st.framework)
    assert kinds >= {"interleaved", "flexible", "single", "infeasible", "feasible", "free", "memory binds",
                     "megatron", "torchtitan", "deepspeed"}, kinds


@pytest.mark.parametrize("seed", SEEDS)
def test_solve_layout_matches_brute_force(seed):
    model, st, cluster, sc, cap = instance(seed)
    free = st.recompute == "full"
    want = brute_force(sc, cap, free)
    got = solve_layout(sc, cap, free, time_limit_s=20.0)
    if want is None:
        assert got is None, f"solver found {got} where nothing fits"
        return
    assert got is not None, f"solver found nothing; brute force {want}"
    assert got.optimal
    assert got.objective == want[0], (got, want)
    # the solver's layout is real: it fits, places every layer, and its objective is its step time
    assert sum(got.stage_layers) == model.layers and min(got.stage_layers) >= 1
    assert all(0 <= R <= L for L, R in zip(got.stage_layers, got.recompute_layers))
    if not free:
        assert not any(got.recompute_layers)
    assert all(L >= min_stage_layers(i, sc.p, sc.v) for i, L in enumerate(got.stage_layers))
    assert all(sc.stage_bytes(i, L, R) <= cap for i, (L, R) in enumerate(zip(got.stage_layers, got.recompute_layers)))
    assert got.objective == sc.step_scaled(got.stage_layers, got.recompute_layers)
    ev = evaluate_layout(model, st, cluster, sc, got.stage_layers, got.recompute_layers)
    assert ev.fits
    assert math.isclose(ev.step_time_s, got.objective / sc.v * 1e-9, rel_tol=1e-12)


@pytest.mark.parametrize("seed", SEEDS[:16])
def test_fewest_recompute_shortcut_is_exact(seed):
    model, st, cluster, sc, cap = instance(seed)
    free = st.recompute == "full"
    full = brute_force(sc, cap, free)
    assert brute_force_fast(sc, cap, free) == (None if full is None else full[0])


@pytest.mark.parametrize("seed", SEEDS)
def test_search_bounds_are_sound(seed):
    # what the search's pruning relies on (planner.solve.optimize): the lower bound never exceeds the optimum,
    # a structure called memory-infeasible has no layout that fits, and the greedy incumbent fits and is
    # never better than the optimum
    model, st, cluster, sc, cap = instance(seed)
    free = st.recompute == "full"
    best = brute_force_fast(sc, cap, free)
    if memory_infeasible(sc, cap, free):
        assert best is None
    unlimited = brute_force_fast(sc, 10 ** 15, free)
    assert lower_bound(sc) <= unlimited
    # with the capacity: the recompute memory forces and the layers a stage cannot hold count
    # (slowest_stage_floor), still never above the optimum at that capacity
    if best is not None:
        assert lower_bound(sc) <= lower_bound(sc, cap, free) <= best
    g = greedy_layout(sc, cap, free)
    if g is not None:
        assert best is not None and g.objective >= best
        assert all(sc.stage_bytes(i, L, R) <= cap for i, (L, R) in enumerate(zip(g.stage_layers, g.recompute_layers)))
        assert g.stage_layers in (even_split(model.layers, st.pp), balanced_layers(sc)[0])


def test_batched_bounds_equal_the_bound_of_each_structure():
    # planner.solve.solver.lower_bounds balances every structure's layers in one numpy pass: the same integer
    # bound as lower_bound one structure at a time, and a bound below each unlimited-memory optimum; also for
    # heterogeneous pipelines (stages of two GPU types)
    pipelines = [Pipeline.uniform(instance(seed)[3], 10 ** 15) for seed in SEEDS]
    for seed in SEEDS[:10]:
        model, st, cluster, sc, cap = instance(seed)
        if st.pp > 1:
            other = coefficients(stage_parts(model, st, Cluster(gpu=GPUS[seed % len(GPUS)], num_nodes=64, gpus_per_node=8)))
            pipelines.append(Pipeline(tuple(sc if i % 2 else other for i in range(st.pp)), (10 ** 15,) * st.pp))
    assert lower_bounds(pipelines) == [lower_bound(pl) for pl in pipelines]
    for seed in SEEDS:
        assert lower_bounds([Pipeline.uniform(instance(seed)[3], 10 ** 15)])[0] <= brute_force_fast(instance(seed)[3], 10 ** 15, instance(seed)[1].recompute == "full")


@pytest.mark.parametrize("seed", SEEDS[:20])
def test_cp_sat_and_numbers_share_the_stage_expression(seed):
    # planner.solve.stages: the CP-SAT model and the plain evaluation call the same StageCoeffs methods
    # (CpOps turns each max / exact division into a variable); with L, R fixed the model's stage times,
    # tails and bytes must equal the numbers exactly, ZeRO-3 overlap and interleaved windows included
    from ortools.sat.python import cp_model
    from planner.solve.solver import CpOps
    _, st, _, sc, _ = instance(seed)
    rng = random.Random(seed)
    Ls = next(iter(layer_splits(sc)))
    Rs = [rng.randint(0, L) if st.recompute == "full" else 0 for L in Ls]
    mdl = cp_model.CpModel()
    ub = 10 ** 15
    ops = CpOps(mdl, {"time": ub, "sync": ub})
    got = []
    for i, (L, R) in enumerate(zip(Ls, Rs)):
        Lv, Rv = mdl.NewIntVar(L, L, f"L{i}"), mdl.NewIntVar(R, R, f"R{i}")
        has = mdl.NewIntVar(int(R > 0), int(R > 0), f"h{i}")
        got.append((ops.var(sc.stage_ns(i, Lv, Rv, ops, f"T{i}"), "time", f"T{i}"),
                    ops.var(sc.stage_tail_ns(i, Lv, ops, f"E{i}"), "sync", f"tail{i}"),
                    ops.var(sc.stage_bytes(i, Lv, Rv, has), "time", f"bytes{i}")))
    solver = cp_model.CpSolver()
    assert solver.Solve(mdl) == cp_model.OPTIMAL
    for i, (L, R) in enumerate(zip(Ls, Rs)):
        T, tail, mem = (solver.Value(x) for x in got[i])
        assert (T, tail, mem) == (sc.stage_ns(i, L, R), sc.stage_tail_ns(i, L), sc.stage_bytes(i, L, R))


def test_stage_time_grows_with_recompute():
    # the premise of the shortcut: T_i(L, R) is non-decreasing in R and the tail does not depend on R
    for seed in SEEDS:
        _, st, _, sc, _ = instance(seed)
        for i in range(sc.p):
            for L in range(1, sc.layers - sc.p + 2):
                times = [sc.stage_ns(i, L, R) for R in range(L + 1)]
                assert times == sorted(times)
        assert sc.recompute_ns > 0


# ---- the whole search against brute force over the structure space -----------------------------------


def tiny_model(layers: int, hidden: int, heads: int, kv: int, seq: int, vocab: int, ffn: str) -> ModelSpec:
    return ModelSpec(name=f"tiny-{layers}x{hidden}", layers=layers, hidden=hidden, heads=heads, kv_heads=kv,
                     ffn_type=ffn, vocab=vocab, seq_len=seq)


SEARCH_CASES = [
    # (model, cluster spec, memory GB, global batch)
    pytest.param(tiny_model(8, 1024, 8, 8, 2048, 32000, "gelu"), ("A100-80GB", 1, 8), 1.6, 16, id="8L-A100-1.6GB"),
    pytest.param(tiny_model(6, 2048, 16, 4, 1024, 50000, "swiglu"), ("H100-SXM", 2, 8), 1.9, 32, id="6L-16xH100-1.9GB"),
    pytest.param(tiny_model(8, 512, 4, 4, 4096, 8000, "gelu"), ("A100-40GB", 1, 8), 1.3, 8, id="8L-A100-long-seq"),
    pytest.param(tiny_model(4, 1024, 8, 2, 2048, 20000, "swiglu"), ("H100-SXM", 1, 8), 1.6, 16, id="4L-H100"),
    pytest.param(tiny_model(12, 768, 12, 12, 1024, 50257, "gelu"), ("A100-80GB", 1, 8), 1.7, 24, id="12L-A100"),
    pytest.param(tiny_model(6, 1536, 8, 8, 512, 32000, "gelu"), ("V100-32GB", 2, 8), 1.45, 32, id="6L-16xV100-fp16"),
]


def tiny_cluster(spec: tuple[str, int, int], memory_gb: float) -> Cluster:
    name, nodes, per_node = spec
    gpu = CATALOG.gpus[name].model_copy(update={"memory_gb": memory_gb})
    return Cluster(gpu=gpu, num_nodes=nodes, gpus_per_node=per_node)


def precision_for(cluster: Cluster) -> str:
    return "bf16" if cluster.gpu.tflops["bf16"] is not None else "fp16"


def brute_force_search(model: ModelSpec, cluster: Cluster, opts: SpaceOptions) -> dict[tuple, float]:
    """Best step time (ns) per plan key (tp, pp, dp, cp, ep, zero, recompute family) over every structure."""
    cap = int(cluster.gpu.memory_bytes)
    space = enumerate_space(model, cluster.num_gpus, cluster.gpus_per_node, opts)
    best: dict[tuple, float] = {}
    for st in space.strategies:
        sc = stage_costs(model, st, cluster)
        obj = brute_force_fast(sc, cap, st.recompute == "full")
        if obj is None:
            continue
        key = (st.tp, st.pp, st.dp, st.cp, st.ep, st.zero_stage, st.recompute)
        step = obj / sc.v
        if key not in best or step < best[key]:
            best[key] = step
    return best


@pytest.mark.parametrize("model, spec, memory_gb, gb", SEARCH_CASES)
def test_layer_bounds_never_exceed_a_structures_bound(model, spec, memory_gb, gb):
    # planner.solve.solver.layer_bounds orders the structures before any is scored: each must be at most the
    # structure's own bound (its stage costs), or the lazy scoring in planner.solve.optimize could skip a winner
    cluster = tiny_cluster(spec, memory_gb)
    space = enumerate_space(model, cluster.num_gpus, cluster.gpus_per_node,
                            SpaceOptions(global_batch=gb, precision=precision_for(cluster)))
    early = layer_bounds(model, space, cluster)
    exact = lower_bounds([Pipeline.uniform(stage_costs(model, st, cluster), 10 ** 15) for st in space.strategies])
    assert len(early) == len(exact) == len(space) > 20
    assert all(e <= x for e, x in zip(early, exact))
    assert sum(e == x for e, x in zip(early, exact)) < len(exact)      # and below it where the ends add time


@pytest.mark.parametrize("model, spec, memory_gb, gb", SEARCH_CASES)
def test_search_is_optimal_over_the_whole_space(model, spec, memory_gb, gb):
    cluster = tiny_cluster(spec, memory_gb)
    prec = precision_for(cluster)
    opts = SpaceOptions(global_batch=gb, precision=prec)
    best = brute_force_search(model, cluster, opts)
    assert best, "instance has no feasible plan"
    # the instance is tight: memory binds (the best plan with unlimited memory is faster)
    roomy = brute_force_search(model, tiny_cluster(spec, 1000.0), opts)
    assert min(roomy.values()) < min(best.values())
    # the instance is tight: some structures do not fit at all
    n_structures = len(enumerate_space(model, cluster.num_gpus, cluster.gpus_per_node, opts).strategies)
    assert n_structures > 20
    res = search(model, cluster, global_batch=gb, precision=prec, top=3, time_limit_s=60.0)
    assert res.search.optimal
    want = sorted(best.values())
    got = [p.step_time_s for p in res.plans]
    assert math.isclose(got[0], want[0] * 1e-9, rel_tol=1e-12), (got[0], want[0] * 1e-9)
    # top-3 distinct plans: the three best plan keys of the brute force
    assert len(got) == min(3, len(want))
    for g, w in zip(got, want):
        assert math.isclose(g, w * 1e-9, rel_tol=1e-12), (got, [x * 1e-9 for x in want[:3]])
    assert all(p.fits for p in res.plans)
    assert all(p.memory_gb["peak"] <= memory_gb + 1e-3 for p in res.plans)


@pytest.mark.parametrize("model, spec, memory_gb, gb", SEARCH_CASES[:3])
def test_search_top3_distinct_and_sorted(model, spec, memory_gb, gb):
    cluster = tiny_cluster(spec, memory_gb)
    res = search(model, cluster, global_batch=gb, precision=precision_for(cluster), top=3)
    assert len(res.plans) == 3
    keys = {tuple(p.strategy[k] for k in ("tp", "pp", "dp", "cp", "ep", "zero_stage", "recompute")) for p in res.plans}
    assert len(keys) == 3
    times = [p.step_time_s for p in res.plans]
    assert times == sorted(times)
    assert [p.rank for p in res.plans] == [1, 2, 3]
    for p in res.plans:
        s = p.strategy
        assert s["tp"] * s["pp"] * s["dp"] * s["cp"] == cluster.num_gpus
        assert sum(s["stage_layers"]) == model.layers
        assert s["global_batch"] == gb
        # the plan's strategy, evaluated on its own, reproduces the plan (layout and recompute naming)
        fields = {k: v for k, v in s.items() if k not in ("micro_batches", "schedule")}
        fields["stage_layers"] = tuple(fields["stage_layers"])
        if fields["recompute"] == "full":
            fields["recompute_layers"] = tuple(fields["recompute_layers"])
        else:
            assert not any(fields["recompute_layers"])
            fields["recompute_layers"] = None
        ev = evaluate(model, Strategy(**fields), cluster)
        assert math.isclose(ev.step_time_s, p.step_time_s, rel_tol=1e-12)
        assert ev.fits


def test_more_memory_never_slows_the_best_plan():
    model, spec, _, gb = SEARCH_CASES[0].values
    times = []
    for mem in (1.6, 2.5, 8.0):
        cluster = tiny_cluster(spec, mem)
        times.append(search(model, cluster, global_batch=gb, top=1).plans[0].step_time_s)
    assert times[0] >= times[1] >= times[2]
    assert times[0] > times[2]   # 1.6 GB binds on this instance


def test_search_limit_counts_work_not_the_clock(monkeypatch):
    # planner.solve.solver.WorkMeter: a machine so loaded that every clock reading jumps a minute gives the
    # same plans and the same proof as a quiet one (the limit is deterministic work, never wall time)
    import planner.solve.optimize as optimize

    model = tiny_model(8, 1024, 8, 8, 2048, 32000, "gelu")
    cluster = tiny_cluster(("A100-80GB", 1, 8), 1.6)
    quiet = search(model, cluster, global_batch=16, precision="bf16", top=3, time_limit_s=5.0)
    clock = iter(range(0, 10 ** 9, 60))
    monkeypatch.setattr(optimize.time, "perf_counter", lambda: float(next(clock)))
    loaded = search(model, cluster, global_batch=16, precision="bf16", top=3, time_limit_s=5.0)
    assert [p.strategy for p in loaded.plans] == [p.strategy for p in quiet.plans]
    assert [p.step_time_s for p in loaded.plans] == [p.step_time_s for p in quiet.plans]
    assert loaded.search.optimal and quiet.search.optimal
