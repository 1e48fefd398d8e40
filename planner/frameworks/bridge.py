"""Megatron-Bridge: a plan as a Python job (bridge_job.py) that takes Megatron-Bridge's own recipe for the model
(a ConfigContainer: megatron/bridge/recipes/...) and writes the plan's settings over it, then calls its
`pretrain`; and a torchrun launch.sh. Megatron-Bridge runs Megatron-core, so the plan is priced and checked as
Megatron-LM's (ACCOUNTING) and its settings are the Megatron-LM export's (planner.frameworks.megatron), each
under its Megatron-core field name (TransformerConfig / ModelParallelConfig, DistributedDataParallelConfig,
Megatron-Bridge TrainingConfig and CommOverlapConfig: megatron/bridge/training/config.py, comm_overlap.py).
"""
from __future__ import annotations

from costmodels.model import ModelSpec
from costmodels.strategy import Strategy
from hardware import Cluster
from planner.frameworks.base import header
from planner.frameworks.megatron import megatron_args, nearest_layout  # noqa: F401 (Megatron-core's layouts)

NAME = "Megatron-Bridge"
ACCOUNTING = "megatron"      # Megatron-core underneath: its memory accounting and rules
# Megatron-Bridge's recipe functions (megatron/bridge/recipes/<family>/__init__.py, v0.3)
RECIPES = {"llama3-8b": ("llama", "llama3_8b_pretrain_config"), "llama3-70b": ("llama", "llama3_70b_pretrain_config"),
           "llama3-405b": ("llama", "llama31_405b_pretrain_config"),
           "deepseek-v3": ("deepseek", "deepseek_v3_pretrain_config"),
           "qwen3-235b-a22b": ("qwen", "qwen3_235b_a22b_pretrain_config")}

# Megatron-LM flag -> (ConfigContainer section, field); a value-less flag sets True
_FIELDS = {
    "--num-layers": ("model", "num_layers"), "--hidden-size": ("model", "hidden_size"),
    "--ffn-hidden-size": ("model", "ffn_hidden_size"), "--num-attention-heads": ("model", "num_attention_heads"),
    "--num-query-groups": ("model", "num_query_groups"), "--kv-channels": ("model", "kv_channels"),
    "--seq-length": ("model", "seq_length"),
    "--tensor-model-parallel-size": ("model", "tensor_model_parallel_size"),
    "--pipeline-model-parallel-size": ("model", "pipeline_model_parallel_size"),
    "--context-parallel-size": ("model", "context_parallel_size"),
    "--expert-model-parallel-size": ("model", "expert_model_parallel_size"),
    "--expert-tensor-parallel-size": ("model", "expert_tensor_parallel_size"),
    "--moe-token-dispatcher-type": ("model", "moe_token_dispatcher_type"),
    "--moe-flex-dispatcher-backend": ("model", "moe_flex_dispatcher_backend"),
    "--overlap-moe-expert-parallel-comm": ("model", "overlap_moe_expert_parallel_comm"),
    "--sequence-parallel": ("model", "sequence_parallel"),
    "--num-virtual-stages-per-pipeline-rank": ("model", "virtual_pipeline_model_parallel_size"),
    "--decoder-first-pipeline-num-layers": ("model", "num_layers_in_first_pipeline_stage"),
    "--decoder-last-pipeline-num-layers": ("model", "num_layers_in_last_pipeline_stage"),
    "--pipeline-model-parallel-layout": ("model", "pipeline_model_parallel_layout"),
    "--recompute-granularity": ("model", "recompute_granularity"), "--recompute-method": ("model", "recompute_method"),
    "--recompute-num-layers": ("model", "recompute_num_layers"), "--recompute-modules": ("model", "recompute_modules"),
    "--micro-batch-size": ("train", "micro_batch_size"), "--global-batch-size": ("train", "global_batch_size"),
    "--use-distributed-optimizer": ("ddp", "use_distributed_optimizer"),
    "--overlap-grad-reduce": ("ddp", "overlap_grad_reduce"), "--overlap-param-gather": ("ddp", "overlap_param_gather"),
    "--optimizer-cpu-offload": ("optimizer", "optimizer_cpu_offload"),
    "--optimizer-offload-fraction": ("optimizer", "optimizer_offload_fraction"),
    "--use-precision-aware-optimizer": ("optimizer", "use_precision_aware_optimizer"),
}
_SHAPE = {"model.num_layers", "model.hidden_size", "model.ffn_hidden_size", "model.num_attention_heads",
          "model.num_query_groups", "model.kv_channels"}
_LIST = {"--recompute-modules"}
# value-less switches of the Megatron-LM export (megatron/training/arguments.py store_true flags)
_SWITCHES = {"--overlap-moe-expert-parallel-comm", "--sequence-parallel", "--use-distributed-optimizer",
             "--overlap-grad-reduce", "--overlap-param-gather", "--optimizer-cpu-offload",
             "--use-precision-aware-optimizer"}


def bridge_settings(model: ModelSpec, st: Strategy) -> dict[str, object]:
    """{"section.field": value} of the plan: the Megatron-LM export's arguments (megatron_args) under their
    Megatron-core / Megatron-Bridge field names, with the layers per virtual stage turned into the virtual
    stage count, the mixed-precision recipe and the TP communication overlap added."""
    # a switch the Megatron-LM export leaves out is off there: off here too, whatever the recipe set
    out: dict[str, object] = {f"{sec}.{name}": False for flag, (sec, name) in _FIELDS.items() if flag in _SWITCHES}
    for group in megatron_args(model, st):
        i = 0
        while i < len(group):
            flag = group[i]
            values = []
            while i + 1 < len(group) and not group[i + 1].startswith("--"):
                values.append(group[i + 1])
                i += 1
            i += 1
            if flag == "--num-layers-per-virtual-pipeline-stage":     # layers per chunk -> chunks per stage
                out["model.virtual_pipeline_model_parallel_size"] = model.layers // (st.pp * int(values[0]))
                continue
            if flag not in _FIELDS:
                continue
            sec, name = _FIELDS[flag]
            if flag in _LIST:
                value: object = values
            elif not values:
                value = True
            else:
                value = _literal(values[0])
            out[f"{sec}.{name}"] = value
    # every parallel size, also where it is 1 (the Megatron-LM export leaves defaults out; a recipe's are not 1:
    # Llama 3 70B's runs context parallel 2)
    out.update({"model.tensor_model_parallel_size": st.tp, "model.pipeline_model_parallel_size": st.pp,
                "model.context_parallel_size": st.cp, "model.expert_model_parallel_size": st.ep,
                "model.expert_tensor_parallel_size": st.etp if model.moe is not None else None})
    if st.pp > 1 and st.virtual_stages == 1:
        out["model.virtual_pipeline_model_parallel_size"] = None
    if st.pp > 1:
        # the plan's layers per stage, as written: a recipe's own layout (Llama 3.1 405B's counts the embedding
        # and the loss as layers; DeepSeek-V3's is a layout string) would move layers between stages, and
        # Megatron-core refuses first / last stage layers beside the accounting flags
        # (megatron/core/transformer/transformer_config.py __post_init__)
        out["model.account_for_embedding_in_pipeline_split"] = False
        out["model.account_for_loss_in_pipeline_split"] = False
        out.setdefault("model.pipeline_model_parallel_layout", None)
    if st.recompute == "none":
        out["model.recompute_granularity"] = None
    recipe = {"bf16": "bf16_mixed", "fp16": "fp16_mixed", "fp32": None,
              "fp8": {"mxfp8": "bf16_with_mxfp8_mixed", "tensorwise": "bf16_with_fp8_current_scaling_mixed",
                      "blockwise": "bf16_with_fp8_subchannel_scaling_mixed"}.get(st.recipe,
                                                                              "bf16_with_fp8_delayed_scaling_mixed")}
    # the planner prices no multi-token-prediction module (costmodels.hf_config): a recipe's MTP layers are off
    out["model.mtp_num_layers"] = None
    out["mixed_precision"] = recipe[st.precision]
    if not out.get("optimizer.use_precision_aware_optimizer"):
        # fp32 main weights, gradients and Adam moments, as priced (a recipe's 16-bit ones need the
        # precision-aware optimizer, megatron/core/optimizer/optimizer_config.py)
        for name in ("main_grads_dtype", "main_params_dtype", "exp_avg_dtype", "exp_avg_sq_dtype"):
            out[f"optimizer.{name}"] = _Code("torch.float32")
    out["ddp.grad_reduce_in_fp32"] = st.fp32_grads
    out["dataset.seq_length"] = model.seq_len
    return out


class _Code(str):
    """A value written into the job as Python code (not as a string literal)."""
    def __repr__(self) -> str:
        return str(self)


def _literal(text: str) -> object:
    """An argument's value as the config field takes it: a whole number, a fraction, else the string."""
    if text.isdigit():
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


def files(model: ModelSpec, st: Strategy, cluster: Cluster, notes: list[str], version: str | None = None
          ) -> dict[str, str]:
    family, fn = RECIPES.get(model.name, ("llama", "llama3_8b_pretrain_config"))
    settings = bridge_settings(model, st)
    more = [] if model.name in RECIPES else [
        f"Megatron-Bridge has no recipe for {model.name}: bridge_job.py starts from {fn} and writes {model.name}'s "
        f"shape over it (layers, widths, heads); check its model provider's other settings (norm, activation, "
        f"positions, vocabulary)"]
    if model.name in RECIPES:
        settings = {k: v for k, v in settings.items() if k not in _SHAPE}
    if model.name == "deepseek-v3":
        more.append("the recipe's multi-token-prediction layer is switched off (model.mtp_num_layers = None): the "
                    "plan does not price it; set it back to 1 to train with it (about one more layer's time and "
                    "memory on the last stage)")
    head = header(model, st, cluster, "Megatron-Bridge job (recipe + the plan's settings)", notes + more, "bridge")
    lines = [*head,
             *(["import torch"] if any(isinstance(v, _Code) for v in settings.values()) else []),
             "from megatron.bridge.training.comm_overlap import CommOverlapConfig",
             "from megatron.bridge.training.gpt_step import forward_step",
             "from megatron.bridge.training.pretrain import pretrain",
             f"from megatron.bridge.recipes.{family} import {fn} as recipe",
             "", "",
             "def plan():",
             f"    \"\"\"Megatron-Bridge's {fn} with this plan's parallelism, batch, recompute and precision.\"\"\"",
             "    cfg = recipe()",
             *(f"    cfg.{k} = {v!r}" for k, v in settings.items()),
             # the recipe's userbuffer settings are for its own TP size: the plan's overlap, default buffers
             f"    cfg.comm_overlap = CommOverlapConfig(tp_comm_overlap={st.tp_comm_overlap})",
             "    return cfg",
             "", "",
             'if __name__ == "__main__":',
             "    pretrain(plan(), forward_step)",
             ""]
    launch = "\n".join([
        "#!/usr/bin/env bash",
        f"# Launch on {cluster.num_hosts} node(s) x {cluster.gpus_per_host} GPUs: run on every node with NODE_RANK and",
        "# MASTER_ADDR set, with Megatron-Bridge installed. Set your data and tokenizer in bridge_job.py.",
        *(["export CUDA_DEVICE_MAX_CONNECTIONS=1"] if st.tp > 1 or st.cp > 1 else []),
        f"torchrun --nnodes {cluster.num_hosts} --nproc-per-node {cluster.gpus_per_host} "
        '--node-rank "${NODE_RANK:-0}" --master-addr "${MASTER_ADDR:-localhost}" --master-port 6000 \\',
        '    "$(dirname "$0")/bridge_job.py" "$@"', ""])
    return {"bridge_job.py": "\n".join(lines), "launch.sh": launch}
