"""The search space is exactly "every combination the rules allow", and check_strategy agrees with it.

On seeded random small instances (small models, dense and MoE, few GPUs, random SpaceOptions) a brute force
tries every value of every dimension (tp, cp, pp, dp over 1..N, ep over 1..8, every micro-batch up to the
global batch, every interleaving depth, ZeRO stage and offload) and keeps what the options and the rules of
planner.solve.rules allow. The brute force fixes one field at a time and checks a rule as soon as the
fields of its step are fixed, on an object that has only those fields, so a rule that reads a field its
step does not know fails here instead of silently reading a default.
"""
from __future__ import annotations

import itertools
import random
from dataclasses import replace

import pytest

from costmodels import ModelSpec, Strategy
from costmodels.model import MoESpec
from costmodels.strategy import StrategyError
from planner.solve import rules
from planner.solve.space import SpaceOptions, divisors, enumerate_pools, enumerate_space, for_framework

OFFLOADS = ("none", "optimizer", "optimizer+params")


class Fixed:
    """The fields fixed so far; reading any other field raises AttributeError."""

    def __init__(self, **fields) -> None:
        self.__dict__.update(fields)

    def with_(self, **fields) -> "Fixed":
        return Fixed(**{**self.__dict__, **fields})


def random_model(rng: random.Random) -> ModelSpec:
    heads = rng.choice([1, 2, 3, 4, 6, 8, 12, 16])
    kv = rng.choice([d for d in range(1, heads + 1) if heads % d == 0])
    moe = None
    if rng.random() < 0.4:
        moe = MoESpec(experts=rng.choice([2, 4, 6, 8]), top_k=rng.choice([1, 2]), expert_ffn_hidden=256)
    return ModelSpec(name="tiny", layers=rng.randint(1, 12), hidden=64 * heads, heads=heads, kv_heads=kv,
                     vocab=1000, seq_len=rng.choice([512, 1024, 2048, 3000, 4096, 6144, 8192]), moe=moe)


def subset(rng: random.Random, values, p: float = 0.2):
    """None (no restriction) or a random subset of at least half of `values`."""
    values = list(values)
    if rng.random() > p:
        return None
    return tuple(sorted(rng.sample(values, rng.randint((len(values) + 1) // 2, len(values)))))


def random_options(rng: random.Random, model: ModelSpec, n: int) -> SpaceOptions:
    gb = rng.choice([1, 2, 4, 6, 8, 12, 16, 24])
    return SpaceOptions(
        global_batch=gb, tp=subset(rng, divisors(n)), pp=subset(rng, divisors(n)),
        dp=subset(rng, divisors(n)), cp=subset(rng, divisors(n)),
        ep=subset(rng, range(1, 9)) if model.moe is not None else None,   # --ep applies to MoE models
        micro_batch=subset(rng, range(1, gb + 1)), virtual_stages=subset(rng, range(1, 5)),
        zero_stage=subset(rng, (0, 1, 2, 3), 0.5) or (0, 1, 2, 3), offload=subset(rng, OFFLOADS, 0.5) or OFFLOADS,
        recompute=subset(rng, ("none", "selective", "full"), 0.5) or ("none", "selective", "full"),
        tp_across_nodes=rng.random() < 0.2, precision=rng.choice(("bf16", "bf16", "fp16", "fp8")),
        optimizer=rng.choice(("adam", "adam", "sgd")), fp32_grads=rng.random() < 0.8,
        framework=rng.choice((None, None, "megatron", "deepspeed", "torchtitan")))


def families(allowed) -> list[str]:
    """Recompute families: 'full' covers 'none' (a free per-stage count of 0); selective on its own."""
    out = ["selective"] if "selective" in allowed else []
    return out + (["full"] if "full" in allowed else ["none"] if "none" in allowed else [])


def brute_force(model: ModelSpec, num_gpus: int, gpn: int, opt: SpaceOptions, pools=None) -> set[tuple]:
    """Every combination the options and the training rules allow (with opt.framework, also that
    framework's rules), one field at a time."""
    ctx = rules.Context(model, num_gpus, gpn, opt.tp_across_nodes)
    at = rules.rules_at(opt.framework)

    def ok(step, s) -> bool:
        return all(r.ok(ctx, s) for r in at[step])

    def allowed(value, choices) -> bool:
        return choices is None or value in choices

    gb = opt.global_batch
    out: set[tuple] = set()
    s0 = Fixed(global_batch=gb, precision=opt.precision, optimizer=opt.optimizer, fp32_grads=opt.fp32_grads,
               flash_attention=opt.flash_attention, pipeline_schedule="1f1b")
    if not ok("setting", s0):
        return out
    for tp in range(1, num_gpus + 1):
        s1 = s0.with_(tp=tp, sequence_parallel=tp > 1)
        if not (allowed(tp, opt.tp) and ok("tp", s1)):
            continue
        for cp in range(1, num_gpus + 1):
            s2 = s1.with_(cp=cp)
            if not (allowed(cp, opt.cp) and ok("cp", s2)):
                continue
            for pp, dp in itertools.product(range(1, num_gpus + 1), repeat=2):
                s3 = s2.with_(pp=pp, dp=dp)
                if not (allowed(pp, opt.pp) and allowed(dp, opt.dp) and ok("pp_dp", s3)):
                    continue
                if pools and any(n % (tp * cp * dp) for n in pools):   # every pool runs whole stages
                    continue
                for ep in range(1, 9):
                    s4 = s3.with_(ep=ep)
                    if not (allowed(ep, opt.ep) and ok("ep", s4)):
                        continue
                    for mb in range(1, min(gb, rules.MAX_MICRO_BATCH) + 1):
                        s5 = s4.with_(micro_batch=mb, micro_batches=gb // (dp * mb))
                        if not (allowed(mb, opt.micro_batch) and ok("micro_batch", s5)):
                            continue
                        for v in range(1, rules.MAX_VIRTUAL_STAGES + 1):
                            s6 = s5.with_(virtual_stages=v)
                            # --virtual-stages restricts pipelines; pp = 1 always has one chunk
                            if not ((pp == 1 or allowed(v, opt.virtual_stages)) and ok("virtual_stages", s6)):
                                continue
                            for zero in opt.zero_stage:
                                s7 = s6.with_(zero_stage=zero)
                                if not ok("zero_stage", s7):
                                    continue
                                for off in opt.offload:
                                    s8 = s7.with_(offload_optimizer=off != "none",
                                                  offload_params=off == "optimizer+params")
                                    if not ok("offload", s8):
                                        continue
                                    s9 = s8.with_(stage_layers=None, recompute_layers=None)
                                    assert ok("layout", s9)
                                    for rec in families(opt.recompute):
                                        if not ok("recompute", s9.with_(recompute=rec)):
                                            continue
                                        out.add((tp, cp, pp, dp, ep, mb, v, zero, s8.offload_optimizer,
                                                 s8.offload_params, rec))
    return out


def key(st: Strategy) -> tuple:
    return (st.tp, st.cp, st.pp, st.dp, st.ep, st.micro_batch, st.virtual_stages, st.zero_stage,
            st.offload_optimizer, st.offload_params, st.recompute)


def known_summary(text: str) -> bool:
    return (text in {r.summary for r in rules.TRAINING_RULES + rules.FRAMEWORK_RULES}
            or text.startswith("excluded by --"))


@pytest.mark.parametrize("seed", range(60))
def test_enumeration_is_every_combination_the_rules_allow(seed):
    rng = random.Random(seed)
    model = random_model(rng)
    n = rng.choice([1, 2, 3, 4, 6, 8, 12, 16])
    gpn = rng.choice([2, 4, 8])
    opt = random_options(rng, model, n)
    space = enumerate_space(model, n, gpn, opt)
    got = [key(st) for st in space.strategies]
    assert len(got) == len(set(got)), "the enumeration repeats a structure"
    assert set(got) == brute_force(model, n, gpn, opt)
    assert all(known_summary(k) and c > 0 for k, c in space.removed.items()), space.removed
    # every enumerated structure is a valid user strategy (and one its framework can express)
    for st in space.strategies:
        rules.check_strategy(model, st, n, gpn, tp_across_nodes=opt.tp_across_nodes)
        assert opt.framework is None or rules.framework_problem(opt.framework, model, st) is None


@pytest.mark.parametrize("seed", range(30))
def test_enumeration_of_pools_is_every_combination_the_rules_allow(seed):
    rng = random.Random(1000 + seed)
    model = random_model(rng)
    pools = [rng.choice([2, 4, 6, 8]) for _ in range(rng.choice([2, 3]))]
    gpn = rng.choice([2, 4, 8])
    opt = random_options(rng, model, sum(pools))
    space = enumerate_pools(model, pools, gpn, opt)
    by_structure: dict[tuple, list] = {}
    for st, placement in zip(space.strategies, space.stage_pools):
        by_structure.setdefault(key(st), []).append(placement)
    assert set(by_structure) == brute_force(model, sum(pools), gpn, opt, pools=pools)
    for k, placements in by_structure.items():
        tp, cp, pp, dp = k[:4]
        stages = [n // (tp * cp * dp) for n in pools]
        # every order of the pools, each pool's stages together
        orders = itertools.permutations(range(len(pools)))
        want = {tuple(i for i in order for _ in range(stages[i])) for order in orders}
        assert len(placements) == len(set(placements)) or len(set(pools)) < len(pools)
        assert set(placements) == want
    assert all(known_summary(k) and c > 0 for k, c in space.removed.items()), space.removed


def random_strategy(rng: random.Random, model: ModelSpec, n: int, gb: int) -> Strategy | None:
    """A random combination within the search bounds, or None when Strategy itself rejects it."""
    off = rng.choice(OFFLOADS)
    try:
        return Strategy(tp=rng.randint(1, n), cp=rng.randint(1, n), pp=rng.randint(1, n), dp=rng.randint(1, n),
                        ep=rng.randint(1, 8), micro_batch=rng.randint(1, gb), global_batch=gb,
                        virtual_stages=rng.randint(1, rules.MAX_VIRTUAL_STAGES), zero_stage=rng.randint(0, 3),
                        recompute=rng.choice(("selective", "full")), offload_optimizer=off != "none",
                        offload_params=off == "optimizer+params")
    except StrategyError:
        return None


@pytest.mark.parametrize("seed", range(40))
def test_check_strategy_accepts_exactly_the_enumerated_strategies(seed):
    rng = random.Random(2000 + seed)
    model = random_model(rng)
    n = rng.choice([1, 2, 4, 6, 8, 12, 16])
    gpn = rng.choice([2, 4, 8])
    gb = rng.choice([1, 2, 4, 8, 12, 16])
    across = rng.random() < 0.2
    space = enumerate_space(model, n, gpn, SpaceOptions(global_batch=gb, tp_across_nodes=across,
                                                        recompute=("selective", "full")))
    enumerated = {key(st) for st in space.strategies}
    ctx = rules.Context(model, n, gpn, across)
    tried = rejected = 0
    while tried < 300:
        st = random_strategy(rng, model, n, gb)
        if st is None or (st.pp == 1 and st.virtual_stages > 1):
            continue
        tried += 1
        if key(st.with_(sequence_parallel=st.tp > 1)) in enumerated:
            rules.check_strategy(model, st, n, gpn, tp_across_nodes=across)
            continue
        rejected += 1
        broken = [r for r in rules.CHECKED if not r.ok(ctx, st)]
        assert broken, st
        with pytest.raises(StrategyError) as e:
            rules.check_strategy(model, st, n, gpn, tp_across_nodes=across)
        assert str(e.value) == broken[0].error(ctx, st)
    assert rejected > 0


def test_check_strategy_rules_the_search_applies():
    """The rules check_strategy was missing: the context-parallel chunk, ZeRO without a data-parallel
    group, optimizer offload without ZeRO."""
    m = ModelSpec(name="m", layers=8, hidden=512, heads=8, kv_heads=8, vocab=1000, seq_len=4096)
    with pytest.raises(StrategyError, match=r"cp=8 leaves 512 of the 4096 tokens per rank, fewer than 1024"):
        rules.check_strategy(m, Strategy(cp=8, global_batch=1), 8, 8)
    with pytest.raises(StrategyError, match=r"ZeRO-1 shards over the data-parallel ranks, but dp x cp = 1"):
        rules.check_strategy(m, Strategy(tp=8, zero_stage=1, global_batch=1), 8, 8)
    with pytest.raises(StrategyError, match=r"optimizer offload needs a sharded optimizer"):
        rules.check_strategy(m, Strategy(dp=8, global_batch=8, offload_optimizer=True), 8, 8)
    rules.check_strategy(m, Strategy(dp=8, global_batch=8, zero_stage=1, offload_optimizer=True), 8, 8)


def test_every_rule_is_named_once_with_a_step_and_frameworks():
    everything = rules.TRAINING_RULES + rules.FRAMEWORK_RULES + rules.SHAPE_RULES
    names = {}
    for r in everything:
        assert names.setdefault(r.name, r) is r, f"two rules named {r.name}"
        assert r.step in rules.STEPS and r.summary and r.message
        assert r.frameworks or r.bound, r.name
    for fw in ("megatron", "deepspeed", "torchtitan"):
        assert all(fw in r.frameworks for r in rules.framework_rules(fw))
    summaries = [r.summary for r in rules.TRAINING_RULES]
    assert len(summaries) == len(set(summaries))   # the removed-by-rules counter names one rule


def test_removed_counts_name_rules():
    m = ModelSpec(name="m", layers=4, hidden=768, heads=12, kv_heads=4, vocab=1000, seq_len=2048,
                  moe=MoESpec(experts=6, top_k=2, expert_ffn_hidden=256))
    space = enumerate_space(m, 16, 8, SpaceOptions(global_batch=8))
    summaries = {r.summary: r for r in rules.TRAINING_RULES}
    assert set(space.removed) <= set(summaries)
    for name in ("tp_heads", "cp_chunk", "pp_layers", "ep_dp_cp", "v_layers", "zero_pp", "offload_zero",
                 "param_offload_zero3"):
        assert next(r for r in rules.TRAINING_RULES if r.name == name).summary in space.removed, name


@pytest.mark.parametrize("seed", range(30))
def test_framework_space_is_the_expressible_part_of_the_space(seed):
    """for_framework (export's search again for a framework) keeps exactly the structures the framework can
    express; an option restricted to values the framework cannot express is opened instead."""
    rng = random.Random(3000 + seed)
    model = random_model(rng)
    n = rng.choice([2, 4, 8, 16])
    opt = replace(random_options(rng, model, n), framework=None)
    whole = enumerate_space(model, n, 8, opt).strategies
    for fw in ("megatron", "deepspeed", "torchtitan"):
        fopt = for_framework(opt, fw)
        got = enumerate_space(model, n, 8, fopt).strategies
        assert all(rules.framework_problem(fw, model, st) is None for st in got)
        assert all(st.framework == fw for st in got)     # priced in that framework's accounting
        mine = [replace(st, framework=fw) for st in whole]
        if fw == "torchtitan":     # it also runs what the default search refuses: FSDP with pipeline parallelism
            extra = [st for st in got if st not in set(mine)]
            assert all(st.pp > 1 and st.zero_stage >= 2 for st in extra)
            got = [st for st in got if st in set(mine)]
        if fopt == replace(opt, framework=fw):    # nothing opened: the expressible part of the same space
            assert got == [st for st in mine if rules.framework_problem(fw, model, st) is None]
        else:
            assert set(got) >= {st for st in mine if rules.framework_problem(fw, model, st) is None}


def test_every_rule_message_formats_on_a_plan_that_breaks_it():
    """Every rule's message fills in (no missing field) for a structure that breaks it; structures are
    unvalidated (Fixed), as the search's partial structures are, so rules Strategy also enforces break too."""
    rng = random.Random(7)
    broken: dict[str, str] = {}
    everything = rules.TRAINING_RULES + rules.FRAMEWORK_RULES + rules.SHAPE_RULES
    for _ in range(3000):
        model = random_model(rng)
        if rng.random() < 0.3:
            model = model.model_copy(update={"position_embedding": "alibi"})
        off = rng.choice(OFFLOADS)
        s = Fixed(tp=rng.randint(1, 16), cp=rng.randint(1, 16), pp=rng.choice([1, 2, 3, 8, 13, 600]),
                  dp=rng.randint(1, 8), ep=rng.randint(1, 8), micro_batch=rng.randint(1, 4),
                  global_batch=rng.choice([8, 12, 24]), virtual_stages=rng.randint(1, 8),
                  zero_stage=rng.randint(0, 3), recompute=rng.choice(("none", "selective", "full")),
                  offload_optimizer=off != "none", offload_params=rng.random() < 0.3,
                  precision=rng.choice(("bf16", "fp16", "fp8")), optimizer=rng.choice(("adam", "sgd")),
                  sequence_parallel=rng.random() < 0.7, flash_attention=rng.random() < 0.8,
                  fp32_grads=rng.random() < 0.7, pipeline_schedule=rng.choice(("1f1b", "gpipe", "dualpipe")),
                  stage_layers=None, recompute_layers=None,
                  moe_dispatcher=rng.choice(("alltoall", "deepep")), tp_comm_overlap=rng.random() < 0.3,
                  lora_rank=rng.choice((None, None, 16)), fp8_recipe=rng.choice((None, "mxfp8")),
                  moe_a2a_overlap=rng.random() < 0.3)
        s.micro_batches = s.global_batch // (s.dp * s.micro_batch)
        if rng.random() < 0.3:
            s.stage_layers = tuple(rng.randint(1, 4) for _ in range(min(s.pp, 20)))
            s.pp = len(s.stage_layers)
            s.recompute_layers = tuple(x + rng.randint(-1, 1) for x in s.stage_layers)
        ctx = rules.Context(model, rng.choice([1, 2, 4, 8, 16, 600]), rng.choice([2, 8]))
        for r in everything:
            if r.name not in broken and not r.ok(ctx, s):
                broken[r.name] = r.error(ctx, s, next(iter(r.frameworks), None))
                assert "{" not in broken[r.name] and "None" not in broken[r.name], broken[r.name]
    assert set(broken) == {r.name for r in everything}, {r.name for r in everything} - set(broken)


def test_torchtitan_carves_expert_parallelism_as_its_job_config_says():
    """torchtitan/config/job_config.py (Parallelism.expert_parallel_degree): expert TP = tp: cp <= ep <=
    dp_shard x cp, ep % cp == 0, dp_shard x cp % ep == 0; expert TP 1: cp x tp <= ep <= dp_shard x cp x tp,
    ep % (cp x tp) == 0, dp_shard x cp x tp % ep == 0. An 8-GPU Mixtral with TP 8 and EP 8 over the TP ranks
    is one torchtitan builds; the same with expert TP 8 needs 8 FSDP-sharded ranks it does not have."""
    tt = rules.TT_EP
    ok = lambda **kw: tt.ok(None, Strategy(global_batch=64, **kw))   # noqa: E731
    assert ok(tp=8, ep=8, expert_tp=1)                                     # experts over the tp ranks
    assert not ok(tp=8, ep=8)                                              # expert TP 8: dp_shard x cp = 1
    assert ok(tp=2, dp=4, ep=4, zero_stage=3)                              # 4 FSDP-sharded ranks
    assert not ok(tp=2, dp=4, ep=4, zero_stage=1)                          # not sharded: no ranks to carve
    assert ok(tp=2, dp=4, ep=8, expert_tp=1, zero_stage=3)                 # dp_shard 4 x tp 2
    assert not ok(tp=4, dp=4, ep=2, expert_tp=1, zero_stage=3)             # ep must take all of tp x cp = 4
