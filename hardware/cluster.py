"""A homogeneous GPU cluster and the parser for "--cluster 1024xA100" / "128x8xH100"."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .catalog import Catalog, load_catalog
from .gpu import GPUSpec, HardwareError

MAX_GPUS = 1_000_000  # sanity bound: far beyond any training cluster built so far
MAX_GPUS_PER_NODE = 576  # an NVLink domain: 8-16 GPUs per server, 72 per GB200 NVL72 rack, up to NVL576

FORMS = "COUNTxGPU (e.g. 1024xA100) or NODESxPER_NODExGPU (e.g. 128x8xH100)"
# COUNT [x|*] [PER_NODE [x|*]] GPU; ASCII digits only, so "1e9" or "-8" do not match.
_PATTERN = re.compile(r"([0-9]+)\s*[x*]\s*(?:([0-9]+)\s*[x*]\s*)?([a-z][a-z0-9_ .-]*)", re.ASCII | re.IGNORECASE)


@dataclass(frozen=True)
class Cluster:
    gpu: GPUSpec
    num_nodes: int
    gpus_per_node: int
    note: str | None = None  # alias-resolution note to show the user

    def __post_init__(self) -> None:
        if self.num_nodes < 1 or not 1 <= self.gpus_per_node <= MAX_GPUS_PER_NODE:
            raise HardwareError(
                f"cluster of {self.num_nodes} nodes x {self.gpus_per_node} GPUs: need >= 1 node "
                f"and 1-{MAX_GPUS_PER_NODE} GPUs per node"
            )

    @property
    def num_gpus(self) -> int:
        return self.num_nodes * self.gpus_per_node

    @property
    def gpus_per_host(self) -> int:
        """GPUs one operating-system host drives (what a launcher's processes per node is): the node's, or on
        a rack-scale system (gpu.gpus_per_tray, e.g. GB200 NVL72) one compute tray's."""
        tray = self.gpu.gpus_per_tray
        return tray if tray and self.gpus_per_node % tray == 0 else self.gpus_per_node

    @property
    def num_hosts(self) -> int:
        return self.num_gpus // self.gpus_per_host

    def describe(self) -> str:
        nodes = "node" if self.num_nodes == 1 else "nodes"
        return f"{self.num_gpus} x {self.gpu.name} ({self.num_nodes} {nodes} x {self.gpus_per_node})"


def rack_share(count: int, gpu: GPUSpec, domain: int | None = None) -> int | None:
    """GPUs of each NVLink domain a job of `count` GPUs uses on a rack-scale system (gpu.gpus_per_tray set,
    e.g. GB200 NVL72: 72-GPU racks of 4-GPU trays): the largest number of whole trays, at most a rack, that
    divides the count (256 or 2496 GPUs: 64 of each 72-GPU rack, as MLPerf's GB200 systems run). None for
    server-based GPUs, or when no number of trays divides the count."""
    tray, domain = gpu.gpus_per_tray, domain or gpu.gpus_per_node
    if not tray:
        return None
    for share in range(domain - domain % tray, 0, -tray):
        if count % share == 0:
            return share
    return None


def _count(digits: str, what: str, text: str) -> int:
    if len(digits) > 7 or int(digits) > MAX_GPUS:  # length check first: huge strings stay cheap
        raise HardwareError(f"cluster '{text}': {what} {digits} is absurd; at most {MAX_GPUS:,} GPUs in all")
    n = int(digits)
    if n < 1:
        raise HardwareError(f"cluster '{text}': {what} must be at least 1; write {FORMS}")
    return n


def parse_cluster(text: str, catalog: Catalog | None = None) -> Cluster:
    """Parse "1024xA100", "128x8xH100", "8*H100", ...; case-insensitive, 'x' or '*' as separators."""
    t = text.strip()
    if not t:
        raise HardwareError(f"empty cluster; write {FORMS}")
    if "+" in t:
        raise HardwareError(f"cluster '{t}' has several GPU pools (A+B); this needs one GPU type, write {FORMS}")
    m = _PATTERN.fullmatch(t)
    if m is None:
        raise HardwareError(f"cluster '{t}' not understood; write {FORMS}")
    first, per_node_digits, gpu_text = m.groups()
    try:
        gpu, note = (catalog or load_catalog()).resolve(gpu_text)
    except HardwareError as e:
        raise HardwareError(f"cluster '{t}': {e}") from None

    if per_node_digits is not None:  # NODES x PER_NODE x GPU
        nodes = _count(first, "node count", t)
        per_node = _count(per_node_digits, "GPUs per node", t)
        if per_node > MAX_GPUS_PER_NODE:
            raise HardwareError(f"cluster '{t}': {per_node} GPUs per node; allowed 1-{MAX_GPUS_PER_NODE}")
        if nodes * per_node > MAX_GPUS:
            raise HardwareError(f"cluster '{t}': {nodes * per_node:,} GPUs is absurd; at most {MAX_GPUS:,}")
        return Cluster(gpu, nodes, per_node, note)

    count = _count(first, "GPU count", t)
    per_node = gpu.gpus_per_node
    if count < per_node:  # fewer GPUs than one server: one partial node
        return Cluster(gpu, 1, count, note)
    if count % per_node and (share := rack_share(count, gpu)):
        rack = f"{count // share} NVLink domains (racks) of {share} of their {per_node} {gpu.name}"
        return Cluster(gpu, count // share, share, f"{note}; {rack}" if note else rack)
    if count % per_node:
        nodes = count // per_node
        raise HardwareError(
            f"cluster '{t}': {count} GPUs do not fill whole nodes of {per_node} {gpu.name}; use a multiple of "
            f"{per_node} (e.g. {nodes * per_node} or {(nodes + 1) * per_node}) or write NODESxPER_NODExGPU, "
            f"e.g. {nodes}x{per_node}x{gpu_text}"
        )
    return Cluster(gpu, count // per_node, per_node, note)


def parse_pools(text: str, catalog: Catalog | None = None) -> tuple[Cluster, ...]:
    """Parse a cluster of one or more GPU pools, "512xA100+256xH100": each pool as in parse_cluster."""
    t = text.strip()
    parts = t.split("+")
    if len(parts) > 1 and any(not p.strip() for p in parts):
        raise HardwareError(f"cluster '{t}': an empty pool around '+'; write POOL+POOL, e.g. 512xA100+256xH100")
    if len(parts) > 8:
        raise HardwareError(f"cluster '{t}': {len(parts)} pools; at most 8 GPU pools are allowed")
    pools = tuple(parse_cluster(p, catalog) for p in parts)
    names = [p.gpu.name for p in pools]
    if len(set(names)) != len(names):
        raise HardwareError(f"cluster '{t}': GPU type {max(names, key=names.count)} appears in two pools; "
                            f"merge them into one count")
    return pools
