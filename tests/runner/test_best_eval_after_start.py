"""``best eval`` is a trained model's score: the base model's evaluation at step 0
(``[eval].at_start``) is never shown as a run's best, in ``affiner runs`` or in compare."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from affiner.runner.run import summarize
from affiner.runner.run.events import EvalResult, RunFinished, RunStarted, TrainLog
from affiner.tui.cli.entry import main
from tests.runner.test_runs import make_run

RUN_ID = "20260101-000000-lora-tiny-aaaa"


def _events(*, trained_eval: bool) -> list:
    events = [
        RunStarted(run_id=RUN_ID, model="tiny", method="lora", total_steps=10, t=1000),
        # the untrained base scores better than anything after it: still not "best"
        EvalResult(step=0, loss=0.5, accuracy=0.9, f1=0.9, t=1001),
        TrainLog(step=10, epoch=1.0, loss=1.5, total_steps=10, t=1002),
    ]
    if trained_eval:
        events.append(EvalResult(step=10, loss=0.8, accuracy=0.7, f1=0.6, t=1003))
    events.append(RunFinished(state="stopped", step=10, t=1004))
    return events


def test_runs_shows_the_best_evaluation_after_step_0(
    runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rd = make_run(runs_dir, RUN_ID, events=_events(trained_eval=True), state="stopped")
    summary = summarize(rd)
    assert summary.best_eval_loss == 0.8
    assert summary.best_metric_name == "accuracy" and summary.best_metric == 0.7
    assert main(["runs", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["best_eval_loss"] == 0.8
    assert main(["runs"]) == 0
    table = capsys.readouterr().out
    assert "0.8000" in table and "0.5000" not in table


def test_a_run_evaluated_only_at_step_0_has_no_best_eval(
    runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rd = make_run(runs_dir, RUN_ID, events=_events(trained_eval=False), state="stopped")
    assert summarize(rd).best_eval_loss is None
    assert main(["runs", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["best_eval_loss"] is None


def test_compare_takes_its_best_after_step_0(runs_dir: Path) -> None:
    from affiner.tui.screens.run_facts import RunFacts

    facts = RunFacts()
    facts.add(_events(trained_eval=True))
    assert facts.history.best_eval is not None and facts.history.best_eval.step == 0
    best = facts.best_eval
    assert best is not None and best.step == 10 and best.loss == 0.8
    only_base = RunFacts()
    only_base.add(_events(trained_eval=False))
    assert only_base.best_eval is None
