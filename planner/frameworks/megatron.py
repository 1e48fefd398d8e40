"""Megatron-LM: a plan as `pretrain_gpt.py` arguments (megatron_args.sh) and a torchrun launch.sh, and
such arguments read back into a plan.

Flag names are Megatron-LM's own: megatron/training/arguments.py (TransformerConfig fields become flags
through its ArgumentGroupFactory).
"""
from __future__ import annotations

import re
import shlex

from costmodels.model import ModelSpec
from costmodels.performance import resolve_layout
from costmodels.strategy import FP8_RECIPES, Strategy
from hardware import Cluster
from planner.frameworks.base import ConfigImportError, canonical, header, stage_chunks

NAME = "Megatron-LM"


# ---- the nearest layout Megatron-LM can write (what it cannot express at all: planner/solve/rules.py) ----

def nearest_layout(model: ModelSpec, st: Strategy, Ls: list[int], Rs: list[int]
                   ) -> tuple[list[int], list[int], list[str]]:
    """Megatron writes any stage layout; block recompute is one N for every model chunk."""
    if st.recompute != "full" or st.recompute_layers is None:
        return Ls, Rs, []
    N = megatron_recompute_layers(Ls, Rs, st.virtual_stages)
    new_Rs = megatron_recomputed(Ls, st.virtual_stages, N)
    if new_Rs == Rs:
        return Ls, Rs, []
    return Ls, new_Rs, [f"Megatron applies one --recompute-num-layers to every pipeline stage (per model chunk): "
                        f"the plan's fully recomputed layers per stage {Rs} become {new_Rs} (N = {N}, the fewest "
                        f"that recompute at least the plan's count in every stage)"]


def megatron_recomputed(Ls: list[int], v: int, N: int) -> list[int]:
    """Layers recomputed per stage by --recompute-method block --recompute-num-layers N: the first N layers
    of every model chunk (megatron/core/transformer/transformer_block.py, _checkpointed_forward)."""
    return [sum(min(N, c) for c in stage_chunks(L, v, i, len(Ls))) for i, L in enumerate(Ls)]


def megatron_recompute_layers(Ls: list[int], Rs: list[int], v: int) -> int:
    """The N that gives exactly Rs, else the smallest N that recomputes at least Rs in every stage."""
    top = max(max(stage_chunks(L, v, i, len(Ls))) for i, L in enumerate(Ls))
    for N in range(1, top + 1):
        got = megatron_recomputed(Ls, v, N)
        if got == Rs:
            return N
    return next(N for N in range(1, top + 1) if all(g >= r for g, r in zip(megatron_recomputed(Ls, v, N), Rs)))


# ---- emit --------------------------------------------------------------------------------------------

def megatron_args(model: ModelSpec, st: Strategy) -> list[list[str]]:
    """pretrain_gpt.py arguments, grouped one setting per line (names: Megatron-LM arguments.py)."""
    a: list[list[str]] = [
        ["--num-layers", str(model.layers)], ["--hidden-size", str(model.hidden)],
        ["--ffn-hidden-size", str(model.ffn_hidden)], ["--num-attention-heads", str(model.heads)],
        ["--seq-length", str(model.seq_len)], ["--max-position-embeddings", str(model.seq_len)],
        ["--position-embedding-type", "rope" if model.position_embedding == "rope" else "learned_absolute"],
    ]
    if model.attention_head_dim is not None and model.mla is None:   # heads wider than hidden / heads (Qwen3)
        a.append(["--kv-channels", str(model.head_dim)])
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
        if m.layer_freq > 1 or m.first_dense:   # our MoE layers: costmodels.model.ModelSpec.is_moe_layer
            a.append(["--moe-layer-freq", moe_layer_pattern(model)])
    if model.mla is not None:   # megatron/core/transformer/transformer_config.py MLATransformerConfig
        la = model.mla
        a.append(["--multi-latent-attention", "--kv-lora-rank", str(la.kv_lora_rank),
                  "--qk-head-dim", str(la.qk_nope_head_dim), "--qk-pos-emb-head-dim", str(la.qk_rope_head_dim),
                  "--v-head-dim", str(la.v_head_dim)]
                 + (["--q-lora-rank", str(la.q_lora_rank)] if la.q_lora_rank else []))
    a.append(["--tensor-model-parallel-size", str(st.tp), "--pipeline-model-parallel-size", str(st.pp)])
    if st.cp > 1:
        a.append(["--context-parallel-size", str(st.cp)])
    if st.ep > 1:
        a.append(["--expert-model-parallel-size", str(st.ep)])
    if st.expert_tp is not None:    # MoE parallel folding: the experts' own tensor-parallel size
        a.append(["--expert-tensor-parallel-size", str(st.expert_tp)])
    if model.moe is not None and st.ep > 1:   # the dispatcher the plan's all-to-all time assumes
        a.append(["--moe-token-dispatcher-type", "flex", "--moe-flex-dispatcher-backend", "deepep"]
                 if st.moe_dispatcher == "deepep" else ["--moe-token-dispatcher-type", "alltoall"])
        if st.moe_a2a_overlap:
            a.append(["--overlap-moe-expert-parallel-comm"])
    if st.sequence_parallel:
        a.append(["--sequence-parallel"] + (["--tp-comm-overlap"] if st.tp_comm_overlap else []))
    a += megatron_pipeline_flags(model, st)
    a.append(["--micro-batch-size", str(st.micro_batch), "--global-batch-size", str(st.global_batch)])
    a += _megatron_recompute_flags(model, st)
    if st.zero_stage == 1:
        a.append(["--use-distributed-optimizer"])
    if st.dp * st.cp > 1:   # the overlap the plan's time assumes (costmodels/performance.py, data-parallel sync)
        a.append(["--overlap-grad-reduce"] + (["--overlap-param-gather"] if st.zero_stage == 1 else []))
    if st.offload_optimizer:   # arguments.py: optimizer CPU offload needs the precision-aware optimizer
        a.append(["--optimizer-cpu-offload", "--optimizer-offload-fraction", "1.0", "--use-precision-aware-optimizer"])
    a.append(["--optimizer", st.optimizer])
    a.append({"bf16": ["--bf16"], "fp16": ["--fp16"], "fp8": ["--bf16", "--fp8-format", "hybrid", "--fp8-recipe",
                                                           str(st.recipe)], "fp32": []}[st.precision])
    if not st.fp32_grads and st.precision in ("bf16", "fp8"):
        a.append(["--grad-reduce-in-bf16"])   # arguments.py: bf16 otherwise accumulates and reduces in fp32
    a.append(["--attention-backend", "flash" if st.flash_attention else "unfused"])
    return [g for g in a if g]


def moe_layer_pattern(model: ModelSpec) -> str:
    """--moe-layer-freq as a Python list expression, 1 = MoE layer (arguments.py moe_freq_type)."""
    f = model.moe.layer_freq
    if model.moe.first_dense:     # runs of the per-layer pattern, e.g. [0]*3+[1]*58
        flags = [int(model.is_moe_layer(i)) for i in range(model.layers)]
        runs: list[list[int]] = []
        for x in flags:
            if runs and runs[-1][0] == x:
                runs[-1][1] += 1
            else:
                runs.append([x, 1])
        return "+".join(f"[{x}]*{n}" for x, n in runs)
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
            n = stage_chunks(L, v, i, p)[c]
            s = ("E" if i == 0 and c == 0 else "") + (f"t*{n}" if n > 1 else "t" if n == 1 else "")
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
    if st.recompute == "selective":   # Megatron's selective recompute: the attention core unless modules are named
        mods = ["--recompute-modules", *st.recompute_modules] if st.recompute_modules else []
        return [["--recompute-granularity", "selective", *mods]]
    if st.recompute_layers is None:   # every layer: one checkpoint per layer
        return [["--recompute-granularity", "full", "--recompute-method", "uniform", "--recompute-num-layers", "1"]]
    Ls, Rs = resolve_layout(model, st)
    N = megatron_recompute_layers(Ls, Rs, st.virtual_stages)
    return [["--recompute-granularity", "full", "--recompute-method", "block", "--recompute-num-layers", str(N)]]


def files(model: ModelSpec, st: Strategy, cluster: Cluster, notes: list[str], version: str | None = None
          ) -> dict[str, str]:
    head = header(model, st, cluster, "Megatron-LM pretrain_gpt.py arguments", notes, "megatron")
    args = bash_array("MEGATRON_ARGS", megatron_args(model, st))
    launch = "\n".join([
        "#!/usr/bin/env bash",
        f"# Launch on {cluster.num_hosts} node(s) x {cluster.gpus_per_host} GPUs: run on every node with NODE_RANK and",
        "# MASTER_ADDR set, from the Megatron-LM checkout. Add your data, tokenizer and checkpoint arguments.",
        *(["# megatron/training/arguments.py validate_args: tensor or context parallelism needs one CUDA connection",
            "# per device (kernel order for the overlapped collectives)",
            "export CUDA_DEVICE_MAX_CONNECTIONS=1"] if st.tp > 1 or st.cp > 1 else []),
        'source "$(dirname "$0")/megatron_args.sh"',
        f"torchrun --nnodes {cluster.num_hosts} --nproc-per-node {cluster.gpus_per_host} "
        '--node-rank "${NODE_RANK:-0}" --master-addr "${MASTER_ADDR:-localhost}" --master-port 6000 \\',
        '    pretrain_gpt.py "${MEGATRON_ARGS[@]}" "$@"', ""])
    return {"megatron_args.sh": "\n".join(head) + "\n" + args, "launch.sh": launch}



def bash_array(name: str, args: list[list[str]]) -> str:
    def q(tok: str) -> str:
        return f'"{tok}"' if any(ch in tok for ch in "|*()[]+ ") else tok
    body = "\n".join("    " + " ".join(q(t) for t in group) for group in args)
    return f"{name}=(\n{body}\n)\n"




# ---- import ------------------------------------------------------------------------------------------

# Megatron-LM flags that take no value (arguments.py store_true flags)
_MEGATRON_SWITCHES = {
    "--sequence-parallel", "--use-distributed-optimizer", "--bf16", "--fp16", "--swiglu",
    "--group-query-attention", "--disable-bias-linear", "--untie-embeddings-and-output-weights",
    "--optimizer-cpu-offload", "--use-precision-aware-optimizer", "--use-flash-attn", "--recompute-activations",
    "--grad-reduce-in-bf16", "--accumulate-allreduce-grads-in-fp32", "--tp-comm-overlap", "--overlap-grad-reduce",
    "--overlap-param-gather", "--moe-enable-deepep", "--multi-latent-attention", "--overlap-moe-expert-parallel-comm",
}
# Megatron-LM settings no plan here expresses: refuse rather than predict something else
_MEGATRON_REFUSED = {"--use-torch-fsdp2": "FSDP2", "--use-megatron-fsdp": "Megatron-FSDP",
                     "--decoder-num-layers": "encoder-decoder layer counts",
                     "--hybrid-layer-pattern": "hybrid (Mamba) layer patterns"}


_ASSIGN = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(\+?)=(.*)$", re.S)
_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:\[[@*]\])?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def shell_words(text: str) -> list[str]:
    """The words a launch script hands its commands, read as bash would for the forms launch scripts use:
    comments, quotes, line continuations, variables (NAME=value, NAME="several words", NAME=( array ),
    NAME+=( more )) and their references ($NAME, ${NAME}, "${NAME[@]}"), which expand into words. An
    assignment's words are kept in place too, so a file of assignments alone (an arguments file) reads like
    the command using them; an array element with spaces ("--fp8-format hybrid") splits there, as the
    unquoted ${NAME[@]} of Megatron-LM's examples does. Both branches of an `if` are read (a later flag wins)."""
    try:
        toks = shlex.split(text, comments=True)
    except ValueError as e:
        raise ConfigImportError(f"Megatron arguments cannot be split into shell words: {e}") from None
    env: dict[str, list[str]] = {}

    def expand(word: str) -> list[str]:
        if "$" not in word:
            return [word]
        known = lambda m: (m.group(1) or m.group(2)) in env   # noqa: E731 - unknown ones ($1, $(...)) stay
        text = _REFERENCE.sub(lambda m: " ".join(env[m.group(1) or m.group(2)]) if known(m) else m.group(0), word)
        try:
            return shlex.split(text) if text != word else [word]
        except ValueError:
            return [text]

    out: list[str] = []
    i = 0
    while i < len(toks):
        m = _ASSIGN.match(toks[i])
        if m is None:
            out += expand(toks[i])
            i += 1
            continue
        name, append, value = m.groups()
        if value == "(":                      # NAME=( word ... ), NAME+=( word ... )
            j = i + 1
            words: list[str] = []
            while j < len(toks) and toks[j] != ")":
                words += [w for part in expand(toks[j]) for w in part.split()]
                j += 1
            i = j + 1
        else:                                 # NAME=value, NAME="several words"
            words = [w for part in expand(value) for w in (shlex.split(part) if " " in part else [part])]
            i += 1
        env[name] = (env.get(name, []) if append else []) + words
        out += words
    return out


def parse_megatron_args(text: str) -> dict[str, str | bool]:
    """`--flag value` / `--flag` pairs from a shell file, an argument list or a launch line (shell_words:
    comments, quotes, continuations, variables and arrays). Later flags win, as in argparse."""
    toks = shell_words(text)
    out: dict[str, str | bool] = {}
    i = 0
    while i < len(toks):
        t = toks[i]
        if t.startswith("--"):
            key, eq, val = t.partition("=")
            if eq:
                out[key] = val
            elif key in _MEGATRON_SWITCHES or i + 1 >= len(toks) or toks[i + 1].startswith("--"):
                out[key] = True
            else:
                out[key] = toks[i + 1]
                i += 1
        i += 1
    return out


# what read_megatron_args reads; every other flag is reported as ignored
_PARALLEL_FLAGS = ("--tensor-model-parallel-size", "--pipeline-model-parallel-size", "--context-parallel-size",
                   "--expert-model-parallel-size", "--micro-batch-size", "--global-batch-size")


def _int(args: dict, flag: str, default: int | None = None) -> int | None:
    v = args.get(flag)
    if v is None:
        return default
    try:
        n = int(v)
    except (TypeError, ValueError):
        raise ConfigImportError(f"{flag} {v!r} is not a whole number") from None
    if n < 1:
        raise ConfigImportError(f"{flag} {n} is not allowed; it must be >= 1")
    return n


# every flag read_megatron_args reads (the plan, or the model shape it checks); megatron_settings reports
# the others as ignored
MEGATRON_READ = frozenset({
    *_PARALLEL_FLAGS, "--attention-backend", "--bf16", "--fp16", "--fp8-format", "--fp8-recipe",
    "--decoder-first-pipeline-num-layers", "--decoder-last-pipeline-num-layers", "--expert-tensor-parallel-size",
    "--grad-reduce-in-bf16", "--group-query-attention", "--moe-enable-deepep", "--moe-flex-dispatcher-backend",
    "--moe-token-dispatcher-type", "--num-layers-per-virtual-pipeline-stage", "--num-virtual-stages-per-pipeline-rank",
    "--optimizer", "--optimizer-cpu-offload", "--overlap-moe-expert-parallel-comm", "--pipeline-model-parallel-layout",
    "--recompute-activations", "--recompute-granularity", "--recompute-method", "--recompute-num-layers",
    "--seq-length", "--sequence-parallel", "--tp-comm-overlap", "--use-distributed-optimizer",
    "--num-layers", "--hidden-size", "--num-attention-heads", "--ffn-hidden-size", "--num-query-groups",
    "--num-experts", "--kv-channels", *_MEGATRON_REFUSED})


def megatron_settings(text: str) -> tuple[dict[str, str | bool], list[str]]:
    """What read_megatron_args reads from `text` (flag -> value) and the flags it ignores."""
    args = parse_megatron_args(text)
    return ({k: v for k, v in args.items() if k in MEGATRON_READ},
            sorted(k for k in args if k not in MEGATRON_READ))


def megatron_model(args: dict, model: ModelSpec) -> ModelSpec:
    """`model` with the arguments' sequence length; ConfigImportError if their shape contradicts it."""
    expect = {"--num-layers": model.layers, "--hidden-size": model.hidden, "--num-attention-heads": model.heads,
              "--ffn-hidden-size": model.ffn_hidden,
              "--num-query-groups": model.kv_heads if args.get("--group-query-attention") else None,
              "--num-experts": model.moe.experts if model.moe else None,
              "--kv-channels": model.head_dim if model.mla is None else None}
    for flag, want in expect.items():
        got = _int(args, flag)
        if got is not None and got != want:
            raise ConfigImportError(f"{flag} {got} does not match --model {model.name} ({want}); give the model the "
                                    f"arguments were written for")
    seq = _int(args, "--seq-length")
    if seq is not None and seq != model.seq_len:
        model = ModelSpec(**{**model.model_dump(), "seq_len": seq})
    return model


def read_megatron_args(text: str, model: ModelSpec, cluster: Cluster) -> tuple[ModelSpec, Strategy]:
    """The model (with the arguments' sequence length) and the Strategy of Megatron-LM arguments."""
    args = parse_megatron_args(text)
    if not any(f in args for f in _PARALLEL_FLAGS):
        raise ConfigImportError("no parallel setting found (none of " + ", ".join(_PARALLEL_FLAGS) + "); give the "
                                "file that sets them (a launch script with its variables, or the arguments themselves)")
    for flag, what in _MEGATRON_REFUSED.items():
        if args.get(flag):
            raise ConfigImportError(f"{flag}: {what} is not a plan this planner models")
    model = megatron_model(args, model)
    tp, pp = _int(args, "--tensor-model-parallel-size", 1), _int(args, "--pipeline-model-parallel-size", 1)
    cp, ep = _int(args, "--context-parallel-size", 1), _int(args, "--expert-model-parallel-size", 1)
    n = cluster.num_gpus
    if n % (tp * pp * cp):
        raise ConfigImportError(f"tp x pp x cp = {tp} x {pp} x {cp} does not divide the {n} GPUs of --gpus")
    dp = n // (tp * pp * cp)
    micro = _int(args, "--micro-batch-size", 1)
    gbs = _int(args, "--global-batch-size", micro * dp)
    Ls, v = megatron_stage_layers(args, model.layers, pp)
    rec, rlayers = _megatron_recompute(args, Ls, v)
    recipe = None
    if args.get("--fp8-format"):
        precision = "fp8"
        recipe = str(args.get("--fp8-recipe", "delayed"))
        if recipe not in FP8_RECIPES:
            raise ConfigImportError(f"--fp8-recipe {recipe}: not a recipe this planner prices ({', '.join(FP8_RECIPES)})")
    else:
        precision = "bf16" if args.get("--bf16") else "fp16" if args.get("--fp16") else "fp32"
    backend = args.get("--attention-backend", "auto")
    etp = _int(args, "--expert-tensor-parallel-size", tp)
    st = Strategy(tp=tp, pp=pp, dp=dp, cp=cp, ep=ep, expert_tp=etp, micro_batch=micro, global_batch=gbs,
                  zero_stage=1 if args.get("--use-distributed-optimizer") else 0,
                  recompute=rec, recompute_layers=rlayers, sequence_parallel=bool(args.get("--sequence-parallel")),
                  precision=precision, optimizer=str(args.get("--optimizer", "adam")), virtual_stages=v,
                  offload_optimizer=bool(args.get("--optimizer-cpu-offload")),
                  flash_attention=backend not in ("unfused", "local"), stage_layers=tuple(Ls),
                  fp32_grads=not (precision in ("bf16", "fp8") and args.get("--grad-reduce-in-bf16")),
                  moe_dispatcher="deepep" if (args.get("--moe-token-dispatcher-type") == "flex"
                                              and args.get("--moe-flex-dispatcher-backend", "deepep") == "deepep")
                  or args.get("--moe-enable-deepep") else "alltoall",
                  tp_comm_overlap=bool(args.get("--tp-comm-overlap")) and bool(args.get("--sequence-parallel")),
                  fp8_recipe=recipe, moe_a2a_overlap=bool(args.get("--overlap-moe-expert-parallel-comm")) and ep > 1)
    return model, canonical(model, st)


def megatron_stage_layers(args: dict, layers: int, pp: int) -> tuple[list[int], int]:
    """Layers per pipeline stage and interleaved chunks per stage, from the layout flags
    (arguments.py and TransformerConfig.__post_init__ give the same rules)."""
    layout = args.get("--pipeline-model-parallel-layout")
    if layout:
        from_layout = _parse_layout(str(layout), pp)
        if sum(from_layout[0]) != layers:
            raise ConfigImportError(f"--pipeline-model-parallel-layout holds {sum(from_layout[0])} transformer layers, "
                                    f"the model has {layers}")
        return from_layout
    per_virtual = _int(args, "--num-layers-per-virtual-pipeline-stage")
    v = _int(args, "--num-virtual-stages-per-pipeline-rank", 1)
    if per_virtual is not None:
        if layers % pp or (layers // pp) % per_virtual:
            raise ConfigImportError(f"--num-layers-per-virtual-pipeline-stage {per_virtual} does not divide the "
                                    f"{layers} layers over {pp} stages evenly")
        return [layers // pp] * pp, layers // pp // per_virtual
    first = _int(args, "--decoder-first-pipeline-num-layers")
    last = _int(args, "--decoder-last-pipeline-num-layers")
    given = [x for x in (first, last) if x is not None]
    rest, middle_stages = layers - sum(given), pp - len(given)
    if middle_stages < 0 or (middle_stages == 0) != (rest == 0) or (middle_stages and rest % middle_stages):
        raise ConfigImportError(f"the first/last stage layers {given} leave {rest} layers for {middle_stages} "
                                f"stages; they must divide evenly")
    mid = rest // middle_stages if middle_stages else 0
    Ls = [mid] * pp
    if first is not None:
        Ls[0] = first
    if last is not None:
        Ls[-1] = last
    return Ls, v


def _parse_layout(layout: str, pp: int) -> tuple[list[int], int]:
    try:
        from_str = _unroll(layout)
    except ValueError as e:
        raise ConfigImportError(f"--pipeline-model-parallel-layout {layout!r}: {e}") from None
    entries = from_str.split("|")
    if len(entries) % pp:
        raise ConfigImportError(f"--pipeline-model-parallel-layout has {len(entries)} stages, not a multiple of "
                                f"pp={pp}")
    v = len(entries) // pp
    Ls = [sum(entries[c * pp + i].count("t") for c in range(v)) for i in range(pp)]
    return Ls, v


def _unroll(s: str) -> str:
    """Expand Megatron's layout shorthand: commas are cosmetic, (x)*n and x*n repeat."""
    s = s.replace(",", "").replace(" ", "")
    s = re.sub(r"\(([^)]+)\)\*(\d+)", lambda m: m.group(1) * int(m.group(2)), s)
    s = re.sub(r"(.)\*(\d+)", lambda m: m.group(1) * int(m.group(2)), s)
    bad = set(s) - set("ELtm|")
    if bad:
        raise ValueError(f"unknown layer character(s) {sorted(bad)}; allowed E, t, L, m, |")
    return s


def _megatron_recompute(args: dict, Ls: list[int], v: int) -> tuple[str, tuple[int, ...] | None]:
    gran = args.get("--recompute-granularity") or ("selective" if args.get("--recompute-activations") else None)
    if gran is None:
        return "none", None
    if gran == "selective":
        return "selective", None
    if gran != "full":
        raise ConfigImportError(f"--recompute-granularity {gran!r} is not allowed; choose full or selective")
    method = args.get("--recompute-method")
    N = _int(args, "--recompute-num-layers")
    if method not in ("uniform", "block") or N is None:
        raise ConfigImportError("--recompute-granularity full needs --recompute-method uniform|block and "
                                "--recompute-num-layers N")
    if method == "uniform":   # every layer recomputed, in units of N layers (same stored inputs for N = 1)
        return "full", None
    return "full", tuple(megatron_recomputed(Ls, v, N))
