"""Where a `plan` process spends its time, phase by phase, for every benchmark case.

Each case runs as a fresh `python` process (what a user's `plan --model M --gpus G` is), which reports:

- interpreter: `python -c pass`, measured apart (the floor of any Python command);
- imports: importing the CLI and everything a search uses (planner.cli, planner.solve.optimize, OR-Tools);
- enumeration: the structures the divisibility rules allow (planner.solve.space);
- scoring: the stage costs and integer coefficients of the structures scored (costmodels.performance
  .stage_costs, planner.solve.stages.coefficients; the search scores them lazily in bound order);
- bounds: the layer-time bounds of every structure and the exact bounds of those scored
  (planner.solve.solver.layer_bounds, lower_bounds);
- CP-SAT: the layout solves (ortools CpSolver.Solve);
- layouts: the rest of the bound-ordered visit (memory tests, sharper bounds, greedy layouts, evaluation);
- output: result building and printing the table (the CLI's time after the search returns).

The phases are timed by wrapping those functions in the child process (a few per cent of overhead on
the scoring phase). Medians of `--repeat` processes.

    python benchmarks/phases.py                 # every case, 3 processes each
    python benchmarks/phases.py --markdown      # the table in benchmarks/README.md
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from search import CASES, fmt_table, git_line, machine_line  # noqa: E402

PHASES = ["interpreter", "imports", "enumeration", "scoring", "bounds", "CP-SAT", "layouts", "output"]

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import io, contextlib
from ortools.sat.python import cp_model
import costmodels.performance, planner.solve.optimize as O, planner.solve.solver as S, planner.solve.stages as G
from planner.cli import main
t_imports = time.perf_counter() - t0
spent = dict.fromkeys(["enumeration", "scoring", "bounds", "CP-SAT", "search"], 0.0)

def timed(owner, name, phase):
    fn = getattr(owner, name)
    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            spent[phase] += time.perf_counter() - t
    setattr(owner, name, wrapper)

timed(O, "enumerate_space", "enumeration"); timed(O, "enumerate_pools", "enumeration")
timed(O, "stage_costs", "scoring"); timed(O, "coefficients", "scoring"); timed(G, "coefficients", "scoring")
timed(O, "lower_bounds", "bounds"); timed(O, "layer_bounds", "bounds"); timed(cp_model.CpSolver, "Solve", "CP-SAT"); timed(O, "_search", "search")
t = time.perf_counter()
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main(sys.argv[1:])
    except SystemExit as e:
        if e.code:
            raise
total = time.perf_counter() - t
layouts = spent["search"] - spent["enumeration"] - spent["scoring"] - spent["bounds"] - spent["CP-SAT"]
print(json.dumps({"imports": t_imports, "enumeration": spent["enumeration"], "scoring": spent["scoring"],
                  "bounds": spent["bounds"], "CP-SAT": spent["CP-SAT"], "layouts": layouts,
                  "output": total - spent["search"]}))
"""


def interpreter_s() -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - t


def child(model: str, gpus: str, gb: int | None) -> dict:
    argv = [sys.executable, "-c", CHILD, "--model", model, "--gpus", gpus]
    if gb:
        argv += ["--global-batch", str(gb)]
    r = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="processes per case (median) [3]")
    ap.add_argument("--case", action="append", help="only these case labels (repeatable)")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = ap.parse_args()
    print(machine_line())
    print(git_line())
    print()
    start = statistics.median(interpreter_s() for _ in range(max(3, args.repeat)))
    rows = [["case", "gpus", *[f"{p} s" for p in PHASES], "total s"]]
    for label, model, gpus, gb in CASES:
        if args.case and label not in args.case:
            continue
        runs = [child(model, gpus, gb) for _ in range(args.repeat)]
        med = {p: statistics.median(r[p] for r in runs) for p in PHASES[1:]}
        med["interpreter"] = start
        total = sum(med.values())
        print(f"[{label}] " + ", ".join(f"{p} {med[p]:.3f}" for p in PHASES) + f"; total {total:.2f} s", flush=True)
        rows.append([label, gpus, *[f"{med[p]:.2f}" for p in PHASES], f"{total:.2f}"])
    print()
    print(fmt_table(rows, args.markdown))


if __name__ == "__main__":
    main()
