"""How F1's help and the hardware screen with its live load look, at 80x24 and 120x40.

Canned hardware and a canned load (`canned_load`): nothing drawn depends on this machine.
Update with ``pytest --snapshot-update`` after a deliberate change, and look at the SVGs in
``tests/tui/__snapshots__`` before committing them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.pilot import Pilot

from affiner.tui.app import build_app
from affiner.tui.screens.hardware import GpuCard
from affiner.tui.screens.help import HelpScreen
from tests.tui.test_tui_hardware_load import canned_load
from tests.tui_fakes import fake_services
from tests.tui_pilot import wait_for

SIZES = [(80, 24), (120, 40)]


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_help_on_hardware(snap_compare, runs_dir: Path, size: tuple[int, int]) -> None:
    services, _ = fake_services(runs_dir)

    async def run_before(pilot: Pilot) -> None:
        await pilot.press("f3")
        await wait_for(pilot, lambda: len(pilot.app.screen.query(GpuCard)) == 2)
        await pilot.press("f1")
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, HelpScreen))
        await pilot.wait_for_animation()
        await pilot.pause()

    assert snap_compare(build_app(services), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_hardware_with_load(snap_compare, runs_dir: Path, size: tuple[int, int]) -> None:
    services, _ = fake_services(runs_dir)
    services.read_load = canned_load

    async def run_before(pilot: Pilot) -> None:
        await pilot.press("f3")
        screen = pilot.app.screen
        await wait_for(pilot, lambda: screen.load is not None and len(screen.query(GpuCard)) == 2)
        await pilot.wait_for_animation()
        await pilot.pause()

    assert snap_compare(build_app(services), terminal_size=size, run_before=run_before)


def test_hardware_cpu_only_with_load(snap_compare, runs_dir: Path) -> None:
    services, _ = fake_services(runs_dir, gpus=0)
    services.read_load = canned_load

    async def run_before(pilot: Pilot) -> None:
        await pilot.press("f3")
        screen = pilot.app.screen
        await wait_for(pilot, lambda: screen.load is not None and screen.report is not None)
        await pilot.wait_for_animation()
        await pilot.pause()

    assert snap_compare(build_app(services), terminal_size=(80, 24), run_before=run_before)
