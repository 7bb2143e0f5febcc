"""A background thread that writes a `SystemSample` event every few seconds.

The monitor wants to see memory climbing before an OOM, not after, so the training process
samples itself: per-GPU memory, utilisation, temperature and power through NVML (optional:
on a machine without a driver the list is empty), torch's allocator figures on CUDA, host RAM,
the process's RSS and peak RSS, and CPU load. Every reading that fails is left as None; the
sampler never raises into training.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import Any

import psutil

from affiner.planner.hardware import memory_info
from affiner.planner.hardware.ram import ram_total_available
from affiner.runner.run import EventWriter, GpuSample, SystemSample


def peak_rss_bytes() -> int | None:
    """The process's peak resident set size (Linux reports kibibytes, macOS bytes)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class _Nvml:
    """NVML opened once; every method returns [] when there is no library or driver."""

    def __init__(self) -> None:
        self.handles: list[Any] = []
        self.module: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.module = pynvml
            self.handles = [
                pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())
            ]
        except Exception:  # NVMLError_LibraryNotFound, DriverNotLoaded, no pynvml at all
            self.module = None

    def sample(self) -> list[GpuSample]:
        if self.module is None:
            return []
        nv = self.module
        samples = []
        for index, handle in enumerate(self.handles):
            gpu = GpuSample(index=index)
            gpu.memory_used, gpu.memory_total = _try(
                lambda h=handle: (lambda m: (int(m.used), int(m.total)))(memory_info(nv, h)),
                (None, None),
            )
            gpu.utilization_percent = _try(
                lambda h=handle: int(nv.nvmlDeviceGetUtilizationRates(h).gpu), None
            )
            gpu.temperature_c = _try(
                lambda h=handle: int(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)), None
            )
            gpu.power_w = _try(lambda h=handle: nv.nvmlDeviceGetPowerUsage(h) / 1000.0, None)
            samples.append(gpu)
        return samples

    def close(self) -> None:
        if self.module is not None:
            _try(self.module.nvmlShutdown, None)
            self.module = None


def _try(func: Callable[[], Any], default: Any) -> Any:
    try:
        return func()
    except Exception:
        return default


def training_device_index() -> int:
    """The CUDA device this process trains on, read in the training thread.

    CUDA's current device is per thread: a new thread starts on device 0 whatever the
    training thread chose, so the sampler thread must be told (torchrun's LOCAL_RANK when
    CUDA has not started yet).
    """
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return int(torch.cuda.current_device())
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def nvml_handle_for_torch_device(nvml: Any, index: int) -> Any | None:
    """NVML's handle for torch's CUDA device `index`, or None when it cannot be matched.

    Indices differ between the two: torch counts only CUDA_VISIBLE_DEVICES, in CUDA's order
    (fastest first unless CUDA_DEVICE_ORDER=PCI_BUS_ID); NVML counts every GPU by PCI bus.
    The UUID names the same device in both (``GPU-...``, or ``MIG-...`` for a MIG slice);
    the PCI bus id is the fallback.
    """
    import torch

    props = torch.cuda.get_device_properties(index)
    uuid = str(getattr(props, "uuid", "") or "")
    if uuid:
        names = [uuid] if uuid.startswith(("GPU-", "MIG-")) else [f"GPU-{uuid}", f"MIG-{uuid}"]
        for name in names:
            handle = _try(lambda n=name: nvml.nvmlDeviceGetHandleByUUID(n), None)
            if handle is not None:
                return handle
    bus = getattr(props, "pci_bus_id", None)
    if bus is not None:
        domain, device = getattr(props, "pci_domain_id", 0), getattr(props, "pci_device_id", 0)
        bus_id = f"{int(domain):08X}:{int(bus):02X}:{int(device):02X}.0"
        return _try(lambda: nvml.nvmlDeviceGetHandleByPciBusId(bus_id), None)
    return None


def take_sample(
    nvml: _Nvml | None = None, step: int = 0, device: int | None = None
) -> SystemSample:
    """One reading of the machine and this process (`device`: the training CUDA device)."""
    sample = SystemSample(step=step, gpus=nvml.sample() if nvml else [])
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        index = training_device_index() if device is None else device
        sample.torch_allocated = _try(lambda: int(torch.cuda.memory_allocated(index)), None)
        sample.torch_reserved = _try(lambda: int(torch.cuda.memory_reserved(index)), None)
        sample.torch_peak = _try(lambda: int(torch.cuda.max_memory_reserved(index)), None)
    memory = psutil.virtual_memory()
    # under a container's memory cap, the cap is the machine this run can be killed at
    total, available = ram_total_available(int(memory.total), int(memory.available))
    sample.ram_used, sample.ram_total = total - available, total
    sample.process_rss = _try(lambda: int(psutil.Process().memory_info().rss), None)
    sample.process_peak_rss = peak_rss_bytes()
    sample.cpu_percent = _try(lambda: float(psutil.cpu_percent(interval=None)), None)
    sample.process_cpu_percent = _try(lambda: float(_PROCESS.cpu_percent(interval=None)), None)
    sample.cpu_count = psutil.cpu_count() or None
    return sample


#: This process, kept so that `cpu_percent` measures since the previous sample.
_PROCESS = psutil.Process()


class SystemSampler(threading.Thread):
    """Daemon thread: a `SystemSample` every `interval` seconds until `stop()`.

    Args:
        writer: the run's event writer (its `write` holds a lock, so the training thread and
            this one never interleave lines).
        interval: seconds between samples.
        step: returns the current optimizer step, to place samples on the training curve.
    """

    def __init__(
        self,
        writer: EventWriter,
        *,
        interval: float = 5.0,
        step: Callable[[], int] = lambda: 0,
        rank_node: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(name="affiner-system-sampler", daemon=True)
        self.writer = writer
        #: a multi-process run's rank 0 tags its own readings (the other ranks' come at logs)
        self.rank_node = rank_node
        self.interval = interval
        self.step = step
        self.device = training_device_index()  # read here, in the training thread
        self._stop_event = threading.Event()

    def run(self) -> None:
        nvml = _Nvml()
        psutil.cpu_percent(interval=None)  # the first calls only prime the counters
        _PROCESS.cpu_percent(interval=None)
        try:
            while not self._stop_event.wait(self.interval):
                if not self._sample(nvml):
                    return
            # stopped: one last sample, so a run shorter than the interval still has one and
            # the last figure holds the whole run's resident peak (which never goes down)
            self._sample(nvml)
        finally:
            nvml.close()

    def _sample(self, nvml: _Nvml) -> bool:
        """Write one sample; False once the writer is closed (the run is over)."""
        try:
            sample = take_sample(nvml, self.step(), self.device)
            if self.rank_node is not None:
                # a rank's reading is of its own GPU (the others' ranks report theirs)
                sample.rank, sample.node = self.rank_node
                if sample.gpus and nvml.module is not None:
                    sample.gpus = own_gpu(nvml, self.device)
            self.writer.write(sample)
        except ValueError:  # the writer was closed under us
            return False
        except OSError:  # a full disk: the training thread says so; try the next one
            pass
        return True

    def stop(self, timeout: float = 2.0) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout)


def own_gpu(nvml: _Nvml, device: int) -> list[Any]:
    """NVML's reading of the GPU torch calls `device` (matched by UUID), as a one-item list."""
    nv = nvml.module
    handle = _try(lambda: nvml_handle_for_torch_device(nv, device), None)
    if handle is None:
        return []
    uuid = _try(lambda: nv.nvmlDeviceGetUUID(handle), None)
    readings = nvml.sample()
    for index, other in enumerate(nvml.handles):
        if uuid is not None and _try(lambda h=other: nv.nvmlDeviceGetUUID(h), None) == uuid:
            return [readings[index]] if index < len(readings) else []
    return []
