"""Whole-run estimates: training FLOPs, GPU-hours, days, dollars and energy of a training run.

Training FLOPs ~ 6 N D, or 8 N D with full recompute (Kaplan et al. 2020; seed article 000); MoE models
count active parameters. Time at a model-FLOPs utilisation u on n GPUs of dense peak P:
GPU-seconds = FLOPs / (P u). Cost = GPU-hours x price per GPU-hour; energy = GPU-hours x the server's power
per GPU (TDP x SERVER_POWER_PER_GPU_TDP) x PUE.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from costmodels.flops import training_flops
from costmodels.model import ModelSpec
from hardware import Cluster, GPUSpec

HOURS_PER_DAY = 24.0
# Taken: a GPU server draws about 1.8x its GPUs' TDP at full load (CPUs, memory, NICs, fans, power
# conversion): NVIDIA DGX H100 datasheet, 10.2 kW max for 8 x 700 W GPUs (1.82x); DGX B200, 14.3 kW max for
# 8 x 1000 W (1.79x); DGX A100, 6.5 kW max for 8 x 400 W (2.03x). The network switches are left out.
SERVER_POWER_PER_GPU_TDP = 1.8
# Taken: the average annual PUE of data centres, Uptime Institute Global Data Center Survey 2024 (1.56);
# hyperscale fleets report about 1.1 (Google 2023: 1.10): give --pue for your site.
DEFAULT_PUE = 1.56


class RunEstimate(BaseModel):
    """A whole training run on one cluster. Units in the field names."""
    model_config = ConfigDict(extra="forbid")
    model: str
    gpu: str
    num_gpus: int
    tokens: float
    training_flops: float            # 6ND (model FLOPs)
    hardware_flops: float            # 8ND when the plan recomputes every layer
    mfu: float
    mfu_source: str                  # "given" or the plan it came from
    gpu_hours: float
    gpu_days: float
    days: float                      # wall clock on num_gpus GPUs
    price_usd_per_gpu_hour: float
    price_kind: str                  # on-demand, specialist cloud / hyperscaler / assumption / user override
    cost_usd: float
    tdp_w: float
    server_w_per_gpu: float          # TDP x SERVER_POWER_PER_GPU_TDP: the GPU's share of its server's draw
    pue: float
    energy_kwh: float


def estimate_run(model: ModelSpec, gpu: GPUSpec, num_gpus: int, tokens: float, mfu: float, precision: str,
                 *, full_recompute: bool = False, pue: float = DEFAULT_PUE, mfu_source: str = "given") -> RunEstimate:
    """Whole-run figures at a given MFU (seed article 000: 175B x 300B tokens at 46.2% of 312 TFLOP/s
    is ~607k A100-hours)."""
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu {mfu} is not allowed; give a share of peak in (0, 1], e.g. 0.462")
    if not tokens > 0 or tokens > 1e16:
        raise ValueError(f"tokens {tokens:g} is not allowed; give a positive count up to 1e16, e.g. 300e9")
    if pue < 1:
        raise ValueError(f"pue {pue} is not allowed; power usage effectiveness is >= 1 (e.g. 1.1)")
    flops = training_flops(model, tokens)
    peak = gpu.peak_tflops(precision) * 1e12
    gpu_hours = flops / (peak * mfu) / 3600.0
    return RunEstimate(
        model=model.name, gpu=gpu.name, num_gpus=num_gpus, tokens=tokens, training_flops=flops,
        hardware_flops=training_flops(model, tokens, full_recompute=full_recompute), mfu=mfu,
        mfu_source=mfu_source, gpu_hours=gpu_hours, gpu_days=gpu_hours / HOURS_PER_DAY,
        days=gpu_hours / num_gpus / HOURS_PER_DAY, price_usd_per_gpu_hour=gpu.price_usd_per_gpu_hour,
        price_kind=gpu.price_kind,
        tdp_w=gpu.tdp_w, server_w_per_gpu=gpu.tdp_w * SERVER_POWER_PER_GPU_TDP, pue=pue,
        **_cost_energy(gpu_hours, gpu, pue))


def _cost_energy(gpu_hours: float, gpu: GPUSpec, pue: float) -> dict[str, float]:
    """Dollars (GPU-hours x price) and kWh (GPU-hours x the server's power per GPU x PUE) of GPU-hours on one
    GPU type."""
    return {"cost_usd": gpu_hours * gpu.price_usd_per_gpu_hour,
            "energy_kwh": gpu_hours * gpu.tdp_w * SERVER_POWER_PER_GPU_TDP / 1000.0 * pue}


def estimate_for_cluster(model: ModelSpec, cluster: Cluster, tokens: float, *, mfu: float | None = None,
                         precision: str | None = None, pue: float = DEFAULT_PUE, **search_kw) -> RunEstimate:
    """As estimate_run; without `mfu`, the MFU of the best plan the planner finds for this cluster."""
    precision = precision or model.precision
    if mfu is not None:
        return estimate_run(model, cluster.gpu, cluster.num_gpus, tokens, mfu, precision, pue=pue)
    from planner.solve.optimize import search

    best = search(model, cluster, precision=precision, top=1, **search_kw).plans[0]
    s = best.strategy
    full = s["recompute"] == "full" and s["recompute_layers"] == s["stage_layers"]
    # the run takes tokens / (the plan's tokens per second); expressed as a utilisation of 6ND FLOPs, so
    # that GPU-hours = 6ND / (peak x mfu) holds (the plan's own MFU also counts attention FLOPs)
    seconds = tokens / best.tokens_per_s
    mfu_6nd = training_flops(model, tokens) / (seconds * cluster.num_gpus * cluster.gpu.peak_tflops(precision) * 1e12)
    source = (f"best plan found: TP {s['tp']} x PP {s['pp']} x DP {s['dp']}"
              + (f" x CP {s['cp']}" if s["cp"] > 1 else "")
              + f", {best.tokens_per_s:,.0f} tokens/s, MFU {best.mfu:.1%} counting attention, {mfu_6nd:.1%} in 6ND terms")
    return estimate_run(model, cluster.gpu, cluster.num_gpus, tokens, mfu_6nd, precision,
                        full_recompute=full, pue=pue, mfu_source=source)


def run_figures(step_time_s: float, tokens_per_step: float, cluster: Cluster | tuple[Cluster, ...],
                tokens: float, pue: float = DEFAULT_PUE) -> dict[str, float]:
    """Days, GPU-hours, dollars and energy of training `tokens` at a plan's step time on `cluster`: the one
    run-cost formula of `plan --tokens`, `plan compare` and the budget search. Wall clock = steps x step
    time; a cluster of several GPU pools adds each pool's GPU-hours at its own price and power."""
    pools = cluster if isinstance(cluster, tuple) else (cluster,)
    seconds = tokens / tokens_per_step * step_time_s
    out = {"days": seconds / 86400.0, "gpu_hours": 0.0, "cost_usd": 0.0, "energy_kwh": 0.0}
    for c in pools:
        gpu_hours = seconds / 3600.0 * c.num_gpus
        out["gpu_hours"] += gpu_hours
        for k, v in _cost_energy(gpu_hours, c.gpu, pue).items():
            out[k] += v
    return out


def add_run_figures(result, model: ModelSpec, cluster: Cluster | tuple[Cluster, ...], tokens: float,
                    pue: float = DEFAULT_PUE) -> None:
    """Set `run` (tokens, days, GPU-hours, $, kWh of the whole run) on every plan of a search result
    (planner.solve.result.SearchResult) for `plan --tokens`."""
    pools = cluster if isinstance(cluster, tuple) else (cluster,)
    prices = {c.gpu.name: {"usd_per_gpu_hour": c.gpu.price_usd_per_gpu_hour, "kind": c.gpu.price_kind,
                           "source": c.gpu.price_source} for c in pools}
    for p in result.plans:
        fig = run_figures(p.step_time_s, p.strategy["global_batch"] * model.seq_len, cluster, tokens, pue)
        p.run = {"tokens": tokens, **fig, "pue": pue, "prices": prices}
