"""Bytes held per GPU: model states (weights, gradients, optimizer states) and activations.

Model states: mixed-precision Adam keeps 2 (bf16/fp16 weights) + 2 (gradients) + 12 (fp32 master weights,
momentum, variance) = 16 bytes per parameter in the ZeRO paper's accounting (Rajbhandari et al. 2020,
section 3). The frameworks also keep the gradients the optimizer reads in fp32 (Megatron-LM
docs/distrib_optimizer.md: 18 bytes for bf16, 20 for fp16), which is the default here. ZeRO-1 (= Megatron's
distributed optimizer) shards the optimizer states over the data-parallel group, ZeRO-2 also the
gradients, ZeRO-3 also the weights.

Activations: Korthikanti et al. 2022, section 4 (eqs. 1-6), generalised from 4h GELU MLPs and MHA to any
ffn size, SwiGLU and GQA by counting the same tensors.
"""
from __future__ import annotations

from dataclasses import dataclass

from costmodels.model import ModelSpec
from costmodels.strategy import Strategy, recomputed_modules


@dataclass(frozen=True, slots=True)
class StateBytes:
    """Bytes per parameter of each kind of model state before any sharding, and the bytes per parameter
    the data-parallel gradient reduction moves."""
    weights: float
    gradients: float
    optimizer: float
    reduce: float


def state_bytes_per_param(precision: str, optimizer: str, fp32_grads: bool = True, framework: str = "megatron",
                          zero_stage: int = 0) -> StateBytes:
    """Model-state bytes per parameter, in the accounting of `framework`.

    torchtitan (FSDP2, torchtitan/distributed parallelize: MixedPrecisionPolicy(param_dtype=bf16,
    reduce_dtype=fp32)): the parameters themselves are fp32 and are the master weights; FSDP2 all-gathers
    bf16 copies per block and reduce-scatters fp32 gradients into fp32 shards; AdamW adds m and v:
    4 + 4 + 8 (SGD: 4), whatever the precision (fp8 training casts the same fp32 shards).
    DeepSpeed: bf16/fp16 ZeRO keeps 16-bit weights and 16-bit gradients and an fp32 gradient partition next
    to the fp32 master, m and v (deepspeed/runtime/zero/stage_1_and_2.py single_partition_of_fp32_groups;
    its estimate_zero2_model_states_mem_needs: 4 B/param + 16 B/param / dp): 2 + 2 + 16; ZeRO-3 builds the
    fp32 gradient one sub-group at a time during the step, when activations are gone (stage3.py
    _prepare_fp32_grad_for_sub_group): 2 + 2 + 12 at the peak. ZeRO-0/1 with fp32
    gradient accumulation is DeepSpeed's BF16_Optimizer (deepspeed/runtime/bf16_optimizer.py: fp32
    accumulated gradients, sharded fp32 master and states), the Megatron accounting below.
    Megatron-core (the default):

    fp32_grads=False is the ZeRO paper's accounting (section 3): 16-bit weights and gradients + fp32
    master/momentum/variance (Adam) = 2 + 2 + 12, reduced in 16 bits.
    fp32_grads=True (the default) is what Megatron-LM holds (docs/distrib_optimizer.md, 18 / 6 + 12/d for
    bf16, 20 / 4 + 16/d for fp16): bf16 accumulates and all-reduces gradients in fp32 (arguments.py: "bfloat16
    requires gradient accumulation and all-reduce to be done in fp32") = 2 + 4 + 12; fp16 reduces 16-bit
    gradients and keeps an fp32 copy next to the master weights, sharded with them = 2 + 2 + 16.
    fp32 training keeps no separate master copy: 4 + 4 + 8 (Adam) or 4 + 4 + 4 (SGD momentum).
    fp8 training keeps bf16 weights and fp32 master weights (Transformer Engine), as bf16.
    """
    opt = 12.0 if optimizer == "adam" else 8.0       # fp32 master weights + Adam m, v (SGD: momentum)
    if framework == "torchtitan":
        return StateBytes(4.0, 4.0, opt - 4.0, 4.0 if (fp32_grads or precision == "fp32") else 2.0)
    if framework == "deepspeed" and precision != "fp32" and zero_stage >= 3:
        return StateBytes(2.0, 2.0, opt, 2.0)
    if framework == "deepspeed" and precision != "fp32" and (zero_stage >= 2 or not fp32_grads):
        return StateBytes(2.0, 2.0, opt + 4.0, 2.0)
    if precision == "fp32":
        return StateBytes(4.0, 4.0, opt - 4.0, 4.0)
    if not fp32_grads:
        return StateBytes(2.0, 2.0, opt, 2.0)
    if precision == "fp16":
        return StateBytes(2.0, 2.0, opt + 4.0, 2.0)
    return StateBytes(2.0, 4.0, opt, 4.0)


def model_state_bytes(params: float, sb: StateBytes, zero_stage: int, shard: int) -> tuple[float, float, float]:
    """(weights, gradients, optimizer) bytes per GPU for `params` parameters held by this GPU before
    ZeRO, sharded over `shard` data-parallel ranks as the ZeRO stage says."""
    w = params * sb.weights / (shard if zero_stage >= 3 else 1)
    g = params * sb.gradients / (shard if zero_stage >= 2 else 1)
    o = params * sb.optimizer / (shard if zero_stage >= 1 else 1)
    return w, g, o


def compute_copy_bytes(precision: str) -> float:
    """Bytes per parameter of the copy the GEMMs read: what ZeRO-3 / FSDP2 all-gather and hold unsharded
    (16-bit, FSDP2's param_dtype; fp8 training gathers the bf16 weights and casts per GEMM)."""
    return 4.0 if precision == "fp32" else 2.0


def fp8_cache_bytes(st: Strategy) -> float:
    """Bytes per transformer-layer GEMM parameter of FP8 weight caches: Transformer Engine keeps an FP8 copy
    of each Linear's weight and its FP8 transpose for the backward across micro-batches
    (transformer_engine/pytorch/module/linear.py, the cached weight workspaces), 1 + 1 bytes, on top of the
    16-bit weights (Megatron-core with --fp8-format). torchtitan's float8 (torchao) casts per GEMM and keeps
    no copy; DeepSpeed has no FP8."""
    return 2.0 if (st.precision == "fp8" and st.framework == "megatron") else 0.0


# DeepSpeed ZeRO defaults, in elements (deepspeed/runtime/zero/config.py: reduce_bucket_size 5e8,
# stage3_prefetch_bucket_size 5e7; contiguous_gradients on, overlap_comm off for stages 1-2, on for 3);
# the DeepSpeed export writes these values, so the plan and the config agree.
DS_REDUCE_BUCKET = 500_000_000
DS_ALLGATHER_BUCKET = 500_000_000
DS_PREFETCH_BUCKET = 50_000_000


def framework_buffer_bytes(st: Strategy) -> float:
    """Communication buffers a framework allocates beyond model states and activations, on every GPU.
    DeepSpeed ZeRO-2: the contiguous reduce bucket (stage_1_and_2.py ipg_buffer, reduce_bucket_size
    16-bit elements); ZeRO-3: its reduce bucket (stage3.py __ipg_bucket_flat_buffer) and the prefetch
    bucket of gathered parameters (stage3_prefetch_bucket_size). Megatron-core's gradient buckets are views
    of its gradient buffer (megatron/core/distributed/param_and_grad_buffer.py) and torchtitan's FSDP2
    reduce-scatters per block: nothing extra."""
    if st.framework != "deepspeed" or st.zero_stage < 2:
        return 0.0
    w = compute_copy_bytes(st.precision)
    if st.zero_stage == 2:
        return DS_REDUCE_BUCKET * w
    return (DS_REDUCE_BUCKET + DS_PREFETCH_BUCKET) * w


@dataclass(frozen=True, slots=True)
class LayerActivations:
    """Activation bytes one layer stores for one micro-batch on one GPU."""
    stored: float        # with the strategy's granularity (none or selective)
    checkpoint: float    # when the layer is fully recomputed: its input only
    full: float          # everything (the working set while a recomputed layer runs backward)


def layer_activation_bytes(model: ModelSpec, st: Strategy, layer: int = 0) -> LayerActivations:
    """Korthikanti et al. 2022 Table 2 generalised; 16-bit activations, 1-byte dropout masks.

    Per layer (s sequence per cp rank, b micro-batch, h hidden, t tp, kvd = kv_heads*head_dim):
      not split by t without sequence parallel: 2 layernorm inputs 4sbh + QKV and MLP inputs 4sbh
        + 2 dropout masks 2sbh = 10sbh  (with sequence parallel: split by t)
      split by t: Q 2sbq, K and V 4sb*kvd, output-projection input 2sbq (q = heads x head_dim: h unless the
        heads are wider, as Qwen3's), MLP 4sbf (GELU: its input and
        output) or 6sbf (SwiGLU: gate, up, product); scores 5as^2b unless flash attention or selective
        recompute drop them. With MHA and f = 4h this is sbh(34 + 5as/h) (paper eq. 1 at t = 1).
      model.dropout False (Llama-style training, dropout 0): no masks, 8sbh unsplit and 4as^2b scores.
      full recompute keeps the layer input 2sbh (split by t with sequence parallel).
    """
    s = model.seq_len / st.cp
    b, h, t = st.micro_batch, model.hidden, st.tp
    sbh = s * b * h
    fp8 = fp8_stored_inputs(st)
    # two 1-byte dropout masks (attention and MLP output) only when training with dropout (Table 2); the QKV
    # and MLP inputs in FP8 under Transformer Engine's FP8 (fp8_stored_inputs)
    unsplit = (10.0 if model.dropout else 8.0) * sbh - (2.0 * sbh if fp8 else 0.0)
    if model.mla is not None:   # the latents, duplicated on every tensor-parallel rank: q and kv (+ rope key)
        a = model.mla
        unsplit += 2.0 * s * b * ((a.q_lora_rank or 0) + a.kv_lora_rank + a.qk_rope_head_dim)
    # Q, K and V, and the projection input (q = h for GPT), which the fused attention keeps in 16 bits for its
    # own backward; FP8 adds the projection's FP8 copy of it
    attn = 4.0 * s * b * model.q_dim + 4.0 * s * b * model.kv_dim + (s * b * model.q_dim if fp8 else 0.0)
    mlp = _mlp_activation_bytes_per_token(model, layer) * s * b
    if fp8:     # the second MLP GEMM's input (SwiGLU's product 2f of 6f, GELU's output 2f of 4f) in FP8
        mlp *= 5.0 / 6.0 if model.ffn_type == "swiglu" else 3.0 / 4.0
    # scores: softmax input and output 4as^2b + the 1-byte attention-dropout mask (Table 2) when dropout is on
    scores = (5.0 if model.dropout else 4.0) * model.heads * s * (s * st.cp) * b if not st.flash_attention else 0.0
    sp = st.sequence_parallel
    # the routed tokens of the expert tensor-parallel group: s b etp / t per rank (all of s b unless folded)
    dispatch = moe_dispatch_bytes(model, layer, fp8) * s * b * st.etp / t
    base = (unsplit / t if sp else unsplit) + (attn + mlp) / t + dispatch
    checkpoint = 2.0 * sbh / (t if sp else 1)
    if st.framework == "torchtitan":
        return _torchtitan_layer(model, st, layer, base, checkpoint)
    full = base + scores / t
    mods = recomputed_modules(st)
    stored = full - (scores / t if "core_attn" in mods else 0.0)
    # Megatron-core's other recompute modules (transformer_config.py recompute_modules) drop what they
    # recompute and keep their inputs: layernorm its two outputs (the QKV and MLP inputs, 4sbh); moe_act the
    # activation's output (SwiGLU's product 2f of 6f, GELU's output 2f of 4f); mlp / moe the whole MLP
    # (and the MoE layer's dispatch copies)
    moe_layer = model.moe is not None and model.is_moe_layer(layer)
    if "layernorm" in mods:
        stored -= 4.0 * sbh / (t if sp else 1)
    if "moe_act" in mods and moe_layer and "moe" not in mods:
        per_f = 6.0 if model.ffn_type == "swiglu" else 4.0     # 16-bit bytes per f; the output is 2 (1 in FP8)
        stored -= mlp / t * ((1.0 / (per_f - 1.0)) if fp8 else 2.0 / per_f)
    if ("mlp" in mods and not moe_layer) or ("moe" in mods and moe_layer):
        stored -= mlp / t + dispatch
    if "mla_up_proj" in mods and model.mla is not None:
        # the MLA up-projections' outputs (Q, K and V) recomputed from the latents; the attention output stays
        stored -= (2.0 * s * b * model.q_dim + 4.0 * s * b * model.kv_dim) / t
    return LayerActivations(stored=stored, checkpoint=checkpoint, full=full)


def fp8_stored_inputs(st: Strategy) -> bool:
    """Transformer Engine's FP8 Linear layers keep the FP8 copy of their input for the weight gradient, not
    the 16-bit one (transformer_engine/pytorch/module/linear.py, layernorm_linear.py, grouped_linear.py:
    the quantized input saved for backward): the QKV, MLP and expert inputs and the second MLP GEMM's input
    are stored in 1 byte under Megatron-core with FP8. torchao's float8 (torchtitan) is left at 16 bits."""
    return st.precision == "fp8" and st.framework == "megatron"


def _torchtitan_layer(model: ModelSpec, st: Strategy, layer: int, base: float, checkpoint: float) -> LayerActivations:
    """torchtitan's Llama block in eager PyTorch (torchtitan/models/llama3/model.py, no dropout, SDPA):
    what Megatron's fused kernels keep (`base`), plus the flash logsumexp (fp32, a per head and token) and
    the unfused SwiGLU's extra input (w2(silu(w1 x) * w3 x) saves silu's output and the product beside
    w1 x and w3 x: 8f where the fused kernel keeps 6f; the oracle's eager_swiglu term).
    recompute="selective" is torchtitan's per-op selective AC (torchtitan/distributed/activation_checkpoint.py,
    selective_ac_option "op"): only the outputs of every other matmul (wq, wv, w1, w2 of a Llama block, the
    counter starting at each block's forward), of SDPA (with its logsumexp) and of tensor-parallel
    reduce-scatters are saved, plus the block input; the rest is recomputed."""
    s = model.seq_len / st.cp
    b, h, t = st.micro_batch, model.hidden, st.tp
    sb = s * b
    lse = 4.0 * model.heads * sb / t
    f_tok = _mlp_activation_bytes_per_token(model, layer)        # 6f (SwiGLU) or 4f (GELU), 16-bit
    eager_mlp = f_tok / 3.0 if model.ffn_type == "swiglu" else 0.0
    full = base + lse + eager_mlp * sb / t
    if st.recompute != "selective":
        return LayerActivations(stored=full, checkpoint=checkpoint, full=full)
    w1_out = (f_tok / 3.0 if model.ffn_type == "swiglu" else f_tok / 2.0) * sb / t
    w2_out = 2.0 * sb * h + (2.0 * sb * h / t if t > 1 else 0.0)   # mm output, and its reduce-scatter's
    saved = checkpoint + 2.0 * sb * model.q_dim / t + 2.0 * sb * model.kv_dim / t + 2.0 * sb * model.q_dim / t + lse \
        + w1_out + w2_out
    return LayerActivations(stored=saved, checkpoint=checkpoint, full=full)


def moe_dispatch_bytes(model: ModelSpec, layer: int, fp8: bool = False) -> float:
    """Bytes per token an MoE layer keeps for its token dispatch, beyond the experts' own activations: the
    permuted copies of the routed tokens (the experts' input, k x capacity factor rows of h in 16 bits) and the
    expert outputs the weighted combine keeps for its backward (the same size), plus the router's logits and
    probabilities (2 x E in 16 bits) (megatron/core/transformer/moe/token_dispatcher.py, moe_utils.py permute /
    unpermute, router.py); with `fp8` the experts' input is their GEMM's FP8 copy, 1 byte (fp8_stored_inputs).
    The routed tokens are gathered over the expert tensor-parallel group before dispatch (etp = tp unless
    folded apart)."""
    if model.moe is None or not model.is_moe_layer(layer):
        return 0.0
    moe = model.moe
    tokens = (3.0 if fp8 else 4.0) * model.hidden * moe.top_k * moe.capacity_factor   # experts' input in FP8 under fp8
    return tokens + 2.0 * 2.0 * moe.experts


def _mlp_activation_bytes_per_token(model: ModelSpec, layer: int) -> float:
    """MLP activation bytes per token (16-bit): GELU 4f (2 tensors of f), SwiGLU 6f (3 tensors)."""
    per_f = 6.0 if model.ffn_type == "swiglu" else 4.0
    if model.moe is not None and model.is_moe_layer(layer):
        moe = model.moe
        routed = moe.top_k * moe.capacity_factor + moe.shared_experts
        return per_f * moe.expert_ffn_hidden * routed
    return per_f * model.ffn_hidden


def logits_bytes(model: ModelSpec, st: Strategy) -> float:
    """Alive at the loss, split over tp: the fp32 softmax 4sbV (Korthikanti et al. 2022, 4.3) and the 16-bit
    logits 2sbV next to it (their gradient in the backward): megatron/core/tensor_parallel/cross_entropy.py
    keeps the fp32 softmax while the output layer's 16-bit logits stay alive until the loss is computed.
    torchtitan computes cross_entropy(logits.float()) in eager PyTorch (torchtitan/components/loss.py; with
    tp, loss_parallel splits it over the vocabulary): the saved fp32 log-softmax and, in its backward, two fp32
    gradients and the 16-bit one, 12sbV at the peak (the oracle's eager loss_peak); DeepSpeed runs the
    model's own loss, priced like torchtitan's."""
    per = 6.0 if st.framework == "megatron" else 12.0
    return per * model.seq_len / st.cp * st.micro_batch * model.vocab / st.tp


def head_input_bytes(model: ModelSpec, st: Strategy) -> float:
    """The last stage's final norm input and output-layer input, 2sbh each in 16 bits, split over tp with
    sequence parallel (Korthikanti et al. 2022, 4.3; Megatron's output layer saves its sequence-parallel
    input and all-gathers it again in the backward, megatron/core/tensor_parallel/layers.py)."""
    sbh = model.seq_len / st.cp * st.micro_batch * model.hidden
    return 4.0 * sbh / (st.tp if st.sequence_parallel else 1)


def embedding_activation_bytes(model: ModelSpec, st: Strategy) -> float:
    """Stage 0: the embedding's output is the first layer's input (stored there); only the embedding-dropout
    mask, 1 byte sbh, split over tp with sequence parallel, is extra (Korthikanti et al. 2022, 4.3;
    megatron/core/models/common/embeddings/language_model_embedding.py), none without dropout."""
    if not model.dropout:
        return 0.0
    return model.seq_len / st.cp * st.micro_batch * model.hidden / (st.tp if st.sequence_parallel else 1)


# outside PyTorch's allocator: the CUDA context, its kernel images and the communication libraries' own
# buffers, which nvidia-smi shows and torch.cuda.max_memory_reserved does not (assumption: ~0.5 GB on
# current NVIDIA and AMD GPUs, not measured here)
CUDA_CONTEXT_BYTES = 0.5e9


def memory_in(peak_b: float, allocated_b: float, statistic: str) -> float:
    """A GPU's memory in the statistic a measurement names, from the planner's peak (its tensors plus the fixed
    runtime buffers for cuBLAS workspaces, NCCL and the caching allocator's slack) and its allocated bytes (the
    tensors alive at once, planner.solve.stages allocated_bytes): allocated (torch.cuda.max_memory_allocated);
    reserved (max_memory_reserved: what the caching allocator holds, what torchtitan and Megatron log) = the
    peak; device (nvidia-smi) = the peak + the CUDA context."""
    if statistic == "allocated":
        return allocated_b
    if statistic == "device":
        return peak_b + CUDA_CONTEXT_BYTES
    return peak_b
