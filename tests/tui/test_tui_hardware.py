"""The hardware screen with a fake report: two GPUs, none, refused readings, the picker."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from textual.widgets import Select, Static

from affiner.tui.app import build_app
from affiner.tui.messages import PlanTargetChanged
from affiner.tui.screens.hardware import GpuCard, HardwareScreen, gpu_summary, holders_line
from affiner.tui.widgets.gauge import Gauge, bar_text, level_for
from tests.tui_fakes import GIB, fake_services
from tests.tui_pilot import wait_for


def test_gauge_levels_and_bar() -> None:
    assert level_for(None) == "none"
    assert level_for(0.5) == "low"
    assert level_for(0.8) == "mid"
    assert level_for(0.95) == "high"
    filled, empty = bar_text(0.5, 10)
    assert filled == "█" * 5 and empty == "░" * 5
    assert bar_text(None, 4) == ("", "····")
    assert len("".join(bar_text(0.33, 17))) == 17


def test_missing_readings_read_na() -> None:
    from tests.tui_fakes import fake_gpu

    gpu = dataclasses.replace(
        fake_gpu(0, used_gib=1),
        compute_capability=None,
        temperature_c=None,
        power_w=None,
        utilization_percent=None,
        processes=(),
    )
    line = gpu_summary(gpu)
    assert "cc N/A" in line and "N/A °C" in line and "N/A W" in line and "util N/A" in line
    assert "no processes" in holders_line(gpu)


async def test_two_gpus(runs_dir: Path) -> None:
    services, backend = fake_services(runs_dir, gpus=2)
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f3")
        screen = app.screen
        assert isinstance(screen, HardwareScreen)
        await wait_for(pilot, lambda: len(screen.query(GpuCard)) == 2)
        cards = list(screen.query(GpuCard))
        first = str(cards[0].title.render())
        assert "GPU 0" in first and "cc 9.0" in first and "bf16 yes" in first and "41°C" in first
        assert "120/700 W" in first
        assert (
            cards[1].memory.fraction is not None and level_for(cards[1].memory.fraction) == "high"
        )
        assert "4243 python 74.0 GiB" in str(cards[1].holders.render())
        ram = screen.query_one("#hw-ram", Gauge)
        assert ram.used == 9 * GIB and ram.total == 24 * GIB
        host = str(screen.query_one("#hw-host", Static).render())
        assert "Driver 550.54.15" in host and "CUDA 12.4" in host
        assert screen.query_one("#hw-gpu-reason").has_class("-hidden")
        # Refresh re-probes in a worker (the poll does not overlap itself).
        probes = backend.probes
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: backend.probes > probes)


async def test_no_gpu_says_why(runs_dir: Path) -> None:
    services, _ = fake_services(runs_dir, gpus=0)
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f3")
        screen = app.screen
        reason = screen.query_one("#hw-gpu-reason", Static)
        await wait_for(pilot, lambda: "No GPU" in str(reason.render()))
        assert "NVML Shared Library Not Found" in str(reason.render())
        assert not screen.query(GpuCard)


async def test_probe_failure_is_shown_not_raised(runs_dir: Path) -> None:
    services, _ = fake_services(runs_dir)

    def broken() -> None:
        raise RuntimeError("NVML exploded")

    services.probe_hardware = broken  # type: ignore[assignment]
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f3")
        reason = app.screen.query_one("#hw-gpu-reason", Static)
        await wait_for(pilot, lambda: "NVML exploded" in str(reason.render()))


async def test_picker_sets_the_plan_target(runs_dir: Path) -> None:
    services, _ = fake_services(runs_dir)
    app = build_app(services)
    told: list[PlanTargetChanged] = []
    async with app.run_test(
        size=(80, 24),
        message_hook=lambda m: told.append(m) if isinstance(m, PlanTargetChanged) else None,
    ) as pilot:
        await pilot.press("f3")
        picker = app.screen.query_one("#hw-target", Select)
        assert [str(o[0]) for o in picker._options][:2] == ["this machine", "RTX 4090"]
        await pilot.press("p")  # opens the list
        await pilot.press("down", "enter")
        await wait_for(pilot, lambda: app.plan_target is not None)
        assert app.plan_target.name == "RTX 4090"
        assert told and told[-1].target.name == "RTX 4090"
        picker.value = "__this_machine__"
        await wait_for(pilot, lambda: app.plan_target is None)
