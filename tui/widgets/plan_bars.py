"""Every candidate plan as a memory bar against the device's memory.

One row a method: its name, a bar filled to its predicted peak (green below 80 % of the
device, yellow up to 100 %, red beyond, as nvitop colours memory), the figure, the step
time and whether it fits ("slow" when it fits but the planner finds it impractical). The
recommended row is starred; the row that will run is marked with ▶. The device and its free
memory are the border's title, so every row is a method.

Rows never wrap and never drop a method: the columns are as wide as their widest figure,
and the bar takes what is left of the width; when too little is left the bar goes, then
the step time's "/step", and only then is the row cut at its end.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.widget import Widget

from affiner.planner.units import format_bytes, format_bytes_of
from affiner.tui.assistant import device_memory, recommended, step_seconds
from affiner.tui.assistant.answers import calibration_note, impractical, per_step

SHORT_NAMES = {
    "full": "full",
    "freeze": "freeze",
    "lora": "LoRA",
    "qlora": "QLoRA",
    "lora8": "LoRA 8-bit",
}

#: The narrowest bar worth drawing; below it the row goes without one.
MIN_BAR = 4


def bar_style(fraction: float) -> str:
    """Green below 80 % of the device, yellow to 100 %, red past it."""
    if fraction <= 0.8:
        return "green"
    if fraction <= 1.0:
        return "yellow"
    return "red"


def verdict(candidate: Any) -> tuple[str, str]:
    """The row's last word and its colour: fits, slow (fits, impractical) or too big."""
    if not candidate.fits:
        return "too big", "red"
    if impractical(candidate):
        return "slow", "yellow"
    return "fits", "green"


def title(device: Any) -> str:
    """The panel's title: the device and the memory a run may use on it."""
    return f"Memory on {getattr(device, 'name', 'device')} ({format_bytes(device_memory(device))} free)"


def render_bars(report: Any, device: Any, chosen: str | None, width: int) -> Text:
    """The rows as Rich Text for a `width`-column area (pure: tested without a terminal)."""
    capacity = device_memory(device)
    best = recommended(report)
    selected = chosen or (best.method if best is not None else None)
    rows = []
    for candidate in report.candidates:
        seconds = step_seconds(candidate)
        rows.append(
            (
                candidate,
                SHORT_NAMES.get(candidate.method, candidate.method),
                format_bytes_of(candidate.peak_bytes, capacity),
                ("measured " if calibration_note(candidate) else "") + per_step(seconds),
                *verdict(candidate),
            )
        )
    name_w = max((len(r[1]) for r in rows), default=4) + 1
    fig_w = max((len(r[2]) for r in rows), default=0)
    step_w = max((len(r[3]) for r in rows), default=0)
    word_w = max((len(r[4]) for r in rows), default=0)
    # marker, name, " fig step verdict", " ★"
    fixed = 2 + name_w + 1 + fig_w + 1 + step_w + 1 + word_w + 2
    bar_w = width - fixed - 1  # the space after the bar
    short_steps = False
    if bar_w < MIN_BAR:
        bar_w = 0
        if fixed > width:  # "/step" goes before anything is cut
            short_steps = True
            step_w = max((len(r[3].removesuffix("/step")) for r in rows), default=0)
    lines: list[Text] = []
    for candidate, label, figure, step, word, colour in rows:
        text = Text(no_wrap=True, overflow="ellipsis")
        peak = candidate.peak_bytes
        mine = candidate.method == selected
        text.append("▶ " if mine else "  ", style="bold")
        text.append(f"{label:<{name_w}}", style="bold" if mine else "")
        if bar_w:
            fraction = peak / capacity if capacity else float("inf")
            filled = bar_w if fraction >= 1 else round(fraction * bar_w)
            text.append("█" * filled, style=bar_style(fraction))
            text.append("░" * (bar_w - filled), style="dim")
            text.append(" ")
        if short_steps:
            step = step.removesuffix("/step")
        text.append(f"{figure:>{fig_w}} {step:>{step_w}} ")
        text.append(word, style=colour)
        star = " ★" if best is not None and candidate.method == best.method else ""
        text.append(star, style="bold yellow")
        text.append(" " * (word_w + 2 - len(word) - len(star)))
        text.truncate(width, overflow="ellipsis")  # the last resort: cut at the end
        lines.append(text)
    if best is None:
        none = Text(
            "Nothing fits: try a shorter length, a smaller batch or another GPU.", style="red"
        )
        none.truncate(width, overflow="ellipsis")
        lines.append(none)
    return Text("\n", no_wrap=True, overflow="ellipsis").join(lines)


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
        self.border_title = title(device) if report is not None else None
        self.refresh(layout=True)

    def get_content_height(self, container: Any, viewport: Any, width: int) -> int:
        if self.report is None:
            return 1
        return len(self.report.candidates) + (1 if recommended(self.report) is None else 0)

    def render(self) -> Text:
        if self.report is None:
            return Text("No plan yet.", style="dim")
        return render_bars(self.report, self.device, self.chosen, self.content_size.width)
