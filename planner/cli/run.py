"""`plan estimate`, `plan compare` and the budget mode of `plan`: whole-run time, money and energy.

Thin layers over planner.runs.estimate and planner.runs.budget; registered on the `plan` group by planner/cli/__init__.py.
"""
from __future__ import annotations

import json

import click

from planner.cli.common import UserError, _catalog, _console, _load, _status, resolve_pue

_CLUSTERS_HELP = "Comma-separated clusters, e.g. 1024xA100,1024xH100,512xH200."


def _run_cost_options(f):
    """--hardware, --price, --pue and --format of `estimate` and `compare`."""
    for opt in reversed([
        click.option("--hardware", "hardware_files", multiple=True, type=click.Path(), help="Extra catalog file(s)."),
        click.option("--price", "prices", multiple=True,
                     help="Override a GPU's price per GPU-hour, e.g. --price H100=2.49."),
        click.option("--pue", type=float, help="Power usage effectiveness [default: 1.56, the Uptime Institute 2024 "
                                               "average; hyperscale sites about 1.1]."),
        click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True),
    ]):
        f = opt(f)
    return f


def _tokens_ok(tokens: float | None, required: bool = True) -> None:
    if tokens is None:
        if required:
            raise UserError("--tokens is required here: the training tokens of the whole run, e.g. --tokens 300e9")
        return
    if not 0 < tokens <= 1e16:
        raise UserError(f"--tokens {tokens:g} is not allowed; give a positive count up to 1e16, e.g. 300e9")


@click.command()
@click.option("--model", "model_name", required=True, help="Preset name or alias, or a Hugging Face config.json path.")
@click.option("--tokens", type=float, required=True, help="Training tokens, e.g. 300e9.")
@click.option("--gpus", required=True, help="Cluster, e.g. 1024xA100.")
@click.option("--mfu", type=float, help="Model FLOPs utilisation (0..1) [default: the best plan's, found by the planner].")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16", "fp8"]), help="[default: the preset's]")
@click.option("--global-batch", type=int, help="Sequences per step for the planner [default: the preset's].")
@click.option("--seq-len", type=int, help="Training sequence length in tokens [default: the preset's].")
@_run_cost_options
def estimate(model_name, tokens, gpus, mfu, precision, global_batch, seq_len, hardware_files, prices, pue, fmt):
    """Whole-run estimate: training FLOPs (6ND; 8ND with full recompute), GPU-hours, days, $ and kWh.

    Without --mfu the MFU of the best plan the planner finds for the cluster is used, and the output says so.
    """
    from planner.runs.estimate import estimate_for_cluster

    _tokens_ok(tokens)
    pue = resolve_pue(pue)
    if mfu is not None and not 0 < mfu <= 1:
        raise UserError(f"--mfu {mfu} is not allowed; give a share of peak in (0, 1], e.g. 0.462")
    model, note, pools = _load(model_name, gpus, hardware_files, seq_len, global_batch, precision, prices)
    if len(pools) != 1:
        raise UserError(f"--gpus {gpus!r}: `plan estimate` takes one GPU type")
    try:
        est = estimate_for_cluster(model, pools[0], tokens, mfu=mfu, precision=precision, pue=pue,
                                   global_batch=global_batch)
    except ValueError as e:
        raise UserError(str(e)) from None
    if fmt == "json":
        click.echo(json.dumps(est.model_dump(mode="json"), indent=2, sort_keys=True))
        return
    c = _console()
    c.print(f"[bold]{est.model}[/] on {est.num_gpus} x {est.gpu}, {est.tokens:.3g} tokens in sequences of "
            f"{model.seq_len:,} tokens")
    c.print(f"  training FLOPs  {est.training_flops:.3e} (6ND; {est.hardware_flops:.3e} executed with recompute)")
    c.print(f"  MFU             {est.mfu:.1%} ({est.mfu_source})")
    c.print(f"  GPU-hours       {est.gpu_hours:,.0f} ({est.gpu_days:,.0f} GPU-days)")
    c.print(f"  wall clock      {est.days:,.1f} days on {est.num_gpus} GPUs")
    c.print(f"  cost            ${est.cost_usd:,.0f} at ${est.price_usd_per_gpu_hour:.2f} per GPU-hour ({est.price_kind})")
    c.print(f"  energy          {est.energy_kwh:,.0f} kWh ({est.server_w_per_gpu:.0f} W per GPU: {est.tdp_w:.0f} W TDP "
            f"and its share of the server, x PUE {est.pue:g})")


@click.command()
@click.option("--model", "model_name", required=True, help="Preset name or alias, or a Hugging Face config.json path.")
@click.option("--gpus", required=True, help=_CLUSTERS_HELP)
@click.option("--tokens", type=float, required=True, help="Training tokens of the whole run, e.g. 300e9.")
@click.option("--global-batch", type=int, help="Sequences per step [default: the preset's].")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16", "fp8"]), help="[default: the preset's]")
@click.option("--seq-len", type=int, help="Training sequence length in tokens [default: the preset's].")
@_run_cost_options
def compare(model_name, gpus, tokens, global_batch, precision, seq_len, hardware_files, prices, pue, fmt):
    """The best plan on each cluster in one table: step time, tokens/s, MFU, days, GPU-hours, $, kWh."""
    from hardware import parse_cluster
    from planner.runs.budget import compare as compare_api

    _tokens_ok(tokens)
    pue = resolve_pue(pue)
    catalog = _catalog(hardware_files, prices)
    clusters = [parse_cluster(x, catalog) for x in gpus.split(",") if x.strip()]
    if not clusters:
        raise UserError(f"--gpus {gpus!r} names no cluster; {_CLUSTERS_HELP}")
    model, _, _ = _load(model_name, "", hardware_files, seq_len, global_batch, precision, prices)
    res = compare_api(model, clusters, tokens, pue, global_batch=global_batch, precision=precision)
    if fmt == "json":
        click.echo(json.dumps(res.model_dump(mode="json"), indent=2, sort_keys=True))
        return
    render_points(res.rows, f"{model.name}, {tokens:.3g} tokens in sequences of {model.seq_len:,}: best plan per cluster")
    for s in res.skipped:
        _console().print(f"  {s['cluster']}: no plan fits ({s['reason']})")


def render_points(points, title: str, chosen=None) -> None:
    from rich.table import Table

    t = Table(title=title, title_justify="left", show_edge=False)
    for col in ("cluster", "step s", "tokens/s", "MFU", "days", "GPU-hours", "$", "kWh", "$/GPU-h", "plan"):
        t.add_column(col, justify="left" if col in ("cluster", "plan") else "right")
    for p in points:
        mark = " *" if chosen is not None and p.cluster == chosen.cluster else ""
        t.add_row(p.cluster + mark, f"{p.step_time_s:.2f}", f"{p.tokens_per_s:,.0f}", f"{p.mfu:.1%}", f"{p.days:,.1f}",
                  f"{p.gpu_hours:,.0f}", f"{p.cost_usd:,.0f}", f"{p.energy_kwh:,.0f}", f"{p.price_usd_per_gpu_hour:.2f}",
                  p.plan)
    _console().print(t)
    kinds = {p.gpu: p.price_kind for p in points}
    _console().print("$/GPU-h: " + "; ".join(f"{g} {k}" for g, k in kinds.items()) + " (plan gpus lists the sources; "
                     "--price NAME=USD overrides)")


def budget_search(model_name, gpus, hardware_files, seq_len, global_batch, precision, tokens, prices, pue,
                  budget_usd, deadline_days, gpu_types, max_gpus, plot, time_limit, fmt, headroom=None) -> None:
    """`plan --budget-usd / --deadline-days / --gpu-types / --max-gpus`: choose GPU type and count."""
    from planner.runs.budget import choose_hardware

    if not model_name:
        raise UserError("--model is required, e.g. `plan --model 175b --gpu-types A100,H100 --max-gpus 1024 "
                        "--tokens 300e9 --budget-usd 3e6`")
    _tokens_ok(tokens)
    pue = resolve_pue(pue)
    for name, value in (("--budget-usd", budget_usd), ("--deadline-days", deadline_days)):
        if value is not None and not value > 0:
            raise UserError(f"{name} {value:g} is not allowed; give a positive number")
    catalog = _catalog(hardware_files, prices)
    model, _, pools = _load(model_name, gpus, hardware_files, seq_len, global_batch, precision, prices)
    if gpu_types:
        types = [catalog.resolve(x.strip())[0] for x in gpu_types.split(",") if x.strip()]
        missing = sorted({p.gpu.name for p in pools} - {g.name for g in types})
        if missing:   # --gpus names a type --gpu-types leaves out: say so rather than drop it
            raise UserError(f"--gpus {gpus} names {', '.join(missing)}, which --gpu-types {gpu_types} leaves out; "
                            f"add it to --gpu-types, or give --max-gpus instead of --gpus")
    elif pools:
        types = [p.gpu for p in pools]
    else:
        raise UserError("say which GPUs to consider: --gpu-types A100,H100 (with --max-gpus) or --gpus 1024xA100")
    if max_gpus is None:
        max_gpus = max((p.num_gpus for p in pools), default=0)
        if not max_gpus:
            raise UserError("--max-gpus is required with --gpu-types, e.g. --max-gpus 1024")
    if not 1 <= max_gpus <= 1_000_000:
        raise UserError(f"--max-gpus {max_gpus} is not allowed; give 1 to 1,000,000")
    for g in types:
        g.peak_tflops(precision or model.precision)
    with _status(fmt) as status:
        res = choose_hardware(model, types, max_gpus, tokens, budget_usd=budget_usd, deadline_days=deadline_days,
                              global_batch=global_batch, precision=precision, pue=pue, full_front=bool(plot),
                              time_limit_s=time_limit, headroom=headroom, progress=status)
    if plot:
        render_front(res, plot)
    if fmt == "json":
        click.echo(json.dumps(res.model_dump(mode="json"), indent=2, sort_keys=True))
        if res.chosen is None:
            raise UserError(res.message)
        return
    if res.chosen is None:
        raise UserError(res.message)
    goal = "fewest days" if res.objective == "time" else "lowest cost"
    limits = ", ".join(x for x in (f"budget ${budget_usd:,.0f}" if budget_usd else "",
                                   f"deadline {deadline_days:g} days" if deadline_days else "") if x) or "no limit"
    c = _console()
    c.print(f"[bold]Chosen[/]: {res.chosen.cluster} ({goal} under {limits}): {res.chosen.days:.1f} days, "
            f"${res.chosen.cost_usd:,.0f}, {res.chosen.energy_kwh:,.0f} kWh; plan {res.chosen.plan}")
    c.print(f"searched {len(res.searched)} of {res.blocks} (GPU type, count) blocks; the rest were bounded out")
    render_points(res.pareto, "Time / cost front of the searched clusters (fastest first)", res.chosen)


def render_front(res, path: str) -> None:
    """PNG of days against dollars for every searched cluster, the front joined, the chosen run marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for gpu in sorted({p.gpu for p in res.searched}):
        pts = [p for p in res.searched if p.gpu == gpu]
        ax.scatter([p.days for p in pts], [p.cost_usd / 1e6 for p in pts], label=gpu, s=18)
    front = res.pareto
    ax.plot([p.days for p in front], [p.cost_usd / 1e6 for p in front], "k--", lw=0.8, label="front")
    if res.chosen is not None:
        ax.scatter([res.chosen.days], [res.chosen.cost_usd / 1e6], marker="*", s=220, c="red", label="chosen", zorder=5)
    ax.set_xscale("log")
    ax.set_xlabel("wall-clock days (log scale)")
    ax.set_ylabel("cost, million USD")
    ax.set_title(f"{res.model}, {res.tokens:.3g} tokens", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
