"""A stand-in for the ``pynvml`` module (nvidia-ml-py), configured with plain GPU dicts.

It keeps pynvml's names, its NVMLError class family (``NVMLError(code)`` builds the matching
subclass, as the real one does) and its semantics: every call before ``nvmlInit`` raises
``NVMLError_Uninitialized``, a missing library raises ``NVMLError_LibraryNotFound`` from
``nvmlInit``. A GPU dict value that is an exception class (``NVMLError_NotSupported``) makes
that reading refuse, so tests describe odd hardware in data:

    nvml = make_fake_nvml([gpu(name=b"Tesla T4", temperature=NVMLError_NotSupported)])
    report = probe(nvml=nvml)
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_GPU_IS_LOST = 15
NVML_TEMPERATURE_GPU = 0

_MESSAGES = {
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
    NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
}


class NVMLError(Exception):
    """Like pynvml's: ``NVMLError(code)`` returns the subclass for that code."""

    _by_code: dict[int, type[NVMLError]] = {}  # noqa: RUF012 (filled below, as pynvml does)
    code = -1

    def __new__(cls, value: int | None = None) -> NVMLError:
        if cls is NVMLError and value in NVMLError._by_code:
            cls = NVMLError._by_code[value]
        error = Exception.__new__(cls)
        error.value = cls.code if value is None else value
        return error

    def __init__(self, value: int | None = None) -> None:
        super().__init__(self.value)

    def __str__(self) -> str:
        return _MESSAGES.get(self.value, f"NVML Error with code {self.value}")


def _error_class(name: str, code: int) -> type[NVMLError]:
    cls = type(name, (NVMLError,), {"code": code})
    NVMLError._by_code[code] = cls
    return cls


NVMLError_Uninitialized = _error_class("NVMLError_Uninitialized", NVML_ERROR_UNINITIALIZED)
NVMLError_InvalidArgument = _error_class("NVMLError_InvalidArgument", NVML_ERROR_INVALID_ARGUMENT)
NVMLError_NotSupported = _error_class("NVMLError_NotSupported", NVML_ERROR_NOT_SUPPORTED)
NVMLError_NoPermission = _error_class("NVMLError_NoPermission", NVML_ERROR_NO_PERMISSION)
NVMLError_DriverNotLoaded = _error_class("NVMLError_DriverNotLoaded", NVML_ERROR_DRIVER_NOT_LOADED)
NVMLError_LibraryNotFound = _error_class("NVMLError_LibraryNotFound", NVML_ERROR_LIBRARY_NOT_FOUND)
NVMLError_GpuIsLost = _error_class("NVMLError_GpuIsLost", NVML_ERROR_GPU_IS_LOST)

GIB = 1024**3


@dataclass
class Memory:
    total: int
    used: int
    free: int


@dataclass
class Utilization:
    gpu: int
    memory: int


@dataclass
class ProcessInfo:
    pid: int
    usedGpuMemory: int | None  # pynvml spells it so


def gpu(**values: Any) -> dict[str, Any]:
    """A healthy H100-like GPU dict; keyword arguments replace or break single readings."""
    total = values.pop("memory_total", 80 * GIB)
    used = values.pop("memory_used", 2 * GIB)
    base: dict[str, Any] = {
        "name": "NVIDIA H100 80GB HBM3",
        "uuid": "GPU-00000000-0000-0000-0000-000000000000",
        "memory": Memory(total=total, used=used, free=total - used),
        "compute_capability": (9, 0),
        "utilization": Utilization(gpu=35, memory=20),
        "temperature": 41,
        "power": 123_456,  # mW
        "power_limit": 700_000,  # mW
        "compute_processes": [],
        "graphics_processes": [],
        "open": True,  # False: nvmlDeviceGetHandleByIndex raises GpuIsLost
    }
    base.update(values)
    return base


def make_fake_nvml(
    gpus: list[dict[str, Any]] | None = None,
    *,
    init_error: type[NVMLError] | None = None,
    driver: str | bytes = "550.54.15",
    cuda: int = 12040,
    process_names: dict[int, str] | None = None,
) -> types.ModuleType:
    """A module with pynvml's API over `gpus`. ``module.calls`` records init/shutdown."""
    gpus = list(gpus or [])
    state = {"initialised": False}
    module = types.ModuleType("pynvml")
    module.calls = []  # type: ignore[attr-defined]

    def check() -> None:
        if not state["initialised"]:
            raise NVMLError_Uninitialized()

    def value(handle: int, key: str) -> Any:
        check()
        found = gpus[handle][key]
        if isinstance(found, type) and issubclass(found, NVMLError):
            raise found()
        return found

    def nvmlInit() -> None:
        module.calls.append("init")
        if init_error is not None:
            raise init_error()
        state["initialised"] = True

    def nvmlShutdown() -> None:
        module.calls.append("shutdown")
        check()
        state["initialised"] = False

    def nvmlSystemGetDriverVersion() -> str | bytes:
        check()
        return driver

    def nvmlSystemGetCudaDriverVersion() -> int:
        check()
        return cuda

    def nvmlDeviceGetCount() -> int:
        check()
        return len(gpus)

    def nvmlDeviceGetHandleByIndex(index: int) -> int:
        check()
        if not 0 <= index < len(gpus):
            raise NVMLError_InvalidArgument()
        if not gpus[index]["open"]:
            raise NVMLError_GpuIsLost()
        return index

    def nvmlSystemGetProcessName(pid: int) -> str:
        check()
        if process_names and pid in process_names:
            return process_names[pid]
        raise NVMLError_NotSupported()

    def nvmlDeviceGetTemperature(handle: int, sensor: int) -> int:
        assert sensor == NVML_TEMPERATURE_GPU
        return value(handle, "temperature")

    functions = {
        "nvmlDeviceGetName": "name",
        "nvmlDeviceGetUUID": "uuid",
        "nvmlDeviceGetMemoryInfo": "memory",
        "nvmlDeviceGetCudaComputeCapability": "compute_capability",
        "nvmlDeviceGetUtilizationRates": "utilization",
        "nvmlDeviceGetPowerUsage": "power",
        "nvmlDeviceGetEnforcedPowerLimit": "power_limit",
        "nvmlDeviceGetPowerManagementLimit": "power_limit",
        "nvmlDeviceGetComputeRunningProcesses": "compute_processes",
        "nvmlDeviceGetGraphicsRunningProcesses": "graphics_processes",
    }
    for function, key in functions.items():
        setattr(module, function, lambda handle, _key=key: value(handle, _key))
    for function in (
        nvmlInit,
        nvmlShutdown,
        nvmlSystemGetDriverVersion,
        nvmlSystemGetCudaDriverVersion,
        nvmlDeviceGetCount,
        nvmlDeviceGetHandleByIndex,
        nvmlSystemGetProcessName,
        nvmlDeviceGetTemperature,
    ):
        setattr(module, function.__name__, function)
    for name, item in list(globals().items()):
        if name.startswith(("NVMLError", "NVML_")):
            setattr(module, name, item)
    return module
