"""The monitor: one run, live. Loss, memory against the plan, progress, evals, warnings, log.

A thread worker tails the run folder (`affiner.tui.live.watcher.watch_run`) and posts `RunBatch`
messages; the handler folds them into a `RunHistory` and redraws. Quitting the TUI cancels
the worker and leaves training alone, and opening the run again replays its whole history
from ``events.jsonl``.

Stopping asks first (a modal), then calls `Services.stop_run` in a worker: the run ends at
its next step, saves, and keeps its best checkpoint. When the run warns about overfitting,
the banner offers exactly that, with the key.

A multi-process run (``[distributed]``) says its layout in the title ("2 processes · ddp") and
shows each rank's memory against the per-GPU prediction under the progress bar
(`RankMemoryPanel`); the memory plot then draws one curve a rank. A rank that dies arrives as
an ordinary ``error`` event (``rank_failed``, naming the rank and its cause) and shows as any
error does: in the banner, the log and the summary.

The log pane shows affiner's own messages (every warning among them) and counts the
libraries' warnings in train.log; ``l`` shows those. Once the run has ended, a summary takes
the plots' place (time against the plan, score before and after, the weights and the commands
that use them); ``v`` switches between it and the curves.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Static
from textual.worker import Worker, WorkerState, get_current_worker

from affiner.planner.errors import AffinerError
from affiner.runner.config import read_raw_config
from affiner.runner.run import LIVE_STATES, RunDir, TrainLog, model_label, run_task
from affiner.tui.live import RunHistory, WatchBatch, watch_run
from affiner.tui.messages import RunBatch, WatchFailed
from affiner.tui.screens.confirm import ConfirmScreen
from affiner.tui.widgets.plots import LossPlot, MemoryPlot
from affiner.tui.widgets.rank_memory import RankMemoryPanel
from affiner.tui.widgets.run_log import RunLog
from affiner.tui.widgets.run_panels import EvalTable, RunProgress, RunStats, WarningsBanner
from affiner.tui.widgets.run_summary import ENDED, RESUMABLE, SummaryPanel, outcome_of

#: Smoothing weights the toggle cycles through (0 = raw).
SMOOTHING_STEPS = (0.6, 0.9, 0.0)


class MonitorScreen(Screen):
    """Live view of one run folder. `show_run(run_dir)` switches to another run."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("s,f8", "stop_run", "Stop run"),
        Binding("r", "resume_run", "Resume"),
        # one key, two labels: the footer names what v switches to
        Binding("v", "show_plots", "Plots"),
        Binding("v", "show_summary", "Summary"),
        Binding("t", "toggle_smoothing", "Smooth"),
        Binding("l", "toggle_log", "Lib log"),
        Binding("p,f7", "playground", "Chat"),
    ]

    def __init__(
        self, services: object, run_dir: str | Path | None = None, **kwargs: object
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.services = services
        self.run_dir: Path | None = Path(run_dir) if run_dir else None
        self.config_task = ""  # run.toml's task, read once a run: the eval table goes by it
        self.history = RunHistory()
        self.state = ""
        self.status_message = ""
        self._smoothing = 0
        self._ready = False
        #: the gradient norm of the last training log that had one (the stats panel shows it)
        self.grad_norm: float | None = None
        #: the summary in the plots' place: None follows the run (shown once it ends),
        #: True/False once the user chose with the key
        self._summary_choice: bool | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="run-title")
        yield WarningsBanner(stop_key="s", id="warnings")
        yield RunProgress(id="progress")
        yield RankMemoryPanel(id="ranks")
        with Horizontal(id="plots"):
            yield LossPlot(id="loss-plot")
            yield MemoryPlot(id="memory-plot")
        yield SummaryPanel(id="summary")
        with Horizontal(id="details"):
            yield RunStats(id="stats")
            with Vertical(id="tables"):
                yield EvalTable(id="evals")
                yield RunLog(id="log")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        # After the first refresh every child is mounted and can be queried.
        self.call_after_refresh(self._begin)

    def _begin(self) -> None:
        self._ready = True
        progress = self.query_one(RunProgress)
        progress.clock = getattr(self.services, "clock", progress.clock)
        # between log lines the ETA counts down: redraw the bar every second
        self.set_interval(1.0, progress.tick)
        if self.run_dir is not None:
            self.show_run(self.run_dir)
        else:
            self._draw()

    # -- following a run ------------------------------------------------------------------

    def show_run(self, run_dir: str | Path) -> None:
        """Show ``run_dir`` from its first event, and follow it until another run is shown."""
        self.workers.cancel_group(self, "run-watch")
        self.run_dir = Path(run_dir)
        self.config_task = run_task(self.run_dir)
        self.history = RunHistory()
        self.state, self.status_message = "", ""
        self.grad_norm = None
        self._summary_choice = None
        if self._ready:
            self.query_one(RunLog).reset()
            self._draw()
            self._watch_worker(self.run_dir)

    @work(thread=True, group="run-watch", name="watch-run", exit_on_error=False)
    def _watch_worker(self, run_dir: Path) -> None:
        worker = get_current_worker()

        def deliver(batch: WatchBatch) -> None:
            self.post_message(
                RunBatch(
                    run_dir=run_dir,
                    events=batch.events,
                    log_lines=batch.log_lines,
                    status=batch.status,
                    state=batch.state,
                    first=batch.first,
                )
            )

        try:
            watch_run(
                run_dir,
                deliver,
                lambda: worker.is_cancelled,
                interval=getattr(self.services, "run_poll_seconds", 0.5),
                alive=getattr(self.services, "is_run_alive", None),
            )
        except OSError as error:
            self.post_message(WatchFailed(run_dir=run_dir, error=str(error)))

    @on(RunBatch)
    def _batch(self, message: RunBatch) -> None:
        if message.run_dir != self.run_dir:
            return  # a late batch from the run shown before
        self.history.add(message.events)
        for event in message.events:
            if isinstance(event, TrainLog) and event.grad_norm is not None:
                self.grad_norm = event.grad_norm
        log = self.query_one(RunLog)
        log.add_events(message.events, language_model=self.config_task != "classification")
        if message.status is not None:
            self.status_message = message.status.message
            if not self.history.total_steps:
                self.history.total_steps = message.status.total_steps
        if message.state is not None and message.state != self.state:
            self.state = message.state
            if self.state in LIVE_STATES:  # resumed: the next ending shows its summary again
                self._summary_choice = None
            self.refresh_bindings()  # Stop while it runs, Resume once it has stopped
        if message.log_lines:
            log.add_log_lines(message.log_lines)
        self._draw()

    @on(WatchFailed)
    def _failed(self, message: WatchFailed) -> None:
        self.notify(f"Cannot read {message.run_dir}: {message.error}", severity="error")

    # -- drawing --------------------------------------------------------------------------

    def _draw(self) -> None:
        h = self.history
        title = self.query_one("#run-title", Static)
        self.set_class(self.run_dir is None, "-empty")  # nothing to plot: only the title says why
        if self.run_dir is None:
            title.update("No run open. F4 lists the runs; Enter on one opens it here.")
        else:
            model = model_label(h.model)
            # "2 processes · ddp" ("" for a single process) before the id: at 80 columns the
            # end of the line is cut, and the layout is what tells this run from a single one
            parts = [self.state, h.layout, h.run_id or self.run_dir.name, model, h.method]
            parts.append(h.device)
            title.update("  ·  ".join(p for p in parts if p))
        self.query_one(WarningsBanner).show(h, errors=not self.summary_shown)
        self.query_one(RunProgress).show(h, self.state)
        self.query_one(RankMemoryPanel).show(h)
        self.query_one(LossPlot).set_losses(h.train_loss, h.eval_loss, total_steps=h.total_steps)
        self.query_one(MemoryPlot).set_series(
            [(s.label, s.points) for s in h.memory.values()],
            predicted_peak=h.predicted_peak_bytes or self._planned_peak(),
            capacity=max((s.total or 0 for s in h.memory.values()), default=0) or None,
            title=self._memory_title(),
            total_steps=h.total_steps,
            peak_label=self._peak_label(),
        )
        self.query_one(RunStats).show(h, self.grad_norm)
        self.query_one(EvalTable).show(h, task=self.config_task or None)
        self._draw_summary()

    def _memory_title(self) -> str:
        """What the memory plot measures: the GPU's memory, or the training process's RAM on a
        CPU run (the planner's CPU peak is the process's), by the device the run named."""
        h = self.history
        per_rank = " per rank" if h.rank_samples else ""
        if h.on_gpu or (h.device and h.device != "cpu"):
            return f"GPU memory{per_rank} (GiB)"
        if h.device == "cpu" or h.memory:
            return f"process RAM{per_rank} (GiB)"
        return "memory (GiB)"

    def _peak_label(self) -> str:
        """The prediction's name in the memory plot's legend: per GPU (or per process on the
        CPU) once each curve is one rank, since the planner predicts one GPU's peak."""
        h = self.history
        if not h.rank_samples:
            return "predicted peak"
        return "predicted per GPU" if h.on_gpu else "predicted per process"

    @property
    def summary_shown(self) -> bool:
        """Whether the end-of-run summary stands in the plots' place."""
        if self.state not in ENDED or self.run_dir is None:
            return False
        return True if self._summary_choice is None else self._summary_choice

    def _draw_summary(self) -> None:
        shown = self.summary_shown
        if shown and self.run_dir is not None:
            library = self.query_one(RunLog).library
            tail = next((line.strip() for line in reversed(library) if line.strip()), "")
            outcome = outcome_of(
                self.run_dir, self.history, self.state, self.status_message, log_tail=tail
            )
            self.query_one(SummaryPanel).show(outcome)
            brief = not outcome.weights
        else:
            brief = False
        # without weights the summary is a few lines: the log keeps its room below it
        if (shown, brief) != (self.has_class("-summary"), self.has_class("-brief")):
            self.set_class(shown, "-summary")
            self.set_class(brief, "-brief")
            self.refresh_bindings()

    def on_resize(self) -> None:
        # -short comes and goes with the height, and with it the log pane under a summary
        self.refresh_bindings()

    def _planned_peak(self) -> int | None:
        """The plan's predicted peak from run.toml's [plan], for runs that logged none."""
        if self.run_dir is None:
            return None
        try:
            data = read_raw_config(RunDir(self.run_dir).config)
        except (OSError, ValueError):
            return None
        value = data.get("plan", {}).get("predicted_peak_bytes")
        return int(value) if isinstance(value, (int, float)) and value > 0 else None

    # -- actions --------------------------------------------------------------------------

    def action_toggle_smoothing(self) -> None:
        self._smoothing = (self._smoothing + 1) % len(SMOOTHING_STEPS)
        weight = SMOOTHING_STEPS[self._smoothing]
        self.query_one(LossPlot).set_smoothing(weight)
        self.notify(f"Loss smoothing {weight:g}" if weight else "Loss smoothing off", timeout=2)

    def action_toggle_log(self) -> None:
        """Switch the log pane between affiner's messages and train.log's tail."""
        self.query_one(RunLog).toggle()

    def action_show_plots(self) -> None:
        """The curves in the summary's place (once the run has ended)."""
        self._summary_choice = False
        self._draw()

    def action_show_summary(self) -> None:
        """The end-of-run summary in the plots' place."""
        if self.state in ENDED:
            self._summary_choice = True
            self._draw()

    def action_playground(self) -> None:
        if self.run_dir is not None:
            self.app.open_playground(self.run_dir)  # type: ignore[attr-defined]

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """The footer offers Stop while the run is going and Resume once it stopped, failed or
        was interrupted; a finished run offers neither. v names what it switches to, and the
        keys of a pane out of sight (smoothing under the summary) are not offered."""
        if action == "stop_run":
            return self.run_dir is not None and (not self.state or self.state in LIVE_STATES)
        if action == "resume_run":
            return self.run_dir is not None and self.state in RESUMABLE
        if action == "show_summary":
            return self.state in ENDED and not self.summary_shown
        if action == "show_plots":
            return self.summary_shown
        if self.run_dir is None and action in ("toggle_smoothing", "toggle_log", "playground"):
            return False
        if action == "toggle_smoothing":
            return not self.summary_shown
        if action == "toggle_log":  # not while the summary has the log's room too (app.tcss)
            return not (
                self.summary_shown and self.has_class("-short") and not self.has_class("-brief")
            )
        return True

    def action_resume_run(self) -> None:
        if self.run_dir is None or self.state not in RESUMABLE:
            return
        self.notify(f"Resuming {self.run_dir.name}…", timeout=3)
        self._resume_worker(self.run_dir)

    @work(thread=True, group="run-stop", name="resume-run", exit_on_error=False)
    def _resume_worker(self, run_dir: Path) -> str:
        return self.services.resume_run(run_dir)  # type: ignore[attr-defined]

    def action_stop_run(self) -> None:
        if self.run_dir is None:
            self.notify("No run is open.", severity="warning")
            return
        if self.state and self.state not in LIVE_STATES:
            self.notify(f"This run is {self.state}; there is nothing to stop.", timeout=3)
            return
        best = self.history.best_checkpoint
        keep = (
            f"The best checkpoint (step {best.step}) is kept."
            if best is not None
            else "The last checkpoint is kept."
        )
        question = (
            f"Stop run {self.run_dir.name}?\n\nTraining ends at its next step and saves. {keep}"
        )
        self.app.push_screen(ConfirmScreen(question, yes="Stop"), self._confirmed)

    def _confirmed(self, yes: bool | None) -> None:
        if yes and self.run_dir is not None:
            self.notify("Stopping… the run saves before it ends.", timeout=4)
            self._stop_worker(self.run_dir)

    @work(thread=True, group="run-stop", name="stop-run", exit_on_error=False)
    def _stop_worker(self, run_dir: Path) -> str:
        result = self.services.stop_run(RunDir(run_dir))  # type: ignore[attr-defined]
        return str(getattr(result, "message", "") or "Stop requested.")

    @on(Worker.StateChanged)
    def _worker_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "run-stop":
            if event.state == WorkerState.ERROR and event.worker.group == "run-watch":
                self.notify(f"Watching the run failed: {event.worker.error}", severity="error")
            return
        if event.state == WorkerState.SUCCESS:
            self.notify(str(event.worker.result), timeout=5)
        elif event.state == WorkerState.ERROR:
            error = event.worker.error
            what = "Resuming" if event.worker.name == "resume-run" else "Stopping"
            text = str(error) if isinstance(error, AffinerError) else f"{what} failed: {error!r}"
            self.notify(text, severity="error", timeout=8)
