"""The monitor's log pane: affiner's own messages, and the libraries' output on demand.

``train.log`` is mostly what libraries print (deprecation notices, kernels not found,
progress bars); on a two-line pane it buried what the run itself said. So the pane shows, by
default, one line per event that matters (start, pre-flight, evaluations, checkpoints,
every warning, errors, the end), and counts the warnings in ``train.log`` in its title; a
key switches it to the whole ``train.log`` tail and back. Nothing here reads a file: the
monitor hands in events and log lines as its watcher delivers them.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Iterable
from typing import Literal

from rich.text import Text
from textual.events import Resize
from textual.widgets import RichLog

from affiner.planner.units import format_bytes, format_duration
from affiner.runner.run import (
    CLASS_METRICS,
    Checkpoint,
    Error,
    EvalResult,
    Event,
    Preflight,
    RunFinished,
    RunStarted,
    Warning_,
    model_label,
)

#: How many lines either view keeps (train.log's tail, affiner's latest messages).
LIBRARY_LINES = 500
#: What a library line that deserves counting says (a warning, an error, a missing piece).
_WARNING_WORDS = re.compile(
    r"warn|deprecat|error|fail|exception|traceback|not (?:found|installed|supported)", re.I
)
#: train.log lines affiner itself writes: the launcher's banner, the worker's own lines.
_AFFINER_LINE = re.compile(r"^(?:=== .* affiner: |\[affiner\] |error: |pre-flight on )")
#: A progress bar's line (tqdm): counted as neither a warning nor a message.
_PROGRESS_BAR = re.compile(r"\d+%\||\d+/\d+ \[|it/s\]|s/it\]")

Mode = Literal["affiner", "library"]


def is_library_warning(line: str) -> bool:
    """Whether a train.log line is a library's warning or error (what the title counts).

    A continuation line (indented: a traceback frame, the source line under a warning), a
    progress bar and affiner's own lines are not counted, so one warning counts once.
    """
    if not line.strip() or line[:1].isspace():
        return False
    if _AFFINER_LINE.match(line) or _PROGRESS_BAR.search(line):
        return False
    return bool(_WARNING_WORDS.search(line))


def event_line(event: Event, *, language_model: bool = True) -> str | None:
    """The pane's line for one event; None for the events it leaves to the plots.

    Args:
        event: any event of the run.
        language_model: whether perplexity means anything (a classifier's loss has none).
    """
    if isinstance(event, RunStarted):
        if event.resumed_from_step is not None:
            return f"resumed from the checkpoint at step {event.resumed_from_step}"
        parts = [
            model_label(event.model),
            event.method,
            f"on {event.device}" if event.device else "",
        ]
        what = " ".join(p for p in parts if p)
        rows = f", {event.train_rows:,} training rows" if event.train_rows else ""
        batches = f" · {event.batching_words}" if event.batching_words else ""
        return f"started: {what} · {event.total_steps} steps{rows}{batches}"
    if isinstance(event, Preflight):
        adjusted = (
            f" · adjusted to micro-batch {event.micro_batch} × {event.grad_accum}"
            if event.adjusted
            else ""
        )
        return (
            f"pre-flight on {event.device}: peak {format_bytes(event.measured_peak_bytes)} "
            f"(plan {format_bytes(event.predicted_peak_bytes)}), "
            f"{format_duration(event.measured_step_seconds)}/step{adjusted}"
        )
    if isinstance(event, EvalResult):
        return f"eval at step {event.step}: " + eval_scores(event, language_model=language_model)
    if isinstance(event, Checkpoint):
        return f"checkpoint at step {event.step}" + (" · best so far" if event.best else "")
    if isinstance(event, Warning_):
        at = f" at step {event.step}" if event.step is not None else ""
        action = f" → {event.action}" if event.action and event.action != "stop" else ""
        return f"⚠ {event.code.replace('_', ' ')}{at}: {event.message}{action}"
    if isinstance(event, Error):
        return f"✖ {event.code or 'error'}: {event.message}"
    if isinstance(event, RunFinished):
        message = f": {event.message}" if event.message else ""
        return f"{event.state} at step {event.step}{message}"
    return None


def eval_scores(event: EvalResult, *, language_model: bool = True) -> str:
    """``loss 2.4000 · ppl 11.02`` or ``loss 0.3100 · accuracy 0.910 · f1 0.890``."""
    parts = [f"loss {event.loss:.4f}" if event.loss is not None else "loss N/A"]
    scores = [name for name in CLASS_METRICS if getattr(event, name) is not None]
    if scores:
        parts += [
            f"{name} {getattr(event, name):.3f}" for name in ("accuracy", "f1") if name in scores
        ]
    elif language_model:
        ppl = perplexity(event)
        if ppl is not None:
            parts.append(f"ppl {ppl:.2f}")
    return " · ".join(parts)


def perplexity(event: EvalResult) -> float | None:
    """The logged perplexity, else exp(loss) (a language model's eval written without one)."""
    if event.perplexity is not None:
        return event.perplexity
    if event.loss is not None and event.loss < 50:
        return math.exp(event.loss)
    return None


class RunLog(RichLog):
    """affiner's messages about the run; `toggle()` shows train.log's tail instead.

    The border title says which view is shown and how many library warnings train.log
    holds, so the count is visible without giving the libraries the pane. Long lines wrap
    (a warning's advice is at its end), so the pane never scrolls sideways.
    """

    DEFAULT_CSS = """
    RunLog { height: 1fr; min-height: 3; overflow-x: hidden; scrollbar-size-vertical: 1; }
    """

    def __init__(self, toggle_key: str = "l", **kwargs: object) -> None:
        super().__init__(  # type: ignore[arg-type]
            max_lines=LIBRARY_LINES,
            min_width=20,
            wrap=True,
            highlight=False,
            markup=False,
            **kwargs,
        )
        self.toggle_key = toggle_key
        self.mode: Mode = "affiner"
        self.messages: deque[str] = deque(maxlen=LIBRARY_LINES)  # a long run logs many
        self.library: deque[str] = deque(maxlen=LIBRARY_LINES)
        self.library_warnings = 0

    def on_mount(self) -> None:
        self._title()

    def on_resize(self, event: Resize) -> None:
        # RichLog writes what came before its size was known here, and a pane that changes
        # height (a banner appears, the summary replaces the plots) keeps its old scroll
        # offset: show the newest lines, as a log that follows a run should.
        self.scroll_end(animate=False, immediate=False, x_axis=False)

    def reset(self) -> None:
        """Forget everything (another run is shown)."""
        self.messages.clear()
        self.library.clear()
        self.library_warnings = 0
        self.clear()
        self._title()

    def add_events(self, events: Iterable[Event], *, language_model: bool = True) -> None:
        lines = [
            line
            for event in events
            if (line := event_line(event, language_model=language_model)) is not None
        ]
        self.messages.extend(lines)
        if self.mode == "affiner":
            self._write(lines)

    def add_log_lines(self, lines: list[str]) -> None:
        """New train.log lines: kept for the library view, their warnings counted."""
        self.library.extend(lines)
        counted = sum(1 for line in lines if is_library_warning(line))
        if counted:
            self.library_warnings += counted
            self._title()
        if self.mode == "library":
            self._write(lines)

    def toggle(self) -> Mode:
        """Switch between affiner's messages and train.log; returns the view now shown."""
        self.mode = "library" if self.mode == "affiner" else "affiner"
        self.clear()
        self._write(self.shown())
        self._title()
        return self.mode

    def shown(self) -> list[str]:
        """The lines of the view now shown (what tests read)."""
        return list(self.messages if self.mode == "affiner" else self.library)

    def _write(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(Text(line))

    def title_text(self) -> str:
        """What the border title says (also what tests read)."""
        key = self.toggle_key
        if self.mode == "library":
            return f"train.log (libraries' output) · {key} for affiner's messages"
        count = self.library_warnings
        if not count:
            return "affiner's messages · no library warnings"
        noun = "warning" if count == 1 else "warnings"
        return f"affiner's messages · {count} library {noun} — {key} to show"

    def _title(self) -> None:
        self.border_title = self.title_text()
