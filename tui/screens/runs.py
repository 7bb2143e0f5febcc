"""The runs screen: every run under the runs root, live or past, in a table.

Enter opens the highlighted run in the monitor. Space marks a run; with two marked, ``c``
overlays their training-loss curves below the table to compare them. ``e`` exports the
highlighted run (merged safetensors, and a GGUF with an Ollama Modelfile when llama.cpp's
converter is there) through the same child process as ``affiner export``; ``r`` resumes a
stopped, failed or interrupted run from its last checkpoint. The list comes from
`affiner.runner.run.runs.list_runs` in a thread worker and refreshes while the screen is shown; ages
are measured against `Services.clock` (fixed in tests, so snapshots never drift).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Static

from affiner.planner.errors import AffinerError
from affiner.planner.units import format_duration
from affiner.runner.run import RunSummary, TrainLog, last_attempt, list_runs, read_events
from affiner.tui.cli.export import ExportOutcome, run_export_child
from affiner.tui.live import Point
from affiner.tui.messages import RunsListed
from affiner.tui.widgets.plots import LossPlot

#: Seconds between refreshes of the list while it is shown.
REFRESH_SECONDS = 5.0


def age_text(summary: RunSummary, now: float) -> str:
    """How long ago the run started (``3h05m``), from `now` rather than the wall clock."""
    started = summary.started or summary.updated
    return "N/A" if started is None else format_duration(max(0.0, now - started))


def progress_text(summary: RunSummary) -> str:
    if summary.progress is None:
        return f"{summary.step}" if summary.step else "N/A"
    return f"{summary.progress * 100:3.0f}% {summary.step}/{summary.total_steps}"


def best_text(summary: RunSummary) -> str:
    if summary.best_eval_loss is None:
        return "N/A"
    text = f"{summary.best_eval_loss:.4f}"
    if summary.best_metric_name in ("accuracy", "f1") and summary.best_metric is not None:
        text += f" {summary.best_metric_name[:3]} {summary.best_metric:.3f}"
    return text


def train_curve(run_dir: Path) -> list[Point]:
    """A run's training loss, (step, loss), as its latest attempt logged it."""
    events = last_attempt(read_events(run_dir))
    return [
        (float(e.step), float(e.loss))
        for e in events
        if isinstance(e, TrainLog) and e.loss is not None
    ]


class RunsScreen(Screen):
    """Past and active runs; open one, or compare two."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open_run", "Open", show=True),
        Binding("space", "mark", "Mark"),
        Binding("c", "compare", "Compare 2"),
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
        self.summaries: list[RunSummary] = []
        self.marked: list[str] = []
        self._active = False
        self._timer: Timer | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="runs-title")
        yield DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        yield LossPlot(title="train loss", id="runs-compare")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        table = self.query_one("#runs-table", DataTable)
        table.add_column("✓", key="mark", width=1)
        table.add_column("run", key="run")
        table.add_column("state", key="state")
        table.add_column("progress", key="progress")
        table.add_column("age", key="age")
        table.add_column("best eval", key="best")
        self.query_one("#runs-compare", LossPlot).display = False

    def on_screen_resume(self) -> None:
        self._active = True
        self.query_one("#runs-table", DataTable).focus()
        self._list()

    def on_screen_suspend(self) -> None:
        self._active = False

    def action_refresh(self) -> None:
        self._list()

    @work(thread=True, exclusive=True, group="runs", name="list-runs", exit_on_error=False)
    def _list(self) -> None:
        self.post_message(RunsListed(rows=list_runs(self.services.runs_root)))  # type: ignore[attr-defined]

    @on(RunsListed)
    def _listed(self, message: RunsListed) -> None:
        self.summaries = list(message.rows)
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
        now = self.services.clock()  # type: ignore[attr-defined]
        root = self.services.runs_root  # type: ignore[attr-defined]
        live = sum(s.live for s in self.summaries)
        title = self.query_one("#runs-title", Static)
        if self.summaries:
            title.update(
                f"{len(self.summaries)} runs ({live} live) in {root}. "
                "Enter opens · Space marks · c compares two"
            )
        else:
            title.update(f"No runs in {root} yet. F2 opens the assistant to start one.")
        table = self.query_one("#runs-table", DataTable)
        keep = table.cursor_row
        table.clear()
        ids = {s.run_id for s in self.summaries}
        self.marked = [m for m in self.marked if m in ids]
        for summary in self.summaries:
            table.add_row(
                "✓" if summary.run_id in self.marked else " ",
                summary.run_id,
                summary.state,
                progress_text(summary),
                age_text(summary, now),
                best_text(summary),
                key=summary.run_id,
            )
        if self.summaries:
            table.move_cursor(row=min(keep, len(self.summaries) - 1))

    def _highlighted(self) -> RunSummary | None:
        table = self.query_one("#runs-table", DataTable)
        if not self.summaries or table.cursor_row < 0:
            return None
        return self.summaries[min(table.cursor_row, len(self.summaries) - 1)]

    # -- actions --------------------------------------------------------------------------

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
            self.marked = [*self.marked, summary.run_id][-2:]
        table = self.query_one("#runs-table", DataTable)
        for run_id in (s.run_id for s in self.summaries):
            table.update_cell(run_id, "mark", "✓" if run_id in self.marked else " ")

    def action_compare(self) -> None:
        if len(self.marked) != 2:
            self.notify("Mark two runs with Space, then press c to compare them.", timeout=4)
            return
        paths = {s.run_id: s.path for s in self.summaries}
        self._load_curves([(run_id, paths[run_id]) for run_id in self.marked])

    @work(
        thread=True, exclusive=True, group="runs-compare", name="compare-runs", exit_on_error=False
    )
    def _load_curves(self, runs: list[tuple[str, Path]]) -> None:
        curves = [(run_id, train_curve(path)) for run_id, path in runs]
        self.app.call_from_thread(self._show_curves, curves)

    def _show_curves(self, curves: list[tuple[str, list[Point]]]) -> None:
        plot = self.query_one("#runs-compare", LossPlot)
        plot.display = True
        plot.set_curves(curves)

    def action_close_compare(self) -> None:
        self.query_one("#runs-compare", LossPlot).display = False

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
