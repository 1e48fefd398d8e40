"""`plan validate`: predict published training runs (schema runs/v1) and report the errors.

Each run is rebuilt from its own fields (shape, cluster, parallel configuration) and predicted in the
measured quantity and FLOP convention the source uses. Fields the source leaves null are filled the way
an operator tuning that run would: the fastest value that fits in memory (micro-batch, interleaving,
recompute). Nothing here knows a run by its id.
"""
from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from costmodels.flops import llm_foundry_flops_per_step, model_flops_per_step, narayanan_flops_per_step
from costmodels.model import ModelError, ModelSpec, MoESpec
from costmodels.performance import Evaluation, evaluate, evaluate_layout, stage_costs
from costmodels.strategy import Strategy, StrategyError
from hardware import Cluster, HardwareError, load_catalog
from planner.solve.solver import solve_layout
from planner.solve.space import check_strategy, divisors

# the first one a run reports is predicted; peak memory only when the run reports no speed
METRICS = ("step_time_s", "tokens_per_s_per_gpu", "tflops_per_gpu", "mfu", "hfu", "peak_memory_gb")


class ValidationFileError(ValueError):
    """The runs file cannot be read; the message names the file and the problem."""


class RunResult(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    metric: str | None
    measured: float | None
    predicted: float | None
    pct_error: float | None          # (predicted - measured) / measured, as a fraction
    skipped: str | None = None       # why the run could not be predicted
    filled: dict = {}                # unknown fields chosen by the planner
    peak_memory_gb: float | None = None


class Summary(BaseModel):
    model_config = ConfigDict(extra="forbid")
    count: int
    predicted: int
    skipped: int
    median_abs_pct_error: float | None
    mean_abs_pct_error: float | None
    max_abs_pct_error: float | None
    within_10pct: float | None
    within_20pct: float | None


class ValidationResult(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_: str
    file: str
    summary: Summary
    runs: list[RunResult]

    def as_json(self) -> dict:
        d = self.model_dump(mode="json")
        d["schema"] = d.pop("schema_")
        return d


def load_runs(path: str | Path) -> tuple[str, list[dict]]:
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValidationFileError(f"runs file {p} does not exist") from None
    except IsADirectoryError:
        raise ValidationFileError(f"runs file {p} is a directory; give a runs/v1 or serving/v1 JSON file") from None
    except OSError as e:
        raise ValidationFileError(f"runs file {p} cannot be read ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise ValidationFileError(f"runs file {p} is not UTF-8 text; give a runs/v1 or serving/v1 JSON file") from None
    except json.JSONDecodeError as e:
        raise ValidationFileError(f"runs file {p} is not valid JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(doc, dict) or "schema" not in doc:
        raise ValidationFileError(f"runs file {p} has no 'schema' key; expected {{\"schema\": \"runs/v1\", \"runs\": [...]}}")
    schema = doc["schema"]
    if schema not in ("runs/v1", "serving/v1"):
        raise ValidationFileError(f"runs file {p} has schema {schema!r}; supported: runs/v1, serving/v1")
    runs = doc.get("runs")
    if not isinstance(runs, list) or not runs:
        raise ValidationFileError(f"runs file {p} has no runs (key 'runs' must be a non-empty list)")
    return schema, runs


def validate_file(path: str | Path) -> ValidationResult:
    schema, runs = load_runs(path)
    results = []
    for i, run in enumerate(runs):
        rid = str(run.get("id", f"run-{i}")) if isinstance(run, dict) else f"run-{i}"
        try:
            if schema == "serving/v1":   # inference rows: planner.serving.serve predicts each in its mode
                from planner.serving.serve import predict_serving_run
                results.append(predict_serving_run(run))
                continue
            results.append(predict_run(run))
        except (KeyError, TypeError, ValueError, ModelError, StrategyError, HardwareError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            if isinstance(e, KeyError):
                msg = f"missing field {e}"
            results.append(RunResult(id=rid, metric=None, measured=None, predicted=None, pct_error=None, skipped=msg))
    return ValidationResult(schema_=schema, file=str(path), summary=summarise(results), runs=results)


def summarise(results: list[RunResult]) -> Summary:
    errs = [abs(r.pct_error) for r in results if r.pct_error is not None]
    n = len(errs)
    return Summary(
        count=len(results), predicted=n, skipped=len(results) - n,
        median_abs_pct_error=statistics.median(errs) if n else None,
        mean_abs_pct_error=statistics.fmean(errs) if n else None,
        max_abs_pct_error=max(errs) if n else None,
        within_10pct=sum(e <= 0.10 for e in errs) / n if n else None,
        within_20pct=sum(e <= 0.20 for e in errs) / n if n else None,
    )


# --- one run ----------------------------------------------------------------------------------------
def run_model(m: dict) -> ModelSpec:
    """The run's shape. GELU models are GPT-style (learned positions, biases, tied embeddings);
    SwiGLU models Llama-style (RoPE, no biases, untied)."""
    gpt_style = (m.get("ffn_type") or "gelu") == "gelu"
    moe = m.get("moe")
    return ModelSpec(
        name=m.get("name") or "run-model", layers=m["layers"], hidden=m["hidden"], heads=m["heads"],
        kv_heads=m.get("kv_heads"), ffn_hidden=m.get("ffn_hidden"), ffn_type=m.get("ffn_type") or "gelu",
        vocab=m.get("vocab") or 51200, seq_len=m["seq_len"], tied_embeddings=gpt_style,
        position_embedding="learned" if gpt_style else "rope", bias=gpt_style,
        norm="layernorm" if gpt_style else "rmsnorm",
        moe=MoESpec(experts=moe["experts"], top_k=moe["top_k"], expert_ffn_hidden=moe["expert_ffn_hidden"],
                    shared_experts=moe.get("shared_experts") or 0,
                    layer_freq=_moe_freq(m["layers"], moe.get("moe_layers"))) if moe else None,
    )


def _moe_freq(layers: int, moe_layers) -> int:
    if not moe_layers:
        return 1
    return max(1, round(layers / moe_layers))


_RATE = re.compile(r"(?:(\d+)\s*[x\u00d7]\s*(?:[A-Za-z-]+\s+)?)?(\d+(?:\.\d+)?)\s*([GT])b(?:/s|ps|it/s|s)\b", re.I)
_PER_GPU = re.compile(r"per\s+gpu|/\s*gpu|each\s+gpu", re.I)
_PER_NODE = re.compile(r"per\s+node|/\s*node", re.I)


def network_gbps_per_gpu(text: str | None, gpus_per_node: int) -> float | None:
    """Per-GPU network bandwidth (GB/s, one direction) from the run's interconnect text, e.g.
    '8x HDR 200Gb/s per node' -> 8*200/8/8 = 25; 'RoCE 1600 Gb/s per node' -> 25; '400Gb/s per GPU' -> 50;
    '3200 Gbps EFA per node' -> 50. A rate with a count ('8x 200Gb/s') and no scope is taken per node;
    anything else unclear leaves the catalog's figure."""
    if not text:
        return None
    mt = _RATE.search(text)
    if not mt:
        return None
    count = int(mt.group(1)) if mt.group(1) else 1
    gbit = count * float(mt.group(2)) * (1000.0 if mt.group(3).lower() == "t" else 1.0)
    if _PER_GPU.search(text):
        per_gpu = gbit
    elif _PER_NODE.search(text) or mt.group(1):
        per_gpu = gbit / gpus_per_node
    else:
        return None
    return per_gpu / 8.0


def run_cluster(h: dict) -> Cluster:
    gpu, note = load_catalog().resolve(h["gpu"])
    n, gpn = int(h["num_gpus"]), int(h.get("gpus_per_node") or gpu.gpus_per_node)
    gpn = min(gpn, n)
    net = network_gbps_per_gpu(h.get("interconnect"), gpn)
    if net:
        gpu = gpu.model_copy(update={"inter_node_gbps": net})
    if n % gpn:
        raise ValueError(f"num_gpus {n} is not a multiple of gpus_per_node {gpn}")
    return Cluster(gpu=gpu, num_nodes=n // gpn, gpus_per_node=gpn, note=note)


def uses_flash_attention(run: dict) -> bool:
    """FlashAttention when the run says so; fp16 Megatron-era runs (before FlashAttention, 2022) without
    it; bf16 / fp8 runs with it (the default of every current framework)."""
    text = (run.get("notes") or "").lower() + " " + (run.get("strategy", {}).get("framework") or "").lower()
    if "flash" in text:
        return True
    return (run.get("strategy", {}).get("precision") or "bf16") != "fp16"


def candidate_strategies(model: ModelSpec, s: dict, cluster: Cluster, flash: bool) -> list[Strategy]:
    """The run's strategy, with every null field expanded to the values the rules allow."""
    tp, pp, dp = int(s["tp"]), int(s["pp"]), int(s["dp"])
    cp, ep = int(s.get("cp") or 1), int(s.get("ep") or 1)
    gb = int(s["global_batch"])
    if gb % dp:
        raise ValueError(f"global_batch {gb} is not divisible by dp {dp}")
    mbs = [int(s["micro_batch"])] if s.get("micro_batch") else [d for d in divisors(gb // dp) if d <= 16]
    recs = [s["recompute"]] if s.get("recompute") else ["none", "selective", "full"]
    zeros = [int(s["zero_stage"])] if s.get("zero_stage") is not None else [0, 1]
    sp = s.get("sequence_parallel")
    sps = [bool(sp)] if sp is not None else [False]   # unknown: Megatron's default (off; it is opt-in)
    precision = s.get("precision") or "bf16"
    out = []
    for mb in mbs:
        m = gb // (dp * mb)
        vs = [int(s["virtual_stages"])] if s.get("virtual_stages") else (
            [v for v in range(1, 9) if v == 1 or (model.layers >= pp * v and m % pp == 0)] if pp > 1 else [1])
        for v in vs:
            for rec in recs:
                for z in zeros:
                    for spv in sps:
                        out.append(Strategy(tp=tp, pp=pp, dp=dp, cp=cp, ep=ep, micro_batch=mb, global_batch=gb,
                                            zero_stage=z, recompute=rec, sequence_parallel=spv,
                                            precision=precision, virtual_stages=v, flash_attention=flash))
    return out


def predict_run(run: dict) -> RunResult:
    rid = str(run["id"])
    measured = run.get("measured") or {}
    metric = next((k for k in METRICS if measured.get(k) is not None), None)
    if metric is None:
        return RunResult(id=rid, metric=None, measured=None, predicted=None, pct_error=None,
                         skipped="no measured step_time_s, tokens_per_s_per_gpu, tflops_per_gpu, mfu, hfu "
                                 "or peak_memory_gb")
    model = run_model(run["model"])
    cluster = run_cluster(run["hardware"])
    flash = uses_flash_attention(run)
    cands = candidate_strategies(model, run["strategy"], cluster, flash)
    best: Evaluation | None = None
    broken: StrategyError | None = None
    for st in cands:
        try:
            check_strategy(model, st, cluster.num_gpus, cluster.gpus_per_node, tp_across_nodes=True)
        except StrategyError as e:
            broken = broken or e
            continue
        if st.recompute == "full" and not run["strategy"].get("recompute"):
            ev = _best_block_recompute(model, st, cluster)   # unknown recompute: per-stage counts, as tuned
            if ev is None:
                continue
        else:
            ev = evaluate(model, st, cluster)
        if len(cands) > 1 and not ev.fits:
            continue
        if best is None or ev.step_time_s < best.step_time_s:
            best = ev
    if best is None:
        reason = str(broken) if broken is not None and not any_valid(cands, model, cluster) else \
            "no completion of the unknown fields fits in GPU memory"
        return RunResult(id=rid, metric=metric, measured=measured[metric], predicted=None, pct_error=None,
                         skipped=reason)
    predicted = _metric(metric, best, model, run, cluster)
    filled = {k: getattr(best.strategy, f) for k, f in (("micro_batch", "micro_batch"), ("virtual_stages", "virtual_stages"),
                                                        ("recompute", "recompute"), ("zero_stage", "zero_stage"))
              if run["strategy"].get(k) is None}
    meas = float(measured[metric])
    return RunResult(id=rid, metric=metric, measured=meas, predicted=predicted,
                     pct_error=(predicted - meas) / meas, filled=filled,
                     peak_memory_gb=max(best.stage_memory_b) / 1e9)


def any_valid(cands: list[Strategy], model: ModelSpec, cluster: Cluster) -> bool:
    """Whether some candidate passes the rules (so a skip is about memory, not about a rule)."""
    for st in cands:
        try:
            check_strategy(model, st, cluster.num_gpus, cluster.gpus_per_node, tp_across_nodes=True)
            return True
        except StrategyError:
            pass
    return False


def _best_block_recompute(model: ModelSpec, st: Strategy, cluster: Cluster) -> Evaluation | None:
    """Fewest recomputed layers per stage that fit (Megatron's block recompute), layers as the solver
    places them when stages may be uneven."""
    sc = stage_costs(model, st, cluster)
    layout = solve_layout(sc, int(cluster.gpu.memory_bytes), free=True, time_limit_s=5.0)
    if layout is None:
        return None
    final = st.with_(stage_layers=tuple(layout.stage_layers), recompute_layers=tuple(layout.recompute_layers))
    return evaluate_layout(model, final, cluster, sc, layout.stage_layers, layout.recompute_layers)


def _metric(metric: str, ev: Evaluation, model: ModelSpec, run: dict, cluster: Cluster) -> float:
    st = ev.strategy
    n = cluster.num_gpus
    if metric == "peak_memory_gb":     # the most loaded GPU, GB = 1e9 bytes (weights, grads, states, activations)
        return max(ev.stage_memory_b) / 1e9
    if metric == "step_time_s":
        return ev.step_time_s
    if metric == "tokens_per_s_per_gpu":
        return ev.tokens_per_s / n
    flops = step_flops(run, model, st.global_batch)
    if metric == "tflops_per_gpu":
        return flops / ev.step_time_s / n / 1e12
    if metric == "hfu":   # hardware FLOPs: the source's model FLOPs plus the recomputed forward (PaLM, appendix B)
        flops += ev.hardware_flops - ev.model_flops
    return flops / ev.step_time_s / (n * mfu_peak(run, cluster, st.precision))


def mfu_peak(run: dict, cluster: Cluster, precision: str) -> float:
    """The peak (FLOP/s per GPU) the source divides by: a figure its flops_counting text states that
    matches one of this GPU's datasheet peaks, else the 16-bit peak (fp8 runs are usually reported against
    the bf16 peak, e.g. Llama 3's 'BF16 peak 989 TFLOP/s'), else the precision's own peak."""
    gpu = cluster.gpu
    text = run.get("measured", {}).get("flops_counting") or ""
    peaks = {round(v, 1) for v in gpu.tflops.values() if v}
    for num in re.findall(r"\d+(?:\.\d+)?", text):
        if round(float(num), 1) in peaks:
            return float(num) * 1e12
    for p16 in ("bf16", "fp16"):
        if gpu.tflops.get(p16):
            return gpu.tflops[p16] * 1e12
    return gpu.peak_tflops(precision) * 1e12


def step_flops(run: dict, model: ModelSpec, global_batch: int) -> float:
    """FLOPs per step in the source's own convention (runs/README.md, `flops_counting`)."""
    conv = (run.get("measured", {}).get("flops_counting") or "").lower()
    if "narayanan" in conv or "96*b*s*l*h" in conv.replace(" ", ""):
        return narayanan_flops_per_step(model, global_batch, model.seq_len)
    if "foundry" in conv or "6*n*s" in conv.replace(" ", ""):
        params_b = run.get("model", {}).get("params_b")
        n_params = params_b * 1e9 if params_b else model.params_total()
        seq = model.seq_len
        return global_batch * (6.0 * n_params * seq + 12.0 * model.layers * model.hidden * seq * seq)
    return model_flops_per_step(model, global_batch, model.seq_len)


def render_markdown(result: ValidationResult, plot: str | None = None) -> str:
    """docs/validation.md: the table and the summary, with the command that regenerates them."""
    from costmodels.calibration import CALIBRATION

    s = result.summary
    lines = [
        "# Validation against published training runs",
        "",
        "Regenerate with:",
        "",
        "```bash",
        f"plan validate --runs {result.file} --markdown docs/validation.md --plot docs/validation.png",
        "```",
        "",
    ]
    if s.predicted:
        lines += [f"**{s.predicted} of {s.count} runs predicted** ({s.skipped} skipped): median |error| "
                  f"{100 * s.median_abs_pct_error:.1f}%, mean {100 * s.mean_abs_pct_error:.1f}%, "
                  f"max {100 * s.max_abs_pct_error:.1f}%; {100 * s.within_10pct:.0f}% of runs within 10%, "
                  f"{100 * s.within_20pct:.0f}% within 20%.", ""]
    if plot:
        lines += [f"![prediction errors]({Path(plot).name})", ""]
    lines += ["| run | metric | measured | predicted | error | chosen for unknown fields |",
              "|---|---|---:|---:|---:|---|"]
    for r in result.runs:
        if r.pct_error is None:
            lines.append(f"| {r.id} | {r.metric or '-'} | {r.measured or '-'} | - | - | skipped: {r.skipped} |")
        else:
            filled = ", ".join(f"{k}={v}" for k, v in r.filled.items())
            lines.append(f"| {r.id} | {r.metric} | {r.measured:.4g} | {r.predicted:.4g} | "
                         f"{100 * r.pct_error:+.1f}% | {filled} |")
    lines += ["", "## Fitted constants (costmodels/calibration.py)", "",
              "| family | GEMM efficiency | GEMM half-efficiency dim | flash attention efficiency | HBM efficiency |",
              "|---|---:|---:|---:|---:|"]
    for fam, c in CALIBRATION.items():
        lines.append(f"| {fam} | {c.gemm_efficiency} | {c.gemm_half_dim:g} | {c.attention_efficiency} | {c.hbm_efficiency} |")
    lines += ["", "Unknown fields of a run (null in the file) are filled with the fastest value that fits in memory, as "
              "an operator tuning that run would; the network bandwidth comes from the run's interconnect text when "
              "it states one. No constant is keyed to a run.", ""]
    from planner.validation.paper_memory import figure1_markdown

    lines += figure1_markdown()
    return "\n".join(lines)


def render_plot(result: ValidationResult, path: str | Path) -> None:
    """Bar chart of signed % error per run (matplotlib, Agg backend)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result.runs if r.pct_error is not None]
    fig, ax = plt.subplots(figsize=(10, max(3.0, 0.28 * len(rows) + 1)), dpi=100)
    ys = range(len(rows))
    errs = [100 * r.pct_error for r in rows]
    ax.barh(list(ys), errs, color=["#2a7" if abs(e) <= 10 else ("#d90" if abs(e) <= 20 else "#c33") for e in errs])
    ax.set_yticks(list(ys), [f"{r.id} ({r.metric})" for r in rows], fontsize=7)
    ax.axvline(0, color="k", lw=0.8)
    for x in (-10, 10):
        ax.axvline(x, color="grey", lw=0.6, ls="--")
    s = result.summary
    ax.set_xlabel("prediction error, % of measured")
    ax.set_title(f"{Path(result.file).name}: median |error| {100 * (s.median_abs_pct_error or 0):.1f}%, "
                 f"{100 * (s.within_10pct or 0):.0f}% of runs within 10%", fontsize=9)
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    if not math.isfinite(s.median_abs_pct_error or 0):
        raise ValueError("no run could be predicted")
