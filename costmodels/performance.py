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
  (p - 1)/v (Korthikanti et al. 2022, section 4.2.3); GPipe keeps all m (same bubble as 1F1B);
- data-parallel gradient sync overlaps the last micro-batch's backward (PyTorch DDP / Megatron
  --overlap-grad-reduce; with interleaving each chunk syncs after its last backward, so only the last
  chunk's share can stick out); ZeRO-3 gathers weights every micro-batch, overlapped with its compute
  (Rajbhandari et al. 2020, section 7.2: 1.5x the data-parallel volume); overlapped compute runs
  slower by the SM share NCCL's kernels take (overlap_ns).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

from costmodels.calibration import OVERLAP_SM_SHARE_DEN, Calibration, calibration_for
from costmodels.comm import Link, collective_time, group_link, p2p_time
from costmodels.compute import gemm_time, memory_bound_time, mlp_gemm_widths
from costmodels.flops import logits_forward_flops, model_flops_per_step
from costmodels.memory import layer_activation_bytes, logits_bytes, model_state_bytes, state_bytes_per_param
from costmodels.model import ModelSpec
from costmodels.strategy import Strategy
from hardware import Cluster

NS = 1e-9
FIXED_BUFFER_BYTES = 1.0e9       # cuBLAS workspaces, NCCL and allocator slack (assumption, stated in output)
ADAM_BYTES_PER_PARAM = 28.0      # optimizer step traffic: read fp32 w, m, v + grad, write w, m, v + 16-bit w
SGD_BYTES_PER_PARAM = 18.0


def overlap_ns(comm: int, compute: int) -> int:
    """Time a collective adds to the compute it overlaps: what sticks out, max(0, comm - compute), plus
    the compute slowed while both run: NCCL's kernels occupy about 1/OVERLAP_SM_SHARE_DEN of the SMs.
    (Time coefficients are multiples of OVERLAP_SM_SHARE_DEN ns, so the division is exact; see _ns.)"""
    both = min(comm, compute)
    return max(0, comm - compute) + (-(-both // OVERLAP_SM_SHARE_DEN) if both > 0 else 0)


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
    layer_states_b: tuple[int, int, int, int]   # weights, grads, optimizer, host-offloaded bytes of one layer
    first_states_b: tuple[int, int, int, int]   # the embedding's, on stage 0
    last_states_b: tuple[int, int, int, int]    # the output layer's, on the last stage
    host_cap_b: int           # host memory per GPU (node's host memory / GPUs per node)
    inflight: tuple[float, ...]     # micro-batches of activations alive, per stage
    act_stored_mb: float      # stored activation bytes of one layer, one micro-batch
    act_ckpt_mb: float        # checkpoint (layer input) bytes of one layer, one micro-batch
    act_full_b: int           # working set of one layer recomputing (one micro-batch)
    first_act_mb: float       # embedding output, one micro-batch
    last_act_b: int           # logits of one micro-batch (transient, last stage)
    fixed_b: int              # buffers every GPU holds
    zero3_buffer_b: int       # gathered weights of two layers (ZeRO-3 prefetch)
    # float split of one layer's time, for reporting only
    layer_parts: LayerTimes = field(compare=False, default=None)

    @property
    def layer_static_b(self) -> int:
        return sum(self.layer_states_b[:3])

    @property
    def first_static_b(self) -> int:
        return sum(self.first_states_b[:3])

    @property
    def last_static_b(self) -> int:
        return sum(self.last_states_b[:3])

    def stage_host_bytes(self, i: int, L: int) -> int:
        """Host memory one GPU of stage i needs for offloaded states."""
        return (L * self.layer_states_b[3] + (self.first_states_b[3] if i == 0 else 0)
                + (self.last_states_b[3] if i == self.p - 1 else 0))

    def act_b(self, i: int) -> tuple[int, int, int]:
        """Stage i's activation bytes per stored layer, per checkpointed layer, and of the embedding."""
        k = self.inflight[i]
        return _q(k * self.act_stored_mb), _q(k * self.act_ckpt_mb), _q(k * self.first_act_mb) if i == 0 else 0

    # --- formulas shared with the solver -------------------------------------------------------
    def fixed_ns(self, i: int) -> int:
        """Stage i's time per micro-batch that does not depend on its layers: sends, embedding, head."""
        return self.p2p_ns + (self.first_ns if i == 0 else 0) + (self.last_ns if i == self.p - 1 else 0)

    def stage_ns(self, i: int, L: int, R: int) -> int:
        t = L * self.layer_ns + R * self.recompute_ns + self.fixed_ns(i)
        if self.zero3_layer_ns:
            t += overlap_ns(L * self.zero3_layer_ns, t)
        return t

    def dp_sync_ns(self, i: int, L):
        """Stage i's data-parallel gradient sync per step (L may be a CP-SAT variable)."""
        return L * self.dp_layer_ns + (self.dp_first_ns if i == 0 else 0) + (self.dp_last_ns if i == self.p - 1 else 0)

    def dp_window_ns(self, i: int, L):
        """The backward that hides stage i's sync (see stage_costs); with interleaving the output layer sits in
        the last stage's last chunk, whose sync starts first and hides behind the other chunks' backward."""
        return L * self.dp_window_layer_ns + (self.dp_last_ns if i == self.p - 1 and self.v > 1 else 0)

    def stage_tail_ns(self, i: int, L: int) -> int:
        """Once per step: exposed data-parallel sync plus the optimizer step of stage i."""
        exposed = overlap_ns(self.dp_sync_ns(i, L), self.dp_window_ns(i, L))
        opt = L * self.opt_layer_ns + (self.opt_first_ns if i == 0 else 0) + (self.opt_last_ns if i == self.p - 1 else 0)
        return exposed + opt

    def stage_bytes(self, i: int, L: int, R: int) -> int:
        b = L * self.layer_static_b + self.fixed_b + self.zero3_buffer_b
        stored, ckpt, first = self.act_b(i)
        b += (L - R) * stored + R * ckpt + first
        if R > 0:
            b += self.act_full_b
        if i == 0:
            b += self.first_static_b
        if i == self.p - 1:
            b += self.last_static_b + self.last_act_b
        return b

    def step_scaled(self, Ls: list[int], Rs: list[int]) -> int:
        """v x step time in ns when every stage has these coefficients (see Pipeline.step_scaled)."""
        return Pipeline.uniform(self, 0).step_scaled(Ls, Rs)

    def pipeline_scaled(self, times: list[int]) -> int:
        """v x pipeline time in ns: (m-1) max T + sum T for 1F1B; v m max T + sum T - max T interleaved."""
        tmax, total = max(times), sum(times)
        if self.v == 1:
            return (self.m - 1) * tmax + total
        return self.v * self.m * tmax + total - tmax


@dataclass(frozen=True)
class Pipeline:
    """A structure's pipeline stages: each stage's coefficients (those of its GPU type) and its memory.

    On one GPU type every stage shares one StageCosts; on a heterogeneous cluster stages placed on
    different GPU pools carry their pool's coefficients (same strategy, other speeds and capacity)."""
    stages: tuple[StageCosts, ...]
    caps: tuple[int, ...]          # GPU memory per stage, bytes

    @staticmethod
    def uniform(sc: StageCosts, cap: int) -> "Pipeline":
        return Pipeline((sc,) * sc.p, (cap,) * sc.p)

    @property
    def p(self) -> int:
        return self.stages[0].p

    @property
    def m(self) -> int:
        return self.stages[0].m

    @property
    def v(self) -> int:
        return self.stages[0].v

    @property
    def layers(self) -> int:
        return self.stages[0].layers

    def stage_ns(self, i: int, L: int, R: int) -> int:
        return self.stages[i].stage_ns(i, L, R)

    def stage_tail_ns(self, i: int, L: int) -> int:
        return self.stages[i].stage_tail_ns(i, L)

    def stage_bytes(self, i: int, L: int, R: int) -> int:
        return self.stages[i].stage_bytes(i, L, R)

    def stage_fits(self, i: int, L: int, R: int) -> bool:
        sc = self.stages[i]
        return sc.stage_bytes(i, L, R) <= self.caps[i] and sc.stage_host_bytes(i, L) <= sc.host_cap_b

    def step_scaled(self, Ls: list[int], Rs: list[int]) -> int:
        """v x step time in ns, an exact integer (the CP-SAT objective)."""
        times = [self.stage_ns(i, L, R) for i, (L, R) in enumerate(zip(Ls, Rs))]
        tails = [self.stage_tail_ns(i, L) for i, L in enumerate(Ls)]
        return self.stages[0].pipeline_scaled(times) + self.v * max(tails)


def _ns(seconds: float) -> int:
    """A time coefficient in whole ns, rounded up to a multiple of OVERLAP_SM_SHARE_DEN so that every
    stage time and tail is one too and overlap_ns divides exactly (the rounding is below 8 ns)."""
    d = OVERLAP_SM_SHARE_DEN
    return d * math.ceil(seconds / NS / d) if seconds > 0 else 0


def _q(x: float) -> int:
    """Round a cost up to a whole ns or byte (costs are exact integers from here on)."""
    return math.ceil(x) if x > 0 else 0


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


def layer_times(model: ModelSpec, st: Strategy, cluster: Cluster, cal: Calibration) -> LayerTimes:
    """Seconds for an average transformer layer, one micro-batch, on one GPU."""
    key = _LayerKey(st.tp, st.cp, st.ep, st.micro_batch, st.precision, st.flash_attention,
                    st.sequence_parallel, st.recompute)
    return _layer_times(model, cluster, cal, key)


@lru_cache(maxsize=4096)
def _layer_times(model: ModelSpec, cluster: Cluster, cal: Calibration, st: _LayerKey) -> LayerTimes:
    gpu = cluster.gpu
    peak = gpu.peak_tflops(st.precision) * 1e12
    t, b, h = st.tp, st.micro_batch, model.hidden
    s_full = model.seq_len
    s = s_full / st.cp
    M = b * s                                       # tokens per GPU per micro-batch
    kvd, f = model.kv_dim, model.ffn_hidden
    # Dense GEMMs (Shoeybi et al. 2019: QKV / fc1 column-split, projection / fc2 row-split over t)
    attn_gemm = gemm_time(M, (h + 2 * kvd) / t, h, peak, cal) + gemm_time(M, h, h / t, peak, cal)
    dense_mlp = sum(gemm_time(M, n, k, peak, cal) for n, k in mlp_gemm_widths(model.ffn_type, h, f, t))
    mlp = dense_mlp
    ep_comm = 0.0
    if model.moe is not None:
        moe = model.moe
        widths = mlp_gemm_widths(model.ffn_type, h, moe.expert_ffn_hidden, t)
        local_experts = moe.experts / st.ep
        tokens_per_expert = M * st.ep * moe.top_k * moe.capacity_factor / moe.experts
        expert_mlp = local_experts * sum(gemm_time(tokens_per_expert, n, k, peak, cal) for n, k in widths)
        shared = moe.shared_experts * sum(gemm_time(M, n, k, peak, cal) for n, k in widths)
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
    # Model states per GPU. Dense weights split over tp and ZeRO-sharded over dp x cp; routed experts split
    # over tp x ep and sharded over the expert-data-parallel group dp x cp / ep (Megatron-core MoE).
    sb = state_bytes_per_param(st.precision, st.optimizer, st.fp32_grads)
    groups = _param_groups(model, st, cluster)
    embed_params = model.vocab * h / t + (model.seq_len * h if model.position_embedding == "learned" else 0)
    # the output layer: its own weights, or with tied embeddings a copy on the last stage when pp > 1
    # (Megatron allocates it only where the embedding is on another stage)
    head_params = 0.0 if (model.tied_embeddings and p == 1) else model.vocab * h / t
    dense_group = groups[0][1]
    layer = _states(groups, sb, st)
    first_states = _states([(embed_params, dense_group)], sb, st)
    last_states = _states([(head_params, dense_group)], sb, st)
    # Data-parallel gradient sync (once per step; reduce-scatter + all-gather with ZeRO >= 1, the same
    # volume as an all-reduce), overlapped with the last micro-batch's backward of the stage.

    def dp_ns(pgroups) -> int:
        if st.zero_stage == 3:
            return 0
        return _ns(sum(collective_time("all_reduce", n * sb.reduce, link, gpu, cal) for n, link in pgroups))

    zero3 = zero3_buf = 0
    if st.zero_stage == 3:
        # ZeRO-3 gathers every layer's weights in forward and backward and reduce-scatters its gradients,
        # per micro-batch: 1.5x the data-parallel volume (Rajbhandari et al. 2020, section 7.2)
        zero3 = _ns(sum(2 * collective_time("all_gather", n * sb.weights, link, gpu, cal)
                        + collective_time("reduce_scatter", n * sb.reduce, link, gpu, cal)
                        for n, link in groups))
        zero3_buf = _q(2 * sum(n for n, _ in groups) * sb.weights)   # two layers prefetched
    opt_bpp = ADAM_BYTES_PER_PARAM if st.optimizer == "adam" else SGD_BYTES_PER_PARAM

    def opt_ns(pgroups) -> int:
        shard = sum(n / (link.size if st.zero_stage >= 1 else 1) for n, link in pgroups)
        if st.offload_optimizer:
            return _ns(_cpu_optimizer_time(shard, gpu))
        return _ns(memory_bound_time(shard * opt_bpp, gpu.hbm_gbps, cal))

    # The window hiding the sync: the last micro-batch's backward (bucketed, Megatron --overlap-grad-reduce).
    # Interleaved 1F1B runs backward in groups of p micro-batches per chunk and syncs each chunk after its
    # last one (Megatron-core schedules.py, grad_sync_func per chunk): chunks 1..v-1 hide behind the later
    # groups, only chunk 0 (1/v of the stage) behind its own last backward. overlap(sync, sync (v-1)/v + bwd/v)
    # is exactly that sum per chunk: max(0, sync - bwd)/v sticks out, all of the sync slows compute.
    dp_layer = dp_ns(groups)
    bwd = lt.compute_bwd + lt.tp_bwd
    acts = layer_activation_bytes(model, st)
    inflight = _inflight(p, m, v, st.pipeline_schedule)
    first_act = 2.0 * M * h / (t if st.sequence_parallel else 1)  # embedding output
    return StageCosts(
        p=p, m=m, v=v, layers=model.layers,
        layer_ns=_ns(stored), recompute_ns=_ns(recompute),
        first_ns=_ns(first), last_ns=_ns(last), p2p_ns=_ns(p2p),
        dp_layer_ns=dp_layer, dp_first_ns=dp_ns([(embed_params, dense_group)]),
        dp_last_ns=dp_ns([(head_params, dense_group)]),
        dp_window_layer_ns=_ns(bwd / v + (v - 1) / v * dp_layer * NS),
        zero3_layer_ns=zero3,
        opt_layer_ns=opt_ns(groups), opt_first_ns=opt_ns([(embed_params, dense_group)]),
        opt_last_ns=opt_ns([(head_params, dense_group)]),
        layer_states_b=layer, first_states_b=first_states, last_states_b=last_states,
        host_cap_b=_q(gpu.host_memory_gb_per_node * 1e9 / cluster.gpus_per_node),
        inflight=tuple(inflight), act_stored_mb=acts.stored, act_ckpt_mb=acts.checkpoint,
        act_full_b=_q(acts.full), first_act_mb=first_act,
        last_act_b=_q(logits_bytes(model, st)),
        fixed_b=_q(FIXED_BUFFER_BYTES), zero3_buffer_b=zero3_buf,
        layer_parts=lt,
    )


def _param_groups(model: ModelSpec, st: Strategy, cluster: Cluster) -> list[tuple[float, Link]]:
    """Parameters of an average layer on one GPU, by the data-parallel group that shards them:
    [(dense params, dp x cp group), (routed expert params, dp x cp / ep group)]."""
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
    expert_link = group_link(max(1, st.dp * st.cp // st.ep), st.tp * st.ep, gpn)
    return [(dense / st.tp, dense_link), (routed / st.tp, expert_link)]


def _states(groups: list[tuple[float, Link]], sb, st: Strategy) -> tuple[int, int, int, int]:
    """(weights, gradients, optimizer, host) bytes on one GPU for parameter groups; offloaded states move
    to host memory (ZeRO-Offload, Ren et al. 2021)."""
    w = g = o = 0.0
    for n, link in groups:
        wi, gi, oi = model_state_bytes(n, sb, st.zero_stage, link.size)
        w, g, o = w + wi, g + gi, o + oi
    host = 0.0
    if st.offload_optimizer:
        host, o = host + o, 0.0
    if st.offload_params:
        host, w = host + w, 0.0
    return _q(w), _q(g), _q(o), _q(host)


def _cpu_optimizer_time(params: float, gpu) -> float:
    """Optimizer step on the host (ZeRO-Offload, Ren et al. 2021): PCIe copies of grads down and weights
    up (2 + 2 bytes) plus a CPU Adam at ~1e9 parameters/s per GPU's share of the host (assumption)."""
    pcie = params * 4.0 / (gpu.pcie_gbps * 1e9)
    return pcie + params / 1.0e9


def _inflight(p: int, m: int, v: int, schedule: str = "1f1b") -> list[float]:
    """Micro-batches of activations alive per stage: 1F1B min(p - i, m); interleaving adds (p-1)/v
    (Korthikanti et al. 2022, 4.2.3); GPipe keeps all m (Huang et al. 2019); p = 1 keeps one."""
    if p == 1:
        return [1.0]
    if schedule == "gpipe":
        return [float(m)] * p
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
    stage_gpus: list[str] = field(default_factory=list)   # GPU type of each pipeline stage
    stage_time_s: list[float] = field(default_factory=list)  # each stage's time for one micro-batch


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
    """Evaluate a layout on one GPU type."""
    pl = Pipeline.uniform(sc, int(cluster.gpu.memory_bytes))
    return evaluate_pipeline(model, st, pl, [cluster.gpu] * st.pp, Ls, Rs)


def evaluate_pipeline(model: ModelSpec, st: Strategy, pl: Pipeline, gpus: list, Ls: list[int],
                      Rs: list[int]) -> Evaluation:
    """Evaluate a layout whose stages may sit on different GPU types (gpus[i] runs stage i)."""
    p, m = st.pp, st.micro_batches
    times = [pl.stage_ns(i, L, R) for i, (L, R) in enumerate(zip(Ls, Rs))]
    tails = [pl.stage_tail_ns(i, L) for i, L in enumerate(Ls)]
    pipe = pl.stages[0].pipeline_scaled(times) / pl.v
    step = (pipe + max(tails)) * NS
    k = max(range(p), key=lambda i: (times[i], -i))
    # Breakdown of the bottleneck stage's m micro-batches; the rest of the pipeline time is bubble.
    sc = pl.stages[k]
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
    opt = _opt_ns(pl.stages[tail_k], tail_k, Ls[tail_k]) * NS
    time_s["dp_comm"] += tails[tail_k] * NS - opt
    time_s["optimizer"] = opt
    time_s["bubble"] = pipe * NS - per_mb * m
    # rounding: put the sub-nanosecond remainder in compute so the parts sum exactly to the step
    time_s["compute"] += step - sum(time_s.values())
    tokens = st.global_batch * model.seq_len
    mflops = model_flops_per_step(model, st.global_batch, model.seq_len)
    recompute_share = sum(Rs) / model.layers
    # full recompute repeats the transformer layers' forward, not the output layer (Narayanan et al. 2021, eq. 3)
    layers_fwd = mflops / 3.0 - logits_forward_flops(model, tokens)
    hflops = mflops + recompute_share * layers_fwd + (_selective_flops(model, st) if st.recompute == "selective" else 0.0)
    n = st.num_gpus
    per_stage = n // p
    peak = sum(per_stage * g.peak_tflops(st.precision) * 1e12 for g in gpus)
    mem = [pl.stage_bytes(i, L, R) for i, (L, R) in enumerate(zip(Ls, Rs))]
    km = max(range(p), key=lambda i: (mem[i] / pl.caps[i], -i))
    return Evaluation(
        strategy=st,
        step_time_s=step,
        tokens_per_s=tokens / step,
        model_flops=mflops,
        hardware_flops=hflops,
        mfu=mflops / step / peak,
        hfu=hflops / step / peak,
        tflops_per_gpu=mflops / step / n / 1e12,
        time_s=time_s,
        memory_b=memory_anatomy(pl.stages[km], km, Ls[km], Rs[km]),
        stage_memory_b=[float(x) for x in mem],
        stage_layers=Ls,
        recompute_layers=Rs,
        capacity_b=float(gpus[km].memory_bytes),
        fits=all(pl.stage_fits(i, L, R) for i, (L, R) in enumerate(zip(Ls, Rs))),
        bottleneck_stage=k,
        stage_gpus=[g.name for g in gpus],
        stage_time_s=[t * NS for t in times],
    )


def _opt_ns(sc: StageCosts, i: int, L: int) -> int:
    return L * sc.opt_layer_ns + (sc.opt_first_ns if i == 0 else 0) + (sc.opt_last_ns if i == sc.p - 1 else 0)


def _selective_flops(model: ModelSpec, st: Strategy) -> float:
    """Selective recompute repeats the attention core forward: 4*B*s^2*h per layer."""
    return 4.0 * st.global_batch * model.seq_len * model.seq_len * model.hidden * model.layers


def memory_anatomy(sc: StageCosts, i: int, L: int, R: int) -> dict[str, float]:
    """Bytes on one GPU of stage i by kind; the GPU parts sum to StageCosts.stage_bytes."""
    parts = [L * x for x in sc.layer_states_b]
    if i == 0:
        parts = [a + b for a, b in zip(parts, sc.first_states_b)]
    if i == sc.p - 1:
        parts = [a + b for a, b in zip(parts, sc.last_states_b)]
    stored, ckpt, first = sc.act_b(i)
    acts = (L - R) * stored + R * ckpt + (sc.act_full_b if R > 0 else 0) + first
    acts += sc.last_act_b if i == sc.p - 1 else 0
    return {
        "weights": float(parts[0]),
        "gradients": float(parts[1]),
        "optimizer": float(parts[2]),
        "activations": float(acts),
        "buffers": float(sc.fixed_b + sc.zero3_buffer_b),
        "peak": float(sc.stage_bytes(i, L, R)),
        "host_offload": float(parts[3]),
    }
