"""How much fits: the memory a plan may use, and the longest sequence a method fits in it.

`affiner.planner.recommend` sizes micro-batches against `usable_memory`; ``affiner plan --max-seq-len``
answers with `longest_sequence`, given every way the plan would run the method (the settings
the recommendation would choose at a length, `affiner.planner.recommend.longest_sequence_for`),
so the answer is the length of a plan that would really be made, not of the 512-token plan's
settings stretched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from affiner.planner.hardware import DeviceTarget
from affiner.planner.memory import estimate_memory
from affiner.planner.models import ModelSpec
from affiner.planner.settings import TrainSettings

#: Share of free memory left unplanned: fragmentation spikes, other processes, estimate error.
SAFETY_MARGIN = 0.08


def usable_memory(device: DeviceTarget, margin: float = SAFETY_MARGIN) -> int:
    """The bytes a plan may use: the free memory less the share `margin` keeps unplanned."""
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
        without_checkpointing, with_checkpointing: the longest sequence either way (tokens);
            None for the way not searched because the user stated checkpointing.
        window: the model's context window, where the search stopped (None when unknown).
        settings: what the plan runs at the longest length: the first of the ways given that
            fits there (its optimizer, precision and checkpointing); None when nothing fits.
        margin: the share of free memory kept unplanned (`SAFETY_MARGIN` unless stated).
        usable_bytes: the memory the answer was sized against (`usable_memory`).
    """

    method: str
    micro_batch: int
    without_checkpointing: int | None
    with_checkpointing: int | None
    window: int | None
    settings: TrainSettings | None = None
    margin: float = SAFETY_MARGIN
    usable_bytes: int = 0

    @property
    def longest(self) -> int:
        return max(self.without_checkpointing or 0, self.with_checkpointing or 0)

    @property
    def needs_checkpointing(self) -> bool:
        """True when the answer runs with gradient checkpointing on."""
        if self.settings is not None:
            return self.settings.gradient_checkpointing
        return (self.with_checkpointing or 0) > (self.without_checkpointing or 0)

    @property
    def capped(self) -> bool:
        """True when the model's window, not the memory, is the limit."""
        return self.window is not None and self.longest >= self.window


def longest_sequence(
    spec: ModelSpec,
    device: DeviceTarget,
    settings: TrainSettings | Sequence[TrainSettings],
    *,
    margin: float = SAFETY_MARGIN,
    checkpointing: bool | None = None,
) -> LongestSequence:
    """The longest sequence `settings`' method fits, checkpointing off and on, up to the
    model's context window (training past it teaches positions the model never uses).

    Args:
        settings: one way to run the method, or every way the plan would try in its order
            (cheapest change first: plain, then an 8-bit optimizer, ...). At each length the
            plan takes the first that fits, so the answer is the longest any of them fits, run
            with the first that fits there.
        margin: share of free memory kept unplanned (reported back in the answer).
        checkpointing: the user's stated gradient checkpointing; None searches off and on.
    """
    ways = [settings] if isinstance(settings, TrainSettings) else list(settings)
    if not ways:
        raise ValueError("longest_sequence needs at least one way to run the method")
    window = spec.max_position_embeddings or None
    modes = (False, True) if checkpointing is None else (checkpointing,)
    found: dict[bool, int | None] = {False: None, True: None}
    best: TrainSettings | None = None
    for ckpt in modes:
        lengths = [
            (
                max_seq_len(
                    spec,
                    device,
                    way.with_(gradient_checkpointing=ckpt),
                    margin=margin,
                    limit=window,
                ),
                way,
            )
            for way in ways
        ]
        longest = max(n for n, _ in lengths)
        found[ckpt] = longest
        if longest and longest > max((v or 0) for k, v in found.items() if k != ckpt):
            way = next(w for n, w in lengths if n == longest)
            best = way.with_(gradient_checkpointing=ckpt, seq_len=longest)
    first = ways[0]
    return LongestSequence(
        first.method,
        first.micro_batch,
        found[False],
        found[True],
        window,
        best,
        margin,
        usable_memory(device, margin),
    )
