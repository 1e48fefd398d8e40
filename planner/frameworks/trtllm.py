"""TensorRT-LLM: a serving plan as `trtllm-serve` commands (PyTorch backend; options as in its trtllm-serve
reference, tensorrt_llm/commands/serve.py)."""
from __future__ import annotations

from costmodels.calibration import SERVING
from costmodels.model import ModelSpec
from planner.frameworks.base import TARGETS, checkpoint_note, model_name
from planner.serving.result import ServePlan


def trtllm_command(model: ModelSpec, plan: ServePlan, prompt: int, output: int, util: float,
                   model_path: str | None = None) -> str:
    """The trtllm-serve command(s) of a serving plan. trtllm-serve runs one replica per instance (no data-parallel
    flag): the comment says how many to start; quantised weights come from a quantised checkpoint and an FP8 KV
    cache from the LLM API options (kv_cache_config dtype fp8)."""
    lines = [f"# targets: {TARGETS['trtllm'][1]}"]
    note = checkpoint_note(plan.weights if plan.weights != "fp8" else "fp8-checkpoint")
    if note:
        lines.append(note.rstrip("\n"))
    if plan.kv_cache == "fp8":
        lines.append("# FP8 KV cache: pass --extra_llm_api_options FILE.yaml holding kv_cache_config: {dtype: fp8}")
    if plan.attn_dp > 1 or (plan.prefill or {}).get("attn_dp", 1) > 1:
        lines.append("# attention data parallel: the same --extra_llm_api_options FILE.yaml holds enable_attention_dp: true")
    if plan.prefill is None:
        lines.append(f"# start {plan.replicas} instance(s) of this command behind a load balancer")
        return "\n".join(lines) + "\n" + _one(model, plan, prompt, output, util, model_path, plan.tp, plan.pp,
                                                plan.ep, plan.batch)
    pre = plan.prefill
    lines.append(f"# disaggregated: {pre['replicas']} prefill and {plan.replicas} decode instance(s) under "
                 "`trtllm-serve disaggregated` (its config lists the context and generation servers)")
    return ("\n".join(lines) + "\n# prefill (context)\n"
            + _one(model, plan, prompt, output, util, model_path, pre["tp"], pre["pp"], pre["ep"],
                   pre["prompts_per_pass"])
            + "\n# decode (generation)\n"
            + _one(model, plan, prompt, output, util, model_path, plan.tp, plan.pp, plan.ep, plan.batch))


def _one(model, plan, prompt, output, util, model_path, tp, pp, ep, seqs) -> str:
    args = [f"trtllm-serve {model_name(model, model_path)}", "--backend pytorch", f"--tp_size {tp}",
            f"--pp_size {pp}"]
    if ep > 1:
        args.append(f"--ep_size {ep}")
    args += [f"--max_batch_size {seqs}", f"--max_num_tokens {SERVING.prefill_chunk_tokens}",
             f"--max_seq_len {prompt + output}", f"--kv_cache_free_gpu_memory_fraction {util:g}"]
    return " \\\n    ".join(args)
