"""Human-readable output of a SearchResult (rich tables). Every number carries its unit."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table

from planner.solve.result import FRAMEWORK_ACCOUNTING, PlanOut, SearchResult, describe_strategy, recompute_label
from planner.solve.stages import BYTE_PARTS

TIME_LABELS = {
    "compute": "compute (forward + backward)",
    "recompute": "activation recompute",
    "tp_comm": "tensor-parallel collectives",
    "cp_comm": "context-parallel KV exchange (exposed)",
    "ep_comm": "expert-parallel all-to-all",
    "pp_comm": "pipeline send/receive",
    "embedding_and_head": "embedding, output layer and loss",
    "dp_comm": "data-parallel sync (exposed)",
    "optimizer": "optimizer step",
    "bubble": "pipeline bubble",
}
MEMORY_LABELS = list(BYTE_PARTS)     # the memory parts, in the order the planner sums them


def render_search(res: SearchResult, console: Console, title: str = "Best plan") -> None:
    m, c, a = res.model, res.cluster, res.assumptions
    console.print(f"[bold]Model[/]    {m.name}: {m.params / 1e9:.1f} B parameters"
                  + (f", {m.params_active / 1e9:.1f} B active" if m.params_active != m.params else "")
                  + f", {m.layers} layers, hidden {m.hidden}, {m.heads} heads"
                  + (f" ({m.kv_heads} KV)" if m.kv_heads != m.heads else ""))
    if m.note:
        console.print(f"         model {m.note}")
    if c.pools:
        console.print("[bold]Cluster[/]  " + " + ".join(
            f"{q['num_gpus']} x {q['gpu']} ({q['memory_gb_per_gpu']:.0f} GB)" for q in c.pools)
            + f" = {c.num_gpus} GPUs in {c.num_nodes} nodes")
    else:
        console.print(f"[bold]Cluster[/]  {c.num_gpus} x {c.gpu} ({c.num_nodes} nodes x {c.gpus_per_node}), "
                      f"{c.memory_gb_per_gpu:.0f} GB per GPU" + (f"; network {c.network}" if c.network else ""))
    if c.note:
        console.print(f"         GPU {c.note}")
    source = f", {a['global_batch_source']}" if a.get("global_batch_source") else ""
    console.print(f"[bold]Assumptions[/] sequence {a['seq_len']} tokens, global batch {a['global_batch_sequences']} "
                  f"sequences ({a['tokens_per_step'] / 1e6:.2f} M tokens/step{source}), {a['precision']}, {a['optimizer']}, "
                  f"flash attention {'on' if a['flash_attention'] else 'off'}, {a['reserved_buffers_gb']:.0f} GB "
                  f"reserved per GPU, {_headroom(a)}; {a['dp_overlap']}; memory in "
                  f"{a.get('framework', FRAMEWORK_ACCOUNTING['megatron'])}.")
    if not res.plans:
        return
    best = res.plans[0]
    if a.get("global_batch_source", "--global-batch") != "--global-batch" and best.step_time_s > 60:
        console.print(f"         a {best.step_time_s:,.0f} s step: the batch is a pre-training run's; a fine-tune or a "
                      f"cluster this size usually steps with fewer sequences: --global-batch "
                      f"{max(c.num_gpus, 8 * c.num_gpus)} (8 per GPU)")
    console.print()
    render_plan(best, console, title)
    if len(res.plans) > 1:
        console.print()
        render_runner_ups(res.plans, console)
    if res.search is not None:
        s = res.search
        console.print()
        gap = "" if s.optimal else f" (gap {s.gap:.1%})"
        console.print(f"[bold]Search[/]   {s.candidates} structures bounded, {s.memory_pruned} visited could not fit, "
                      f"{s.structures_solved} layouts solved ({s.cp_sat_calls} CP-SAT), status {s.status}{gap}, "
                      f"{s.seconds:.2f} s")
        if s.removed_by_rule:
            rules = "; ".join(f"{rule}: {n}" for rule, n in s.removed_by_rule.items())
            console.print(f"         removed by rules: {rules}")


def render_plan(p: PlanOut, console: Console, title: str) -> None:
    s = p.strategy
    console.print(f"[bold green]{title}[/]: {describe_strategy(s)}")
    if s["pp"] > 1:
        console.print(f"  layers per stage: {_compact(s['stage_layers'])}"
                      + (f"; recomputed layers per stage: {_compact(s['recompute_layers'])}"
                         if s["recompute"] == "full" else ""))
    if p.stage_gpus:
        console.print("  stage assignment (each pool runs whole stages; layers follow each pool's speed and memory):")
        for line in _assignment(p):
            console.print(f"    {line}")
    console.print(f"  step time [bold]{p.step_time_s:.3f} s[/] | {p.tokens_per_s:,.0f} tokens/s "
                  f"({p.tokens_per_s_per_gpu:,.0f} per GPU) | MFU {p.mfu:.1%} (PaLM: full attention; "
                  f"{p.mfu_causal or 0:.1%} causal) | HFU {p.hfu:.1%} | "
                  f"{p.tflops_per_gpu:.0f} model TFLOP/s per GPU")
    if p.trust:
        console.print("  " + trust_line(p.trust))
    if p.run:
        r = p.run
        at = "; ".join(f"{g} ${x['usd_per_gpu_hour']:.2f}/GPU-hour, {x['kind']}" for g, x in r.get("prices", {}).items())
        console.print(f"  whole run of {r['tokens']:.3g} tokens: {r['days']:,.1f} days, {r['gpu_hours']:,.0f} GPU-hours, "
                      f"${r['cost_usd']:,.0f} ({at}), {r['energy_kwh']:,.0f} kWh (PUE {r.get('pue', 0):g})")
    mem = Table(title="Memory per GPU (most loaded stage)", title_justify="left", show_edge=False)
    mem.add_column("part")
    mem.add_column("GB", justify="right")
    mem.add_column("share of capacity", justify="right")
    cap = p.memory_gb["capacity"]
    for k in MEMORY_LABELS:
        mem.add_row(k, f"{p.memory_gb[k]:.2f}", f"{p.memory_gb[k] / cap:.1%}")
    mem.add_row("[bold]peak[/] (≈ torch reserved)", f"[bold]{p.memory_gb['peak']:.2f}[/]", f"{p.memory_gb['peak'] / cap:.1%}")
    if "allocated" in p.memory_gb:
        mem.add_row("  of which tensors (≈ torch allocated)", f"{p.memory_gb['allocated']:.2f}", "")
    mem.add_row("capacity", f"{cap:.2f}", "")
    if p.memory_gb.get("host_offload"):
        mem.add_row("host memory (offloaded)", f"{p.memory_gb['host_offload']:.2f}", "in CPU RAM")
    tim = Table(title="Time per step (slowest stage)", title_justify="left", show_edge=False)
    tim.add_column("part")
    tim.add_column("s", justify="right")
    tim.add_column("share", justify="right")
    for k, v in p.time_s.items():
        if v > 0:
            tim.add_row(TIME_LABELS.get(k, k), f"{v:.3f}", f"{v / p.step_time_s:.1%}")
    tim.add_row("[bold]step[/]", f"[bold]{p.step_time_s:.3f}[/]", "100%")
    console.print(mem)
    console.print(verdict_line(p))
    console.print(tim)


def trust_line(t: dict) -> str:
    """The expected error of a prediction (held-out runs of its regime) and its unvalidated structures."""
    if "runs" in t:
        line = (f"expected error: median {t['median_abs_pct_error']:.0%}, 90th percentile "
                f"{t['p90_abs_pct_error']:.0%} (held-out published runs, {t['runs']} in regime {t['regime']})")
    else:
        line = "expected error: no held-out published runs to measure it"
    if t.get("unvalidated"):
        line += "; no validated run uses: " + ", ".join(t["unvalidated"])
    return line


def verdict_line(p: PlanOut) -> str:
    """The memory verdict under the memory table, green when the plan fits and red when it does not."""
    colour = "green" if p.fits else "red"
    return f" [bold {colour}]memory: {p.verdict}[/]"


def _headroom(a: dict) -> str:
    h = a.get("headroom", "none")
    return "no extra headroom" if h == "none" else f"headroom {h} kept free"


def render_runner_ups(plans: list[PlanOut], console: Console) -> None:
    t = Table(title="Plans, best first (distinct structures)", title_justify="left", show_edge=False)
    extra = [k for k in ("cp", "ep") if any(p.strategy.get(k, 1) > 1 for p in plans)]
    for col in ("#", "TP", "PP", "DP", *[k.upper() for k in extra], "micro-batch", "chunks", "ZeRO", "recompute",
                "step s", "tokens/s/GPU", "MFU", "peak GB", "vs best"):
        t.add_column(col, justify="right")
    best = plans[0].step_time_s
    for p in plans:
        s = p.strategy
        t.add_row(str(p.rank), str(s["tp"]), str(s["pp"]), str(s["dp"]), *[str(s[k]) for k in extra],
                  str(s["micro_batch"]),
                  str(s["virtual_stages"]), _zero_cell(s), recompute_label(s).replace(" recompute", ""),
                  f"{p.step_time_s:.3f}", f"{p.tokens_per_s_per_gpu:,.0f}", f"{p.mfu:.1%}",
                  f"{p.memory_gb['peak']:.1f}", f"+{p.step_time_s / best - 1:.1%}")
    console.print(t)


def _zero_cell(s: dict) -> str:
    """ZeRO stage, '+opt' / '+opt+w' when optimizer states / also weights live in CPU memory."""
    return str(s["zero_stage"]) + ("+opt+w" if s.get("offload_params") else "+opt" if s.get("offload_optimizer") else "")


def _compact(xs: list[int]) -> str:
    """[7, 8, 8, 8, 7] -> '7, 8 x3, 7'."""
    out, i = [], 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[i]:
            j += 1
        out.append(f"{xs[i]} x{j - i + 1}" if j > i else str(xs[i]))
        i = j + 1
    return ", ".join(out)


def explain(plans: list[PlanOut]) -> list[str]:
    """Why the winner beats the runner-up: the time terms that differ, largest first, and the memory."""
    if len(plans) < 2:
        return ["only one plan was found, so there is no runner-up to compare with"]
    a, b = plans[0], plans[1]
    lines = [f"#1 {describe_strategy(a.strategy)}", f"#2 {describe_strategy(b.strategy)}"]
    if b.step_time_s - a.step_time_s < 1e-6:
        lines.append("the two tie on predicted step time; #1 is listed first as the simpler plan "
                     "(fewer pipeline stages, smaller tp / cp / ep, no interleaving, lower ZeRO, no offload)")
    else:
        lines.append(f"#1 is faster by {b.step_time_s - a.step_time_s:.3f} s per step "
                     f"({b.step_time_s / a.step_time_s - 1:.1%}); the time terms that differ (#2 minus #1):")
    diffs = sorted(((b.time_s.get(k, 0.0) - a.time_s.get(k, 0.0), k) for k in set(a.time_s) | set(b.time_s)),
                   key=lambda d: -abs(d[0]))
    for d, k in diffs:
        if abs(d) >= 0.0005:
            lines.append(f"  {TIME_LABELS.get(k, k)}: {d:+.3f} s")
    lines.append(f"peak memory per GPU: #1 {a.memory_gb['peak']:.1f} GB, #2 {b.memory_gb['peak']:.1f} GB "
                 f"(capacity {a.memory_gb['capacity']:.0f} GB)")
    return lines


def _assignment(p: PlanOut) -> list[str]:
    """Runs of consecutive stages on one GPU type: layers, time per micro-batch and memory."""
    s, out, i = p.strategy, [], 0
    gpus = p.stage_gpus or []
    while i < len(gpus):
        j = i
        while j + 1 < len(gpus) and gpus[j + 1] == gpus[i]:
            j += 1
        idx = slice(i, j + 1)
        out.append(f"stages {i}-{j} on {gpus[i]} ({(j - i + 1) * s['tp'] * s['cp'] * s['dp']} GPUs): layers "
                   f"{_compact(s['stage_layers'][idx])}, {min(p.stage_time_ms[idx]):.1f}-{max(p.stage_time_ms[idx]):.1f} "
                   f"ms per micro-batch, {max(p.stage_memory_gb[idx]):.1f} GB peak")
        i = j + 1
    return out
