"""Search, explain and export parallelism plans. `planner.search(...)` is the Python API behind `plan`.

The names below are imported on first use (PEP 562), so `plan models`, `plan gpus` and `--help` do not load
the solver (OR-Tools) they do not need."""
from __future__ import annotations

__all__ = ["search", "NoPlanError"]


def __getattr__(name: str):
    if name in __all__:
        from planner.solve import optimize
        return getattr(optimize, name)
    raise AttributeError(f"module 'planner' has no attribute {name!r}")
