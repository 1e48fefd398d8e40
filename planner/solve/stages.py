"""The stage expression: one pipeline stage's time and memory as linear forms in its layers L, fully
recomputed layers R and has_R (R > 0), in integer ns and bytes; one object for the CP-SAT model, the
bounds, the layer caps and the evaluation that prints a plan.

costmodels.performance.StageCosts gives float seconds and bytes by named part; `coefficients` rounds
each once here (times up to a multiple of OVERLAP_SM_SHARE_DEN ns, bytes up to a whole byte). Every
method works on plain ints and on CP-SAT linear expressions: where a max and an exact division are
needed (an overlap) it calls an `ops` object, INT for numbers, CpOps (planner.solve.solver) for the
model. Formulas and their sources:

- per micro-batch, stage i: T_i = L*layer + R*recompute + embedding (first) + head (last) + p2p;
- 1F1B pipeline: (m - 1) * max T_i + sum T_i, i.e. (m + p - 1) T for equal stages (Narayanan et al.
  2021, section 2.2); interleaved with v chunks: m * max T_i + (sum T_i - max T_i) / v, the bubble
  (p - 1)/(v m) (Narayanan et al. 2021, section 2.2.2);
- data-parallel gradient sync overlaps the backward (PyTorch DDP / Megatron --overlap-grad-reduce; with
  interleaving each chunk syncs after its last backward, Megatron-core schedules.py grad_sync_func, so
  only the last chunk's share can stick out); ZeRO-3 gathers overlap a stage's compute every micro-batch
  (Rajbhandari et al. 2020, section 7.2); overlapped compute runs slower by the SM share NCCL's kernels
  take (costmodels.calibration.OVERLAP_SM_SHARE_DEN).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property, reduce

import numpy as np

from costmodels.calibration import OVERLAP_SM_SHARE_DEN as D
from costmodels.performance import StageCosts

NS = 1e-9
TIME_PARTS = ("compute", "tp_comm", "cp_comm", "ep_comm", "selective")   # a layer's time, in this order
# a stage's GPU memory: model states; stored activations (and a recomputing layer's working set); the loss
# (logits in fp32 and 16 bits, last stage); gathered weights and communication buckets; runtime buffers
BYTE_PARTS = ("weights", "gradients", "optimizer", "activations", "loss", "comm_buffers", "runtime")


def _ns(seconds: float) -> int:
    """A time coefficient in whole ns, rounded up to a multiple of D so that every stage time and tail
    is one too and the overlap divisions are exact (the rounding is below 8 ns)."""
    return D * math.ceil(seconds / NS / D) if seconds > 0 else 0


def _q(x: float) -> int:
    """Round a cost up to a whole byte (or ns)."""
    return math.ceil(x) if x > 0 else 0


class IntOps:
    """`ops` for plain integers: max is max, the divisions are exact (coefficients are multiples of D)."""

    @staticmethod
    def max(xs, kind: str, name: str):
        return max(xs)

    @staticmethod
    def div(x, d: int, kind: str, name: str):
        return -(-x // d)


INT = IntOps()


class ArrayOps(IntOps):
    """`ops` for numpy integer arrays (a stage at every layer count at once): max is element-wise."""

    @staticmethod
    def max(xs, kind: str, name: str):
        return reduce(np.maximum, xs)


ARRAYS = ArrayOps()


def overlap(comm, compute, ops, kind: str, name: str):
    """Time a collective adds to the compute it overlaps: what sticks out, X = max(0, comm - compute),
    plus the compute slowed while both run by the SMs NCCL's kernels take, min(comm, compute) / D:
    D * overlap = (D - 1) X + comm."""
    x = ops.max([0, comm - compute], kind, f"{name}_sticking_out")
    return (D - 1) * x + comm   # D x the overlap; callers divide once


@dataclass(eq=False)
class StageCoeffs:
    """Integer coefficients (ns, bytes) of one structure's stages on one GPU type (not to be mutated;
    a plain dataclass because the search builds thousands)."""
    p: int
    m: int
    v: int
    layers: int
    compute_ns: int           # a stored layer's time per micro-batch, by part (TIME_PARTS)
    tp_ns: int
    cp_ns: int
    ep_ns: int
    selective_ns: int
    layer_ns: int             # their sum
    recompute_ns: int         # extra for a fully recomputed layer
    first_ns: int             # embedding work on stage 0 (per micro-batch)
    last_ns: int              # output layer + loss on the last stage (per micro-batch)
    p2p_ns: int               # pipeline sends per micro-batch per stage
    dp_layer_ns: int          # data-parallel sync of one layer's gradients (per step)
    dp_first_ns: int
    dp_last_ns: int
    dp_window_layer_ns: int   # the backward that hides one layer's sync (interleaving included)
    zero3_layer_ns: int       # ZeRO-3 gathers + reduce-scatter of one layer per micro-batch
    opt_layer_ns: int         # optimizer step of one layer's shard
    opt_first_ns: int
    opt_last_ns: int
    layer_states_b: tuple[int, int, int, int]   # weights, grads, optimizer, host-offloaded bytes of one layer
    first_states_b: tuple[int, int, int, int]   # the embedding's, on stage 0
    last_states_b: tuple[int, int, int, int]    # the output layer's, on the last stage
    host_cap_b: int           # host memory per GPU
    inflight: tuple[float, ...]     # micro-batches of activations alive, per stage
    layer_act_stored_b: float    # stored activation bytes of one layer, one micro-batch
    layer_act_ckpt_b: float      # checkpoint bytes of one layer, one micro-batch
    first_act_b: int          # stage 0: embedding-dropout masks x micro-batches alive
    act_full_b: int           # working set of one layer recomputing (one micro-batch)
    last_act_b: int           # fp32 softmax + 16-bit logits of one micro-batch (transient at the loss, last stage)
    head_act_b: int           # last stage: final norm and output-layer inputs x micro-batches alive
    last_full_b: int          # what a recomputing layer adds on the last stage: max(0, act_full_b - last_act_b)
    fixed_b: int              # runtime buffers every GPU holds
    zero3_buffer_b: int       # gathered weights (ZeRO-3 / FSDP2) and the framework's communication buckets
    stream_pools: int = 0     # 1: gradients come from the reduce-scatter stream's own pool (torchtitan's FSDP2)
    end_transient_b: int = 0  # stage 0 at the end of the backward: the root's unsharded gradient (FSDP2)
    gather_layer_ns: int = 0  # distributed optimizer's weight all-gather of one layer (per step)
    gather_first_ns: int = 0
    gather_last_ns: int = 0
    gather_window_layer_ns: int = 0   # the forward that hides one layer's gather (interleaving included)

    @cached_property
    def act_stored_b(self) -> tuple[int, ...]:
        """Per stage: stored activations of one layer x micro-batches alive."""
        return tuple(_q(k * self.layer_act_stored_b) for k in self.inflight)

    @cached_property
    def act_ckpt_b(self) -> tuple[int, ...]:
        """Per stage: checkpoints of one layer x micro-batches alive."""
        return tuple(_q(k * self.layer_act_ckpt_b) for k in self.inflight)

    @property
    def layer_static_b(self) -> int:
        """Model states on the GPU of one layer (weights + gradients + optimizer)."""
        return sum(self.layer_states_b[:3])

    @property
    def first_static_b(self) -> int:
        return sum(self.first_states_b[:3])

    @property
    def last_static_b(self) -> int:
        return sum(self.last_states_b[:3])

    def step_scaled(self, Ls: list[int], Rs: list[int]) -> int:
        """v x step time in ns when every stage has these coefficients (Pipeline.step_scaled)."""
        return Pipeline.uniform(self, 0).step_scaled(Ls, Rs)

    def pipeline_scaled(self, times: list[int]) -> int:
        return Pipeline.uniform(self, 0).pipeline_scaled(times)

    # --- time ---------------------------------------------------------------------------------
    def _ends(self, i) -> tuple[bool, bool]:
        """Stage i is the first / the last; i = None is a middle stage."""
        return i == 0, i == self.p - 1

    def fixed_ns(self, i) -> int:
        """Stage i's time per micro-batch that does not depend on its layers: sends, embedding, head."""
        first, last = self._ends(i)
        return self.p2p_ns + (self.first_ns if first else 0) + (self.last_ns if last else 0)

    def work_ns(self, i, L, R):
        """Stage i's compute and collectives per micro-batch, before ZeRO-3 gathers."""
        return L * self.layer_ns + R * self.recompute_ns + self.fixed_ns(i)

    def stage_ns(self, i, L, R, ops=INT, name: str = "stage"):
        """Stage i's time per micro-batch: work, plus the ZeRO-3 gathers overlapping it."""
        work = self.work_ns(i, L, R)
        if not self.zero3_layer_ns:
            return work
        return ops.div(D * work + overlap(L * self.zero3_layer_ns, work, ops, "time", f"zero3_{name}"),
                       D, "time", name)

    def _per_step(self, i, L, layer: int, first_part: int, last_part: int):
        """L layers' share of a once-per-step term, with the embedding's on stage 0 and the output layer's on
        the last stage."""
        first, last = self._ends(i)
        return L * layer + (first_part if first else 0) + (last_part if last else 0)

    def dp_sync_ns(self, i, L):
        """Stage i's data-parallel gradient sync per step."""
        return self._per_step(i, L, self.dp_layer_ns, self.dp_first_ns, self.dp_last_ns)

    def dp_window_ns(self, i, L):
        """The backward that hides stage i's sync; with interleaving the output layer sits in the last
        stage's last chunk, whose sync starts first and hides behind the other chunks' backward."""
        _, last = self._ends(i)
        return L * self.dp_window_layer_ns + (self.dp_last_ns if last and self.v > 1 else 0)

    def exposed_sync_ns(self, i, L, ops=INT, name: str = "dp_exposed"):
        """What stage i's sync adds to the step: overlap of the gradient sync with its backward window,
        and of the distributed optimizer's weight gather with the next step's forward."""
        sync = ops.div(overlap(self.dp_sync_ns(i, L), self.dp_window_ns(i, L), ops, "sync", name),
                       D, "sync", name)
        if not self.gather_layer_ns:
            return sync
        gather = self._per_step(i, L, self.gather_layer_ns, self.gather_first_ns, self.gather_last_ns)
        return sync + ops.div(overlap(gather, L * self.gather_window_layer_ns, ops, "sync", f"{name}_gather"),
                              D, "sync", f"{name}_gather")

    def optimizer_ns(self, i, L):
        return self._per_step(i, L, self.opt_layer_ns, self.opt_first_ns, self.opt_last_ns)

    def stage_tail_ns(self, i, L, ops=INT, name: str = "dp_exposed"):
        """Once per step: exposed data-parallel sync plus the optimizer step of stage i."""
        return self.exposed_sync_ns(i, L, ops, name) + self.optimizer_ns(i, L)

    def time_parts_ns(self, i, L, R, ops=INT) -> dict:
        """Stage i's time per micro-batch by part (keys of the printed breakdown); sums to stage_ns."""
        first, last = self._ends(i)
        work = self.work_ns(i, L, R)
        return {
            "compute": L * self.compute_ns,
            "recompute": R * self.recompute_ns + L * self.selective_ns,
            "tp_comm": L * self.tp_ns,
            "cp_comm": L * self.cp_ns,
            "ep_comm": L * self.ep_ns,
            "pp_comm": self.p2p_ns,
            "embedding_and_head": (self.first_ns if first else 0) + (self.last_ns if last else 0),
            "dp_comm": self.stage_ns(i, L, R, ops) - work,   # ZeRO-3 gathers: their own overlap term
        }

    # --- memory -------------------------------------------------------------------------------
    def _bytes(self, i, L, R, has_R) -> tuple:
        first, last = self._ends(i)
        w, g, o, _ = self.layer_states_b
        w, g, o = L * w, L * g, L * o
        if first:
            w, g, o = w + self.first_states_b[0], g + self.first_states_b[1], o + self.first_states_b[2]
        if last:
            w, g, o = w + self.last_states_b[0], g + self.last_states_b[1], o + self.last_states_b[2]
        acts = (L - R) * self.act_stored_b[i] + R * self.act_ckpt_b[i] + has_R * self.recompute_peak_b(i)
        acts += (self.first_act_b if first else 0) + (self.head_act_b if last else 0)
        comm = self.zero3_buffer_b + (self.end_transient_b if first else 0)
        return w, g, o, acts, (self.last_act_b if last else 0), comm, self.fixed_b

    def recompute_peak_b(self, i) -> int:
        """Bytes a recomputing layer adds to stage i's peak. On the last stage the logits (alive at the loss,
        freed before the first layer's backward recomputes) and the working set are never alive together:
        the peak holds max(logits, working set) = logits + max(0, working set - logits)."""
        _, last = self._ends(i)
        return self.last_full_b if last else self.act_full_b

    def bytes_parts(self, i, L, R, has_R) -> dict:
        """Bytes on one GPU of stage i by part (BYTE_PARTS); has_R is 1 when R > 0 (the working set
        of a layer recomputing its backward)."""
        return dict(zip(BYTE_PARTS, self._bytes(i, L, R, has_R)))

    def host_bytes(self, i, L):
        """Host memory one GPU of stage i needs for offloaded states."""
        first, last = self._ends(i)
        return (L * self.layer_states_b[3] + (self.first_states_b[3] if first else 0)
                + (self.last_states_b[3] if last else 0))

    @cached_property
    def _memory_forms(self) -> tuple:
        # the linear form of bytes_parts per stage, read off at unit points: (const, per L, per R, per has_R)
        out = []
        for i in range(self.p):
            const = sum(self._bytes(i, 0, 0, 0))
            out.append((const, sum(self._bytes(i, 1, 0, 0)) - const, sum(self._bytes(i, 0, 1, 0)) - const,
                        sum(self._bytes(i, 0, 0, 1)) - const))
        return tuple(out)

    def memory_form(self, i: int) -> tuple[int, int, int, int]:
        """Stage i's GPU bytes = const + L * per_L + R * per_R + has_R * per_has (from bytes_parts)."""
        return self._memory_forms[i]

    def stage_bytes(self, i, L, R, has_R=None):
        """Stage i's peak bytes (what the caching allocator reserves; what must fit): a linear form, also of
        CP-SAT variables."""
        const, a, r, h = self.memory_form(i)
        if has_R is None:
            has_R = 1 if R > 0 else 0
        return const + L * a + R * r + has_R * h

    def _end_parts(self, i, L) -> tuple:
        """The end of the backward, by part: every model state with its gradients, gathered weights and
        buckets, the root's unsharded gradient on stage 0, the runtime buffers; activations all freed."""
        first, last = self._ends(i)
        w, g, o = (L * x for x in self.layer_states_b[:3])
        for on, states in ((first, self.first_states_b), (last, self.last_states_b)):
            if on:
                w, g, o = w + states[0], g + states[1], o + states[2]
        return w, g, o, 0, 0, self.zero3_buffer_b + (self.end_transient_b if first else 0), self.fixed_b

    def end_bytes(self, i, L) -> int:
        """Stage i's tensors and buffers at the end of the backward (every gradient, no activation)."""
        return sum(self._end_parts(i, L))

    def allocated_bytes(self, i, L: int, R: int) -> int:
        """What torch.cuda.max_memory_allocated would show: the peak without the runtime buffers. With
        stream_pools (FSDP2) the tensors alive at once are fewer than the peak reserves: at the loss no
        gradient exists yet (zero_grad set them to None) and at the end of the backward no activation, but
        the reduce-scatter stream's pool keeps the gradients' memory beside the compute stream's: allocated
        is the larger of the two moments, the peak their union."""
        peak = self.stage_bytes(i, L, R)
        if not self.stream_pools:
            return peak - self.fixed_b
        first, _ = self._ends(i)
        grads = self._end_parts(i, L)[1]
        at_loss = peak - grads - (self.end_transient_b if first else 0)
        return max(at_loss, self.end_bytes(i, L)) - self.fixed_b


def layer_ns_totals(lt) -> tuple[int, int, int, int, int]:
    """A layer's time parts rounded cumulatively (costmodels.performance.LayerTimes): compute, + tensor
    parallel, + context parallel, + expert parallel, + selective recompute; the last is StageCoeffs.layer_ns."""
    total = lt.compute_fwd + lt.compute_bwd
    c1 = _ns(total)
    total = total + lt.tp_fwd + lt.tp_bwd
    c2 = _ns(total)
    total += lt.cp_exposed
    c3 = _ns(total) if lt.cp_exposed else c2      # adding 0 leaves the total (and its rounding) as is
    total += lt.ep_comm
    c4 = _ns(total) if lt.ep_comm else c3
    total += lt.selective_extra
    c5 = _ns(total) if lt.selective_extra else c4
    return c1, c2, c3, c4, c5


def objective_value(v, m, total, tmax, tails):
    """v x step time from the sum of the stage times, the slowest stage and the slowest tail (integers or
    numpy arrays): v m Tmax + sum T - Tmax + v Tail (Narayanan et al. 2021, sections 2.2 and 2.2.2; at
    v = 1 it is 1F1B's (m-1) Tmax + sum T + Tail)."""
    return v * m * tmax + total - tmax + v * tails


def coefficients(sc: StageCosts) -> StageCoeffs:
    """Round costmodels' float parts once into the integer coefficients every planner formula uses.
    A layer's time parts are rounded cumulatively (each part is the rounded running total minus the
    previous one), so they sum exactly to the rounded layer time and a zero part stays zero."""
    lt, v = sc.layer, sc.v
    c1, c2, c3, c4, c5 = layer_ns_totals(lt)
    dp_layer = _ns(sc.dp_layer_s)
    return StageCoeffs(
        p=sc.p, m=sc.m, v=v, layers=sc.layers,
        compute_ns=c1, tp_ns=c2 - c1, cp_ns=c3 - c2, ep_ns=c4 - c3, selective_ns=c5 - c4,
        layer_ns=c5, recompute_ns=_ns(lt.recompute),
        first_ns=_ns(sc.embedding_s), last_ns=_ns(sc.head_s), p2p_ns=_ns(sc.p2p_s),
        dp_layer_ns=dp_layer, dp_first_ns=_ns(sc.dp_first_s), dp_last_ns=_ns(sc.dp_last_s),
        # interleaved 1F1B runs backward in groups of p micro-batches per chunk and syncs each chunk after
        # its last one (Megatron-core schedules.py, grad_sync_func per chunk): chunks 1..v-1 hide behind
        # the later groups, only chunk 0 (1/v of the stage) behind its own last backward; overlap(sync,
        # sync (v-1)/v + bwd/v) is exactly that sum per chunk
        dp_window_layer_ns=_ns(sc.dp_window_layer_s / v + (v - 1) / v * dp_layer * NS),
        zero3_layer_ns=_ns(sc.zero3_layer_s),
        # the weight gather of chunk c is launched by the forward of chunk c - 1 (Megatron-core
        # distributed_data_parallel.py, param-gather forward pre-hooks): as for the sync above, chunks
        # 1..v-1 hide whole, chunk 0 behind its own first forward
        gather_layer_ns=_ns(sc.gather_layer_s), gather_first_ns=_ns(sc.gather_first_s),
        gather_last_ns=_ns(sc.gather_last_s),
        gather_window_layer_ns=_ns(sc.gather_window_layer_s / v + (v - 1) / v * sc.gather_layer_s) if sc.gather_layer_s else 0,
        opt_layer_ns=_ns(sc.opt_layer_s), opt_first_ns=_ns(sc.opt_first_s), opt_last_ns=_ns(sc.opt_last_s),
        layer_states_b=tuple([_q(x) for x in sc.layer_states]),
        first_states_b=tuple([_q(x) for x in sc.first_states]),
        last_states_b=tuple([_q(x) for x in sc.last_states]),
        host_cap_b=_q(sc.host_capacity_b),
        inflight=sc.inflight, layer_act_stored_b=sc.act_stored_b, layer_act_ckpt_b=sc.act_checkpoint_b,
        first_act_b=_q(sc.inflight[0] * sc.embedding_act_b),
        act_full_b=_q(sc.act_full_b), last_act_b=_q(sc.logits_b),
        head_act_b=_q(sc.inflight[-1] * sc.head_act_b),
        last_full_b=max(0, _q(sc.act_full_b) - _q(sc.logits_b)),
        fixed_b=_q(sc.buffer_b), zero3_buffer_b=_q(sc.zero3_buffer_b + sc.bucket_b),
        stream_pools=1 if sc.stream_pools else 0, end_transient_b=_q(sc.end_transient_b),
    )


@dataclass(frozen=True)
class Pipeline:
    """A structure's pipeline stages: each stage's coefficients (those of its GPU type) and its memory.

    On one GPU type every stage shares one StageCoeffs; on a heterogeneous cluster stages placed on
    different GPU pools carry their pool's coefficients (same strategy, other speeds and capacity)."""
    stages: tuple[StageCoeffs, ...]
    caps: tuple[int, ...]          # GPU memory per stage, bytes

    @staticmethod
    def uniform(sc: StageCoeffs | StageCosts, cap: int) -> "Pipeline":
        sc = sc if isinstance(sc, StageCoeffs) else coefficients(sc)
        return Pipeline((sc,) * sc.p, (cap,) * sc.p)

    @cached_property
    def uniform_stages(self) -> bool:
        """Every stage has the same coefficients (one GPU type)."""
        return self.stages.count(self.stages[0]) == len(self.stages)

    @property
    def p(self) -> int:
        return self.stages[0].p

    @property
    def m(self) -> int:
        return self.stages[0].m

    @property
    def v(self) -> int:
        return self.stages[0].v

    @property
    def layers(self) -> int:
        return self.stages[0].layers

    def stage_ns(self, i: int, L, R, ops=INT, name: str = "stage"):
        return self.stages[i].stage_ns(i, L, R, ops, name)

    def stage_tail_ns(self, i: int, L, ops=INT, name: str = "dp_exposed"):
        return self.stages[i].stage_tail_ns(i, L, ops, name)

    def stage_bytes(self, i: int, L, R, has_R=None):
        return self.stages[i].stage_bytes(i, L, R, has_R)

    def host_bytes(self, i: int, L):
        return self.stages[i].host_bytes(i, L)

    def stage_fits(self, i: int, L: int, R: int) -> bool:
        sc = self.stages[i]
        return sc.stage_bytes(i, L, R) <= self.caps[i] and sc.host_bytes(i, L) <= sc.host_cap_b

    def objective(self, times, tmax, tails_max):
        """v x step time: (m-1) Tmax + sum T + Tail for 1F1B; v m Tmax + sum T - Tmax + v Tail
        interleaved (Narayanan et al. 2021, sections 2.2 and 2.2.2)."""
        return self.objective_bound(sum(times), tmax, tails_max)

    def objective_bound(self, total, tmax, tails_max):
        """objective() given the sum of the stage times (or a bound on it)."""
        if self.v == 1:   # objective_value at v = 1, in the form the CP-SAT model has always been given
            return (self.m - 1) * tmax + total + tails_max
        return objective_value(self.v, self.m, total, tmax, tails_max)

    def pipeline_scaled(self, times: list[int]) -> int:
        """v x the pipeline's time (no tail) for these stage times."""
        return self.objective(times, max(times), 0)

    def step_scaled(self, Ls: list[int], Rs: list[int]) -> int:
        """v x step time in ns, an exact integer (the CP-SAT objective)."""
        times = [self.stage_ns(i, L, R) for i, (L, R) in enumerate(zip(Ls, Rs))]
        tails = [self.stage_tail_ns(i, L) for i, L in enumerate(Ls)]
        return self.objective(times, max(times), max(tails))
