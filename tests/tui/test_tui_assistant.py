"""The guided assistant, walked with keys only, on a tiny real model and a data file with a bad line."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from textual.worker import WorkerCancelled, WorkerState

from affiner.runner.config.io import save_config
from affiner.runner.run.events import Preflight
from affiner.runner.run.rundir import RunDir
from affiner.tui.app import AffinerApp
from affiner.tui.screens.assistant import AssistantScreen
from affiner.tui.services import Services
from affiner.tui.widgets.conversation import Conversation, Message
from affiner.tui.widgets.example_view import ExampleView
from affiner.tui.widgets.plan_bars import PlanBars
from affiner.tui.widgets.settings_form import SettingsForm
from affiner.tui.widgets.token_histogram import TokenHistogram
from tests.assistant_fakes import gpu_device, hardware


def write_chat_data(path: Path) -> Path:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"tell me a story {i}"},
                {"role": "assistant", "content": "the cat sat on a mat " * (1 + i % 5)},
            ]
        }
        for i in range(40)
    ]
    lines = [json.dumps(r) for r in rows]
    lines.insert(6, '{"messages": [ this is not json')  # line 7
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def make_services(tmp_path: Path, launched: list) -> Services:
    from affiner.planner.models.resolve import resolve_model
    from affiner.planner.recommend import plan

    def start_run(config):
        run = RunDir(tmp_path / "runs" / "20261125-000000-lora-tiny-abcd")
        run.path.mkdir(parents=True)
        save_config(config, run.config)
        launched.append(config)
        return run

    return Services(
        probe_hardware=hardware,
        resolve_model=resolve_model,
        make_plan=plan,
        start_run=start_run,
        stop_run=lambda run_dir: None,
        runs_root=tmp_path / "runs",
        resolve_device=lambda report: gpu_device(),
        preflight=lambda config, progress=None: Preflight(
            device="NVIDIA GeForce RTX 4090",
            measured_peak_bytes=2 * 10**9,
            measured_step_seconds=0.05,
            predicted_peak_bytes=config.plan.predicted_peak_bytes,
        ),
        clock=lambda: 1_800_000_000.0,
    )


async def type_line(pilot, text: str) -> None:
    await pilot.press(*list(text) if text else [])
    await pilot.press("enter")
    await settle(pilot)


async def settle(pilot) -> None:
    """Wait for the assistant's running workers (the monitor's tail never finishes; a re-plan
    replaced by a newer one ends cancelled)."""
    for _ in range(3):
        mine = [
            w
            for w in pilot.app.workers
            if (w.group or "").startswith("assistant")
            and w.state in (WorkerState.PENDING, WorkerState.RUNNING)
        ]
        if mine:  # an empty list would mean "every worker"
            with contextlib.suppress(WorkerCancelled):
                await pilot.app.workers.wait_for_complete(mine)
        await pilot.pause()


def conversation_text(screen: AssistantScreen) -> str:
    return "\n".join(m.source for m in screen.query_one(Conversation).query(Message))


async def test_walks_the_whole_guided_flow_with_keys(tiny_llama: Path, tmp_path: Path) -> None:
    data = write_chat_data(tmp_path / "train.jsonl")
    launched: list = []
    app = AffinerApp(make_services(tmp_path, launched))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, AssistantScreen)
        assert "NVIDIA GeForce RTX 4090" in conversation_text(screen)
        assert screen.flow.step == "model"

        await type_line(pilot, str(tiny_llama))
        assert screen.flow.spec is not None and "LlamaForCausalLM" in conversation_text(screen)
        assert screen.flow.step == "data"

        await type_line(pilot, "what fits?")  # a question mid-flow gets a plan-backed answer
        assert "fits" in conversation_text(screen).split("what fits?")[-1]

        await type_line(pilot, str(data))
        text = conversation_text(screen)
        assert f"{data}:7" in text  # the bad line, as file:line
        assert screen.query(TokenHistogram) and screen.query(ExampleView)
        assert screen.flow.step == "plan"
        bars = screen.query_one(PlanBars)
        assert bars.report is screen.flow.plan and screen.query_one("#live").has_class("-shown")

        await type_line(pilot, "why not full?")
        assert "Full fine-tuning" in conversation_text(screen).split("why not full?")[-1]

        await type_line(pilot, "")  # Enter accepts the plan → settings
        assert screen.flow.step == "settings" and screen.query(SettingsForm)
        peak_before = screen.flow.candidate().peak_bytes
        # The focus is in the first settings field; Tab to "max length", retype it: the bar follows.
        await pilot.press("tab", "tab", "tab")
        assert app.focused.id == "setting-seq_len"
        await pilot.press("ctrl+u", "1", "2", "8")
        await settle(pilot)
        assert screen.flow.settings.seq_len == 128
        assert screen.flow.plan.request.seq_len == 128
        assert screen.flow.candidate().peak_bytes != peak_before
        assert "length 128" in str(screen.query_one("#summary").render())

        await pilot.press("enter")  # Enter in a field accepts the settings → pre-flight
        await settle(pilot)
        assert screen.flow.step == "preflight"
        await type_line(pilot, "")  # runs the (fake) pre-flight
        assert (
            "peak memory (device: torch reserved + CUDA context): **1.86 GiB**"
            in conversation_text(screen)
        )
        assert screen.flow.step == "launch"

        await type_line(pilot, "")  # launch → the monitor opens on the run
        await settle(pilot)
        assert launched and launched[0].data.max_seq_len == 128
        assert launched[0].data.train == str(data)
        assert app.current_run == tmp_path / "runs" / "20261125-000000-lora-tiny-abcd"
        assert app.current_mode == "monitor"


async def test_unknown_lines_and_failures_are_answered(tmp_path: Path) -> None:
    def broken_resolve(ref: str):
        from affiner.planner.errors import AffinerError

        raise AffinerError(f"no model folder or cached hub id {ref!r}", hint="give a folder")

    services = make_services(tmp_path, [])
    services.resolve_model = broken_resolve
    app = AffinerApp(services)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        screen = app.screen
        await type_line(pilot, "nope/missing")
        text = conversation_text(screen)
        assert (
            "That did not work" in text
            and "no model folder or cached hub id 'nope/missing'" in text
        )
        assert screen.flow.step == "model"
        await type_line(pilot, "help")
        assert "what if I had a 4090" in conversation_text(screen)


def test_the_first_screen_imports_no_torch() -> None:
    """Opening the assistant must not pay for torch/transformers (a fresh interpreter checks)."""
    import subprocess
    import sys

    code = (
        "import sys, affiner.tui.app, affiner.tui.screens.assistant, affiner.tui.screens.playground, affiner.tui.assistant.preview\n"
        "print(sorted(m for m in ('torch', 'transformers', 'peft', 'datasets') if m in sys.modules))"
    )
    root = str(Path(__file__).resolve().parents[2])
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
        env={**__import__("os").environ, "PYTHONPATH": root},
    )
    assert out.stdout.strip() == "[]"
