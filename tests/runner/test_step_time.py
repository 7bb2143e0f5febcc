"""What a run folder says its steps took: logged steps first, the pre-flight's figure next."""

from __future__ import annotations

from pathlib import Path

import pytest

from affiner.runner.run import (
    Checkpoint,
    EvalResult,
    EventWriter,
    Preflight,
    RunStarted,
    TrainLog,
    logged_step_seconds,
    measured_step,
    read_events,
)


def _write(folder: Path, *events) -> None:
    with EventWriter(folder) as writer:
        for event in events:
            writer.write(event)


def test_gaps_with_an_evaluation_a_checkpoint_or_a_restart_are_not_steps(tmp_path: Path) -> None:
    _write(
        tmp_path,
        RunStarted(device="cpu", t=100.0),
        TrainLog(step=1, t=103.0),  # after the start: not timed (model loading, warm-up)
        TrainLog(step=5, t=111.0),  # 2 s a step
        TrainLog(step=10, t=121.0),  # 2 s a step
        EvalResult(step=10, t=150.0),
        TrainLog(step=15, t=170.0),  # the evaluation's 29 s are in this gap: left out
        TrainLog(step=20, t=180.0),  # 2 s a step
        Checkpoint(step=20, t=181.0),
        TrainLog(step=25, t=400.0),  # a slow save in the gap: left out
    )
    seconds, steps = logged_step_seconds(read_events(tmp_path))
    assert seconds == pytest.approx(2.0) and steps == 14
    found = measured_step(tmp_path)
    assert found.seconds == pytest.approx(2.0) and found.on_cpu is True
    assert found.source == "14 logged steps of this run"


def test_a_resumed_run_does_not_time_the_steps_it_dropped(tmp_path: Path) -> None:
    _write(
        tmp_path,
        RunStarted(device="cuda", t=1.0),
        TrainLog(step=1, t=2.0),
        TrainLog(step=5, t=42.0),  # 10 s a step, then the attempt dies and is resumed at 1
        TrainLog(step=9, t=82.0),
        RunStarted(device="cuda", resumed_from_step=1, t=100.0),
        TrainLog(step=5, t=101.0),
        TrainLog(step=9, t=105.0),  # 1 s a step
        TrainLog(step=13, t=109.0),
    )
    found = measured_step(tmp_path)
    assert found.seconds == pytest.approx(1.0) and found.on_cpu is False


def test_without_logged_steps_the_preflight_figure_is_used(tmp_path: Path) -> None:
    _write(tmp_path, Preflight(device="NVIDIA H100 80GB HBM3", measured_step_seconds=0.42))
    found = measured_step(tmp_path)
    assert (found.seconds, found.source, found.on_cpu) == (0.42, "the pre-flight", False)
    assert found.device == "NVIDIA H100 80GB HBM3"


def test_a_folder_that_has_not_run_has_no_measured_step(tmp_path: Path) -> None:
    assert measured_step(tmp_path) is None
    _write(tmp_path, RunStarted(device="cpu"))
    assert measured_step(tmp_path) is None


def test_the_preflight_peak_says_what_it_measures() -> None:
    from affiner.runner.run import peak_basis

    assert peak_basis("cpu") == "process resident memory"
    assert peak_basis("NVIDIA H100 80GB HBM3") == "device: torch reserved + CUDA context"
