"""One GPU model: the figures the planner needs, with where they come from."""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, field_validator

PRECISIONS = ("fp32", "tf32", "bf16", "fp16", "fp8")


class HardwareError(ValueError):
    """One-line, user-facing message naming the bad value and what is allowed."""


class GPUSpec(BaseModel):
    """A GPU model as the catalog describes it. Units: GB, GB/s (one direction), dense TFLOPS, W, USD."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    aliases: list[str] = []
    vendor: str
    family: str
    memory_gb: float = Field(gt=0)
    hbm_gbps: float = Field(gt=0)
    tflops: dict[str, float | None]  # dense peak per precision; None = not supported
    gpus_per_node: int = Field(ge=1, le=576)   # the NVLink domain: a server (8) or a rack (GB200 NVL72: 72)
    # rack-scale NVLink domains are built of trays: a job uses whole trays of a rack (None: a server)
    gpus_per_tray: int | None = Field(default=None, ge=1, le=64)
    intra_node_gbps: float = Field(gt=0)
    intra_node_link: str
    # a fully connected node (AMD Infinity Fabric: one link per peer) has no switch: a group of g GPUs in it
    # reaches (g - 1) x this per GPU, a point-to-point send one link; None: switched (NVLink), every group
    # reaches intra_node_gbps
    intra_node_peer_gbps: float | None = Field(default=None, gt=0)
    inter_node_gbps: float = Field(gt=0)
    # the network above the leaf switches: a group spanning more than `leaf_gpus` GPUs (a rail group / scalable
    # unit) reaches inter_node_gbps / network_oversubscription (an R:1 oversubscribed spine); 1 and None: a
    # non-blocking fat tree, the catalog's assumption (network_gbps)
    network_oversubscription: float = Field(default=1.0, ge=1.0, allow_inf_nan=False)
    leaf_gpus: int | None = Field(default=None, ge=1)
    pcie_gbps: float = Field(gt=0)
    host_memory_gb_per_node: float = Field(gt=0)
    price_usd_per_gpu_hour: float = Field(gt=0, allow_inf_nan=False)
    price_source: str
    # what kind of price it is: "on-demand, specialist cloud" (the catalog's default kind, so GPUs compare on
    # one footing), "on-demand, hyperscaler" (where no specialist price was found), "assumption", or
    # "user override" (--price)
    price_kind: str = "unstated"
    tdp_w: float = Field(gt=0)
    source: str

    @field_validator("tflops")
    @classmethod
    def _five_precisions(cls, v: dict[str, float | None]) -> dict[str, float | None]:
        if set(v) != set(PRECISIONS):
            raise ValueError(f"keys must be exactly {', '.join(PRECISIONS)} (got {', '.join(v) or 'none'})")
        for k, x in v.items():
            if x is not None and not (math.isfinite(x) and x > 0):
                raise ValueError(f"{k} peak must be a positive number or null (got {x})")
        return {k: v[k] for k in PRECISIONS}  # canonical key order

    def __hash__(self) -> int:  # dict/list fields are unhashable; equal specs share a name
        return hash(self.name)

    def network_gbps(self, span_gpus: int = 0) -> float:
        """GB/s per GPU across nodes for a group whose members lie within `span_gpus` consecutive GPUs: the
        NIC rate, divided by the oversubscription once the group reaches beyond one leaf (its ring's slowest
        hops cross the spine)."""
        if self.leaf_gpus is not None and span_gpus > self.leaf_gpus:
            return self.inter_node_gbps / self.network_oversubscription
        return self.inter_node_gbps

    def peak_tflops(self, precision: str) -> float:
        """Dense peak TFLOPS at `precision` (fp32, tf32, bf16, fp16, fp8)."""
        p = precision.strip().lower()
        if p not in self.tflops:
            raise HardwareError(f"unknown precision '{precision}'; allowed: {', '.join(PRECISIONS)}")
        value = self.tflops[p]
        if value is None:
            ok = ", ".join(k for k, x in self.tflops.items() if x is not None)
            raise HardwareError(f"GPU {self.name} has no {p} peak; allowed precisions for it: {ok}")
        return value

    @property
    def memory_bytes(self) -> float:
        """Usable device memory in bytes: memory_gb * 1e9.

        Assumption: the HBM is physically memory_gb GiB (an "80 GB" A100 reports 81920 MiB); counting it
        as 1e9-byte GB leaves the ~7% GiB/GB difference as headroom for the CUDA context, NCCL buffers and
        allocator fragmentation.
        """
        return self.memory_gb * 1e9
