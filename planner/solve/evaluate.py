"""Evaluate a strategy: (model, strategy, cluster) -> Evaluation, with the stage expression the solver
optimises (planner.solve.stages), so a plan's printed step time is its solver objective to the ns.

The time breakdown adds up by construction: each part is its own term of the step,
  v x step = v m T_k + sum_{i != k} T_i + v Tail   (Pipeline.objective with k the slowest stage),
so m x the slowest stage's parts (StageCoeffs.time_parts_ns, which sum to T_k), the bubble
sum_{i != k} T_i / v, and the tail stage's exposed sync and optimizer step. The memory parts
(StageCoeffs.bytes_parts) sum to the stage's bytes the same way.
"""
from __future__ import annotations

from costmodels.flops import model_flops_per_step
from costmodels.model import ModelSpec
from costmodels.performance import (Evaluation, StageCosts, hardware_flops_per_step, resolve_layout,
                                    stage_costs)
from costmodels.strategy import Strategy
from hardware import Cluster
from planner.solve.stages import NS, Pipeline, StageCoeffs, coefficients


def evaluate(model: ModelSpec, st: Strategy, cluster: Cluster,
             sc: StageCosts | StageCoeffs | None = None) -> Evaluation:
    """Predict step time, throughput, utilisation and per-GPU memory of `st` (rules checked by caller)."""
    sc = sc or stage_costs(model, st, cluster)
    Ls, Rs = resolve_layout(model, st)
    return evaluate_layout(model, st, cluster, sc, Ls, Rs)


def evaluate_layout(model: ModelSpec, st: Strategy, cluster: Cluster, sc: StageCosts | StageCoeffs,
                    Ls: list[int], Rs: list[int]) -> Evaluation:
    """Evaluate a layout on one GPU type."""
    pl = Pipeline.uniform(sc, int(cluster.gpu.memory_bytes))
    return evaluate_pipeline(model, st, pl, [cluster.gpu] * st.pp, Ls, Rs)


def time_breakdown(pl: Pipeline, Ls: list[int], Rs: list[int]) -> tuple[int, dict[str, float], list[int]]:
    """(slowest stage k, the step's seconds by part, each stage's ns per micro-batch); the parts sum to
    the step time Pipeline.step_scaled / v, each from its own term (none is a remainder)."""
    p, m, v = pl.p, pl.m, pl.v
    times = [pl.stage_ns(i, L, R) for i, (L, R) in enumerate(zip(Ls, Rs))]
    tails = [pl.stage_tail_ns(i, L) for i, L in enumerate(Ls)]
    k = max(range(p), key=lambda i: (times[i], -i))
    time_s = {key: m * x * NS for key, x in pl.stages[k].time_parts_ns(k, Ls[k], Rs[k]).items()}
    j = max(range(p), key=lambda i: (tails[i], -i))
    sj = pl.stages[j]
    time_s["dp_comm"] += sj.exposed_sync_ns(j, Ls[j]) * NS
    time_s["optimizer"] = sj.optimizer_ns(j, Ls[j]) * NS
    time_s["bubble"] = (sum(times) - times[k]) / v * NS
    return k, time_s, times


def memory_anatomy(sc: StageCoeffs | StageCosts, i: int, L: int, R: int) -> dict[str, float]:
    """Bytes on one GPU of stage i by part; the GPU parts sum to the peak (StageCoeffs.stage_bytes)."""
    sc = sc if isinstance(sc, StageCoeffs) else coefficients(sc)
    parts = {key: float(x) for key, x in sc.bytes_parts(i, L, R, 1 if R > 0 else 0).items()}
    parts["peak"] = float(sc.stage_bytes(i, L, R))
    parts["host_offload"] = float(sc.host_bytes(i, L))
    return parts


def evaluate_pipeline(model: ModelSpec, st: Strategy, pl: Pipeline, gpus: list, Ls: list[int],
                      Rs: list[int]) -> Evaluation:
    """Evaluate a layout whose stages may sit on different GPU types (gpus[i] runs stage i)."""
    p = st.pp
    k, time_s, times = time_breakdown(pl, Ls, Rs)
    step = pl.step_scaled(Ls, Rs) / pl.v * NS
    tokens = st.global_batch * model.seq_len
    mflops = model_flops_per_step(model, st.global_batch, model.seq_len)
    hflops = hardware_flops_per_step(model, st, sum(Rs))
    n = st.num_gpus
    per_stage = n // p
    peak = sum(per_stage * g.peak_tflops(st.precision) * 1e12 for g in gpus)
    mem = [pl.stage_bytes(i, L, R) for i, (L, R) in enumerate(zip(Ls, Rs))]
    km = max(range(p), key=lambda i: (mem[i] / pl.caps[i], -i))
    return Evaluation(
        strategy=st,
        step_time_s=step,
        tokens_per_s=tokens / step,
        model_flops=mflops,
        hardware_flops=hflops,
        mfu=mflops / step / peak,
        hfu=hflops / step / peak,
        tflops_per_gpu=mflops / step / n / 1e12,
        time_s=time_s,
        memory_b=memory_anatomy(pl.stages[km], km, Ls[km], Rs[km]),
        stage_memory_b=[float(x) for x in mem],
        stage_layers=Ls,
        recompute_layers=Rs,
        capacity_b=float(gpus[km].memory_bytes),
        fits=all(pl.stage_fits(i, L, R) for i, (L, R) in enumerate(zip(Ls, Rs))),
        bottleneck_stage=k,
        stage_gpus=[g.name for g in gpus],
        stage_time_s=[t * NS for t in times],
    )
