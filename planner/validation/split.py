"""Which rows of the bundled measurement sets the fitted constants are fitted on (the fit split) and which
are held out, by a rule declared here and fixed before any fit.

The rows of each bundled file are grouped by GPU family (the catalog's, e.g. ampere, hopper; a GPU the
catalog does not know is its own group), each group is ordered by the SHA-256 of the row ids, and the 1st,
3rd, 5th, ... row of each group is in the fit split; the others are held out. The rule looks at ids and
GPUs only, never at errors; it keeps each family's rows half in, half out. Rows of any other file are held
out. planner.validation.fit fits on the fit split; `plan validate` reports both parts separately.
"""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

from costmodels.calibration import FITTED
from hardware import HardwareError, load_catalog

# The measurement sets shipped with the package (copies of the reference sets; data/README.md). `plan
# validate` with no --runs validates each.
DATA = Path(__file__).resolve().parent / "data"
BUNDLED = {"runs-public": DATA / "runs-public.json", "runs-modern": DATA / "runs-modern.json",
           "serving-public": DATA / "serving-public.json", "serving-online": DATA / "serving-online.json",
           "runs-memory": DATA / "runs-memory.json"}
# the sets constants are fitted on (half their rows, SPLIT_RULE); runs-memory (measured peaks collected from
# published sources) fits nothing: every row of it is held out
FITTED_SETS = ("runs-public", "runs-modern", "serving-public", "serving-online")

FIT, HELD_OUT = "fit", "held-out"
# GPU families whose training constants are fitted (planner.validation.fit); a training row of any other
# family (its constants borrowed from a fitted one, costmodels/calibration.py) fits nothing: held out
FITTED_FAMILIES = FITTED      # costmodels.calibration: the families with constants of their own
SPLIT_RULE = ("The rows of each bundled set are grouped by GPU family, each group is ordered by the SHA-256 of "
              "the run ids, and the 1st, 3rd, 5th, ... row of each group is a fit row (the constants are fitted "
              "on these by `python -m planner.validation.fit`); every other row, every training row of a GPU "
              "family without fitted constants (they borrow a fitted family's), and every row of any other "
              "file, is held out (planner/validation/split.py).")


def _load(path: Path) -> tuple[str, list]:
    doc = json.loads(path.read_text(encoding="utf-8"))
    return doc["schema"], doc["runs"]


# ---- the split --------------------------------------------------------------------------------------------
def _family(hw) -> str:
    gpu = hw.get("gpu") if isinstance(hw, dict) else None
    try:
        return load_catalog().resolve(str(gpu))[0].family
    except HardwareError:
        return f"unknown GPU {gpu}"


def split(runs: list, families: tuple[str, ...] | None = None) -> dict[str, str]:
    """{run id: FIT or HELD_OUT} for the rows of one file (the rule in the module docstring); with
    `families`, rows of other GPU families are all held out (nothing is fitted on them)."""
    groups: dict[str, list[str]] = {}
    for i, run in enumerate(runs):
        if isinstance(run, dict):
            groups.setdefault(_family(run.get("hardware")), []).append(str(run.get("id") or f"run-{i}"))
    out = {}
    for fam, ids in groups.items():
        for k, rid in enumerate(sorted(ids, key=lambda r: hashlib.sha256(r.encode()).hexdigest())):
            out[rid] = FIT if k % 2 == 0 and (families is None or fam in families) else HELD_OUT
    return out


def _families(name: str) -> tuple[str, ...] | None:
    """The families a set's fit rows may come from: training sets fit per family, serving constants are shared."""
    return FITTED_FAMILIES if name.startswith("runs-") else None


def bundled_split() -> dict[str, dict[str, str]]:
    """{set name: {run id: FIT or HELD_OUT}} for the bundled sets."""
    return {name: split(_load(BUNDLED[name])[1], _families(name)) for name in FITTED_SETS}


@lru_cache(maxsize=1)
def fit_rows() -> frozenset[tuple[str, str]]:
    """(schema, run id) of every bundled row some constant was fitted on."""
    out = set()
    for name in FITTED_SETS:
        schema, runs = _load(BUNDLED[name])
        out |= {(schema, rid) for rid, part in split(runs, _families(name)).items() if part == FIT}
    return frozenset(out)
