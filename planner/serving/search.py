"""`plan serve`: the search for the inference serving plan.

serve_plan() enumerates every replica shape (tp x pp, expert parallel for MoE), weight and KV-cache
precision, replica count and batch size as numpy arrays (costmodels.serving evaluates all batch sizes of a
shape at once) and keeps the best plan within the latency limits: the most tokens/s per GPU (throughput),
the lowest request latency (latency) or the lowest $ per million tokens (cost). The enumeration is exhaustive
over a finite space, so the plan is exact for the model; docs/serving.md says why this beats CP-SAT here.
The result schema is planner.serving.result; the `vllm serve` command of a plan is
planner.frameworks.vllm.
"""
from __future__ import annotations

import math
import time
from dataclasses import replace as dc_replace

import numpy as np

from costmodels import calibration
from costmodels.calibration import ServingCalibration, calibration_for
from costmodels.model import ModelSpec
from costmodels.serving import (BYTES, Deployment, ServingError, Speculation, combine_disaggregated,
                                compute_precision, continuous_performance, decode_pool, kv_bytes_per_token_per_gpu,
                                kv_cache_bytes_per_token, kv_transfer_time, max_batch, memory_anatomy, prefill_pass,
                                queue_wait, usd_per_million_tokens)
from hardware import Cluster, GPUSpec
from planner.errors import PlannerError
from planner.serving.result import GB, ServeFront, ServePlan, ServeResult, assumptions
from planner.solve.result import cluster_out, model_out
from planner.solve.rules import deployment_problem, shape_ok

BATCH_CAP = 4096                    # largest batch searched (engines' CUDA-graph sizes stop at 4096-8192)
SEARCH_WEIGHTS = ("bf16", "fp8", "int8", "int4")
SEARCH_KV = ("bf16", "fp8")
OBJECTIVES = ("throughput", "latency", "cost", "gpus")
MODES = ("aggregated", "disaggregated", "both")
_PRECISION_RANK = {"bf16": 0, "fp16": 0, "fp8": 1, "int8": 2, "int4": 3}   # ties go to the more precise


class ServeError(PlannerError):
    """No plan: one line saying what is missing (memory, latency, throughput) and what would work."""


# ---- the search ---------------------------------------------------------------------------------------
def _pow2_upto(n: int) -> list[int]:
    out, x = [], 1
    while x <= n:
        out.append(x)
        x *= 2
    return out


def _shapes(model: ModelSpec, cluster: Cluster, tp_fixed: int | None, pp_fixed: int | None) -> list[tuple[int, int]]:
    """Replica shapes the serving rules allow (planner.solve.rules): powers of two, tp inside a node."""
    n, gpn = cluster.num_gpus, cluster.gpus_per_node
    out = []
    for tp in [tp_fixed] if tp_fixed else _pow2_upto(min(n, gpn)):
        for pp in [pp_fixed] if pp_fixed else _pow2_upto(n // tp):
            if shape_ok(model, tp, pp, n):
                out.append((tp, pp))
    return out


def serve_plan(model: ModelSpec, cluster: Cluster, prompt: int, output: int, *, qps: float | None = None,
               batch: int | None = None, ttft_ms: float | None = None, tpot_ms: float | None = None,
               weights: str | None = None, kv_cache: str | None = None, tp: int | None = None,
               pp: int | None = None, objective: str = "throughput", gpu_memory_utilization: float | None = None,
               top: int = 3, model_note: str | None = None, e2e_ms: float | None = None,
               mode: str | None = None, prefix_hit: float = 0.0, spec: Speculation | None = None) -> ServeResult:
    """The best serving plan for `prompt` tokens in and `output` tokens out per request on `cluster`.

    qps: requests per second to serve (else: as many as the GPUs can); batch / tp / pp / weights / kv_cache
    fix that choice; ttft_ms / tpot_ms / e2e_ms (a request's whole latency) are upper limits; objective
    "gpus" with qps: the fewest GPUs that serve it. mode: aggregated replicas (prefill and decode on the same
    GPUs), disaggregated (prefill replicas hand each prompt's KV cache to decode replicas) or both in one
    search (the default, or aggregated when batch, tp or pp fix a deployment). Raises ServeError when no plan
    exists."""
    _check_request(model, prompt, output, qps, batch, ttft_ms, tpot_ms, objective, gpu_memory_utilization, tp, pp,
                   cluster)
    _check_e2e(e2e_ms)
    if mode is None:
        mode = "aggregated" if (batch is not None or tp is not None or pp is not None) else "both"
    if mode not in MODES:
        raise ServingError(f"--mode {mode!r} is not allowed; choose {', '.join(MODES)}")
    srv = calibration.SERVING
    if gpu_memory_utilization is not None:
        srv = dc_replace(srv, gpu_memory_utilization=gpu_memory_utilization)
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
    decoders = []      # (deployment, most sequences that fit, concurrencies) of every replica that fits
    for tp_, pp_ in _shapes(model, cluster, tp, pp):
        eps = [1, tp_] if (model.moe is not None and tp_ > 1) else [1]
        for w in wlist:
            for kv in kvlist:
                for ep, adp in _moe_layouts(model, tp_, pp_, eps):
                    dep = Deployment(tp=tp_, pp=pp_, weights=w, kv=kv, ep=ep, attn_dp=adp)
                    bmax = max_batch(model, gpu, dep, ctx, srv)
                    if bmax < 1:
                        continue
                    fits_any = True
                    best_batch_fit = max(best_batch_fit, bmax)
                    if batch is not None and batch > bmax:
                        continue
                    bs = np.array([batch]) if batch is not None else np.arange(1, min(bmax, BATCH_CAP) + 1)
                    decoders.append((dep, bmax, bs))
                    if mode == "disaggregated":
                        continue
                    perf = continuous_performance(model, gpu, gpn, dep, bs, prompt, output, srv=srv,
                                                  prefix_hit=prefix_hit, spec=spec)
                    evaluated += len(bs)
                    c = _best_for_shape(dep, bs, perf, cluster.num_gpus, output, qps, ttft_ms, tpot_ms, objective,
                                        price, e2e_ms)
                    if c is not None:
                        c.update(dep=dep, bmax=bmax, perf=perf)
                        cands.append(c)
    if mode != "aggregated" and cluster.num_gpus >= 2 and output > 1:
        found, n_points = _disaggregated(model, cluster, prompt, output, decoders, qps, ttft_ms, tpot_ms, e2e_ms,
                                         objective, price, srv, prefix_hit, spec)
        cands += found
        evaluated += n_points
    seconds = time.perf_counter() - t0
    if not cands:
        if mode == "disaggregated" and fits_any and decoders and (
                cluster.num_gpus < 2 * min(d.gpus for d, _, _ in decoders) or output <= 1):
            smallest = min(d.gpus for d, _, _ in decoders)
            raise ServeError(f"--mode disaggregated needs a prefill and a decode replica: the smallest replica of "
                             f"{model.name} that fits takes {smallest} x {cluster.gpu.name}, so at least "
                             f"{2 * smallest} GPUs (the cluster has {cluster.num_gpus})"
                             + ("; and an output of more than one token" if output <= 1 else "")
                             + "; use --mode aggregated or more GPUs")
        raise ServeError(_why_none(model, cluster, prompt, output, qps, batch, ttft_ms, tpot_ms, weights, kv_cache,
                                   tp, pp, srv, fits_any, best_batch_fit, e2e_ms))
    cands.sort(key=lambda c: c["key"])
    plans = [_plan_out(i + 1, c, model, cluster, prompt, output, srv, qps) for i, c in enumerate(cands[:top])]
    best = plans[0]
    request = {"prompt_tokens": prompt, "output_tokens": output, "qps": qps, "batch": batch, "ttft_ms": ttft_ms,
               "tpot_ms": tpot_ms, "e2e_ms": e2e_ms, "prefix_hit": prefix_hit,
               "speculation": None if spec is None else {"tokens": spec.tokens, "acceptance": spec.acceptance,
                                                         "draft": spec.draft.name if spec.draft else None,
                                                         "tokens_per_step": spec.tokens_per_step},
               "weights": weights, "kv_cache": kv_cache, "tp": tp, "pp": pp, "objective": objective}
    return ServeResult(
        model=model_out(model, model_note), cluster=cluster_out(cluster), request=request,
        assumptions=assumptions(srv, gpu, BATCH_CAP),
        ttft_s=best.ttft_s, tpot_s=best.tpot_s, tokens_per_s=best.tokens_per_s,
        tokens_per_s_per_gpu=best.tokens_per_s_per_gpu, usd_per_million_tokens=best.usd_per_million_tokens,
        kv_cache_bytes_per_token=best.kv_cache_bytes_per_token, plan=best, alternatives=plans[1:],
        search={"method": "exhaustive numpy enumeration (exact over the space)", "configurations": len(cands),
                "points_evaluated": evaluated, "batch_cap": BATCH_CAP, "seconds": round(seconds, 4)})


def serve_front(model: ModelSpec, cluster: Cluster, prompt: int, output: int, *, ttft_ms: float | None = None,
                tpot_ms: float | None = None, e2e_ms: float | None = None, weights: str | None = None,
                kv_cache: str | None = None, tp: int | None = None, pp: int | None = None,
                gpu_memory_utilization: float | None = None, model_note: str | None = None,
                prefix_hit: float = 0.0) -> ServeFront:
    """The SLA front: every plan no other beats on both tokens/s per GPU and tokens/s per user (1 / TPOT)
    within the latency limits, each with as many replicas as the GPUs hold, from the fastest per user to
    the most per GPU. Raises ServeError when no plan meets the limits."""
    _check_request(model, prompt, output, None, None, ttft_ms, tpot_ms, "throughput", gpu_memory_utilization, tp,
                   pp, cluster)
    _check_e2e(e2e_ms)
    srv = calibration.SERVING
    if gpu_memory_utilization is not None:
        srv = dc_replace(srv, gpu_memory_utilization=gpu_memory_utilization)
    gpu, gpn = cluster.gpu, cluster.gpus_per_node
    t0 = time.perf_counter()
    points = []       # (tokens/s per user, tokens/s per GPU, tie-break key, config index, batch index)
    configs = []
    evaluated = 0
    for tp_, pp_ in _shapes(model, cluster, tp, pp):
        eps = [1, tp_] if (model.moe is not None and tp_ > 1) else [1]
        for w in ([weights] if weights else SEARCH_WEIGHTS):
            for kv in ([kv_cache] if kv_cache else SEARCH_KV):
                for ep, adp in _moe_layouts(model, tp_, pp_, eps):
                    dep = Deployment(tp=tp_, pp=pp_, weights=w, kv=kv, ep=ep, attn_dp=adp)
                    bmax = max_batch(model, gpu, dep, prompt + output, srv)
                    if bmax < 1:
                        continue
                    bs = np.arange(1, min(bmax, BATCH_CAP) + 1)
                    perf = continuous_performance(model, gpu, gpn, dep, bs, prompt, output, srv=srv,
                                                  prefix_hit=prefix_hit)
                    evaluated += len(bs)
                    ok = _within(perf, ttft_ms, tpot_ms, e2e_ms)
                    user = np.where(perf.tpot_s > 0, 1.0 / np.maximum(perf.tpot_s, 1e-300), 1.0 / perf.e2e_s)
                    per_gpu = perf.tokens_per_s / dep.gpus
                    k = len(configs)
                    configs.append({"dep": dep, "bmax": bmax, "perf": perf, "replicas": cluster.num_gpus // dep.gpus})
                    rank = (_PRECISION_RANK[w], _PRECISION_RANK[kv], dep.gpus, pp_, ep)
                    points += [(float(user[i]), float(per_gpu[i]), rank, k, int(i)) for i in np.flatnonzero(ok)]
    if not points:
        raise ServeError(_why_none(model, cluster, prompt, output, None, None, ttft_ms, tpot_ms, weights, kv_cache,
                                   tp, pp, srv, bool(configs), max((c["bmax"] for c in configs), default=0), e2e_ms))
    # non-dominated: sweep from the fastest per user down, keeping each point with more tokens/s per GPU
    # than every faster one (ties: more precise, smaller replicas, then the first found)
    points.sort(key=lambda x: (-x[0], -x[1], x[2], x[3], x[4]))
    front, best_gpu = [], -1.0
    for user, per_gpu, _, k, i in points:
        if per_gpu > best_gpu:
            front.append((k, i))
            best_gpu = per_gpu
    plans = [_plan_out(n + 1, {**configs[k], "i": i}, model, cluster, prompt, output, srv)
             for n, (k, i) in enumerate(front)]
    request = {"prompt_tokens": prompt, "output_tokens": output, "ttft_ms": ttft_ms, "tpot_ms": tpot_ms,
               "e2e_ms": e2e_ms, "prefix_hit": prefix_hit, "weights": weights, "kv_cache": kv_cache, "tp": tp, "pp": pp}
    return ServeFront(model=model_out(model, model_note), cluster=cluster_out(cluster), request=request,
                      assumptions=assumptions(srv, gpu, BATCH_CAP), plans=plans,
                      search={"method": "exhaustive numpy enumeration (exact over the space)",
                              "configurations": len(configs), "points_evaluated": evaluated,
                              "points_within_limits": len(points), "seconds": round(time.perf_counter() - t0, 4)})


def _within(perf, ttft_ms, tpot_ms, e2e_ms) -> np.ndarray:
    """Which concurrencies meet the latency limits (ms, None: no limit)."""
    ok = np.ones(len(perf.concurrency), dtype=bool)
    for limit, value in ((ttft_ms, perf.ttft_s), (tpot_ms, perf.tpot_s), (e2e_ms, perf.e2e_s)):
        if limit is not None:
            ok &= value <= limit / 1e3
    return ok


def _check_e2e(e2e_ms) -> None:
    if e2e_ms is not None and not (math.isfinite(e2e_ms) and e2e_ms > 0):
        raise ServingError(f"--e2e-ms {e2e_ms} is not allowed; give a positive number of milliseconds")


def _disaggregated(model: ModelSpec, cluster: Cluster, prompt: int, output: int, decoders: list, qps, ttft_ms,
                   tpot_ms, e2e_ms, objective: str, price: float, srv: ServingCalibration,
                   prefix_hit: float = 0.0, spec: Speculation | None = None) -> tuple[list[dict], int]:
    """The best disaggregated plan of every (prefill replica, decode replica) pair of one precision: x prefill
    replicas feed y decode replicas, x g_p + y g_d GPUs at most the cluster's, serving min(x prefill rate,
    y decode rate) requests per second; every decode concurrency at once, every prompts-per-pass n that a
    prefill chunk holds (powers of two and the largest)."""
    gpu, gpn, N = cluster.gpu, cluster.gpus_per_node, cluster.num_gpus
    same_node = N <= gpn           # otherwise the KV cache crosses the network (stated in the assumptions)
    out, points = [], 0
    prefills = [(d, max_batch(model, gpu, d, prompt, srv)) for d, _, _ in decoders]
    pools = {}        # each decode replica's decode steps, once
    for dp, pmax in prefills:
        if pmax < 1:
            continue
        top_n = max(1, min(srv.prefill_chunk_tokens // prompt, pmax))
        passes = [prefill_pass(model, gpu, gpn, dp, n, prompt, srv=srv, prefix_hit=prefix_hit)
                  for n in sorted({n for n in _pow2_upto(top_n)} | {top_n})]
        for dd, bmax, bs in decoders:
            if (dd.weights, dd.kv) != (dp.weights, dp.kv) or dp.gpus + dd.gpus > N:
                continue
            if dd not in pools:
                pools[dd] = decode_pool(model, gpu, gpn, dd, bs, prompt, output, srv=srv, spec=spec)
            transfer = kv_transfer_time(model, gpu, dp, dd, prompt, same_node)
            best = None
            for one_pass in passes:
                n = one_pass[0]
                perf = combine_disaggregated(one_pass, pools[dd], transfer, output)
                points += len(bs)
                if ttft_ms is not None and perf.ttft_s > ttft_ms / 1e3:
                    continue
                ok = _within(perf, None, tpot_ms, e2e_ms)
                if not ok.any():
                    continue
                idx = np.flatnonzero(ok)
                mu_d = perf.decode_rate[idx]
                if qps is not None:      # the fewest replicas of each kind that serve qps
                    xs = np.full(len(idx), math.ceil(qps / perf.prefill_rate - 1e-12))
                    ys = np.ceil(qps / mu_d - 1e-12)
                else:                    # every split of the GPUs, the decode side as large as what is left
                    xs = np.arange(1, (N - dd.gpus) // dp.gpus + 1)[:, None] * np.ones((1, len(idx)))
                    ys = np.floor((N - xs * dp.gpus) / dd.gpus)
                gpus = xs * dp.gpus + ys * dd.gpus
                rate = np.minimum(xs * perf.prefill_rate, ys * mu_d)
                wait = prefill_wait(rate, xs, n, perf.prefill_rate, ys * np.asarray(bs, dtype=float)[idx])
                valid = (ys >= 1) & (xs >= 1) & (gpus <= N)
                if ttft_ms is not None:
                    valid &= perf.ttft_s + wait <= ttft_ms / 1e3
                e2e = np.broadcast_to(perf.e2e_s[idx], gpus.shape) + wait
                if e2e_ms is not None:
                    valid &= e2e <= e2e_ms / 1e3
                if not valid.any():
                    continue
                tps = rate * output
                score = _score(objective, tps, gpus, e2e, price, None if qps is None else qps * output)
                score = np.where(valid, score, np.inf)
                j = np.unravel_index(int(np.argmin(score)), score.shape)
                k = int(idx[j[-1]])
                key = (round(float(score[j]), 12), int(gpus[j]), _PRECISION_RANK[dd.weights], _PRECISION_RANK[dd.kv],
                       dd.gpus, dd.pp, dd.ep, dd.attn_dp, int(bs[k]), 1, dp.gpus, n)
                if best is None or key < best["key"]:
                    best = {"key": key, "i": k, "replicas": int(ys[j]), "dep": dd, "bmax": bmax, "perf": perf,
                            "prefill": {"dep": dp, "replicas": int(xs[j]), "prompts_per_pass": n,
                                        "wait_s": float(wait[j])},
                            "rate": float(rate[j]), "gpus": int(gpus[j])}
            if best is not None:
                out.append(best)
    return out, points


def prefill_wait(rate, replicas, n: int, pass_rate: float, population):
    """Seconds a prompt waits for its prefill replica's next pass: M/D/1 at the served rate per replica, passes
    of n prompts (costmodels.serving.queue_wait), at most the passes that the requests in the system (the
    decode slots, `population`) fill ahead of it, as a closed loop of that many users bounds it."""
    pass_s = n / pass_rate
    with np.errstate(divide="ignore", invalid="ignore"):
        md1 = queue_wait(rate / np.maximum(replicas, 1) / n, pass_s)
    cap = np.maximum(population - 1, 0) / (np.maximum(replicas, 1) * n) * pass_s
    return np.minimum(md1, cap)


def _moe_layouts(model: ModelSpec, tp: int, pp: int, eps: list[int]) -> list[tuple[int, int]]:
    """(ep, attn_dp) pairs searched for a replica shape: every expert layout, and for an MoE model on one
    pipeline stage also attention data parallel over all tp GPUs (each GPU its own sequences; SGLang's
    --enable-dp-attention with --dp-size tp, what DeepSeek serves with)."""
    out = [(ep, 1) for ep in eps]
    if model.moe is not None and tp > 1 and pp == 1:
        out += [(ep, tp) for ep in eps]
    return out


def _score(objective: str, tps, gpus, e2e, price: float, served=None):
    """What the objective minimises for plans of tps tokens/s on `gpus` GPUs with request latency e2e;
    `served`: the tokens/s asked for (--qps), at which a plan's $ per token counts."""
    if objective == "throughput":
        return -tps / gpus
    if objective == "latency":
        return e2e
    if objective == "gpus":       # the fewest GPUs (with qps: that serve it), then the lowest latency
        return gpus + e2e / (1.0 + e2e)
    cost = usd_per_million_tokens(price, gpus, tps if served is None else served)
    return np.broadcast_to(cost, np.broadcast(tps, gpus).shape)


def _best_for_shape(dep: Deployment, bs: np.ndarray, perf, num_gpus: int, output: int, qps, ttft_ms, tpot_ms,
                    objective: str, price: float, e2e_ms=None) -> dict | None:
    """The best (batch, replicas) of one replica shape: every batch at once, replicas 1..max with qps."""
    ok = _within(perf, ttft_ms, tpot_ms, e2e_ms)
    rmax = num_gpus // dep.gpus
    e2e = perf.e2e_s
    best = None
    replica_counts = range(1, rmax + 1) if qps is not None else [rmax]
    for r in replica_counts:
        cond = ok.copy()
        if qps is not None:   # smallest concurrency whose throughput serves qps / r requests per second per replica
            cond &= perf.requests_per_s >= qps / r
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
        score = _score(objective, tps, gpus, e2e[idx], price, None if qps is None else qps * output)
        j = int(np.argmin(score))   # first (smallest batch) among equals
        i = int(idx[j])
        key = (round(float(score[j]), 12), gpus, _PRECISION_RANK[dep.weights], _PRECISION_RANK[dep.kv], dep.gpus,
               dep.pp, dep.ep, dep.attn_dp, int(bs[i]))
        if best is None or key < best["key"]:
            best = {"key": key, "i": i, "replicas": r}
    return best


def _plan_out(rank: int, c: dict, model: ModelSpec, cluster: Cluster, prompt: int, output: int,
              srv: ServingCalibration, qps: float | None = None) -> ServePlan:
    """The plan of candidate c; with qps, $ per token is at the served rate (the GPUs cost the same however
    much of their capacity the load uses)."""
    dep, perf, i, r = c["dep"], c["perf"], c["i"], c["replicas"]
    gpu = cluster.gpu
    b = int(perf.concurrency[i])
    pre = c.get("prefill")
    if pre is None:                         # aggregated: r replicas, each serving continuously
        gpus = r * dep.gpus
        tps = r * float(perf.tokens_per_s[i])
        rps = r * float(perf.requests_per_s[i])
        ttft = float(perf.ttft_s[i])
        prefill, transfer = None, 0.0
    else:                                   # disaggregated: prefill replicas feed r decode replicas
        dp = pre["dep"]
        gpus, rps = c["gpus"], c["rate"]
        tps = rps * output
        ttft = float(perf.ttft_s) + pre["wait_s"]
        transfer = perf.kv_transfer_s
        prefill = {"tp": dp.tp, "pp": dp.pp, "ep": dp.ep, "attn_dp": dp.attn_dp, "replicas": pre["replicas"],
                   "gpus": pre["replicas"] * dp.gpus, "prompts_per_pass": pre["prompts_per_pass"],
                   "prompts_per_s": pre["replicas"] * perf.prefill_rate,
                   "pass_ms": round(1e3 * pre["prompts_per_pass"] / perf.prefill_rate, 4),
                   "queue_ms": round(1e3 * pre["wait_s"], 4)}
    usd_m = float(usd_per_million_tokens(gpu.price_usd_per_gpu_hour, gpus, tps if qps is None else qps * output))
    mem = memory_anatomy(model, gpu, dep, b, prompt + output, srv)
    memory = {"capacity": mem.capacity, "usable": mem.usable, "weights": mem.weights, "kv_cache": mem.kv_cache,
              "activations": mem.activations, "workspace": mem.workspace,
              "free": mem.usable - mem.used, "reserved": mem.capacity - mem.usable}
    parts = {k: float(v[i]) for k, v in perf.decode_parts.items()}
    # what falls between two of a request's tokens besides the decode step: the others' prefill chunks
    parts["others_prefill"] = (float(perf.tpot_s[i]) - parts["total"] / perf.tokens_per_step) if pre is None else 0.0
    return ServePlan(
        rank=rank, mode="aggregated" if pre is None else "disaggregated", tp=dep.tp, pp=dep.pp, ep=dep.ep,
        attn_dp=dep.attn_dp, replicas=r, gpus=gpus, weights=dep.weights, kv_cache=dep.kv,
        batch=b, max_batch=c["bmax"], ttft_s=ttft, tpot_s=float(perf.tpot_s[i]),
        e2e_latency_s=float(perf.e2e_s[i]) + (0.0 if pre is None else pre["wait_s"]), tokens_per_s=tps,
        tokens_per_s_per_replica=tps / r, tokens_per_s_per_gpu=tps / gpus, requests_per_s=rps,
        usd_per_million_tokens=usd_m, usd_per_1k_tokens=usd_m / 1e3,
        kv_cache_bytes_per_token=kv_cache_bytes_per_token(model, dep.kv),
        kv_cache_bytes_per_token_per_gpu=kv_bytes_per_token_per_gpu(model, dep),
        memory_gb={k: round(v / GB, 3) for k, v in memory.items()},
        decode_ms={k: round(v * 1e3, 4) for k, v in parts.items()},
        decode_bound="compute" if _decode_compute_bound(gpu, dep, b) else "memory",
        prefill=prefill, kv_transfer_ms=round(transfer * 1e3, 4))


def _decode_compute_bound(gpu: GPUSpec, dep: Deployment, b: int) -> bool:
    """Is a decode step's GEMM work past the ridge point: 2 b FLOPs per weight at the GEMM peak take longer
    than reading the weight's bytes from HBM (roofline, Williams et al. 2009)?"""
    cal = calibration_for(gpu.family, gpu.name)
    flops_t = 2.0 * b / (gpu.peak_tflops(compute_precision(gpu, dep.weights)) * 1e12 * cal.gemm_efficiency)
    bytes_t = BYTES[dep.weights] / (gpu.hbm_gbps * 1e9 * cal.hbm_efficiency)
    return flops_t > bytes_t


# ---- no plan: say why, with a computed alternative ---------------------------------------------------
def _min_gpus_that_fit(model: ModelSpec, gpu: GPUSpec, gpn: int, weights: str, kv: str, ctx: int,
                       srv: ServingCalibration, limit: int = 4096) -> int | None:
    n = 1
    while n <= limit:
        for t in _pow2_upto(min(n, gpn)):
            if not shape_ok(model, t, n // t, n):
                continue
            if max_batch(model, gpu, Deployment(tp=t, pp=n // t, weights=weights, kv=kv), ctx, srv) >= 1:
                return n
        n *= 2
    return None


def _why_none(model, cluster, prompt, output, qps, batch, ttft_ms, tpot_ms, weights, kv_cache, tp, pp, srv,
              fits_any, best_batch_fit, e2e_ms=None) -> str:
    gpu, n, gpn = cluster.gpu, cluster.num_gpus, cluster.gpus_per_node
    ctx = prompt + output
    where = f"{n} x {gpu.name}"
    if not fits_any:
        w = weights or "int4"       # the search tried every precision: report the smallest
        kv = kv_cache or "fp8"
        t = tp or next((x for x in reversed(_pow2_upto(min(n, gpn))) if shape_ok(model, x, 1)), 1)
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
    if e2e_ms is not None:
        lim.append(f"--e2e-ms {e2e_ms:g}")
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
                perf = continuous_performance(model, cluster.gpu, cluster.gpus_per_node, dep,
                                              np.array([1, min(bmax, BATCH_CAP)]), prompt, output, srv=srv)
                max_rps = max(max_rps, (cluster.num_gpus // dep.gpus) * float(perf.requests_per_s[1]))
                if fastest is None or perf.tpot_s[0] < fastest["tpot"]:
                    fastest = {"ttft": float(perf.ttft_s[0]), "tpot": float(perf.tpot_s[0]), "tp": tp_, "pp": pp_,
                               "w": w}
    return None if fastest is None else {**fastest, "max_rps": max_rps}


def _check_request(model, prompt, output, qps, batch, ttft_ms, tpot_ms, objective, util, tp, pp, cluster) -> None:
    if not isinstance(prompt, int) or prompt < 1 or prompt > 10_000_000:
        raise ServingError(f"--prompt {prompt} is not allowed; give 1 to 10,000,000 tokens")
    if not isinstance(output, int) or output < 1 or output > 10_000_000:
        raise ServingError(f"--output {output} is not allowed; give 1 to 10,000,000 tokens")
    if model.max_context is not None and prompt + output > model.max_context:
        raise ServingError(f"--prompt {prompt} + --output {output} = {prompt + output:,} tokens is past "
                           f"{model.name}'s context of {model.max_context:,} tokens (config max_position_embeddings)")
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
    problem = deployment_problem(model, Deployment(tp=tp or 1, pp=pp or 1))
    if problem:
        raise ServingError(problem)
