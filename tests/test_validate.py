"""Reading runs/v1 fields the way their sources mean them (planner.validation.runs)."""
from __future__ import annotations

import pytest

from hardware import parse_cluster
from planner.validation.runs import BUNDLED, RunSkipped, mfu_peak, network_gbps_per_gpu, predict_run, validate_file


@pytest.mark.parametrize("text, gbps", [
    ("DGX A100 (Selene), 8x HDR 200Gb/s per node", 25.0),     # 8 x 200 Gb/s over 8 GPUs = 25 GB/s each
    ("RoCE 1600 Gb/s per node", 25.0),
    ("RoCE / InfiniBand, 400Gb/s per GPU", 50.0),
    ("3200 Gbps EFA per node", 50.0),                         # AWS p5 (docs/reference/hardware.md)
    ("8 x 400 Gbps NDR InfiniBand per node", 50.0),
    ("EFA 4x100 Gb/s per node", 6.25),                        # AWS p4d: 400 Gb/s per node (docs/reference/hardware.md)
    ("8x 200Gb/s HDR", 25.0),                                 # a count without a scope: per node
    ("NVLink + IB", None), (None, None), ("1.6 Tb/s per node", 25.0),
])
def test_network_text(text, gbps):
    assert network_gbps_per_gpu(text, 8) == gbps


def test_mfu_peak_follows_the_source():
    h100 = parse_cluster("8xH100")
    run = {"measured": {"flops_counting": "model FLOPs (BF16 peak 989 TFLOP/s)"}}
    assert mfu_peak(run, h100, "fp8") == 989e12            # Llama 3 reports MFU against the bf16 peak
    assert mfu_peak({"measured": {"flops_counting": "model FLOPs"}}, h100, "fp8") == 989e12
    a100 = parse_cluster("8xA100")
    foundry = {"measured": {"flops_counting": "peak 312 (A100) / 989 (H100) TFLOP/s"}}
    assert mfu_peak(foundry, a100, "bf16") == 312e12
    assert mfu_peak(foundry, h100, "bf16") == 989e12


def test_a_broken_rule_is_named_when_it_is_why_a_run_is_skipped():
    run = {"id": "z3-pp", "model": {"name": "m", "layers": 32, "hidden": 4096, "heads": 32, "vocab": 32000,
                                     "seq_len": 2048},
           "hardware": {"gpu": "A100-80GB", "num_gpus": 16, "gpus_per_node": 8},
           "strategy": {"tp": 1, "pp": 2, "dp": 8, "global_batch": 64, "zero_stage": 3},
           "measured": {"step_time_s": 1.0}}
    res = predict_run(run)
    assert res.predicted is None and "ZeRO-3 cannot be combined with pipeline parallelism" in res.skipped


def test_a_run_reporting_only_peak_memory_is_predicted_in_memory():
    # runs/v1 has measured.peak_memory_gb: a run that reports no speed is predicted in memory (GB, the most
    # loaded GPU), not skipped. Korthikanti et al. 2022 Table 3, 175B with SP + selective recompute.
    from costmodels import Strategy
    from planner.solve.evaluate import evaluate
    from costmodels.presets import get_model

    run = {"id": "mem-only", "model": {"name": "gpt3", "layers": 96, "hidden": 12288, "heads": 96, "vocab": 51200,
                                        "seq_len": 2048},
           "hardware": {"gpu": "A100-80GB", "num_gpus": 64, "gpus_per_node": 8},
           "strategy": {"tp": 8, "pp": 8, "dp": 1, "virtual_stages": 3, "micro_batch": 1, "global_batch": 64,
                        "recompute": "selective", "sequence_parallel": True, "zero_stage": 0, "precision": "fp16"},
           "measured": {"peak_memory_gb": 70.0}}
    res = predict_run(run)
    assert res.metric == "peak_memory_gb" and res.skipped is None
    model, _ = get_model("gpt3-175b")
    st = Strategy(tp=8, pp=8, dp=1, virtual_stages=3, micro_batch=1, global_batch=64, recompute="selective",
                  precision="fp16", flash_attention=False)
    want = max(evaluate(model, st, parse_cluster("64xA100")).stage_memory_b) / 1e9
    assert res.predicted == pytest.approx(want, rel=1e-3)     # the run's own shape: 51200 vocab, learned positions
    assert 60 < res.predicted <= 80
    assert res.pct_error == pytest.approx(res.predicted / 70.0 - 1)


def test_a_run_reporting_only_hfu_counts_the_recomputed_flops():
    # A run reported by HFU alone is predicted in HFU: the source's model FLOPs plus the recomputed ones.
    # Korthikanti et al. 2022, appendix A: selective recompute repeats QK^T and AV forward, 4Bs^2h per layer,
    # so HFU / MFU = 1 + s / (18h (1 + s/6h + V/12hL)) (eq. 7's model FLOPs). (The paper's eq. 8 writes s/3h
    # instead of s/6h + s/18h, and Table 5's HFU 52.8% vs MFU 51.4% follows eq. 8: the FLOPs its text lists
    # are counted here.)
    import copy
    import json

    runs = json.loads(BUNDLED["runs-public"].read_text())
    base = next(r for r in runs["runs"] if r["id"] == "korthikanti22-175b-selective-sp")
    by = {}
    for metric, value in (("mfu", 0.514), ("hfu", 0.528)):
        run = copy.deepcopy(base)
        run["measured"] = {"flops_counting": "model FLOPs", metric: value}
        by[metric] = predict_run(run)
        assert by[metric].metric == metric and by[metric].skipped is None
    s, h, L, V = 2048, 12288, 96, 51200
    want = 1 + s / (18 * h * (1 + s / (6 * h) + V / (12 * h * L)))
    assert by["hfu"].predicted / by["mfu"].predicted == pytest.approx(want, rel=1e-6)
    assert abs(by["mfu"].pct_error) < 0.10          # Table 5: MFU 51.4%


# ---- a row is skipped only for a declared reason, named in the row ----------------------------------------
def _megascale_row() -> dict:
    import json
    runs = json.loads(BUNDLED["runs-modern"].read_text())["runs"]
    return next(r for r in runs if r["id"] == "megascale-175b-a100-megatron-lm-256gpu-bs768")


def _validate_rows(tmp_path, rows: list[dict]) -> dict:
    import json
    p = tmp_path / "runs.json"
    p.write_text(json.dumps({"schema": "runs/v1", "runs": rows}))
    return {r.id: r for r in validate_file(p).runs}


def test_a_null_global_batch_is_derived_from_tokens_per_step_or_named(tmp_path):
    # MegaScale (Jiang et al. 2024) Table 1, 256 GPUs: 768 sequences of 2048 tokens per 6.0 s step. With
    # global_batch null the batch is tokens/s/GPU x GPUs x step time / seq_len (a multiple of dp); a run
    # that measures only MFU cannot give it back, and the skip names the field.
    base = _megascale_row()
    derived = {**base, "id": "gb-derived", "strategy": {**base["strategy"], "global_batch": None}}
    only_mfu = {**derived, "id": "gb-null", "measured": {"flops_counting": base["measured"]["flops_counting"],
                                                        "mfu": base["measured"]["mfu"]}}
    by = _validate_rows(tmp_path, [base, derived, only_mfu])
    assert by["gb-derived"].filled["global_batch"] == 768
    assert by["gb-derived"].predicted == pytest.approx(by[base["id"]].predicted, rel=1e-12)
    assert by["gb-null"].predicted is None
    assert by["gb-null"].skipped.startswith("strategy.global_batch is null")


def test_unknown_gpu_and_malformed_fields_are_named(tmp_path):
    base = _megascale_row()
    rows = [{**base, "id": "odd-gpu", "hardware": {**base["hardware"], "gpu": "Z9000"}},
            {**base, "id": "tp-word", "strategy": {**base["strategy"], "tp": "eight"}},
            {**base, "id": "no-layers", "model": {k: v for k, v in base["model"].items() if k != "layers"}},
            {**base, "id": "null-hidden", "model": {**base["model"], "hidden": None}},
            {**base, "id": "odd-recompute", "strategy": {**base["strategy"], "recompute": "partial"}},
            {**base, "id": "text-measure", "measured": {"step_time_s": "six"}},
            {**base, "id": "nothing-measured", "measured": {"step_time_s": None}}]
    by = _validate_rows(tmp_path, rows)
    assert by["odd-gpu"].skipped.startswith("unknown GPU 'Z9000'")
    assert by["tp-word"].skipped == "strategy.tp is 'eight'; expected a whole number"
    assert by["no-layers"].skipped == "model.layers is missing"
    assert by["null-hidden"].skipped == "model.hidden is null"
    assert "recompute='partial' is not allowed" in by["odd-recompute"].skipped
    assert by["text-measure"].skipped == "measured.step_time_s is 'six'; expected a number"
    assert by["nothing-measured"].skipped.startswith("no measured step_time_s")
    with pytest.raises(RunSkipped, match="strategy.tp is 'eight'"):
        predict_run(rows[1])


def test_anything_else_is_a_bug_and_propagates(tmp_path, monkeypatch):
    import planner.validation.runs as runs

    def broken(run):
        raise TypeError("internal bug")
    monkeypatch.setattr(runs, "uses_flash_attention", broken)
    with pytest.raises(TypeError, match="internal bug"):
        _validate_rows(tmp_path, [_megascale_row()])


# ---- the declared split and the fit's machinery (planner.validation.split, planner.validation.fit) -----------
def test_split_is_half_of_each_gpu_family_by_id_hash():
    import hashlib
    import json

    from planner.validation.split import FIT, HELD_OUT, fit_rows, split

    runs = json.loads(BUNDLED["runs-public"].read_text())["runs"]
    parts = split(runs)
    assert set(parts.values()) == {FIT, HELD_OUT} and len(parts) == 30
    # 25 A100 rows -> 13 fit, 5 H100 rows -> 3 fit: the 1st, 3rd, ... of each family by sha256(id)
    h100 = sorted((r["id"] for r in runs if r["hardware"]["gpu"] == "H100-SXM"),
                  key=lambda i: hashlib.sha256(i.encode()).hexdigest())
    assert [parts[i] for i in h100] == [FIT, HELD_OUT, FIT, HELD_OUT, FIT]
    assert sum(p == FIT for p in parts.values()) == 16
    # the split does not depend on the order of the rows or on their measurements
    shuffled = [dict(r, measured={}) for r in reversed(runs)]
    assert split(shuffled) == parts
    counts = {}
    for schema, _ in fit_rows():
        counts[schema] = counts.get(schema, 0) + 1
    # runs-modern: 19 fit rows, all of fitted families (ampere, hopper); its B200, GB200 and MI300X rows borrow
    # Hopper's constants and fit nothing: held out
    # serving: 12 of serving-public's 24 rows and 14 of serving-online's 28 (half of each GPU family: 11 of 22
    # Hopper rows, 3 of 6 A10 rows)
    assert counts == {"runs/v1": 16 + 19, "serving/v1": 12 + 14}
    modern = json.loads(BUNDLED["runs-modern"].read_text())["runs"]
    fitted = {rid for _, rid in fit_rows()}
    assert not [r["id"] for r in modern if r["hardware"]["gpu"] in ("B200", "GB200", "MI300X") and r["id"] in fitted]


def test_fit_grid_search_and_constant_overrides_restore():
    from costmodels.calibration import CALIBRATION, SERVING
    from planner.validation.fit import grid_search, serving_constants, training_constants

    axes = {"a": ((0.0, 0.5, 1.0), 0.1), "b": ((1.0, 2.0, 4.0), None)}
    best, v = grid_search(axes, lambda p: (p["a"] - 0.3) ** 2 + abs(p["b"] - 2.0))
    assert best == {"a": 0.3, "b": 2.0} and v == pytest.approx(0.0)
    before_hopper, before_srv = CALIBRATION["hopper"], SERVING
    with training_constants({"hopper": {"gemm_efficiency": 0.5}}):
        assert CALIBRATION["hopper"].gemm_efficiency == 0.5
        assert CALIBRATION["blackwell"].gemm_efficiency == 0.5      # borrows hopper's
    assert CALIBRATION["hopper"] is before_hopper

    import costmodels.serving as cs
    from dataclasses import replace
    import json

    from planner.validation.runs import validate_run
    row = json.loads(BUNDLED["serving-public"].read_text())["runs"][0]
    base = validate_run("serving/v1", row).predicted
    slow = replace(SERVING, layer_overhead_s=1e-3)
    with serving_constants(slow):
        assert cs.calibration.SERVING is slow
        assert validate_run("serving/v1", row).predicted < 0.8 * base    # 1 ms per layer: slower
    assert cs.calibration.SERVING is before_srv
    assert validate_run("serving/v1", row).predicted == base


@pytest.mark.parametrize("change, reason", [
    (lambda r: r.pop("config"), "config is missing"),
    (lambda r: r["config"].pop("input_len"), "config.input_len is missing"),
    (lambda r: r["config"].update(output_len="long"), "config.output_len is 'long'; expected a whole number"),
    (lambda r: r["hardware"].update(gpu=None), "hardware.gpu is null"),
    (lambda r: r["config"].update(tp=2.5), "config.tp is 2.5; expected a whole number"),
])
def test_malformed_serving_row_is_skipped_with_its_field_named(change, reason):
    import copy
    import json

    from planner.validation.runs import validate_run
    row = copy.deepcopy(json.loads(BUNDLED["serving-public"].read_text())["runs"][0])
    change(row)
    res = validate_run("serving/v1", row)
    assert res.predicted is None and res.skipped == reason


@pytest.mark.parametrize("notes, modules", [
    ("recompute modules 'norm, act' (layernorm + moe_act)", ("layernorm", "moe_act")),
    ("PP8 VPP4 EP8 and recompute modules layernorm+moe from the table's command", ("layernorm", "moe")),
    ("MBS1 GBS1024, recompute moe_act+layernorm, forced load balancing", ("moe_act", "layernorm")),
    ("recompute column blank in the table (recorded as none)", None),
    ("config_common_blackwell.sh not in the folder, recompute left null", None),
])
def test_recompute_modules_are_read_from_a_runs_notes(notes, modules):
    # Megatron-core --recompute-modules as the run sheets write them (Megatron MoE model zoo tables)
    from planner.validation.runs import recompute_modules
    assert recompute_modules(notes) == modules
