"""Logs that heal: a torn last line is ended before the next append, and no reader trusts a line.

A real ``kill -9`` of a process halfway through a line, then the resumed attempt's writer: its
``run_started`` must survive (it was glued onto the torn line and lost), the repair is recorded,
and the resume rule then shows no step twice. A write that fails half-way (a full disk,
injected) is healed by the next. Events and ``status.json`` values of the wrong type or range
are skipped with one warning per file, and every consumer (summarize, ``affiner runs``,
``affiner runs --json``, ``affiner attach``, the monitor's watcher and history) goes on.
"""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from affiner.runner.run.events import (
    EVENTS_FILE,
    LOG_REPAIRED,
    LOG_SKIPPED,
    STATUS_SKIPPED,
    EvalResult,
    EventReader,
    EventWriter,
    RunFinished,
    RunStarted,
    RunStatus,
    TrainLog,
    Warning_,
    effective_events,
    read_events,
    read_status,
    read_status_report,
    write_status,
)
from affiner.runner.run.rundir import RunDir
from affiner.runner.run.runs import list_runs, summarize
from affiner.tui.cli.attach import AttachView, PlainLines, attach
from affiner.tui.cli.entry import main
from affiner.tui.live import RunHistory
from affiner.tui.live.watcher import RunWatcher

REPO = Path(__file__).resolve().parents[1]

TORN_WRITER = """
import os, sys, time
sys.path.insert(0, {repo!r})
from affiner.runner.run.events import EventWriter, RunStarted, TrainLog
run_dir = sys.argv[1]
with EventWriter(run_dir) as writer:
    writer.write(RunStarted(total_steps=5, t=1000))
    for step in range(1, 6):
        writer.write(TrainLog(step=step, loss=3.0 - step / 10, total_steps=5, t=1000 + step))
fd = os.open(os.path.join(run_dir, "events.jsonl"), os.O_WRONLY | os.O_APPEND)
os.write(fd, {torn!r})  # the first part of step 6's line, then the kill
print("torn", flush=True)
time.sleep(60)
"""
TORN = b'{"t": 1006.0, "step": 6, "epoch": 0.0, "loss": 2.4'


def make_run(root: Path, run_id: str, lines: list[str] | None = None) -> RunDir:
    rd = RunDir(root / run_id)
    rd.path.mkdir(parents=True)
    rd.config.write_text('[model]\nname_or_path = "tiny"\n[method]\nname = "lora"\n')
    if lines is not None:
        rd.events.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return rd


def test_kill_9_mid_write_then_a_resume_keeps_its_first_event(runs_dir: Path) -> None:
    rd = make_run(runs_dir, "20260101-000000-lora-tiny-torn")
    code = TORN_WRITER.format(repo=str(REPO), torn=TORN)
    proc = subprocess.Popen([sys.executable, "-c", code, str(rd.path)], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"torn\n"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert not rd.events.read_bytes().endswith(b"\n")  # the log really is torn

    with EventWriter(rd.path) as writer:  # the resumed attempt, from the checkpoint of step 3
        writer.write(RunStarted(total_steps=5, resumed_from_step=3, t=2000))
        writer.write(TrainLog(step=4, loss=2.0, total_steps=5, t=2001))
        writer.write(TrainLog(step=5, loss=1.9, total_steps=5, t=2002))
        assert writer.repaired_bytes == len(TORN)

    reader = EventReader(rd.path)
    events = reader.read_new()
    repairs = [e for e in events if isinstance(e, Warning_) and e.code == LOG_REPAIRED]
    assert len(repairs) == 1 and f"({len(TORN)} bytes" in repairs[0].message
    assert [e.resumed_from_step for e in events if isinstance(e, RunStarted)] == [None, 3]
    steps = [e.step for e in effective_events(events) if isinstance(e, TrainLog)]
    assert steps == [1, 2, 3, 4, 5]  # no step twice: the resume rule saw its marker
    assert reader.skipped.count == 0  # the cut line is the repair's to report, not counted twice
    summary = summarize(rd)
    assert summary.step == 5 and summary.warnings == 1

    with EventWriter(rd.path) as writer:  # a whole log is left as it is
        writer.write(RunFinished(state="finished", step=5, t=2003))
        assert writer.repaired_bytes == 0
    assert len([e for e in read_events(rd.path) if getattr(e, "code", "") == LOG_REPAIRED]) == 1


class _FullDisk(io.RawIOBase):
    """The writer's file, on a disk that fills after `room` more bytes: the write that crosses
    it puts what fits on disk and fails with ENOSPC, as write(2) on a full file system does."""

    def __init__(self, real: io.FileIO, room: int) -> None:
        self.real, self.room = real, room

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.real.fileno()

    def write(self, data) -> int:  # type: ignore[no-untyped-def, override]
        if self.room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        part = bytes(data)[: self.room]
        self.room -= len(part)
        return self.real.write(part) or 0


def test_a_write_cut_by_a_full_disk_is_healed_by_the_next(tmp_path: Path) -> None:
    writer = EventWriter(tmp_path)
    writer.write(TrainLog(step=1, loss=2.0, t=1001))
    real = writer._file
    writer._file = _FullDisk(real, room=20)  # type: ignore[assignment]
    with pytest.raises(OSError, match="No space left"):
        writer.write(TrainLog(step=2, loss=1.9, t=1002))
    writer._file = real  # space was freed
    writer.write(TrainLog(step=3, loss=1.8, t=1003))
    writer.close()
    events = read_events(tmp_path)
    assert [e.step for e in events if isinstance(e, TrainLog)] == [1, 3]
    (repair,) = [e for e in events if isinstance(e, Warning_)]
    assert repair.code == LOG_REPAIRED and "(20 bytes" in repair.message


BAD_LINES = [
    '{"type": "run_started", "t": 1000, "run_id": "x", "model": "tiny", "method": "lora", "total_steps": 20}',
    '{"type": "train_log", "t": 1001, "step": 1, "loss": 2.5, "total_steps": 20}',
    '{"type": "train_log", "t": 1002, "step": "12", "loss": 2.4}',  # line 3: a string step
    '{"type": "eval", "t": 1003, "step": 1, "loss": -7}',  # an injected negative loss
    '{"type": "eval", "t": 1004, "step": 1, "loss": 2.6, "accuracy": 1.5}',
    '{"type": "train_log", "t": "yesterday", "step": 2, "loss": 2.3}',
    '{"type": "system", "t": 1005, "gpus": [{"index": "zero"}]}',
    '{"type": "run_finished", "t": 1006, "state": "exploded"}',
    '{"type": "warning", "t": 1007, "code": ["x"], "message": "m"}',
    '{"type": 7}',
    "[1, 2, 3]",
    "{not json",
    '{"type": "eval", "t": 1008, "step": 2, "loss": 2.2, "perplexity": 9.0}',
    '{"type": "train_log", "t": 1009, "step": 3.0, "loss": 2.1, "total_steps": 20}',
    '{"type": "some_future_event", "t": 1010}',  # unknown: left out, not counted
]


def test_events_that_do_not_fit_are_skipped_with_one_warning_and_no_consumer_raises(
    runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rd = make_run(runs_dir, "20260101-000000-lora-tiny-bad", BAD_LINES)
    write_status(rd.path, RunStatus(run_id=rd.run_id, state="failed", step=3, started=1000.0))
    make_run(runs_dir, "20260102-000000-lora-tiny-good", BAD_LINES[:2])

    reader = EventReader(rd.path)
    events = reader.read_new()
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["RunStarted", "TrainLog", "EvalResult", "TrainLog"]
    assert events[-1].step == 3 and isinstance(events[-1].step, int)  # 3.0 reads as step 3
    assert reader.skipped.count == 10 and reader.skipped.first_line == 3
    warning = reader.skipped.warning()
    assert warning is not None and warning.code == LOG_SKIPPED
    assert warning.message.startswith("10 lines of events.jsonl were skipped (")
    assert "first at line 3: 'step' is '12', not a whole number" in warning.message
    assert "1 not JSON" in warning.message and "with a bad 'loss'" in warning.message

    summary = summarize(rd)
    assert summary.best_eval_loss == 2.2  # the injected -7 is not the best evaluation
    assert summary.warnings == 1  # one warning for all the skipped lines
    assert [s.run_id for s in list_runs()] == [
        "20260102-000000-lora-tiny-good",
        "20260101-000000-lora-tiny-bad",
    ]

    assert main(["runs", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(r["state"], r["warnings"]) for r in data] == [("interrupted", 0), ("failed", 1)]
    assert main(["runs"]) == 0
    assert "Traceback" not in capsys.readouterr().err

    assert main(["attach", rd.run_id]) == 1  # a failed run: its summary, exit 1
    out = capsys.readouterr().out
    assert "1 warning" in out and "10 lines of events.jsonl were skipped" in out

    watcher = RunWatcher(rd)
    history = RunHistory(run_id=rd.run_id)
    history.add(watcher.poll().events)
    with open(rd.events, "a", encoding="utf-8") as handle:  # more bad lines arrive
        handle.write('{"type": "train_log", "t": 1011, "step": -1}\n')
        handle.write('{"type": "train_log", "t": 1012, "step": 4, "loss": 2.0}\n')
    history.add(watcher.poll().events)
    skips = [w for w in history.warnings if w.code == LOG_SKIPPED]
    assert len(skips) == 1 and skips[0].message.startswith("11 lines")  # one, the latest
    assert history.step == 4 and history.best_eval is not None and history.best_eval.loss == 2.2
    assert summarize(rd).warnings == 1 == len(history.warnings)


def test_a_status_json_of_the_wrong_types_is_read_value_by_value(
    runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = make_run(runs_dir, "20260102-000000-lora-tiny-good", BAD_LINES[:2])
    write_status(good.path, RunStatus(run_id=good.run_id, state="stopped", started=2000.0))
    rd = make_run(runs_dir, "20260101-000000-lora-tiny-status", BAD_LINES[:2])
    bad = {
        "run_id": ["not", "a", "name"],
        "state": "stopped",
        "pid": "1234",
        "step": "12",
        "total_steps": 20,
        "epoch": None,
        "updated": 1e30,
        "started": 1000.0,
        "best_eval_loss": -7,
        "message": {"text": "hi"},
    }
    rd.status.write_text(json.dumps(bad))
    report = read_status_report(rd.path)
    status = report.status
    assert status is not None
    assert (status.run_id, status.state, status.pid, status.step, status.total_steps) == (
        rd.run_id,
        "stopped",
        None,
        0,
        20,
    )
    assert status.best_eval_loss is None and status.message == "" and status.started == 1000.0
    assert len(report.problems) == 7
    assert "'best_eval_loss' is -7, below 0" in report.problems

    assert main(["runs", "--json"]) == 0  # every run is listed, the damaged one too
    data = json.loads(capsys.readouterr().out)
    assert [(r["run_id"], r["state"]) for r in data] == [
        (good.run_id, "stopped"),
        (rd.run_id, "stopped"),
    ]
    assert main(["runs"]) == 0
    capsys.readouterr()

    view = AttachView(rd)
    assert view.poll() == "stopped"
    lines = PlainLines(view).lines(time.time())
    assert any(line.startswith(f"warning {STATUS_SKIPPED}: status.json") for line in lines)
    console = Console(file=io.StringIO(), width=120, color_system=None)
    assert attach(rd, console=console) == 0

    for content in ("[1, 2]", "{not json", '{"state": "running"}', ""):
        rd.status.write_text(content)
        assert read_status(rd.path) is None  # no usable status: the events tell the state
        assert summarize(rd).state == "interrupted"
        assert main(["runs", "--json"]) == 0
        assert len(json.loads(capsys.readouterr().out)) == 2
    os.chmod(rd.status, 0)
    try:
        assert summarize(rd).state in ("interrupted", "stopped")  # (root can still read it)
    finally:
        os.chmod(rd.status, 0o600)


def test_the_incremental_tally_counts_skipped_lines_as_a_full_read_does(runs_dir: Path) -> None:
    from affiner.runner.run import tally

    rd = make_run(runs_dir, "20260101-000000-lora-tiny-tally", BAD_LINES[:3])
    assert summarize(rd).warnings == 1
    with open(rd.events, "a", encoding="utf-8") as handle:
        handle.write("\n".join(BAD_LINES[3:]) + "\n")
    incremental = summarize(rd)
    tally._cursors.clear()
    full = summarize(rd)
    assert (incremental.warnings, incremental.best_eval_loss, incremental.step) == (
        full.warnings,
        full.best_eval_loss,
        full.step,
    )
    assert tally.tally_events(rd.events).skipped.count == 10
    # an eval of a language model keeps its perplexity however large, an accuracy stays a share
    with EventWriter(rd.path) as writer:
        writer.write(EvalResult(step=9, loss=60.0, perplexity=1.1e26, t=1100))
    assert [e.perplexity for e in read_events(rd.path) if isinstance(e, EvalResult)][-1] == 1.1e26
    assert rd.events.name == EVENTS_FILE


def test_the_foreground_follower_says_in_one_line_what_it_skipped(runs_dir: Path) -> None:
    from affiner.runner.run.follow import Follower

    rd = make_run(runs_dir, "20260101-000000-lora-tiny-follow", [])
    out = io.StringIO()
    follower = Follower(rd, out)
    with open(rd.events, "a", encoding="utf-8") as handle:
        handle.write("\n".join(BAD_LINES[:4]) + "\n")
    follower.pump()
    follower.pump()  # nothing new: nothing said again
    lines = out.getvalue().splitlines()
    assert lines[:2] == [
        "[affiner] started: lora on auto, 20 steps, 0 training rows",
        "[affiner] step 1/20  epoch 0.00  loss 2.5000",
    ]
    (warning,) = lines[2:]
    assert warning.startswith("[affiner] WARNING log_skipped: 2 lines of events.jsonl were skipped")
