"""The planner's memory against PyTorch's own tracker on fake CPU tensors (planner/validation/oracle.py,
docs/memory-oracle.md): model states to the byte, activations to the known differences named in
oracle.known_differences, and the raw errors those differences cause pinned so that a change shows."""
from __future__ import annotations

from functools import lru_cache

import pytest

pytest.importorskip("torch")

from planner.validation import oracle  # noqa: E402

GRID = oracle.grid()


@lru_cache(maxsize=None)
def row(i: int) -> oracle.Row:
    return oracle.compare(GRID[i])


IDS = [c.label() for c in GRID]
FLASH = [i for i, c in enumerate(GRID) if c.flash]


SINGLE = [i for i, c in enumerate(GRID) if c.shard == 1]
SHARDED = [i for i, c in enumerate(GRID) if c.shard > 1]


@pytest.mark.parametrize("i", SINGLE, ids=[IDS[i] for i in SINGLE])
def test_model_states_agree_to_the_byte(i):
    r = row(i)
    cfg = r.config
    n = cfg.model_spec().params_total()
    per_norm = 2 if cfg.norm == "layernorm" else 1
    tensors = 2 + 4 * cfg.layers + per_norm * (2 * cfg.layers + 1)   # embed, head, 4 linears a layer, norms
    # the last stage's states count the output layer and the final norm (costmodels/performance.py head_params)
    assert r.tracked.weights == 2 * n and r.planned["weights"] == 2 * n          # bf16 weights
    assert r.tracked.gradients == 4 * n and r.planned["gradients"] == 4 * n      # fp32 main grads
    # fp32 master + exp_avg + exp_avg_sq, and one fp32 step counter per tensor the planner does not count
    assert r.planned["optimizer"] == 12 * n
    assert r.tracked.optimizer - 12 * n == 4 * tensors


@pytest.mark.parametrize("i", range(len(GRID)), ids=IDS)
def test_stored_activations_are_the_planner_plus_the_known_differences(i):
    r = row(i)
    x = oracle.explained(r)
    assert x["stored"] == pytest.approx(r.tracked.stored, rel=2e-3)


@pytest.mark.parametrize("i", FLASH, ids=[IDS[i] for i in FLASH])
def test_peak_activations_are_the_planner_plus_the_known_differences(i):
    r = row(i)
    assert oracle.explained(r)["activations"] == pytest.approx(r.tracked.activations, rel=2e-3)
    # and the peak itself: the model states alive then + gathered FSDP weights + explained activations
    t = r.tracked
    states = t.states_at_peak if t.states_at_peak >= 0 else t.weights + t.gradients + t.optimizer
    assert states + t.gathered + oracle.explained(r)["activations"] == pytest.approx(t.peak, rel=1e-3)


@pytest.mark.parametrize("i", SHARDED, ids=[IDS[i] for i in SHARDED])
def test_fsdp2_states_and_gathered_weights(i):
    """torchtitan's accounting against FSDP2 itself: fp32 parameter shards that are the master weights
    (4 B/param / d), AdamW's m and v (8 / d), fp32 gradient shards after the backward (4 / d) but none
    alive at the allocated peak (zero_grad sets them to None; the loss comes first), and gathered bf16
    weights at the peak:
    one block and the root module's (embedding, final norm, output layer), which the planner counts as
    the root's held copy (weights) plus one layer (comm_buffers)."""
    r = row(i)
    cfg, d = r.config, r.config.shard
    assert cfg.framework == "torchtitan"
    spec = cfg.model_spec()
    n = spec.params_total()
    per_norm = 2 if cfg.norm == "layernorm" else 1
    tensors = 2 + 4 * cfg.layers + per_norm * (2 * cfg.layers + 1) + (3 * cfg.layers if cfg.ffn_type == "swiglu" else 2 * cfg.layers)
    layer = spec.params_layer(0)
    root = spec.params_embedding() + spec.params_output()
    assert r.tracked.weights == 4 * n // d
    assert r.planned["weights"] == pytest.approx(4 * n / d + 2 * root, abs=2)
    # the planner's peak reserves the gradient shards (the reduce-scatter stream's pool); its allocated peak,
    # which the oracle compares, leaves them out at the loss, where the tracker sees none
    assert r.tracked.gradients == 4 * n // d and r.planned["gradients"] == pytest.approx(4 * n / d, abs=1)
    assert r.tracked.peak_split["Sharded Grad"] == 0                 # none alive at the peak
    assert 0 < r.tracked.optimizer - 8 * n // d <= 4 * tensors       # exp_avg, exp_avg_sq + fp32 step counters
    assert r.planned["optimizer"] == pytest.approx(8 * n / d, abs=1)
    # comm_buffers: the one gathered block, and on stage 0 the root's gradient the backward reduce-scatters
    # last (16-bit unsharded + its fp32 copy: 6 B per embedding parameter), reserved beside the loss-time peak
    assert r.planned["gathered"] == 2 * layer + 6 * spec.params_embedding()
    assert r.tracked.peak_split["All Gather"] == 2 * layer
    assert r.tracked.peak_split["Unsharded Param"] == 2 * root
    assert r.tracked.gathered == 2 * (layer + root)


def test_the_raw_errors_stay_where_the_differences_put_them():
    """The planner's raw peak error (without its fixed buffers): Megatron's accounting under by at most
    2.5% on its fused-kernel points (CPU dropout masks in 2 bytes, the flash logsumexp, norm statistics);
    torchtitan's accounting within 0.5% of FSDP2 with torchtitan's kernels, per-op selective and full AC;
    Megatron's accounting far under eager kernels (what --framework torchtitan is for)."""
    errs = {GRID[i].label(): row(i).error("peak") for i in range(len(GRID))}
    for k, e in errs.items():
        if "torchtitan" in k:
            assert abs(e) < 0.5, (k, e)
        elif "eager" in k:
            assert e < -20.0, (k, e)     # eager kernels keep far more than Megatron's fused
        elif "math" not in k:
            assert -2.5 < e < 0.0, (k, e)
    # the differences the cost model now carries are gone: no named term for them remains
    d = oracle.known_differences(GRID[0])
    for gone in ("head_inputs", "no_dropout_masks", "recompute_working_set", "logits_peak"):
        assert gone not in d


def test_the_grid_meets_the_bar():
    """The planner within 10% of the tracked peak on at least 90% of the grid (docs/memory-oracle.md)."""
    errs = [abs(row(i).error("peak")) for i in range(len(GRID))]
    assert sum(e <= 10.0 for e in errs) / len(errs) >= 0.9, errs


def test_the_fixed_terms_are_exact_on_the_grid():
    """Head inputs, no dropout masks without dropout, the 16-bit logits next to the softmax and
    max(logits, recompute working set): with fused kernels the loss-side difference is zero."""
    for i, c in enumerate(GRID):
        d = oracle.known_differences(c)
        if c.kernels == "fused":
            assert d["loss_peak"] == 0, c.label()
        if c.hidden_dropout == 0:
            assert d["dropout_masks_2byte"] == 0
    nd = next(i for i, c in enumerate(GRID) if c.hidden_dropout == 0)
    assert abs(row(nd).error("activations")) < 0.5     # only the logsumexp and norm statistics remain


def test_full_recompute_stores_layer_inputs_only():
    i = next(i for i, c in enumerate(GRID) if c.recompute == "full" and c.hidden == 512)
    cfg = GRID[i]
    r = row(i)
    sbh = cfg.seq * cfg.micro_batch * cfg.hidden
    sbV = cfg.seq * cfg.micro_batch * cfg.vocab
    d = oracle.known_differences(cfg)
    assert d["softmax_lse"] == 0 and d["loss_peak"] == 0    # the logits, not the working set, set the peak
    assert oracle.layer_full_bytes(cfg) < 6 * sbV
    # checkpoints + head inputs + the CPU embedding-dropout noise (2 B) + the fp32 softmax, as tracked
    assert r.tracked.stored == pytest.approx(cfg.layers * 2 * sbh + 4 * sbh + 2 * sbh + 4 * sbV, rel=2e-3)
