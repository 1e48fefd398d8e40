"""The pipeline schedule of one step (planner.solve.schedule) and its picture (--plot, --report)."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from costmodels import Strategy
from costmodels.presets import get_model
from hardware import parse_cluster
from planner.cli import cli
from planner.solve.schedule import op_order, pipeline_schedule, simulate

PNG = b"\x89PNG"


@pytest.mark.parametrize("p, m, v", [(4, 8, 1), (4, 8, 2), (8, 16, 4), (2, 2, 1), (4, 4, 3)])
def test_equal_stages_end_where_the_closed_form_says(p, m, v):
    # Narayanan et al. 2021, sections 2.2 and 2.2.2: 1F1B takes (m - 1 + p) T, interleaved 1F1B m T + (p - 1) T / v
    # for stages of equal per-micro-batch time T (= forward + backward of all v chunks)
    f, b = 1.0, 2.0
    ops = simulate([f / v] * p, [b / v] * p, m, v)
    end = max(e for stage in ops for _, e, *_ in stage)
    t = f + b
    want = (m - 1 + p) * t if v == 1 else m * t + (p - 1) * t / v
    assert end == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("p, m, v, gpipe", [(4, 8, 1, False), (4, 8, 2, False), (3, 6, 1, True)])
def test_every_op_runs_once_after_what_it_needs(p, m, v, gpipe):
    ops = simulate([1.0, 1.3, 0.9, 1.1][:p], [2.0, 2.5, 1.7, 2.2][:p], m, v, gpipe)
    when = {(op, c, s, i): (start, end) for s, stage in enumerate(ops) for start, end, op, c, i in stage}
    assert len(when) == 2 * p * m * v                          # each micro-batch's chunk forward and backward
    for s, stage in enumerate(ops):
        assert all(a[1] <= b[0] + 1e-12 for a, b in zip(stage, stage[1:]))     # one op at a time
        assert [op for op, *_ in op_order(p, m, v, s, gpipe)] == [op for _, _, op, *_ in stage]
    for (op, c, s, i), (start, _) in when.items():
        pos = c * p + s
        if op == "F" and pos > 0:
            assert start >= when[("F", (pos - 1) // p, (pos - 1) % p, i)][1] - 1e-12
        if op == "B":
            nxt = ("B", (pos + 1) // p, (pos + 1) % p, i) if pos < v * p - 1 else ("F", c, s, i)
            assert start >= when[nxt][1] - 1e-12


def test_a_searched_plan_is_drawn_at_its_priced_step_time():
    # GPT-3 175B on 1024 A100: the best plan's schedule ends at the step time the search priced, and each
    # stage works exactly m micro-batches of its priced time per micro-batch plus its sync and optimizer tail
    model, _ = get_model("175b")
    cluster = parse_cluster("1024xA100")
    st = Strategy(tp=4, pp=4, dp=64, micro_batch=1, global_batch=1536, zero_stage=1, recompute="none",
                  virtual_stages=8)
    sched = pipeline_schedule(model, st, cluster)
    assert sched.makespan_s == pytest.approx(sched.step_time_s, rel=1e-3)
    assert sched.micro_batches == 24 and sched.virtual_stages == 8 and sched.schedule == "interleaved 1F1B"
    from planner.solve.evaluate import evaluate
    ev = evaluate(model, st, cluster)
    for i in range(4):
        tail = sum(x.duration_s for x in sched.stages[i] if x.kind == "dp_sync_optimizer")
        assert sched.busy_s(i) - tail == pytest.approx(24 * ev.stage_time_s[i], rel=1e-6)
        assert sum(sched.stage_memory_gb[i][k] for k in ("weights", "gradients", "optimizer", "activations", "loss",
                                                         "comm_buffers", "runtime")) == pytest.approx(
            ev.stage_memory_b[i] / 1e9, rel=1e-6)


def test_full_recompute_is_drawn_in_the_backward():
    model, _ = get_model("llama3-70b")
    cluster = parse_cluster("64xH100")
    st = Strategy(tp=4, pp=4, dp=4, micro_batch=1, global_batch=64, zero_stage=1, recompute="full",
                  recompute_layers=(20, 10, 0, 0))
    sched = pipeline_schedule(model, st, cluster)
    kinds = [{x.kind for x in stage} for stage in sched.stages]
    assert "recompute" in kinds[0] and "recompute" in kinds[1] and "recompute" not in kinds[3]
    # unequal stages: the priced closed form, (m - 1) Tmax + sum T, bounds the drawn schedule from above (the
    # other stages' work hides partly under the slowest stage's); the slowest stage's own work from below
    slowest = max(sched.busy_s(i) for i in range(4))
    assert slowest <= sched.makespan_s <= sched.step_time_s * (1 + 1e-9)


def test_plot_and_report_draw_the_schedule(tmp_path):
    out = CliRunner().invoke(cli, ["--model", "gpt3-1.3b", "--gpus", "16xA100", "--pp", "2", "--plot",
                                   str(tmp_path / "s.png"), "--report", str(tmp_path / "r.md")])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "s.png").read_bytes()[:4] == PNG and (tmp_path / "r_schedule.png").read_bytes()[:4] == PNG
    assert "## Pipeline schedule of one step" in (tmp_path / "r.md").read_text()
    ev = CliRunner().invoke(cli, ["evaluate", "--model", "gpt3-1.3b", "--gpus", "16xA100", "--pp", "4",
                                  "--plot", str(tmp_path / "e.png")])
    assert ev.exit_code == 0, ev.output
    assert (tmp_path / "e.png").read_bytes()[:4] == PNG
    bad = CliRunner().invoke(cli, ["evaluate", "--model", "gpt3-1.3b", "--gpus", "16xA100", "--plot",
                                   "/proc/nope/e.png"])
    assert bad.exit_code == 2 and "--plot" in bad.output
