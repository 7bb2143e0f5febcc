"""affiner.planner.hardware.device: which device a plan is made for, and the CPU's measured or estimated speed."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from affiner.planner.errors import AffinerError
from affiner.planner.hardware.cpu_throughput import (
    estimate_cpu_tflops,
    measure_cpu_tflops,
)
from affiner.planner.hardware.device import (
    GIB,
    cpu_target,
    resolve_target,
    target_from_catalog,
    target_from_gpu,
    target_from_vram,
)
from affiner.planner.hardware.probe import probe
from affiner.planner.hardware.report import CpuInfo, HardwareReport
from tests.fake_nvml import gpu, make_fake_nvml

CPU = CpuInfo(
    model="Test CPU",
    physical_cores=8,
    logical_cores=16,
    bf16=True,
    flags=("avx2", "fma", "avx512f", "avx512_bf16"),
    clock_mhz=3000.0,
)


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No test reads or writes the user's real cache."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("AFFINER_CACHE", str(folder))
    return folder


def report_with(gpus: list[dict], tmp_path: Path) -> HardwareReport:
    report = probe(runs_dir=tmp_path, nvml=make_fake_nvml(gpus))
    return replace(report, cpu=CPU)


def test_detected_gpu_takes_free_memory_from_nvml_and_speed_from_the_catalog(
    tmp_path: Path,
) -> None:
    report = report_with([gpu(memory_total=80 * GIB, memory_used=30 * GIB)], tmp_path)
    target = target_from_gpu(report.gpus[0])
    assert (target.kind, target.source, target.index) == ("cuda", "detected", 0)
    assert target.memory_total == 80 * GIB and target.memory_free == 50 * GIB
    assert target.peak_tflops_bf16 == 989.4 and target.bandwidth_gbs == 3350
    assert target.bf16 and target.compute_capability == (9, 0)


def test_unknown_detected_gpu_has_memory_but_no_speed(tmp_path: Path) -> None:
    report = report_with([gpu(name="NVIDIA Future GPU 9000", compute_capability=(8, 6))], tmp_path)
    target = target_from_gpu(report.gpus[0])
    assert target.memory_free > 0 and target.bf16 and target.fp16
    assert target.peak_tflops_bf16 is None and target.peak_tflops_fp32 is None


def test_catalog_target_assumes_the_whole_card_free() -> None:
    target = target_from_catalog("4090")
    assert (target.name, target.source) == ("RTX 4090", "catalog")
    assert target.memory_free == target.memory_total
    assert target.peak_tflops_bf16 == 165.2


def test_vram_target_is_generic() -> None:
    target = target_from_vram(24)
    assert target.memory_total == target.memory_free == 24 * GIB
    assert target.bf16 and target.peak_tflops_bf16 is None and target.compute_capability is None


@pytest.mark.parametrize("bad", [0, -8, 100_000, "lots"])
def test_bad_vram_is_a_user_error(bad: object) -> None:
    with pytest.raises(AffinerError) as raised:
        target_from_vram(bad)  # type: ignore[arg-type]
    assert raised.value.where == "--vram"


def test_cpu_target_uses_ram_and_estimate_without_measuring(tmp_path: Path) -> None:
    report = report_with([], tmp_path)
    target = cpu_target(report, measure=False)
    assert target.kind == "cpu" and target.is_cpu
    assert target.memory_total == report.ram_total and target.memory_free == report.ram_available
    assert target.bf16 is True and target.fp16 is False and target.measured is False
    # 8 cores x 3 GHz x 64 FLOPs/cycle x 0.7 = 1.0752 TFLOP/s
    assert target.peak_tflops_fp32 == pytest.approx(1.0752)
    assert target.peak_tflops_bf16 == pytest.approx(2 * 1.0752)


def test_cpu_without_bf16_has_no_bf16_speed() -> None:
    plain = replace(CPU, bf16=False, flags=("avx2", "fma"), physical_cores=4, clock_mhz=2000.0)
    estimate = estimate_cpu_tflops(plain)
    assert estimate.tflops_bf16 is None
    assert estimate.tflops_fp32 == pytest.approx(4 * 2.0 * 32 * 0.7 / 1000)


def test_resolution_order(tmp_path: Path) -> None:
    two = report_with([gpu(name="NVIDIA L4"), gpu(name="NVIDIA A10G")], tmp_path)
    none = report_with([], tmp_path)
    assert resolve_target(two, measure=False).name == "NVIDIA L4"
    assert resolve_target(two, gpu_index=1, measure=False).name == "NVIDIA A10G"
    assert resolve_target(two, gpu="h100", measure=False).source == "catalog"
    assert resolve_target(two, vram=12, measure=False).source == "vram"
    assert resolve_target(none, measure=False).kind == "cpu"
    assert resolve_target(two, gpu="cpu", measure=False).kind == "cpu"
    sliced = resolve_target(none, gpu="a100-80", vram=20, measure=False)
    assert sliced.memory_total == 20 * GIB and sliced.peak_tflops_bf16 == 312.0


def test_missing_gpu_index_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(AffinerError) as raised:
        resolve_target(report_with([gpu()], tmp_path), gpu_index=3, measure=False)
    assert "detected: 0" in str(raised.value)


def test_cached_figure_is_used_without_measuring(private_cache: Path) -> None:
    first = measure_cpu_tflops(CPU, measure=False)
    cache = private_cache / "cpu_throughput.json"
    cache.parent.mkdir(parents=True)
    stored = dict(first.to_json(), tflops_fp32=1.5, measured=True, method="seeded")
    cache.write_text(json.dumps({first.key: stored}))
    again = measure_cpu_tflops(CPU, measure=False)
    assert again.tflops_fp32 == 1.5 and again.measured is True


def test_measurement_runs_once_and_is_cached(
    private_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real (tiny) torch matmul: the figure is positive, stored, and reused."""
    pytest.importorskip("torch")
    # A quiet machine, so the figure is final (a busy one may be measured again).
    monkeypatch.setattr("affiner.planner.hardware.cpu_throughput.machine_load", lambda: (0.0, 8))
    measured = measure_cpu_tflops(CPU, size=128, seconds=0.02)
    assert measured.measured is True and measured.tflops_fp32 > 0
    assert measured.tflops_bf16 is not None and measured.tflops_bf16 > 0
    stored = json.loads((private_cache / "cpu_throughput.json").read_text())
    assert stored[measured.key]["tflops_fp32"] == measured.tflops_fp32
    assert measure_cpu_tflops(CPU, size=128, seconds=0.02) == measured  # from the cache
