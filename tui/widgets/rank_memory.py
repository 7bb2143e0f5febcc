"""Memory per rank against the per-GPU prediction: the monitor's view of a multi-process run.

With DDP every rank holds a whole replica; with FSDP or ZeRO each holds a shard, and the
planner predicts the peak of ONE GPU. So the figure to hold against the prediction is each
rank's own, not a sum and not the machine's: one small gauge a rank, several to a line as the
width allows (two at 80 columns, so eight ranks take four lines), each filled by its share of
the prediction. The rank holding the most is flagged when it is past the plan, since that is
the GPU that runs out first. A single-process run has no ranks and the panel stays hidden.

The figures follow `affiner.tui.live.ranks` (allocator peak, else the GPU's use, else the
process's peak RSS), so they are the ones ``affiner attach`` prints.
"""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.widget import Widget

from affiner.planner.units import format_bytes, format_bytes_of
from affiner.tui.live import RunHistory
from affiner.tui.live.ranks import RankReading, over_plan
from affiner.tui.widgets.gauge import bar_text

#: Cells one rank's gauge takes, and between two on a line.
CELL_WIDTH = 38
GAP = 2
#: A rank past the prediction by more than this share is drawn as in danger (the drift
#: warning's own margin, `affiner.tui.live.drift.MEMORY_DRIFT`); up to it, as getting tight.
DANGER_OVER = 0.10
FLAG = " ⚠"


def cells_per_line(width: int) -> int:
    """How many rank gauges fit side by side in `width` cells (at least one)."""
    return max(1, (width + GAP) // (CELL_WIDTH + GAP))


def level_of(reading: RankReading, predicted: int | None) -> str:
    """``low`` within the plan, ``mid`` a little past it, ``high`` well past; ``none`` unread."""
    if reading.used_bytes is None:
        return "none"
    if not predicted:
        return "low"
    if reading.used_bytes <= predicted:
        return "low"
    return "high" if reading.used_bytes > predicted * (1 + DANGER_OVER) else "mid"


def heading(history: RunHistory, readings: list[RankReading]) -> str:
    """``Memory per rank (allocator peak) · plan 20.0 GiB per GPU · rank 1 is past it``."""
    sources = sorted({r.source for r in readings if r.used_bytes is not None})
    basis = f" ({', '.join(sources)})" if sources else ""
    predicted = history.predicted_peak_bytes
    unit = "per GPU" if history.on_gpu else "per process"
    parts = [f"Memory per rank{basis}"]
    parts.append(f"plan {format_bytes(predicted)} {unit}" if predicted else "no prediction")
    top = over_plan(readings, predicted)
    if top is not None:
        parts.append(f"{top.label} is past it")
    return " · ".join(parts)


def cell(reading: RankReading, predicted: int | None, label_width: int, flagged: bool) -> str:
    """One rank's gauge as plain text (what the tests read): ``rank 0 ▕███░░▏ 1.2/2.0 GiB``."""
    label, bar, numbers, flag = _parts(reading, predicted, label_width, flagged)
    return f"{label} ▕{bar[0]}{bar[1]}▏ {numbers}{flag}"


def _parts(
    reading: RankReading, predicted: int | None, label_width: int, flagged: bool
) -> tuple[str, tuple[str, str], str, str]:
    whole = predicted or reading.capacity
    numbers = format_bytes_of(reading.used_bytes, whole)
    flag = FLAG if flagged else ""
    label = reading.label.ljust(label_width)
    width = max(3, CELL_WIDTH - len(label) - len(numbers) - len(FLAG) - 4)
    fraction = (reading.used_bytes / whole) if reading.used_bytes is not None and whole else None
    return label, bar_text(fraction, width), numbers, flag


class RankMemoryPanel(Widget):
    """Every rank's memory beside the per-GPU prediction, hidden for a single process."""

    DEFAULT_CSS = """
    RankMemoryPanel { height: auto; width: 1fr; padding: 0 1; display: none; }
    RankMemoryPanel.-shown { display: block; }
    RankMemoryPanel > .rank--heading { text-style: bold; }
    RankMemoryPanel > .rank--low { color: $success; }
    RankMemoryPanel > .rank--mid { color: $warning; }
    RankMemoryPanel > .rank--high { color: $error; }
    RankMemoryPanel > .rank--none { color: $text-muted; }
    RankMemoryPanel > .rank--empty { color: $foreground 30%; }
    """
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "rank--heading",
        "rank--low",
        "rank--mid",
        "rank--high",
        "rank--none",
        "rank--empty",
    }

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.history = RunHistory()
        self.readings: list[RankReading] = []

    def show(self, history: RunHistory) -> None:
        """Redraw from `history`; shown once a rank has reported (or the run said it has ranks)."""
        self.history = history
        self.readings = history.ranks
        shown = bool(self.readings)
        if shown != self.has_class("-shown"):
            self.set_class(shown, "-shown")
        self.refresh(layout=True)

    def lines(self, width: int) -> list[str]:
        """The panel as plain lines `width` cells wide (what the tests read)."""
        readings = self.readings
        if not readings:
            return []
        predicted = self.history.predicted_peak_bytes
        top = over_plan(readings, predicted)
        label_width = max(len(r.label) for r in readings)
        per_line = cells_per_line(width)
        out = [heading(self.history, readings)]
        for start in range(0, len(readings), per_line):
            row = readings[start : start + per_line]
            out.append(
                (" " * GAP)
                .join(cell(r, predicted, label_width, r is top).ljust(CELL_WIDTH) for r in row)
                .rstrip()
            )
        return out

    def render(self) -> Text:
        readings = self.readings
        if not readings:
            return Text("")
        predicted = self.history.predicted_peak_bytes
        top = over_plan(readings, predicted)
        label_width = max(len(r.label) for r in readings)
        per_line = cells_per_line(self.size.width or CELL_WIDTH)
        style = self.get_component_rich_style
        text = Text(heading(self.history, readings), style=style("rank--heading"))
        for index, reading in enumerate(readings):
            text.append("\n" if index % per_line == 0 else " " * GAP)
            label, (filled, empty), numbers, flag = _parts(
                reading, predicted, label_width, reading is top
            )
            level = style(f"rank--{level_of(reading, predicted)}")
            text.append(label + " ▕")
            text.append(filled, level)
            text.append(empty, style("rank--empty"))
            text.append("▏ ")
            text.append(numbers + flag, level)
            # pad a cell that is not the line's last, so the next starts in its column
            used = len(label) + 2 + len(filled) + len(empty) + 2 + len(numbers) + len(flag)
            if (index + 1) % per_line and index + 1 < len(readings):
                text.append(" " * max(0, CELL_WIDTH - used))
        return text
