"""``affiner attach`` and ``affiner runs`` on a multi-process run: its layout and each rank's peak.

The run folders are hand-written with the real `EventWriter`, as rank 0 writes them (one
``system`` event per rank, tagged). A single-process run must print what it always did.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from affiner.runner.run.events import (
    Error,
    EventWriter,
    GpuSample,
    Preflight,
    RunFinished,
    RunStarted,
    RunStatus,
    SystemSample,
    TrainLog,
    write_status,
)
from affiner.runner.run.rundir import RunDir
from affiner.tui.cli.attach import AttachView, PlainLines, attach
from affiner.tui.cli.entry import main
from affiner.tui.screens.run_facts import RunSettings
from affiner.tui.screens.runs_columns import RunRow, method_text
from tests.tui.test_attach import render_text

GIB = 1024**3
DDP_TOML = (
    '[model]\nname_or_path = "tiny"\n[method]\nname = "lora"\n'
    '[training]\ndevice = "cpu"\n[distributed]\nprocesses = 2\nstrategy = "ddp"\n'
)
SINGLE_TOML = '[model]\nname_or_path = "tiny"\n[method]\nname = "lora"\n'


def write_run(root: Path, run_id: str, events: list, state: str, toml: str = DDP_TOML) -> RunDir:
    rd = RunDir(root / run_id)
    rd.path.mkdir(parents=True)
    rd.config.write_text(toml)
    with EventWriter(rd.path) as writer:
        for event in events:
            writer.write(event)
    write_status(rd.path, RunStatus(run_id=run_id, state=state, started=1000.0, step=8))
    return rd


def rank_sample(step: int, rank: int, gib: float, t: float) -> SystemSample:
    return SystemSample(
        step=step,
        ram_used=8 * GIB,
        ram_total=24 * GIB,
        process_rss=int(gib * GIB),
        process_peak_rss=int(gib * GIB),
        rank=rank,
        node=0,
        t=t,
    )


def ddp_events(final: RunFinished | None, rank1_peak: float = 1.25) -> list:
    events: list = [
        RunStarted(
            run_id="r",
            model="tiny-llama",
            method="lora",
            device="cpu",
            total_steps=8,
            predicted_peak_bytes=GIB,
            world_size=2,
            strategy="ddp",
            t=1000,
        )
    ]
    for step, loss in ((4, 2.6), (8, 2.0)):
        events.append(TrainLog(step=step, loss=loss, total_steps=8, t=1000 + step))
        # rank 1 peaks at step 4, then reports less: the summary keeps its peak
        events.append(rank_sample(step, 0, 0.75, 1000 + step))
        events.append(rank_sample(step, 1, rank1_peak if step == 4 else 0.5, 1000 + step))
    if final is not None:
        events.append(final)
    return events


def test_finished_ddp_run_summary_names_the_layout_and_each_ranks_peak(runs_dir: Path) -> None:
    final = RunFinished(state="finished", step=8, train_seconds=20, t=1010)
    rd = write_run(runs_dir, "ddp-done", ddp_events(final), "finished")
    view = AttachView(rd)
    assert view.poll() == "finished"
    text = render_text(view)
    assert "layout   2 processes · ddp" in text
    assert "final train loss 2.0000 · 2 processes · ddp" in text
    assert "peak memory per rank (predicted 1.00 GiB per process):" in text
    assert "rank 0 768 MiB · rank 1 1.25 GiB ⚠ past the plan" in text
    assert "RAM (process)" not in text  # no series mixing the two processes


def test_a_failed_rank_is_an_error_and_the_summary_still_lists_the_ranks(
    runs_dir: Path,
) -> None:
    message = (
        "rank 1 (pid 5151, node 0) was killed by SIGKILL at step 8: `kill -9`, or the OOM killer"
    )
    events = [
        *ddp_events(None, rank1_peak=0.9),
        Error(code="rank_failed", message=message, step=8, t=1009),
        RunFinished(state="failed", step=8, message=message, t=1010),
    ]
    rd = write_run(runs_dir, "ddp-failed", events, "failed")
    rd.log.write_text("rank 1 died\n")
    view = AttachView(rd)
    view.poll()
    text = " ".join(render_text(view, width=160).split())
    assert f"error rank_failed: {message}" in text
    assert "rank 0 768 MiB · rank 1 922 MiB" in text and "⚠" not in text
    assert attach(rd, console=Console(record=True, width=100, color_system=None)) == 1


def test_live_view_and_plain_lines(runs_dir: Path) -> None:
    rd = write_run(runs_dir, "ddp-live", ddp_events(None), "starting")  # its pid not known yet
    view = AttachView(rd)
    view.poll()
    text = render_text(view, now=1008.0)
    # while it runs: each rank's latest figure (rank 1 is back under the plan)
    assert "ranks    rank 0 768 MiB · rank 1 512 MiB" in text
    # its peak, though, was past the plan: the drift names the rank
    assert "drift: rank 1's process memory peaked at 1.25 GiB, past the predicted 1.00 GiB" in text
    assert "peak 1.25 GiB (predicted 1.00 GiB per process)" in text
    lines = PlainLines(view).lines(1008.0)
    assert lines[0] == "started: lora on cpu (2×ddp), 8 steps"
    # the samples are not lines of their own; the drift is said once, naming the rank
    assert lines[1:] == [
        "step 4/8 · loss 2.6000",
        "step 8/8 · loss 2.0000",
        "drift: rank 1's process memory peaked at 1.25 GiB, past the predicted 1.00 GiB per "
        "process",
    ]


def test_a_preflight_rank_peaks_stand_in_before_any_sample(runs_dir: Path) -> None:
    events = [
        *ddp_events(None)[:1],
        Preflight(device="cpu", measured_peak_bytes=GIB, rank_peaks=[GIB // 2, GIB], t=1001),
        RunFinished(state="stopped", step=0, message="stopped", t=1002),
    ]
    rd = write_run(runs_dir, "ddp-stopped", events, "stopped")
    view = AttachView(rd)
    view.poll()
    assert "rank 0 512 MiB · rank 1 1.00 GiB" in render_text(view)


def test_single_process_attach_is_unchanged(runs_dir: Path) -> None:
    events = [
        RunStarted(run_id="s", method="lora", device="cpu", total_steps=8, t=1000),
        SystemSample(step=4, ram_used=8 * GIB, ram_total=24 * GIB, process_rss=GIB, t=1004),
        TrainLog(step=8, loss=2.0, total_steps=8, t=1008),
        RunFinished(state="finished", step=8, t=1010),
    ]
    rd = write_run(runs_dir, "single", events, "finished", toml=SINGLE_TOML)
    view = AttachView(rd)
    view.poll()
    text = render_text(view)
    assert "RAM (process) 1.00/24.0 GiB" in text
    assert "layout" not in text and "per rank" not in text and "processes" not in text
    assert PlainLines(view).lines(1010.0)[0] == "started: lora on cpu, 8 steps"


def test_gpu_ranks_name_their_nodes(runs_dir: Path) -> None:
    events: list = [
        RunStarted(
            run_id="g",
            method="full",
            device="cuda",
            total_steps=8,
            predicted_peak_bytes=40 * GIB,
            world_size=4,
            nodes=2,
            strategy="fsdp",
            t=1000,
        )
    ]
    for rank in range(4):
        events.append(
            SystemSample(
                step=4,
                gpus=[GpuSample(index=rank % 2, memory_used=39 * GIB, memory_total=80 * GIB)],
                torch_peak=(30 + rank) * GIB,
                rank=rank,
                node=rank // 2,
                t=1004,
            )
        )
    events.append(RunFinished(state="finished", step=8, t=1010))
    rd = write_run(runs_dir, "fsdp-2n", events, "finished")
    view = AttachView(rd)
    view.poll()
    text = " ".join(render_text(view, width=160).split())
    assert "layout 4 processes on 2 nodes · fsdp" in text
    assert "(predicted 40.0 GiB per GPU)" in text
    assert "node 0 rank 0 30.0 GiB · node 0 rank 1 31.0 GiB · node 1 rank 2 32.0 GiB" in text


# -- affiner runs ----------------------------------------------------------------------------


def header(table: str) -> str:
    """The table's column names (the title above them names the runs folder)."""
    return next(line for line in table.splitlines() if " state " in line)


def test_runs_lists_the_layout_only_when_a_run_has_one(
    runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    single = write_run(runs_dir, "20260101-000000-lora-tiny-aaaa", [], "finished", SINGLE_TOML)
    assert main(["runs"]) == 0
    assert "layout" not in header(capsys.readouterr().out)
    write_run(runs_dir, "20260102-000000-lora-tiny-bbbb", ddp_events(None), "running")
    assert main(["runs"]) == 0
    table = capsys.readouterr().out
    assert "layout" in header(table) and "2×ddp" in table
    assert main(["runs", "--json"]) == 0
    data = {row["run_id"]: row for row in json.loads(capsys.readouterr().out)}
    ddp = data["20260102-000000-lora-tiny-bbbb"]
    assert (ddp["world_size"], ddp["nodes"], ddp["strategy"]) == (2, 1, "ddp")
    one = data[single.run_id]
    assert (one["world_size"], one["nodes"], one["strategy"]) == (1, 1, None)


def test_runs_screen_method_cell_carries_the_layout(runs_dir: Path) -> None:
    from affiner.runner.run import summarize

    ddp = write_run(runs_dir, "ddp-row", [], "running")
    single = write_run(runs_dir, "single-row", [], "running", SINGLE_TOML)
    rows = [
        RunRow(summary=summarize(rd), short_id=rd.run_id, settings=RunSettings.read(rd.path))
        for rd in (ddp, single)
    ]
    assert [method_text(row) for row in rows] == ["lora 2×ddp", "lora"]
