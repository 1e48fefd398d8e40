"""`plan`: the command group (the search itself) and its commands, a thin layer over the planner's API.

Bad input gets one line on stderr naming the value and what is allowed, and exit code 2.
"""
from __future__ import annotations

import json
import sys

import click

from planner.cli.common import (EXAMPLES, EXIT_DOES_NOT_FIT, GRADS_HELP, HEADROOM_HELP, PlanDoesNotFit, UserError,
                                 NETWORK_OPTION, FABRIC_OPTION, check_writable, resolve_pue, _catalog, _check_export_options, _common, _console, _emit, _export_options,
                                 _check_fp8_recipe, _comm_options, _framework_option, _int_tuple, _load, _progress, _resolve_framework, _show_export)


@click.group(invoke_without_command=True, epilog=EXAMPLES,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--model", "model_name", help="Preset name or alias (see `plan models`), or a Hugging Face config.json path.")
@click.option("--gpus", help="Cluster: COUNTxGPU or NODESxPER_NODExGPU, e.g. 1024xA100, 128x8xH100.")
@click.option("--hardware", "hardware_files", multiple=True, type=click.Path(),
              help="JSON/YAML file adding or overriding GPU catalog entries.")
@NETWORK_OPTION
@FABRIC_OPTION
@click.option("--seq-len", type=int, help="Training sequence length in tokens [default: the preset's].")
@click.option("--global-batch", type=int, help="Sequences per optimizer step [default: the preset's published batch].")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16", "fp8"]), help="Compute precision [default: the preset's].")
@click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default="adam", show_default=True)
@click.option("--no-flash-attention", is_flag=True, help="Model unfused attention (stores s^2 scores).")
@click.option("--grads", type=click.Choice(["fp32", "16bit"]), default="fp32", show_default=True,
              help=GRADS_HELP)
@click.option("--tp", "tp_only", help="Only these tensor-parallel sizes, e.g. 4,8.")
@click.option("--pp", "pp_only", help="Only these pipeline sizes, e.g. 8,16.")
@click.option("--zero", "zero_only", help="Only these ZeRO stages, e.g. 0,1.")
@click.option("--recompute", "recompute_only", help="Only these recompute kinds: none, selective, full (comma-separated).")
@click.option("--headroom", help=HEADROOM_HELP)
@click.option("--top", type=int, default=3, show_default=True, help="How many distinct plans to show.")
@click.option("--time-limit", type=float, default=30.0, show_default=True,
              help="Work the search may do, in seconds of deterministic work (CP-SAT's deterministic time plus 1 ms "
                   "per structure visited; counted as work, not read off the clock, so the plan never depends on the "
                   "machine's load). It returns the best plan found so far (searching on until it has one), with its "
                   "status and optimality gap.")
@click.option("--explain", is_flag=True, help="Say why the best plan beats the runner-up, term by term.")
@click.option("--exclude", "exclude_only", help="Keep structures out of the search, comma-separated: tp, pp, cp, ep, "
              "interleaving, zero1, zero2, zero3, offload, param-offload, full-recompute, selective-recompute.")
@click.option("--validated-only", is_flag=True,
              help="Search only structures some validated published run used (each plan names the ones it uses "
                   "that none did, and its expected error: docs/validation.md).")
@click.option("--tokens", type=float, help="Training tokens of the whole run, e.g. 300e9: adds days, GPU-hours, $ and kWh.")
@click.option("--price", "prices", multiple=True, help="Override a GPU's price per GPU-hour, e.g. --price H100=2.49.")
@click.option("--pue", type=float,
              help="Power usage effectiveness for energy (kWh) [default: 1.56, the data-centre average, Uptime "
                   "Institute 2024; hyperscale sites run about 1.1]. Energy counts the server's draw, 1.8x the GPUs' TDP.")
@click.option("--budget-usd", type=float, help="Money limit for the whole run (needs --tokens): minimise days under it.")
@click.option("--deadline-days", type=float, help="Time limit for the whole run (needs --tokens): minimise $ under it.")
@click.option("--gpu-types", help="Let the planner choose the GPU type (and count), e.g. A100,H100,H200.")
@click.option("--max-gpus", type=int, help="Most GPUs the planner may use when it chooses the count.")
@click.option("--plot", type=click.Path(), help="Write a PNG: the pipeline schedule of one step of the best plan "
              "(stages x time: forward, backward, recompute, send / receive, idle) beside each stage's memory; "
              "with budgets or --gpu-types, the time/cost front.")
@click.option("--report", type=click.Path(), help="Write a report (.md or .html) with memory and time charts beside it.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@_framework_option
@_comm_options
@_export_options
@click.pass_context
def cli(ctx, model_name, gpus, hardware_files, seq_len, global_batch, precision, optimizer, no_flash_attention,
        grads, tp_only, pp_only, zero_only, recompute_only, headroom, top, time_limit, explain, exclude_only,
        validated_only, tokens,
        prices, pue, budget_usd, deadline_days, gpu_types, max_gpus, plot, report, fmt, framework, moe_dispatcher,
        lora_rank, fp8_recipe, moe_a2a_overlap, tp_comm_overlap, emit, out_dir):
    """Find the fastest parallelism plan for training MODEL on GPUS that fits in GPU memory.

    Searches tensor / pipeline / data parallel sizes, micro-batch, interleaving, ZeRO stage, activation
    recompute (per pipeline stage) and the layers of each pipeline stage, with OR-Tools CP-SAT, and prints
    the best plan, its step time, throughput, MFU, memory (with its verdict: "fits, X GB to spare") and time
    breakdown, and the runner-ups. Nothing that fits (also after --headroom): one line and exit code 2.
    """
    if ctx.invoked_subcommand is not None:
        return
    _check_export_options(emit, out_dir)
    pue = resolve_pue(pue)
    for option, path in (("--report", report), ("--plot", plot)):
        if path:
            check_writable(path, option)
    framework = _resolve_framework(framework, emit)
    from planner.solve.evaluate import parse_headroom
    room = parse_headroom(headroom)
    if gpu_types or budget_usd is not None or deadline_days is not None or max_gpus is not None:
        if emit:
            raise UserError("--emit writes one plan; it does not combine with --gpu-types, --budget-usd, "
                            "--deadline-days or --max-gpus")
        from planner.cli.run import budget_search
        budget_search(model_name, gpus, hardware_files, seq_len, global_batch, precision, tokens, prices, pue,
                      budget_usd, deadline_days, gpu_types, max_gpus, plot, time_limit, fmt, room)
        return
    if not model_name or not gpus:
        missing = "--model" if not model_name else "--gpus"
        raise UserError(f"{missing} is required, e.g. `plan --model 175b --gpus 1024xA100` (see plan --help)")
    if top < 1:
        raise UserError(f"--top {top} is not allowed; give 1 or more plans")
    if not time_limit > 0 or time_limit == float("inf"):
        raise UserError(f"--time-limit {time_limit} is not allowed; give a positive, finite number of seconds")
    from planner.solve.optimize import default_global_batch, search
    from planner.solve.space import SpaceOptions

    if tokens is not None and not 0 < tokens <= 1e16:
        raise UserError(f"--tokens {tokens:g} is not allowed; give a positive count up to 1e16, e.g. 300e9")
    model, note, cluster = _load(model_name, gpus, hardware_files, seq_len, global_batch, precision, prices)
    if len(cluster) == 1:
        cluster = cluster[0]
    recompute = tuple(x.strip() for x in recompute_only.split(",")) if recompute_only else ("none", "selective", "full")
    bad = [r for r in recompute if r not in ("none", "selective", "full")]
    if bad:
        raise UserError(f"--recompute {bad[0]!r} is not allowed; choose from none, selective, full")
    zero = _int_tuple(zero_only, "zero") or (0, 1, 2, 3)
    if any(z > 3 for z in zero):
        raise UserError(f"--zero {zero_only!r} is not allowed; ZeRO stages are 0, 1, 2, 3")
    if lora_rank:     # frozen base weights: nothing to shard beyond the adapters' optimizer (Strategy.lora_rank)
        zero = tuple(z for z in zero if z < 2)
        if not zero:
            raise UserError(f"--zero {zero_only} with --lora-rank: LoRA plans are modelled with ZeRO 0 or 1")
    _check_fp8_recipe(fp8_recipe, precision or model.precision, cluster)
    opts = SpaceOptions(global_batch=global_batch or default_global_batch(model, cluster),
                        precision=precision or model.precision, optimizer=optimizer,
                        tp=_int_tuple(tp_only, "tp"), pp=_int_tuple(pp_only, "pp"), zero_stage=zero,
                        recompute=recompute, flash_attention=not no_flash_attention, fp32_grads=grads == "fp32",
                        headroom=room, moe_dispatcher=moe_dispatcher, tp_comm_overlap=tp_comm_overlap,
                        lora_rank=lora_rank, offload=("none",) if lora_rank else SpaceOptions.offload,
                        fp8_recipe=fp8_recipe, moe_a2a_overlap=moe_a2a_overlap)
    if framework:
        from planner.solve.space import for_framework
        opts = for_framework(opts, framework)
    if exclude_only:
        from planner.solve.space import exclude
        try:
            opts = exclude(opts, [x.strip() for x in exclude_only.split(",") if x.strip()])
        except ValueError as e:
            raise UserError(str(e)) from None
    if validated_only:
        from planner.solve.trust import validated_space
        opts = validated_space(opts)
    if explain:
        top = max(top, 2)
    with _progress(fmt) as progress:
        result = search(model, cluster, top=top, time_limit_s=time_limit, space=opts, progress=progress)
    result.model.note = note
    result.assumptions["global_batch_source"] = (
        "--global-batch" if global_batch else
        "the preset's published pre-training batch" if model.global_batch else
        "about 4M tokens, a pre-training default")
    if tokens is not None:
        from planner.runs.estimate import add_run_figures
        add_run_figures(result, model, cluster, tokens, pue)
    ex = None
    if emit:
        from planner.frameworks.api import export_best
        ex = export_best(emit, model, cluster, result, opts, time_limit)
    if ex is None or fmt == "table":
        _emit(result, fmt)
    sched = _schedule(model, result.plans[0].strategy, cluster) if (report or plot) else None
    if report:
        from planner.report.file import write_report
        try:
            files = write_report(result, report, schedule=sched)
        except ValueError as e:
            raise UserError(str(e)) from None
        if fmt == "table":
            _console().print("report written: " + ", ".join(str(f) for f in files))
    if plot:
        _plot_schedule(sched, plot, fmt)
    if explain and fmt == "table":
        from planner.report.text import explain as explain_lines
        console = _console()
        console.print()
        console.print("[bold]Why the best plan wins[/]")
        for line in explain_lines(result.plans):
            console.print(line)
    _show_export(result, fmt, ex, out_dir)


def _schedule(model, strategy: dict, cluster):
    """The pipeline schedule of a plan (planner.solve.schedule), None on several GPU pools (not drawn)."""
    if isinstance(cluster, tuple):
        return None
    from planner.frameworks.base import strategy_from_plan
    from planner.solve.schedule import pipeline_schedule
    return pipeline_schedule(model, strategy_from_plan(strategy), cluster)


def _plot_schedule(sched, path: str, fmt: str) -> None:
    if sched is None:
        raise UserError("--plot draws one GPU type's pipeline schedule; a plan on several GPU pools is not drawn")
    from planner.report.file import schedule_chart
    schedule_chart(sched, path)
    if fmt == "table":
        _console().print(f"pipeline schedule written: {path}")


@cli.command()
@_common
@_export_options
@click.option("--tp", type=int, default=1, show_default=True, help="Tensor-parallel size.")
@click.option("--pp", type=int, default=1, show_default=True, help="Pipeline stages.")
@click.option("--dp", type=int, help="Data-parallel size [default: GPUs / (tp x pp)].")
@click.option("--micro-batch", type=int, default=1, show_default=True, help="Sequences per micro-batch.")
@click.option("--zero", type=click.IntRange(0, 3), default=0, show_default=True, help="ZeRO stage (1 = distributed optimizer).")
@click.option("--recompute", type=click.Choice(["none", "selective", "full"]), default="selective", show_default=True)
@click.option("--recompute-layers", help="With --recompute full: layers recomputed per stage, e.g. 4,2,0,0.")
@click.option("--sequence-parallel/--no-sequence-parallel", default=True, show_default=True)
@click.option("--virtual-stages", type=int, default=1, show_default=True, help="Interleaved 1F1B chunks per stage.")
@click.option("--stage-layers", help="Layers per pipeline stage, e.g. 11,12,12,...,13 [default: even split].")
@click.option("--cp", type=int, default=1, show_default=True, help="Context-parallel size (ring attention).")
@click.option("--ep", type=int, default=1, show_default=True, help="Expert-parallel size (MoE models).")
@click.option("--expert-tp", type=int, help="Expert tensor-parallel size (MoE parallel folding: experts fold "
              "etp x ep x edp over the stage's tp x cp x dp GPUs) [default: --tp].")
@click.option("--offload-optimizer", is_flag=True, help="Keep optimizer states in host memory (ZeRO-Offload).")
@click.option("--offload-params", is_flag=True, help="Also keep weights in host memory (needs --zero 3).")
@click.option("--schedule", type=click.Choice(["1f1b", "gpipe", "dualpipe"]), default="1f1b", show_default=True,
              help="Pipeline schedule (1f1b is interleaved when --virtual-stages > 1; dualpipe: DeepSeek's "
                   "bidirectional schedule, two copies of the weights, pp + 1 micro-batches in flight, the MoE "
                   "all-to-all overlapped with --moe-a2a-overlap; its bubble priced as 1F1B's).")
@click.option("--headroom", help=HEADROOM_HELP)
@click.option("--plot", type=click.Path(), help="Write a PNG: the pipeline schedule of one step (stages x time: "
              "forward, backward, recompute, send / receive, idle) beside each stage's memory.")
@_framework_option
@_comm_options
def evaluate(model_name, gpus, hardware_files, seq_len, global_batch, precision, optimizer, no_flash_attention,
             grads, fmt, tp, pp, dp, micro_batch, zero, recompute, recompute_layers, sequence_parallel, virtual_stages,
             stage_layers, cp, ep, expert_tp, offload_optimizer, offload_params, schedule, headroom, plot, framework,
             moe_dispatcher, lora_rank, fp8_recipe, moe_a2a_overlap, tp_comm_overlap, emit, out_dir):
    """Predict step time, throughput, MFU and memory of one given strategy, with the memory verdict in words
    ("fits, X GB to spare ..." or "does not fit: needs X GB of Y GB on stage k ...").

    Exit code 3 when the plan does not fit (after printing it in full); 2 for bad input.
    """
    from costmodels.strategy import Strategy
    from planner.solve.evaluate import parse_headroom
    from planner.solve.optimize import default_global_batch, evaluate_strategy

    _check_export_options(emit, out_dir)
    if plot:
        check_writable(plot, "--plot")
    framework = _resolve_framework(framework, emit)
    room = parse_headroom(headroom)
    model, note, pools = _load(model_name, gpus, hardware_files, seq_len, global_batch, precision)
    if len(pools) > 1:
        raise UserError(f"--gpus {gpus!r}: `plan evaluate` takes one GPU type; search several pools with `plan`")
    cluster = pools[0]
    n = cluster.num_gpus
    if dp is None:
        if min(tp, pp, cp) < 1 or n % (tp * pp * cp):
            raise UserError(f"tp x pp x cp = {tp} x {pp} x {cp} does not divide the {n} GPUs; choose sizes whose "
                            f"product divides {n}")
        dp = n // (tp * pp * cp)
    _check_fp8_recipe(fp8_recipe, precision or model.precision, cluster)
    st = Strategy(tp=tp, pp=pp, dp=dp, micro_batch=micro_batch,
                  global_batch=global_batch or default_global_batch(model, cluster), zero_stage=zero,
                  recompute=recompute, sequence_parallel=sequence_parallel,
                  precision=precision or model.precision, optimizer=optimizer, virtual_stages=virtual_stages,
                  flash_attention=not no_flash_attention, fp32_grads=grads == "fp32",
                  stage_layers=_int_tuple(stage_layers, "stage-layers"),
                  recompute_layers=_int_tuple(recompute_layers, "recompute-layers"),
                  cp=cp, ep=ep, expert_tp=expert_tp, offload_optimizer=offload_optimizer or offload_params,
                  offload_params=offload_params, pipeline_schedule=schedule, framework=framework or "megatron",
                  moe_dispatcher=moe_dispatcher, tp_comm_overlap=tp_comm_overlap, lora_rank=lora_rank,
                  fp8_recipe=fp8_recipe, moe_a2a_overlap=moe_a2a_overlap)
    if framework:
        from planner.solve.rules import framework_problem
        problem = framework_problem(framework, model, st)
        if problem:
            raise UserError(problem)
    result = evaluate_strategy(model, cluster, st, room)
    result.model.note = note
    ex = None
    if emit:
        from planner.frameworks.api import export
        ex = export(emit, model, st, cluster)
    if ex is None or fmt == "table":
        _emit(result, fmt, title="Plan")
    _show_export(result, fmt, ex, out_dir)
    if plot:
        _plot_schedule(_schedule(model, result.plans[0].strategy, cluster), plot, fmt)
    if not result.plans[0].fits:
        raise PlanDoesNotFit()


@cli.command()
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def models(fmt):
    """List the model presets (name, shape, parameters, published training defaults)."""
    from costmodels.presets import ALIASES, list_models

    rows = []
    aliases: dict[str, list[str]] = {}
    for a, canon in ALIASES.items():
        aliases.setdefault(canon, []).append(a)
    for m in list_models():
        rows.append({"name": m.name, "params_b": round(m.params_total() / 1e9, 2),
                     "active_b": round(m.params_active() / 1e9, 2), "layers": m.layers, "hidden": m.hidden,
                     "heads": m.heads, "kv_heads": m.kv_heads, "seq_len": m.seq_len,
                     "global_batch": m.global_batch, "moe": m.moe is not None,
                     "aliases": sorted(aliases.get(m.name, [])), "source": m.source})
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table
    t = Table(show_edge=False)
    for col in ("name", "params (B)", "active (B)", "layers", "hidden", "heads/kv", "seq", "batch (seqs)", "aliases"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["name"], f"{r['params_b']:.2f}", f"{r['active_b']:.2f}", str(r["layers"]), str(r["hidden"]),
                  f"{r['heads']}/{r['kv_heads']}", str(r["seq_len"]), str(r["global_batch"] or "-"),
                  ", ".join(r["aliases"]))
    _console().print(t)


@cli.command()
@click.option("--hardware", "hardware_files", multiple=True, type=click.Path(), help="Extra catalog file(s).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def gpus(hardware_files, fmt):
    """List the GPU catalog: memory, bandwidths, dense peak TFLOP/s, node size, price."""
    from hardware import load_catalog

    cat = load_catalog(hardware_files)
    rows = [g.model_dump(mode="json") for g in cat.gpus.values()]
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table
    t = Table(show_edge=False)
    for col in ("name", "memory GB", "HBM GB/s", "bf16 TF", "fp8 TF", "per node", "NVLink GB/s/dir",
                "network GB/s/GPU", "$/GPU-h", "price kind", "TDP W", "aliases"):
        t.add_column(col)
    for g in cat.gpus.values():
        t.add_row(g.name, f"{g.memory_gb:g}", f"{g.hbm_gbps:g}", f"{g.tflops['bf16'] or '-'}",
                  f"{g.tflops['fp8'] or '-'}", str(g.gpus_per_node), f"{g.intra_node_gbps:g}",
                  f"{g.inter_node_gbps:g}", f"{g.price_usd_per_gpu_hour:.2f}", g.price_kind, f"{g.tdp_w:g}",
                  ", ".join(g.aliases))
    _console().print(t)


@cli.command()
@click.option("--runs", "runs_file", type=click.Path(),
              help="A runs/v1 or serving/v1 file (schemas: planner/validation/data/README.md) "
                   "[default: every bundled set, each reported separately].")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--plot", type=click.Path(), help="Write a PNG bar chart of the % errors here.")
@click.option("--markdown", type=click.Path(), help="Write a Markdown report (table + summary) here.")
def validate(runs_file, fmt, plot, markdown):
    """Predict every run of a published-runs file (or of every bundled set) and report measured vs
    predicted, % error and the errors in sample (rows the constants were fitted on) and out of sample.

    Each run is predicted in the quantity it reports (step time, tokens/s per GPU, TFLOP/s per GPU, MFU or
    HFU, in the source's FLOP convention; peak GB per GPU when it reports no speed). Fields the source leaves
    null (micro-batch, interleaving, recompute) are filled with the fastest value that fits. Runs that cannot be predicted are listed with the reason.
    """
    from planner.report.validation import render_markdown, render_plot
    from planner.validation.runs import BUNDLED, ValidationFileError, validate_file

    try:
        results = [validate_file(f) for f in ([runs_file] if runs_file else BUNDLED.values())]
    except ValidationFileError as e:
        raise UserError(str(e)) from None
    if plot:
        render_plot(results, plot)
    if markdown:
        with open(markdown, "w") as fh:
            fh.write(render_markdown(results, plot))
    if fmt == "json":
        doc = results[0].as_json() if runs_file else {"sets": [r.as_json() for r in results]}
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
        return
    for result in results:
        _print_validation(result)


def _print_validation(result) -> None:
    from rich.table import Table
    t = Table(show_edge=False, title=f"{result.file} ({result.schema_})")
    for col in ("id", "metric", "measured", "predicted", "error", "filled by the planner / skipped"):
        t.add_column(col, justify="left" if col in ("id", "metric", "filled by the planner / skipped") else "right")
    for r in result.runs:
        if r.pct_error is None:
            t.add_row(r.id, r.metric or "-", _num(r.measured), "-", "-", f"skipped: {r.skipped}")
        else:
            also = [f"{m} {_num(v['measured'])} -> {_num(v['predicted'])} ({100 * v['pct_error']:+.1f}%)"
                    for m, v in r.other_metrics.items()]
            t.add_row(r.id, r.metric, _num(r.measured), _num(r.predicted), f"{100 * r.pct_error:+.1f}%",
                      ", ".join([f"{k}={v}" for k, v in r.filled.items()] + also))
    console = _console()
    console.print(t)
    s = result.summary
    if not s.predicted:
        console.print(f"no run of {s.count} could be predicted")
    for label, p in (("all", s), ("out of sample (held out)", result.out_of_sample),
                     ("in sample (constants fitted on these)", result.in_sample)):
        if p is not None and p.predicted:
            console.print(f"{label}: {p.predicted} of {p.count} runs predicted ({p.skipped} skipped): median |error| "
                          f"{100 * p.median_abs_pct_error:.1f}%, mean {100 * p.mean_abs_pct_error:.1f}%, max "
                          f"{100 * p.max_abs_pct_error:.1f}%; {100 * p.within_10pct:.0f}% within 10%, "
                          f"{100 * p.within_20pct:.0f}% within 20%")
    for m, p in (result.by_metric or {}).items():
        console.print(f"{m} (held-out rows measuring several figures): {p.predicted} predicted, median |error| "
                      f"{100 * p.median_abs_pct_error:.1f}%, {100 * p.within_10pct:.0f}% within 10%")


@cli.command()
@click.option("--model", "model_name", required=True, help="Preset name or alias, or a Hugging Face config.json path.")
@click.option("--gpus", required=True, help="GPUs to serve on, e.g. 8xH100 (one GPU type).")
@click.option("--prompt", type=int, required=True, help="Prompt tokens per request.")
@click.option("--output", type=int, required=True, help="Generated tokens per request.")
@click.option("--qps", type=float, help="Requests per second to serve [default: as many as the GPUs can].")
@click.option("--batch", type=int, help="Fix the concurrent sequences per replica (vLLM --max-num-seqs).")
@click.option("--ttft-ms", type=float, help="Upper limit on time to first token, ms.")
@click.option("--tpot-ms", type=float, help="Upper limit on time per output token, ms.")
@click.option("--weights", type=click.Choice(["bf16", "fp16", "fp8", "int8", "int4"]), help="Fix the weight precision.")
@click.option("--kv-cache", type=click.Choice(["bf16", "fp16", "fp8"]), help="Fix the KV-cache precision.")
@click.option("--tp", type=int, help="Fix the tensor-parallel size of a replica.")
@click.option("--pp", type=int, help="Fix the pipeline-parallel size of a replica.")
@click.option("--e2e-ms", type=float, help="Upper limit on a request's whole latency (TTFT + the rest of its tokens), ms.")
@click.option("--objective", type=click.Choice(["throughput", "latency", "cost", "gpus"]), default="throughput",
              show_default=True, help="What the best plan maximises or minimises: tokens/s per GPU, request latency, "
                                      "$ per token, or the GPUs used (with --qps: the fewest that serve it).")
@click.option("--min-gpus-for", "min_gpus_for", type=float, metavar="RATE",
              help="The fewest GPUs (of --gpus, at most its count) that serve RATE requests/s within the limits: "
                   "--qps RATE --objective gpus.")
@click.option("--prefix-hit", type=float, default=0.0, show_default=True,
              help="Share of each prompt found in the prefix cache (a shared system prompt, earlier turns): only the "
                   "rest is prefilled (vLLM automatic prefix caching, SGLang RadixAttention).")
@click.option("--spec-tokens", type=int, help="Speculative decoding: tokens drafted per step, checked by the model in "
                                              "one pass (aggregated plans and the decode replicas of disaggregated ones).")
@click.option("--spec-acceptance", type=float,
              help="With --spec-tokens: the chance each drafted token is accepted (measure it on your traffic; "
                   "EAGLE-style heads report 0.6-0.8).")
@click.option("--spec-draft", help="With --spec-tokens: the draft model (a preset or config.json) [default: a drafting "
                                   "head on the model, priced as one more layer per token].")
@click.option("--mode", type=click.Choice(["aggregated", "disaggregated", "both"]),
              help="Replicas that prefill and decode (aggregated), prefill replicas handing each prompt's KV cache to "
                   "decode replicas (disaggregated), or both in one search [default: both; aggregated when --batch, "
                   "--tp or --pp fix a deployment].")
@click.option("--front", is_flag=True, help="List the SLA front instead of one plan: every plan no other beats on both "
                                           "tokens/s per GPU and tokens/s per user, within the limits.")
@click.option("--plot", type=click.Path(dir_okay=False), help="With --front: write the front as a PNG chart.")
@click.option("--gpu-memory-utilization", "util", type=float, help="Share of GPU memory the engine uses [default: 0.9].")
@click.option("--price", help="USD per GPU-hour overriding the catalog price of the GPU served on: USD, or NAME=USD "
                             "with NAME that GPU (any catalog name or alias).")
@click.option("--hardware", "hardware_files", multiple=True, type=click.Path(), help="Extra catalog file(s).")
@NETWORK_OPTION
@FABRIC_OPTION
@click.option("--top", type=int, default=3, show_default=True, help="Plans to show (the best and runner-ups).")
@click.option("--emit", metavar="ENGINE[@VERSION]", help="Print only the plan's launch command for ENGINE: vllm "
                                                         "(vllm serve), sglang (sglang.launch_server) or trtllm "
                                                         "(trtllm-serve); @VERSION names the version written for "
                                                         "(vllm@0.11, sglang@0.5, trtllm@1.0).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def serve(model_name, gpus, prompt, output, qps, batch, ttft_ms, tpot_ms, weights, kv_cache, tp, pp, e2e_ms, objective,
          min_gpus_for, prefix_hit, spec_tokens, spec_acceptance, spec_draft, mode, front, plot, util, price,
          hardware_files, top, emit, fmt):
    """Plan inference serving: tp / pp per replica, replicas, weight and KV-cache precision and concurrency, for
    the most tokens/s per GPU (or lowest latency, lowest $ per token, fewest GPUs) within the latency limits.
    Plans are priced under continuous batching in steady state (docs/serving.md); `--front` lists the whole
    tokens/s-per-GPU against tokens/s-per-user front."""
    from costmodels.presets import get_model
    from hardware import HardwareError, parse_cluster
    from hardware.catalog import parse_prices, price_for
    from planner.frameworks.api import with_serving_commands
    from planner.frameworks.vllm import model_path_for
    from planner.report.serving import render_serve
    from planner.serving.search import serve_plan

    if top < 1:
        raise UserError(f"--top {top} is not allowed; give 1 or more plans")
    if emit is not None:
        from planner.frameworks.base import parse_target
        try:
            emit = parse_target(emit)
        except ValueError as e:
            raise UserError(str(e)) from None
        if emit not in ("vllm", "sglang", "trtllm"):
            raise UserError(f"--emit {emit}: plan serve writes vllm, sglang or trtllm commands; training configs "
                            f"come from `plan --emit`")
    if min_gpus_for is not None:
        if not (min_gpus_for > 0 and min_gpus_for < float("inf")):
            raise UserError(f"--min-gpus-for {min_gpus_for:g} is not allowed; give a positive request rate per second")
        if qps is not None:
            raise UserError("--min-gpus-for RATE already sets the request rate; give it or --qps, not both")
        qps, objective = min_gpus_for, "gpus"
    if plot and not front:
        raise UserError("--plot draws the SLA front; add --front")
    if front and (qps is not None or batch is not None or emit or mode == "disaggregated"):
        raise UserError("--front lists aggregated plans over every concurrency; it takes no --qps, --batch, "
                        "--min-gpus-for, --emit or --mode disaggregated")
    if plot:
        check_writable(plot, "--plot")
    catalog = _catalog(hardware_files)
    cluster = parse_cluster(gpus, catalog)
    try:   # one --price parser for every command; NAME must be the GPU served on
        usd = price_for(catalog, parse_prices([price] if price else [], bare_for=cluster.gpu.name), cluster.gpu)
    except HardwareError as e:
        raise UserError(str(e)) from None
    if usd is not None:
        cluster = parse_cluster(gpus, catalog.with_prices({cluster.gpu.name: usd}))
    model, note = get_model(model_name)
    spec = None
    if spec_tokens is not None or spec_acceptance is not None or spec_draft is not None:
        if spec_tokens is None or spec_acceptance is None:
            raise UserError("speculative decoding needs --spec-tokens K and --spec-acceptance A (and optionally "
                            "--spec-draft MODEL)")
        from costmodels.serving import Speculation
        spec = Speculation(spec_tokens, spec_acceptance, get_model(spec_draft)[0] if spec_draft else None)
        if front:
            raise UserError("--front lists plans without speculative decoding; drop --spec-tokens")
    if front:
        from planner.report.serving import plot_serve_front, render_serve_front
        from planner.serving.search import serve_front
        try:
            res = serve_front(model, cluster, prompt, output, ttft_ms=ttft_ms, tpot_ms=tpot_ms, e2e_ms=e2e_ms,
                              weights=weights, kv_cache=kv_cache, tp=tp, pp=pp, gpu_memory_utilization=util,
                              model_note=note, prefix_hit=prefix_hit)
        except ValueError as e:
            raise UserError(str(e)) from None
        if plot:
            plot_serve_front(res, plot)
        if fmt == "json":
            click.echo(json.dumps(res.model_dump(mode="json"), indent=2, sort_keys=True))
        else:
            render_serve_front(res, _console(), top)
        return
    try:
        result = serve_plan(model, cluster, prompt, output, qps=qps, batch=batch, ttft_ms=ttft_ms, tpot_ms=tpot_ms,
                            weights=weights, kv_cache=kv_cache, tp=tp, pp=pp, objective=objective,
                            gpu_memory_utilization=util, top=top, model_note=note, e2e_ms=e2e_ms, mode=mode,
                            prefix_hit=prefix_hit, spec=spec)
    except ValueError as e:   # ServeError, ServingError: one line naming the value and what would work
        raise UserError(str(e)) from None
    result = with_serving_commands(result, model, model_path_for(model_name))
    if emit:
        click.echo(result.commands[emit])
    elif fmt == "json":
        click.echo(json.dumps(result.model_dump(mode="json"), indent=2, sort_keys=True))
    else:
        render_serve(result, _console())


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.4f}" if abs(x) < 1 else (f"{x:.2f}" if abs(x) < 1000 else f"{x:,.0f}")




@cli.command("import")
@click.option("--megatron-args", "megatron_file", type=click.Path(exists=True, dir_okay=False),
              help="A file of Megatron-LM pretrain_gpt.py arguments (e.g. megatron_args.sh or a launch script).")
@click.option("--deepspeed-config", "deepspeed_file", type=click.Path(exists=True, dir_okay=False),
              help="A DeepSpeed JSON config (ds_config.json).")
@click.option("--torchtitan-config", "torchtitan_file", type=click.Path(exists=True, dir_okay=False),
              help="A torchtitan v0.2 TOML job config (job.toml).")
@click.option("--nemo-config", "nemo_file", type=click.Path(exists=True, dir_okay=False),
              help="A NeMo or Megatron-Bridge YAML recipe (trainer.precision, model.tensor_model_parallel_size, ...).")
@click.option("--model", "model_name", required=True, help="The model the config trains (preset, alias or config.json).")
@click.option("--gpus", required=True, help="The cluster it runs on, e.g. 1024xA100.")
@click.option("--hardware", "hardware_files", multiple=True, type=click.Path(), help="Extra catalog file(s).")
@click.option("--time-limit", type=float, default=30.0, show_default=True, help="Deterministic work for the search for a better plan, in seconds (as plan's --time-limit).")
@click.option("--headroom", help=HEADROOM_HELP)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@_framework_option
def import_config(megatron_file, deepspeed_file, torchtitan_file, nemo_file, model_name, gpus, hardware_files,
                  time_limit, headroom, fmt, framework):
    """Read a Megatron-LM, DeepSpeed, torchtitan or NeMo / Megatron-Bridge config back into a plan, predict it (with
    its memory verdict in words), and show what would be better. Megatron arguments and YAML recipes print
    every setting read and every one ignored.

    Exit code 3 when the imported plan does not fit (after printing everything); 2 for bad input or when no
    plan at all fits the cluster.
    """
    from planner.frameworks.api import import_plan
    from planner.solve.evaluate import parse_headroom
    from planner.frameworks.deepspeed import deepspeed_settings, read_deepspeed_config
    from planner.frameworks.megatron import megatron_settings, read_megatron_args
    from planner.frameworks.nemo import nemo_settings, read_nemo_config
    from planner.frameworks.torchtitan import read_torchtitan_config, torchtitan_model, torchtitan_settings

    if sum(bool(f) for f in (megatron_file, deepspeed_file, torchtitan_file, nemo_file)) != 1:
        raise UserError("give exactly one of --megatron-args FILE, --deepspeed-config FILE, --torchtitan-config FILE "
                        "or --nemo-config FILE")
    if not time_limit > 0 or time_limit == float("inf"):
        raise UserError(f"--time-limit {time_limit} is not allowed; give a positive, finite number of seconds")
    room = parse_headroom(headroom)
    model, note, pools = _load(model_name, gpus, hardware_files, None, None, None)
    if len(pools) > 1:
        raise UserError(f"--gpus {gpus!r}: `plan import` takes one GPU type")
    cluster = pools[0]
    source = megatron_file or deepspeed_file or torchtitan_file or nemo_file
    with open(source) as fh:
        text = fh.read()
    read, ignored = {}, []
    if megatron_file:
        model, st = read_megatron_args(text, model, cluster)
        read, ignored = megatron_settings(text)
    elif nemo_file:
        model, st = read_nemo_config(text, model, cluster)
        read, ignored = nemo_settings(text)
    elif deepspeed_file:
        st = read_deepspeed_config(text, model, cluster)
        read, ignored = deepspeed_settings(text)
    else:
        model = torchtitan_model(text, model)
        st = read_torchtitan_config(text, model, cluster)
        read, ignored = torchtitan_settings(text)
    if framework:    # priced in another framework's accounting than the file's own
        st = st.with_(framework=framework)
    res = import_plan(model, cluster, st, time_limit, room)
    res.imported.model.note = res.best.model.note = note
    if fmt == "json":
        doc = {"imported": res.imported.model_dump(mode="json"), "best": res.best.model_dump(mode="json"),
               "speedup": res.speedup}
        doc["read"], doc["ignored"] = read, ignored
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
    else:
        if read:
            click.echo("Read from " + source + ": " + ", ".join(k if v is True else f"{k} {v}"
                                                                for k, v in read.items()))
            if ignored:
                click.echo(f"Not read (the planner assumes them, or they do not change the plan): {', '.join(ignored)}")
        _emit(res.imported, fmt, title="Imported plan")
        _emit(res.best, fmt, title="Best plan found by the search")
        t0, t1 = res.imported.plans[0].step_time_s, res.best.plans[0].step_time_s
        if res.fits:
            click.echo(f"\nWhat would be better: the best plan is predicted {res.speedup:.2f}x as fast as the "
                       f"imported one ({t0:.3f} s -> {t1:.3f} s per step)")
        else:
            click.echo(f"\nWhat would be better: the imported plan {res.imported.plans[0].verdict}; the best plan "
                       f"that fits is predicted at {t1:.3f} s per step (the imported one: {t0:.3f} s, if it fitted)")
    if not res.fits:
        raise PlanDoesNotFit()


def main(argv: list[str] | None = None) -> None:
    """Entry point. Exit codes: 0 done; 3 (EXIT_DOES_NOT_FIT) `plan evaluate` / `plan import` printed a plan
    that does not fit (PlanDoesNotFit, raised after the full output); 2 a declared user error (bad value,
    impossible request, no plan that fits, a file the user named that cannot be read or written): one line
    on stderr, no traceback; 1 anything else: a bug, shown as a traceback to report; 130 interrupted."""
    from planner.errors import USER_ERRORS, one_line

    try:
        code = cli.main(args=argv, prog_name="plan", standalone_mode=False)
        if code == EXIT_DOES_NOT_FIT:   # click returns an Exit's code (PlanDoesNotFit) in this mode
            sys.exit(EXIT_DOES_NOT_FIT)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except UserError as e:
        e.show()
        sys.exit(2)
    except click.UsageError as e:
        msg = e.format_message().replace("\n", " ")
        hint = f" (see {e.ctx.command_path} --help)" if e.ctx is not None else ""
        click.echo(f"error: {msg}{hint}", err=True)
        sys.exit(2)
    except click.ClickException as e:
        click.echo(f"error: {e.format_message()}", err=True)
        sys.exit(2)
    except USER_ERRORS as e:
        click.echo(f"error: {one_line(e)}", err=True)
        sys.exit(2)
    except BrokenPipeError:
        sys.exit(0)
    except OSError as e:
        if not getattr(e, "filename", None):
            raise   # not a path the user named: a bug
        click.echo(f"error: cannot use {e.filename}: {e.strerror or e}", err=True)
        sys.exit(2)
    sys.exit(0)


if __name__ == "__main__":
    main()
