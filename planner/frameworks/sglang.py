"""SGLang: a serving plan as `python -m sglang.launch_server` commands (flag names as in SGLang's server
arguments, sglang/srt/server_args.py; docs.sglang.io advanced_features/server_arguments)."""
from __future__ import annotations

from costmodels.model import ModelSpec
from planner.frameworks.base import TARGETS, checkpoint_note, model_name
from planner.serving.result import ServePlan

# weights precision -> --quantization method (online fp8 from a 16-bit checkpoint; awq / gptq need theirs)
_QUANT = {"fp8": "fp8", "int8": "gptq", "int4": "awq"}


def sglang_command(model: ModelSpec, plan: ServePlan, prompt: int, output: int, util: float,
                   model_path: str | None = None) -> str:
    """The SGLang launch command(s) of a serving plan: one server of `replicas` data-parallel copies, or for a
    disaggregated plan a prefill and a decode server (--disaggregation-mode) moving KV caches over NIXL."""
    head = f"# targets: {TARGETS['sglang'][1]}\n" + checkpoint_note(plan.weights)
    if plan.prefill is None:
        return head + _one(model, plan, prompt, output, util, model_path, plan.tp, plan.pp, plan.ep, plan.replicas,
                           plan.batch, [], plan.attn_dp)
    pre = plan.prefill
    mode = ["--disaggregation-transfer-backend nixl"]
    return (head + "# disaggregated: a prefill and a decode server behind SGLang's router (sglang_router "
            "--pd-disaggregation)\n# prefill\n"
            + _one(model, plan, prompt, output, util, model_path, pre["tp"], pre["pp"], pre["ep"], pre["replicas"],
                   pre["prompts_per_pass"], ["--disaggregation-mode prefill", *mode], pre.get("attn_dp", 1))
            + "\n# decode\n"
            + _one(model, plan, prompt, output, util, model_path, plan.tp, plan.pp, plan.ep, plan.replicas,
                   plan.batch, ["--disaggregation-mode decode", *mode], plan.attn_dp))


def _one(model, plan, prompt, output, util, model_path, tp, pp, ep, replicas, seqs, extra, attn_dp=1) -> str:
    args = ["python -m sglang.launch_server", f"--model-path {model_name(model, model_path)}", f"--tp-size {tp}",
            f"--pp-size {pp}"]
    note = ""
    if attn_dp > 1:     # --dp-size with --enable-dp-attention: attention data parallel inside the tp GPUs
        args += ["--enable-dp-attention", f"--dp-size {attn_dp}"]
        if replicas > 1:
            note = f"# start {replicas} such servers behind SGLang's router (sglang_router)\n"
    elif replicas > 1:
        args.append(f"--dp-size {replicas}")
    if ep > 1:
        args.append(f"--ep-size {ep}")
    args += [f"--context-length {prompt + output}", f"--max-running-requests {seqs}",
             f"--mem-fraction-static {util:g}", *extra]
    if plan.weights in _QUANT:
        args.append(f"--quantization {_QUANT[plan.weights]}")
    if plan.kv_cache == "fp8":
        args.append("--kv-cache-dtype fp8_e4m3")
    return note + " \\\n    ".join(args)
