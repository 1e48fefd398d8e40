"""CP-SAT model of the pipeline layout: layers and fully recomputed layers per stage.

For one structure (tp, pp, dp, micro-batch, ...), StageCosts makes every stage's time and memory linear
in its layers L_i and recomputed layers R_i. The model (built in one function, variables and
constraints named, as in the CP-SAT primer):

  variables   L_i in [1, layers] (fixed to the even split when interleaved), R_i in [0, L_i],
              has_R_i <=> R_i > 0, T_i (stage time per micro-batch), E_i (exposed data-parallel sync)
  constraints sum L_i = layers;  memory_i(L_i, R_i, has_R_i) <= capacity;
              T_i = L_i*layer + R_i*recompute + extras_i  (>= L_i * ZeRO-3 gathers when ZeRO-3);
              E_i = max(0, dp sync_i - backward window_i);  Tmax = max T_i;  Tail = max(E_i + opt_i)
  objective   minimise v x step = (m-1) Tmax + sum T_i + Tail        (1F1B, v = 1)
                                  v m Tmax + sum T_i - Tmax + v Tail   (interleaved)
All coefficients are integers (ns, bytes), so the objective equals costmodels' step time exactly.
"""
from __future__ import annotations

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
    if sc.stage_bytes(i, L, 0) <= cap:
        return 0
    if not free:
        return None
    for R in range(1, L + 1):  # memory falls with R while a stored layer outweighs a checkpoint
        if sc.stage_bytes(i, L, R) <= cap:
            return R
    return None


def greedy_layout(sc: StageCosts, cap: int, free: bool) -> Layout | None:
    """Megatron's default even split with the fewest recomputed layers per stage (an upper bound)."""
    Ls = even_split(sc.layers, sc.p)
    Rs = []
    for i, L in enumerate(Ls):
        R = min_recompute(sc, i, L, cap, free)
        if R is None:
            return None
        Rs.append(R)
    return Layout(Ls, Rs, sc.step_scaled(Ls, Rs), optimal=False, gap=float("inf"))


def lower_bound(sc: StageCosts) -> int:
    """A bound no layout beats (v x step, ns): perfectly balanced stages, nothing recomputed.

    sum T_i >= S = layers*layer + first + last + p*p2p and max T_i >= S/p; the tail is non-decreasing in
    L and some stage holds >= ceil(layers/p) layers."""
    p, v, m = sc.p, sc.v, sc.m
    S = sc.layers * sc.layer_ns + sc.first_ns + sc.last_ns + p * sc.p2p_ns
    tmax = -(-S // p)
    if sc.zero3_layer_ns:
        tmax = max(tmax, -(-sc.layers // p) * sc.zero3_layer_ns)
    Lmax = -(-sc.layers // p)
    tail = max(0, Lmax * (sc.dp_layer_ns - sc.dp_window_layer_ns)) + Lmax * sc.opt_layer_ns
    if v == 1:
        return (m - 1) * tmax + S + tail
    return v * m * tmax + S - tmax + v * tail


def memory_infeasible(sc: StageCosts, cap: int, free: bool) -> bool:
    """True when no layout can fit: even one layer per stage (recomputed if allowed) overflows, or all
    layers' weights and states exceed the pipeline's total memory."""
    fixed = even_split(sc.layers, sc.p)
    for i in (0, sc.p - 1):
        L = 1 if sc.flexible else fixed[i]
        if min_recompute(sc, i, L, cap, free) is None:
            return True
    return sc.layers * sc.layer_static_b + sc.first_static_b + sc.last_static_b > sc.p * (cap - sc.fixed_b)


def solve_layout(sc: StageCosts, cap: int, free: bool, time_limit_s: float = 10.0,
                 hint: Layout | None = None) -> Layout | None:
    """Best layout for one structure, or None when none fits. `free`: R_i may be chosen (block recompute)."""
    p, v, m, layers = sc.p, sc.v, sc.m, sc.layers
    mdl = cp_model.CpModel()
    if sc.flexible:
        L = [mdl.NewIntVar(1, layers - (p - 1), f"layers_{i}") for i in range(p)]
        mdl.Add(sum(L) == layers).WithName("all_layers_placed")
    else:
        L = [mdl.NewConstant(x) for x in even_split(layers, p)]
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
        mem = (L[i] * (sc.layer_static_b + sc.act_stored_b[i]) + Ri * (sc.act_ckpt_b[i] - sc.act_stored_b[i])
               + has * sc.act_full_b + sc.fixed_b + sc.zero3_buffer_b
               + ((sc.first_static_b + sc.first_act_b[i]) if first else 0)
               + ((sc.last_static_b + sc.last_act_b) if last else 0))
        mdl.Add(mem <= cap).WithName(f"memory_stage_{i}")
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
            if sc.flexible:
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
