"""How much to trust a predicted plan: the error of the planner's predictions on held-out published runs of
the plan's regime (GPU family, 16-bit or fp8, dense or MoE), and the structures of the plan that no validated
run used. The figures are data written by `python -m planner.validation.bands`
(planner/validation/data/error-bands.json); this module only reads them.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

BANDS_FILE = Path(__file__).resolve().parents[1] / "validation" / "data" / "error-bands.json"

# each structure in words, its --exclude name (planner.solve.space.EXCLUDABLE; None: cannot be excluded) and
# whether a strategy uses it; planner.validation.bands (which writes the file) uses the same words and keys
FEATURES = (("tensor parallel", "tp", lambda s: s.tp > 1), ("pipeline parallel", "pp", lambda s: s.pp > 1),
            ("interleaved pipeline", "interleaving", lambda s: s.virtual_stages > 1),
            ("context parallel", "cp", lambda s: s.cp > 1), ("expert parallel", "ep", lambda s: s.ep > 1),
            ("ZeRO-1", "zero1", lambda s: s.zero_stage == 1), ("ZeRO-2", "zero2", lambda s: s.zero_stage == 2),
            ("ZeRO-3", "zero3", lambda s: s.zero_stage == 3),
            ("optimizer offload (CPU Adam)", "offload", lambda s: s.offload_optimizer),
            ("parameter offload", "param-offload", lambda s: s.offload_params),
            ("full recompute", "full-recompute", lambda s: s.recompute == "full"),
            ("fp8", None, lambda s: s.precision == "fp8"))


def features(st) -> list[str]:
    """The structures a strategy uses, in words."""
    return [name for name, _, on in FEATURES if on(st)]


def regime_keys(family: str, precision: str, moe: bool) -> list[str]:
    """Regime keys, finest first: family/precision/kind, family/kind, family, all."""
    p = "fp8" if precision == "fp8" else "16-bit"
    kind = "moe" if moe else "dense"
    return [f"{family}/{p}/{kind}", f"{family}/{kind}", family, "all"]


@lru_cache(maxsize=1)
def _bands() -> dict:
    if not BANDS_FILE.exists():
        return {"regimes": {}, "validated_features": [], "min_runs": 3}
    return json.loads(BANDS_FILE.read_text(encoding="utf-8"))


def trust(family: str, precision: str, moe: bool, st) -> dict:
    """{regime, runs, median_abs_pct_error, p90_abs_pct_error, unvalidated}: the finest regime with enough
    held-out runs (else "all"), and the plan's structures no validated run used."""
    b = _bands()
    band, key = None, None
    for key in regime_keys(family, precision, moe):
        band = b["regimes"].get(key)
        if band is not None and band["runs"] >= b.get("min_runs", 3):
            break
    seen = set(b.get("validated_features", []))
    out = {"regime": key, "unvalidated": [f for f in features(st) if f not in seen]}
    if band is not None:
        out.update(band)
    return out


def validated_space(opt):
    """SpaceOptions (planner.solve.space) without the structures no validated run used: a search that stays
    inside validated territory (--validated-only)."""
    from planner.solve.space import exclude
    seen = set(_bands().get("validated_features", []))
    return exclude(opt, [key for name, key, _ in FEATURES if key and name not in seen])
