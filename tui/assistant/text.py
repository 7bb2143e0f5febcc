"""The assistant's longer messages, as Markdown: what the data step found, what pre-flight measured.

Kept apart from `affiner.tui.assistant.flow` so the step machine reads as a protocol, not as prose.
"""

from __future__ import annotations

import json
from typing import Any

from affiner.planner.units import format_bytes, format_duration
from affiner.runner.run import PREFLIGHT_TRAIN, phase_words
from affiner.tui.assistant import answers
from affiner.tui.assistant.preview import DataPreview

#: What the assistant asks at each step that waits for an answer.
QUESTIONS = {
    "model": (
        "Which model? A local folder, a hub id already in your cache "
        "(`HuggingFaceTB/SmolLM2-135M-Instruct`), or a size such as `7B`."
    ),
    "data": "Which training data? A JSONL, JSON, CSV or Parquet file (text, instruction or chat rows).",
    # the plan step's own question names a method the plan has (`plan_question`)
    "plan": "Enter accepts the highlighted plan; `use` a method to pick another; `why?` explains.",
    "settings": (
        "Settings: Tab moves through the fields below (the bar updates as you type), or type "
        "`rank 32`, `seq 2048`, `lr 1e-4`… Enter continues."
    ),
    "preflight": (
        "Enter runs the pre-flight check: it loads the model and times a few real steps, "
        "saying how far it has got as it goes. `launch` skips it."
    ),
    "launch": "Enter launches the run in the background; the monitor opens on it.",
}


def other_method(plan: Any, chosen: str | None) -> str | None:
    """A method the plan has besides `chosen`, to suggest as ``use <method>``: one that fits
    (the most memory-frugal first, as a user short of memory would try), else any; None when
    the plan has no other."""
    others = [c for c in getattr(plan, "candidates", ()) or () if c.method != chosen]
    fitting = [c for c in others if c.fits]
    pick = min(fitting or others, key=lambda c: c.peak_bytes, default=None)
    return pick.method if pick is not None else None


def plan_question(plan: Any, chosen: str | None) -> str:
    """The plan step's question, suggesting only a method the plan has (`other_method`)."""
    other = other_method(plan, chosen)
    pick = f"`use {other}` picks another; " if other else ""
    explain = "`why?`" if chosen == "full" else "`why not full?`"
    return f"Enter accepts the highlighted plan; {pick}{explain} explains."


def data_summary(preview: DataPreview) -> str:
    """The data step's report: valid rows, the dropped ones as file:line, the first rows."""
    text = f"**{preview.rows:,} rows** of **{preview.format}** data in `{preview.path}`."
    if preview.dropped:
        text += f" {len(preview.dropped)} rows were dropped:\n\n"
        text += "\n".join(f"- `{where}`: {why}" for where, why in preview.dropped[:8])
        if len(preview.dropped) > 8:
            text += f"\n- … and {len(preview.dropped) - 8} more"
    else:
        text += " Every row is valid."
    if preview.sample:
        text += "\n\nThe first rows:\n\n" + "\n".join(
            f"- `{short_row(row)}`" for row in preview.sample
        )
    return text


def short_row(row: Any, width: int = 90) -> str:
    """A row on one line, cut to `width` characters (backticks removed for Markdown)."""
    text = json.dumps(row, ensure_ascii=False) if not isinstance(row, str) else row
    text = " ".join(text.split()).replace("`", "'")
    return text if len(text) <= width else text[: width - 1] + "…"


def preflight_progress(progress: Any) -> str:
    """A running pre-flight in one line (`affiner.runner.run.preflight.PreflightProgress`):
    what it does, how far, how long so far and, once a step is timed, how long the steps still
    need at the pace measured (never the plan's guess, which may be far off)."""
    phase = getattr(progress, "phase", "")
    words = phase_words(phase)[0].removeprefix("pre-flight: ")
    parts = [f"Pre-flight: {words}"]
    if phase == PREFLIGHT_TRAIN and progress.total:
        step = min(progress.steps_done + 1, progress.steps) if progress.steps else None
        micro = f"micro-batch {progress.done} of {progress.total}"
        if step and progress.steps == progress.total:  # one micro-batch a step: say steps
            parts[0] = f"Pre-flight: timing step {step} of {progress.steps}"
        elif step:
            parts[0] = f"Pre-flight: timing step {step} of {progress.steps}, {micro}"
        else:
            parts[0] = f"Pre-flight: timing {micro}"
    parts.append(f"{format_duration(progress.elapsed)} elapsed")
    if phase == PREFLIGHT_TRAIN:
        left = getattr(progress, "left", None)
        if left is None:
            parts.append("time left: known once the first step is timed")
        elif left < 1:
            parts.append("the steps are nearly done; then one eval batch and a save")
        else:
            parts.append(
                f"~{format_duration(left)} left for the steps (measured pace), "
                "then one eval batch and a save"
            )
    return " · ".join(parts)


def preflight_summary(event: Any, candidate: Any) -> str:
    """`affiner.runner.run.events.Preflight` beside the plan: measured first, predicted in brackets."""
    peak = getattr(event, "measured_peak_bytes", None)
    step = getattr(event, "measured_step_seconds", None)
    predicted_peak = getattr(event, "predicted_peak_bytes", None) or getattr(
        candidate, "peak_bytes", None
    )
    predicted_step = getattr(event, "predicted_step_seconds", None) or answers.step_seconds(
        candidate
    )
    device = getattr(event, "device", "") or "this machine"
    lines = [f"Pre-flight on {device}: measured, with the plan's prediction beside it.", ""]
    from affiner.runner.run import peak_basis

    lines.append(
        f"- peak memory ({peak_basis(getattr(event, 'device', '') or 'cpu')}): "
        f"**{format_bytes(peak)}** (predicted {format_bytes(predicted_peak)})"
    )
    if getattr(event, "device", "") == "cpu" and peak and predicted_peak and peak < predicted_peak:
        lines.append(
            "- on a CPU the process keeps more of its freed heap as the run sees new batch "
            "shapes: the prediction is for the whole run, the measurement after a few steps"
        )
    eval_peak = getattr(event, "eval_peak_bytes", None)
    if eval_peak:
        lines.append(f"- evaluation peak: {format_bytes(eval_peak)}")
    lines.append(
        f"- step time: **{format_duration(step)}** (predicted {format_duration(predicted_step)})"
    )
    if getattr(event, "adjusted", False):
        lines.append(
            f"- the batch was adjusted to fit: micro-batch {event.micro_batch} × "
            f"{event.grad_accum} accumulation steps"
        )
    if not getattr(event, "save_ok", True):
        lines.append("- ⚠ saving a checkpoint failed: check the disk before a long run")
    lines += [f"- {note}" for note in getattr(event, "notes", ()) or ()]
    return "\n".join(lines)
