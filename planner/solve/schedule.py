"""The pipeline schedule of one training step, op by op: what every stage runs when, and where it idles.

The planner prices a step with the closed form of Narayanan et al. 2021 (sections 2.2 and 2.2.2;
planner.solve.stages.objective_value). This module lays the same per-stage costs out in time, for a user to
see why a plan wins: each stage runs its micro-batches' forward and backward passes (of each model chunk, when
interleaved) in Megatron-core's order (megatron/core/pipeline_parallel/schedules.py: warm-up forwards, one
forward one backward, cool-down backwards; all forwards then all backwards under GPipe), each op waiting for
the op before it on its stage and for the same micro-batch's op on the neighbouring stage. Then the
data-parallel sync and the optimizer step. The makespan of the drawn schedule is reported beside the priced
step time; on stages of equal cost they agree exactly, on unequal ones the closed form is the larger (part of
the other stages' work hides under the slowest stage's: 3% for Llama 3 70B with 20 recomputed layers on its
first stage of four).

A stage's cost per micro-batch (planner.solve.stages.StageCoeffs.time_parts_ns) splits into forward and
backward in the ratio of a layer's forward to its backward work (costmodels.performance.LayerTimes); recomputed
work runs at the start of the backward, the pipeline send / receive at the end of each op.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from costmodels.model import ModelSpec
from costmodels.performance import resolve_layout, stage_costs
from costmodels.strategy import Strategy
from hardware import Cluster
from planner.solve.evaluate import evaluate, memory_anatomy
from planner.solve.stages import NS, coefficients

KINDS = ("forward", "backward", "recompute", "send_recv", "dp_sync_optimizer")


@dataclass(frozen=True)
class Segment:
    start_s: float
    duration_s: float
    kind: str            # one of KINDS
    micro_batch: int     # -1 for the step's tail
    chunk: int           # model chunk (interleaved 1F1B), 0 otherwise


@dataclass
class PipelineSchedule:
    stages: list[list[Segment]]                 # per pipeline stage, in time order
    stage_memory_gb: list[dict[str, float]]     # per stage: its parts (planner.solve.stages.BYTE_PARTS), GB
    capacity_gb: float
    makespan_s: float                           # the drawn schedule's end
    step_time_s: float                          # the priced step time (planner.solve.evaluate)
    micro_batches: int
    virtual_stages: int
    schedule: str                               # "1f1b", "interleaved 1F1B", "gpipe", ...
    notes: list[str] = field(default_factory=list)

    def busy_s(self, stage: int) -> float:
        return sum(s.duration_s for s in self.stages[stage])


def op_order(p: int, m: int, v: int, stage: int, gpipe: bool = False) -> list[tuple[str, int, int]]:
    """("F" | "B", chunk, micro-batch) in the order stage `stage` runs them (Megatron-core's schedules.py:
    forward_backward_pipelining_without_interleaving / _with_interleaving; GPipe: all forwards first)."""
    total = m * v

    def fwd(k: int) -> tuple[int, int]:
        return (k % (p * v)) // p, (k // (p * v)) * p + k % p

    def bwd(k: int) -> tuple[int, int]:
        c, i = fwd(k)
        return v - 1 - c, i

    if gpipe:
        return [("F", *fwd(k)) for k in range(total)] + [("B", *bwd(k)) for k in range(total)]
    warm = min((p - stage - 1) if v == 1 else (p - stage - 1) * 2 + (v - 1) * p, total)
    ops = [("F", *fwd(k)) for k in range(warm)]
    f, b = warm, 0
    while f < total:
        ops += [("F", *fwd(f)), ("B", *bwd(b))]
        f, b = f + 1, b + 1
    ops += [("B", *bwd(k)) for k in range(b, total)]
    return ops


def simulate(fwd_s: list[float], bwd_s: list[float], m: int, v: int, gpipe: bool = False) -> list[list[tuple]]:
    """(start, end, op, chunk, micro-batch) per stage: each stage runs op_order, an op starting when the stage
    is free and the op it depends on (the previous position of the virtual pipeline for a forward, the next
    for a backward, its own forward at the last position) has ended. fwd_s / bwd_s: one chunk's op, per stage."""
    p = len(fwd_s)
    orders = [op_order(p, m, v, s, gpipe) for s in range(p)]
    done: dict[tuple, float] = {}
    out: list[list[tuple]] = [[] for _ in range(p)]
    nxt, free = [0] * p, [0.0] * p
    last = v * p - 1
    progress = True
    while progress:
        progress = False
        for s in range(p):
            while nxt[s] < len(orders[s]):
                op, c, i = orders[s][nxt[s]]
                pos = c * p + s
                if op == "F":
                    dep = ("F", (pos - 1) // p, (pos - 1) % p, i) if pos > 0 else None
                else:
                    dep = ("B", (pos + 1) // p, (pos + 1) % p, i) if pos < last else ("F", c, s, i)
                if dep is not None and dep not in done:
                    break
                start = max(free[s], done[dep] if dep is not None else 0.0)
                end = start + (fwd_s[s] if op == "F" else bwd_s[s])
                done[(op, c, s, i)] = end
                out[s].append((start, end, op, c, i))
                free[s], nxt[s] = end, nxt[s] + 1
                progress = True
    if any(n < len(o) for n, o in zip(nxt, orders)):     # an order that waits on itself: a fault here, not input
        raise RuntimeError(f"pipeline schedule deadlocked at ops {nxt} of {[len(o) for o in orders]}")
    return out


def pipeline_schedule(model: ModelSpec, st: Strategy, cluster: Cluster) -> PipelineSchedule:
    """The schedule of one step of `st` on one GPU type (the plan's own layout and costs)."""
    sc = stage_costs(model, st, cluster)
    co = coefficients(sc)
    Ls, Rs = resolve_layout(model, st)
    lt = sc.layer
    fwd_work = lt.compute_fwd + lt.tp_fwd
    share = fwd_work / max(fwd_work + lt.compute_bwd + lt.tp_bwd, 1e-30)
    p, m, v = st.pp, sc.m, sc.v
    parts = [co.time_parts_ns(i, L, R) for i, (L, R) in enumerate(zip(Ls, Rs))]
    recompute = [x["recompute"] * NS for x in parts]
    send = [x["pp_comm"] * NS for x in parts]
    work = [sum(x.values()) * NS - r - c for x, r, c in zip(parts, recompute, send)]
    fwd = [(w * share + c / 2) / v for w, c in zip(work, send)]
    bwd = [(w * (1 - share) + r + c / 2) / v for w, r, c in zip(work, recompute, send)]
    gpipe = st.pipeline_schedule == "gpipe"
    ops = simulate(fwd, bwd, m, v, gpipe)
    stages: list[list[Segment]] = []
    for s in range(p):
        segs = []
        for start, end, op, c, i in ops[s]:
            half = send[s] / 2 / v
            if op == "F":
                segs += [Segment(start, end - start - half, "forward", i, c), Segment(end - half, half, "send_recv", i, c)]
            else:
                r = recompute[s] / v
                segs += [Segment(start, r, "recompute", i, c), Segment(start + r, end - start - r - half, "backward", i, c),
                         Segment(end - half, half, "send_recv", i, c)]
        tail = co.stage_tail_ns(s, Ls[s]) * NS
        end = max(e for _, e, *_ in ops[s])
        segs.append(Segment(end, tail, "dp_sync_optimizer", -1, 0))
        stages.append([x for x in segs if x.duration_s > 0])
    makespan = max(seg.start_s + seg.duration_s for segs in stages for seg in segs)
    ev = evaluate(model, st, cluster, sc)
    mem = [{k: x / 1e9 for k, x in memory_anatomy(co, i, L, R).items()} for i, (L, R) in enumerate(zip(Ls, Rs))]
    name = {"gpipe": "GPipe", "dualpipe": "DualPipe"}.get(st.pipeline_schedule,
                                                           "interleaved 1F1B" if v > 1 else "1F1B")
    notes = []
    if st.pipeline_schedule == "dualpipe":
        notes.append("DualPipe is drawn, and priced, as 1F1B (its bubble as an upper bound)")
    return PipelineSchedule(stages=stages, stage_memory_gb=mem, capacity_gb=cluster.gpu.memory_bytes / 1e9,
                            makespan_s=makespan, step_time_s=ev.step_time_s, micro_batches=m, virtual_stages=v,
                            schedule=name, notes=notes)
