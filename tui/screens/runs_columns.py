"""The runs table's rows and columns: what each column says, and which stay as the screen narrows.

Every column has a priority. The run's short id, its state and its best evaluation never
leave; progress, method, model, time, peak memory, data and age follow, in that order, as
long as they fit the screen's width. Model and data names shrink (ending in ``…``) before
they are dropped, as they are read, not typed; the id is never cut, since it is what the
user types into ``affiner attach`` or ``affiner stop``.

`RunRow` is built in the list worker (it reads ``run.toml`` and the events) and is plain
data, so the screen draws it on the event loop without touching a file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from affiner.planner.units import GIB, format_duration
from affiner.runner.run import RunSummary
from affiner.tui.screens.run_facts import FactsCache, RunSettings

#: Cells DataTable puts around a column's content (one each side).
PADDING = 2


@dataclass(frozen=True)
class RunRow:
    """One line of the runs table: the summary, and what the table shows beside it."""

    summary: RunSummary
    short_id: str
    settings: RunSettings | None = None
    seconds: float | None = None
    peak_bytes: int | None = None

    @property
    def run_id(self) -> str:
        return self.summary.run_id


def build_rows(
    summaries: list[RunSummary], short: dict[str, str], cache: FactsCache
) -> list[RunRow]:
    """The table's rows, reading each run's settings and (incrementally) its events."""
    rows = []
    for summary in summaries:
        seconds, peak = cache.read(summary.path, lambda f: (f.seconds, f.peak_bytes))
        rows.append(
            RunRow(
                summary=summary,
                short_id=short.get(summary.run_id, summary.run_id),
                settings=RunSettings.read(summary.path),
                seconds=seconds,
                peak_bytes=peak,
            )
        )
    cache.forget_except(s.path for s in summaries)
    return rows


# -- cell texts -----------------------------------------------------------------------------


def age_text(summary: RunSummary, now: float) -> str:
    """How long ago the run started (``3 h 5 min``), from `now` rather than the wall clock."""
    started = summary.started or summary.updated
    return "N/A" if started is None else format_duration(max(0.0, now - started))


def progress_text(summary: RunSummary) -> str:
    if summary.progress is None:
        return f"{summary.step}" if summary.step else "N/A"
    return f"{summary.progress * 100:3.0f}% {summary.step}/{summary.total_steps}"


def best_text(summary: RunSummary) -> str:
    """``1.900 acc 0.91``: the lowest eval loss, with a classifier's accuracy or F1 at it."""
    if summary.best_eval_loss is None:
        return "N/A"
    text = f"{summary.best_eval_loss:.3f}"
    if summary.best_metric_name in ("accuracy", "f1") and summary.best_metric is not None:
        text += f" {summary.best_metric_name[:3]} {summary.best_metric:.2f}"
    return text


def gib_text(num_bytes: int | None) -> str:
    """Bytes in GiB for a column headed "GiB" (two decimals below 10 GiB, one above)."""
    if not num_bytes:
        return "N/A"
    value = num_bytes / GIB
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def method_text(row: RunRow) -> str:
    """``lora``, and a multi-process run's layout after it: ``lora 2×ddp``."""
    settings = row.settings
    method = (settings.method if settings else "") or row.summary.method or "N/A"
    layout = settings.layout if settings else ""
    return f"{method} {layout}" if layout else method


def cell_texts(row: RunRow, now: float, marked: bool) -> dict[str, str]:
    """Every column's text for `row`, by column key."""
    s, settings = row.summary, row.settings
    return {
        "mark": "✓" if marked else " ",
        "run": row.short_id,
        "state": s.state,
        "best": best_text(s),
        "progress": progress_text(s),
        "method": method_text(row),
        "model": (settings.model if settings else "") or s.model or "N/A",
        "time": format_duration(row.seconds),
        "peak": gib_text(row.peak_bytes),
        "data": (settings.data if settings else "") or "N/A",
        "age": age_text(s, now),
    }


# -- columns --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """A column of the runs table.

    Attributes:
        priority: lower stays longer as the screen narrows (0: always shown).
        shrink_to: the narrowest a name column may get (ending in ``…``); 0 never cuts.
        cap: the widest it gets, however long its longest text.
    """

    key: str
    label: str
    priority: int
    shrink_to: int = 0
    cap: int = 0


#: In the order they are shown.
COLUMNS: tuple[Column, ...] = (
    Column("mark", "✓", 0),
    Column("run", "run", 0),
    Column("state", "state", 0),
    Column("progress", "progress", 1),
    Column("best", "best eval", 0),
    Column("method", "method", 2),
    Column("model", "model", 3, shrink_to=10, cap=28),
    Column("time", "time", 4),
    Column("peak", "peak GiB", 5),
    Column("data", "data", 6, shrink_to=8, cap=24),
    Column("age", "age", 7),
)


def fit_columns(cells: list[dict[str, str]], width: int) -> list[tuple[Column, int]]:
    """The columns that fit in `width` cells, each with its content width, in display order.

    Columns are taken by priority while they fit; a name column that does not fit whole
    is narrowed down to its `Column.shrink_to` first. Priority-0 columns are always kept.
    """
    natural = {}
    for column in COLUMNS:
        longest = max([len(column.label), *(len(c[column.key]) for c in cells)])
        natural[column.key] = min(longest, column.cap) if column.cap else longest
    chosen: dict[str, int] = {}
    left = width
    for column in sorted(COLUMNS, key=lambda c: c.priority):
        want = natural[column.key]
        if column.priority == 0:
            chosen[column.key] = want
            left -= want + PADDING
            continue
        room = left - PADDING
        if want <= room:
            chosen[column.key] = want
        elif column.shrink_to and room >= column.shrink_to:
            chosen[column.key] = room
        else:
            break
        left -= chosen[column.key] + PADDING
    return [(c, chosen[c.key]) for c in COLUMNS if c.key in chosen]


def clip(text: str, width: int) -> str:
    """`text` in at most `width` cells, ending in ``…`` when cut."""
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def detail_text(row: RunRow) -> str:
    """The line under the table for the highlighted run: its whole id and what it says."""
    s = row.summary
    parts = [s.run_id if row.short_id == s.run_id else f"{s.run_id} (id {row.short_id})"]
    if s.message:
        parts.append(s.message)
    return " · ".join(parts)


def runs_title(count: int, live: int, root: Path) -> str:
    """``3 runs (1 live) in runs``, with the plural right."""
    noun = "run" if count == 1 else "runs"
    return f"{count} {noun} ({live} live) in {root}"
