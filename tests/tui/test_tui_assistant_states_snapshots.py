"""How the assistant looks while planning (a 7B on a 4090 and on a CPU) and during the
pre-flight, at 80x24 and 120x40 (issue 12, point 6).

The real planner plans for fixed devices (a catalog RTX 4090; a CPU with stated figures, as a
measured one would make the numbers the machine's), with a size-only "7B" and a fixed data
preview, so nothing drawn depends on the machine or the clock. The pre-flight is held at
one reported moment. Update with ``pytest -k states --snapshot-update`` after a deliberate
change, and look at the SVGs before committing them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Input
from textual.worker import WorkerState, get_current_worker

from affiner.planner.hardware.device import DeviceTarget, target_from_catalog
from affiner.planner.models.sizes import spec_from_size
from affiner.planner.recommend import plan
from affiner.runner.run.preflight import PREFLIGHT_TRAIN, PreflightProgress
from affiner.tui.app import AffinerApp
from affiner.tui.assistant.flow import DataPreview
from affiner.tui.services import Services
from affiner.tui.widgets.conversation import Conversation
from tests.assistant_fakes import GIB, hardware
from tests.tui_pilot import wait_for

SIZES = [(80, 24), (120, 40)]


def cpu() -> DeviceTarget:
    return DeviceTarget(
        kind="cpu",
        name="CPU (Test CPU)",
        source="cpu",
        memory_total=64 * GIB,
        memory_free=48 * GIB,
        bf16=True,
        fp16=False,
        peak_tflops_bf16=0.3,
        peak_tflops_fp32=0.3,
        measured=True,
        process_baseline=GIB,
    )


DEVICES: dict[str, Callable[[], DeviceTarget]] = {
    "4090": lambda: target_from_catalog("4090"),
    "cpu": cpu,
}


def preview(path: str, spec: Any, seq_len: int, model_ref: str | None = None) -> DataPreview:
    return DataPreview(
        path=path,
        format="chat",
        rows=1800,
        sample=[{"messages": [{"role": "user", "content": "What is LoRA?"}]}],
        lengths=[120] * 900 + [300] * 700 + [500] * 200,
        example=[
            ("<|im_start|>user\nWhat is LoRA?<|im_end|>\n<|im_start|>assistant\n", False),
            ("A low-rank adapter.<|im_end|>", True),
        ],
    )


def planning_services(
    tmp_path: Path, device: str, preflight: Callable[..., Any] | None = None
) -> Services:
    """The real planner for a fixed device; ``7B`` resolves to its size-only shape."""
    target = DEVICES[device]()
    services = Services(
        probe_hardware=lambda: hardware(gpus=device != "cpu"),
        resolve_model=spec_from_size,
        make_plan=plan,
        start_run=lambda cfg: None,
        stop_run=lambda run: None,
        runs_root=tmp_path / "runs",
        resolve_device=lambda report: target,
        inspect_data=preview,
        clock=lambda: 1_800_000_000.0,
    )
    if preflight is not None:
        services.preflight = preflight
    return services


#: The workers a snapshot waits for (never the pre-flight, which is held).
QUICK = ("probe", "resolve_model", "load_data", "plan", "target")


async def settle(pilot: Pilot) -> None:
    for _ in range(3):
        busy = [
            w
            for w in pilot.app.workers
            if w.state in (WorkerState.PENDING, WorkerState.RUNNING) and w.name in QUICK
        ]
        if busy:
            await pilot.app.workers.wait_for_complete(busy)
        await pilot.pause()
    for field in pilot.app.screen.query(Input):
        field.cursor_blink = False
    await pilot.wait_for_animation()
    await pilot.pause()
    # the conversation scrolls to its end after a refresh: draw it there, not on the way
    for talk in pilot.app.screen.query(Conversation):
        await wait_for(
            pilot,
            lambda talk=talk: talk.scroll_y == talk.max_scroll_y,
            state=lambda talk=talk: (talk.scroll_y, talk.max_scroll_y, talk.following),
        )
    await pilot.pause()


async def to_the_plan(pilot: Pilot) -> None:
    await settle(pilot)
    for line in ("7B", "data/train.jsonl"):
        await pilot.press(*line, "enter")
        await settle(pilot)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("device", ["4090", "cpu"])
def test_states_planning_a_7b(
    snap_compare, tmp_path: Path, device: str, size: tuple[int, int]
) -> None:
    app = AffinerApp(planning_services(tmp_path, device))
    assert snap_compare(app, terminal_size=size, run_before=to_the_plan)


class HeldPreflight:
    """A pre-flight that reports one moment of its steps and waits until released, or until
    its worker is cancelled: the app cancels it as it exits after the snapshot, which then
    need not wait out the timeout."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.reported = threading.Event()

    def __call__(self, config: Any, listener: Any) -> Any:
        assert listener is not None
        listener(
            PreflightProgress(
                PREFLIGHT_TRAIN, done=20, total=48, steps_done=1, steps=3, elapsed=95, left=84
            )
        )
        self.reported.set()
        worker = get_current_worker()
        deadline = time.monotonic() + 30
        while not self.release.wait(timeout=0.02):
            if worker.is_cancelled or time.monotonic() > deadline:
                break
        raise RuntimeError("released")


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_states_during_the_pre_flight(snap_compare, tmp_path: Path, size: tuple[int, int]) -> None:
    held = HeldPreflight()
    app = AffinerApp(planning_services(tmp_path, "4090", held))

    async def run_before(pilot: Pilot) -> None:
        await to_the_plan(pilot)
        for _ in range(2):  # accept the plan, then the settings
            await pilot.press("enter")
            await settle(pilot)
        await pilot.press("enter")  # run the pre-flight
        for _ in range(200):
            if held.reported.is_set() and app.screen.query("#preflight-status"):
                break
            await pilot.pause(0.02)
        await pilot.pause(0.1)
        await settle(pilot)

    try:
        assert snap_compare(app, terminal_size=size, run_before=run_before)
    finally:
        held.release.set()
