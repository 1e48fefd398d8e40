"""The search and evaluate results as pydantic models: the JSON contract of `plan --format json`."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from costmodels.model import ModelSpec
from costmodels.performance import FIXED_BUFFER_BYTES
from hardware import Cluster
from planner.solve.evaluate import Headroom, PlanEvaluation

GB = 1e9


class Out(BaseModel):
    """Base of every JSON output document: unknown keys are refused."""
    model_config = ConfigDict(extra="forbid")


class ModelOut(Out):
    name: str
    params: int
    params_active: int
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    seq_len: int
    note: str | None = None


class ClusterOut(Out):
    gpu: str                        # "A100-80GB", or "A100-80GB+H100-SXM" for several pools
    num_gpus: int
    num_nodes: int
    gpus_per_node: int
    memory_gb_per_gpu: float        # the smallest pool's, when there are several
    # the network assumed across nodes: Gb/s per GPU, and the fabric above the leaves (GPUSpec.network_gbps)
    network_gbits_per_gpu: float | None = None
    network: str | None = None
    note: str | None = None
    pools: list[dict] | None = None  # several GPU pools: gpu, num_gpus, num_nodes, memory_gb_per_gpu each


class PlanOut(Out):
    rank: int
    strategy: dict
    step_time_s: float
    tokens_per_s: float
    tokens_per_s_per_gpu: float
    tflops_per_gpu: float
    mfu: float                         # PaLM convention: attention's scores and values counted in full
    hfu: float
    memory_gb: dict[str, float]
    stage_memory_gb: list[float]
    stage_time_ms: list[float]         # each pipeline stage's time for one micro-batch
    time_s: dict[str, float]
    fits: bool
    verdict: str                       # "fits, X GB to spare ..." or "does not fit: needs X GB of Y GB on stage k ..."
    spare_gb: float                    # GPU memory left on the most loaded GPU after any headroom; negative when over
    solver: dict
    stage_gpus: list[str] | None = None   # GPU type of each pipeline stage (several pools only)
    run: dict | None = None               # with --tokens: days, gpu_hours, cost_usd, energy_kwh of the run
    # the error of held-out predictions in the plan's regime and its structures no validated run used
    # (planner.solve.trust): regime, runs, median_abs_pct_error, p90_abs_pct_error, unvalidated
    trust: dict | None = None
    mfu_causal: float | None = None       # MFU counting only the causal half of attention (what the kernels run)


class SearchOut(Out):
    seconds: float
    candidates: int
    structures_solved: int
    cp_sat_calls: int
    memory_pruned: int               # structures visited and found unable to fit (others were bounded out)
    optimal: bool
    status: str
    gap: float
    removed_by_rule: dict[str, int]


class SearchResult(Out):
    model: ModelOut
    cluster: ClusterOut
    assumptions: dict
    plans: list[PlanOut]
    search: SearchOut | None = None


def model_out(model: ModelSpec, note: str | None = None) -> ModelOut:
    return ModelOut(name=model.name, params=model.params_total(), params_active=model.params_active(),
                    layers=model.layers, hidden=model.hidden, heads=model.heads, kv_heads=model.kv_heads,
                    seq_len=model.seq_len, note=note)


def _note(c: Cluster) -> str | None:
    """The cluster's note (alias resolution, rack-scale domains) and the warning for a GPU family without
    fitted constants (costmodels.calibration.calibration_note)."""
    from costmodels.calibration import calibration_note
    notes = [n for n in (c.note, calibration_note(c.gpu.family, c.gpu.name)) if n]
    return "; ".join(notes) or None


def cluster_out(cluster: Cluster | tuple[Cluster, ...]) -> ClusterOut:
    pools = cluster if isinstance(cluster, tuple) else (cluster,)
    if len(pools) == 1:
        c = pools[0]
        g = c.gpu
        fabric = ("non-blocking" if g.leaf_gpus is None or g.network_oversubscription == 1 else
                  f"{g.network_oversubscription:g}:1 oversubscribed above leaves of {g.leaf_gpus} GPUs")
        return ClusterOut(gpu=g.name, num_gpus=c.num_gpus, num_nodes=c.num_nodes, gpus_per_node=c.gpus_per_node,
                          memory_gb_per_gpu=g.memory_bytes / GB, network_gbits_per_gpu=8 * g.inter_node_gbps,
                          network=f"{8 * g.inter_node_gbps:g} Gb/s per GPU across nodes, {fabric}", note=_note(c))
    notes = "; ".join(n for n in dict.fromkeys(_note(c) for c in pools) if n) or None
    return ClusterOut(gpu="+".join(c.gpu.name for c in pools), num_gpus=sum(c.num_gpus for c in pools),
                      num_nodes=sum(c.num_nodes for c in pools), gpus_per_node=min(c.gpus_per_node for c in pools),
                      memory_gb_per_gpu=min(c.gpu.memory_bytes for c in pools) / GB, note=notes,
                      pools=[{"gpu": c.gpu.name, "num_gpus": c.num_gpus, "num_nodes": c.num_nodes,
                              "memory_gb_per_gpu": c.gpu.memory_bytes / GB} for c in pools])


FRAMEWORK_ACCOUNTING = {
    "megatron": "Megatron-core accounting (distributed optimizer, fp32 gradient buffer, fused kernels; "
                "selective = attention-core recompute)",
    "torchtitan": "torchtitan FSDP2 accounting (fp32 parameter shards are the master weights, bf16 gathers per "
                  "block, no gradients alive at the loss, eager loss in fp32; selective = per-op AC)",
    "deepspeed": "DeepSpeed accounting (BF16_Optimizer for ZeRO-0/1; ZeRO-2/3 keep 16-bit gradients and an fp32 "
                 "gradient partition, default reduce/prefetch buckets)",
}


def assumptions(model: ModelSpec, global_batch: int, precision: str, optimizer: str, flash: bool,
                fp32_grads: bool = True, headroom: Headroom | None = None, framework: str = "megatron") -> dict:
    from costmodels.memory import state_bytes_per_param

    sb = state_bytes_per_param(precision, optimizer, fp32_grads, framework)
    return {
        "framework": FRAMEWORK_ACCOUNTING[framework],
        "seq_len": model.seq_len,
        "global_batch_sequences": global_batch,
        "tokens_per_step": global_batch * model.seq_len,
        "precision": precision,
        "optimizer": (f"{optimizer}, {sb.weights:g}+{sb.gradients:g}+{sb.optimizer:g} B/param weights+grads+states "
                      f"before ZeRO, {sb.reduce * 8:g}-bit gradient reduction"),
        "gradients": ("fp32 for the optimizer (Megatron-LM default)" if fp32_grads and precision != "fp32"
                      else "16-bit (ZeRO paper accounting)" if precision != "fp32" else "fp32"),
        "flash_attention": flash,
        "memory_capacity": "datasheet GB x 1e9 bytes per GPU (the GiB/GB difference is headroom)",
        "reserved_buffers_gb": FIXED_BUFFER_BYTES / GB,
        "headroom": (headroom or Headroom()).describe(),
        "rank_order": "tp innermost, then cp, dp, pp (Megatron); tp stays inside a node",
        "dp_overlap": ("gradient sync overlaps the last micro-batch's backward (Megatron's distributed optimizer: "
                       "its reduce-scatter there, the weight all-gather behind the next step's forward)"),
    }


def plan_out(rank: int, ev: PlanEvaluation, solver: dict) -> PlanOut:
    st = ev.strategy
    v = ev.verdict
    d = st.as_dict()
    d["stage_layers"] = list(ev.stage_layers)
    d["recompute_layers"] = list(ev.recompute_layers)
    n = st.num_gpus
    mem = {k: round(v / GB, 3) for k, v in ev.memory_b.items()}
    mem["capacity"] = round(ev.capacity_b / GB, 3)
    return PlanOut(
        rank=rank, strategy=d, step_time_s=ev.step_time_s, tokens_per_s=ev.tokens_per_s,
        tokens_per_s_per_gpu=ev.tokens_per_s / n, tflops_per_gpu=ev.tflops_per_gpu, mfu=ev.mfu, hfu=ev.hfu,
        memory_gb=mem, stage_memory_gb=[round(x / GB, 3) for x in ev.stage_memory_b],
        stage_time_ms=[round(t * 1e3, 3) for t in ev.stage_time_s],
        time_s=dict(ev.time_s), fits=ev.fits, verdict=v.text(), spare_gb=round(v.spare_b / GB, 3), solver=solver,
        stage_gpus=list(ev.stage_gpus) if len(set(ev.stage_gpus)) > 1 else None, mfu_causal=ev.mfu_causal)


def with_trust(plan: PlanOut, ev: PlanEvaluation, model: ModelSpec, cluster) -> PlanOut:
    """The plan with its trust figures (planner.solve.trust) for the GPU family of its slowest stage."""
    from planner.solve.trust import trust
    pools = cluster if isinstance(cluster, tuple) else (cluster,)
    fam = next((c.gpu.family for c in pools if c.gpu.name == (ev.stage_gpus or [pools[0].gpu.name])[0]),
               pools[0].gpu.family)
    plan.trust = trust(fam, ev.strategy.precision, model.moe is not None, ev.strategy)
    return plan


def build_result(model, cluster, opts, evaluations, layouts, seconds, stats, model_note=None) -> SearchResult:
    plans = [with_trust(plan_out(i + 1, ev, {"status": "OPTIMAL" if lay.optimal else "FEASIBLE",
                                             "gap": lay.gap if lay.gap != float("inf") else None}), ev, model, cluster)
             for i, (ev, lay) in enumerate(zip(evaluations, layouts))]
    space = stats["space"]
    search = SearchOut(
        seconds=seconds, candidates=stats["structures"], structures_solved=stats["layouts_solved"],
        cp_sat_calls=stats["cp_sat_calls"], memory_pruned=stats["memory_pruned"], optimal=stats["optimal"],
        status="OPTIMAL" if stats["optimal"] else "FEASIBLE", gap=stats["gap"],
        removed_by_rule=dict(sorted(space.removed.items())))
    return SearchResult(model=model_out(model, model_note), cluster=cluster_out(cluster),
                        assumptions=assumptions(model, opts.global_batch, opts.precision, opts.optimizer,
                                                opts.flash_attention, opts.fp32_grads, opts.headroom,
                                                opts.framework or "megatron"),
                        plans=plans, search=search)


def describe_strategy(s: dict) -> str:
    parts = [f"TP {s['tp']} x PP {s['pp']} x DP {s['dp']}"]
    if s.get("cp", 1) > 1:
        parts[0] += f" x CP {s['cp']}"
    if s.get("ep", 1) > 1:    # the experts' own split (parallel folding when expert TP is set apart)
        parts[0] += f", experts EP {s['ep']}" + (f" x expert TP {s['expert_tp']}" if s.get("expert_tp") else "")
        if s.get("moe_dispatcher") == "deepep":
            parts[0] += " (DeepEP dispatch)"
    if s.get("lora_rank"):
        parts.insert(0, f"LoRA rank {s['lora_rank']} (base weights frozen)")
    parts.append(f"micro-batch {s['micro_batch']} ({s['micro_batches']} per step)")
    if s["virtual_stages"] > 1:
        parts.append(f"interleaved 1F1B, {s['virtual_stages']} chunks per stage")
    elif s.get("pipeline_schedule") in ("gpipe", "dualpipe") and s["pp"] > 1:
        parts.append({"gpipe": "GPipe schedule", "dualpipe": "DualPipe schedule"}[s["pipeline_schedule"]])
    if s.get("moe_a2a_overlap"):
        parts.append("MoE all-to-all overlapped")
    parts.append(zero_label(s["zero_stage"]))
    if s.get("offload_params"):
        parts.append("weights and optimizer states in CPU memory")
    elif s.get("offload_optimizer"):
        parts.append("optimizer states in CPU memory (CPU Adam)")
    if s.get("precision") != "fp32" and s.get("fp32_grads") is False:
        parts.append("16-bit gradients")
    parts.append(recompute_label(s))
    if s["sequence_parallel"]:
        parts.append("sequence parallel" + (" with TP communication overlap" if s.get("tp_comm_overlap") else ""))
    return ", ".join(parts)


def zero_label(z: int) -> str:
    return {0: "no ZeRO", 1: "ZeRO-1 (distributed optimizer)", 2: "ZeRO-2", 3: "ZeRO-3"}[z]


def recompute_label(s: dict) -> str:
    if s["recompute"] == "full" and s.get("recompute_layers") and s["recompute_layers"] != s["stage_layers"]:
        return "full recompute of " + "/".join(map(str, s["recompute_layers"])) + " layers per stage"
    if s["recompute"] == "selective" and s.get("recompute_modules"):
        return "selective recompute of " + ", ".join(s["recompute_modules"])
    return {"none": "no recompute", "selective": "selective recompute", "full": "full recompute"}[s["recompute"]]
