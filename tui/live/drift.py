"""When a run drifts from its plan: steps much slower than planned, memory past the prediction.

A plan is a promise of time and memory; a user watching a run over SSH should hear when it is
broken, and the likely reason, rather than discover at the end that the run took three times
as long. The monitor's banner and ``affiner attach`` both show `drifts(history)`. The likely
cause comes from the run's own system samples: other processes on the machine's cores (the
whole machine's CPU use against this process's) or on its GPU (what NVML says is used against
what torch holds).
"""

from __future__ import annotations

from dataclasses import dataclass

from affiner.planner.units import format_bytes, format_duration
from affiner.runner.run import SystemSample
from affiner.tui.live.history import RunHistory
from affiner.tui.live.ranks import rank_label

#: Steps this many times slower than the plan's (or the pre-flight's) step are worth a word.
STEP_DRIFT = 1.5
#: Memory past the prediction by more than this share is worth a word (the plan's usual error
#: is well inside it; a CPU run's peak resident memory varies a few percent between runs).
MEMORY_DRIFT = 0.10
#: Cores others must keep busy before they are named as the likely cause.
OTHERS_CORES = 0.5
#: GPU memory NVML counts beyond torch's reserved bytes and its CUDA context before another
#: process is named (the context of one process is at most about 0.6 GiB).
OTHERS_GPU_BYTES = 1 << 30


@dataclass(frozen=True)
class Drift:
    """One way the run differs from its plan, in words.

    Attributes:
        code: ``slow_steps`` or ``memory_over_plan``.
        message: what differs, with both figures.
        cause: the likely reason from the system samples, or None when they do not tell.
    """

    code: str
    message: str
    cause: str | None = None

    @property
    def text(self) -> str:
        return self.message + (f"; likely cause: {self.cause}" if self.cause else "")


def drifts(history: RunHistory) -> list[Drift]:
    """What differs from the plan now (empty once the run has ended or while all is well)."""
    if history.finished is not None:
        return []
    out = []
    measured, planned = history.step_seconds, history.planned_step_seconds
    if measured and planned and measured > STEP_DRIFT * planned:
        basis = (
            "the pre-flight measured"
            if history.planned_step_source == "pre-flight"
            else "the plan said"
        )
        out.append(
            Drift(
                "slow_steps",
                f"steps take {format_duration(measured)}, {measured / planned:.1f}x what "
                f"{basis} ({format_duration(planned)})",
                _busy_elsewhere(history.last_sample),
            )
        )
    peak, predicted = history.measured_peak_bytes, history.predicted_peak_bytes
    if peak and predicted and peak > predicted * (1 + MEMORY_DRIFT):
        where = "GPU" if history.on_gpu else "process"
        sample = history.last_sample
        peaks = history.rank_peak_bytes
        if peaks:  # a multi-process run: the rank that peaked highest, against one GPU's figure
            rank = max(peaks, key=lambda r: (peaks[r], -r))
            sample = history.rank_samples.get(rank, sample)
            node = sample.node if sample is not None else None
            where = f"{rank_label(rank, node, history.nodes)}'s {where}"
        per_gpu = ""
        if history.world_size > 1:  # the planner's figure is one GPU's (one process's on a CPU)
            per_gpu = " per GPU" if history.on_gpu else " per process"
        out.append(
            Drift(
                "memory_over_plan",
                f"{where} memory peaked at {format_bytes(peak)}, past the predicted "
                f"{format_bytes(predicted)}{per_gpu}",
                _gpu_shared(sample) if history.on_gpu else None,
            )
        )
    return out


def _busy_elsewhere(sample: SystemSample | None) -> str | None:
    """Other processes' share of the machine, from one system sample."""
    if sample is None:
        return None
    cause = _gpu_shared(sample)
    if cause:
        return cause
    cores = sample.cpu_count
    if sample.cpu_percent is None or sample.process_cpu_percent is None or not cores:
        return None
    others = sample.cpu_percent / 100 * cores - sample.process_cpu_percent / 100
    if others < OTHERS_CORES:
        return None
    return f"other processes keep about {others:.1f} of the {cores} CPU cores busy"


def _gpu_shared(sample: SystemSample | None) -> str | None:
    if sample is None or not sample.gpus or sample.torch_reserved is None:
        return None
    used = sample.gpus[0].memory_used
    if used is None:
        return None
    others = used - sample.torch_reserved - (OTHERS_GPU_BYTES // 2)
    if others < OTHERS_GPU_BYTES:
        return None
    return f"other processes hold about {format_bytes(others)} on GPU {sample.gpus[0].index}"
