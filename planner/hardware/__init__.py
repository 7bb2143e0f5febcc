"""What the machine is, and what a plan is made for.

The report types (`HardwareReport`, `GpuInfo`, ...), the prober that fills them from NVML and
psutil, the catalog of GPUs a user can plan for without owning one, the measured CPU matmul
rate, how busy the machine is now (`LoadSampler`), and `DeviceTarget`: the one device
(detected GPU, catalog GPU, a VRAM figure, or the CPU) every estimate is made against.
"""

from affiner.planner.hardware.catalog import CATALOG, GpuModel, lookup
from affiner.planner.hardware.cpu_throughput import (
    CpuThroughput,
    cached_cpu_tflops,
    remeasure_cpu_tflops,
    remeasure_message,
)
from affiner.planner.hardware.device import (
    DeviceTarget,
    cpu_target,
    resolve_target,
    target_from_catalog,
    target_from_gpu,
    target_from_vram,
)
from affiner.planner.hardware.interconnect import Link, gpu_link, ring_link
from affiner.planner.hardware.load import HostLoad, LoadSampler, ProcessLoad
from affiner.planner.hardware.nvml import FALLBACK, memory_info
from affiner.planner.hardware.probe import probe
from affiner.planner.hardware.report import CpuInfo, GpuInfo, GpuProcess, HardwareReport

__all__ = [
    "CATALOG",
    "FALLBACK",
    "CpuInfo",
    "CpuThroughput",
    "DeviceTarget",
    "GpuInfo",
    "GpuModel",
    "GpuProcess",
    "HardwareReport",
    "HostLoad",
    "Link",
    "LoadSampler",
    "ProcessLoad",
    "cached_cpu_tflops",
    "cpu_target",
    "gpu_link",
    "lookup",
    "memory_info",
    "probe",
    "remeasure_cpu_tflops",
    "remeasure_message",
    "resolve_target",
    "ring_link",
    "target_from_catalog",
    "target_from_gpu",
    "target_from_vram",
]
