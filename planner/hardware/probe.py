"""What the machine has: NVIDIA GPUs through NVML, CPU, RAM and disk through psutil.

The report is plain data so that the CLI prints it, the TUI draws it and the planner
plans against it without knowing where it came from. A missing driver, library or GPU
is a normal outcome: the report carries an empty GPU list and a reason a person can act on.
"""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path
from types import ModuleType

from affiner.planner.hardware.ram import ram_total_available
from affiner.planner.hardware.report import CpuInfo, HardwareReport

#: CPU flags worth reporting: the SIMD width and the bf16 paths that decide CPU training speed.
RELEVANT_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512_bf16",
    "avx512_fp16",
    "avx512_vnni",
    "amx_tile",
    "amx_bf16",
    "asimd",  # aarch64 NEON
    "sve",
    "bf16",  # aarch64 BF16 extension
)


def _cpuinfo_fields(path: str = "/proc/cpuinfo") -> dict[str, str]:
    """The first value of each field in /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, sep, value = line.partition(":")
                if sep:
                    fields.setdefault(key.strip().lower(), value.strip())
    except OSError:
        pass
    return fields


def read_cpu(cpuinfo_path: str = "/proc/cpuinfo") -> CpuInfo:
    """The CPU's model, cores, clock and the flags that matter for training on it."""
    import psutil

    fields = _cpuinfo_fields(cpuinfo_path)
    model = fields.get("model name") or platform.processor() or platform.machine() or "unknown CPU"
    present = set((fields.get("flags") or fields.get("features") or "").split())
    flags = tuple(flag for flag in RELEVANT_FLAGS if flag in present)
    clock: float | None = None
    try:
        freq = psutil.cpu_freq()
        if freq is not None:
            clock = float(freq.max or freq.current) or None
    except Exception:  # psutil raises on some VMs without cpufreq
        clock = None
    if clock is None and fields.get("cpu mhz"):
        try:
            clock = float(fields["cpu mhz"])
        except ValueError:
            clock = None
    return CpuInfo(
        model=model,
        physical_cores=psutil.cpu_count(logical=False),
        logical_cores=psutil.cpu_count(logical=True) or os.cpu_count() or 1,
        bf16=bool({"avx512_bf16", "amx_bf16", "bf16"} & present),
        flags=flags,
        clock_mhz=clock,
    )


def nearest_existing(path: Path) -> Path:
    """`path` or its closest parent that exists (the runs folder may not exist yet)."""
    path = path.expanduser().absolute()
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or "/")


def probe(
    runs_dir: str | os.PathLike[str] | None = None, nvml: ModuleType | None = None
) -> HardwareReport:
    """Look at the machine: GPUs through NVML, CPU, RAM, and disk where runs are written.

    Never raises for missing hardware: no NVML library, no driver, no GPUs or an absent
    ``pynvml`` all give ``gpus=()`` and a `gpu_reason` in plain words.

    Args:
        runs_dir: the runs folder (disk space is measured at its nearest existing parent);
            default ``./runs``. The caller passes ``affiner.runner.run.rundir.runs_root()`` — the planner
            does not import the runner.
        nvml: the NVML module to use; default imports ``pynvml`` (nvidia-ml-py). Tests pass a fake.
    """
    import psutil

    from affiner.planner.hardware.nvml import FALLBACK, NvmlReading, read_gpus

    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError:
            nvml = None
    if nvml is None:
        reading = NvmlReading(
            reason="nvidia-ml-py is not installed, so NVIDIA GPUs cannot be read "
            f"(pip install nvidia-ml-py): {FALLBACK}"
        )
    else:
        reading = read_gpus(nvml)

    memory = psutil.virtual_memory()
    ram_total, ram_available = ram_total_available(int(memory.total), int(memory.available))
    disk_at = nearest_existing(Path(runs_dir) if runs_dir else Path.cwd() / "runs")
    disk = shutil.disk_usage(disk_at)
    return HardwareReport(
        gpus=tuple(reading.gpus),
        gpu_reason=reading.reason,
        driver_version=reading.driver_version,
        cuda_driver_version=reading.cuda_driver_version,
        cpu=read_cpu(),
        ram_total=ram_total,
        ram_available=ram_available,
        disk_path=str(disk_at),
        disk_free=int(disk.free),
        disk_total=int(disk.total),
        warnings=tuple(reading.warnings),
    )
