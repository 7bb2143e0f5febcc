"""The hardware screen's words: one line per GPU, its processes, the host's load, the plan.

Plain functions from readings to text, apart from the screen so they are tested without an
app and so the screen module stays about widgets and polling. A reading the OS or the driver
refuses is "N/A", never an exception.
"""

from __future__ import annotations

from collections.abc import Sequence

from affiner.planner.hardware import (
    FALLBACK,
    DeviceTarget,
    GpuInfo,
    GpuProcess,
    HardwareReport,
    HostLoad,
    ProcessLoad,
)
from affiner.planner.units import format_bytes

#: Processes listed under each GPU, and in the host's "busiest processes" list.
GPU_PROCESSES_SHOWN = 4
HOST_PROCESSES_SHOWN = 5


def gpu_summary(gpu: GpuInfo) -> str:
    """``GPU 0  NVIDIA H100 80GB HBM3  cc 9.0  bf16 yes  41°C  120/700 W  util 35%``."""
    cc = ".".join(map(str, gpu.compute_capability)) if gpu.compute_capability else "N/A"
    temp = f"{gpu.temperature_c}°C" if gpu.temperature_c is not None else "N/A °C"
    if gpu.power_w is None:
        power = "N/A W"
    elif gpu.power_limit_w:
        power = f"{gpu.power_w:.0f}/{gpu.power_limit_w:.0f} W"
    else:
        power = f"{gpu.power_w:.0f} W"
    util = f"{gpu.utilization_percent}%" if gpu.utilization_percent is not None else "N/A"
    bf16 = "yes" if gpu.bf16 else "no"
    return f"GPU {gpu.index}  {gpu.name}  cc {cc}  bf16 {bf16}  {temp}  {power}  util {util}"


def _cpu_text(reading: ProcessLoad | None) -> str:
    if reading is None or reading.cpu_percent is None:
        return "CPU N/A"
    return f"CPU {reading.cpu_percent:.0f}%"


def _rss_text(reading: ProcessLoad | None) -> str:
    return f"RSS {format_bytes(None if reading is None else reading.rss_bytes)}"


#: Memory a GPU may show in use with no process listed before the holders are called hidden:
#: the driver's own share (NVML memory info v1 counts it as used) stays well under this.
HIDDEN_HOLDERS_BYTES = 1 << 30


def hidden_holders(gpu: GpuInfo) -> bool:
    """NVML lists no process, yet the GPU's memory is in use: someone this machine (or this
    container) cannot see holds it, as nvitop says for a container's view of a shared GPU."""
    return not gpu.processes and gpu.memory_used > HIDDEN_HOLDERS_BYTES


def no_holders_text(gpu: GpuInfo) -> str:
    """What a GPU without listed processes says: free, or held by processes hidden from us."""
    if hidden_holders(gpu):
        return (
            f"no processes listed, yet {format_bytes(gpu.memory_used)} is in use: processes "
            "of other containers or users are hidden from this one"
        )
    return "no processes hold memory"


def processes_by_memory(gpu: GpuInfo) -> list[GpuProcess]:
    """The GPU's processes, biggest holder first (unknown figures last), as nvitop orders them."""
    return sorted(gpu.processes, key=lambda p: p.used_bytes or 0, reverse=True)


def holders_line(gpu: GpuInfo, load: HostLoad | None = None) -> str:
    """Who holds the GPU's memory, biggest first, one process a line, as nvitop lists them.

    ``  4243 python 74.0 GiB · CPU 95% · RSS 3.1 GiB · alice``: the GPU memory from NVML, the
    CPU use and resident memory from the host's load reading (None: not read yet, "N/A").
    """
    if not gpu.processes:
        return f"  {no_holders_text(gpu)}"
    ordered = processes_by_memory(gpu)
    by_pid = load.by_pid if load is not None else {}
    lines = []
    for process in ordered[:GPU_PROCESSES_SHOWN]:
        reading = by_pid.get(process.pid)
        name = process.name or (reading.name if reading else "") or "?"
        parts = [f"  {process.pid} {name} {format_bytes(process.used_bytes)}"]
        if load is not None:
            parts += [_cpu_text(reading), _rss_text(reading)]
            if reading is not None and reading.user:
                parts.append(reading.user)
        lines.append(" · ".join(parts))
    if len(ordered) > GPU_PROCESSES_SHOWN:
        lines.append(f"  (+{len(ordered) - GPU_PROCESSES_SHOWN} more)")
    return "\n".join(lines)


def host_lines(report: HardwareReport) -> list[str]:
    """The CPU's name and cores, and the NVIDIA driver when there is one."""
    cpu = report.cpu
    cores = f"{cpu.physical_cores or 'N/A'} cores / {cpu.logical_cores} threads"
    lines = [f"CPU  {cpu.model}  {cores}  bf16 {'yes' if cpu.bf16 else 'no'}"]
    if report.driver_version or report.cuda_driver_version:
        lines.append(
            f"Driver {report.driver_version or 'N/A'}  CUDA {report.cuda_driver_version or 'N/A'}"
        )
    return lines


def load_average_text(load: HostLoad) -> str:
    """``load 3.10 2.80 2.50 on 4 threads (busy)``: the 1/5/15-minute averages against the cores.

    A load above the thread count means processes wait for a core, so anything CPU-bound (a
    CPU pre-flight, a tokenizer) runs slower than planned.
    """
    if load.load_average is None:
        return "load N/A"
    one, five, fifteen = load.load_average
    text = f"load {one:.2f} {five:.2f} {fifteen:.2f} on {load.logical_cores} threads"
    if one > load.logical_cores:
        text += " (more work than cores: processes wait)"
    return text


def busiest_lines(load: HostLoad, shown: int = HOST_PROCESSES_SHOWN) -> list[str]:
    """The processes using the most CPU, busiest first (100% is one core), this app marked."""
    rows = [reading for reading in load.top if reading.cpu_percent][:shown]
    if not rows:
        return ["  no process is using the CPU"]
    lines = []
    for reading in rows:
        mine = " (this app)" if reading.pid == load.own_pid else ""
        user = f" · {reading.user}" if reading.user else ""
        lines.append(
            f"  {reading.pid} {reading.name or '?'}{mine} · {_cpu_text(reading)} · "
            f"{_rss_text(reading)}{user}"
        )
    return lines


def no_gpu_reason(report: HardwareReport) -> str:
    """Why there is no GPU, without the CLI's advice (``--gpu NAME``): the screen has a picker."""
    reason = report.gpu_reason or "none found"
    return reason.removesuffix(f": {FALLBACK}").removesuffix(FALLBACK).rstrip(": ") or reason


def memory_text(target: DeviceTarget) -> str:
    return format_bytes(target.memory_total)


def plan_sentence(report: HardwareReport | None, target: DeviceTarget | None) -> str:
    """The one sentence that says what plans are made for now, and how to change it.

    `target` is the app's "plan as if" choice (None: this machine's own device, which the
    assistant takes as GPU 0, else the CPU).
    """
    if target is not None and target.source != "detected":
        return (
            f"Plans are made as if for the catalog GPU {target.name} "
            f"({memory_text(target)}, the whole card free), not for this machine. "
            "Press p and choose 'this machine' to plan for what is here."
        )
    if report is None:
        return "Looking at this machine…"
    if report.gpus:
        gpu = report.gpus[0]
        return (
            f"Plans are made for GPU {gpu.index}, {gpu.name} "
            f"({format_bytes(gpu.memory_total)}). Press p to plan as if for a catalog GPU."
        )
    return (
        "Plans are made for this machine's CPU (no GPU could be read). "
        "Press p to plan as if for a catalog GPU instead."
    )


def catalog_lines(entries: Sequence[tuple[str, DeviceTarget | None]]) -> list[str]:
    """The catalog GPUs a plan can assume, with their memory, several to a line."""
    if not entries:
        return ["The GPU catalog could not be read."]
    cells = [
        f"{name} {memory_text(target) if target is not None else 'N/A'}" for name, target in entries
    ]
    lines: list[str] = []
    line = ""
    for cell in cells:
        candidate = f"{line} · {cell}" if line else cell
        if len(candidate) > 76 and line:
            lines.append(line)
            candidate = cell
        line = candidate
    lines.append(line)
    return lines
