"""serving/v1 rows of `plan validate`: predict each published serving measurement in its own mode with
the serving cost model (costmodels.serving)."""
from __future__ import annotations

import re
import numpy as np

from costmodels.model import ModelError
from hardware import load_catalog
from costmodels.serving import Deployment, ServingError, max_batch, memory_anatomy, replica_performance
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
    dep = Deployment(tp=tp, pp=pp, weights=_precision(c.get("weights_precision")),
                     kv=_precision(c.get("kv_precision")), kv_read_per_query_head=_pre_gqa_engine(run.get("engine")))
    check_deployment(model, dep)
    mode = c.get("mode")
    filled: dict = {}
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
                         skipped=f"mode {mode!r}; known: static_batch, max_throughput, first_token")
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
