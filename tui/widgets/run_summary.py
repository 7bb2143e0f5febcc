"""The end of a run in one panel: how long against the plan, the score before and after, where
the weights are, and the exact commands that load, export, chat with or resume them.

A run that ended used to leave the monitor showing curves and a footer; what to do next was
in the model card or nowhere. `outcome_of` gathers the facts once the run has ended (it reads
``run.toml``, ``status.json`` and which weight folders exist: small reads, done only when the
monitor redraws an ended run); `summary_text` writes them, and `SummaryPanel` shows them in
place of the plots, scrollable so nothing is cut off on an 80x24 terminal. Only commands that exist are named: ``affiner export``, ``affiner
train --resume``, ``affiner --run`` (the app opened on the run's monitor).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from affiner.planner.units import format_bytes, format_duration
from affiner.planner.vocabulary import LORA_METHODS
from affiner.runner.config import read_raw_config
from affiner.runner.run import (
    INTERRUPTED,
    RESUMABLE_STATES,
    EvalResult,
    RunDir,
    is_language_model,
    latest_checkpoint,
    read_status,
)
from affiner.tui.live import RunHistory
from affiner.tui.widgets.run_log import eval_scores, perplexity

#: States after which the run can be resumed (its worker is gone and it did not finish).
RESUMABLE = RESUMABLE_STATES
#: States the summary is for: nothing more happens without a resume.
ENDED = ("finished", *RESUMABLE)
#: Widest snippet line that stays on one line of an 80-column summary (indent and padding off).
SNIPPET_WIDTH = 74
_HEADLINES = {
    "finished": "✔ Finished",
    "stopped": "■ Stopped",
    "failed": "✖ Failed",
    INTERRUPTED: "■ Interrupted (its process is gone)",
}


@dataclass
class RunOutcome:
    """What the summary says about one ended run.

    Attributes:
        run_id, state: which run, and how it ended (``finished``, ``stopped``, ``failed``,
            ``interrupted``).
        folder: the run folder as the user can type it (relative to the working directory
            when it lies inside it).
        steps, total_steps: optimizer steps done and planned.
        took_seconds: the training time the run reported, else the time its status spans.
        planned_step_seconds, planned_source: the step time the run was planned at and what
            measured it (``plan`` or ``pre-flight``).
        before, best, last: the evaluation at step 0 (the untouched model), the one with the
            lowest loss, and the last one.
        language_model: perplexity means something (not a classifier).
        base_model, method, task, labels: from ``run.toml``.
        weights: the folders holding trained weights, best first, as (what, folder).
        resume_from: the checkpoint step a resume starts from (None: from step 0).
        error: why a failed run failed; log: train.log (tracebacks and library output);
            log_tail: its last line (a traceback's last line names the exception).
        peak_bytes, predicted_peak_bytes: the measured peak memory and the plan's.
    """

    run_id: str
    state: str
    folder: Path
    steps: int = 0
    total_steps: int = 0
    took_seconds: float | None = None
    planned_step_seconds: float | None = None
    planned_source: str = "plan"
    before: EvalResult | None = None
    best: EvalResult | None = None
    last: EvalResult | None = None
    language_model: bool = True
    base_model: str = ""
    method: str = ""
    task: str = "causal_lm"
    labels: list[str] = field(default_factory=list)
    weights: list[tuple[str, Path]] = field(default_factory=list)
    resume_from: int | None = None
    error: str = ""
    log: Path = Path("train.log")
    log_tail: str = ""
    peak_bytes: int | None = None
    predicted_peak_bytes: int | None = None

    @property
    def planned_seconds(self) -> float | None:
        if self.planned_step_seconds is None or not self.total_steps:
            return None
        return self.planned_step_seconds * self.total_steps


def shown_path(path: Path) -> Path:
    """``path`` relative to the working directory when it lies inside it, else as it is."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except (ValueError, OSError):
        return path


def outcome_of(
    run_dir: Path, history: RunHistory, state: str, message: str = "", log_tail: str = ""
) -> RunOutcome:
    """Gather what the summary says about an ended run from its history and its folder.

    Args:
        run_dir: the run folder.
        history: the run's events, folded.
        state: how it ended (the watcher's state: ``interrupted`` is derived, not logged).
        message: the status's message (a failure's reason when no error event says it).
        log_tail: train.log's last line, as the monitor's watcher read it.
    """
    rd = RunDir(Path(run_dir))
    folder = shown_path(rd.path)
    try:
        config = read_raw_config(rd.config)
    except (OSError, ValueError):
        config = {}
    model = _section(config, "model")
    method = _section(config, "method")
    data = _section(config, "data")
    plan = _section(config, "plan")
    task = str(model.get("task") or "causal_lm")
    evals = [e for e in history.evals if e.loss is not None]
    outcome = RunOutcome(
        run_id=history.run_id or rd.run_id,
        state=state,
        folder=folder,
        steps=history.step,
        total_steps=history.total_steps,
        before=next((e for e in evals if e.step == 0), None),
        best=history.best_eval,
        last=evals[-1] if evals else None,
        language_model=is_language_model(history.evals, str(model.get("task") or "")),
        base_model=str(model.get("name_or_path") or history.model),
        method=str(method.get("name") or history.method),
        task=task,
        labels=[str(label) for label in data.get("labels") or []],
        log=folder / rd.log.name,
    )
    outcome.peak_bytes = history.measured_peak_bytes
    predicted = history.predicted_peak_bytes or plan.get("predicted_peak_bytes")
    outcome.predicted_peak_bytes = int(predicted) if isinstance(predicted, (int, float)) else None
    outcome.planned_step_seconds = history.planned_step_seconds
    outcome.planned_source = history.planned_step_source
    if outcome.planned_step_seconds is None:
        measured, predicted = plan.get("measured_step_seconds"), plan.get("predicted_step_seconds")
        step = measured or predicted
        if isinstance(step, (int, float)) and step > 0:
            outcome.planned_step_seconds = float(step)
            outcome.planned_source = "pre-flight" if measured else "plan"
    finished = history.finished
    if finished is not None and finished.train_seconds:
        outcome.took_seconds = finished.train_seconds
    else:
        status = read_status(rd.path)
        if status is not None and status.started and status.updated > status.started:
            outcome.took_seconds = status.updated - status.started
    best_step = history.best_checkpoint.step if history.best_checkpoint is not None else None
    if rd.best.is_dir():
        at = f", step {best_step}" if best_step is not None else ""
        outcome.weights.append((f"best{at}", folder / rd.best.relative_to(rd.path)))
    if rd.adapter.is_dir():
        outcome.weights.append(("final", folder / rd.adapter.name))
    checkpoint = latest_checkpoint(rd)
    outcome.resume_from = checkpoint[0] if checkpoint is not None else None
    if not outcome.weights and checkpoint is not None:
        outcome.weights.append(
            (f"checkpoint, step {checkpoint[0]}", folder / checkpoint[1].relative_to(rd.path))
        )
    if state == "failed":
        outcome.error = history.errors[-1].message if history.errors else message
        outcome.log_tail = log_tail
    return outcome


def _section(config: dict[str, object], name: str) -> dict[str, object]:
    section = config.get(name)
    return section if isinstance(section, dict) else {}


def summary_text(o: RunOutcome, *, playground_key: str = "p", resume_key: str = "r") -> Text:
    """The panel's text: headline, score, weights, then the commands (each line copyable)."""
    text = Text()
    text.append(_headline(o) + "\n", style="bold")

    def row(label: str, value: str) -> None:
        text.append(f"{label:<9}", style="bold")
        text.append(value + "\n")

    if o.state == "failed":
        row("Error", o.error or "no error message was logged")
        row("Log", f"{o.log} has the traceback")
        if o.log_tail:
            row("", o.log_tail)
    if o.state in RESUMABLE:
        start = (
            f"from step {o.resume_from}"
            if o.resume_from is not None
            else "from step 0: no checkpoint saved"
        )
        row("Resume", f"{resume_key}, or  affiner train --resume {o.run_id}  ({start})")
    score = _score_line(o)
    if score:
        row("Score", score)
    if o.peak_bytes:
        row("Memory", _memory_line(o.peak_bytes, o.predicted_peak_bytes))
    if not o.weights:
        row("Weights", "none saved")
        return text
    row("Saved in", f"{o.folder}/")
    row("", " · ".join(f"{_inside(o, folder)} ({what})" for what, folder in o.weights))
    text.append("Load it in Python:\n", style="bold")
    for line in load_snippet(o):
        text.append(f"  {line}\n", style="italic")
    export = f"affiner export {o.run_id}"
    row("Merge" if o.method in LORA_METHODS else "Export", f"{export}  → export/merged/")
    if o.task != "classification":
        row("GGUF", f"{export} --gguf --ollama")
    # the playground chats with a generator and labels texts with a classifier
    text.append(f"{'Try it' if o.task == 'classification' else 'Chat':<9}", style="bold")
    # the app opened on the run's monitor, where the same key opens the playground on it
    text.append(f"{playground_key}, or  affiner --run {o.run_id}  then {playground_key}")
    return text


def _inside(o: RunOutcome, folder: Path) -> str:
    """A folder of the run named from the run folder (``checkpoints/best``)."""
    try:
        return str(folder.relative_to(o.folder))
    except ValueError:
        return str(folder)


def _headline(o: RunOutcome) -> str:
    word = _HEADLINES.get(o.state, f"● {o.state.capitalize()}")
    steps = f"{o.steps} of {o.total_steps} steps" if o.total_steps else f"{o.steps} steps"
    took = f" in {format_duration(o.took_seconds)}" if o.took_seconds else ""
    line = f"{word}: {steps}{took}"
    planned = o.planned_seconds
    if planned is not None:
        per_step = format_duration(o.planned_step_seconds)
        measured = ", pre-flight" if o.planned_source == "pre-flight" else ""
        line += f" · plan {format_duration(planned)} ({o.total_steps} × {per_step}{measured})"
        if o.took_seconds and o.steps >= o.total_steps:
            line += f": {o.took_seconds / planned:.1f}×"
    return line


def _memory_line(peak: int, predicted: int | None) -> str:
    """``peak 4.71 GiB · plan 4.25 GiB (+11%)``: how the plan's memory held."""
    if not predicted:
        return f"peak {format_bytes(peak)}"
    return (
        f"peak {format_bytes(peak)} · plan {format_bytes(predicted)} ({peak / predicted - 1:+.0%})"
    )


def _score_line(o: RunOutcome) -> str:
    """``eval loss 2.8100 → 1.9000 (-32%) · ppl 16.61 → 6.69 · best @100``: the untouched
    model's evaluation (step 0) against the best one; the last one too when it differs."""
    after = o.best
    if after is None or after.loss is None:
        return ""
    if o.before is None or o.before.loss is None or o.before is after:
        scores = eval_scores(after, language_model=o.language_model)
        if after.step == 0:
            return f"eval {scores} before training; none since"
        return f"eval {scores} (best, step {after.step}; none before training)"
    before = o.before
    parts = [
        f"eval loss {before.loss:.4f} → {after.loss:.4f} ({after.loss / before.loss - 1:+.0%})"
    ]
    if o.task == "classification" or after.accuracy is not None:
        for name in ("accuracy", "f1"):
            was, now = getattr(before, name), getattr(after, name)
            if was is not None and now is not None:
                parts.append(f"{name} {was:.3f} → {now:.3f}")
    elif o.language_model:
        was, now = perplexity(before), perplexity(after)
        if was is not None and now is not None:
            parts.append(f"ppl {was:.2f} → {now:.2f}")
    parts.append(f"best @{after.step}")
    last = o.last
    if last is not None and last is not after and last.loss is not None:
        parts.append(f"last {last.loss:.4f} @{last.step}")
    return " · ".join(parts)


def load_snippet(o: RunOutcome) -> list[str]:
    """Python that loads the weights the summary names first (the best ones).

    LoRA methods saved an adapter: the base is loaded and the adapter put on it with peft.
    Full and freeze runs saved a whole model, loaded as it is.
    """
    auto = (
        "AutoModelForSequenceClassification"
        if o.task == "classification"
        else "AutoModelForCausalLM"
    )
    weights = f'weights = "{o.weights[0][1] if o.weights else "adapter"}"'
    if o.method not in LORA_METHODS:
        return [
            f"from transformers import {auto}, AutoTokenizer",
            weights,
            f"model = {auto}.from_pretrained(weights)",
            "tokenizer = AutoTokenizer.from_pretrained(weights)",
        ]
    extra = f", num_labels={len(o.labels)}" if o.task == "classification" and o.labels else ""
    base = f'"{o.base_model}"'
    lines = [
        "from peft import PeftModel",
        f"from transformers import {auto}, AutoTokenizer",
        weights,
    ]
    if len(f"base = {auto}.from_pretrained({base}{extra})") > SNIPPET_WIDTH:
        lines.append(f"base_model = {base}")  # a long local path: the call stays on one line
        base = "base_model"
    return [
        *lines,
        f"base = {auto}.from_pretrained({base}{extra})",
        "model = PeftModel.from_pretrained(base, weights)",
        "tokenizer = AutoTokenizer.from_pretrained(weights)",
    ]


class SummaryPanel(VerticalScroll):
    """The end-of-run summary, scrollable (PgUp/PgDn, arrows) when it is taller than its room."""

    DEFAULT_CSS = """
    SummaryPanel { height: 1fr; padding: 0 1; }
    SummaryPanel > Static { width: 1fr; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.outcome: RunOutcome | None = None
        self.text = Text()

    def compose(self) -> ComposeResult:
        yield Static(id="summary-text")

    def show(self, outcome: RunOutcome, **keys: str) -> None:
        self.outcome = outcome
        self.text = summary_text(outcome, **keys)
        self.query_one("#summary-text", Static).update(self.text)
        self.border_title = "end of run"
