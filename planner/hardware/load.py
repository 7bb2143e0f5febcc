"""How busy the machine is right now: CPU use, load average and the processes using it.

The hardware report says what the machine *has*; this says who is using it, so a user can see
why a pre-flight or a run went slower than planned (another process held the CPU or the GPU).
CPU percentages need two readings of the same counters, so a `LoadSampler` keeps its
`psutil.Process` objects between calls: the first call primes the counters and waits briefly,
each later call reports the use since the previous one (as ``top`` and nvitop do).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

#: How long the first reading waits between priming the counters and reading them.
PRIME_SECONDS = 0.3


@dataclass(frozen=True)
class ProcessLoad:
    """One process: its CPU use since the last reading (100% is one core) and resident memory.

    Readings the OS refuses (another user's process, one that just exited) are None.
    """

    pid: int
    name: str
    cpu_percent: float | None
    rss_bytes: int | None
    user: str = ""


@dataclass(frozen=True)
class HostLoad:
    """The host's load at one moment.

    Attributes:
        cpu_percent: the whole machine's CPU use, 0-100 (all cores together); None on the
            priming call when no interval has passed.
        load_average: the 1, 5 and 15 minute load averages (None where the OS has none).
        logical_cores: to read the load average against (load 4.0 on 4 threads is full).
        top: the processes using the most CPU, busiest first (this app's own process included,
            so a user sees what the TUI itself costs).
        by_pid: every reading taken, by pid, so the GPU process list can show each holder's
            CPU and resident memory beside its GPU memory (as nvitop does).
        own_pid: this process, marked in the list.
    """

    cpu_percent: float | None
    load_average: tuple[float, float, float] | None
    logical_cores: int
    top: tuple[ProcessLoad, ...] = ()
    by_pid: dict[int, ProcessLoad] = field(default_factory=dict)
    own_pid: int = 0


def _reading(process: Any) -> ProcessLoad | None:
    """One process's reading, or None when it is gone or hidden from us."""
    import psutil

    try:
        with process.oneshot():
            cpu = process.cpu_percent(None)
            rss = process.memory_info().rss
            name = process.name()
            try:
                user = process.username()
            except (psutil.Error, KeyError):  # a uid with no passwd entry (containers)
                user = ""
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        return ProcessLoad(pid=process.pid, name="", cpu_percent=None, rss_bytes=None)
    return ProcessLoad(pid=process.pid, name=name, cpu_percent=cpu, rss_bytes=rss, user=user)


class LoadSampler:
    """Reads `HostLoad` again and again, keeping the counters a CPU percentage needs.

    Not thread-safe: one sampler per polling worker (the hardware screen owns one).
    """

    def __init__(self, top_n: int = 8) -> None:
        self.top_n = top_n
        self._processes: dict[int, Any] = {}
        self._primed = False

    def _current(self) -> Iterable[Any]:
        """Every process now, reusing the objects that hold the previous CPU times."""
        import psutil

        seen: dict[int, Any] = {}
        for pid in psutil.pids():
            process = self._processes.get(pid)
            if process is None:
                try:
                    process = psutil.Process(pid)
                    process.cpu_percent(None)  # primes: its first real reading comes next time
                except psutil.Error:
                    continue
            seen[pid] = process
        self._processes = seen
        return seen.values()

    def read(self) -> HostLoad:
        """The load since the previous call (the first call waits `PRIME_SECONDS`)."""
        import psutil

        if not self._primed:
            psutil.cpu_percent(None)
            self._current()
            time.sleep(PRIME_SECONDS)
            self._primed = True
        cpu = float(psutil.cpu_percent(None))
        readings = [r for r in (_reading(p) for p in self._current()) if r is not None]
        try:
            load = tuple(float(x) for x in os.getloadavg())
        except (AttributeError, OSError):  # Windows has no load average
            load = None
        busiest = sorted(readings, key=lambda r: r.cpu_percent or 0.0, reverse=True)
        return HostLoad(
            cpu_percent=cpu,
            load_average=load,  # type: ignore[arg-type]
            logical_cores=psutil.cpu_count() or 1,
            top=tuple(busiest[: self.top_n]),
            by_pid={r.pid: r for r in readings},
            own_pid=os.getpid(),
        )
