"""`search(...)`: the fastest plans that fit, found by bound-and-solve over the structure space.

1. Enumerate every structure the divisibility rules allow (planner.solve.space).
2. Score each with its stage coefficients (planner.solve.stages, from costmodels' parts) and a lower
   bound on its step time (planner.solve.solver).
3. Visit structures by increasing bound; for each, test memory exactly, sharpen the bound, take the
   balanced (or Megatron's even) split as an incumbent and, unless it already meets the bound, solve the
   CP-SAT layout model. Stop when the next bound cannot beat the
   K-th best plan found: every structure skipped has a bound >= that plan, so the result is optimal
   over the whole space (docs/solver.md has the argument). The bounds of step 2 are balanced for every
   structure at once (numpy, planner.solve.solver.lower_bounds).
4. `time_limit_s` limits deterministic work (planner.solve.solver.WorkMeter), not wall time: the same
   inputs give the same plans on any machine under any load.
"""
from __future__ import annotations

import heapq
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from costmodels.model import ModelSpec
from costmodels.performance import FIXED_BUFFER_BYTES, Evaluation, stage_costs
from costmodels.strategy import Strategy
from hardware import Cluster
from planner.errors import PlannerError
from planner.solve.evaluate import Headroom, evaluate_pipeline
from planner.solve.result import SearchResult, build_result
from planner.solve.solver import (Layout, WorkMeter, balanced_time_of, greedy_layout, layer_bounds, lower_bound,
                                  lower_bounds, memory_infeasible, solve_layout)
from planner.solve.space import Space, SpaceOptions, enumerate_pools, enumerate_space
from planner.solve.stages import Pipeline, coefficients


CP_SAT_MAX_STAGES = 256   # beyond this many pipeline stages the balanced incumbent is kept, with its gap


class NoPlanError(PlannerError):
    """Nothing fits; the message says which resource binds and the smallest change that would fit."""


@dataclass
class Found:
    step_ns: float
    strategy: Strategy
    layout: Layout
    evaluation: Evaluation


def search(model: ModelSpec, cluster: Cluster | Sequence[Cluster], *, global_batch: int | None = None,
           precision: str | None = None, optimizer: str = "adam", fp32_grads: bool = True, top: int = 3,
           time_limit_s: float = 30.0, space: SpaceOptions | None = None, progress=None,
           headroom: Headroom | None = None, explain: bool = True) -> SearchResult:
    """Find the `top` fastest distinct plans for `model` on `cluster` (see module doc), within
    `time_limit_s` seconds of deterministic work (WorkMeter). `cluster` may be
    a sequence of GPU pools (hardware.parse_pools): pipeline stages are then assigned to pools. Only plans
    whose peak is at most each GPU's capacity less the headroom are accepted (`space.headroom`, or
    `headroom` when no `space` is given; planner.solve.evaluate.parse_headroom); NoPlanError when none fits,
    saying why and what would fit unless `explain` is False (a caller that only needs to know, such as the
    budget mode's sweep over cluster sizes: the explanation searches again)."""
    t0 = time.perf_counter()
    pools = tuple(cluster) if isinstance(cluster, (list, tuple)) else (cluster,)
    opts = space or SpaceOptions(global_batch=global_batch or default_global_batch(model, pools),
                                 precision=precision or model.precision, optimizer=optimizer,
                                 fp32_grads=fp32_grads, headroom=headroom or Headroom())
    found, stats = _search(model, pools, opts, top, time_limit_s, progress)
    if not found:
        if len(pools) > 1:
            raise NoPlanError(f"no plan of {model.name} fits on {'+'.join(p.describe() for p in pools)} with every "
                              f"pool running whole pipeline stages"
                              + (f" and {opts.headroom.describe()} kept free" if opts.headroom else "")
                              + "; try other pool sizes or one GPU type")
        raise NoPlanError(explain_no_fit(model, pools[0], opts, stats["space"]) if explain else
                          f"no plan of {model.name} fits on {pools[0].describe()}")
    return build_result(model, pools, opts, [f.evaluation for f in found], [f.layout for f in found],
                        seconds=time.perf_counter() - t0, stats=stats)


def default_global_batch(model: ModelSpec, cluster: Cluster | Sequence[Cluster]) -> int:
    """The preset's published batch; otherwise ~4M tokens rounded to a multiple of the GPU count."""
    if model.global_batch:
        return model.global_batch
    seqs = max(1, round(4 * 2**20 / model.seq_len))
    n = sum(c.num_gpus for c in cluster) if isinstance(cluster, (list, tuple)) else cluster.num_gpus
    return max(n, (seqs // n) * n) if seqs >= n else seqs


@dataclass
class Candidate:
    """One structure, ready to lay out: its strategy, its pipeline and the GPU type of each stage."""
    strategy: Strategy
    pipeline: Pipeline
    gpus: list
    placement: tuple[str, ...]      # GPU type of every stage when the cluster has several pools


def _uniform_candidate(model: ModelSpec, st: Strategy, cluster: Cluster, cap: int) -> Candidate:
    """A structure on one GPU type, scored: every stage with the same coefficients."""
    return Candidate(st, Pipeline.uniform(stage_costs(model, st, cluster), cap), [cluster.gpu] * st.pp, ())


def candidates(model: ModelSpec, pools: tuple[Cluster, ...], opts: SpaceOptions) -> tuple[Space, list[Candidate]]:
    """Every structure of the space with its coefficients (computed once per GPU pool). The search scores
    one GPU type's structures lazily instead (_by_bound)."""
    if len(pools) == 1:
        c = pools[0]
        space = enumerate_space(model, c.num_gpus, c.gpus_per_node, opts)
        cap = opts.headroom.usable(c.gpu.memory_bytes)
        return space, [_uniform_candidate(model, st, c, cap) for st in space.strategies]
    space = enumerate_pools(model, [c.num_gpus for c in pools], min(c.gpus_per_node for c in pools), opts)
    out = []
    cache: dict = {}
    for st, placement in zip(space.strategies, space.stage_pools):
        per_pool = cache.get(st)
        if per_pool is None:
            per_pool = cache[st] = [coefficients(stage_costs(model, st, c)) for c in pools]
        pl = Pipeline(tuple(per_pool[k] for k in placement),
                      tuple(opts.headroom.usable(pools[k].gpu.memory_bytes) for k in placement))
        gpus = [pools[k].gpu for k in placement]
        out.append(Candidate(st, pl, gpus, tuple(g.name for g in gpus)))
    return space, out


SCORE_CHUNK = 256   # structures scored at a time (stage costs and exact bounds) in bound order


def _by_bound(model: ModelSpec, pools: tuple[Cluster, ...], opts: SpaceOptions):
    """(space, number of structures, iterator of (bound / v, tie-break key, index, candidate, balanced
    slowest stage)) in increasing
    order of the exact entry bound (solver.lower_bounds), ties by the tie-break key and enumeration order.
    On one GPU type the structures are scored lazily: ordered by solver.layer_bounds (no stage costs, at
    most the exact bound), scored SCORE_CHUNK at a time, and a scored one is handed out only once every
    unscored one has a larger layer bound, so the order is exactly that of scoring all; the search stops
    long before most are scored."""
    if len(pools) > 1:
        space, cands = candidates(model, pools, opts)
        ts = balanced_time_of([c.pipeline for c in cands])
        bounds = lower_bounds([c.pipeline for c in cands], ts)
        entries = sorted((lb / c.pipeline.v, _order_key(c.strategy) + c.placement, i, c, t)
                         for i, (lb, c, t) in enumerate(zip(bounds, cands, ts)))
        return space, len(cands), iter(entries)
    cluster = pools[0]
    space = enumerate_space(model, cluster.num_gpus, cluster.gpus_per_node, opts)
    n = len(space)
    cap = opts.headroom.usable(cluster.gpu.memory_bytes)
    early = (layer_bounds(model, space, cluster) / space.column("virtual_stages")) if n else np.zeros(0)
    order = np.argsort(early, kind="stable")

    def entries():
        heap: list = []
        j = 0
        while True:
            unscored = early[order[j]] if j < n else math.inf
            if heap and heap[0][0] < unscored:
                yield heapq.heappop(heap)
                continue
            if j >= n:
                return
            chunk = [int(i) for i in order[j:j + SCORE_CHUNK]]
            j += len(chunk)
            cands = [_uniform_candidate(model, space.strategy(i), cluster, cap) for i in chunk]
            ts = balanced_time_of([c.pipeline for c in cands])
            for i, c, lb, t in zip(chunk, cands, lower_bounds([c.pipeline for c in cands], ts), ts):
                heapq.heappush(heap, (lb / c.pipeline.v, _order_key(c.strategy), i, c, t))

    return space, n, entries()


def _search(model: ModelSpec, pools: tuple[Cluster, ...], opts: SpaceOptions, top: int, time_limit_s: float,
            progress):
    meter = WorkMeter()
    space, count, entries = _by_bound(model, pools, opts)
    best: dict[tuple, Found] = {}
    solved = cp_calls = infeasible = 0
    all_optimal = True
    unsolved_bound = None
    for idx, (lb, _, _, c, tb) in enumerate(entries):
        st, pl = c.strategy, c.pipeline
        free = st.recompute == "full"
        ranked = sorted(best.values(), key=lambda f: (f.step_ns, _order_key(f.strategy)))
        if len(ranked) >= top and lb >= ranked[top - 1].step_ns:
            break
        if meter.spent > time_limit_s and best:   # out of work: keep the best found (search on until one is)
            unsolved_bound = lb
            break
        if progress is not None:
            progress(idx, count)
        key = (st.tp, st.pp, st.dp, st.cp, st.ep, st.zero_stage, st.recompute, c.placement)
        if key in best and lb >= best[key].step_ns:
            continue
        meter.spent += WorkMeter.VISIT_WORK_S
        # visited lazily: the exact memory test, then the bound that counts forced recompute
        if memory_infeasible(pl, None, free):
            infeasible += 1
            continue
        bound = lower_bound(pl, None, free, tb)
        lb = bound / pl.v
        if (len(ranked) >= top and lb >= ranked[top - 1].step_ns) or (key in best and lb >= best[key].step_ns):
            continue
        layout = greedy_layout(pl, None, free, tb)
        if pl.p == 1 and layout is not None:
            # one stage holds every layer; time grows with recomputed layers, so the fewest that fit is optimal
            layout = Layout(layout.stage_layers, layout.recompute_layers, layout.objective, True, 0.0)
        elif pl.p > CP_SAT_MAX_STAGES:   # too many stages for an interactive CP-SAT model: keep the incumbent
            if layout is None:
                continue
            layout = Layout(layout.stage_layers, layout.recompute_layers, layout.objective,
                            layout.objective <= bound, max(0.0, (layout.objective - bound) / layout.objective))
        elif layout is None or layout.objective / pl.v > lb:
            cp_calls += 1
            solved_layout = solve_layout(pl, None, free, time_limit_s - meter.spent, hint=layout, meter=meter)
            if solved_layout is not None and (layout is None or solved_layout.objective <= layout.objective):
                layout = solved_layout
            elif layout is not None:   # out of time before CP-SAT beat the incumbent: keep it, with the bound
                layout = Layout(layout.stage_layers, layout.recompute_layers, layout.objective, False,
                                max(0.0, (layout.objective - bound) / layout.objective))
        else:
            layout = Layout(layout.stage_layers, layout.recompute_layers, layout.objective, True, 0.0)
        solved += 1
        if layout is None:
            continue
        all_optimal &= layout.optimal
        step = layout.objective / pl.v
        if key in best and best[key].step_ns <= step:
            continue
        final = st.with_layout(layout.stage_layers, layout.recompute_layers)   # names the recompute chosen
        ev = evaluate_pipeline(model, final, pl, c.gpus, layout.stage_layers, layout.recompute_layers)
        best[key] = Found(step, final, layout, ev)
    ranked = sorted(best.values(), key=lambda f: (f.step_ns, _order_key(f.strategy)))[:top]
    gap = max((f.layout.gap for f in ranked if not f.layout.optimal), default=0.0)
    if unsolved_bound is not None and ranked:
        gap = max(gap, (ranked[0].step_ns - unsolved_bound) / ranked[0].step_ns)
    stats = {
        "space": space,
        "structures": count,
        "memory_pruned": infeasible,
        "layouts_solved": solved,
        "cp_sat_calls": cp_calls,
        "optimal": all_optimal and unsolved_bound is None,
        "gap": gap,
        "timed_out": unsolved_bound is not None,
    }
    return ranked, stats


def _order_key(st: Strategy) -> tuple:
    """Deterministic tie-break, simplest first: fewer pipeline stages, smaller tp, cp, ep, no interleaving,
    lower ZeRO, no offload, then larger micro-batch."""
    return (st.pp, st.tp, st.cp, st.ep, st.virtual_stages, st.zero_stage, st.offload_optimizer, st.offload_params,
            -st.micro_batch, st.recompute)


def explain_no_fit(model: ModelSpec, cluster: Cluster, opts: SpaceOptions, space: Space) -> str:
    """Which resource binds, and the smallest change that fits (computed by searching again)."""
    if not space.strategies:
        rules = "; ".join(f"{rule}: {n}" for rule, n in space.removed.most_common(3)) or "no candidates"
        return (f"no parallel layout of {model.name} fits the rules on {cluster.num_gpus} GPUs ({rules}); "
                f"try another GPU count or global batch")
    need = _min_peak_bytes(model, cluster, space)
    gpu = cluster.gpu
    kept = opts.headroom.of(gpu.memory_bytes)
    have = f"{gpu.name} has {gpu.memory_bytes / 1e9:.0f} GB" + (
        f" less {kept / 1e9:.1f} GB headroom ({opts.headroom.usable(gpu.memory_bytes) / 1e9:.1f} GB)" if kept else "")
    msg = (f"{model.name} does not fit on {cluster.describe()}: GPU memory binds; the leanest plan needs "
           f"{need / 1e9:.1f} GB per GPU, {have}")
    if opts.headroom.usable(gpu.memory_bytes) <= FIXED_BUFFER_BYTES:
        return msg + (f"; the headroom leaves at most the {FIXED_BUFFER_BYTES / 1e9:g} GB reserved for buffers, so no "
                      f"GPU count fits: give a smaller --headroom")
    more = _min_gpus_that_fit(model, cluster, opts)
    if more:
        msg += f"; the smallest {gpu.name} cluster that fits is {more} GPUs"
    return msg


def _min_peak_bytes(model: ModelSpec, cluster: Cluster, space: Space) -> float:
    """The least GPU memory any structure needs (even split, everything recomputed if allowed), among
    structures whose offloaded states fit in host memory."""
    best = float("inf")
    for st in space.strategies:
        sc = coefficients(stage_costs(model, st, cluster))
        R_all = st.recompute == "full"
        L = -(-model.layers // st.pp)
        if any(sc.host_bytes(i, L) > sc.host_cap_b for i in range(st.pp)):
            continue
        best = min(best, max(sc.stage_bytes(i, L, L if R_all else 0) for i in range(st.pp)))
    return best


def _min_gpus_that_fit(model: ModelSpec, cluster: Cluster, opts: SpaceOptions) -> int | None:
    """The fewest whole nodes of this GPU on which some plan fits: doubling to find a count that fits,
    then bisection between the last count that did not and it."""
    gpn = cluster.gpus_per_node

    def fits(nodes: int) -> bool:
        bigger = Cluster(gpu=cluster.gpu, num_nodes=nodes, gpus_per_node=gpn)
        try:
            found, _ = _search(model, (bigger,), opts, 1, 5.0, None)
        except ValueError:
            return False
        return bool(found)

    lo = max(1, cluster.num_gpus // gpn)    # does not fit
    hi = None
    n = lo
    for _ in range(12):
        n *= 2
        if fits(n):
            hi = n
            break
        lo = n
    if hi is None:
        return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid
    return hi * gpn


def evaluate_strategy(model: ModelSpec, cluster: Cluster, strategy: Strategy,
                      headroom: Headroom | None = None) -> SearchResult:
    """Predict a given strategy (the API behind `plan evaluate`); rules are checked first. The plan's
    `fits`, `verdict` and `spare_gb` keep `headroom` free on every GPU (planner.solve.evaluate.parse_headroom).
    A plan that does not fit is still predicted and returned (its verdict says what is over): the caller
    decides, e.g. `plan evaluate` prints it and exits 3."""
    from planner.solve.result import assumptions, cluster_out, model_out, plan_out, with_trust
    from planner.solve.space import check_strategy
    from planner.solve.evaluate import evaluate

    headroom = headroom or Headroom()
    check_strategy(model, strategy, cluster.num_gpus, cluster.gpus_per_node)
    ev = evaluate(model, strategy, cluster, headroom=headroom)
    return SearchResult(model=model_out(model), cluster=cluster_out(cluster),
                        assumptions=assumptions(model, strategy.global_batch, strategy.precision,
                                                strategy.optimizer, strategy.flash_attention,
                                                strategy.fp32_grads, headroom, strategy.framework),
                        plans=[with_trust(plan_out(1, ev, {"status": "EVALUATED", "gap": None}), ev, model, cluster)])
