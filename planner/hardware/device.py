"""The device a plan is made for: a detected GPU, a catalog GPU, a bare VRAM figure, or the CPU.

The memory and time models only ever see a `DeviceTarget`, so "plan for the GPU I have",
"plan as if I had a 4090" and "plan for this CPU" are the same computation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from affiner.planner.errors import AffinerError
from affiner.planner.units import GIB

if TYPE_CHECKING:
    from affiner.planner.hardware.catalog import GpuModel
    from affiner.planner.hardware.report import GpuInfo, HardwareReport


@dataclass(frozen=True)
class DeviceTarget:
    """A device to plan against.

    Attributes:
        kind: ``cuda`` or ``cpu``.
        name: shown to people (``NVIDIA GeForce RTX 4090``, ``24 GiB GPU``, ``CPU (Xeon...)``).
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
        process_baseline: bytes a CPU training process holds before its model exists, measured
            on this machine (`affiner.planner.hardware.process_baseline`); None: not measured,
            the memory model uses its documented constant.
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
    process_baseline: int | None = None

    @property
    def is_cpu(self) -> bool:
        return self.kind == "cpu"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _from_model(model: GpuModel, *, source: str) -> DeviceTarget:
    return DeviceTarget(
        kind="cuda",
        name=model.name,
        source=source,
        memory_total=model.memory,
        memory_free=model.memory,
        bf16=model.bf16,
        fp16=model.fp16,
        compute_capability=model.compute_capability,
        peak_tflops_bf16=model.tflops_bf16,
        peak_tflops_fp16=model.tflops_fp16,
        peak_tflops_fp32=model.tflops_fp32,
        bandwidth_gbs=model.bandwidth_gbs,
    )


def target_from_gpu(info: GpuInfo) -> DeviceTarget:
    """A detected GPU: memory (free now, as NVML reports it) from the card, speed from the catalog.

    A card the catalog does not know keeps its memory and dtype support but has no
    TFLOP/s figures (None): the planner then gives memory, not time.
    """
    from affiner.planner.hardware.catalog import match_detected

    model = match_detected(info.name, info.memory_total)
    cc = info.compute_capability
    fp16 = model.fp16 if model else (cc is None or cc >= (6, 0))
    return DeviceTarget(
        kind="cuda",
        name=info.name,
        source="detected",
        memory_total=info.memory_total,
        memory_free=info.memory_free,
        bf16=info.bf16,
        fp16=fp16,
        compute_capability=cc,
        peak_tflops_bf16=model.tflops_bf16 if model and info.bf16 else None,
        peak_tflops_fp16=model.tflops_fp16 if model else None,
        peak_tflops_fp32=model.tflops_fp32 if model else None,
        bandwidth_gbs=model.bandwidth_gbs if model else None,
        index=info.index,
    )


def target_from_catalog(name: str) -> DeviceTarget:
    """A GPU from `affiner.planner.hardware.catalog` by any spelling `lookup` accepts; the whole card is free.

    Raises:
        AffinerError: unknown name (with close matches).
    """
    from affiner.planner.hardware.catalog import lookup

    return _from_model(lookup(name), source="catalog")


def target_from_vram(gb: float) -> DeviceTarget:
    """A generic NVIDIA GPU with `gb` GiB of memory (``--vram 24`` for a 24 GiB card).

    What the planner assumes: the whole amount is free, bf16 and fp16 work (Ampere or
    newer, compute capability unknown), and speed is unknown (TFLOP/s None), so plans
    for a bare VRAM figure say whether it fits, not how long it takes.

    Raises:
        AffinerError: `gb` is not a positive number of a plausible size.
    """
    try:
        value = float(gb)
    except (TypeError, ValueError):
        raise AffinerError(
            f"--vram expects a number of GiB, got {gb!r}", hint="e.g. --vram 24", where="--vram"
        ) from None
    if not 0 < value <= 4096:
        raise AffinerError(
            f"--vram {gb} is not a GPU memory size",
            hint="give the card's memory in GiB, e.g. --vram 24 for a 24 GiB card",
            where="--vram",
        )
    memory = int(value * GIB)
    return DeviceTarget(
        kind="cuda",
        name=f"{value:g} GiB GPU",
        source="vram",
        memory_total=memory,
        memory_free=memory,
        bf16=True,
        fp16=True,
    )


def cpu_target(report: HardwareReport, measure: bool = True) -> DeviceTarget:
    """The CPU: RAM is its memory, throughput from `affiner.planner.hardware.cpu_throughput`.

    Args:
        measure: time a torch matmul once per machine when nothing is cached (about 1 s;
            imports torch), and measure the process baseline in a child process (5-10 s,
            once per machine and library versions); False uses the caches or the documented
            estimate and constant.
    """
    from affiner.planner.hardware.cpu_throughput import measure_cpu_tflops
    from affiner.planner.hardware.process_baseline import measure_process_baseline

    speed = measure_cpu_tflops(report.cpu, measure=measure)
    baseline = measure_process_baseline(report.cpu, measure=measure)
    return DeviceTarget(
        kind="cpu",
        name=f"CPU ({report.cpu.model})",
        source="cpu",
        memory_total=report.ram_total,
        memory_free=report.ram_available,
        bf16=report.cpu.bf16,
        fp16=False,  # fp16 autocast training on CPU is neither fast nor well supported
        peak_tflops_bf16=speed.tflops_bf16,
        peak_tflops_fp32=speed.tflops_fp32,
        measured=speed.measured,
        process_baseline=baseline.peak_rss if baseline is not None else None,
    )


def resolve_target(
    report: HardwareReport,
    gpu: str | None = None,
    vram: float | None = None,
    gpu_index: int | None = None,
    *,
    measure: bool = True,
) -> DeviceTarget:
    """The device to plan for, from the command line's --gpu/--vram/--gpu-index and the probe.

    Order: ``--gpu NAME`` (a catalog GPU; ``--gpu cpu`` forces the CPU), with ``--vram`` it
    keeps the catalog GPU's speed but takes that memory (a MIG slice, a smaller variant);
    ``--vram GiB`` alone; else the detected GPU `gpu_index` (default 0); else the CPU.

    Raises:
        AffinerError: unknown GPU name, bad --vram, or a --gpu-index that is not detected.
    """
    if gpu is not None and gpu.strip().lower() == "cpu":
        return cpu_target(report, measure=measure)
    if gpu:
        target = target_from_catalog(gpu)
        if vram is not None:
            sized = target_from_vram(vram)
            target = replace(
                target,
                name=f"{target.name} ({sized.name.removesuffix(' GPU')})",
                memory_total=sized.memory_total,
                memory_free=sized.memory_free,
            )
        return target
    if vram is not None:
        return target_from_vram(vram)
    if gpu_index is not None:
        by_index = {info.index: info for info in report.gpus}
        if gpu_index not in by_index:
            found = ", ".join(str(i) for i in sorted(by_index)) or "none"
            raise AffinerError(
                f"there is no GPU {gpu_index} on this machine (detected: {found})",
                hint=report.gpu_reason or "`affiner hw` lists the GPUs and their indices",
                where="--gpu-index",
            )
        return _counted(target_from_gpu(by_index[gpu_index]), report)
    if report.gpus:
        return _counted(target_from_gpu(report.gpus[0]), report)
    return cpu_target(report, measure=measure)


def _counted(target: DeviceTarget, report: HardwareReport) -> DeviceTarget:
    """`target` with `count` set to the GPUs of its model on this machine: a multi-GPU plan
    (and the recommendation's "this machine has 8") needs to know how many there are."""
    same = sum(1 for info in report.gpus if info.name == target.name)
    return replace(target, count=max(same, 1))
