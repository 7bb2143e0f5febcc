"""How the monitor looks at 80x24 and 120x40 through a run's life: training (on the CPU),
evaluating (a progress event mid-eval), finished (the summary), stopped and failed.

The run folders are `tests.tui.test_tui_monitor_layout`'s, the clock is the fake services'
fixed "now", and the working directory is the runs root's parent, so every path and time
drawn is the same on every machine. Update with ``--snapshot-update`` for this module only,
after looking at the SVGs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.pilot import Pilot

from affiner.tui.app import build_app
from tests.tui.test_tui_monitor_layout import NOW, ended_run, progress_line, training_run
from tests.tui_fakes import fake_services
from tests.tui_pilot import wait_for

SIZES = [(80, 24), (120, 40)]
STATES = ("training", "evaluating", "finished", "stopped", "failed")


def _run(runs_dir: Path, state: str) -> tuple[Path, int]:
    """The run folder for ``state`` and the step the monitor shows once it has read it."""
    if state == "training":
        return training_run(runs_dir).path, 120
    if state == "evaluating":
        run = training_run(runs_dir, upto=160, gpu=True, evals_upto=120)
        progress_line(run, step=160, phase="eval", done=1, total=200, t=NOW - 40)
        progress_line(run, step=160, phase="eval", done=41, total=200, t=NOW)
        return run.path, 160
    upto = {"finished": 200, "stopped": 80, "failed": 30}[state]
    return ended_run(runs_dir, state, upto=upto, gpu=state != "stopped").path, upto


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_monitor(
    snap_compare,
    runs_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    size: tuple[int, int],
    state: str,
) -> None:
    monkeypatch.chdir(runs_dir.parent)
    path, step = _run(runs_dir, state)
    services, _ = fake_services(runs_dir, gpus=0)

    async def run_before(pilot: Pilot) -> None:
        pilot.app.open_monitor(path)
        screen = pilot.app.screen
        await wait_for(pilot, lambda: screen.history.step == step and screen.state != "")
        if state == "training":
            await wait_for(pilot, lambda: screen.query_one("#log").library_warnings == 2)
        await pilot.wait_for_animation()
        await pilot.pause()

    assert snap_compare(build_app(services), terminal_size=size, run_before=run_before)
