"""Error bands: how far off the planner's step-time predictions were on held-out published runs, by regime,
and which structures some validated run used. Written to planner/validation/data/error-bands.json, which
every plan reads (planner.solve.trust) to show its expected error and the structures no validated run covers.

    python -m planner.validation.bands            # rewrite the file from today's predictions
    python -m planner.validation.bands --check    # exit 1 when the file differs from today's predictions

Regime: GPU family / 16-bit or fp8 / dense or MoE. A band is the median and 90th percentile of |error| over
the held-out rows (planner.validation.split: not fitted on) of the training sets in that regime; a plan whose
regime has fewer than MIN_RUNS rows uses the coarser family / dense-or-MoE, then family, then all rows.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from planner.solve.trust import features, regime_keys
from planner.validation.runs import Completion, validate_file
from planner.validation.split import BUNDLED, HELD_OUT

BANDS_FILE = Path(__file__).resolve().parent / "data" / "error-bands.json"
TRAINING_SETS = ("runs-public", "runs-modern")
MIN_RUNS = 3


def compute() -> dict:
    errs: dict[str, list[float]] = {}
    seen: set[str] = set()
    for name in TRAINING_SETS:
        comps: dict[str, Completion] = {}
        res = validate_file(BUNDLED[name], comps)
        for r in res.runs:
            if r.pct_error is None:
                continue
            c = comps[r.id]
            st = c.evaluation.strategy
            seen.update(features(st))
            if r.split != HELD_OUT:
                continue
            for key in regime_keys(c.cluster.gpu.family, st.precision, c.model.moe is not None):
                errs.setdefault(key, []).append(abs(r.pct_error))
    regimes = {}
    for key in sorted(errs):
        e = sorted(errs[key])
        p90 = e[min(len(e) - 1, int(round(0.9 * (len(e) - 1))))]
        regimes[key] = {"runs": len(e), "median_abs_pct_error": round(statistics.median(e), 4),
                        "p90_abs_pct_error": round(p90, 4)}
    return {"schema": "error-bands/v1",
            "source": "python -m planner.validation.bands: held-out rows of " + ", ".join(TRAINING_SETS),
            "min_runs": MIN_RUNS, "regimes": regimes, "validated_features": sorted(seen)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m planner.validation.bands", description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when the file differs from today's predictions")
    args = ap.parse_args(argv)
    doc = compute()
    text = json.dumps(doc, indent=1, sort_keys=True) + "\n"
    if args.check:
        ok = BANDS_FILE.exists() and BANDS_FILE.read_text(encoding="utf-8") == text
        print("error bands up to date" if ok else f"{BANDS_FILE} differs from today's predictions; rerun without --check")
        return 0 if ok else 1
    BANDS_FILE.write_text(text, encoding="utf-8")
    print(f"wrote {BANDS_FILE} ({len(doc['regimes'])} regimes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
