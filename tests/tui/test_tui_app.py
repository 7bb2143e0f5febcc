"""The application shell: first screen, F-keys and their ctrl alternates, plan target, palette."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from textual.widgets import Select

from affiner.tui.app import SCREEN_NAMES, AffinerApp, build_app
from affiner.tui.messages import PlanTargetChanged
from affiner.tui.screens.assistant import AssistantScreen
from affiner.tui.screens.hardware import HardwareScreen
from affiner.tui.screens.monitor import MonitorScreen
from affiner.tui.screens.runs import RunsScreen
from tests.tui_fakes import fake_services, lm_run
from tests.tui_pilot import wait_for

REPO = Path(__file__).resolve().parents[2]


async def test_starts_on_the_assistant(runs_dir: Path) -> None:
    services, _ = fake_services(runs_dir)
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, AssistantScreen)
        assert app.current_mode == "assistant"
        assert set(SCREEN_NAMES) <= set(app._modes)


async def test_f_keys_and_ctrl_alternates_switch_screens(runs_dir: Path) -> None:
    services, _ = fake_services(runs_dir)
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        for key, screen in (("f3", HardwareScreen), ("f4", RunsScreen), ("f5", MonitorScreen)):
            await pilot.press(key)
            assert isinstance(app.screen, screen), key
        await pilot.press("f2")
        assert isinstance(app.screen, AssistantScreen)
        # The alternates work while the assistant's text input has the focus.
        for key, screen in (("ctrl+g", HardwareScreen), ("ctrl+o", RunsScreen)):
            await pilot.press(key)
            assert isinstance(app.screen, screen), key
        await pilot.press("ctrl+t")
        assert isinstance(app.screen, AssistantScreen)
        # A screen keeps its state between visits: the same object comes back.
        await pilot.press("f3")
        hardware = app.screen
        await pilot.press("f4", "f3")
        assert app.screen is hardware


async def test_quit_key_exits(runs_dir: Path) -> None:
    services, _ = fake_services(runs_dir)
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("ctrl+q")
        await pilot.pause()
    assert app.return_code == 0


async def test_initial_run_opens_in_the_monitor(runs_dir: Path) -> None:
    run = lm_run(runs_dir)
    services, _ = fake_services(runs_dir)
    app = AffinerApp(services, initial_run=run.path)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(
            pilot, lambda: isinstance(app.screen, MonitorScreen) and app.screen.history.step == 120
        )
        assert app.screen.run_dir == run.path


async def test_plan_target_reaches_every_screen(runs_dir: Path) -> None:
    services, _ = fake_services(runs_dir)
    app = build_app(services)
    seen: list[PlanTargetChanged] = []

    def hook(message: object) -> None:
        if isinstance(message, PlanTargetChanged):
            seen.append(message)

    async with app.run_test(size=(80, 24), message_hook=hook) as pilot:
        await pilot.press("f3")
        app.plan_as_if("RTX 4090")
        await pilot.pause()
        assert app.plan_target is not None and app.plan_target.name == "RTX 4090"
        assert seen and all(m.target == app.plan_target for m in seen)
        # The hardware screen's picker follows a target chosen elsewhere (the palette).
        picker = app.screen.query_one("#hw-target", Select)
        assert picker.value == "RTX 4090"
        app.set_plan_target(None)
        await pilot.pause()
        assert app.plan_target is None
        app.plan_as_if("Voodoo 2")  # unknown: a notification, not a crash
        await pilot.pause()
        assert app.plan_target is None


async def test_theme_toggle_and_palette_commands(runs_dir: Path) -> None:
    run = lm_run(runs_dir)
    services, _ = fake_services(runs_dir)
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        dark = app.current_theme.dark
        app.action_toggle_theme()
        assert app.current_theme.dark is not dark
        from affiner.tui.commands import AffinerCommands

        provider = AffinerCommands(app.screen)
        titles = [text for text, _, _ in provider._commands()]
        assert f"Open run {run.run_id}" in titles
        assert "Plan as if GPU: H100 80GB SXM" in titles
        hits = [hit async for hit in provider.search("open run 1100")]
        assert hits and "Open run" in str(hits[0].text)
        await pilot.pause()


def test_no_color_is_honoured(runs_dir: Path, monkeypatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    services, _ = fake_services(runs_dir)
    assert build_app(services).no_color


def test_first_screen_imports_no_torch(runs_dir: Path) -> None:
    """Draw the assistant in a fresh interpreter, then list what got imported."""
    code = (
        "import asyncio, json, sys\n"
        "from pathlib import Path\n"
        "from tests.tui_fakes import fake_services\n"
        "from affiner.tui.app import build_app\n"
        "async def main():\n"
        f"    app = build_app(fake_services(Path({str(runs_dir)!r}))[0])\n"
        "    async with app.run_test(size=(80, 24)) as pilot:\n"
        "        await pilot.pause(0.5)\n"
        "        print(json.dumps([type(app.screen).__name__, sorted(sys.modules)]))\n"
        "asyncio.run(main())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    screen, modules = json.loads(out.stdout.strip().splitlines()[-1])
    assert screen == "AssistantScreen"
    heavy = [
        m for m in ("torch", "transformers", "peft", "bitsandbytes", "datasets") if m in modules
    ]
    assert heavy == []
