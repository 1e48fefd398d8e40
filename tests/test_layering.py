"""Package layering: hardware imports neither costmodels nor planner; costmodels does not import planner."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imports_in(source: str, package: tuple[str, ...]) -> list[str]:
    """Absolute module names imported by `source`, a module of `package` (relative imports resolved)."""
    out: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - (node.level - 1)])
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod:
                out.append(mod)
            out.extend(f"{mod}.{alias.name}" if mod else alias.name for alias in node.names)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            # importlib.import_module("planner...") / __import__("planner...")
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else ""
            if name in ("import_module", "__import__"):
                out.append(node.args[0].value)
    return out


def imports_of(path: Path) -> list[str]:
    package = path.relative_to(ROOT).parts[:-1]   # the folder is the package, also for __init__.py
    return imports_in(path.read_text(encoding="utf-8"), package)


def top_level(module: str) -> str:
    return module.split(".")[0]


@pytest.mark.parametrize("package, forbidden", [("hardware", {"costmodels", "planner"}), ("costmodels", {"planner"})])
def test_layering(package, forbidden):
    files = sorted((ROOT / package).rglob("*.py"))
    assert len(files) >= 3, f"expected the {package}/ sources"
    bad = [f"{path.relative_to(ROOT)} imports {mod}"
           for path in files for mod in imports_of(path) if top_level(mod) in forbidden]
    assert not bad, "; ".join(bad)


def test_costmodels_does_use_hardware():
    # a sanity check that the scan sees real imports: costmodels depends on hardware (allowed direction)
    mods = [m for path in (ROOT / "costmodels").rglob("*.py") for m in imports_of(path)]
    assert any(top_level(m) == "hardware" for m in mods)
    assert any(m.startswith("costmodels.") for m in mods)


@pytest.mark.parametrize("src, want", [
    ("import planner.solve.solver", "planner.solve.solver"),
    ("from planner import search", "planner"),
    ("from planner.solve.space import SpaceOptions", "planner.solve.space"),
    ("def f():\n    from planner.solve.optimize import search\n    return search", "planner.solve.optimize"),
    ("import importlib\nimportlib.import_module('planner.solve.optimize')", "planner.solve.optimize"),
    ("from .. import planner", "planner"),
])
def test_checker_catches_each_import_form(src, want):
    mods = imports_in(src, ("costmodels",))
    assert want in mods, mods
    assert any(top_level(m) == "planner" for m in mods)


def test_checker_resolves_relative_imports():
    mods = imports_in("from .memory import model_state_bytes\nfrom . import flops", ("costmodels",))
    assert "costmodels.memory" in mods and "costmodels.flops" in mods
    assert not any(top_level(m) == "planner" for m in mods)


# --- inside the planner -----------------------------------------------------------------------------
# Inner to outer: a subpackage imports only subpackages of a lower rank (never a sibling of its own rank),
# so calculation (errors .. validation) never imports presentation (report) or the command line (cli).
PLANNER_RANKS = {"errors": 0, "solve": 1, "runs": 2, "serving": 2, "frameworks": 3, "validation": 3,
                 "report": 4, "cli": 5}
PRESENTATION_LIBS = {"rich", "matplotlib", "click"}


def _planner_unit(path: Path) -> str:
    """The planner subpackage (or top-level module) a file belongs to: 'solve', 'errors', '__init__'."""
    parts = path.relative_to(ROOT / "planner").parts
    return parts[0] if len(parts) > 1 else Path(parts[0]).stem


def _planner_target(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "planner" or len(parts) < 2:
        return None
    return parts[1]


def test_planner_knows_every_subpackage():
    units = {_planner_unit(p) for p in (ROOT / "planner").rglob("*.py")} - {"__init__"}
    assert units <= set(PLANNER_RANKS), f"rank the new planner parts in PLANNER_RANKS: {units - set(PLANNER_RANKS)}"


def test_planner_inner_layers():
    bad = []
    for path in sorted((ROOT / "planner").rglob("*.py")):
        unit = _planner_unit(path)
        if unit == "__init__":
            continue
        for mod in imports_of(path):
            target = _planner_target(mod)
            if target is None or target == unit or target not in PLANNER_RANKS:
                continue
            if PLANNER_RANKS[target] >= PLANNER_RANKS[unit]:
                bad.append(f"{path.relative_to(ROOT)} ({unit}) imports {mod} ({target})")
    assert not bad, "; ".join(bad)


def test_calculation_does_not_render():
    bad = [f"{path.relative_to(ROOT)} imports {mod}"
           for package in ("hardware", "costmodels", "planner") for path in sorted((ROOT / package).rglob("*.py"))
           if package != "planner" or PLANNER_RANKS.get(_planner_unit(path), 0) < PLANNER_RANKS["report"]
           for mod in imports_of(path) if top_level(mod) in PRESENTATION_LIBS]
    assert not bad, "; ".join(bad)


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def test_no_import_cycles():
    """Module-level and function-level imports together form no cycle between our modules."""
    files = [p for package in ("hardware", "costmodels", "planner") for p in (ROOT / package).rglob("*.py")]
    names = {_module_name(p): p for p in files}
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        deps = set()
        for mod in imports_of(path):
            # "from planner.solve import space" lists both planner.solve and planner.solve.space: keep modules
            # that exist; a package's __init__ importing its own submodules is the package, not a cycle
            if mod in names and mod != name and not name.startswith(mod + ".") and not mod.startswith(name + "."):
                deps.add(mod)
        graph[name] = deps
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for d in sorted(graph[n]):
            if state.get(d) == 1:
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    assert not cycles, "; ".join(cycles)


def test_cycle_check_sees_function_level_imports():
    mods = imports_in("def f():\n    from planner.validation.runs import run_model\n", ("planner", "serving"))
    assert "planner.validation.runs" in mods
