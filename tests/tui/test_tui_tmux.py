"""End to end in a real terminal: ``python -m affiner`` inside tmux at 80x24, driven by keys."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from bench.tmux_driver import TmuxSession, app_env, tmux_available
from tests.tui_fakes import finished_run

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not tmux_available(), reason="tmux is not installed")
def test_python_m_tui_in_tmux(runs_dir: Path) -> None:
    finished_run(runs_dir, "20261123-090000-lora-old-c3d4")
    env = app_env(str(REPO))
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


@pytest.mark.skipif(not tmux_available(), reason="tmux is not installed")
def test_a_sentence_wrapped_over_two_lines_reads_as_one() -> None:
    """bench/demo_app_vs_headless.py waits on the app's sentences, which the app may wrap."""
    argv = ["bash", "-c", "printf '  ▊ Enter\\n  ▊ launches   the run\\n'; sleep 10"]
    with TmuxSession(argv, env=app_env(str(REPO)), cwd=str(REPO), width=40, height=6) as term:
        term.wait_for_prose("Enter launches the run", timeout=10, poll=0.05)
        with pytest.raises(TimeoutError):
            term.wait_for("Enter launches the run", timeout=0.3)
