"""affiner.planner.hardware.catalog: forgiving lookups, clear errors, NVML names mapped to entries."""

from __future__ import annotations

import pytest

from affiner.planner.errors import AffinerError
from affiner.planner.hardware.catalog import CATALOG, GpuModel, lookup, match_detected, normalize

REQUIRED = (
    "T4",
    "L4",
    "A10G",
    "RTX 3060 12GB",
    "RTX 3090",
    "RTX 4090",
    "RTX 5090",
    "A100 40GB",
    "A100 80GB",
    "L40S",
    "H100 80GB SXM",
    "H200",
)


def test_catalog_holds_the_common_gpus() -> None:
    names = {model.name for model in CATALOG}
    assert set(REQUIRED) <= names
    assert len(names) == len(CATALOG)


@pytest.mark.parametrize("model", CATALOG, ids=lambda m: m.name)
def test_entries_are_consistent(model: GpuModel) -> None:
    assert model.memory > 8 * 1024**3
    assert model.bf16 == (model.tflops_bf16 is not None)
    assert model.bf16 == (model.compute_capability >= (8, 0))
    assert model.tflops_fp32 > 0 and model.bandwidth_gbs > 0
    # tensor (or half-rate) fp16 is never slower than fp32 on these cards
    assert model.tflops_fp16 is not None and model.tflops_fp16 >= model.tflops_fp32
    assert lookup(model.name) is model  # the display name always works as --gpu


@pytest.mark.parametrize(
    ("typed", "name"),
    [
        ("4090", "RTX 4090"),
        ("rtx4090", "RTX 4090"),
        ("RTX 4090", "RTX 4090"),
        ("NVIDIA GeForce RTX 4090", "RTX 4090"),
        ("h100", "H100 80GB SXM"),
        ("H100 PCIe", "H100 80GB PCIe"),
        ("a100-80", "A100 80GB"),
        ("a100 40gb", "A100 40GB"),
        ("3060", "RTX 3060 12GB"),
        ("l4", "L4"),
        ("L40S", "L40S"),
        ("tesla t4", "T4"),
        ("4060 ti", "RTX 4060 Ti 16GB"),
        ("a6000", "RTX A6000"),
    ],
)
def test_lookup_is_forgiving(typed: str, name: str) -> None:
    assert lookup(typed).name == name


def test_unknown_name_lists_close_matches() -> None:
    with pytest.raises(AffinerError) as raised:
        lookup("rtx 4091")
    assert "RTX 4090" in str(raised.value)
    assert "--catalog" in raised.value.hint and "--vram" in raised.value.hint


def test_nonsense_name_still_gives_a_way_out() -> None:
    with pytest.raises(AffinerError, match="unknown GPU 'banana'"):
        lookup("banana")


def test_ambiguous_name_asks_which() -> None:
    with pytest.raises(AffinerError) as raised:
        lookup("A100")
    assert "A100 40GB" in str(raised.value) and "A100 80GB" in str(raised.value)


@pytest.mark.parametrize(
    ("nvml_name", "name"),
    [
        ("NVIDIA H100 80GB HBM3", "H100 80GB SXM"),
        ("NVIDIA H100 PCIe", "H100 80GB PCIe"),
        ("NVIDIA H100 NVL", "H100 NVL 94GB"),
        ("NVIDIA A100-SXM4-80GB", "A100 80GB"),
        ("NVIDIA A100-PCIE-40GB", "A100 40GB"),
        ("NVIDIA A100 80GB PCIe", "A100 80GB PCIe"),
        ("Tesla T4", "T4"),
        ("NVIDIA A10G", "A10G"),
        ("NVIDIA A10", "A10"),
        ("NVIDIA L40", "L40"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA GeForce RTX 3060", "RTX 3060 12GB"),
        ("Tesla V100-SXM2-32GB", "V100 32GB"),
        ("NVIDIA RTX A6000", "RTX A6000"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA GeForce RTX 5090", "RTX 5090"),
    ],
)
def test_match_detected(nvml_name: str, name: str) -> None:
    model = match_detected(nvml_name)
    assert model is not None and model.name == name


def test_match_detected_uses_memory_when_the_name_does_not_say() -> None:
    assert match_detected("NVIDIA A100", memory_total=40 * 1024**3).name == "A100 40GB"
    assert match_detected("NVIDIA A100", memory_total=80 * 1024**3).name == "A100 80GB"
    assert match_detected("NVIDIA A100") is None


def test_unknown_detected_gpu_is_none() -> None:
    assert match_detected("NVIDIA GeForce GTX 1080") is None


def test_normalize_drops_brand_words() -> None:
    assert normalize("NVIDIA GeForce RTX 4090") == normalize("4090") == "4090"
    assert normalize("A100 80GB") == normalize("a100-80")
