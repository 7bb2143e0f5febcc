"""The monitor on a multi-process run: memory per rank against the per-GPU prediction.

Run folders are written with the real `EventWriter`, as rank 0 of a ``[distributed]`` run
writes them: one ``run_started`` with the layout, then one ``system`` event per rank, each
tagged with its rank (and node). A single-process run must look as it always did.
"""

from __future__ import annotations

from pathlib import Path

from affiner.runner.run.events import (
    Error,
    Event,
    GpuSample,
    RunStarted,
    SystemSample,
    TrainLog,
)
from affiner.tui.app import build_app
from affiner.tui.live import RunHistory, drifts, layout_short, layout_words, over_plan
from affiner.tui.screens.monitor import MonitorScreen
from affiner.tui.widgets.plots import MemoryPlot
from affiner.tui.widgets.rank_memory import RankMemoryPanel, cells_per_line
from affiner.tui.widgets.run_panels import WarningsBanner, stats_lines
from tests.tui_fakes import GIB, NOW, RunFolder, fake_services, lm_run
from tests.tui_pilot import wait_for

RUN_ID = "20261125-110000-lora-smollm2-d2p2"


def ddp_started(
    *, world_size: int = 2, nodes: int = 1, strategy: str = "ddp", gpu: bool = False
) -> RunStarted:
    return RunStarted(
        t=NOW - 600,
        run_id=RUN_ID,
        pid=4242,
        model="smollm2-135m",
        method="lora",
        device="NVIDIA H100 80GB HBM3" if gpu else "cpu",
        total_steps=40,
        epochs=1.0,
        predicted_peak_bytes=2 * GIB,
        world_size=world_size,
        nodes=nodes,
        strategy=strategy,
    )


def cpu_rank(step: int, rank: int, rss_gib: float, *, node: int = 0) -> SystemSample:
    """A CPU rank's reading: no allocator peak, its process's (peak) resident memory."""
    return SystemSample(
        t=NOW - 600 + step,
        step=step,
        process_rss=int(rss_gib * GIB),
        process_peak_rss=int(rss_gib * GIB),
        ram_used=10 * GIB,
        ram_total=24 * GIB,
        cpu_percent=90.0,
        cpu_count=2,
        rank=rank,
        node=node,
    )


def gpu_rank(step: int, rank: int, peak_gib: float, *, node: int = 0) -> SystemSample:
    return SystemSample(
        t=NOW - 600 + step,
        step=step,
        gpus=[
            GpuSample(index=rank % 4, memory_used=int((peak_gib + 1) * GIB), memory_total=80 * GIB)
        ],
        torch_peak=int(peak_gib * GIB),
        rank=rank,
        node=node,
    )


def two_rank_events(rank1_gib: float = 1.6) -> list[Event]:
    out: list[Event] = [ddp_started()]
    for step in (10, 20):
        out.append(TrainLog(t=NOW - 600 + step, step=step, loss=2.0 - step / 100, total_steps=40))
        out += [cpu_rank(step, 0, 1.5), cpu_rank(step, 1, rank1_gib)]
    return out


def ddp_run(root: Path, events: list[Event]) -> RunFolder:
    run = RunFolder(root, RUN_ID)
    run.append(events)
    run.status("running", step=20, total=40)
    return run


# -- the fold -------------------------------------------------------------------------------


def test_each_rank_keeps_its_own_series_and_reading() -> None:
    history = RunHistory()
    history.add(two_rank_events())
    # two series, one a rank, never one series zigzagging between two processes
    assert list(history.memory) == ["rank 0", "rank 1"]
    assert [y for _, y in history.memory["rank 1"].points] == [int(1.6 * GIB)] * 2
    assert history.layout == "2 processes · ddp" and not history.on_gpu
    ranks = history.ranks
    assert [(r.rank, r.label, r.source) for r in ranks] == [
        (0, "rank 0", "peak RSS"),
        (1, "rank 1", "peak RSS"),
    ]
    assert history.measured_peak_bytes == int(1.6 * GIB)
    assert over_plan(ranks, history.predicted_peak_bytes) is None


def test_the_rank_past_the_plan_is_flagged_and_named_in_the_drift() -> None:
    history = RunHistory()
    history.add(two_rank_events(rank1_gib=2.5))
    top = over_plan(history.ranks, history.predicted_peak_bytes)
    assert top is not None and top.rank == 1
    [drift] = [d for d in drifts(history) if d.code == "memory_over_plan"]
    assert "rank 1's process memory peaked at 2.50 GiB" in drift.text
    assert "predicted 2.00 GiB per process" in drift.text


def test_gpu_ranks_prefer_the_allocator_peak_and_nodes_are_named() -> None:
    history = RunHistory()
    history.add([ddp_started(world_size=8, nodes=2, strategy="fsdp", gpu=True)])
    history.add([gpu_rank(10, rank, 1.0 + rank / 10, node=rank // 4) for rank in range(8)])
    assert history.layout == "8 processes on 2 nodes · fsdp"
    assert history.on_gpu
    ranks = history.ranks
    assert ranks[5].label == "node 1 rank 5" and ranks[5].source == "allocator peak"
    assert ranks[5].used_bytes == int(1.5 * GIB) and ranks[5].capacity == 80 * GIB
    # GPU 1 of node 0 and GPU 1 of node 1 are different GPUs: one series each
    assert len(history.memory) == 8


def test_layout_words() -> None:
    assert layout_short(2, "ddp") == "2×ddp" and layout_short(1, None) == ""
    assert layout_words(1, 1, None) == ""
    assert layout_words(16, 2, "zero3") == "16 processes on 2 nodes · zero3"


def test_single_process_history_is_unchanged() -> None:
    history = RunHistory()
    history.add(
        [
            RunStarted(run_id="r", total_steps=10, device="cpu"),
            SystemSample(step=1, ram_used=8 * GIB, ram_total=24 * GIB, process_rss=2 * GIB),
        ]
    )
    assert list(history.memory) == ["RAM (process)"] and history.ranks == []
    assert history.layout == "" and history.world_size == 1
    assert not any(line.startswith("layout") for line in stats_lines(history))


def test_eight_ranks_fit_80_columns_two_to_a_line() -> None:
    history = RunHistory()
    history.add([ddp_started(world_size=8, gpu=True)])
    history.add([gpu_rank(10, rank, 1.0 + rank / 10) for rank in range(8)])
    history.add([gpu_rank(20, 7, 2.4)])  # the latest sample of rank 7 is past the plan
    panel = RankMemoryPanel()
    panel.show(history)
    assert cells_per_line(78) == 2
    lines = panel.lines(78)
    assert len(lines) == 1 + 4 and all(len(line) <= 78 for line in lines)
    assert lines[0].startswith("Memory per rank (allocator peak) · plan 2.00 GiB per GPU")
    assert "rank 7 is past it" in lines[0]
    assert lines[1].startswith("rank 0 ▕") and "1.00/2.00 GiB" in lines[1]
    assert lines[4].endswith("2.40/2.00 GiB ⚠") and lines[4].count("⚠") == 1
    assert sum(line.count("⚠") for line in lines[1:]) == 1  # only the highest rank


# -- the screen -----------------------------------------------------------------------------


async def test_monitor_shows_ranks_against_the_prediction_and_a_rank_failure(
    runs_dir: Path,
) -> None:
    run = ddp_run(runs_dir, two_rank_events())
    services, _ = fake_services(runs_dir)
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        app.open_monitor(run.path)
        screen = app.screen
        assert isinstance(screen, MonitorScreen)
        await wait_for(pilot, lambda: screen.history.step == 20)
        title = str(screen.query_one("#run-title").render())
        assert title.startswith("running  ·  2 processes · ddp  ·  20261125")
        panel = screen.query_one(RankMemoryPanel)
        assert panel.has_class("-shown") and panel.region.height == 2
        rendered = str(panel.render())
        assert "Memory per rank (peak RSS) · plan 2.00 GiB per process" in rendered
        assert "rank 0 ▕" in rendered and "1.50/2.00 GiB" in rendered
        assert "1.60/2.00 GiB" in rendered and "⚠" not in rendered
        plot = screen.query_one(MemoryPlot)
        assert [label for label, _ in plot.series] == ["rank 0", "rank 1"]
        assert plot.title == "process RAM per rank (GiB)"
        assert [item.label for item in plot.legend] == ["rank 0", "rank 1", "predicted per process"]
        # rank 1 grows past the plan: it alone is flagged
        run.append([cpu_rank(30, 0, 1.5), cpu_rank(30, 1, 2.6)])
        await wait_for(pilot, lambda: "⚠" in str(panel.render()))
        assert "rank 1 is past it" in str(panel.render())
        assert "2.60/2.00 GiB ⚠" in str(panel.render())
        # a rank that dies is an ordinary error: the banner says which and why
        message = "rank 1 (pid 5151, node 0) failed at step 30 (RuntimeError: boom)"
        run.append([Error(t=NOW, code="rank_failed", message=message, step=30)])
        banner = screen.query_one(WarningsBanner)
        await wait_for(pilot, lambda: "rank_failed" in banner.text)
        assert f"✖ rank_failed: {message}" in banner.text


async def test_a_single_process_run_looks_as_before(runs_dir: Path) -> None:
    run = lm_run(runs_dir, upto=40)
    services, _ = fake_services(runs_dir)
    app = build_app(services)
    async with app.run_test(size=(80, 24)) as pilot:
        app.open_monitor(run.path)
        screen = app.screen
        await wait_for(pilot, lambda: screen.history.step == 40)
        assert not screen.query_one(RankMemoryPanel).has_class("-shown")
        assert "processes" not in str(screen.query_one("#run-title").render())
        plot = screen.query_one(MemoryPlot)
        assert [label for label, _ in plot.series] == ["GPU 0"]
        assert plot.title == "GPU memory (GiB)" and plot.peak_label == "predicted peak"


def test_a_rank_sample_listing_every_gpu_keeps_the_ranks_own() -> None:
    """Rank 0's periodic sampler may list every GPU: rank 0 must not show GPU 1 as its own."""
    history = RunHistory()
    history.add([ddp_started(gpu=True), gpu_rank(10, 0, 1.0), gpu_rank(10, 1, 1.2)])
    every = SystemSample(
        step=12,
        gpus=[
            GpuSample(index=1, memory_used=9 * GIB, memory_total=80 * GIB),
            GpuSample(index=0, memory_used=3 * GIB, memory_total=80 * GIB),
        ],
        rank=0,
        node=0,
    )
    history.add([every])
    assert history.rank_samples[0].gpus == [every.gpus[1]]
    assert history.memory["rank 0"].points[-1] == (12.0, 3 * GIB)
    assert [r.gpu_index for r in history.ranks] == [0, 1]
