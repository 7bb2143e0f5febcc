"""The app's chrome at 80x24: the footer, ctrl+l, the screenshot command, quitting with a run going.

The footer is read from the rendered screen (what a user sees), not from the bindings.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from textual.app import App

from affiner.runner.run import RunSummary
from affiner.tui.app import build_app
from affiner.tui.screens.monitor import MonitorScreen
from affiner.tui.services import Services
from tests.tui_fakes import fake_services, lm_run
from tests.tui_pilot import wait_for

SCREEN_KEYS = ("f2 Assist", "f3 Hardware", "f4 Runs", "f5 Monitor", "f6 Chat")


def screen_lines(app: App) -> list[str]:
    """The terminal's text as drawn now, one string per row."""
    return [strip.text for strip in app.screen._compositor.render_strips()]


def live(runs_dir: Path, run_id: str = "20261125-110000-lora-demo-a1b2") -> RunSummary:
    return RunSummary(
        run_id=run_id, path=runs_dir / run_id, state="running", model="smollm2", method="lora"
    )


@pytest.mark.parametrize("key", ["f2", "f3", "f4", "f5", "f6"])
async def test_footer_keeps_the_screen_keys_at_80_columns(runs_dir: Path, key: str) -> None:
    lm_run(runs_dir, upto=40)
    services, _ = fake_services(runs_dir)
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press(key)
        await pilot.pause(0.2)
        footer = screen_lines(app)[-1]
        assert len(footer) == 80
        assert footer.startswith("f1 Help " + " ".join(SCREEN_KEYS) + " ▕"), footer
        # The palette key ends the line: nothing of a cut-off key shows after it.
        assert footer.endswith("▏^p"), footer


async def test_footer_at_120_columns_has_room_for_the_screen_keys(runs_dir: Path) -> None:
    services, _ = fake_services(runs_dir)
    app = build_app(services)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("f3")
        await pilot.pause(0.2)
        footer = screen_lines(app)[-1]
        assert "▕ p Plan as if…" in footer and footer.endswith("▏^p")


async def test_ctrl_l_redraws_and_ctrl_f_opens_the_monitor(runs_dir: Path) -> None:
    services, _ = fake_services(runs_dir)
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f3")
        before = app.screen
        await pilot.press("ctrl+l")
        await pilot.pause()
        assert app.screen is before  # a redraw, not a screen switch
        await pilot.press("ctrl+f")
        await wait_for(pilot, lambda: isinstance(app.screen, MonitorScreen))


async def test_screenshot_saves_beside_the_runs_and_says_where(runs_dir: Path) -> None:
    services, _ = fake_services(runs_dir)
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f3")
        commands = {c.title: c for c in app.get_system_commands(app.screen)}
        assert str(runs_dir.parent / "screenshots") in commands["Screenshot"].help
        commands["Screenshot"].callback()
        folder = runs_dir.parent / "screenshots"
        await wait_for(pilot, lambda: folder.is_dir() and any(folder.iterdir()))
        (saved,) = folder.iterdir()
        assert saved.name.startswith("affiner-hardware-2026112") and saved.suffix == ".svg"
        assert saved.read_text(encoding="utf-8").lstrip().startswith("<svg")
        await wait_for(pilot, lambda: any(str(saved) in n.message for n in app._notifications))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
async def test_screenshot_failure_says_why(runs_dir: Path) -> None:
    services, _ = fake_services(runs_dir)
    app = build_app(services)
    locked = runs_dir.parent
    async with app.run_test(size=(80, 24)) as pilot:
        locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
        try:
            assert app.save_screenshot_here() is None
        finally:
            locked.chmod(stat.S_IRWXU)
        await pilot.pause()
        (note,) = [n for n in app._notifications if n.title == "Screenshot"]
        assert "Could not save the screenshot to" in note.message
        assert "Permission denied" in note.message and note.severity == "error"


async def test_screenshot_failure_says_why_on_a_path_that_cannot_be_a_folder(
    runs_dir: Path,
) -> None:
    # A file where the screenshots folder would go: refused for root too.
    (runs_dir.parent / "screenshots").write_text("not a folder", encoding="utf-8")
    services, _ = fake_services(runs_dir)
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        assert app.save_screenshot_here() is None
        await pilot.pause()
        (note,) = [n for n in app._notifications if n.title == "Screenshot"]
        assert note.message.startswith(f"Could not save the screenshot to {runs_dir.parent}")
        assert "File exists" in note.message or "Not a directory" in note.message


def services_with_live_run(runs_dir: Path) -> tuple[Services, RunSummary]:
    services, _ = fake_services(runs_dir)
    run = live(runs_dir)
    services.live_runs = lambda root: [run] if Path(root) == runs_dir else []
    return services, run


async def test_quitting_with_a_run_going_says_it_goes_on(
    runs_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    services, run = services_with_live_run(runs_dir)
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        message = app.quit_message()
        assert message == (
            f"Run {run.run_id} is still running: it goes on without the app. "
            f"Follow it with `affiner attach {run.run_id}`, or open affiner again."
        )
        await pilot.press("ctrl+q")
        await pilot.pause()
    assert app.return_code == 0
    # Printed once the app has left the screen, where the shell shows it.
    assert " ".join(capfd.readouterr().err.split()) == message


async def test_quitting_with_no_run_going_says_nothing(
    runs_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    services, _ = fake_services(runs_dir)
    services.live_runs = lambda root: []
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        assert app.quit_message() is None
        await pilot.press("ctrl+q")
        await pilot.pause()
    assert app.return_code == 0 and "goes on" not in capfd.readouterr().err


async def test_reopening_points_at_the_live_run(runs_dir: Path) -> None:
    services, run = services_with_live_run(runs_dir)
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.current_run == run.path)
        await wait_for(pilot, lambda: bool(app._notifications))
        (note,) = list(app._notifications)
        assert note.message == f"Run {run.run_id} is running. F5 shows it live."
        await pilot.press("f5")
        await wait_for(pilot, lambda: isinstance(app.screen, MonitorScreen))
        assert app.screen.run_dir == run.path


async def test_plan_as_if_from_the_palette_names_the_memory(runs_dir: Path) -> None:
    from affiner.tui.commands import AffinerCommands

    services, _ = fake_services(runs_dir)
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        provider = AffinerCommands(app.screen)
        helps = {text: help_text for text, _, help_text in provider._commands()}
        assert helps["Plan as if GPU: RTX 4090"] == (
            "Plans assume this GPU (24.0 GiB), the whole card free"
        )
        app.plan_as_if("RTX 4090")
        await pilot.pause()
        assert app.plan_target is not None
        (note,) = list(app._notifications)
        assert note.message == "Plans are now made as if for the catalog GPU RTX 4090 (24.0 GiB)."
