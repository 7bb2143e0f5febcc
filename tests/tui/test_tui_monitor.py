"""The monitor: history folding, tailing a run folder, live updates, stopping, warnings."""

from __future__ import annotations

import json
from pathlib import Path

from affiner.runner.run.events import RunFinished, RunStarted, TrainLog, Warning_
from affiner.tui.app import build_app
from affiner.tui.live.history import RunHistory, downsample, smooth
from affiner.tui.live.watcher import RunWatcher, watch_run
from affiner.tui.screens.confirm import ConfirmScreen
from affiner.tui.screens.monitor import MonitorScreen
from affiner.tui.widgets.plots import LossPlot
from affiner.tui.widgets.run_panels import RunProgress, WarningsBanner
from tests.tui_fakes import NOW, RunFolder, fake_services, finished_run, lm_run, started, train_logs
from tests.tui_pilot import wait_for

# -- plain functions ----------------------------------------------------------------------


def test_smoothing_is_debiased_and_downsampling_keeps_the_end() -> None:
    points = [(float(i), 2.0) for i in range(10)]
    # A constant stays put: no drag towards zero at the start.
    assert all(abs(y - 2.0) < 1e-9 for _, y in smooth(points, 0.9))
    assert smooth(points, 0.0) == points
    long = [(float(i), float(i % 7)) for i in range(1000)]
    shown = downsample(long, 50)
    assert len(shown) == 50 and shown[-1] == long[-1]
    assert downsample(long[:10], 50) == long[:10]


def test_history_rewinds_on_resume() -> None:
    history = RunHistory()
    history.add([RunStarted(run_id="r", total_steps=100)])
    history.add([TrainLog(step=s, loss=3.0 - s / 100, total_steps=100) for s in (10, 20, 30, 40)])
    history.add([RunStarted(run_id="r", total_steps=100, resumed_from_step=20)])
    assert [p[0] for p in history.train_loss] == [10.0, 20.0]
    history.add([TrainLog(step=30, loss=2.5, total_steps=100)])
    assert [p[0] for p in history.train_loss] == [10.0, 20.0, 30.0]
    assert history.step == 30 and history.progress == 0.3


def test_nan_and_missing_values_are_skipped() -> None:
    history = RunHistory()
    history.add(
        [
            TrainLog(step=1, loss=float("nan")),
            TrainLog(step=2, loss=None),
            TrainLog(step=3, loss=1.0),
        ]
    )
    assert history.train_loss == [(3.0, 1.0)]
    assert history.progress is None


def test_watcher_tolerates_a_torn_line_and_tails_the_log(tmp_path: Path) -> None:
    run = lm_run(tmp_path, upto=40)
    watcher = RunWatcher(run.path)
    first = watcher.poll()
    assert first.first and first.status is not None and first.state == "running"
    assert any(isinstance(e, TrainLog) for e in first.events)
    assert first.log_lines[-1] == "step 40/200 loss 2.01"
    line = json.dumps(TrainLog(t=NOW, step=50, loss=2.0, total_steps=200).to_dict()) + "\n"
    run.append_raw(line[:20])  # the writer is halfway through a line
    run.log("partial", "progress 10%\rprogress 50%")
    torn = watcher.poll()
    assert torn.events == [] and torn.log_lines == ["partial", "progress 50%"]
    run.append_raw(line[20:])
    whole = watcher.poll()
    assert [e.step for e in whole.events] == [50]
    assert not watcher.poll()  # nothing new, nothing delivered
    assert watcher.bad_lines == 0


def test_watcher_marks_a_dead_process_interrupted(tmp_path: Path) -> None:
    run = lm_run(tmp_path, upto=40)
    batch = RunWatcher(run.path, alive=lambda pid, path: False).poll()
    assert batch.state == "interrupted"


def test_watch_run_stops_when_cancelled(tmp_path: Path) -> None:
    run = lm_run(tmp_path, upto=40)
    batches = []
    polls = iter(range(3))
    watch_run(run.path, batches.append, lambda: next(polls, None) is None, interval=0.01)
    assert len(batches) == 1 and batches[0].first


# -- the screen ---------------------------------------------------------------------------


async def test_monitor_follows_a_run_as_it_grows(runs_dir: Path) -> None:
    run = lm_run(runs_dir, upto=40)
    services, _ = fake_services(runs_dir)
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        app.open_monitor(run.path)
        screen = app.screen
        assert isinstance(screen, MonitorScreen)
        await wait_for(pilot, lambda: screen.history.step == 40)
        plot = screen.query_one(LossPlot)
        assert len(plot.train) == 4 and len(plot.eval) == 1
        assert "step 40/200" in screen.query_one(RunProgress).describe()[0]
        # New events while the app runs: the plot and the progress follow.
        run.append(train_logs(50, 80))
        line = json.dumps(
            TrainLog(t=NOW, step=90, loss=2.0, total_steps=200, eta_seconds=1100.0).to_dict()
        )
        run.append_raw(line[:30])
        await wait_for(pilot, lambda: screen.history.step == 80)
        assert len(plot.train) == 8
        run.append_raw(line[30:] + "\n")
        await wait_for(pilot, lambda: screen.history.step == 90)
        left, right = screen.query_one(RunProgress).describe()
        assert left == "step 90/200" and "ETA 18 min" in right
        # Smoothing toggles between weights; the raw points stay.
        await pilot.press("t")
        assert plot.smoothing == 0.9 and len(plot.train) == 9
        # The run ends: its state shows, and there is nothing to stop any more.
        run.append([RunFinished(t=NOW, state="finished", step=90)])
        run.status("finished", step=90, total=200)
        await wait_for(pilot, lambda: screen.state == "finished")
        assert "finished" in screen.query_one(RunProgress).describe()[1]
        await pilot.press("s")
        assert not isinstance(app.screen, ConfirmScreen)


async def test_stop_asks_first_then_calls_stop_run(runs_dir: Path) -> None:
    run = lm_run(runs_dir, upto=80)
    services, backend = fake_services(runs_dir)
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        app.open_monitor(run.path)
        await wait_for(pilot, lambda: app.screen.state == "running")
        await pilot.press("s")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        assert isinstance(app.screen, MonitorScreen) and backend.stopped == []
        await pilot.press("f8")
        assert isinstance(app.screen, ConfirmScreen)
        assert "best checkpoint (step 80)" in app.screen.question
        await pilot.press("y")
        await wait_for(pilot, lambda: backend.stopped == [run.path])


async def test_overfitting_warning_offers_the_stop(runs_dir: Path) -> None:
    run = lm_run(runs_dir, upto=120)
    services, backend = fake_services(runs_dir)
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        app.open_monitor(run.path)
        screen = app.screen
        await wait_for(pilot, lambda: screen.history.step == 120)
        banner = screen.query_one(WarningsBanner)
        assert not banner.has_class("-shown")
        run.append([Warning_(t=NOW, code="overfitting", message="eval loss rose twice", step=120)])
        await wait_for(pilot, lambda: banner.has_class("-shown"))
        assert "Press [s] to stop now and keep the best checkpoint" in banner.text
        await pilot.press("s", "y")
        await wait_for(pilot, lambda: backend.stopped == [run.path])


async def test_dead_process_and_other_runs(runs_dir: Path) -> None:
    live = lm_run(runs_dir, upto=40)
    old = finished_run(runs_dir, "20261123-090000-lora-old-c3d4")
    services, _ = fake_services(runs_dir, alive=False)
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        app.open_monitor(live.path)
        screen = app.screen
        await wait_for(pilot, lambda: screen.state == "interrupted")
        app.open_monitor(old.path)  # switching runs starts over from the new run's history
        await wait_for(pilot, lambda: screen.state == "finished" and screen.history.step == 100)
        assert screen.history.run_id == old.run_id


def test_a_resumed_run_shows_each_step_once(tmp_path: Path) -> None:
    run = lm_run(tmp_path, upto=80)
    run.append([RunStarted(t=NOW, run_id=run.run_id, total_steps=200, resumed_from_step=40)])
    run.append(train_logs(50, 60))
    history = RunHistory()
    history.add(RunWatcher(run.path).poll().events)
    steps = [int(p[0]) for p in history.train_loss]
    assert steps == sorted(set(steps)) and steps[-1] == 60
    assert [e.step for e in history.evals] == [40]


def test_cpu_runs_plot_ram() -> None:
    from affiner.runner.run.events import SystemSample

    history = RunHistory()
    history.add(
        [
            SystemSample(
                step=5, ram_used=8 * 1024**3, ram_total=24 * 1024**3, process_rss=2 * 1024**3
            )
        ]
    )
    assert not history.on_gpu
    series = history.memory["RAM (process)"]
    assert series.latest == 2 * 1024**3 and series.total == 24 * 1024**3


async def test_eval_table_shows_perplexity_for_language_models_only() -> None:
    """A classification run's table has accuracy/precision/recall/F1 and loss, never ppl."""
    from textual.app import App, ComposeResult

    from affiner.runner.run.events import EvalResult
    from affiner.tui.widgets.run_panels import EvalTable

    class TableApp(App):
        def compose(self) -> ComposeResult:
            yield EvalTable()

    def labels(table: EvalTable) -> list[str]:
        return [str(column.label) for column in table.columns.values()]

    lm, head = RunHistory(), RunHistory()
    lm.add([EvalResult(step=5, loss=2.0)])  # written without perplexity: exp(loss) is shown
    head.add([EvalResult(step=5, loss=0.4, accuracy=0.9, precision=0.8, recall=0.7, f1=0.75)])
    async with TableApp().run_test() as pilot:
        table = pilot.app.query_one(EvalTable)
        table.show(lm)
        assert labels(table) == ["step", "epoch", "eval loss", "ppl"]
        assert table.get_row_at(0)[3] == "7.39"
        table.show(head)
        assert labels(table) == [
            "step",
            "epoch",
            "eval loss",
            "accuracy",
            "precision",
            "recall",
            "f1",
        ]
        # The run's config wins over what the evaluations suggest.
        table.show(lm, task="classification")
        assert labels(table) == ["step", "epoch", "eval loss"]


async def test_the_monitor_reads_the_runs_task_for_its_eval_table(runs_dir: Path) -> None:
    """A classification run whose evaluations logged only a loss shows no perplexity column:
    the monitor goes by run.toml's task, as `affiner attach` and `affiner runs` do."""
    from affiner.runner.run.events import EvalResult
    from affiner.tui.widgets.run_panels import EvalTable

    run = RunFolder(runs_dir, "20261125-120000-lora-minilm-c3d4", model="minilm")
    (run.path / "run.toml").write_text(
        '[model]\nname_or_path = "minilm"\ntask = "classification"\n\n[method]\nname = "lora"\n',
        "utf-8",
    )
    run.append([started(run.run_id), EvalResult(t=NOW, step=5, loss=0.6)])
    services, _ = fake_services(runs_dir)
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        app.open_monitor(run.path)
        screen = app.screen
        assert isinstance(screen, MonitorScreen)
        await wait_for(pilot, lambda: len(screen.history.evals) == 1)
        table = screen.query_one(EvalTable)
        labels = [str(column.label) for column in table.columns.values()]
        assert labels == ["step", "epoch", "eval loss"]


async def test_the_footer_offers_stop_while_running_and_resume_once_stopped(runs_dir: Path) -> None:
    live = lm_run(runs_dir, upto=40)
    stopped = finished_run(runs_dir, "20261123-090000-qlora-stopped", state="stopped")
    done = finished_run(runs_dir, "20261123-100000-lora-done")
    services, backend = fake_services(runs_dir)
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        app.open_monitor(live.path)
        screen = app.screen
        await wait_for(pilot, lambda: screen.state == "running")
        assert screen.check_action("stop_run", ()) and not screen.check_action("resume_run", ())
        await pilot.press("r")  # not offered: nothing happens
        assert backend.resumed == []
        screen.show_run(stopped.path)
        await wait_for(pilot, lambda: screen.state == "stopped")
        assert screen.check_action("resume_run", ()) and not screen.check_action("stop_run", ())
        await pilot.press("r")
        await wait_for(pilot, lambda: backend.resumed == [stopped.path])
        await wait_for(
            pilot,
            lambda: any("from its last checkpoint" in n.message for n in app._notifications),
        )
        screen.show_run(done.path)
        await wait_for(pilot, lambda: screen.state == "finished")
        assert not screen.check_action("resume_run", ()) and not screen.check_action("stop_run", ())
