"""Every structural rule of a parallel plan, written once.

A `Rule` names one constraint: a predicate, the short text the search prints when the rule removes
candidates ("removed by rules: ..."), the error message a user-given plan that breaks it gets, the step of
the enumeration at which every field it reads is known, and the frameworks whose code imposes it. All
callers ask this module:

- the training search (planner.solve.space) checks `TRAINING_RULES` step by step while it builds
  structures (`rules_at`), and counts each removal under the rule's `summary`; a search for one framework
  (SpaceOptions.framework, export's space_for) also checks that framework's rules;
- `check_strategy` checks the same rules, in the same order, on a finished strategy (a user's plan,
  `plan evaluate`, `plan validate`) and raises the first broken rule's `message`;
- export (planner.frameworks) asks `framework_problem` which plans a framework cannot express, and
  `setting_problem` whether searching again can help;
- serving (planner.serving.search, planner.validation.serving) asks `shape_ok` / `check_deployment`.

The training space applies every training rule whatever the target framework, because the cost model
predicts one execution for all of them; `Rule.frameworks` records whose code imposes a rule, and selects
the framework restrictions export and a framework's search check. `bound` rules are limits of the search,
not of any framework: the search applies them, `check_strategy` does not.

A predicate takes (ctx, s): ctx a `Context` (model and cluster), s anything with the Strategy fields it
reads (a Strategy, the search's partial structure `Partial`, a serving Deployment).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from costmodels.model import ModelSpec
from costmodels.performance import even_split, min_stage_layers
from costmodels.serving import ServingError
from costmodels.strategy import (BATCH_DIVIDES, INTERLEAVING_NEEDS_PP, PARAM_OFFLOAD_NEEDS_ZERO3,
                                 StrategyError)

TRAINING = ("megatron", "deepspeed", "torchtitan")
SERVING = ("vllm",)
FRAMEWORK_NAMES = {"megatron": "Megatron-LM", "deepspeed": "DeepSpeed", "torchtitan": "torchtitan", "vllm": "vLLM"}

MAX_VIRTUAL_STAGES = 8
MAX_MICRO_BATCH = 64
MAX_PIPELINE_STAGES = 512     # deeper pipelines than any published run; keeps layouts interactive
MIN_CP_CHUNK = 1024           # tokens per context-parallel rank below which attention kernels starve

# The enumeration's steps, in the order it fixes the fields: a rule is checked at the first step that
# knows everything it reads ("recompute": the recompute family; "layout": stage layers and recompute counts
# of a finished plan; "setting": whole-run settings the search never varies, such as precision or the
# model's position embedding).
STEPS = ("tp", "cp", "pp_dp", "ep", "micro_batch", "virtual_stages", "zero_stage", "offload", "recompute", "layout",
         "setting")


@dataclass(frozen=True)
class Context:
    """What a rule may read besides the plan: the model and the cluster it runs on."""
    model: ModelSpec
    num_gpus: int = 0
    gpus_per_node: int = 8
    tp_across_nodes: bool = False


@dataclass(frozen=True)
class Rule:
    name: str
    step: str                           # one of STEPS
    summary: str                        # what the search prints for the candidates it removed
    message: str | Callable[[dict], str]   # check_strategy's error: a str.format template over facts()
    ok: Callable[[Context, Any], bool]
    frameworks: tuple[str, ...] = TRAINING   # the frameworks whose code imposes it
    bound: bool = False                 # a limit of the search; check_strategy does not apply it

    def __post_init__(self) -> None:
        assert self.step in STEPS, self.step

    def error(self, ctx: Context, s, framework: str | None = None) -> str:
        f = facts(ctx, s, framework)
        return self.message(f) if callable(self.message) else self.message.format(**f)


class Partial:
    """A structure the search is still building: the fields fixed so far (the rest at Strategy defaults)."""
    __slots__ = ("tp", "cp", "pp", "dp", "ep", "micro_batch", "micro_batches", "global_batch", "virtual_stages",
                 "zero_stage", "offload_optimizer", "offload_params", "recompute", "sequence_parallel", "precision",
                 "optimizer", "flash_attention", "fp32_grads", "pipeline_schedule", "moe_dispatcher", "tp_comm_overlap",
                 "lora_rank", "fp8_recipe", "moe_a2a_overlap")

    def __init__(self, global_batch: int, precision: str = "bf16", optimizer: str = "adam",
                 flash_attention: bool = True, fp32_grads: bool = True) -> None:
        self.tp = self.cp = self.pp = self.dp = self.ep = self.micro_batch = self.micro_batches = 1
        self.virtual_stages = 1
        self.global_batch = global_batch
        self.zero_stage = 0
        self.offload_optimizer = self.offload_params = self.sequence_parallel = False
        self.recompute = "selective"
        self.precision, self.optimizer, self.pipeline_schedule = precision, optimizer, "1f1b"
        self.flash_attention, self.fp32_grads = flash_attention, fp32_grads
        self.moe_dispatcher, self.tp_comm_overlap, self.lora_rank = "alltoall", False, None
        self.fp8_recipe, self.moe_a2a_overlap = None, False


def _stage_layers(ctx: Context, s) -> list[int]:
    layers = getattr(s, "stage_layers", None)
    return list(layers) if layers is not None else even_split(ctx.model.layers, s.pp)


def facts(ctx: Context, s, framework: str | None = None) -> dict:
    """The values rule messages are written in (str.format fields)."""
    m = ctx.model
    g = {k: getattr(s, k, d) for k, d in (
        ("tp", 1), ("pp", 1), ("dp", 1), ("cp", 1), ("ep", 1), ("micro_batch", 1), ("global_batch", 1),
        ("virtual_stages", 1), ("zero_stage", 0), ("precision", "bf16"), ("optimizer", "adam"),
        ("stage_layers", None), ("recompute_layers", None))}
    g["micro_batches"] = g["global_batch"] // max(1, g["dp"] * g["micro_batch"])
    return {**g, "model": m.name, "heads": m.heads, "kv_heads": m.kv_heads, "layers": m.layers, "seq_len": m.seq_len,
            "experts": m.moe.experts if m.moe is not None else 0,
            "num_gpus": ctx.num_gpus, "gpus_per_node": ctx.gpus_per_node,
            "product": g["tp"] * g["pp"] * g["dp"] * g["cp"], "two_cp": 2 * g["cp"],
            "cp_tokens": m.seq_len // g["cp"], "min_cp_chunk": MIN_CP_CHUNK, "pp_v": g["pp"] * g["virtual_stages"],
            "dp_cp": g["dp"] * g["cp"], "dp_mb": g["dp"] * g["micro_batch"],
            "etp": _etp(s) if hasattr(s, "tp") else g["tp"], "tp_cp_dp": g["tp"] * g["cp"] * g["dp"],
            "max_pp": MAX_PIPELINE_STAGES, "max_mb": MAX_MICRO_BATCH,
            "allowed_tp": [d for d in range(1, m.kv_heads + 1)
                           if m.kv_heads % d == 0 and m.heads % d == 0 and d <= ctx.gpus_per_node],
            "stage_layout": _stage_layers(ctx, s) if g["stage_layers"] is not None or g["pp"] <= m.layers else None,
            "shard_cp": (g["dp"] if g["zero_stage"] >= 2 else 1) * g["cp"],
            "framework_name": FRAMEWORK_NAMES.get(framework or "", framework)}


def _over_stage(f: dict) -> str:
    Ls = f["stage_layout"]
    i, r, L = next((i, r, L) for i, (r, L) in enumerate(zip(f["recompute_layers"], Ls)) if r > L)
    return (f"recompute layers {r} on stage {i} exceed its {L} layers; give at most the stage's layers "
            f"({list(Ls)})")


# ---- training structure ------------------------------------------------------------------------------

TP_IN_NODE = Rule(  # Narayanan et al. 2021 (Megatron-LM at scale), 3.3: tensor parallelism within a node
    "tp_in_node", "tp", "tp must stay inside a node (NVLink)",
    "tp={tp} is larger than a node ({gpus_per_node} GPUs); tp must stay inside a node",
    lambda c, s: s.tp <= c.gpus_per_node or c.tp_across_nodes)
TP_HEADS = Rule(  # megatron/core/transformer/attention.py: heads and query groups are divided by tp
    "tp_heads", "tp", "tp must divide attention heads and kv heads",
    "tp={tp} does not divide the {heads} attention heads and {kv_heads} kv heads of {model}; allowed tp: {allowed_tp}",
    lambda c, s: c.model.heads % s.tp == 0 and c.model.kv_heads % s.tp == 0)
CP_BALANCED = Rule(  # megatron/core/transformer/custom_layers/transformer_engine.py: 2 x cp causal-balanced chunks
    "cp_balanced", "cp", "cp needs the sequence divisible by 2 x cp (load-balanced causal chunks)",
    "cp={cp}: the sequence of {seq_len} tokens is not divisible by 2 x cp = {two_cp}",
    lambda c, s: s.cp == 1 or c.model.seq_len % (2 * s.cp) == 0, frameworks=("megatron", "torchtitan"))
CP_CHUNK = Rule(  # Liu et al. 2023 (Ring Attention), 3: a block's attention must outlast passing its KV on
    "cp_chunk", "cp", f"cp must leave >= {MIN_CP_CHUNK} tokens per rank",
    "cp={cp} leaves {cp_tokens} of the {seq_len} tokens per rank, fewer than {min_cp_chunk}; use a smaller cp",
    lambda c, s: s.cp == 1 or c.model.seq_len // s.cp >= MIN_CP_CHUNK, frameworks=("megatron", "torchtitan"))
GPUS = Rule(  # megatron/core/parallel_state.py: world size = tp x pp x dp x cp
    "gpus", "pp_dp", "tp x pp x dp x cp must use every GPU",
    "tp x pp x dp x cp = {tp} x {pp} x {dp} x {cp} = {product} GPUs, but the cluster has {num_gpus}; "
    "choose degrees whose product is {num_gpus}",
    lambda c, s: s.tp * s.pp * s.dp * s.cp == c.num_gpus)
PP_LAYERS = Rule(  # megatron/core/transformer/transformer_block.py: every pipeline stage holds a layer
    "pp_layers", "pp_dp", "pp must not exceed the layers",
    "pp={pp} exceeds the {layers} layers of {model}",
    lambda c, s: s.pp <= c.model.layers, frameworks=TRAINING + SERVING)
PP_MAX = Rule(  # search bound (MAX_PIPELINE_STAGES above)
    "pp_max", "pp_dp", f"pp is at most {MAX_PIPELINE_STAGES} stages",
    "pp={pp} is more than the {max_pp} pipeline stages the search considers",
    lambda c, s: s.pp <= MAX_PIPELINE_STAGES, frameworks=(), bound=True)
DP_BATCH = Rule(  # megatron/core/num_microbatches_calculator.py: global batch = micro-batch x dp x micro-batches
    "dp_batch", "pp_dp", "global batch must be divisible by dp",
    "global batch {global_batch} is not divisible by dp={dp}",
    lambda c, s: s.global_batch % s.dp == 0)
EP_MOE = Rule(  # expert parallelism splits the experts of MoE layers (Lepikhin et al. 2020, GShard)
    "ep_moe", "ep", "ep needs a mixture-of-experts model",
    "ep={ep} needs a mixture-of-experts model; {model} is dense",
    lambda c, s: s.ep == 1 or c.model.moe is not None, frameworks=TRAINING + SERVING)
EP_EXPERTS = Rule(  # megatron/core/transformer/moe/moe_layer.py: num_moe_experts % ep == 0
    "ep_experts", "ep", "ep must divide the experts",
    "ep={ep} does not divide the {experts} experts of {model}",
    lambda c, s: s.ep == 1 or (c.model.moe is not None and c.model.moe.experts % s.ep == 0))
def _etp(s) -> int:
    return getattr(s, "expert_tp", None) or s.tp


EP_DP_CP = Rule(  # megatron/core/parallel_state.py: expert groups etp x ep x edp fold the tp x cp x dp ranks
    "ep_dp_cp", "ep", "ep x expert tp must divide tp x cp x dp (the ranks the experts are folded over)",
    lambda f: (f"ep={f['ep']} x expert tp={f['etp']} must divide tp x cp x dp = {f['tp_cp_dp']} (the ranks of a "
               f"pipeline stage the experts are folded over)"),
    lambda c, s: (s.tp * s.cp * s.dp) % (s.ep * _etp(s)) == 0)
MB_BATCH = Rule(  # a Strategy invariant (costmodels.strategy.BATCH_DIVIDES cites its source)
    BATCH_DIVIDES.name, "micro_batch", "global batch must be divisible by dp x micro-batch",
    BATCH_DIVIDES.message, lambda c, s: BATCH_DIVIDES.ok(s))
V_NEEDS_PP = Rule(  # a Strategy invariant (costmodels.strategy.INTERLEAVING_NEEDS_PP)
    INTERLEAVING_NEEDS_PP.name, "virtual_stages", "interleaving needs pipeline parallelism (pp > 1)",
    INTERLEAVING_NEEDS_PP.message, lambda c, s: INTERLEAVING_NEEDS_PP.ok(s))
V_LAYERS = Rule(  # megatron/training/arguments.py: every model chunk needs a layer
    "v_layers", "virtual_stages",
    "interleaving needs a layer per chunk (layers >= pp x virtual stages, less the embedding and loss chunks)",
    "virtual_stages={virtual_stages}: {layers} layers cannot give every one of pp x virtual stages = {pp_v} "
    "chunks a layer (the first chunk may hold only the embedding and the last only the loss)",
    lambda c, s: s.virtual_stages == 1 or c.model.layers >= sum(min_stage_layers(i, s.pp, s.virtual_stages)
                                                                 for i in range(s.pp)),
    frameworks=("megatron", "torchtitan"))
V_MICROBATCHES = Rule(  # megatron/core/pipeline_parallel/schedules.py: interleaving runs micro-batches in groups of pp
    "v_microbatches", "virtual_stages", "interleaving needs micro-batches divisible by pp",
    "virtual_stages={virtual_stages} needs the {micro_batches} micro-batches per step to be a multiple of pp={pp}",
    lambda c, s: s.virtual_stages == 1 or s.micro_batches % s.pp == 0, frameworks=("megatron", "torchtitan"))
ZERO_PP = Rule(  # deepspeed/runtime/pipe/engine.py: ZeRO-2/3 are incompatible with pipeline parallelism
    "zero_pp", "zero_stage", "ZeRO-2/3 cannot be combined with pipeline parallelism",
    "ZeRO-{zero_stage} cannot be combined with pipeline parallelism (pp={pp}; DeepSpeed's pipeline engine "
    "refuses ZeRO-2/3); nearest: ZeRO-1 or pp=1",
    lambda c, s: s.zero_stage < 2 or s.pp == 1, frameworks=("deepspeed", "megatron"))   # torchtitan runs FSDP with PP
ZERO_DP = Rule(  # Rajbhandari et al. 2020 (ZeRO), 5: states are partitioned over the data-parallel ranks
    "zero_dp", "zero_stage", "ZeRO needs a data-parallel group (dp x cp > 1)",
    "ZeRO-{zero_stage} shards over the data-parallel ranks, but dp x cp = 1; use ZeRO-0 or dp x cp > 1",
    lambda c, s: s.zero_stage == 0 or s.dp * s.cp > 1)
OFFLOAD_ZERO = Rule(  # megatron/training/arguments.py: --optimizer-cpu-offload needs the distributed optimizer
    "offload_zero", "offload", "optimizer offload needs a sharded optimizer (ZeRO >= 1)",
    "optimizer offload needs a sharded optimizer (ZeRO >= 1), but zero_stage=0",
    lambda c, s: not s.offload_optimizer or s.zero_stage >= 1)
PARAM_OFFLOAD_ZERO3 = Rule(  # a Strategy invariant (costmodels.strategy.PARAM_OFFLOAD_NEEDS_ZERO3)
    PARAM_OFFLOAD_NEEDS_ZERO3.name, "offload", "parameter offload needs ZeRO-3", PARAM_OFFLOAD_NEEDS_ZERO3.message,
    lambda c, s: PARAM_OFFLOAD_NEEDS_ZERO3.ok(s), frameworks=("deepspeed", "torchtitan"))
LAYERS_SUM = Rule(  # megatron/core/transformer/transformer_block.py: the stages hold every layer once
    "layers_sum", "layout", "stage layers must sum to the layers",
    lambda f: (f"stage layers {list(f['stage_layers'])} sum to {sum(f['stage_layers'])}, "
               f"but {f['model']} has {f['layers']} layers"),
    lambda c, s: s.stage_layers is None or sum(s.stage_layers) == c.model.layers)
STAGE_CHUNKS = Rule(  # megatron/training/arguments.py: every model chunk needs a layer
    "stage_chunks", "layout", "every stage needs a layer per interleaved chunk",
    lambda f: (f"stage layers {list(f['stage_layers'])}: with {f['virtual_stages']} interleaved chunks "
               f"every stage needs at least {f['virtual_stages']} layers (the first and last one fewer)"),
    lambda c, s: s.stage_layers is None or all(L >= min_stage_layers(i, len(s.stage_layers), s.virtual_stages)
                                               for i, L in enumerate(s.stage_layers)))
RECOMPUTE_IN_STAGE = Rule(  # megatron/core/transformer/transformer_block.py: recompute counts a chunk's layers
    "recompute_in_stage", "layout", "recomputed layers must not exceed the stage's layers",
    lambda f: _over_stage(f),
    lambda c, s: s.recompute_layers is None
    or all(r <= L for r, L in zip(s.recompute_layers, _stage_layers(c, s))))

# in check order (step by step); the search checks the same rules at the same steps
TRAINING_RULES: tuple[Rule, ...] = (
    TP_IN_NODE, TP_HEADS, CP_BALANCED, CP_CHUNK, GPUS, PP_LAYERS, PP_MAX, DP_BATCH, EP_MOE, EP_EXPERTS, EP_DP_CP,
    MB_BATCH, V_NEEDS_PP, V_LAYERS, V_MICROBATCHES, ZERO_PP, ZERO_DP, OFFLOAD_ZERO, PARAM_OFFLOAD_ZERO3,
    LAYERS_SUM, STAGE_CHUNKS, RECOMPUTE_IN_STAGE)
assert [STEPS.index(r.step) for r in TRAINING_RULES] == sorted(STEPS.index(r.step) for r in TRAINING_RULES)
AT_STEP: dict[str, tuple[Rule, ...]] = {step: tuple(r for r in TRAINING_RULES if r.step == step) for step in STEPS}
CHECKED: tuple[Rule, ...] = tuple(r for r in TRAINING_RULES if not r.bound)


def first_broken(rules, ctx: Context, s) -> Rule | None:
    """The first of `rules` that `s` breaks, or None."""
    for r in rules:
        if not r.ok(ctx, s):
            return r
    return None


def allows(step: str, model: ModelSpec, num_gpus: int = 0, gpus_per_node: int = 8, tp_across_nodes: bool = False,
           **fields) -> bool:
    """Whether the training rules of `step` allow a partial structure with `fields` (the rest at Strategy
    defaults), e.g. allows("virtual_stages", model, pp=4, micro_batches=8, virtual_stages=2)."""
    p = Partial(fields.pop("global_batch", 1))
    for k, v in fields.items():
        setattr(p, k, v)
    ctx = Context(model, num_gpus, gpus_per_node, tp_across_nodes)
    return all(r.ok(ctx, p) for r in AT_STEP[step])


def check_strategy(model: ModelSpec, st, num_gpus: int, gpus_per_node: int, tp_across_nodes: bool = False) -> None:
    """Raise StrategyError naming the first training rule a user-given strategy breaks (the rules the
    search applies, in the order it applies them; search bounds excepted)."""
    ctx = Context(model, num_gpus, gpus_per_node, tp_across_nodes)
    rule = first_broken(_checked(st), ctx, st)
    if rule is not None:
        raise StrategyError(rule.error(ctx, st))


def _checked(st) -> tuple[Rule, ...]:
    """The training rules of the framework that runs `st` (Strategy.framework; the default search's rules
    without one): torchtitan, for one, runs FSDP with pipeline parallelism."""
    fw = getattr(st, "framework", "megatron")
    return CHECKED if fw == "megatron" else tuple(r for r in CHECKED if fw in r.frameworks)


def strategy_ok(model: ModelSpec, st, num_gpus: int, gpus_per_node: int, tp_across_nodes: bool = False) -> bool:
    return first_broken(_checked(st), Context(model, num_gpus, gpus_per_node, tp_across_nodes), st) is None


# ---- what each training framework can express -------------------------------------------------------
# export asks framework_problem; the rules of one framework are checked in the order listed here.

def _tt_zero1(f: dict) -> str:
    nearest = "--zero 0" if f["pp"] > 1 else "--zero 2 (FSDP2 without resharding after forward)"
    return (f"ZeRO-1 cannot be expressed in torchtitan (FSDP2 shards gradients too); nearest expressible "
            f"plan: {nearest}")


MG_PARAM_OFFLOAD = Rule(  # megatron/training/arguments.py: --optimizer-cpu-offload offloads only the optimizer
    "megatron_param_offload", "offload", "Megatron-LM has no parameter offload",
    "parameter offload cannot be expressed in Megatron-LM (it offloads only the optimizer, "
    "--optimizer-cpu-offload); nearest expressible plan: ZeRO-1 with optimizer offload",
    lambda c, s: not s.offload_params, frameworks=("megatron",))
MG_ZERO = Rule(  # megatron/core/optimizer/distrib_optimizer.py: the distributed optimizer shards optimizer states only
    "megatron_zero", "zero_stage", "Megatron-LM's distributed optimizer is ZeRO-1",
    "ZeRO-{zero_stage} cannot be expressed in Megatron-LM arguments (its distributed optimizer is ZeRO-1); "
    "nearest expressible plan: ZeRO-1, e.g. rerun with --zero 0,1",
    lambda c, s: s.zero_stage < 2, frameworks=("megatron",))
MG_GPIPE = Rule(  # megatron/core/pipeline_parallel/schedules.py: 1F1B and interleaved 1F1B only
    "megatron_gpipe", "setting", "Megatron-LM has no GPipe schedule",
    "Megatron-LM has no GPipe schedule; nearest expressible plan: --schedule 1f1b",
    lambda c, s: s.pipeline_schedule != "gpipe", frameworks=("megatron",))
MG_OFFLOAD_ADAM = Rule(  # megatron/core/optimizer/cpu_offloading/hybrid_optimizer.py: offloads an Adam optimizer
    "megatron_offload_adam", "offload", "Megatron-LM offloads only Adam",
    "Megatron-LM offloads only an Adam optimizer (--optimizer-cpu-offload); nearest expressible plan: no offload",
    lambda c, s: not (s.offload_optimizer and s.optimizer != "adam"), frameworks=("megatron",))
MG_ALIBI = Rule(  # megatron/core/models/gpt/gpt_model.py: position_embedding_type is learned_absolute, rope or none
    "megatron_alibi", "setting", "Megatron-LM has no ALiBi",
    "Megatron-LM's GPT model has no ALiBi position embedding (rope or learned_absolute only)",
    lambda c, s: c.model.position_embedding != "alibi", frameworks=("megatron",))
NO_SELECTIVE = Rule(  # deepspeed/runtime/activation_checkpointing: whole layers only (torchtitan's selective is per-op AC)
    "no_selective_recompute", "recompute", "the framework has no selective recompute setting",
    "{framework_name} has no selective (attention-core) recompute setting; nearest expressible plans: "
    "--recompute none (with flash attention it stores the same activations) or --recompute full",
    lambda c, s: s.recompute != "selective", frameworks=("deepspeed",))
DS_TP = Rule(  # deepspeed/runtime/config.py: no tensor-parallel setting (Megatron-DeepSpeed adds it)
    "deepspeed_tp", "tp", "DeepSpeed JSON has no tensor parallelism",
    "tp={tp}: tensor parallelism needs Megatron-DeepSpeed, not a DeepSpeed JSON config; nearest expressible "
    "plan: tp=1 (rerun with --tp 1), or use --emit megatron",
    lambda c, s: s.tp == 1, frameworks=("deepspeed",))
DS_CP = Rule(  # deepspeed/sequence/layer.py: Ulysses all-to-all, no ring attention
    "deepspeed_cp", "cp", "DeepSpeed has no ring-attention context parallelism",
    "cp={cp}: DeepSpeed has no ring-attention context parallelism (Ulysses is another scheme); nearest "
    "expressible plan: cp=1",
    lambda c, s: s.cp == 1, frameworks=("deepspeed",))
DS_EP = Rule(  # deepspeed/moe/layer.py: ep_size is a model-code argument
    "deepspeed_ep", "ep", "DeepSpeed sets expert parallelism in model code",
    "ep={ep}: DeepSpeed sets expert parallelism in model code (deepspeed.moe.layer.MoE ep_size), not in its "
    "JSON config; nearest expressible plan: ep=1",
    lambda c, s: s.ep == 1, frameworks=("deepspeed",))
DS_VIRTUAL = Rule(  # deepspeed/runtime/pipe/schedule.py: TrainSchedule is plain 1F1B
    "deepspeed_virtual", "virtual_stages", "DeepSpeed has no interleaved schedule",
    "virtual_stages={virtual_stages}: DeepSpeed's pipeline engine has no interleaved schedule; nearest "
    "expressible plan: --virtual-stages 1",
    lambda c, s: s.virtual_stages == 1, frameworks=("deepspeed",))
DS_GPIPE = Rule(  # deepspeed/runtime/pipe/schedule.py: TrainSchedule is 1F1B
    "deepspeed_gpipe", "setting", "DeepSpeed runs 1F1B, not GPipe",
    "DeepSpeed's pipeline engine runs 1F1B, not GPipe; nearest expressible plan: --schedule 1f1b",
    lambda c, s: s.pipeline_schedule != "gpipe", frameworks=("deepspeed",))
DS_FP8 = Rule(  # deepspeed/runtime/config.py: fp16 and bf16 sections, no fp8
    "deepspeed_fp8", "setting", "DeepSpeed's config has no FP8",
    "DeepSpeed's config has no FP8 training; nearest expressible plan: --precision bf16",
    lambda c, s: s.precision != "fp8", frameworks=("deepspeed",))
FP16_GRADS = Rule(  # megatron/core/optimizer/__init__.py, deepspeed/runtime/fp16/fused_optimizer.py: fp32 grads
    "fp16_grads_fp32_copy", "setting", "fp16 training keeps fp32 gradients",
    "{framework_name} keeps an fp32 copy of fp16 gradients for the optimizer (20 B/param before sharding); "
    "nearest expressible plan: --grads fp32",
    lambda c, s: not (s.precision == "fp16" and not s.fp32_grads), frameworks=("megatron", "deepspeed"))
TT_ZERO1 = Rule(  # torchtitan/distributed/parallel_dims.py: FSDP2 shards parameters, gradients and states
    "torchtitan_zero1", "zero_stage", "torchtitan has no ZeRO-1", _tt_zero1,
    lambda c, s: s.zero_stage != 1, frameworks=("torchtitan",))
TT_OFFLOAD = Rule(  # torchtitan/config/job_config.py: training.enable_cpu_offload offloads everything
    "torchtitan_offload", "offload", "torchtitan offloads parameters, gradients and states together",
    "torchtitan offloads parameters, gradients and optimizer states together (training.enable_cpu_offload); "
    "nearest expressible plan: ZeRO-3 with --offload-params",
    lambda c, s: not (s.offload_optimizer and not s.offload_params), frameworks=("torchtitan",))
TT_FP16 = Rule(  # torchtitan/config/job_config.py: mixed_precision_param is bfloat16 or float32
    "torchtitan_fp16", "setting", "torchtitan trains in bf16 or fp32",
    "torchtitan trains in bf16 or fp32 (no fp16 loss scaling); nearest expressible plan: --precision bf16",
    lambda c, s: s.precision != "fp16", frameworks=("torchtitan",))
TT_ADAM = Rule(  # torchtitan/components/optimizer.py: Adam and AdamW
    "torchtitan_adam", "setting", "torchtitan builds Adam or AdamW only",
    "torchtitan builds Adam or AdamW only; nearest expressible plan: --optimizer adam",
    lambda c, s: s.optimizer == "adam", frameworks=("torchtitan",))
TT_FLASH = Rule(  # torchtitan/models/attention.py: SDPA or flex attention
    "torchtitan_flash", "setting", "torchtitan always uses fused attention",
    "torchtitan's models always use fused (SDPA/flex) attention; nearest expressible plan: flash attention",
    lambda c, s: s.flash_attention, frameworks=("torchtitan",))
TT_SP = Rule(  # torchtitan/models/llama3/infra/parallelize.py: tensor parallel plans shard the sequence too
    "torchtitan_sequence_parallel", "tp", "torchtitan's tensor parallelism always uses sequence parallelism",
    "torchtitan's tensor parallelism always uses sequence parallelism; nearest: --sequence-parallel",
    lambda c, s: not (s.tp > 1 and not s.sequence_parallel), frameworks=("torchtitan",))
def _tt_ep_ok(s) -> bool:
    """torchtitan/config/job_config.py (Parallelism.expert_parallel_degree): with expert TP = tp, ep is carved
    from the FSDP-sharded x cp ranks (ep % cp == 0, dp_shard x cp % ep == 0); with expert TP 1, from the
    FSDP-sharded x cp x tp ranks (ep % (cp x tp) == 0, dp_shard x cp x tp % ep == 0); no other expert TP."""
    if s.ep == 1:
        return True
    shard, etp = (s.dp if s.zero_stage >= 2 else 1), _etp(s)
    if etp == s.tp:
        return s.ep % s.cp == 0 and (shard * s.cp) % s.ep == 0
    return etp == 1 and s.ep % (s.cp * s.tp) == 0 and (shard * s.cp * s.tp) % s.ep == 0


TT_EP = Rule(  # torchtitan/distributed/parallel_dims.py and config/job_config.py: ep from dp_shard x cp (x tp)
    "torchtitan_ep", "zero_stage", "torchtitan carves ep from the FSDP-sharded and context-parallel ranks "
    "(and the tp ranks with expert TP 1)",
    "ep={ep}: torchtitan carves expert parallelism out of the FSDP-sharded and context-parallel ranks "
    "({shard_cp} here), or with expert TP 1 out of those and the tp ranks; nearest expressible plan: ZeRO-3 "
    "(FSDP), --expert-tp 1 or ep=1",
    lambda c, s: _tt_ep_ok(s), frameworks=("torchtitan",))

DEEPEP = Rule(  # megatron/core/transformer/moe/token_dispatcher.py: DeepEP is Megatron-core's flex dispatcher
    "deepep_megatron", "setting", "DeepEP dispatch is a Megatron-core setting",
    "{framework_name} has no DeepEP token dispatcher setting (Megatron-core's --moe-token-dispatcher-type "
    "flex); nearest expressible plan: --moe-dispatcher alltoall",
    lambda c, s: getattr(s, "moe_dispatcher", "alltoall") == "alltoall", frameworks=("torchtitan", "deepspeed"))
TP_OVERLAP = Rule(  # megatron/training/arguments.py: --tp-comm-overlap needs Transformer Engine and sequence parallel
    "tp_comm_overlap", "setting", "tensor-parallel overlap is Megatron-LM's (Transformer Engine userbuffers)",
    "{framework_name} has no Transformer Engine userbuffers overlap of tensor-parallel collectives "
    "(Megatron-LM --tp-comm-overlap); nearest expressible plan: without --tp-comm-overlap",
    lambda c, s: not getattr(s, "tp_comm_overlap", False), frameworks=("torchtitan", "deepspeed"))

TT_CHUNKS = Rule(  # torchtitan/distributed/pipeline_parallel.py: every model part holds transformer layers
    "torchtitan_chunk_layers", "virtual_stages", "torchtitan's model parts each hold a layer",
    "virtual_stages={virtual_stages}: torchtitan's pipeline model parts each hold transformer layers (no part of "
    "only the embedding or the loss), {pp_v} parts for {layers} layers; nearest expressible plan: fewer "
    "virtual stages",
    lambda c, s: s.virtual_stages == 1 or c.model is None or (c.model.layers >= s.pp * s.virtual_stages and (
        getattr(s, "stage_layers", None) is None or min(s.stage_layers) >= s.virtual_stages)),
    frameworks=("torchtitan",))

LORA = Rule(  # Megatron-LM, torchtitan and DeepSpeed configs have no LoRA setting (NeMo / PEFT add it in code)
    "lora", "setting", "LoRA fine-tuning is set in model code, not in this framework's config",
    "{framework_name} has no LoRA setting in its config (NeMo's PEFT or Hugging Face PEFT add adapters in "
    "model code); nearest expressible plan: full training, without --lora-rank",
    lambda c, s: getattr(s, "lora_rank", None) is None, frameworks=("megatron", "torchtitan", "deepspeed"))

TT_FP8_RECIPE = Rule(  # torchtitan/components/quantization/float8.py: torchao Float8Linear's tensorwise recipe
    "torchtitan_fp8_recipe", "setting", "torchtitan's float8 converter scales per tensor",
    "torchtitan's float8 converter scales per tensor (tensorwise); nearest expressible plan: --fp8-recipe tensorwise",
    lambda c, s: getattr(s, "fp8_recipe", None) in (None, "tensorwise"), frameworks=("torchtitan",))

A2A_OVERLAP = Rule(  # megatron/core/pipeline_parallel: the overlapped MoE schedule is Megatron-core's
    "moe_a2a_overlap", "setting", "MoE all-to-all overlap is Megatron-core's",
    "{framework_name} has no overlapped MoE all-to-all schedule (Megatron-core --overlap-moe-expert-parallel-comm); "
    "nearest expressible plan: without --moe-a2a-overlap",
    lambda c, s: not getattr(s, "moe_a2a_overlap", False), frameworks=("torchtitan", "deepspeed"))

DUALPIPE = Rule(  # DeepSeek-V3 report 3.2.1: DualPipe is HAI-LLM's; Megatron-LM and DeepSpeed schedule 1F1B
    "dualpipe", "setting", "DualPipe is DeepSeek's own schedule",
    "{framework_name} has no DualPipe schedule (DeepSeek's, HAI-LLM; torchtitan's DualPipeV is a different, V-shaped "
    "schedule); nearest expressible plan: --schedule 1f1b",
    lambda c, s: getattr(s, "pipeline_schedule", "1f1b") != "dualpipe", frameworks=("megatron", "torchtitan", "deepspeed"))

# in the order each framework reports them (the first broken one is the reason)
FRAMEWORK_RULES: tuple[Rule, ...] = (
    MG_PARAM_OFFLOAD, MG_ZERO, MG_GPIPE, MG_OFFLOAD_ADAM, MG_ALIBI,
    NO_SELECTIVE, DS_TP, DS_CP, DS_EP, DS_VIRTUAL, DS_GPIPE, ZERO_PP, DS_FP8,
    TT_ZERO1, TT_OFFLOAD, TT_FP16, TT_ADAM, TT_FLASH, TT_SP, TT_EP, FP16_GRADS, DEEPEP, TP_OVERLAP, TT_CHUNKS, LORA, TT_FP8_RECIPE, A2A_OVERLAP, DUALPIPE)


def framework_rules(framework: str) -> tuple[Rule, ...]:
    """The restrictions `framework` adds to the training rules, in the order it reports them."""
    return tuple(r for r in FRAMEWORK_RULES if framework in r.frameworks)


def rules_at(framework: str | None = None) -> dict[str, tuple[Rule, ...]]:
    """The rules the search checks at every step: the training rules, and with a framework also the
    restrictions it adds (a search over the part of the space that framework can express)."""
    if framework is None:
        return AT_STEP
    if framework not in _AT_STEP_FOR:
        if framework not in TRAINING:
            raise ValueError(f"framework {framework!r} is not known; choose {', '.join(TRAINING)}")
        extra = [r for r in framework_rules(framework) if r not in TRAINING_RULES]
        _AT_STEP_FOR[framework] = {s: tuple(r for r in AT_STEP[s] if framework in r.frameworks)
                                   + tuple(r for r in extra if r.step == s) for s in STEPS}
    return _AT_STEP_FOR[framework]


_AT_STEP_FOR: dict[str, dict[str, tuple[Rule, ...]]] = {}


def setting_problem(framework: str, model: ModelSpec, st) -> str | None:
    """What `framework` cannot run in the plan's whole-run settings (precision, optimizer, schedule, the
    model): no other structure helps, so searching again is pointless; None if the settings are fine."""
    ctx = Context(model)
    rule = first_broken([r for r in framework_rules(framework) if r.step == "setting"], ctx, st)
    return None if rule is None else rule.error(ctx, st, framework)


def framework_problem(framework: str, model: ModelSpec, st) -> str | None:
    """Why `framework` cannot express `st` (the first of its rules it breaks, naming the nearest plan), or None."""
    ctx = Context(model)
    rule = first_broken(framework_rules(framework), ctx, st)
    return None if rule is None else rule.error(ctx, st, framework)


# ---- serving engines ----------------------------------------------------------------------------------

SERVE_TP_HEADS = Rule(  # vllm/config.py verify_with_parallel_config: attention heads divisible by tp
    "serve_tp_heads", "tp", "tp must divide the attention heads",
    "tp={tp} does not divide the {heads} attention heads of {model}; choose a tp that divides them",
    lambda c, s: c.model.heads % s.tp == 0, frameworks=SERVING)
SERVE_REPLICAS = Rule(  # vllm/engine/arg_utils.py: --data-parallel-size replicas of tp x pp GPUs
    "serve_replicas", "pp_dp", "tp x pp must divide the GPUs (whole replicas)",
    "tp x pp = {tp} x {pp} does not divide the {num_gpus} GPUs",
    lambda c, s: c.num_gpus % (s.tp * s.pp) == 0, frameworks=SERVING)

DEPLOYMENT_RULES: tuple[Rule, ...] = (SERVE_TP_HEADS, PP_LAYERS, EP_MOE)   # one replica, wherever it runs
SHAPE_RULES: tuple[Rule, ...] = DEPLOYMENT_RULES + (SERVE_REPLICAS,)      # replicas filling a cluster


def deployment_problem(model: ModelSpec, dep, num_gpus: int | None = None) -> str | None:
    """The first serving rule a replica shape breaks (with num_gpus: also on that many GPUs), or None."""
    ctx = Context(model, num_gpus or 0)
    rule = first_broken(DEPLOYMENT_RULES if num_gpus is None else SHAPE_RULES, ctx, dep)
    return None if rule is None else rule.error(ctx, dep, "vllm")


class _Shape:
    __slots__ = ("tp", "pp", "ep")

    def __init__(self, tp: int, pp: int, ep: int) -> None:
        self.tp, self.pp, self.ep = tp, pp, ep


def shape_ok(model: ModelSpec, tp: int, pp: int, num_gpus: int | None = None, ep: int = 1) -> bool:
    """Whether the serving rules allow a tp x pp replica (with num_gpus: replicas filling that many GPUs)."""
    ctx = Context(model, num_gpus or 0)
    return first_broken(DEPLOYMENT_RULES if num_gpus is None else SHAPE_RULES, ctx, _Shape(tp, pp, ep)) is None


def check_deployment(model: ModelSpec, dep, num_gpus: int | None = None) -> None:
    """Raise ServingError naming the first serving rule a replica shape breaks."""
    problem = deployment_problem(model, dep, num_gpus)
    if problem:
        raise ServingError(problem)
