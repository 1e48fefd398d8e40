"""`plan serve` next to NVIDIA's aiconfigurator on the same serving problems, when aiconfigurator is installed.

    pip install aiconfigurator           # optional; never a dependency of the project or its tests
    python benchmarks/vs_aiconfigurator.py [--aiconfigurator PATH] [--markdown]

For each problem (a model on 8 GPUs, prompt / output tokens, TTFT and TPOT limits, bf16 weights and KV cache
in both tools, aiconfigurator's TensorRT-LLM backend): each tool's best aggregated plan (tensor parallel,
batch per replica, replicas) and its figures, the other tool's figures for that same plan (ours through
`costmodels.serving.continuous_performance` at the plan's concurrency, aiconfigurator's through its
`cli estimate --estimate-mode agg`), each tool's best disaggregated tokens/s/GPU, and the wall time of each
tool's whole search (ours: `serve_plan` in this process, both modes; aiconfigurator: `cli default`, a
subprocess). aiconfigurator reads a Hugging Face config.json, written here from our preset.
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from costmodels.presets import get_model  # noqa: E402
from costmodels.serving import Deployment, continuous_performance  # noqa: E402
from hardware import parse_cluster  # noqa: E402
from planner.serving.search import ServeError, serve_plan  # noqa: E402

# (preset, cluster, aiconfigurator system, prompt, output, TTFT ms, TPOT ms): Llama 3.1 8B and 70B on 8 x H100 /
# 8 x H200, prompts 2048-4000, outputs 256-1000, TTFT <= 1000 ms, TPOT <= 20-50 ms
PROBLEMS = [
    ("llama3-70b", "8xH100", "h100_sxm", 2048, 256, 1000.0, 50.0),
    ("llama3-70b", "8xH200", "h200_sxm", 4000, 500, 1000.0, 30.0),
    ("llama3-70b", "8xH200", "h200_sxm", 2048, 1000, 1000.0, 40.0),
    ("llama3-8b", "8xH100", "h100_sxm", 2048, 1000, 1000.0, 20.0),
    ("llama3-8b", "8xH200", "h200_sxm", 4000, 256, 1000.0, 20.0),
]


def hf_config(name: str) -> dict:
    """A Llama-architecture Hugging Face config.json of a preset (what aiconfigurator reads)."""
    m = get_model(name)[0]
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": m.hidden,
            "intermediate_size": m.ffn_hidden, "num_attention_heads": m.heads, "num_hidden_layers": m.layers,
            "num_key_value_heads": m.kv_heads, "vocab_size": m.vocab, "max_position_embeddings": 131072,
            "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "torch_dtype": "bfloat16", "hidden_act": "silu",
            "tie_word_embeddings": False, "head_dim": m.head_dim}


def _run(cmd: list[str]) -> tuple[str, float]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return out.stdout + out.stderr, time.perf_counter() - t0


def aic_default(aic: str, cfg: Path, system: str, prompt: int, output: int, ttft: float, tpot: float,
                save: Path) -> tuple[dict | None, dict | None, float]:
    """aiconfigurator's best aggregated and disaggregated rows (its best_config_topn.csv) and its wall time."""
    _, wall = _run([aic, "cli", "default", "--model-path", str(cfg), "--total-gpus", "8", "--system", system,
                    "--backend", "trtllm", "--isl", str(prompt), "--osl", str(output), "--ttft", str(ttft),
                    "--tpot", str(tpot), "--save-dir", str(save), "--no-color"])
    best = {}
    for mode in ("agg", "disagg"):
        files = sorted(save.glob(f"*/{mode}/best_config_topn.csv"))
        rows = list(csv.DictReader(files[-1].open())) if files else []
        best[mode] = rows[0] if rows else None
    return best["agg"], best["disagg"], wall


def aic_estimate(aic: str, cfg: Path, system: str, prompt: int, output: int, tp: int, batch: int) -> dict:
    """aiconfigurator's TTFT, TPOT and tokens/s/GPU for one aggregated worker of `tp` GPUs at `batch`."""
    text, _ = _run([aic, "cli", "estimate", "--model-path", str(cfg), "--system", system, "--backend", "trtllm",
                    "--isl", str(prompt), "--osl", str(output), "--estimate-mode", "agg", "--tp", str(tp),
                    "--bs", str(batch), "--no-color"])
    out = {}
    for line in text.splitlines():
        key, _, val = line.strip().partition(":")
        if key in ("TTFT", "TPOT", "tokens/s/gpu"):
            out[key] = float(val.split()[0].replace(",", ""))
    return out


def ours_for(name: str, gpus: str, prompt: int, output: int, tp: int, batch: int) -> dict:
    """Our TTFT, TPOT and tokens/s/GPU for an aggregated replica of `tp` GPUs at `batch` concurrent requests."""
    cluster = parse_cluster(gpus)
    perf = continuous_performance(get_model(name)[0], cluster.gpu, cluster.gpus_per_node, Deployment(tp=tp), [batch],
                                  prompt, output)
    return {"TTFT": 1e3 * float(perf.ttft_s[0]), "TPOT": 1e3 * float(perf.tpot_s[0]),
            "tokens/s/gpu": float(perf.tokens_per_s[0]) / tp}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--aiconfigurator", default=shutil.which("aiconfigurator"), help="the aiconfigurator command")
    args = ap.parse_args(argv)
    if not args.aiconfigurator:
        print("aiconfigurator is not installed (pip install aiconfigurator); nothing to compare", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, gpus, system, prompt, output, ttft, tpot in PROBLEMS:
            cfg = Path(tmp) / name
            cfg.mkdir(exist_ok=True)
            (cfg / "config.json").write_text(json.dumps(hf_config(name)))
            t0 = time.perf_counter()
            serve_plan(get_model(name)[0], parse_cluster(gpus), prompt, output, ttft_ms=ttft, tpot_ms=tpot,
                             weights="bf16", kv_cache="bf16")
            ours_wall = time.perf_counter() - t0
            agg = serve_plan(get_model(name)[0], parse_cluster(gpus), prompt, output, ttft_ms=ttft, tpot_ms=tpot,
                             weights="bf16", kv_cache="bf16", mode="aggregated").plan
            try:      # the best disaggregated plan, whether or not it beats the aggregated ones
                dis = serve_plan(get_model(name)[0], parse_cluster(gpus), prompt, output, ttft_ms=ttft, tpot_ms=tpot,
                                 weights="bf16", kv_cache="bf16", mode="disaggregated").plan
            except ServeError:
                dis = None
            a_agg, a_dis, aic_wall = aic_default(args.aiconfigurator, cfg, system, prompt, output, ttft, tpot,
                                                 Path(tmp) / f"save-{len(rows)}")
            row = {"problem": f"{name} {gpus} {prompt}/{output} TTFT<={ttft:g} TPOT<={tpot:g}",
                   "ours": {"tp": agg.tp, "batch": agg.batch, "replicas": agg.replicas, "TTFT": 1e3 * agg.ttft_s,
                            "TPOT": 1e3 * agg.tpot_s, "tokens/s/gpu": agg.tokens_per_s_per_gpu,
                            "disagg tokens/s/gpu": dis.tokens_per_s_per_gpu if dis else None, "wall_s": ours_wall}}
            row["ours under aiconfigurator"] = aic_estimate(args.aiconfigurator, cfg, system, prompt, output,
                                                            agg.tp, agg.batch)
            if a_agg is not None:
                tp, bs = int(a_agg["tp"]), int(a_agg["bs"])
                row["aiconfigurator"] = {"tp": tp, "batch": bs, "replicas": 8 // (tp * int(a_agg["pp"])),
                                         "TTFT": float(a_agg["ttft"]), "TPOT": float(a_agg["tpot"]),
                                         "tokens/s/gpu": float(a_agg["tokens/s/gpu"]),
                                         "disagg tokens/s/gpu": float(a_dis["tokens/s/gpu"]) if a_dis else None,
                                         "wall_s": aic_wall}
                row["aiconfigurator under ours"] = ours_for(name, gpus, prompt, output, tp, bs)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
