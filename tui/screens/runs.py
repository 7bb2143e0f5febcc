"""The runs screen: every run under the runs root, live or past, in a table.

Enter opens the highlighted run in the monitor. Space marks a run; with two or three marked,
``c`` compares them below the table: settings and final metrics beside their training-loss
curves (`affiner.tui.screens.runs_compare`). The table shows each run by its short id, the
one ``affiner attach``/``stop`` accept, and drops columns by priority as the screen narrows
(`affiner.tui.screens.runs_columns`); the line under it names the highlighted run in full. ``e`` exports the
highlighted run (merged safetensors, and a GGUF with an Ollama Modelfile when llama.cpp's
converter is there) through the same child process as ``affiner export``; ``r`` resumes a
stopped, failed or interrupted run from its last checkpoint. The list comes from
`affiner.runner.run.runs.list_runs` in a thread worker and refreshes while the screen is shown; ages
are measured against `Services.clock` (fixed in tests, so snapshots never drift).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Static

from affiner.planner.errors import AffinerError
from affiner.runner.run import RunSummary, TrainLog, last_attempt, list_runs, read_events
from affiner.tui.cli.export import ExportOutcome, run_export_child
from affiner.tui.live import Point
from affiner.tui.messages import RunsListed
from affiner.tui.screens.run_facts import FactsCache, RunSettings, short_ids
from affiner.tui.screens.runs_columns import (
    RunRow,
    build_rows,
    cell_texts,
    clip,
    detail_text,
    fit_columns,
    runs_title,
)
from affiner.tui.screens.runs_compare import CompareRun, CompareView

#: Seconds between refreshes of the list while it is shown.
REFRESH_SECONDS = 5.0
#: How many runs compare lays side by side (more would not fit 80 columns).
MAX_COMPARED = 3
#: Rows of the list kept on screen while compare is open (it scrolls past them).
COMPARING_ROWS = 5


def train_curve(run_dir: Path) -> list[Point]:
    """A run's training loss, (step, loss), as its latest attempt logged it."""
    events = last_attempt(read_events(run_dir))
    return [
        (float(e.step), float(e.loss))
        for e in events
        if isinstance(e, TrainLog) and e.loss is not None
    ]


class RunsScreen(Screen):
    """Past and active runs; open one, or compare two or three."""

    HELP = (
        "Every run in the runs folder, newest first: its short id (what affiner attach, stop, "
        "export and train --resume accept), state, progress, best evaluation and, as width "
        "allows, method, model, time, peak memory and data. Enter opens one in the monitor; "
        "Space marks two or three and c compares their settings, metrics and curves; e "
        "exports the highlighted run; r resumes a stopped one."
    )

    DEFAULT_CSS = """
    RunsScreen #runs-title { height: auto; padding: 0 1; }
    RunsScreen #runs-table { height: 1fr; }
    RunsScreen #runs-detail { height: auto; max-height: 2; padding: 0 1; color: $text-muted; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open_run", "Open", show=True),
        Binding("space", "mark", "Mark"),
        Binding("c", "compare", "Compare"),
        Binding("e", "export", "Export"),
        # not in the footer, which at 80 columns already drops F-keys (the monitor offers
        # Resume in Stop's place once a run has stopped)
        Binding("r", "resume", "Resume", show=False),
        Binding("ctrl+r,f9", "refresh", "Refresh"),
        Binding("escape", "close_compare", "Close compare", show=False),
    ]

    def __init__(self, services: object, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.services = services
        self.rows: list[RunRow] = []
        self.marked: list[str] = []
        self._active = False
        self._timer: Timer | None = None
        self._facts = FactsCache()
        self._shown_columns: list[str] = []
        self._layout: list[tuple[str, int]] = []

    @property
    def summaries(self) -> list[RunSummary]:
        return [row.summary for row in self.rows]

    def compose(self) -> ComposeResult:
        yield Static(id="runs-title")
        yield DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        yield Static(id="runs-detail")
        yield CompareView(id="compare")
        yield Footer(compact=True)

    def on_screen_resume(self) -> None:
        self._active = True
        self.query_one("#runs-table", DataTable).focus()
        self._list()

    def on_screen_suspend(self) -> None:
        self._active = False

    def on_resize(self, event: events.Resize) -> None:
        self._draw()

    def action_refresh(self) -> None:
        self._list()

    @work(thread=True, exclusive=True, group="runs", name="list-runs", exit_on_error=False)
    def _list(self) -> None:
        root = Path(self.services.runs_root)  # type: ignore[attr-defined]
        summaries = list_runs(root)
        try:
            names = [p.name for p in root.iterdir() if p.is_dir()]
        except OSError:
            names = []
        short = short_ids([s.run_id for s in summaries], names)
        self.post_message(RunsListed(rows=build_rows(summaries, short, self._facts)))

    @on(RunsListed)
    def _listed(self, message: RunsListed) -> None:
        self.rows = list(message.rows)
        self._draw()
        if self._active:
            # One pending re-poll at most, however many refreshes were asked for.
            if self._timer is not None:
                self._timer.stop()
            self._timer = self.set_timer(REFRESH_SECONDS, self._rearm, name="runs-poll")

    def _rearm(self) -> None:
        if self._active:
            self._list()

    def _draw(self) -> None:
        """Fill the table with the columns that fit the screen's width now."""
        if not self.is_mounted:
            return
        now = self.services.clock()  # type: ignore[attr-defined]
        root = self.services.runs_root  # type: ignore[attr-defined]
        title = self.query_one("#runs-title", Static)
        if self.rows:
            live = sum(row.summary.live for row in self.rows)
            title.update(
                f"{runs_title(len(self.rows), live, root)} · r resumes a stopped run ·"
                " Space marks 2-3 runs, c compares them"
            )
        else:
            title.update(f"No runs in {root} yet. F2 opens the assistant to start one.")
        table = self.query_one("#runs-table", DataTable)
        keep = table.cursor_row
        ids = {row.run_id for row in self.rows}
        self.marked = [m for m in self.marked if m in ids]
        cells = [cell_texts(row, now, row.run_id in self.marked) for row in self.rows]
        # the table's own width, less a vertical scrollbar should the rows overflow
        width = (table.size.width or self.size.width or 80) - 2
        columns = fit_columns(cells, width)
        layout = [(column.key, column_width) for column, column_width in columns]
        if layout == self._layout:
            table.clear()  # the same columns: keep them (and the header) as they are
        else:
            table.clear(columns=True)
            for column, column_width in columns:
                table.add_column(column.label, key=column.key, width=column_width)
            self._layout = layout
        self._shown_columns = [key for key, _ in layout]
        for row, texts in zip(self.rows, cells, strict=True):
            table.add_row(*(clip(texts[c.key], w) for c, w in columns), key=row.run_id)
        if self.rows:
            table.move_cursor(row=min(max(keep, 0), len(self.rows) - 1))
        self._fit_height()
        self._show_detail()

    def _fit_height(self) -> None:
        """While comparing, the list keeps just its rows (a few at most); else it fills."""
        table = self.query_one("#runs-table", DataTable)
        if self.has_class("-comparing"):
            table.styles.height = min(len(self.rows), COMPARING_ROWS) + 1
        else:
            table.styles.height = "1fr"

    def _show_detail(self) -> None:
        row = self._highlighted_row()
        self.query_one("#runs-detail", Static).update(detail_text(row) if row else "")

    def _highlighted_row(self) -> RunRow | None:
        table = self.query_one("#runs-table", DataTable)
        if not self.rows or table.cursor_row < 0:
            return None
        return self.rows[min(table.cursor_row, len(self.rows) - 1)]

    def _highlighted(self) -> RunSummary | None:
        row = self._highlighted_row()
        return row.summary if row is not None else None

    # -- actions --------------------------------------------------------------------------

    @on(DataTable.RowHighlighted, "#runs-table")
    def _moved(self, event: DataTable.RowHighlighted) -> None:
        self._show_detail()

    @on(DataTable.RowSelected, "#runs-table")
    def _selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open_run()

    def action_open_run(self) -> None:
        summary = self._highlighted()
        if summary is not None:
            self.app.open_monitor(summary.path)  # type: ignore[attr-defined]

    def action_mark(self) -> None:
        summary = self._highlighted()
        if summary is None:
            return
        if summary.run_id in self.marked:
            self.marked.remove(summary.run_id)
        else:
            self.marked = [*self.marked, summary.run_id][-MAX_COMPARED:]
        if "mark" not in self._shown_columns:
            return
        table = self.query_one("#runs-table", DataTable)
        for run_id in (row.run_id for row in self.rows):
            table.update_cell(run_id, "mark", "✓" if run_id in self.marked else " ")

    def action_compare(self) -> None:
        if len(self.marked) < 2:
            self.notify(
                f"Mark two or three runs with Space, then press c to compare them "
                f"({len(self.marked)} marked).",
                timeout=4,
            )
            return
        by_id = {row.run_id: row for row in self.rows}
        self._load_compare([by_id[run_id] for run_id in self.marked])

    @work(
        thread=True, exclusive=True, group="runs-compare", name="compare-runs", exit_on_error=False
    )
    def _load_compare(self, rows: list[RunRow]) -> None:
        runs = [self._compare_run(row) for row in rows]
        self.app.call_from_thread(self._show_compare, runs)

    def _compare_run(self, row: RunRow) -> CompareRun:
        """What compare shows of one run, read in the worker (plain data, copied)."""
        settings = row.settings or RunSettings.read(row.summary.path)
        task = row.summary.task or (settings.task if settings else "")
        return self._facts.read(
            row.summary.path,
            lambda facts: CompareRun(
                run_id=row.run_id,
                short_id=row.short_id,
                task=task,
                settings=settings,
                final_train_loss=facts.final_train_loss,
                best=facts.best_eval,
                seconds=facts.seconds,
                peak_bytes=facts.peak_bytes,
                curve=facts.train_curve,
            ),
        )

    def _show_compare(self, runs: list[CompareRun]) -> None:
        self.query_one(CompareView).show(runs)
        self.add_class("-comparing")
        self._fit_height()

    def action_close_compare(self) -> None:
        self.query_one(CompareView).hide()
        self.remove_class("-comparing")
        self._fit_height()

    def action_resume(self) -> None:
        summary = self._highlighted()
        if summary is None:
            return
        if summary.live or summary.state == "finished":
            self.notify(
                f"{summary.run_id} is {summary.state}: there is nothing to resume.", timeout=5
            )
            return
        self._resume(summary.path)

    @work(thread=True, group="runs-resume", name="resume-run", exit_on_error=False)
    def _resume(self, run_dir: Path) -> None:
        try:
            message = self.services.resume_run(run_dir)  # type: ignore[attr-defined]
        except AffinerError as error:
            self.app.call_from_thread(self.notify, str(error), severity="error", timeout=8)
            return
        self.app.call_from_thread(self.notify, message, timeout=6)
        self.app.call_from_thread(self.action_refresh)

    def action_export(self) -> None:
        summary = self._highlighted()
        if summary is None:
            return
        if summary.live:
            self.notify(f"{summary.run_id} is still training: export it once it ends.", timeout=5)
            return
        # a second export beside a running one would merge the model twice in memory (a thread
        # worker cannot be cancelled, so "exclusive" alone would not stop the first)
        if any(w.group == "runs-export" and w.is_running for w in self.workers):
            self.notify("An export is running: wait for it to finish.", timeout=5)
            return
        self.notify(f"Exporting {summary.run_id}: merging its weights…", timeout=5)
        self._export(summary.path)

    @work(thread=True, group="runs-export", name="export-run", exit_on_error=False)
    def _export(self, run_dir: Path) -> None:
        # A GGUF and a Modelfile where llama.cpp's converter is found; otherwise the outcome
        # says what is missing, and merged/ is written all the same.
        outcome = run_export_child(run_dir, gguf=True, ollama=True)
        self.app.call_from_thread(self._exported, outcome)

    def _exported(self, outcome: ExportOutcome) -> None:
        if outcome.error is not None:
            hint = outcome.error.get("hint")
            text = str(outcome.error.get("message")) + (f" ({hint})" if hint else "")
            self.notify(f"Export failed: {text}", severity="error", timeout=12)
            return
        result = outcome.result or {}
        written = [
            Path(str(result[k])).name for k in ("merged", "gguf", "modelfile") if result.get(k)
        ]
        text = f"Exported to {Path(str(result.get('merged'))).parent}: {', '.join(written)}."
        for gap in outcome.missing:
            text += f"\nMissing: {gap}"
        self.notify(text, severity="warning" if outcome.missing else "information", timeout=15)
