"""How the runs screen and compare look at 80x24 and 120x40: a running, a finished, a stopped
and a failed run, on fixed fake data (update with ``--snapshot-update``, and look at the SVGs)."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable

from affiner.tui.app import build_app
from affiner.tui.screens.runs_compare import CompareView
from tests.tui.test_tui_snapshots import settle
from tests.tui_fakes import fake_services, finished_run, lm_run
from tests.tui_pilot import wait_for

SIZES = [(80, 24), (120, 40)]
RUNNING = "20261125-110000-lora-smollm2-a1b2"


def four_runs(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One run in each state; the first one's worker counts as alive."""
    lm_run(root, RUNNING, upto=80)
    finished_run(root, "20261124-090000-lora-cls-c3d4", classification=True, start_loss=1.2)
    finished_run(root, "20261123-090000-qlora-chat-9f9f", state="stopped", start_loss=3.5)
    finished_run(root, "20261122-090000-lora-chat-5e6f", state="failed", start_loss=3.2)
    monkeypatch.setattr(
        "affiner.runner.run.runs.is_worker_of",
        lambda pid, run_dir: Path(run_dir).name == RUNNING,
    )
    # The title names the runs root: make it the same relative path on every machine.
    monkeypatch.chdir(root.parent)


async def runs_listed(pilot: Pilot) -> None:
    await pilot.press("f4")
    table = pilot.app.screen.query_one("#runs-table", DataTable)
    await wait_for(pilot, lambda: table.row_count == 4)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_runs_in_every_state(
    snap_compare, runs_dir: Path, size: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    four_runs(runs_dir, monkeypatch)
    services, _ = fake_services(Path("runs"))

    async def run_before(pilot: Pilot) -> None:
        await runs_listed(pilot)
        await settle(pilot)

    assert snap_compare(build_app(services), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_compare_a_classifier_and_two_chat_runs(
    snap_compare, runs_dir: Path, size: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    four_runs(runs_dir, monkeypatch)
    services, _ = fake_services(Path("runs"))

    async def run_before(pilot: Pilot) -> None:
        await runs_listed(pilot)
        await pilot.press("down", "space", "down", "space", "down", "space", "c")
        view = pilot.app.screen.query_one(CompareView)
        await wait_for(pilot, lambda: view.shown and len(view.runs) == 3)
        await settle(pilot)

    assert snap_compare(build_app(services), terminal_size=size, run_before=run_before)
