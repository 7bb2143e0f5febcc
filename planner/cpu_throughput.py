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
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from planner.hardware import CpuInfo

CACHE_FILE = "cpu_throughput.json"
#: Share of theoretical peak a large GEMM sustains on a CPU (used only by the heuristic).
GEMM_EFFICIENCY = 0.7
#: Clock assumed when the OS does not report one (MHz).
DEFAULT_CLOCK_MHZ = 2500.0


@dataclass(frozen=True)
class CpuThroughput:
    """Sustained matmul TFLOP/s of this CPU.

    Attributes:
        tflops_fp32: float32 matmul throughput.
        tflops_bf16: bfloat16 matmul throughput; None when the CPU has no bf16 path.
        measured: True when timed on this machine, False for the heuristic.
        method: how the figure was obtained, for people (``"torch matmul 1024^2, 12 runs"``).
        key: the cache key (CPU model, cores, torch version).
    """

    tflops_fp32: float
    tflops_bf16: float | None
    measured: bool
    method: str
    key: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def cache_dir() -> Path:
    """``$AFFINER_CACHE``, else ``$XDG_CACHE_HOME/affiner``, else ``~/.cache/affiner``."""
    if os.environ.get("AFFINER_CACHE"):
        return Path(os.environ["AFFINER_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "affiner"


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


def _load_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _save_cache(path: Path, key: str, result: CpuThroughput) -> None:
    """Best effort: a read-only home must not stop planning."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _load_cache(path)
        data[key] = result.to_json()
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass


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

    Args:
        cpu: the CPU from `planner.hardware.probe` (its model and cores form the cache key).
        measure: time torch matmuls when nothing is cached (about 1 s, once per machine);
            False never imports torch and falls back to `estimate_cpu_tflops`.
        refresh: measure again even when a cached figure exists.
        size: matrix side; 1024 is large enough to reach steady GEMM speed on a laptop.
        seconds: time spent per dtype.
        cache_path: the JSON file; default ``cache_dir() / "cpu_throughput.json"``.
    """
    path = cache_path or cache_dir() / CACHE_FILE
    key = cache_key(cpu, _installed_torch_version())
    if not refresh:
        cached = _load_cache(path).get(key)
        if isinstance(cached, dict):
            try:
                return CpuThroughput(**cached)
            except TypeError:
                pass  # written by another version of affiner: measure again
    if not measure:
        return estimate_cpu_tflops(cpu, _installed_torch_version())
    try:
        import torch
    except ImportError:
        return estimate_cpu_tflops(cpu, None)
    fp32, runs = _time_matmul(torch.float32, size, seconds)
    bf16: float | None = None
    if cpu.bf16:
        bf16, _ = _time_matmul(torch.bfloat16, size, seconds)
    result = CpuThroughput(
        tflops_fp32=round(fp32, 4),
        tflops_bf16=None if bf16 is None else round(bf16, 4),
        measured=True,
        method=f"torch {torch.__version__} matmul {size}x{size}, best of {runs}, "
        f"{torch.get_num_threads()} threads",
        key=key,
    )
    _save_cache(path, key, result)
    return result
