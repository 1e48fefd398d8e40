"""CP-SAT model of the pipeline layout: layers and fully recomputed layers per stage.

For one structure (tp, pp, dp, micro-batch, ...), planner.solve.stages makes every stage's time and memory
linear in its layers L_i and recomputed layers R_i (and has_R_i), with integer coefficients. The model
(built in one function, variables and constraints named, as in the CP-SAT primer) calls the very same
stage methods the evaluation calls, with CpOps creating the max and exact-division variables:

  variables   L_i in [min_stage_layers, layers] (a layer per interleaved chunk), R_i in [0, L_i],
              has_R_i <=> R_i > 0, T_i (stage time per micro-batch), E_i (exposed data-parallel sync)
  constraints sum L_i = layers;  memory_i(L_i, R_i, has_R_i) <= capacity;  host_i(L_i) <= host share;
              T_i = StageCoeffs.stage_ns (work, and ZeRO-3 gathers overlapping it);
              E_i = StageCoeffs.exposed_sync_ns;  Tmax = max T_i;  Tail = max(E_i + opt_i)
  objective   Pipeline.objective: minimise v x step = (m-1) Tmax + sum T_i + Tail        (1F1B, v = 1)
                                                      v m Tmax + sum T_i - Tmax + v Tail   (interleaved)
All coefficients are integers (ns, bytes), so the objective equals the evaluated step time exactly.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

from ortools.sat.python import cp_model

from costmodels.performance import StageCosts, even_split, min_stage_layers
from planner.solve.stages import Pipeline, StageCoeffs


@dataclass(frozen=True)
class Layout:
    stage_layers: list[int]
    recompute_layers: list[int]
    objective: int        # v x step time, ns
    optimal: bool
    gap: float            # relative gap between objective and the solver's bound (0 when optimal)


Stages = StageCosts | StageCoeffs | Pipeline


def as_pipeline(sc: Stages, cap: int | None = None) -> Pipeline:
    """Solver functions take a Pipeline, or one structure's costs (float parts or their integer
    coefficients) and a capacity for a single GPU type."""
    if isinstance(sc, Pipeline):
        return sc
    return Pipeline.uniform(sc, cap if cap is not None else 2**62)


class CpOps:
    """`ops` of planner.solve.stages for the CP-SAT model: a max or an exact division becomes a named
    variable, bounded by the time or sync bound of the model."""

    def __init__(self, mdl: cp_model.CpModel, ub: dict[str, int]):
        self.mdl, self.ub = mdl, ub

    def max(self, xs, kind: str, name: str):
        x = self.mdl.NewIntVar(0, self.ub[kind], name)
        self.mdl.AddMaxEquality(x, xs)
        return x

    def div(self, x, d: int, kind: str, name: str):
        q = self.mdl.NewIntVar(0, self.ub[kind], name)
        self.mdl.Add(d * q == x).WithName(f"{name}_overlap")
        return q

    def var(self, x, kind: str, name: str):
        """x itself when it is a variable, else a named variable equal to it."""
        if isinstance(x, cp_model.IntVar):
            return x
        v = self.mdl.NewIntVar(0, self.ub[kind], name)
        self.mdl.Add(v == x)
        return v


def min_recompute(sc: Stages, i: int, L: int, cap: int | None, free: bool) -> int | None:
    """Fewest fully recomputed layers that make stage i fit (time grows with R, so fewest is best)."""
    pl = as_pipeline(sc, cap)
    if pl.stage_fits(i, L, 0):
        return 0
    if not free or pl.host_bytes(i, L) > pl.stages[i].host_cap_b:
        return None
    for R in range(1, L + 1):  # memory falls with R while a stored layer outweighs a checkpoint
        if pl.stage_fits(i, L, R):
            return R
    return None


def balanced_layers(sc: Stages) -> tuple[list[int], int]:
    """Integer layers per stage (>= v each) minimising the slowest stage when nothing is recomputed, and
    that time: binary search on T, stage i fits floor((T - extras_i) / layer_i) layers. Stages with the
    same coefficients (first, middle, last of one GPU type) are counted as one group."""
    pl = as_pipeline(sc)
    p, v, layers = pl.p, pl.v, pl.layers
    mins = [min_stage_layers(i, p, v) for i in range(p)]
    groups: dict[tuple[int, int, int], list[int]] = {}
    for i, st in enumerate(pl.stages):
        groups.setdefault((st.layer_ns, st.fixed_ns(i), st.zero3_layer_ns), []).append(i)
    sizes = [(a, c, z, len(members), max(mins[i] for i in members)) for (a, c, z), members in groups.items()]

    def room(T: int, a: int, c: int, z: int) -> int:
        k = (T - c) // a if a else layers
        return min(k, T // z) if z else k

    def fits(T: int) -> bool:
        total = 0
        for a, c, z, n, least in sizes:
            k = room(T, a, c, z)
            if k < least:
                return False
            total += k * n
        return total >= layers

    lo, hi = 0, max(layers * (a + z) + c for a, c, z in groups)
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid + 1
    caps = [0] * p
    for (a, c, z), members in groups.items():
        for i in members:
            caps[i] = room(lo, a, c, z)
    excess = sum(caps) - layers
    heap = [(-caps[i], i) for i in range(p)]
    heapq.heapify(heap)
    while excess > 0:   # take one layer at a time from the fullest stage (ties: the earliest)
        neg, i = heapq.heappop(heap)
        if -neg > mins[i]:
            caps[i] -= 1
            excess -= 1
            heapq.heappush(heap, (-caps[i], i))
    return caps, lo


def greedy_layout(sc: Stages, cap: int | None = None, free: bool = False) -> Layout | None:
    """An upper bound: the balanced split (or Megatron's even split) with the fewest recomputed layers
    per stage that fit; the better of the two that fit."""
    pl = as_pipeline(sc, cap)
    best = None
    for Ls in (balanced_layers(pl)[0], even_split(pl.layers, pl.p)):
        if any(L < min_stage_layers(i, pl.p, pl.v) for i, L in enumerate(Ls)):
            continue
        Rs = [min_recompute(pl, i, L, None, free) for i, L in enumerate(Ls)]
        if any(R is None for R in Rs):
            continue
        obj = pl.step_scaled(Ls, Rs)
        if best is None or obj < best.objective:
            best = Layout(Ls, Rs, obj, optimal=False, gap=float("inf"))
    return best


def _stage_memory_terms(pl: Pipeline, i: int) -> tuple[int, int, int, int]:
    """Stage i's memory as const + L * per_plain + R * (per_ckpt - per_plain) (+ full when R > 0):
    (const, per_plain, per_ckpt, stored - ckpt) from StageCoeffs.memory_form."""
    const, per_L, per_R, _ = pl.stages[i].memory_form(i)
    return const, per_L, per_L + per_R, -per_R


def layer_caps(sc: Stages, cap: int | None, free: bool) -> tuple[list[int], list[int]]:
    """Per stage: the most layers it holds with nothing recomputed, and with every layer recomputed
    (or nothing, when recompute is not free). Memory grows with L and falls with R, so these are exact."""
    pl = as_pipeline(sc, cap)
    plain, most = [], []
    for i, st in enumerate(pl.stages):
        const, per_plain, per_ckpt, _ = _stage_memory_terms(pl, i)
        room = pl.caps[i] - const
        host_per_layer = st.layer_states_b[3]
        host_room = st.host_cap_b - st.host_bytes(i, 0)
        host_cap = (host_room // host_per_layer if host_per_layer else pl.layers) if host_room >= 0 else -1
        k0 = room // per_plain if room >= 0 else -1
        plain.append(min(k0, host_cap, pl.layers))
        full = st.recompute_peak_b(i)
        if free and per_ckpt < per_plain and room >= full:
            k1 = (room - full) // per_ckpt
            most.append(min(max(k0, k1), host_cap, pl.layers))
        else:
            most.append(plain[-1])
    return plain, most


def memory_infeasible(sc: Stages, cap: int | None, free: bool) -> bool:
    """True exactly when no layout fits: some stage cannot hold its fewest layers (min_stage_layers) even fully recomputed, or
    all stages together cannot hold every layer."""
    pl = as_pipeline(sc, cap)
    _, most = layer_caps(pl, None, free)
    return any(k < min_stage_layers(i, pl.p, pl.v) for i, k in enumerate(most)) or sum(most) < pl.layers


def min_recomputed_layers(sc: Stages, cap: int | None, free: bool) -> int:
    """A lower bound on the layers any fitting layout recomputes. Stage i with L layers must recompute
    R >= (const_i + L*A_i - cap_i) / D_i layers (A_i = static + stored bytes per layer, D_i = stored -
    checkpoint bytes), so it holds x_i = (cap_i - const_i) / A_i layers free and each further layer costs
    A_i / D_i recomputed layers. Relaxed to continuous L, the cheapest stages take the excess first."""
    if not free:
        return 0
    pl = as_pipeline(sc, cap)
    _, most = layer_caps(pl, None, free)
    stages = []
    for i in range(pl.p):
        const, A, _, D = _stage_memory_terms(pl, i)
        free_layers = max(0.0, (pl.caps[i] - const) / A)
        stages.append((A / D if D > 0 else math.inf, max(0.0, most[i] - free_layers), free_layers))
    excess = pl.layers - sum(x for _, _, x in stages)
    total = 0.0
    for rate, room, _ in sorted(stages):
        if excess <= 0:
            break
        take = min(room, excess)
        total += take * rate if take > 0 else 0.0
        excess -= take
    if excess > 1e-9 or not math.isfinite(total):
        return 0   # no fitting layout; memory_infeasible reports it
    return max(0, math.floor(total * (1 - 1e-9)))


def lower_bound(sc: Stages, cap: int | None = None, free: bool = False) -> int:
    """A bound no fitting layout beats (v x step, ns). max T_i is at least the best integer balance of
    layers with nothing recomputed, and at least the average stage; sum T_i >= S + R_min * recompute,
    S = every layer once at the fastest stage's rate + first + last + p2p, R_min from
    min_recomputed_layers (only when a capacity is given); the tail is non-decreasing in L and some stage
    holds >= ceil(layers/p) layers."""
    pl = as_pipeline(sc, cap)
    p, v, m = pl.p, pl.v, pl.m
    first, last = pl.stages[0], pl.stages[-1]
    S = (pl.layers * min(st.layer_ns for st in pl.stages) + first.first_ns + last.last_ns
         + sum(st.p2p_ns for st in pl.stages))
    if cap is not None or isinstance(sc, Pipeline):
        S += min_recomputed_layers(pl, None, free) * min(st.recompute_ns for st in pl.stages)
    tmax = max(balanced_layers(pl)[1], -(-S // p))
    Lmax = -(-pl.layers // p)
    # a middle stage's tail at Lmax layers (the overlap of sync and window both growing with L is non-decreasing)
    tail = min(st.stage_tail_ns(None, Lmax) for st in {id(st): st for st in pl.stages}.values())
    if v == 1:
        return (m - 1) * tmax + S + tail
    return v * m * tmax + S - tmax + v * tail


def solve_layout(sc: Stages, cap: int | None, free: bool, time_limit_s: float = 10.0,
                 hint: Layout | None = None) -> Layout | None:
    """Best layout for one structure, or None when none fits. `free`: R_i may be chosen (block recompute)."""
    pl = as_pipeline(sc, cap)
    p, v, layers = pl.p, pl.v, pl.layers
    mdl = cp_model.CpModel()
    # every interleaved chunk holds a layer (the first may hold only the embedding, the last only the loss)
    mins = [min_stage_layers(i, p, v) for i in range(p)]
    L = [mdl.NewIntVar(mins[i], layers - sum(mins) + mins[i], f"layers_{i}") for i in range(p)]
    mdl.Add(sum(L) == layers).WithName("all_layers_placed")
    R, T, tails = [], [], []
    # tight upper bounds keep the search fast: the slowest a stage can be holds every layer, recomputed
    t_ub = max(layers * (st.layer_ns + st.recompute_ns + st.zero3_layer_ns) + st.p2p_ns + st.first_ns + st.last_ns
               for st in pl.stages)
    e_ub = max(layers * (st.dp_layer_ns + st.gather_layer_ns) + st.dp_first_ns + st.dp_last_ns
               + st.gather_first_ns + st.gather_last_ns for st in pl.stages)
    o_ub = max(layers * st.opt_layer_ns + st.opt_first_ns + st.opt_last_ns for st in pl.stages)
    ops = CpOps(mdl, {"time": t_ub, "sync": e_ub})
    for i, sc_i in enumerate(pl.stages):
        Ri = mdl.NewIntVar(0, layers if free else 0, f"recomputed_{i}")
        mdl.Add(Ri <= L[i]).WithName(f"recompute_within_stage_{i}")
        has = mdl.NewBoolVar(f"recomputes_{i}")
        mdl.Add(Ri >= 1).OnlyEnforceIf(has)
        mdl.Add(Ri == 0).OnlyEnforceIf(has.Not())
        mdl.Add(pl.stage_bytes(i, L[i], Ri, has) <= pl.caps[i]).WithName(f"memory_stage_{i}")
        if sc_i.host_bytes(i, 1):
            mdl.Add(pl.host_bytes(i, L[i]) <= sc_i.host_cap_b).WithName(f"host_memory_stage_{i}")
        T.append(ops.var(pl.stage_ns(i, L[i], Ri, ops, f"stage_time_{i}"), "time", f"stage_time_{i}"))
        tails.append(pl.stage_tail_ns(i, L[i], ops, f"dp_exposed_{i}"))
        R.append(Ri)
    tmax = mdl.NewIntVar(0, t_ub, "slowest_stage")
    mdl.AddMaxEquality(tmax, T)
    tail = mdl.NewIntVar(0, e_ub + o_ub, "step_tail")
    mdl.AddMaxEquality(tail, tails)
    mdl.Minimize(pl.objective(T, tmax, tail))
    if hint is not None:
        for i in range(p):
            mdl.AddHint(L[i], hint.stage_layers[i])
            mdl.AddHint(R[i], hint.recompute_layers[i])
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1          # deterministic: same input, same plan
    solver.parameters.random_seed = 0
    # CP-SAT 9.15's presolve loops for seconds on these small max-of-linear models; search alone
    # proves optimality in milliseconds (measured in benchmarks/search.py).
    solver.parameters.cp_model_presolve = False
    solver.parameters.max_time_in_seconds = max(0.01, time_limit_s)
    status = solver.Solve(mdl)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None
    Ls = [int(solver.Value(x)) for x in L]
    Rs = [int(solver.Value(x)) for x in R]
    obj = pl.step_scaled(Ls, Rs)
    bound = solver.BestObjectiveBound()
    optimal = status == cp_model.OPTIMAL
    gap = 0.0 if optimal else max(0.0, (obj - bound) / obj)
    return Layout(Ls, Rs, obj, optimal=optimal, gap=gap)
