"""Kernel times on one GPU: GEMMs at a shape-dependent efficiency, the attention core, and the
memory-bound element-wise kernels (layer norms, activations, dropout, softmax) at HBM speed.

A GEMM of shape (m, n, k) runs at peak * e * prod(d / (d + d0)) over its three dimensions: large GEMMs
approach e (docs/reference/hardware.md: 70-80% of dense peak on A100, 60-75% on H100), thin ones lose to tile and wave
quantisation. Constants e and d0 live in costmodels.calibration.
"""
from __future__ import annotations

from costmodels.calibration import Calibration


def gemm_efficiency(m: float | None, n: float, k: float, cal: Calibration) -> float:
    """Share of peak of an (m, n, k) GEMM (numpy arrays broadcast). m None: a skinny GEMM whose m does not
    pad to a tile (decode's GEMV / split-K kernels stream the weights), so only n and k enter."""
    d0 = cal.gemm_half_dim
    return cal.gemm_efficiency * (1.0 if m is None else m / (m + d0)) * (n / (n + d0)) * (k / (k + d0))


def gemm_time(m: float, n: float, k: float, peak_flops: float, cal: Calibration) -> float:
    """Seconds for C[m,n] = A[m,k] @ B[k,n] (2mnk FLOPs)."""
    if m <= 0 or n <= 0 or k <= 0:
        return 0.0
    return 2.0 * m * n * k / (peak_flops * gemm_efficiency(m, n, k, cal))


def attention_efficiency(s, cal: Calibration):
    """Share of peak of a fused causal attention call over s query (and key) tokens: short calls lose to
    the diagonal tiles and the launch (numpy arrays broadcast)."""
    return cal.attention_efficiency * s / (s + cal.attention_half_seq)


def memory_bound_time(nbytes: float, hbm_gbps: float, cal: Calibration) -> float:
    """Seconds to stream `nbytes` through HBM (element-wise kernels, optimizer step)."""
    return nbytes / (hbm_gbps * 1e9 * cal.hbm_efficiency)


def mlp_gemm_widths(ffn_type: str, hidden: int, ffn: float, t: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """(n, k) of an MLP's two GEMMs per token row, split over t (Shoeybi et al. 2019: fc1 column-split,
    fc2 row-split): GELU h -> f -> h; SwiGLU fuses gate and up, h -> 2f -> h."""
    f_in = 2 * ffn if ffn_type == "swiglu" else ffn
    return (f_in / t, hidden), (hidden, ffn / t)
