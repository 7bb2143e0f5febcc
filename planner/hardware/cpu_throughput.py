"""How fast this CPU multiplies matrices: the figure the planner's CPU time estimate rests on.

A GPU's peak comes from its data sheet; a CPU's depends on cores, clock, SIMD width, AMX and
the BLAS torch was built with, so it is measured: a short torch matmul benchmark (fp32, and
bf16 where the CPU has a bf16 path), run once per machine and cached as JSON in the user's
cache folder, keyed by CPU model, core count and torch version.

The figure is *sustained large-matmul* TFLOP/s, i.e. what a well-shaped GEMM reaches, not
the theoretical peak: on a CPU the two differ less than on a GPU, and the planner applies
its own utilisation factor on top. Without a measurement (``measure=False`` and nothing
cached) `estimate_cpu_tflops` gives a heuristic in the same terms, marked not measured:

    cores x clock x FLOPs/cycle/core x 0.7

with FLOPs/cycle/core for fp32 of 64 (AVX-512 with FMA), 32 (AVX2 with FMA), 16 (AVX, or
aarch64 NEON) or 8 (anything else), and for bf16 twice the fp32 figure with AVX512-BF16 or
the ARM BF16 extension and 16x with AMX-BF16 (capped by practice: AMX rarely sustains more
than about a quarter of its peak in PyTorch's GEMMs, so 4x). 0.7 is the share of peak a
large GEMM typically sustains on a CPU.

A figure timed while other work held the cores is too low, and a cached one would make every
later CPU estimate too slow. So each measurement records the 1-minute load average and the
CPU count; one taken with the load above half the CPUs is *provisional*: a later measurement
on a quiet machine (taken automatically the next time a figure is asked for with
``measure=True``) replaces it when faster, and the best rate seen is kept. ``refresh=True``
(``affiner hw --remeasure-cpu``, ``affiner plan --remeasure-cpu``) replaces the figure
whatever it is. Cache entries written before these fields existed load as final figures.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from affiner.planner.hardware.measure_cache import load_entries, put_entry
from affiner.planner.hardware.report import CpuInfo
from affiner.planner.locations import cache_dir

CACHE_FILE = "cpu_throughput.json"
#: Share of theoretical peak a large GEMM sustains on a CPU (used only by the heuristic).
GEMM_EFFICIENCY = 0.7
#: Clock assumed when the OS does not report one (MHz).
DEFAULT_CLOCK_MHZ = 2500.0
#: A machine whose 1-minute load average is above this share of its CPUs is busy: a
#: throughput measured then is provisional.
BUSY_LOAD_SHARE = 0.5


@dataclass(frozen=True)
class CpuThroughput:
    """Sustained matmul TFLOP/s of this CPU.

    Attributes:
        tflops_fp32: float32 matmul throughput.
        tflops_bf16: bfloat16 matmul throughput; None when the CPU has no bf16 path.
        measured: True when timed on this machine, False for the heuristic.
        method: how the figure was obtained, for people (``"torch matmul 1024^2, 12 runs"``).
        key: the cache key (CPU model, cores, torch version).
        load_average: the 1-minute load average when measured (None: unknown, e.g. an
            entry cached by an older affiner, or an OS without ``getloadavg``).
        cpu_count: the CPUs the OS reported then (what the load average is compared with).
        provisional: measured on a busy machine; a faster later measurement replaces it.
    """

    tflops_fp32: float
    tflops_bf16: float | None
    measured: bool
    method: str
    key: str
    load_average: float | None = None
    cpu_count: int | None = None
    provisional: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CpuThroughput | None:
        """An entry from the cache file; None when it is not one (damaged, or foreign).

        Keys this version does not know are ignored, so a newer affiner's cache still loads.
        """
        known = {f.name for f in fields(cls)}
        try:
            entry = cls(**{k: v for k, v in data.items() if k in known})
        except TypeError:
            return None
        number = (int, float)
        well_formed = (
            _is(entry.tflops_fp32, number)
            and entry.tflops_fp32 > 0
            and (entry.tflops_bf16 is None or _is(entry.tflops_bf16, number))
            and _is(entry.measured, bool)
            and _is(entry.provisional, bool)
            and isinstance(entry.method, str)
            and isinstance(entry.key, str)
            and (entry.load_average is None or _is(entry.load_average, number))
            and (entry.cpu_count is None or _is(entry.cpu_count, int))
        )
        return entry if well_formed else None

    def describe(self) -> str:
        """``0.412 TFLOP/s fp32, 0.80 bf16`` for a status line."""
        bf16 = "" if self.tflops_bf16 is None else f", {self.tflops_bf16:.3g} bf16"
        return f"{self.tflops_fp32:.3g} TFLOP/s fp32{bf16}"


def _is(value: Any, kinds: type | tuple[type, ...]) -> bool:
    """isinstance, except that a JSON ``true`` is not a number."""
    if bool not in (kinds if isinstance(kinds, tuple) else (kinds,)) and isinstance(value, bool):
        return False
    return isinstance(value, kinds)


def machine_load() -> tuple[float | None, int | None]:
    """(1-minute load average, CPU count) now; None for what the OS does not tell."""
    try:
        load: float | None = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = None
    return load, os.cpu_count()


def is_busy(load: float | None, cpu_count: int | None) -> bool:
    """More runnable work than half the CPUs: a matmul timed now would get a share of them."""
    if load is None or not cpu_count:
        return False
    return load > cpu_count * BUSY_LOAD_SHARE


def _cores(cpu: CpuInfo) -> int:
    return cpu.physical_cores or cpu.logical_cores or 1


def cache_key(cpu: CpuInfo, torch_version: str | None) -> str:
    return f"{cpu.model} | {_cores(cpu)} cores | torch {torch_version or 'unknown'}"


def _installed_torch_version() -> str | None:
    """torch's version without importing torch (importing it costs seconds)."""
    try:
        from importlib.metadata import version

        return version("torch")
    except Exception:
        return None


def cached_cpu_tflops(cpu: CpuInfo, cache_path: Path | None = None) -> CpuThroughput | None:
    """The cached figure for this CPU and torch version, or None; never measures or imports torch."""
    path = cache_path or cache_dir() / CACHE_FILE
    entry = load_entries(path).get(cache_key(cpu, _installed_torch_version()))
    return CpuThroughput.from_json(entry) if isinstance(entry, dict) else None


def estimate_cpu_tflops(cpu: CpuInfo, torch_version: str | None = None) -> CpuThroughput:
    """The heuristic of the module docstring; `measured` is False."""
    flags = set(cpu.flags)
    if "avx512f" in flags and "fma" in flags:
        per_cycle = 64
    elif "avx2" in flags and "fma" in flags:
        per_cycle = 32
    elif "avx" in flags or "asimd" in flags:
        per_cycle = 16
    else:
        per_cycle = 8
    ghz = (cpu.clock_mhz or DEFAULT_CLOCK_MHZ) / 1000.0
    fp32 = _cores(cpu) * ghz * per_cycle * GEMM_EFFICIENCY / 1000.0
    if "amx_bf16" in flags:
        bf16: float | None = fp32 * 4
    elif cpu.bf16:
        bf16 = fp32 * 2
    else:
        bf16 = None
    return CpuThroughput(
        tflops_fp32=round(fp32, 4),
        tflops_bf16=None if bf16 is None else round(bf16, 4),
        measured=False,
        method=f"estimate: {_cores(cpu)} cores x {ghz:.2f} GHz x {per_cycle} FLOPs/cycle x {GEMM_EFFICIENCY}",
        key=cache_key(cpu, torch_version or _installed_torch_version()),
    )


def _time_matmul(dtype: Any, size: int, seconds: float) -> tuple[float, int]:
    """Best TFLOP/s over repeated ``size x size`` matmuls for about `seconds`; (tflops, runs)."""
    import torch

    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    torch.mm(a, b)  # warm-up: thread pool, kernel selection, weight packing
    flops = 2.0 * size**3
    best = 0.0
    runs = 0
    deadline = time.perf_counter() + seconds
    while runs < 3 or time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.mm(a, b)
        elapsed = time.perf_counter() - start
        runs += 1
        if elapsed > 0:
            best = max(best, flops / elapsed / 1e12)
        if runs >= 200:
            break
    return best, runs


def _time_rates(cpu: CpuInfo, size: int, seconds: float) -> tuple[float, float | None, str] | None:
    """(fp32 TFLOP/s, bf16 TFLOP/s or None, how) timed now; None when torch is not installed."""
    try:
        import torch
    except (ImportError, OSError):  # not installed, or a build whose libraries are missing
        return None
    fp32, runs = _time_matmul(torch.float32, size, seconds)
    bf16: float | None = None
    if cpu.bf16:
        bf16, _ = _time_matmul(torch.bfloat16, size, seconds)
    how = (
        f"torch {torch.__version__} matmul {size}x{size}, best of {runs}, "
        f"{torch.get_num_threads()} threads"
    )
    return fp32, bf16, how


def _measure(cpu: CpuInfo, key: str, size: int, seconds: float) -> CpuThroughput | None:
    """A fresh measurement with the machine's load beside it; None without torch."""
    load, cpu_count = machine_load()  # before timing: the benchmark itself adds load
    timed = _time_rates(cpu, size, seconds)
    if timed is None:
        return None
    fp32, bf16, how = timed
    busy = is_busy(load, cpu_count)
    if busy:
        how += f", machine busy (load {load:.1f} on {cpu_count} CPUs)"
    return CpuThroughput(
        tflops_fp32=round(fp32, 4),
        tflops_bf16=None if bf16 is None else round(bf16, 4),
        measured=True,
        method=how,
        key=key,
        load_average=None if load is None else round(load, 2),
        cpu_count=cpu_count,
        provisional=busy,
    )


def best_of(old: CpuThroughput, new: CpuThroughput) -> CpuThroughput:
    """The faster of two measurements of one CPU, each dtype at its best rate seen.

    The result stays provisional only when both were taken on a busy machine: one quiet
    measurement shows what the CPU does when it is free.
    """
    winner = new if new.tflops_fp32 > old.tflops_fp32 else old
    rates = [r for r in (old.tflops_bf16, new.tflops_bf16) if r is not None]
    return replace(
        winner,
        tflops_bf16=max(rates) if rates else None,
        provisional=old.provisional and new.provisional,
    )


def measure_cpu_tflops(
    cpu: CpuInfo,
    *,
    measure: bool = True,
    refresh: bool = False,
    size: int = 1024,
    seconds: float = 0.4,
    cache_path: Path | None = None,
) -> CpuThroughput:
    """This CPU's matmul throughput: cached, else measured (``measure=True``), else estimated.

    A provisional cached figure (measured on a busy machine) is measured again when
    ``measure=True`` and the machine is quiet now; the faster figure is kept (`best_of`).
    While the machine stays busy the provisional figure is used as it is: timing again
    then would be as low, and would cost a torch import on every plan.

    Args:
        cpu: the CPU from `affiner.planner.hardware.probe.probe` (its model and cores form the cache key).
        measure: time torch matmuls when nothing is cached (about 1 s, once per machine);
            False never imports torch and falls back to `estimate_cpu_tflops`.
        refresh: measure again and replace the cached figure, even with a slower one.
        size: matrix side; 1024 is large enough to reach steady GEMM speed on a laptop.
        seconds: time spent per dtype.
        cache_path: the JSON file; default ``cache_dir() / "cpu_throughput.json"``.
    """
    path = cache_path or cache_dir() / CACHE_FILE
    torch_version = _installed_torch_version()
    key = cache_key(cpu, torch_version)
    cached = cached_cpu_tflops(cpu, path)
    settled = cached is not None and (not cached.provisional or is_busy(*machine_load()))
    if cached is not None and not refresh and (settled or not measure):
        return cached
    if not measure:
        return estimate_cpu_tflops(cpu, torch_version)
    result = _measure(cpu, key, size, seconds)
    if result is None:
        return cached or estimate_cpu_tflops(cpu, None)
    if cached is not None and not refresh:
        result = best_of(cached, result)
    put_entry(path, key, result.to_json())
    return result


def remeasure_cpu_tflops(
    cpu: CpuInfo, *, cache_path: Path | None = None, size: int = 1024, seconds: float = 0.4
) -> tuple[CpuThroughput | None, CpuThroughput | None]:
    """Measure again and replace the cached figure: ``(the figure before or None, the new one)``;
    the new one is None when nothing could be timed (torch missing or failing to import).

    What ``--remeasure-cpu`` runs. The new figure replaces the old one even when slower (the
    user asked); measured on a busy machine it is provisional like any other.
    """
    path = cache_path or cache_dir() / CACHE_FILE
    before = cached_cpu_tflops(cpu, path)
    key = cache_key(cpu, _installed_torch_version())
    after = _measure(cpu, key, size, seconds)
    if after is not None:
        put_entry(path, key, after.to_json())
    return before, after


def remeasure_message(before: CpuThroughput | None, after: CpuThroughput | None) -> str:
    """One line for people: what the CPU figure was, what it is now, and whether to trust it.

    `after` is None when nothing could be timed (torch missing or failing to import).
    """
    if after is None:
        kept = f"the cached {before.describe()} stays" if before else "plans use an estimate"
        return f"CPU matmul rate not measured: torch could not be imported ({kept})"
    if before is None:
        old = "nothing cached"
    elif before.measured:
        old = f"{before.tflops_fp32:.3g}"
    else:
        old = f"{before.tflops_fp32:.3g} (estimated)"
    line = f"CPU matmul rate re-measured: {old} → {after.tflops_fp32:.3g} TFLOP/s fp32"
    if after.tflops_bf16 is not None:
        was = "" if before is None or before.tflops_bf16 is None else f"{before.tflops_bf16:.3g} → "
        line += f", bf16 {was}{after.tflops_bf16:.3g}"
    if after.provisional:
        line += (
            f" (provisional: measured with load {after.load_average} on {after.cpu_count} CPUs;"
            " a faster measurement on a quieter machine will replace it)"
        )
    return line
