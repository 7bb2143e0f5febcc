"""The hardware screen's live load and its words: CPU use, load, the processes, what plans use.

`LoadSampler` is read for real (this test process is one of the processes it lists); the
screen is driven with a canned `HostLoad`, so what it shows does not depend on the machine.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path

import pytest
from textual.widgets import Select, Static

from affiner.planner.hardware import FALLBACK, HostLoad, LoadSampler, ProcessLoad
from affiner.tui.app import build_app
from affiner.tui.screens.hardware import GpuCard, HardwareScreen
from affiner.tui.screens.hardware_text import (
    busiest_lines,
    catalog_lines,
    holders_line,
    load_average_text,
    no_gpu_reason,
    plan_sentence,
)
from affiner.tui.services import Services
from affiner.tui.widgets.gauge import Gauge
from tests.fake_nvml import ProcessInfo, gpu, make_fake_nvml
from tests.tui_fakes import GIB, catalog_target, fake_gpu, fake_report, fake_services
from tests.tui_pilot import wait_for


def canned_load(*, own_pid: int = 100) -> HostLoad:
    """The GPU holders (pids 4242, 4243) busy on the CPU too, and a tokenizer taking two cores."""
    processes = (
        ProcessLoad(999, "tokenizer", 180.0, int(1.2 * GIB), "carol"),
        ProcessLoad(4242, "python", 97.0, int(3.1 * GIB), "alice"),
        ProcessLoad(4243, "python", 12.0, 2 * GIB, "bob"),
        ProcessLoad(own_pid, "affiner", 4.0, GIB // 5, "alice"),
        ProcessLoad(7, "idle", 0.0, GIB // 100, "root"),
    )
    return HostLoad(
        cpu_percent=71.0,
        load_average=(5.2, 3.1, 2.0),
        logical_cores=4,
        top=processes,
        by_pid={p.pid: p for p in processes},
        own_pid=own_pid,
    )


def test_sampler_reads_this_process() -> None:
    sampler = LoadSampler(top_n=500)
    first = sampler.read()
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:  # some CPU for this process to be seen using
        sum(i * i for i in range(10_000))
    second = sampler.read()
    for load in (first, second):
        assert load.cpu_percent is not None and 0.0 <= load.cpu_percent <= 100.0
        assert load.logical_cores >= 1 and load.own_pid == os.getpid()
    mine = second.by_pid[os.getpid()]
    assert mine.rss_bytes and mine.rss_bytes > 10 * 1024**2
    assert mine.cpu_percent is not None and mine.cpu_percent > 0.0
    shares = [p.cpu_percent or 0.0 for p in second.top]
    assert shares == sorted(shares, reverse=True)


def test_load_words() -> None:
    load = canned_load()
    assert load_average_text(load) == (
        "load 5.20 3.10 2.00 on 4 threads (more work than cores: processes wait)"
    )
    calm = dataclasses.replace(load, load_average=(0.5, 0.4, 0.3))
    assert load_average_text(calm) == "load 0.50 0.40 0.30 on 4 threads"
    assert load_average_text(dataclasses.replace(load, load_average=None)) == "load N/A"
    lines = busiest_lines(load)
    assert lines[0] == "  999 tokenizer · CPU 180% · RSS 1.20 GiB · carol"
    assert any("100 affiner (this app)" in line for line in lines)
    assert not any("idle" in line for line in lines)  # 0% is not "busy"
    quiet = dataclasses.replace(load, top=())
    assert busiest_lines(quiet) == ["  no process is using the CPU"]


def test_gpu_holders_carry_their_cpu_and_rss() -> None:
    gpu = fake_gpu(0, used_gib=12.5)
    assert holders_line(gpu) == "  4242 python 12.5 GiB"  # no load read yet: GPU memory only
    line = holders_line(gpu, canned_load())
    assert line == "  4242 python 12.5 GiB · CPU 97% · RSS 3.10 GiB · alice"
    # A holder the host cannot see (another container): its CPU and RSS read N/A.
    hidden = holders_line(gpu, dataclasses.replace(canned_load(), by_pid={}))
    assert hidden == "  4242 python 12.5 GiB · CPU N/A · RSS N/A"


def test_plan_sentence_is_one_truth() -> None:
    two = fake_report(2)
    assert plan_sentence(two, None) == (
        "Plans are made for GPU 0, NVIDIA H100 80GB HBM3 (80.0 GiB). "
        "Press p to plan as if for a catalog GPU."
    )
    none = fake_report(0)
    cpu = plan_sentence(none, None)
    assert cpu.startswith("Plans are made for this machine's CPU") and "--gpu" not in cpu
    as_if = plan_sentence(none, catalog_target("RTX 4090"))
    assert as_if.startswith("Plans are made as if for the catalog GPU RTX 4090 (24.0 GiB")
    assert "CPU" not in as_if and "--gpu" not in as_if
    # The CLI's advice is cut from the driver's reason: the screen has its own picker.
    with_cli = dataclasses.replace(none, gpu_reason=f"NVIDIA driver not found: {FALLBACK}")
    assert no_gpu_reason(with_cli) == "NVIDIA driver not found"


def test_catalog_lines_show_memory_and_fit_80_columns() -> None:
    entries = [(name, catalog_target(name)) for name in ("RTX 4090", "A100 80GB SXM")] * 5
    lines = catalog_lines([*entries, ("Voodoo 2", None)])
    assert lines[0].startswith("RTX 4090 24.0 GiB · A100 80GB SXM 80.0 GiB")
    assert lines[-1].endswith("Voodoo 2 N/A")
    assert all(len(line) <= 78 for line in lines) and len(lines) > 1
    assert catalog_lines([]) == ["The GPU catalog could not be read."]


def services_with_load(runs_dir: Path, gpus: int = 2) -> Services:
    services, _ = fake_services(runs_dir, gpus=gpus)
    services.read_load = canned_load
    return services


async def test_screen_shows_live_load_beside_the_gpus(runs_dir: Path) -> None:
    app = build_app(services_with_load(runs_dir))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f3")
        screen = app.screen
        assert isinstance(screen, HardwareScreen)
        await wait_for(pilot, lambda: screen.load is not None and len(screen.query(GpuCard)) == 2)
        await pilot.pause()
        holders = str(list(screen.query(GpuCard))[1].holders.render())
        assert "4243 python 74.0 GiB · CPU 12% · RSS 2.00 GiB · bob" in holders
        cpu = screen.query_one("#hw-cpu", Gauge)
        assert cpu.used == 71.0 and cpu.total == 100
        assert "on 4 threads (more work than cores" in str(screen.query_one("#hw-load").render())
        busiest = str(screen.query_one("#hw-busiest", Static).render())
        assert busiest.splitlines()[0].strip().startswith("999 tokenizer · CPU 180%")
        plan_for = str(screen.query_one("#hw-plan-for", Static).render())
        assert plan_for.startswith("Plans are made for GPU 0")
        catalog = str(screen.query_one("#hw-catalog", Static).render())
        assert "RTX 4090 24.0 GiB" in catalog and "H100 80GB SXM 80.0 GiB" in catalog


async def test_cpu_only_machine_shows_cpu_load_and_no_cli_flags(runs_dir: Path) -> None:
    app = build_app(services_with_load(runs_dir, gpus=0))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f3")
        screen = app.screen
        await wait_for(pilot, lambda: screen.report is not None and screen.load is not None)
        await pilot.pause()
        words = " ".join(str(widget.render()) for widget in screen.query(Static) if widget.display)
        assert "Plans are made for this machine's CPU" in words
        assert "No GPU: NVML Shared Library Not Found" in words
        assert "--gpu" not in words and "Plans use the CPU" not in words
        assert "999 tokenizer · CPU 180%" in words


async def test_picking_a_catalog_gpu_rewrites_the_sentence(runs_dir: Path) -> None:
    app = build_app(services_with_load(runs_dir, gpus=0))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f3")
        screen = app.screen
        await wait_for(pilot, lambda: screen.report is not None)
        await pilot.press("p", "down", "enter")  # the first catalog GPU, the RTX 4090
        await wait_for(pilot, lambda: app.plan_target is not None)
        plan_for = screen.query_one("#hw-plan-for", Static)
        await wait_for(pilot, lambda: "catalog GPU RTX 4090" in str(plan_for.render()))
        text = str(plan_for.render())
        assert "CPU" not in text  # no "plans use the CPU" beside "as if for a 4090"
        assert any("catalog GPU RTX 4090 (24.0 GiB)" in n.message for n in app._notifications)
        screen.query_one("#hw-target", Select).value = "__this_machine__"
        await wait_for(pilot, lambda: "this machine's CPU" in str(plan_for.render()))


async def test_a_refused_load_reading_keeps_the_hardware(runs_dir: Path) -> None:
    services, _ = fake_services(runs_dir)

    def refused() -> HostLoad:
        raise PermissionError("no /proc here")

    services.read_load = refused
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f3")
        screen = app.screen
        await wait_for(pilot, lambda: len(screen.query(GpuCard)) == 2)
        busiest = screen.query_one("#hw-busiest", Static)
        await wait_for(pilot, lambda: "no /proc here" in str(busiest.render()))
        assert screen.query_one("#hw-cpu", Gauge).used is None


async def test_real_probe_and_load_behind_the_fake_nvml(
    monkeypatch: pytest.MonkeyPatch, runs_dir: Path
) -> None:
    """The default services end to end: NVML faked at ``import pynvml``, psutil for real.

    This test process holds the fake GPU's memory, so its row must carry this process's
    CPU and resident memory from the load reading, as nvitop shows a holder.
    """
    holder = ProcessInfo(pid=os.getpid(), usedGpuMemory=69 * GIB)
    nvml = make_fake_nvml(
        [gpu(memory_total=80 * GIB, memory_used=70 * GIB, compute_processes=[holder])]
    )
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    services = Services.default(runs_dir)
    assert services.read_load is not None
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f3")
        screen = app.screen
        await wait_for(pilot, lambda: screen.load is not None and screen.query(GpuCard))
        await pilot.pause()
        row = str(screen.query_one(GpuCard).holders.render())
        assert row.startswith(f"  {os.getpid()} ") and " 69.0 GiB · CPU " in row
        assert "RSS N/A" not in row and "CPU N/A" not in row
        cpu = screen.query_one("#hw-cpu", Gauge)
        assert cpu.used is not None and 0 <= cpu.used <= 100
        assert "load " in str(screen.query_one("#hw-load", Static).render())
