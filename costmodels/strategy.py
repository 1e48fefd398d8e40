"""How a training job is split over GPUs: the parallel degrees and the memory-saving options.

`Strategy` is a frozen dataclass validated on creation (one place per setting, as in Megatron-core's
config dataclasses). Model-dependent rules (heads divisible by tp, layers by pp, ...) are checked by
the planner (planner/solve/rules.py), because they need the model and the cluster.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Literal

Recompute = Literal["none", "selective", "full"]
Precision = Literal["fp32", "bf16", "fp16", "fp8"]
Schedule = Literal["1f1b", "gpipe", "dualpipe"]
Optimizer = Literal["adam", "sgd"]
Framework = Literal["megatron", "torchtitan", "deepspeed"]

RECOMPUTE_CHOICES: tuple[str, ...] = ("none", "selective", "full")
PRECISION_CHOICES: tuple[str, ...] = ("fp32", "bf16", "fp16", "fp8")
OPTIMIZER_CHOICES: tuple[str, ...] = ("adam", "sgd")
# whose memory accounting prices the plan (costmodels/memory.py): Megatron-core, torchtitan (FSDP2), DeepSpeed
FRAMEWORK_CHOICES: tuple[str, ...] = ("megatron", "torchtitan", "deepspeed")
Dispatcher = Literal["alltoall", "deepep"]
# MoE token dispatch: all-to-all of one copy per (token, expert) (Megatron-core's alltoall dispatcher), or
# DeepEP (Megatron-core's flex dispatcher): one copy per destination node over the network, forwarded to
# the node's GPUs over NVLink (deepseek-ai/DeepEP, internode kernels)
DISPATCHER_CHOICES: tuple[str, ...] = ("alltoall", "deepep")
# FP8 scaling recipes (Transformer Engine / Megatron-core --fp8-recipe; torchao's tensorwise): per-tensor with
# delayed scaling (amax history), per-tensor current scaling, MXFP8 (32-element blocks, Blackwell), block-wise
# (1x128 activations, 128x128 weights, DeepSeek-V3)
FP8_RECIPES: tuple[str, ...] = ("delayed", "tensorwise", "mxfp8", "blockwise")
# Megatron-core's selective recompute modules (TransformerConfig.recompute_modules; its default core_attn)
RECOMPUTE_MODULES: tuple[str, ...] = ("core_attn", "layernorm", "mlp", "moe_act", "moe", "mla_up_proj")


class StrategyError(ValueError):
    """A strategy that cannot run; the message names the bad value and what is allowed."""



@dataclass(frozen=True)
class Invariant:
    """A structural rule every Strategy holds by construction (checked in __post_init__). The planner's
    rules module (planner/solve/rules.py) applies the same predicate and message while it enumerates."""
    name: str
    message: str                    # str.format over the Strategy's fields and dp_mb = dp x micro_batch
    ok: Callable[[Any], bool]       # reads only Strategy fields

    def error(self, s) -> str:
        fields = {k: getattr(s, k) for k in ("global_batch", "dp", "micro_batch", "pp", "virtual_stages", "zero_stage")}
        return self.message.format(**fields, dp_mb=s.dp * s.micro_batch)


# megatron/core/num_microbatches_calculator.py: global batch = micro-batch x dp x micro-batches
BATCH_DIVIDES = Invariant(
    "mb_batch", "global batch {global_batch} is not divisible by dp x micro-batch = {dp} x {micro_batch}; choose a "
    "global batch that is a multiple of {dp_mb}", lambda s: s.global_batch % (s.dp * s.micro_batch) == 0)
# megatron/training/arguments.py: virtual pipeline stages need pipeline parallelism
INTERLEAVING_NEEDS_PP = Invariant(
    "v_needs_pp", "virtual_stages={virtual_stages} needs pp > 1 (interleaving splits pipeline stages)",
    lambda s: s.virtual_stages == 1 or s.pp > 1)
# deepspeed/runtime/zero/offload_config.py: offload_param is valid only with stage 3
PARAM_OFFLOAD_NEEDS_ZERO3 = Invariant(
    "param_offload_zero3", "parameter offload needs ZeRO-3 (zero_stage=3: only ZeRO-3 partitions the weights), but "
    "zero_stage={zero_stage}", lambda s: not s.offload_params or s.zero_stage == 3)

@dataclass(frozen=True, slots=True)
class Strategy:
    tp: int = 1                      # tensor parallel (Megatron column/row split of every GEMM)
    pp: int = 1                      # pipeline stages
    dp: int = 1                      # data-parallel replicas
    micro_batch: int = 1             # sequences per micro-batch
    global_batch: int = 1            # sequences per optimizer step
    zero_stage: int = 0              # 0 none, 1 optimizer states (= Megatron distributed optimizer), 2 +grads, 3 +weights
    recompute: Recompute = "selective"   # none / selective (attention core) / full (whole layer)
    sequence_parallel: bool = True   # Megatron sequence parallel (norms and dropout split over tp)
    precision: Precision = "bf16"
    optimizer: Optimizer = "adam"
    # Context / expert parallel, interleaving, offload and the stage layout.
    cp: int = 1                      # context parallel (ring attention)
    ep: int = 1                      # expert parallel (MoE)
    # expert tensor parallel: None = tp (Megatron's default); MoE parallel folding sets the experts' own
    # etp x ep x edp = tp x cp x dp apart from attention's (megatron/core/parallel_state.py expert groups)
    expert_tp: int | None = None
    virtual_stages: int = 1          # interleaved 1F1B model chunks per stage
    offload_optimizer: bool = False  # optimizer states (and master weights) in host memory
    offload_params: bool = False     # ZeRO-3 parameter offload
    flash_attention: bool = True     # fused attention: no s^2 score tensors stored
    fp32_grads: bool = True          # optimizer sees fp32 gradients (framework default; see costmodels/memory.py)
    pipeline_schedule: Schedule = "1f1b"   # 1f1b (interleaved when virtual_stages > 1), gpipe or dualpipe
    stage_layers: tuple[int, ...] | None = None       # layers per pipeline stage (None: even split)
    recompute_layers: tuple[int, ...] | None = None   # fully recomputed layers per stage (recompute="full"; None: all)
    # the framework that runs the plan: its memory accounting (model states, gathered weights, buckets) and,
    # for torchtitan, what recompute="selective" means (per-op selective activation checkpointing)
    framework: Framework = "megatron"
    moe_dispatcher: Dispatcher = "alltoall"   # MoE token dispatch (DISPATCHER_CHOICES); ignored by dense models
    # tensor-parallel collectives overlapped with the GEMMs they feed (Megatron-LM --tp-comm-overlap,
    # Transformer Engine userbuffers; needs sequence parallel); off without tensor parallelism
    tp_comm_overlap: bool = False
    # recompute="selective" under Megatron-core: the submodules recomputed (RECOMPUTE_MODULES; None: core_attn)
    recompute_modules: tuple[str, ...] | None = None
    # LoRA fine-tuning (Hu et al. 2021): the base weights frozen (no gradients, optimizer states or
    # weight-gradient GEMMs), adapters of this rank on every linear layer of the transformer blocks
    lora_rank: int | None = None
    # MoE all-to-all of one micro-batch overlapped with another's compute (Megatron-core
    # --overlap-moe-expert-parallel-comm: needs ep > 1, interleaving when pp > 1, no full recompute)
    moe_a2a_overlap: bool = False
    # precision="fp8": the scaling recipe (FP8_RECIPES); None: the framework's default (Megatron-core delayed,
    # torchtitan tensorwise)
    fp8_recipe: str | None = None

    def __post_init__(self) -> None:
        for name in ("tp", "pp", "dp", "micro_batch", "global_batch", "cp", "ep", "virtual_stages"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise StrategyError(f"{name}={value!r} is not allowed; it must be a whole number >= 1")
        if self.expert_tp is not None and (not isinstance(self.expert_tp, int) or isinstance(self.expert_tp, bool)
                                           or self.expert_tp < 1):
            raise StrategyError(f"expert_tp={self.expert_tp!r} is not allowed; a whole number >= 1 (or None: tp)")
        if self.expert_tp == self.tp:
            object.__setattr__(self, "expert_tp", None)      # one spelling of the default
        if self.zero_stage not in (0, 1, 2, 3):
            raise StrategyError(f"zero_stage={self.zero_stage!r} is not allowed; choose 0, 1, 2 or 3")
        if self.recompute not in RECOMPUTE_CHOICES:
            raise StrategyError(f"recompute={self.recompute!r} is not allowed; choose none, selective or full")
        if self.precision not in PRECISION_CHOICES:
            raise StrategyError(f"precision={self.precision!r} is not allowed; choose fp32, bf16, fp16 or fp8")
        if self.optimizer not in OPTIMIZER_CHOICES:
            raise StrategyError(f"optimizer={self.optimizer!r} is not allowed; choose adam or sgd")
        for rule in (BATCH_DIVIDES, INTERLEAVING_NEEDS_PP, PARAM_OFFLOAD_NEEDS_ZERO3):
            if not rule.ok(self):
                raise StrategyError(rule.error(self))
        if self.sequence_parallel and self.tp == 1:
            object.__setattr__(self, "sequence_parallel", False)  # sequence parallel needs tp > 1
        if self.tp_comm_overlap and self.tp == 1:
            object.__setattr__(self, "tp_comm_overlap", False)    # nothing to overlap
        if self.tp_comm_overlap and not self.sequence_parallel:   # megatron/training/arguments.py
            raise StrategyError("tensor-parallel communication overlap (--tp-comm-overlap) needs sequence parallel")
        if self.framework not in FRAMEWORK_CHOICES:
            raise StrategyError(f"framework={self.framework!r} is not allowed; choose megatron, torchtitan or deepspeed")
        if self.lora_rank is not None:
            if not isinstance(self.lora_rank, int) or isinstance(self.lora_rank, bool) or self.lora_rank < 1:
                raise StrategyError(f"lora_rank={self.lora_rank!r} is not allowed; a whole number >= 1 (or None: "
                                    f"train every weight)")
            if self.zero_stage >= 2 or self.offload_optimizer:
                raise StrategyError("LoRA plans with ZeRO-2/3 or optimizer offload are not modelled (the frozen base "
                                    "weights have no gradients or optimizer states to shard); use ZeRO 0 or 1")
        if self.moe_a2a_overlap and self.ep == 1:
            object.__setattr__(self, "moe_a2a_overlap", False)     # nothing to overlap
        if self.moe_a2a_overlap and (self.recompute == "full" or (
                self.pp > 1 and self.virtual_stages == 1 and self.pipeline_schedule != "dualpipe")):
            # megatron/core/transformer/transformer_config.py: the overlapped schedule pairs micro-batches of
            # interleaved chunks and cannot recompute whole layers; DualPipe pairs a forward and a backward chunk
            # of its two directions (DeepSeek-V3 report 3.2.1)
            raise StrategyError("MoE all-to-all overlap (--overlap-moe-expert-parallel-comm) needs interleaving (or "
                                "DualPipe) when pp > 1 and no full recompute")
        if self.fp8_recipe is not None and self.fp8_recipe not in FP8_RECIPES:
            raise StrategyError(f"fp8_recipe={self.fp8_recipe!r} is not allowed; choose {', '.join(FP8_RECIPES)}")
        if self.precision != "fp8" and self.fp8_recipe is not None:
            object.__setattr__(self, "fp8_recipe", None)          # only FP8 has a recipe
        if self.moe_dispatcher not in DISPATCHER_CHOICES:
            raise StrategyError(f"moe_dispatcher={self.moe_dispatcher!r} is not allowed; choose alltoall or deepep")
        if self.recompute_modules is not None:
            mods = tuple(sorted(set(self.recompute_modules), key=RECOMPUTE_MODULES.index)) \
                if set(self.recompute_modules) <= set(RECOMPUTE_MODULES) else None
            if mods is None or not mods:
                raise StrategyError(f"recompute_modules={self.recompute_modules!r}: choose among {', '.join(RECOMPUTE_MODULES)}")
            if self.recompute != "selective" or self.framework != "megatron":
                raise StrategyError("recompute_modules (Megatron-core --recompute-modules) needs recompute='selective' "
                                    "and the megatron framework")
            object.__setattr__(self, "recompute_modules", None if mods == ("core_attn",) else mods)
        if self.pipeline_schedule not in ("1f1b", "gpipe", "dualpipe"):
            raise StrategyError(f"pipeline_schedule={self.pipeline_schedule!r} is not allowed; choose 1f1b, gpipe or "
                                f"dualpipe")
        if self.pipeline_schedule != "1f1b" and self.virtual_stages > 1:
            raise StrategyError(f"virtual_stages > 1 (interleaving) needs the 1f1b schedule, not "
                                f"{self.pipeline_schedule}")
        if self.pipeline_schedule == "dualpipe" and self.pp % 2:
            # DeepSeek-V3 report 3.2.1: DualPipe feeds micro-batches from both ends of the pipeline
            raise StrategyError(f"the dualpipe schedule needs an even pipeline (pp={self.pp})")
        for name in ("stage_layers", "recompute_layers"):
            value = getattr(self, name)
            if value is not None:
                value = tuple(value)
                object.__setattr__(self, name, value)
                if len(value) != self.pp or any((not isinstance(x, int)) or x < 0 for x in value):
                    raise StrategyError(f"{name}={list(value)} must list {self.pp} whole numbers >= 0, one per pipeline stage")
        if self.stage_layers is not None and min(self.stage_layers) < 1:
            raise StrategyError(f"stage_layers={list(self.stage_layers)}: every pipeline stage needs at least one layer")
        if self.recompute_layers is not None:
            if self.recompute != "full":
                raise StrategyError("recompute_layers (layers fully recomputed per stage) needs recompute='full'")

    @property
    def recipe(self) -> str | None:
        """The FP8 scaling recipe in force (None unless precision is fp8)."""
        if self.precision != "fp8":
            return None
        return self.fp8_recipe or ("tensorwise" if self.framework == "torchtitan" else "delayed")

    @property
    def num_gpus(self) -> int:
        return self.tp * self.pp * self.dp * self.cp

    @property
    def etp(self) -> int:
        """Expert tensor-parallel size: expert_tp, or tp when not set apart."""
        return self.expert_tp or self.tp

    @property
    def edp(self) -> int:
        """Expert data-parallel size: the tp x cp x dp ranks of a stage over etp x ep (parallel folding)."""
        return max(1, self.tp * self.cp * self.dp // (self.ep * self.etp))

    @property
    def micro_batches(self) -> int:
        """Micro-batches per step and pipeline: m = B / (b * dp)."""
        return self.global_batch // (self.dp * self.micro_batch)

    @property
    def schedule(self) -> str:
        if self.pp == 1:
            return "none"
        if self.pipeline_schedule in ("gpipe", "dualpipe"):
            return self.pipeline_schedule
        return "interleaved-1f1b" if self.virtual_stages > 1 else "1f1b"

    def with_(self, **changes) -> "Strategy":
        return replace(self, **changes)

    def with_layout(self, Ls, Rs) -> "Strategy":
        """This strategy with layers per stage Ls and fully recomputed layers per stage Rs, spelt one way:
        explicit stage_layers; recompute 'none' when nothing is recomputed; no recompute_layers list when
        every layer is (costmodels.performance.resolve_layout reads each spelling back as the same Ls, Rs).
        The one normalisation of recompute: the search's result, export, import and nearest layouts."""
        if self.recompute != "full":
            return replace(self, stage_layers=tuple(Ls), recompute_layers=None)
        if not any(Rs):
            return replace(self, recompute="none", stage_layers=tuple(Ls), recompute_layers=None)
        return replace(self, stage_layers=tuple(Ls), recompute_layers=None if list(Rs) == list(Ls) else tuple(Rs))

    def as_dict(self) -> dict:
        out = {f: getattr(self, f) for f in self.__dataclass_fields__}
        for key in ("stage_layers", "recompute_layers"):
            if out[key] is not None:
                out[key] = list(out[key])
        out["micro_batches"] = self.micro_batches
        out["schedule"] = self.schedule
        return out


def recomputed_modules(st: "Strategy") -> tuple[str, ...]:
    """The submodules a Megatron-core selective recompute repeats (its default: the attention core)."""
    if st.recompute != "selective":
        return ()
    return st.recompute_modules or ("core_attn",)
