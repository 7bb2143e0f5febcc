"""The monitor at 80x24 (issue 12): legends off the data, step axes, RAM on a CPU run, the log
pane's filter, grad norm, the silent phase's countdown, and the end-of-run summary.

The run folders are `tests.tui.test_tui_monitor_snapshots`'s: the snapshots draw the same
runs these tests check.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from affiner.runner.run.events import (
    EvalResult,
    EventWriter,
    RunFinished,
    SystemSample,
    Warning_,
)
from affiner.tui.app import build_app
from affiner.tui.screens.monitor import MonitorScreen
from affiner.tui.widgets.plots import LossPlot, MemoryPlot, step_limits, step_ticks, tick_label
from affiner.tui.widgets.run_log import RunLog, is_library_warning
from affiner.tui.widgets.run_panels import EvalTable, RunProgress, RunStats
from affiner.tui.widgets.run_summary import RunOutcome, SummaryPanel, summary_text
from tests.tui.test_tui_monitor_snapshots import (
    LIBRARY_LOG,
    TOTAL,
    TRACEBACK,
    TRUNCATION,
    ended_run,
    progress_line,
    run_logs,
    training_run,
)
from tests.tui_fakes import GIB, NOW, RunFolder, fake_services, started
from tests.tui_pilot import wait_for


async def _open(pilot: object, app: object, run: RunFolder, *, step: int) -> MonitorScreen:
    app.open_monitor(run.path)  # type: ignore[attr-defined]
    screen = app.screen  # type: ignore[attr-defined]
    assert isinstance(screen, MonitorScreen)
    await wait_for(pilot, lambda: screen.history.step == step and screen.state != "")  # type: ignore[arg-type]
    return screen


def _text(widget: object) -> str:
    rendered = widget.render()  # type: ignore[attr-defined]
    return getattr(rendered, "plain", str(rendered))


# -- plain functions ----------------------------------------------------------------------


def test_step_axes_are_whole_numbers_and_never_minus_one_to_one() -> None:
    assert step_limits([], 200) == (0.0, 200.0)
    assert step_limits([0.0, 0.0], 0) == (0.0, 10.0)  # memory sampled before the first step
    assert step_limits([10.0], 200) == (0.0, 200.0)
    assert step_limits([10.0, 120.0], 200) == (10.0, 120.0)
    ticks = step_ticks(10, 120, 4)
    assert ticks == [50, 100] and all(isinstance(t, int) for t in ticks)
    assert step_ticks(0, 10, 6) == [0, 2, 4, 6, 8, 10]
    assert len(step_ticks(0, 48_000, 5)) <= 5
    assert (
        tick_label(950) == "950" and tick_label(12_000) == "12k" and tick_label(15_500) == "15.5k"
    )


def test_library_warnings_are_told_from_affiner_lines() -> None:
    counted = [line for line in LIBRARY_LOG if is_library_warning(line)]
    assert counted == [LIBRARY_LOG[1], LIBRARY_LOG[3]]
    assert not is_library_warning("error: runs/x: no run.toml in this folder")
    assert not is_library_warning("[affiner] WARNING truncation: 16 of 800 …")


# -- the screen while training ------------------------------------------------------------


async def test_legends_sit_above_the_plots_never_on_the_data(runs_dir: Path) -> None:
    run = training_run(runs_dir, gpu=True)
    services, _ = fake_services(runs_dir)
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _open(pilot, app, run, step=120)
        await pilot.pause()
        for plot, names in (
            (screen.query_one(LossPlot), ("train (smoothed)", "eval")),
            (screen.query_one(MemoryPlot), ("predicted peak",)),
        ):
            header = [line.plain for line in plot.header()]
            lines = _text(plot).splitlines()
            assert lines[: len(header)] == header
            for name in names:
                assert any(name in line for line in header), (name, header)
                # the plot area below holds no legend text over the curves
                assert not any(name in line for line in lines[len(header) :]), name
            assert all(len(line) <= plot.size.width for line in lines)
        memory = screen.query_one(MemoryPlot)
        assert memory.heading == "GPU memory (GiB)"
        # the predicted peak (4 GiB) is inside the y range, with headroom above it
        top_row = _text(memory).splitlines()[len(memory.header()) + 1]
        assert float(top_row.split("┤")[0]) > 4.0, top_row


async def test_a_cpu_run_plots_the_process_ram_and_waits_in_words(runs_dir: Path) -> None:
    run = RunFolder(runs_dir, "20261125-120000-lora-cpu-e5f6")
    run.append([started(run.run_id, total=TOTAL, t=NOW - 60, gpu=False)])
    run.status("running", step=0, total=TOTAL)
    services, _ = fake_services(runs_dir, gpus=0)
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _open(pilot, app, run, step=0)
        memory, loss = screen.query_one(MemoryPlot), screen.query_one(LossPlot)
        assert memory.heading == "process RAM (GiB)"
        assert "waiting for the first memory sample" in _text(memory)
        assert "waiting for the first training log" in _text(loss)
        assert "GPU" not in _text(memory) and "no samples" not in _text(memory)
        # one sample, before the first step: an axis from 0, in whole steps
        run.append([SystemSample(t=NOW - 50, step=0, ram_used=8 * GIB, process_rss=2 * GIB)])
        await wait_for(pilot, lambda: bool(memory.series) and not memory.waiting)
        await pilot.pause()
        drawn = _text(memory)
        assert "process RAM (GiB)" in drawn and "predicted peak" in drawn
        assert "-1" not in drawn and "1.00" not in drawn
        axis = [line for line in drawn.splitlines() if line.strip() != "step"][-1].split()
        assert axis and all(label.isdigit() for label in axis), axis


async def test_the_log_pane_shows_affiners_messages_and_counts_library_warnings(
    runs_dir: Path,
) -> None:
    run = training_run(runs_dir)
    services, _ = fake_services(runs_dir, gpus=0)
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _open(pilot, app, run, step=120)
        log = screen.query_one(RunLog)
        await wait_for(pilot, lambda: log.library_warnings == 2)
        assert log.title_text() == "affiner's messages · 2 library warnings — l to show"
        shown = log.shown()
        # every warning event reaches the pane, with its advice; no library line does
        assert any("truncation" in line and TRUNCATION in line for line in shown)
        assert any(line.startswith("eval at step 40: loss 2.5500 · ppl") for line in shown)
        assert not any("FutureWarning" in line for line in shown)
        assert log.region.height >= 3 and log.region.bottom <= screen.size.height - 1
        await pilot.press("l")
        assert log.mode == "library" and "FutureWarning" in "\n".join(log.shown())
        assert "l for affiner's messages" in log.title_text()
        await pilot.press("l")
        assert log.mode == "affiner"
        # a warning written later (not a serious one) still shows in the pane
        run.append([Warning_(t=NOW, code="slow", message="steps take 2.1x the plan", step=120)])
        await wait_for(pilot, lambda: any("steps take 2.1x" in line for line in log.shown()))


async def test_stats_show_the_grad_norm_and_fit_the_band(runs_dir: Path) -> None:
    run = training_run(runs_dir, gpu=True)
    services, _ = fake_services(runs_dir)
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _open(pilot, app, run, step=120)
        stats = screen.query_one(RunStats)
        text = _text(stats)
        assert "grad norm 0.620" in text  # the last log's: 0.5 + 120/1000
        assert "peak/plan 3.10/4.00 GiB" in text
        lines = text.splitlines()
        assert len(lines) <= screen.query_one("#details").size.height
        assert all(len(line) <= stats.content_size.width for line in lines)


async def test_a_silent_evaluation_counts_down_under_the_bar(runs_dir: Path) -> None:
    run = training_run(runs_dir, upto=130, gpu=True)
    services, _ = fake_services(runs_dir)
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _open(pilot, app, run, step=130)
        progress = screen.query_one(RunProgress)
        assert progress.phase() == "" and progress.size.height == 1
        progress_line(run, step=130, phase="eval", done=1, total=200, t=NOW - 40)
        progress_line(run, step=130, phase="eval", done=41, total=200, t=NOW)
        await wait_for(pilot, lambda: progress.phase() != "")
        assert progress.phase().startswith("evaluating at step 130 · 41 of 200 batches · ~")
        await wait_for(pilot, lambda: progress.size.height == 2)
        assert "⧗ evaluating at step 130" in _text(progress).splitlines()[1]
        run.append([EvalResult(t=NOW + 1, step=130, loss=2.1)])  # the evaluation ends
        await wait_for(pilot, lambda: progress.phase() == "")


# -- the end of a run ---------------------------------------------------------------------


async def test_a_finished_run_is_summed_up_in_the_plots_place(
    runs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(runs_dir.parent)  # the summary names the folder as the user types it
    run = ended_run(runs_dir, "finished")
    services, backend = fake_services(runs_dir)
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _open(pilot, app, run, step=200)
        panel = screen.query_one(SummaryPanel)
        await wait_for(pilot, lambda: panel.outcome is not None)
        text = panel.text.plain
        folder = f"runs/{run.run_id}"
        assert "✔ Finished: 200 of 200 steps in 35 min · plan 27 min (200 × 8.0 s): 1.3×" in text
        assert "Score    eval loss 2.8000 → 1.5500 (-45%) · ppl 16.44 → 4.71 · best @200\n" in text
        assert "Memory   peak 3.60 GiB · plan 4.00 GiB (-10%)" in text
        assert f"Saved in {folder}/" in text and "checkpoints/best (best, step 200)" in text
        assert f'weights = "{folder}/checkpoints/best"' in text
        assert 'AutoModelForCausalLM.from_pretrained("smollm2-135m")' in text
        assert "model = PeftModel.from_pretrained(base, weights)" in text
        assert f"affiner export {run.run_id}  → export/merged/" in text
        assert f"affiner export {run.run_id} --gguf --ollama" in text
        assert f"Chat     p, or  affiner --run {run.run_id}  then p" in text
        assert "Resume" not in text and "Error" not in text
        # nothing cut off at 80x24: the whole summary fits without scrolling
        assert panel.virtual_size.height <= panel.size.height
        assert not screen.query_one("#plots").display
        # a finished run offers neither Stop nor Resume; v brings the curves back and goes again
        keys = {b.binding.action for b in screen.active_bindings.values()}
        assert "stop_run" not in keys and "resume_run" not in keys and "show_summary" not in keys
        assert "show_plots" in keys and "toggle_smoothing" not in keys
        await pilot.press("s", "r")
        assert backend.stopped == [] and backend.resumed == []
        await pilot.press("v")
        assert screen.query_one("#plots").display and not panel.display
        assert screen.check_action("show_summary", ()) and screen.check_action(
            "toggle_smoothing", ()
        )
        await pilot.press("v")
        assert panel.display and not screen.query_one("#plots").display


async def test_a_classifier_summary_shows_accuracy_and_no_gguf(
    runs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(runs_dir.parent)
    run = ended_run(runs_dir, "finished", classification=True)
    services, _ = fake_services(runs_dir)
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _open(pilot, app, run, step=200)
        panel = screen.query_one(SummaryPanel)
        await wait_for(pilot, lambda: panel.outcome is not None)
        text = panel.text.plain
        assert "accuracy 0.500 → 1.000 · f1 0.480 → 0.980" in text and "ppl" not in text
        assert "AutoModelForSequenceClassification" in text and "num_labels=2" in text
        assert "--gguf" not in text and f"Try it   p, or  affiner --run {run.run_id}" in text


async def test_a_full_fine_tune_loads_without_peft(
    runs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(runs_dir.parent)
    run = ended_run(runs_dir, "finished", method="full")
    services, _ = fake_services(runs_dir)
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _open(pilot, app, run, step=200)
        panel = screen.query_one(SummaryPanel)
        await wait_for(pilot, lambda: panel.outcome is not None)
        text = panel.text.plain
        assert (
            "PeftModel" not in text
            and "model = AutoModelForCausalLM.from_pretrained(weights)" in text
        )
        assert f"Export   affiner export {run.run_id}" in text


async def test_a_failed_run_says_why_where_the_log_is_and_how_to_resume(
    runs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(runs_dir.parent)
    run = ended_run(runs_dir, "failed", upto=30, gpu=True)
    services, backend = fake_services(runs_dir)
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _open(pilot, app, run, step=30)
        panel = screen.query_one(SummaryPanel)
        await wait_for(pilot, lambda: panel.outcome is not None)
        text = panel.text.plain
        assert text.startswith("✖ Failed: 30 of 200 steps in 7 min")
        assert "Error    CUDA out of memory: tried to allocate 2.00 GiB" in text
        assert f"Log      runs/{run.run_id}/train.log has the traceback" in text
        assert f"         {TRACEBACK[-1]}" in text  # the log's last line names the exception
        assert f"affiner train --resume {run.run_id}  (from step 0: no checkpoint saved)" in text
        assert "Score    eval loss 2.8000 · ppl 16.44 before training; none since" in text
        assert "Weights  none saved" in text
        assert panel.virtual_size.height <= panel.size.height
        await pilot.press("r")
        await wait_for(pilot, lambda: backend.resumed == [run.path])


async def test_a_stopped_run_resumes_from_its_checkpoint(
    runs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(runs_dir.parent)
    run = ended_run(runs_dir, "stopped", upto=80)
    services, _ = fake_services(runs_dir)
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _open(pilot, app, run, step=80)
        panel = screen.query_one(SummaryPanel)
        await wait_for(pilot, lambda: panel.outcome is not None)
        text = panel.text.plain
        assert text.startswith("■ Stopped: 80 of 200 steps in 15 min · plan 27 min")
        assert "1.3×" not in text  # a ratio only for a run that did all its steps
        assert f"Resume   r, or  affiner train --resume {run.run_id}  (from step 80)" in text
        assert "checkpoints/best (best, step 80)" in text
        keys = {b.binding.action for b in screen.active_bindings.values()}
        assert "resume_run" in keys and "stop_run" not in keys


async def test_an_interrupted_run_is_summed_up_and_offers_resume(
    runs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A status that says running with its process gone: the run will not finish by itself."""
    monkeypatch.chdir(runs_dir.parent)
    run = training_run(runs_dir, upto=60)
    services, backend = fake_services(runs_dir, alive=False)
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _open(pilot, app, run, step=60)
        await wait_for(pilot, lambda: screen.state == "interrupted")
        panel = screen.query_one(SummaryPanel)
        await wait_for(pilot, lambda: panel.outcome is not None)
        text = panel.text.plain
        assert text.startswith("■ Interrupted (its process is gone): 60 of 200 steps")
        assert f"affiner train --resume {run.run_id}  (from step 0: no checkpoint saved)" in text
        await pilot.press("r")
        await wait_for(pilot, lambda: backend.resumed == [run.path])


async def test_with_no_run_open_the_monitor_says_so_and_draws_nothing(runs_dir: Path) -> None:
    services, _ = fake_services(runs_dir)
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f5")
        screen = app.screen
        assert isinstance(screen, MonitorScreen)
        await wait_for(pilot, lambda: screen.has_class("-empty"))
        await pilot.pause()
        assert "No run open" in str(screen.query_one("#run-title").render())
        assert not screen.query_one("#plots").display and not screen.query_one("#details").display
        keys = {b.binding.action for b in screen.active_bindings.values()}
        assert not keys & {"toggle_smoothing", "toggle_log", "playground", "resume_run"}


def test_the_headline_says_when_the_pre_flight_measured_the_plan() -> None:
    """The plan's step time is replaced by the pre-flight's measured one once there is one, and
    the summary says which it holds the run against."""
    outcome = RunOutcome(
        run_id="r",
        state="finished",
        folder=Path("runs/r"),
        steps=200,
        total_steps=200,
        took_seconds=2095.0,
        planned_step_seconds=9.5,
        planned_source="pre-flight",
    )
    first = summary_text(outcome).plain.splitlines()[0]
    assert (
        first
        == "✔ Finished: 200 of 200 steps in 35 min · plan 32 min (200 × 9.5 s, pre-flight): 1.1×"
    )
    outcome.planned_step_seconds = None
    assert summary_text(outcome).plain.splitlines()[0] == "✔ Finished: 200 of 200 steps in 35 min"


async def test_a_resumed_run_shows_its_plots_then_its_new_summary(
    runs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(runs_dir.parent)
    run = ended_run(runs_dir, "stopped", upto=80)
    services, _ = fake_services(runs_dir)
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _open(pilot, app, run, step=80)
        await wait_for(pilot, lambda: screen.summary_shown)
        await pilot.press("v")  # the user looks at the curves
        assert not screen.summary_shown
        writer = EventWriter(run.path)  # the resumed worker appends to the same folder
        resumed = replace(started(run.run_id, total=TOTAL, t=NOW), resumed_from_step=80)
        for event in [resumed, *run_logs(90, 100, gpu=False)]:
            writer.write(event)
        run.status("running", step=100, total=TOTAL)
        await wait_for(pilot, lambda: screen.state == "running" and screen.history.step == 100)
        assert screen.query_one("#plots").display and screen.check_action("stop_run", ())
        writer.write(RunFinished(t=NOW + 5, state="finished", step=200))
        writer.close()
        run.status("finished", step=200, total=TOTAL)
        await wait_for(pilot, lambda: screen.state == "finished")
        assert screen.summary_shown  # the new ending is summed up, whatever was chosen before


async def test_a_narrow_eval_table_keeps_accuracy_and_f1_only(runs_dir: Path) -> None:
    """At 80 columns a classifier's table would scroll sideways with precision and recall."""
    run = training_run(runs_dir, classification=True)
    run.append(
        [EvalResult(t=NOW, step=120, loss=0.4, accuracy=0.8, precision=0.7, recall=0.6, f1=0.65)]
    )
    services, _ = fake_services(runs_dir, gpus=0)
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _open(pilot, app, run, step=120)
        table = screen.query_one(EvalTable)
        await wait_for(pilot, lambda: table.row_count == 5)

        def labels() -> list[str]:
            return [str(column.label) for column in table.columns.values()]

        assert labels() == ["step", "epoch", "eval loss", "accuracy", "f1"]
        assert table.virtual_size.width <= table.size.width
        await pilot.resize_terminal(120, 40)
        await wait_for(pilot, lambda: "precision" in labels())
        assert labels() == ["step", "epoch", "eval loss", "accuracy", "precision", "recall", "f1"]
