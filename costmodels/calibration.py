"""The few fitted constants of the cost model, per GPU family, with their fitted values.

Everything else in the cost model is physics (FLOPs, bytes, bandwidths from the catalog). These
constants were fit on ../shared/reference/runs/public.json only (see docs/validation.md); nothing is
keyed to a run. Change them here and nowhere else.
"""
from __future__ import annotations

from dataclasses import dataclass, replace


# Not fitted: NCCL runs its collectives as kernels on the SMs (one block per channel; 8-16 channels is
# the usual choice on 108-132 SM GPUs, NCCL docs NCCL_MIN/MAX_NCHANNELS), so compute that overlaps a
# collective loses about 1/8 of the GPU while both run.
OVERLAP_SM_SHARE_DEN = 8


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
# not fitted (no published run in the file): the newest fitted generation, whose large peaks are also
# hard to saturate, is the better guess than Ampere for Blackwell and AMD CDNA3
CALIBRATION["blackwell"] = CALIBRATION["hopper"]
CALIBRATION["cdna3"] = CALIBRATION["hopper"]


def calibration_for(family: str) -> Calibration:
    """Constants for a GPU family ('ampere', 'hopper', ...); families not fitted use the defaults."""
    return CALIBRATION.get(family, CALIBRATION["default"])


# ---- serving ---------------------------------------------------------------------------------------
# Constants of the inference cost model (costmodels/serving.py, docs/serving.md). GEMM, attention and
# HBM efficiencies are the training ones above (same kernels, same physics); these are the few things
# serving adds. Two are fitted on ../shared/reference/serving/public.json only (marked "fitted"); the
# others are stated assumptions a user can override. Nothing is keyed to a run or to a GPU family.


@dataclass(frozen=True)
class ServingCalibration:
    # Share of GPU memory the engine may use for weights + KV cache + activations (vLLM's
    # --gpu-memory-utilization default 0.9); the rest is left to the CUDA context and other processes.
    gpu_memory_utilization: float = 0.90
    # Tokens of one prefill forward pass the engine sizes its activation workspace for (vLLM's
    # max_num_batched_tokens for chunked prefill, 8192 in its offline defaults); assumption.
    prefill_chunk_tokens: int = 8192
    # CUDA graphs, NCCL / custom all-reduce buffers, sampler and allocator slack per GPU; assumption.
    workspace_bytes: float = 1.0e9
    # Fixed latency of one small all-reduce of the tensor-parallel group. Over NVLink / NVSwitch engines run
    # one-shot custom all-reduce kernels (vLLM custom_all_reduce, TensorRT-LLM): fitted, 5 us. Over PCIe
    # (A10, L40S, H100-PCIe: intra_node_link "PCIe...") NCCL rings through the PCIe switch or, without
    # peer-to-peer, through host memory: 50 us, an assumption (public.json has no PCIe run to fit it on), of
    # the order nccl-tests reports for small messages over PCIe.
    allreduce_latency_nvlink_s: float = 5e-6
    allreduce_latency_pcie_s: float = 50e-6
    # Host / launch overhead per transformer layer per forward pass that the GPU work does not hide
    # (kernel launches, attention metadata, sampling amortised): fitted, 15 us.
    # Fit (docs/serving.md): grid layer_overhead 0-60 us x NVLink latency 2-20 us on the 24 rows of
    # public.json; the median |error| is flat (8.1-8.9%) for overhead <= 15 us and latency <= 12 us (all 24
    # rows within 20% up to 8 us); the values kept are the ones in that flat region closest to independent evidence (custom
    # all-reduce ~5 us, ~15 us of launches per layer), not the grid's arg-min (0 us, 2 us; median 8.1%).
    layer_overhead_s: float = 15e-6


SERVING = ServingCalibration()
