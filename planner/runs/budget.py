"""Compare clusters, and choose GPU type and count under money and time limits.

`compare`: the best plan per cluster with its whole-run time, GPU-hours, dollars and energy.

`choose_hardware`: the GPU type and count (node multiples) that minimise run time under a money budget,
or money under a deadline. The choice is a CP-SAT model with one Boolean per (type, count) block. No plan
of a block runs faster than its model FLOPs at the best share of peak any kernel reaches (calibrated
GEMM or flash attention efficiency): days >= steps x FLOPs / (n x peak x e_max), dollars >= that x n x
price. Unsearched blocks enter the model with these bounds, searched ones (bound-and-solve with the
CP-SAT layout model inside) with their best run; the model is re-solved after each search and stops when
its optimum is a searched block, which is then optimal over all types and counts (lazy evaluation: most
counts are never searched). For a fixed count, cost and time are both proportional to step time, so the
fastest plan of a block is also its cheapest.
"""
from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict

from costmodels.calibration import calibration_for
from costmodels.flops import model_flops_per_step
from costmodels.model import ModelSpec
from hardware import Cluster, GPUSpec
from planner.runs.estimate import DEFAULT_PUE, run_figures
from planner.solve.optimize import NoPlanError, default_global_batch, search
from planner.solve.result import describe_strategy
from planner.solve.solver import cp_model

MAX_NODE_FACTOR_3 = 2  # node counts 2^a x 3^b with b <= 2: 1, 2, 3, 4, 6, 8, 9, 12, 16, 18, 24, ...


class RunPoint(BaseModel):
    """The best plan of one cluster and what the whole run costs on it."""
    model_config = ConfigDict(extra="forbid")
    cluster: str
    gpu: str
    num_gpus: int
    plan: str
    step_time_s: float
    tokens_per_s: float
    mfu: float
    days: float
    gpu_hours: float
    cost_usd: float
    energy_kwh: float
    price_usd_per_gpu_hour: float
    price_kind: str = "unstated"        # the GPU spec's price_kind (hardware/gpu.py)


class CompareResult(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    tokens: float
    rows: list[RunPoint]
    skipped: list[dict]


class BudgetResult(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    tokens: float
    objective: str                    # "time" or "cost"
    budget_usd: float | None
    deadline_days: float | None
    chosen: RunPoint | None
    searched: list[RunPoint]          # blocks searched (the rest were bounded out)
    blocks: int                       # (type, count) blocks in the space
    pareto: list[RunPoint]            # time/cost front over the searched blocks
    message: str | None = None        # when nothing meets the limits: the cheapest and fastest runs


def run_point(model: ModelSpec, cluster: Cluster, tokens: float, pue: float = DEFAULT_PUE, **search_kw) -> RunPoint:
    res = search(model, cluster, top=1, **search_kw)
    p = res.plans[0]
    tokens_per_step = p.strategy["global_batch"] * model.seq_len
    fig = run_figures(p.step_time_s, tokens_per_step, cluster, tokens, pue)
    return RunPoint(cluster=f"{cluster.num_gpus}x{cluster.gpu.name}", gpu=cluster.gpu.name,
                    num_gpus=cluster.num_gpus, plan=describe_strategy(p.strategy), step_time_s=p.step_time_s,
                    tokens_per_s=p.tokens_per_s, mfu=p.mfu, price_usd_per_gpu_hour=cluster.gpu.price_usd_per_gpu_hour,
                    price_kind=cluster.gpu.price_kind,
                    **fig)


def compare(model: ModelSpec, clusters: list[Cluster], tokens: float, pue: float = DEFAULT_PUE, **search_kw) -> CompareResult:
    """The best plan on each cluster, with days, GPU-hours, dollars and kWh for `tokens`."""
    rows, skipped = [], []
    for c in clusters:
        try:
            rows.append(run_point(model, c, tokens, pue, **search_kw))
        except NoPlanError as e:
            skipped.append({"cluster": f"{c.num_gpus}x{c.gpu.name}", "reason": str(e)})
    return CompareResult(model=model.name, tokens=tokens, rows=rows, skipped=skipped)


def node_counts(gpus_per_node: int, max_gpus: int) -> list[int]:
    """GPU counts to consider: whole nodes, 2^a 3^b of them (b <= 2), up to max_gpus."""
    out = set()
    for b in range(MAX_NODE_FACTOR_3 + 1):
        k = 3 ** b
        while k * gpus_per_node <= max_gpus:
            out.add(k * gpus_per_node)
            k *= 2
    return sorted(out)


def pareto_front(points: list[RunPoint]) -> list[RunPoint]:
    """Runs no other run beats on both days and dollars, fastest first."""
    front, best_cost = [], math.inf
    for p in sorted(points, key=lambda q: (q.days, q.cost_usd)):
        if p.cost_usd < best_cost:
            front.append(p)
            best_cost = p.cost_usd
    return front


def choose_hardware(model: ModelSpec, gpu_types: list[GPUSpec], max_gpus: int, tokens: float, *,
                    budget_usd: float | None = None, deadline_days: float | None = None,
                    global_batch: int | None = None, precision: str | None = None, pue: float = DEFAULT_PUE,
                    full_front: bool = False, progress=None, **search_kw) -> BudgetResult:
    """Minimise days under `budget_usd`, or dollars under `deadline_days` (and the budget, if given).
    `progress(cluster, searched)` is told each cluster before its search."""
    objective = "cost" if deadline_days is not None else "time"
    precision = precision or model.precision
    blocks = []
    for gpu in gpu_types:
        cal = calibration_for(gpu.family, gpu.name)
        e_max = max(cal.gemm_efficiency, 2 * cal.attention_efficiency)  # flash runs half the counted FLOPs
        for n in node_counts(gpu.gpus_per_node, max_gpus):
            cluster = Cluster(gpu=gpu, num_nodes=n // gpu.gpus_per_node, gpus_per_node=gpu.gpus_per_node)
            gb = global_batch or default_global_batch(model, cluster)
            steps = tokens / (gb * model.seq_len)
            step_lb = model_flops_per_step(model, gb, model.seq_len) / (n * gpu.peak_tflops(precision) * 1e12 * e_max)
            days_lb = steps * step_lb / 86400.0
            cost_lb = days_lb * 24.0 * n * gpu.price_usd_per_gpu_hour
            blocks.append((days_lb if objective == "time" else cost_lb, days_lb, cost_lb, cluster, gb))
    blocks.sort(key=lambda b: (b[0], b[3].gpu.name, b[3].num_gpus))
    searched: list[RunPoint] = []
    exact: dict[int, RunPoint | None] = {}   # block -> its best run (None: nothing fits)

    def search_block(k: int) -> RunPoint | None:
        if k not in exact:
            _, _, _, cluster, gb = blocks[k]
            if progress is not None:
                progress(cluster.describe(), len(searched))
            try:       # a cluster nothing fits on is skipped: no need for the search's explanation of why
                exact[k] = run_point(model, cluster, tokens, pue, global_batch=gb, precision=precision,
                                     explain=False, **search_kw)
                searched.append(exact[k])
            except NoPlanError:
                exact[k] = None
        return exact[k]

    if full_front:   # the plotted front: 2^k nodes of every type, fastest bound first; a block whose bounds a
        # searched run already beats on both days and dollars cannot join the front and is left unsearched
        for k in sorted(range(len(blocks)), key=lambda j: (blocks[j][1], j)):
            _, days_lb, cost_lb, cluster, _ = blocks[k]
            if cluster.num_nodes & (cluster.num_nodes - 1):
                continue
            if any(p.days <= days_lb and p.cost_usd <= cost_lb for p in searched):
                continue
            search_block(k)
    # CP-SAT chooses the block; blocks not searched yet enter with their bounds, so the model's optimum
    # is a valid bound; when it lands on a searched block, that block is the optimum (lazy evaluation).
    while True:
        k = _choose_block(blocks, exact, objective, budget_usd, deadline_days)
        if k is None:
            chosen = None
            break
        if k in exact:
            chosen = exact[k]
            break
        search_block(k)
    message = None
    if chosen is None:
        message = _no_run_message(model, gpu_types, max_gpus, tokens, budget_usd, deadline_days, global_batch,
                                  precision, pue, searched, search_kw)
    return BudgetResult(model=model.name, tokens=tokens, objective=objective, budget_usd=budget_usd,
                        deadline_days=deadline_days, chosen=chosen, searched=searched, blocks=len(blocks),
                        pareto=pareto_front(searched), message=message)


def _choose_block(blocks, exact: dict, objective: str, budget_usd, deadline_days) -> int | None:
    """The CP-SAT master model: one Boolean per (GPU type, count) block, exactly one chosen. A searched
    block enters with its run's days and dollars, an unsearched one with its lower bounds (so the model's
    optimum bounds the true one); blocks over a limit are left out. Minimise days (or dollars), in
    milliseconds (or cents), preferring searched blocks on ties."""
    mdl = cp_model.CpModel()
    pick = []
    for k, (_, days_lb, cost_lb, cluster, _) in enumerate(blocks):
        known = k in exact
        if known and exact[k] is None:
            continue
        d, c = (exact[k].days, exact[k].cost_usd) if known else (days_lb, cost_lb)
        if (budget_usd is not None and c > budget_usd) or (deadline_days is not None and d > deadline_days):
            continue
        value = d * 86400e3 if objective == "time" else c * 100
        weight = round(value) if known else math.floor(value)   # bounds rounded down stay bounds
        x = mdl.NewBoolVar(f"use_{cluster.num_gpus}x{cluster.gpu.name}")
        pick.append((k, x, 2 * weight + (0 if known else 1)))
    if not pick:
        return None
    mdl.AddExactlyOne(x for _, x, _ in pick).WithName("one_cluster")
    mdl.Minimize(sum(w * x for _, x, w in pick))
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1
    solver.parameters.random_seed = 0
    if solver.Solve(mdl) not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None
    return next(k for k, x, _ in pick if solver.Value(x))


def _no_run_message(model, gpu_types, max_gpus, tokens, budget_usd, deadline_days, global_batch, precision, pue,
                    searched, search_kw) -> str:
    """Nothing meets the limits: say what the cheapest run costs and how fast the fastest run is."""
    cheapest = choose_hardware(model, gpu_types, max_gpus, tokens, global_batch=global_batch, precision=precision,
                               pue=pue, deadline_days=1e12, **search_kw).chosen
    fastest = choose_hardware(model, gpu_types, max_gpus, tokens, global_batch=global_batch, precision=precision,
                              pue=pue, **search_kw).chosen
    if cheapest is None or fastest is None:
        return f"no cluster of up to {max_gpus} GPUs of {', '.join(g.name for g in gpu_types)} fits {model.name}"
    limits = " and ".join(x for x in (f"budget ${budget_usd:,.0f}" if budget_usd is not None else "",
                                      f"deadline {deadline_days:g} days" if deadline_days is not None else "") if x)
    return (f"no run meets the {limits}: the cheapest run costs ${cheapest.cost_usd:,.0f} "
            f"({cheapest.cluster}, {cheapest.days:.1f} days) and the fastest takes {fastest.days:.1f} days "
            f"({fastest.cluster}, ${fastest.cost_usd:,.0f})")
