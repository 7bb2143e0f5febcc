"""How long the training examples are, in tokens, against the maximum length.

A text histogram (it reads the same in any terminal and over SSH): equal-width bins up to
the maximum length and one overflow bin for the rows that will be truncated, with the
median, 95th percentile and longest row on top.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from rich.text import Text
from textual.widget import Widget


def percentile(values: Sequence[int], q: float) -> int:
    """Nearest-rank percentile (no numpy on the first screen)."""
    ordered = sorted(values)
    if not ordered:
        return 0
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def render_histogram(lengths: Sequence[int], max_len: int, width: int, bins: int = 6) -> Text:
    """The histogram as Rich Text for a `width`-column area (pure: tested without a terminal)."""
    text = Text(no_wrap=True, overflow="ellipsis")
    if not lengths:
        text.append("No token lengths.", style="dim")
        return text
    over = sum(1 for n in lengths if n > max_len)
    share = over / len(lengths)
    text.append(
        f"Tokens a row: median {percentile(lengths, 50)}, p95 {percentile(lengths, 95)}, "
        f"longest {max(lengths)}; max length {max_len}\n",
        style="bold",
    )
    edge = max(1, math.ceil(max_len / bins))
    counts = [0] * (bins + 1)
    for n in lengths:
        counts[bins if n > max_len else min(bins - 1, max(0, n - 1) // edge)] += 1
    label_w = len(f"{max_len}+") + len(str(max_len)) + 2
    count_w = len(str(max(counts)))
    bar_w = max(4, width - label_w - count_w - 16)
    top = max(counts) or 1
    for index, count in enumerate(counts):
        if index == bins:
            if count == 0:
                continue
            label = f"> {max_len}"
        else:
            label = f"{index * edge + 1 if index else 0}–{min(max_len, (index + 1) * edge)}"
        filled = round(count / top * bar_w)
        style = "red" if index == bins else "cyan"
        text.append(f"{label:>{label_w}} ")
        text.append("█" * filled, style=style)
        text.append(f" {count:>{count_w}}")
        text.append("  truncated\n" if index == bins else "\n", style="red")
    if over:
        text.append(
            f"{over} rows ({share:.0%}) are longer than {max_len} tokens and will be cut.",
            style="red",
        )
    else:
        text.append(f"No row is longer than {max_len} tokens.", style="green")
    return text


class TokenHistogram(Widget):
    """Token lengths against the maximum length; `set_max_len` redraws after ``seq 2048``."""

    DEFAULT_CSS = """
    TokenHistogram {
        height: auto;
        padding: 0 1;
        margin: 0 0 1 0;
        border: round $secondary;
    }
    """

    def __init__(self, lengths: Sequence[int], max_len: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lengths = list(lengths)
        self.max_len = max_len

    def set_max_len(self, max_len: int) -> None:
        self.max_len = max_len
        self.refresh(layout=True)

    def get_content_height(self, container: Any, viewport: Any, width: int) -> int:
        return len(render_histogram(self.lengths, self.max_len, width).split())

    def render(self) -> Text:
        return render_histogram(self.lengths, self.max_len, self.content_size.width)
