"""A multi-process run as people read it: its layout in words, and each rank's memory.

A run with ``[distributed]`` runs several processes (ranks), possibly over several nodes;
rank 0 writes one ``system`` event per rank, tagged with its rank and node. The monitor,
``affiner attach`` and the runs list all say the same things about such a run, so the words
and the rule for "which figure is a rank's memory" live here once:

- the layout, short (``2×ddp``, for a table cell) and long (``2 processes · ddp``, or
  ``8 processes on 2 nodes · fsdp``, for a header);
- a rank's memory is its allocator's peak (torch's, on a GPU), else what NVML says its GPU
  holds, else its process's peak resident memory (then its resident memory) on the CPU: the
  same bases the planner's per-GPU peak is predicted on, so the two can stand side by side;
- the rank to flag is the one with the most memory, when it is past the prediction.

A single-process run has no ranks (`SystemSample.rank` is None): `rank_memory` is empty and
the layout words are empty, so screens draw such a run exactly as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from affiner.runner.run import SystemSample

#: Where a rank's figure comes from, in words (what a table's legend says).
ALLOCATOR_PEAK = "allocator peak"
GPU_IN_USE = "GPU memory in use"
PEAK_RSS = "peak RSS"
RSS = "RSS"


def layout_short(world_size: int, strategy: str | None) -> str:
    """``2×ddp`` for a multi-process run; "" for a single process."""
    if world_size <= 1:
        return ""
    return f"{world_size}×{strategy or 'ddp'}"


def layout_words(world_size: int, nodes: int, strategy: str | None) -> str:
    """``2 processes · ddp``, ``8 processes on 2 nodes · fsdp``; "" for a single process."""
    if world_size <= 1:
        return ""
    where = f" on {nodes} nodes" if nodes > 1 else ""
    return f"{world_size} processes{where} · {strategy or 'ddp'}"


def rank_label(rank: int, node: int | None, nodes: int) -> str:
    """``rank 1``, or ``node 1 rank 5`` when the run spans several nodes."""
    if nodes > 1 and node is not None:
        return f"node {node} rank {rank}"
    return f"rank {rank}"


@dataclass(frozen=True)
class RankReading:
    """One rank's memory from its latest ``system`` event.

    Attributes:
        rank: its place over all nodes; node: the node it runs on (None when not said).
        label: how screens name it (`rank_label`).
        used_bytes: its memory by `memory_of` (None when the sample carried none).
        source: which figure that is (`ALLOCATOR_PEAK`, `GPU_IN_USE`, `PEAK_RSS`, `RSS`).
        capacity: its GPU's memory, or the machine's RAM on the CPU (None when unknown).
        gpu_index: the GPU it ran on (None on the CPU).
    """

    rank: int
    node: int | None
    label: str
    used_bytes: int | None
    source: str
    capacity: int | None = None
    gpu_index: int | None = None


def memory_of(sample: SystemSample) -> tuple[int | None, str]:
    """A rank's memory and its basis: allocator peak, else its GPU's use, else (peak) RSS."""
    if sample.torch_peak:
        return sample.torch_peak, ALLOCATOR_PEAK
    used = next((g.memory_used for g in sample.gpus if g.memory_used is not None), None)
    if used is not None:
        return used, GPU_IN_USE
    if sample.process_peak_rss:
        return sample.process_peak_rss, PEAK_RSS
    if sample.process_rss is not None:
        return sample.process_rss, RSS
    return None, RSS


def reading_of(sample: SystemSample, nodes: int) -> RankReading:
    """`RankReading` for a sample that names its rank."""
    used, source = memory_of(sample)
    gpu = sample.gpus[0] if sample.gpus else None
    capacity = (gpu.memory_total if gpu is not None else None) or sample.ram_total
    rank = int(sample.rank or 0)
    return RankReading(
        rank=rank,
        node=sample.node,
        label=rank_label(rank, sample.node, nodes),
        used_bytes=used,
        source=source,
        capacity=capacity,
        gpu_index=gpu.index if gpu is not None else None,
    )


def rank_memory(samples: Mapping[int, SystemSample], nodes: int) -> list[RankReading]:
    """Every rank's reading, by rank, from the latest sample of each."""
    return [reading_of(samples[rank], nodes) for rank in sorted(samples)]


def over_plan(readings: list[RankReading], predicted: int | None) -> RankReading | None:
    """The rank holding the most memory when it is past the per-GPU prediction, else None."""
    if not predicted:
        return None
    measured = [r for r in readings if r.used_bytes is not None]
    if not measured:
        return None
    top = max(measured, key=lambda r: (r.used_bytes or 0, -r.rank))
    return top if (top.used_bytes or 0) > predicted else None
