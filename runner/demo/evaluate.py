"""A demo's before and after: the base model's held-out score, the run's, and sample answers.

"Before" is the run's own evaluation at step 0 (``[eval].at_start``): the worker evaluates the
untouched model on the held-out rows before its first step, with the same data, metrics and
seeded classification head as every later evaluation, and logs it as an ``eval`` event, so
the live view, the TUI monitor and `affiner.runner.run.runs` see it like any other evaluation.

"After" is the run's last evaluation. For chat, a few held-out questions are answered by the
base model and the tuned one (`affiner.runner.inference.ChatSession`, one model with the adapter
switched off and on); for classification, the tuned model labels a few held-out snippets.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from affiner.runner.demo.provision import quiet_libraries
from affiner.runner.run import (
    CLASS_METRICS,
    EvalResult,
    Event,
    RunDir,
    RunFinished,
    SystemSample,
    effective_events,
    logged_step_seconds,
    read_events,
)


def wait_for_baseline(
    run_dir: RunDir,
    *,
    poll: float = 0.5,
    on_events: Callable[[list[Event]], None] | None = None,
) -> EvalResult | None:
    """Wait for the worker's step-0 evaluation; None if the run ends or dies without one.

    Args:
        run_dir: the run.
        poll: seconds between reads of the event log.
        on_events: called at every poll with the events read (often none): the evaluation
            takes minutes, and a screen that folds them into a `RunHistory` can show its
            ``progress`` with a countdown that moves between events (`RunHistory.phase_line`).
    """
    from affiner.runner.run import EventReader, summarize

    reader = EventReader(run_dir.path)
    while True:
        events = reader.read_new()
        if on_events is not None:
            on_events(events)
        for event in events:
            if isinstance(event, EvalResult) and event.step == 0:
                return event
            if isinstance(event, RunFinished):
                return None
        if not summarize(run_dir).live:  # finished, failed, stopped or interrupted
            return None
        time.sleep(poll)


@dataclass
class Sample:
    """One held-out input with the reference and what the models made of it."""

    input: str
    reference: str
    base: str | None = None
    tuned: str = ""


@dataclass
class DemoResult:
    """What the demo's summary shows and ``bench/results/demo_cpu.json`` keeps.

    Attributes:
        demo, title, model, run_id, run_dir, state: what ran and how it ended.
        train_rows, eval_rows, steps: its size.
        train_seconds: the recipe's training time; wall_seconds: the whole demo, provisioning
            and evaluations included.
        metric: the headline metric name; before/after: held-out scores at step 0 and at the
            end (``loss`` always; accuracy, precision, recall and F1 for classification).
        change: ``after/before - 1`` of the headline metric.
        goal, goal_met: the improvement the preset is meant to show, and whether it did.
        adapter, model_card: where the trained weights and their card are.
        samples: held-out inputs answered by the base and the tuned model.
        planned_steps, planned_train_seconds, planned_step_seconds: what the plan said before
            the run (None where it had no time estimate); measured_step_seconds: the median
            logged step of the run, to hold against it.
        planned_peak_bytes, measured_peak_bytes: the plan's peak memory and the run's measured
            one (a CPU run: the worker's peak resident memory from its system samples; on a GPU
            the highest torch reserved figure, which leaves out the CUDA context the plan
            counts), to hold against each other.
    """

    demo: str
    title: str
    model: str
    run_id: str
    run_dir: str
    state: str
    train_rows: int
    eval_rows: int
    steps: int
    train_seconds: float | None
    wall_seconds: float | None
    metric: str
    before: dict[str, float | None]
    after: dict[str, float | None]
    change: float | None
    goal: str
    goal_met: bool
    adapter: str | None
    model_card: str | None
    samples: list[Sample] = field(default_factory=list)
    message: str = ""
    planned_steps: int | None = None
    planned_train_seconds: float | None = None
    planned_step_seconds: float | None = None
    measured_step_seconds: float | None = None
    planned_peak_bytes: int | None = None
    measured_peak_bytes: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _scores(event: EvalResult | None) -> dict[str, float | None]:
    if event is None:
        return {}
    names = ("loss", *CLASS_METRICS) if event.accuracy is not None else ("loss", "perplexity")
    return {name: getattr(event, name) for name in names}


def evaluations(run_dir: RunDir) -> tuple[EvalResult | None, EvalResult | None, RunFinished | None]:
    """The step-0 evaluation, the last later one, and the run's ending event (each may be None)."""
    events = effective_events(read_events(run_dir.path))
    evals = [e for e in events if isinstance(e, EvalResult)]
    before = next((e for e in evals if e.step == 0), None)
    after = next((e for e in reversed(evals) if e.step > 0), None)
    finished = next((e for e in reversed(events) if isinstance(e, RunFinished)), None)
    return before, after, finished


def measured_peak(events: list[Event]) -> int | None:
    """The run's highest measured memory: peak RSS on a CPU, torch's reserved peak on a GPU."""
    rss = [e.process_peak_rss for e in events if isinstance(e, SystemSample) and e.process_peak_rss]
    gpu = [e.torch_peak for e in events if isinstance(e, SystemSample) and e.torch_peak]
    found = gpu or rss
    return max(found) if found else None


def goal_met(
    metric: str, before: dict[str, Any], after: dict[str, Any]
) -> tuple[float | None, bool]:
    """The relative change of `metric` and whether it meets the demo goal.

    Classification must reach 0.70 held-out accuracy; chat must cut the held-out loss by at
    least 20% (the thresholds in the presets' `goal` text).
    """
    old, new = before.get(metric), after.get(metric)
    if old is None or new is None or old == 0:
        return None, False
    change = new / old - 1
    if metric == "accuracy":
        return change, new >= 0.70
    return change, change <= -0.20


def answer_samples(
    run_dir: RunDir, inputs: list[tuple[str, str]], task: str, *, max_new_tokens: int = 40
) -> list[Sample]:
    """Each held-out input answered by the base model and the tuned one (greedy, so repeatable).

    A classifier's base model has an untrained head, so only the tuned labels are shown.
    """
    from affiner.runner.inference import ChatSession

    with quiet_libraries():
        return _answer(
            ChatSession.from_run(run_dir.path, device="cpu"), inputs, task, max_new_tokens
        )


def _answer(
    session: Any, inputs: list[tuple[str, str]], task: str, max_new_tokens: int
) -> list[Sample]:
    samples = []
    if task == "classification":
        predictions = session.classify([text for text, _ in inputs])
        for (text, label), prediction in zip(inputs, predictions, strict=True):
            confidence = prediction.probabilities[prediction.label]
            samples.append(Sample(text, label, tuned=f"{prediction.label} ({confidence:.0%})"))
        return samples
    for question, answer in inputs:
        messages = [{"role": "user", "content": question}]
        kwargs = {"max_new_tokens": max_new_tokens, "temperature": 0.0}
        base = session.generate(messages, use_adapter=False, **kwargs).strip()
        tuned = session.generate(messages, use_adapter=True, **kwargs).strip()
        samples.append(Sample(question, answer, base=base, tuned=tuned))
    return samples


def collect_result(
    prepared: Any, run_dir: RunDir, *, wall_seconds: float | None, samples: bool = True
) -> DemoResult:
    """The demo's outcome from its run folder (events, adapter, model card)."""
    from affiner.runner.run import summarize

    preset = prepared.preset
    before_event, after_event, finished = evaluations(run_dir)
    summary = summarize(run_dir)
    before, after = _scores(before_event), _scores(after_event)
    change, met = goal_met(preset.metric, before, after)
    adapter = run_dir.adapter if run_dir.adapter.exists() else None
    card = run_dir.model_card
    shown: list[Sample] = []
    if samples and adapter is not None and prepared.sample_inputs:
        shown = answer_samples(run_dir, prepared.sample_inputs, preset.task)
    planned = prepared.candidate.time
    events = read_events(run_dir.path)
    logged = logged_step_seconds(events)
    return DemoResult(
        demo=preset.key,
        title=preset.title,
        model=str(prepared.model_path),
        run_id=run_dir.run_id,
        run_dir=str(run_dir.path),
        state=summary.state,
        train_rows=prepared.data.train_rows,
        eval_rows=prepared.data.eval_rows,
        steps=finished.step if finished else summary.step,
        train_seconds=finished.train_seconds if finished else None,
        wall_seconds=wall_seconds,
        metric=preset.metric,
        before=before,
        after=after,
        change=change,
        goal=preset.goal,
        goal_met=met,
        adapter=str(adapter) if adapter else None,
        model_card=str(card) if card.exists() else None,
        samples=shown,
        message=summary.message,
        planned_steps=planned.total_steps,
        planned_train_seconds=planned.total_seconds,
        planned_step_seconds=planned.step_seconds,
        measured_step_seconds=logged[0] if logged else None,
        planned_peak_bytes=prepared.candidate.peak_bytes,
        measured_peak_bytes=measured_peak(events),
    )
