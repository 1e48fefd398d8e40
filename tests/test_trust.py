"""Trust shown with every answer: each plan's expected error from held-out published runs of its regime, the
structures it uses that no validated run did, and a search that stays inside validated territory."""
from __future__ import annotations

import json

from click.testing import CliRunner

from planner.cli.main import cli
from planner.solve.trust import BANDS_FILE, regime_keys, trust
from planner.validation import bands


def test_the_bands_file_is_todays_predictions():
    """planner/validation/data/error-bands.json is what `python -m planner.validation.bands` writes now."""
    assert bands.main(["--check"]) == 0


def test_bands_are_held_out_errors_by_regime():
    doc = json.loads(BANDS_FILE.read_text())
    r = doc["regimes"]
    # A100-era dense 16-bit: the 13 held-out rows of runs-public / runs-modern predicted (docs/validation.md)
    assert r["ampere/16-bit/dense"]["runs"] >= 10 and r["ampere/16-bit/dense"]["median_abs_pct_error"] < 0.08
    assert r["all"]["runs"] == sum(v["runs"] for k, v in r.items() if k.count("/") == 2)
    assert all(v["p90_abs_pct_error"] >= v["median_abs_pct_error"] for v in r.values())
    assert "optimizer offload (CPU Adam)" not in doc["validated_features"]      # no published run offloads
    assert "tensor parallel" in doc["validated_features"]
    assert regime_keys("hopper", "fp8", True)[0] == "hopper/fp8/moe"


def test_a_thin_regime_falls_back_to_a_coarser_one():
    from costmodels.strategy import Strategy
    t = trust("cdna3", "bf16", False, Strategy())
    assert t["runs"] >= 3 and t["regime"] in ("cdna3/dense", "cdna3", "all")


def test_plans_carry_their_trust_and_validated_only_keeps_inside():
    """GPT-3 175B on 64 A100: the best plan uses CPU Adam, which no validated run used, and says so; with
    --validated-only the search leaves it out (and the plan names nothing unvalidated)."""
    runner = CliRunner()
    res = runner.invoke(cli, ["--model", "175b", "--gpus", "64xA100", "--format", "json", "--top", "1"])
    assert res.exit_code == 0, res.output
    t = json.loads(res.output)["plans"][0]["trust"]
    assert t["regime"] == "ampere/16-bit/dense" and "optimizer offload (CPU Adam)" in t["unvalidated"]
    res = runner.invoke(cli, ["--model", "175b", "--gpus", "64xA100", "--format", "json", "--top", "1",
                              "--validated-only"])
    assert res.exit_code == 0, res.output
    p = json.loads(res.output)["plans"][0]
    assert not p["strategy"]["offload_optimizer"] and p["trust"]["unvalidated"] == []


def test_exclude_keeps_structures_out():
    from planner.solve.space import EXCLUDABLE, SpaceOptions, exclude
    opt = SpaceOptions(global_batch=1536)
    ex = exclude(opt, ["cp", "offload", "zero3", "full-recompute"])
    assert ex.cp == (1,) and ex.offload == ("none",) and 3 not in ex.zero_stage and "full" not in ex.recompute
    assert exclude(opt, list(EXCLUDABLE)).zero_stage == (0,)
    res = CliRunner().invoke(cli, ["--model", "175b", "--gpus", "1024xA100", "--exclude", "cp,offload", "--format",
                                   "json", "--top", "1"])
    assert res.exit_code == 0, res.output
    st = json.loads(res.output)["plans"][0]["strategy"]
    assert st["cp"] == 1 and not st["offload_optimizer"]
    bad = CliRunner().invoke(cli, ["--model", "175b", "--gpus", "1024xA100", "--exclude", "warp"])
    assert bad.exit_code == 2 and "not known" in bad.output
