"""The pieces behind the event log, without training: the callback's routing and de-duplication,
the detectors, the metrics, the resume rule and the system sampler."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from affiner.runner.run.events import (
    Checkpoint,
    EvalResult,
    EventWriter,
    RunFinished,
    RunStarted,
    RunStatus,
    TrainLog,
    Warning_,
    effective_events,
    read_events,
)
from affiner.runner.run.rundir import RunDir
from affiner.runner.training.callbacks import EventCallback, RunInfo, StopRequest, TokenCounter
from affiner.runner.training.metrics import (
    EarlyStopper,
    OverfitDetector,
    classification_scores,
    perplexity,
    replay_history,
)
from affiner.runner.training.sampler import SystemSampler, take_sample


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _callback(tmp_path: Path, **kwargs) -> tuple[EventCallback, EventWriter, _Clock]:
    rd = RunDir(tmp_path)
    writer = EventWriter(rd.path)
    clock = _Clock()
    info = RunInfo(
        run_id="r", model="m", method="lora", device="cpu", epochs=1, train_rows=8, eval_rows=2
    )
    cb = EventCallback(
        rd,
        writer,
        RunStatus(run_id="r"),
        info,
        tokens=TokenCounter(),
        stop=StopRequest(),
        clock=clock,
        **kwargs,
    )
    return cb, writer, clock


def _state(step: int, max_steps: int = 10) -> SimpleNamespace:
    return SimpleNamespace(
        global_step=step, max_steps=max_steps, epoch=step / max_steps, is_world_process_zero=True
    )


def _control() -> SimpleNamespace:
    return SimpleNamespace(
        should_log=False, should_save=False, should_evaluate=False, should_training_stop=False
    )


def test_eval_metrics_are_written_once_although_both_hooks_see_them(tmp_path: Path) -> None:
    cb, writer, _clock = _callback(tmp_path)
    control = _control()
    cb.on_train_begin(None, _state(0), control)
    metrics = {"eval_loss": 2.0, "eval_runtime": 0.1, "epoch": 0.5}
    model = SimpleNamespace(save_pretrained=lambda path: (Path(path) / "w.bin").write_text("w"))
    cb.on_evaluate(None, _state(5), control, metrics=metrics, model=model)
    cb.on_log(None, _state(5), control, logs=dict(metrics))  # transformers 5 sends them here too
    cb.on_evaluate(None, _state(5), control, metrics=metrics, model=model)  # a repeat, same step
    writer.close()
    events = read_events(tmp_path)
    assert [e.type for e in events] == ["run_started", "eval", "checkpoint"]
    assert events[1].perplexity == pytest.approx(math.exp(2.0))
    assert events[2].best and (tmp_path / "checkpoints" / "best" / "w.bin").exists()


def test_train_log_reports_tokens_per_second_of_training_time_only(tmp_path: Path) -> None:
    import torch

    cb, writer, clock = _callback(tmp_path)
    control = _control()
    cb.on_train_begin(None, _state(0), control)
    for step in (1, 2):
        cb.on_step_begin(None, _state(step - 1), control)
        cb.tokens.add(torch.ones(2, 50, dtype=torch.long))  # 100 real tokens a step
        clock.now += 0.5
        cb.on_step_end(None, _state(step), control)
        clock.now += 10.0  # evaluation or saving: not training time
    cb.on_log(None, _state(2), control, logs={"loss": 1.5, "learning_rate": 1e-3, "grad_norm": 0.5})
    writer.close()
    log = next(e for e in read_events(tmp_path) if isinstance(e, TrainLog))
    assert log.tokens_per_second == pytest.approx(200.0)
    assert log.eta_seconds == pytest.approx((clock.now - 1000.0) / 2 * 8)
    assert (log.loss, log.grad_norm, log.total_steps) == (1.5, 0.5, 10)


def test_a_stop_request_saves_and_stops_at_the_next_step_end(tmp_path: Path) -> None:
    cb, writer, _ = _callback(tmp_path)
    cb.stop.requested = True
    control = cb.on_step_end(None, _state(3), _control())
    assert control.should_save and control.should_training_stop and control.should_log
    writer.close()


def test_non_finite_loss_stops_without_saving(tmp_path: Path) -> None:
    cb, writer, _ = _callback(tmp_path)
    control = _control()
    control.should_save = True
    cb.on_log(None, _state(4), control, logs={"loss": float("nan"), "learning_rate": 1e-3})
    writer.close()
    assert control.should_training_stop and not control.should_save
    assert cb.failure and "lower learning rate" in cb.failure
    kinds = [e.type for e in read_events(tmp_path)]
    assert kinds == ["train_log", "error"]  # the loss line still parses: NaN became null


def test_overfit_detector_needs_rising_eval_and_falling_train() -> None:
    detector = OverfitDetector(patience=2)
    detector.observe_train(3.0)
    assert not detector.observe_eval(2.0)
    detector.observe_train(2.5)
    assert not detector.observe_eval(2.1)  # one rise is not a trend
    detector.observe_train(2.0)
    assert detector.observe_eval(2.2)  # two rises while train fell from 3.0 to 2.0
    detector.observe_train(1.5)
    assert not detector.observe_eval(2.3)  # once per streak

    both_rise = OverfitDetector(patience=2)  # a learning rate that is too high, not overfitting
    for train, ev in ((1.0, 1.0), (1.2, 1.1), (1.4, 1.2)):
        both_rise.observe_train(train)
        fired = both_rise.observe_eval(ev)
    assert not fired


def test_early_stopper_and_replay_continue_counting_after_resume() -> None:
    history = [{"loss": 3.0, "step": 1}, {"eval_loss": 2.0}, {"loss": 2.5}, {"eval_loss": 2.1}]
    overfit, stopper = OverfitDetector(2), EarlyStopper(2)
    replay_history(history, overfit, stopper)
    assert stopper.best == 2.0 and stopper.without_improvement == 1
    assert stopper.observe(
        2.05
    )  # the second evaluation without improvement, counted across the resume


def test_classification_scores_macro_average() -> None:
    predictions = np.array([0, 0, 1, 1, 2, 0])
    labels = np.array([0, 1, 1, 1, 2, 2])
    scores = classification_scores(predictions, labels, 3)
    # precision per class: 0 -> 1 of 3 predicted, 1 -> 2 of 2, 2 -> 1 of 1
    assert scores["precision"] == pytest.approx((1 / 3 + 1 + 1) / 3)
    # recall per class: 0 -> 1 of 1, 1 -> 2 of 3, 2 -> 1 of 2
    assert scores["recall"] == pytest.approx((1 + 2 / 3 + 1 / 2) / 3)
    assert scores["accuracy"] == pytest.approx(4 / 6)
    f1 = [2 * p * r / (p + r) for p, r in ((1 / 3, 1), (1, 2 / 3), (1, 1 / 2))]
    assert scores["f1"] == pytest.approx(sum(f1) / 3)
    assert classification_scores(np.array([1]), np.array([-100]))["accuracy"] == 0.0
    assert perplexity(100.0) == 1e6 and perplexity(float("nan")) is None


def test_effective_events_drop_what_the_checkpoint_does_not_hold() -> None:
    events = [
        RunStarted(total_steps=20),
        TrainLog(step=5),
        EvalResult(step=5),
        Checkpoint(step=5, path="checkpoint-5"),
        TrainLog(step=10),
        Warning_(code="slow", step=7),
        Warning_(code="dropped_rows"),  # no step: kept
        RunFinished(state="stopped", step=10),
        RunStarted(total_steps=20, resumed_from_step=5),
        TrainLog(step=10),
        RunFinished(state="finished", step=20),
    ]
    kept = effective_events(events)
    assert [(e.type, getattr(e, "step", None)) for e in kept] == [
        ("run_started", None),
        ("train_log", 5),
        ("eval", 5),
        ("checkpoint", 5),
        ("warning", None),
        ("run_started", None),
        ("train_log", 10),
        ("run_finished", 20),
    ]
    assert len(events) == 11  # the input is left alone


def test_system_sampler_writes_samples_from_a_thread(tmp_path: Path) -> None:
    sample = take_sample(None, step=3)
    assert (
        sample.ram_total
        and sample.process_rss
        and sample.process_peak_rss >= sample.process_rss // 2
    )
    with EventWriter(tmp_path) as writer:
        sampler = SystemSampler(writer, interval=0.01, step=lambda: 7)
        sampler.start()
        for _ in range(500):
            if [e for e in read_events(tmp_path) if e.type == "system"]:
                break
            sampler.join(0.01)
        sampler.stop()
    system = [e for e in read_events(tmp_path) if e.type == "system"]
    assert system and system[0].step == 7 and isinstance(system[0].gpus, list)
    assert not sampler.is_alive()
