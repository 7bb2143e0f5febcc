"""End to end in a real terminal: ``python -m affiner`` inside tmux at 80x24, driven by keys."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from bench.tmux_driver import TmuxSession, tmux_available
from tests.tui_fakes import finished_run

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not tmux_available(), reason="tmux is not installed")
def test_python_m_tui_in_tmux(runs_dir: Path) -> None:
    finished_run(runs_dir, "20261123-090000-lora-old-c3d4")
    env = {
        "PYTHONPATH": str(REPO),
        "TERM": "xterm-256color",
        "HF_HUB_OFFLINE": "1",
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/tmp"),
    }
    argv = [sys.executable, "-m", "affiner", "--runs-dir", str(runs_dir)]
    with TmuxSession(argv, env=env, cwd=str(REPO)) as term:
        term.wait_for("Assist", timeout=30)  # the footer of the first screen
        term.send("F3")
        term.wait_for("Plan as if")
        term.send("F4")
        term.wait_for("20261123-090000-lora-old-c3d4")
        term.wait_for("finished")
        term.send("Enter")
        term.wait_for("step 100/100")
        term.send("C-q")
        deadline = time.monotonic() + 10
        while term.alive():  # the session ends with the app
            if time.monotonic() > deadline:
                pytest.fail(f"the app did not quit:\n{term.screen()}")
            time.sleep(0.05)
