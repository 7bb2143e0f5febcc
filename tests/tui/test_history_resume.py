"""The resume rule, one rule: the monitor's and attach's `RunHistory` agree with `effective_events`.

A run whose first attempt ran to step 10 (with warnings, an error, system samples and a best
checkpoint after step 4) and was resumed from its checkpoint at step 4: whatever batches the
events arrive in, the history holds what `affiner.runner.run.effective_events` keeps, which
is what ``affiner runs`` counts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from affiner.runner.run import (
    Checkpoint,
    Error,
    EvalResult,
    Event,
    EventWriter,
    GpuSample,
    Preflight,
    RunDir,
    RunFinished,
    RunStarted,
    SystemSample,
    TrainLog,
    Warning_,
    dropped_by_resume,
    effective_events,
    summarize,
)
from affiner.tui.cli.attach import AttachView
from affiner.tui.live.history import RunHistory
from affiner.tui.live.watcher import RunWatcher

GIB = 1 << 30


def attempt(steps: range, t: float) -> list[Event]:
    events: list[Event] = []
    for step in steps:
        t += 1
        events.append(
            TrainLog(
                step=step,
                epoch=step / 6,
                loss=3.0 - step / 10,
                learning_rate=1e-4,
                tokens_per_second=1000.0 + step,
                total_steps=12,
                eta_seconds=12 - step,
                t=t,
            )
        )
        events.append(
            SystemSample(
                step=step,
                gpus=[GpuSample(index=0, memory_used=(10 + step) * GIB, memory_total=80 * GIB)],
                torch_peak=(8 + step) * GIB,
                t=t,
            )
        )
        if step % 4 == 0:
            events.append(EvalResult(step=step, epoch=step / 6, loss=2.9 - step / 10, t=t))
            events.append(
                Checkpoint(
                    step=step,
                    path=f"checkpoints/c{step}",
                    best=True,
                    eval_loss=2.9 - step / 10,
                    t=t,
                )
            )
    return events


def two_attempts() -> list[Event]:
    first: list[Event] = [
        RunStarted(run_id="r", model="tiny", method="lora", device="cuda", total_steps=12, t=1000),
        Preflight(device="cuda", measured_peak_bytes=9 * GIB, predicted_peak_bytes=10 * GIB),
        Warning_(code="precision", message="fp16 on this GPU", step=0, t=1000),
        *attempt(range(1, 11), 1000),
    ]
    first.insert(8, Warning_(code="slow", message="slower than planned", step=3, t=1004))
    first += [
        Warning_(code="overfitting", message="eval loss rising", step=9, t=1010),
        Error(code="oom", message="out of memory", step=10, t=1011),
        RunFinished(state="failed", step=10, t=1012),
    ]
    second: list[Event] = [
        RunStarted(run_id="r", device="cuda", total_steps=12, resumed_from_step=4, t=2000),
        *attempt(range(5, 13), 2000),
        Warning_(code="slow", message="slower than planned", step=7, t=2008),
        RunFinished(state="finished", step=12, t=2013),
    ]
    return first + second


def folded(batches: list[list[Event]]) -> RunHistory:
    history = RunHistory()
    for batch in batches:
        history.add(batch)
    return history


def batchings(events: list[Event]) -> dict[str, list[list[Event]]]:
    marker = next(i for i, e in enumerate(events) if getattr(e, "resumed_from_step", None))
    return {
        "whole": [events],
        "one by one": [[e] for e in events],
        "split at the resume": [events[:marker], events[marker:]],
        "threes": [events[i : i + 3] for i in range(0, len(events), 3)],
    }


@pytest.mark.parametrize("how", ["whole", "one by one", "split at the resume", "threes"])
def test_the_history_holds_what_effective_events_keeps(how: str) -> None:
    events = two_attempts()
    kept = effective_events(events)
    history = folded(batchings(events)[how])

    assert history == folded([kept])  # every field, however the events were batched
    assert [int(p[0]) for p in history.train_loss] == [
        e.step for e in kept if isinstance(e, TrainLog)
    ]
    assert [int(p[0]) for p in history.train_loss] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    assert history.warnings == [e for e in kept if isinstance(e, Warning_)]
    assert [(w.code, w.step) for w in history.warnings] == [
        ("precision", 0),
        ("slow", 3),
        ("slow", 7),
    ]
    assert history.errors == []  # the abandoned attempt's out-of-memory is not this run's
    assert history.memory["GPU 0"].points == [
        (float(e.step), float(e.gpus[0].memory_used))  # type: ignore[union-attr]
        for e in kept
        if isinstance(e, SystemSample)
    ]
    assert [e.step for e in history.evals] == [4, 8, 12]
    assert history.best_checkpoint is not None and history.best_checkpoint.t > 2000
    assert history.measured_peak_bytes == 20 * GIB  # step 12's, not the abandoned step 10's
    assert history.finished is not None and history.finished.state == "finished"
    assert history.step == 12


def test_a_resume_marker_alone_drops_what_the_rule_drops() -> None:
    first = two_attempts()[:-20]
    marker = RunStarted(run_id="r", total_steps=12, resumed_from_step=4, t=2000)
    history = folded([first])
    history.add([marker])
    survivors = [e for e in first if not dropped_by_resume(e, 4)]
    assert history == folded([[*survivors, marker]])
    assert history.step == 4  # the checkpoint holds four steps
    assert max(p[0] for p in history.memory["GPU 0"].points) == 4
    assert history.best_checkpoint is not None and history.best_checkpoint.step == 4
    assert history.finished is None and history.errors == []


def write(rd: RunDir, events: list[Event]) -> None:
    rd.path.mkdir(parents=True, exist_ok=True)
    with EventWriter(rd.path) as writer:
        for event in events:
            writer.write(event)


def test_monitor_attach_and_runs_agree(tmp_path: Path) -> None:
    events = two_attempts()
    marker = next(i for i, e in enumerate(events) if getattr(e, "resumed_from_step", None))
    rd = RunDir(tmp_path / "r")
    write(rd, events[:marker])
    view = AttachView(rd)
    view.poll()  # attach was following the first attempt when it was resumed
    write(rd, events[marker:])
    view.poll()

    monitor = RunHistory()
    monitor.add(RunWatcher(rd.path).poll().events)  # the monitor opening the run afterwards
    summary = summarize(rd)

    assert view.history == monitor
    assert summary.warnings == len(monitor.warnings) == 3
    assert summary.best_eval_loss == pytest.approx(monitor.best_eval.loss)  # type: ignore[union-attr]
    assert summary.state == "finished" and monitor.finished is not None
