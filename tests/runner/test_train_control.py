"""Runs that do not simply finish: a NaN loss, a SIGTERM, a kill and a resume, classification.

All in-process `run_training` on the tiny Llama. Faults are injected through TrainerCallbacks
passed to `run_training(callbacks=...)`, so the real recipe handles them.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest
from transformers import TrainerCallback

from affiner.runner.run.events import effective_events, read_events, read_status
from affiner.runner.train import EXIT_FAILED, EXIT_FINISHED, EXIT_STOPPED, run_training
from tests.train_callbacks import PoisonWeights, Terminate
from tests.train_helpers import events_of, make_run, of_type

pytestmark = pytest.mark.slow


class _Killed(BaseException):
    """Stands for kill -9: not an Exception, so the recipe writes no error and no run_finished."""


class _Kill(TrainerCallback):
    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.at_step:
            raise _Killed


def test_nan_loss_stops_with_an_error_and_advice(tiny_llama: Path, tmp_path: Path) -> None:
    rd = make_run(
        tmp_path, tiny_llama, method="full", training={"logging_steps": 1, "max_steps": 20}
    )

    assert run_training(rd.path, callbacks=[PoisonWeights(at_step=3)]) == EXIT_FAILED

    events = events_of(rd)
    errors = of_type(events, "error")
    assert len(errors) == 1 and errors[0]["code"] == "nan_loss"
    assert "lower learning rate" in errors[0]["message"] and "fp16" in errors[0]["message"]
    assert errors[0]["step"] == 4
    assert max(e["step"] for e in of_type(events, "train_log")) == 4  # it stopped at once
    assert events[-1]["type"] == "run_finished" and events[-1]["state"] == "failed"
    assert not rd.adapter.exists()  # NaN weights are never saved as the result
    assert not any(p.name.startswith("checkpoint-") for p in rd.checkpoints.iterdir())
    assert read_status(rd.path).state == "failed"


def test_sigterm_saves_a_checkpoint_and_stops_keeping_the_best(
    tiny_llama: Path, tmp_path: Path
) -> None:
    rd = make_run(
        tmp_path,
        tiny_llama,
        method="lora",
        training={"max_steps": 30},
        eval={"every_steps": 4},
        checkpoint={"every_steps": 100},
    )

    assert run_training(rd.path, callbacks=[Terminate(at_step=7)]) == EXIT_STOPPED

    events = events_of(rd)
    finished = events[-1]
    assert finished["type"] == "run_finished" and finished["state"] == "stopped"
    assert finished["step"] == 7 and "SIGTERM" in finished["message"]
    assert (rd.checkpoints / "checkpoint-7" / "trainer_state.json").exists()
    assert of_type(events, "train_log")[-1]["step"] == 7  # the stopping step is logged
    # The best model (eval at step 4) is kept and loadable as an adapter.
    assert finished["best_checkpoint"] == str(rd.best)
    assert json.loads((rd.best / "affiner_best.json").read_text())["step"] == 4
    assert (rd.best / "adapter_config.json").exists() and (
        rd.adapter / "adapter_config.json"
    ).exists()
    assert read_status(rd.path).state == "stopped"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers are put back


def test_resume_after_a_kill_continues_exactly_with_no_step_twice(
    tiny_llama: Path, tmp_path: Path
) -> None:
    # 12 steps (was 16): the kill still lands after a checkpoint with steps and an evaluation
    # logged since, so the resume must redo both; keep_last 2 drops a checkpoint on the way.
    sections = {
        "training": {"max_steps": 12, "logging_steps": 1, "lr_scheduler": "cosine"},
        "eval": {"every_steps": 3},
        "checkpoint": {"every_steps": 4, "keep_last": 2},
    }
    straight = make_run(tmp_path / "straight", tiny_llama, method="lora", sections=sections)
    assert run_training(straight.path) == EXIT_FINISHED

    rd = make_run(tmp_path / "killed", tiny_llama, method="lora", sections=sections)
    with pytest.raises(_Killed):
        run_training(rd.path, callbacks=[_Kill(at_step=11)])
    before = events_of(rd)
    # Killed inside step 11: steps 9 and 10 (and the eval of step 9) were logged after the
    # step-8 checkpoint.
    assert max(e["step"] for e in of_type(before, "train_log")) == 10
    assert 9 in [e["step"] for e in of_type(before, "eval")]
    assert not of_type(before, "run_finished")

    assert run_training(rd.path, resume=True) == EXIT_FINISHED

    raw = events_of(rd)
    resumed = of_type(raw, "run_started")[-1]
    assert resumed["resumed_from_step"] == 8  # the newest complete checkpoint
    events = effective_events(read_events(rd.path))
    logs = [e for e in events if e.type == "train_log"]
    assert [e.step for e in logs] == list(range(1, 13))  # none twice, none missing
    assert [e.step for e in events if e.type == "eval"] == [3, 6, 9, 12]
    assert events[-1].type == "run_finished" and events[-1].state == "finished"

    # Exactly where it stopped: the same losses as the run that was never interrupted.
    expected = {e["step"]: e["loss"] for e in of_type(events_of(straight), "train_log")}
    assert [round(e.loss, 4) for e in logs] == [round(expected[s], 4) for s in range(1, 13)]


def test_classification_reports_accuracy_precision_recall_f1(
    tiny_llama: Path, tmp_path: Path
) -> None:
    rd = make_run(
        tmp_path,
        tiny_llama,
        method="lora",
        task="classification",
        training={"max_steps": 20},
        eval={"every_steps": 10},
    )
    assert run_training(rd.path) == EXIT_FINISHED

    events = events_of(rd)
    evals = of_type(events, "eval")
    assert [e["step"] for e in evals] == [10, 20]
    last = evals[-1]
    for name in ("accuracy", "precision", "recall", "f1"):
        assert 0.0 <= last[name] <= 1.0
    assert last["accuracy"] >= 0.9 and last["f1"] >= 0.9
    assert last["perplexity"] is None  # meaningless for a class head
    started = of_type(events, "run_started")[0]
    assert started["train_rows"] == 42 and started["eval_rows"] == 6
    card = rd.model_card.read_text()
    assert "Labels: bad, good" in card or "Labels: good, bad" in card
    config = json.loads((rd.adapter / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and "score" in (config["modules_to_save"] or [])


def test_overfitting_warning_on_a_tiny_train_set(tiny_llama: Path, tmp_path: Path) -> None:
    rows = [{"text": "the cat sat on a mat"}, {"text": "the dog ran to the park"}]
    held_out = [{"text": "birds sang in green trees while the sun sets in the west"}]
    rd = make_run(
        tmp_path,
        tiny_llama,
        method="full",
        rows=rows,
        eval_rows=held_out,
        training={"max_steps": 60, "learning_rate": 1e-2, "micro_batch": 2, "logging_steps": 2},
        eval={"every_steps": 4, "overfit_patience": 2, "early_stopping_patience": 4},
        checkpoint={"every_steps": 100},
    )
    assert run_training(rd.path) == EXIT_FINISHED

    events = events_of(rd)
    warnings = {e["code"]: e for e in of_type(events, "warning")}
    assert "overfitting" in warnings and warnings["overfitting"]["action"] == "stop"
    assert "early_stopping" in warnings  # and early stopping ended it before step 60
    finished = events[-1]
    assert finished["state"] == "finished" and finished["step"] < 60
    best_step = json.loads((rd.best / "affiner_best.json").read_text())["step"]
    evals = of_type(events, "eval")
    assert min(evals, key=lambda e: e["loss"])["step"] == best_step


def test_eval_at_start_records_the_base_model_without_calling_it_best(
    tiny_llama: Path, tmp_path: Path
) -> None:
    rd = make_run(
        tmp_path,
        tiny_llama,
        method="lora",
        task="classification",
        training={"max_steps": 10},
        eval={"every_steps": 10, "at_start": True},
    )
    assert run_training(rd.path) == EXIT_FINISHED

    events = events_of(rd)
    evals = of_type(events, "eval")
    assert [e["step"] for e in evals] == [0, 10]
    assert evals[0]["accuracy"] is not None  # the "before" of a before → after
    assert evals[1]["accuracy"] > evals[0]["accuracy"] or evals[0]["accuracy"] >= 0.9
    assert all(c["step"] > 0 for c in of_type(events, "checkpoint") if c["best"])
