"""Per-layer times and bytes of a training strategy, by named part: (model, strategy, cluster) -> StageCosts.

Floats only (seconds, bytes): how these parts combine into a stage's time and memory, a pipeline's step
time and the printed breakdown (with the integer rounding the CP-SAT model needs) is planner.solve.stages.
Sources of the parts:

- layer compute: GEMMs of Shoeybi et al. 2019 priced by costmodels.compute, attention core and
  element-wise traffic (Korthikanti et al. 2022, 3.2); tensor-parallel collectives (Shoeybi et al. 2019;
  Korthikanti et al. 2022, 4.2.2); ring attention (Liu et al. 2023); MoE all-to-all (GShard);
- 1F1B keeps min(p - i, m) micro-batches of activations alive on stage i; interleaving adds (p - 1)/v
  (Korthikanti et al. 2022, section 4.2.3); GPipe keeps all m (Huang et al. 2019);
- data-parallel gradient sync once per step, hidden behind a layer's backward (PyTorch DDP / Megatron
  --overlap-grad-reduce); ZeRO-3 gathers weights every micro-batch (Rajbhandari et al. 2020, section 7.2:
  1.5x the data-parallel volume); model states and offload (Rajbhandari et al. 2020; Ren et al. 2021).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import NamedTuple

from costmodels.calibration import Calibration, calibration_for
from costmodels.comm import Link, collective_time, dispatch_time, exposed, group_link, p2p_time
from costmodels.compute import attention_efficiency, gemm_time, memory_bound_time, mlp_gemm_widths
from costmodels.flops import logits_forward_flops, model_flops_per_step
from costmodels.memory import (DS_REDUCE_BUCKET, compute_copy_bytes, embedding_activation_bytes, fp8_cache_bytes, framework_buffer_bytes,
                               head_input_bytes, layer_activation_bytes, logits_bytes, model_state_bytes,
                               state_bytes_per_param)
from costmodels.model import ModelSpec
from costmodels.strategy import Strategy, recomputed_modules
from hardware import Cluster

# HBM bytes per element an FP8 cast moves, by recipe: delayed scaling reads 16 bits and writes FP8 and its
# transpose, the amax from the same pass (4); current scaling (tensorwise) first reads the tensor for its amax
# (+2); MXFP8 writes one E8M0 scale per 32 elements for each of its two copies; block-wise one fp32 scale per
# 128 (Transformer Engine recipes: DelayedScaling, Float8CurrentScaling, MXFP8BlockScaling, Float8BlockScaling)
CAST_BYTES = {"delayed": 4.0, "tensorwise": 6.0, "mxfp8": 4.0 + 2 / 32, "blockwise": 4.0 + 2 * 4 / 128}
FIXED_BUFFER_BYTES = 1.0e9       # cuBLAS workspaces, NCCL and allocator slack (assumption, stated in output)
ADAM_BYTES_PER_PARAM = 28.0      # optimizer step traffic: read fp32 w, m, v + grad, write w, m, v + 16-bit w
SGD_BYTES_PER_PARAM = 18.0


@dataclass(frozen=True, slots=True)
class LayerTimes:
    """Seconds for one average layer and one micro-batch on one GPU, split by cause."""
    compute_fwd: float
    compute_bwd: float
    tp_fwd: float             # tensor-parallel collectives, forward (not overlapped)
    tp_bwd: float
    cp_exposed: float         # ring-attention KV exchange not hidden behind attention (fwd + bwd)
    ep_comm: float            # expert-parallel all-to-all (fwd + bwd)
    selective_extra: float    # attention core recomputed in backward (selective recompute)

    @property
    def recompute(self) -> float:
        """Extra time of a fully recomputed layer: its forward again, collectives included."""
        return self.compute_fwd + self.tp_fwd

    @property
    def backward(self) -> float:
        """A layer's backward with its collectives: the window that hides its data-parallel sync."""
        return self.compute_bwd + self.tp_bwd


class ModelStates(NamedTuple):
    """Bytes of model states on one GPU: on the GPU (weights, gradients, optimizer) and offloaded to host."""
    weights: float
    gradients: float
    optimizer: float
    host: float


@dataclass(frozen=True, slots=True)
class StageCosts:
    """Seconds and bytes by named part of one strategy's pipeline structure on one GPU type (floats).

    Per layer, per micro-batch: `layer`. Per micro-batch: embedding (stage 0), head (last stage), p2p.
    Per step: data-parallel sync and optimizer step (per layer, of the embedding, of the output layer).
    Bytes: model states per layer / embedding / output layer, activations of one layer and one
    micro-batch (stored, checkpoint, full working set), embedding-dropout mask, head inputs, logits, buffers."""
    p: int
    m: int
    v: int
    layers: int
    layer: LayerTimes
    embedding_s: float        # embedding work on stage 0, one micro-batch
    head_s: float             # output layer + loss on the last stage, one micro-batch
    p2p_s: float              # pipeline sends per micro-batch per stage (both directions, x v)
    dp_layer_s: float         # data-parallel sync of one layer's gradients (per step)
    dp_first_s: float         # ... of the embedding's (stage 0)
    dp_last_s: float          # ... of the output layer's (last stage)
    dp_window_layer_s: float  # backward of one layer: the window that hides its sync (1F1B)
    zero3_layer_s: float      # ZeRO traffic of one layer per micro-batch: ZeRO-3 gathers + reduce-scatter
                              # (DeepSpeed ZeRO-2: its per-micro-batch reduce-scatter)
    opt_layer_s: float        # optimizer step of one layer's shard
    opt_first_s: float
    opt_last_s: float
    layer_states: ModelStates   # one layer's model states
    first_states: ModelStates   # the embedding's, on stage 0
    last_states: ModelStates    # the output layer's, on the last stage
    host_capacity_b: float    # host memory per GPU (node's host memory / GPUs per node)
    inflight: tuple[float, ...]   # micro-batches of activations alive, per stage
    act_stored_b: float       # stored activation bytes of one layer, one micro-batch
    act_checkpoint_b: float   # checkpoint (layer input) bytes of one layer, one micro-batch
    act_full_b: float         # working set of one layer recomputing (one micro-batch)
    embedding_act_b: float    # embedding-dropout mask, one micro-batch (stage 0)
    head_act_b: float         # final norm and output layer inputs, one micro-batch (last stage)
    logits_b: float           # fp32 softmax + 16-bit logits of one micro-batch (transient at the loss, last stage)
    buffer_b: float           # runtime buffers every GPU holds (cuBLAS workspaces, NCCL, allocator slack)
    zero3_buffer_b: float     # gathered weights of the layers ZeRO-3 / FSDP2 hold unsharded
    bucket_b: float = 0.0     # the framework's communication buckets (DeepSpeed ZeRO-2/3)
    stream_pools: bool = False    # gradients from the reduce-scatter stream's own allocator pool (FSDP2)
    end_transient_b: float = 0.0  # stage 0, end of the backward: the root's unsharded gradient (FSDP2)
    gather_layer_s: float = 0.0   # distributed optimizer's all-gather of one layer's updated weights (per step),
    gather_first_s: float = 0.0   # hidden behind the next step's forward (Megatron --overlap-param-gather)
    gather_last_s: float = 0.0
    gather_window_layer_s: float = 0.0   # forward of one layer: the window that hides its gather


@dataclass(frozen=True, slots=True)
class _LayerKey:
    """The strategy fields a layer's time depends on (so the search computes it once per value)."""
    tp: int
    cp: int
    ep: int
    micro_batch: int
    precision: str
    flash_attention: bool
    sequence_parallel: bool
    recompute: str
    framework: str
    etp: int
    dispatcher: str
    tp_overlap: bool
    modules: tuple
    lora: bool
    recipe: str | None
    a2a_overlap: bool


def layer_times(model: ModelSpec, st: Strategy, cluster: Cluster, cal: Calibration) -> LayerTimes:
    """Seconds for an average transformer layer, one micro-batch, on one GPU."""
    return layer_times_of(model, cluster, cal, layer_key(model, st))


def layer_key(model: ModelSpec, st: Strategy) -> _LayerKey:
    """The strategy fields a layer's times depend on (strategies with one key share their LayerTimes)."""
    return _LayerKey(st.tp, st.cp, st.ep, st.micro_batch, st.precision, st.flash_attention,
                     st.sequence_parallel, st.recompute, st.framework, st.etp,
                     st.moe_dispatcher if model.moe is not None else "alltoall", st.tp_comm_overlap,
                     recomputed_modules(st), st.lora_rank is not None, st.recipe, st.moe_a2a_overlap)


@lru_cache(maxsize=4096)
def layer_times_of(model: ModelSpec, cluster: Cluster, cal: Calibration, st: _LayerKey) -> LayerTimes:
    """layer_times of the strategies with layer_key `st`."""
    gpu = cluster.gpu
    peak = gpu.peak_tflops(st.precision) * 1e12
    if st.precision == "fp8":   # FP8 GEMMs reach their own (fitted) share of the FP8 peak
        cal = replace(cal, gemm_efficiency=cal.fp8_gemm_efficiency)
    t, b, h = st.tp, st.micro_batch, model.hidden
    s_full = model.seq_len
    s = s_full / st.cp
    M = b * s                                       # tokens per GPU per micro-batch
    kvd, f, q = model.kv_dim, model.ffn_hidden, model.q_dim
    # Dense GEMMs (Shoeybi et al. 2019: QKV / fc1 column-split, projection / fc2 row-split over t)
    attn_widths = model.attention_gemm_widths(t)
    attn_gemm = sum(gemm_time(M, n, k, peak, cal) for n, k in attn_widths)
    dense_widths = mlp_gemm_widths(model.ffn_type, h, f, t)
    dense_mlp = sum(gemm_time(M, n, k, peak, cal) for n, k in dense_widths)
    mlp = dense_mlp
    frac = moe_mlp = moe_act_bytes = moe_copy_bytes = 0.0
    act_per_f = 6.0 if model.ffn_type == "swiglu" else 4.0
    # elements per GPU of the GEMM inputs (forward) and output gradients (backward), for FP8 casts
    dense_in, dense_out = M * sum(k for _, k in dense_widths), M * sum(n for n, _ in dense_widths)
    cast_in = M * sum(k for _, k in attn_widths) + dense_in
    cast_out = M * sum(n for n, _ in attn_widths) + dense_out
    ep_comm = 0.0
    if model.moe is not None:
        moe = model.moe
        # routed experts split over the expert tensor-parallel group (etp; = t unless folded apart): its
        # ranks gather their sequence-parallel tokens, M * etp / t per rank (Megatron MoE parallel folding,
        # megatron/core/transformer/moe/token_dispatcher.py)
        etp = st.etp
        widths = mlp_gemm_widths(model.ffn_type, h, moe.expert_ffn_hidden, etp)
        local_experts = moe.experts / st.ep
        tokens_per_expert = M * etp / t * st.ep * moe.top_k * moe.capacity_factor / moe.experts
        expert_mlp = local_experts * sum(gemm_time(tokens_per_expert, n, k, peak, cal) for n, k in widths)
        shared = moe.shared_experts * sum(gemm_time(M, n, k, peak, cal)
                                          for n, k in mlp_gemm_widths(model.ffn_type, h, moe.expert_ffn_hidden, t))
        router = gemm_time(M, moe.experts, h, peak, cal)
        moe_mlp = expert_mlp + shared + router
        frac = model.num_moe_layers / model.layers
        mlp = frac * moe_mlp + (1 - frac) * dense_mlp
        routed = tokens_per_expert * local_experts
        moe_act_bytes = act_per_f * routed * moe.expert_ffn_hidden / etp
        # Token copies around the dispatch, 16-bit, read + write of each routed token: permute into expert
        # order and unpermute after the combine, plus a sort of the received chunks by local expert and back
        # when a rank holds several (alltoall dispatcher; the flex / DeepEP dispatcher permutes once after
        # its dispatch kernel) (megatron/core/transformer/moe/token_dispatcher.py, moe_utils.py permute)
        n_copies = 2 + (2 if st.dispatcher != "deepep" and local_experts > 1 else 0)
        moe_copy_bytes = n_copies * 2 * 2.0 * routed * h
        moe_in = routed * sum(k for _, k in widths) + moe.shared_experts * M * (h + moe.expert_ffn_hidden / t)
        moe_out = routed * sum(n for n, _ in widths) + moe.shared_experts * M * sum(
            n for n, _ in mlp_gemm_widths(model.ffn_type, h, moe.expert_ffn_hidden, t))
        cast_in += frac * (moe_in - dense_in)
        cast_out += frac * (moe_out - dense_out)
        # expert-parallel ranks: carved from the dp x cp ranks (stride tp x cp) unless folded apart, then
        # ordered etp, ep, edp over the stage's tp x cp x dp ranks (stride etp) (megatron/core/parallel_state.py)
        ep_link = group_link(st.ep, st.tp * st.cp if etp == st.tp else etp, cluster.gpus_per_node)
        # GShard / DeepSpeed-MoE: dispatch + combine of each rank's sequence-parallel tokens, forward and
        # backward (4 per MoE layer), 16-bit
        ep_comm = frac * 4 * dispatch_time(M / t, h * 2.0, moe.top_k, moe.experts, ep_link, gpu, cal,
                                           st.dispatcher, moe.top_k * moe.capacity_factor)
    # Attention core, 4*b*s*s_full*h/t FLOPs (QK^T and AV). Fused (flash) kernels skip the masked half
    # of causal attention and run at a fitted share of peak; unfused attention is two batched GEMMs per
    # head, (s x d)(d x s) and (s x s)(s x d), priced like any GEMM (Korthikanti et al. 2022, 3.2).
    if st.flash_attention:
        # FP8 recipes run the attention core in 16 bits (Transformer Engine's fused attention without
        # fp8_dot_product_attention, Megatron-LM's default; torchao float8 converts only the Linear layers);
        # one kernel call per ring step of context parallel, s local tokens against s
        attn_core = 2.0 * M * s_full * q / t / (unconverted_peak(gpu, st.precision) * attention_efficiency(s, cal))
    else:
        heads = b * model.heads / t
        d = model.head_dim
        attn_core = heads * (gemm_time(s, s_full, d, peak, cal) + gemm_time(s, d, s_full, peak, cal))
    # Element-wise traffic (bytes, 16-bit): 2 layer norms (read+write 8sbh) and 2 dropout+residual
    # (14sbh incl. 1-byte masks), split by t with sequence parallel; activation function 4sbf (GELU)
    # or 6sbf (SwiGLU) over t; fused scale-mask-softmax + dropout 9*a*s^2*b over t without flash.
    sp_div = t if st.sequence_parallel else 1
    elem = 22.0 * M * h / sp_div + (1 - frac) * act_per_f * M * f / t + frac * moe_act_bytes
    softmax_bytes = 0.0 if st.flash_attention else 9.0 * model.heads * M * s_full / t
    elem_fwd = memory_bound_time(elem + softmax_bytes, gpu.hbm_gbps, cal)
    # FP8 recipes quantize every FP8 GEMM's input in forward and its output gradient in backward: read 16
    # bits, write FP8 and its transpose (Transformer Engine's cast-transpose kernels,
    # transformer_engine/pytorch/module/linear.py; torchao float8 the same per linear): CAST_BYTES per element
    cast = CAST_BYTES.get(st.recipe, 0.0)      # 0 unless fp8 (Strategy.recipe)
    cast_fwd = memory_bound_time(cast * cast_in, gpu.hbm_gbps, cal)
    cast_bwd = memory_bound_time(cast * cast_out, gpu.hbm_gbps, cal)
    copy_time = memory_bound_time(frac * moe_copy_bytes, gpu.hbm_gbps, cal)   # the same copies of the gradients backward
    compute_fwd = attn_gemm + mlp + attn_core + elem_fwd + cast_fwd + copy_time + cal.kernel_overhead_s
    # frozen base weights (LoRA) need no weight-gradient GEMMs: their backward is the input gradient alone
    gemm_bwd = (1.0 if st.lora else 2.0) * (attn_gemm + mlp)
    compute_bwd = gemm_bwd + 2.0 * (attn_core + elem_fwd) + cast_bwd + copy_time + cal.kernel_overhead_s
    # Tensor parallel: 2 all-reduces of s*b*h forward and 2 backward (Shoeybi et al. 2019); with sequence
    # parallel the same volume as all-gather + reduce-scatter (Korthikanti et al. 2022, section 4.2.2).
    if st.a2a_overlap and ep_comm:
        # Megatron-core's overlapped 1F1B runs one micro-batch's dispatch and combine while another computes
        # (megatron/core/pipeline_parallel/combined_1f1b.py): what outlasts the layer's forward and backward
        # sticks out, the rest slows them by the SMs the communication takes
        ep_comm = exposed(ep_comm, 3.0 * (attn_gemm + mlp + attn_core + elem_fwd))
    tp_link = group_link(t, 1, cluster.gpus_per_node)
    tp_one = collective_time("all_reduce", M * h * 2.0, tp_link, gpu, cal)
    tp_fwd = tp_bwd = 2 * tp_one
    if st.tp_overlap:
        # Transformer Engine userbuffers split each all-gather / reduce-scatter into chunks pipelined with the
        # GEMM that consumes or produces it (Megatron-LM --tp-comm-overlap; Wang et al. 2022, "Overlap
        # communication with dependent computation"): what outlasts the layer's GEMMs sticks out, the rest
        # slows them by the SMs the copies take
        tp_fwd, tp_bwd = exposed(tp_fwd, attn_gemm + mlp), exposed(tp_bwd, 2 * (attn_gemm + mlp))
    # Context parallel (ring attention, Liu et al. 2023): cp-1 exchanges of this rank's K and V per layer
    # forward, twice that backward (K, V and their gradients), hidden behind the attention core.
    cp_exposed = 0.0
    if st.cp > 1:
        cp_link = group_link(st.cp, t, cluster.gpus_per_node)
        kv_bytes = 2.0 * M * kvd / t * 2.0
        one = p2p_time(kv_bytes, cp_link.per_node < cp_link.size, gpu, cal) * (st.cp - 1)
        cp_exposed = max(0.0, one - attn_core) + max(0.0, 2 * one - 2 * attn_core)
    selective_extra = 0.0
    if st.recompute == "selective" and st.framework == "torchtitan":
        # per-op selective AC recomputes the unsaved matmuls (wk, wo and the SwiGLU up projection w3 of a
        # Llama block, torchtitan/distributed/activation_checkpoint.py) and the element-wise ops
        up = gemm_time(M, f / t, h, peak, cal) if model.ffn_type == "swiglu" else 0.0
        selective_extra = gemm_time(M, kvd / t, h, peak, cal) + gemm_time(M, h, q / t, peak, cal) + up + elem_fwd
    elif st.recompute == "selective":
        # Megatron-core's recompute modules (transformer_config.py recompute_modules) repeat their forward
        # in the backward: the attention core (the default), the two norms, the MoE activation, the dense
        # MLP, the whole MoE layer with its dispatch and combine, or MLA's up projections
        mods = st.modules
        if "core_attn" in mods:
            selective_extra += attn_core + memory_bound_time(softmax_bytes, gpu.hbm_gbps, cal)
        if "layernorm" in mods:
            selective_extra += memory_bound_time(8.0 * M * h / sp_div, gpu.hbm_gbps, cal)
        if "mlp" in mods:
            selective_extra += (1 - frac) * (dense_mlp + memory_bound_time(act_per_f * M * f / t, gpu.hbm_gbps, cal))
        if "moe" in mods:
            selective_extra += frac * (moe_mlp + memory_bound_time(moe_act_bytes, gpu.hbm_gbps, cal)) + ep_comm / 2
        elif "moe_act" in mods:
            selective_extra += frac * memory_bound_time(moe_act_bytes, gpu.hbm_gbps, cal)
        if "mla_up_proj" in mods and model.mla is not None:
            # the up projections again, from the stored latents (the GEMMs whose input is a latent rank)
            a = model.mla
            latents = {a.q_lora_rank, a.kv_lora_rank}
            selective_extra += sum(gemm_time(M, n, k, peak, cal) for n, k in attn_widths if k in latents)
    return LayerTimes(compute_fwd, compute_bwd, tp_fwd, tp_bwd, cp_exposed, ep_comm, selective_extra)


def stage_costs(model: ModelSpec, st: Strategy, cluster: Cluster, cal: Calibration | None = None) -> StageCosts:
    """Parts of a strategy's structure (everything but the layer and recompute split)."""
    gpu = cluster.gpu
    cal = cal or calibration_for(gpu.family, gpu.name)
    p, m, v, t = st.pp, st.micro_batches, st.virtual_stages, st.tp
    lt = layer_times(model, st, cluster, cal)
    M = st.micro_batch * model.seq_len / st.cp
    h = model.hidden
    # Output layer (vocab-parallel, split over t) forward + backward, and the fp32 loss traffic
    # (FP8 recipes keep the output layer in 16 bits: Megatron-core and torchao convert the transformer layers'
    # linears only)
    last = (3 * gemm_time(M, model.vocab / t, h, unconverted_peak(gpu, st.precision), cal)
            + memory_bound_time(3 * 4.0 * M * model.vocab / t, gpu.hbm_gbps, cal))
    first = memory_bound_time(3 * 2.0 * M * h, gpu.hbm_gbps, cal)
    # Pipeline point-to-point: s*b*h activations forward and gradients back per micro-batch (x v chunks),
    # split over t by Megatron's scatter/gather optimisation (Narayanan et al. 2021, section 4.1).
    p2p = 0.0
    if p > 1:
        pp_stride = t * st.cp * st.dp
        across = pp_stride >= cluster.gpus_per_node
        p2p = 2 * v * p2p_time(M * h * 2.0 / t, across, gpu, cal)
    acts = layer_activation_bytes(model, st)
    return StageCosts(
        p=p, m=m, v=v, layers=model.layers, layer=lt,
        embedding_s=first, head_s=last, p2p_s=p2p,
        dp_window_layer_s=lt.backward,
        host_capacity_b=gpu.host_memory_gb_per_node * 1e9 / cluster.gpus_per_node,
        inflight=tuple(_inflight(p, m, v, st.pipeline_schedule)),
        act_stored_b=acts.stored, act_checkpoint_b=acts.checkpoint, act_full_b=acts.full,
        embedding_act_b=embedding_activation_bytes(model, st), head_act_b=head_input_bytes(model, st),
        logits_b=logits_bytes(model, st),
        buffer_b=FIXED_BUFFER_BYTES, bucket_b=framework_buffer_bytes(st),
        # FSDP2 reduce-scatters on its own CUDA stream (torch/distributed/fsdp/_fully_shard/_fsdp_collectives.py
        # foreach_reduce allocates the reduce-scatter output, the gradient shards, there) and the caching
        # allocator keeps one pool per stream (c10/cuda/CUDACachingAllocator.cpp): the gradients' memory is
        # reserved beside the compute stream's loss-time peak, though no gradient is alive at the loss
        stream_pools=st.framework == "torchtitan",
        gather_window_layer_s=lt.compute_fwd + lt.tp_fwd,
        **_model_states(model, st, cluster, cal),
    )

# _model_states per (model, cluster, constants, and the strategy fields it reads): a search scores thousands
# of structures that differ only in micro-batch, interleaving and recompute, which leave the states alone
_STATES: dict[tuple, dict] = {}


def _model_states(model: ModelSpec, st: Strategy, cluster: Cluster, cal: Calibration) -> dict:
    """The StageCosts fields of model states and their once-per-step traffic: data-parallel sync, ZeRO-3
    gathers, optimizer step, states per layer / embedding / output layer, weight gathers."""
    key = (model, cluster, cal, st.tp, st.pp == 1, st.dp, st.cp, st.ep, st.expert_tp, st.zero_stage, st.framework,
           st.precision, st.optimizer, st.fp32_grads, st.offload_optimizer, st.offload_params, st.lora_rank,
           st.pipeline_schedule == "dualpipe" and st.pp > 1)
    out = _STATES.get(key)
    if out is None:
        if len(_STATES) > 65536:
            _STATES.clear()
        out = _STATES[key] = _model_states_of(model, st, cluster, cal)
    return out


def _model_states_of(model: ModelSpec, st: Strategy, cluster: Cluster, cal: Calibration) -> dict:
    gpu, p, t = cluster.gpu, st.pp, st.tp
    h = model.hidden
    # Model states per GPU. Dense weights split over tp and ZeRO-sharded over dp x cp; routed experts split
    # over tp x ep and sharded over the expert-data-parallel group dp x cp / ep (Megatron-core MoE).
    sb = state_bytes_per_param(st.precision, st.optimizer, st.fp32_grads, st.framework, st.zero_stage)
    copy = compute_copy_bytes(st.precision)
    groups = _param_groups(model, st, cluster)
    # what the optimizer trains: every parameter, or with LoRA the adapters alone (the average layer's, split
    # over tp like the layers they adapt (NeMo's ParallelLinearAdapter) and synced over dp x cp; the
    # embedding and output layer frozen)
    lora = st.lora_rank is not None
    train = ([(statistics.fmean(model.params_lora(st.lora_rank, i) for i in range(model.layers)) / st.tp,
               groups[0][1])] if lora else groups)
    embed_params = model.vocab * h / t + (model.seq_len * h if model.position_embedding == "learned" else 0)
    # the output layer: its own weights, or with tied embeddings a copy on the last stage when pp > 1
    # (Megatron allocates it only where the embedding is on another stage), and the final norm, replicated
    # over tp (ModelSpec.params_output; megatron/core/models/gpt/gpt_model.py final_layernorm)
    head_params = (0.0 if (model.tied_embeddings and p == 1) else model.vocab * h / t) + model.params_final_norm()
    dense_group = groups[0][1]
    first_groups, last_groups = [(embed_params, dense_group)], [(head_params, dense_group)]
    first_train, last_train = ([(0.0, dense_group)], [(0.0, dense_group)]) if lora else (first_groups, last_groups)

    # Data-parallel gradient sync (once per step; reduce-scatter + all-gather with ZeRO >= 1, the same
    # volume as an all-reduce); ZeRO-3 reduce-scatters every micro-batch instead (zero3 below).
    # DeepSpeed ZeRO-2 reduce-scatters every micro-batch's gradients into the partitions during its backward
    # (deepspeed/runtime/zero/stage_1_and_2.py reduce_ready_partitions_and_remove_grads, partition_gradients):
    # per micro-batch like ZeRO-3's traffic below; once per step only the updated 16-bit weights are all-gathered
    ds_zero2 = st.framework == "deepspeed" and st.zero_stage == 2
    # Megatron's distributed optimizer reduce-scatters the gradients behind the backward and all-gathers
    # the updated 16-bit weights behind the next step's forward (megatron/core/distributed
    # param_and_grad_buffer.py; --overlap-grad-reduce --overlap-param-gather, which the export writes)
    mg_dist_opt = st.framework == "megatron" and st.zero_stage == 1
    bucket = grad_bucket_params(st, sb.reduce)

    def coll(kind: str, n: float, per_param: float, link) -> float:
        # one collective per bucket: the bandwidth term of n parameters, the latency once per bucket
        if bucket is None or n <= 0:
            return collective_time(kind, n * per_param, link, gpu, cal)
        return collective_time(kind, bucket * per_param, link, gpu, cal) * n / bucket

    def dp_s(pgroups) -> float:
        if st.zero_stage == 3:
            return 0.0
        if ds_zero2:
            return sum(coll("all_gather", n, copy, link) for n, link in pgroups)
        if mg_dist_opt:
            return sum(coll("reduce_scatter", n, sb.reduce, link) for n, link in pgroups)
        return sum(coll("all_reduce", n, sb.reduce, link) for n, link in pgroups)

    def gather_s(pgroups) -> float:
        return sum(coll("all_gather", n, copy, link) for n, link in pgroups) if mg_dist_opt else 0.0

    zero3 = zero3_buf = 0.0
    if ds_zero2:
        zero3 = sum(coll("reduce_scatter", n, sb.reduce, link) for n, link in groups)
    if st.zero_stage == 3:
        # ZeRO-3 gathers every layer's weights in forward and backward and reduce-scatters its gradients,
        # per micro-batch: 1.5x the data-parallel volume (Rajbhandari et al. 2020, section 7.2)
        zero3 = sum(2 * collective_time("all_gather", n * copy, link, gpu, cal)
                    + collective_time("reduce_scatter", n * sb.reduce, link, gpu, cal)
                    for n, link in groups)
        # two layers gathered (the one computing and the one prefetched; DeepSpeed's
        # estimate_zero3_model_states_mem_needs: 4 B x the largest layer); torchtitan keeps one block: its
        # last block is not resharded after forward and FSDP2 prefetches the next block while the
        # current one frees (torch.distributed.fsdp fully_shard), the oracle's tracked peak
        zero3_buf = (1 if st.framework == "torchtitan" else 2) * sum(n for n, _ in groups) * copy
        if st.offload_params:
            # parameters kept in host memory cross PCIe before every gather, forward and backward: each rank
            # uploads its shard per micro-batch (Rajbhandari et al. 2021, ZeRO-Infinity, section 5: the
            # partitioned parameters move host -> GPU before the all-gather)
            zero3 += sum(2 * n * copy / link.size for n, link in groups) / (gpu.pcie_gbps * 1e9)
    opt_bpp = ADAM_BYTES_PER_PARAM if st.optimizer == "adam" else SGD_BYTES_PER_PARAM

    def opt_s(pgroups) -> float:
        shard = sum(n / (link.size if st.zero_stage >= 1 else 1) for n, link in pgroups)
        if st.offload_optimizer:
            return _cpu_optimizer_time(shard, gpu)
        return memory_bound_time(shard * opt_bpp, gpu.hbm_gbps, cal)

    return dict(
        dp_layer_s=dp_s(train), dp_first_s=dp_s(first_train), dp_last_s=dp_s(last_train),
        zero3_layer_s=zero3,
        opt_layer_s=opt_s(train), opt_first_s=opt_s(first_train), opt_last_s=opt_s(last_train),
        layer_states=_states(groups, sb, st, train=train), first_states=_states(first_groups, sb, st, root=True),
        last_states=_states(last_groups, sb, st, root=True),
        zero3_buffer_b=zero3_buf,
        # the root's gradient, reduce-scattered last: its 16-bit unsharded gradient and the fp32 copy
        # reduce_dtype makes (MixedPrecisionPolicy), embedding included
        end_transient_b=(embed_params * (copy + sb.reduce) if st.framework == "torchtitan" and st.zero_stage >= 2 else 0.0),
        gather_layer_s=gather_s(train), gather_first_s=gather_s(first_train), gather_last_s=gather_s(last_train),
    )


def unconverted_peak(gpu, precision: str) -> float:
    """FLOP/s peak of the work FP8 recipes leave in 16 bits (the attention core, the output layer): the bf16
    peak under fp8, the precision's own otherwise."""
    return gpu.peak_tflops("bf16" if precision == "fp8" else precision) * 1e12


def grad_bucket_params(st: Strategy, reduce_bytes: float) -> float | None:
    """Parameters per data-parallel gradient collective (one latency each), None for one per layer.
    Megatron-core: max(4e7, 1e6 x dp x cp) parameters, larger buckets at larger data-parallel sizes
    (megatron/core/distributed/distributed_data_parallel_config.py bucket_size); DeepSpeed ZeRO-1/2: its
    reduce bucket (DS_REDUCE_BUCKET elements); torchtitan: FSDP2 reduce-scatters each block, and plain
    data parallel (PyTorch DDP) uses 25 MiB buckets (torch.nn.parallel.DistributedDataParallel
    bucket_cap_mb) of the reduced gradients, `reduce_bytes` each."""
    if st.framework == "megatron":
        return max(4.0e7, 1.0e6 * st.dp * st.cp)
    if st.framework == "deepspeed":
        return float(DS_REDUCE_BUCKET) if st.zero_stage < 3 else None
    return 25 * 2**20 / reduce_bytes if st.zero_stage == 0 else None


def _param_groups(model: ModelSpec, st: Strategy, cluster: Cluster) -> list[tuple[float, Link]]:
    """Parameters of an average layer on one GPU, by the data-parallel group that shards them:
    [(dense params, dp x cp group), (routed expert params, the expert data-parallel group edp)]: routed
    experts are split over ep x etp, the rest over tp."""
    gpn = cluster.gpus_per_node
    dense = model.params_attention() + model.params_norms()
    dense_link = group_link(st.dp * st.cp, st.tp, gpn)
    if model.moe is None:
        return [((dense + model.params_mlp_dense()) / st.tp, dense_link)]
    moe = model.moe
    frac = model.num_moe_layers / model.layers
    dense += frac * (moe.shared_experts * model.params_expert() + model.params_router())
    dense += (1 - frac) * model.params_mlp_dense()
    routed = frac * moe.experts / st.ep * model.params_expert()
    expert_link = group_link(st.edp, st.etp * st.ep, gpn)
    return [(dense / st.tp, dense_link), (routed / st.etp, expert_link)]


def _states(groups: list[tuple[float, Link]], sb, st: Strategy, root: bool = False,
            train: list[tuple[float, Link]] | None = None) -> ModelStates:
    """(weights, gradients, optimizer, host) bytes on one GPU for parameter groups; offloaded states move
    to host memory (ZeRO-Offload, Ren et al. 2021). torchtitan's FSDP2 also holds the gathered 16-bit
    copy of every block it does not reshard after forward (ZeRO-2 here: fsdp_reshard_after_forward
    "never"), and with ZeRO-3 of the root's parameters (`root`: embedding, final norm and output layer, the
    root module gathered through forward and backward: torchtitan/distributed parallelize apply_fsdp).
    torchtitan's sharded gradients are not alive at the loss (zero_grad sets them to None; FSDP2 creates
    each block's shard in its backward), but their memory comes from the reduce-scatter stream's pool, which
    the caching allocator does not share: they count in the peak (reserved), and StageCoeffs.allocated_bytes
    takes them out again for the tensors alive at once.
    FP8 under Megatron-core adds Transformer Engine's cached FP8 weights and transposes to the layers'
    weights (costmodels.memory.fp8_cache_bytes)."""
    w = g = o = 0.0
    held = st.framework == "torchtitan" and (st.zero_stage == 2 or (st.zero_stage == 3 and root))
    fp8 = 0.0 if root else fp8_cache_bytes(st)    # the layers' GEMM weights (embedding and output stay 16-bit)
    if st.lora_rank is not None:
        # LoRA: the frozen base weights in 16 bits (and their FP8 caches), no gradients or optimizer states;
        # the adapters (`train`, none on the embedding and output layer) carry the full mixed-precision states
        frozen = sum(n for n, _ in groups)
        # FP8 fine-tuning keeps the frozen weights in FP8 only, with the transpose the input-gradient GEMM
        # reads (Transformer Engine fp8_model_init: no 16-bit copy): 1 + 1 bytes
        w = frozen * (fp8 if fp8 else compute_copy_bytes(st.precision))
        for n, link in train or []:
            wi, gi, oi = model_state_bytes(n, sb, st.zero_stage, link.size)
            w, g, o = w + wi, g + gi, o + oi
        return ModelStates(w, g, o, 0.0)
    for n, link in groups:
        wi, gi, oi = model_state_bytes(n, sb, st.zero_stage, link.size)
        wi += n * (compute_copy_bytes(st.precision) if held else 0.0) + n * fp8
        w, g, o = w + wi, g + gi, o + oi
    host = 0.0
    if st.offload_optimizer:
        host, o = host + o, 0.0
    if st.offload_params:
        host, w = host + w, 0.0
    if st.pipeline_schedule == "dualpipe" and st.pp > 1:
        # DualPipe keeps two copies of the model parameters, one per direction (DeepSeek-V3 report 3.2.1)
        w *= 2.0
    return ModelStates(w, g, o, host)


# DeepSpeed's CPU Adam on one host: 1e9 parameters in 0.22 s on a DGX-2's two Xeon Platinum 8168 (Ren et al.
# 2021, ZeRO-Offload, Table 4; 8e9 in 2.41 s), ~4.5e9 parameters/s shared by the host's GPUs. Taken, not
# fitted: no bundled run offloads. A Grace host does about twice that (DeepSpeed SuperOffload blog, GH200:
# 1e9 in 0.098 s); the x86 figure is kept for every host, a conservative choice there.
CPU_ADAM_PARAMS_PER_S_PER_HOST = 4.5e9


def _cpu_optimizer_time(params: float, gpu) -> float:
    """Optimizer step on the host (ZeRO-Offload, Ren et al. 2021): PCIe copies of grads down and weights
    up (2 + 2 bytes) plus the host's CPU Adam (CPU_ADAM_PARAMS_PER_S_PER_HOST) shared by the GPUs it drives
    (a node's, or a rack-scale tray's). Not validated: no published run in the bundled sets offloads."""
    pcie = params * 4.0 / (gpu.pcie_gbps * 1e9)
    per_host = gpu.gpus_per_tray or gpu.gpus_per_node
    return pcie + params * per_host / CPU_ADAM_PARAMS_PER_S_PER_HOST


def _inflight(p: int, m: int, v: int, schedule: str = "1f1b") -> list[float]:
    """Micro-batches of activations alive per stage: 1F1B min(p - i, m); interleaving adds (p-1)/v
    (Korthikanti et al. 2022, 4.2.3); GPipe keeps all m (Huang et al. 2019); DualPipe up to p + 1 on every
    stage (DeepSeek-V3 report, Table 2: activation PP + 1); p = 1 keeps one."""
    if p == 1:
        return [1.0]
    if schedule == "gpipe":
        return [float(m)] * p
    if schedule == "dualpipe":
        return [float(min(p + 1, m))] * p
    if v == 1:
        return [float(min(p - i, m)) for i in range(p)]
    return [min(float(m), (p - i) + (p - 1) / v) for i in range(p)]


def min_stage_layers(i: int, p: int, v: int) -> int:
    """Fewest transformer layers pipeline stage i of p holds with v interleaved chunks: one per chunk, but
    the first stage's first chunk may hold only the embedding and the last stage's last chunk only the loss
    (Megatron-core pipeline layouts, megatron/core/transformer/pipeline_parallel_layer_layout.py: "E|" and
    "|L" entries), one fewer there."""
    return v - 1 if v > 1 and p > 1 and i in (0, p - 1) else v


def even_split(layers: int, p: int) -> list[int]:
    """Megatron's default: equal layers per stage (the remainder, if any, to the middle stages)."""
    base, extra = divmod(layers, p)
    out = [base] * p
    for k in range(extra):
        out[(p - extra) // 2 + k] += 1
    return out


# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Evaluation:
    """Prediction for one strategy. Times in seconds, memory in bytes per GPU."""
    strategy: Strategy
    step_time_s: float
    tokens_per_s: float
    model_flops: float
    hardware_flops: float
    mfu: float
    hfu: float
    tflops_per_gpu: float          # model FLOPs per second per GPU / 1e12
    time_s: dict[str, float]       # breakdown of the step, sums to step_time_s
    memory_b: dict[str, float]     # anatomy of the most loaded stage
    stage_memory_b: list[float]
    stage_layers: list[int]
    recompute_layers: list[int]
    capacity_b: float
    fits: bool
    bottleneck_stage: int
    stage_gpus: list[str] = field(default_factory=list)   # GPU type of each pipeline stage
    stage_time_s: list[float] = field(default_factory=list)  # each stage's time for one micro-batch
    mfu_causal: float = 0.0        # MFU counting the causal half of attention (flops.causal_model_flops_per_step)


def resolve_layout(model: ModelSpec, st: Strategy) -> tuple[list[int], list[int]]:
    """Layers and fully recomputed layers per stage, with the strategy's defaults filled in."""
    Ls = list(st.stage_layers) if st.stage_layers is not None else even_split(model.layers, st.pp)
    if st.recompute != "full":
        Rs = [0] * st.pp
    elif st.recompute_layers is None:
        Rs = list(Ls)
    else:
        Rs = [min(r, L) for r, L in zip(st.recompute_layers, Ls)]
    return Ls, Rs


def hardware_flops_per_step(model: ModelSpec, st: Strategy, recomputed_layers: int) -> float:
    """FLOPs a step runs: the model's, plus the forward of the fully recomputed layers (not the output
    layer: Narayanan et al. 2021, eq. 3) and the attention core again with selective recompute."""
    mflops = model_flops_per_step(model, st.global_batch, model.seq_len)
    layers_fwd = mflops / 3.0 - logits_forward_flops(model, st.global_batch * model.seq_len)
    return (mflops + recomputed_layers / model.layers * layers_fwd
            + (_selective_flops(model, st) if st.recompute == "selective" else 0.0))


def _selective_flops(model: ModelSpec, st: Strategy) -> float:
    """Selective recompute repeats the attention core forward: 4*B*s^2*h per layer (Megatron); torchtitan's
    per-op selective AC repeats the unsaved matmuls wk, wo and w3: 2*B*s*h*(kv_dim + h + f) per layer."""
    tokens = st.global_batch * model.seq_len
    if st.framework == "torchtitan":
        f = model.ffn_hidden if model.ffn_type == "swiglu" else 0
        return 2.0 * tokens * (model.hidden * (model.kv_dim + f) + model.q_dim * model.hidden) * model.layers
    mods = recomputed_modules(st)
    out = 4.0 * tokens * model.seq_len * model.q_dim * model.layers if "core_attn" in mods else 0.0
    moe_layers = model.num_moe_layers if model.moe is not None else 0
    if "mlp" in mods:     # the dense MLPs' forward again
        out += 2.0 * tokens * (model.layers - moe_layers) * sum(
            n * k for n, k in mlp_gemm_widths(model.ffn_type, model.hidden, model.ffn_hidden, 1))
    if "moe" in mods and model.moe is not None:    # the routed and shared experts' forward again
        per = 2.0 * sum(n * k for n, k in mlp_gemm_widths(model.ffn_type, model.hidden, model.moe.expert_ffn_hidden, 1))
        out += tokens * moe_layers * per * (model.moe.top_k + model.moe.shared_experts)
    return out
