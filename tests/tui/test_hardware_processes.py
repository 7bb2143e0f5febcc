"""Every GPU and its processes, as nvitop users expect: eight GPUs at 80 columns, idle ones too.

``affiner hw`` goes through the real ``import pynvml`` boundary with `tests.fake_nvml` in its
place; the hardware screen gets its report from the fake services.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

from affiner.planner.hardware.report import GpuProcess
from affiner.tui.app import build_app
from affiner.tui.cli.entry import main
from affiner.tui.screens.hardware import COMPACT_FROM, GpuCard, HardwareScreen
from affiner.tui.screens.hardware_text import holders_line, no_holders_text
from tests.fake_nvml import GIB, ProcessInfo, gpu, make_fake_nvml
from tests.tui_fakes import fake_gpu, fake_services
from tests.tui_pilot import wait_for

MIB = 1024**2


def eight_gpus() -> list[dict]:
    """Eight H100s: GPU 0 and 3 busy (two processes, one in both NVML lists), GPU 5 held by a
    process this container cannot see, the others idle."""
    gpus = []
    for index in range(8):
        busy = index in (0, 3)
        processes = (
            [
                ProcessInfo(pid=5000 + index, usedGpuMemory=(60 + index) * GIB),
                ProcessInfo(pid=6000 + index, usedGpuMemory=512 * MIB),
            ]
            if busy
            else []
        )
        used = (61 + index) * GIB if busy else (12 * GIB if index == 5 else 300 * MIB)
        gpus.append(gpu(uuid=f"GPU-{index}", memory_used=used, compute_processes=processes))
    gpus[3]["graphics_processes"] = [ProcessInfo(pid=5003, usedGpuMemory=63 * GIB)]
    return gpus


@pytest.fixture
def eight(monkeypatch: pytest.MonkeyPatch, runs_dir: Path) -> None:
    names = {5000 + i: "python" for i in range(8)} | {6000 + i: "nvtop" for i in range(8)}
    monkeypatch.setitem(sys.modules, "pynvml", make_fake_nvml(eight_gpus(), process_names=names))


def test_hw_lists_every_gpu_and_its_processes_at_80_columns(
    eight: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["hw"]) == 0
    out = capsys.readouterr().out
    assert max(len(line.rstrip()) for line in out.splitlines()) <= 80
    start = out.index("Processes holding GPU memory")
    table = out[start : out.index("Machine")].splitlines()[2:]
    rows = [line.split() for line in table if line.strip()]
    # each GPU once in the first column, its processes under it, biggest first
    assert [row[:2] for row in rows[:3]] == [["0", "5000"], ["6000", "nvtop"], ["1", "no"]]
    text = "\n".join(table)
    for idle in (1, 2, 4, 6, 7):
        assert any(
            line.split()[:1] == [str(idle)] and "no processes hold memory" in line for line in table
        ), idle
    assert "5000  python" in text and "60.0 GiB" in text and "6000  nvtop" in text
    assert "512 MiB" in text
    # a process in both of NVML's lists is one row, its memory once
    assert text.count("5003") == 1 and "compute+graphics" in text
    # held memory with no process listed: said in its row and in a note under the table
    assert "none listed (hidden from this container?)" in text and "12.0 GiB" in text
    flat = " ".join(out.split())
    assert "GPU 5: no processes listed, yet 12.0 GiB is in use" in flat


def test_hw_json_has_every_gpus_processes(eight: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hw", "--json"]) == 0
    gpus = json.loads(capsys.readouterr().out)["gpus"]
    assert len(gpus) == 8
    assert [len(g["processes"]) for g in gpus] == [2, 0, 0, 2, 0, 0, 0, 0]
    first = gpus[0]["processes"][0]
    assert (first["pid"], first["name"], first["used_bytes"]) == (5000, "python", 60 * GIB)


def test_holders_words() -> None:
    idle = dataclasses.replace(fake_gpu(0, used_gib=0.3), processes=())
    assert holders_line(idle) == "  no processes hold memory"
    hidden = dataclasses.replace(fake_gpu(1, used_gib=12), processes=())
    assert no_holders_text(hidden).startswith("no processes listed, yet 12.0 GiB is in use")
    busy = dataclasses.replace(
        fake_gpu(2, used_gib=70),
        processes=(
            GpuProcess(pid=1, name="small", used_bytes=GIB),
            GpuProcess(pid=2, name="big", used_bytes=60 * GIB),
            GpuProcess(pid=3, name="unknown", used_bytes=None),
        ),
    )
    assert [line.split()[1] for line in holders_line(busy).splitlines()] == [
        "big",
        "small",
        "unknown",
    ]


async def test_hardware_screen_with_eight_gpus_is_compact_and_readable(runs_dir: Path) -> None:
    services, backend = fake_services(runs_dir, gpus=8)
    gpus = list(backend.report.gpus)
    gpus[1] = dataclasses.replace(gpus[1], processes=(), memory_used=0)
    gpus[6] = dataclasses.replace(gpus[6], processes=(), memory_used=12 * GIB)
    backend.report = dataclasses.replace(backend.report, gpus=tuple(gpus))
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f3")
        screen = app.screen
        assert isinstance(screen, HardwareScreen)
        await wait_for(pilot, lambda: len(screen.query(GpuCard)) == 8)
        await pilot.pause()
        cards = list(screen.query(GpuCard))
        assert len(cards) >= COMPACT_FROM and all(card.has_class("-compact") for card in cards)
        for card in cards:
            # both gauges on one line, nothing wider than the screen
            assert card.memory.region.y == card.util.region.y
            assert card.memory.region.width >= 30 and card.util.region.right <= 80
            assert len(str(card.title.render())) <= 78
        assert "no processes hold memory" in str(cards[1].holders.render())
        assert "yet 12.0 GiB is in use" in str(cards[6].holders.render())
        assert "4242 python 12.5 GiB" in str(cards[0].holders.render())


async def test_two_gpus_keep_their_gauges_on_two_lines(runs_dir: Path) -> None:
    services, _ = fake_services(runs_dir, gpus=2)
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f3")
        await wait_for(pilot, lambda: len(app.screen.query(GpuCard)) == 2)
        await pilot.pause()
        card = app.screen.query(GpuCard).first()
        assert not card.has_class("-compact")
        assert card.util.region.y == card.memory.region.y + 1
