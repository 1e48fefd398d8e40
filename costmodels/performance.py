"""Step time, memory and utilisation of a training strategy: (model, strategy, cluster) -> Evaluation.

The pipeline is described by `StageCosts`: integer coefficients (nanoseconds, bytes) that make each
stage's time and memory linear in its number of layers L and fully recomputed layers R. The planner's
CP-SAT model uses the very same coefficients, so a plan's solver objective and its evaluation agree to
the nanosecond. Formulas and their sources:

- per micro-batch, stage i: T_i = L*(fwd + bwd) + R*recompute + embedding (first) + head (last) + p2p;
- 1F1B pipeline: (m - 1) * max T_i + sum T_i, i.e. (m + p - 1) T for equal stages (Narayanan et al.
  2021, section 2.2); interleaved with v chunks: m * max T_i + (sum T_i - max T_i) / v, the bubble
  (p - 1)/(v m) (Narayanan et al. 2021, section 2.2.2);
- 1F1B memory: stage i keeps min(p - i, m) micro-batches of activations alive; interleaving adds
  (p - 1)/v (Korthikanti et al. 2022, section 4.2.3);
- data-parallel gradient sync overlaps the last micro-batch's backward (PyTorch DDP / Megatron
  --overlap-grad-reduce); ZeRO-3 gathers weights every micro-batch, overlapped with its compute
  (Rajbhandari et al. 2020, section 7.2: 1.5x the data-parallel volume).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from costmodels.calibration import Calibration, calibration_for
from costmodels.comm import Link, collective_time, group_link, p2p_time
from costmodels.compute import gemm_time, memory_bound_time
from costmodels.flops import model_flops_per_step
from costmodels.memory import layer_activation_bytes, logits_bytes, model_state_bytes, state_bytes_per_param
from costmodels.model import ModelSpec
from costmodels.strategy import Strategy
from hardware import Cluster

NS = 1e-9
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


@dataclass(frozen=True, slots=True)
class StageCosts:
    """Integer coefficients of one pipeline structure (ns and bytes), shared with the CP-SAT model."""
    p: int
    m: int
    v: int
    layers: int
    layer_ns: int             # fwd + bwd of a stored (not recomputed) layer, incl. collectives
    recompute_ns: int         # extra for a fully recomputed layer
    first_ns: int             # embedding work on stage 0 (per micro-batch)
    last_ns: int              # output layer + loss on the last stage (per micro-batch)
    p2p_ns: int               # pipeline sends per micro-batch per stage (both directions, x v)
    dp_layer_ns: int          # data-parallel sync of one layer's gradients (per step)
    dp_first_ns: int
    dp_last_ns: int
    dp_window_layer_ns: int   # backward of one layer: the window that hides data-parallel sync
    zero3_layer_ns: int       # ZeRO-3 gathers + reduce-scatter of one layer per micro-batch
    opt_layer_ns: int         # optimizer step of one layer's shard
    opt_first_ns: int
    opt_last_ns: int
    layer_static_b: int       # weights + grads + optimizer of one layer on one GPU
    first_static_b: int
    last_static_b: int
    act_stored_b: tuple[int, ...]   # per stage: in-flight micro-batches x stored bytes of one layer
    act_ckpt_b: tuple[int, ...]     # per stage: in-flight x checkpoint (layer input) bytes of one layer
    act_full_b: int           # working set of one layer recomputing (one micro-batch)
    first_act_b: tuple[int, ...]
    last_act_b: int           # logits of one micro-batch (transient, last stage)
    fixed_b: int              # buffers every GPU holds
    zero3_buffer_b: int       # gathered weights of two layers (ZeRO-3 prefetch)
    flexible: bool            # layers per stage may differ (plain 1F1B); interleaving needs even chunks
    # float split of one layer's time, for reporting only
    layer_parts: LayerTimes = field(compare=False, default=None)

    # --- formulas shared with the solver -------------------------------------------------------
    def stage_ns(self, i: int, L: int, R: int) -> int:
        t = L * self.layer_ns + R * self.recompute_ns + self.p2p_ns
        if i == 0:
            t += self.first_ns
        if i == self.p - 1:
            t += self.last_ns
        if self.zero3_layer_ns:
            t = max(t, L * self.zero3_layer_ns)
        return t

    def stage_tail_ns(self, i: int, L: int) -> int:
        """Once per step: exposed data-parallel sync plus the optimizer step of stage i."""
        dp = L * self.dp_layer_ns + (self.dp_first_ns if i == 0 else 0) + (self.dp_last_ns if i == self.p - 1 else 0)
        exposed = max(0, dp - L * self.dp_window_layer_ns)
        opt = L * self.opt_layer_ns + (self.opt_first_ns if i == 0 else 0) + (self.opt_last_ns if i == self.p - 1 else 0)
        return exposed + opt

    def stage_bytes(self, i: int, L: int, R: int) -> int:
        b = L * self.layer_static_b + self.fixed_b + self.zero3_buffer_b
        b += (L - R) * self.act_stored_b[i] + R * self.act_ckpt_b[i]
        if R > 0:
            b += self.act_full_b
        if i == 0:
            b += self.first_static_b + self.first_act_b[i]
        if i == self.p - 1:
            b += self.last_static_b + self.last_act_b
        return b

    def step_scaled(self, Ls: list[int], Rs: list[int]) -> int:
        """v x step time in ns, an exact integer (the CP-SAT objective)."""
        times = [self.stage_ns(i, L, R) for i, (L, R) in enumerate(zip(Ls, Rs))]
        tails = [self.stage_tail_ns(i, L) for i, L in enumerate(Ls)]
        return self.pipeline_scaled(times) + self.v * max(tails)

    def pipeline_scaled(self, times: list[int]) -> int:
        """v x pipeline time in ns: (m-1) max T + sum T for 1F1B; v m max T + sum T - max T interleaved."""
        tmax, total = max(times), sum(times)
        if self.v == 1:
            return (self.m - 1) * tmax + total
        return self.v * self.m * tmax + total - tmax


def _q(x: float) -> int:
    return int(math.ceil(x - 1e-12)) if x > 0 else 0


def layer_times(model: ModelSpec, st: Strategy, cluster: Cluster, cal: Calibration) -> LayerTimes:
    """Seconds for an average transformer layer, one micro-batch, on one GPU."""
    gpu = cluster.gpu
    peak = gpu.peak_tflops(st.precision) * 1e12
    t, b, h = st.tp, st.micro_batch, model.hidden
    s_full = model.seq_len
    s = s_full / st.cp
    M = b * s                                       # tokens per GPU per micro-batch
    kvd, f = model.kv_dim, model.ffn_hidden
    # Dense GEMMs (Shoeybi et al. 2019: QKV / fc1 column-split, projection / fc2 row-split over t)
    attn_gemm = gemm_time(M, (h + 2 * kvd) / t, h, peak, cal) + gemm_time(M, h, h / t, peak, cal)
    mlp_in = 2 * f if model.ffn_type == "swiglu" else f
    dense_mlp = gemm_time(M, mlp_in / t, h, peak, cal) + gemm_time(M, h, f / t, peak, cal)
    mlp = dense_mlp
    ep_comm = 0.0
    if model.moe is not None:
        moe = model.moe
        fe = moe.expert_ffn_hidden
        fe_in = 2 * fe if model.ffn_type == "swiglu" else fe
        local_experts = moe.experts / st.ep
        tokens_per_expert = M * st.ep * moe.top_k * moe.capacity_factor / moe.experts
        expert_mlp = local_experts * (gemm_time(tokens_per_expert, fe_in / t, h, peak, cal)
                                      + gemm_time(tokens_per_expert, h, fe / t, peak, cal))
        shared = moe.shared_experts * (gemm_time(M, fe_in / t, h, peak, cal) + gemm_time(M, h, fe / t, peak, cal))
        router = gemm_time(M, moe.experts, h, peak, cal)
        moe_mlp = expert_mlp + shared + router
        frac = model.num_moe_layers / model.layers
        mlp = frac * moe_mlp + (1 - frac) * dense_mlp
        # GShard / DeepSpeed-MoE: dispatch + combine all-to-all, forward and backward (4 per MoE layer)
        a2a_bytes = M * moe.top_k * moe.capacity_factor * h * 2 / t
        ep_link = group_link(st.ep, st.tp * st.cp, cluster.gpus_per_node)
        ep_comm = frac * 4 * collective_time("all_to_all", a2a_bytes, ep_link, gpu, cal)
    # Attention core, 4*b*s*s_full*h/t FLOPs (QK^T and AV). Fused (flash) kernels skip the masked half
    # of causal attention and run at a fitted share of peak; unfused attention is two batched GEMMs per
    # head, (s x d)(d x s) and (s x s)(s x d), priced like any GEMM (Korthikanti et al. 2022, 3.2).
    if st.flash_attention:
        attn_core = 2.0 * M * s_full * h / t / (peak * cal.attention_efficiency)
    else:
        heads = b * model.heads / t
        d = model.head_dim
        attn_core = heads * (gemm_time(s, s_full, d, peak, cal) + gemm_time(s, d, s_full, peak, cal))
    # Element-wise traffic (bytes, 16-bit): 2 layer norms (read+write 8sbh) and 2 dropout+residual
    # (14sbh incl. 1-byte masks), split by t with sequence parallel; activation function 4sbf (GELU)
    # or 6sbf (SwiGLU) over t; fused scale-mask-softmax + dropout 9*a*s^2*b over t without flash.
    sp_div = t if st.sequence_parallel else 1
    elem = 22.0 * M * h / sp_div + (6.0 if model.ffn_type == "swiglu" else 4.0) * M * f / t
    softmax_bytes = 0.0 if st.flash_attention else 9.0 * model.heads * M * s_full / t
    elem_fwd = memory_bound_time(elem + softmax_bytes, gpu.hbm_gbps, cal)
    compute_fwd = attn_gemm + mlp + attn_core + elem_fwd + cal.kernel_overhead_s
    compute_bwd = 2.0 * (attn_gemm + mlp + attn_core + elem_fwd) + cal.kernel_overhead_s
    # Tensor parallel: 2 all-reduces of s*b*h forward and 2 backward (Shoeybi et al. 2019); with sequence
    # parallel the same volume as all-gather + reduce-scatter (Korthikanti et al. 2022, section 4.2.2).
    tp_link = group_link(t, 1, cluster.gpus_per_node)
    tp_one = collective_time("all_reduce", M * h * 2.0, tp_link, gpu, cal)
    # Context parallel (ring attention, Liu et al. 2023): cp-1 exchanges of this rank's K and V per layer
    # forward, twice that backward (K, V and their gradients), hidden behind the attention core.
    cp_exposed = 0.0
    if st.cp > 1:
        cp_link = group_link(st.cp, t, cluster.gpus_per_node)
        kv_bytes = 2.0 * M * kvd / t * 2.0
        one = p2p_time(kv_bytes, cp_link.per_node < cp_link.size, gpu, cal) * (st.cp - 1)
        cp_exposed = max(0.0, one - attn_core) + max(0.0, 2 * one - 2 * attn_core)
    selective_extra = (attn_core + memory_bound_time(softmax_bytes, gpu.hbm_gbps, cal)) if st.recompute == "selective" else 0.0
    return LayerTimes(compute_fwd, compute_bwd, 2 * tp_one, 2 * tp_one, cp_exposed, ep_comm, selective_extra)


def stage_costs(model: ModelSpec, st: Strategy, cluster: Cluster, cal: Calibration | None = None) -> StageCosts:
    """Coefficients for a strategy's structure (everything but the layer and recompute split)."""
    gpu = cluster.gpu
    cal = cal or calibration_for(gpu.family)
    p, m, v, t = st.pp, st.micro_batches, st.virtual_stages, st.tp
    lt = layer_times(model, st, cluster, cal)
    stored = lt.compute_fwd + lt.compute_bwd + lt.tp_fwd + lt.tp_bwd + lt.cp_exposed + lt.ep_comm + lt.selective_extra
    recompute = lt.compute_fwd + lt.tp_fwd   # full recompute repeats the forward, collectives included
    peak = gpu.peak_tflops(st.precision) * 1e12
    M = st.micro_batch * model.seq_len / st.cp
    h = model.hidden
    # Output layer (vocab-parallel, split over t) forward + backward, and the fp32 loss traffic
    last = 3 * gemm_time(M, model.vocab / t, h, peak, cal) + memory_bound_time(3 * 4.0 * M * model.vocab / t, gpu.hbm_gbps, cal)
    first = memory_bound_time(3 * 2.0 * M * h, gpu.hbm_gbps, cal)
    # Pipeline point-to-point: s*b*h activations forward and gradients back per micro-batch (x v chunks),
    # split over t by Megatron's scatter/gather optimisation (Narayanan et al. 2021, section 4.1).
    p2p = 0.0
    if p > 1:
        pp_stride = t * st.cp * st.dp
        across = pp_stride >= cluster.gpus_per_node
        p2p = 2 * v * p2p_time(M * h * 2.0 / t, across, gpu, cal)
    # Model states per GPU: layer weights split over tp (and experts over ep); ZeRO shards over dp x cp
    sb = state_bytes_per_param(st.precision, st.optimizer)
    shard = st.dp * st.cp
    layer_params = _avg_layer_params_per_gpu(model, st)
    embed_params = model.vocab * h / t + (model.seq_len * h if model.position_embedding == "learned" else 0)
    head_params = model.vocab * h / t   # tied embeddings still keep a copy on the last stage (Megatron)
    w, g, o = model_state_bytes(layer_params, sb, st.zero_stage, shard)
    wf, gf, of = model_state_bytes(embed_params, sb, st.zero_stage, shard)
    wl, gl, ol = model_state_bytes(head_params, sb, st.zero_stage, shard)
    if st.offload_optimizer:
        o = of = ol = 0.0
    if st.offload_params:
        w = wf = wl = 0.0
    # Data-parallel gradient sync (once per step; reduce-scatter + all-gather with ZeRO >= 1, the same
    # volume as an all-reduce), overlapped with the last micro-batch's backward of the stage.
    dp_link = group_link(shard, t, cluster.gpus_per_node)
    grad_bytes = sb.gradients

    def dp_ns(params: float) -> int:
        if st.zero_stage == 3:
            return 0
        return _q(collective_time("all_reduce", params * grad_bytes, dp_link, gpu, cal) / NS)

    zero3 = 0
    zero3_buf = 0
    if st.zero_stage == 3 and shard > 1:
        per_layer = _avg_layer_params_per_gpu(model, st)
        gather = collective_time("all_gather", per_layer * sb.weights, dp_link, gpu, cal)
        scatter = collective_time("reduce_scatter", per_layer * grad_bytes, dp_link, gpu, cal)
        zero3 = _q((2 * gather + scatter) / NS)
        zero3_buf = _q(2 * per_layer * sb.weights)
    opt_bpp = ADAM_BYTES_PER_PARAM if st.optimizer == "adam" else SGD_BYTES_PER_PARAM
    opt_div = shard if st.zero_stage >= 1 else 1

    def opt_ns(params: float) -> int:
        if st.offload_optimizer:
            return _q(_cpu_optimizer_time(params / opt_div, gpu, st.optimizer) / NS)
        return _q(memory_bound_time(params / opt_div * opt_bpp, gpu.hbm_gbps, cal) / NS)

    acts = layer_activation_bytes(model, st)
    inflight = _inflight(p, m, v)
    first_act = 2.0 * M * h / (t if st.sequence_parallel else 1)  # embedding output
    return StageCosts(
        p=p, m=m, v=v, layers=model.layers,
        layer_ns=_q(stored / NS), recompute_ns=_q(recompute / NS),
        first_ns=_q(first / NS), last_ns=_q(last / NS), p2p_ns=_q(p2p / NS),
        dp_layer_ns=dp_ns(layer_params), dp_first_ns=dp_ns(embed_params), dp_last_ns=dp_ns(head_params),
        dp_window_layer_ns=_q((lt.compute_bwd + lt.tp_bwd) / NS),
        zero3_layer_ns=zero3,
        opt_layer_ns=opt_ns(layer_params), opt_first_ns=opt_ns(embed_params), opt_last_ns=opt_ns(head_params),
        layer_static_b=_q(w + g + o), first_static_b=_q(wf + gf + of), last_static_b=_q(wl + gl + ol),
        act_stored_b=tuple(_q(k * acts.stored) for k in inflight),
        act_ckpt_b=tuple(_q(k * acts.checkpoint) for k in inflight),
        act_full_b=_q(acts.full),
        first_act_b=tuple(_q(k * first_act) for k in inflight),
        last_act_b=_q(logits_bytes(model, st)),
        fixed_b=_q(FIXED_BUFFER_BYTES), zero3_buffer_b=zero3_buf,
        flexible=(v == 1),
        layer_parts=lt,
    )


def _avg_layer_params_per_gpu(model: ModelSpec, st: Strategy) -> float:
    """Parameters of an average layer on one GPU: dense parts over tp, experts over tp x ep."""
    dense = model.params_attention() + model.params_norms()
    if model.moe is None:
        return (dense + model.params_mlp_dense()) / st.tp
    moe = model.moe
    frac = model.num_moe_layers / model.layers
    experts = (moe.experts / st.ep + moe.shared_experts) * model.params_expert() + model.params_router()
    mlp = frac * experts + (1 - frac) * model.params_mlp_dense()
    return (dense + mlp) / st.tp


def _cpu_optimizer_time(params: float, gpu, optimizer: str) -> float:
    """Optimizer step on the host (ZeRO-Offload, Ren et al. 2021): PCIe copies of grads down and weights
    up (2 + 2 bytes) plus a CPU Adam at ~1e9 parameters/s per GPU's share of the host (assumption)."""
    pcie = params * 4.0 / (gpu.pcie_gbps * 1e9)
    return pcie + params / 1.0e9


def _inflight(p: int, m: int, v: int) -> list[float]:
    """Micro-batches of activations alive per stage: 1F1B min(p - i, m); interleaving adds (p-1)/v
    (Korthikanti et al. 2022, 4.2.3); p = 1 keeps one."""
    if p == 1:
        return [1.0]
    if v == 1:
        return [float(min(p - i, m)) for i in range(p)]
    return [min(float(m), (p - i) + (p - 1) / v) for i in range(p)]


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


def evaluate(model: ModelSpec, st: Strategy, cluster: Cluster, sc: StageCosts | None = None) -> Evaluation:
    """Predict step time, throughput, utilisation and per-GPU memory of `st` (rules checked by caller)."""
    sc = sc or stage_costs(model, st, cluster)
    Ls, Rs = resolve_layout(model, st)
    return evaluate_layout(model, st, cluster, sc, Ls, Rs)


def evaluate_layout(model: ModelSpec, st: Strategy, cluster: Cluster, sc: StageCosts,
                    Ls: list[int], Rs: list[int]) -> Evaluation:
    gpu = cluster.gpu
    p, m = st.pp, st.micro_batches
    times = [sc.stage_ns(i, L, R) for i, (L, R) in enumerate(zip(Ls, Rs))]
    tails = [sc.stage_tail_ns(i, L) for i, L in enumerate(Ls)]
    pipe = sc.pipeline_scaled(times) / sc.v
    step = (pipe + max(tails)) * NS
    k = max(range(p), key=lambda i: (times[i], -i))
    # Breakdown of the bottleneck stage's m micro-batches; the rest of the pipeline time is bubble.
    lt = sc.layer_parts
    L, R = Ls[k], Rs[k]
    parts = {
        "compute": L * (lt.compute_fwd + lt.compute_bwd),
        "recompute": R * (lt.compute_fwd + lt.tp_fwd) + L * lt.selective_extra,
        "tp_comm": L * (lt.tp_fwd + lt.tp_bwd),
        "cp_comm": L * lt.cp_exposed,
        "ep_comm": L * lt.ep_comm,
        "pp_comm": sc.p2p_ns * NS,
        "embedding_and_head": ((sc.first_ns if k == 0 else 0) + (sc.last_ns if k == p - 1 else 0)) * NS,
    }
    zero3_exposed = times[k] * NS - sum(parts.values())
    per_mb = times[k] * NS
    time_s = {key: val * m for key, val in parts.items()}
    time_s["dp_comm"] = max(0.0, zero3_exposed) * m
    tail_k = max(range(p), key=lambda i: tails[i])
    opt = _opt_ns(sc, tail_k, Ls[tail_k]) * NS
    time_s["dp_comm"] += tails[tail_k] * NS - opt
    time_s["optimizer"] = opt
    time_s["bubble"] = pipe * NS - per_mb * m
    # rounding: put the sub-nanosecond remainder in compute so the parts sum exactly to the step
    time_s["compute"] += step - sum(time_s.values())
    tokens = st.global_batch * model.seq_len
    mflops = model_flops_per_step(model, st.global_batch, model.seq_len)
    recompute_share = sum(Rs) / model.layers
    fwd_flops = mflops / 3.0
    hflops = mflops + recompute_share * fwd_flops * (1.0) + (0.0 if st.recompute != "selective" else _selective_flops(model, st))
    n = cluster.num_gpus if cluster.num_gpus == st.num_gpus else st.num_gpus
    peak = gpu.peak_tflops(st.precision) * 1e12
    mem = [sc.stage_bytes(i, L, R) for i, (L, R) in enumerate(zip(Ls, Rs))]
    km = max(range(p), key=lambda i: mem[i])
    return Evaluation(
        strategy=st,
        step_time_s=step,
        tokens_per_s=tokens / step,
        model_flops=mflops,
        hardware_flops=hflops,
        mfu=mflops / step / (n * peak),
        hfu=hflops / step / (n * peak),
        tflops_per_gpu=mflops / step / n / 1e12,
        time_s=time_s,
        memory_b=memory_anatomy(model, st, sc, km, Ls[km], Rs[km]),
        stage_memory_b=[float(x) for x in mem],
        stage_layers=Ls,
        recompute_layers=Rs,
        capacity_b=gpu.memory_bytes,
        fits=max(mem) <= gpu.memory_bytes,
        bottleneck_stage=k,
    )


def _opt_ns(sc: StageCosts, i: int, L: int) -> int:
    return L * sc.opt_layer_ns + (sc.opt_first_ns if i == 0 else 0) + (sc.opt_last_ns if i == sc.p - 1 else 0)


def _selective_flops(model: ModelSpec, st: Strategy) -> float:
    """Selective recompute repeats the attention core forward: 4*B*s^2*h per layer."""
    return 4.0 * st.global_batch * model.seq_len * model.seq_len * model.hidden * model.layers


def memory_anatomy(model: ModelSpec, st: Strategy, sc: StageCosts, i: int, L: int, R: int) -> dict[str, float]:
    """Bytes on one GPU of stage i by kind; sums to StageCosts.stage_bytes."""
    sb = state_bytes_per_param(st.precision, st.optimizer)
    total_state = L * sc.layer_static_b + (sc.first_static_b if i == 0 else 0) + (sc.last_static_b if i == sc.p - 1 else 0)
    denom = (sb.weights / (st.dp * st.cp if st.zero_stage >= 3 else 1) * (0 if st.offload_params else 1)
             + sb.gradients / (st.dp * st.cp if st.zero_stage >= 2 else 1)
             + sb.optimizer / (st.dp * st.cp if st.zero_stage >= 1 else 1) * (0 if st.offload_optimizer else 1))
    params = total_state / denom if denom else 0.0
    weights = params * sb.weights / (st.dp * st.cp if st.zero_stage >= 3 else 1) * (0 if st.offload_params else 1)
    grads = params * sb.gradients / (st.dp * st.cp if st.zero_stage >= 2 else 1)
    opt = total_state - weights - grads
    acts = (L - R) * sc.act_stored_b[i] + R * sc.act_ckpt_b[i] + (sc.act_full_b if R > 0 else 0)
    acts += sc.first_act_b[i] if i == 0 else 0
    logits = sc.last_act_b if i == sc.p - 1 else 0
    out = {
        "weights": float(weights),
        "gradients": float(grads),
        "optimizer": float(opt),
        "activations": float(acts + logits),
        "buffers": float(sc.fixed_b + sc.zero3_buffer_b),
    }
    out["peak"] = float(sc.stage_bytes(i, L, R))
    return out
