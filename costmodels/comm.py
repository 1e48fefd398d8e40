"""Collective communication times: alpha-beta model on a two-level (NVLink / network) topology.

Ring all-reduce moves 2(n-1)/n of the buffer per GPU, reduce-scatter and all-gather (n-1)/n each
(Thakur et al. 2005; NCCL's "bus bandwidth" convention). A group spread over several nodes is run
hierarchically: the members inside a node share the node's NICs, so the inter-node phase carries 1/g of
the buffer per GPU over its own NIC (g = members per node), as NCCL's multi-rail rings do.
"""
from __future__ import annotations

from dataclasses import dataclass

from costmodels.calibration import OVERLAP_SM_SHARE_DEN, Calibration
from hardware import GPUSpec

# Bytes each GPU sends, as a multiple of the buffer, for a ring of n: (Thakur et al. 2005)
_VOLUME = {
    "all_reduce": lambda n: 2.0 * (n - 1) / n,
    "reduce_scatter": lambda n: (n - 1) / n,
    "all_gather": lambda n: (n - 1) / n,
    "all_to_all": lambda n: (n - 1) / n,
}
_STEPS = {"all_reduce": 2, "reduce_scatter": 1, "all_gather": 1, "all_to_all": 1}


@dataclass(frozen=True, slots=True)
class Link:
    """Where a process group sits: its size and how many of its members share a node."""
    size: int
    per_node: int  # members of the group inside one node (1 .. size)
    span: int = 0  # consecutive GPUs its members lie within (size x stride; 0: unknown, one leaf)


def group_link(size: int, stride: int, gpus_per_node: int) -> Link:
    """Placement of a group whose members are `stride` ranks apart (Megatron orders ranks tp, cp, dp, pp)."""
    per_node = max(1, min(size, gpus_per_node // stride)) if stride < gpus_per_node else 1
    return Link(size=size, per_node=per_node, span=size * stride)


def intra_node_bandwidth(gpu: GPUSpec, members: int) -> float:
    """GB/s per GPU per direction a group of `members` GPUs inside one node reaches: the switched fabric's
    (NVLink) whatever the group; on a fully connected node (MI300X's Infinity Fabric, one 64 GB/s link per
    peer) only the links to the group's other members carry its traffic: (members - 1) x the link."""
    if gpu.intra_node_peer_gbps is None:
        return gpu.intra_node_gbps
    return min(gpu.intra_node_gbps, max(1, members - 1) * gpu.intra_node_peer_gbps)


def collective_time(kind: str, nbytes: float, link: Link, gpu: GPUSpec, cal: Calibration) -> float:
    """Seconds for one collective of `nbytes` (the full buffer each GPU holds or produces)."""
    n, g = link.size, link.per_node
    if n <= 1 or nbytes <= 0:
        return 0.0
    volume, steps = _VOLUME[kind], _STEPS[kind]
    intra_bw = intra_node_bandwidth(gpu, min(g, n)) * 1e9 * cal.intra_node_efficiency
    inter_bw = gpu.network_gbps(link.span) * 1e9 * cal.inter_node_efficiency
    if g >= n:  # the whole group inside one node
        return volume(n) * nbytes / intra_bw + steps * (n - 1) * cal.intra_node_latency_s
    nodes = -(-n // g)  # nodes the group spans (a partial node still crosses the network)
    t = 0.0
    if g > 1:  # reduce-scatter / all-gather inside the node first (hierarchical; NCCL does this per rail)
        t += volume(g) * nbytes / intra_bw + steps * (g - 1) * cal.intra_node_latency_s
    if kind == "all_to_all":  # every GPU exchanges (n-g)/n of its buffer across the network
        return t + (n - g) / n * nbytes / inter_bw + (nodes - 1) * cal.inter_node_latency_s
    return t + volume(nodes) * (nbytes / g) / inter_bw + steps * (nodes - 1) * cal.inter_node_latency_s


def exposed(comm: float, compute: float) -> float:
    """Seconds a collective adds to the compute it overlaps: what sticks out, plus the compute slowed while
    both run by the SMs NCCL's kernels take (1 / OVERLAP_SM_SHARE_DEN of the overlap; the float twin of
    planner.solve.stages.overlap)."""
    return max(0.0, comm - compute) + min(comm, compute) / OVERLAP_SM_SHARE_DEN


def p2p_time(nbytes: float, across_nodes: bool, gpu: GPUSpec, cal: Calibration) -> float:
    """One point-to-point send (pipeline activations or gradients)."""
    if nbytes <= 0:
        return 0.0
    if across_nodes:
        return nbytes / (gpu.inter_node_gbps * 1e9 * cal.inter_node_efficiency) + cal.inter_node_latency_s
    return nbytes / (intra_node_bandwidth(gpu, 2) * 1e9 * cal.intra_node_efficiency) + cal.intra_node_latency_s


def distinct_holders(experts: int, top_k: int, groups: int) -> float:
    """Expected number of `groups` equal groups of experts holding at least one of a token's top_k distinct
    experts, chosen uniformly (balanced routing): groups x (1 - C(E - E/G, k) / C(E, k))."""
    per = experts / groups
    miss = 1.0
    for i in range(top_k):
        miss *= max(0.0, experts - per - i) / (experts - i)
    return groups * (1.0 - miss)


def dispatch_time(tokens: float, token_bytes: float, top_k: int, experts: int, link: Link, gpu: GPUSpec,
                  cal: Calibration, dispatcher: str = "alltoall", copies: float | None = None) -> float:
    """One MoE dispatch (or combine) of `tokens` tokens per GPU over the expert-parallel group `link`.
    alltoall: one copy per (token, expert), `copies` per token (top_k x capacity factor), an all-to-all
    (GShard; Megatron-core's alltoall dispatcher). deepep: one copy per destination node over the network,
    forwarded over NVLink to each destination GPU once, both at once (deepseek-ai/DeepEP, DeepSeek-V3
    report section 3.2.2)."""
    copies = top_k if copies is None else copies
    n, g = link.size, link.per_node
    if n <= 1 or tokens <= 0:
        return 0.0
    if dispatcher != "deepep":
        return collective_time("all_to_all", tokens * copies * token_bytes, link, gpu, cal)
    scale = copies / top_k                             # capacity padding, if any
    intra_bw = intra_node_bandwidth(gpu, min(g, n)) * 1e9 * cal.intra_node_efficiency
    ranks = distinct_holders(experts, top_k, n) * (n - 1) / n * scale      # GPUs other than this one
    nvlink = tokens * ranks * token_bytes / intra_bw
    if g >= n:
        return nvlink + cal.intra_node_latency_s
    nodes = -(-n // g)
    remote = distinct_holders(experts, top_k, nodes) * (nodes - 1) / nodes * scale
    network = tokens * remote * token_bytes / (gpu.network_gbps(link.span) * 1e9 * cal.inter_node_efficiency)
    return max(nvlink, network) + (nodes - 1) * cal.inter_node_latency_s
