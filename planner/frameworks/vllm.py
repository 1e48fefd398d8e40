"""vLLM: a serving plan as the `vllm serve` command (flag names as in vLLM's engine arguments,
vllm/engine/arg_utils.py)."""
from __future__ import annotations

from pathlib import Path

from costmodels.model import ModelSpec
from planner.frameworks.base import TARGETS, checkpoint_note, model_name
from planner.serving.result import ServePlan, ServeResult

# weights precision -> vLLM --quantization method (names: vllm/model_executor/layers/quantization/__init__.py)
# and the checkpoint it needs
_VLLM_QUANT = {"fp8": "fp8", "int8": "gptq", "int4": "awq"}


# disaggregated prefill / decode: each vLLM instance moves KV caches through a connector
# (docs/features/nixl_connector_usage.md: NixlConnector, kv_role kv_both on prefill and decode instances)
_KV_TRANSFER = """--kv-transfer-config '{"kv_connector":"NixlConnector","kv_role":"kv_both"}'"""


def vllm_command(model: ModelSpec, plan: ServePlan, prompt: int, output: int, util: float,
                 model_path: str | None = None) -> str:
    """The `vllm serve` command of a serving plan; for a disaggregated plan, the prefill and the decode
    instances' commands (behind a router that sends each request to both, as vLLM's disaggregated examples
    do)."""
    return f"# targets: {TARGETS['vllm'][1]}\n" + _commands(model, plan, prompt, output, util, model_path)


def _commands(model: ModelSpec, plan: ServePlan, prompt: int, output: int, util: float,
              model_path: str | None) -> str:
    if plan.prefill is not None:
        pre = plan.prefill
        prefill = _one_command(model, plan, prompt, output, util, model_path, pre["tp"], pre["pp"], pre["ep"],
                               pre["replicas"], pre["prompts_per_pass"], [_KV_TRANSFER], pre.get("attn_dp", 1))
        decode = _one_command(model, plan, prompt, output, util, model_path, plan.tp, plan.pp, plan.ep,
                              plan.replicas, plan.batch, [_KV_TRANSFER], plan.attn_dp)
        return (f"# disaggregated: {pre['replicas']} prefill instance(s) and {plan.replicas} decode instance(s), "
                f"KV caches over NIXL\n# prefill\n{prefill}\n# decode\n{decode}")
    return _one_command(model, plan, prompt, output, util, model_path, plan.tp, plan.pp, plan.ep, plan.replicas,
                        plan.batch, [], plan.attn_dp)


def _one_command(model: ModelSpec, plan: ServePlan, prompt: int, output: int, util: float, model_path: str | None,
                 tp: int, pp: int, ep: int, replicas: int, seqs: int, extra: list[str], attn_dp: int = 1) -> str:
    name = model_name(model, model_path)
    note = ""
    if attn_dp > 1:     # attention data parallel: tp / attn_dp per data-parallel rank, experts over all of them
        args = ["vllm serve", name, f"--tensor-parallel-size {tp // attn_dp}", f"--pipeline-parallel-size {pp}",
                f"--data-parallel-size {attn_dp}", "--enable-expert-parallel"]
        note = f"# start {replicas} such instances behind a load balancer\n" if replicas > 1 else ""
        seqs = -(-seqs // attn_dp)      # --max-num-seqs is per data-parallel rank
    else:
        args = ["vllm serve", name, f"--tensor-parallel-size {tp}", f"--pipeline-parallel-size {pp}"]
        if replicas > 1:
            args.append(f"--data-parallel-size {replicas}")
        if ep > 1:
            args.append("--enable-expert-parallel")
    args += [f"--max-model-len {prompt + output}", f"--max-num-seqs {seqs}",
             f"--gpu-memory-utilization {util:g}", *extra]
    if plan.weights in _VLLM_QUANT:
        args.append(f"--quantization {_VLLM_QUANT[plan.weights]}")
    else:
        args.append(f"--dtype {'float16' if plan.weights == 'fp16' else 'bfloat16'}")
    args.append(f"--kv-cache-dtype {'fp8' if plan.kv_cache == 'fp8' else 'auto'}")
    return checkpoint_note(plan.weights) + note + " \\\n    ".join(args)



def with_vllm_command(result: ServeResult, model: ModelSpec, model_path: str | None = None) -> ServeResult:
    """`result` (planner.serving.search.serve_plan) with its best plan's `vllm serve` command filled in
    (planner.frameworks.api.with_serving_commands fills every engine's)."""
    util = result.assumptions["gpu_memory_utilization"]
    rq = result.request
    cmd = vllm_command(model, result.plan, rq["prompt_tokens"], rq["output_tokens"], util, model_path)
    return result.model_copy(update={"vllm_command": cmd})


def model_path_for(model_name: str) -> str | None:
    """A Hugging Face config.json path given as --model becomes the vllm serve model directory."""
    p = Path(model_name).expanduser()
    if p.is_file():
        return str(p.parent)
    if p.is_dir():
        return str(p)
    return None
