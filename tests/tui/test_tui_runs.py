"""The runs screen: lists run folders, opens one in the monitor, compares two."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import DataTable

from affiner.tui.app import build_app
from affiner.tui.screens.monitor import MonitorScreen
from affiner.tui.screens.runs import RunsScreen, train_curve
from affiner.tui.screens.runs_compare import CompareView
from affiner.tui.widgets.plots import LossPlot
from tests.tui_fakes import fake_services, finished_run, lm_run
from tests.tui_pilot import wait_for


def make_runs(root: Path) -> None:
    lm_run(root, upto=80)
    finished_run(root, "20261123-090000-lora-old-c3d4", classification=True)
    finished_run(root, "20261122-090000-qlora-x-9f9f", state="stopped", start_loss=3.5)


async def test_lists_runs_newest_first(runs_dir: Path) -> None:
    make_runs(runs_dir)
    services, _ = fake_services(runs_dir)
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f4")
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        table = screen.query_one(DataTable)
        await wait_for(pilot, lambda: table.row_count == 3)
        rows = [table.get_row_at(i) for i in range(3)]
        # short ids: the tail `affiner attach` resolves to this run alone
        assert [r[1] for r in rows] == ["a1b2", "c3d4", "9f9f"]
        # The hand-written "running" run has no live process: it is shown as interrupted.
        assert [r[2] for r in rows] == ["interrupted", "finished", "stopped"]
        assert rows[0][3] == " 40% 80/200"
        assert rows[1][4] == "1.900 acc 0.91"


async def test_empty_root_says_so(runs_dir: Path) -> None:
    services, _ = fake_services(runs_dir)
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f4")
        title = app.screen.query_one("#runs-title")
        await wait_for(pilot, lambda: "No runs" in str(title.render()))


async def test_enter_opens_the_run_in_the_monitor(runs_dir: Path) -> None:
    make_runs(runs_dir)
    services, _ = fake_services(runs_dir)
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f4")
        table = app.screen.query_one(DataTable)
        await wait_for(pilot, lambda: table.row_count == 3)
        await pilot.press("down", "enter")
        assert isinstance(app.screen, MonitorScreen)
        await wait_for(pilot, lambda: app.screen.history.step == 100)
        assert app.screen.run_dir == runs_dir / "20261123-090000-lora-old-c3d4"
        assert app.screen.state == "finished"


async def test_mark_two_and_compare(runs_dir: Path) -> None:
    make_runs(runs_dir)
    services, _ = fake_services(runs_dir)
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f4")
        screen = app.screen
        table = screen.query_one(DataTable)
        await wait_for(pilot, lambda: table.row_count == 3)
        view = screen.query_one(CompareView)
        plot = view.query_one(LossPlot)
        await pilot.press("c")  # nothing marked: a hint, no compare
        assert not view.shown
        await pilot.press("down", "space", "down", "space")
        assert screen.marked == ["20261123-090000-lora-old-c3d4", "20261122-090000-qlora-x-9f9f"]
        assert table.get_row_at(1)[0] == "✓"
        await pilot.press("c")
        await wait_for(pilot, lambda: view.shown)
        # a classifier and a language model: only the classifier's curve, and a warning
        assert [label for label, _ in plot.curves] == ["c3d4"]
        assert plot.curves[0][1] == train_curve(runs_dir / screen.marked[0])
        assert "different tasks" in view.note
        await pilot.press("escape")
        assert not view.shown


async def test_r_resumes_the_highlighted_stopped_run(runs_dir: Path) -> None:

    stopped = finished_run(runs_dir, "20261123-090000-qlora-stopped", state="stopped")
    services, backend = fake_services(runs_dir)
    app = build_app(services)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("f4")
        table = app.screen.query_one(DataTable)
        await wait_for(pilot, lambda: table.row_count == 1)
        await pilot.press("r")
        await wait_for(pilot, lambda: backend.resumed == [stopped.path])


def test_the_real_resume_refuses_a_finished_run(runs_dir: Path) -> None:
    import pytest

    from affiner.planner.errors import AffinerError
    from affiner.tui.services import Services

    done = finished_run(runs_dir, "20261123-100000-lora-done")
    resume = Services.default(runs_dir).resume_run
    with pytest.raises(AffinerError, match="already finished"):
        resume(done.path)
