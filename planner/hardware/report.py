"""The hardware report's types: plain data that the prober fills and everyone else reads.

They live apart from the prober so that the NVML reader, the planner's device targets and the
TUI can name them without importing the code that reads the machine.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


def _lists(value: Any) -> Any:
    """Tuples to lists, recursively, so the dict equals what a JSON round trip gives."""
    if isinstance(value, dict):
        return {key: _lists(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_lists(item) for item in value]
    return value


@dataclass(frozen=True)
class GpuProcess:
    """A process holding memory on a GPU (memory is None when the driver will not say)."""

    pid: int
    name: str
    used_bytes: int | None
    kind: str = "compute"  # "compute", "graphics", or "compute+graphics" (listed in both)


@dataclass(frozen=True)
class GpuInfo:
    """One NVIDIA GPU as NVML sees it. Readings NVML refuses are None, never an exception."""

    index: int
    name: str
    uuid: str
    memory_total: int
    memory_used: int
    memory_free: int
    compute_capability: tuple[int, int] | None
    bf16: bool
    utilization_percent: int | None = None
    memory_utilization_percent: int | None = None
    temperature_c: int | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    processes: tuple[GpuProcess, ...] = ()
    #: What the driver keeps for itself (NVML memory info v2); not in used or free. None: v1.
    memory_reserved: int | None = None


@dataclass(frozen=True)
class CpuInfo:
    """The host CPU: model name, cores and the dtype support that matters for training on it."""

    model: str
    physical_cores: int | None
    logical_cores: int
    bf16: bool  # AVX512-BF16 or AMX-BF16 present
    flags: tuple[str, ...] = ()  # only the flags that matter for training speed (SIMD, BF16)
    clock_mhz: float | None = None  # maximum (else current) clock, for throughput estimates


@dataclass(frozen=True)
class HardwareReport:
    """Everything `affiner hw` shows.

    Attributes:
        gpus: every NVIDIA GPU found; empty when none could be read.
        gpu_reason: why `gpus` is empty (or partial), in words a person can act on.
        driver_version, cuda_driver_version: as NVML reports them (``"550.54.15"``, ``"12.4"``).
        ram_total, ram_available: bytes.
        disk_path: the folder runs are written to; disk_free/disk_total: bytes there.
    """

    gpus: tuple[GpuInfo, ...]
    gpu_reason: str | None
    driver_version: str | None
    cuda_driver_version: str | None
    cpu: CpuInfo
    ram_total: int
    ram_available: int
    disk_path: str
    disk_free: int
    disk_total: int
    warnings: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return _lists(asdict(self))
