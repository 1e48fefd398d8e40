"""Read a framework's configuration back into a Strategy: Megatron-LM `pretrain_gpt.py` arguments and
DeepSpeed JSON configs, as `planner.frameworks.export` writes them (and as people write them by hand).

`import_plan` then predicts it with the same cost model as `plan evaluate` and asks the search what
would be better (the API behind `plan import`).
"""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass

from costmodels.model import ModelSpec
from costmodels.strategy import Strategy
from hardware import Cluster
from planner.frameworks.export import canonical, chunks, deepspeed_split


class ConfigImportError(ValueError):
    """A config that cannot be read as a plan; the message names the value and what is allowed."""


# Megatron-LM flags that take no value (arguments.py store_true flags)
_MEGATRON_SWITCHES = {
    "--sequence-parallel", "--use-distributed-optimizer", "--bf16", "--fp16", "--swiglu",
    "--group-query-attention", "--disable-bias-linear", "--untie-embeddings-and-output-weights",
    "--optimizer-cpu-offload", "--use-precision-aware-optimizer", "--use-flash-attn", "--recompute-activations",
    "--grad-reduce-in-bf16", "--accumulate-allreduce-grads-in-fp32",
}
# Megatron-LM settings no plan here expresses: refuse rather than predict something else
_MEGATRON_REFUSED = {"--use-torch-fsdp2": "FSDP2", "--use-megatron-fsdp": "Megatron-FSDP",
                     "--decoder-num-layers": "encoder-decoder layer counts",
                     "--hybrid-layer-pattern": "hybrid (Mamba) layer patterns"}


def parse_megatron_args(text: str) -> dict[str, str | bool]:
    """`--flag value` / `--flag` pairs from a shell file, an argument list or a launch line (comments,
    quotes, line continuations and bash-array brackets allowed). Later flags win, as in argparse."""
    try:
        toks = shlex.split(text, comments=True)
    except ValueError as e:
        raise ConfigImportError(f"Megatron arguments cannot be split into shell words: {e}") from None
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


def megatron_model(args: dict, model: ModelSpec) -> ModelSpec:
    """`model` with the arguments' sequence length; ConfigImportError if their shape contradicts it."""
    expect = {"--num-layers": model.layers, "--hidden-size": model.hidden, "--num-attention-heads": model.heads,
              "--ffn-hidden-size": model.ffn_hidden,
              "--num-query-groups": model.kv_heads if args.get("--group-query-attention") else None,
              "--num-experts": model.moe.experts if model.moe else None}
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
    if args.get("--fp8-format"):
        precision = "fp8"
    else:
        precision = "bf16" if args.get("--bf16") else "fp16" if args.get("--fp16") else "fp32"
    backend = args.get("--attention-backend", "auto")
    st = Strategy(tp=tp, pp=pp, dp=dp, cp=cp, ep=ep, micro_batch=micro, global_batch=gbs,
                  zero_stage=1 if args.get("--use-distributed-optimizer") else 0,
                  recompute=rec, recompute_layers=rlayers, sequence_parallel=bool(args.get("--sequence-parallel")),
                  precision=precision, optimizer=str(args.get("--optimizer", "adam")), virtual_stages=v,
                  offload_optimizer=bool(args.get("--optimizer-cpu-offload")),
                  flash_attention=backend not in ("unfused", "local"), stage_layers=tuple(Ls),
                  fp32_grads=not (precision in ("bf16", "fp8") and args.get("--grad-reduce-in-bf16")))
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
    import re
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
    return "full", tuple(sum(min(N, c) for c in chunks(L, v)) for L in Ls)


def read_deepspeed_config(config: dict | str, model: ModelSpec, cluster: Cluster) -> Strategy:
    """The Strategy of a DeepSpeed JSON config (tp = cp = 1; pp from its "pipeline": {"stages": n})."""
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except json.JSONDecodeError as e:
            raise ConfigImportError(f"DeepSpeed config is not JSON: {e}") from None
    if not isinstance(config, dict):
        raise ConfigImportError("DeepSpeed config must be a JSON object")
    stages = (config.get("pipeline") or {}).get("stages", 1)
    pp = 1 if stages in ("auto", None) else stages
    if not isinstance(pp, int) or pp < 1 or cluster.num_gpus % pp:
        raise ConfigImportError(f"pipeline.stages {stages!r} must be a whole number dividing the {cluster.num_gpus} GPUs")
    dp = cluster.num_gpus // pp
    micro = config.get("train_micro_batch_size_per_gpu")
    accum = config.get("gradient_accumulation_steps")
    total = config.get("train_batch_size")
    if micro is None and total is not None and accum is not None:
        micro = total // (accum * dp)
    accum = accum if accum is not None else (total // (micro * dp) if total and micro else 1)
    micro = micro or 1
    total = total if total is not None else micro * accum * dp
    if total != micro * accum * dp:   # DeepSpeedConfig._batch_assertion
        raise ConfigImportError(f"train_batch_size {total} is not train_micro_batch_size_per_gpu x "
                                f"gradient_accumulation_steps x data-parallel size = {micro} x {accum} x {dp}")
    zero = config.get("zero_optimization") or {}
    stage = zero.get("stage", 0)
    off_opt = (zero.get("offload_optimizer") or {}).get("device", "none") == "cpu"
    off_par = (zero.get("offload_param") or {}).get("device", "none") == "cpu"
    precision = ("bf16" if (config.get("bf16") or {}).get("enabled") else
                 "fp16" if (config.get("fp16") or {}).get("enabled") else "fp32")
    opt = str((config.get("optimizer") or {}).get("type", "adam")).lower()
    if opt not in ("adam", "adamw", "sgd"):
        raise ConfigImportError(f"optimizer type {opt!r} is not modelled; allowed Adam, AdamW, SGD")
    interval = (config.get("pipeline") or {}).get("activation_checkpoint_interval", 0)
    full = ("activation_checkpointing" in config) if pp == 1 else interval > 0
    Ls = deepspeed_split(model.layers, pp) if pp <= model.layers else None
    st = Strategy(pp=pp, dp=dp, micro_batch=micro, global_batch=total, zero_stage=stage,
                  recompute="full" if full else "none", precision=precision,
                  optimizer="sgd" if opt == "sgd" else "adam", offload_optimizer=off_opt or off_par,
                  offload_params=off_par, stage_layers=tuple(Ls) if Ls else None,
                  fp32_grads=not (precision == "bf16" and
                                  (config.get("data_types") or {}).get("grad_accum_dtype") in ("bf16", "bfloat16")))
    return canonical(model, st)


@dataclass
class ImportResult:
    imported: object       # SearchResult of the imported plan (planner.evaluate_strategy)
    best: object           # SearchResult of the search over the whole space
    speedup: float         # imported step time / best step time


def import_plan(model: ModelSpec, cluster: Cluster, st: Strategy, time_limit_s: float = 30.0) -> ImportResult:
    """Predict an imported plan with the cost model and search for a better one on the same cluster."""
    from planner.solve.optimize import evaluate_strategy, search
    from planner.solve.space import SpaceOptions

    imported = evaluate_strategy(model, cluster, st)
    opts = SpaceOptions(global_batch=st.global_batch, precision=st.precision, optimizer=st.optimizer,
                        flash_attention=st.flash_attention, fp32_grads=st.fp32_grads)
    best = search(model, cluster, top=1, time_limit_s=time_limit_s, space=opts)
    return ImportResult(imported, best, imported.plans[0].step_time_s / best.plans[0].step_time_s)
