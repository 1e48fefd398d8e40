"""NeMo / Megatron-Bridge YAML recipes read back into a plan (import only: plans are written for Megatron-LM,
whose arguments these recipes set under other names).

Keys are the recipes' own: NeMo 1.x Hydra configs (examples/nlp/language_modeling/conf/megatron_gpt_config.yaml:
trainer.precision, model.tensor_model_parallel_size, model.micro_batch_size, model.encoder_seq_length,
model.activations_checkpoint_granularity, model.optim.name) and Megatron-Bridge ConfigContainer overrides
(model.*_parallel_size, train.micro_batch_size / global_batch_size, dataset.sequence_length,
mixed_precision, ddp.use_distributed_optimizer; src/megatron/bridge/training/config.py).
"""
from __future__ import annotations

from costmodels.model import ModelSpec
from costmodels.strategy import Strategy
from hardware import Cluster
from planner.frameworks.base import ConfigImportError, canonical, flatten, read_and_ignored

# what read_nemo_config reads (section.key); every other leaf of the file is reported as ignored
PARALLEL_KEYS = ("model.tensor_model_parallel_size", "model.pipeline_model_parallel_size",
                 "model.context_parallel_size", "model.expert_model_parallel_size")
NEMO_READ = frozenset({
    *PARALLEL_KEYS, "model.virtual_pipeline_model_parallel_size", "model.expert_tensor_parallel_size",
    "model.micro_batch_size", "model.global_batch_size", "train.micro_batch_size", "train.global_batch_size",
    "model.encoder_seq_length", "model.seq_length", "model.seq_len", "dataset.sequence_length",
    "model.sequence_parallel", "model.activations_checkpoint_granularity", "model.recompute_granularity",
    "model.fp8", "model.optim.name", "ddp.use_distributed_optimizer", "trainer.precision", "mixed_precision",
    "model.num_layers", "model.hidden_size"})


def load_yaml(text: str) -> dict:
    try:
        import yaml
    except ImportError:
        raise ConfigImportError("reading a YAML recipe needs pyyaml (pip install pyyaml)") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigImportError(f"the recipe is not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(doc, dict):
        raise ConfigImportError("the recipe is not a YAML mapping of sections (trainer, model, ...)")
    return doc


def nemo_settings(text: str) -> tuple[dict[str, object], list[str]]:
    """What read_nemo_config reads from a recipe (section.key -> value, nulls left out) and the keys it ignores."""
    read, ignored = read_and_ignored(load_yaml(text), NEMO_READ)
    return {k: v for k, v in read.items() if v is not None}, ignored


def _first(leaves: dict, *keys: str):
    return next((leaves[k] for k in keys if leaves.get(k) is not None), None)


def _whole(leaves: dict, key: str, default: int | None = None) -> int | None:
    v = leaves.get(key)
    if v is None:
        return default
    if isinstance(v, str) and v.startswith("${"):
        raise ConfigImportError(f"{key} is {v!r}, an interpolation resolved at launch: give the recipe with its "
                                f"value written in")
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ConfigImportError(f"{key} {v!r} is not a whole number >= 1")
    return v


def _precision(leaves: dict) -> str:
    """fp8 when model.fp8 is on (Transformer Engine on top of bf16 / fp16); else trainer.precision (NeMo 1.x:
    16, "16-mixed", "bf16", "bf16-mixed", 32) or Megatron-Bridge's mixed_precision recipe name."""
    if leaves.get("model.fp8") not in (None, False, "False", "false"):
        return "fp8"
    p = str(_first(leaves, "trainer.precision", "mixed_precision") or "bf16").lower()
    if "fp8" in p:
        return "fp8"
    if "bf16" in p:
        return "bf16"
    if p.startswith("16") or "fp16" in p:
        return "fp16"
    if p.startswith("32") or "fp32" in p:
        return "fp32"
    raise ConfigImportError(f"precision {p!r} is not 16, bf16 or 32 (or a mixed-precision recipe naming one)")


def read_nemo_config(text: str, model: ModelSpec, cluster: Cluster) -> tuple[ModelSpec, Strategy]:
    """The model (with the recipe's sequence length) and the Strategy of a NeMo / Megatron-Bridge YAML recipe.
    dp = the cluster's GPUs / (tp x pp x cp), as Megatron derives it; an input without any parallel setting
    is an error, never a default plan."""
    leaves = flatten(load_yaml(text))
    for key, have in (("model.num_layers", model.layers), ("model.hidden_size", model.hidden)):
        v = leaves.get(key)
        if isinstance(v, int) and not isinstance(v, bool) and v != have:
            raise ConfigImportError(f"{key} {v} in the recipe, but --model {model.name} has {have}: give the model "
                                    f"the recipe trains")
    if not any(leaves.get(k) is not None for k in PARALLEL_KEYS):
        raise ConfigImportError("no parallel setting found (none of " + ", ".join(PARALLEL_KEYS) + "); give the "
                                "recipe that sets them")
    tp = _whole(leaves, "model.tensor_model_parallel_size", 1)
    pp = _whole(leaves, "model.pipeline_model_parallel_size", 1)
    cp = _whole(leaves, "model.context_parallel_size", 1)
    ep = _whole(leaves, "model.expert_model_parallel_size", 1)
    n = cluster.num_gpus
    if n % (tp * pp * cp):
        raise ConfigImportError(f"tp x pp x cp = {tp * pp * cp} does not divide the {n} GPUs of --gpus")
    dp = n // (tp * pp * cp)
    mb = _whole(leaves, "model.micro_batch_size") or _whole(leaves, "train.micro_batch_size") or 1
    gb = _whole(leaves, "model.global_batch_size") or _whole(leaves, "train.global_batch_size")
    if gb is None:
        raise ConfigImportError("no global batch (model.global_batch_size or train.global_batch_size)")
    seq = _first(leaves, "model.encoder_seq_length", "model.seq_length", "model.seq_len", "dataset.sequence_length")
    if seq is not None:
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            raise ConfigImportError(f"sequence length {seq!r} is not a whole number >= 1")
        model = ModelSpec(**{**model.model_dump(), "seq_len": seq}) if seq != model.seq_len else model
    v = _whole(leaves, "model.virtual_pipeline_model_parallel_size", 1)
    gran = _first(leaves, "model.activations_checkpoint_granularity", "model.recompute_granularity")
    rec = {None: "none", "selective": "selective", "full": "full"}.get(gran)
    if rec is None:
        raise ConfigImportError(f"activation checkpointing granularity {gran!r} is not selective, full or null")
    # the distributed optimizer (ZeRO-1): NeMo's distributed_fused_adam, Megatron-Bridge's ddp switch
    dist = (str(leaves.get("model.optim.name", "")).startswith("distributed")
            or leaves.get("ddp.use_distributed_optimizer") is True)
    etp = _whole(leaves, "model.expert_tensor_parallel_size")
    st = Strategy(tp=tp, pp=pp, dp=dp, cp=cp, ep=ep, expert_tp=etp if ep > 1 else None, micro_batch=mb,
                  global_batch=gb, zero_stage=1 if dist else 0, recompute=rec,
                  sequence_parallel=bool(leaves.get("model.sequence_parallel")) and tp > 1,
                  precision=_precision(leaves), virtual_stages=v, framework="megatron")
    return model, canonical(model, st)
