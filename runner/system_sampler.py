"""A background thread that writes a `SystemSample` event every few seconds.

The monitor wants to see memory climbing before an OOM, not after, so the training process
samples itself: per-GPU memory, utilisation, temperature and power through NVML (optional:
on a machine without a driver the list is empty), torch's allocator figures on CUDA, host RAM,
the process's RSS and peak RSS, and CPU load. Every reading that fails is left as None; the
sampler never raises into training.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

import psutil

from runner.events import EventWriter, GpuSample, SystemSample


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
                lambda h=handle: (lambda m: (int(m.used), int(m.total)))(
                    nv.nvmlDeviceGetMemoryInfo(h)
                ),
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


def take_sample(nvml: _Nvml | None = None, step: int = 0) -> SystemSample:
    """One reading of the machine and this process."""
    sample = SystemSample(step=step, gpus=nvml.sample() if nvml else [])
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        sample.torch_allocated = int(torch.cuda.memory_allocated())
        sample.torch_reserved = int(torch.cuda.memory_reserved())
        sample.torch_peak = int(torch.cuda.max_memory_reserved())
    memory = psutil.virtual_memory()
    sample.ram_used, sample.ram_total = int(memory.total - memory.available), int(memory.total)
    sample.process_rss = _try(lambda: int(psutil.Process().memory_info().rss), None)
    sample.process_peak_rss = peak_rss_bytes()
    sample.cpu_percent = _try(lambda: float(psutil.cpu_percent(interval=None)), None)
    return sample


class SystemSampler(threading.Thread):
    """Daemon thread: a `SystemSample` every `interval` seconds until `stop()`.

    Args:
        writer: the run's event writer (its `write` holds a lock, so the training thread and
            this one never interleave lines).
        interval: seconds between samples.
        step: returns the current optimizer step, to place samples on the training curve.
    """

    def __init__(
        self, writer: EventWriter, *, interval: float = 5.0, step: Callable[[], int] = lambda: 0
    ) -> None:
        super().__init__(name="affiner-system-sampler", daemon=True)
        self.writer = writer
        self.interval = interval
        self.step = step
        self._stop_event = threading.Event()

    def run(self) -> None:
        nvml = _Nvml()
        psutil.cpu_percent(interval=None)  # the first call only primes the counter
        try:
            while not self._stop_event.wait(self.interval):
                try:
                    self.writer.write(take_sample(nvml, self.step()))
                except ValueError:  # the writer was closed under us: the run is over
                    return
        finally:
            nvml.close()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout)
