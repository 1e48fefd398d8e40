"""A memory oracle that needs no GPU: a real PyTorch training step on fake tensors, every allocation tracked.

A Llama/GPT-style decoder (embedding, N blocks of norm + causal self-attention with GQA through
scaled_dot_product_attention + GELU or SwiGLU MLP, final norm, output layer, cross-entropy) is built in
plain torch under `torch._subclasses.fake_tensor.FakeTensorMode` (tensors carry shapes and dtypes, no
data) and trained for `steps` optimizer steps under `torch.distributed._tools.mem_tracker.MemTracker`,
a TorchDispatchMode that sees every tensor storage created or freed and labels it parameter, gradient,
activation, temporary, optimizer state or "other". The tracked peak and its split are set next to the
planner's prediction for the same single rank (tp = pp = dp = 1): planner.solve.evaluate.evaluate.
With OracleConfig.shard = d > 1 the model is wrapped in FSDP2 (fully_shard) over a fake process group of
d ranks and tracked by torch.distributed._tools.fsdp2_mem_tracker.FSDPMemTracker, against the planner's
ZeRO-3 with dp = d (track_fsdp says how FSDP2's mixed precision differs).

Mixed precision as the planner counts it (costmodels/memory.py, Megatron-LM docs/distrib_optimizer.md,
18 bytes per parameter):
  - bf16 weights in the model (2 B/param) -> tracker "Parameter";
  - an fp32 main-gradient buffer (4 B/param), allocated before training like Megatron's DDP grad buffer;
    a post-accumulate-grad hook adds each bf16 .grad into it and drops the .grad (Megatron-core
    distributed_data_parallel.py, the backward post hook without gradient-accumulation fusion)
    -> registered with track_external: tracker "Other";
  - fp32 master weights, Adam exp_avg and exp_avg_sq (12 B/param), created by the optimizer's first step
    (MixedPrecisionAdamW below, Megatron's Float16OptimizerWithFloat16Params) -> tracker "Optstate";
    the update is PyTorch's fused AdamW kernel (no per-tensor temporaries, like Apex/TE FusedAdam).
Activations are bf16. kernels="fused" (the default) mirrors what Megatron's fused kernels keep for the
backward with small autograd Functions: RMSNorm keeps its input and the fp32 rstd (Apex/Transformer
Engine fused RMSNorm), SwiGLU keeps only its input (megatron/core/fusions/fused_bias_swiglu.py), the
cross-entropy keeps one fp32 softmax and writes its gradient in place
(megatron/core/tensor_parallel/cross_entropy.py); LayerNorm is PyTorch's native fused kernel either way.
kernels="eager" uses plain torch ops (F.rms_norm, F.silu(gate) * up, F.cross_entropy(logits.float())),
kernels="torchtitan" is torchtitan's Llama on a current CUDA build: the same eager SwiGLU and loss, and
RMSNorm through aten._fused_rms_norm (input and fp32 rstd kept, as the fused kernel here),
which keep more (docs/memory-oracle.md lists by how much).

Attention: SDPA on CPU fake tensors runs PyTorch's flash-attention kernel for CPU
(_scaled_dot_product_flash_attention_for_cpu): no s x s scores, so it matches flash_attention=True;
flash=False forces the math backend (sdpa_kernel(SDPBackend.MATH)), which materialises the scores.
recompute="full" wraps every block in torch.utils.checkpoint (non-reentrant). Dropout (hidden_dropout,
default 0.1 as Megatron's GPT) on the embedding output and after the attention and MLP output projections
keeps the masks Korthikanti et al. 2022 count (ModelSpec.dropout = hidden_dropout > 0); positions are not encoded (RoPE has no parameters; its fused kernel keeps
nothing extra).

What it cannot see (docs/memory-oracle.md): the CUDA caching allocator (reserved vs allocated,
fragmentation, 512-byte rounding: on CPU fake tensors every storage counts its exact bytes), the CUDA
context, cuBLAS workspaces and NCCL buffers (the planner's fixed `buffers` term), and kernels other than
the ones written here.

Usage:
    python3.11 -m planner.validation.oracle          # the grid: planner vs tracker per category
    from planner.validation.oracle import OracleConfig, compare
    row = compare(OracleConfig(hidden=512, layers=2, heads=8, vocab=8192, seq=1024))
torch is imported only inside the functions that need it (the `frameworks` extra).
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Literal

from costmodels.model import ModelSpec
from costmodels.strategy import Strategy
from hardware import parse_cluster
from planner.solve.evaluate import evaluate

CATEGORIES = ("weights", "gradients", "optimizer", "activations", "peak")


@dataclass(frozen=True)
class OracleConfig:
    """One single-rank training configuration (tp = pp = dp = 1)."""
    hidden: int = 256
    layers: int = 2
    heads: int = 4
    kv_heads: int | None = None          # None: multi-head attention
    vocab: int = 1024
    seq: int = 256
    micro_batch: int = 1
    ffn_type: Literal["gelu", "swiglu"] = "gelu"
    ffn_hidden: int | None = None        # None: costmodels.model.default_ffn_hidden
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    recompute: Literal["none", "selective", "full"] = "none"   # selective: torchtitan's per-op AC
    flash: bool = True                   # SDPA flash kernel (False: math backend, s x s scores)
    hidden_dropout: float = 0.1          # dropout after the attention and MLP projections (0: none)
    kernels: Literal["fused", "eager", "torchtitan"] = "fused"
    steps: int = 2                       # optimizer steps (the first creates the optimizer states)
    shard: int = 1                       # FSDP2 sharding degree (> 1: fully_shard over a fake process group)

    @property
    def kv(self) -> int:
        return self.kv_heads or self.heads

    def model_spec(self) -> ModelSpec:
        return ModelSpec(name="oracle", layers=self.layers, hidden=self.hidden, heads=self.heads,
                         kv_heads=self.kv, ffn_hidden=self.ffn_hidden, ffn_type=self.ffn_type,
                         vocab=self.vocab, seq_len=self.seq, norm=self.norm, position_embedding="rope",
                         bias=False, tied_embeddings=False, precision="bf16", dropout=self.hidden_dropout > 0)

    @property
    def framework(self) -> str:
        """The accounting the planner compares with: torchtitan's for FSDP2 (which torchtitan runs, in eager
        kernels), Megatron-core's for the single rank with its fused kernels."""
        return "torchtitan" if self.kernels == "torchtitan" else "megatron"

    def strategy(self) -> Strategy:
        return Strategy(micro_batch=self.micro_batch, global_batch=self.micro_batch * self.shard,
                        dp=self.shard, zero_stage=3 if self.shard > 1 else 0, recompute=self.recompute,
                        flash_attention=self.flash, precision="bf16", optimizer="adam", fp32_grads=True,
                        framework=self.framework)

    def label(self) -> str:
        att = "mha" if self.kv == self.heads else f"gqa{self.heads}/{self.kv}"
        bits = [f"h{self.hidden}", f"L{self.layers}", att, f"V{self.vocab}", f"s{self.seq}", f"b{self.micro_batch}",
                self.ffn_type, "ln" if self.norm == "layernorm" else "rms", f"rc-{self.recompute}"]
        if not self.flash:
            bits.append("math-attn")
        if self.hidden_dropout == 0:
            bits.append("no-dropout")
        if self.kernels != "fused":
            bits.append(self.kernels)
        if self.shard > 1:
            bits.append(f"fsdp{self.shard}")
        return " ".join(bits)


@dataclass
class Tracked:
    """What MemTracker measured, in bytes: the model states after the last step and the peak."""
    weights: int          # "Parameter": the bf16 model weights
    gradients: int        # "Other": the fp32 main-gradient buffer
    optimizer: int        # "Optstate": fp32 master weights, exp_avg, exp_avg_sq (+ step counters)
    peak: int             # the largest total the tracker saw
    stored: int           # activations alive when the last forward returns the loss (saved for the backward)
    peak_split: dict = field(default_factory=dict)   # the tracker's categories at the peak
    states_at_peak: int = -1   # model states alive at the peak (-1: weights + gradients + optimizer)
    gathered: int = 0          # FSDP2: unsharded (all-gathered) bf16 parameters alive at the peak

    @property
    def activations(self) -> int:
        """Everything at the peak that is not a model state or a gathered parameter: activations, backward
        temporaries and transient gradients."""
        states = self.states_at_peak if self.states_at_peak >= 0 else self.weights + self.gradients + self.optimizer
        return self.peak - states - self.gathered


@dataclass
class Row:
    config: OracleConfig
    tracked: Tracked
    planned: dict          # the planner's bytes: weights, gradients, optimizer, activations, peak (no buffers)
    buffers: float         # the planner's fixed buffers (not on fake tensors; left out of its peak here)

    def error(self, cat: str) -> float:
        """(planner - tracker) / tracker in %."""
        t = float(getattr(self.tracked, cat))
        return 100.0 * (self.planned[cat] - t) / t if t else math.nan


# --- the planner's side ---------------------------------------------------------------------------

def planner_bytes(cfg: OracleConfig, cluster: str = "1xH100") -> tuple[dict, float]:
    """The planner's memory for `cfg` on one GPU: ({weights, gradients, optimizer, activations, gathered,
    peak}, fixed buffers); peak excludes the fixed buffers (cuBLAS/NCCL/allocator slack), which fake tensors
    cannot show, and keeps ZeRO-3's gathered weights ("gathered"). With cfg.shard = d the strategy is
    dp = d, ZeRO-3 on d GPUs of the cluster's type."""
    from costmodels.performance import FIXED_BUFFER_BYTES
    if cfg.shard > 1:
        cluster = f"{cfg.shard}x{cluster.split('x', 1)[1]}"
    mem = evaluate(cfg.model_spec(), cfg.strategy(), parse_cluster(cluster)).memory_b
    out = {k: float(mem[k]) for k in ("weights", "gradients", "optimizer")}
    out["activations"] = float(mem["activations"] + mem["loss"])     # the oracle counts the loss as activations
    out["gathered"] = float(mem["comm_buffers"])     # ZeRO-3 / FSDP2: gathered weights
    out["peak"] = float(mem["allocated"])      # the tracker sees tensors, not the allocator's pools
    return out, FIXED_BUFFER_BYTES


# --- the PyTorch side -------------------------------------------------------------------------------

def _build(cfg: OracleConfig):
    """The decoder as torch modules, the fused autograd Functions and the optimizer class (torch imported here)."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    bf16 = torch.bfloat16
    wdtype = torch.float32 if cfg.shard > 1 else bf16     # FSDP2 keeps fp32 shards and gathers bf16 copies
    fused = cfg.kernels == "fused"
    fused_norm = cfg.kernels in ("fused", "torchtitan")
    split = cfg.kernels == "torchtitan"

    def _op_sac_context():
        """torchtitan's per-op selective AC (torchtitan/distributed/activation_checkpoint.py): save SDPA's
        outputs and every other matmul's (the counter starting at each block's forward), recompute the rest."""
        from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts
        save = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
                torch.ops.aten._scaled_dot_product_flash_attention.default}
        meta = {"forward": 0, "recompute": 0}

        def policy(ctx, func, *args, **kwargs):
            key = "recompute" if ctx.is_recompute else "forward"
            if func == torch.ops.aten.mm.default:
                meta[key] += 1
                return (CheckpointPolicy.MUST_SAVE if meta[key] % 2 == 1 else CheckpointPolicy.PREFER_RECOMPUTE)
            return CheckpointPolicy.MUST_SAVE if func in save else CheckpointPolicy.PREFER_RECOMPUTE
        return create_selective_checkpoint_contexts(policy)

    class _RMSNormFn(torch.autograd.Function):
        """Fused RMSNorm: keeps its input and the fp32 rstd (Apex FusedRMSNormAffineFunction / TE)."""

        @staticmethod
        def forward(ctx, x, w, eps):
            rstd = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)
            ctx.save_for_backward(x, w, rstd)
            return (x * rstd).to(x.dtype) * w

        @staticmethod
        def backward(ctx, g):
            x, w, rstd = ctx.saved_tensors
            xhat = x.float() * rstd
            gw = (g.float() * xhat).sum(dim=tuple(range(g.dim() - 1))).to(w.dtype)
            gx = g.float() * w.float()
            gx = rstd * (gx - xhat * (gx * xhat).mean(-1, keepdim=True))
            return gx.to(x.dtype), gw, None

    class _SwiGLUFn(torch.autograd.Function):
        """silu(gate) * up from the fused [gate | up] projection, keeping only that input
        (megatron/core/fusions/fused_bias_swiglu.py, SwiGLUFunction)."""

        @staticmethod
        def forward(ctx, y):
            ctx.save_for_backward(y)
            gate, up = y.chunk(2, dim=-1)
            return F.silu(gate) * up

        @staticmethod
        def backward(ctx, g):
            # written into the output with one bf16 temporary, as an elementwise fused kernel would
            (y,) = ctx.saved_tensors
            gate, up = y.chunk(2, dim=-1)
            dy = torch.empty_like(y)
            dgate, dup = dy.chunk(2, dim=-1)
            torch.sigmoid(gate, out=dgate)                  # sig
            torch.mul(gate, dgate, out=dup)                 # silu(gate)
            dup.mul_(g)                                     # d up = g * silu(gate)
            t = torch.rsub(dgate, 1).mul_(gate).add_(1).mul_(dgate).mul_(up).mul_(g)   # g up sig (1 + gate (1 - sig))
            dgate.copy_(t)
            return dy

    class _CrossEntropyFn(torch.autograd.Function):
        """Cross-entropy keeping one fp32 softmax, its gradient written in place in it
        (megatron/core/tensor_parallel/cross_entropy.py, _VocabParallelCrossEntropy)."""

        @staticmethod
        def forward(ctx, logits, target):
            x = logits.float()
            x.sub_(x.amax(-1, keepdim=True))
            picked = x.gather(-1, target.unsqueeze(-1)).squeeze(-1)
            x.exp_()
            total = x.sum(-1, keepdim=True)
            x.div_(total)
            ctx.save_for_backward(x, target)
            return (total.squeeze(-1).log() - picked).mean()

        @staticmethod
        def backward(ctx, g):
            softmax, target = ctx.saved_tensors
            softmax.scatter_add_(-1, target.unsqueeze(-1),
                                 torch.full_like(target.unsqueeze(-1), -1.0, dtype=softmax.dtype))
            softmax.mul_(g / target.numel())
            return softmax.to(bf16), None

    class Norm(nn.Module):
        def __init__(self, h: int):
            super().__init__()
            if cfg.norm == "layernorm":
                self.inner = nn.LayerNorm(h, eps=1e-5, dtype=wdtype)
            else:
                self.weight = nn.Parameter(torch.ones(h, dtype=wdtype))

        def forward(self, x):
            if cfg.norm == "layernorm":
                return self.inner(x)
            if fused_norm:
                return _RMSNormFn.apply(x, self.weight, 1e-5)
            return F.rms_norm(x, (x.shape[-1],), self.weight, 1e-5)

    spec = cfg.model_spec()
    h, a, kv, d, f = cfg.hidden, cfg.heads, cfg.kv, spec.head_dim, spec.ffn_hidden
    swiglu = cfg.ffn_type == "swiglu"

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1, self.norm2 = Norm(h), Norm(h)
            if split:      # torchtitan's Llama: wq, wk, wv, wo, w1, w3, w2 (the order its per-op AC counts)
                self.wq = nn.Linear(h, h, bias=False, dtype=wdtype)
                self.wk = nn.Linear(h, kv * d, bias=False, dtype=wdtype)
                self.wv = nn.Linear(h, kv * d, bias=False, dtype=wdtype)
            else:
                self.qkv = nn.Linear(h, h + 2 * kv * d, bias=False, dtype=wdtype)
            self.proj = nn.Linear(h, h, bias=False, dtype=wdtype)
            if split and swiglu:
                self.w1 = nn.Linear(h, f, bias=False, dtype=wdtype)
                self.w3 = nn.Linear(h, f, bias=False, dtype=wdtype)
            else:
                self.fc1 = nn.Linear(h, 2 * f if swiglu else f, bias=False, dtype=wdtype)
            self.fc2 = nn.Linear(f, h, bias=False, dtype=wdtype)

        def attention(self, y):
            b, s, _ = y.shape
            if split:
                q, k, v = self.wq(y), self.wk(y), self.wv(y)
            else:
                q, k, v = self.qkv(y).split([h, kv * d, kv * d], dim=-1)
            q = q.view(b, s, a, d).transpose(1, 2)
            k = k.view(b, s, kv, d).transpose(1, 2)
            v = v.view(b, s, kv, d).transpose(1, 2)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=kv != a)
            return o.transpose(1, 2).reshape(b, s, h)

        def mlp(self, y):
            if split and swiglu:
                return self.fc2(F.silu(self.w1(y)) * self.w3(y))
            y = self.fc1(y)
            if swiglu:
                if fused:
                    y = _SwiGLUFn.apply(y)
                else:
                    gate, up = y.chunk(2, dim=-1)
                    y = F.silu(gate) * up
            else:
                y = F.gelu(y)
            return self.fc2(y)

        def body(self, x):
            p = cfg.hidden_dropout
            x = x + F.dropout(self.proj(self.attention(self.norm1(x))), p, self.training)
            return x + F.dropout(self.mlp(self.norm2(x)), p, self.training)

        def forward(self, x):
            if cfg.recompute == "full":
                return checkpoint(self.body, x, use_reentrant=False)
            if cfg.recompute == "selective":
                return checkpoint(self.body, x, use_reentrant=False, context_fn=_op_sac_context)
            return self.body(x)

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(cfg.vocab, h, dtype=wdtype)
            self.blocks = nn.ModuleList(Block() for _ in range(cfg.layers))
            self.norm = Norm(h)
            self.head = nn.Linear(h, cfg.vocab, bias=False, dtype=wdtype)

        def forward(self, tokens, labels):
            # embedding dropout with the hidden dropout (Megatron's LanguageModelEmbedding.embedding_dropout)
            x = F.dropout(self.embed(tokens), cfg.hidden_dropout, self.training)
            for blk in self.blocks:
                x = blk(x)
            logits = self.head(self.norm(x))
            if fused:
                return _CrossEntropyFn.apply(logits.view(-1, cfg.vocab), labels.view(-1))
            return F.cross_entropy(logits.float().view(-1, cfg.vocab), labels.view(-1))

    class MixedPrecisionAdamW(torch.optim.Optimizer):
        """AdamW on fp32 master copies of bf16 parameters, reading the fp32 `main_grad` of each
        (Megatron's Float16OptimizerWithFloat16Params); the states appear at the first step."""

        def __init__(self, params, lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1):
            super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

        @torch.no_grad()
        def step(self, closure=None):
            from torch.optim.adamw import adamw
            for group in self.param_groups:
                masters, grads, m1, m2, steps = [], [], [], [], []
                for p in group["params"]:
                    st = self.state[p]
                    if not st:
                        st["master"] = p.detach().float()
                        st["exp_avg"] = torch.zeros_like(st["master"])
                        st["exp_avg_sq"] = torch.zeros_like(st["master"])
                        st["step"] = torch.zeros((), dtype=torch.float32)
                    masters.append(st["master"])
                    grads.append(p.main_grad)
                    m1.append(st["exp_avg"])
                    m2.append(st["exp_avg_sq"])
                    steps.append(st["step"])
                b1, b2 = group["betas"]
                adamw(masters, grads, m1, m2, [], steps, fused=True, amsgrad=False, beta1=b1, beta2=b2,
                      lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"], maximize=False)
                for p, mw in zip(group["params"], masters):
                    p.copy_(mw)

    return Decoder, MixedPrecisionAdamW


def track(cfg: OracleConfig) -> Tracked:
    """Run `cfg.steps` training steps of the decoder on fake CPU tensors under MemTracker (FSDPMemTracker
    when cfg.shard > 1)."""
    if cfg.shard > 1:
        return track_fsdp(cfg)
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType
    from torch.nn.attention import SDPBackend, sdpa_kernel

    Decoder, MixedPrecisionAdamW = _build(cfg)
    backend = SDPBackend.FLASH_ATTENTION if cfg.flash else SDPBackend.MATH
    with FakeTensorMode():
        model = Decoder()
        params = list(model.parameters())
        # Megatron's DDP grad buffer: one contiguous fp32 buffer, a view per parameter
        buffer = torch.zeros(sum(p.numel() for p in params), dtype=torch.float32)
        offset = 0
        for p in params:
            p.main_grad = buffer[offset:offset + p.numel()].view_as(p)
            offset += p.numel()

        def into_main_grad(p):
            p.main_grad.add_(p.grad)
            p.grad = None

        def register(module, args):
            # after MemTracker's own hooks (installed by its global pre-forward hook), so that it sees the
            # bf16 .grad before this one moves it into main_grad and drops it
            for p in params:
                p.register_post_accumulate_grad_hook(into_main_grad)
            handle.remove()

        handle = model.register_forward_pre_hook(register)
        opt = MixedPrecisionAdamW(params)
        tokens = torch.randint(0, cfg.vocab, (cfg.micro_batch, cfg.seq))
        labels = torch.randint(0, cfg.vocab, (cfg.micro_batch, cfg.seq))
        mt = MemTracker()
        mt.track_external(model, buffer)
        with mt, sdpa_kernel([backend]):
            for _ in range(cfg.steps):
                mt.reset_mod_stats()    # per-module stats are per iteration; the totals and the peak remain
                loss = model(tokens, labels)
                fwd = mt.get_tracker_snapshot("current")[torch.device("cpu")]
                loss.backward()
                del loss
                opt.step()
                buffer.zero_()
        dev = torch.device("cpu")
        now = mt.get_tracker_snapshot("current")[dev]
        peak = mt.get_tracker_snapshot("peak")[dev]
    return Tracked(weights=now[_MemRefType.PARAM], gradients=now[_MemRefType.OTH], optimizer=now[_MemRefType.OPT],
                   peak=peak["Total"], stored=fwd[_MemRefType.ACT], peak_split={getattr(k, "value", k): v for k, v in peak.items()})


def track_fsdp(cfg: OracleConfig) -> Tracked:
    """FSDP2 (torch.distributed.fsdp.fully_shard) over a fake process group of cfg.shard ranks, one rank's
    memory under FSDPMemTracker. FSDP2's mixed precision (MixedPrecisionPolicy(param_dtype=bf16,
    reduce_dtype=fp32)) keeps the sharded parameters in fp32 (they are the master weights), all-gathers bf16
    copies per block for forward and backward and reduce-scatters fp32 gradients into fp32 shards; AdamW
    (per-tensor loop) keeps exp_avg and exp_avg_sq per shard. So 16 B/param / d of states, where the planner's
    ZeRO-3 counts 18 / d (a bf16 weight shard besides the fp32 master): weights here = the fp32 shards."""
    import torch
    import torch.distributed as dist
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker, _FSDPRefType as R
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        dist.destroy_process_group()
    dist.init_process_group("fake", rank=0, world_size=cfg.shard, store=FakeStore())
    try:
        Decoder, _ = _build(cfg)
        backend = SDPBackend.FLASH_ATTENTION if cfg.flash else SDPBackend.MATH
        mesh = init_device_mesh("cpu", (cfg.shard,))
        with FakeTensorMode():
            model = Decoder()
            mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
            for blk in model.blocks:
                fully_shard(blk, mesh=mesh, mp_policy=mp)
            fully_shard(model, mesh=mesh, mp_policy=mp)
            # foreach=False: the fused and foreach kernels on DTensor shards showed a spurious optimizer peak
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1,
                                    foreach=False)
            tokens = torch.randint(0, cfg.vocab, (cfg.micro_batch, cfg.seq))
            labels = torch.randint(0, cfg.vocab, (cfg.micro_batch, cfg.seq))
            mt = FSDPMemTracker(model, opt)
            mt.track_inputs((tokens, labels))
            dev = torch.device("cpu")
            with mt, sdpa_kernel([backend]):
                for _ in range(cfg.steps):
                    mt.reset_mod_stats()
                    loss = model(tokens, labels)
                    fwd = mt.get_tracker_snapshot("current")[dev]
                    loss.backward()
                    del loss
                    grads = mt.get_tracker_snapshot("current")[dev]
                    opt.step()
                    opt.zero_grad()
            now = mt.get_tracker_snapshot("current")[dev]
            peak = mt.get_tracker_snapshot("peak")[dev]
    finally:
        dist.destroy_process_group()
    return Tracked(weights=now[R.SHARDED_PARAM], gradients=grads[R.SHARDED_GRAD], optimizer=now[R.OPT],
                   peak=peak["Total"] - peak[R.INP], stored=fwd[R.ACT],
                   peak_split={getattr(k, "value", k): v for k, v in peak.items()},
                   states_at_peak=peak[R.SHARDED_PARAM] + peak[R.SHARDED_GRAD] + peak[R.OPT],
                   gathered=peak[R.UNSHARDED_PARAM] + peak[R.ALL_GATHER] + peak[R.UNSHARDED_GRAD]
                   + peak[R.REDUCE_SCATTER])


def compare(cfg: OracleConfig, cluster: str = "1xH100") -> Row:
    """The tracker's measurement and the planner's prediction for one configuration."""
    planned, buffers = planner_bytes(cfg, cluster)
    return Row(cfg, track(cfg), planned, buffers)


# --- the differences, term by term ----------------------------------------------------------------

def known_differences(cfg: OracleConfig) -> dict[str, float]:
    """Bytes the tracker holds beyond the planner's `activations` (negative: the planner counts what the
    tracker does not hold), by cause; docs/memory-oracle.md explains each. Measured to the byte on the grid
    but for a few KB of loss-side scalars. Terms in STORED_ONLY hold when the forward returns the loss,
    those in PEAK_ONLY at the tracked peak (the loss running backward); the others at both."""
    spec = cfg.model_spec()
    L, a, f = cfg.layers, cfg.heads, spec.ffn_hidden
    sb = cfg.seq * cfg.micro_batch
    sbh, sbV = sb * cfg.hidden, sb * cfg.vocab
    full = cfg.recompute == "full"
    kept = 0 if full else L          # layers whose activations stay stored (full recompute keeps inputs only)
    # the planner's loss term (costmodels.memory.logits_bytes, 6sbV) and, with full recompute, the working
    # set beyond it (planner/solve/stages.py recompute_peak_b: max(logits, working set))
    titan = cfg.framework == "torchtitan"     # its accounting carries the eager terms and the logsumexp
    loss = 12.0 if titan else 6.0
    planner_loss = loss * sbV + (max(0.0, layer_full_bytes(cfg) - loss * sbV) if full else 0.0)
    out = {
        # dropout on CPU is input x scaled Bernoulli noise in the input's dtype (aten/src/ATen/native/Dropout.cpp
        # uses the fused native_dropout, 1-byte mask, only on CUDA/XPU): 2-byte masks (two per layer and
        # the embedding's) where the planner counts 1-byte masks (Megatron's fused bias-dropout-add)
        "dropout_masks_2byte": (2 * kept + 1) * sbh if cfg.hidden_dropout > 0 else 0.0,
        "softmax_lse": kept * 4.0 * a * sb if (cfg.flash and not titan) else 0.0,   # fp32 logsumexp per head
        # the math backend: 4as^2b stored (planner 5as^2b with dropout, whose 1-byte attention-dropout mask
        # is absent with attention dropout 0) and 6sbh of q/k/v/output copies (its backward peak is not
        # modelled here)
        "math_attention": 0.0 if cfg.flash else kept * (
            -(1.0 if spec.dropout else 0.0) * a * cfg.seq ** 2 * cfg.micro_batch + 6.0 * sbh),
        "norm_statistics": (2 * kept + 1) * 4.0 * sb,   # LayerNorm: bf16 mean + rstd; RMSNorm: fp32 rstd
        "eager_swiglu": kept * 2.0 * sb * f if (cfg.kernels == "eager" and cfg.ffn_type == "swiglu" and not titan)
        else 0.0,
        "eager_rmsnorm": (2 * kept + 1) * 6.0 * sbh if (cfg.kernels == "eager" and cfg.norm == "rmsnorm") else 0.0,
        # when the forward returns only the fp32 softmax (4sbV) is alive: the bf16 logits are freed
        "loss_at_return": 4.0 * sbV - planner_loss,
        # at the loss: fused, the bf16 logits (forward) or their bf16 gradient (backward) next to the fp32
        # softmax, 6sbV = the planner's; eager F.cross_entropy, two fp32 sbV gradients next to its saved
        # log-softmax, 12sbV. 0 for fused on the grid; where a layer's working set exceeds the logits (full
        # recompute) the tracked peak is elsewhere (not measured here)
        "loss_peak": (6.0 if cfg.kernels == "fused" else 12.0) * sbV - planner_loss,
    }
    return out


STORED_ONLY = ("loss_at_return",)
PEAK_ONLY = ("loss_peak",)


def layer_full_bytes(cfg: OracleConfig) -> float:
    """The planner's working set of one recomputing layer (costmodels.memory.layer_activation_bytes .full)."""
    from costmodels.memory import layer_activation_bytes
    return layer_activation_bytes(cfg.model_spec(), cfg.strategy()).full


def explained(row: Row) -> dict[str, float]:
    """The planner's activations plus the known differences: what the tracker should hold when the forward
    returns (`stored`) and at its peak (`activations`)."""
    d = known_differences(row.config)
    base = row.planned["activations"]
    stored = base + sum(v for k, v in d.items() if k not in PEAK_ONLY)
    peak = base + sum(v for k, v in d.items() if k not in STORED_ONLY)
    return {"stored": stored, "activations": peak}


# --- the grid --------------------------------------------------------------------------------------

def grid() -> list[OracleConfig]:
    """Small models covering hidden 256-1024, 2-4 layers, vocab 1k-32k, seq 256-2048, micro-batch 1-4,
    MHA/GQA, GELU/SwiGLU, LayerNorm/RMSNorm, recompute none/full, FSDP2 degree 2 and 4, and the
    eager/math/no-dropout variants
    whose differences docs/memory-oracle.md explains."""
    C = OracleConfig
    return [
        C(hidden=256, layers=2, heads=4, vocab=1024, seq=256, micro_batch=1),
        C(hidden=512, layers=2, heads=8, vocab=8192, seq=1024, micro_batch=2),
        C(hidden=512, layers=4, heads=8, kv_heads=2, vocab=4096, seq=512, micro_batch=4, ffn_type="swiglu",
          norm="rmsnorm"),
        C(hidden=1024, layers=2, heads=16, kv_heads=4, vocab=32000, seq=2048, micro_batch=1, ffn_type="swiglu",
          norm="rmsnorm"),
        C(hidden=768, layers=3, heads=12, vocab=16384, seq=1024, micro_batch=2),
        C(hidden=512, layers=4, heads=8, vocab=4096, seq=1024, micro_batch=2, recompute="full"),
        C(hidden=1024, layers=2, heads=16, kv_heads=4, vocab=32000, seq=2048, micro_batch=1, ffn_type="swiglu",
          norm="rmsnorm", recompute="full"),
        # known differences
        C(hidden=512, layers=2, heads=8, vocab=4096, seq=1024, micro_batch=2, flash=False),
        C(hidden=512, layers=4, heads=8, kv_heads=2, vocab=4096, seq=512, micro_batch=4, ffn_type="swiglu",
          norm="rmsnorm", kernels="eager"),
        C(hidden=512, layers=4, heads=8, kv_heads=2, vocab=4096, seq=512, micro_batch=4, ffn_type="swiglu",
          norm="rmsnorm", hidden_dropout=0.0),
        # FSDP2 over a fake process group, eager kernels and no dropout as torchtitan's Llama (planner: dp = d,
        # ZeRO-3, framework torchtitan)
        C(hidden=512, layers=2, heads=8, vocab=4096, seq=1024, micro_batch=2, shard=2, kernels="torchtitan",
          hidden_dropout=0.0),
        C(hidden=512, layers=4, heads=8, kv_heads=2, vocab=4096, seq=512, micro_batch=4, ffn_type="swiglu",
          norm="rmsnorm", shard=4, kernels="torchtitan", hidden_dropout=0.0),
        C(hidden=1024, layers=2, heads=16, kv_heads=4, vocab=32000, seq=2048, micro_batch=1, ffn_type="swiglu",
          norm="rmsnorm", shard=8, kernels="torchtitan", hidden_dropout=0.0),
        C(hidden=768, layers=3, heads=12, kv_heads=4, vocab=16384, seq=1024, micro_batch=2, ffn_type="swiglu",
          norm="rmsnorm", shard=2, kernels="torchtitan", hidden_dropout=0.0, recompute="full"),
        C(hidden=768, layers=3, heads=12, kv_heads=4, vocab=16384, seq=1024, micro_batch=2, ffn_type="swiglu",
          norm="rmsnorm", shard=2, kernels="torchtitan", hidden_dropout=0.0, recompute="selective"),
        C(hidden=1024, layers=4, heads=16, kv_heads=4, vocab=32000, seq=2048, micro_batch=1, ffn_type="swiglu",
          norm="rmsnorm", shard=4, kernels="torchtitan", hidden_dropout=0.0, recompute="selective"),
    ]


def table(rows: list[Row]) -> str:
    """Markdown table: per category the planner's and the tracker's MiB and the planner's % error."""
    MiB = 2 ** 20
    head = ("| configuration | " + " | ".join(f"{c} plan / tracked MiB (err %)" for c in CATEGORIES)
            + " | activations explained (residual %) |")
    lines = [head, "|" + "---|" * (len(CATEGORIES) + 2)]
    for r in rows:
        cells = [f"{r.planned[c] / MiB:.2f} / {getattr(r.tracked, c) / MiB:.2f} ({r.error(c):+.1f})"
                 for c in CATEGORIES]
        x = explained(r)["activations"]
        cells.append(f"{x / MiB:.2f} ({100.0 * (x - r.tracked.activations) / r.tracked.activations:+.2f})")
        lines.append(f"| {r.config.label()} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import time
    t0 = time.perf_counter()
    rows = [compare(cfg) for cfg in grid()]
    print(table(rows))
    print(f"\n{len(rows)} configurations in {time.perf_counter() - t0:.1f} s; planner peak without its fixed "
          f"buffers ({rows[0].buffers / 1e9:g} GB); error = (planner - tracker) / tracker")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
