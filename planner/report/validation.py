"""docs/validation.md and docs/validation.png: the `plan validate` results of one or more sets, with the
errors in sample (rows the constants were fitted on) and out of sample (held out), every row, and where each
constant comes from."""
from __future__ import annotations

from pathlib import Path

from planner.validation.runs import Summary, ValidationResult
from planner.validation.split import BUNDLED, SPLIT_RULE


def _summary_cells(s: Summary | None) -> str:
    if s is None or not s.predicted:
        return "- | - | - | - | - |"
    return (f"{100 * s.median_abs_pct_error:.1f}% | {100 * s.mean_abs_pct_error:.1f}% | {100 * s.max_abs_pct_error:.1f}% | "
            f"{100 * s.within_10pct:.0f}% | {100 * s.within_20pct:.0f}% |")


def _set_name(result: ValidationResult) -> str:
    return Path(result.file).name


def render_markdown(results: ValidationResult | list[ValidationResult], plot: str | None = None) -> str:
    """docs/validation.md: per set, the errors in sample (rows constants were fitted on) and out of sample
    (held out), every row, and the constants with where they come from."""
    from costmodels.calibration import CALIBRATION, MATMUL_SHARE, SERVING, calibration_for
    from hardware import load_catalog

    results = [results] if isinstance(results, ValidationResult) else list(results)
    bundled = all(Path(r.file).resolve() in {p.resolve() for p in BUNDLED.values()} for r in results)
    cmd = "plan validate" if bundled else "plan validate " + " ".join(f"--runs {r.file}" for r in results)
    lines = [
        "# Validation against published measurements",
        "",
        "Regenerate with:",
        "",
        "```bash",
        f"{cmd} --markdown docs/validation.md --plot docs/validation.png",
        "python -m planner.validation.fit      # refits the constants of costmodels/calibration.py",
        "python -m planner.validation.bands    # the error bands every plan shows (data/error-bands.json)",
        "```",
        "",
        f"**Split.** {SPLIT_RULE} Figures *out of sample* are on the held-out rows only; *in sample* on the "
        "fit rows. The sets are copies of the reference sets, shipped in planner/validation/data.",
        "",
        "| set | rows | predicted | part | predicted / rows in part | median abs. error | mean | max | within 10% | "
        "within 20% |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        s = res.summary
        for label, part in (("out of sample", res.out_of_sample), ("in sample", res.in_sample), ("all", s)):
            if part is None:
                continue
            lines.append(f"| {_set_name(res)} | {s.count} | {s.predicted} | {label} | {part.predicted} / {part.count} | "
                         f"{_summary_cells(part)}")
    lines.append("")
    if plot:
        lines += [f"![prediction errors]({Path(plot).name})", ""]
    for res in results:
        lines += [f"## {_set_name(res)} ({res.schema_})", "",
                  "| run | split | metric | measured | predicted | error | chosen for unknown fields / skipped |",
                  "|---|---|---|---:|---:|---:|---|"]
        for r in res.runs:
            if r.pct_error is None:
                lines.append(f"| {r.id} | {r.split} | {r.metric or '-'} | {r.measured or '-'} | - | - | "
                             f"skipped: {r.skipped} |")
            else:
                filled = ", ".join([f"{k}={v}" for k, v in r.filled.items()]
                                   + [f"{m} {v['measured']:.4g} -> {v['predicted']:.4g} ({100 * v['pct_error']:+.1f}%)"
                                      for m, v in r.other_metrics.items()])
                lines.append(f"| {r.id} | {r.split} | {r.metric} | {r.measured:.4g} | {r.predicted:.4g} | "
                             f"{100 * r.pct_error:+.1f}% | {filled} |")
        for m, p in (res.by_metric or {}).items():
            lines.append(f"- {m}, over the {p.predicted} predicted held-out rows that measure it beside other figures: median "
                         f"|error| {100 * p.median_abs_pct_error:.1f}%, {100 * p.within_10pct:.0f}% within 10%")
        lines.append("")
    lines += _memory_markdown(results)
    lines += ["## Constants (costmodels/calibration.py)", "",
              "Fitted by `python -m planner.validation.fit` on the fit rows named above; the others are taken "
              "from the sources calibration.py cites.", "",
              "| family | GEMM efficiency | GEMM half-efficiency dim | FP8 GEMM efficiency | flash attention efficiency | "
              "HBM efficiency | provenance |", "|---|---:|---:|---:|---:|---:|---|"]
    for fam, c in CALIBRATION.items():
        how = CALIBRATION_PROVENANCE.get(fam, "")
        lines.append(f"| {fam} | {c.gemm_efficiency:g} | {c.gemm_half_dim:g} | {c.fp8_gemm_efficiency:g} | "
                     f"{c.attention_efficiency:g} | "
                     f"{c.hbm_efficiency:g} | {how} |")
    ratios = []
    gpus = load_catalog().gpus
    for gpu in MATMUL_SHARE:
        fam = gpus[gpu].family
        base, scaled = calibration_for(fam), calibration_for(fam, gpu)
        if scaled != base:
            ratios.append(f"{gpu} x{scaled.gemm_efficiency / base.gemm_efficiency:.2f} / "
                          f"x{scaled.fp8_gemm_efficiency / base.fp8_gemm_efficiency:.2f}")
    lines += ["", "Per GPU, taken: each GPU with a measured matmul share (costmodels/calibration.py MATMUL_SHARE: "
              "Bekman's mamf-finder table) scales its family's GEMM and FP8 GEMM shares by its share over the "
              "family's reference GPU (A100-80GB, H100-SXM): " + "; ".join(ratios) + "."]
    lines += ["", f"Serving: layer overhead {1e6 * SERVING.layer_overhead_s:g} us and NVLink all-reduce latency "
              f"{1e6 * SERVING.allreduce_latency_nvlink_s:g} us, fitted on the fit rows of serving-public.json and "
              "serving-online.json; "
              "the other serving constants are stated assumptions (docs/serving.md).", "",
              "Unknown fields of a run (null in the file) are filled with the fastest value that fits in memory, as "
              "an operator tuning that run would; the network bandwidth comes from the run's interconnect text when "
              "it states one. No constant is keyed to a run.", ""]
    from planner.validation.paper_memory import figure1_markdown

    lines += figure1_markdown()
    return "\n".join(lines)


def _memory_markdown(results: list[ValidationResult]) -> list[str]:
    """Measured peak memory: every row that reports it, predicted in the statistic its source names, in the
    accounting of the framework it ran (nothing is fitted to memory: every row is out of sample)."""
    from planner.validation.runs import summarise

    rows = [(res, r) for res in results for r in res.runs if r.memory_pct_error is not None]
    if not rows:
        return []
    pooled = summarise([r for _, r in rows], "memory_pct_error")
    lines = ["## Measured peak memory", "",
             "Every row that reports `measured.peak_memory_gb`, predicted for its most loaded GPU in the statistic "
             "its source names (allocated: tensors only; reserved: the planner's peak, whose fixed 1 GB stands for "
             "cuBLAS workspaces, NCCL and the caching allocator's slack; device: reserved + the CUDA context) and "
             "in the accounting of the framework it ran (`--framework`). No constant is fitted to memory.", "",
             "| set | rows with memory | median abs. error | mean | max | within 10% | within 20% |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for res in results:
        if res.memory is not None:
            lines.append(f"| {_set_name(res)} | {res.memory.predicted} | {_summary_cells(res.memory)}")
    lines += [f"| all | {pooled.predicted} | {_summary_cells(pooled)}", "",
              "| run | framework | statistic | measured GB | predicted GB | error |", "|---|---|---|---:|---:|---:|"]
    for _, r in rows:
        lines.append(f"| {r.id} | {r.framework} | {r.memory_statistic} | {r.memory_measured:.1f} | "
                     f"{r.memory_predicted:.1f} | {100 * r.memory_pct_error:+.1f}% |")
    return lines + [""]


CALIBRATION_PROVENANCE = {
    "default": "taken: ampere's (families without a fit)",
    "ampere": "GEMM and attention: fitted on the ampere fit rows of runs-public.json and runs-modern.json; FP8 "
              "(no FP8 on Ampere) and HBM: taken",
    "hopper": "GEMM, FP8 GEMM and attention: fitted on the hopper fit rows of runs-public.json and runs-modern.json; "
              "HBM: taken",
    "blackwell": "taken: hopper's, GEMM shares scaled per GPU (below); one B200 and five GB200 rows, all held out",
    "cdna3": "taken: hopper's, GEMM shares scaled per GPU (below); one MI300X row, held out",
    "cdna4": "taken: hopper's, GEMM shares scaled per GPU (below); no rows",
}


def render_plot(results: ValidationResult | list[ValidationResult], path: str | Path) -> None:
    """Bar charts of signed % error per run, one panel per set (matplotlib, Agg backend); rows constants
    were fitted on are marked '(fit)'."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba

    results = [results] if isinstance(results, ValidationResult) else list(results)
    panels = [(res, [r for r in res.runs if r.pct_error is not None]) for res in results]
    heights = [max(2.0, 0.2 * len(rows) + 1.2) for _, rows in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, sum(heights)), dpi=100,
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, (res, rows) in zip(axes[:, 0], panels):
        ys = list(range(len(rows)))
        errs = [100 * r.pct_error for r in rows]
        ax.barh(ys, errs, color=[to_rgba("#2a7" if abs(e) <= 10 else ("#d90" if abs(e) <= 20 else "#c33"),
                                         0.4 if r.split == "fit" else 1.0) for e, r in zip(errs, rows)])
        ax.set_yticks(ys, [f"{r.id} ({r.metric}){' (fit)' if r.split == 'fit' else ''}" for r in rows], fontsize=6)
        ax.axvline(0, color="k", lw=0.8)
        for x in (-10, 10):
            ax.axvline(x, color="grey", lw=0.6, ls="--")
        o = res.out_of_sample
        title = f"{_set_name(res)}: {res.summary.predicted} of {res.summary.count} predicted"
        if o is not None and o.predicted:
            title += (f"; held out: median |error| {100 * o.median_abs_pct_error:.1f}%, "
                      f"{100 * o.within_10pct:.0f}% within 10%")
        ax.set_title(title, fontsize=9)
        ax.invert_yaxis()
    axes[-1, 0].set_xlabel("prediction error, % of measured (pale bars: rows the constants were fitted on)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
