"""The search space: every structural choice that satisfies the real divisibility rules.

A structure fixes tp, pp, dp, micro-batch, virtual stages, ZeRO stage, recompute family and sequence
parallel; the CP-SAT layout model (planner.solve.solver) then chooses the layers and fully recomputed layers
of every pipeline stage. Each rule that removes candidates is counted, so the output can say which
rule removed what.
"""
from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass, field

from costmodels.model import ModelSpec
from costmodels.performance import even_split
from costmodels.strategy import Strategy, StrategyError

MAX_VIRTUAL_STAGES = 8
MAX_MICRO_BATCH = 64
MAX_PIPELINE_STAGES = 512     # deeper pipelines than any published run; keeps layouts interactive
MAX_STRUCTURES = 20_000_000   # refused up front: enumerating more would take minutes
MIN_CP_CHUNK = 1024      # tokens per context-parallel rank below which attention kernels starve


@dataclass
class SpaceOptions:
    """Which values each dimension may take (None: all the rules allow)."""
    global_batch: int
    precision: str = "bf16"
    optimizer: str = "adam"
    tp: tuple[int, ...] | None = None
    pp: tuple[int, ...] | None = None
    dp: tuple[int, ...] | None = None
    cp: tuple[int, ...] | None = None
    ep: tuple[int, ...] | None = None
    offload: tuple[str, ...] = ("none", "optimizer", "optimizer+params")
    micro_batch: tuple[int, ...] | None = None
    virtual_stages: tuple[int, ...] | None = None
    zero_stage: tuple[int, ...] = (0, 1, 2, 3)
    recompute: tuple[str, ...] = ("none", "selective", "full")
    flash_attention: bool = True
    fp32_grads: bool = True
    tp_across_nodes: bool = False


@dataclass
class Space:
    strategies: list[Strategy]
    removed: Counter = field(default_factory=Counter)   # rule -> candidates it removed
    stage_pools: list[tuple[int, ...]] | None = None     # heterogeneous: the pool of every stage, per strategy


def check_strategy(model: ModelSpec, st: Strategy, num_gpus: int, gpus_per_node: int,
                   tp_across_nodes: bool = False) -> None:
    """Raise StrategyError naming the first rule a user-given strategy breaks (the same rules the
    enumeration applies)."""
    if st.num_gpus != num_gpus:
        raise StrategyError(f"tp x pp x dp x cp = {st.tp} x {st.pp} x {st.dp} x {st.cp} = {st.num_gpus} GPUs, "
                            f"but the cluster has {num_gpus}; choose degrees whose product is {num_gpus}")
    if st.tp > gpus_per_node and not tp_across_nodes:
        raise StrategyError(f"tp={st.tp} is larger than a node ({gpus_per_node} GPUs); tp must stay inside a node")
    if model.heads % st.tp or model.kv_heads % st.tp:
        raise StrategyError(f"tp={st.tp} does not divide the {model.heads} attention heads and {model.kv_heads} kv heads "
                            f"of {model.name}; allowed tp: {[d for d in divisors(model.kv_heads) if d <= gpus_per_node]}")
    if st.pp > model.layers:
        raise StrategyError(f"pp={st.pp} exceeds the {model.layers} layers of {model.name}")
    if st.stage_layers is not None and sum(st.stage_layers) != model.layers:
        raise StrategyError(f"stage layers {list(st.stage_layers)} sum to {sum(st.stage_layers)}, "
                            f"but {model.name} has {model.layers} layers")
    if st.virtual_stages > 1 and model.layers < st.pp * st.virtual_stages:
        raise StrategyError(f"virtual_stages={st.virtual_stages}: {model.layers} layers cannot give every one of "
                            f"pp x virtual stages = {st.pp * st.virtual_stages} chunks a layer")
    if st.stage_layers is not None and min(st.stage_layers) < st.virtual_stages:
        raise StrategyError(f"stage layers {list(st.stage_layers)}: with {st.virtual_stages} interleaved chunks "
                            f"every stage needs at least {st.virtual_stages} layers")
    if st.virtual_stages > 1 and st.micro_batches % st.pp:
        raise StrategyError(f"virtual_stages={st.virtual_stages} needs the {st.micro_batches} micro-batches per step "
                            f"to be a multiple of pp={st.pp}")
    if st.zero_stage >= 2 and st.pp > 1:
        raise StrategyError(f"ZeRO-{st.zero_stage} cannot be combined with pipeline parallelism (pp={st.pp}); "
                            f"use ZeRO-1 or pp=1")
    if st.recompute_layers is not None:
        stage_layers = st.stage_layers or tuple(even_split(model.layers, st.pp))
        over = [(i, r, L) for i, (r, L) in enumerate(zip(st.recompute_layers, stage_layers)) if r > L]
        if over:
            i, r, L = over[0]
            raise StrategyError(f"recompute layers {r} on stage {i} exceed its {L} layers; give at most the stage's "
                                f"layers ({list(stage_layers)})")
    if st.cp > 1 and model.seq_len % (2 * st.cp):
        raise StrategyError(f"cp={st.cp}: the sequence of {model.seq_len} tokens is not divisible by 2 x cp = {2 * st.cp}")
    if st.ep > 1:
        if model.moe is None:
            raise StrategyError(f"ep={st.ep} needs a mixture-of-experts model; {model.name} is dense")
        if model.moe.experts % st.ep:
            raise StrategyError(f"ep={st.ep} does not divide the {model.moe.experts} experts of {model.name}")
        if (st.dp * st.cp) % st.ep:
            raise StrategyError(f"ep={st.ep} must divide dp x cp = {st.dp * st.cp} (experts are spread over "
                                f"data-parallel ranks)")


class SpaceTooLargeError(StrategyError):
    """The search space is too large to enumerate; the message gives its size and how to shrink it."""


def space_size_bound(model: ModelSpec, num_gpus: int, opt: SpaceOptions) -> int:
    """An upper bound on the structures enumerate_space would build, computed without building them."""
    divs = divisors(num_gpus)
    tp = sum(1 for d in divs if model.heads % d == 0 and (d <= 8 or opt.tp_across_nodes))
    cp = sum(1 for d in divs if model.seq_len % (2 * d) == 0 and model.seq_len // d >= MIN_CP_CHUNK) + 1
    pp = sum(1 for d in divs if d <= model.layers)
    mb = sum(1 for d in divisors(opt.global_batch) if d <= MAX_MICRO_BATCH)
    experts = len(divisors(model.moe.experts)) if model.moe is not None else 1
    return tp * cp * pp * mb * MAX_VIRTUAL_STAGES * len(opt.zero_stage) * len(opt.offload) * 2 * experts


def _excluded(dim: str, allowed: tuple[int, ...]) -> str:
    return f"excluded by --{dim} {','.join(map(str, allowed))}"


def divisors(n: int) -> list[int]:
    small = [d for d in range(1, int(n ** 0.5) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def enumerate_space(model: ModelSpec, num_gpus: int, gpus_per_node: int, opt: SpaceOptions) -> Space:
    """All structures for `model` on `num_gpus` GPUs. Recompute family 'full' stands for block
    recompute with a free count per stage (0 = none), so 'none' needs no structure of its own unless
    'full' is not allowed. Sequence parallel is on whenever tp > 1: it moves the same bytes as plain
    tensor parallelism and stores less (Korthikanti et al. 2022, 4.2.2), so it is never worse."""
    size = space_size_bound(model, num_gpus, opt)
    if size > MAX_STRUCTURES:
        raise SpaceTooLargeError(
            f"the search space for {model.name} on {num_gpus} GPUs would have up to {size:,} structures (limit "
            f"{MAX_STRUCTURES:,}); fix some dimensions (--tp, --pp, --zero, --recompute) or use fewer GPUs")
    removed: Counter = Counter()
    out: list[Strategy] = []
    families = _recompute_families(opt.recompute)
    for tp in _tp_choices(model, num_gpus, gpus_per_node, opt, removed):
        for cp in divisors(num_gpus // tp):
            if not _cp_ok(model, cp, opt, removed):
                continue
            for pp in divisors(num_gpus // (tp * cp)):
                dp = num_gpus // (tp * cp * pp)
                if not _pp_dp_ok(model, pp, dp, opt, removed):
                    continue
                for ep in _ep_choices(model, dp * cp, opt, removed):
                    out.extend(_inner(model, opt, families, removed, tp, cp, pp, dp, ep))
    return Space(out, removed)


def enumerate_pools(model: ModelSpec, pool_sizes: list[int], gpus_per_node: int, opt: SpaceOptions) -> Space:
    """Structures for a cluster of several GPU pools: every pool runs whole pipeline stages of the same
    tp x cp x dp shape (pool k holds n_k / (tp cp dp) stages), and the pools are chained in every order.
    Stage counts and orders are structural; the CP-SAT layout then splits layers by each pool's speed
    and memory."""
    removed: Counter = Counter()
    out: list[Strategy] = []
    placements: list[tuple[int, ...]] = []
    families = _recompute_families(opt.recompute)
    g = math.gcd(*pool_sizes)
    for tp in _tp_choices(model, g, gpus_per_node, opt, removed):
        for cp in divisors(g // tp):
            if not _cp_ok(model, cp, opt, removed):
                continue
            for dp in divisors(g // (tp * cp)):
                stages = [n // (tp * cp * dp) for n in pool_sizes]
                pp = sum(stages)
                if not _pp_dp_ok(model, pp, dp, opt, removed):
                    continue
                orders = [tuple(k for k in order for _ in range(stages[k]))
                          for order in itertools.permutations(range(len(pool_sizes)))]
                for ep in _ep_choices(model, dp * cp, opt, removed):
                    for st in _inner(model, opt, families, removed, tp, cp, pp, dp, ep):
                        for placement in orders:
                            out.append(st)
                            placements.append(placement)
    return Space(out, removed, placements)


def _tp_choices(model: ModelSpec, n: int, gpus_per_node: int, opt: SpaceOptions, removed: Counter) -> list[int]:
    """Tensor-parallel sizes dividing n that the rules allow: inside a node, dividing heads and kv heads."""
    out = []
    for tp in divisors(n):
        if opt.tp is not None and tp not in opt.tp:
            removed[_excluded("tp", opt.tp)] += 1
        elif tp > gpus_per_node and not opt.tp_across_nodes:
            removed["tp must stay inside a node (NVLink)"] += 1
        elif model.heads % tp or model.kv_heads % tp:
            removed["tp must divide attention heads and kv heads"] += 1
        else:
            out.append(tp)
    return out


def _cp_ok(model: ModelSpec, cp: int, opt: SpaceOptions, removed: Counter) -> bool:
    """Context-parallel size allowed by the options and the rules (counting what it removes)."""
    if cp > 1 and not _cp_allowed(model, cp, opt, removed):
        return False
    if opt.cp is not None and cp not in opt.cp:
        removed[_excluded("cp", opt.cp)] += 1
        return False
    return True


def _pp_dp_ok(model: ModelSpec, pp: int, dp: int, opt: SpaceOptions, removed: Counter) -> bool:
    """Pipeline and data-parallel sizes allowed by the options and the rules (counting what they remove)."""
    if opt.pp is not None and pp not in opt.pp:
        removed[_excluded("pp", opt.pp)] += 1
    elif pp > model.layers:
        removed["pp must not exceed the layers"] += 1
    elif pp > MAX_PIPELINE_STAGES:
        removed[f"pp is at most {MAX_PIPELINE_STAGES} stages"] += 1
    elif opt.dp is not None and dp not in opt.dp:
        removed[_excluded("dp", opt.dp)] += 1
    elif opt.global_batch % dp:
        removed["global batch must be divisible by dp"] += 1
    else:
        return True
    return False


def _inner(model, opt, families, removed, tp, cp, pp, dp, ep) -> list[Strategy]:
    out = []
    for mb in divisors(opt.global_batch // dp):
        if mb > MAX_MICRO_BATCH or (opt.micro_batch is not None and mb not in opt.micro_batch):
            continue
        m = opt.global_batch // (dp * mb)
        for v in _virtual_choices(model, pp, m, opt, removed):
            for zero in opt.zero_stage:
                if zero >= 2 and pp > 1:
                    removed["ZeRO-2/3 cannot be combined with pipeline parallelism"] += 1
                    continue
                if zero >= 1 and dp * cp == 1:
                    removed["ZeRO needs a data-parallel group (dp x cp > 1)"] += 1
                    continue
                for off in opt.offload:
                    if off != "none" and zero == 0:
                        removed["optimizer offload needs a sharded optimizer (ZeRO >= 1)"] += 1
                        continue
                    if off == "optimizer+params" and zero != 3:
                        removed["parameter offload needs ZeRO-3"] += 1
                        continue
                    for rec in families:
                        out.append(Strategy(
                            tp=tp, pp=pp, dp=dp, cp=cp, ep=ep, micro_batch=mb, global_batch=opt.global_batch,
                            zero_stage=zero, recompute=rec, sequence_parallel=tp > 1,
                            precision=opt.precision, optimizer=opt.optimizer, virtual_stages=v,
                            flash_attention=opt.flash_attention, fp32_grads=opt.fp32_grads,
                            offload_optimizer=off != "none",
                            offload_params=off == "optimizer+params"))
    return out


def _cp_allowed(model: ModelSpec, cp: int, opt: SpaceOptions, removed: Counter) -> bool:
    if model.seq_len % (2 * cp):
        removed["cp needs the sequence divisible by 2 x cp (load-balanced causal chunks)"] += 1
        return False
    if model.seq_len // cp < MIN_CP_CHUNK:
        removed[f"cp must leave >= {MIN_CP_CHUNK} tokens per rank"] += 1
        return False
    return True


def _ep_choices(model: ModelSpec, dp_cp: int, opt: SpaceOptions, removed: Counter) -> list[int]:
    if model.moe is None:
        return [1]
    out = []
    for ep in divisors(model.moe.experts):
        if opt.ep is not None and ep not in opt.ep:
            continue
        if dp_cp % ep:
            removed["ep must divide dp x cp (experts are spread over data-parallel ranks)"] += 1
            continue
        out.append(ep)
    return out


def _recompute_families(allowed: tuple[str, ...]) -> list[str]:
    fams = []
    if "selective" in allowed:
        fams.append("selective")
    if "full" in allowed:
        fams.append("full")       # per-stage counts 0..L chosen by the solver; 0 everywhere is 'none'
    elif "none" in allowed:
        fams.append("none")
    return fams


def _virtual_choices(model: ModelSpec, pp: int, m: int, opt: SpaceOptions, removed: Counter) -> list[int]:
    if pp == 1:
        return [1]
    out = []
    for v in range(1, MAX_VIRTUAL_STAGES + 1):
        if opt.virtual_stages is not None and v not in opt.virtual_stages:
            continue
        if v > 1 and model.layers < pp * v:
            removed["interleaving needs at least one layer per chunk (layers >= pp x virtual stages)"] += 1
            continue
        if v > 1 and m % pp:
            removed["interleaving needs micro-batches divisible by pp"] += 1
            continue
        out.append(v)
    return out
