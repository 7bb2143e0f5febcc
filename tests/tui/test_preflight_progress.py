"""The pre-flight says what it is doing while it runs (issue 12, point 2 for the assistant).

It used to show a static "Running the pre-flight check…" for minutes. The child now writes
``progress`` events (loading, step k of N, eval, save); the caller reads them on every poll
into a `PreflightProgress` with the elapsed time and, once steps are timed, the time they
still need at the measured pace; the assistant shows that line and removes it when the check
ends. The reader and the words are checked on written events (fast); one real pre-flight
of a tiny model checks that the child really reports them (slow; it shares the child of
``affiner preflight``'s test in tests/runner/test_launch.py).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Static

from affiner.runner.run.events import EventWriter, Progress
from affiner.runner.run.phases import (
    PREFLIGHT_EVAL,
    PREFLIGHT_LOAD,
    PREFLIGHT_START,
    PREFLIGHT_TRAIN,
)
from affiner.runner.run.preflight import (
    PreflightProgress,
    _ProgressReader,
)
from affiner.tui.app import AffinerApp
from affiner.tui.assistant import Task
from affiner.tui.assistant.text import preflight_progress
from tests.tui_fakes import fake_services
from tests.tui_pilot import wait_for

T0 = 1_800_000_000.0


def write(folder: Path, *events: Progress) -> None:
    with EventWriter(folder) as writer:
        for event in events:
            writer.write(event)


def test_before_the_child_says_anything_it_is_starting(tmp_path: Path) -> None:
    seen = _ProgressReader(tmp_path, T0, accum=4).read(T0 + 3)
    assert seen.phase == PREFLIGHT_START and seen.elapsed == pytest.approx(3)
    assert preflight_progress(seen).startswith("Pre-flight: starting the check")


def test_steps_count_up_and_the_time_left_comes_from_the_measured_pace(tmp_path: Path) -> None:
    reader = _ProgressReader(tmp_path, T0, accum=2)  # the config's guess; the child says 4
    write(tmp_path, Progress(t=T0 + 5, phase=PREFLIGHT_LOAD))
    loading = reader.read(T0 + 8)
    assert loading.phase == PREFLIGHT_LOAD and loading.in_phase == pytest.approx(3)
    assert "loading the tokenizer, the data and the model" in preflight_progress(loading)

    write(tmp_path, Progress(t=T0 + 20, phase=PREFLIGHT_TRAIN, done=0, total=12, step=0))
    warming = reader.read(T0 + 21)
    assert warming.left is None  # the warm-up step is not a pace
    assert "known once the first step is timed" in preflight_progress(warming)

    # the first step's end (4 micro-batches), then 4 more micro-batches in 8 s: 2 s each
    write(tmp_path, Progress(t=T0 + 40, phase=PREFLIGHT_TRAIN, done=4, total=12, step=1))
    write(tmp_path, Progress(t=T0 + 48, phase=PREFLIGHT_TRAIN, done=8, total=12, step=2))
    timed = reader.read(T0 + 49)
    assert timed.steps == 3 and timed.steps_done == 2 and timed.done == 8
    assert timed.left == pytest.approx(4 * 2 - 1)  # counts down from the latest event
    line = preflight_progress(timed)
    assert "timing step 3 of 3, micro-batch 8 of 12" in line
    assert "49 s elapsed" in line and "~7.0 s left for the steps (measured pace)" in line

    write(tmp_path, Progress(t=T0 + 56, phase=PREFLIGHT_EVAL))
    evaluating = reader.read(T0 + 57)
    assert evaluating.phase == PREFLIGHT_EVAL and evaluating.left is None
    assert "evaluating one batch" in preflight_progress(evaluating)


async def test_the_assistant_shows_the_progress_and_drops_it_when_done(tmp_path: Path) -> None:
    """The worker's messages reach one status line in the conversation, which goes at the end."""
    services, _ = fake_services(tmp_path / "runs", gpus=0)
    release: list[bool] = []

    def preflight(config: object, listener: Any) -> object:
        assert listener is not None  # the screen passes where its progress goes
        listener(
            PreflightProgress(PREFLIGHT_TRAIN, done=3, total=12, steps_done=0, steps=3, elapsed=65)
        )
        deadline = time.monotonic() + 20  # never outlive the test, even when it fails
        while not release and time.monotonic() < deadline:
            time.sleep(0.01)
        raise RuntimeError("stop here")

    services.preflight = preflight
    app = AffinerApp(services)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        screen = app.screen
        screen.start(Task("preflight", object()))

        def shown() -> str:
            found = screen.query("#preflight-status")
            return str(found.first(Static).render()) if found else ""

        await wait_for(pilot, lambda: "micro-batch 3 of 12" in shown())
        assert "timing step 1 of 3" in shown() and "65 s elapsed" in shown()
        release.append(True)
        await wait_for(pilot, lambda: not screen.query("#preflight-status"))


# One real pre-flight of a tiny model checks that the child really reports its phases:
# tests/runner/test_launch.py::test_affiner_preflight_reports_measured_next_to_estimate watches
# the progress of the child `affiner preflight` starts (one child proves both).


def test_every_phase_the_runner_names_has_words() -> None:
    from affiner.runner.run import phases

    named = {value for name, value in vars(phases).items() if name.startswith("PREFLIGHT_")}
    named.discard(phases.PREFLIGHT_PHASES)
    assert named == set(phases.PREFLIGHT_PHASES) <= set(phases.PHASE_WORDS)


def test_one_micro_batch_a_step_is_said_in_steps() -> None:
    progress = PreflightProgress(
        PREFLIGHT_TRAIN, done=1, total=3, steps_done=1, steps=3, elapsed=30
    )
    line = preflight_progress(progress)
    assert line.startswith("Pre-flight: timing step 2 of 3 · 30 s elapsed")
    assert "micro-batch" not in line
