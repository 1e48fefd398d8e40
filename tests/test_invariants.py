"""Invariants of searched plans, checked on random small instances with hypothesis."""
from __future__ import annotations

import math
import os
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from costmodels.model import ModelSpec
from costmodels.strategy import Strategy
from hardware import parse_cluster
from planner import NoPlanError, search
from planner.cli import main
from planner.solve.space import check_strategy


@hs.composite
def instances(draw):
    heads = draw(hs.sampled_from([4, 8, 16]))
    model = ModelSpec(name="rand", layers=draw(hs.integers(2, 24)), hidden=heads * draw(hs.sampled_from([64, 128])),
                      heads=heads, kv_heads=draw(hs.sampled_from([heads, heads // 2, 1])),
                      ffn_type=draw(hs.sampled_from(["gelu", "swiglu"])), vocab=draw(hs.integers(1000, 60000)),
                      seq_len=draw(hs.sampled_from([512, 1024, 2048, 4096])))
    gpu = draw(hs.sampled_from(["A100", "H100", "A100-40GB", "V100"]))
    nodes = draw(hs.sampled_from([1, 2]))
    cluster = parse_cluster(f"{nodes}x8x{gpu}")
    gb = cluster.num_gpus * draw(hs.sampled_from([1, 2, 4]))
    return model, cluster, gb


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances())
def test_every_plan_respects_the_rules_and_is_finite(inst):
    model, cluster, gb = inst
    precision = "fp16" if cluster.gpu.tflops["bf16"] is None else "bf16"
    try:
        res = search(model, cluster, global_batch=gb, precision=precision, top=3)
    except NoPlanError:
        return
    prev = 0.0
    for p in res.plans:
        s = p.strategy
        assert s["tp"] * s["pp"] * s["dp"] * s["cp"] == cluster.num_gpus
        fields = {k: (tuple(v) if isinstance(v, list) else v) for k, v in s.items()
                  if k not in ("micro_batches", "schedule")}
        if s["recompute"] != "full":
            fields["recompute_layers"] = None   # the JSON lists zeros; the strategy field needs recompute='full'
        st = Strategy(**fields)
        check_strategy(model, st, cluster.num_gpus, cluster.gpus_per_node)   # raises on any broken rule
        assert sum(s["stage_layers"]) == model.layers
        assert s["global_batch"] % (s["dp"] * s["micro_batch"]) == 0
        for v in [p.step_time_s, p.tokens_per_s, p.mfu, p.hfu, *p.time_s.values(), *p.memory_gb.values()]:
            assert math.isfinite(v) and v >= 0
        assert p.step_time_s > 0 and 0 < p.mfu <= p.hfu < 1
        # every part is its own term of the step (planner.solve.evaluate.time_breakdown): exact sum
        assert math.isclose(sum(p.time_s.values()), p.step_time_s, rel_tol=1e-12)
        assert all(v >= 0 for v in p.time_s.values())
        assert p.fits and p.memory_gb["peak"] <= p.memory_gb["capacity"] + 1e-9
        assert p.step_time_s >= prev
        prev = p.step_time_s


def test_search_never_touches_the_network(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("network access attempted")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    model = ModelSpec(name="m", layers=8, hidden=1024, heads=8, vocab=32000, seq_len=2048)
    assert search(model, parse_cluster("16xH100"), global_batch=64).plans


def test_cli_writes_nothing_unless_asked(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for args in (["--model", "gpt3-1.3b", "--gpus", "16xA100"], ["--model", "gpt3-1.3b", "--gpus", "16xA100", "--format", "json"],
                 ["evaluate", "--model", "gpt3-1.3b", "--gpus", "16xA100"], ["models"], ["gpus"]):
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 0
    assert os.listdir(tmp_path) == []
    with pytest.raises(SystemExit):
        main(["--model", "gpt3-1.3b", "--gpus", "16xA100", "--report", str(tmp_path / "r" / "plan.md")])
    assert sorted(os.listdir(tmp_path / "r")) == ["plan.md", "plan_memory.png", "plan_schedule.png", "plan_time.png"]
