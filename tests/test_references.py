"""What the code and the docs cite exists: every module or attribute path named (planner.solve.space,
costmodels.model.ModelSpec) imports, every repository file named (docs/solver.md, costmodels/memory.py)
is there, and nothing points outside the repository (the sibling reference folder, absolute paths) or at
tickets."""
from __future__ import annotations

import importlib
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOTTED = re.compile(r"(?<![/\w.-])((?:costmodels|planner|hardware)(?:\.[A-Za-z_]\w*)+)")
PATH = re.compile(r"(?<![\w./-])((?:costmodels|planner|hardware|docs|tests|benchmarks|examples)/[\w./-]*\w)")
# the sibling reference folder and the absolute checkout root, spelt so this file does not name them itself
_SIBLING = os.path.join(os.pardir, "sha" + "red")
_ROOT_DIR = "/" + "work" + "/"
OUTSIDE = re.compile("|".join([re.escape(_SIBLING), re.escape(_ROOT_DIR), r"issue \d+", "ticket"]), re.I)
# a path cited from another project's repository ("Megatron-LM docs/distrib_optimizer.md") is not ours
EXTERNAL = re.compile(r"Megatron|DeepSpeed|torchtitan|vLLM|SGLang|TensorRT|TRT-LLM|NeMo|PyTorch|NCCL|llm-foundry")


def _sources() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "*.py", "*.md", "*.toml", ".ci/run"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.split()
    return [ROOT / f for f in out if not f.startswith(("tests/data/", "docs/reference/"))
            and f != "tests/test_references.py" and (ROOT / f).exists()]


def _resolves(ref: str) -> bool:
    parts = ref.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ImportError:
            continue
        try:
            for attr in parts[k:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def _refs(pattern: re.Pattern, skip_external: bool = False) -> list[tuple[str, int, str]]:
    found = []
    for path in _sources():
        lines = path.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines, 1):
            if skip_external and EXTERNAL.search(line + " " + (lines[i - 2] if i > 1 else "")):
                continue
            found.extend((str(path.relative_to(ROOT)), i, m.group(1).rstrip(".")) for m in pattern.finditer(line))
    return found


def test_module_paths_named_exist():
    refs = _refs(DOTTED)
    assert len(refs) > 50
    # the runs schema's own README names JSON keys (hardware.num_gpus), not modules
    bad = [f"{f}:{i} {ref}" for f, i, ref in refs if not ref.endswith((".py", ".md", ".json"))
           and not f.startswith("planner/validation/data/") and not _resolves(ref)]
    assert not bad, "; ".join(bad)


def test_file_paths_named_exist():
    refs = _refs(PATH, skip_external=True)
    assert len(refs) > 10
    bad = [f"{f}:{i} {ref}" for f, i, ref in refs
           if "." in Path(ref).name and not any(c in ref for c in "*{") and not (ROOT / ref).exists()]
    assert not bad, "; ".join(bad)


def test_nothing_points_outside_the_repository():
    bad = [f"{path.relative_to(ROOT)}:{i}" for path in _sources()
           for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if OUTSIDE.search(line)]
    assert not bad, "; ".join(bad)


@pytest.mark.parametrize("ref, ok", [("planner.solve.space.SpaceOptions", True), ("costmodels.rules", False),
                                     ("planner.evaluate_strategy", False), ("costmodels.model.ModelSpec", True)])
def test_resolver(ref, ok):
    assert _resolves(ref) is ok
