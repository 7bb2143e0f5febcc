"""What a CPU training process holds before its model exists: the planner's CPU baseline.

On the CPU the planned peak is compared with the training process's resident memory (the
run's ``system`` events carry ``process_peak_rss``), so it must include what the process holds
besides tensors: the Python interpreter with torch, transformers, peft, datasets, accelerate and
bitsandbytes loaded (importing `affiner.runner.training` brings in the set the runner imports),
and what their first use leaves resident: torch's thread pool and oneDNN kernels after a first
forward/backward/AdamW step, accelerate's state from `TrainingArguments`, a `datasets.Dataset`
round trip. That depends on the library versions and on the machine (thread stacks per core,
the BLAS), so it is measured, like the matmul rate (`affiner.planner.hardware.cpu_throughput`):
a child process does the above and reports its peak resident set (``VmHWM``), once per machine
and library versions, cached as JSON beside the matmul figure. The planner's own process never
imports torch for it.

``affiner hw --remeasure-cpu`` and ``affiner plan --remeasure-cpu`` measure it again. Without
a measurement (nothing cached and ``measure=False``, or the child failed) the planner uses
`affiner.planner.memory.peak.CPU_RUNTIME`.

    python -m affiner.runner.baseline   # the child: prints one JSON object
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from affiner.planner.hardware.measure_cache import load_entries, put_entry
from affiner.planner.hardware.report import CpuInfo
from affiner.planner.locations import cache_dir

CACHE_FILE = "process_baseline.json"
#: The cache entry of a child that failed: no plan starts it again until ``--remeasure-cpu``
#: (or a new version of a library, which changes the key).
FAILED = {"failed": True}
#: The measuring child lives with the runner, whose imports it measures; the planner only
#: starts it by name (it never imports the runner).
CHILD_MODULE = "affiner.runner.baseline"
#: The libraries whose versions key the cache: a new version loads a different amount of code.
LIBRARIES = ("torch", "transformers", "peft", "datasets", "accelerate", "bitsandbytes")
#: Seconds the child may take (imports are 5-10 s warm on 2 cores; a cold disk is slower).
CHILD_TIMEOUT = 180.0


@dataclass(frozen=True)
class ProcessBaseline:
    """Resident memory of a training process before its model is loaded.

    Attributes:
        peak_rss: the child's peak resident set (``VmHWM``), bytes: what the planner adds.
        rss: its resident set when it reported (``VmRSS``).
        measured: True when measured on this machine (False: the documented constant).
        method: how, for people.
        key: the cache key (CPU model, cores, Python and library versions).
    """

    peak_rss: int
    rss: int
    measured: bool
    method: str
    key: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProcessBaseline | None:
        """A cache entry; None when it is not one."""
        known = {f.name for f in fields(cls)}
        try:
            entry = cls(**{k: v for k, v in data.items() if k in known})
        except TypeError:
            return None
        ints = all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0
            for v in (entry.peak_rss, entry.rss)
        )
        ok = ints and isinstance(entry.measured, bool) and isinstance(entry.method, str)
        return entry if ok and isinstance(entry.key, str) else None

    def describe(self) -> str:
        """``process baseline measured on this machine: 1.1 GiB`` for the plan's details."""
        from affiner.planner.units import format_bytes

        where = "measured on this machine" if self.measured else "not measured, a constant"
        return f"process baseline {where}: {format_bytes(self.peak_rss)}"


def _version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return "none"


def cache_key(cpu: CpuInfo) -> str:
    cores = cpu.physical_cores or cpu.logical_cores or 1
    libs = " ".join(f"{name} {_version(name)}" for name in LIBRARIES)
    python = ".".join(str(part) for part in sys.version_info[:2])
    return f"{cpu.model} | {cores} cores | python {python} | {libs}"


def cached_process_baseline(cpu: CpuInfo, cache_path: Path | None = None) -> ProcessBaseline | None:
    """The cached measurement for this machine and these library versions, or None."""
    path = cache_path or cache_dir() / CACHE_FILE
    entry = load_entries(path).get(cache_key(cpu))
    return ProcessBaseline.from_json(entry) if isinstance(entry, dict) else None


def run_child(timeout: float = CHILD_TIMEOUT) -> dict[str, Any] | None:
    """Run the measuring child (`CHILD_MODULE`); its JSON answer, or None.

    The boundary tests replace: everything the child does happens in its own process.
    """
    try:
        done = subprocess.run(
            [sys.executable, "-m", CHILD_MODULE],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    for line in reversed(done.stdout.splitlines()):
        try:
            answer = json.loads(line)
        except ValueError:
            continue
        if isinstance(answer, dict):
            return answer
    return None


def _measure(key: str, timeout: float) -> ProcessBaseline | None:
    answer = run_child(timeout)
    if answer is None:
        return None
    return ProcessBaseline.from_json(
        {
            "peak_rss": answer.get("peak_rss"),
            "rss": answer.get("rss"),
            "measured": True,
            "method": str(answer.get("method") or "child process"),
            "key": key,
        }
    )


def measure_process_baseline(
    cpu: CpuInfo,
    *,
    measure: bool = True,
    refresh: bool = False,
    cache_path: Path | None = None,
    timeout: float = CHILD_TIMEOUT,
) -> ProcessBaseline | None:
    """This machine's process baseline: cached, else measured in a child (``measure=True``).

    None when nothing is cached and it was not (or could not be) measured: the planner then
    uses `affiner.planner.memory.peak.CPU_RUNTIME`.

    Args:
        cpu: the CPU from `affiner.planner.hardware.probe.probe` (part of the cache key).
        measure: run the child when nothing is cached (5-10 s, once per machine and versions).
        refresh: measure again and replace the cached figure.
        cache_path: the JSON file; default ``cache_dir() / "process_baseline.json"``.
    """
    path = cache_path or cache_dir() / CACHE_FILE
    key = cache_key(cpu)
    cached = cached_process_baseline(cpu, path)
    if cached is not None and not refresh:
        return cached
    if not measure:
        return None
    if not refresh and load_entries(path).get(key) == FAILED:
        return None  # the child failed here before: not every plan pays for trying again
    result = _measure(key, timeout)
    if result is None:
        put_entry(path, key, FAILED)  # until --remeasure-cpu or new library versions
        return cached
    put_entry(path, key, result.to_json())
    return result


def remeasure_process_baseline(
    cpu: CpuInfo, *, cache_path: Path | None = None, timeout: float = CHILD_TIMEOUT
) -> tuple[ProcessBaseline | None, ProcessBaseline | None]:
    """Measure again and replace the cache: ``(before or None, after or None)``."""
    path = cache_path or cache_dir() / CACHE_FILE
    before = cached_process_baseline(cpu, path)
    key = cache_key(cpu)
    after = _measure(key, timeout)
    if after is not None:
        put_entry(path, key, after.to_json())
    return before, after


def remeasure_message(before: ProcessBaseline | None, after: ProcessBaseline | None) -> str:
    """One line for people, like the matmul rate's."""
    from affiner.planner.units import format_bytes

    if after is None:
        kept = (
            f"the cached {format_bytes(before.peak_rss)} stays"
            if before
            else "plans use a constant"
        )
        return f"CPU process baseline not measured: the child process failed ({kept})"
    old = format_bytes(before.peak_rss) if before else "nothing cached"
    return f"CPU process baseline re-measured: {old} → {format_bytes(after.peak_rss)}"
