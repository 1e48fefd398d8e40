"""The search (`planner.search(...)` is solve.optimize.search): the space and its rules (space), the CP-SAT layout model (solver), bound-and-solve over
the space (optimize) and the result schema (result)."""
