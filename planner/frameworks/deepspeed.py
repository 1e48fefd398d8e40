"""DeepSpeed: a plan as a DeepSpeed JSON config (ds_config.json) and a `deepspeed` launch.sh, and such a
config read back into a plan.

Keys are DeepSpeed's own: deepspeed/runtime/config.py, runtime/zero/config.py, runtime/zero/offload_config.py.
"""
from __future__ import annotations

import json

from costmodels.model import ModelSpec
from costmodels.memory import DS_ALLGATHER_BUCKET, DS_PREFETCH_BUCKET, DS_REDUCE_BUCKET
from costmodels.strategy import Strategy
from hardware import Cluster
from planner.frameworks.base import ConfigImportError, canonical, chunks, header, read_and_ignored

NAME = "DeepSpeed"


def deepspeed_split(layers: int, pp: int) -> list[int]:
    """Transformer layers per stage of DeepSpeed's PipelineModule with partition_method='type:<layer class>':
    partition_balanced over unit weights, which equals partition_uniform (deepspeed/runtime/utils.py):
    the first `layers % pp` stages get one more, the split base.chunks makes."""
    return chunks(layers, pp)


# ---- the nearest layout DeepSpeed can write (what it cannot express at all: planner/solve/rules.py) ----

def nearest_layout(model: ModelSpec, st: Strategy, Ls: list[int], Rs: list[int]
                   ) -> tuple[list[int], list[int], list[str]]:
    """DeepSpeed recomputes every layer or none, and its PipelineModule balances the layers itself."""
    new_Ls, new_Rs, notes = list(Ls), list(Rs), []
    if 0 < sum(Rs) < sum(Ls):
        notes.append(f"{NAME} recomputes every layer or none: the plan's fully recomputed layers per stage {Rs} "
                     f"become all layers")
        new_Rs = list(Ls)
    if st.pp > 1 and Ls != deepspeed_split(model.layers, st.pp):
        new_Ls = deepspeed_split(model.layers, st.pp)
        notes.append(f"DeepSpeed's PipelineModule balances the transformer layers: layers per stage {Ls} "
                     f"become {new_Ls}")
        new_Rs = list(new_Ls) if new_Rs == Ls else [0] * st.pp
    return new_Ls, new_Rs, notes


# ---- emit --------------------------------------------------------------------------------------------

def deepspeed_config(model: ModelSpec, st: Strategy) -> dict:
    """A DeepSpeed JSON config (keys: deepspeed/runtime/config.py, zero/config.py, zero/offload_config.py)."""
    accum = st.micro_batches
    cfg: dict = {
        "train_batch_size": st.micro_batch * accum * st.dp,   # DeepSpeed asserts micro x accum x dp
        "train_micro_batch_size_per_gpu": st.micro_batch,
        "gradient_accumulation_steps": accum,
    }
    zero: dict = {"stage": st.zero_stage}
    if st.zero_stage >= 1:
        # the bucket sizes the plan's memory counts (costmodels/memory.py framework_buffer_bytes), written out
        zero.update({"contiguous_gradients": True, "reduce_bucket_size": DS_REDUCE_BUCKET,
                     "allgather_bucket_size": DS_ALLGATHER_BUCKET})
    if st.zero_stage == 3:
        zero["stage3_prefetch_bucket_size"] = DS_PREFETCH_BUCKET
    if st.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if st.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    cfg["zero_optimization"] = zero
    if st.precision == "bf16":
        cfg["bf16"] = {"enabled": True}
        if not st.fp32_grads:   # else fp32 accumulation (runtime/config.py data_types.grad_accum_dtype)
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
        # stages: for the training script's PipelineModule(num_stages=...), which DeepSpeed takes from code;
        # activation_checkpoint_interval: the pipeline engine sets it on the module (deepspeed/runtime/pipe/engine.py)
        cfg["pipeline"] = {"stages": st.pp, "activation_checkpoint_interval": 1 if st.recompute == "full" else 0}
    return cfg


def files(model: ModelSpec, st: Strategy, cluster: Cluster, notes: list[str], version: str | None = None
          ) -> dict[str, str]:
    head = header(model, st, cluster, "DeepSpeed launch", notes, "deepspeed")
    pipe = (["# Set in train.py (DeepSpeed takes the stage count from code, not from ds_config.json):",
             f"#   pipeline: deepspeed.pipe.PipelineModule(layers, num_stages={st.pp}, "
             "partition_method='type:<your transformer layer class>'), which gives layers "
             f"per stage {list(st.stage_layers)}; ds_config['pipeline']['stages'] records the count for the script "
             "to read, while its activation_checkpoint_interval is applied by DeepSpeed's pipeline engine itself "
             "(deepspeed/runtime/pipe/engine.py)"]
            if st.pp > 1 else [])
    if st.recompute == "full" and st.pp == 1:
        pipe += ["# Set in train.py: activation checkpointing runs only where the model calls",
                 "#   deepspeed.checkpointing.checkpoint(layer, *inputs) (one call per transformer layer); the",
                 "#   activation_checkpointing block of ds_config.json only configures those calls"]
    launch = "\n".join(["#!/usr/bin/env bash", *head, *pipe,
                        "# Run with a hostfile listing the nodes (deepspeed --hostfile) on more than one node.",
                        f"deepspeed --num_nodes {cluster.num_hosts} --num_gpus {cluster.gpus_per_host} train.py "
                        '--deepspeed --deepspeed_config "$(dirname "$0")/ds_config.json" "$@"', ""])
    return {"ds_config.json": json.dumps(deepspeed_config(model, st), indent=2) + "\n", "launch.sh": launch}


# ---- import ------------------------------------------------------------------------------------------

# the ds_config keys read_deepspeed_config reads (dotted); every other leaf is reported as ignored
DEEPSPEED_READ = frozenset({
    "train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "zero_optimization.stage",
    "zero_optimization.offload_optimizer.device", "zero_optimization.offload_param.device", "bf16.enabled",
    "fp16.enabled", "optimizer.type", "pipeline.stages", "pipeline.activation_checkpoint_interval",
    "data_types.grad_accum_dtype"})


def _load_json(config: dict | str) -> dict:
    """A ds_config given as JSON text or already parsed, a JSON object."""
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except json.JSONDecodeError as e:
            raise ConfigImportError(f"DeepSpeed config is not JSON: {e}") from None
    if not isinstance(config, dict):
        raise ConfigImportError("DeepSpeed config must be a JSON object")
    return config


def deepspeed_settings(config: dict | str) -> tuple[dict[str, object], list[str]]:
    """What read_deepspeed_config reads from a ds_config (dotted key -> value) and the keys it ignores."""
    return read_and_ignored(_load_json(config), DEEPSPEED_READ)


def read_deepspeed_config(config: dict | str, model: ModelSpec, cluster: Cluster) -> Strategy:
    """The Strategy of a DeepSpeed JSON config (tp = cp = 1; pp from its "pipeline": {"stages": n})."""
    config = _load_json(config)
    stages = (config.get("pipeline") or {}).get("stages", 1)
    pp = 1 if stages in ("auto", None) else stages
    if not isinstance(pp, int) or pp < 1 or cluster.num_gpus % pp:
        raise ConfigImportError(f"pipeline.stages {stages!r} must be a whole number dividing the {cluster.num_gpus} GPUs")
    dp = cluster.num_gpus // pp
    batch_keys = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size")
    auto = [k for k in batch_keys if config.get(k) == "auto"]
    if auto:   # the Hugging Face Trainer / accelerate fill these from their own arguments at launch
        raise ConfigImportError(f"{', '.join(auto)} {'is' if len(auto) == 1 else 'are'} \"auto\" (filled in by the "
                                f"Hugging Face Trainer or accelerate from per_device_train_batch_size and "
                                f"gradient_accumulation_steps at launch): write the numbers your run uses into the "
                                f"config, e.g. \"train_micro_batch_size_per_gpu\": 4, \"gradient_accumulation_steps\": 8")
    for k in batch_keys:
        v = config.get(k)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ConfigImportError(f"{k} {v!r} is not a whole number >= 1")
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
    if stage not in (0, 1, 2, 3):
        raise ConfigImportError(f"zero_optimization.stage {stage!r} is not 0, 1, 2 or 3")
    for block in ("bf16", "fp16"):
        if (config.get(block) or {}).get("enabled") == "auto":
            raise ConfigImportError(f'{block}.enabled is "auto" (the Hugging Face Trainer sets it from --{block}): '
                                    f"write true or false")
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
    st = Strategy(pp=pp, dp=dp, micro_batch=micro, global_batch=total, zero_stage=stage, framework="deepspeed",
                  recompute="full" if full else "none", precision=precision,
                  optimizer="sgd" if opt == "sgd" else "adam", offload_optimizer=off_opt or off_par,
                  offload_params=off_par, stage_layers=tuple(Ls) if Ls else None,
                  fp32_grads=not (precision == "bf16" and
                                  (config.get("data_types") or {}).get("grad_accum_dtype") in ("bf16", "bfloat16")))
    return canonical(model, st)
