"""`affiner attach` through a run's silent phases: a live countdown line in the terminal view,
and plain flushed lines (per log, per phase, per tenth of a phase) when the output is a pipe."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from rich.console import Console

from affiner.runner.run.events import (
    EvalResult,
    EventWriter,
    Progress,
    RunFinished,
    RunStarted,
    RunStatus,
    TrainLog,
    write_status,
)
from affiner.runner.run.rundir import RunDir
from affiner.tui.cli.attach import AttachView, PlainLines


def _live_run(root: Path, run_id: str = "live") -> tuple[RunDir, EventWriter]:
    """A run folder whose worker has not written its pid yet: `attach` follows it as live."""
    rd = RunDir(root / run_id)
    rd.path.mkdir(parents=True)
    rd.config.write_text('[model]\nname_or_path = "tiny"\n[method]\nname = "lora"\n')
    write_status(rd.path, RunStatus(run_id=run_id, state="starting", started=time.time()))
    return rd, EventWriter(rd.path)


def _text(view: AttachView, now: float) -> str:
    console = Console(record=True, width=110, color_system=None)
    console.print(view.render(now=now))
    return console.export_text()


def test_the_live_view_counts_the_base_evaluation_down(runs_dir: Path) -> None:
    rd, writer = _live_run(runs_dir)
    with writer:
        writer.write(Progress(step=0, phase="base_eval", done=1, total=200, t=100.0))
        writer.write(Progress(step=0, phase="base_eval", done=41, total=200, t=120.0))
    view = AttachView(rd)
    assert view.poll() == "starting"
    text = _text(view, 120.0)
    assert "now " in text and "evaluating the base model · 41 of 200 batches · ~80 s left" in text
    assert "~60 s left" in _text(view, 140.0)  # between events, with the clock
    with EventWriter(rd.path) as more:
        more.write(EvalResult(step=0, loss=2.0, t=200.0))
        more.write(RunStarted(run_id="live", total_steps=10, t=201.0))
    view.poll()
    assert "evaluating" not in _text(view, 202.0)  # the result closed the phase


def test_plain_lines_say_each_phase_once_and_again_at_each_tenth(runs_dir: Path) -> None:
    rd, writer = _live_run(runs_dir)
    view = AttachView(rd)
    plain = PlainLines(view)

    def poll(*events, now: float) -> list[str]:
        for event in events:
            writer.write(event)
        view.poll()
        return plain.lines(now)

    assert poll(Progress(step=0, phase="base_eval", done=1, total=100, t=1.0), now=1.0) == [
        "evaluating the base model · 1 of 100 batches · 0 s so far"
    ]
    assert poll(Progress(step=0, phase="base_eval", done=5, total=100, t=2.0), now=2.0) == []
    (line,) = poll(Progress(step=0, phase="base_eval", done=12, total=100, t=3.0), now=3.0)
    assert line.startswith("evaluating the base model · 12 of 100 batches · ~")
    assert poll(now=4.0) == []  # nothing new: nothing printed, although the clock moved
    lines = poll(
        EvalResult(step=0, loss=2.5, t=5.0),
        RunStarted(run_id="live", method="lora", device="cpu", total_steps=20, t=6.0),
        TrainLog(step=10, loss=2.0, total_steps=20, eta_seconds=30.0, t=7.0),
        Progress(step=10, phase="eval", done=1, total=4, t=8.0),
        now=8.0,
    )
    assert lines == [
        "eval of the base model · eval loss 2.5000",
        "started: lora on cpu, 20 steps",
        "step 10/20 · loss 2.0000 · ETA 30 s",
        # no pace of its own yet: the base evaluation took 4 s (first batch to result)
        "evaluating at step 10 · 1 of 4 batches · ~4.0 s left",
    ]
    writer.close()


def test_attach_into_a_pipe_writes_flushed_lines_while_the_run_goes(runs_dir: Path) -> None:
    rd, writer = _live_run(runs_dir, "piped")
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "100"}
    command = "from affiner.tui.cli.entry import main; raise SystemExit(main())"
    proc = subprocess.Popen(
        [sys.executable, "-c", command, "attach", str(rd.path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines: list[str] = []
    seen = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if "evaluating the base model" in line:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        writer.write(Progress(step=0, phase="base_eval", done=1, total=50))
        # the line comes while the run is still going: written and flushed, not held to the end
        assert seen.wait(30), f"no phase line from attach: {lines}"
        writer.write(EvalResult(step=0, loss=2.0))
        writer.write(RunStarted(run_id="piped", method="lora", device="cpu", total_steps=4))
        writer.write(TrainLog(step=4, loss=1.5, total_steps=4, eta_seconds=0.0))
        writer.write(RunFinished(state="finished", step=4, message="Training finished."))
        write_status(rd.path, RunStatus(run_id="piped", state="finished", step=4, total_steps=4))
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        writer.close()
    reader.join(5)
    assert lines[0].startswith("evaluating the base model · 1 of 50 batches · ")
    assert lines[0].endswith(" so far")  # one event: no pace yet, the time it has taken
    assert "eval of the base model · eval loss 2.0000" in lines
    assert "step 4/4 · loss 1.5000 · ETA 0 s" in lines
    assert any("finished" in line for line in lines[-6:])  # the summary closes the output
    assert not any("\x1b[" in line for line in lines)  # no cursor movement, no colour
