"""The bad-input corpus (tests/data/bad_inputs.json): every case exits 2 with one line naming the value."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from planner.cli import main

CORPUS = json.loads((Path(__file__).parent / "data" / "bad_inputs.json").read_text())


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    for name, content in CORPUS["files"].items():
        (d / name).write_text(content)
    return d


def test_corpus_is_large_enough():
    assert len(CORPUS["cases"]) >= 40


@pytest.mark.parametrize("case", CORPUS["cases"], ids=lambda c: " ".join(c["args"])[:70])
def test_bad_input(case, scratch, capsys):
    args = [a.replace("{tmp}", str(scratch)) for a in case["args"]]
    with pytest.raises(SystemExit) as e:
        main(args)
    out, err = capsys.readouterr()
    assert e.value.code == 2, (out, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert case["needle"].replace("{tmp}", str(scratch)) in lines[0], lines[0]
    assert "Traceback" not in out + err


@pytest.mark.parametrize("fault", [ValueError("internal: a negative bandwidth"), KeyError("gpu"),
                                   TypeError("unsupported operand"), OSError("no filename: internal")])
def test_internal_fault_is_a_traceback_not_a_user_error(fault, monkeypatch, capsys):
    """A bug inside the search is not dressed as bad input: it propagates (traceback, exit code 1)."""
    import planner.solve.optimize as optimize

    def broken(*args, **kwargs):
        raise fault

    monkeypatch.setattr(optimize, "search", broken)
    with pytest.raises(type(fault)):
        main(["--model", "175b", "--gpus", "1024xA100"])
    assert "error:" not in capsys.readouterr().err


def test_declared_user_errors_are_value_errors():
    from planner.errors import USER_ERRORS

    assert len(USER_ERRORS) >= 5
    for cls in USER_ERRORS:
        assert issubclass(cls, ValueError)   # API users may catch ValueError too
