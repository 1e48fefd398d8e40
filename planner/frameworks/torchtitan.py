"""torchtitan: a plan as a config function (job.py) that torchtitan 0.3 loads with `--module job --config plan`,
and a torchrun launch.sh; `--emit torchtitan@0.2` writes the TOML job config (job.toml) of v0.2.x instead.

Field names are torchtitan's own: v0.3.0 torchtitan/config/configs.py (TrainingConfig, ParallelismConfig),
torchtitan/trainer.py (Trainer.Config), torchtitan/models/llama3/config_registry.py; v0.2.2
torchtitan/config/job_config.py.
"""
from __future__ import annotations

import json

from costmodels.model import ModelSpec
from costmodels.strategy import Strategy
from hardware import Cluster
from planner.frameworks.base import ConfigImportError, canonical, chunks, header, read_and_ignored

NAME = "torchtitan"
TORCHTITAN_FLAVORS = {"llama3-8b": ("llama3", "8B"), "llama3-70b": ("llama3", "70B"),
                      "llama3-405b": ("llama3", "405B")}   # torchtitan/models/llama3/__init__.py


# ---- the nearest layout torchtitan v0.2.x can write (what it cannot express: planner/solve/rules.py) --

def nearest_layout(model: ModelSpec, st: Strategy, Ls: list[int], Rs: list[int]
                   ) -> tuple[list[int], list[int], list[str]]:
    """torchtitan writes any stage layout (module_fqns_per_model_part); it recomputes every layer or none."""
    if 0 < sum(Rs) < sum(Ls):
        return Ls, list(Ls), [f"{NAME} recomputes every layer or none: the plan's fully recomputed layers per "
                              f"stage {Rs} become all layers"]
    return Ls, Rs, []


# ---- emit --------------------------------------------------------------------------------------------

def torchtitan_config(model: ModelSpec, st: Strategy) -> dict:
    """torchtitan v0.2.x JobConfig sections (torchtitan/config/job_config.py) as a dict of TOML tables."""
    name, flavor = TORCHTITAN_FLAVORS.get(model.name, ("llama3", model.name))
    par: dict = {"data_parallel_replicate_degree": st.dp if st.zero_stage == 0 else 1,
                 "data_parallel_shard_degree": st.dp if st.zero_stage >= 2 else 1,
                 "tensor_parallel_degree": st.tp, "context_parallel_degree": st.cp,
                 "expert_parallel_degree": st.ep, "pipeline_parallel_degree": st.pp}
    if st.ep > 1:   # torchtitan's default is 1 (experts over the tp ranks too); write the plan's own
        par["expert_tensor_parallel_degree"] = st.etp
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
           # recompute "selective" in torchtitan's accounting is its per-op selective AC
           "activation_checkpoint": ({"mode": "selective", "selective_ac_option": "op"} if st.recompute == "selective"
                                     else {"mode": "full" if st.recompute == "full" else "none"}),
           "optimizer": {"name": "AdamW"}}
    if st.precision == "fp8":
        out["model"]["converters"] = ["quantize.linear.float8"]
        out["quantize"] = {"linear": {"float8": {"recipe_name": "tensorwise"}}}
    return out


def torchtitan_model_parts(model: ModelSpec, st: Strategy, head: str = "output") -> list[list[str]]:
    """Module names of every model chunk, in pipeline order (stage 0 chunk 0, stage 1 chunk 0, ...), for
    the llama-style module tree (tok_embeddings, layers.i, norm, and the output layer: `output` in v0.2,
    `lm_head` in v0.3, torchtitan/models/common/decoder.py)."""
    Ls, v, p = list(st.stage_layers), st.virtual_stages, st.pp
    sizes = [chunks(Ls[i], v)[c] for c in range(v) for i in range(p)]
    parts, nxt = [], 0
    for k, n in enumerate(sizes):
        part = (["tok_embeddings"] if k == 0 else []) + [f"layers.{j}" for j in range(nxt, nxt + n)]
        parts.append(part + (["norm", head] if k == len(sizes) - 1 else []))
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


def config_function(model: ModelSpec, st: Strategy) -> tuple[str, list[str]]:
    """(job.py text, notes): torchtitan 0.3's own config function for the model (llama3_8b / 70b / 405b in
    torchtitan/models/llama3/config_registry.py) with the plan's batch, parallelism, activation checkpointing
    and precision written over it; its model spec rebuilt without the 405B preset's float8 converter and
    compile (on again only for an fp8 plan: torchtitan 0.3's rowwise float8)."""
    name, flavor = TORCHTITAN_FLAVORS.get(model.name, ("llama3", "8B"))
    notes = [] if model.name in TORCHTITAN_FLAVORS else [
        f"torchtitan 0.3 has no config function for {model.name}: job.py starts from llama3_8b; register a model "
        f"spec with {model.name}'s shape and use it in place of model_registry(\"8B\")"]
    par = {"data_parallel_replicate_degree": st.dp if st.zero_stage == 0 else 1,
           "data_parallel_shard_degree": st.dp if st.zero_stage >= 2 else 1,
           "tensor_parallel_degree": st.tp, "enable_sequence_parallel": st.tp > 1 and st.sequence_parallel,
           "context_parallel_degree": st.cp, "expert_parallel_degree": st.ep, "pipeline_parallel_degree": st.pp}
    if st.ep > 1 and st.etp != 1:
        notes.append(f"torchtitan 0.3 has no expert tensor-parallel degree; the plan's {st.etp} is not written")
    if st.zero_stage == 2:
        par["fsdp_reshard_after_forward"] = "never"
    elif st.zero_stage == 3:
        par["fsdp_reshard_after_forward"] = "always"
    training = {"local_batch_size": st.micro_batch, "global_batch_size": st.global_batch, "seq_len": model.seq_len}
    if st.pp > 1:
        training["local_batch_size"] = st.global_batch // st.dp
        par["pipeline_parallel_microbatch_size"] = st.micro_batch
        par["pipeline_parallel_schedule"] = ("GPipe" if st.pipeline_schedule == "gpipe" else
                                             "Interleaved1F1B" if st.virtual_stages > 1 else "1F1B")
        par["module_fqns_per_model_part"] = torchtitan_model_parts(model, st, head="lm_head")
        training["disable_cuda_graphs"] = True       # 0.3: CUDA graphs do not support pipeline parallelism yet
    training["mixed_precision_param"] = "float32" if st.precision == "fp32" else "bfloat16"
    training["mixed_precision_reduce"] = "float32" if st.fp32_grads or st.precision == "fp32" else "bfloat16"
    if st.offload_params:
        training["enable_cpu_offload"] = True
    ac = {"none": "None", "full": "FullAC.Config()", "selective": "SelectiveAC.Config()"}[st.recompute]
    fp8 = st.precision == "fp8"
    if fp8:
        notes.append("torchtitan 0.3's float8 linears are rowwise-scaled (Float8LinearConverter); the plan is "
                     "priced with torchao's tensorwise recipe")

    def kwargs(d: dict, indent: str) -> str:
        return ",\n".join(f"{indent}{k}={v!r}" for k, v in d.items())

    converters = ("converters=[Float8LinearConverter.Config(filter_fqns=[\"lm_head\"])]" if fp8 else "")
    lines = [
        "from torchtitan.components.quantization import Float8LinearConverter  # noqa: F401",
        "from torchtitan.config import CompileConfig, ParallelismConfig, TrainingConfig",
        "from torchtitan.distributed.activation_checkpoint import FullAC, SelectiveAC  # noqa: F401",
        f"from torchtitan.models.{name} import model_registry",
        f"from torchtitan.models.{name}.config_registry import {name}_{flavor.lower()} as base",
        "", "",
        "def plan():",
        f"    \"\"\"torchtitan's {name}_{flavor.lower()} job with this plan's batch, parallelism and recompute.\"\"\"",
        "    cfg = base()",
        f"    cfg.model_spec = model_registry({flavor!r}{', ' + converters if converters else ''})",
        f"    cfg.compile = CompileConfig(enable={fp8})",
        "    cfg.training = TrainingConfig(",
        kwargs(training, "        ") + ",",
        "        steps=cfg.training.steps,",
        "    )",
        "    cfg.parallelism = ParallelismConfig(",
        kwargs(par, "        ") + ",",
        "    )",
        f"    cfg.activation_checkpoint = {ac}",
        "    return cfg",
        ""]
    return "\n".join(lines), notes


def files(model: ModelSpec, st: Strategy, cluster: Cluster, notes: list[str], version: str | None = None
          ) -> dict[str, str]:
    if version == "0.2":
        return _files_v02(model, st, cluster, notes)
    body, more = config_function(model, st)
    head = header(model, st, cluster, "torchtitan 0.3 config function (--module job --config plan)", notes + more,
                  "torchtitan")
    launch = "\n".join([
        "#!/usr/bin/env bash",
        f"# Run on every one of the {cluster.num_hosts} node(s) with NODE_RANK and MASTER_ADDR set; job.py is",
        "# imported from this folder.",
        'cd "$(dirname "$0")"',
        f"PYTHONPATH=.:$PYTHONPATH torchrun --nnodes {cluster.num_hosts} --nproc_per_node {cluster.gpus_per_host} "
        '--node_rank "${NODE_RANK:-0}" --master_addr "${MASTER_ADDR:-localhost}" --master_port 29500 \\',
        '    -m torchtitan.train --module job --config plan "$@"', ""])
    return {"job.py": "\n".join(head) + "\n" + body, "launch.sh": launch}


def _files_v02(model: ModelSpec, st: Strategy, cluster: Cluster, notes: list[str]) -> dict[str, str]:
    head = header(model, st, cluster, "torchtitan v0.2.x job config (--job.config_file)", notes, "torchtitan@0.2")
    if model.name not in TORCHTITAN_FLAVORS:
        head.append(f"# [model] flavor: register a torchtitan model flavor with {model.name}'s shape under this name")
    launch = "\n".join([
        "#!/usr/bin/env bash",
        f"# Run on every one of the {cluster.num_hosts} node(s) with NODE_RANK and MASTER_ADDR set.",
        f"torchrun --nnodes {cluster.num_hosts} --nproc_per_node {cluster.gpus_per_host} "
        '--node_rank "${NODE_RANK:-0}" --master_addr "${MASTER_ADDR:-localhost}" --master_port 29500 \\',
        '    -m torchtitan.train --job.config_file "$(dirname "$0")/job.toml" "$@"', ""])
    return {"job.toml": "\n".join(head) + "\n\n" + toml_text(torchtitan_config(model, st)), "launch.sh": launch}


# ---- import ------------------------------------------------------------------------------------------

_SCHEDULES = {"1F1B": "1f1b", "GPipe": "gpipe", "Interleaved1F1B": "1f1b"}


# the job-config keys read_torchtitan_config reads (table.key); every other key is reported as ignored
TORCHTITAN_READ = frozenset({
    "parallelism.data_parallel_replicate_degree", "parallelism.data_parallel_shard_degree",
    "parallelism.tensor_parallel_degree", "parallelism.context_parallel_degree", "parallelism.pipeline_parallel_degree",
    "parallelism.expert_parallel_degree", "parallelism.expert_tensor_parallel_degree",
    "parallelism.fsdp_reshard_after_forward", "parallelism.pipeline_parallel_microbatch_size",
    "parallelism.module_fqns_per_model_part", "parallelism.pipeline_parallel_schedule",
    "training.global_batch_size", "training.local_batch_size", "training.mixed_precision_param",
    "training.mixed_precision_reduce", "training.enable_cpu_offload", "activation_checkpoint.mode",
    "model.converters", "training.seq_len"})


def _load_toml(text: str) -> dict:
    import tomllib

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigImportError(f"torchtitan config is not TOML: {e}") from None


def torchtitan_model(text: str, model: ModelSpec) -> ModelSpec:
    """The model with the job config's training.seq_len, when it sets one (the plan is priced at it)."""
    seq = (_load_toml(text).get("training") or {}).get("seq_len")
    if seq is None or seq == model.seq_len:
        return model
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise ConfigImportError(f"training.seq_len {seq!r} is not a whole number >= 1")
    return ModelSpec(**{**model.model_dump(), "seq_len": seq})


def torchtitan_settings(text: str) -> tuple[dict[str, object], list[str]]:
    """What read_torchtitan_config reads from a TOML job config (table.key -> value) and the keys it ignores."""
    return read_and_ignored(_load_toml(text), TORCHTITAN_READ)


def read_torchtitan_config(text: str, model: ModelSpec, cluster: Cluster) -> Strategy:
    """The Strategy of a torchtitan v0.2 TOML job config (torchtitan/config/job_config.py, its defaults where a
    key is absent: data_parallel_shard_degree -1 = the GPUs left, expert_tensor_parallel_degree 1)."""
    cfg = _load_toml(text)
    par, training = cfg.get("parallelism"), cfg.get("training") or {}
    if not isinstance(par, dict) or not par:
        raise ConfigImportError("no [parallelism] table: give the job config that sets the parallel degrees")

    def degree(key: str, default: int) -> int:
        v = par.get(key, default)
        if not isinstance(v, int) or isinstance(v, bool) or (v < 1 and not (v == -1 and key.endswith("shard_degree"))):
            raise ConfigImportError(f"parallelism.{key} {v!r} is not a whole number >= 1")
        return v

    rep, shard = degree("data_parallel_replicate_degree", 1), degree("data_parallel_shard_degree", -1)
    tp, cp, pp = degree("tensor_parallel_degree", 1), degree("context_parallel_degree", 1), degree("pipeline_parallel_degree", 1)
    ep, etp = degree("expert_parallel_degree", 1), degree("expert_tensor_parallel_degree", 1)
    n = cluster.num_gpus
    if shard == -1:
        if n % (rep * tp * cp * pp):
            raise ConfigImportError(f"replicate x tp x cp x pp = {rep * tp * cp * pp} does not divide the {n} GPUs")
        shard = n // (rep * tp * cp * pp)
    if rep * shard * tp * cp * pp != n:
        raise ConfigImportError(f"the degrees multiply to {rep * shard * tp * cp * pp} GPUs, --gpus has {n}")
    if rep > 1 and shard > 1:
        raise ConfigImportError("HSDP (data_parallel_replicate_degree and data_parallel_shard_degree both > 1) is not "
                                "a plan this planner models")
    dp = rep * shard
    reshard = str(par.get("fsdp_reshard_after_forward", "default"))
    zero = 0 if shard == 1 else (2 if reshard == "never" else 3)
    gbs = training.get("global_batch_size", -1)
    local = training.get("local_batch_size", 8)
    gbs = local * dp if gbs in (-1, None) else gbs
    micro = par.get("pipeline_parallel_microbatch_size", 1) if pp > 1 else local
    v, Ls = 1, None
    if pp > 1:
        parts = par.get("module_fqns_per_model_part")
        if parts:
            if len(parts) % pp:
                raise ConfigImportError(f"{len(parts)} model parts do not split over {pp} pipeline stages")
            v = len(parts) // pp
            Ls = tuple(sum(sum(1 for m in parts[c * pp + i] if m.startswith("layers.")) for c in range(v))
                       for i in range(pp))
        elif str(par.get("pipeline_parallel_schedule", "1F1B")).startswith("Interleaved"):
            raise ConfigImportError("an interleaved schedule without module_fqns_per_model_part: the model chunks "
                                    "per stage cannot be read")
    schedule = _SCHEDULES.get(str(par.get("pipeline_parallel_schedule", "1F1B")), "1f1b")
    mode = str((cfg.get("activation_checkpoint") or {}).get("mode", "selective"))
    rec = {"none": "none", "full": "full", "selective": "selective"}.get(mode)
    if rec is None:
        raise ConfigImportError(f"activation_checkpoint.mode {mode!r} is not none, selective or full")
    param = str(training.get("mixed_precision_param", "bfloat16"))
    # float8 linears: "quantize.linear.float8" (v0.2), "float8" (v0.1 job configs, as its llama3_405b.toml)
    converters = (cfg.get("model") or {}).get("converters") or []
    fp8 = any(c in ("quantize.linear.float8", "float8") for c in converters)
    precision = "fp8" if fp8 else ("fp32" if param == "float32" else "bf16")
    st = Strategy(tp=tp, pp=pp, dp=dp, cp=cp, ep=ep, expert_tp=etp if ep > 1 else None, micro_batch=micro,
                  global_batch=gbs, zero_stage=zero, recompute=rec, sequence_parallel=tp > 1, precision=precision,
                  virtual_stages=v, stage_layers=Ls, pipeline_schedule=schedule, framework="torchtitan",
                  offload_params=bool(training.get("enable_cpu_offload")) and zero == 3,
                  offload_optimizer=bool(training.get("enable_cpu_offload")) and zero == 3,
                  fp32_grads=str(training.get("mixed_precision_reduce", "float32")) == "float32")
    return canonical(model, st)
