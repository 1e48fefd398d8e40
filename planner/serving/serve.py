"""`plan serve`: the inference serving plan, and the serving/v1 predictions of `plan validate`.

serve_plan() enumerates every replica shape (tp x pp, expert parallel for MoE), weight and KV-cache
precision, replica count and batch size as numpy arrays (costmodels.serving evaluates all batch sizes of a
shape at once) and keeps the best plan within the latency limits: the most tokens/s per GPU (throughput),
the lowest request latency (latency) or the lowest $ per million tokens (cost). The enumeration is exhaustive
over a finite space, so the plan is exact for the model; docs/serving.md says why this beats CP-SAT here.
"""
from __future__ import annotations

import math
import time
from dataclasses import replace as dc_replace
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from costmodels.calibration import SERVING, ServingCalibration, calibration_for
from costmodels.model import ModelSpec
from costmodels.serving import (BYTES, Deployment, ServingError, check_deployment, compute_precision,
                                kv_bytes_per_token_per_gpu, kv_cache_bytes_per_token, max_batch, memory_anatomy,
                                replica_performance, usd_per_million_tokens)
from hardware import Cluster, GPUSpec
from planner.solve.result import ClusterOut, ModelOut, cluster_out, model_out

GB = 1e9
BATCH_CAP = 4096                    # largest batch searched (engines' CUDA-graph sizes stop at 4096-8192)
SEARCH_WEIGHTS = ("bf16", "fp8", "int8", "int4")
SEARCH_KV = ("bf16", "fp8")
OBJECTIVES = ("throughput", "latency", "cost")
_PRECISION_RANK = {"bf16": 0, "fp16": 0, "fp8": 1, "int8": 2, "int4": 3}   # ties go to the more precise


class ServeError(ValueError):
    """No plan: one line saying what is missing (memory, latency, throughput) and what would work."""


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServePlan(_Out):
    rank: int
    tp: int
    pp: int
    ep: int
    replicas: int
    gpus: int                          # GPUs the plan uses (tp x pp x replicas)
    weights: str
    kv_cache: str
    batch: int                         # concurrent sequences per replica (vLLM --max-num-seqs)
    max_batch: int                     # most sequences of prompt + output tokens that fit per replica
    ttft_s: float
    tpot_s: float
    e2e_latency_s: float               # ttft + (output - 1) x tpot
    tokens_per_s: float                # generated tokens/s, all replicas
    tokens_per_s_per_replica: float
    tokens_per_s_per_gpu: float
    requests_per_s: float
    usd_per_million_tokens: float
    usd_per_1k_tokens: float
    kv_cache_bytes_per_token: float    # whole model, this plan's KV precision
    kv_cache_bytes_per_token_per_gpu: float
    memory_gb: dict[str, float]        # one GPU of the fullest stage
    decode_ms: dict[str, float]        # one decode step (time per output token) by cause
    decode_bound: str                  # "memory" (weights + KV reads) or "compute"


class ServeResult(_Out):
    model: ModelOut
    cluster: ClusterOut
    request: dict
    assumptions: dict
    # the best plan's headline figures (the same values as plan.*)
    ttft_s: float
    tpot_s: float
    tokens_per_s: float
    tokens_per_s_per_gpu: float
    usd_per_million_tokens: float
    kv_cache_bytes_per_token: float
    plan: ServePlan
    alternatives: list[ServePlan]
    search: dict
    vllm_command: str


# ---- the search ---------------------------------------------------------------------------------------
def _pow2_upto(n: int) -> list[int]:
    out, x = [], 1
    while x <= n:
        out.append(x)
        x *= 2
    return out


def _shapes(model: ModelSpec, cluster: Cluster, tp_fixed: int | None, pp_fixed: int | None) -> list[tuple[int, int]]:
    n, gpn = cluster.num_gpus, cluster.gpus_per_node
    tps = [tp_fixed] if tp_fixed else [t for t in _pow2_upto(min(n, gpn)) if model.heads % t == 0]
    out = []
    for tp in tps:
        pps = [pp_fixed] if pp_fixed else _pow2_upto(n // tp)
        for pp in pps:
            if tp * pp <= n and n % (tp * pp) == 0 and pp <= model.layers and model.heads % tp == 0:
                out.append((tp, pp))
    return out


def serve_plan(model: ModelSpec, cluster: Cluster, prompt: int, output: int, *, qps: float | None = None,
               batch: int | None = None, ttft_ms: float | None = None, tpot_ms: float | None = None,
               weights: str | None = None, kv_cache: str | None = None, tp: int | None = None,
               pp: int | None = None, objective: str = "throughput", gpu_memory_utilization: float | None = None,
               top: int = 3, model_note: str | None = None) -> ServeResult:
    """The best serving plan for `prompt` tokens in and `output` tokens out per request on `cluster`.

    qps: requests per second to serve (else: as many as the GPUs can); batch / tp / pp / weights / kv_cache
    fix that choice; ttft_ms / tpot_ms are upper limits. Raises ServeError when no plan exists."""
    _check_request(model, prompt, output, qps, batch, ttft_ms, tpot_ms, objective, gpu_memory_utilization, tp, pp,
                   cluster)
    srv = SERVING if gpu_memory_utilization is None else dc_replace(SERVING,
                                                                    gpu_memory_utilization=gpu_memory_utilization)
    gpu, gpn = cluster.gpu, cluster.gpus_per_node
    t0 = time.perf_counter()
    wlist = [weights] if weights else list(SEARCH_WEIGHTS)
    kvlist = [kv_cache] if kv_cache else list(SEARCH_KV)
    ctx = prompt + output
    price = gpu.price_usd_per_gpu_hour
    cands: list[dict] = []
    evaluated = 0
    fits_any = False
    best_batch_fit = 0
    for tp_, pp_ in _shapes(model, cluster, tp, pp):
        eps = [1, tp_] if (model.moe is not None and tp_ > 1) else [1]
        for w in wlist:
            for kv in kvlist:
                for ep in eps:
                    dep = Deployment(tp=tp_, pp=pp_, weights=w, kv=kv, ep=ep)
                    bmax = max_batch(model, gpu, dep, ctx, srv)
                    if bmax < 1:
                        continue
                    fits_any = True
                    best_batch_fit = max(best_batch_fit, bmax)
                    if batch is not None and batch > bmax:
                        continue
                    bs = np.array([batch]) if batch is not None else np.arange(1, min(bmax, BATCH_CAP) + 1)
                    perf = replica_performance(model, gpu, gpn, dep, bs, prompt, output, srv=srv)
                    evaluated += len(bs)
                    c = _best_for_shape(dep, bs, perf, cluster.num_gpus, output, qps, ttft_ms, tpot_ms, objective,
                                        price)
                    if c is not None:
                        c.update(dep=dep, bmax=bmax, perf=perf)
                        cands.append(c)
    seconds = time.perf_counter() - t0
    if not cands:
        raise ServeError(_why_none(model, cluster, prompt, output, qps, batch, ttft_ms, tpot_ms, weights, kv_cache,
                                   tp, pp, srv, fits_any, best_batch_fit))
    cands.sort(key=lambda c: c["key"])
    plans = [_plan_out(i + 1, c, model, cluster, prompt, output, srv) for i, c in enumerate(cands[:top])]
    best = plans[0]
    request = {"prompt_tokens": prompt, "output_tokens": output, "qps": qps, "batch": batch, "ttft_ms": ttft_ms,
               "tpot_ms": tpot_ms, "weights": weights, "kv_cache": kv_cache, "tp": tp, "pp": pp, "objective": objective}
    return ServeResult(
        model=model_out(model, model_note), cluster=cluster_out(cluster), request=request,
        assumptions=assumptions(srv, gpu),
        ttft_s=best.ttft_s, tpot_s=best.tpot_s, tokens_per_s=best.tokens_per_s,
        tokens_per_s_per_gpu=best.tokens_per_s_per_gpu, usd_per_million_tokens=best.usd_per_million_tokens,
        kv_cache_bytes_per_token=best.kv_cache_bytes_per_token, plan=best, alternatives=plans[1:],
        search={"method": "exhaustive numpy enumeration (exact over the space)", "configurations": len(cands),
                "points_evaluated": evaluated, "batch_cap": BATCH_CAP, "seconds": round(seconds, 4)},
        vllm_command=vllm_command(model, best, prompt, output, srv.gpu_memory_utilization))


def _best_for_shape(dep: Deployment, bs: np.ndarray, perf, num_gpus: int, output: int, qps, ttft_ms, tpot_ms,
                    objective: str, price: float) -> dict | None:
    """The best (batch, replicas) of one replica shape: every batch at once, replicas 1..max with qps."""
    ok = np.ones(len(bs), dtype=bool)
    if ttft_ms is not None:
        ok &= perf.ttft_s <= ttft_ms / 1e3
    if tpot_ms is not None:
        ok &= perf.tpot_s <= tpot_ms / 1e3
    rmax = num_gpus // dep.gpus
    e2e = perf.ttft_s + max(output - 1, 0) * perf.tpot_s
    best = None
    replica_counts = range(1, rmax + 1) if qps is not None else [rmax]
    for r in replica_counts:
        cond = ok.copy()
        if qps is not None:   # smallest batch whose throughput serves qps / r requests per second per replica
            cond &= perf.tokens_per_s / output >= qps / r
            if not cond.any():
                continue
            idx = [int(np.argmax(cond))]
        else:
            if not cond.any():
                return None
            idx = np.flatnonzero(cond)
        idx = np.asarray(idx)
        gpus = r * dep.gpus
        tps = r * perf.tokens_per_s[idx]
        if objective == "throughput":
            score = -tps / gpus
        elif objective == "latency":
            score = e2e[idx]
        else:
            score = usd_per_million_tokens(price, gpus, tps)
        j = int(np.argmin(score))   # first (smallest batch) among equals
        i = int(idx[j])
        key = (round(float(score[j]), 12), gpus, _PRECISION_RANK[dep.weights], _PRECISION_RANK[dep.kv], dep.gpus,
               dep.pp, dep.ep, int(bs[i]))
        if best is None or key < best["key"]:
            best = {"key": key, "i": i, "replicas": r}
    return best


def _plan_out(rank: int, c: dict, model: ModelSpec, cluster: Cluster, prompt: int, output: int,
              srv: ServingCalibration) -> ServePlan:
    dep, perf, i, r = c["dep"], c["perf"], c["i"], c["replicas"]
    gpu = cluster.gpu
    b = int(perf.batch[i])
    tps_rep = float(perf.tokens_per_s[i])
    gpus = r * dep.gpus
    tps = r * tps_rep
    usd_m = float(usd_per_million_tokens(gpu.price_usd_per_gpu_hour, gpus, tps))
    mem = memory_anatomy(model, gpu, dep, b, prompt + output, srv)
    memory = {"capacity": mem.capacity, "usable": mem.usable, "weights": mem.weights, "kv_cache": mem.kv_cache,
              "activations": mem.activations, "workspace": mem.workspace,
              "free": mem.usable - mem.used, "reserved": mem.capacity - mem.usable}
    parts = {k: float(v[i]) for k, v in perf.decode_parts.items()}
    return ServePlan(
        rank=rank, tp=dep.tp, pp=dep.pp, ep=dep.ep, replicas=r, gpus=gpus, weights=dep.weights, kv_cache=dep.kv,
        batch=b, max_batch=c["bmax"], ttft_s=float(perf.ttft_s[i]), tpot_s=float(perf.tpot_s[i]),
        e2e_latency_s=float(perf.ttft_s[i] + max(output - 1, 0) * perf.tpot_s[i]), tokens_per_s=tps,
        tokens_per_s_per_replica=tps_rep, tokens_per_s_per_gpu=tps / gpus, requests_per_s=tps / output,
        usd_per_million_tokens=usd_m, usd_per_1k_tokens=usd_m / 1e3,
        kv_cache_bytes_per_token=kv_cache_bytes_per_token(model, dep.kv),
        kv_cache_bytes_per_token_per_gpu=kv_bytes_per_token_per_gpu(model, dep),
        memory_gb={k: round(v / GB, 3) for k, v in memory.items()},
        decode_ms={k: round(v * 1e3, 4) for k, v in parts.items()},
        decode_bound="compute" if _decode_compute_bound(gpu, dep, b) else "memory")


def _decode_compute_bound(gpu: GPUSpec, dep: Deployment, b: int) -> bool:
    """Is a decode step's GEMM work past the ridge point: 2 b FLOPs per weight at the GEMM peak take longer
    than reading the weight's bytes from HBM (roofline, Williams et al. 2009)?"""
    cal = calibration_for(gpu.family)
    flops_t = 2.0 * b / (gpu.peak_tflops(compute_precision(gpu, dep.weights)) * 1e12 * cal.gemm_efficiency)
    bytes_t = BYTES[dep.weights] / (gpu.hbm_gbps * 1e9 * cal.hbm_efficiency)
    return flops_t > bytes_t


def assumptions(srv: ServingCalibration, gpu: GPUSpec) -> dict:
    pcie = gpu.intra_node_link.strip().lower().startswith("pcie")
    return {
        "gpu_memory_utilization": srv.gpu_memory_utilization,
        "kv_reservation": "full prompt + output per sequence (no eviction)",
        "prefill_chunk_tokens": srv.prefill_chunk_tokens,
        "workspace_gb": srv.workspace_bytes / GB,
        "batching": "continuous batching; TTFT = one prompt's prefill + the decode step it waits for",
        "quantisation": "fp8 W8A8 on fp8 tensor cores where the GPU has them; int8 / int4 weight-only (16-bit GEMMs); "
                        "embedding and LM head stay 16-bit",
        "tp_link": f"{gpu.intra_node_link} ({'PCIe' if pcie else 'NVLink-class'}, all-reduce latency "
                   f"{1e6 * (srv.allreduce_latency_pcie_s if pcie else srv.allreduce_latency_nvlink_s):g} us)",
        "price_usd_per_gpu_hour": gpu.price_usd_per_gpu_hour,
        "price_source": gpu.price_source,
        "batch_cap": BATCH_CAP,
    }


# ---- no plan: say why, with a computed alternative ---------------------------------------------------
def _min_gpus_that_fit(model: ModelSpec, gpu: GPUSpec, gpn: int, weights: str, kv: str, ctx: int,
                       srv: ServingCalibration, limit: int = 4096) -> int | None:
    n = 1
    while n <= limit:
        for t in _pow2_upto(min(n, gpn)):
            if n % t or model.heads % t or n // t > model.layers:
                continue
            if max_batch(model, gpu, Deployment(tp=t, pp=n // t, weights=weights, kv=kv), ctx, srv) >= 1:
                return n
        n *= 2
    return None


def _why_none(model, cluster, prompt, output, qps, batch, ttft_ms, tpot_ms, weights, kv_cache, tp, pp, srv,
              fits_any, best_batch_fit) -> str:
    gpu, n, gpn = cluster.gpu, cluster.num_gpus, cluster.gpus_per_node
    ctx = prompt + output
    where = f"{n} x {gpu.name}"
    if not fits_any:
        w = weights or "int4"       # the search tried every precision: report the smallest
        kv = kv_cache or "fp8"
        t = tp or next((x for x in reversed(_pow2_upto(min(n, gpn))) if model.heads % x == 0), 1)
        dep = Deployment(tp=t, pp=pp or max(1, min(n // t, model.layers)), weights=w, kv=kv)
        mem = memory_anatomy(model, gpu, dep, 1, ctx, srv)
        options = [(p, m) for p in ("bf16", "fp8", "int8", "int4")
                   if (m := _min_gpus_that_fit(model, gpu, gpn, p, kv, ctx, srv)) is not None]
        opts = ", ".join(f"{m} x {gpu.name} with {p} weights" for p, m in options) or "no GPU count up to 4096"
        return (f"{model.name} does not fit on {where} (tp={dep.tp}, pp={dep.pp}): {w} weights + KV cache of one "
                f"{ctx}-token sequence + workspace need {dep.gpus * mem.used / GB:,.0f} GB, "
                f"{dep.gpus * mem.usable / GB:,.0f} GB usable (gpu_memory_utilization {srv.gpu_memory_utilization:g}): "
                f"{dep.gpus * mem.missing / GB:,.0f} GB missing; would fit: {opts}")
    if batch is not None and batch > best_batch_fit:
        return (f"--batch {batch} does not fit on {where}: at most {best_batch_fit} sequences of {ctx} tokens fit "
                f"(KV cache); lower --batch, use --kv-cache fp8 / lower-precision weights, or add GPUs")
    # fits, but not within the limits: report the best achievable figures
    lim = []
    if ttft_ms is not None:
        lim.append(f"--ttft-ms {ttft_ms:g}")
    if tpot_ms is not None:
        lim.append(f"--tpot-ms {tpot_ms:g}")
    fastest = _fastest(model, cluster, prompt, output, weights, kv_cache, tp, pp, srv)
    qtxt = f" at --qps {qps:g}" if qps is not None else ""
    if qps is not None and fastest is not None and (fastest["max_rps"] < qps or not lim):
        cap = fastest["max_rps"]
        return (f"--qps {qps:g} needs {qps * output:,.0f} output tokens/s; {where} serves at most {cap:,.2f} "
                f"requests/s ({cap * output:,.0f} tokens/s); about {math.ceil(n * qps / max(cap, 1e-12)):,} x "
                f"{gpu.name} would")
    best = (f"the fastest plan reaches TTFT {fastest['ttft'] * 1e3:.1f} ms and TPOT {fastest['tpot'] * 1e3:.2f} ms "
            f"(tp={fastest['tp']}, pp={fastest['pp']}, {fastest['w']} weights, batch 1)") if fastest else "nothing fits"
    return (f"no plan on {where} meets {' and '.join(lim) or 'the request'}{qtxt}: {best}; relax the limits or use "
            "faster GPUs")


def _fastest(model, cluster, prompt, output, weights, kv_cache, tp, pp, srv) -> dict | None:
    """The lowest batch-1 TPOT of any shape, and the most requests/s any shape serves (largest batch, no limits)."""
    fastest, max_rps = None, 0.0
    for tp_, pp_ in _shapes(model, cluster, tp, pp):
        for w in ([weights] if weights else SEARCH_WEIGHTS):
            for kv in ([kv_cache] if kv_cache else SEARCH_KV):
                dep = Deployment(tp=tp_, pp=pp_, weights=w, kv=kv)
                bmax = max_batch(model, cluster.gpu, dep, prompt + output, srv)
                if bmax < 1:
                    continue
                perf = replica_performance(model, cluster.gpu, cluster.gpus_per_node, dep,
                                           np.array([1, min(bmax, BATCH_CAP)]), prompt, output, srv=srv)
                max_rps = max(max_rps, (cluster.num_gpus // dep.gpus) * float(perf.tokens_per_s[1]) / output)
                if fastest is None or perf.tpot_s[0] < fastest["tpot"]:
                    fastest = {"ttft": float(perf.ttft_s[0]), "tpot": float(perf.tpot_s[0]), "tp": tp_, "pp": pp_,
                               "w": w}
    return None if fastest is None else {**fastest, "max_rps": max_rps}


def _check_request(model, prompt, output, qps, batch, ttft_ms, tpot_ms, objective, util, tp, pp, cluster) -> None:
    if not isinstance(prompt, int) or prompt < 1 or prompt > 10_000_000:
        raise ServingError(f"--prompt {prompt} is not allowed; give 1 to 10,000,000 tokens")
    if not isinstance(output, int) or output < 1 or output > 10_000_000:
        raise ServingError(f"--output {output} is not allowed; give 1 to 10,000,000 tokens")
    if qps is not None and batch is not None:
        raise ServingError("--qps and --batch are exclusive: give the request rate or the batch, not both")
    if qps is not None and not (math.isfinite(qps) and qps > 0):
        raise ServingError(f"--qps {qps} is not allowed; give a positive number of requests per second")
    if batch is not None and not 1 <= batch <= 1_000_000:
        raise ServingError(f"--batch {batch} is not allowed; give 1 to 1,000,000 sequences")
    for name, v in (("--ttft-ms", ttft_ms), ("--tpot-ms", tpot_ms)):
        if v is not None and not (math.isfinite(v) and v > 0):
            raise ServingError(f"{name} {v} is not allowed; give a positive number of milliseconds")
    if objective not in OBJECTIVES:
        raise ServingError(f"--objective {objective!r} is not allowed; choose {', '.join(OBJECTIVES)}")
    if util is not None and not 0.05 <= util <= 1.0:
        raise ServingError(f"--gpu-memory-utilization {util} is not allowed; give a share in 0.05..1")
    n = cluster.num_gpus
    for name, v in (("--tp", tp), ("--pp", pp)):
        if v is not None and (v < 1 or n % v):
            raise ServingError(f"{name} {v} is not allowed on {n} GPUs; give a divisor of {n}")
    if tp is not None and pp is not None and n % (tp * pp):
        raise ServingError(f"--tp {tp} x --pp {pp} = {tp * pp} does not divide the {n} GPUs")
    if tp is not None and model.heads % tp:
        raise ServingError(f"--tp {tp} does not divide the {model.heads} attention heads of {model.name}; "
                           "choose a tp that divides them")
    if pp is not None and pp > model.layers:
        raise ServingError(f"--pp {pp} exceeds the {model.layers} layers of {model.name}")


# ---- vLLM ---------------------------------------------------------------------------------------------
HF_IDS = {
    "llama2-7b": "meta-llama/Llama-2-7b-hf", "llama2-13b": "meta-llama/Llama-2-13b-hf",
    "llama2-70b": "meta-llama/Llama-2-70b-hf", "llama3-8b": "meta-llama/Llama-3.1-8B-Instruct",
    "llama3-70b": "meta-llama/Llama-3.1-70B-Instruct", "llama3-405b": "meta-llama/Llama-3.1-405B-Instruct",
    "mixtral-8x7b": "mistralai/Mixtral-8x7B-Instruct-v0.1", "mixtral-8x22b": "mistralai/Mixtral-8x22B-Instruct-v0.1",
}
_VLLM_QUANT = {"fp8": ("fp8", None), "int8": ("gptq", "an 8-bit GPTQ checkpoint of the model"),
               "int4": ("awq", "a 4-bit AWQ checkpoint of the model")}


def vllm_command(model: ModelSpec, plan: ServePlan, prompt: int, output: int, util: float,
                 model_path: str | None = None) -> str:
    """The `vllm serve` command of a plan (flag names as in vLLM's engine arguments)."""
    name = model_path or HF_IDS.get(model.name) or f"<{model.name} checkpoint>"
    args = ["vllm serve", name, f"--tensor-parallel-size {plan.tp}", f"--pipeline-parallel-size {plan.pp}"]
    if plan.replicas > 1:
        args.append(f"--data-parallel-size {plan.replicas}")
    if plan.ep > 1:
        args.append("--enable-expert-parallel")
    args += [f"--max-model-len {prompt + output}", f"--max-num-seqs {plan.batch}",
             f"--gpu-memory-utilization {util:g}"]
    note = None
    if plan.weights in _VLLM_QUANT:
        q, note = _VLLM_QUANT[plan.weights]
        args.append(f"--quantization {q}")
    else:
        args.append(f"--dtype {'float16' if plan.weights == 'fp16' else 'bfloat16'}")
    args.append(f"--kv-cache-dtype {'fp8' if plan.kv_cache == 'fp8' else 'auto'}")
    cmd = " \\\n    ".join(args)
    return (f"# needs {note}\n" if note else "") + cmd


# ---- serving/v1 rows for `plan validate` ----------------------------------------------------------------
SERVING_METRICS = ("output_tokens_per_s", "output_tokens_per_s_per_gpu", "ttft_ms", "tpot_ms")


def predict_serving_run(run: dict):
    """Predict one serving/v1 row in its mode; returns planner.validation.runs.RunResult."""
    from costmodels.model import ModelError
    from hardware import load_catalog
    from planner.validation.runs import RunResult, run_model

    rid = str(run["id"])
    measured = run.get("measured") or {}
    metric = next((k for k in SERVING_METRICS if measured.get(k) is not None), None)
    if metric is None:
        return RunResult(id=rid, metric=None, measured=None, predicted=None, pct_error=None,
                         skipped="no measured " + ", ".join(SERVING_METRICS))
    meas = float(measured[metric])
    c = run["config"]
    h = run["hardware"]
    prompt, output = int(c["input_len"]), int(c["output_len"])
    m = dict(run["model"])
    m["seq_len"] = prompt + output
    if isinstance(m.get("moe"), dict) and not m["moe"].get("expert_ffn_hidden") and m.get("ffn_hidden"):
        m["moe"] = {**m["moe"], "expert_ffn_hidden": m["ffn_hidden"]}   # Mixtral-style: ffn_hidden is per expert
    try:
        model = run_model(m)
    except ModelError as e:
        raise ServingError(str(e)) from None
    gpu, _ = load_catalog().resolve(h["gpu"])
    tp, pp = int(c.get("tp") or 1), int(c.get("pp") or 1)
    n = int(h.get("num_gpus") or tp * pp)
    gpn = int(h.get("gpus_per_node") or gpu.gpus_per_node)
    replicas = int(c.get("replicas") or max(1, n // (tp * pp)))
    dep = Deployment(tp=tp, pp=pp, weights=_precision(c.get("weights_precision")),
                     kv=_precision(c.get("kv_precision")), kv_read_per_query_head=_pre_gqa_engine(run.get("engine")))
    check_deployment(model, dep)
    mode = c.get("mode")
    filled: dict = {}
    if mode == "first_token":
        batch = 1
    elif mode in ("static_batch", "max_throughput"):
        batch = c.get("batch_size")
        if batch is None:
            batch = max_batch(model, gpu, dep, prompt + output)
            if batch < 1:
                return RunResult(id=rid, metric=metric, measured=meas, predicted=None, pct_error=None,
                                 skipped="weights, KV cache of one sequence and workspace do not fit in GPU memory")
            filled["batch_size"] = batch
        batch = int(batch)
    else:
        return RunResult(id=rid, metric=metric, measured=meas, predicted=None, pct_error=None,
                         skipped=f"mode {mode!r}; known: static_batch, max_throughput, first_token")
    if metric == "ttft_ms" and mode == "max_throughput":
        return RunResult(id=rid, metric=metric, measured=meas, predicted=None, pct_error=None,
                         skipped="TTFT of an offline max-throughput run is queueing time; not predicted")
    perf = replica_performance(model, gpu, max(gpn, 1), dep, np.array([batch]), prompt, output)
    tps = float(perf.tokens_per_s[0]) * replicas
    if metric == "output_tokens_per_s":
        pred = tps
    elif metric == "output_tokens_per_s_per_gpu":
        pred = tps / (replicas * dep.gpus)
    elif metric == "ttft_ms":
        pred = 1e3 * float(perf.ttft_s[0] if mode == "first_token" else perf.batch_prefill_s[0])
    else:
        pred = 1e3 * float(perf.tpot_s[0])
    mem = memory_anatomy(model, gpu, dep, batch, prompt + output)
    return RunResult(id=rid, metric=metric, measured=meas, predicted=pred, pct_error=(pred - meas) / meas,
                     filled=filled, peak_memory_gb=mem.used / GB)


def _pre_gqa_engine(engine) -> bool:
    """Engines whose decode attention reads a shared KV head once per query head: TensorRT-LLM before 0.7
    (CHANGELOG 0.7.0: "MMHA optimization for MQA and GQA"; 0.8: XQA kernel)."""
    import re
    mt = re.search(r"tensorrt[- _]?llm\D*(\d+)\.(\d+)", (engine or "").lower())
    return bool(mt) and (int(mt.group(1)), int(mt.group(2))) < (0, 7)


def _precision(p) -> str:
    p = (p or "bf16").strip().lower()
    return {"float16": "fp16", "half": "fp16", "bfloat16": "bf16", "w8a8": "int8", "w4a16": "int4"}.get(p, p)


def parse_price(text: str | None, gpu: GPUSpec) -> float | None:
    """--price USD or --price NAME=USD (USD per GPU-hour for the cluster's GPU)."""
    if text is None:
        return None
    name, sep, value = text.partition("=")
    raw = value if sep else name
    try:
        usd = float(raw)
    except ValueError:
        raise ServingError(f"--price {text!r} is not USD per GPU-hour, e.g. --price 2.40 or --price A100=2.40"
                           ) from None
    if not (math.isfinite(usd) and usd > 0):
        raise ServingError(f"--price {text!r} is not allowed; give a positive USD per GPU-hour")
    return usd


def model_path_for(model_name: str) -> str | None:
    """A Hugging Face config.json path given as --model becomes the vllm serve model directory."""
    p = Path(model_name).expanduser()
    if p.is_file():
        return str(p.parent)
    if p.is_dir():
        return str(p)
    return None


# ---- the table ------------------------------------------------------------------------------------------
def render_serve(result: ServeResult, console) -> None:
    """`plan serve` table output (rich)."""
    from rich.table import Table

    p = result.plan
    m, c, rq = result.model, result.cluster, result.request
    note = f" ({m.note})" if m.note else ""
    console.print(f"[bold]Serving plan[/] for {m.name}{note} on {c.num_gpus} x {c.gpu}: "
                  f"{rq['prompt_tokens']} prompt + {rq['output_tokens']} output tokens per request, "
                  f"objective {rq['objective']}" + (f", {rq['qps']:g} requests/s" if rq["qps"] else ""))
    t = Table(show_edge=False, show_header=False)
    t.add_column("what")
    t.add_column("value")
    t.add_row("replica", f"tp={p.tp} x pp={p.pp}" + (f", expert parallel over {p.ep}" if p.ep > 1 else "")
              + f"; {p.replicas} replica(s), {p.gpus} GPUs used")
    t.add_row("precision", f"weights {p.weights}, KV cache {p.kv_cache}")
    t.add_row("batch", f"{p.batch} concurrent sequences per replica (memory allows {p.max_batch})")
    t.add_row("latency", f"TTFT {p.ttft_s * 1e3:,.1f} ms, TPOT {p.tpot_s * 1e3:,.2f} ms "
                         f"({1 / p.tpot_s:,.1f} tokens/s per user), request {p.e2e_latency_s:,.2f} s")
    t.add_row("throughput", f"{p.tokens_per_s:,.0f} tokens/s ({p.tokens_per_s_per_replica:,.0f} per replica, "
                            f"{p.tokens_per_s_per_gpu:,.0f} per GPU), {p.requests_per_s:,.2f} requests/s")
    t.add_row("cost", f"${p.usd_per_million_tokens:,.3f} per million tokens (${p.usd_per_1k_tokens:.5f} per 1k) at "
                      f"${result.assumptions['price_usd_per_gpu_hour']:.4g}/GPU-hour")
    t.add_row("KV cache", f"{p.kv_cache_bytes_per_token / 1e6:.4g} MB per token "
                          f"({p.kv_cache_bytes_per_token_per_gpu / 1e6:.4g} MB per GPU)")
    mg = p.memory_gb
    t.add_row("memory / GPU", f"weights {mg['weights']:.1f} GB + KV cache {mg['kv_cache']:.1f} + activations "
                              f"{mg['activations']:.1f} + workspace {mg['workspace']:.1f} + free {mg['free']:.1f} "
                              f"= usable {mg['usable']:.1f} of {mg['capacity']:.0f} GB")
    d = p.decode_ms
    t.add_row("decode step", f"{d['total']:.2f} ms ({p.decode_bound} bound): GEMMs {d['gemm']:.2f}, attention "
                             f"{d['attention']:.2f}, TP all-reduce {d['tp_comm']:.2f}, pipeline {d['pipeline']:.2f}, "
                             f"other {d['elementwise'] + d['overhead'] + d['lm_head']:.2f}")
    console.print(t)
    if result.alternatives:
        alt = Table(show_edge=False, title="runner-ups")
        for col in ("tp x pp", "replicas", "weights/KV", "batch", "TTFT ms", "TPOT ms", "tokens/s/GPU", "$/M tokens"):
            alt.add_column(col, justify="right")
        for a in result.alternatives:
            alt.add_row(f"{a.tp} x {a.pp}" + (f" ep{a.ep}" if a.ep > 1 else ""), str(a.replicas),
                        f"{a.weights}/{a.kv_cache}", str(a.batch), f"{a.ttft_s * 1e3:,.1f}", f"{a.tpot_s * 1e3:,.2f}",
                        f"{a.tokens_per_s_per_gpu:,.0f}", f"{a.usd_per_million_tokens:,.3f}")
        console.print(alt)
