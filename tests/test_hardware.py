"""Tests for hardware/: catalog figures, alias resolution, override files and the --cluster parser."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import hardware
from hardware import Catalog, Cluster, GPUSpec, HardwareError, load_catalog, parse_cluster, parse_pools

REQUIRED = ["V100-32GB", "A100-40GB", "A100-80GB", "A100-PCIe-80GB", "H100-SXM", "H100-PCIe",
            "H800", "H200", "B200", "MI300X", "A10", "L40S"]
PRECISIONS = ["fp32", "tf32", "bf16", "fp16", "fp8"]


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def assert_one_line_error(text: str, *needles: str) -> str:
    with pytest.raises(HardwareError) as info:
        parse_cluster(text)
    msg = str(info.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg
    return msg


def spec_dict(catalog: Catalog, base: str, **changes) -> dict:
    """A complete catalog entry copied from `base`, with some fields changed."""
    return {**catalog.gpus[base].model_dump(), **changes}


# ---------------------------------------------------------------- catalog


def test_catalog_has_required_gpus_with_all_precisions(catalog):
    assert set(REQUIRED) <= set(catalog.names())
    assert catalog.names() == list(catalog.gpus)
    for name in REQUIRED:
        gpu = catalog.gpus[name]
        assert list(gpu.tflops) == PRECISIONS
        assert gpu.price_source and gpu.source
        assert 1 <= gpu.gpus_per_node <= 64


def test_datasheet_peaks(catalog):
    # docs/reference/hardware.md / NVIDIA A100 datasheet: 312 TF bf16 dense (624 is the 2:4 sparse figure)
    assert catalog.gpus["A100-80GB"].peak_tflops("bf16") == 312
    # docs/reference/hardware.md / NVIDIA H100 SXM datasheet: 989 TF bf16, 1979 TF fp8 dense
    h100 = catalog.gpus["H100-SXM"]
    assert h100.peak_tflops("bf16") == 989
    assert h100.peak_tflops("fp8") == 1979
    # fp16 equals bf16 where the datasheet gives one figure
    assert h100.peak_tflops("fp16") == 989
    # HGX B200 datasheet: 75 TF FP32 per GPU (600 TF for 8)
    assert catalog.gpus["B200"].peak_tflops("fp32") == 75


def test_a800_and_v100_16gb_differ_only_where_the_datasheet_says(catalog):
    # NVIDIA A800 SXM4 datasheet: the A100-80GB with NVLink cut to 400 GB/s bidir (200 per direction);
    # V100 SXM2 16GB: the 32GB part with half the HBM.
    a100, a800 = catalog.gpus["A100-80GB"], catalog.gpus["A800-80GB"]
    assert (a800.intra_node_gbps, a100.intra_node_gbps) == (200, 300)
    assert a800.tflops == a100.tflops and a800.hbm_gbps == a100.hbm_gbps and a800.memory_gb == 80
    v32, v16 = catalog.gpus["V100-32GB"], catalog.gpus["V100-16GB"]
    assert (v16.memory_gb, v16.tflops, v16.hbm_gbps) == (16, v32.tflops, v32.hbm_gbps)
    assert catalog.resolve("a800")[0].name == "A800-80GB" and catalog.resolve("V100-SXM2-16GB")[0].name == "V100-16GB"


def test_v100_has_no_bf16(catalog):
    v100 = catalog.gpus["V100-32GB"]
    assert v100.peak_tflops("fp16") == 125  # V100 datasheet: 125 TF fp16 tensor
    with pytest.raises(HardwareError, match=r"GPU V100-32GB has no bf16 peak; allowed precisions for it: fp32, fp16"):
        v100.peak_tflops("bf16")
    with pytest.raises(HardwareError, match="unknown precision 'fp4'"):
        v100.peak_tflops("fp4")


def test_memory_bytes_and_links(catalog):
    assert catalog.gpus["A100-80GB"].memory_bytes == 80e9
    # NVLink bidir / 2: A100 600 -> 300, H100 900 -> 450 (docs/reference/hardware.md)
    assert catalog.gpus["A100-80GB"].intra_node_gbps == 300
    assert catalog.gpus["H100-SXM"].intra_node_gbps == 450
    # DGX A100: 200 Gb/s HDR per GPU = 25 GB/s; DGX H100: 400 Gb/s NDR = 50 GB/s (docs/reference/hardware.md)
    assert catalog.gpus["A100-80GB"].inter_node_gbps == 25
    assert catalog.gpus["H100-SXM"].inter_node_gbps == 50


def test_prices_of_one_kind(catalog):
    # The GPUs users compare are priced on one footing, specialist-cloud on-demand (docs/reference/hardware.md
    # lists H200 and B200 so, ~3.5-4.5 and ~5-6; A100 80GB and H100 were hyperscaler list prices there, $5.12 and
    # $12.29, which made every comparison favour H200): each price names its kind, and the sourced ranges hold
    gpus = catalog.gpus
    for name in ("V100-16GB", "A100-40GB", "A100-80GB", "A100-PCIe-80GB", "A10", "L40S", "H100-SXM", "H200", "B200",
                 "MI300X"):
        assert gpus[name].price_kind == "on-demand, specialist cloud", name
    # no hyperscaler list price is left: every price is specialist-cloud on-demand or a stated assumption
    assert not [g.name for g in gpus.values() if g.price_kind == "on-demand, hyperscaler"]
    # Lambda Cloud's list (lambda.ai/instances, 2026-09): V100 16GB $0.79, A100 SXM 40GB $1.99, A10 $1.29
    assert (gpus["V100-16GB"].price_usd_per_gpu_hour, gpus["A100-40GB"].price_usd_per_gpu_hour,
            gpus["A10"].price_usd_per_gpu_hour) == (0.79, 1.99, 1.29)
    assert 1.49 <= gpus["A100-80GB"].price_usd_per_gpu_hour <= 2.49
    assert 2.49 <= gpus["H100-SXM"].price_usd_per_gpu_hour <= 3.99
    assert 3.5 <= gpus["H200"].price_usd_per_gpu_hour <= 4.5 and 5 <= gpus["B200"].price_usd_per_gpu_hour <= 6
    assert "$12.29" in gpus["H100-SXM"].price_source and "$5.12" in gpus["A100-80GB"].price_source
    kinds = {"on-demand, specialist cloud", "on-demand, hyperscaler", "assumption"}
    assert all(g.price_kind in kinds for g in gpus.values())


def test_spec_is_frozen_and_hashable(catalog):
    gpu = catalog.gpus["H100-SXM"]
    with pytest.raises(Exception):
        gpu.memory_gb = 1  # type: ignore[misc]
    assert hash(gpu) == hash(GPUSpec.model_validate(gpu.model_dump()))


def test_tflops_keys_are_checked(catalog):
    bad = spec_dict(catalog, "A100-80GB", tflops={"bf16": 312})
    with pytest.raises(ValueError, match="keys must be exactly fp32, tf32, bf16, fp16, fp8"):
        GPUSpec.model_validate(bad)


# ---------------------------------------------------------------- resolve


def test_resolve_aliases_and_case(catalog):
    gpu, note = catalog.resolve("A100")
    assert gpu.name == "A100-80GB"
    assert note == "A100 -> A100-80GB (SXM, 80 GB)"
    assert catalog.resolve("h100")[0].name == "H100-SXM"
    assert catalog.resolve("H100-SXM5")[0].name == "H100-SXM"
    assert catalog.resolve("h200-sxm")[0].name == "H200"
    assert catalog.resolve("a100-80gb") == (catalog.gpus["A100-80GB"], None)  # canonical: no note
    assert catalog.resolve("  MI300X ")[1] is None


def test_resolve_unknown_suggests(catalog):
    with pytest.raises(HardwareError) as info:
        catalog.resolve("A1000")
    msg = str(info.value)
    assert msg.startswith("unknown GPU 'A1000'; did you mean A100-80GB? known: V100-32GB, A100-40GB")
    assert "\n" not in msg


# ---------------------------------------------------------------- override files


def test_with_file_adds_gpu_and_overrides_price(catalog, tmp_path):
    new = spec_dict(catalog, "H100-SXM", name="H100-NVL", aliases=["h100nvl"], memory_gb=94)
    cheap = spec_dict(catalog, "A100-80GB", price_usd_per_gpu_hour=1.5, price_source="test offer")
    path = tmp_path / "hw.json"
    path.write_text(json.dumps({"schema": "gpus/v1", "gpus": [new, cheap]}))

    extended = load_catalog([path])
    assert extended.names()[-1] == "H100-NVL"
    assert extended.resolve("H100NVL")[0].memory_gb == 94
    assert extended.gpus["A100-80GB"].price_usd_per_gpu_hour == 1.5
    assert extended.names().index("A100-80GB") == catalog.names().index("A100-80GB")  # order kept
    assert catalog.gpus["A100-80GB"].price_usd_per_gpu_hour == 1.99  # original untouched
    assert load_catalog().gpus["A100-80GB"].price_usd_per_gpu_hour == 1.99  # cache untouched


def test_with_file_yaml(catalog, tmp_path):
    yaml = pytest.importorskip("yaml")
    path = tmp_path / "hw.yaml"
    path.write_text(yaml.safe_dump({"schema": "gpus/v1", "gpus": [spec_dict(catalog, "L40S", tdp_w=300)]}))
    assert catalog.with_file(path).gpus["L40S"].tdp_w == 300


def test_bad_file_missing_field(catalog, tmp_path):
    entry = spec_dict(catalog, "H100-SXM", name="X1")
    del entry["hbm_gbps"]
    path = tmp_path / "missing.json"
    path.write_text(json.dumps({"schema": "gpus/v1", "gpus": [entry]}))
    with pytest.raises(HardwareError) as info:
        catalog.with_file(path)
    msg = str(info.value)
    assert str(path) in msg and "entry 0 (X1)" in msg and "hbm_gbps" in msg
    assert "\n" not in msg


def test_bad_file_not_json(catalog, tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(HardwareError, match="not valid JSON") as info:
        catalog.with_file(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "payload, needle",
    [
        ({"schema": "gpus/v2", "gpus": []}, "schema must be 'gpus/v1'"),
        ([1, 2], "expected an object"),
        ({"schema": "gpus/v1", "gpus": [{"name": "X", "bogus": 1}]}, "field 'bogus'"),
    ],
)
def test_bad_file_shapes(catalog, tmp_path, payload, needle):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(payload))
    with pytest.raises(HardwareError, match=needle) as info:
        catalog.with_file(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_file(catalog, tmp_path):
    with pytest.raises(HardwareError, match="cannot read"):
        catalog.with_file(tmp_path / "nope.json")


def test_alias_clash_rejected(catalog, tmp_path):
    clash = spec_dict(catalog, "H100-SXM", name="H100-NVL", aliases=["a100"])
    path = tmp_path / "clash.json"
    path.write_text(json.dumps({"schema": "gpus/v1", "gpus": [clash]}))
    with pytest.raises(HardwareError, match="'a100' is used by both A100-80GB and H100-NVL"):
        catalog.with_file(path)


def test_with_prices(catalog):
    cheaper = catalog.with_prices({"h100": 2.25})
    assert cheaper.gpus["H100-SXM"].price_usd_per_gpu_hour == 2.25
    assert cheaper.gpus["H100-SXM"].price_source == cheaper.gpus["H100-SXM"].price_kind == "user override"
    assert catalog.gpus["H100-SXM"].price_usd_per_gpu_hour == 3.24
    with pytest.raises(HardwareError, match="positive"):
        catalog.with_prices({"A100": -1})
    with pytest.raises(HardwareError, match="unknown GPU"):
        catalog.with_prices({"A1000": 1.0})


# ---------------------------------------------------------------- cluster parser


@pytest.mark.parametrize(
    "text, gpu, nodes, per_node",
    [
        ("1024xA100", "A100-80GB", 128, 8),
        ("1024xA100-80GB", "A100-80GB", 128, 8),
        ("128x8xH100", "H100-SXM", 128, 8),
        ("8xH100", "H100-SXM", 1, 8),
        ("1xA100", "A100-80GB", 1, 1),
        ("4xa100", "A100-80GB", 1, 4),
        ("  16*V100-32gb  ", "V100-32GB", 2, 8),
        ("2 x 16 x v100", "V100-32GB", 2, 16),
        ("8XMI300X", "MI300X", 1, 8),
        ("1000xA100", "A100-80GB", 125, 8),
        ("16xB300", "B300", 2, 8),
        ("64xb300", "B300", 8, 8),
        ("4xB300", "B300", 1, 4),
        ("72xGB300", "GB300", 1, 72),
        ("144xGB300", "GB300", 2, 72),
        ("256xGB300", "GB300", 4, 64),          # whole trays of each rack, as GB200
        ("8xMI355X", "MI355X", 1, 8),
        ("32*mi355x", "MI355X", 4, 8),
        ("2x8xhgx-b300", "B300", 2, 8),
    ],
)
def test_parse_cluster_forms(text, gpu, nodes, per_node):
    c = parse_cluster(text)
    assert (c.gpu.name, c.num_nodes, c.gpus_per_node) == (gpu, nodes, per_node)
    assert c.num_gpus == nodes * per_node


def test_parse_cluster_note_and_describe():
    c = parse_cluster("128x8xH100")
    assert c.num_gpus == 1024 and c.num_nodes == 128
    assert c.describe() == "1024 x H100-SXM (128 nodes x 8)"
    assert c.note == "H100 -> H100-SXM (SXM, 80 GB)"
    assert parse_cluster("1024xA100").note == "A100 -> A100-80GB (SXM, 80 GB)"
    assert parse_cluster("1024xa100-80gb").note is None
    assert parse_cluster("1xA100").describe() == "1 x A100-80GB (1 node x 1)"


def test_parse_cluster_uses_given_catalog(catalog):
    cheap = catalog.with_prices({"A100": 1.0})
    assert parse_cluster("8xA100", cheap).gpu.price_usd_per_gpu_hour == 1.0


@pytest.mark.parametrize(
    "text, needle",
    [
        ("1024A100", "NODESxPER_NODExGPU"),
        ("0xA100", "at least 1"),
        ("-8xH100", "COUNTxGPU"),
        ("1e9xA100", "COUNTxGPU"),
        ("8xA100+", "several GPU pools"),
        ("8xA100+8xH100", "several GPU pools"),
        ("2000000xA100", "at most 1,000,000"),
        ("20000x64xA100", "at most 1,000,000"),
        ("9" * 5000 + "xA100", "absurd"),
        ("2x577xA100", "allowed 1-576"),
        ("2x0xA100", "at least 1"),
        ("8xA1000", "did you mean A100-80GB?"),
        ("8x8", "COUNTxGPU"),
    ],
)
def test_parse_cluster_errors(text, needle):
    assert_one_line_error(text, text.strip()[:60], needle)


def test_parse_cluster_empty():
    for text in ["", "   "]:
        assert_one_line_error(text, "empty cluster", "COUNTxGPU")


def test_parse_cluster_partial_nodes_must_be_whole():
    msg = assert_one_line_error("1020xA100", "1020xA100")
    assert msg == (
        "cluster '1020xA100': 1020 GPUs do not fill whole nodes of 8 A100-80GB; use a multiple of 8 "
        "(e.g. 1016 or 1024) or write NODESxPER_NODExGPU, e.g. 127x8xA100"
    )


def test_cluster_constructor_checks(catalog):
    with pytest.raises(HardwareError):
        Cluster(catalog.gpus["H100-SXM"], 0, 8)
    assert hash(Cluster(catalog.gpus["H100-SXM"], 2, 8)) == hash(Cluster(catalog.gpus["H100-SXM"], 2, 8))


@given(nodes=st.integers(1, 2000), per_node=st.integers(1, 64), sep=st.sampled_from(["x", "X", "*", " x "]))
def test_parse_cluster_explicit_layout_roundtrip(nodes, per_node, sep):
    c = parse_cluster(f"{nodes}{sep}{per_node}{sep}h100")
    assert (c.num_nodes, c.gpus_per_node, c.num_gpus) == (nodes, per_node, nodes * per_node)


# ---------------------------------------------------------------- layering


def test_hardware_imports_nothing_from_costmodels_or_planner():
    root = Path(hardware.__file__).parent
    for source in root.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""] if node.level != 1 else []  # level 1 stays inside hardware/
            else:
                continue
            for m in modules:
                assert m.split(".")[0] not in {"costmodels", "planner"}, f"{source.name} imports {m}"


def test_parse_pools():
    pools = parse_pools("512xA100+256xH100")
    assert [p.gpu.name for p in pools] == ["A100-80GB", "H100-SXM"]
    assert [p.num_gpus for p in pools] == [512, 256]
    assert parse_pools("8xH100")[0].num_gpus == 8


@pytest.mark.parametrize("text, needle", [("8xA100+", "empty pool"), ("+8xA100", "empty pool"),
                                          ("8xA100+8xA100-80GB", "appears in two pools"),
                                          ("8xA100+8xA1000", "did you mean")])
def test_parse_pools_errors(text, needle):
    with pytest.raises(HardwareError) as e:
        parse_pools(text)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


def test_rack_scale_nvlink_domains():
    """GB200 NVL72: a 72-GPU NVLink domain of 4-GPU trays; a job uses whole trays of each rack, as many as
    divide its GPU count (MLPerf Training v5.0's 2496-GPU GB200 system: 39 racks x 64 GPUs)."""
    from hardware import rack_share
    assert parse_cluster("256xGB200").gpus_per_node == 64 and parse_cluster("256xGB200").num_nodes == 4
    assert (parse_cluster("2496xGB200").num_nodes, parse_cluster("2496xGB200").gpus_per_node) == (39, 64)
    assert parse_cluster("144xGB200").gpus_per_node == 72          # two full racks
    assert parse_cluster("64xGB200").num_gpus == 64                 # part of one rack
    gb200 = load_catalog().resolve("GB200")[0]
    assert rack_share(256, gb200) == 64 and rack_share(100, gb200) == 20 and rack_share(75, gb200) is None
    assert rack_share(256, load_catalog().resolve("H100")[0]) is None   # servers, not racks
    with pytest.raises(HardwareError, match="whole nodes"):
        parse_cluster("75xGB200")


def test_fully_connected_nodes_reach_one_link_per_peer():
    """MI300X's Infinity Fabric connects each GPU to each of its 7 peers with one 64 GB/s link (per direction,
    AMD Instinct MI300X data sheet); no switch: a TP-2 group gets one link, an 8-GPU group all seven (448),
    while NVLink's switch gives any H100 group the full 450 GB/s."""
    from costmodels.comm import intra_node_bandwidth
    mi, h100 = load_catalog().resolve("MI300X")[0], load_catalog().resolve("H100")[0]
    assert [intra_node_bandwidth(mi, g) for g in (2, 4, 8)] == [64, 192, 448]
    assert {intra_node_bandwidth(h100, g) for g in (2, 4, 8)} == {h100.intra_node_gbps}
