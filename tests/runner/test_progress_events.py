"""``progress`` events: a real tiny run names its silent phases, and the callback's pieces
(throttling, the evaluations still to come, the ETA that counts them) on a fake clock."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from affiner.runner.run.events import (
    EventWriter,
    Progress,
    RunStatus,
    TrainLog,
    read_events,
)
from affiner.runner.run.phases import PHASES
from affiner.runner.run.rundir import RunDir
from affiner.runner.train import EXIT_FINISHED, run_training
from affiner.runner.training import callbacks
from affiner.runner.training.callbacks import (
    EventCallback,
    RunInfo,
    StopRequest,
    TokenCounter,
    evals_left,
)
from affiner.tui.live.history import RunHistory
from tests.train_helpers import make_run, pattern_rows


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


#: What the best-model keeper saves when an evaluation improves on the best.
MODEL = SimpleNamespace(save_pretrained=lambda path: (Path(path) / "w.bin").write_text("w"))


def _callback(tmp_path: Path) -> tuple[EventCallback, EventWriter, _Clock]:
    writer = EventWriter(tmp_path)
    clock = _Clock()
    info = RunInfo(
        run_id="r", model="m", method="lora", device="cpu", epochs=1, train_rows=8, eval_rows=2
    )
    cb = EventCallback(
        RunDir(tmp_path),
        writer,
        RunStatus(run_id="r"),
        info,
        tokens=TokenCounter(),
        stop=StopRequest(),
        clock=clock,
    )
    return cb, writer, clock


def _state(step: int, max_steps: int = 100, **more) -> SimpleNamespace:
    return SimpleNamespace(
        global_step=step,
        max_steps=max_steps,
        epoch=step / max_steps,
        is_world_process_zero=True,
        **more,
    )


def _control(**flags: bool) -> SimpleNamespace:
    control = SimpleNamespace(
        should_log=False, should_save=False, should_evaluate=False, should_training_stop=False
    )
    for name, value in flags.items():
        setattr(control, name, value)
    return control


@pytest.mark.slow
def test_a_real_run_reports_each_evaluation_batch_and_each_save(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(callbacks, "PROGRESS_SECONDS", 0.0)  # every batch, to check the counts
    rd = make_run(
        tmp_path,
        tiny_llama,
        # 5 batches of 4, none the same as a training row (those would be left out as leakage)
        eval_rows=[{"text": f"{row['text']} {n}"} for n, row in enumerate(pattern_rows(20))],
        training={"max_steps": 10},
        eval={"every_steps": 5, "at_start": True},
        checkpoint={"every_steps": 5},
    )
    assert run_training(rd.path) == EXIT_FINISHED

    # the reader knows the new type; samples and warnings come at any time, so leave them out
    events = [e for e in read_events(rd.path) if e.type not in ("system", "warning")]
    kinds = [(e.type, getattr(e, "phase", None), getattr(e, "step", None)) for e in events]
    progress = [e for e in events if isinstance(e, Progress)]
    assert {e.phase for e in progress} <= set(PHASES)
    for phase, step in (("base_eval", 0), ("eval", 5), ("eval", 10)):
        batches = [e for e in progress if e.phase == phase and e.step == step]
        assert [(e.done, e.total) for e in batches] == [(n, 5) for n in range(1, 6)]
        # the evaluation's result follows its last batch directly: it closes the phase
        last = kinds.index(("progress", phase, step)) + 4
        assert kinds[last + 1] == ("eval", None, step)
    # the worker's own phases: the data, then the model, then the base eval; the weights last
    order = [kinds.index(("progress", p, 0)) for p in ("prepare_data", "load_model", "base_eval")]
    assert order == sorted(order)
    saving = kinds.index(("progress", "save_outputs", 10))
    assert kinds[saving + 1] == ("run_finished", None, 10)
    # the base model is evaluated before training starts
    assert kinds.index(("progress", "base_eval", 0)) < kinds.index(("run_started", None, None))
    for step in (5, 10):  # each checkpoint's save is announced, then its event closes it
        save = kinds.index(("progress", "save", step))
        assert kinds[save + 1] == ("checkpoint", None, step)
        assert progress[0].t <= events[save].t

    history = RunHistory(run_id=rd.run_id)
    base_done = kinds.index(("eval", None, 0))
    history.add(events[:base_done])
    assert history.phase_line(events[base_done - 1].t).startswith(
        "evaluating the base model · 5 of 5 batches"
    )
    history.add(events[base_done:])
    assert history.phase_line(events[-1].t + 60) == ""
    assert history.eval_seconds is not None and history.eval_seconds > 0


def test_evaluation_batches_are_throttled_to_one_event_per_interval(tmp_path: Path) -> None:
    cb, writer, clock = _callback(tmp_path)
    loader = list(range(100))  # anything with a length: 100 batches
    for _ in range(100):
        clock.now += 0.1  # 10 s in all: first, one per 2 s, last
        cb.on_prediction_step(None, _state(50), _control(), eval_dataloader=loader)
    metrics = {"eval_loss": 1.0, "eval_runtime": 10.0}
    cb.on_evaluate(None, _state(50), _control(), metrics=metrics, model=MODEL)
    writer.close()
    progress = [e for e in read_events(tmp_path) if isinstance(e, Progress)]
    assert [e.done for e in progress] == [1, 21, 41, 61, 81, 100]
    assert all((e.phase, e.step, e.total) == ("eval", 50, 100) for e in progress)


def test_a_loader_without_a_length_counts_batches_against_zero(tmp_path: Path) -> None:
    cb, writer, _clock = _callback(tmp_path)
    cb.on_prediction_step(None, _state(0), _control(), eval_dataloader=iter(()))
    writer.close()
    (event,) = read_events(tmp_path)
    assert (event.phase, event.done, event.total) == ("base_eval", 1, 0)


def test_evals_left_follows_the_trainers_flow() -> None:
    steps = SimpleNamespace(eval_strategy="steps")
    # every 50 of 120 steps: at 50, 100 and the closing one at 120
    assert evals_left(steps, _state(10, 120, eval_steps=50), _control()) == 3
    assert evals_left(steps, _state(50, 120, eval_steps=50), _control(should_evaluate=True)) == 3
    assert evals_left(steps, _state(55, 120, eval_steps=50), _control()) == 2
    assert evals_left(steps, _state(100, 100, eval_steps=50), _control(should_evaluate=True)) == 0
    epochs = SimpleNamespace(eval_strategy="epoch")
    state = _state(50, 100, num_train_epochs=2)
    state.epoch = 1.0  # the last step of epoch 1 logs before its evaluation
    assert evals_left(epochs, state, _control()) == 2
    state.epoch = 1.2
    assert evals_left(epochs, state, _control()) == 1
    assert evals_left(SimpleNamespace(eval_strategy="no"), _state(5), _control()) == 0
    assert evals_left(None, _state(5), _control()) == 0


def test_the_eta_counts_the_evaluations_still_to_come(tmp_path: Path) -> None:
    cb, writer, clock = _callback(tmp_path)
    args = SimpleNamespace(eval_strategy="steps")
    cb.on_evaluate(args, _state(0), _control(), metrics={"eval_loss": 3.0, "eval_runtime": 30.0})
    cb.on_train_begin(args, _state(0, eval_steps=50), _control())
    clock.now += 50.0  # 50 steps of a second each
    cb.on_log(args, _state(50, eval_steps=50), _control(should_evaluate=True), logs={"loss": 2.0})
    clock.now += 20.0  # this evaluation took 20 s: not a step's time
    metrics = {"eval_loss": 2.0, "eval_runtime": 20.0}
    cb.on_evaluate(args, _state(50, eval_steps=50), _control(), metrics=metrics, model=MODEL)
    clock.now += 5.0
    cb.on_log(args, _state(55, eval_steps=50), _control(), logs={"loss": 1.9})
    writer.close()
    first, second = [e for e in read_events(tmp_path) if isinstance(e, TrainLog)]
    # 50 steps left at 1 s, and the evaluations at 50 and 100 at the base model's 30 s each
    assert first.eta_seconds == pytest.approx(50 * 1.0 + 2 * 30.0)
    # 45 steps left at 55 s / 55 steps, and the one at 100 at the last evaluation's 20 s
    assert second.eta_seconds == pytest.approx(45 * 1.0 + 20.0)


def test_waiting_for_the_baseline_hands_each_poll_to_a_screen(tmp_path: Path) -> None:
    import threading
    import time

    from affiner.runner.demo import wait_for_baseline
    from affiner.runner.run.events import EvalResult, write_status

    rd = RunDir(tmp_path / "run")
    rd.path.mkdir()
    write_status(rd.path, RunStatus(run_id="run", state="starting", started=time.time()))
    writer = EventWriter(rd.path)
    writer.write(Progress(step=0, phase="base_eval", done=1, total=10))
    history = RunHistory(run_id="run")
    lines: list[str] = []

    def on_events(events) -> None:
        history.add(events)
        lines.append(history.phase_line(time.time()))

    later = threading.Timer(0.3, lambda: writer.write(EvalResult(step=0, loss=2.0)))
    later.start()
    try:
        before = wait_for_baseline(rd, poll=0.05, on_events=on_events)
    finally:
        later.cancel()
        writer.close()
    assert before is not None and before.loss == 2.0
    assert lines[0].startswith("evaluating the base model · 1 of 10 batches")
    assert len(lines) > 2  # called at every poll, events or not: the countdown can move
    assert lines[-1] == ""  # the result closed the phase


def test_the_reader_parses_progress_and_skips_what_it_cannot(tmp_path: Path) -> None:
    from affiner.runner.run.events import EVENT_TYPES, EVENTS_FILE, EventReader

    assert EVENT_TYPES["progress"] is Progress  # every event class enters itself
    lines = [
        '{"type": "progress", "t": 1.0, "step": 0, "phase": "base_eval", "done": 3, "total": 9}',
        # a type this reader does not know is skipped, as a reader older than "progress" skips it
        '{"type": "progress_v2", "t": 2.0}',
        "null",
        "[1, 2]",
        "{not json",
        '{"type": "progress", "t": 3.0, "phase": "save", "extra": 1}',  # unknown field dropped
        '{"type": "progress", "t": 4.0, "phase": "ev',  # torn: left for the next read
    ]
    (tmp_path / EVENTS_FILE).write_text("\n".join(lines), encoding="utf-8")
    reader = EventReader(tmp_path)
    first, second = reader.read_new()
    assert (first.phase, first.done, first.total, first.t) == ("base_eval", 3, 9, 1.0)
    assert (second.phase, second.done, second.total) == ("save", 0, 0)
    assert reader.bad_lines == 3
    with open(tmp_path / EVENTS_FILE, "a", encoding="utf-8") as handle:
        handle.write('al", "step": 5, "done": 1, "total": 2}\n')
    (third,) = reader.read_new()
    assert (third.phase, third.step) == ("eval", 5)


def test_the_foreground_log_names_each_phase_when_it_opens_and_ends() -> None:
    from affiner.runner.run.follow import event_line

    opening = event_line(Progress(step=0, phase="base_eval", done=1, total=200))
    assert opening == "[affiner] evaluating the base model (200 batches)"
    assert event_line(Progress(step=0, phase="base_eval", done=41, total=200)) is None
    closing = event_line(Progress(step=0, phase="base_eval", done=200, total=200))
    assert closing == "[affiner] evaluating the base model: 200 of 200 batches"
    assert event_line(Progress(phase="load_model")) == "[affiner] loading the model"
