"""Parse `plan serve --emit` commands with each serving engine's own argument parser, where it is installed.

The engines take minutes to install and need a GPU build for most of their code, so this is a script, not
part of the test run: install one of them (`pip install vllm`, `pip install "sglang[srt]"`,
`pip install tensorrt-llm`) and run

    python benchmarks/check_engines.py

For six serving plans (Llama 3.1 8B / 70B, Mixtral 8x7B on H100 and A100, aggregated and disaggregated, 16-bit
and FP8) it
builds every engine's command (planner.frameworks.api.with_serving_commands), splits it as a shell would and
hands the flags to the engine's parser: vLLM's engine arguments (AsyncEngineArgs.add_cli_args), SGLang's
ServerArgs.add_cli_args + ServerArgs.from_cli_args, TensorRT-LLM's trtllm-serve click command. It prints one
line per plan and engine: ok, the parser's error, or "not installed". Exit 1 if any installed engine refuses
a command.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from costmodels.presets import get_model  # noqa: E402
from hardware import parse_cluster  # noqa: E402
from planner.frameworks.api import with_serving_commands  # noqa: E402
from planner.serving.search import serve_plan  # noqa: E402

CASES = [  # (model, gpus, prompt, output, keyword arguments of serve_plan)
    ("llama3-8b", "8xH100", 1024, 256, {"tpot_ms": 30.0, "mode": "aggregated"}),
    ("llama3-70b", "8xH100", 2048, 256, {"tpot_ms": 50.0, "mode": "aggregated"}),
    ("llama3-70b", "8xH100", 2048, 256, {"ttft_ms": 1000.0, "tpot_ms": 50.0, "mode": "disaggregated"}),
    ("mixtral-8x7b", "8xH100", 1024, 256, {"mode": "aggregated"}),
    ("llama3-70b", "8xA100", 1024, 256, {"weights": "bf16", "kv_cache": "bf16", "mode": "aggregated"}),
    ("llama3-70b", "8xH100", 2048, 256, {"weights": "fp8", "kv_cache": "fp8", "mode": "aggregated"}),
]


def commands(text: str) -> list[list[str]]:
    """The argument lists of the commands in an emitted text (comment lines dropped)."""
    out, current = [], []
    for line in text.splitlines():
        if line.startswith("#"):
            if current:
                out.append(shlex.split(" ".join(current)))
                current = []
            continue
        current.append(line.rstrip("\\").strip())
    if current:
        out.append(shlex.split(" ".join(current)))
    return [c for c in out if c]


def check_vllm(argv: list[str]) -> str:
    try:
        from vllm.engine.arg_utils import AsyncEngineArgs
    except ImportError:
        return "not installed"
    try:
        from vllm.utils import FlexibleArgumentParser
    except ImportError:   # newer releases
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    import vllm.platforms
    if not vllm.platforms.current_platform.device_type:
        # a CUDA wheel on a machine without a GPU finds no platform, and the parser's defaults need one: parse
        # as vLLM's CPU platform would (the flags are the same; only device defaults differ)
        from vllm.platforms.cpu import CpuPlatform
        vllm.platforms.current_platform = CpuPlatform()
    parser = AsyncEngineArgs.add_cli_args(FlexibleArgumentParser())
    model, flags = argv[2], argv[3:]          # vllm serve MODEL --flag ...
    try:
        AsyncEngineArgs.from_cli_args(parser.parse_args(["--model", model, *flags]))
    except SystemExit as e:
        return f"refused (exit {e.code})"
    return "ok"


def check_sglang(argv: list[str]) -> str:
    try:
        from sglang.srt.server_args import ServerArgs
    except ImportError:
        return "not installed"
    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    flags = argv[argv.index("sglang.launch_server") + 1:]
    try:
        ServerArgs.from_cli_args(parser.parse_args(flags))
    except SystemExit as e:
        return f"refused (exit {e.code})"
    return "ok"


def check_trtllm(argv: list[str]) -> str:
    try:
        from tensorrt_llm.commands.serve import main as serve
    except ImportError:
        return "not installed"
    import click

    try:
        serve.make_context("trtllm-serve", argv[1:])
    except click.ClickException as e:   # a usage error; anything else is a fault and propagates
        return f"refused ({e.format_message()})"
    return "ok"


CHECKS = {"vllm": check_vllm, "sglang": check_sglang, "trtllm": check_trtllm}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Parse plan serve's commands with the engines' own parsers.")
    ap.add_argument("--engine", choices=sorted(CHECKS), action="append",
                    help="Check only this engine (repeatable); engines installed side by side may need separate "
                         "environments (vLLM and SGLang pin different openai versions)")
    engines = ap.parse_args(argv).engine or list(CHECKS)
    refused = 0
    for name, gpus, prompt, output, kw in CASES:
        model, _ = get_model(name)
        res = with_serving_commands(serve_plan(model, parse_cluster(gpus), prompt, output, **kw), model)
        for engine, text in res.commands.items():
            if engine not in engines:
                continue
            for argv in commands(text):
                verdict = CHECKS[engine](argv)
                refused += verdict.startswith("refused")
                print(f"{name} on {gpus} ({kw.get('mode')}): {engine}: {verdict}: {' '.join(argv)[:100]}")
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
