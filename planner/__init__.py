"""Search, explain and export parallelism plans. `planner.search(...)` is the Python API behind `plan`."""
from planner.solve.optimize import NoPlanError, search

__all__ = ["search", "NoPlanError"]
