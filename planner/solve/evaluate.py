"""Evaluate a strategy: (model, strategy, cluster) -> Evaluation, with the stage expression the solver
optimises (planner.solve.stages), so a plan's printed step time is its solver objective to the ns.

The time breakdown adds up by construction: each part is its own term of the step,
  v x step = v m T_k + sum_{i != k} T_i + v Tail   (Pipeline.objective with k the slowest stage),
so m x the slowest stage's parts (StageCoeffs.time_parts_ns, which sum to T_k), the bubble
sum_{i != k} T_i / v, and the tail stage's exposed sync and optimizer step. The memory parts
(StageCoeffs.bytes_parts) sum to the stage's bytes the same way.

The memory verdict: every evaluation carries a Verdict in words ("fits, 1.0 GB to spare on the most loaded
GPU ..." or "does not fit: needs 448.3 GB of 80.0 GB GPU memory on stage 0 of 1 ..."), computed against
each GPU's capacity less the Headroom the user keeps free (parse_headroom reads `--headroom 5%` or
`--headroom 4GB`; the default keeps none extra).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from costmodels.flops import causal_model_flops_per_step, model_flops_per_step
from costmodels.model import ModelSpec
from costmodels.performance import (Evaluation, StageCosts, hardware_flops_per_step, resolve_layout,
                                    stage_costs)
from costmodels.strategy import Strategy
from hardware import Cluster
from planner.errors import PlannerError
from planner.solve.stages import NS, Pipeline, StageCoeffs, coefficients


GB = 1e9


class HeadroomError(PlannerError):
    """A --headroom value that is not a share below 100% or an amount of GB >= 0."""


@dataclass(frozen=True)
class Headroom:
    """GPU memory kept free on every GPU on top of the model's own accounting (which already reserves
    costmodels.performance.FIXED_BUFFER_BYTES, 1 GB, for workspaces, NCCL and allocator slack, and counts
    capacity as the datasheet GB x 1e9 bytes): a fixed amount in bytes, or a share of each GPU's memory
    (so that 5% means 4 GB on an 80 GB GPU and 7.05 GB on a 141 GB one). The default keeps nothing extra."""
    bytes: float = 0.0
    share: float = 0.0

    def of(self, capacity_b: float) -> int:
        """Bytes kept free on a GPU of `capacity_b` bytes (a whole number, rounded up)."""
        return math.ceil(self.bytes + self.share * capacity_b)

    def usable(self, capacity_b: float) -> int:
        """Bytes a plan may use on that GPU: its capacity less this headroom."""
        return int(capacity_b) - self.of(capacity_b)

    def __bool__(self) -> bool:
        return self.bytes > 0 or self.share > 0

    def describe(self) -> str:
        """'none', '4 GB per GPU' or '5% of each GPU's memory'."""
        if self.share > 0:
            return f"{100 * self.share:.3g}% of each GPU's memory"
        return f"{self.bytes / GB:.3g} GB per GPU" if self.bytes > 0 else "none"


_HEADROOM = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(%|GB|GiB|MB|MiB)?\s*$", re.IGNORECASE)
_UNIT_BYTES = {"gb": 1e9, "gib": 2.0 ** 30, "mb": 1e6, "mib": 2.0 ** 20}


def parse_headroom(text: str | None) -> Headroom:
    """Read a headroom: '5%' (a share of each GPU's memory, 0 <= x < 100) or an amount with its unit,
    '4GB', '4 GB', '3.5GiB', '512MB'; '0' or None is no headroom. HeadroomError (a user error) otherwise,
    naming the value and what is allowed."""
    if text is None:
        return Headroom()
    raw = str(text)
    if raw.strip().startswith("-"):
        raise HeadroomError(f"--headroom {raw!r} is negative; give memory to keep free per GPU, e.g. 5% or 4GB")
    m = _HEADROOM.match(raw)
    if not m:
        raise HeadroomError(f"--headroom {raw!r} is not a share or an amount; give e.g. 5% or 4GB (units: %, GB, GiB, "
                            f"MB, MiB)")
    value, unit = float(m.group(1)), (m.group(2) or "").lower()
    if not math.isfinite(value):
        raise HeadroomError(f"--headroom {raw!r} is not a finite number; give e.g. 5% or 4GB")
    if unit == "%":
        if value >= 100:
            raise HeadroomError(f"--headroom {raw!r} would keep the whole GPU free; give a share below 100%, e.g. 5%")
        return Headroom(share=value / 100)
    if not unit:
        if value == 0:
            return Headroom()
        raise HeadroomError(f"--headroom {raw!r} has no unit; give a share (5%) or an amount (4GB)")
    return Headroom(bytes=value * _UNIT_BYTES[unit])


@dataclass(frozen=True)
class Verdict:
    """Whether a plan fits, in numbers and in words: GPU memory of the binding stage (the one using the
    largest share of what it may use: capacity less headroom) and, with offloaded states, host memory per
    GPU (the stage furthest over its share, if any is)."""
    fits: bool                 # GPU memory and host memory both fit
    gpu_fits: bool             # the binding stage's peak is at most its GPU's capacity less the headroom
    stage: int                 # the binding pipeline stage
    gpu: str                   # its GPU type
    need_b: float              # its peak GPU memory per GPU
    capacity_b: float          # its GPU's memory
    headroom_b: float          # kept free on that GPU (Headroom.of)
    stages: int                # pipeline stages
    pools: bool = False        # stages run on several GPU types
    host_stage: int | None = None        # the stage over its host share (None: host memory fits)
    host_need_b: float = 0.0             # offloaded bytes per GPU on that stage
    host_capacity_b: float = 0.0         # host memory per GPU (node's host memory / GPUs per node)

    @property
    def spare_b(self) -> float:
        """GPU memory left on the binding stage's GPUs after the headroom; negative when over."""
        return self.capacity_b - self.headroom_b - self.need_b

    def text(self) -> str:
        """'fits, 1.0 GB to spare on ...' or 'does not fit: needs X GB of Y GB on stage k ...'."""
        after = f" after {_gb(self.headroom_b)} GB headroom" if self.headroom_b > 0 else ""
        if self.fits:
            where = f"stage {self.stage} of {self.stages}" + (f" on {self.gpu}" if self.pools else "")
            return (f"fits, {_gb(self.spare_b)} GB to spare{after} on the most loaded GPU ({where}: "
                    f"peak {_gb(self.need_b)} GB of {_gb(self.capacity_b)} GB)")
        problems = []
        if not self.gpu_fits:
            usable = self.capacity_b - self.headroom_b
            need, have = _gb_pair(self.need_b, usable)
            where = f"stage {self.stage} of {self.stages} ({self.gpu}"
            where += (f": {_gb(self.capacity_b)} GB less {_gb(self.headroom_b)} GB headroom)" if self.headroom_b > 0
                      else ")")
            problems.append(f"needs {need} GB of {have} GB GPU memory on {where}")
        if self.host_stage is not None:
            need, have = _gb_pair(self.host_need_b, self.host_capacity_b)
            problems.append(f"needs {need} GB of {have} GB host memory per GPU for offloaded states on stage "
                            f"{self.host_stage} of {self.stages}")
        return "does not fit: " + "; and ".join(problems)


def _gb(b: float) -> str:
    return f"{b / GB:.1f}"


def _gb_pair(need: float, have: float) -> tuple[str, str]:
    """Two amounts in GB with enough decimals that a need just over what there is does not print equal."""
    for digits in (1, 2, 3):
        a, b = f"{need / GB:.{digits}f}", f"{have / GB:.{digits}f}"
        if a != b:
            break
    return a, b


@dataclass(frozen=True)
class PlanEvaluation(Evaluation):
    """An Evaluation with its memory verdict (what `evaluate*` here return)."""
    verdict: Verdict | None = None


def memory_verdict(pl: Pipeline, gpus: list, Ls: list[int], Rs: list[int]) -> Verdict:
    """The verdict of a layout on pipeline `pl`, whose caps are the bytes each stage may use (its GPU's
    capacity less the headroom): the binding stage is the one using the largest share of what it may use
    (the one furthest over when any is), the stage the memory table shows; host memory is checked against
    each stage's host share."""
    p = pl.p
    mem = [pl.stage_bytes(i, L, R) for i, (L, R) in enumerate(zip(Ls, Rs))]
    k = max(range(p), key=lambda i: (mem[i] / max(pl.caps[i], 1), -i))
    host = [(pl.host_bytes(i, L), pl.stages[i].host_cap_b) for i, L in enumerate(Ls)]
    host_over = [i for i in range(p) if host[i][0] > host[i][1]]
    h = max(host_over, key=lambda i: (host[i][0] / max(host[i][1], 1), -i)) if host_over else None
    cap, gpu_fits = gpus[k].memory_bytes, mem[k] <= pl.caps[k]
    return Verdict(fits=gpu_fits and h is None, gpu_fits=gpu_fits, stage=k, gpu=gpus[k].name, need_b=float(mem[k]),
                   capacity_b=float(cap), headroom_b=float(int(cap) - pl.caps[k]), stages=p,
                   pools=len({g.name for g in gpus}) > 1, host_stage=h,
                   host_need_b=float(host[h][0]) if h is not None else 0.0,
                   host_capacity_b=float(host[h][1]) if h is not None else 0.0)


def evaluate(model: ModelSpec, st: Strategy, cluster: Cluster,
             sc: StageCosts | StageCoeffs | None = None, headroom: Headroom | None = None) -> PlanEvaluation:
    """Predict step time, throughput, utilisation and per-GPU memory of `st` (rules checked by caller);
    `fits` and the verdict keep `headroom` free on every GPU."""
    sc = sc or stage_costs(model, st, cluster)
    Ls, Rs = resolve_layout(model, st)
    return evaluate_layout(model, st, cluster, sc, Ls, Rs, headroom)


def evaluate_layout(model: ModelSpec, st: Strategy, cluster: Cluster, sc: StageCosts | StageCoeffs,
                    Ls: list[int], Rs: list[int], headroom: Headroom | None = None) -> PlanEvaluation:
    """Evaluate a layout on one GPU type."""
    pl = Pipeline.uniform(sc, (headroom or Headroom()).usable(cluster.gpu.memory_bytes))
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
    # what torch.cuda.max_memory_allocated would show (the peak itself estimates max_memory_reserved)
    parts["allocated"] = float(sc.allocated_bytes(i, L, R))
    parts["host_offload"] = float(sc.host_bytes(i, L))
    return parts


def evaluate_pipeline(model: ModelSpec, st: Strategy, pl: Pipeline, gpus: list, Ls: list[int],
                      Rs: list[int]) -> PlanEvaluation:
    """Evaluate a layout whose stages may sit on different GPU types (gpus[i] runs stage i); `pl.caps` are
    the bytes each stage may use (its GPU's capacity less any headroom)."""
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
    km = max(range(p), key=lambda i: (mem[i] / max(pl.caps[i], 1), -i))
    return PlanEvaluation(
        strategy=st,
        step_time_s=step,
        tokens_per_s=tokens / step,
        model_flops=mflops,
        hardware_flops=hflops,
        mfu=mflops / step / peak,
        mfu_causal=causal_model_flops_per_step(model, st.global_batch, model.seq_len) / step / peak,
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
        verdict=memory_verdict(pl, gpus, Ls, Rs),
    )
