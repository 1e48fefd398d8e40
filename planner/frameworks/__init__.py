"""Training and serving frameworks: emit a plan as a framework's configuration and read one back.

One module per framework, emit and import side by side: megatron (Megatron-LM arguments), deepspeed
(DeepSpeed JSON config), torchtitan (TOML job config), vllm (`vllm serve` command); base holds what they
share (Export, the error types, the canonical plan, the layer split, file headers); api dispatches over
them (export, export_best, import_plan, ...). The framework modules import base only; api imports them.
"""
