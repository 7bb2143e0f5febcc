"""Read every NVIDIA GPU through NVML, turning each refusal into None instead of an exception.

NVML is generous on a data-centre card and stingy elsewhere: consumer cards refuse power
readings, containers hide other processes, vGPUs refuse utilization. A single refused reading
must never cost the whole report, so every reading goes through `_Reader.read`, and a failure to start
NVML at all becomes a sentence a person can act on (`NvmlReading.reason`).

The module object is passed in (`read_gpus(nvml)`), so tests hand in `tests.fake_nvml`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, TypeVar

from affiner.planner.hardware.report import GpuInfo, GpuProcess
from affiner.planner.units import format_bytes

T = TypeVar("T")

#: Appended to every "no GPU" reason: what affiner does instead, and how to choose otherwise.
FALLBACK = "planning for the CPU; pick a GPU with --gpu NAME or --vram GiB"


@dataclass
class NvmlReading:
    """What `read_gpus` found. `reason` is set when `gpus` is empty (or a GPU was skipped)."""

    gpus: list[GpuInfo] = field(default_factory=list)
    reason: str | None = None
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    warnings: list[str] = field(default_factory=list)


def _text(value: Any) -> str:
    """NVML returns bytes from older bindings and str from newer ones."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _error_name(nvml: ModuleType, error: BaseException) -> str:
    """The NVMLError_* class name that matches `error` (by class or by error code)."""
    for name in (
        "NVMLError_LibraryNotFound",
        "NVMLError_DriverNotLoaded",
        "NVMLError_NoPermission",
        "NVMLError_NotSupported",
        "NVMLError_Uninitialized",
    ):
        cls = getattr(nvml, name, None)
        if isinstance(cls, type) and isinstance(error, cls):
            return name
    return type(error).__name__


def cuda_version_text(value: int | None) -> str | None:
    """NVML's integer CUDA version as people write it: 12040 -> ``"12.4"``."""
    if value is None or value <= 0:
        return None
    return f"{value // 1000}.{(value % 1000) // 10}"


def _init_failure_reason(nvml: ModuleType, error: BaseException) -> str:
    name = _error_name(nvml, error)
    if name == "NVMLError_LibraryNotFound":
        return f"NVIDIA driver not found (no NVML library on this machine): {FALLBACK}"
    if name == "NVMLError_DriverNotLoaded":
        return (
            "the NVIDIA driver is installed but not loaded (is the GPU passed through to this "
            f"machine or container?): {FALLBACK}"
        )
    if name == "NVMLError_NoPermission":
        return f"no permission to read the NVIDIA GPUs through NVML: {FALLBACK}"
    return f"NVML could not start ({error}): {FALLBACK}"


class _Reader:
    """Holds the module and the exceptions that mean "NVML refused this reading"."""

    def __init__(self, nvml: ModuleType) -> None:
        self.nvml = nvml
        refusals: list[type[BaseException]] = [nvml.NVMLError]
        mismatch = getattr(nvml, "NVMLLibraryMismatchError", None)
        if isinstance(mismatch, type):
            refusals.append(mismatch)
        # An older nvidia-ml-py may lack a function a newer driver offers.
        refusals.append(AttributeError)
        self.refusals = tuple(refusals)

    def read(self, function: str, *args: Any) -> Any:
        """Call ``nvml.<function>(*args)``; None when NVML refuses or lacks it."""
        try:
            return getattr(self.nvml, function)(*args)
        except self.refusals:
            return None

    def first(self, functions: tuple[str, ...], *args: Any) -> Any:
        for function in functions:
            value = self.read(function, *args)
            if value is not None:
                return value
        return None


def memory_info(nvml: Any, handle: Any) -> Any:
    """``nvmlDeviceGetMemoryInfo``, version 2 where the bindings and the driver have it.

    Version 1 counts the memory the driver keeps for itself as used (hundreds of MiB on a
    data-centre card), so an idle GPU looks busy and the figure disagrees with nvidia-smi;
    version 2 reports it apart, as ``reserved``. Free memory is the same in both. Bindings
    without the ``version`` argument (TypeError) and drivers without the ``_v2`` function
    (an NVMLError) get version 1; a refusal of version 1 propagates.
    """
    version = getattr(nvml, "nvmlMemory_v2", None)
    if version is not None:
        try:
            return nvml.nvmlDeviceGetMemoryInfo(handle, version=version)
        except (TypeError, nvml.NVMLError):
            pass
    return nvml.nvmlDeviceGetMemoryInfo(handle)


#: ``nvmlDeviceGetMigMode``'s "enabled" value (NVML_DEVICE_MIG_ENABLE).
MIG_ENABLED = 1


def mig_slices(reader: _Reader, handle: Any) -> list[tuple[str, int]]:
    """(name, total memory) of each MIG instance of a GPU in MIG mode; [] otherwise.

    CUDA sees these slices, never the whole card, so a plan made for the card's memory
    would not fit.
    """
    mode = reader.read("nvmlDeviceGetMigMode", handle)
    if not mode or int(mode[0]) != MIG_ENABLED:
        return []
    slices = []
    for i in range(int(reader.read("nvmlDeviceGetMaxMigDeviceCount", handle) or 0)):
        mig = reader.read("nvmlDeviceGetMigDeviceHandleByIndex", handle, i)  # empty slot: None
        if mig is None:
            continue
        name = _maybe(reader.read("nvmlDeviceGetName", mig), _text) or f"MIG {i}"
        try:
            total = int(memory_info(reader.nvml, mig).total)
        except reader.refusals:
            total = 0
        slices.append((name, total))
    return slices


def _maybe(value: Any, convert: Callable[[Any], T]) -> T | None:
    return None if value is None else convert(value)


def _process_name(reader: _Reader, pid: int) -> str:
    """psutil first (it sees this container's processes); NVML's name second; else empty."""
    try:
        import psutil

        return psutil.Process(pid).name()
    except Exception:  # NoSuchProcess, AccessDenied, ZombieProcess, a pid from another namespace
        pass
    name = reader.read("nvmlSystemGetProcessName", pid)
    return "" if name is None else os.path.basename(_text(name))


def _processes(reader: _Reader, handle: Any) -> tuple[GpuProcess, ...]:
    """Each process holding memory on the GPU, once.

    NVML lists a process with both a CUDA and a graphics context (a desktop's compositor
    running CUDA, a viewer of training curves) in both lists; counted twice, its memory would
    read double, so it is one entry of kind ``compute+graphics`` with the larger figure.
    """
    found: dict[int, GpuProcess] = {}
    for kind, function in (
        ("compute", "nvmlDeviceGetComputeRunningProcesses"),
        ("graphics", "nvmlDeviceGetGraphicsRunningProcesses"),
    ):
        for proc in reader.read(function, handle) or ():
            pid = int(getattr(proc, "pid", -1))
            raw = getattr(proc, "usedGpuMemory", None)
            used = None if raw is None else int(raw)
            seen = found.get(pid)
            if seen is not None:
                both = max((b for b in (seen.used_bytes, used) if b is not None), default=None)
                found[pid] = GpuProcess(pid, seen.name, both, f"{seen.kind}+{kind}")
                continue
            found[pid] = GpuProcess(
                pid=pid, name=_process_name(reader, pid), used_bytes=used, kind=kind
            )
    return tuple(found.values())


def _read_gpu(reader: _Reader, index: int, handle: Any, warnings: list[str]) -> GpuInfo:
    nvml = reader.nvml
    name = _maybe(reader.read("nvmlDeviceGetName", handle), _text) or f"GPU {index}"
    uuid = _maybe(reader.read("nvmlDeviceGetUUID", handle), _text) or ""
    try:
        memory = memory_info(nvml, handle)
    except reader.refusals:
        memory = None
    if memory is None:
        warnings.append(
            f"GPU {index} ({name}): NVML would not report its memory; plan with --vram GiB"
        )
        total = used = free = 0
    else:
        total, used, free = int(memory.total), int(memory.used), int(memory.free)
    reserved = getattr(memory, "reserved", None)
    slices = mig_slices(reader, handle)
    if slices:
        listed = ", ".join(f"{n} {format_bytes(t)}" for n, t in slices)
        warnings.append(
            f"GPU {index} ({name}) is in MIG mode: CUDA sees its slices ({listed}), not the "
            f"whole card; plan with --vram GiB for the slice the run will use"
        )
    cc = reader.read("nvmlDeviceGetCudaComputeCapability", handle)
    capability = (int(cc[0]), int(cc[1])) if cc is not None else None
    rates = reader.read("nvmlDeviceGetUtilizationRates", handle)
    sensor = getattr(nvml, "NVML_TEMPERATURE_GPU", 0)
    power = reader.read("nvmlDeviceGetPowerUsage", handle)
    limit = reader.first(
        ("nvmlDeviceGetEnforcedPowerLimit", "nvmlDeviceGetPowerManagementLimit"), handle
    )
    return GpuInfo(
        index=index,
        name=name,
        uuid=uuid,
        memory_total=total,
        memory_used=used,
        memory_free=free,
        memory_reserved=None if reserved is None else int(reserved),
        compute_capability=capability,
        bf16=capability is not None and capability >= (8, 0),
        utilization_percent=_maybe(getattr(rates, "gpu", None), int),
        memory_utilization_percent=_maybe(getattr(rates, "memory", None), int),
        temperature_c=_maybe(reader.read("nvmlDeviceGetTemperature", handle, sensor), int),
        power_w=_maybe(power, lambda mw: round(mw / 1000.0, 1)),
        power_limit_w=_maybe(limit, lambda mw: round(mw / 1000.0, 1)),
        processes=_processes(reader, handle),
    )


def read_gpus(nvml: ModuleType) -> NvmlReading:
    """Every GPU NVML lists, plus driver versions; never raises for NVML's refusals."""
    reading = NvmlReading()
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as error:
        reading.reason = _init_failure_reason(nvml, error)
        return reading
    except OSError as error:  # a broken libnvidia-ml that ctypes cannot load
        reading.reason = f"the NVML library would not load ({error}): {FALLBACK}"
        return reading
    reader = _Reader(nvml)
    try:
        reading.driver_version = _maybe(reader.read("nvmlSystemGetDriverVersion"), _text)
        reading.cuda_driver_version = cuda_version_text(
            reader.read("nvmlSystemGetCudaDriverVersion")
        )
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except nvml.NVMLError as error:
            reading.reason = f"NVML would not count the GPUs ({error}): {FALLBACK}"
            return reading
        for index in range(count):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
            except nvml.NVMLError as error:
                reading.warnings.append(f"GPU {index} could not be opened ({error}); skipped")
                continue
            reading.gpus.append(_read_gpu(reader, index, handle, reading.warnings))
        if count == 0:
            reading.reason = f"the NVIDIA driver is loaded but reports no GPUs: {FALLBACK}"
        elif not reading.gpus:
            reading.reason = f"none of the {count} GPUs NVML lists could be opened: {FALLBACK}"
    finally:
        with contextlib.suppress(nvml.NVMLError):
            nvml.nvmlShutdown()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if reading.gpus and visible is not None:
        reading.warnings.append(
            f"CUDA_VISIBLE_DEVICES={visible!r} is set: this list shows every GPU, "
            "but training will see only those"
        )
    return reading
