"""The few fitted constants of the cost model, per GPU family, with their fitted values.

Everything else in the cost model is physics (FLOPs, bytes, bandwidths from the catalog). These
constants were fit on ../shared/reference/runs/public.json only (see docs/validation.md); nothing is
keyed to a run. Change them here and nowhere else.
"""
from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Calibration:
    gemm_efficiency: float        # share of dense peak a large GEMM reaches (hardware.md: 70-80% A100, 60-75% H100)
    gemm_half_dim: float          # a GEMM dimension of this size halves efficiency (tile / wave quantisation)
    attention_efficiency: float   # share of peak for fused (flash) attention, counting causal FLOPs only
    hbm_efficiency: float         # share of HBM bandwidth reached by element-wise kernels
    intra_node_efficiency: float  # NCCL bus bandwidth / link rate inside a node (hardware.md: ~230/300 on DGX A100)
    inter_node_efficiency: float  # NCCL bus bandwidth / NIC line rate across nodes (hardware.md: 80-90%)
    intra_node_latency_s: float   # per ring step inside a node
    inter_node_latency_s: float   # per ring step across nodes
    kernel_overhead_s: float      # launch / framework overhead per layer per pass


_DEFAULT = Calibration(
    gemm_efficiency=0.78,
    gemm_half_dim=128.0,
    attention_efficiency=0.30,
    hbm_efficiency=0.80,
    intra_node_efficiency=0.77,
    inter_node_efficiency=0.85,
    intra_node_latency_s=8e-6,
    inter_node_latency_s=15e-6,
    kernel_overhead_s=30e-6,
)

# Fitted by grid search on ../shared/reference/runs/public.json (docs/validation.md): the A100 runs fix
# the defaults (ampere), the H100 runs fix hopper. Families without published runs borrow the nearest.
CALIBRATION: dict[str, Calibration] = {
    "default": _DEFAULT,
    "ampere": _DEFAULT,
    # fit on the 5 H100 runs of public.json: H100 needs larger GEMMs to fill its 132 SMs
    "hopper": replace(_DEFAULT, gemm_efficiency=0.65, gemm_half_dim=512.0, attention_efficiency=0.25),
}
CALIBRATION["blackwell"] = CALIBRATION["hopper"]   # not fitted: no published B200 run in the file


def calibration_for(family: str) -> Calibration:
    """Constants for a GPU family ('ampere', 'hopper', ...); families not fitted use the defaults."""
    return CALIBRATION.get(family, CALIBRATION["default"])
