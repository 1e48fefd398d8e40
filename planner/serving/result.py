"""`plan serve`'s output schema: the serving plan, the result document and the assumptions it states."""
from __future__ import annotations

from costmodels.calibration import ServingCalibration
from costmodels.serving import fused_collective_latency_s
from hardware import GPUSpec
from planner.solve.result import GB, ClusterOut, ModelOut, Out


class ServePlan(Out):
    rank: int
    # aggregated: every replica prefills and decodes; disaggregated: `prefill` replicas hand each prompt's KV
    # cache to the replicas described by tp / pp / ep / replicas / batch, which only decode
    mode: str
    tp: int
    pp: int
    ep: int
    replicas: int
    gpus: int                          # GPUs the plan uses (tp x pp x replicas)
    # attention data parallel groups within a replica's tp GPUs (each its own sequences; experts span all tp)
    attn_dp: int = 1
    weights: str
    kv_cache: str
    batch: int                         # requests in the engine at once per replica, its concurrency (vLLM --max-num-seqs)
    max_batch: int                     # most sequences of prompt + output tokens that fit per replica
    ttft_s: float
    tpot_s: float
    e2e_latency_s: float               # ttft + (output - 1) x tpot = batch x output / tokens_per_s_per_replica
    tokens_per_s: float                # generated tokens/s, all replicas
    tokens_per_s_per_replica: float
    tokens_per_s_per_gpu: float
    requests_per_s: float
    usd_per_million_tokens: float
    usd_per_1k_tokens: float
    kv_cache_bytes_per_token: float    # whole model, this plan's KV precision
    kv_cache_bytes_per_token_per_gpu: float
    memory_gb: dict[str, float]        # one GPU of the fullest stage
    decode_ms: dict[str, float]        # one decode step by cause ("total"), and "others_prefill": total + it = TPOT
    decode_bound: str                  # "memory" (weights + KV reads) or "compute"
    prefill: dict | None = None        # disaggregated: the prefill replicas (tp, pp, ep, replicas, gpus,
                                       # prompts_per_pass, prompts_per_s, pass_ms)
    kv_transfer_ms: float = 0.0        # disaggregated: one prompt's KV cache from a prefill to a decode replica


class ServeResult(Out):
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
    # the matching `vllm serve` command: planner.frameworks.vllm.with_vllm_command fills it in
    vllm_command: str | None = None
    # the same plan's launch commands per engine (vllm, sglang, trtllm): planner.frameworks.api.with_serving_commands
    commands: dict[str, str] | None = None


class ServeFront(Out):
    """`plan serve --front`: the non-dominated plans (tokens/s per GPU against tokens/s per user) within the
    limits, from the fastest per user to the most per GPU; each uses as many replicas as the GPUs hold."""
    model: ModelOut
    cluster: ClusterOut
    request: dict
    assumptions: dict
    plans: list[ServePlan]
    search: dict


def assumptions(srv: ServingCalibration, gpu: GPUSpec, batch_cap: int) -> dict:
    """What a serving prediction assumes, stated in its output."""
    pcie = gpu.intra_node_link.strip().lower().startswith("pcie")
    return {
        "gpu_memory_utilization": srv.gpu_memory_utilization,
        "kv_reservation": "full prompt + output per sequence (no eviction)",
        "prefill_chunk_tokens": srv.prefill_chunk_tokens,
        "workspace_gb": srv.workspace_bytes / GB,
        "batching": "continuous batching in steady state (chunked prefill mixed into decode steps): each step every "
                    "running request advances one token or one prompt chunk; TTFT = its prefill under the others' "
                    "decoding, TPOT = a decode step plus the others' prefills between its tokens; tokens/s = "
                    "concurrency x output / e2e (Little's law); waits for a running step to end are left out",
        "quantisation": "fp8 W8A8 on fp8 tensor cores where the GPU has them; int8 / int4 weight-only (16-bit GEMMs); "
                        "embedding and LM head stay 16-bit",
        "tp_link": f"{gpu.intra_node_link} ({'PCIe' if pcie else 'NVLink-class'}, all-reduce latency "
                   f"{1e6 * fused_collective_latency_s(gpu, srv):g} us)",
        "price_usd_per_gpu_hour": gpu.price_usd_per_gpu_hour,
        "price_source": gpu.price_source,
        "price_kind": gpu.price_kind,
        "batch_cap": batch_cap,
    }

