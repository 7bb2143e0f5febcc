"""Every candidate plan as a memory bar against the device's memory.

One row a method: its name, a bar filled to its predicted peak (green below 80 % of the
device, yellow up to 100 %, red beyond, as nvitop colours memory), the figure, the step
time and whether it fits. The recommended row is starred; the row that will run is marked
with ▶. The bar scales to the widget's width, so it reads at 80 columns and at 200.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.widget import Widget

from affiner.planner.units import format_bytes, format_bytes_of, format_duration
from affiner.tui.assistant import device_memory, recommended, step_seconds

SHORT_NAMES = {
    "full": "full",
    "freeze": "freeze",
    "lora": "LoRA",
    "qlora": "QLoRA",
    "lora8": "LoRA 8-bit",
}


def bar_style(fraction: float) -> str:
    """Green below 80 % of the device, yellow to 100 %, red past it."""
    if fraction <= 0.8:
        return "green"
    if fraction <= 1.0:
        return "yellow"
    return "red"


def render_bars(report: Any, device: Any, chosen: str | None, width: int) -> Text:
    """The bars as Rich Text for a `width`-column area (pure: tested without a terminal)."""
    capacity = device_memory(device)
    best = recommended(report)
    selected = chosen or (best.method if best is not None else None)
    name_w = 12
    tail_w = 34  # " 61.0/24.0 GiB 900 ms/step fits ★"
    bar_w = max(8, width - name_w - tail_w - 2)
    text = Text(no_wrap=True, overflow="ellipsis")
    name = getattr(device, "name", "device")
    text.append(f"Memory on {name} ({format_bytes(capacity)} free)\n", style="bold")
    for candidate in report.candidates:
        peak = candidate.peak_bytes
        fraction = peak / capacity if capacity else float("inf")
        filled = bar_w if fraction >= 1 else round(fraction * bar_w)
        marker = "▶ " if candidate.method == selected else "  "
        label = SHORT_NAMES.get(candidate.method, candidate.method)
        text.append(marker, style="bold")
        text.append(f"{label:<{name_w - 2}}", style="bold" if candidate.method == selected else "")
        text.append("█" * filled, style=bar_style(fraction))
        text.append("░" * (bar_w - filled), style="dim")
        figure = format_bytes_of(peak, capacity)
        seconds = step_seconds(candidate)
        step = f"{format_duration(seconds)}/step" if seconds else "N/A"
        verdict = "fits" if candidate.fits else "too big"
        star = " ★" if best is not None and candidate.method == best.method else ""
        text.append(f" {figure:>15} {step:>11} ")
        text.append(verdict, style="green" if candidate.fits else "red")
        text.append(star + "\n", style="bold yellow")
    if best is None:
        text.append(
            "Nothing fits: try a shorter length, a smaller batch or another GPU.\n", style="red"
        )
    text.rstrip()
    return text


class PlanBars(Widget):
    """The plan as bars; `update_plan` redraws it when settings or the device change."""

    DEFAULT_CSS = """
    PlanBars {
        height: auto;
        padding: 0 1;
        margin: 0 0 1 0;
        border: round $primary;
    }
    """

    def __init__(
        self, report: Any = None, device: Any = None, chosen: str | None = None, **kwargs: Any
    ):
        super().__init__(**kwargs)
        self.report, self.device, self.chosen = report, device, chosen

    def update_plan(self, report: Any, device: Any, chosen: str | None) -> None:
        self.report, self.device, self.chosen = report, device, chosen
        self.refresh(layout=True)

    def get_content_height(self, container: Any, viewport: Any, width: int) -> int:
        if self.report is None:
            return 1
        return len(self.report.candidates) + 1 + (1 if recommended(self.report) is None else 0)

    def render(self) -> Text:
        if self.report is None:
            return Text("No plan yet.", style="dim")
        return render_bars(self.report, self.device, self.chosen, self.content_size.width)
