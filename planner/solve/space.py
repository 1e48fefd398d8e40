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
from dataclasses import dataclass, field, replace

import numpy as np

from costmodels.model import ModelSpec
from costmodels.strategy import Strategy, StrategyError
from planner.solve.evaluate import Headroom
from planner.solve.rules import (MAX_MICRO_BATCH, MAX_PIPELINE_STAGES, MAX_VIRTUAL_STAGES, MIN_CP_CHUNK,  # noqa: F401
                                 Context, Partial, check_strategy, rules_at)

MAX_STRUCTURES = 20_000_000   # refused up front: enumerating more would take minutes


@dataclass
class SpaceOptions:
    """Which values each dimension may take (None: all the rules allow). `ep` restricts MoE models only
    and `virtual_stages` pipelines only (pp = 1 always runs one chunk). `headroom`: GPU memory kept free on
    every GPU (planner.solve.evaluate.parse_headroom); the search accepts only plans whose peak is at most
    capacity - headroom (the default keeps none beyond the model's own 1 GB of buffers)."""
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
    # the framework that runs the plans: its memory accounting (Strategy.framework) and what it cannot express
    # (planner.solve.rules); None: Megatron-core's accounting over every structure the cost model prices
    framework: str | None = None
    moe_dispatcher: str = "alltoall"      # MoE token dispatch of every plan (Strategy.moe_dispatcher)
    tp_comm_overlap: bool = False         # tensor-parallel collectives overlapped with GEMMs (Strategy.tp_comm_overlap)
    lora_rank: int | None = None          # LoRA fine-tuning of every plan (Strategy.lora_rank; ZeRO 0/1, no offload)
    fp8_recipe: str | None = None         # FP8 scaling recipe (Strategy.fp8_recipe; None: the framework's default)
    moe_a2a_overlap: bool = False         # MoE all-to-all overlapped across micro-batches where the plan allows it
    headroom: Headroom = field(default_factory=Headroom)


# the columns of Space.rows, one row per structure (offload and recompute as indices into these)
ROW_FIELDS = ("tp", "pp", "dp", "cp", "ep", "micro_batch", "virtual_stages", "zero_stage", "offload", "recompute")
OFFLOADS = ("none", "optimizer", "optimizer+params")
RECOMPUTES = ("none", "selective", "full")


class Space:
    """The structures of a search space. enumerate_space keeps them as integer rows (ROW_FIELDS, one numpy
    row each) and builds a structure's Strategy only when asked (`strategy(i)`, or `strategies` for all),
    so a search can bound every structure without building most of them; enumerate_pools lists Strategies."""

    def __init__(self, strategies: list[Strategy] | None = None, removed: Counter | None = None,
                 stage_pools: list[tuple[int, ...]] | None = None, rows=None, opt: SpaceOptions | None = None):
        self._strategies = strategies
        self.removed = removed if removed is not None else Counter()   # rule -> candidates it removed
        self.stage_pools = stage_pools   # heterogeneous: the pool of every stage, per strategy
        self.rows = rows                 # numpy int64 array (n, len(ROW_FIELDS)), or None
        self._opt = opt

    def __len__(self) -> int:
        return len(self._strategies) if self._strategies is not None else len(self.rows)

    @property
    def strategies(self) -> list[Strategy]:
        if self._strategies is None:
            self._strategies = [self.strategy(i) for i in range(len(self.rows))]
        return self._strategies

    @property
    def global_batch(self) -> int:
        return self._opt.global_batch

    def column(self, name: str):
        """One column of the rows (numpy), e.g. column("virtual_stages")."""
        return self.rows[:, ROW_FIELDS.index(name)]

    def strategy(self, i: int) -> Strategy:
        """Structure i as a Strategy."""
        if self._strategies is not None:
            return self._strategies[i]
        tp, pp, dp, cp, ep, mb, v, zero, off, rec = (int(x) for x in self.rows[i])
        return _strategy(self._opt, tp, pp, dp, cp, ep, mb, v, zero, OFFLOADS[off], RECOMPUTES[rec])


def _strategy(opt: SpaceOptions, tp: int, pp: int, dp: int, cp: int, ep: int, mb: int, v: int, zero: int, off: str,
              rec: str) -> Strategy:
    """The structure with these choices, the space's fixed settings filled in."""
    return Strategy(
        tp=tp, pp=pp, dp=dp, cp=cp, ep=ep, micro_batch=mb, global_batch=opt.global_batch,
        zero_stage=zero, recompute=rec, sequence_parallel=tp > 1,
        precision=opt.precision, optimizer=opt.optimizer, virtual_stages=v,
        flash_attention=opt.flash_attention, fp32_grads=opt.fp32_grads,
        offload_optimizer=off != "none", offload_params=off == "optimizer+params",
        framework=opt.framework or "megatron", moe_dispatcher=opt.moe_dispatcher,
        tp_comm_overlap=opt.tp_comm_overlap and tp > 1, lora_rank=opt.lora_rank,
        fp8_recipe=opt.fp8_recipe,
        moe_a2a_overlap=opt.moe_a2a_overlap and ep > 1 and rec != "full" and (pp == 1 or v > 1))


class SpaceTooLargeError(StrategyError):
    """The search space is too large to enumerate; the message gives its size and how to shrink it."""


def divisors(n: int) -> list[int]:
    small = [d for d in range(1, int(n ** 0.5) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def space_size_bound(model: ModelSpec, num_gpus: int, gpus_per_node: int, opt: SpaceOptions) -> int:
    """An upper bound on the structures enumerate_space would build, computed without building them: the
    tp and cp sizes the rules allow times the widest range of every other dimension."""
    b = _Builder(model, num_gpus, gpus_per_node, opt)
    divs = divisors(num_gpus)
    tp = sum(1 for d in divs if b.fits("tp", tp=d))
    cp = sum(1 for d in divs if b.fits("cp", cp=d))
    pp = sum(1 for d in divs if d <= model.layers)
    mb = sum(1 for d in divisors(opt.global_batch) if d <= MAX_MICRO_BATCH)
    experts = len(divisors(model.moe.experts)) if model.moe is not None else 1
    return tp * cp * pp * mb * MAX_VIRTUAL_STAGES * len(opt.zero_stage) * len(opt.offload) * 2 * experts


def _excluded(dim: str, allowed: tuple[int, ...]) -> str:
    return f"excluded by --{dim} {','.join(map(str, allowed))}"


def enumerate_space(model: ModelSpec, num_gpus: int, gpus_per_node: int, opt: SpaceOptions) -> Space:
    """All structures for `model` on `num_gpus` GPUs. Recompute family 'full' stands for block
    recompute with a free count per stage (0 = none), so 'none' needs no structure of its own unless
    'full' is not allowed. Sequence parallel is on whenever tp > 1: it moves the same bytes as plain
    tensor parallelism and stores less (Korthikanti et al. 2022, 4.2.2), so it is never worse."""
    size = space_size_bound(model, num_gpus, gpus_per_node, opt)
    if size > MAX_STRUCTURES:
        raise SpaceTooLargeError(
            f"the search space for {model.name} on {num_gpus} GPUs would have up to {size:,} structures (limit "
            f"{MAX_STRUCTURES:,}); fix some dimensions (--tp, --pp, --zero, --recompute) or use fewer GPUs")
    b = _Builder(model, num_gpus, gpus_per_node, opt)
    out: list[tuple] = []
    for tp, cp in b.tp_cp(num_gpus):
        for pp in divisors(num_gpus // (tp * cp)):
            dp = num_gpus // (tp * cp * pp)
            if b.pp_dp(pp, dp):
                out.extend(b.structures(tp, cp, pp, dp))
    rows = np.array(out, dtype=np.int64).reshape(-1, len(ROW_FIELDS))
    return Space(removed=b.removed, rows=rows, opt=opt)


def enumerate_pools(model: ModelSpec, pool_sizes: list[int], gpus_per_node: int, opt: SpaceOptions) -> Space:
    """Structures for a cluster of several GPU pools: every pool runs whole pipeline stages of the same
    tp x cp x dp shape (pool k holds n_k / (tp cp dp) stages), and the pools are chained in every order.
    Stage counts and orders are structural; the CP-SAT layout then splits layers by each pool's speed
    and memory."""
    b = _Builder(model, sum(pool_sizes), gpus_per_node, opt)
    out: list[Strategy] = []
    placements: list[tuple[int, ...]] = []
    g = math.gcd(*pool_sizes)
    for tp, cp in b.tp_cp(g):
        for dp in divisors(g // (tp * cp)):
            stages = [n // (tp * cp * dp) for n in pool_sizes]
            pp = sum(stages)
            if not b.pp_dp(pp, dp):
                continue
            orders = [tuple(k for k in order for _ in range(stages[k]))
                      for order in itertools.permutations(range(len(pool_sizes)))]
            for row in b.structures(tp, cp, pp, dp):
                st = _strategy(opt, *row[:8], OFFLOADS[row[8]], RECOMPUTES[row[9]])
                for placement in orders:
                    out.append(st)
                    placements.append(placement)
    return Space(out, b.removed, placements)


class _Builder:
    """Builds structures field by field, asking planner.solve.rules at every step (the rules of a step read
    only the fields fixed so far) and counting each removal under the rule's summary; values the user's
    options exclude are counted as "excluded by --dim"."""

    def __init__(self, model: ModelSpec, num_gpus: int, gpus_per_node: int, opt: SpaceOptions) -> None:
        self.ctx = Context(model, num_gpus, gpus_per_node, opt.tp_across_nodes)
        self.p = Partial(opt.global_batch, opt.precision, opt.optimizer, opt.flash_attention, opt.fp32_grads)
        self.p.moe_dispatcher, self.p.tp_comm_overlap = opt.moe_dispatcher, opt.tp_comm_overlap
        self.p.lora_rank, self.p.fp8_recipe = opt.lora_rank, opt.fp8_recipe
        self.at = rules_at(opt.framework)
        self.opt = opt
        self.removed: Counter = Counter()
        self.families = _recompute_families(opt.recompute)

    def fits(self, step: str, **fields) -> bool:
        """Whether the partial structure with `fields` set passes the rules of `step` (nothing counted)."""
        for k, v in fields.items():
            setattr(self.p, k, v)
        return all(r.ok(self.ctx, self.p) for r in self.at[step])

    def _passes(self, step: str) -> bool:
        for r in self.at[step]:
            if not r.ok(self.ctx, self.p):
                self.removed[r.summary] += 1
                return False
        return True

    def _option(self, dim: str, value: int, allowed: tuple[int, ...] | None) -> bool:
        if allowed is not None and value not in allowed:
            self.removed[_excluded(dim, allowed)] += 1
            return False
        return True

    def tp_cp(self, n: int):
        """(tp, cp) pairs with tp x cp dividing n that the options and the rules allow."""
        p, opt = self.p, self.opt
        if not self._passes("setting"):       # a framework that cannot run these settings at all
            return
        for tp in divisors(n):
            p.tp, p.sequence_parallel = tp, tp > 1
            if not (self._option("tp", tp, opt.tp) and self._passes("tp")):
                continue
            for cp in divisors(n // tp):
                p.tp, p.sequence_parallel, p.cp = tp, tp > 1, cp
                if self._option("cp", cp, opt.cp) and self._passes("cp"):
                    yield tp, cp

    def pp_dp(self, pp: int, dp: int) -> bool:
        self.p.pp, self.p.dp = pp, dp
        return (self._option("pp", pp, self.opt.pp) and self._option("dp", dp, self.opt.dp)
                and self._passes("pp_dp"))

    def structures(self, tp: int, cp: int, pp: int, dp: int) -> list[tuple]:
        """Every structure with these degrees (as rows, ROW_FIELDS): expert parallel, micro-batch,
        interleaving, ZeRO stage, offload and recompute family."""
        p, opt, model = self.p, self.opt, self.ctx.model
        p.tp, p.sequence_parallel, p.cp, p.pp, p.dp = tp, tp > 1, cp, pp, dp
        out: list[tuple] = []
        for ep in (divisors(model.moe.experts) if model.moe is not None else (1,)):
            p.ep = ep
            if model.moe is not None and not self._option("ep", ep, opt.ep):
                continue
            if self._passes("ep"):
                out.extend(self._inner(tp, cp, pp, dp, ep))
        return out

    def _zero_offload(self) -> tuple[list[tuple[int, str, str]], Counter]:
        """The (ZeRO stage, offload, recompute family) triples the rules allow for the degrees fixed so far,
        and what the rules removed; the rules of these steps read no micro-batch or interleaving, so this
        holds for every one."""
        p, ctx, at = self.p, self.ctx, self.at
        out: list[tuple[int, str, str]] = []
        removed: Counter = Counter()
        for zero in self.opt.zero_stage:
            p.zero_stage, p.offload_optimizer, p.offload_params = zero, False, False
            rule = next((r for r in at["zero_stage"] if not r.ok(ctx, p)), None)
            if rule is not None:
                removed[rule.summary] += 1
                continue
            for off in self.opt.offload:
                p.offload_optimizer, p.offload_params = off != "none", off == "optimizer+params"
                rule = next((r for r in at["offload"] if not r.ok(ctx, p)), None)
                if rule is not None:
                    removed[rule.summary] += 1
                    continue
                for rec in self.families:
                    p.recompute = rec
                    rule = next((r for r in at["recompute"] if not r.ok(ctx, p)), None)
                    if rule is not None:
                        removed[rule.summary] += 1
                        continue
                    out.append((zero, off, rec))
        return out, removed

    def _inner(self, tp: int, cp: int, pp: int, dp: int, ep: int) -> list[tuple]:
        p, opt = self.p, self.opt
        gb = opt.global_batch
        triples, per_mb_v = self._zero_offload()
        codes = [(zero, OFFLOADS.index(off), RECOMPUTES.index(rec)) for zero, off, rec in triples]
        out: list[tuple] = []
        kept = 0     # (micro-batch, interleaving) pairs kept: each meets the ZeRO, offload and recompute rules once
        for mb in divisors(gb // dp):
            if mb > MAX_MICRO_BATCH or (opt.micro_batch is not None and mb not in opt.micro_batch):
                continue
            p.micro_batch, p.micro_batches = mb, gb // (dp * mb)
            if not self._passes("micro_batch"):
                continue
            for v in (range(1, MAX_VIRTUAL_STAGES + 1) if pp > 1 else (1,)):
                if pp > 1 and opt.virtual_stages is not None and v not in opt.virtual_stages:
                    continue
                p.virtual_stages = v
                if not self._passes("virtual_stages"):
                    continue
                kept += 1
                out.extend((tp, pp, dp, cp, ep, mb, v, zero, off, rec) for zero, off, rec in codes)
        p.virtual_stages = 1
        if kept:
            for summary, n in per_mb_v.items():
                self.removed[summary] += n * kept
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


_DEFAULTS = SpaceOptions(global_batch=1)
# option -> (step, Partial fields of one value)
_OPTION_FIELDS = {
    "tp": ("tp", lambda v: {"tp": v, "sequence_parallel": v > 1}), "cp": ("cp", lambda v: {"cp": v}),
    "ep": ("ep", lambda v: {"ep": v}), "virtual_stages": ("virtual_stages", lambda v: {"virtual_stages": v}),
    "zero_stage": ("zero_stage", lambda v: {"zero_stage": v}),
    "offload": ("offload", lambda v: {"offload_optimizer": v != "none", "offload_params": v == "optimizer+params"}),
    "recompute": ("recompute", lambda v: {"recompute": v})}


def for_framework(opt: SpaceOptions, framework: str) -> SpaceOptions:
    """The search space `framework` can express: the training rules and the framework's own restrictions
    (planner.solve.rules.framework_rules). An option the user restricted to values the framework cannot
    express at all (e.g. --zero 2,3 for Megatron-LM) is opened to every value, so the search finds the
    framework's best plan instead of none."""
    extra = {step: [r for r in rules_at(framework)[step] if r not in rules_at(None)[step]] for step in rules_at(None)}
    ctx = Context(None)    # type: ignore[arg-type]  # the restrictions of these options read no model
    changes: dict = {"framework": framework}
    for name, (step, fields) in _OPTION_FIELDS.items():
        allowed = getattr(opt, name)
        if allowed is None:
            continue
        ok = []
        for v in allowed:
            p = Partial(opt.global_batch, opt.precision, opt.optimizer, opt.flash_attention, opt.fp32_grads)
            for k, x in fields(v).items():
                setattr(p, k, x)
            ok.append(all(r.ok(ctx, p) for r in extra[step]))
        if not any(ok):
            changes[name] = getattr(_DEFAULTS, name)
    return replace(opt, **changes)


# --exclude: structures a user (or --validated-only) keeps out of the search, and what each removes
EXCLUDABLE: dict[str, str] = {
    "tp": "tensor parallelism", "pp": "pipeline parallelism", "cp": "context parallelism",
    "ep": "expert parallelism", "interleaving": "interleaved pipeline stages", "zero1": "ZeRO-1",
    "zero2": "ZeRO-2", "zero3": "ZeRO-3", "offload": "optimizer and parameter offload",
    "param-offload": "parameter offload", "full-recompute": "full (block) recompute",
    "selective-recompute": "selective recompute",
}


def exclude(opt: SpaceOptions, names) -> SpaceOptions:
    """`opt` without the structures `names` (keys of EXCLUDABLE) name; ValueError naming an unknown one."""
    ch: dict = {}
    for n in names:
        if n not in EXCLUDABLE:
            raise ValueError(f"--exclude {n!r} is not known; choose from {', '.join(EXCLUDABLE)}")
        if n in ("tp", "pp", "cp", "ep"):
            ch[n] = (1,)
        elif n == "interleaving":
            ch["virtual_stages"] = (1,)
        elif n.startswith("zero"):
            z = int(n[-1])
            ch["zero_stage"] = tuple(x for x in ch.get("zero_stage", opt.zero_stage) if x != z) or (0,)
        elif n == "offload":
            ch["offload"] = ("none",)
        elif n == "param-offload":
            ch["offload"] = tuple(o for o in ch.get("offload", opt.offload) if o != "optimizer+params") or ("none",)
        elif n == "full-recompute":
            ch["recompute"] = tuple(r for r in ch.get("recompute", opt.recompute) if r != "full") or ("none",)
        elif n == "selective-recompute":
            ch["recompute"] = tuple(r for r in ch.get("recompute", opt.recompute) if r != "selective") or ("none",)
    return replace(opt, **ch)
