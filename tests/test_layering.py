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
