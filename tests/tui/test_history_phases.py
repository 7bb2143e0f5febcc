"""`RunHistory.phase_line` and the ETA through silent phases, from handwritten events.

A ``progress`` event opens (or moves on) a phase; the next event that is not progress, a
system sample or a warning closes it. The countdown is the phase's own pace counted down by
the clock, so it moves between events.
"""

from __future__ import annotations

from affiner.runner.run.events import (
    Checkpoint,
    EvalResult,
    Progress,
    RunStarted,
    SystemSample,
    TrainLog,
)
from affiner.runner.run.phases import PHASE_WORDS, PHASES, PREFLIGHT, PREFLIGHT_PHASES, TRAIN
from affiner.tui.live.history import RunHistory


def _history(*events) -> RunHistory:
    history = RunHistory(run_id="r")
    history.add(events)
    return history


def test_every_phase_the_runner_names_has_words() -> None:
    # the two status-only phases (status.json's message between the silent ones) have words too
    assert set(PHASE_WORDS) == set(PHASES) | set(PREFLIGHT_PHASES) | {TRAIN, PREFLIGHT}


def test_no_phase_no_line() -> None:
    history = _history(RunStarted(run_id="r", total_steps=10, t=100.0))
    assert history.phase_line(200.0) == ""


def test_the_base_evaluation_counts_down_with_the_clock() -> None:
    history = _history(
        Progress(step=0, phase="base_eval", done=1, total=200, t=100.0),
        Progress(step=0, phase="base_eval", done=41, total=200, t=120.0),
    )
    # 40 batches in 20 s: 159 left at 2 a second is 79.5 s, from the latest event
    assert history.phase_line(120.0) == "evaluating the base model · 41 of 200 batches · ~80 s left"
    assert history.phase_line(150.0) == "evaluating the base model · 41 of 200 batches · ~50 s left"
    assert history.phase_line(300.0).endswith("· finishing")


def test_an_evaluation_result_closes_the_phase_and_sets_the_next_ones_guess() -> None:
    history = _history(
        Progress(step=0, phase="base_eval", done=1, total=20, t=100.0),
        SystemSample(step=0, t=101.0),  # samples do not close a phase
        Progress(step=0, phase="base_eval", done=20, total=20, t=110.0),
        EvalResult(step=0, loss=2.0, runtime_seconds=12.0, t=111.0),
    )
    assert history.phase_line(112.0) == ""
    assert history.eval_seconds == 12.0
    history.add([Progress(step=50, phase="eval", done=1, total=20, t=200.0)])
    # one event: no pace of its own yet, so the previous evaluation's length counts down
    assert history.phase_line(203.0) == "evaluating at step 50 · 1 of 20 batches · ~9.0 s left"


def test_a_phase_without_a_count_shows_its_time_and_ends_at_its_checkpoint() -> None:
    history = _history(Progress(step=100, phase="save", t=50.0))
    assert history.phase_line(54.2) == "saving the checkpoint of step 100 · 4.2 s so far"
    history.add([Checkpoint(step=100, path="c", t=55.0)])
    assert history.phase_line(56.0) == ""


def test_an_unknown_phase_is_shown_by_its_name() -> None:
    history = _history(Progress(step=0, phase="tune_kernels", t=10.0))
    assert history.phase_line(13.0) == "tune kernels · 3.0 s so far"


def test_the_worker_s_own_phases_are_worded() -> None:
    history = _history(Progress(step=0, phase="load_model", t=10.0))
    assert history.phase_line(13.0) == "loading the model · 3.0 s so far"


def test_the_eta_keeps_counting_down_through_a_mid_run_evaluation() -> None:
    history = _history(
        RunStarted(run_id="r", total_steps=100, t=1.0),
        TrainLog(step=50, total_steps=100, eta_seconds=300.0, t=100.0),
        Progress(step=50, phase="eval", done=1, total=100, t=101.0),
        Progress(step=50, phase="eval", done=11, total=100, t=111.0),
    )
    assert history.eta_at(131.0) == 269.0  # the logged ETA, counted down through the eval
    assert history.eta_at(161.0) == 239.0
    assert history.eta_text(161.0) == "ETA 4 min"


def test_the_eta_never_drops_below_what_the_open_phase_still_needs() -> None:
    history = _history(
        TrainLog(step=50, total_steps=100, eta_seconds=60.0, t=100.0),
        Progress(step=50, phase="eval", done=1, total=100, t=101.0),
        Progress(step=50, phase="eval", done=11, total=100, t=111.0),
    )
    # a batch a second, 89 to go from t=111: at 131 the eval needs 69 s, the countdown says 29
    assert history.eta_at(131.0) == 69.0
    # both have run out: the run is in a phase that overran its guess, not stalled
    assert history.eta_text(250.0) == "ETA known once this phase ends"
    history.add([EvalResult(step=50, loss=1.0, t=251.0)])
    assert history.eta_text(252.0).startswith("ETA overdue")


def test_a_stalled_run_without_a_phase_is_still_overdue() -> None:
    history = _history(TrainLog(step=5, total_steps=10, eta_seconds=10.0, t=1.0))
    assert history.eta_text(100.0).startswith("ETA overdue")


def test_a_new_phase_replaces_the_open_one() -> None:
    history = _history(
        Progress(step=10, phase="eval", done=5, total=10, t=0.0),
        Progress(step=10, phase="save", t=5.0),
    )
    assert history.phase_line(6.0) == "saving the checkpoint of step 10 · 1.0 s so far"


def test_a_save_is_expected_to_last_as_long_as_the_previous_one() -> None:
    history = _history(
        Progress(step=10, phase="save", t=10.0),
        Checkpoint(step=10, path="c10", t=16.0),
        Progress(step=20, phase="save", t=40.0),
    )
    assert history.phase_line(42.0) == "saving the checkpoint of step 20 · ~4.0 s left"


def test_an_evaluation_ended_by_anything_but_its_result_does_not_time_the_next() -> None:
    history = _history(
        Progress(step=10, phase="eval", done=1, total=4, t=10.0),
        TrainLog(step=15, total_steps=20, t=90.0),  # no result: the length is not the eval's
        Progress(step=20, phase="eval", done=1, total=4, t=100.0),
    )
    assert history.eval_seconds is None
    assert history.phase_line(101.0) == "evaluating at step 20 · 1 of 4 batches · 1.0 s so far"


def test_a_phase_keeps_its_pace_when_its_step_moves_and_restarts_when_its_count_goes_back() -> None:
    # the pre-flight (affiner.runner.training.preflight) counts micro-batches across its steps
    history = _history(
        Progress(step=0, phase="preflight_train", done=0, total=12, t=10.0),
        Progress(step=1, phase="preflight_train", done=4, total=12, t=14.0),
        Progress(step=2, phase="preflight_train", done=8, total=12, t=18.0),
    )
    line = "pre-flight: timing real steps · 8 of 12 micro-batches · ~4.0 s left"
    assert history.phase_line(18.0) == line
    history.add([Progress(step=0, phase="preflight_train", done=0, total=12, t=30.0)])  # a retry
    line = "pre-flight: timing real steps · 0 of 12 micro-batches · 1.0 s so far"
    assert history.phase_line(31.0) == line
