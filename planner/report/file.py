"""`--report out.md` / `out.html`: a written report of a search, with PNG charts beside it.

Charts (matplotlib, Agg): the memory anatomy of every pipeline stage of the best plan as stacked bars
against the GPU capacity, the step-time breakdown of the best plan and its runner-ups, and the pipeline
schedule of one step of the best plan (stages x time) beside each stage's memory.
"""
from __future__ import annotations

import html
from pathlib import Path

from planner.report.text import MEMORY_LABELS, TIME_LABELS
from planner.solve.result import describe_strategy, recompute_label
from planner.solve.result import PlanOut, SearchResult

CHART_SIZE_PX = (800, 450)   # width, height of every chart (figsize x dpi)
_DPI = 100
COLORS = {"weights": "#4C72B0", "gradients": "#55A868", "optimizer": "#C44E52", "activations": "#8172B2",
          "loss": "#DD8452", "comm_buffers": "#937860", "runtime": "#8C8C8C"}


def memory_chart(plan: PlanOut, path: str | Path) -> None:
    """Stacked bars: the most loaded stage's parts, and every stage's total, against capacity (GB)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(CHART_SIZE_PX[0] / _DPI, CHART_SIZE_PX[1] / _DPI), dpi=_DPI)
    parts = plan.memory_gb
    bottom = 0.0
    for k in MEMORY_LABELS:
        ax.bar(["most loaded stage"], [parts[k]], bottom=[bottom], color=COLORS[k], label=k)
        bottom += parts[k]
    stages = plan.stage_memory_gb
    if len(stages) > 1:
        names = [f"stage {i}" for i in range(len(stages))]
        ax.bar(names, stages, color="#BBBBBB", label="stage total")
    ax.axhline(parts["capacity"], color="k", ls="--", lw=1, label=f"capacity {parts['capacity']:.0f} GB")
    ax.set_ylabel("GB per GPU")
    ax.set_title("Memory per GPU", fontsize=10)
    ax.tick_params(axis="x", labelrotation=60 if len(stages) > 4 else 0, labelsize=7)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)


def time_chart(plans: list[PlanOut], path: str | Path) -> None:
    """Horizontal stacked bars: each plan's step time split by cause (s)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(CHART_SIZE_PX[0] / _DPI, CHART_SIZE_PX[1] / _DPI), dpi=_DPI)
    keys = [k for k in TIME_LABELS if any(p.time_s.get(k, 0) > 0 for p in plans)]
    cmap = plt.get_cmap("tab10")
    labels = [f"#{p.rank}" for p in plans]
    left = [0.0] * len(plans)
    for j, k in enumerate(keys):
        vals = [p.time_s.get(k, 0.0) for p in plans]
        ax.barh(labels, vals, left=left, color=cmap(j % 10), label=TIME_LABELS[k])
        left = [a + b for a, b in zip(left, vals)]
    ax.invert_yaxis()
    ax.set_xlabel("seconds per step")
    ax.set_title("Step time by cause", fontsize=10)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)


def write_report(result: SearchResult, path: str | Path, extra_sections: list[tuple[str, str]] = (),
                 schedule=None) -> list[Path]:
    """Write a Markdown (.md) or HTML (.html) report and its charts; returns the files written."""
    path = Path(path)
    if path.suffix.lower() not in (".md", ".html", ".htm"):
        raise ValueError(f"--report {path}: the file must end in .md or .html")
    path.parent.mkdir(parents=True, exist_ok=True)
    best = result.plans[0]
    mem_png = path.with_name(path.stem + "_memory.png")
    time_png = path.with_name(path.stem + "_time.png")
    memory_chart(best, mem_png)
    time_chart(result.plans, time_png)
    written = [path, mem_png, time_png]
    sched_png = None
    if schedule is not None:     # planner.solve.schedule.PipelineSchedule of the best plan
        sched_png = path.with_name(path.stem + "_schedule.png")
        schedule_chart(schedule, sched_png)
        written.append(sched_png)
    md = _markdown(result, mem_png.name, time_png.name, extra_sections,
                   (sched_png.name, schedule) if schedule is not None else None)
    if path.suffix.lower() == ".md":
        path.write_text(md)
    else:
        path.write_text(_html(md))
    return written


SCHEDULE_COLORS = {"forward": "#4C72B0", "backward": "#DD8452", "recompute": "#C44E52", "send_recv": "#8C8C8C",
                   "dp_sync_optimizer": "#8172B2"}
SCHEDULE_LABELS = {"forward": "forward", "backward": "backward", "recompute": "recompute (in the backward)",
                   "send_recv": "pipeline send / receive", "dp_sync_optimizer": "data-parallel sync + optimizer"}


def schedule_chart(sched, path: str | Path, title: str = "") -> None:
    """One step of a plan (planner.solve.schedule.PipelineSchedule): each stage's ops in time, white where
    it idles (the pipeline bubble), and beside it each stage's memory by part against the GPU capacity."""
    plt = _pyplot()
    p = len(sched.stages)
    height = max(CHART_SIZE_PX[1] / _DPI, 1.2 + 0.32 * p)
    fig, (ax, mx) = plt.subplots(1, 2, figsize=(CHART_SIZE_PX[0] / _DPI * 1.5, height), dpi=_DPI, sharey=True,
                                 gridspec_kw={"width_ratios": [3, 1]})
    for row, segs in enumerate(sched.stages):
        for kind, color in SCHEDULE_COLORS.items():
            bars = [(x.start_s, x.duration_s) for x in segs if x.kind == kind]
            if bars:
                ax.broken_barh(bars, (row - 0.4, 0.8), facecolors=color, edgecolor="none",
                               label=SCHEDULE_LABELS[kind] if row == 0 else None)
    ax.set_yticks(range(p), [f"stage {i}" for i in range(p)], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, sched.makespan_s)
    ax.set_xlabel("seconds into the step")
    chunks = f", {sched.virtual_stages} chunks per stage" if sched.virtual_stages > 1 else ""
    ax.set_title(f"{title}{sched.schedule}, {sched.micro_batches} micro-batches{chunks}: {sched.makespan_s:.3f} s drawn, "
                 f"{sched.step_time_s:.3f} s priced; white = idle (bubble)", fontsize=8)
    ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.3 / height), ncol=3)
    left = [0.0] * p
    for k in MEMORY_LABELS:
        vals = [m.get(k, 0.0) for m in sched.stage_memory_gb]
        if any(vals):
            mx.barh(range(p), vals, left=left, color=COLORS[k], label=k, height=0.8)
            left = [a + b for a, b in zip(left, vals)]
    mx.axvline(sched.capacity_gb, color="k", ls="--", lw=1)
    mx.set_xlabel(f"GB per GPU (capacity {sched.capacity_gb:.0f})")
    mx.set_title("memory per stage", fontsize=8)
    mx.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.3 / height), ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)


def _markdown(res: SearchResult, mem_png: str, time_png: str, extra_sections, schedule=None) -> str:
    m, c, a = res.model, res.cluster, res.assumptions
    best = res.plans[0]
    s = best.strategy
    lines = [f"# Training plan: {m.name} on {c.num_gpus} x {c.gpu}", "",
             "## Assumptions", ""]
    lines += [f"- {k.replace('_', ' ')}: {v}" for k, v in a.items()]
    lines += [f"- model: {m.params / 1e9:.1f} B parameters, {m.layers} layers, hidden {m.hidden}, {m.heads} heads",
              f"- cluster: {c.num_gpus} GPUs ({c.num_nodes} nodes), {c.memory_gb_per_gpu:.0f} GB per GPU", "",
              "## The winning plan", "", f"**{describe_strategy(s)}**", "",
              f"- step time: {best.step_time_s:.3f} s; {best.tokens_per_s:,.0f} tokens/s "
              f"({best.tokens_per_s_per_gpu:,.0f} per GPU); MFU {best.mfu:.1%}, HFU {best.hfu:.1%}",
              f"- layers per stage: {s['stage_layers']}; recompute: {recompute_label(s)}"]
    if best.run:
        r = best.run
        lines.append(f"- whole run of {r['tokens']:.3g} tokens: {r['days']:,.1f} days, {r['gpu_hours']:,.0f} GPU-hours, "
                     f"${r['cost_usd']:,.0f}, {r['energy_kwh']:,.0f} kWh")
    lines += ["", "### Memory per GPU (GB)", "", "| part | GB |", "|---|---:|"]
    lines += [f"| {k} | {best.memory_gb[k]:.2f} |" for k in MEMORY_LABELS]
    lines += [f"| **peak** | **{best.memory_gb['peak']:.2f}** |", f"| capacity | {best.memory_gb['capacity']:.2f} |",
              "", f"**Memory: {best.verdict}.**", "", f"![memory anatomy]({mem_png})", "", "### Step time (s)", "",
              "| part | s | share |", "|---|---:|---:|"]
    lines += [f"| {TIME_LABELS.get(k, k)} | {v:.3f} | {v / best.step_time_s:.1%} |" for k, v in best.time_s.items() if v > 0]
    lines += [f"| **step** | **{best.step_time_s:.3f}** | 100% |", "", f"![step time]({time_png})", "",
              "## Runner-ups", "", "| # | plan | step s | MFU | peak GB | vs best |", "|---|---|---:|---:|---:|---:|"]
    for p in res.plans:
        lines.append(f"| {p.rank} | {describe_strategy(p.strategy)} | {p.step_time_s:.3f} | {p.mfu:.1%} | "
                     f"{p.memory_gb['peak']:.1f} | +{p.step_time_s / best.step_time_s - 1:.1%} |")
    if res.search is not None:
        sr = res.search
        lines += ["", "## Search", "", f"{sr.candidates} structures bounded, {sr.structures_solved} layouts solved "
                  f"({sr.cp_sat_calls} with CP-SAT), status {sr.status}, {sr.seconds:.2f} s."]
    if schedule is not None:      # (its picture's file name, planner.solve.schedule.PipelineSchedule)
        png, sched = schedule
        idle = [1 - sched.busy_s(i) / sched.makespan_s for i in range(len(sched.stages))]
        lines += ["", "## Pipeline schedule of one step", "",
                  f"{sched.schedule}, {sched.micro_batches} micro-batches per step"
                  + (f", {sched.virtual_stages} model chunks per stage" if sched.virtual_stages > 1 else "")
                  + f": the drawn schedule ends at {sched.makespan_s:.3f} s, the priced step is "
                  f"{sched.step_time_s:.3f} s. Each stage idles {min(idle):.1%}-{max(idle):.1%} of the step "
                  "(the pipeline bubble, white); beside it, each stage's memory by part.", "",
                  *sched.notes, f"![pipeline schedule]({png})"]
    for title, body in extra_sections:
        lines += ["", f"## {title}", "", "```", body.rstrip(), "```"]
    return "\n".join(lines) + "\n"


def _html(md: str) -> str:
    """A small self-contained HTML rendering of the Markdown above (headings, lists, tables, images)."""
    out = ["<!doctype html><html><head><meta charset='utf-8'><title>Training plan</title>",
           "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
           "td,th{border:1px solid #ccc;padding:2px 8px}</style></head><body>"]
    in_table = in_list = in_code = False
    for line in md.splitlines():
        if line.startswith("```"):
            out.append("</pre>" if in_code else "<pre>")
            in_code = not in_code
            continue
        if in_code:
            out.append(html.escape(line))
            continue
        if line.startswith("|"):
            cells = [x.strip() for x in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-:"):
                continue
            if not in_table:
                out.append("<table>")
                in_table = True
            out.append("<tr>" + "".join(f"<td>{_inline(x)}</td>" for x in cells) + "</tr>")
            continue
        if in_table:
            out.append("</table>")
            in_table = False
        if line.startswith("- "):
            if not in_list:
                out.append("<ul>")
                in_list = True
            out.append(f"<li>{_inline(line[2:])}</li>")
            continue
        if in_list:
            out.append("</ul>")
            in_list = False
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{html.escape(line[level:].strip())}</h{level}>")
        elif line.startswith("!["):
            alt, src = line[2:].split("](")
            out.append(f"<p><img src='{html.escape(src.rstrip(')'))}' alt='{html.escape(alt)}'></p>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
    if in_table:
        out.append("</table>")
    if in_list:
        out.append("</ul>")
    out.append("</body></html>")
    return "\n".join(out)


def _inline(text: str) -> str:
    t = html.escape(text)
    while "**" in t:
        t = t.replace("**", "<b>", 1).replace("**", "</b>", 1)
    return t


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt
