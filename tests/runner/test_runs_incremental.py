"""affiner.runner.run.runs.summarize reads events.jsonl incrementally, with the same result as a full read.

Each check copies the run folder to a fresh path (so nothing is cached for it) and compares the
incrementally built summary with the one read from scratch, and its key figures with a plain
list-based computation that shares no code with the tally.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from affiner.runner.run.events import (
    Checkpoint,
    EvalResult,
    Event,
    RunFinished,
    RunStarted,
    SystemSample,
    TrainLog,
    Warning_,
    effective_events,
    event_from_dict,
)
from affiner.runner.run.runs import RunSummary, summarize
from affiner.runner.run.tally import tally_events

NOW = 10_000.0
TOML = '[model]\nname_or_path = "/models/tiny"\n\n[method]\nname = "lora"\n'


def line(event: Event) -> bytes:
    return (json.dumps(event.to_dict()) + "\n").encode()


def history() -> list[Event]:
    """Two attempts: the first reaches step 8 and fails; the second resumes from step 4."""
    events: list[Event] = [RunStarted(run_id="r", pid=0, total_steps=12, t=1000)]
    for step in range(1, 9):
        events.append(TrainLog(step=step, loss=3.0 - step * 0.1, total_steps=12, t=1000 + step))
        events.append(SystemSample(step=step, ram_used=step, t=1000.5 + step))
        if step % 2 == 0:
            events.append(EvalResult(step=step, loss=2.9 - step * 0.1, perplexity=9.0, t=1001))
            events.append(Checkpoint(step=step, path=f"checkpoints/checkpoint-{step}", t=1001))
    events.append(Warning_(code="nan_loss", message="nan", step=8, t=1010))
    events.append(RunFinished(state="failed", step=8, message="nan", t=1011))
    events.append(RunStarted(run_id="r", pid=0, total_steps=12, resumed_from_step=4, t=2000))
    for step in range(5, 11):
        events.append(TrainLog(step=step, loss=2.8 - step * 0.05, total_steps=12, t=2000 + step))
    events.append(EvalResult(step=10, loss=2.0, perplexity=7.4, t=2011))
    events.append(Warning_(code="slow", message="slow", t=2012))
    return events


def fresh_summary(rd: Path, tmp_path: Path, tag: str) -> RunSummary:
    """The same folder read from scratch: copied under a path nothing has cached."""
    copy = tmp_path / f"fresh-{tag}" / rd.name
    shutil.copytree(rd, copy)
    return replace(summarize(copy, now=NOW), path=rd)


def by_hand(data: bytes) -> tuple[int, int, float | None, int | None]:
    """(step, warnings, best eval loss, last checkpoint step) from the complete lines of `data`,
    with the resume rule applied to a plain list: a reference that shares no code with the
    incremental tally."""
    complete = data[: data.rfind(b"\n") + 1].decode()
    parsed = [event_from_dict(json.loads(text)) for text in complete.splitlines()]
    events = effective_events([e for e in parsed if e is not None])
    steps = [e.step for e in events if isinstance(e, TrainLog)]
    losses = [e.loss for e in events if isinstance(e, EvalResult) and e.loss is not None]
    checkpoints = [e.step for e in events if isinstance(e, Checkpoint)]
    return (
        max(steps, default=0),
        sum(1 for e in events if isinstance(e, Warning_)),
        min(losses, default=None),
        max(checkpoints, default=None),
    )


def new_run(tmp_path: Path) -> Path:
    rd = tmp_path / "runs" / "20260101-000000-lora-tiny-abcd"
    rd.mkdir(parents=True)
    (rd / "run.toml").write_text(TOML)
    (rd / "events.jsonl").write_bytes(b"")
    return rd


def test_chunks_with_a_torn_line_and_a_resume_match_a_full_read(tmp_path: Path) -> None:
    rd = new_run(tmp_path)
    data = b"".join(line(e) for e in history())
    # Cut every 97 bytes (so most lines are torn by one chunk and completed by the next), and
    # around the resume marker: just before its line, at its start and inside it.
    marker = data.index(b'"resumed_from_step": 4')
    marker_line = data.rindex(b"\n", 0, marker) + 1
    cuts = sorted({*range(0, len(data), 97), marker_line - 1, marker_line, marker + 3, len(data)})
    for index, (start, end) in enumerate(itertools.pairwise(cuts)):
        with open(rd / "events.jsonl", "ab") as handle:
            handle.write(data[start:end])
        incremental = summarize(rd, now=NOW)
        assert incremental == fresh_summary(rd, tmp_path, str(index)), f"after byte {end}"
        got = (
            incremental.step,
            incremental.warnings,
            incremental.best_eval_loss,
            incremental.last_checkpoint_step,
        )
        assert got == by_hand(data[:end]), f"after byte {end}"
    final = summarize(rd, now=NOW)
    # The resume rule applied: steps 5-8 of the failed attempt and its ending are gone.
    assert (final.step, final.last_loss, final.warnings) == (10, pytest.approx(2.3), 1)
    assert (final.best_eval_loss, final.best_metric) == (2.0, 7.4)
    assert final.last_checkpoint_step == 4 and final.state == "interrupted"


def test_a_torn_line_is_not_consumed(tmp_path: Path) -> None:
    rd = new_run(tmp_path)
    events = rd / "events.jsonl"
    events.write_bytes(line(RunStarted(run_id="r", t=1000)))
    assert summarize(rd, now=NOW).step == 0  # read once: what follows is read incrementally
    whole = line(TrainLog(step=3, loss=1.5, t=1003))
    for part in (whole[:20], whole[20:21], whole[21:]):
        with open(events, "ab") as handle:
            handle.write(part)
        summary = summarize(rd, now=NOW)
    assert (summary.step, summary.last_loss) == (3, 1.5)


def test_appending_updates_without_rereading(tmp_path: Path) -> None:
    rd = new_run(tmp_path)
    events = rd / "events.jsonl"
    events.write_bytes(line(RunStarted(run_id="r", t=1000)) + line(TrainLog(step=1, t=1001)))
    first = tally_events(events)
    assert tally_events(events) is first  # nothing new: the cached tally as it was
    with open(events, "ab") as handle:
        handle.write(line(TrainLog(step=2, loss=0.5, t=1002)))
    second = tally_events(events)
    assert second is not first and first.latest_log.step == 1  # (handed-out tallies stay put)
    assert (second.latest_log.step, second.first_started) == (2, first.first_started)


def test_truncated_or_replaced_logs_are_read_again(tmp_path: Path) -> None:
    rd = new_run(tmp_path)
    events = rd / "events.jsonl"
    long_run = [RunStarted(run_id="r", t=1000)] + [
        TrainLog(step=s, loss=1.0 / s, t=1000 + s) for s in range(1, 30)
    ]
    events.write_bytes(b"".join(line(e) for e in long_run))
    assert summarize(rd, now=NOW).step == 29

    # Truncated in place (same inode, shorter): read from the start.
    with open(events, "r+b") as handle:
        handle.truncate(len(line(long_run[0])) + len(line(long_run[1])))
    assert summarize(rd, now=NOW).step == 1

    # Replaced by a longer file with another inode.
    other = rd / "events.new"
    other.write_bytes(b"".join(line(e) for e in long_run[:5]) + line(Warning_(code="x", t=1)))
    os.replace(other, events)
    summary = summarize(rd, now=NOW)
    assert (summary.step, summary.warnings) == (4, 1)

    # Rewritten in place, same inode, no shorter: the bytes before the offset changed.
    rewritten = b"".join(line(e) for e in long_run[:5]).replace(b'"step": 4', b'"step": 7')
    rewritten += line(TrainLog(step=8, t=2000))
    with open(events, "r+b") as handle:
        handle.write(rewritten)
    assert summarize(rd, now=NOW) == fresh_summary(rd, tmp_path, "rewritten")
    assert summarize(rd, now=NOW).warnings == 0

    # Only its first line changed (as when a run folder is made again and the new log gets
    # the old inode number): the end still matches, the start does not.
    first = events.read_bytes()
    with open(events, "r+b") as handle:
        handle.write(line(RunStarted(run_id="r", t=1001)))
    assert events.read_bytes()[-64:] == first[-64:]
    assert summarize(rd, now=NOW).started == 1001

    # Gone: nothing cached is used.
    events.unlink()
    assert summarize(rd, now=NOW).step == 0
