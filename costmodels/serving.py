"""Inference serving cost model: memory anatomy, prefill (time to first token), decode (time per output
token), throughput and cost of one model replica of tp x pp GPUs. Pure functions; numpy arrays of batch
sizes in, arrays out, so a search can evaluate every batch at once.

Formulas and sources (docs/serving.md has the derivations):
- KV cache bytes per token = 2 (K and V) x layers x kv_heads x head_dim x bytes (seed article 003,
  docs/reference/formulas.md "Inference"); GQA / MQA store kv_heads < heads; tensor parallelism splits the KV heads
  (a KV head is replicated when tp > kv_heads, as vLLM and TensorRT-LLM do).
- Weights: quantised checkpoints (fp8, int8 / int4 AWQ / GPTQ) quantise the transformer layers' matrices
  and keep the embedding and LM head in 16 bits (vLLM / TensorRT-LLM quantisation recipes).
- Each kernel runs at the roofline of its own work: time = max(FLOPs / (peak x efficiency),
  bytes / (HBM bandwidth x efficiency)) (Williams et al. 2009, roofline); a forward pass is the sum over
  its kernels, which run one after another. Decode GEMMs read the weights once per step for the whole
  batch, attention reads each sequence's KV cache (seed article 002: decode is memory bound at small batch).
- Prefill GEMMs use the project's shape-dependent GEMM model (costmodels.compute.gemm_time); decode GEMMs
  are skinny (M = batch) and run as memory-streaming GEMV / split-K kernels, so only their N and K
  dimensions enter the efficiency; causal flash attention does 2*s^2*h FLOPs per sequence per layer.
- Tensor parallelism: two all-reduces of the layer's activations per layer (Shoeybi et al. 2019), timed by
  the training collective model (costmodels.comm.collective_time, alpha-beta, Thakur et al. 2005); inside a
  node one fused kernel per collective with a latency that depends on the link (NVLink vs PCIe) in place
  of the ring's per-step latency (tp_collective_time).
- Pipeline parallelism: m = min(pp, batch) micro-batches keep the stages busy; a token still passes every
  stage, so time per output token = the whole model's time for one micro-batch plus (pp-1) sends.
- MoE: a decode step reads only the experts its tokens are routed to: E x (1 - (1 - k/E)^tokens) distinct
  experts in expectation under uniform routing (occupancy of E bins by tokens x k draws; DeepSpeed-MoE
  inference, Rajbhandari et al. 2022, section 5, on expert weights dominating small-batch latency).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from dataclasses import replace as dc_replace

import numpy as np

from costmodels import calibration
from costmodels.calibration import Calibration, ServingCalibration, calibration_for
from costmodels.comm import collective_time, group_link, p2p_time
from costmodels.compute import attention_efficiency, gemm_efficiency, mlp_gemm_widths
from costmodels.model import ModelSpec
from hardware import GPUSpec

__all__ = ["BYTES", "WEIGHT_PRECISIONS", "KV_PRECISIONS", "ServingError", "Deployment", "MemoryAnatomy",
           "kv_cache_bytes_per_token", "kv_bytes_per_token_per_gpu", "weight_bytes_total", "memory_anatomy",
           "max_batch", "decode_step_time", "prefill_time", "ReplicaPerformance", "replica_performance",
           "ContinuousPerformance", "continuous_performance", "DisaggregatedPerformance",
           "disaggregated_performance", "kv_transfer_time", "prefill_pass", "decode_pool", "combine_disaggregated",
           "cached_prefix", "uncached_prefill_time", "Speculation", "speculative_step_time",
           "usd_per_million_tokens", "compute_precision", "tp_collective_time", "fused_collective_latency_s"]

BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5}
WEIGHT_PRECISIONS = ("bf16", "fp16", "fp8", "int8", "int4")
KV_PRECISIONS = ("bf16", "fp16", "fp8", "int8")


class ServingError(ValueError):
    """One-line user-facing message naming the bad value and what is allowed."""


@dataclass(frozen=True)
class Deployment:
    """One model replica: tensor x pipeline GPUs, weight and KV-cache precision, expert parallelism."""
    tp: int = 1
    pp: int = 1
    weights: str = "bf16"
    kv: str = "bf16"
    ep: int = 1            # MoE: experts spread over the tp group (ep == tp) or each expert split (1)
    # Decode attention kernels without GQA / MQA reuse stream a KV head once per query head that shares it
    # (TensorRT-LLM before 0.7's "MMHA optimization for MQA and GQA" and 0.8's XQA kernel, which its blog
    # credits with 1.9-2.4x Llama-70B throughput). Current engines read each KV head once.
    kv_read_per_query_head: bool = False
    # Attention data parallelism (MoE models): the tp GPUs run attention as attn_dp groups of tp / attn_dp GPUs,
    # each over its own 1/attn_dp of the sequences and their KV caches, while the experts span all tp GPUs
    # (SGLang --enable-dp-attention --dp-size, vLLM --data-parallel-size with --enable-expert-parallel,
    # TensorRT-LLM enable_attention_dp; DeepSeek-V3 report 3.4.2: decoding with DP attention and EP experts)
    attn_dp: int = 1

    def __post_init__(self) -> None:
        if self.tp < 1 or self.pp < 1:
            raise ServingError(f"tp={self.tp}, pp={self.pp}: both must be >= 1")
        if self.weights not in WEIGHT_PRECISIONS:
            raise ServingError(f"weights precision {self.weights!r}; allowed: {', '.join(WEIGHT_PRECISIONS)}")
        if self.kv not in KV_PRECISIONS:
            raise ServingError(f"KV-cache precision {self.kv!r}; allowed: {', '.join(KV_PRECISIONS)}")
        if self.ep not in (1, self.tp):
            raise ServingError(f"ep={self.ep}: expert parallelism spans the tp group, so ep is 1 or tp={self.tp}")
        if self.attn_dp < 1 or self.tp % self.attn_dp or (self.attn_dp > 1 and self.pp > 1):
            raise ServingError(f"attn_dp={self.attn_dp}: attention data parallelism splits the tp={self.tp} GPUs "
                               f"of one pipeline stage into groups; it must divide tp, with pp=1")

    @property
    def gpus(self) -> int:
        return self.tp * self.pp

    @property
    def attn_tp(self) -> int:
        """GPUs splitting one attention (tensor parallel) within an attention data-parallel group."""
        return self.tp // self.attn_dp


def checkpoint_kv(gpu: GPUSpec, weights: str) -> str:
    """The KV-cache precision an engine runs when none is set: FP8 for an FP8 checkpoint on a GPU with FP8
    (NVIDIA ModelOpt FP8 checkpoints declare "kv_cache_quant_algo": "FP8" in hf_quant_config.json, and
    vLLM / SGLang / TensorRT-LLM follow it under kv_cache_dtype "auto"), 16-bit otherwise."""
    if weights == "fp8" and gpu.tflops.get("fp8"):
        return "fp8"
    return "bf16" if gpu.tflops.get("bf16") else "fp16"


def compute_precision(gpu: GPUSpec, weights: str) -> str:
    """GEMM precision: fp8 weights run W8A8 on fp8 tensor cores where the GPU has them (Hopper, Ada,
    Blackwell, MI300); other quantised weights are dequantised into 16-bit GEMMs (W8A16 / W4A16, e.g.
    Marlin / AWQ kernels), so they save memory and bandwidth but not FLOPs."""
    if weights == "fp8" and gpu.tflops.get("fp8"):
        return "fp8"
    return "bf16" if gpu.tflops.get("bf16") else "fp16"


def _peak16(gpu: GPUSpec) -> float:
    return gpu.peak_tflops("bf16" if gpu.tflops.get("bf16") else "fp16") * 1e12


# ---- memory -----------------------------------------------------------------------------------------
def kv_cache_bytes_per_token(model: ModelSpec, kv: str = "bf16") -> float:
    """2 x layers x kv_heads x head_dim x bytes (seed 003; MHA in bf16: 4 x layers x hidden); multi-head latent
    attention caches one latent per token and layer, kv_lora_rank + qk_rope_head_dim wide (DeepSeek-V2,
    Liu et al. 2024, Table 1: (d_c + d_h^R) l elements per token)."""
    if model.mla is not None:
        return model.layers * _latent_width(model) * BYTES[kv]
    return 2.0 * model.layers * model.kv_heads * model.head_dim * BYTES[kv]


def _latent_width(model: ModelSpec) -> int:
    """Cached width per token and layer of an MLA model: the compressed KV latent and the shared RoPE key."""
    return model.mla.kv_lora_rank + model.mla.qk_rope_head_dim


def _kv_heads_per_gpu(model: ModelSpec, tp: int) -> int:
    return math.ceil(model.kv_heads / tp)   # a KV head is replicated when tp > kv_heads


def _stage_layers(model: ModelSpec, pp: int) -> int:
    return math.ceil(model.layers / pp)     # the fullest stage (engines split layers evenly)


def kv_bytes_per_token_per_gpu(model: ModelSpec, dep: Deployment) -> float:
    """KV cache one GPU of the fullest pipeline stage holds per token of context of the replica's sequences (an
    MLA latent is not split by heads: every tensor-parallel rank holds it whole, as SGLang / vLLM / TensorRT-LLM
    run DeepSeek models). With attention data parallelism a GPU holds 1/attn_dp of the sequences, split over
    its attention group's attn_tp GPUs."""
    if model.mla is not None:
        per = _stage_layers(model, dep.pp) * _latent_width(model) * BYTES[dep.kv]
    else:
        per = 2.0 * _stage_layers(model, dep.pp) * _kv_heads_per_gpu(model, dep.attn_tp) * model.head_dim * BYTES[dep.kv]
    return per / dep.attn_dp


def _layer_matrix_params(model: ModelSpec) -> tuple[float, float]:
    """(dense layer, MoE layer) parameters, quantised part; norms are negligible and counted with them."""
    dense = model.params_attention() + model.params_mlp_dense() + model.params_norms()
    if model.moe is None:
        return dense, dense
    moe = model.moe
    moe_layer = (model.params_attention() + model.params_norms() + model.params_router()
                 + (moe.experts + moe.shared_experts) * model.params_expert())
    return dense, moe_layer


def _embed_head_params(model: ModelSpec) -> tuple[float, float]:
    embed = model.params_embedding()
    head = model.vocab * model.hidden  # LM head weights (a tied model still reads the table as its head)
    return embed, head


def weight_bytes_total(model: ModelSpec, weights: str) -> float:
    """All weights of one replica: quantised layers + 16-bit embedding and (untied) LM head."""
    dense, moe_layer = _layer_matrix_params(model)
    n_moe = model.num_moe_layers
    layers = (model.layers - n_moe) * dense + n_moe * moe_layer
    return layers * BYTES[weights] + (model.params_total() - model.params_layers_total()) * 2.0


def _weight_bytes_per_gpu(model: ModelSpec, dep: Deployment) -> float:
    """The fullest stage's GPU: its layers split over tp, plus the embedding (first) / head (last)."""
    dense, moe_layer = _layer_matrix_params(model)
    avg_layer = (dense * (model.layers - model.num_moe_layers) + moe_layer * model.num_moe_layers) / model.layers
    layers = _stage_layers(model, dep.pp) * avg_layer * BYTES[dep.weights]
    embed, head = _embed_head_params(model)
    ends = (embed + head) if dep.pp == 1 else max(embed, head)
    # attention data parallelism: every attention group holds the attention weights, split over attn_tp
    attn = _stage_layers(model, dep.pp) * (model.params_attention() + model.params_norms()) * BYTES[dep.weights]
    return (layers + ends * 2.0) / dep.tp + attn * (1.0 / dep.attn_tp - 1.0 / dep.tp)


def _activation_bytes_per_token(model: ModelSpec, tp: int) -> float:
    """Live 16-bit activations per token of a prefill pass: residual and norm output (2h), QKV
    ((h + 2 kv_dim)/t), MLP input projections (2f/t SwiGLU, f/t GELU) and their product (f/t)."""
    f = model.ffn_hidden if model.moe is None else max(model.ffn_hidden, model.moe.expert_ffn_hidden
                                                       * (model.moe.top_k + model.moe.shared_experts))
    mlp = (3 * f if model.ffn_type == "swiglu" else 2 * f) / tp
    return 2.0 * (2 * model.hidden + (model.q_dim + 2 * model.kv_dim) / tp + mlp)


@dataclass(frozen=True)
class MemoryAnatomy:
    """Bytes on one GPU of the fullest stage."""
    capacity: float        # datasheet GB x 1e9
    usable: float          # capacity x gpu_memory_utilization
    weights: float
    activations: float     # prefill workspace (one chunk) + logits of the batch
    workspace: float       # CUDA graphs, communication buffers, allocator slack
    kv_cache: float        # KV of the batch at full context
    kv_capacity: float     # what is left for KV cache after weights and workspace

    @property
    def used(self) -> float:
        return self.weights + self.activations + self.workspace + self.kv_cache

    @property
    def fits(self) -> bool:
        return self.used <= self.usable

    @property
    def missing(self) -> float:
        return max(0.0, self.used - self.usable)


def memory_anatomy(model: ModelSpec, gpu: GPUSpec, dep: Deployment, batch: int, context: int,
                   srv: ServingCalibration | None = None) -> MemoryAnatomy:
    """Memory of one GPU holding `batch` sequences of `context` tokens (prompt + output) each."""
    srv = srv or calibration.SERVING
    usable = gpu.memory_bytes * srv.gpu_memory_utilization
    w = _weight_bytes_per_gpu(model, dep)
    chunk = min(srv.prefill_chunk_tokens, max(batch, 1) * context)
    act = chunk * _activation_bytes_per_token(model, dep.tp) + batch * model.vocab * 4.0  # + fp32 logits
    kv = batch * context * kv_bytes_per_token_per_gpu(model, dep)
    return MemoryAnatomy(capacity=gpu.memory_bytes, usable=usable, weights=w, activations=act,
                         workspace=srv.workspace_bytes, kv_cache=kv,
                         kv_capacity=max(0.0, usable - w - act - srv.workspace_bytes))


def max_batch(model: ModelSpec, gpu: GPUSpec, dep: Deployment, context: int,
              srv: ServingCalibration | None = None) -> int:
    """Most sequences of `context` tokens whose weights, KV cache (full context each: no eviction, as
    TensorRT-LLM's guaranteed-no-evict scheduler reserves) and workspace fit; 0 if not even one does."""
    srv = srv or calibration.SERVING
    kv = context * kv_bytes_per_token_per_gpu(model, dep) + model.vocab * 4.0   # per sequence, with its logits
    a = _activation_bytes_per_token(model, dep.tp)
    room = gpu.memory_bytes * srv.gpu_memory_utilization - _weight_bytes_per_gpu(model, dep) - srv.workspace_bytes
    full_chunk = (room - srv.prefill_chunk_tokens * a) // kv      # batches whose prompts fill a whole chunk
    if full_chunk * context >= srv.prefill_chunk_tokens:
        return int(full_chunk)
    small = room // (kv + context * a)                            # the chunk is the whole batch
    return int(max(0, min(small, math.ceil(srv.prefill_chunk_tokens / context))))


# ---- time -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Rates:
    peak: float            # GEMM peak, FLOP/s, at the compute precision
    peak16: float          # 16-bit peak (LM head)
    peak_attn: float       # attention: fp8 with an fp8 KV cache where the GPU has fp8 tensor cores
    hbm: float             # achievable HBM bytes/s
    wbytes: float          # bytes per quantised weight
    kvbytes: float


def _rates(gpu: GPUSpec, dep: Deployment, cal: Calibration) -> _Rates:
    # An fp8 KV cache runs attention in fp8 where the GPU has fp8 tensor cores (TensorRT-LLM fp8 context
    # FMHA; vLLM's FlashAttention-3 backend "performs attention in the quantized (FP8) domain").
    attn = gpu.peak_tflops("fp8") * 1e12 if dep.kv == "fp8" and gpu.tflops.get("fp8") else _peak16(gpu)
    return _Rates(peak=gpu.peak_tflops(compute_precision(gpu, dep.weights)) * 1e12, peak16=_peak16(gpu), peak_attn=attn,
                  hbm=gpu.hbm_gbps * 1e9 * cal.hbm_efficiency, wbytes=BYTES[dep.weights], kvbytes=BYTES[dep.kv])


def _gemm(M, N: float, K: float, wbytes: float, peak: float, r: _Rates, cal: Calibration, tiled_m: bool):
    """One GEMM of M token rows by an N x K weight: the roofline of its 2MNK FLOPs at the training GEMM
    efficiency (costmodels.compute.gemm_efficiency, the one shape formula; compute.gemm_time vectorised
    over M) and of reading the weights once. Prefill (tiled_m): tile / wave quantisation in all three
    dimensions. Decode (M = tokens of a step): skinny GEMV / split-K kernels stream the weights and M does
    not pad to a tile, so only N and K enter the efficiency."""
    M = np.maximum(np.asarray(M, dtype=float), 1.0)
    compute = 2.0 * M * N * K / (peak * gemm_efficiency(M if tiled_m else None, N, K, cal))
    return np.maximum(compute, N * K * wbytes / r.hbm)


def _gemm_decode(M, N: float, K: float, wbytes: float, peak: float, r: _Rates, cal: Calibration):
    return _gemm(M, N, K, wbytes, peak, r, cal, tiled_m=False)


def _gemm_prefill(M, N: float, K: float, wbytes: float, peak: float, r: _Rates, cal: Calibration):
    return _gemm(M, N, K, wbytes, peak, r, cal, tiled_m=True)


def _expected_experts(E: int, k: int, tokens):
    """Distinct experts that `tokens` tokens, each routed to k of E experts uniformly, touch."""
    return E * (1.0 - np.power(1.0 - k / E, tokens))


def fused_collective_latency_s(gpu: GPUSpec, srv: ServingCalibration | None = None) -> float:
    """Fixed latency of one collective of a tensor-parallel group inside a node (ServingCalibration: the
    engines' one-shot custom all-reduce over NVLink, NCCL through the switch over PCIe)."""
    srv = srv or calibration.SERVING
    pcie = gpu.intra_node_link.strip().lower().startswith("pcie")
    return srv.allreduce_latency_pcie_s if pcie else srv.allreduce_latency_nvlink_s


def tp_collective_time(kind: str, nbytes, t: int, gpu: GPUSpec, gpus_per_node: int, cal: Calibration,
                       srv: ServingCalibration | None = None):
    """Seconds of one collective ("all_reduce", "all_to_all") of a tp group of t consecutive GPUs, for an
    array of buffer sizes: costmodels.comm.collective_time (ring volume over the link, Thakur et al. 2005),
    its latency counted once. Inside a node the engines run one fused kernel per collective (vLLM
    custom_all_reduce, TensorRT-LLM), whose fixed latency (fused_collective_latency_s) replaces the ring's
    per-step latency; a group spanning nodes runs NCCL's hierarchical ring, with collective_time's own
    per-step latencies and nothing added."""
    srv = srv or calibration.SERVING
    nbytes = np.asarray(nbytes, dtype=float)
    if t <= 1:
        return np.zeros_like(nbytes)
    link = group_link(t, 1, gpus_per_node)
    alpha = 0.0
    if link.per_node >= t:
        cal = dc_replace(cal, intra_node_latency_s=0.0)
        alpha = fused_collective_latency_s(gpu, srv)
    # collective_time is affine in the bytes for a given group (latency + bytes x time per byte): two
    # evaluations give it for every size at once
    per_byte = collective_time(kind, 1.0, link, gpu, dc_replace(cal, intra_node_latency_s=0.0,
                                                                 inter_node_latency_s=0.0))
    latency = collective_time(kind, 1.0, link, gpu, cal) - per_byte
    return np.where(nbytes > 0, alpha + latency + per_byte * nbytes, 0.0)


def _layer_time(model: ModelSpec, gpu: GPUSpec, gpus_per_node: int, dep: Deployment, tokens, ctx_tokens,
                seqs, prefill: bool, cal: Calibration, srv: ServingCalibration) -> dict[str, np.ndarray]:
    """Seconds of one (average) layer on one GPU for a forward pass over `tokens` tokens of `seqs`
    sequences: GEMMs, attention, element-wise, tensor-parallel communication, launch overhead.
    ctx_tokens: decode, the KV tokens each sequence attends to; prefill, the prompt length."""
    r = _rates(gpu, dep, cal)
    out = _token_parts(model, gpu, gpus_per_node, dep, tokens, prefill, r, cal, srv)
    if prefill:
        out["attention"] = _prefill_attention(model, dep, seqs, ctx_tokens, ctx_tokens, 0, r, cal)
    else:
        out["attention"] = _decode_attention(model, dep, tokens, ctx_tokens, seqs, r, cal)
    return out


def _token_parts(model: ModelSpec, gpu: GPUSpec, gpus_per_node: int, dep: Deployment, tokens, prefill, r: _Rates,
                 cal: Calibration, srv: ServingCalibration) -> dict[str, np.ndarray]:
    """The parts of a layer's forward pass over `tokens` tokens that do not depend on what they attend to:
    GEMMs (prefill tiling where `prefill`, an array or a bool), element-wise, tensor-parallel (and expert)
    communication, launch overhead."""
    t, h = dep.tp, model.hidden
    tokens = np.asarray(tokens, dtype=float)
    prefill = np.asarray(prefill, dtype=bool)
    # attention data parallelism: this GPU's attention group runs 1/attn_dp of the tokens over attn_tp GPUs
    ta, a_tokens = dep.attn_tp, tokens / dep.attn_dp

    def gemm(M, N, K, wbytes, peak):
        return np.where(prefill, _gemm_prefill(M, N, K, wbytes, peak, r, cal), _gemm_decode(M, N, K, wbytes, peak, r, cal))

    kvh, d = _kv_heads_per_gpu(model, ta), model.head_dim
    # attention projections, column / row split over the attention group's ta GPUs (Shoeybi et al. 2019)
    q = model.q_dim
    if model.mla is not None:   # down projections on every rank, up projections and output split over ta
        t_attn = sum(gemm(a_tokens, n, k, r.wbytes, r.peak) for n, k in model.attention_gemm_widths(ta))
    else:
        t_attn = (gemm(a_tokens, (q + 2 * kvh * d * ta) / ta, h, r.wbytes, r.peak)
                  + gemm(a_tokens, h, q / ta, r.wbytes, r.peak))
    dense_mlp = sum(gemm(tokens, n, k, r.wbytes, r.peak) for n, k in mlp_gemm_widths(model.ffn_type, h, model.ffn_hidden, t))
    mlp = dense_mlp
    comm_extra = 0.0
    if model.moe is not None:
        moe = model.moe
        touched = _expected_experts(moe.experts, moe.top_k, tokens)
        per_expert = tokens * moe.top_k / touched
        if dep.ep > 1:   # whole experts on each GPU of the group: E/ep of them
            one = sum(gemm(per_expert, n, k, r.wbytes, r.peak)
                      for n, k in mlp_gemm_widths(model.ffn_type, h, moe.expert_ffn_hidden, 1))
            experts = touched / dep.ep * one
            # dispatch + combine all-to-all of top_k x tokens x h (GShard; 16-bit activations)
            comm_extra = 2 * tp_collective_time("all_to_all", tokens * moe.top_k * h * 2.0 / t, t, gpu, gpus_per_node,
                                                cal, srv)
        else:            # every expert split over tp
            one = sum(gemm(per_expert, n, k, r.wbytes, r.peak)
                      for n, k in mlp_gemm_widths(model.ffn_type, h, moe.expert_ffn_hidden, t))
            experts = touched * one
        shared = moe.shared_experts * sum(gemm(tokens, n, k, r.wbytes, r.peak)
                                          for n, k in mlp_gemm_widths(model.ffn_type, h, moe.expert_ffn_hidden, t))
        router = gemm(tokens, moe.experts, h, 2.0, r.peak16)
        frac = model.num_moe_layers / model.layers
        mlp = frac * (experts + shared + router) + (1 - frac) * dense_mlp
        comm_extra = frac * comm_extra
    # element-wise (16-bit): 2 norms read+write (4h), 2 residual adds (6h), activation 3f/t SwiGLU, 2f/t GELU
    elem = tokens * 2.0 * (10 * h + (3 if model.ffn_type == "swiglu" else 2) * model.ffn_hidden / t) / r.hbm
    # two all-reduces of tokens x h 16-bit activations per layer (attention output, MLP output); with attention
    # data parallelism the first within the attention group, and gathering the groups' tokens for the experts and
    # scattering them back moves what the MLP's all-reduce does
    comm = (tp_collective_time("all_reduce", a_tokens * h * 2.0, ta, gpu, gpus_per_node, cal, srv)
            + tp_collective_time("all_reduce", tokens * h * 2.0, t, gpu, gpus_per_node, cal, srv) + comm_extra)
    return {"gemm": t_attn + mlp, "elementwise": elem, "tp_comm": comm,
            "overhead": np.full_like(tokens, srv.layer_overhead_s)}


# Attention core (Dao et al. 2022, FlashAttention): causal prefill 2*s^2*h FLOPs per sequence (half of QK^T +
# AV) at the attention efficiency of s-token calls; decode reads every cached K and V (memory bound) and does
# 4*ctx*h FLOPs per query token.
def _prefill_attention(model: ModelSpec, dep: Deployment, seqs, prompt, new, cached, r: _Rates, cal: Calibration):
    """`seqs` prompts' new tokens (`new` each, after a `cached` prefix; prompt = cached + new) attending
    causally: per new token 4 x (cached + new / 2) x heads x d FLOPs; the prefix's KV read once."""
    heads, d = model.heads / dep.attn_tp, model.head_dim
    seqs = np.asarray(seqs, dtype=float) / dep.attn_dp       # this GPU's attention group's share
    flops = 4.0 * seqs * new * (cached + new / 2.0) * heads * d
    kv_read = seqs * prompt * (_latent_width(model) if model.mla is not None
                               else 2.0 * _kv_heads_per_gpu(model, dep.attn_tp) * d) * r.kvbytes
    return np.maximum(flops / (r.peak_attn * attention_efficiency(prompt, cal)), kv_read / r.hbm)


def _decode_attention(model: ModelSpec, dep: Deployment, tokens, ctx_tokens, seqs, r: _Rates, cal: Calibration):
    """Every query token attends to the cache; each sequence's cache is read once per step, however many of its
    tokens are checked in it (speculative verification: seqs < tokens)."""
    heads, d = model.heads / dep.attn_tp, model.head_dim
    tokens = np.asarray(tokens, dtype=float) / dep.attn_dp     # this GPU's attention group's share
    seqs = np.asarray(seqs, dtype=float) / dep.attn_dp
    if model.mla is not None:
        # absorbed MLA decode (DeepSeek-V2, Liu et al. 2024, 2.1.2: W_UK into the query, W_UV into the output):
        # every head scores the latent and RoPE key (kv_lora + rope wide) and sums the latents (kv_lora), one
        # cached latent per token read once per sequence, like multi-query attention
        a = model.mla
        flops = 2.0 * np.asarray(tokens, dtype=float) * ctx_tokens * heads * (_latent_width(model) + a.kv_lora_rank)
        kv_read = np.asarray(seqs, dtype=float) * ctx_tokens * _latent_width(model) * r.kvbytes
        return np.maximum(flops / (r.peak_attn * cal.attention_efficiency), kv_read / r.hbm)
    kvh = _kv_heads_per_gpu(model, dep.attn_tp)
    flops = 4.0 * np.asarray(tokens, dtype=float) * ctx_tokens * heads * d
    kv_read = np.asarray(seqs, dtype=float) * ctx_tokens * 2.0 * (heads if dep.kv_read_per_query_head else kvh) * d * r.kvbytes
    return np.maximum(flops / (r.peak_attn * cal.attention_efficiency), kv_read / r.hbm)


def mixed_step_time(model: ModelSpec, gpu: GPUSpec, gpus_per_node: int, dep: Deployment, decoding, context: float,
                    prefill_tokens, prompt: int, cached: int = 0, cal: Calibration | None = None,
                    srv: ServingCalibration | None = None) -> np.ndarray:
    """Seconds of one continuous-batching step that decodes `decoding` sequences (KV caches of `context`
    tokens) and prefills `prefill_tokens` new prompt tokens in the same forward pass (chunked prefill: vLLM,
    SGLang, TensorRT-LLM; Agrawal et al. 2024, Sarathi-Serve): one pass over both, so the weights are read
    and the per-layer latencies paid once; attention is each kind's own. Arrays broadcast. Pipeline: as
    decode_step_time, m = min(pp, decoding) micro-batches, each token through every stage."""
    srv = srv or calibration.SERVING
    cal = cal or calibration_for(gpu.family, gpu.name)
    r = _rates(gpu, dep, cal)
    m, _ = _micro_batches(dep, np.maximum(decoding, 1.0))
    x = np.asarray(decoding, dtype=float) / m
    pre = np.asarray(prefill_tokens, dtype=float) / m
    new = max(prompt - cached, 1)
    parts = _token_parts(model, gpu, gpus_per_node, dep, x + pre, pre > 0, r, cal, srv)
    attn = _decode_attention(model, dep, x, context, x, r, cal) + _prefill_attention(model, dep, pre / new, prompt, new,
                                                                                      cached, r, cal)
    layer = sum(parts.values()) + attn
    return (model.layers * layer + _head_time(model, gpu, dep, x + pre / new, cal)
            + (dep.pp - 1) * _p2p(model, gpu, gpus_per_node, dep, x + pre, cal))


def _head_time(model: ModelSpec, gpu: GPUSpec, dep: Deployment, seqs, cal: Calibration):
    """LM head (16-bit, vocab split over tp) for one token per sequence."""
    r = _rates(gpu, dep, cal)
    return _gemm_decode(np.asarray(seqs, dtype=float), model.vocab / dep.tp, model.hidden, 2.0, r.peak16, r, cal)


def _p2p(model: ModelSpec, gpu: GPUSpec, gpus_per_node: int, dep: Deployment, tokens, cal: Calibration):
    if dep.pp <= 1:
        return np.zeros_like(np.asarray(tokens, dtype=float))
    across = dep.tp * 2 > gpus_per_node   # consecutive stages on different nodes
    return np.vectorize(lambda x: p2p_time(x * model.hidden * 2.0 / dep.tp, across, gpu, cal), otypes=[float])(
        np.asarray(tokens, dtype=float))


def _micro_batches(dep: Deployment, seqs):
    """Pipeline micro-batches of a batch of `seqs` sequences: m = min(pp, seqs), of x = seqs / m each."""
    n = np.asarray(seqs, dtype=float)
    m = np.minimum(dep.pp, n)
    return m, n / m


def decode_step_time(model: ModelSpec, gpu: GPUSpec, gpus_per_node: int, dep: Deployment, batch, context: float,
                     cal: Calibration | None = None, srv: ServingCalibration | None = None,
                     tokens_per_seq: int = 1) -> dict[str, np.ndarray]:
    """Seconds per decode step of a replica decoding `batch` sequences whose KV caches hold `context`
    tokens, split by cause ("total"; with one token per sequence, the time per output token, TPOT).
    `tokens_per_seq` > 1: a speculative verification step checking that many tokens of each sequence.

    Pipeline: m = min(pp, batch) micro-batches of batch/m sequences; every token passes all stages, so
    TPOT = layers x layer(batch/m) + head + (pp - 1) sends, and each stage is busy m/pp of the time."""
    srv = srv or calibration.SERVING
    cal = cal or calibration_for(gpu.family, gpu.name)
    _, x = _micro_batches(dep, batch)
    parts = _layer_time(model, gpu, gpus_per_node, dep, x * tokens_per_seq, context, x, False, cal, srv)
    out = {k: v * model.layers for k, v in parts.items()}
    out["lm_head"] = _head_time(model, gpu, dep, x * tokens_per_seq, cal)
    out["pipeline"] = (dep.pp - 1) * _p2p(model, gpu, gpus_per_node, dep, x * tokens_per_seq, cal)
    out["total"] = sum(out.values())
    return out


def prefill_time(model: ModelSpec, gpu: GPUSpec, gpus_per_node: int, dep: Deployment, seqs, prompt: int,
                 cal: Calibration | None = None, srv: ServingCalibration | None = None) -> np.ndarray:
    """Seconds to prefill `seqs` prompts of `prompt` tokens in one batch (their first tokens come out at the
    end). Pipeline: m = min(pp, seqs) micro-batches, (m + pp - 1) stage slots of 1/pp of the model each."""
    scale, parts, head, p2p = _prefill_parts(model, gpu, gpus_per_node, dep, seqs, prompt, cal, srv)
    return scale * (model.layers * sum(parts.values()) + head) + p2p


def _prefill_parts(model, gpu, gpus_per_node, dep, seqs, prompt, cal, srv):
    """(pipeline scale, one layer's parts, LM head, pipeline sends) of prefill_time."""
    srv = srv or calibration.SERVING
    cal = cal or calibration_for(gpu.family, gpu.name)
    m, x = _micro_batches(dep, seqs)
    parts = _layer_time(model, gpu, gpus_per_node, dep, x * prompt, prompt, x, True, cal, srv)
    p2p = (dep.pp - 1) * _p2p(model, gpu, gpus_per_node, dep, x * prompt, cal)
    return (m + dep.pp - 1) / dep.pp, parts, _head_time(model, gpu, dep, x, cal), p2p


def cached_prefix(prompt: int, prefix_hit: float) -> int:
    """Tokens of a prompt found in the prefix cache (a share `prefix_hit` of it, whole tokens)."""
    if not 0.0 <= prefix_hit < 1.0:
        raise ServingError(f"prefix hit {prefix_hit!r} is not allowed; give a share in [0, 1)")
    return int(prompt * prefix_hit)


def uncached_prefill_time(model: ModelSpec, gpu: GPUSpec, gpus_per_node: int, dep: Deployment, seqs, prompt: int,
                          cached: int, cal: Calibration | None = None,
                          srv: ServingCalibration | None = None) -> np.ndarray:
    """Seconds to prefill prompts whose first `cached` tokens are in the prefix cache (vLLM automatic prefix
    caching, SGLang RadixAttention): the prefill of the new tokens alone (their GEMMs, their causal attention)
    plus their attention to the cached prefix, the attention of the whole prompt less the prefix's and the new
    tokens' own (causal P^2/2 - c^2/2 - n^2/2 = n c)."""
    if cached <= 0:
        return prefill_time(model, gpu, gpus_per_node, dep, seqs, prompt, cal, srv)
    new = prefill_time(model, gpu, gpus_per_node, dep, seqs, prompt - cached, cal, srv)

    def attention(tokens):
        scale, parts, _, _ = _prefill_parts(model, gpu, gpus_per_node, dep, seqs, tokens, cal, srv)
        return scale * model.layers * parts["attention"]

    return new + np.maximum(0.0, attention(prompt) - attention(cached) - attention(prompt - cached))


# ---- one replica, end to end -------------------------------------------------------------------------
@dataclass(frozen=True)
class ReplicaPerformance:
    """Arrays over the batch sizes asked for (one replica)."""
    batch: np.ndarray
    ttft_s: np.ndarray          # prefill of one prompt, plus the decode step it waits for when batch > 1
    batch_prefill_s: np.ndarray  # prefill of the whole batch (a static batch's time to first token)
    tpot_s: np.ndarray          # mean time per output token after the first
    tokens_per_s: np.ndarray    # generated tokens per second of the replica, prefill time included
    decode_parts: dict[str, np.ndarray] = field(repr=False)


def replica_performance(model: ModelSpec, gpu: GPUSpec, gpus_per_node: int, dep: Deployment, batch,
                        prompt: int, output: int, cal: Calibration | None = None,
                        srv: ServingCalibration | None = None) -> ReplicaPerformance:
    """A batch of sequences, each `prompt` tokens in and `output` tokens out, on one replica.

    Decode steps 1..output-1 attend to prompt + j tokens: the mean context is prompt + output/2, exact
    for the linear attention term. Throughput = batch x output / (batch prefill + (output - 1) x TPOT): a
    static batch, and the steady state of continuous batching at that concurrency (each request's prefill
    is paid once, its decode steps are shared)."""
    srv = srv or calibration.SERVING
    cal = cal or calibration_for(gpu.family, gpu.name)
    b = np.atleast_1d(np.asarray(batch, dtype=float))
    dec = decode_step_time(model, gpu, gpus_per_node, dep, b, prompt + output / 2.0, cal, srv)
    tpot = dec["total"]
    pre_b = prefill_time(model, gpu, gpus_per_node, dep, b, prompt, cal, srv)
    pre_1 = prefill_time(model, gpu, gpus_per_node, dep, np.ones(1), prompt, cal, srv)
    ttft = pre_1 + np.where(b > 1, tpot, 0.0)
    total = pre_b + max(output - 1, 0) * tpot
    return ReplicaPerformance(batch=b, ttft_s=ttft, batch_prefill_s=pre_b, tpot_s=tpot,
                              tokens_per_s=b * output / total, decode_parts=dec)


@dataclass(frozen=True)
class Speculation:
    """Speculative decoding (Leviathan et al. 2023): a drafter proposes `tokens` tokens per step, the model
    checks them in one pass and keeps each with probability `acceptance` (independent, as the paper's
    analysis assumes). `draft`: a smaller model drafting on the same GPUs, or None for a drafting head on the
    model (EAGLE, DeepSeek-V3's multi-token prediction), priced as one more layer of the model per token."""
    tokens: int
    acceptance: float
    draft: ModelSpec | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.tokens <= 16:
            raise ServingError(f"speculative tokens {self.tokens} is not allowed; give 1 to 16")
        if not 0.0 <= self.acceptance <= 1.0:
            raise ServingError(f"acceptance {self.acceptance} is not allowed; give a share in [0, 1]")

    @property
    def tokens_per_step(self) -> float:
        """Expected tokens a verification step produces: (1 - a^(k+1)) / (1 - a) (Leviathan et al. 2023, eq. 1)."""
        a, k = self.acceptance, self.tokens
        return float(k + 1) if a >= 1.0 else (1.0 - a ** (k + 1)) / (1.0 - a)


def speculative_step_time(model: ModelSpec, gpu: GPUSpec, gpus_per_node: int, dep: Deployment, batch,
                          context: float, spec: Speculation, cal: Calibration | None = None,
                          srv: ServingCalibration | None = None) -> dict[str, np.ndarray]:
    """One speculative step of `batch` sequences: `spec.tokens` draft passes and one verification pass over
    tokens + 1 tokens of each sequence ("draft" and the verification's parts; "total" the step)."""
    out = decode_step_time(model, gpu, gpus_per_node, dep, batch, context, cal, srv, tokens_per_seq=spec.tokens + 1)
    if spec.draft is not None:
        draft = decode_step_time(spec.draft, gpu, gpus_per_node, Deployment(tp=dep.tp, pp=dep.pp, weights=dep.weights,
                                                                            kv=dep.kv), batch, context, cal, srv)["total"]
    else:   # a drafting head: about one layer of the model per token
        one = decode_step_time(model, gpu, gpus_per_node, dep, batch, context, cal, srv)
        draft = (one["total"] - one["lm_head"] - one["pipeline"]) / model.layers + one["lm_head"]
    out["draft"] = spec.tokens * draft
    out["total"] = out["total"] + out["draft"]
    return out


@dataclass(frozen=True)
class ContinuousPerformance:
    """Arrays over the concurrencies asked for: one replica under continuous batching, in steady state."""
    concurrency: np.ndarray     # requests in the engine at once (its running batch, vLLM --max-num-seqs)
    ttft_s: np.ndarray          # time to first token: its prefill steps under the others' decoding
    tpot_s: np.ndarray          # mean time between its later tokens: a decode step plus the others' prefills
    e2e_s: np.ndarray           # ttft + (output - 1) x tpot: its whole stay in the engine
    step_s: np.ndarray          # the mean engine step
    tokens_per_s: np.ndarray    # generated tokens/s: concurrency x output / e2e (Little's law)
    requests_per_s: np.ndarray  # concurrency / e2e
    prefill_steps: int          # steps one prompt's prefill spans (chunks of prefill_chunk_tokens)
    decode_parts: dict[str, np.ndarray] = field(repr=False)
    tokens_per_step: float = 1.0   # tokens a decoding request gains per step (> 1 with speculative decoding)


def continuous_performance(model: ModelSpec, gpu: GPUSpec, gpus_per_node: int, dep: Deployment, concurrency,
                           prompt: int, output: int, cal: Calibration | None = None,
                           srv: ServingCalibration | None = None, prefix_hit: float = 0.0,
                           spec: Speculation | None = None) -> ContinuousPerformance:
    """`concurrency` requests of `prompt` tokens in and `output` out, served continuously by one replica
    (vLLM, SGLang and TensorRT-LLM schedule so: chunked prefill mixed into decode steps; Agrawal et al. 2024,
    Sarathi-Serve).

    Each step every running request advances by one token: a decoding one by a decode token, a prefilling
    one by a chunk of its prompt (k = ceil(prompt / prefill_chunk_tokens) steps per prompt), so each request
    stays k + output - 1 steps, and r = B / (k + output - 1) prompts complete per step. A step costs the
    decode step of those decoding (D: each request prefills a share q = k / (k + output - 1) of its stay, so
    a step has a decode step in 1 - q^B of the cases, of B (1 - q) / (1 - q^B) requests then) plus the
    prefill work of r prompts riding it: t = D + r F(prompt), F the time a prompt's chunks add to the decode
    passes they join (mixed_step_time with the chunk less without it: one pass reads the weights once), or a
    prefill pass of its own when nothing decodes. Hence, exactly:
      e2e = w + (k + output - 1) t,  tokens/s = B output / e2e  (Little's law: concurrency = rate x time;
      with speculative decoding, `spec`, a decoding request gains E tokens a step: k + (output - 1) / E steps),
      ttft = k D' + F' (1 + (B - 1) k / (k + output - 1))  (its own prefill chunks, each riding a decode
      step of the other B - 1 requests, D', and the share of their prefills that falls in its prefill steps),
      tpot = (e2e - ttft) / (output - 1)  (a decode step, and the rest of the others' prefills between its
      tokens: (B - 1) F / (k + output - 1) per token); w, with others running, is the wait for the step
      running when it arrives, t / 2 on average (0 alone), plus the wait for room in a step's token budget,
      which holds c = floor(prefill_chunk_tokens / chunk) prompts' chunks (queue_wait, M/D/c at the arrival
      rate B / e2e; only the (c - 1) / c share of the others' prefill that fits beside its own shares its steps)."""
    srv = srv or calibration.SERVING
    cal = cal or calibration_for(gpu.family, gpu.name)
    B = np.atleast_1d(np.asarray(concurrency, dtype=float))
    cached = cached_prefix(prompt, prefix_hit)     # a prefix-cache hit leaves only the rest to prefill
    k = max(1, math.ceil((prompt - cached) / srv.prefill_chunk_tokens))
    per_step = spec.tokens_per_step if spec is not None else 1.0   # tokens a decoding request gains per step
    life = k + (output - 1) / per_step
    q = k / life                    # share of its stay a request spends prefilling

    def decoders(n):
        """(share of steps in which any of n requests decodes, 1 - q^n; how many decode in those steps)."""
        busy = 1.0 - q ** n
        return busy, np.maximum(n * (1 - q) / np.maximum(busy, 1e-300), 1e-9)

    def decoding_cost(n):
        """Mean decode cost of a step over n requests, each prefilling a share q of the time: a decode step
        of those decoding, when any is."""
        busy, seqs = decoders(n)
        if spec is None:
            dec = decode_step_time(model, gpu, gpus_per_node, dep, seqs, prompt + output / 2.0, cal, srv)
        else:
            dec = speculative_step_time(model, gpu, gpus_per_node, dep, seqs, prompt + output / 2.0, spec, cal, srv)
        return np.where(busy > 0, busy * dec["total"], 0.0), dec

    D, dec = decoding_cost(B)
    D_others, _ = decoding_cost(B - 1)     # while it prefills, the other B - 1 requests decode
    F = float(uncached_prefill_time(model, gpu, gpus_per_node, dep, np.ones(1), prompt, cached, cal, srv)[0])
    ctx = prompt + output / 2.0

    def riding(n):
        """Seconds one prompt's prefill adds to the steps it rides among n requests: its k chunks joined to
        the decode pass of those decoding (the weights read and the layers' latencies paid once for both:
        the step with the chunk less the step without), or a pass of its own when none decodes."""
        busy, seqs = decoders(n)
        chunk = (prompt - cached) / k
        extra = k * (mixed_step_time(model, gpu, gpus_per_node, dep, seqs, ctx, chunk, prompt, cached, cal, srv)
                     - mixed_step_time(model, gpu, gpus_per_node, dep, seqs, ctx, 0.0, prompt, cached, cal, srv))
        return busy * extra + (1.0 - busy) * F

    F_others = riding(B - 1)       # a prompt's chunks ride the decode steps of the other B - 1 requests
    step = D + B / life * F_others
    # a step's token budget holds the chunks of c prompts: the others' prefill work falling in its k steps is
    # the share that fits beside its own, (c - 1) / c, and a prompt finding c others prefilling waits for one
    # to finish (M/D/c at the arrival rate B / (life x step), each prompt holding its place for its k steps)
    c = max(1, int(srv.prefill_chunk_tokens // ((prompt - cached) / k)))
    own = k * D_others + F_others
    queued = np.where(B > 1, queue_wait(B / (life * step), own, c), 0.0)
    queued = np.minimum(queued, (B - 1) / c * own)       # a closed loop: at most the B - 1 others are ahead
    # it arrives during a running step and waits for its end, half a step on average (B > 1; alone it
    # starts at once), then for a place in the budget, then its own chunks and the others' prefill work
    # falling in its k steps, riding the others' decode steps
    wait = np.where(B > 1, step / 2.0, 0.0) + queued
    e2e = wait + life * step
    ttft = wait + own + F_others * (B - 1) * k / life * (c - 1) / c
    tpot = (e2e - ttft) / (output - 1) if output > 1 else np.zeros_like(B)
    return ContinuousPerformance(concurrency=B, ttft_s=ttft, tpot_s=tpot, e2e_s=e2e, step_s=step,
                                 tokens_per_s=B * output / e2e, requests_per_s=B / e2e, prefill_steps=k,
                                 decode_parts=dec, tokens_per_step=per_step)


def queue_wait(rate, service_s, servers: int = 1):
    """Mean wait in queue of Poisson arrivals at `rate` per second for one of `servers` places, each held for
    a deterministic `service_s` seconds: M/D/c, taken as half the M/M/c wait (Cosmetatos 1976's first-order
    form; exact, Pollaczek-Khinchine's rho S / (2 (1 - rho)), at c = 1). Infinite at or past saturation."""
    rate, S = np.asarray(rate, dtype=float), np.asarray(service_s, dtype=float)
    a = rate * S                                    # offered load, in places
    rho = a / servers
    term, total = np.ones_like(a), np.ones_like(a)  # sum of a^j / j! for j < c, by running terms
    for j in range(1, servers):
        term = term * a / j
        total = total + term
    last = term * a / servers / np.maximum(1.0 - rho, 1e-12)      # a^c / c! / (1 - rho)
    erlang_c = last / (total + last)
    wait = 0.5 * erlang_c * S / (servers * np.maximum(1.0 - rho, 1e-12))
    return np.where(rho < 1.0, wait, np.inf)


def kv_transfer_time(model: ModelSpec, gpu: GPUSpec, prefill: Deployment, decode: Deployment, prompt: int,
                     same_node: bool, cal: Calibration | None = None) -> float:
    """Seconds to move one prompt's KV cache from a prefill replica to a decode replica (disaggregated
    serving): prompt x KV bytes per token, sent over min(prefill GPUs, decode GPUs) links at once, NVLink
    within a node and the network across (costmodels.comm.p2p_time; NIXL / Mooncake transfers in
    vLLM, SGLang and Dynamo move each rank's KV shard directly)."""
    cal = cal or calibration_for(gpu.family, gpu.name)
    links = min(prefill.gpus, decode.gpus)
    return p2p_time(prompt * kv_cache_bytes_per_token(model, prefill.kv) / links, not same_node, gpu, cal)


@dataclass(frozen=True)
class DisaggregatedPerformance:
    """Prefill on its own replicas, decode on others (Zhong et al. 2024, DistServe; Patel et al. 2024,
    Splitwise): arrays over the decode replicas' concurrencies."""
    concurrency: np.ndarray     # requests decoding at once per decode replica
    prefill_batch: int          # prompts per prefill forward pass (as many as one chunk of tokens holds)
    prefill_rate: float         # prompts per second of one prefill replica
    kv_transfer_s: float
    ttft_s: float               # its prefill pass + the KV transfer
    tpot_s: np.ndarray          # the decode replica's step: no prefill shares it
    e2e_s: np.ndarray
    decode_rate: np.ndarray     # requests per second of one decode replica: concurrency / ((output - 1) tpot)
    decode_parts: dict[str, np.ndarray] = field(repr=False)


def disaggregated_performance(model: ModelSpec, gpu: GPUSpec, gpus_per_node: int, prefill: Deployment,
                              decode: Deployment, concurrency, prompt: int, output: int, same_node: bool,
                              cal: Calibration | None = None, srv: ServingCalibration | None = None,
                              prefill_batch: int | None = None, prefix_hit: float = 0.0) -> DisaggregatedPerformance:
    """A prefill replica runs prompts in passes of n = prefill_chunk_tokens // prompt (at least 1, at most what
    its memory holds), n / F(n) prompts per second; each prompt's KV cache then moves to a decode replica,
    which decodes `concurrency` requests per step with no prefill work in between. TTFT = F(n) + transfer,
    TPOT = D(concurrency), and a decode replica serves concurrency / ((output - 1) TPOT) requests per second
    (Little's law over its slots). `prefill_batch` sets n (fewer prompts per pass: a shorter TTFT, a lower
    prefill rate). The wait for a pass depends on the served rate: the search adds it (planner.serving.search
    prefill_wait, M/D/1 through queue_wait)."""
    srv = srv or calibration.SERVING
    cal = cal or calibration_for(gpu.family, gpu.name)
    n = prefill_batch or max(1, min(srv.prefill_chunk_tokens // prompt, max_batch(model, gpu, prefill, prompt, srv)))
    return combine_disaggregated(prefill_pass(model, gpu, gpus_per_node, prefill, n, prompt, cal, srv, prefix_hit),
                                 decode_pool(model, gpu, gpus_per_node, decode, concurrency, prompt, output, cal, srv),
                                 kv_transfer_time(model, gpu, prefill, decode, prompt, same_node, cal), output)


def prefill_pass(model: ModelSpec, gpu: GPUSpec, gpus_per_node: int, prefill: Deployment, n: int, prompt: int,
                 cal: Calibration | None = None, srv: ServingCalibration | None = None,
                 prefix_hit: float = 0.0) -> tuple[int, float]:
    """(n, seconds) of one prefill pass over n prompts on a prefill replica (their cached prefixes skipped)."""
    return n, float(uncached_prefill_time(model, gpu, gpus_per_node, prefill, np.array([float(n)]), prompt,
                                          cached_prefix(prompt, prefix_hit), cal, srv)[0])


def decode_pool(model: ModelSpec, gpu: GPUSpec, gpus_per_node: int, decode: Deployment, concurrency, prompt: int,
                output: int, cal: Calibration | None = None, srv: ServingCalibration | None = None,
                spec: Speculation | None = None):
    """(concurrencies, parts of the time per output token) of a decode-only replica: every step decodes all its
    requests; with speculative decoding (`spec`) a step drafts and verifies, gaining spec.tokens_per_step
    tokens per request, and its parts are per token (the step / tokens gained)."""
    B = np.atleast_1d(np.asarray(concurrency, dtype=float))
    if spec is None:
        return B, decode_step_time(model, gpu, gpus_per_node, decode, B, prompt + output / 2.0, cal, srv)
    step = speculative_step_time(model, gpu, gpus_per_node, decode, B, prompt + output / 2.0, spec, cal, srv)
    return B, {k: v / spec.tokens_per_step for k, v in step.items()}


def combine_disaggregated(prefill, decode, transfer: float, output: int) -> DisaggregatedPerformance:
    """DisaggregatedPerformance from a prefill pass (prefill_pass), a decode pool (decode_pool) and the KV
    transfer: TTFT = pass + transfer, TPOT = the decode step, e2e = TTFT + (output - 1) TPOT, a decode
    replica's rate = concurrency / ((output - 1) TPOT)."""
    (n, F), (B, dec) = prefill, decode
    tpot = dec["total"] if output > 1 else np.zeros_like(B)
    ttft = F + transfer
    rate = B / ((output - 1) * tpot) if output > 1 else np.full_like(B, np.inf)
    return DisaggregatedPerformance(concurrency=B, prefill_batch=n, prefill_rate=n / F, kv_transfer_s=transfer,
                                    ttft_s=ttft, tpot_s=tpot, e2e_s=ttft + (output - 1) * tpot, decode_rate=rate,
                                    decode_parts=dec)


def usd_per_million_tokens(usd_per_gpu_hour: float, gpus: int, tokens_per_s):
    """$ per 1e6 generated tokens: GPU-hours price / tokens per hour."""
    return usd_per_gpu_hour * gpus / (np.asarray(tokens_per_s, dtype=float) * 3600.0) * 1e6
