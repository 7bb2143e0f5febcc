"""The monitor's text panels: progress, evaluation table, warnings banner, stats.

Each renders from a `RunHistory` handed to ``show()``; none reads files or the clock, so a
snapshot of a hand-written run folder is the same on every machine and every day.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import ClassVar

from rich.text import Text
from textual.widget import Widget
from textual.widgets import DataTable, Static

from affiner.planner.units import format_bytes, format_bytes_of
from affiner.runner.run import CLASS_METRICS, LIVE_STATES, EvalResult, is_language_model
from affiner.tui.live import RunHistory, drifts, layout_short
from affiner.tui.widgets.gauge import bar_text
from affiner.tui.widgets.run_log import perplexity


class RunProgress(Widget):
    """``step 120/400 ▕████░░░░▏ 30%  epoch 0.90/3  ETA 4 min`` (ETA from the run's events).

    During a phase that logs no steps (the base model's evaluation, a mid-run eval, a save)
    a second line names it with its own countdown, from `RunHistory.phase_line`, so the bar
    standing still does not read as a hung run.
    """

    DEFAULT_CSS = """
    RunProgress { height: auto; width: 1fr; }
    RunProgress > .progress--bar { color: $accent; }
    RunProgress > .progress--phase { color: $warning; }
    """
    COMPONENT_CLASSES: ClassVar[set[str]] = {"progress--bar", "progress--phase"}

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.history = RunHistory()
        self.state = ""
        #: the time the ETA counts down against (the app's `Services.clock`; fixed in tests)
        self.clock: Callable[[], float] = time.time
        self._phase = ""

    def show(self, history: RunHistory, state: str = "") -> None:
        self.history, self.state = history, state
        self.tick()

    def tick(self) -> None:
        """Redraw (the ETA and the phase count down); relayout when the phase line comes or goes."""
        phase = self.phase()
        self.refresh(layout=bool(phase) != bool(self._phase))
        self._phase = phase

    def describe(self) -> tuple[str, str]:
        """The text left and right of the bar (also what tests read)."""
        h = self.history
        total = f"/{h.total_steps}" if h.total_steps else ""
        left = f"step {h.step}{total}"
        epochs = f"/{h.epochs:g}" if h.epochs else ""
        percent = f"{h.progress * 100:3.0f}%" if h.progress is not None else " N/A"
        tail = h.finished.state if h.finished is not None else h.eta_text(self.clock())
        right = f"{percent}  epoch {h.epoch:.2f}{epochs}  {tail}"
        return left, right

    def phase(self) -> str:
        """The silent phase under way with its countdown, or "" (none, or the run ended)."""
        if self.history.finished is not None or (self.state and self.state not in LIVE_STATES):
            return ""
        return self.history.phase_line(self.clock())

    def render(self) -> Text:
        left, right = self.describe()
        width = max(0, self.size.width - len(left) - len(right) - 5)
        filled, empty = bar_text(self.history.progress, width)
        text = Text(left + " ▕")
        text.append(filled, self.get_component_rich_style("progress--bar"))
        text.append(empty)
        text.append("▏ " + right)
        phase = self.phase()
        if phase:
            text.append("\n")
            text.append("⧗ " + phase, self.get_component_rich_style("progress--phase"))
        return text


class EvalTable(DataTable):
    """One row per evaluation; classification columns appear only when a run reports them.

    Perplexity (``ppl``) is shown for language models only: for a classification head's
    loss it is a number without a meaning (`affiner.runner.run.runs.is_language_model` decides).
    Narrower than `FULL_WIDTH` (the monitor at 80 columns), a classifier's table keeps
    accuracy and F1 and leaves out precision and recall, so it never scrolls sideways.
    """

    DEFAULT_CSS = """
    EvalTable { height: auto; max-height: 8; }
    """
    #: Cells a table needs for every classification column.
    FULL_WIDTH = 66
    #: The columns a narrow table keeps.
    NARROW_METRICS = ("ppl", "accuracy", "f1")

    def __init__(self, **kwargs: object) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)  # type: ignore[arg-type]
        self._shown: tuple[int, tuple[str, ...]] = (-1, ())
        self._history: RunHistory | None = None
        self._run_task: str | None = None  # not _task: the message pump's asyncio task

    def show(self, history: RunHistory, task: str | None = None) -> None:
        """Rebuild the rows when evaluations arrived.

        Args:
            history: the run so far.
            task: ``causal_lm`` / ``classification`` from the run's config when the caller
                knows it; otherwise the evaluations tell (classification scores or not).
        """
        self._history, self._run_task = history, task
        evals = history.evals
        optional = tuple(
            name for name in CLASS_METRICS if any(getattr(e, name) is not None for e in evals)
        )
        if is_language_model(evals, task):
            optional = ("ppl", *optional)
        if self.size.width and self.size.width < self.FULL_WIDTH:
            optional = tuple(name for name in optional if name in self.NARROW_METRICS)
        if self._shown == (len(evals), optional):
            return
        self._shown = (len(evals), optional)
        self.clear(columns=True)
        self.add_columns("step", "epoch", "eval loss", *optional)
        best = history.best_eval
        for ev in evals[-50:]:
            marker = " *" if ev is best else ""
            self.add_row(
                f"{ev.step}{marker}",
                f"{ev.epoch:.2f}",
                _num(ev.loss, 4),
                *(_cell(ev, name) for name in optional),
            )
        if self.row_count:
            self.move_cursor(row=self.row_count - 1)

    def on_resize(self) -> None:
        if self._history is not None:  # the columns that fit may have changed
            self.show(self._history, self._run_task)


def _cell(ev: EvalResult, name: str) -> str:
    if name == "ppl":
        return _num(perplexity(ev), 2)
    return _num(getattr(ev, name), 3)


def _num(value: float | None, digits: int) -> str:
    return "N/A" if value is None else f"{value:.{digits}f}"


class WarningsBanner(Static):
    """Overfitting, NaN loss and out-of-memory warnings, impossible to miss.

    Hidden while there is nothing serious. When the run is overfitting and still going, it
    offers the stop-and-keep-best action with its key.
    """

    DEFAULT_CSS = """
    WarningsBanner {
        display: none; height: auto; max-height: 5; padding: 0 1;
        background: $error 20%; color: $text; border-left: thick $error;
    }
    WarningsBanner.-shown { display: block; }
    """

    def __init__(self, stop_key: str = "s", **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.stop_key = stop_key
        self.text = ""

    def show(self, history: RunHistory, *, errors: bool = True) -> None:
        """Redraw from `history`; ``errors=False`` when another panel already says why the run
        failed (the end-of-run summary), so the reason is not written twice on one screen."""
        lines: list[str] = []
        offer = history.overfitting
        if offer is not None:
            best = history.best_checkpoint
            keep = (
                f" (step {best.step}, eval loss {best.eval_loss:.4f})"
                if best is not None and best.eval_loss is not None
                else ""
            )
            lines.append(
                f"⚠ Overfitting: {offer.message}. Press [{self.stop_key}] to stop now and keep "
                f"the best checkpoint{keep}."
            )
        seen = {"overfitting"} if offer is not None else set()
        for warning in reversed(history.serious_warnings):
            if warning.code in seen:
                continue
            seen.add(warning.code)
            at = f" at step {warning.step}" if warning.step is not None else ""
            action = f" {warning.action}" if warning.action and warning.action != "stop" else ""
            lines.append(f"⚠ {warning.code.replace('_', ' ')}{at}: {warning.message}{action}")
        for drift in drifts(history):
            lines.append(f"⚠ {drift.text}")
        for error in history.errors[-1:] if errors else []:
            lines.append(f"✖ {error.code or 'error'}: {error.message}")
        self.text = "\n".join(lines[:4])
        self.set_class(bool(lines), "-shown")
        self.update(Text(self.text))


class RunStats(Static):
    """A column of current numbers: loss, learning rate, grad norm, throughput, memory."""

    DEFAULT_CSS = """
    RunStats { height: auto; width: 1fr; }
    """

    def show(self, history: RunHistory, grad_norm: float | None = None) -> None:
        self.update(Text("\n".join(stats_lines(history, grad_norm))))


def stats_lines(h: RunHistory, grad_norm: float | None = None) -> list[str]:
    """Short ``name value`` lines for the stats panel (24 cells: the panel's width).

    Args:
        h: the run so far.
        grad_norm: the gradient norm of the last training log (a spike or a climb says the
            learning rate is too high before the loss does).
    """
    loss = h.train_loss[-1][1] if h.train_loss else None
    lr = h.learning_rate[-1][1] if h.learning_rate else None
    tps = h.tokens_per_second[-1][1] if h.tokens_per_second else None
    best = h.best_eval
    lines = [
        f"loss      {_num(loss, 4)}",
        f"best eval {_num(best.loss, 4) if best else 'N/A'}" + (f" @{best.step}" if best else ""),
        f"lr        {'N/A' if lr is None else f'{lr:.2e}'}",
        f"grad norm {_num(grad_norm, 3)}",
        f"tokens/s  {'N/A' if tps is None else f'{tps:,.0f}'}",
        f"peak/plan {_peak_of_plan(h)}",
    ]
    if h.rank_samples:
        # each rank's memory has its own panel (RankMemoryPanel): eight ranks would not fit here
        lines.append(f"layout    {layout_short(h.world_size, h.strategy) or 'N/A'}")
        return lines
    for series in h.memory.values():
        lines.append(f"{series.label[:13]:<9} {format_bytes(series.latest)}")
    return lines


def _peak_of_plan(h: RunHistory) -> str:
    """``18.0/20.0 GiB``: the measured peak over the predicted one, in the prediction's unit."""
    if h.predicted_peak_bytes is None:
        return format_bytes(h.measured_peak_bytes)
    if h.measured_peak_bytes is None:
        return f"N/A / {format_bytes(h.predicted_peak_bytes)}"
    return format_bytes_of(h.measured_peak_bytes, h.predicted_peak_bytes)
