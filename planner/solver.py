"""CP-SAT model of the pipeline layout: layers and fully recomputed layers per stage.

For one structure (tp, pp, dp, micro-batch, ...), StageCosts makes every stage's time and memory linear
in its layers L_i and recomputed layers R_i. The model (built in one function, variables and
constraints named, as in the CP-SAT primer):

  variables   L_i in [v, layers] (at least one layer per interleaved chunk), R_i in [0, L_i],
              has_R_i <=> R_i > 0, T_i (stage time per micro-batch), E_i (exposed data-parallel sync)
  constraints sum L_i = layers;  memory_i(L_i, R_i, has_R_i) <= capacity;  host_i(L_i) <= host share;
              T_i = L_i*layer + R_i*recompute + extras_i  (>= L_i * ZeRO-3 gathers when ZeRO-3);
              E_i = max(0, dp sync_i - backward window_i);  Tmax = max T_i;  Tail = max(E_i + opt_i)
  objective   minimise v x step = (m-1) Tmax + sum T_i + Tail        (1F1B, v = 1)
                                  v m Tmax + sum T_i - Tmax + v Tail   (interleaved)
All coefficients are integers (ns, bytes), so the objective equals costmodels' step time exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ortools.sat.python import cp_model

from costmodels.performance import StageCosts, even_split


@dataclass(frozen=True)
class Layout:
    stage_layers: list[int]
    recompute_layers: list[int]
    objective: int        # v x step time, ns
    optimal: bool
    gap: float            # relative gap between objective and the solver's bound (0 when optimal)


def min_recompute(sc: StageCosts, i: int, L: int, cap: int, free: bool) -> int | None:
    """Fewest fully recomputed layers that make stage i fit (time grows with R, so fewest is best)."""
    if sc.stage_host_bytes(i, L) > sc.host_cap_b:
        return None
    if sc.stage_bytes(i, L, 0) <= cap:
        return 0
    if not free:
        return None
    for R in range(1, L + 1):  # memory falls with R while a stored layer outweighs a checkpoint
        if sc.stage_bytes(i, L, R) <= cap:
            return R
    return None


def _stage_fixed_ns(sc: StageCosts, i: int) -> int:
    return sc.p2p_ns + (sc.first_ns if i == 0 else 0) + (sc.last_ns if i == sc.p - 1 else 0)


def balanced_layers(sc: StageCosts) -> tuple[list[int], int]:
    """Integer layers per stage (>= v each) minimising the slowest stage when nothing is recomputed, and
    that time: binary search on T, a stage fits floor((T - extras_i) / layer) layers. Stages differ only
    as first, middle or last, so each test counts three groups."""
    p, v, a, z = sc.p, sc.v, sc.layer_ns, sc.zero3_layer_ns
    groups = [(_stage_fixed_ns(sc, 0), [0])]
    if p > 1:
        groups.append((_stage_fixed_ns(sc, p - 1), [p - 1]))
    if p > 2:
        groups.append((_stage_fixed_ns(sc, 1), list(range(1, p - 1))))

    def room(T: int, c: int) -> int:
        k = (T - c) // a if a else sc.layers
        return min(k, T // z) if z else k

    def fits(T: int) -> bool:
        total = 0
        for c, members in groups:
            k = room(T, c)
            if k < v:
                return False
            total += k * len(members)
        return total >= sc.layers

    lo, hi = 0, sc.layers * (a + z) + max(c for c, _ in groups)
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid + 1
    caps = [0] * p
    for c, members in groups:
        for i in members:
            caps[i] = room(lo, c)
    excess = sum(caps) - sc.layers
    for i in sorted(range(p), key=lambda j: (-caps[j], j)):  # trim the fullest stages first
        cut = min(excess, caps[i] - v)
        caps[i] -= cut
        excess -= cut
    return caps, lo


def greedy_layout(sc: StageCosts, cap: int, free: bool) -> Layout | None:
    """An upper bound: the balanced split (or Megatron's even split) with the fewest recomputed layers
    per stage that fit; the better of the two that fit."""
    best = None
    for Ls in (balanced_layers(sc)[0], even_split(sc.layers, sc.p)):
        Rs = [min_recompute(sc, i, L, cap, free) for i, L in enumerate(Ls)]
        if any(R is None for R in Rs):
            continue
        obj = sc.step_scaled(Ls, Rs)
        if best is None or obj < best.objective:
            best = Layout(Ls, Rs, obj, optimal=False, gap=float("inf"))
    return best


def layer_caps(sc: StageCosts, cap: int, free: bool) -> tuple[list[int], list[int]]:
    """Per stage: the most layers it holds with nothing recomputed, and with every layer recomputed
    (or nothing, when recompute is not free). Memory grows with L and falls with R, so these are exact."""
    plain, most = [], []
    for i in range(sc.p):
        stored, ckpt, first_act = sc.act_b(i)
        const = sc.fixed_b + sc.zero3_buffer_b + first_act
        const += sc.first_static_b if i == 0 else 0
        const += (sc.last_static_b + sc.last_act_b) if i == sc.p - 1 else 0
        host_per_layer = sc.layer_states_b[3]
        host_room = sc.host_cap_b - sc.stage_host_bytes(i, 0)
        host_cap = (host_room // host_per_layer if host_per_layer else sc.layers) if host_room >= 0 else -1
        k0 = (cap - const) // (sc.layer_static_b + stored) if cap >= const else -1
        plain.append(min(k0, host_cap, sc.layers))
        if free and ckpt < stored and cap >= const + sc.act_full_b:
            k1 = (cap - const - sc.act_full_b) // (sc.layer_static_b + ckpt)
            most.append(min(max(k0, k1), host_cap, sc.layers))
        else:
            most.append(plain[-1])
    return plain, most


def memory_infeasible(sc: StageCosts, cap: int, free: bool) -> bool:
    """True exactly when no layout fits: some stage cannot hold its v layers even fully recomputed, or
    all stages together cannot hold every layer."""
    _, most = layer_caps(sc, cap, free)
    return min(most) < sc.v or sum(most) < sc.layers


def min_recomputed_layers(sc: StageCosts, cap: int, free: bool) -> int:
    """A lower bound on the layers any fitting layout recomputes. Stage i with L layers must recompute
    R >= (const_i + L*A_i - cap) / D_i layers (A_i = static + stored bytes per layer, D_i = stored -
    checkpoint bytes), so it holds x_i = (cap - const_i) / A_i layers free and each further layer costs
    A_i / D_i recomputed layers. Relaxed to continuous L, the cheapest stages take the excess first."""
    if not free:
        return 0
    _, most = layer_caps(sc, cap, free)
    stages = []
    for i in range(sc.p):
        stored, ckpt, first_act = sc.act_b(i)
        const = sc.fixed_b + sc.zero3_buffer_b + first_act + (sc.first_static_b if i == 0 else 0)
        const += (sc.last_static_b + sc.last_act_b) if i == sc.p - 1 else 0
        A, D = sc.layer_static_b + stored, stored - ckpt
        free_layers = max(0.0, (cap - const) / A)
        stages.append((A / D if D > 0 else math.inf, free_layers, max(0.0, most[i] - free_layers)))
    excess = sc.layers - sum(x for _, x, _ in stages)
    total = 0.0
    for rate, _, room in sorted(stages):
        if excess <= 0:
            break
        take = min(room, excess)
        total += take * rate if take > 0 else 0.0
        excess -= take
    if excess > 1e-9 or not math.isfinite(total):
        return 0   # no fitting layout; memory_infeasible reports it
    return max(0, math.floor(total * (1 - 1e-9)))


def lower_bound(sc: StageCosts, cap: int | None = None, free: bool = False) -> int:
    """A bound no fitting layout beats (v x step, ns). max T_i is at least the best integer balance of
    layers with nothing recomputed, and at least the average stage; sum T_i >= S + R_min * recompute
    with S = layers*layer + first + last + p*p2p and R_min from min_recomputed_layers; the tail is
    non-decreasing in L and some stage holds >= ceil(layers/p) layers."""
    p, v, m = sc.p, sc.v, sc.m
    S = sc.layers * sc.layer_ns + sc.first_ns + sc.last_ns + p * sc.p2p_ns
    if cap is not None:
        S += min_recomputed_layers(sc, cap, free) * sc.recompute_ns
    tmax = max(balanced_layers(sc)[1], -(-S // p))
    Lmax = -(-sc.layers // p)
    tail = max(0, Lmax * (sc.dp_layer_ns - sc.dp_window_layer_ns)) + Lmax * sc.opt_layer_ns
    if v == 1:
        return (m - 1) * tmax + S + tail
    return v * m * tmax + S - tmax + v * tail


def solve_layout(sc: StageCosts, cap: int, free: bool, time_limit_s: float = 10.0,
                 hint: Layout | None = None) -> Layout | None:
    """Best layout for one structure, or None when none fits. `free`: R_i may be chosen (block recompute)."""
    p, v, m, layers = sc.p, sc.v, sc.m, sc.layers
    mdl = cp_model.CpModel()
    # every stage holds >= v layers, so each of its v interleaved chunks has at least one
    L = [mdl.NewIntVar(v, layers - v * (p - 1), f"layers_{i}") for i in range(p)]
    mdl.Add(sum(L) == layers).WithName("all_layers_placed")
    R, T, tails = [], [], []
    # tight upper bounds keep presolve fast: the slowest a stage can be holds every layer, recomputed
    t_ub = layers * (sc.layer_ns + sc.recompute_ns + sc.zero3_layer_ns) + sc.p2p_ns + sc.first_ns + sc.last_ns
    e_ub = layers * max(0, sc.dp_layer_ns) + sc.dp_first_ns + sc.dp_last_ns
    for i in range(p):
        Ri = mdl.NewIntVar(0, layers if free else 0, f"recomputed_{i}")
        mdl.Add(Ri <= L[i]).WithName(f"recompute_within_stage_{i}")
        has = mdl.NewBoolVar(f"recomputes_{i}")
        mdl.Add(Ri >= 1).OnlyEnforceIf(has)
        mdl.Add(Ri == 0).OnlyEnforceIf(has.Not())
        first, last = i == 0, i == p - 1
        stored, ckpt, first_act = sc.act_b(i)
        mem = (L[i] * (sc.layer_static_b + stored) + Ri * (ckpt - stored)
               + has * sc.act_full_b + sc.fixed_b + sc.zero3_buffer_b + first_act
               + (sc.first_static_b if first else 0)
               + ((sc.last_static_b + sc.last_act_b) if last else 0))
        mdl.Add(mem <= cap).WithName(f"memory_stage_{i}")
        if sc.layer_states_b[3] or sc.first_states_b[3] or sc.last_states_b[3]:
            host = (L[i] * sc.layer_states_b[3] + (sc.first_states_b[3] if first else 0)
                    + (sc.last_states_b[3] if last else 0))
            mdl.Add(host <= sc.host_cap_b).WithName(f"host_memory_stage_{i}")
        extra = sc.p2p_ns + (sc.first_ns if first else 0) + (sc.last_ns if last else 0)
        work = L[i] * sc.layer_ns + Ri * sc.recompute_ns + extra
        Ti = mdl.NewIntVar(0, t_ub, f"stage_time_{i}")
        if sc.zero3_layer_ns:
            mdl.AddMaxEquality(Ti, [work, L[i] * sc.zero3_layer_ns]).WithName(f"zero3_overlap_{i}")
        else:
            mdl.Add(Ti == work)
        T.append(Ti)
        dp = L[i] * (sc.dp_layer_ns - sc.dp_window_layer_ns) + (sc.dp_first_ns if first else 0) + (sc.dp_last_ns if last else 0)
        Ei = mdl.NewIntVar(0, e_ub, f"dp_exposed_{i}")
        mdl.AddMaxEquality(Ei, [0, dp]).WithName(f"dp_overlap_{i}")
        opt = L[i] * sc.opt_layer_ns + (sc.opt_first_ns if first else 0) + (sc.opt_last_ns if last else 0)
        tails.append(Ei + opt)
        R.append(Ri)
    tmax = mdl.NewIntVar(0, t_ub, "slowest_stage")
    mdl.AddMaxEquality(tmax, T)
    tail = mdl.NewIntVar(0, e_ub + layers * sc.opt_layer_ns + sc.opt_first_ns + sc.opt_last_ns, "step_tail")
    mdl.AddMaxEquality(tail, tails)
    if v == 1:
        mdl.Minimize((m - 1) * tmax + sum(T) + tail)
    else:
        mdl.Minimize(v * m * tmax + sum(T) - tmax + v * tail)
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
    obj = sc.step_scaled(Ls, Rs)
    bound = solver.BestObjectiveBound()
    optimal = status == cp_model.OPTIMAL
    gap = 0.0 if optimal else max(0.0, (obj - bound) / obj)
    return Layout(Ls, Rs, obj, optimal=optimal, gap=gap)
