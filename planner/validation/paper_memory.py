"""Per-GPU memory of the configurations of Korthikanti et al. 2022 ("Reducing Activation Recomputation in
Large Transformer Models"), Figure 1 and Figure 7: predicted model states and activations of the most
loaded GPU, for the paper's baseline (tensor parallel only), each technique alone, both together, and
full recompute.

The paper publishes these as bars without numbers; its text states what they show: every baseline
needs more than the A100's 80 GB (section 1), none of the models fits without sequence parallelism and
selective recompute together (section 6.1), together they cut activations ~5x to under 20% of the
baseline and full recompute is at ~10% (Figure 7). tests/test_memory.py pins those claims; `plan validate
--markdown` prints the predicted bars so they can be read against the figure.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from costmodels.presets import get_model
from costmodels.strategy import Strategy
from hardware import parse_cluster
from planner.solve.evaluate import evaluate

GB = 1e9

# Table 3 (tp = 8, no data parallelism, s = 2048) with section 6's interleaving: 3 chunks for 175B and 530B.
# (preset, GPUs, pp, global batch, micro-batch, interleaved chunks)
TABLE3 = (("megatron-22b", 8, 1, 4, 4, 1), ("gpt3-175b", 64, 8, 64, 1, 3),
          ("megatron-530b", 280, 35, 280, 1, 3), ("megatron-1t", 512, 64, 512, 1, 1))

# Figure 1 / 7 bars: (recompute, sequence parallel, label)
MODES = {"baseline": ("none", False, "tensor parallel (baseline)"),
         "sp": ("none", True, "+ sequence parallel"),
         "selective": ("selective", False, "+ selective recompute"),
         "present": ("selective", True, "+ sequence parallel + selective recompute (present work)"),
         "full": ("full", False, "full recompute")}


@dataclass(frozen=True)
class Bar:
    model: str
    mode: str
    states_gb: float        # weights + gradients + optimizer states of the most loaded GPU
    activations_gb: float
    peak_gb: float          # with the 1 GB of buffers
    capacity_gb: float


@lru_cache(maxsize=4)
def figure1_bars(precision: str = "fp16") -> tuple[Bar, ...]:
    """Predicted bars for every Table 3 model and every mode (Megatron of 2022: unfused attention)."""
    out = []
    for name, gpus, pp, gbs, mb, v in TABLE3:
        model, _ = get_model(name)
        cluster = parse_cluster(f"{gpus}xA100")
        for mode, (rec, sp, _) in MODES.items():
            st = Strategy(tp=8, pp=pp, dp=1, micro_batch=mb, global_batch=gbs, virtual_stages=v, recompute=rec,
                          sequence_parallel=sp, flash_attention=False, precision=precision)
            m = evaluate(model, st, cluster).memory_b
            states = m["weights"] + m["gradients"] + m["optimizer"]
            out.append(Bar(name, mode, states / GB, m["activations"] / GB, m["peak"] / GB,
                           cluster.gpu.memory_bytes / GB))
    return tuple(out)


def figure1_markdown(precision: str = "fp16") -> list[str]:
    """The bars as a Markdown section (docs/validation.md)."""
    lines = ["## Memory: Korthikanti et al. 2022, Figure 1 configurations", "",
             f"Most loaded GPU of each Table 3 configuration ({precision}, unfused attention as in 2022, A100-80GB). "
             "The paper's text: every baseline is above 80 GB, nothing fits without sequence parallelism and "
             "selective recompute together, and together they bring activations under ~20% of the baseline "
             "(full recompute ~10%). The activation share is against the baseline's activations.", "",
             "| model | configuration | weights + grads + optimizer GB | activations GB | share | peak GB | fits 80 GB |",
             "|---|---|---:|---:|---:|---:|---|"]
    base: dict[str, float] = {}
    for b in figure1_bars(precision):
        base.setdefault(b.model, b.activations_gb)
        lines.append(f"| {b.model} | {MODES[b.mode][2]} | {b.states_gb:.1f} | {b.activations_gb:.1f} | "
                     f"{b.activations_gb / base[b.model]:.0%} | {b.peak_gb:.1f} | "
                     f"{'yes' if b.peak_gb <= b.capacity_gb else 'no'} |")
    return lines + [""]
