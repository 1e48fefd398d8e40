"""serving/v1 rows of `plan validate`: predict each published serving measurement in its own mode with
the serving cost model (costmodels.serving)."""
from __future__ import annotations

import re
import numpy as np

from costmodels.model import ModelError
from hardware import load_catalog
from costmodels.serving import (Deployment, ServingError, checkpoint_kv, continuous_performance, disaggregated_performance, max_batch,
                                memory_anatomy, prefill_pass, replica_performance)
from planner.serving.search import prefill_wait
from planner.solve.rules import check_deployment
from planner.validation.schema import field, group, run_model

GB = 1e9
SERVING_METRICS = ("output_tokens_per_s", "output_tokens_per_s_per_gpu", "ttft_ms", "tpot_ms")


def predict_serving_run(run: dict) -> dict:
    """Predict one serving/v1 row in its mode: the fields of a planner.validation.runs.RunResult. A missing
    or malformed field is named (RunSkipped)."""
    rid = str(run.get("id") or "serving-row")
    measured = run.get("measured") or {}
    metric = next((k for k in SERVING_METRICS if measured.get(k) is not None), None)
    if metric is None:
        return dict(id=rid, metric=None, measured=None, predicted=None, pct_error=None,
                         skipped="no measured " + ", ".join(SERVING_METRICS))
    meas = field(run, "measured", metric, float)
    c = group(run, "config")
    group(run, "hardware")   # named when missing
    prompt, output = field(run, "config", "input_len"), field(run, "config", "output_len")
    m = dict(group(run, "model"))
    m["seq_len"] = prompt + output
    if isinstance(m.get("moe"), dict) and not m["moe"].get("expert_ffn_hidden") and m.get("ffn_hidden"):
        m["moe"] = {**m["moe"], "expert_ffn_hidden": m["ffn_hidden"]}   # Mixtral-style: ffn_hidden is per expert
    try:
        model = run_model(m)
    except ModelError as e:
        raise ServingError(str(e)) from None
    gpu, _ = load_catalog().resolve(field(run, "hardware", "gpu", str))
    tp = field(run, "config", "tp", required=False, default=1)
    pp = field(run, "config", "pp", required=False, default=1)
    n = field(run, "hardware", "num_gpus", required=False, default=tp * pp)
    gpn = field(run, "hardware", "gpus_per_node", required=False, default=gpu.gpus_per_node)
    replicas = field(run, "config", "replicas", required=False, default=max(1, n // (tp * pp)))
    weights = _precision(c.get("weights_precision"))
    kv = _precision(c.get("kv_precision")) if c.get("kv_precision") else checkpoint_kv(gpu, weights)
    dep = Deployment(tp=tp, pp=pp, weights=weights, kv=kv, kv_read_per_query_head=_pre_gqa_engine(run.get("engine")))
    check_deployment(model, dep)
    mode = c.get("mode")
    filled: dict = {}
    if mode == "online":
        return _predict_online(run, rid, model, gpu, max(gpn, 1), dep, replicas, prompt, output)
    if mode == "first_token":
        batch = 1
    elif mode in ("static_batch", "max_throughput"):
        batch = field(run, "config", "batch_size", required=False)
        if batch is None:
            batch = max_batch(model, gpu, dep, prompt + output)
            if batch < 1:
                return dict(id=rid, metric=metric, measured=meas, predicted=None, pct_error=None,
                                 skipped="weights, KV cache of one sequence and workspace do not fit in GPU memory")
            filled["batch_size"] = batch
        batch = int(batch)
    else:
        return dict(id=rid, metric=metric, measured=meas, predicted=None, pct_error=None,
                         skipped=f"mode {mode!r}; known: static_batch, max_throughput, first_token, online")
    if metric == "ttft_ms" and mode == "max_throughput":
        return dict(id=rid, metric=metric, measured=meas, predicted=None, pct_error=None,
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
    return dict(id=rid, metric=metric, measured=meas, predicted=pred, pct_error=(pred - meas) / meas,
                     filled=filled, peak_memory_gb=mem.used / GB)


def _pre_gqa_engine(engine) -> bool:
    """Engines whose decode attention reads a shared KV head once per query head: TensorRT-LLM before 0.7
    (CHANGELOG 0.7.0: "MMHA optimization for MQA and GQA"; 0.8: XQA kernel)."""
    mt = re.search(r"tensorrt[- _]?llm\D*(\d+)\.(\d+)", (engine or "").lower())
    return bool(mt) and (int(mt.group(1)), int(mt.group(2))) < (0, 7)


def _precision(p) -> str:
    p = (p or "bf16").strip().lower()
    return {"float16": "fp16", "half": "fp16", "bfloat16": "bf16", "w8a8": "int8", "w4a16": "int4"}.get(p, p)


# the metric an online row is reported under, first measured wins (its others go to other_metrics): an
# open-loop row's throughput is its offered rate x output whenever the engine keeps up, so latency comes first
ONLINE_METRICS = ("tpot_ms", "ttft_ms", "output_tokens_per_s", "output_tokens_per_s_per_gpu")


def _predict_online(run: dict, rid: str, model, gpu, gpn: int, dep: Deployment, replicas: int, prompt: int,
                    output: int) -> dict:
    """An `online` row: requests at config.request_rate per second (open loop) or config.concurrency kept in
    flight (closed loop), continuous batching on `replicas` replicas (costmodels.serving.continuous_performance),
    or on separate prefill and decode workers (config.disaggregated; disaggregated_performance).
    Open loop: an arriving request finds 1 + rate x e2e requests in its replica (itself and, by Little's law,
    the time-average of the others: Poisson arrivals see time averages), solved for the concurrency that
    reproduces its own e2e. Closed loop: concurrency / replicas each; beyond what memory holds the rest wait,
    their wait (queue / request rate, Little's law) added to TTFT. Predicted: mean TTFT and TPOT, compared
    with the medians the rows give."""
    c = run["config"]
    rate = field(run, "config", "request_rate", float, required=False)
    conc = field(run, "config", "concurrency", required=False)
    if (rate is None) == (conc is None):
        return _skip(rid, "an online row needs exactly one of config.request_rate and config.concurrency")
    if rate is not None and rate <= 0 or conc is not None and conc <= 0:
        return _skip(rid, "config.request_rate / config.concurrency must be positive")
    measured = run.get("measured") or {}
    wanted = [m for m in ONLINE_METRICS if measured.get(m) is not None]
    split = c.get("disaggregated")
    if split:
        pred = _online_disaggregated(model, gpu, gpn, dep, split, rate, conc, prompt, output)
    else:
        pred = _online_aggregated(model, gpu, gpn, dep, replicas, rate, conc, prompt, output)
    if isinstance(pred, str):
        return _skip(rid, pred)
    out = {}
    for m in wanted:
        meas = field(run, "measured", m, float)
        out[m] = {"measured": meas, "predicted": pred[m], "pct_error": (pred[m] - meas) / meas}
    first = wanted[0]
    return dict(id=rid, metric=first, measured=out[first]["measured"], predicted=out[first]["predicted"],
                pct_error=out[first]["pct_error"], filled={"concurrency_per_replica": round(pred["concurrency"], 2)},
                other_metrics={m: v for m, v in out.items() if m != first})


def _skip(rid: str, why: str) -> dict:
    return dict(id=rid, metric=None, measured=None, predicted=None, pct_error=None, skipped=why)


def _fixed_point(f, hi: float) -> float | None:
    """The B in [1, hi] with f(B) = B for an f that grows slower than B past the root (concurrency that
    reproduces itself), None when f(hi) > hi (the offered load exceeds what the replica serves)."""
    grid = np.geomspace(1.0, max(hi, 1.0 + 1e-9), 512)
    gap = f(grid) - grid
    if gap[-1] > 0:
        return None
    i = int(np.argmax(gap <= 0))
    if i == 0:
        return 1.0
    lo_b, hi_b = grid[i - 1], grid[i]
    for _ in range(60):          # bisection between the grid points that bracket the root
        mid = 0.5 * (lo_b + hi_b)
        if f(np.array([mid]))[0] - mid > 0:
            lo_b = mid
        else:
            hi_b = mid
    return 0.5 * (lo_b + hi_b)


def _online_aggregated(model, gpu, gpn, dep, replicas, rate, conc, prompt, output) -> dict | str:
    cap = max_batch(model, gpu, dep, prompt + output)
    if cap < 1:
        return "weights, KV cache of one sequence and workspace do not fit in GPU memory"

    def perf(b):
        return continuous_performance(model, gpu, gpn, dep, b, prompt, output)

    wait = 0.0
    if rate is not None:
        lam = rate / replicas
        b = _fixed_point(lambda x: 1.0 + lam * perf(x).e2e_s, float(cap))
        if b is None:
            top = float(perf(float(cap)).requests_per_s[0]) * replicas
            return (f"request rate {rate:g}/s is above the predicted capacity of {top:.3g} requests/s "
                    f"({replicas} replica(s) at {cap} requests each): the engine would queue without bound")
    else:
        b = max(1.0, conc / replicas)
        if b > cap:        # the engine runs `cap`; the rest wait for a slot
            wait = (b - cap) / float(perf(float(cap)).requests_per_s[0])
            b = float(cap)
    p = perf(b)
    ttft, tpot = float(p.ttft_s[0]) + wait, float(p.tpot_s[0])
    tps = float(p.tokens_per_s[0]) * replicas if rate is None else rate * output
    return {"ttft_ms": 1e3 * ttft, "tpot_ms": 1e3 * tpot, "output_tokens_per_s": tps,
            "output_tokens_per_s_per_gpu": tps / (replicas * dep.gpus), "concurrency": b}


def _online_disaggregated(model, gpu, gpn, dep, split, rate, conc, prompt, output) -> dict | str:
    """Prefill workers run passes of prompts and hand each KV cache to a decode worker (DistServe, Splitwise);
    decode concurrency per decode worker is its share of the requests decoding (Little's law over the decode
    phase); a prompt's wait for a prefill worker is M/D/1 queueing at the arrival rate."""
    try:
        pf, dc = split["prefill"], split["decode"]
        p_dep = Deployment(tp=int(pf["tp"]), pp=1, weights=dep.weights, kv=dep.kv)
        d_dep = Deployment(tp=int(dc["tp"]), pp=1, weights=dep.weights, kv=dep.kv)
        p_rep, d_rep = int(pf.get("replicas") or 1), int(dc.get("replicas") or 1)
    except (KeyError, TypeError, ValueError):
        return "config.disaggregated needs {prefill: {tp, replicas}, decode: {tp, replicas}}"
    for d in (p_dep, d_dep):
        check_deployment(model, d)
    same_node = p_dep.gpus * p_rep + d_dep.gpus * d_rep <= gpn
    cap = max_batch(model, gpu, d_dep, prompt + output)
    if cap < 1:
        return "weights, KV cache of one sequence and workspace do not fit in a decode worker's memory"

    full = disaggregated_performance(model, gpu, gpn, p_dep, d_dep, 1.0, prompt, output, same_node)
    if rate is None:      # the closed loop's arrivals: its requests over their stay
        rate = conc / float(full.e2e_s[0])
        closed = True
    else:
        closed = False
    if rate >= p_rep * full.prefill_rate:
        return (f"request rate {rate:g}/s is above the predicted prefill capacity of "
                f"{p_rep * full.prefill_rate:.3g} requests/s")
    # a prefill pass takes the prompts that arrived during the last one: the fewest per pass that keep up
    n = 1
    while n < full.prefill_batch and n / prefill_pass(model, gpu, gpn, p_dep, n, prompt)[1] * p_rep <= rate:
        n += 1

    def perf(b):
        return disaggregated_performance(model, gpu, gpn, p_dep, d_dep, b, prompt, output, same_node, prefill_batch=n)

    if not closed:
        lam = rate / d_rep
        b = _fixed_point(lambda x: 1.0 + lam * (output - 1) * perf(x).tpot_s, float(cap))
        if b is None:
            return f"request rate {rate:g}/s is above the predicted decode capacity of the {d_rep} decode worker(s)"
    else:
        # the share of a request's stay spent decoding puts that share of the requests on the decode workers
        b = max(1.0, conc / d_rep)
        for _ in range(20):
            q = perf(b)
            share = (output - 1) * float(q.tpot_s[0]) / float(q.e2e_s[0])
            b = min(float(cap), max(1.0, conc * share / d_rep))
    q = perf(b)
    # a prompt waits for the prefill workers: M/D/1 with Poisson arrivals at rate / p_rep per worker and a
    # pass of n prompts as the service (Pollaczek-Khinchine, deterministic service: rho S / (2 (1 - rho)))
    ttft = float(q.ttft_s) + float(prefill_wait(rate, p_rep, n, q.prefill_rate, d_rep * b))
    tpot = float(q.tpot_s[0])
    tps = conc * output / float(q.e2e_s[0]) if closed else rate * output
    gpus = p_dep.gpus * p_rep + d_dep.gpus * d_rep
    return {"ttft_ms": 1e3 * ttft, "tpot_ms": 1e3 * tpot, "output_tokens_per_s": tps,
            "output_tokens_per_s_per_gpu": tps / gpus, "concurrency": b}
