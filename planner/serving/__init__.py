"""Serving plans: deployments searched for throughput, latency or cost under SLAs (search), and the
output schema (result). Rendering is planner.report.serving, the `vllm serve` command
planner.frameworks.vllm, the serving/v1 validation rows planner.validation.serving."""
