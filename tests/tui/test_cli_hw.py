"""``affiner hw``: JSON shape and exit codes, tables drawn from the fake NVML, and no heavy imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from affiner.tui.cli.entry import main
from affiner.tui.cli.hw import memory_bar, usage_colour
from tests.fake_nvml import GIB, NVMLError_NotSupported, ProcessInfo, gpu, make_fake_nvml

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "textual", "peft", "bitsandbytes", "datasets", "accelerate")


@pytest.fixture
def fake_gpus(monkeypatch: pytest.MonkeyPatch, runs_dir: Path) -> None:
    """Two GPUs behind the real `import pynvml` boundary: one busy H100, one stingy T4."""
    busy = gpu(
        memory_total=80 * GIB,
        memory_used=70 * GIB,
        compute_processes=[ProcessInfo(pid=os.getpid(), usedGpuMemory=69 * GIB)],
    )
    stingy = gpu(
        name=b"Tesla T4",
        compute_capability=(7, 5),
        memory_total=15 * GIB,
        memory_used=GIB,
        temperature=NVMLError_NotSupported,
        power=NVMLError_NotSupported,
        power_limit=NVMLError_NotSupported,
    )
    monkeypatch.setitem(sys.modules, "pynvml", make_fake_nvml([busy, stingy]))


def test_json_with_gpus(fake_gpus: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hw", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) >= {"gpus", "gpu_reason", "driver_version", "cpu", "ram_total", "disk_free"}
    h100, t4 = data["gpus"]
    assert h100["memory_free"] == 10 * GIB and h100["compute_capability"] == [9, 0]
    assert h100["processes"][0]["used_bytes"] == 69 * GIB
    assert t4["name"] == "Tesla T4" and t4["bf16"] is False and t4["temperature_c"] is None
    assert data["cuda_driver_version"] == "12.4"


def test_json_without_gpu_exits_zero(
    monkeypatch: pytest.MonkeyPatch, runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", make_fake_nvml([]))
    assert main(["hw", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["gpus"] == [] and "no GPUs" in data["gpu_reason"]


def test_json_with_a_catalog_gpu(fake_gpus: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hw", "--json", "--gpu", "rtx 4090"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["target"]["name"] == "RTX 4090" and data["target"]["source"] == "catalog"


def test_unknown_gpu_is_a_clean_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hw", "--gpu", "rtx 4091"]) == 2
    err = capsys.readouterr().err
    assert "unknown GPU 'rtx 4091'" in err and "RTX 4090" in err and "Traceback" not in err


def test_tables_render(fake_gpus: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hw"]) == 0
    out = capsys.readouterr().out
    assert "H100 80GB HBM3" in out and "Tesla T4" in out  # brand words dropped for width
    assert "70.0/80.0 GiB, 10.0 GiB free" in out and "9.0" in out and "7.5" in out
    assert "N/A" in out  # the T4's refused temperature and power
    assert "Processes holding GPU memory" in out and str(os.getpid()) in out
    assert "Machine" in out and "RAM" in out and "Disk" in out
    assert max(len(line.rstrip()) for line in out.splitlines()) <= 80


def test_table_without_gpu_says_why(
    monkeypatch: pytest.MonkeyPatch, runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert main(["hw"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "No GPU:" in out and "nvidia-ml-py is not installed" in out


def test_catalog_listing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hw", "--catalog", "--json"]) == 0
    names = [model["name"] for model in json.loads(capsys.readouterr().out)]
    assert "H100 80GB SXM" in names and "RTX 3060 12GB" in names
    assert main(["hw", "--catalog"]) == 0
    assert "RTX 5090" in capsys.readouterr().out


def test_gauge_colours_follow_thresholds() -> None:
    assert usage_colour(0.1) == "green"
    assert usage_colour(0.6) == "yellow"
    assert usage_colour(0.9) == "red"
    assert memory_bar(0, 0) == "N/A"
    assert memory_bar(70 * GIB, 80 * GIB).startswith("[red]")


def test_hw_json_imports_nothing_heavy(tmp_path: Path) -> None:
    """The real command in a fresh interpreter: valid JSON, exit 0, no torch/Textual loaded."""
    env = dict(os.environ, PYTHONPATH=str(REPO), AFFINER_RUNS=str(tmp_path / "runs"))
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "affiner", "hw", "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "gpus" in json.loads(done.stdout)
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "affiner.planner.hardware.probe" in imported  # the import-time log is being read
    assert not [name for name in HEAVY if name in imported]


@pytest.fixture
def fake_timing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """A private CPU-rate cache, a quiet machine, and matmul timings that return these rates;
    the process-baseline child answers 500 MiB, then 600 MiB."""
    import affiner.planner.hardware.cpu_throughput as ct
    import affiner.planner.hardware.process_baseline as pb

    monkeypatch.setenv("AFFINER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(ct, "machine_load", lambda: (0.0, 4))
    rates = [0.25, 0.5]
    monkeypatch.setattr(ct, "_time_rates", lambda cpu, size, s: (rates.pop(0), None, "fake"))
    peaks = [500 << 20, 600 << 20]
    monkeypatch.setattr(
        pb, "run_child", lambda timeout=0: {"rss": 400 << 20, "peak_rss": peaks.pop(0)}
    )
    return rates


def test_remeasure_cpu_says_old_and_new(
    fake_timing: list[float],
    runs_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", make_fake_nvml([]))
    assert main(["hw", "--remeasure-cpu"]) == 0
    first = capsys.readouterr().out
    assert "re-measured: nothing cached → 0.25 TFLOP/s fp32" in first
    assert "CPU matmul  0.25 TFLOP/s fp32 (measured)" in first  # the Machine table's row
    assert main(["hw", "--json", "--remeasure-cpu"]) == 0
    second = capsys.readouterr()
    assert "0.25 → 0.5 TFLOP/s fp32" in second.err  # stdout stays pure JSON
    assert "CPU process baseline re-measured: nothing cached → 500 MiB" in first
    assert "500 MiB → 600 MiB" in second.err
    data = json.loads(second.out)
    rates = data["cpu_throughput"]
    assert (rates["before"]["tflops_fp32"], rates["after"]["tflops_fp32"]) == (0.25, 0.5)
    baseline = data["process_baseline"]
    assert (baseline["before"]["peak_rss"], baseline["after"]["peak_rss"]) == (500 << 20, 600 << 20)
