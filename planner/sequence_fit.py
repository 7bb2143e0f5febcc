"""How much fits: the memory a plan may use, and the longest sequence a method fits in it.

`affiner.planner.recommend` sizes micro-batches against `usable_memory`; ``affiner plan --max-seq-len``
answers with `longest_sequence`.
"""

from __future__ import annotations

from dataclasses import dataclass

from affiner.planner.hardware import DeviceTarget
from affiner.planner.memory import estimate_memory
from affiner.planner.models import ModelSpec
from affiner.planner.settings import TrainSettings

#: Share of free memory left unplanned: fragmentation spikes, other processes, estimate error.
SAFETY_MARGIN = 0.08


def usable_memory(device: DeviceTarget, margin: float = SAFETY_MARGIN) -> int:
    return int(device.memory_free * (1 - margin))


def max_seq_len(
    spec: ModelSpec,
    device: DeviceTarget,
    settings: TrainSettings,
    *,
    margin: float = SAFETY_MARGIN,
    limit: int | None = None,
) -> int:
    """The longest sequence that fits `settings` on `device` (0 when not even one token fits).

    The search stops at `limit` (default 128k tokens, or the model's window if it is longer).
    """
    usable = usable_memory(device, margin)
    if limit is None:
        limit = max(spec.max_position_embeddings or 0, 1 << 17)

    def ok(seq: int) -> bool:
        return estimate_memory(spec, settings.with_(seq_len=seq), device).peak_bytes <= usable

    if not ok(1):
        return 0
    lo, hi = 1, 2
    while hi <= limit and ok(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, limit + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo


@dataclass
class LongestSequence:
    """The longest sequence one method fits, without and with gradient checkpointing.

    Attributes:
        method, micro_batch: what was asked about.
        without_checkpointing, with_checkpointing: the longest sequence either way (tokens).
        window: the model's context window, where the search stopped (None when unknown).
    """

    method: str
    micro_batch: int
    without_checkpointing: int
    with_checkpointing: int
    window: int | None

    @property
    def longest(self) -> int:
        return max(self.without_checkpointing, self.with_checkpointing)

    @property
    def needs_checkpointing(self) -> bool:
        return self.with_checkpointing > self.without_checkpointing

    @property
    def capped(self) -> bool:
        """True when the model's window, not the memory, is the limit."""
        return self.window is not None and self.longest >= self.window


def longest_sequence(
    spec: ModelSpec, device: DeviceTarget, settings: TrainSettings, *, margin: float = SAFETY_MARGIN
) -> LongestSequence:
    """The longest sequence `settings`' method fits, checkpointing off and on, up to the
    model's context window (training past it teaches positions the model never uses)."""
    window = spec.max_position_embeddings or None
    found = {
        ckpt: max_seq_len(
            spec, device, settings.with_(gradient_checkpointing=ckpt), margin=margin, limit=window
        )
        for ckpt in (False, True)
    }
    return LongestSequence(settings.method, settings.micro_batch, found[False], found[True], window)
