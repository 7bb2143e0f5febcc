"""How the screens look, at 80x24 and 120x40, on deterministic fake data.

Fixed times (`tests.tui_fakes.NOW`) and a fixed clock in the fake services: nothing drawn
depends on when the snapshot is taken. Update with ``pytest --snapshot-update`` after a
deliberate change, and look at the SVGs in ``tests/__snapshots__`` before committing them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Input

from affiner.tui.app import build_app
from affiner.tui.screens.hardware import GpuCard
from tests.tui_fakes import fake_services, finished_run, lm_run
from tests.tui_pilot import wait_for

SIZES = [(80, 24), (120, 40)]


async def settle(pilot: Pilot) -> None:
    """No blinking cursors, no animations in flight."""
    for field in pilot.app.screen.query(Input):
        field.cursor_blink = False
    await pilot.wait_for_animation()
    await pilot.pause()


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_hardware_two_gpus(snap_compare, runs_dir: Path, size: tuple[int, int]) -> None:
    services, _ = fake_services(runs_dir, gpus=2)

    async def run_before(pilot: Pilot) -> None:
        await pilot.press("f3")
        await wait_for(pilot, lambda: len(pilot.app.screen.query(GpuCard)) == 2)
        await settle(pilot)

    assert snap_compare(build_app(services), terminal_size=size, run_before=run_before)


def test_hardware_no_gpu(snap_compare, runs_dir: Path) -> None:
    services, _ = fake_services(runs_dir, gpus=0)

    async def run_before(pilot: Pilot) -> None:
        await pilot.press("f3")
        await wait_for(pilot, lambda: pilot.app.screen.report is not None)
        await settle(pilot)

    assert snap_compare(build_app(services), terminal_size=(80, 24), run_before=run_before)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_monitor_overfitting_run(snap_compare, runs_dir: Path, size: tuple[int, int]) -> None:
    run = lm_run(runs_dir, upto=120, overfit=True)
    services, _ = fake_services(runs_dir)

    async def run_before(pilot: Pilot) -> None:
        pilot.app.open_monitor(run.path)
        await wait_for(
            pilot, lambda: pilot.app.screen.history.step == 120 and pilot.app.screen.state
        )
        await settle(pilot)

    assert snap_compare(build_app(services), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_runs(
    snap_compare, runs_dir: Path, size: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    lm_run(runs_dir, upto=80)
    finished_run(runs_dir, "20261123-090000-lora-old-c3d4", classification=True)
    finished_run(runs_dir, "20261122-090000-qlora-x-9f9f", state="stopped", start_loss=3.5)
    # The title names the runs root: make it the same relative path on every machine.
    monkeypatch.chdir(runs_dir.parent)
    services, _ = fake_services(Path("runs"))

    async def run_before(pilot: Pilot) -> None:
        await pilot.press("f4")
        table = pilot.app.screen.query_one(DataTable)
        await wait_for(pilot, lambda: table.row_count == 3)
        await pilot.press("down", "space", "down", "space", "c")
        # a classifier beside a language model: one curve, and the warning above it
        await wait_for(pilot, lambda: len(pilot.app.screen.query_one("#runs-compare").curves) == 1)
        await settle(pilot)

    assert snap_compare(build_app(services), terminal_size=size, run_before=run_before)
