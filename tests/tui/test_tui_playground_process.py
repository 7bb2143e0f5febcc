"""The playground's models load in a child process: the TUI never holds torch, a model or a GPU.

Loaded in the TUI's thread worker, torch, transformers, peft, the model's memory and a CUDA
context stayed in the TUI for the rest of its life. The app runs in a fresh interpreter here,
so torch imported by other tests cannot hide a leak.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.assistant_fakes import make_adapter
from tests.train_helpers import make_run

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]

#: The app (fake hardware, the real chat service) asks one question of run A, opens run B
#: (A's process must stop), then quits (B's must stop).
APP_SCRIPT = r"""
import asyncio, json, sys, time
from pathlib import Path

from textual.worker import WorkerState

from affiner.runner.run.process import pid_alive
from affiner.tui.app import AffinerApp
from affiner.tui.screens.playground import ChatPane
from tests.tui_fakes import fake_services


async def settle(pilot):
    for _ in range(3):
        busy = [
            w for w in pilot.app.workers
            if (w.group or "").startswith("playground")
            and w.state in (WorkerState.PENDING, WorkerState.RUNNING)
        ]
        if busy:
            await pilot.app.workers.wait_for_complete(busy)
        await pilot.pause()


def gone(pid, seconds=30):
    deadline = time.monotonic() + seconds
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not pid_alive(pid)


async def main():
    run_a, run_b = Path(sys.argv[1]), Path(sys.argv[2])
    services, _ = fake_services(Path("runs"), gpus=0)
    app = AffinerApp(services)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        app.open_playground(run_a)
        await settle(pilot)
        screen = app.screen
        info_a = str(screen.query_one("#run-info").render())
        pid_a = screen.session.pid
        await pilot.press(*"/max 12", "enter")  # short answers: what is proven is where they run
        limit = str(screen.query_one("#run-info").render())
        await pilot.press(*"tell me a story", "enter")
        await settle(pilot)
        tuned = screen.query_one("#pane-tuned", ChatPane).turns.copy()
        base = screen.query_one("#pane-base", ChatPane).turns.copy()
        app.open_playground(run_b)
        await settle(pilot)
        pid_b = screen.session.pid
        a_gone = gone(pid_a)
        b_alive = pid_alive(pid_b)
    maps = Path("/proc/self/maps")
    print(json.dumps({
        "info_a": info_a,
        "limit": limit,
        "tuned": tuned,
        "base": base,
        "pids": [pid_a, pid_b],
        "a_gone_after_b_opened": a_gone,
        "b_alive_while_open": b_alive,
        "b_gone_after_quit": gone(pid_b),
        "heavy": sorted(m for m in ("torch", "transformers", "peft", "accelerate") if m in sys.modules),
        "libcuda": maps.exists() and "libcuda" in maps.read_text(),
    }))


asyncio.run(main())
"""


def test_a_chat_from_the_playground_leaves_no_torch_in_the_app(
    tiny_llama: Path, tmp_path: Path
) -> None:
    runs = []
    for name in ("a", "b"):
        rd = make_run(tmp_path / name, tiny_llama, method="lora", training={"device": "auto"})
        make_adapter(tiny_llama, rd.adapter)
        runs.append(str(rd.path))
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    out = subprocess.run(
        [sys.executable, "-c", APP_SCRIPT, *runs],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert "(chat): base" in seen["info_a"], seen["info_a"]  # loaded, not "Could not load"
    assert "max 12 new tokens" in seen["limit"], seen["limit"]
    assert seen["tuned"][0] == ["user", "tell me a story"] == seen["base"][0]
    assert seen["tuned"][1][0] == "assistant" and seen["tuned"][1][1]
    assert seen["base"][1][1] and seen["tuned"][1][1] != seen["base"][1][1]
    assert all(seen["pids"]) and seen["pids"][0] != seen["pids"][1]
    assert seen["a_gone_after_b_opened"] and seen["b_alive_while_open"]
    assert seen["b_gone_after_quit"]
    assert seen["heavy"] == [] and not seen["libcuda"]
