"""Compare runs: their settings and final metrics in a table, beside their training-loss curves.

The table puts first the settings in which the runs differ (the reason to compare them),
then the final metrics, then the settings they share, dimmed. Losses of different tasks are
not on one scale (a classifier's cross-entropy over two labels sits near 0.6, a language
model's over its vocabulary at 2 to 4), so when the runs' tasks differ the chart plots only
the runs of one task and the line above it says so, in words; the table still lists them all.

`CompareRun` is plain data made in the screen's worker; `CompareView` only draws it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Static

from affiner.planner.units import format_duration
from affiner.runner.run import EvalResult
from affiner.tui.live import Point
from affiner.tui.screens.run_facts import RunSettings
from affiner.tui.screens.runs_columns import gib_text
from affiner.tui.widgets.plots import LossPlot

#: The widest a value cell gets (longer model or data names end in "…"), and the narrowest.
VALUE_WIDTH = 14
MIN_VALUE_WIDTH = 7
#: The share of the panel's width the table may take; the chart has the rest.
TABLE_SHARE = 0.66
#: Cells the label column takes ("final train loss" and its padding).
LABEL_CELLS = 18
TASK_WORDS = {"classification": "classifier", "causal_lm": "language model"}
#: The same, short enough for a table cell at 80 columns.
TASK_CELLS = {"classification": "classify", "causal_lm": "generate"}


@dataclass(frozen=True)
class CompareRun:
    """One compared run: who it is, how it was set up, how it ended, and its curve.

    Attributes:
        task: ``classification``, ``causal_lm``, or "" when nothing says.
        best: the evaluation with the lowest loss (the monitor's best).
    """

    run_id: str
    short_id: str
    task: str
    settings: RunSettings | None
    final_train_loss: float | None = None
    best: EvalResult | None = None
    seconds: float | None = None
    peak_bytes: int | None = None
    curve: list[Point] = field(default_factory=list)


def _num(value: float | None, digits: int = 4) -> str:
    return "N/A" if value is None else f"{value:.{digits}f}"


#: (label, value of a run) for each setting, in the table's order.
SETTINGS: tuple[tuple[str, Callable[[CompareRun], str]], ...] = (
    ("task", lambda r: TASK_CELLS.get(r.task, r.task or "N/A")),
    ("method", lambda r: r.settings.method if r.settings else "N/A"),
    ("model", lambda r: r.settings.model if r.settings else "N/A"),
    ("data", lambda r: (r.settings.data if r.settings else "") or "N/A"),
    ("learning rate", lambda r: f"{r.settings.learning_rate:g}" if r.settings else "N/A"),
    ("epochs", lambda r: f"{r.settings.epochs:g}" if r.settings else "N/A"),
    ("micro-batch", lambda r: str(r.settings.micro_batch) if r.settings else "N/A"),
    ("grad accum", lambda r: str(r.settings.grad_accum) if r.settings else "N/A"),
    ("max length", lambda r: str(r.settings.max_seq_len) if r.settings else "N/A"),
    (
        "LoRA r / alpha",
        lambda r: (
            f"{r.settings.lora_rank} / {r.settings.lora_alpha}"
            if r.settings and r.settings.lora
            else "no LoRA"
        ),
    ),
)


def metric_rows(runs: Sequence[CompareRun]) -> list[tuple[str, list[str]]]:
    """The final metrics: loss, the task's scores at the best evaluation, time, peak memory.

    Perplexity is shown for language models only and accuracy / F1 for classifiers only
    (perplexity of a classification head's loss means nothing); a row no run has is left out.
    """
    rows: list[tuple[str, list[str]]] = [
        ("final train loss", [_num(r.final_train_loss) for r in runs]),
        ("best eval loss", [_num(r.best.loss if r.best else None) for r in runs]),
    ]
    scores = (
        ("perplexity", "perplexity", lambda r: r.task != "classification", 2),
        ("accuracy", "accuracy", lambda r: r.task != "causal_lm", 3),
        ("F1", "f1", lambda r: r.task != "causal_lm", 3),
    )
    for label, name, applies, digits in scores:
        values = [
            _num(getattr(r.best, name), digits) if r.best and applies(r) else "N/A" for r in runs
        ]
        if any(v != "N/A" for v in values):
            rows.append((label, values))
    rows += [
        ("best at step", [str(r.best.step) if r.best else "N/A" for r in runs]),
        ("time", [format_duration(r.seconds) for r in runs]),
        ("peak GiB", [gib_text(r.peak_bytes) for r in runs]),
    ]
    return rows


def plotted(runs: Sequence[CompareRun]) -> tuple[list[CompareRun], str]:
    """The runs whose curves share the chart, and the line above it.

    Runs of an unknown task go with any. When the known tasks differ, the task most of the
    runs share is plotted (the first run's on a tie) and the line names the ones left out.
    """
    tasks = [r.task for r in runs if r.task]
    if len(set(tasks)) <= 1:
        return list(runs), "train loss, one curve per run"
    chosen = max(dict.fromkeys(tasks), key=tasks.count)
    shown = [r for r in runs if r.task in (chosen, "")]
    left = [r for r in runs if r not in shown]
    word = TASK_WORDS.get(chosen, chosen)
    others = ", ".join(f"{r.short_id} ({TASK_WORDS.get(r.task, r.task)})" for r in left)
    note = (
        f"⚠ These runs train different tasks: their losses are not on one scale. "
        f"The chart shows the {word} runs only; {others} is in the table."
    )
    return shown, note


class CompareView(Vertical):
    """The compare panel of the runs screen: a note, the table and the chart side by side."""

    DEFAULT_CSS = """
    CompareView { height: 1fr; display: none; }
    CompareView.-shown { display: block; }
    CompareView #compare-note { height: auto; padding: 0 1; color: $text-muted; }
    CompareView #compare-note.-warning { color: $warning; text-style: bold; }
    CompareView #compare-body { height: 1fr; }
    CompareView #compare-table { width: auto; max-width: 66%; height: 1fr; }
    CompareView LossPlot { width: 1fr; min-width: 20; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.runs: list[CompareRun] = []
        self.note = ""

    def compose(self) -> ComposeResult:
        yield Static(id="compare-note")
        with Horizontal(id="compare-body"):
            yield DataTable(id="compare-table", cursor_type="none", show_cursor=False)
            yield LossPlot(title="train loss", id="runs-compare")

    @property
    def shown(self) -> bool:
        return self.has_class("-shown")

    def show(self, runs: Sequence[CompareRun]) -> None:
        """Draw `runs` (two or more) and show the panel."""
        self.runs = list(runs)
        on_chart, self.note = plotted(self.runs)
        note = self.query_one("#compare-note", Static)
        note.update(self.note)
        note.set_class(len(on_chart) < len(self.runs), "-warning")
        self._fill_table()
        self.query_one(LossPlot).set_curves([(r.short_id, r.curve) for r in on_chart])
        self.add_class("-shown")

    def hide(self) -> None:
        self.remove_class("-shown")

    def on_resize(self) -> None:
        if self.runs:
            self._fill_table()

    def value_width(self) -> int:
        """How wide each run's column may be so the table keeps to its share of the width."""
        width = self.size.width or 80
        room = int(width * TABLE_SHARE) - LABEL_CELLS
        each = room // max(1, len(self.runs)) - 2
        return max(MIN_VALUE_WIDTH, min(VALUE_WIDTH, each))

    def _fill_table(self) -> None:
        width = self.value_width()

        def _clip(text: str) -> str:
            return text if len(text) <= width else text[: width - 1] + "…"

        table = self.query_one("#compare-table", DataTable)
        table.clear(columns=True)
        table.add_column("", key="what")
        for run in self.runs:
            table.add_column(run.short_id, key=run.run_id)
        settings = [(label, [value(r) or "N/A" for r in self.runs]) for label, value in SETTINGS]
        differ = [(label, values) for label, values in settings if len(set(values)) > 1]
        same = [(label, values) for label, values in settings if len(set(values)) <= 1]
        for label, values in differ:
            table.add_row(
                Text(label, style="bold"), *(Text(_clip(v), style="bold") for v in values)
            )
        for label, values in metric_rows(self.runs):
            table.add_row(label, *(_clip(v) for v in values))
        for label, values in same:
            table.add_row(Text(label, style="dim"), *(Text(_clip(v), style="dim") for v in values))
