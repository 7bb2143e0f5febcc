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

    python -m affiner.planner.hardware.process_baseline   # the child: prints one JSON object
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from affiner.planner.hardware.report import CpuInfo
from affiner.planner.locations import cache_dir

CACHE_FILE = "process_baseline.json"
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


def _load_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _save_cache(path: Path, key: str, result: ProcessBaseline) -> None:
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


def cached_process_baseline(cpu: CpuInfo, cache_path: Path | None = None) -> ProcessBaseline | None:
    """The cached measurement for this machine and these library versions, or None."""
    path = cache_path or cache_dir() / CACHE_FILE
    entry = _load_cache(path).get(cache_key(cpu))
    return ProcessBaseline.from_json(entry) if isinstance(entry, dict) else None


def run_child(timeout: float = CHILD_TIMEOUT) -> dict[str, Any] | None:
    """Run the measuring child (this module as ``__main__``); its JSON answer, or None.

    The boundary tests replace: everything the child does happens in its own process.
    """
    try:
        done = subprocess.run(
            [sys.executable, "-m", "affiner.planner.hardware.process_baseline"],
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
    result = _measure(key, timeout)
    if result is None:
        return cached
    _save_cache(path, key, result)
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
        _save_cache(path, key, after)
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


# ---------------------------------------------------------------------------- the child
def _status_bytes() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process, bytes (Linux); psutil's peak elsewhere."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            fields_ = dict(line.split(":", 1) for line in status if ":" in line)
        return (
            int(fields_["VmRSS"].split()[0]) * 1024,
            int(fields_["VmHWM"].split()[0]) * 1024,
        )
    except (OSError, KeyError, ValueError):
        import resource

        import psutil

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak *= 1 if sys.platform == "darwin" else 1024
        return psutil.Process().memory_info().rss, peak


def _child() -> dict[str, Any]:
    """What the training process does before its model exists, then its resident memory."""
    import tempfile

    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (  # the classes the runner imports inside its functions
        AutoModelForCausalLM,  # noqa: F401
        AutoModelForSequenceClassification,  # noqa: F401
        AutoTokenizer,  # noqa: F401
        DataCollatorForSeq2Seq,  # noqa: F401
        DataCollatorWithPadding,  # noqa: F401
        Trainer,  # noqa: F401
        TrainingArguments,
        set_seed,
    )

    import affiner.runner.data
    import affiner.runner.train
    import affiner.runner.training  # noqa: F401  (modeling, callbacks, bitsandbytes)

    set_seed(0)
    with tempfile.TemporaryDirectory() as out:
        TrainingArguments(output_dir=out, use_cpu=True, report_to=[])  # accelerate's state
    rows = Dataset.from_dict({"input_ids": [[1, 2, 3]] * 64, "labels": [[1, 2, 3]] * 64})
    rows = rows.map(lambda row: {"length": len(row["input_ids"])})
    # a first training step on a toy model: the thread pool, oneDNN's kernels, autograd, AdamW
    toy = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    toy = get_peft_model(toy, LoraConfig(r=4, target_modules=["0", "2"]))
    opt = torch.optim.AdamW([p for p in toy.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(2):
        loss = toy(torch.randn(32, 64)).float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    del toy, opt, rows
    rss, peak = _status_bytes()
    method = (
        f"child process: torch {torch.__version__} with the runner's imports, "
        f"{torch.get_num_threads()} threads, a toy LoRA step"
    )
    return {"rss": rss, "peak_rss": peak, "method": method}


if __name__ == "__main__":
    print(json.dumps(_child()), flush=True)
