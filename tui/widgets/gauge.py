"""A memory (or utilisation) bar coloured green, yellow or red by how full it is.

Like nvitop's device panel: the colour says "fine / getting tight / about to run out" at a
glance, and the numbers beside the bar say the same in words, so the gauge still reads
with NO_COLOR or in a light theme.
"""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.widget import Widget

from affiner.planner.units import format_bytes_of

#: Fractions at which a gauge turns yellow, then red.
WARN_AT = 0.75
DANGER_AT = 0.90


def level_for(fraction: float | None) -> str:
    """``low``, ``mid`` or ``high`` for a fill fraction; ``none`` when there is no reading."""
    if fraction is None:
        return "none"
    if fraction >= DANGER_AT:
        return "high"
    if fraction >= WARN_AT:
        return "mid"
    return "low"


def bar_text(fraction: float | None, width: int) -> tuple[str, str]:
    """The filled and empty parts of a bar ``width`` cells wide (eighths for precision)."""
    if width <= 0:
        return "", ""
    if fraction is None:
        return "", "·" * width
    fraction = min(1.0, max(0.0, fraction))
    eighths = round(fraction * width * 8)
    full, part = divmod(eighths, 8)
    filled = "█" * full + (" ▏▎▍▌▋▊▉"[part] if part else "")
    return filled, "░" * (width - len(filled))


class Gauge(Widget):
    """``label ▕████░░░░▏ 12.1/24.0 GiB 50%`` on one line.

    Args:
        label: fixed-width name on the left (``GPU 0``, ``RAM``).
        used, total: the reading; None shows "N/A".
        as_bytes: format the numbers as bytes (else as percent of 100).
    """

    DEFAULT_CSS = """
    Gauge { height: 1; width: 1fr; }
    Gauge > .gauge--low { color: $success; }
    Gauge > .gauge--mid { color: $warning; }
    Gauge > .gauge--high { color: $error; }
    Gauge > .gauge--none { color: $text-muted; }
    Gauge > .gauge--empty { color: $foreground 30%; }
    """
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "gauge--low",
        "gauge--mid",
        "gauge--high",
        "gauge--none",
        "gauge--empty",
    }

    def __init__(
        self,
        label: str,
        used: float | None = None,
        total: float | None = None,
        *,
        as_bytes: bool = True,
        label_width: int = 8,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.label = label
        self.used = used
        self.total = total
        self.as_bytes = as_bytes
        self.label_width = label_width

    def set_reading(self, used: float | None, total: float | None) -> None:
        self.used, self.total = used, total
        self.refresh()

    @property
    def fraction(self) -> float | None:
        if self.used is None or not self.total:
            return None
        return self.used / self.total

    def _numbers(self) -> str:
        fraction = self.fraction
        if not self.as_bytes:
            return "N/A" if self.used is None else f"{self.used:3.0f}%"
        if self.used is None:
            return "N/A"
        percent = f" {fraction * 100:3.0f}%" if fraction is not None else ""
        return f"{format_bytes_of(self.used, self.total)}{percent}"

    def render(self) -> Text:
        numbers = self._numbers()
        label = self.label[: self.label_width].ljust(self.label_width)
        width = max(0, self.size.width - len(label) - len(numbers) - 4)
        fraction = (
            self.fraction if self.as_bytes else (None if self.used is None else self.used / 100)
        )
        filled, empty = bar_text(fraction, width)
        level = level_for(fraction)
        text = Text(label + " ▕")
        text.append(filled, self.get_component_rich_style(f"gauge--{level}"))
        text.append(empty, self.get_component_rich_style("gauge--empty"))
        text.append("▏ ")
        text.append(numbers, self.get_component_rich_style(f"gauge--{level}"))
        return text
