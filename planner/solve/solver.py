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

import sys
import types

import numpy as np

from costmodels.calibration import calibration_for
from costmodels.performance import StageCosts, even_split, layer_key, layer_times_of, min_stage_layers
from planner.solve.stages import ARRAYS, Pipeline, StageCoeffs, layer_ns_totals, objective_value


def _import_cp_model():
    """OR-Tools' CP-SAT module, without pandas: cp_model imports pandas (0.2 s, most of a search's imports)
    only for its pandas.Series helpers, which the planner never calls. While cp_model imports, a placeholder
    stands in for pandas; it leaves sys.modules afterwards, so a later `import pandas` loads the real one.
    Where pandas is already loaded, cp_model simply uses it."""
    if "pandas" in sys.modules or "ortools.sat.python.cp_model" in sys.modules:
        from ortools.sat.python import cp_model
        return cp_model
    stub = types.ModuleType("pandas", "placeholder while OR-Tools' cp_model imports (planner.solve.solver)")
    stub.Index = type("Index", (), {})
    stub.Series = type("Series", (), {})
    sys.modules["pandas"] = stub
    try:
        from ortools.sat.python import cp_model
    finally:
        if sys.modules.get("pandas") is stub:
            del sys.modules["pandas"]
    return cp_model


cp_model = _import_cp_model()


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
    R = int(fewest_recomputed(pl, i, L, free))
    return None if R < 0 else R


def fewest_recomputed(pl: Pipeline, i: int, L, free: bool):
    """min_recompute for L layers (an integer or a numpy array of them), -1 where nothing fits. Memory is
    const + L a + R r + [R > 0] h (StageCoeffs.memory_form) and falls with R while a stored layer outweighs
    a checkpoint (r < 0): R >= (const + L a + h - cap) / -r."""
    st = pl.stages[i]
    const, a, r, h = st.memory_form(i)
    plain = const + L * a
    host_ok = st.host_bytes(i, L) <= st.host_cap_b
    if free and r < 0:
        R = np.maximum(1, -(-(plain + h - pl.caps[i]) // -r))
        R = np.where(R <= L, R, -1)
    else:
        R = -1
    return np.where(host_ok, np.where(plain <= pl.caps[i], 0, R), -1)


def stage_time_floors(pl: Pipeline, free: bool) -> np.ndarray:
    """F[i, L]: the least time per micro-batch of stage i holding L layers (its fewest recomputed layers),
    `_NO_FIT` where L layers cannot fit; non-decreasing in L."""
    L = np.arange(pl.layers + 1, dtype=np.int64)
    rows = []
    for i in range(pl.p):
        R = fewest_recomputed(pl, i, L, free)
        t = pl.stage_ns(i, L, np.maximum(R, 0), ARRAYS)
        rows.append(np.where(R >= 0, t, _NO_FIT))
    return np.stack(rows)


_NO_FIT = np.int64(2 ** 62)


def slowest_stage_floor(pl: Pipeline, free: bool, t_balanced: int) -> int:
    """A bound on the slowest stage of any fitting layout, at least `t_balanced`: the least T at which every
    stage, each at its least time for its layers (stage_time_floors: the recompute memory forces counted),
    holds its fewest layers and all together every layer. Only when memory binds does it exceed t_balanced."""
    _, most_plain = layer_caps(pl, None, False)
    mins = [min_stage_layers(i, pl.p, pl.v) for i in range(pl.p)]
    room = pl.layers - sum(mins)
    if all(k >= mins[i] + room for i, k in enumerate(most_plain)):
        return t_balanced        # every stage holds all it ever could with nothing recomputed
    F = stage_time_floors(pl, free)
    least = F[np.arange(pl.p), mins]
    finite = F[F < _NO_FIT]
    if np.any(least >= _NO_FIT) or not len(finite):
        return t_balanced        # no layout fits; memory_infeasible says so
    lo, hi = max(t_balanced, int(least.max())), max(t_balanced, int(finite.max()))
    while lo < hi:
        mid = (lo + hi) // 2
        if int(np.sum(np.sum(F <= mid, axis=1) - 1)) >= pl.layers:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _layer_groups(pl: Pipeline) -> dict[tuple[int, int, int], tuple[int, int]]:
    """Stages with the same coefficients (first, middle, last of one GPU type): (layer_ns, fixed_ns,
    zero3_layer_ns) -> (how many stages, the largest min_stage_layers among them)."""
    p, v = pl.p, pl.v
    if pl.uniform_stages:      # one GPU type: the first, a middle and the last stage stand for all
        reps = [(0, 1), (1, p - 2), (p - 1, 1)] if p > 2 else [(i, 1) for i in range(p)]
    else:
        reps = [(i, 1) for i in range(p)]
    groups: dict[tuple[int, int, int], tuple[int, int]] = {}
    for i, n in reps:
        st = pl.stages[i]
        key = (st.layer_ns, st.fixed_ns(i), st.zero3_layer_ns)
        count, least = groups.get(key, (0, 0))
        groups[key] = (count + n, max(least, min_stage_layers(i, p, v)))
    return groups


def _room(T, a, c, z, layers):
    """Layers a stage of layer time a, fixed time c and ZeRO-3 gather time z per layer holds within T
    (integers or numpy arrays)."""
    k = np.where(a > 0, (T - c) // np.maximum(a, 1), layers)
    return np.where(z > 0, np.minimum(k, T // np.maximum(z, 1)), k)


def balanced_times(a, c, z, n, least, layers) -> np.ndarray:
    """The smallest T at which every group fits its fewest layers and all groups together hold every layer,
    for many structures at once: row r has groups (a, c, z) of n stages each that must hold >= least layers
    (2-D int64 arrays, a group with n = 0 is padding). Binary search on T, all rows in step."""
    a, c, z, n, least = (np.asarray(x, dtype=np.int64) for x in (a, c, z, n, least))
    layers = np.asarray(layers, dtype=np.int64).reshape(-1, 1)
    lo = np.zeros(len(a), dtype=np.int64)
    hi = np.max(np.where(n > 0, layers * (a + z) + c, 0), axis=1)
    while np.any(lo < hi):
        mid = (lo + hi) // 2
        k = _room(mid[:, None], a, c, z, layers)
        fits = np.all((k >= least) | (n == 0), axis=1) & (np.sum(k * n, axis=1) >= layers[:, 0])
        hi = np.where(fits, mid, hi)
        lo = np.where(fits, lo, mid + 1)
    return lo


def balanced_time_of(pipelines: list[Pipeline]) -> list[int]:
    """The balanced slowest stage of each pipeline (nothing recomputed), searched for all at once."""
    if not pipelines:
        return []
    rows = [[key + counts for key, counts in _layer_groups(pl).items()] for pl in pipelines]
    width = max(len(r) for r in rows)
    grid = np.zeros((len(rows), width, 5), dtype=np.int64)
    for r, row in enumerate(rows):
        grid[r, :len(row)] = row
    return [int(t) for t in balanced_times(*(grid[:, :, k] for k in range(5)), [pl.layers for pl in pipelines])]


def balanced_layers(sc: Stages, t_balanced: int | None = None) -> tuple[list[int], int]:
    """Integer layers per stage (>= v each) minimising the slowest stage when nothing is recomputed, and
    that time: binary search on T (balanced_times; `t_balanced` when already known from balanced_time_of),
    stage i fits floor((T - extras_i) / layer_i) layers. Stages with the same coefficients are counted as
    one group."""
    pl = as_pipeline(sc)
    p, layers = pl.p, pl.layers
    mins = [min_stage_layers(i, p, pl.v) for i in range(p)]
    lo = balanced_time_of([pl])[0] if t_balanced is None else t_balanced
    caps = [int(_room(lo, st.layer_ns, st.fixed_ns(i), st.zero3_layer_ns, layers)) for i, st in enumerate(pl.stages)]
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


def greedy_layout(sc: Stages, cap: int | None = None, free: bool = False,
                  t_balanced: int | None = None) -> Layout | None:
    """An upper bound: the balanced split (or Megatron's even split) with the fewest recomputed layers
    per stage that fit; the better of the two that fit."""
    pl = as_pipeline(sc, cap)
    best = None
    for Ls in (balanced_layers(pl, t_balanced)[0], even_split(pl.layers, pl.p)):
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


def lower_bound(sc: Stages, cap: int | None = None, free: bool = False, t_balanced: int | None = None) -> int:
    """A bound no fitting layout beats (v x step, ns). max T_i is at least the best integer balance of
    layers with nothing recomputed, and at least the average stage; sum T_i >= S + R_min * recompute,
    S = every layer once at the fastest stage's rate + first + last + p2p, R_min from
    min_recomputed_layers (only when a capacity is given); the tail is non-decreasing in L and some stage
    holds >= ceil(layers/p) layers. `t_balanced`: the balanced slowest stage, when known (balanced_time_of)."""
    pl = as_pipeline(sc, cap)
    recompute = cap is not None or isinstance(sc, Pipeline)
    t = balanced_time_of([pl])[0] if t_balanced is None else t_balanced
    return _bound(pl, t, free if recompute else False, memory=recompute)


def _bound(pl: Pipeline, t_balanced: int, free: bool, memory: bool = False) -> int:
    """lower_bound given the balanced slowest stage; `memory`: the stages' capacities count (the recompute
    they force, and the layers they cannot hold)."""
    p = pl.p
    first, last = pl.stages[0], pl.stages[-1]
    kinds = (first,) if pl.uniform_stages else tuple({id(st): st for st in pl.stages}.values())
    S = (pl.layers * min(st.layer_ns for st in kinds) + first.first_ns + last.last_ns
         + (p * first.p2p_ns if pl.uniform_stages else sum(st.p2p_ns for st in pl.stages)))
    S += min_recomputed_layers(pl, None, free) * min(st.recompute_ns for st in kinds)
    tmax = max(slowest_stage_floor(pl, free, t_balanced) if memory else t_balanced, -(-S // p))
    Lmax = -(-pl.layers // p)
    # a middle stage's tail at Lmax layers (the overlap of sync and window both growing with L is non-decreasing)
    tail = min(st.stage_tail_ns(None, Lmax) for st in kinds)
    return pl.objective_bound(S, tmax, tail)


def lower_bounds(pipelines: list[Pipeline], t_balanced: list[int] | None = None) -> list[int]:
    """lower_bound(pl) of many pipelines (nothing recomputed), the balancing searched for all at once."""
    ts = balanced_time_of(pipelines) if t_balanced is None else t_balanced
    return [_bound(pl, t, False) for pl, t in zip(pipelines, ts)]


def layer_bounds(model, space, cluster) -> np.ndarray:
    """For the structures of a space on one GPU type (planner.solve.space.Space rows), a bound at most each
    one's lower_bound (v x step, ns), from its layer time alone (costmodels.performance.layer_times, once
    per layer shape): the embedding, head, sends, ZeRO-3 gathers and data-parallel tail only add to a stage,
    so leaving them out bounds from below; with them gone every stage holds at most T // layer_ns layers, so
    the balanced slowest stage is at least layer_ns x max(ceil(layers / p), the most any stage must hold).
    Builds no stage costs and few Strategies: the search uses it to score only the structures that can still
    win (planner.solve.optimize)."""
    cal = calibration_for(cluster.gpu.family, cluster.gpu.name)
    col = space.column
    tp, pp, dp, cp, ep = col("tp"), col("pp"), col("dp"), col("cp"), col("ep")
    mb, v, rec = col("micro_batch"), col("virtual_stages"), col("recompute")
    # a layer's time depends on these columns (and the space's fixed settings; interleaving only through the
    # MoE all-to-all overlap's rule): one Strategy per distinct combination stands for its rows
    shape = np.stack([tp, cp, ep, mb, rec, (pp == 1) | (v > 1)], axis=1)
    _, first, inverse = np.unique(shape, axis=0, return_index=True, return_inverse=True)
    by_key: dict = {}
    per_shape = []
    for i in first:
        key = layer_key(model, space.strategy(int(i)))
        if key not in by_key:
            by_key[key] = layer_ns_totals(layer_times_of(model, cluster, cal, key))[-1]
        per_shape.append(by_key[key])
    a = np.array(per_shape, dtype=np.int64)[inverse.reshape(-1)]
    pv, pv_inverse = np.unique(np.stack([pp, v], axis=1), axis=0, return_inverse=True)
    least = np.array([max(min_stage_layers(i, int(p), int(vv)) for i in {0, min(1, int(p) - 1), int(p) - 1})
                      for p, vv in pv], dtype=np.int64)[pv_inverse.reshape(-1)]
    m = space.global_batch // (dp * mb)
    layers = model.layers
    S = layers * a
    tmax = np.maximum(a * np.maximum(-(-layers // pp), least), -(-S // pp))
    return objective_value(v, m, S, tmax, 0)


class WorkMeter:
    """The deterministic work a search has done, in seconds: CP-SAT's deterministic time (its own measure
    of work, the same on any machine under any load) plus VISIT_WORK_S per structure visited. Search limits
    are on this, never on the wall clock, so the plans found never depend on the machine's load."""

    VISIT_WORK_S = 1e-3   # a visited structure's memory test, bound and greedy layout: about 1 ms of Python

    def __init__(self) -> None:
        self.spent = 0.0


def solve_layout(sc: Stages, cap: int | None, free: bool, time_limit_s: float = 10.0,
                 hint: Layout | None = None, meter: WorkMeter | None = None) -> Layout | None:
    """Best layout for one structure, or None when none fits. `free`: R_i may be chosen (block recompute).
    `time_limit_s` is in CP-SAT deterministic seconds (WorkMeter), which `meter` accumulates."""
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
    solver.parameters.max_deterministic_time = max(0.001, time_limit_s)
    status = solver.Solve(mdl)
    if meter is not None:
        meter.spent += solver.deterministic_time
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None
    Ls = [int(solver.Value(x)) for x in L]
    Rs = [int(solver.Value(x)) for x in R]
    obj = pl.step_scaled(Ls, Rs)
    bound = solver.BestObjectiveBound()
    optimal = status == cp_model.OPTIMAL
    gap = 0.0 if optimal else max(0.0, (obj - bound) / obj)
    return Layout(Ls, Rs, obj, optimal=optimal, gap=gap)
