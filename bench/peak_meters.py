"""Measuring the peak memory of a few training steps, on the CPU and on a CUDA GPU.

Both meters answer the same question, "how many bytes were allocated at the highest point, and
in which phase of which step", so that `bench/memory_peak.py` can put the planner's
``allocated_peak`` next to either:

- `CpuMeter`: with ``profile_memory`` the profiler records every tensor allocation and free;
  walking them in order gives the peak exactly, and the ``affiner.*`` marks of
  `bench.step_recipe.train_steps` say where it fell.
- `CudaMeter`: the caching allocator's own peak counters, read and reset at the end of every
  phase (so each phase has its peak, at no profiling cost), plus what a user meets: the peak
  *reserved* bytes and the CUDA context beside them (NVML's figure for this process less
  what PyTorch has reserved), read after the steps, when the kernels and cuBLAS are loaded.

Only the benches and their tests import this module; it needs torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from bench.step_recipe import PHASES, release

#: Runs the steps; it is handed the meter's per-phase callback (or None).
StepsRunner = Callable[[Callable[[str, int], None] | None], None]


@dataclass
class Peak:
    """The measured peak of one cell.

    Attributes:
        allocated: the highest bytes allocated at once, the model and the batch included.
        phase: ``forward``, ``backward`` or ``step`` (where the peak fell), or ``outside``.
        step: which optimizer step (from 1), 0 when unknown.
        reserved: the allocator's peak reserved bytes (CUDA only).
        context: the CUDA context and other memory outside PyTorch's allocator (CUDA only).
        note: why a figure is missing or approximate.
    """

    allocated: int
    phase: str
    step: int
    reserved: int | None = None
    context: int | None = None
    note: str = ""


def live_bytes(*tensors_or_modules: Any) -> int:
    """Bytes of the distinct storages behind these tensors and modules' parameters and buffers."""
    seen: dict[int, int] = {}
    for obj in tensors_or_modules:
        if isinstance(obj, torch.nn.Module):
            items = [*obj.parameters(), *obj.buffers()]
        elif isinstance(obj, dict):
            items = list(obj.values())
        else:
            items = [obj]
        for t in items:
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


class CpuMeter:
    """The exact allocated peak on the CPU, from the profiler's allocation records."""

    device = "cpu"

    def measure(self, run: StepsRunner, model: Any, batch: dict[str, torch.Tensor]) -> Peak:
        from torch.profiler import ProfilerActivity, profile

        release("cpu")
        baseline = live_bytes(model, batch)  # the profiler sees only what changes while it runs
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            run(None)
        events = prof.profiler.kineto_results.events()
        changes = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
        marks = sorted((e.start_ns(), e.end_ns(), e.name()) for e in events if e.name() in PHASES)
        live = peak = peak_at = 0
        for at, nbytes in changes:
            live += nbytes
            if live > peak:
                peak, peak_at = live, at
        phase, step, counts = "outside", 0, dict.fromkeys(PHASES, 0)
        for start, end, name in marks:
            counts[name] += 1
            if start <= peak_at <= end:
                phase, step = name.removeprefix("affiner."), counts[name]
        return Peak(baseline + peak, phase, step)


class CudaMeter:
    """The caching allocator's peaks per phase, the reserved peak and the CUDA context."""

    device = "cuda"

    def measure(self, run: StepsRunner, model: Any, batch: dict[str, torch.Tensor]) -> Peak:
        release("cuda")
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        best = {"allocated": 0, "reserved": 0, "phase": "outside", "step": 0}

        def after_phase(phase: str, step: int) -> None:
            torch.cuda.synchronize()
            allocated = torch.cuda.max_memory_allocated()
            best["reserved"] = max(best["reserved"], torch.cuda.max_memory_reserved())
            if allocated > best["allocated"]:
                best.update(allocated=allocated, phase=phase, step=step)
            torch.cuda.reset_peak_memory_stats()  # the next phase starts its own peak

        from affiner.runner.training.preflight import cuda_context_bytes

        run(after_phase)
        torch.cuda.synchronize()
        context, note = cuda_context_bytes()  # as the runner's pre-flight reads it
        return Peak(
            allocated=int(best["allocated"]),
            phase=str(best["phase"]),
            step=int(best["step"]),
            reserved=int(best["reserved"]),
            context=context,
            note=note,
        )


def meter_for(device: str) -> CpuMeter | CudaMeter:
    return CudaMeter() if device == "cuda" else CpuMeter()
