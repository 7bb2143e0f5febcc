"""affiner.planner.hardware.cpu_throughput: a figure measured on a busy machine is provisional and gets replaced.

The timing itself is faked (`_time_rates`), so these tests neither import torch nor depend on
how loaded the test machine is; `tests/test_device.py` times one real tiny matmul.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import affiner.planner.hardware.cpu_throughput as ct
from affiner.planner.hardware.cpu_throughput import (
    CpuThroughput,
    best_of,
    cached_cpu_tflops,
    is_busy,
    measure_cpu_tflops,
    remeasure_cpu_tflops,
    remeasure_message,
)
from affiner.planner.hardware.report import CpuInfo

CPU = CpuInfo(
    model="Test CPU",
    physical_cores=4,
    logical_cores=8,
    bf16=True,
    flags=("avx2", "fma", "avx512f", "avx512_bf16"),
    clock_mhz=3000.0,
)


class FakeMachine:
    """The load the module sees and the rates its next timings return (fp32; bf16 is twice)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.load = 0.5
        self.rates: list[float] = []
        self.timed = 0
        monkeypatch.setattr(ct, "machine_load", lambda: (self.load, 8))
        monkeypatch.setattr(ct, "_time_rates", self._time_rates)

    def _time_rates(self, cpu: CpuInfo, size: int, seconds: float) -> tuple[float, float, str]:
        self.timed += 1
        rate = self.rates.pop(0)
        return rate, rate * 2, f"fake matmul {size}"


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch) -> FakeMachine:
    return FakeMachine(monkeypatch)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("AFFINER_CACHE", str(folder))
    return folder / ct.CACHE_FILE


def stored(cache: Path) -> dict:
    (entry,) = json.loads(cache.read_text()).values()
    return entry


def test_busy_means_load_above_half_the_cpus() -> None:
    assert not is_busy(4.0, 8) and is_busy(4.01, 8)
    assert not is_busy(None, 8) and not is_busy(3.0, None)


def test_measurement_records_the_load_and_a_quiet_one_is_final(
    machine: FakeMachine, cache: Path
) -> None:
    machine.rates = [0.3]
    result = measure_cpu_tflops(CPU)
    assert (result.tflops_fp32, result.tflops_bf16, result.provisional) == (0.3, 0.6, False)
    entry = stored(cache)
    assert (entry["load_average"], entry["cpu_count"], entry["provisional"]) == (0.5, 8, False)
    machine.rates = [9.9]  # a final figure is never timed again by itself
    assert measure_cpu_tflops(CPU) == result and machine.timed == 1


def test_busy_figure_is_replaced_by_a_faster_quiet_one_never_a_slower(
    machine: FakeMachine, cache: Path
) -> None:
    machine.load, machine.rates = 6.0, [0.1]
    first = measure_cpu_tflops(CPU)
    assert first.provisional and "machine busy (load 6.0 on 8 CPUs)" in first.method
    assert stored(cache)["provisional"] is True

    # Still busy: the provisional figure is used, not timed again.
    assert measure_cpu_tflops(CPU) == first and machine.timed == 1

    # Quiet now: timed again, and the faster figure wins for good.
    machine.load, machine.rates = 1.0, [0.4]
    second = measure_cpu_tflops(CPU)
    assert (second.tflops_fp32, second.provisional, second.load_average) == (0.4, False, 1.0)
    assert cached_cpu_tflops(CPU) == second


def test_a_slower_quiet_measurement_keeps_the_busy_best(machine: FakeMachine, cache: Path) -> None:
    machine.load, machine.rates = 6.0, [0.5]
    measure_cpu_tflops(CPU)
    machine.load, machine.rates = 1.0, [0.2]
    kept = measure_cpu_tflops(CPU)
    assert kept.tflops_fp32 == 0.5 and not kept.provisional
    assert stored(cache)["tflops_fp32"] == 0.5


def test_measure_false_never_times_a_provisional_figure(machine: FakeMachine, cache: Path) -> None:
    machine.load, machine.rates = 6.0, [0.1]
    first = measure_cpu_tflops(CPU)
    machine.load = 0.0
    assert measure_cpu_tflops(CPU, measure=False) == first and machine.timed == 1


def test_remeasure_replaces_even_with_a_slower_figure(machine: FakeMachine, cache: Path) -> None:
    machine.rates = [0.5, 0.25]
    measure_cpu_tflops(CPU)
    before, after = remeasure_cpu_tflops(CPU)
    assert before is not None and (before.tflops_fp32, after.tflops_fp32) == (0.5, 0.25)
    assert stored(cache)["tflops_fp32"] == 0.25
    line = remeasure_message(before, after)
    assert "0.5 → 0.25 TFLOP/s fp32" in line and "bf16 1 → 0.5" in line


def test_remeasure_without_torch_says_nothing_was_timed(
    machine: FakeMachine, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    machine.rates = [0.5]
    measure_cpu_tflops(CPU)
    monkeypatch.setattr(ct, "_time_rates", lambda cpu, size, seconds: None)  # torch is broken
    before, after = remeasure_cpu_tflops(CPU)
    assert before is not None and after is None
    line = remeasure_message(before, after)
    assert "not measured" in line and "0.5 TFLOP/s" in line and "→" not in line
    assert stored(cache)["tflops_fp32"] == 0.5


def test_a_damaged_cache_entry_is_measured_again_not_shown(
    machine: FakeMachine, cache: Path
) -> None:
    machine.rates = [0.5, 0.3]
    measure_cpu_tflops(CPU)
    data = json.loads(cache.read_text())
    (key,) = data
    for field, bad in (("tflops_bf16", "0.8"), ("measured", 1), ("cpu_count", 8.5)):
        data[key] = {**stored(cache), field: bad}
        cache.write_text(json.dumps(data))
        assert ct.cached_cpu_tflops(CPU) is None, field
    assert measure_cpu_tflops(CPU).tflops_fp32 == 0.3  # measured again, and describable
    assert "TFLOP/s" in ct.cached_cpu_tflops(CPU).describe()


def test_remeasure_message_when_nothing_was_cached_and_the_machine_is_busy() -> None:
    after = CpuThroughput(
        0.2, None, True, "m", "k", load_average=7.5, cpu_count=8, provisional=True
    )
    line = remeasure_message(None, after)
    assert "nothing cached → 0.2 TFLOP/s" in line and "provisional" in line
    assert "load 7.5 on 8 CPUs" in line


def test_cache_from_an_older_affiner_loads_as_final(machine: FakeMachine, cache: Path) -> None:
    """Entries without load fields (written before they existed) are used as they are."""
    key = ct.cache_key(CPU, ct._installed_torch_version())
    old = {"tflops_fp32": 1.5, "tflops_bf16": None, "measured": True, "method": "old", "key": key}
    cache.parent.mkdir(parents=True)
    cache.write_text(json.dumps({key: old, "other cpu": {"tflops_fp32": 3.0}}))
    machine.load = 0.0
    loaded = measure_cpu_tflops(CPU)
    assert (loaded.tflops_fp32, loaded.provisional, loaded.load_average) == (1.5, False, None)
    assert machine.timed == 0
    # A newer affiner's extra keys are ignored; a damaged entry is measured again.
    cache.write_text(json.dumps({key: dict(old, future_field=1)}))
    assert measure_cpu_tflops(CPU).method == "old"
    cache.write_text(json.dumps({key: dict(old, tflops_fp32="fast")}))
    machine.rates = [0.7]
    assert measure_cpu_tflops(CPU).tflops_fp32 == 0.7
    assert stored(cache)["tflops_fp32"] == 0.7  # the damaged entry is overwritten


def test_best_of_takes_each_dtype_at_its_best() -> None:
    slow = CpuThroughput(0.1, 0.9, True, "a", "k", provisional=True)
    fast = CpuThroughput(0.3, 0.5, True, "b", "k", provisional=True)
    merged = best_of(slow, fast)
    assert (merged.tflops_fp32, merged.tflops_bf16, merged.method) == (0.3, 0.9, "b")
    assert merged.provisional  # both busy: still provisional
    assert not best_of(slow, CpuThroughput(0.05, None, True, "c", "k")).provisional
