"""Export a plan as configuration the real training frameworks accept.

- `megatron`: Megatron-LM `pretrain_gpt.py` arguments (megatron_args.sh) and a torchrun launch.sh;
- `deepspeed`: a DeepSpeed JSON config (ds_config.json) and a `deepspeed` launch.sh;
- `torchtitan`: a TOML job config (job.toml, torchtitan v0.2.x: later releases take Python configs) and
  a torchrun launch.sh.

Flag and field names are the frameworks' own: Megatron-LM megatron/training/arguments.py (TransformerConfig
fields become flags through its ArgumentGroupFactory), DeepSpeed deepspeed/runtime/config.py and
runtime/zero/config.py, torchtitan v0.2.2 torchtitan/config/job_config.py. `export` raises ExportError,
naming the nearest expressible plan, for what a framework cannot express; a stage layout or recompute
count it cannot express exactly is replaced by the nearest one it can, and `Export.notes` says so and
gives that plan's predicted step time. `export_best` does the same for a search result, and when the
best plan cannot be expressed at all it searches again over the framework's part of the space.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from costmodels.model import ModelSpec
from costmodels.performance import evaluate, resolve_layout
from costmodels.strategy import Strategy
from hardware import Cluster

FRAMEWORKS = ("megatron", "deepspeed", "torchtitan")
NAMES = {"megatron": "Megatron-LM", "deepspeed": "DeepSpeed", "torchtitan": "torchtitan"}
_PLAN_ONLY = ("micro_batches", "schedule")   # PlanOut.strategy keys that are not Strategy fields
RESEARCH_TOP = 5        # plans of the framework-restricted search re-ranked by their expressible layout
TORCHTITAN_FLAVORS = {"llama3-8b": ("llama3", "8B"), "llama3-70b": ("llama3", "70B"),
                      "llama3-405b": ("llama3", "405B")}   # torchtitan/models/llama3/__init__.py


class ExportError(ValueError):
    """A plan the framework cannot express; the message names the nearest plan it can."""


@dataclass(frozen=True)
class Export:
    framework: str
    strategy: Strategy                 # the plan written: the one asked for, or its nearest expressible form
    files: dict[str, str]              # file name -> content
    notes: tuple[str, ...] = ()        # what changed to make the plan expressible, and what to fill in
    step_time_s: float | None = None   # predicted step time of `strategy`
    fits: bool = True

    def text(self) -> str:
        return "\n".join(f"# ---- {name} ----\n{body.rstrip()}\n" for name, body in self.files.items())

    def as_json(self) -> dict:
        st = self.strategy.as_dict()
        return {"framework": self.framework, "strategy": st, "step_time_s": self.step_time_s, "fits": self.fits,
                "notes": list(self.notes), "files": dict(self.files)}

    def write(self, out_dir: str | Path) -> list[Path]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, body in self.files.items():
            p = out / name
            p.write_text(body)
            if name.endswith(".sh"):
                p.chmod(0o755)
            paths.append(p)
        return paths


# ---- strategies: from a plan, canonical form ----------------------------------------------------

def strategy_from_plan(d: dict) -> Strategy:
    """The Strategy of a PlanOut.strategy dict (as_dict plus the layout lists)."""
    kw = {k: v for k, v in d.items() if k not in _PLAN_ONLY}
    for key in ("stage_layers", "recompute_layers"):
        if kw.get(key) is not None:
            kw[key] = tuple(kw[key])
    if kw.get("recompute") != "full":
        kw["recompute_layers"] = None
    return Strategy(**kw)


def canonical(model: ModelSpec, st: Strategy) -> Strategy:
    """One spelling per plan: explicit layers per stage; recompute 'none' when nothing is recomputed and
    no per-stage list when every layer is (performance.resolve_layout gives the same layout)."""
    Ls, Rs = resolve_layout(model, st)
    if st.recompute == "full":
        if not any(Rs):
            return st.with_(recompute="none", stage_layers=tuple(Ls), recompute_layers=None)
        return st.with_(stage_layers=tuple(Ls), recompute_layers=None if Rs == Ls else tuple(Rs))
    return st.with_(stage_layers=tuple(Ls), recompute_layers=None)


def _with_recompute(st: Strategy, Ls: list[int], Rs: list[int]) -> Strategy:
    if not any(Rs):
        return st.with_(recompute="none", stage_layers=tuple(Ls), recompute_layers=None)
    return st.with_(recompute="full", stage_layers=tuple(Ls), recompute_layers=None if Rs == Ls else tuple(Rs))


def chunks(L: int, v: int) -> list[int]:
    """A stage's layers over its v interleaved model chunks, as even as possible (earlier chunks first);
    Megatron's own uneven-stage flags split a stage evenly (they require L % v == 0)."""
    base, extra = divmod(L, v)
    return [base + (1 if c < extra else 0) for c in range(v)]


def deepspeed_split(layers: int, pp: int) -> list[int]:
    """Transformer layers per stage of DeepSpeed's PipelineModule with partition_method='type:<layer class>':
    partition_balanced over unit weights, which equals partition_uniform (deepspeed/runtime/utils.py):
    the first `layers % pp` stages get one more."""
    base, extra = divmod(layers, pp)
    return [base + (1 if i < extra else 0) for i in range(pp)]


# ---- what each framework can express --------------------------------------------------------------

def _fp16_grads(name: str, st: Strategy) -> str | None:
    if st.precision == "fp16" and not st.fp32_grads:
        return (f"{name} keeps an fp32 copy of fp16 gradients for the optimizer (20 B/param before sharding); "
                f"nearest expressible plan: --grads fp32")
    return None


def unsupported(framework: str, model: ModelSpec, st: Strategy) -> str | None:
    """Why `framework` cannot run this plan at all (with the nearest plan it can), or None."""
    _check_framework(framework)
    name = NAMES[framework]
    if framework == "megatron":
        if st.offload_params:
            return ("parameter offload cannot be expressed in Megatron-LM (it offloads only the optimizer, "
                    "--optimizer-cpu-offload); nearest expressible plan: ZeRO-1 with optimizer offload")
        if st.zero_stage >= 2:
            return (f"ZeRO-{st.zero_stage} cannot be expressed in Megatron-LM arguments (its distributed optimizer "
                    f"is ZeRO-1); nearest expressible plan: ZeRO-1, e.g. rerun with --zero 0,1")
        if st.pipeline_schedule == "gpipe":
            return "Megatron-LM has no GPipe schedule; nearest expressible plan: --schedule 1f1b"
        if st.offload_optimizer and st.optimizer != "adam":
            return ("Megatron-LM offloads only an Adam optimizer (--optimizer-cpu-offload); nearest expressible "
                    "plan: no offload")
        if model.position_embedding == "alibi":
            return "Megatron-LM's GPT model has no ALiBi position embedding (rope or learned_absolute only)"
        return _fp16_grads(name, st)
    if st.recompute == "selective":
        return (f"{name} has no selective (attention-core) recompute setting; nearest expressible plans: "
                f"--recompute none (with flash attention it stores the same activations) or --recompute full")
    if framework == "deepspeed":
        if st.tp > 1:
            return (f"tp={st.tp}: tensor parallelism needs Megatron-DeepSpeed, not a DeepSpeed JSON config; "
                    f"nearest expressible plan: tp=1 (rerun with --tp 1), or use --emit megatron")
        if st.cp > 1:
            return (f"cp={st.cp}: DeepSpeed has no ring-attention context parallelism (Ulysses is another scheme); "
                    f"nearest expressible plan: cp=1")
        if st.ep > 1:
            return (f"ep={st.ep}: DeepSpeed sets expert parallelism in model code (deepspeed.moe.layer.MoE ep_size), "
                    f"not in its JSON config; nearest expressible plan: ep=1")
        if st.virtual_stages > 1:
            return (f"virtual_stages={st.virtual_stages}: DeepSpeed's pipeline engine has no interleaved schedule; "
                    f"nearest expressible plan: --virtual-stages 1")
        if st.pipeline_schedule == "gpipe":
            return "DeepSpeed's pipeline engine runs 1F1B, not GPipe; nearest expressible plan: --schedule 1f1b"
        if st.zero_stage >= 2 and st.pp > 1:
            return f"DeepSpeed cannot combine ZeRO-{st.zero_stage} with pipeline parallelism; nearest: ZeRO-1"
        if st.precision == "fp8":
            return "DeepSpeed's config has no FP8 training; nearest expressible plan: --precision bf16"
        return _fp16_grads(name, st)
    # torchtitan v0.2.x
    if st.zero_stage == 1:
        nearest = "--zero 0" if st.pp > 1 else "--zero 2 (FSDP2 without resharding after forward)"
        return (f"ZeRO-1 cannot be expressed in torchtitan (FSDP2 shards gradients too); nearest expressible "
                f"plan: {nearest}")
    if st.offload_optimizer and not st.offload_params:
        return ("torchtitan offloads parameters, gradients and optimizer states together "
                "(training.enable_cpu_offload); nearest expressible plan: ZeRO-3 with --offload-params")
    if st.precision == "fp16":
        return "torchtitan trains in bf16 or fp32 (no fp16 loss scaling); nearest expressible plan: --precision bf16"
    if st.optimizer != "adam":
        return "torchtitan builds Adam or AdamW only; nearest expressible plan: --optimizer adam"
    if not st.flash_attention:
        return "torchtitan's models always use fused (SDPA/flex) attention; nearest expressible plan: flash attention"
    if st.tp > 1 and not st.sequence_parallel:
        return "torchtitan's tensor parallelism always uses sequence parallelism; nearest: --sequence-parallel"
    shard_cp = (st.dp if st.zero_stage >= 2 else 1) * st.cp
    if st.ep > 1 and shard_cp % st.ep:
        return (f"ep={st.ep}: torchtitan carves expert parallelism out of the FSDP-sharded and context-parallel "
                f"ranks ({shard_cp} here); nearest expressible plan: ZeRO-3 (FSDP) or ep=1")
    return None


def space_for(framework: str, opts):
    """The part of a search space (planner.solve.space.SpaceOptions) that `framework` can express."""
    _check_framework(framework)
    no_selective = tuple(r for r in opts.recompute if r != "selective") or ("none", "full")
    if framework == "megatron":
        return replace(opts, zero_stage=tuple(z for z in opts.zero_stage if z <= 1) or (0, 1),
                       offload=tuple(o for o in opts.offload if o != "optimizer+params") or ("none",))
    if framework == "deepspeed":
        return replace(opts, tp=(1,), cp=(1,), ep=(1,), virtual_stages=(1,), recompute=no_selective)
    return replace(opts, zero_stage=tuple(z for z in opts.zero_stage if z != 1) or (0, 2, 3),
                   offload=tuple(o for o in opts.offload if o != "optimizer") or ("none",), recompute=no_selective)


def nearest_layout(framework: str, model: ModelSpec, st: Strategy) -> tuple[Strategy, list[str]]:
    """The plan with its stage layout and recompute counts made expressible, and what changed."""
    st = canonical(model, st)
    Ls, Rs = resolve_layout(model, st)
    new_Ls, new_Rs, notes = list(Ls), list(Rs), []
    if framework == "megatron":
        if st.recompute == "full" and st.recompute_layers is not None:
            N = megatron_recompute_layers(Ls, Rs, st.virtual_stages)
            new_Rs = megatron_recomputed(Ls, st.virtual_stages, N)
            if new_Rs != Rs:
                notes.append(f"Megatron applies one --recompute-num-layers to every pipeline stage (per model chunk): "
                             f"the plan's fully recomputed layers per stage {Rs} become {new_Rs} (N = {N}, the fewest "
                             f"that recompute at least the plan's count in every stage)")
    else:
        if 0 < sum(Rs) < sum(Ls):
            notes.append(f"{NAMES[framework]} recomputes every layer or none: the plan's fully recomputed layers per "
                         f"stage {Rs} become all layers")
            new_Rs = list(Ls)
        if framework == "deepspeed" and st.pp > 1 and Ls != deepspeed_split(model.layers, st.pp):
            new_Ls = deepspeed_split(model.layers, st.pp)
            notes.append(f"DeepSpeed's PipelineModule balances the transformer layers: layers per stage {Ls} "
                         f"become {new_Ls}")
            new_Rs = list(new_Ls) if new_Rs == Ls else [0] * st.pp
    if (new_Ls, new_Rs) == (Ls, Rs):
        return st, notes
    if st.recompute != "full":
        return st.with_(stage_layers=tuple(new_Ls)), notes
    return _with_recompute(st, new_Ls, new_Rs), notes


def megatron_recomputed(Ls: list[int], v: int, N: int) -> list[int]:
    """Layers recomputed per stage by --recompute-method block --recompute-num-layers N: the first N layers
    of every model chunk (megatron/core/transformer/transformer_block.py, _checkpointed_forward)."""
    return [sum(min(N, c) for c in chunks(L, v)) for L in Ls]


def megatron_recompute_layers(Ls: list[int], Rs: list[int], v: int) -> int:
    """The N that gives exactly Rs, else the smallest N that recomputes at least Rs in every stage."""
    top = max(max(chunks(L, v)) for L in Ls)
    for N in range(1, top + 1):
        got = megatron_recomputed(Ls, v, N)
        if got == Rs:
            return N
    return next(N for N in range(1, top + 1) if all(g >= r for g, r in zip(megatron_recomputed(Ls, v, N), Rs)))


# ---- emitters ------------------------------------------------------------------------------------

def export(framework: str, model: ModelSpec, st: Strategy, cluster: Cluster) -> Export:
    """Configuration files for `framework` running `st`; ExportError if it cannot express the plan."""
    _check_framework(framework)
    if isinstance(cluster, tuple):
        if len(cluster) > 1:
            raise ExportError("export needs one GPU type; a cluster of several GPU pools cannot be written as one "
                              "framework config")
        cluster = cluster[0]
    reason = unsupported(framework, model, st)
    if reason:
        raise ExportError(reason)
    asked = canonical(model, st)
    st, notes = nearest_layout(framework, model, st)
    ev = evaluate(model, st, cluster)
    if st != asked:
        before = evaluate(model, asked, cluster).step_time_s
        notes.append(f"predicted step time of the plan written: {ev.step_time_s:.3f} s (the plan asked for: "
                     f"{before:.3f} s, {100 * (ev.step_time_s / before - 1):+.1f}%)"
                     + ("" if ev.fits else "; it does NOT fit in GPU memory"))
    files = {"megatron": _megatron_files, "deepspeed": _deepspeed_files, "torchtitan": _torchtitan_files}[framework](
        model, st, cluster, notes)
    return Export(framework, st, files, tuple(notes), ev.step_time_s, ev.fits)


def export_best(framework: str, model: ModelSpec, cluster: Cluster, result, opts, time_limit_s: float = 30.0) -> Export:
    """Export a search result's best plan; when `framework` cannot express it, search again over the part
    of the space it can (space_for) and export that plan, saying how much slower it is predicted to be."""
    from planner.solve.optimize import search

    best = strategy_from_plan(result.plans[0].strategy)
    reason = unsupported(framework, model, best)
    if not reason:
        return export(framework, model, best, cluster)
    again = search(model, cluster, top=RESEARCH_TOP, time_limit_s=time_limit_s, space=space_for(framework, opts))
    # the search chooses layouts freely; rank its best few again by the layout the framework can write
    options = [export(framework, model, strategy_from_plan(p.strategy), cluster) for p in again.plans]
    ex = min(options, key=lambda e: (not e.fits, e.step_time_s))
    t0, t1 = result.plans[0].step_time_s, ex.step_time_s
    note = (f"the best plan cannot be written for {NAMES[framework]}: {reason}. Written instead: the fastest "
            f"{NAMES[framework]}-expressible plan among the best {len(options)} of a search over that part of the "
            f"space, predicted {t1:.3f} s per step vs {t0:.3f} s ({100 * (t1 / t0 - 1):+.1f}%)")
    first = next(k for k in ex.files if not k.endswith(".json"))   # JSON has no comments
    files = {k: _prepend_note(v, note) if k == first else v for k, v in ex.files.items()}
    return replace(ex, files=files, notes=(note, *ex.notes))


def _prepend_note(body: str, note: str) -> str:
    first, _, rest = body.partition("\n")
    if first.startswith("#!"):
        return f"{first}\n# NOTE: {note}\n{rest}"
    return f"# NOTE: {note}\n{body}"


def _header(model: ModelSpec, st: Strategy, cluster: Cluster, what: str, notes: list[str]) -> list[str]:
    from planner.solve.result import describe_strategy
    lines = [f"# {what} for {model.name} on {cluster.describe()}, written by llm-planner (plan --emit)",
             f"# plan: {describe_strategy(st.as_dict())}"]
    return lines + [f"# note: {n}" for n in notes]


def _bash_array(name: str, args: list[list[str]]) -> str:
    def q(tok: str) -> str:
        return f'"{tok}"' if any(ch in tok for ch in "|*()[]+ ") else tok
    body = "\n".join("    " + " ".join(q(t) for t in group) for group in args)
    return f"{name}=(\n{body}\n)\n"


def megatron_args(model: ModelSpec, st: Strategy) -> list[list[str]]:
    """pretrain_gpt.py arguments, grouped one setting per line (names: Megatron-LM arguments.py)."""
    a: list[list[str]] = [
        ["--num-layers", str(model.layers)], ["--hidden-size", str(model.hidden)],
        ["--ffn-hidden-size", str(model.ffn_hidden)], ["--num-attention-heads", str(model.heads)],
        ["--seq-length", str(model.seq_len)], ["--max-position-embeddings", str(model.seq_len)],
        ["--position-embedding-type", "rope" if model.position_embedding == "rope" else "learned_absolute"],
    ]
    if model.kv_heads != model.heads:
        a.append(["--group-query-attention", "--num-query-groups", str(model.kv_heads)])
    if model.ffn_type == "swiglu":
        a.append(["--swiglu"])
    if model.norm == "rmsnorm":
        a.append(["--normalization", "RMSNorm"])
    if not model.bias:
        a.append(["--disable-bias-linear"])
    if not model.tied_embeddings:
        a.append(["--untie-embeddings-and-output-weights"])
    if model.moe is not None:
        m = model.moe
        a.append(["--num-experts", str(m.experts), "--moe-router-topk", str(m.top_k),
                  "--moe-ffn-hidden-size", str(m.expert_ffn_hidden)])
        if m.shared_experts:
            a.append(["--moe-shared-expert-intermediate-size", str(m.shared_experts * m.expert_ffn_hidden)])
        if m.layer_freq > 1:   # our MoE layers are i with (i + 1) % freq == 0 (costmodels.model.is_moe_layer)
            a.append(["--moe-layer-freq", moe_layer_pattern(model)])
    a.append(["--tensor-model-parallel-size", str(st.tp), "--pipeline-model-parallel-size", str(st.pp)])
    if st.cp > 1:
        a.append(["--context-parallel-size", str(st.cp)])
    if st.ep > 1:
        a.append(["--expert-model-parallel-size", str(st.ep)])
    if st.sequence_parallel:
        a.append(["--sequence-parallel"])
    a += megatron_pipeline_flags(model, st)
    a.append(["--micro-batch-size", str(st.micro_batch), "--global-batch-size", str(st.global_batch)])
    a += _megatron_recompute_flags(model, st)
    if st.zero_stage == 1:
        a.append(["--use-distributed-optimizer"])
    if st.offload_optimizer:   # arguments.py: optimizer CPU offload needs the precision-aware optimizer
        a.append(["--optimizer-cpu-offload", "--optimizer-offload-fraction", "1.0", "--use-precision-aware-optimizer"])
    a.append(["--optimizer", st.optimizer])
    a.append({"bf16": ["--bf16"], "fp16": ["--fp16"], "fp8": ["--bf16", "--fp8-format", "hybrid"], "fp32": []}[st.precision])
    if not st.fp32_grads and st.precision in ("bf16", "fp8"):
        a.append(["--grad-reduce-in-bf16"])   # arguments.py: bf16 otherwise accumulates and reduces in fp32
    a.append(["--attention-backend", "flash" if st.flash_attention else "unfused"])
    return [g for g in a if g]


def moe_layer_pattern(model: ModelSpec) -> str:
    """--moe-layer-freq as a Python list expression, 1 = MoE layer (arguments.py moe_freq_type)."""
    f = model.moe.layer_freq
    full, rest = divmod(model.layers, f)
    return f"([0]*{f - 1}+[1])*{full}" + (f"+[0]*{rest}" if rest else "")


def megatron_pipeline_flags(model: ModelSpec, st: Strategy) -> list[list[str]]:
    """The stage layout: Megatron's even split, first/last stage flags, or --pipeline-model-parallel-layout
    (arguments.py: at most one of the layout, per-virtual-stage and virtual-stages flags)."""
    if st.pp == 1:
        return []
    Ls, v = list(st.stage_layers or resolve_layout(model, st)[0]), st.virtual_stages
    if len(set(Ls)) == 1 and Ls[0] % v == 0:
        return [["--num-layers-per-virtual-pipeline-stage", str(Ls[0] // v)]] if v > 1 else []
    first_last = _first_last(Ls, v)
    if first_last is not None:
        return ([["--num-virtual-stages-per-pipeline-rank", str(v)]] if v > 1 else []) + first_last
    return [["--pipeline-model-parallel-layout", megatron_layout_string(Ls, v)]]


def _first_last(Ls: list[int], v: int) -> list[list[str]] | None:
    """--decoder-first/last-pipeline-num-layers when only the first and/or last stage differ from equal
    middle stages, each a multiple of v (TransformerConfig.__post_init__ checks these)."""
    p = len(Ls)
    middle = Ls[1:-1]
    if p == 2:
        ok = Ls[0] % v == 0 and Ls[1] % v == 0
        return [["--decoder-first-pipeline-num-layers", str(Ls[0])]] if ok else None
    if len(set(middle)) != 1 or middle[0] % v or Ls[0] % v or Ls[-1] % v:
        return None
    out = []
    if Ls[0] != middle[0]:
        out.append(["--decoder-first-pipeline-num-layers", str(Ls[0])])
    if Ls[-1] != middle[0]:
        out.append(["--decoder-last-pipeline-num-layers", str(Ls[-1])])
    return out


def megatron_layout_string(Ls: list[int], v: int) -> str:
    """--pipeline-model-parallel-layout: one '|'-separated entry per (virtual) stage in the order chunk 0 of
    stages 0..p-1, then chunk 1, ...; E embedding, t a transformer layer, L loss; x*n and (..|)*n repeat,
    commas are cosmetic (megatron/core/transformer/pipeline_parallel_layer_layout.py, parse_str_to_list)."""
    p = len(Ls)
    entries = []
    for c in range(v):
        for i, L in enumerate(Ls):
            n = chunks(L, v)[c]
            s = ("E" if i == 0 and c == 0 else "") + (f"t*{n}" if n > 1 else "t")
            entries.append(s + ("L" if i == p - 1 and c == v - 1 else ""))
    runs: list[list] = []
    for e in entries:
        if runs and runs[-1][0] == e:
            runs[-1][1] += 1
        else:
            runs.append([e, 1])
    out = []
    for k, (e, n) in enumerate(runs):
        last = k == len(runs) - 1
        if last:
            out.append((f"({e}|)*{n - 1}" if n > 2 else f"{e}|" if n == 2 else "") + e)
        else:
            out.append(f"({e}|)*{n}" if n > 1 else f"{e}|")
    return ",".join(out)


def _megatron_recompute_flags(model: ModelSpec, st: Strategy) -> list[list[str]]:
    if st.recompute == "none":
        return []
    if st.recompute == "selective":   # Megatron's selective recompute is the attention core (core_attn)
        return [["--recompute-granularity", "selective"]]
    if st.recompute_layers is None:   # every layer: one checkpoint per layer
        return [["--recompute-granularity", "full", "--recompute-method", "uniform", "--recompute-num-layers", "1"]]
    Ls, Rs = resolve_layout(model, st)
    N = megatron_recompute_layers(Ls, Rs, st.virtual_stages)
    return [["--recompute-granularity", "full", "--recompute-method", "block", "--recompute-num-layers", str(N)]]


def _megatron_files(model: ModelSpec, st: Strategy, cluster: Cluster, notes: list[str]) -> dict[str, str]:
    head = _header(model, st, cluster, "Megatron-LM pretrain_gpt.py arguments", notes)
    args = _bash_array("MEGATRON_ARGS", megatron_args(model, st))
    launch = "\n".join([
        "#!/usr/bin/env bash",
        f"# Launch on {cluster.num_nodes} node(s) x {cluster.gpus_per_node} GPUs: run on every node with NODE_RANK and",
        "# MASTER_ADDR set, from the Megatron-LM checkout. Add your data, tokenizer and checkpoint arguments.",
        'source "$(dirname "$0")/megatron_args.sh"',
        f"torchrun --nnodes {cluster.num_nodes} --nproc-per-node {cluster.gpus_per_node} "
        '--node-rank "${NODE_RANK:-0}" --master-addr "${MASTER_ADDR:-localhost}" --master-port 6000 \\',
        '    pretrain_gpt.py "${MEGATRON_ARGS[@]}" "$@"', ""])
    return {"megatron_args.sh": "\n".join(head) + "\n" + args, "launch.sh": launch}


def deepspeed_config(model: ModelSpec, st: Strategy) -> dict:
    """A DeepSpeed JSON config (keys: deepspeed/runtime/config.py, zero/config.py, zero/offload_config.py)."""
    accum = st.micro_batches
    cfg: dict = {
        "train_batch_size": st.micro_batch * accum * st.dp,   # DeepSpeed asserts micro x accum x dp
        "train_micro_batch_size_per_gpu": st.micro_batch,
        "gradient_accumulation_steps": accum,
    }
    zero: dict = {"stage": st.zero_stage}
    if st.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if st.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    cfg["zero_optimization"] = zero
    if st.precision == "bf16":
        cfg["bf16"] = {"enabled": True}
        if not st.fp32_grads:   # the bf16 optimizer accumulates gradients in fp32 unless told (DeepSpeed PR 4713)
            cfg["data_types"] = {"grad_accum_dtype": "bf16"}
    elif st.precision == "fp16":
        cfg["fp16"] = {"enabled": True, "loss_scale": 0}   # 0 = dynamic loss scaling
    cfg["optimizer"] = {"type": "Adam" if st.optimizer == "adam" else "SGD"}
    if st.optimizer != "adam" and st.zero_stage:
        cfg["zero_allow_untested_optimizer"] = True   # torch.optim.SGD is not one of DeepSpeed's own
    if st.recompute == "full":
        # deepspeed.checkpointing settings for the model's checkpointed layers (tp = 1: nothing to partition)
        cfg["activation_checkpointing"] = {"partition_activations": False, "contiguous_memory_optimization": False,
                                           "cpu_checkpointing": False}
    if st.pp > 1:
        # read by the training script for PipelineModule(num_stages=...); the engine reads the interval
        cfg["pipeline"] = {"stages": st.pp, "activation_checkpoint_interval": 1 if st.recompute == "full" else 0}
    return cfg


def _deepspeed_files(model: ModelSpec, st: Strategy, cluster: Cluster, notes: list[str]) -> dict[str, str]:
    head = _header(model, st, cluster, "DeepSpeed launch", notes)
    pipe = (["# pp > 1: build deepspeed.pipe.PipelineModule(layers, num_stages=ds_config['pipeline']['stages'],",
             "#   partition_method='type:<your transformer layer class>'), which gives layers per stage "
             f"{list(st.stage_layers)}"] if st.pp > 1 else [])
    launch = "\n".join(["#!/usr/bin/env bash", *head, *pipe,
                        "# Run with a hostfile listing the nodes (deepspeed --hostfile) on more than one node.",
                        f"deepspeed --num_nodes {cluster.num_nodes} --num_gpus {cluster.gpus_per_node} train.py "
                        '--deepspeed --deepspeed_config "$(dirname "$0")/ds_config.json" "$@"', ""])
    return {"ds_config.json": json.dumps(deepspeed_config(model, st), indent=2) + "\n", "launch.sh": launch}


def torchtitan_config(model: ModelSpec, st: Strategy) -> dict:
    """torchtitan v0.2.x JobConfig sections (torchtitan/config/job_config.py) as a dict of TOML tables."""
    name, flavor = TORCHTITAN_FLAVORS.get(model.name, ("llama3", model.name))
    par: dict = {"data_parallel_replicate_degree": st.dp if st.zero_stage == 0 else 1,
                 "data_parallel_shard_degree": st.dp if st.zero_stage >= 2 else 1,
                 "tensor_parallel_degree": st.tp, "context_parallel_degree": st.cp,
                 "expert_parallel_degree": st.ep, "pipeline_parallel_degree": st.pp}
    if st.zero_stage == 2:
        par["fsdp_reshard_after_forward"] = "never"     # parameters stay gathered: gradients-and-states sharding
    elif st.zero_stage == 3:
        par["fsdp_reshard_after_forward"] = "always"
    training: dict = {"seq_len": model.seq_len, "global_batch_size": st.global_batch,
                      "local_batch_size": st.micro_batch}
    if st.pp > 1:
        # torchtitan: pipeline micro-batches = local_batch_size / pipeline_parallel_microbatch_size
        training["local_batch_size"] = st.global_batch // st.dp
        par["pipeline_parallel_microbatch_size"] = st.micro_batch
        par["pipeline_parallel_schedule"] = ("GPipe" if st.pipeline_schedule == "gpipe" else
                                             "Interleaved1F1B" if st.virtual_stages > 1 else "1F1B")
        par["module_fqns_per_model_part"] = torchtitan_model_parts(model, st)
    training["mixed_precision_param"] = "float32" if st.precision == "fp32" else "bfloat16"
    training["mixed_precision_reduce"] = "float32" if st.fp32_grads or st.precision == "fp32" else "bfloat16"
    if st.offload_params:
        training["enable_cpu_offload"] = True
    out = {"model": {"name": name, "flavor": flavor}, "training": training, "parallelism": par,
           "activation_checkpoint": {"mode": "full" if st.recompute == "full" else "none"},
           "optimizer": {"name": "AdamW"}}
    if st.precision == "fp8":
        out["model"]["converters"] = ["quantize.linear.float8"]
        out["quantize"] = {"linear": {"float8": {"recipe_name": "tensorwise"}}}
    return out


def torchtitan_model_parts(model: ModelSpec, st: Strategy) -> list[list[str]]:
    """Module names of every model chunk, in pipeline order (stage 0 chunk 0, stage 1 chunk 0, ...), for
    the llama-style module tree (tok_embeddings, layers.i, norm, output)."""
    Ls, v, p = list(st.stage_layers), st.virtual_stages, st.pp
    sizes = [chunks(Ls[i], v)[c] for c in range(v) for i in range(p)]
    parts, nxt = [], 0
    for k, n in enumerate(sizes):
        part = (["tok_embeddings"] if k == 0 else []) + [f"layers.{j}" for j in range(nxt, nxt + n)]
        parts.append(part + (["norm", "output"] if k == len(sizes) - 1 else []))
        nxt += n
    return parts


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    return "[" + ", ".join(_toml_value(x) for x in v) + "]"


def toml_text(tables: dict, prefix: str = "") -> str:
    out = []
    for name, body in tables.items():
        scalars = {k: v for k, v in body.items() if not isinstance(v, dict)}
        if scalars:
            out.append(f"[{prefix}{name}]")
            out += [f"{k} = {_toml_value(v)}" for k, v in scalars.items()]
            out.append("")
        subs = {k: v for k, v in body.items() if isinstance(v, dict)}
        if subs:
            out.append(toml_text(subs, f"{prefix}{name}."))
    return "\n".join(out)


def _torchtitan_files(model: ModelSpec, st: Strategy, cluster: Cluster, notes: list[str]) -> dict[str, str]:
    head = _header(model, st, cluster, "torchtitan v0.2.x job config (--job.config_file)", notes)
    if model.name not in TORCHTITAN_FLAVORS:
        head.append(f"# [model] flavor: register a torchtitan model flavor with {model.name}'s shape under this name")
    launch = "\n".join([
        "#!/usr/bin/env bash",
        f"# Run on every one of the {cluster.num_nodes} node(s) with NODE_RANK and MASTER_ADDR set.",
        f"torchrun --nnodes {cluster.num_nodes} --nproc_per_node {cluster.gpus_per_node} "
        '--node_rank "${NODE_RANK:-0}" --master_addr "${MASTER_ADDR:-localhost}" --master_port 29500 \\',
        '    -m torchtitan.train --job.config_file "$(dirname "$0")/job.toml" "$@"', ""])
    return {"job.toml": "\n".join(head) + "\n\n" + toml_text(torchtitan_config(model, st)), "launch.sh": launch}


def _check_framework(framework: str) -> None:
    if framework not in FRAMEWORKS:
        raise ExportError(f"framework {framework!r} is not known; choose {', '.join(FRAMEWORKS)}")


__all__ = ["FRAMEWORKS", "Export", "ExportError", "export", "export_best", "strategy_from_plan", "canonical",
           "unsupported", "space_for", "nearest_layout", "megatron_args", "deepspeed_config", "torchtitan_config",
           "deepspeed_split", "chunks"]
