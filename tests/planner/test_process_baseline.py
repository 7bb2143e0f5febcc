"""The CPU process baseline: measured in a child, cached, used by the CPU memory model and named
in the plan; and glibc's heap retention on top of the tensors."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

import affiner.planner.hardware.process_baseline as pb
from affiner.planner.hardware.device import DeviceTarget, cpu_target
from affiner.planner.hardware.probe import probe
from affiner.planner.hardware.report import CpuInfo
from affiner.planner.memory.activations import estimate_activations
from affiner.planner.memory.peak import (
    CPU_HEAP_BLOCKS,
    CPU_HEAP_RETENTION,
    CPU_RUNTIME,
    GLIBC_MMAP_MAX,
    estimate_memory,
    heap_growth,
)
from affiner.planner.models.shapes import spec_from_config
from affiner.planner.settings import TrainSettings
from affiner.planner.units import MIB
from tests.fake_nvml import make_fake_nvml

CPU = CpuInfo(model="Test CPU", physical_cores=4, logical_cores=8, bf16=False, flags=("avx2",))
CPU_DEVICE = DeviceTarget("cpu", "CPU (test)", "cpu", 64 << 30, 60 << 30, False, False)

SMALL_LLAMA = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "vocab_size": 8192,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
}


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("AFFINER_CACHE", str(folder))
    return folder


@pytest.fixture
def child(monkeypatch: pytest.MonkeyPatch) -> list[dict | None]:
    """The child's answers, in order; every call is recorded by popping one."""
    answers: list[dict | None] = [
        {"rss": 600 * MIB, "peak_rss": 700 * MIB, "method": "fake child"},
        {"rss": 650 * MIB, "peak_rss": 800 * MIB, "method": "fake child"},
    ]
    monkeypatch.setattr(pb, "run_child", lambda timeout=pb.CHILD_TIMEOUT: answers.pop(0))
    return answers


def test_measured_once_in_a_child_then_cached(child: list, private_cache: Path) -> None:
    first = pb.measure_process_baseline(CPU)
    assert first is not None and first.measured and first.peak_rss == 700 * MIB
    assert len(child) == 1  # the child ran once
    cached = json.loads((private_cache / pb.CACHE_FILE).read_text())
    assert [entry["peak_rss"] for entry in cached.values()] == [700 * MIB]
    again = pb.measure_process_baseline(CPU)
    assert again == first and len(child) == 1  # from the cache: no second child
    assert pb.cached_process_baseline(CPU) == first
    # the key carries the library versions: another torch is another measurement
    assert "torch " in first.key and "transformers " in first.key


def test_without_measuring_nothing_runs_and_none_comes_back(child: list) -> None:
    assert pb.measure_process_baseline(CPU, measure=False) is None
    assert len(child) == 2


def test_refresh_replaces_the_cached_figure(child: list) -> None:
    pb.measure_process_baseline(CPU)
    before, after = pb.remeasure_process_baseline(CPU)
    assert before is not None and after is not None
    assert (before.peak_rss, after.peak_rss) == (700 * MIB, 800 * MIB)
    assert pb.cached_process_baseline(CPU) == after
    line = pb.remeasure_message(before, after)
    assert "700 MiB → 800 MiB" in line


def test_a_failed_or_garbled_child_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = [None, {"rss": "lots", "peak_rss": True}]
    monkeypatch.setattr(pb, "run_child", lambda timeout=pb.CHILD_TIMEOUT: answers.pop(0))
    assert pb.measure_process_baseline(CPU) is None
    # a child that failed here is not started again by every plan ...
    assert pb.measure_process_baseline(CPU) is None and len(answers) == 1
    # ... only when asked to measure again (here it answers garbage: nothing is kept)
    assert pb.measure_process_baseline(CPU, refresh=True) is None and answers == []
    assert pb.cached_process_baseline(CPU) is None  # nothing wrong was cached
    assert "plans use a constant" in pb.remeasure_message(None, None)


def test_run_child_reads_the_last_json_line(monkeypatch: pytest.MonkeyPatch) -> None:
    out = 'a library warning\n{"rss": 1, "peak_rss": 2}\n'
    done = subprocess.CompletedProcess([], 0, stdout=out, stderr="")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: done)
    assert pb.run_child() == {"rss": 1, "peak_rss": 2}
    failed = subprocess.CompletedProcess([], 1, stdout=out, stderr="boom")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: failed)
    assert pb.run_child() is None


def test_cpu_target_carries_the_measured_baseline(
    child: list, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import affiner.planner.hardware.cpu_throughput as ct

    report = replace(probe(runs_dir=tmp_path, nvml=make_fake_nvml([])), cpu=CPU)
    assert cpu_target(report, measure=False).process_baseline is None
    estimate = ct.measure_cpu_tflops  # the matmul rate is not what this test is about
    monkeypatch.setattr(
        ct, "measure_cpu_tflops", lambda cpu, measure=True: estimate(cpu, measure=False)
    )
    target = cpu_target(report, measure=True)
    assert target.process_baseline == 700 * MIB
    # and later plans read the cache without a child, even when told not to measure
    assert cpu_target(report, measure=False).process_baseline == 700 * MIB
    assert len(child) == 1


def small(**kw) -> tuple:
    spec = spec_from_config(SMALL_LLAMA, name="small-llama")
    shape = {"micro_batch": 2, "seq_len": 128} | kw
    settings = TrainSettings(method="lora", precision="fp32", **shape)
    return spec, settings


def test_the_cpu_peak_uses_the_measured_baseline_and_says_so() -> None:
    spec, settings = small()
    measured = estimate_memory(spec, settings, replace(CPU_DEVICE, process_baseline=1200 * MIB))
    assumed = estimate_memory(spec, settings, CPU_DEVICE)
    assert measured.details["process_baseline"] == 1200 * MIB
    assert measured.details["process_baseline_measured"] == 1
    assert measured.notes == ["process baseline measured on this machine: 1.17 GiB"]
    assert assumed.details["process_baseline"] == CPU_RUNTIME
    assert assumed.details["process_baseline_measured"] == 0
    assert "not measured" in assumed.notes[0] and "--remeasure-cpu" in assumed.notes[0]
    assert measured.peak_bytes - assumed.peak_bytes == 1200 * MIB - CPU_RUNTIME
    assert measured.to_json()["notes"] == measured.notes  # `affiner plan --json` shows it


def test_the_cpu_peak_adds_what_glibc_keeps_of_the_heap_transients() -> None:
    spec, settings = small()
    est = estimate_memory(spec, settings, replace(CPU_DEVICE, process_baseline=500 * MIB))
    d = est.details
    assert est.phase == "backward"
    # this batch's vocabulary tensors (2x128x8192 fp32 = 8 MiB) are heap blocks too
    assert d["logits_saved"] <= GLIBC_MMAP_MAX
    assert d["heap_transient"] == est.activations + est.logits
    assert d["heap_retained"] == int(
        heap_growth(None)
        * (d["heap_transient"] * CPU_HEAP_RETENTION + per_block(spec, settings) * CPU_HEAP_BLOCKS)
    )
    assert est.peak_bytes == d["allocated_peak"] + 500 * MIB + d["heap_retained"]
    assert est.overhead == 500 * MIB + d["heap_retained"]
    # a GPU's caching allocator has its own slack: no glibc term there
    gpu = replace(CPU_DEVICE, kind="cuda", compute_capability=(9, 0))
    assert "heap_retained" not in estimate_memory(spec, settings, gpu).details


def test_vocabulary_tensors_over_glibcs_mmap_ceiling_are_returned_not_kept() -> None:
    spec, settings = small(micro_batch=16, seq_len=512)  # 16x512x8192 fp32 = 256 MiB each
    est = estimate_memory(spec, settings, CPU_DEVICE)
    d = est.details
    assert d["logits_saved"] > GLIBC_MMAP_MAX
    assert d["heap_transient"] == d["activations_saved"]
    assert d["heap_retained"] == int(
        heap_growth(None)
        * (
            d["activations_saved"] * CPU_HEAP_RETENTION
            + per_block(spec, settings) * CPU_HEAP_BLOCKS
        )
    )


def per_block(spec, settings) -> int:
    return estimate_activations(spec, settings, "cpu").per_block


def test_the_cpu_heap_grows_with_the_runs_steps_and_a_gpu_does_not() -> None:
    """glibc keeps more as new batch shapes arrive; a run's length is part of a CPU plan."""
    spec, settings = small()
    peaks = [
        estimate_memory(spec, settings, CPU_DEVICE, steps=n).peak_bytes for n in (5, 20, 250, 5000)
    ]
    assert peaks[0] == peaks[1] < peaks[2] < peaks[3]  # measured from 20 steps on; no shrink below
    assert estimate_memory(spec, settings, CPU_DEVICE).peak_bytes == peaks[2]  # unknown: 250
    assert heap_growth(20) == 1.0 and 1.2 < heap_growth(250) < 1.4
    gpu = replace(CPU_DEVICE, kind="cuda", compute_capability=(9, 0))
    assert len({estimate_memory(spec, settings, gpu, steps=n).peak_bytes for n in (5, 5000)}) == 1


def test_real_child_reports_the_runners_libraries_resident() -> None:
    """One real measurement (about 10 s: the imports dominate)."""
    answer = pb.run_child()
    assert answer is not None
    assert answer["peak_rss"] >= answer["rss"] > 200 * MIB  # torch alone is ~220 MiB
    assert "torch" in answer["method"]
    # importing the module that starts the child stays light
    code = "import affiner.planner.hardware.process_baseline, sys; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "False"
