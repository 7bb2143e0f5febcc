"""Token-length statistics: what the planner sizes sequences by and what the TUI draws.

Lengths are measured before truncation, so the numbers say how long the data really is and
how much of it `max_seq_len` cuts.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class TokenStats:
    """Token counts of one split.

    Attributes:
        count: examples measured.
        total: tokens in all of them (before truncation).
        mean, p50, p95, min, max: per-example length; percentiles by nearest rank.
        max_seq_len: the truncation length in force.
        truncated: examples longer than `max_seq_len`.
        histogram: ``(low, high, count)`` bins of equal width with ``low <= length < high``;
            the last bin ends one past the longest example.
    """

    count: int = 0
    total: int = 0
    mean: float = 0.0
    p50: int = 0
    p95: int = 0
    min: int = 0
    max: int = 0
    max_seq_len: int = 0
    truncated: int = 0
    histogram: list[tuple[int, int, int]] = field(default_factory=list)

    @property
    def truncated_fraction(self) -> float:
        return self.truncated / self.count if self.count else 0.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["histogram"] = [list(b) for b in self.histogram]
        return data


def percentile(sorted_values: list[int], q: float) -> int:
    """Nearest-rank percentile of already sorted values (an observed length, never interpolated)."""
    if not sorted_values:
        return 0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def histogram(values: list[int], bins: int = 10) -> list[tuple[int, int, int]]:
    """Equal-width integer bins from the smallest to the largest value."""
    if not values:
        return []
    low, high = min(values), max(values)
    width = max(1, math.ceil((high - low + 1) / bins))
    edges = list(range(low, high + 1, width))
    counts = [0] * len(edges)
    for value in values:
        counts[min((value - low) // width, len(edges) - 1)] += 1
    return [(edge, min(edge + width, high + 1), n) for edge, n in zip(edges, counts, strict=True)]


def token_stats(lengths: list[int], max_seq_len: int, bins: int = 10) -> TokenStats:
    """Statistics of `lengths` (tokens per example, before truncation)."""
    if not lengths:
        return TokenStats(max_seq_len=max_seq_len)
    ordered = sorted(lengths)
    return TokenStats(
        count=len(ordered),
        total=sum(ordered),
        mean=sum(ordered) / len(ordered),
        p50=percentile(ordered, 50),
        p95=percentile(ordered, 95),
        min=ordered[0],
        max=ordered[-1],
        max_seq_len=max_seq_len,
        truncated=sum(1 for n in ordered if n > max_seq_len),
        histogram=histogram(ordered, bins),
    )
