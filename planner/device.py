"""The device a plan is made for: a detected GPU, a catalog GPU, a bare VRAM figure, or the CPU.

The memory and time models only ever see a `DeviceTarget`, so "plan for the GPU I have",
"plan as if I had a 4090" and "plan for this CPU" are the same computation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class DeviceTarget:
    """A device to plan against.

    Attributes:
        kind: ``cuda`` or ``cpu``.
        name: shown to people (``NVIDIA GeForce RTX 4090``, ``24 GB GPU``, ``CPU (Xeon...)``).
        source: ``detected``, ``catalog``, ``vram`` or ``cpu``.
        memory_total: bytes of device memory (RAM for the CPU).
        memory_free: bytes a run may use now (free VRAM on a detected GPU, available RAM).
        bf16: native bfloat16 (compute capability >= 8.0 on NVIDIA; AVX512-BF16/AMX on CPU).
        fp16: half precision is usable for mixed-precision training.
        compute_capability: NVIDIA (major, minor), None for the CPU or an unknown GPU.
        peak_tflops_bf16, peak_tflops_fp16, peak_tflops_fp32: dense peak throughput, if known.
        bandwidth_gbs: memory bandwidth in GB/s, if known.
        count: how many such devices (for multi-GPU plans).
        index: NVML index of a detected GPU.
        measured: True when the throughput figures were measured on this machine (CPU).
    """

    kind: str
    name: str
    source: str
    memory_total: int
    memory_free: int
    bf16: bool
    fp16: bool
    compute_capability: tuple[int, int] | None = None
    peak_tflops_bf16: float | None = None
    peak_tflops_fp16: float | None = None
    peak_tflops_fp32: float | None = None
    bandwidth_gbs: float | None = None
    count: int = 1
    index: int | None = None
    measured: bool = False

    @property
    def is_cpu(self) -> bool:
        return self.kind == "cpu"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
