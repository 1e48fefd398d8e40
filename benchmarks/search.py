"""Search-time benchmark of `plan`: cold process and warm in-process wall time per case.

    python benchmarks/search.py                 # every case, 3 repeats, plain table
    python benchmarks/search.py --repeat 5 --markdown
    python benchmarks/search.py --case llama3-405b

For each case it prints
  - cold: wall time of `python -m planner.cli --model M --gpus G ...` from process start until the plan
    has been printed (subprocess.run, median of --repeat runs): imports, catalog, search and rendering;
  - warm: wall time of `planner.search(...)` in this process after one warm-up call of the same case
    (median of --repeat calls): the search alone, with module-level caches filled;
  - the candidate structures scored (result.search.candidates), the structures that needed no CP-SAT
    run vs. the CP-SAT calls (structures_solved / cp_sat_calls), the solver status, and the best plan.
For Llama 3 405B it also prints the dimensions the search space actually took (the distinct values of
every Strategy field over the enumerated structures) and compares the found plan with the published
Llama 3 configuration (TP8 PP16 DP128 CP1, micro-batch 1, seq 8192, global batch 2048).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from costmodels.presets import get_model  # noqa: E402
from costmodels.strategy import Strategy, StrategyError  # noqa: E402
from hardware import HardwareError, parse_cluster  # noqa: E402
try:  # GPU pools ("512xA100+512xH100") where the parser supports them
    from hardware import parse_pools  # noqa: E402
except ImportError:  # pragma: no cover - older trees
    parse_pools = None
import planner  # noqa: E402
from planner.solve.optimize import default_global_batch, evaluate_strategy  # noqa: E402
from planner.solve.space import SpaceOptions, check_strategy, enumerate_space  # noqa: E402

# (label, model, gpus, global batch or None for the preset's / the planner's default)
CASES = [
    ("gpt3-175b", "gpt3-175b", "1024xA100", None),
    ("llama3-405b", "llama3-405b", "16384xH100", 2048),
    ("mixtral-8x22b", "mixtral-8x22b", "256xH100", None),
    ("megatron-1t", "megatron-1t", "3072xA100", None),
    ("hetero-a100+h100", "gpt3-175b", "512xA100+512xH100", None),
    ("deepseek-v3", "deepseek-v3", "2048xH800", None),
]

# Llama 3 405B as published (Dubey et al. 2024, section 3.3.2 and Table 4): 16K H100, 8K sequences,
# 16M tokens per step, TP8 CP1 PP16 DP128 with FSDP-sharded optimizer states.
LLAMA3_PUBLISHED = dict(tp=8, pp=16, dp=128, cp=1, micro_batch=1, global_batch=2048, zero_stage=1,
                        sequence_parallel=True, precision="bf16")


def parse_gpus(text: str):
    """One Cluster, or a tuple of pools for "A+B" where supported; HardwareError otherwise."""
    if parse_pools is None:
        return parse_cluster(text)
    pools = parse_pools(text)
    return pools[0] if len(pools) == 1 else pools


def machine_line() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        nproc = str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    try:
        from importlib.metadata import version
        ortools = version("ortools")
    except Exception:  # noqa: BLE001 - informational only
        ortools = "?"
    load = "/".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (f"machine: Python {platform.python_version()} ({platform.python_implementation()}), nproc {nproc}, "
            f"CPU {cpu}, {platform.system()} {platform.machine()}, ortools {ortools}, load avg {load}")


def git_line() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.split("\n")
        dirty = [d[3:] for d in dirty if d.strip()]
        return f"source: git {head}" + (f" + uncommitted changes in {', '.join(dirty)}" if dirty else " (clean)")
    except (OSError, subprocess.CalledProcessError):
        return "source: not a git checkout"


def check_module_entry_point() -> str:
    has_main = (REPO / "planner" / "cli" / "__main__.py").exists()
    r = subprocess.run([sys.executable, "-m", "planner.cli", "--help"], cwd=REPO, capture_output=True, text=True)
    ok = has_main and r.returncode == 0 and "Usage" in r.stdout
    return (f"python -m planner.cli: {'ok' if ok else 'BROKEN'} (planner/cli/__main__.py {'present' if has_main else 'missing'}, "
            f"--help exit {r.returncode})")


def cold_run(model: str, gpus: str, gb: int | None, fmt: str) -> tuple[float, int, str]:
    """Wall seconds of one `python -m planner.cli` process, from start until it has printed the plan."""
    argv = [sys.executable, "-m", "planner.cli", "--model", model, "--gpus", gpus, "--format", fmt]
    if gb:
        argv += ["--global-batch", str(gb)]
    t0 = time.perf_counter()
    r = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    return dt, r.returncode, (r.stderr.strip().splitlines() or [""])[-1]


def warm_search(model, cluster, gb: int | None, repeat: int):
    planner.search(model, cluster, global_batch=gb)                  # warm-up: imports, caches, OR-Tools
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = planner.search(model, cluster, global_batch=gb)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def plan_text(st: dict) -> str:
    s = f"TP{st['tp']} PP{st['pp']} DP{st['dp']}"
    if st.get("cp", 1) > 1:
        s += f" CP{st['cp']}"
    if st.get("ep", 1) > 1:
        s += f" EP{st['ep']}"
    s += f" mb{st['micro_batch']}"
    if st.get("virtual_stages", 1) > 1:
        s += f" v{st['virtual_stages']}"
    s += f" Z{st['zero_stage']} {st['recompute']}"
    if st.get("offload_params"):
        s += " offload-params"
    elif st.get("offload_optimizer"):
        s += " offload-opt"
    return s


def searched_dimensions(model, cluster, gb: int) -> list[str]:
    """What the search space takes today: the SpaceOptions defaults and the distinct values of every
    Strategy field over the enumerated structures (one value: fixed, not searched)."""
    opts = SpaceOptions(global_batch=gb, precision=model.precision)
    lines = ["SpaceOptions defaults: " + ", ".join(
        f"{f.name}={getattr(opts, f.name)!r}" for f in dataclasses.fields(SpaceOptions))]
    space = enumerate_space(model, cluster.num_gpus, cluster.gpus_per_node, opts)
    searched, fixed = [], []
    for f in dataclasses.fields(Strategy):
        vals = {getattr(s, f.name) for s in space.strategies}
        try:
            vals = sorted(vals)
        except TypeError:
            vals = sorted(vals, key=repr)
        if f.name in ("stage_layers", "recompute_layers"):
            searched.append(f"{f.name}: per stage, chosen by the CP-SAT layout model")
        elif len(vals) > 1:
            shown = ", ".join(map(str, vals[:12])) + (f", ... ({len(vals)} values)" if len(vals) > 12 else "")
            searched.append(f"{f.name}: {shown}")
        else:
            fixed.append(f"{f.name}={vals[0] if vals else '-'}")
    lines.append(f"searched ({len(space.strategies)} structures): " + "; ".join(searched))
    lines.append("fixed (not searched today): " + ", ".join(fixed))
    return lines


def llama3_published(model, cluster) -> tuple[object | None, str]:
    """The published configuration, with the best interleaving v in 1..8 that the rules allow, recompute
    none or selective; full recompute only if nothing else fits."""
    best, best_desc, tried = None, "", []
    lowest: dict[str, float] = {}   # recompute -> lowest peak GB over the allowed v
    for recomputes in (("none", "selective"), ("full",)):
        for rec in recomputes:
            for v in range(1, 9):
                try:
                    st = Strategy(**LLAMA3_PUBLISHED, recompute=rec, virtual_stages=v)
                    check_strategy(model, st, cluster.num_gpus, cluster.gpus_per_node)
                except StrategyError as e:
                    tried.append(f"{rec}/v{v}: {e}")
                    continue
                p = evaluate_strategy(model, cluster, st).plans[0]
                lowest[rec] = min(lowest.get(rec, float("inf")), p.memory_gb["peak"])
                if p.fits and (best is None or p.tokens_per_s > best.tokens_per_s):
                    best, best_desc = p, f"recompute={rec}, virtual_stages={v}"
        if best is not None:
            break
    unfit = [f"{r} does not fit for any allowed v (lowest peak {g:.1f} GB)" for r, g in lowest.items()
             if best is None or r != best.strategy["recompute"]]
    if best is None:
        return None, "nothing fits: " + "; ".join(unfit + tried[:4])
    return best, best_desc + "".join(f"; {u}" for u in unfit)


def llama3_published_structure(model, cluster, gb: int):
    """The published structure (TP8 PP16 DP128 CP1, micro-batch 1, ZeRO-1) with interleaving, recompute per
    stage and stage layers left to the planner: planner.search restricted to that structure."""
    try:
        opts = SpaceOptions(global_batch=gb, precision="bf16", tp=(8,), pp=(16,), dp=(128,), cp=(1,),
                            micro_batch=(1,), zero_stage=(1,))
        return planner.search(model, cluster, top=1, space=opts).plans[0], ""
    except (TypeError, ValueError) as e:  # NoPlanError is a ValueError; TypeError if SpaceOptions changed
        return None, str(e).splitlines()[0]


def llama3_measured() -> float | None:
    """Measured MFU of the published run, from the bundled copy of the public runs when present."""
    import json
    f = REPO / "planner" / "validation" / "data" / "runs-public.json"
    try:
        runs = json.loads(f.read_text())["runs"]
        return next(r["measured"]["mfu"] for r in runs if r["id"].startswith("llama3-405b"))
    except (OSError, ValueError, KeyError, StopIteration):
        return None


def fmt_table(rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        out = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join("---" for _ in rows[0]) + "|"]
        out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
        return "\n".join(out)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="cold runs and warm calls per case (median) [3]")
    ap.add_argument("--case", action="append", help="only these case labels (repeatable)")
    ap.add_argument("--format", default="table", choices=["table", "json"],
                    help="--format of the cold `plan` process [table: what a user sees]")
    ap.add_argument("--markdown", action="store_true", help="print the results table as Markdown")
    args = ap.parse_args()

    print(machine_line())
    print(git_line())
    print(check_module_entry_point())
    print()

    header = ["case", "gpus", "cold s", "warm s", "candidates", "memory-pruned", "layouts solved",
              "CP-SAT calls", "status", "best plan", "tokens/s", "MFU"]
    rows = [header]
    notes: list[str] = []
    for label, model_name, gpus, gb in CASES:
        if args.case and label not in args.case:
            continue
        print(f"[{label}] {model_name} on {gpus}" + (f", global batch {gb}" if gb else ""), flush=True)
        try:
            cluster = parse_gpus(gpus)
        except HardwareError as e:
            dt, rc, last = cold_run(model_name, gpus, gb, args.format)
            msg = f"not supported yet: {e}"
            print(f"  {msg}\n  cold `plan` process: exit {rc} in {dt:.2f} s: {last}")
            rows.append([label, gpus, f"{dt:.2f} (exit {rc})", "-", "-", "-", "-", "-", "not supported yet",
                         "-", "-", "-"])
            notes.append(f"{label}: {msg}")
            continue
        model, _ = get_model(model_name)
        colds, failed = [], []
        for _ in range(args.repeat):
            dt, rc, last = cold_run(model_name, gpus, gb, args.format)
            if rc != 0:
                print(f"  cold `plan` process failed (exit {rc}): {last}")
                failed.append(rc)
            colds.append(dt)
        cold = statistics.median(colds)
        cold_cell = f"{cold:.2f}" + (f" ({len(failed)} of {len(colds)} failed)" if failed else "")
        try:
            warm, res = warm_search(model, cluster, gb, args.repeat)
        except (TypeError, AttributeError, NotImplementedError) as e:  # pools not accepted by planner.search
            msg = f"not supported yet: {type(e).__name__}: {e}"
            print(f"  {msg}")
            rows.append([label, gpus, cold_cell, "-", "-", "-", "-", "-", "not supported yet", "-", "-", "-"])
            notes.append(f"{label}: {msg}")
            continue
        s, p = res.search, res.plans[0]
        print(f"  cold {cold:.2f} s (runs: {', '.join(f'{x:.2f}' for x in colds)}), warm {warm:.2f} s; "
              f"{s.candidates} candidates, {s.memory_pruned} cannot fit, {s.structures_solved} layouts solved, "
              f"{s.cp_sat_calls} CP-SAT calls, {s.status} (gap {s.gap:.3g})")
        print(f"  best: {plan_text(p.strategy)}: {p.step_time_s:.3f} s/step, {p.tokens_per_s:,.0f} tokens/s, "
              f"MFU {100 * p.mfu:.1f}%, peak {p.memory_gb['peak']:.1f} GB", flush=True)
        stage_gpus = getattr(p, "stage_gpus", None)
        if stage_gpus and len(set(stage_gpus)) > 1:
            runs: list[list] = []   # consecutive stages with the same GPU and layer count
            for g, n in zip(stage_gpus, p.strategy["stage_layers"]):
                if runs and runs[-1][:2] == [g, n]:
                    runs[-1][2] += 1
                else:
                    runs.append([g, n, 1])
            line = "pipeline stages on pools: " + ", ".join(f"{k} x {g} ({n} layers each)" for g, n, k in runs)
            print("  " + line)
            notes.append(f"{label}: {line}")
        rows.append([label, gpus, cold_cell, f"{warm:.2f}", str(s.candidates), str(s.memory_pruned),
                     str(s.structures_solved), str(s.cp_sat_calls), s.status, plan_text(p.strategy),
                     f"{p.tokens_per_s:,.0f}", f"{100 * p.mfu:.1f}%"])

        if model_name == "llama3-405b":
            for line in searched_dimensions(model, cluster, gb or default_global_batch(model, cluster)):
                print("  " + line)
            pub, desc = llama3_published(model, cluster)
            if pub is None:
                line = f"published Llama 3 configuration: {desc}"
            else:
                line = (f"tokens/s: found plan {p.tokens_per_s:,.0f} ({plan_text(p.strategy)}) vs published "
                        f"{pub.tokens_per_s:,.0f} ({plan_text(pub.strategy)}, {desc}, MFU {100 * pub.mfu:.1f}%, "
                        f"peak {pub.memory_gb['peak']:.1f} GB): {p.tokens_per_s / pub.tokens_per_s:.3f}x")
            print("  " + line)
            notes.append(f"{label}: {line}")
            tuned, err = llama3_published_structure(model, cluster, gb or default_global_batch(model, cluster))
            if tuned is None:
                line = f"published structure with a planner-chosen layout: {err}"
            else:
                line = (f"published structure, interleaving / per-stage recompute / stage layers chosen by the "
                        f"planner: {tuned.tokens_per_s:,.0f} tokens/s ({plan_text(tuned.strategy)}, MFU "
                        f"{100 * tuned.mfu:.1f}%, recompute layers {sum(tuned.strategy['recompute_layers'])} of "
                        f"{model.layers}); found plan is {p.tokens_per_s / tuned.tokens_per_s:.3f}x")
            print("  " + line)
            notes.append(f"{label}: {line}")
            mfu = llama3_measured()
            if mfu is not None:
                line = (f"measured (Dubey et al. 2024, public.json): MFU {100 * mfu:.0f}%, i.e. about "
                        f"{p.tokens_per_s * mfu / p.mfu:,.0f} tokens/s in the planner's FLOP count")
                print("  " + line)
                notes.append(f"{label}: {line}")
        print(flush=True)

    print(fmt_table(rows, args.markdown))
    if notes:
        print()
        for n in notes:
            print(("- " if args.markdown else "") + n)


if __name__ == "__main__":
    main()
