"""Fit the fitted constants of costmodels/calibration.py on the declared fit split of the bundled
measurement sets, and report the errors in sample (fit rows) and out of sample (held-out rows).

    python -m planner.validation.fit            # fit, print the constants (today's and fitted) and the errors
    python -m planner.validation.fit --check    # exit 1 when calibration.py differs from what the fit gives

The split (planner/validation/split.py): the rows of each bundled file are grouped by GPU family (the
catalog's, e.g. ampere, hopper; a GPU the catalog does not know is its own group), each group is ordered by
the SHA-256 of the row ids, and the 1st, 3rd, 5th, ... row of each group is in the fit split; the others are
held out. The rule looks at ids and GPUs only, never at errors, so it is fixed before any fit; it keeps each
family's rows half in, half out. `plan validate` reports every row's split and the two parts' errors
separately.

What is fitted, on which rows (constants not named here are taken, with their sources, in calibration.py):
- per GPU family, `gemm_efficiency`, `gemm_half_dim` and `attention_efficiency`, on the fit rows of that
  family in runs-public.json and runs-modern.json: ampere (A100) and hopper (H100 / H200 / H800). The
  other families have too few rows (B200 one, GB200 five, MI300X one) and borrow hopper's. Every GPU with a
  measured matmul share (costmodels.calibration.MATMUL_SHARE) scales its GEMM shares by it, in the fit too.
- not `fp8_gemm_efficiency`: it follows the family's 16-bit share by a measured kernel ratio
  (costmodels.calibration.with_fp8), in every grid point too; the FP8 fit rows enter the fit above like the
  others.
- serving `layer_overhead_s` and `allreduce_latency_nvlink_s`, on the fit rows of serving-public.json
  (all H100), with the training constants above already fitted (decode and prefill GEMMs use them).

Objective: the mean over the fit rows of |ln(predicted / measured)| (symmetric in over- and
under-prediction). Search: a coarse grid, then a fine grid around the coarse minimum (axes below); ties go
to the first point in grid order, so the result is deterministic (gemm_efficiency is bounded at 0.85, see
TRAINING_AXES). A training run's prediction depends on
the completion chosen for its unknown fields (micro-batch, interleaving, recompute, layers per stage), which
depends on the constants: the grid evaluates each run's completion chosen at the current constants, then
every run is predicted afresh with the new constants, and this repeats until the constants do not change
(at most ROUNDS times).
"""
from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys
from contextlib import contextmanager
from dataclasses import replace

import costmodels.calibration as calibration
from costmodels.calibration import BORROWING, CALIBRATION, ServingCalibration, with_fp8
from planner.validation.runs import Completion, load_runs, validate_file
from planner.validation.split import BUNDLED, FIT, FITTED_FAMILIES, bundled_split

TRAINING_SETS = ("runs-public", "runs-modern")
SERVING_SETS = ("serving-public", "serving-online")
ROUNDS = 3


def _frange(lo: float, hi: float, step: float) -> tuple[float, ...]:
    n = int(round((hi - lo) / step))
    return tuple(round(lo + i * step, 10) for i in range(n + 1))


# (coarse axis, fine step or None for a list axis) per constant
# gemm_efficiency stops at 0.85 of the dense peak: large GEMMs reach 70-80% of it on A100 and 60-75% on H100
# (docs/reference/hardware.md); the margin lets the fit say so if the data disagree. Without the bound the
# hopper fit runs along a ridge (a higher efficiency with a larger half-efficiency dimension fits as well).
TRAINING_AXES = {
    "gemm_efficiency": (_frange(0.50, 0.85, 0.05), 0.01),
    # up to 512: the training rows alone run along a ridge here too (hopper: 0.79 at 768 fits them a little
    # better, 0.0732 against 0.0740), but serving's fit rows of 128-token prompts then come out 32-50% slow,
    # and the measured matmul table (MATMUL_SHARE) has H100 at 80% of peak on a 2048 x 2048 x 13312 GEMM,
    # which a larger half dimension puts further below
    "gemm_half_dim": ((0.0, 32.0, 64.0, 96.0, 128.0, 192.0, 256.0, 384.0, 512.0), None),
    "attention_efficiency": (_frange(0.10, 0.60, 0.05), 0.01),
}
FAMILY_CONSTANTS = tuple(TRAINING_AXES)
SERVING_AXES = {
    "layer_overhead_s": (_frange(0.0, 60e-6, 5e-6), 1e-6),
    "allreduce_latency_nvlink_s": (_frange(1e-6, 21e-6, 2e-6), 1e-6),
}


# ---- constants in force -------------------------------------------------------------------------------------
@contextmanager
def training_constants(values: dict[str, dict[str, float]]):
    """CALIBRATION[family] with `values[family]` replaced (and the borrowing families following) inside."""
    saved = dict(CALIBRATION)
    try:
        for fam, v in values.items():
            CALIBRATION[fam] = with_fp8(replace(saved[fam], **v), fam)
        for fam, source in BORROWING.items():
            if source in values:
                CALIBRATION[fam] = CALIBRATION[source]
        yield
    finally:
        CALIBRATION.clear()
        CALIBRATION.update(saved)


@contextmanager
def serving_constants(srv: ServingCalibration):
    """calibration.SERVING replaced by `srv` inside (the serving cost model reads it at call time)."""
    old = calibration.SERVING
    calibration.SERVING = srv
    try:
        yield
    finally:
        calibration.SERVING = old


# ---- the search ---------------------------------------------------------------------------------------------
def log_error(pred: float | None, meas: float | None) -> float:
    return abs(math.log(pred / meas)) if pred and meas and pred > 0 and meas > 0 else 0.0


def grid_search(axes: dict, objective) -> tuple[dict[str, float], float]:
    """Minimise objective(point) over a coarse grid, then over a fine grid around the coarse minimum
    (+-1 coarse step at the fine step; list axes: the neighbours). First minimum in grid order wins."""
    def best_of(grid: dict[str, tuple]) -> tuple[dict, float]:
        best, best_v = None, math.inf
        for combo in itertools.product(*grid.values()):
            point = dict(zip(grid, combo))
            v = objective(point)
            if v < best_v - 1e-12:
                best, best_v = point, v
        return best, best_v

    coarse, _ = best_of({k: ax for k, (ax, _) in axes.items()})
    fine = {}
    for k, (ax, step) in axes.items():
        i = ax.index(coarse[k])
        if step is None:
            fine[k] = ax[max(0, i - 1): i + 2]
        else:
            lo, hi = ax[max(0, i - 1)], ax[min(len(ax) - 1, i + 1)]
            fine[k] = _frange(lo, hi, step)
    return best_of(fine)


def training_completions() -> dict[str, dict[str, Completion]]:
    """Every bundled training run predicted with the constants in force; its completion, per set."""
    out = {}
    for name in TRAINING_SETS:
        comps: dict[str, Completion] = {}
        validate_file(BUNDLED[name], comps)
        out[name] = comps
    return out


def fit_training(log=print) -> dict[str, dict[str, float]]:
    """Fitted gemm_efficiency, gemm_half_dim, attention_efficiency per fitted family."""
    parts = bundled_split()
    current = {fam: {k: getattr(CALIBRATION[fam], k) for k in FAMILY_CONSTANTS} for fam in FITTED_FAMILIES}
    for rnd in range(1, ROUNDS + 1):
        with training_constants(current):
            comps = training_completions()
        new = {}
        for fam in FITTED_FAMILIES:
            rows = [c for name, cs in comps.items() for rid, c in sorted(cs.items())
                    if parts[name].get(rid) == FIT and c.cluster.gpu.family == fam and c.metric != "peak_memory_gb"]

            def objective(point, fam=fam, rows=rows, base=current[fam]):
                with training_constants({fam: {**base, **point}}):
                    return statistics.fmean(log_error(c.predicted(), c.measured) for c in rows)

            point, v = grid_search(TRAINING_AXES, objective)
            new[fam] = {**current[fam], **point}
            log(f"round {rnd}, {fam}: {len(rows)} fit rows, mean |ln(pred/meas)| {v:.4f} at {point}")
        if new == current:
            break
        current = new
    return current


def fit_serving(training: dict[str, dict[str, float]], log=print) -> dict[str, float]:
    """Fitted layer_overhead_s and allreduce_latency_nvlink_s (with the fitted training constants)."""
    from planner.validation.runs import validate_run

    parts = bundled_split()
    rows = []
    for name in SERVING_SETS:
        schema, runs = load_runs(BUNDLED[name])
        rows += [(schema, r) for r in runs if parts[name].get(str(r.get("id"))) == FIT]

    def objective(point):
        with serving_constants(replace(calibration.SERVING, **point)):
            res = [validate_run(schema, r) for schema, r in rows]
        return statistics.fmean(err for r in res for err in _latency_errors(r))

    with training_constants(training):
        best, v = grid_search(SERVING_AXES, objective)
    log(f"serving: {len(rows)} fit rows, mean |ln(pred/meas)| {v:.4f} at {best}")
    return best


def _latency_errors(r) -> list[float]:
    """|ln(predicted / measured)| of a serving row's figure, and for an online row of its other latency
    (TTFT beside TPOT; its throughput is the offered load)."""
    return [log_error(r.predicted, r.measured)] + [log_error(v["predicted"], v["measured"])
                                                   for m, v in r.other_metrics.items() if m in ("ttft_ms", "tpot_ms")]


def fit(log=print) -> dict:
    """{'training': {family: constants}, 'serving': constants}."""
    training = fit_training(log)
    return {"training": training, "serving": fit_serving(training, log)}


def today() -> dict:
    return {"training": {fam: {k: getattr(CALIBRATION[fam], k) for k in FAMILY_CONSTANTS} for fam in FITTED_FAMILIES},
            "serving": {k: getattr(calibration.SERVING, k) for k in SERVING_AXES}}


@contextmanager
def constants(values: dict):
    """Both training and serving constants of `values` (as fit() returns) in force inside."""
    with training_constants(values["training"]), serving_constants(replace(calibration.SERVING, **values["serving"])):
        yield


def report(log=print) -> None:
    """Errors of every bundled set under the constants in force, in sample and out of sample."""
    for name, path in BUNDLED.items():
        res = validate_file(path)
        for part, s in (("in sample", res.in_sample), ("out of sample", res.out_of_sample),
                        ("peak memory", res.memory)):     # memory: every row that reports it (nothing fitted)
            if s is None:
                continue
            log(f"{name:15s} {part:14s} {s.predicted:3d} of {s.count:3d} predicted: median |error| "
                f"{100 * s.median_abs_pct_error:5.1f}%, mean {100 * s.mean_abs_pct_error:5.1f}%, "
                f"max {100 * s.max_abs_pct_error:5.1f}%, within 10% {100 * s.within_10pct:3.0f}%"
                if s.predicted else f"{name:15s} {part:14s} none of {s.count} predicted")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m planner.validation.fit", description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when costmodels/calibration.py differs from the fit")
    args = ap.parse_args(argv)
    old = today()
    new = fit()
    print("\nconstant                          today        fitted")
    for fam in FITTED_FAMILIES:
        for k in FAMILY_CONSTANTS:
            print(f"{fam + '.' + k:32s} {old['training'][fam][k]:>8g}  {new['training'][fam][k]:>12g}")
    for k in SERVING_AXES:
        print(f"{'serving.' + k:32s} {old['serving'][k]:>8g}  {new['serving'][k]:>12g}")
    print("\nerrors with today's constants:")
    report()
    if new != old:
        print("\nerrors with the fitted constants:")
        with constants(new):
            report()
    if args.check and new != old:
        print("costmodels/calibration.py differs from the fit", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
