"""The Blackwell Ultra (B300, GB300 NVL72) and CDNA 4 (MI355X) catalog entries: lookup, datasheet peaks,
node structure, the --gpus parser, the cost model's borrowed-constants warning and a CLI run on each."""

from __future__ import annotations

import json

import pytest

from costmodels.calibration import BORROWING, CALIBRATION, FITTED, calibration_for, calibration_note
from costmodels.comm import intra_node_bandwidth
from hardware import HardwareError, load_catalog, parse_cluster
from planner.cli import main

NEW = ("B300", "GB300", "MI355X")
ALIASES = {
    "B300": ["hgx-b300", "DGX-B300", "b300_sxm", "b300-270gb"],
    "GB300": ["gb300-nvl72", "GB300NVL72", "b300-nvl72"],
    "MI355X": ["mi355", "Instinct-MI355X", "mi355x-288gb"],
}


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def run_main(argv: list[str], capsys) -> tuple[int | str | None, str, str]:
    """planner.cli.main in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


# ---- lookup ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NEW)
def test_resolves_by_name_and_alias(catalog, name):
    gpu, note = catalog.resolve(name)
    assert gpu.name == name and note is None
    assert catalog.resolve(f"  {name.lower()} ")[0].name == name          # case-insensitive, trimmed
    for alias in ALIASES[name]:
        gpu, note = catalog.resolve(alias)
        assert gpu.name == name
        assert note is not None and name in note                          # the note says which GPU an alias picked


def test_catalog_order_and_families(catalog):
    names = catalog.names()
    assert names.index("GB200") < names.index("B300") < names.index("GB300") < names.index("MI300X")
    assert names.index("MI325X") < names.index("MI355X")
    fam = {n: catalog.gpus[n].family for n in NEW}
    assert fam == {"B300": "blackwell", "GB300": "blackwell", "MI355X": "cdna4"}
    assert {catalog.gpus[n].vendor for n in NEW} == {"nvidia", "amd"}


# ---- datasheet figures -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NEW)
def test_dense_fp8_is_twice_dense_bf16(catalog, name):
    # NVIDIA HGX B300: 72 PF FP8 vs 36 PF BF16 (sparse, per 8 GPUs); GB300 NVL72: 720 vs 360 PF (sparse);
    # AMD MI355X: 5.0 vs 2.5 PF dense. The ratio survives halving the sparse figures.
    gpu = catalog.gpus[name]
    assert gpu.peak_tflops("fp8") == pytest.approx(2 * gpu.peak_tflops("bf16"))
    assert gpu.peak_tflops("fp16") == gpu.peak_tflops("bf16")


def test_blackwell_ultra_dense_peaks_equal_blackwell(catalog):
    """Blackwell Ultra raised dense FP4 and cut FP64/INT8; its dense BF16/FP8/TF32 are the B200's and GB200's."""
    b300, b200 = catalog.gpus["B300"], catalog.gpus["B200"]
    gb300, gb200 = catalog.gpus["GB300"], catalog.gpus["GB200"]
    assert b300.tflops == b200.tflops == {"fp32": 75, "tf32": 1100, "bf16": 2250, "fp16": 2250, "fp8": 4500}
    assert gb300.tflops == gb200.tflops == {"fp32": 80, "tf32": 1250, "bf16": 2500, "fp16": 2500, "fp8": 5000}
    # dense, not the 2:4-sparse datasheet figures (9000 / 10000 TF FP8)
    assert b300.peak_tflops("fp8") < 5000 and gb300.peak_tflops("fp8") < 6000


def test_blackwell_ultra_memory_network_power(catalog):
    b300, gb300, b200 = catalog.gpus["B300"], catalog.gpus["GB300"], catalog.gpus["B200"]
    assert (b300.memory_gb, gb300.memory_gb) == (270, 279)           # 288 GB HBM3e physical, usable as listed
    assert b300.memory_gb > b200.memory_gb and gb300.memory_gb <= 288
    assert b300.hbm_gbps == gb300.hbm_gbps == 8000
    assert b300.intra_node_gbps == gb300.intra_node_gbps == 900       # NVLink5 1.8 TB/s bidirectional
    assert b300.inter_node_gbps == gb300.inter_node_gbps == 100       # ConnectX-8, 800 Gb/s per GPU
    assert b300.inter_node_gbps == 2 * b200.inter_node_gbps           # ConnectX-7 400 Gb/s on B200
    assert (b300.tdp_w, gb300.tdp_w) == (1100, 1400)


def test_mi355x_figures(catalog):
    mi = catalog.gpus["MI355X"]
    assert (mi.memory_gb, mi.hbm_gbps, mi.tdp_w) == (288, 8000, 1400)
    # 256 CUs x 2.4 GHz x 8192 FP8 FLOP per CU per clock
    assert mi.peak_tflops("fp8") == pytest.approx(256 * 2.4e9 * 8192 / 1e12, abs=0.1)
    assert mi.peak_tflops("bf16") == pytest.approx(2516.6) and mi.peak_tflops("fp32") == pytest.approx(157.3)
    assert mi.peak_tflops("bf16") > 1.9 * catalog.gpus["MI325X"].peak_tflops("bf16")
    # CDNA 4 has no TF32 matrix hardware: the catalog says so instead of inventing a figure
    assert mi.tflops["tf32"] is None
    with pytest.raises(HardwareError, match="no tf32 peak"):
        mi.peak_tflops("tf32")


def test_sources_state_figures_and_assumptions(catalog):
    for name in NEW:
        gpu = catalog.gpus[name]
        assert gpu.source and gpu.price_source and gpu.price_usd_per_gpu_hour > 0
        assert "sparsity" in gpu.source                                   # which vendor figures were sparse
        assert "assum" in gpu.source.lower()                              # and which figures are assumed
    assert "halved" in catalog.gpus["B300"].source and "halved" in catalog.gpus["GB300"].source
    assert "2516.6" in catalog.gpus["MI355X"].source and "5033.2" in catalog.gpus["MI355X"].source
    assert catalog.gpus["GB300"].price_source.startswith("assumption")
    assert catalog.gpus["MI355X"].price_source.startswith("assumption")


# ---- node structure ------------------------------------------------------------------------------------


def test_structure_copies_the_predecessors(catalog):
    b300, gb300, mi = catalog.gpus["B300"], catalog.gpus["GB300"], catalog.gpus["MI355X"]
    gb200, mi300x = catalog.gpus["GB200"], catalog.gpus["MI300X"]
    assert (b300.gpus_per_node, b300.gpus_per_tray, b300.intra_node_peer_gbps) == (8, None, None)
    assert (gb300.gpus_per_node, gb300.gpus_per_tray) == (gb200.gpus_per_node, gb200.gpus_per_tray) == (72, 4)
    assert gb300.host_memory_gb_per_node == gb200.host_memory_gb_per_node
    assert (mi.gpus_per_node, mi.gpus_per_tray) == (mi300x.gpus_per_node, mi300x.gpus_per_tray) == (8, None)
    assert mi.intra_node_peer_gbps is not None and mi300x.intra_node_peer_gbps is not None


def test_mi355x_fully_meshed_infinity_fabric(catalog):
    """7 links x 153.6 GB/s bidirectional: one peer 76.8 per direction, an 8-GPU group all seven (537.6)."""
    mi = catalog.gpus["MI355X"]
    assert mi.intra_node_gbps == pytest.approx(7 * mi.intra_node_peer_gbps)
    got = [intra_node_bandwidth(mi, g) for g in (2, 4, 8)]
    assert got == pytest.approx([76.8, 3 * 76.8, 537.6])
    b300 = catalog.gpus["B300"]                                          # NVSwitch: every group gets it all
    assert {intra_node_bandwidth(b300, g) for g in (2, 4, 8)} == {900}


def test_parse_cluster_rejects_partial_trays_and_nodes():
    with pytest.raises(HardwareError, match="whole nodes"):
        parse_cluster("75xGB300")
    with pytest.raises(HardwareError):
        parse_cluster("12xMI355X")


# ---- cost model: borrowed constants --------------------------------------------------------------------


@pytest.mark.parametrize("family", ["blackwell", "cdna4"])
def test_unfitted_family_warning_names_it(family):
    assert family not in FITTED
    note = calibration_note(family)
    assert note is not None and family in note and "hopper" in note
    assert BORROWING[family] == "hopper"
    assert calibration_for(family) is CALIBRATION["hopper"]


def test_gpus_scale_their_familys_gemm_shares_by_measured_matmul_throughput():
    # Bekman's mamf-finder table (BF16 / FP8 share of dense peak): H100 SXM 80.3% / 70.9%, H200 the same /
    # 73.4%, B200 77.6% / 76.3%, MI300X 51.4% (FP8 AMD's 1273 of 2615, 48.7%), A100 SXM 86.9%, A100 PCIe 81.1%
    hop = calibration_for("hopper")
    assert calibration_for("hopper", "H100-SXM") == hop and calibration_for("hopper", "H800") == hop
    h200 = calibration_for("hopper", "H200")
    assert h200.gemm_efficiency == hop.gemm_efficiency
    assert h200.fp8_gemm_efficiency == pytest.approx(hop.fp8_gemm_efficiency * 0.734 / 0.709, rel=2e-3)
    b200 = calibration_for("blackwell", "B200")
    assert b200.gemm_efficiency == pytest.approx(hop.gemm_efficiency * 0.776 / 0.803, rel=2e-3)
    assert b200.fp8_gemm_efficiency == pytest.approx(hop.fp8_gemm_efficiency * 0.763 / 0.709, rel=2e-3)
    mi300x = calibration_for("cdna3", "MI300X")          # CDNA3 reaches 0.64x Hopper's share in BF16, 0.69x in FP8
    assert mi300x.gemm_efficiency == pytest.approx(0.640 * hop.gemm_efficiency, rel=2e-3)
    assert mi300x.fp8_gemm_efficiency == pytest.approx(0.687 * hop.fp8_gemm_efficiency, rel=2e-3)
    assert mi300x.attention_efficiency == hop.attention_efficiency and mi300x.gemm_half_dim == hop.gemm_half_dim
    mi325x = calibration_for("cdna3", "MI325X")          # no FP8 figure: its FP8 follows the BF16 ratio
    assert mi325x.fp8_gemm_efficiency / hop.fp8_gemm_efficiency == pytest.approx(0.604 / 0.803, rel=2e-3)
    amp = calibration_for("ampere")
    assert calibration_for("ampere", "A100-PCIe-80GB").gemm_efficiency == pytest.approx(
        amp.gemm_efficiency * 0.811 / 0.869, rel=2e-3)
    assert "MI300X's measured matmul throughput" in calibration_note("cdna3", "MI300X")
    assert "measured matmul" not in calibration_note("blackwell", "GB300")     # no measurement: as borrowed


# ---- CLI -------------------------------------------------------------------------------------------------


def test_cli_plan_64xB300(capsys):
    code, out, err = run_main(["--model", "70b", "--gpus", "64xB300"], capsys)
    assert code == 0, err
    flat = " ".join(out.split())                                         # rich may wrap long lines
    assert "64 x B300 (8 nodes x 8)" in flat
    assert "no measured runs fit blackwell GPUs" in flat
    assert "Best plan" in flat


def test_cli_plan_gb300_and_mi355x_json(capsys):
    for gpus, family, nodes in (("144xGB300", "blackwell", 2), ("8xMI355X", "cdna4", 1)):
        code, out, err = run_main(["--model", "70b", "--gpus", gpus, "--tp", "8", "--format", "json"], capsys)
        assert code == 0, err
        data = json.loads(out)
        assert data["cluster"]["num_nodes"] == nodes
        assert family in data["cluster"]["note"]
        assert data["plans"], "no plan found"


def test_cli_gpus_lists_the_new_entries(capsys):
    code, out, err = run_main(["gpus"], capsys)
    assert code == 0, err
    for name in NEW:
        assert name in out
    code, out, err = run_main(["gpus", "--format", "json"], capsys)
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads(out)}
    assert set(NEW) <= set(rows)
    assert rows["MI355X"]["tflops"]["tf32"] is None and rows["GB300"]["gpus_per_tray"] == 4


def test_rack_scale_launch_runs_one_process_per_tray_gpu():
    # GB200 / GB300 NVL72: a 72-GPU NVLink domain of 18 compute trays, each an OS host with 4 GPUs (NVIDIA
    # GB200 NVL72 datasheet); torchrun starts processes per host, so 256 GPUs are 64 hosts x 4
    from hardware import parse_cluster
    for gpu in ("GB200", "GB300"):
        c = parse_cluster(f"256x{gpu}")
        assert (c.num_hosts, c.gpus_per_host) == (64, 4)
    c = parse_cluster("64xH100")
    assert (c.num_hosts, c.gpus_per_host) == (c.num_nodes, 8)
