"""Whole-run estimates, comparisons, budgets and reports."""
from __future__ import annotations

import json
import math
import struct

import pytest
from click.testing import CliRunner

from costmodels.flops import training_flops
from costmodels.model import ModelSpec, MoESpec
from costmodels.presets import get_model
from hardware import load_catalog, parse_cluster
from planner import search
from planner.runs.budget import choose_hardware, compare, node_counts, pareto_front
from planner.cli import cli
from planner.runs.estimate import estimate_run
from planner.report.file import CHART_SIZE_PX, write_report

CATALOG = load_catalog()
A100 = CATALOG.gpus["A100-80GB"]


def test_seed_000_gpt3_run():
    # Seed article 000: GPT-3 175B x 300B tokens = 3.15e23 FLOPs (6ND); at 312 TFLOP/s and 46.2% MFU that
    # is ~606.7k A100-hours ~ 25.3k A100-days, about a month on ~1000 A100s.
    model, _ = get_model("175b")
    est = estimate_run(model, A100, 1024, 300e9, 0.462, "bf16")
    assert est.training_flops == pytest.approx(3.15e23, rel=0.01)
    assert est.gpu_hours == pytest.approx(606.7e3, rel=0.01)
    assert est.gpu_days == pytest.approx(25.3e3, rel=0.01)
    assert 20 < est.days < 31
    assert est.cost_usd == pytest.approx(est.gpu_hours * A100.price_usd_per_gpu_hour)
    assert est.price_kind == "on-demand, specialist cloud"
    # 400 W TDP x 1.8 for the server (DGX A100 datasheet: 6.5 kW max for 8 x 400 W GPUs, DGX H100 10.2 kW for
    # 8 x 700 W) x the default PUE 1.56 (Uptime Institute 2024 average)
    assert est.energy_kwh == pytest.approx(est.gpu_hours * 0.4 * 1.8 * 1.56)
    assert est.server_w_per_gpu == pytest.approx(720.0) and est.pue == 1.56
    full = estimate_run(model, A100, 1024, 300e9, 0.462, "bf16", full_recompute=True, pue=1.1)
    assert full.hardware_flops == pytest.approx(8 / 6 * est.training_flops)   # 8ND with full recompute
    assert full.energy_kwh == pytest.approx(1.1 / 1.56 * est.energy_kwh)
    # a DGX H100 at full load: 8 GPUs x 700 W x 1.8 = 10.1 kW, the datasheet's 10.2 kW maximum within 2%
    assert 8 * 700 * 1.8 == pytest.approx(10_200, rel=0.02)


def test_seed_000_gpt4_like_moe():
    # Seed article 000: 2 x 111B routed + 55B shared = 277B active x 13T tokens = 2.16e25 FLOPs; 53.4M
    # A100-hours is ~89 days on 25,000 A100s (the article's figures imply ~36% MFU at 312 TFLOP/s).
    model, _ = get_model("gpt4moe-1.8t")
    flops = training_flops(model, 13e12)
    assert flops == pytest.approx(2.16e25, rel=0.02)
    mfu = 2.16e25 / (312e12 * 3600 * 53.4e6)
    est = estimate_run(model, A100, 25_000, 13e12, mfu, "bf16")
    assert est.gpu_hours == pytest.approx(53.4e6, rel=0.02)
    assert est.days == pytest.approx(89, rel=0.02)


def test_moe_estimate_uses_active_parameters():
    moe = ModelSpec(name="moe", layers=4, hidden=512, heads=8, vocab=1000, seq_len=256,
                    moe=MoESpec(experts=8, top_k=2, expert_ffn_hidden=2048))
    assert training_flops(moe, 1e9) == 6 * moe.params_active() * 1e9 < 6 * moe.params_total() * 1e9


def test_estimate_without_mfu_uses_the_best_plan():
    model, _ = get_model("gpt3-1.3b")
    out = CliRunner().invoke(cli, ["estimate", "--model", "gpt3-1.3b", "--tokens", "26e9", "--gpus", "64xA100",
                                   "--format", "json"])
    assert out.exit_code == 0, out.output
    d = json.loads(out.output)
    for key in ("training_flops", "gpu_hours", "days", "cost_usd", "energy_kwh", "mfu"):
        assert d[key] > 0
    best = search(model, parse_cluster("64xA100"), top=1).plans[0]
    assert d["mfu"] < best.mfu      # 6ND leaves out the attention FLOPs the plan's MFU counts
    assert d["mfu"] == pytest.approx(6 * model.params_total() * best.tokens_per_s / (64 * 312e12), rel=1e-9)
    assert "best plan" in d["mfu_source"]
    # days = tokens / (tokens per second of that plan)
    assert d["days"] == pytest.approx(26e9 / best.tokens_per_s / 86400, rel=1e-6)


def test_plan_tokens_adds_run_figures():
    out = CliRunner().invoke(cli, ["--model", "gpt3-1.3b", "--gpus", "64xA100", "--tokens", "26e9", "--format", "json"])
    assert out.exit_code == 0, out.output
    for p in json.loads(out.output)["plans"]:
        r = p["run"]
        assert r["days"] == pytest.approx(26e9 / p["tokens_per_s"] / 86400, rel=1e-9)
        assert r["gpu_hours"] == pytest.approx(r["days"] * 24 * 64, rel=1e-9)
        assert r["cost_usd"] == pytest.approx(r["gpu_hours"] * A100.price_usd_per_gpu_hour, rel=1e-9)


def test_compare_three_clusters_and_price_override():
    out = CliRunner().invoke(cli, ["compare", "--model", "gpt3-6.7b", "--gpus", "64xA100,64xH100,32xH200",
                                   "--tokens", "300e9", "--price", "H100=2.49", "--format", "json"])
    assert out.exit_code == 0, out.output
    rows = {r["cluster"]: r for r in json.loads(out.output)["rows"]}
    assert set(rows) == {"64xA100-80GB", "64xH100-SXM", "32xH200"}
    assert rows["64xH100-SXM"]["price_usd_per_gpu_hour"] == 2.49
    for r in rows.values():
        assert r["cost_usd"] == pytest.approx(r["gpu_hours"] * r["price_usd_per_gpu_hour"])
    # H100 is faster than A100 on the same count (989 vs 312 dense bf16 TFLOP/s)
    assert rows["64xH100-SXM"]["days"] < rows["64xA100-80GB"]["days"]


def test_estimate_and_compare_take_the_sequence_length():
    # the planner searches the shorter sequences (same tokens per step at 4x the batch): the days follow the
    # best plan found for that length, equal to planning it directly with plan --seq-len
    model, _ = get_model("gpt3-1.3b")
    short = model.model_copy(update={"seq_len": 512, "global_batch": 4 * model.global_batch})
    args = ["--model", "gpt3-1.3b", "--tokens", "26e9", "--seq-len", "512", "--global-batch",
            str(4 * model.global_batch), "--format", "json"]
    est = CliRunner().invoke(cli, ["estimate", "--gpus", "64xA100", *args])
    cmp = CliRunner().invoke(cli, ["compare", "--gpus", "64xA100", *args])
    assert est.exit_code == 0 and cmp.exit_code == 0, est.output + cmp.output
    best = search(short, parse_cluster("64xA100"), top=1).plans[0]
    assert json.loads(est.output)["days"] == pytest.approx(26e9 / best.tokens_per_s / 86400, rel=1e-6)
    assert json.loads(cmp.output)["rows"][0]["days"] == pytest.approx(26e9 / best.tokens_per_s / 86400, rel=1e-6)
    # past the model's context: one line, exit 2
    long = CliRunner().invoke(cli, ["compare", "--model", "llama3-70b", "--gpus", "64xH100", "--tokens", "1e12",
                                    "--seq-len", "300000"])
    assert long.exit_code == 2 and "past llama3-70b's context of 131,072 tokens" in long.output


def test_node_counts_and_front():
    assert node_counts(8, 100) == [8, 16, 24, 32, 48, 64, 72, 96]
    model, _ = get_model("gpt3-1.3b")
    res = compare(model, [parse_cluster(x) for x in ("16xA100", "32xA100", "16xH100")], 26e9)
    front = pareto_front(res.rows)
    # no point of the front is beaten on both days and dollars by any point
    for f in front:
        assert not any(p.days < f.days and p.cost_usd < f.cost_usd for p in res.rows)


def _brute_force_choice(model, types, max_gpus, tokens, budget=None, deadline=None):
    pts = compare(model, [parse_cluster(f"{n}x{g.name}") for g in types for n in node_counts(g.gpus_per_node, max_gpus)],
                  tokens).rows
    ok = [p for p in pts if (budget is None or p.cost_usd <= budget) and (deadline is None or p.days <= deadline)]
    if not ok:
        return None
    return min(ok, key=(lambda p: p.cost_usd) if deadline is not None else (lambda p: p.days))


@pytest.mark.parametrize("limits", [{"budget_usd": 5e4}, {"deadline_days": 20.0}, {"budget_usd": 3e4, "deadline_days": 40.0},
                                    {"budget_usd": 1.0}])
def test_choice_of_type_and_count_matches_brute_force(limits):
    model, _ = get_model("gpt3-1.3b")
    types = [CATALOG.gpus["A100-80GB"], CATALOG.gpus["H100-SXM"]]
    res = choose_hardware(model, types, 64, 26e9, **limits)
    want = _brute_force_choice(model, types, 64, 26e9, limits.get("budget_usd"), limits.get("deadline_days"))
    if want is None:
        assert res.chosen is None and "cheapest run costs" in res.message and "fastest takes" in res.message
        return
    got = res.chosen
    key = "cost_usd" if "deadline_days" in limits else "days"
    assert getattr(got, key) == pytest.approx(getattr(want, key), rel=1e-12)
    assert len(res.searched) <= res.blocks


@pytest.mark.parametrize("name, tokens", [("gpt3-1.3b", 26e9), ("gpt3-13b", 260e9)])
def test_plotted_front_matches_searching_every_block(name, tokens):
    """The plotted front (2^k nodes of every type) skips a block whose lower bounds a searched run already
    beats on days and dollars; the front is the same as searching every such block (brute force), and
    every block left out is beaten by a searched run."""
    model, _ = get_model(name)
    types = [CATALOG.gpus["A100-80GB"], CATALOG.gpus["H100-SXM"]]
    res = choose_hardware(model, types, 128, tokens, budget_usd=1e9, full_front=True)
    blocks = [parse_cluster(f"{n}x{g.name}") for g in types for n in node_counts(g.gpus_per_node, 128)
              if (n // g.gpus_per_node) & (n // g.gpus_per_node - 1) == 0]
    everything = []
    for c in blocks:
        try:
            everything.append(compare(model, [c], tokens).rows[0])
        except Exception as e:             # nothing fits on the smallest clusters of the larger model
            assert "fits" in str(e), e
    key = [(p.gpu, p.num_gpus) for p in pareto_front(everything)]
    assert [(p.gpu, p.num_gpus) for p in res.pareto] == key
    searched = {(p.gpu, p.num_gpus) for p in res.searched}
    assert len(searched) < len(everything) or name == "gpt3-1.3b"


def test_impossible_budget_cli():
    out = CliRunner().invoke(cli, ["--model", "gpt3-1.3b", "--gpu-types", "A100,H100", "--max-gpus", "64",
                                   "--tokens", "26e9", "--budget-usd", "1"])
    assert out.exit_code == 2
    assert "cheapest run costs $" in out.output and "fastest takes" in out.output


def _png_size(path) -> tuple[int, int]:
    data = open(path, "rb").read(24)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_report_and_charts(tmp_path):
    model, _ = get_model("gpt3-1.3b")
    res = search(model, parse_cluster("64xA100"), top=3)
    files = write_report(res, tmp_path / "plan.md")
    text = files[0].read_text()
    for needle in ("## Assumptions", "## The winning plan", "## Runner-ups", "plan_memory.png", "plan_time.png"):
        assert needle in text
    for png in files[1:]:
        assert _png_size(png) == CHART_SIZE_PX
    html_files = write_report(res, tmp_path / "plan.html")
    assert html_files[0].read_text().startswith("<!doctype html>") and "<table>" in html_files[0].read_text()
    with pytest.raises(ValueError):
        write_report(res, tmp_path / "plan.txt")


def test_front_plot(tmp_path):
    out = CliRunner().invoke(cli, ["--model", "gpt3-1.3b", "--gpu-types", "A100,H100", "--max-gpus", "32",
                                   "--tokens", "26e9", "--deadline-days", "30", "--plot", str(tmp_path / "front.png")])
    assert out.exit_code == 0, out.output
    w, h = _png_size(tmp_path / "front.png")
    assert (w, h) == (700, 450)
    assert "Chosen" in out.output


def test_run_figures_one_formula_for_one_pool_and_several():
    """planner.runs.estimate.run_figures: `plan --tokens` (one pool or several) and compare/budget (run_point)
    use it; several pools add each pool's GPU-hours at its own price and power over the same wall clock."""
    from planner.runs.estimate import run_figures

    a100 = parse_cluster("64xA100")
    h100 = parse_cluster("32xH100")
    one = run_figures(2.0, 1024 * 2048, a100, 1e9, pue=1.2)
    steps = 1e9 / (1024 * 2048)
    assert one["days"] == pytest.approx(steps * 2.0 / 86400)
    assert one["gpu_hours"] == pytest.approx(steps * 2.0 / 3600 * 64)
    assert one["cost_usd"] == pytest.approx(one["gpu_hours"] * a100.gpu.price_usd_per_gpu_hour)
    assert one["energy_kwh"] == pytest.approx(one["gpu_hours"] * a100.gpu.tdp_w * 1.8 / 1000 * 1.2)
    assert run_figures(2.0, 1024 * 2048, (a100,), 1e9, pue=1.2) == one
    both = run_figures(2.0, 1024 * 2048, (a100, h100), 1e9, pue=1.2)
    other = run_figures(2.0, 1024 * 2048, h100, 1e9, pue=1.2)
    assert both["days"] == one["days"]
    for k in ("gpu_hours", "cost_usd", "energy_kwh"):
        assert both[k] == pytest.approx(one[k] + other[k])


def test_budget_search_reports_each_cluster_before_searching_it():
    """choose_hardware(progress=...) hears of every cluster it searches, in order, before the search (the CLI
    shows it as a status line on a terminal): as many calls as clusters searched."""
    from hardware import load_catalog
    from planner.runs.budget import choose_hardware

    cat = load_catalog()
    calls = []
    res = choose_hardware(get_model("gpt3-1.3b")[0], [cat.gpus["A100-80GB"], cat.gpus["H100-SXM"]], 64, 26e9,
                          budget_usd=1e4, progress=lambda cluster, done: calls.append((cluster, done)))
    assert [d for _, d in calls] == list(range(len(calls)))
    assert len(calls) >= len(res.searched) and calls[0][0].endswith("x 8)")
