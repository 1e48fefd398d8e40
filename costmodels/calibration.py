"""The few fitted constants of the cost model, per GPU family, with their fitted values.

Everything else in the cost model is physics (FLOPs, bytes, bandwidths from the catalog). Each constant
below says whether it is *fitted* (on which rows, by which script) or *taken* (from which source).
The fitted ones are produced by `python -m planner.validation.fit` on the declared fit split of the
bundled measurement sets (planner/validation/data; the split rule is in planner/validation/split.py), and
docs/validation.md reports the errors on the held-out rows separately. Nothing is keyed to a run. Change
them here and nowhere else, and rerun the fit (`--check` says whether these values are its output).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache


# Not fitted: NCCL runs its collectives as kernels on the SMs (one block per channel; 8-16 channels is
# the usual choice on 108-132 SM GPUs, NCCL docs NCCL_MIN/MAX_NCHANNELS), so compute that overlaps a
# collective loses about 1/8 of the GPU while both run.
OVERLAP_SM_SHARE_DEN = 8


@dataclass(frozen=True)
class Calibration:
    gemm_efficiency: float        # share of dense peak a large GEMM reaches (docs/reference/hardware.md: 70-80% A100, 60-75% H100)
    gemm_half_dim: float          # a GEMM dimension of this size halves efficiency (tile / wave quantisation)
    attention_efficiency: float   # share of peak for fused (flash) attention, counting causal FLOPs only
    hbm_efficiency: float         # share of HBM bandwidth reached by element-wise kernels
    intra_node_efficiency: float  # NCCL bus bandwidth / link rate inside a node (docs/reference/hardware.md: ~230/300 on DGX A100)
    inter_node_efficiency: float  # NCCL bus bandwidth / NIC line rate across nodes (docs/reference/hardware.md: 80-90%)
    intra_node_latency_s: float   # per ring step inside a node
    inter_node_latency_s: float   # per ring step across nodes
    kernel_overhead_s: float      # launch / framework overhead per layer per pass
    fp8_gemm_efficiency: float = 0.79   # share of the dense FP8 peak a large FP8 GEMM reaches
    # taken, not fitted: a fused causal attention call over this many tokens runs at half its long-sequence
    # speed (FlashAttention-3, Shah et al. 2024, Figure 5, causal, head dim 128, H100: 521 TFLOPS at 2k, 616
    # at 16k, s / (s + s0) with s0 ~ 440; cuDNN's 484 / 539 give ~ 270)
    attention_half_seq: float = 400.0


# taken, not fitted: the largest matmul throughput each GPU reaches, as a share of its dense peak (BF16, FP8),
# measured the same way on every GPU (S. Bekman, ml-engineering, compute/accelerator/README.md, "Maximum
# achievable matmul FLOPS comparison table", mamf-finder: mean of 100 iterations at the best shape found);
# MI300X's FP8 is AMD's own hipBLASLt figure (ROCm blog "Measuring max-achievable FLOPs, part 2", Feb 2025),
# the table has none. A GPU listed here runs its family's constants (or the ones its family borrows) with
# the GEMM shares scaled by its share over the family's reference GPU (REFERENCE_GPU: the GPU of most fit
# rows); an FP8 share not measured follows the BF16 ratio. GPUs not listed (H800, V100, A10, L40S, ...) run
# them as they are. A fitted family's FP8 GEMM share is its 16-bit one times its reference GPU's FP8 / BF16
# matmul share (with_fp8: H100 SXM 70.9% / 80.3%: FP8 GEMMs reach 0.88x the 16-bit share of their doubled
# peak), not fitted.
MATMUL_SHARE: dict[str, tuple[float, float | None]] = {
    "A100-80GB": (271.2 / 312, None),        # "NVIDIA A100 SXM"
    "A100-40GB": (271.2 / 312, None),        # the same SXM chip
    "A100-PCIe-80GB": (252.9 / 312, None),   # "NVIDIA A100 PCIe"
    "H100-SXM": (794.5 / 989, 1402.6 / 1979),
    "H200": (794.5 / 989, 1453.4 / 1979),    # BF16: "H200 is the same"
    "B200": (1745.0 / 2250, 3432.5 / 4500),
    "B300": (1769.0 / 2250, 3353.3 / 4500),
    "GB200": (1822.0 / 2500, 3615.6 / 5000),
    "MI300X": (668.4 / 1300, 1273 / 2614.9),
    "MI325X": (784.9 / 1300, None),
    "MI355X": (1565.0 / 2300, None),
}
REFERENCE_GPU = {"ampere": "A100-80GB", "hopper": "H100-SXM"}


def with_fp8(cal: Calibration, family: str) -> Calibration:
    """`cal` with its FP8 GEMM share derived from its 16-bit one (MATMUL_SHARE of the family's reference GPU;
    the 16-bit share where the reference has no FP8 measurement, as on Ampere, which has no FP8)."""
    bf16, fp8 = MATMUL_SHARE.get(REFERENCE_GPU.get(family, ""), (1.0, None))
    return replace(cal, fp8_gemm_efficiency=round(cal.gemm_efficiency * (fp8 / bf16 if fp8 else 1.0), 4))


_DEFAULT = Calibration(
    # fitted (planner.validation.fit) on the ampere (A100) fit rows of runs-public.json and runs-modern.json
    # (14 predicted rows: Korthikanti 2022, Narayanan 2021, MPT, MegaScale). Before the split and the script
    # (fit by hand on every row of public.json): 0.78, 128, 0.30.
    gemm_efficiency=0.79,
    gemm_half_dim=128.0,
    attention_efficiency=0.25,
    # taken, not fitted: element-wise kernels reach ~80% of HBM bandwidth (assumption, the order STREAM-like
    # kernels reach on A100 / H100)
    hbm_efficiency=0.80,
    # taken: docs/reference/hardware.md (NCCL bus bandwidth ~230 of 300 GB/s inside a DGX A100 node; 80-90%
    # of the NIC line rate across nodes)
    intra_node_efficiency=0.77,
    inter_node_efficiency=0.85,
    # taken, not fitted: per ring step latencies of the order nccl-tests reports for small messages
    intra_node_latency_s=8e-6,
    inter_node_latency_s=15e-6,
    # taken, not fitted: launch / framework overhead per layer per pass (assumption)
    kernel_overhead_s=30e-6,
    # derived (with_fp8): ampere has no FP8 (the A100 rows are bf16/fp16); the 16-bit share stands in
    fp8_gemm_efficiency=0.79,
)

CALIBRATION: dict[str, Calibration] = {
    "default": _DEFAULT,     # taken: ampere's, for families with no fit (volta, ada)
    "ampere": _DEFAULT,
    # fitted (planner.validation.fit) on the hopper (H100 / H200 / H800) fit rows of runs-public.json and
    # runs-modern.json (20 predicted rows, 17 of them modern: Megatron-LM README, Nemotron-4, FP8-LM, MLPerf,
    # Megatron MoE model zoo, DeepSeek-V3, with Llama 3 and MPT): 0.71, 512, 0.20. Before: 0.73, 512, 0.20
    # with the FP8 share fitted apart; by hand on the 5 H100 rows of public.json: 0.65, 512, 0.25.
    # fp8_gemm_efficiency: derived, not fitted (with_fp8: 0.71 x 70.9 / 80.3 = 0.627). Before: fitted on the
    # hopper FP8 fit rows, 0.59, a balance between FP8-LM's 2023 Transformer Engine rows (then 0-7% fast,
    # now 4-11% fast) and MLPerf's 2024-25 ones (then 13-26% slow, now 9-21% slow) that no stated setting
    # separates; the measured kernel ratio decides instead.
    "hopper": with_fp8(replace(_DEFAULT, gemm_efficiency=0.71, gemm_half_dim=512.0, attention_efficiency=0.20),
                       "hopper"),
}
# taken, not fitted: too few rows to fit (one B200, five GB200 and one MI300X row, all held out). The
# newest fitted generation, whose large peaks are also hard to saturate, is the better guess than Ampere.
BORROWING = {"blackwell": "hopper", "cdna3": "hopper", "cdna4": "hopper", "default": "ampere"}
CALIBRATION["blackwell"] = CALIBRATION["hopper"]
CALIBRATION["cdna3"] = CALIBRATION["hopper"]
CALIBRATION["cdna4"] = CALIBRATION["hopper"]
FITTED = ("ampere", "hopper")     # the families with constants of their own (planner.validation.split)



def calibration_for(family: str, gpu: str | None = None) -> Calibration:
    """Constants for a GPU family ('ampere', 'hopper', ...); families not fitted use the defaults. With the
    GPU's catalog name, its GEMM shares scaled by its measured matmul share (MATMUL_SHARE)."""
    cal = CALIBRATION.get(family, CALIBRATION["default"])
    if gpu is None or gpu not in MATMUL_SHARE:
        return cal
    source = family if family in FITTED else BORROWING.get(family, BORROWING["default"])
    ref = MATMUL_SHARE.get(REFERENCE_GPU.get(source, ""))
    return _scaled(cal, *matmul_ratios(MATMUL_SHARE[gpu], ref)) if ref else cal


def matmul_ratios(own: tuple[float, float | None], ref: tuple[float, float | None]) -> tuple[float, float]:
    """(BF16, FP8) matmul share of a GPU over its reference's; FP8 follows BF16 where either lacks it."""
    r16 = own[0] / ref[0]
    return r16, (own[1] / ref[1] if own[1] and ref[1] else r16)


@lru_cache(maxsize=256)
def _scaled(cal: Calibration, r16: float, r8: float) -> Calibration:
    if r16 == 1.0 and r8 == 1.0:
        return cal
    return replace(cal, gemm_efficiency=cal.gemm_efficiency * r16, fp8_gemm_efficiency=cal.fp8_gemm_efficiency * r8)


def calibration_note(family: str, gpu: str | None = None) -> str | None:
    """A warning for a GPU family with no fitted constants of its own (None for a fitted one)."""
    if family in FITTED:
        return None
    source = BORROWING.get(family, BORROWING["default"])
    scaled = (f", GEMM shares scaled by the {gpu}'s measured matmul throughput (costmodels/calibration.py "
              f"MATMUL_SHARE)" if gpu in MATMUL_SHARE else "")
    return (f"no measured runs fit {family} GPUs: speeds use {source}'s fitted constants{scaled} (docs/validation.md "
            f"gives the held-out error of such rows)")


# ---- serving ---------------------------------------------------------------------------------------
# Constants of the inference cost model (costmodels/serving.py, docs/serving.md). GEMM, attention and
# HBM efficiencies are the training ones above (same kernels, same physics); these are the few things
# serving adds. Two are fitted by planner.validation.fit on the fit rows of serving-public.json (12 of its
# 24 TensorRT-LLM rows, all H100) and serving-online.json (14 of its 28 online rows: SGLang on H200, NIM on
# H100, SGLang / vLLM on A10; marked "fitted"); the others are stated assumptions a user can override.
# Nothing is keyed to a run or to a GPU family.


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
    # one-shot custom all-reduce kernels (vLLM custom_all_reduce, TensorRT-LLM): fitted, 17 us (before: 1 us
    # fitted on serving-public.json alone, whose large static batches hide it; the online rows at small batch
    # and tp 2-8 do not). Over PCIe (A10, L40S, H100-PCIe: intra_node_link "PCIe...") NCCL rings through the
    # PCIe switch or, without peer-to-peer, through host memory: 50 us, an assumption (no PCIe row to fit it
    # on), of the order nccl-tests reports for small messages over PCIe.
    allreduce_latency_nvlink_s: float = 17e-6
    allreduce_latency_pcie_s: float = 50e-6
    # Host / launch overhead per transformer layer per forward pass that the GPU work does not hide (the
    # floor of a layer's many small kernels, attention metadata, sampling amortised): fitted, 37 us (before:
    # 0 on serving-public.json alone; the online rows' small-batch decode steps, 35-60 us per layer above the
    # weights' read time, set it; 32 us before an FP8 checkpoint's rows read an FP8 KV cache,
    # costmodels.serving.checkpoint_kv). Fit: grid 0-60 us x NVLink latency 1-21 us, minimum mean
    # |ln(predicted / measured)| over the fit rows (an online row's TTFT and TPOT both), with the training
    # constants above (planner/validation/fit.py).
    layer_overhead_s: float = 37e-6


SERVING = ServingCalibration()
