"""The assistant's pre-flight runs in a child process: the TUI never holds torch, a model or a GPU.

The pre-flight loads the model and times real steps. Done inside the TUI, it left torch and a
CUDA context there for good (on the GPU the plan counted as free) and let `pin_one_gpu` narrow
``CUDA_VISIBLE_DEVICES`` for every run the TUI started afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from textual.worker import WorkerState

from affiner.runner.config import load_config
from affiner.runner.run.process import pid_alive
from affiner.tui.app import AffinerApp
from affiner.tui.assistant import Task
from tests.train_helpers import make_run
from tests.tui_fakes import fake_services

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]

#: Run in a fresh interpreter, so torch imported by other tests cannot hide a leak: the app
#: (fake hardware, the real pre-flight service) runs one pre-flight from the assistant screen.
APP_SCRIPT = r"""
import asyncio, json, os, sys
from pathlib import Path

from affiner.runner.config import load_config
from affiner.tui.app import AffinerApp
from affiner.tui.assistant import Task
from tests.tui_fakes import fake_services


async def main():
    cfg = load_config(sys.argv[1])
    cfg.data.train = "data/train.jsonl"  # relative to this (the TUI's) folder, as typed
    services, _ = fake_services(Path("runs"), gpus=0)
    env_before = dict(os.environ)
    app = AffinerApp(services)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        screen = app.screen
        for _ in range(100):
            if not [w for w in app.workers if w.group == "assistant" and not w.is_finished]:
                break
            await asyncio.sleep(0.05)
        screen.start(Task("preflight", cfg))
        await pilot.pause()
        mine = [w for w in app.workers if w.name == "preflight"]
        await app.workers.wait_for_complete(mine)
        await pilot.pause()
        event = screen.flow.preflight
        said = "\n".join(m.source for m in screen.query("Message"))
        errors = [str(w.error) for w in mine if w.error is not None]
    maps = Path("/proc/self/maps")
    print(json.dumps({
        "event": event.to_dict() if event is not None else None,
        "errors": errors,
        "said": said,
        "heavy": sorted(m for m in ("torch", "transformers", "peft", "accelerate") if m in sys.modules),
        "libcuda": maps.exists() and "libcuda" in maps.read_text(),
        "env_same": dict(os.environ) == env_before,
        "cuda_visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "train_after": cfg.data.train,
    }))


asyncio.run(main())
"""


def test_a_preflight_from_the_app_leaves_no_torch_and_the_same_environment(
    tiny_llama: Path, tmp_path: Path
) -> None:
    # "auto": on a machine with a GPU the child trains on it, and the TUI must still hold none.
    rd = make_run(tmp_path, tiny_llama, method="lora", training={"device": "auto"})
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        # Two GPUs named: the in-process pre-flight narrowed this to "0" for the TUI's lifetime.
        "CUDA_VISIBLE_DEVICES": "0,1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    out = subprocess.run(
        [sys.executable, "-c", APP_SCRIPT, str(rd.config)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["errors"] == []
    event = seen["event"]
    assert event and event["type"] == "preflight" and event["device"]
    assert event["measured_peak_bytes"] > 0 and event["measured_step_seconds"] > 0
    assert f"Pre-flight on {event['device']}" in seen["said"]  # the reply, from the child's event
    assert seen["heavy"] == [] and not seen["libcuda"]
    assert seen["env_same"] and seen["cuda_visible"] == "0,1"
    assert seen["train_after"] == "data/train.jsonl"  # the caller's config is left as it was
    assert not list(tmp_path.glob("runs/*"))  # a pre-flight is not a run


def _preflight_children() -> list[psutil.Process]:
    found = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "--preflight-only" in child.cmdline():
                found.append(child)
    return found


async def test_quitting_the_app_stops_its_preflight(tiny_llama: Path, tmp_path: Path) -> None:
    cfg = load_config(make_run(tmp_path, tiny_llama, method="lora").config)
    services, _ = fake_services(tmp_path / "runs", gpus=0)
    app = AffinerApp(services)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        app.screen.start(Task("preflight", cfg))
        children: list[psutil.Process] = []
        for _ in range(300):
            children = _preflight_children()
            if children:
                break
            await asyncio.sleep(0.05)
        assert children, "no pre-flight process was started"
        child = children[0]
        folder = Path(child.cmdline()[child.cmdline().index("--preflight-only") - 1])
        assert (folder / "run.toml").exists()
        worker = next(w for w in app.workers if w.name == "preflight")
        assert worker.state == WorkerState.RUNNING
    # The app has quit: its worker was cancelled, and the child is stopped with it.
    assert worker.is_cancelled
    deadline = time.monotonic() + 20
    while pid_alive(child.pid) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert not pid_alive(child.pid)
    while folder.exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert not folder.exists()  # the temporary run folder is removed with it
