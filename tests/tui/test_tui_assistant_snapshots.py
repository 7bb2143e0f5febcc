"""How the assistant (at the plan step) and the playground look, at 80x24 and 120x40.

Fake services with fixed numbers: nothing drawn depends on the machine or the clock. Update
with ``pytest --snapshot-update`` after a deliberate change, and look at the SVGs in
``tests/__snapshots__`` before committing them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import Input
from textual.worker import WorkerState

from affiner.planner.timing import TimeEstimate, optimizer_steps
from affiner.tui.app import AffinerApp
from affiner.tui.assistant.flow import DataPreview
from affiner.tui.services import Services
from tests.assistant_fakes import FakeChat, fake_planner, gpu_device, hardware, model_spec

SIZES = [(80, 24), (120, 40)]


def preview(path: str, spec, seq_len: int, model_ref: str | None = None) -> DataPreview:
    return DataPreview(
        path=path,
        format="chat",
        rows=1800,
        sample=[{"messages": [{"role": "user", "content": "What is LoRA?"}]}],
        dropped=[("data/train.jsonl:7", "not valid JSON (Expecting value: column 14)")],
        lengths=[120] * 900 + [300] * 700 + [800] * 200,
        example=[
            ("<|im_start|>user\nWhat is LoRA?<|im_end|>\n<|im_start|>assistant\n", False),
            ("A low-rank adapter.<|im_end|>", True),
        ],
    )


def timed_planner(spec, device, request):
    """`fake_planner` with each candidate's total as the planner gives it: the steps counted as
    the Trainer counts them (`optimizer_steps`), times the step."""
    report = fake_planner(spec, device, request)
    for c in report.candidates:
        accum = max(1, -(-request.target_batch // c.micro_batch))
        steps = (
            optimizer_steps(request.train_rows, c.micro_batch, accum, request.epochs)
            if request.train_rows
            else None
        )
        total = c.step_seconds * steps if steps else None
        c.time = TimeEstimate(
            0, 0.0, None, 0.3, c.step_seconds, total_seconds=total, total_steps=steps
        )
    return report


def services(tmp_path: Path) -> Services:
    return Services(
        probe_hardware=hardware,
        resolve_model=lambda ref: model_spec(name=ref),
        make_plan=timed_planner,
        start_run=lambda cfg: None,
        stop_run=lambda run: None,
        runs_root=tmp_path / "runs",
        resolve_device=lambda report: gpu_device(),
        inspect_data=preview,
        chat_session=lambda run_dir: FakeChat(),
        clock=lambda: 1_800_000_000.0,
    )


async def settle(pilot: Pilot) -> None:
    for _ in range(3):
        busy = [
            w
            for w in pilot.app.workers
            if w.state in (WorkerState.PENDING, WorkerState.RUNNING)
            and (w.group or "").startswith(("assistant", "playground"))
        ]
        if busy:
            await pilot.app.workers.wait_for_complete(busy)
        await pilot.pause()
    for field in pilot.app.screen.query(Input):
        field.cursor_blink = False
    await pilot.wait_for_animation()
    await pilot.pause()


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_assistant_at_the_plan_step(snap_compare, tmp_path: Path, size: tuple[int, int]) -> None:
    async def run_before(pilot: Pilot) -> None:
        await settle(pilot)
        for line in ("llama-7b", "data/train.jsonl"):
            await pilot.press(*line, "enter")
            await settle(pilot)

    assert snap_compare(AffinerApp(services(tmp_path)), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_playground_answers_side_by_side(
    snap_compare, tmp_path: Path, size: tuple[int, int]
) -> None:
    run = tmp_path / "runs" / "20261125-120000-lora-smollm2-ab12"

    async def run_before(pilot: Pilot) -> None:
        pilot.app.open_playground(run)
        await settle(pilot)
        await pilot.press(*"tell me about the sea", "enter")
        await settle(pilot)

    assert snap_compare(AffinerApp(services(tmp_path)), terminal_size=size, run_before=run_before)
