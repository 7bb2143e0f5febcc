"""The first read of a log (a fresh ``affiner runs``) gives the same tally and rows as a full parse.

A first read recognises train logs, system samples and progress lines in the writer's own form
by a pattern (`affiner.runner.run.canonical_lines`) instead of decoding each. Here every log is
also folded the plain way (every line decoded with `decode_lines`, the resume rule applied to
the list, every event absorbed), and the two tallies, and the summaries built on them, must be
equal: on torn lines, resumed runs, failed runs, runs without events, hand-edited lines and
values the schema refuses.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import pytest

from affiner.runner.run import runs as runs_module
from affiner.runner.run import tally as tally_module
from affiner.runner.run.canonical_lines import event_lines_pattern
from affiner.runner.run.events import (
    Checkpoint,
    EvalResult,
    Event,
    EventReader,
    EventWriter,
    GpuSample,
    Progress,
    RunFinished,
    RunStarted,
    RunStatus,
    SchemaError,
    SkippedLines,
    SystemSample,
    TrainLog,
    Warning_,
    decode_lines,
    effective_events,
    parse_event,
    write_status,
)
from affiner.runner.run.runs import RunSummary, summarize
from affiner.runner.run.tally import EventTally, tally_events

NOW = 1.8e9
TOML = '[model]\nname_or_path = "/models/tiny"\n\n[method]\nname = "lora"\n'


def full_parse(path: Path) -> EventTally:
    """The tally as a plain full read makes it: every complete line decoded, then folded."""
    tally = EventTally()
    try:
        data = path.read_bytes()
    except OSError:
        return tally
    complete, newline, _torn = data.rpartition(b"\n")
    if not newline:
        return tally
    lines = complete.split(b"\n")
    events = decode_lines(lines, 1, tally.skipped)
    tally.lines = len(lines)
    for event in effective_events(events):
        tally.absorb(event)
    return tally


def write(path: Path, events: list[Event], *, extra: dict[int, bytes] | None = None) -> Path:
    """A run folder whose log holds `events` as the writer writes them, with `extra` raw lines
    put in before the event of that index (hand edits, bad values, torn lines)."""
    path.mkdir(parents=True)
    (path / "run.toml").write_text(TOML)
    with open(path / "events.jsonl", "wb") as handle:
        for index, event in enumerate(events):
            if extra and index in extra:
                handle.write(extra[index])
            handle.write((json.dumps(event.to_dict(), allow_nan=False) + "\n").encode())
    return path


def attempt(first: int, last: int, *, t0: float, resumed: int | None = None) -> list[Event]:
    """One attempt's events: train logs, samples (with GPUs every other), progress and evals."""
    events: list[Event] = [
        RunStarted(run_id="r", pid=0, total_steps=40, resumed_from_step=resumed, t=t0)
    ]
    for step in range(first, last + 1):
        t = t0 + step
        loss = None if step % 7 == 0 else 3.0 - step * 0.03
        events.append(TrainLog(step=step, loss=loss, learning_rate=1e-05, total_steps=40, t=t))
        gpus = [GpuSample(index=0, memory_used=step * 2**20, power_w=71.5)] if step % 2 else []
        events.append(SystemSample(step=step, gpus=gpus, ram_used=step, cpu_percent=50.0, t=t))
        if step % 5 == 0:
            events.append(Progress(phase="eval", step=step, done=1, total=2, t=t))
            events.append(EvalResult(step=step, loss=2.9 - step * 0.02, perplexity=9.0, t=t))
            events.append(Checkpoint(step=step, path=f"checkpoints/checkpoint-{step}", t=t))
    return events


def same(path: Path) -> EventTally:
    """Assert the first read equals the full parse, and return it."""
    tally_module._cursors.clear()
    fast = tally_events(path / "events.jsonl")
    assert fast == full_parse(path / "events.jsonl")
    return fast


def test_a_plain_run_matches_and_most_lines_take_the_pattern(tmp_path: Path) -> None:
    events = [*attempt(1, 20, t0=1000.0), RunFinished(state="finished", step=20, t=1100.0)]
    rd = write(tmp_path / "plain", events)
    tally = same(rd)
    assert tally.latest_log is not None and tally.latest_log.step == 20
    assert tally.last_loss == pytest.approx(3.0 - 20 * 0.03)
    pattern = event_lines_pattern((TrainLog, SystemSample, Progress))
    assert pattern is not None
    framed = b"\n" + (rd / "events.jsonl").read_bytes()
    # every train log, sample (with and without GPUs) and progress line is recognised
    assert len(pattern.findall(framed)) == 20 + 20 + 4


def test_resumed_failed_and_torn_runs_match(tmp_path: Path) -> None:
    first = [
        *attempt(1, 18, t0=1000.0),
        Warning_(code="nan_loss", message="nan", step=18, t=1019.0),
        RunFinished(state="failed", step=18, message="nan", t=1020.0),
    ]
    second = attempt(11, 25, t0=2000.0, resumed=10)
    third = attempt(21, 30, t0=3000.0, resumed=20)
    events = first + second + third
    torn = b'{"t": 1500.0, "step": 3, "epoch": 0.1, "lo'  # cut by a kill, ended by the next write
    repaired = Warning_(code="log_repaired", message="cut", t=1999.0)
    rd = write(
        tmp_path / "resumed", [*events[:40], repaired, *events[40:]], extra={40: torn + b"\n"}
    )
    tally = same(rd)
    assert tally.latest_log is not None and tally.latest_log.step == 30
    assert tally.finished is None  # the failure belongs to an attempt that was resumed
    # the torn line is the one the log_repaired warning reports, not a skipped line as well;
    # the nan_loss warning at step 18 went with the training the resume from step 10 redid
    assert tally.skipped.count == 0 and tally.warnings == 1
    # a torn last line (a writer mid-line) is left for later, as a full read leaves it
    with open(rd / "events.jsonl", "ab") as handle:
        handle.write(b'{"t": 4000.0, "step": 31, "epoch": 0.')
    assert same(rd).latest_log == tally.latest_log


def test_hand_edits_and_values_the_schema_refuses(tmp_path: Path) -> None:
    log = TrainLog(step=4, loss=2.5, total_steps=40, t=1004.0).to_dict()
    bad_values = {"step": "4", "loss": -1.0, "t": 2e11, "total_steps": 2**60, "epoch": True}
    extra: dict[int, bytes] = {}
    for index, (key, value) in enumerate(bad_values.items(), start=3):
        extra[index * 4] = (json.dumps({**log, key: value}) + "\n").encode()
    extra[30] = (json.dumps(log, indent=None, separators=(",", ":")) + "\n").encode()  # compact
    extra[31] = (json.dumps({**log, "newer_field": 1}) + "\n").encode()  # a newer writer
    extra[32] = b"\n   \n"  # blank lines
    extra[33] = b"not json at all\n"
    extra[34] = (json.dumps({**log, "loss": 1e300, "grad_norm": 5e-324}) + "\n").encode()
    phase = Progress(phase='eval "quoted" \u00e9', step=9, done=0, total=0, t=1009.0)
    extra[35] = (json.dumps(phase.to_dict()) + "\n").encode()
    rd = write(tmp_path / "edited", attempt(1, 20, t0=1000.0), extra=extra)
    tally = same(rd)
    assert tally.skipped.count == len(bad_values) + 2  # 1e300 is above the loss ceiling
    assert tally.warnings == 1


PATTERN = event_lines_pattern((TrainLog, SystemSample, Progress), captured=("t", "step", "loss"))


def _match(line: bytes) -> re.Match[bytes] | None:
    """The pattern's match of exactly this one line, as the reader frames it."""
    assert PATTERN is not None
    found = PATTERN.match(b"\n" + line + b"\n")
    return found if found is not None and found.end() == len(line) + 1 else None


def test_every_line_the_writer_writes_is_matched_with_its_values() -> None:
    rng = random.Random(14)
    floats = [0.0, 1.0, 0.5, 1e-05, 3.4e-12, 12345.678, 9.5e15, 5e-324]
    ints = [0, 1, 7, 2**40, 10**15 - 1]
    for _ in range(500):
        t = rng.choice((1e9, 1700000000.25, 5.0, 99999999999.5))
        loss = rng.choice([None, *floats])
        events: list[Event] = [
            TrainLog(
                t=t,
                step=rng.choice(ints),
                epoch=rng.choice(floats),
                loss=loss,
                learning_rate=rng.choice([None, *floats]),
                total_steps=rng.choice(ints),
            ),
            SystemSample(
                t=t,
                step=rng.choice(ints),
                gpus=[GpuSample(index=i, memory_used=rng.choice(ints)) for i in range(2)],
                ram_total=rng.choice([None, *ints]),
                cpu_percent=rng.choice([None, *floats]),
            ),
            Progress(t=t, step=rng.choice(ints), phase=rng.choice(("eval", "save", "")), done=3),
        ]
        for event in events:
            line = json.dumps(event.to_dict(), allow_nan=False).encode()
            found = _match(line)
            assert found is not None, line
            assert found.lastgroup == event.type
            assert float(found[f"{event.type}_t"]) == event.t
            assert int(found[f"{event.type}_step"]) == event.step  # type: ignore[attr-defined]
            if isinstance(event, TrainLog) and event.loss is not None:
                assert float(found["train_log_loss"]) == event.loss


def test_a_matched_line_always_fits_the_schema() -> None:
    """Random values, many of them refused by the schema, in the writer's form: whatever the
    pattern matches, `parse_event` accepts (the fast path never counts a bad line as good)."""
    rng = random.Random(15)
    values = [0, 1, 0.5, 1e-05, 1e17, 9.9e17, 1e18, 2e18, 1e11, 1.5e11, 2**53, 2**53 + 1]
    values += [-1, -0.0, -2.5, 10**20, True, False, "3", "", None, [], {}]
    matched = refused = 0
    for _ in range(2000):
        kind = rng.choice((TrainLog, SystemSample, Progress))
        data = kind().to_dict()
        for key in rng.sample([k for k in data if k != "type"], 2):
            data[key] = rng.choice(values)
        line = json.dumps(data).encode()
        try:
            fits = parse_event(json.loads(line)) is not None
        except SchemaError:
            fits = False
        if _match(line) is not None:
            matched += 1
            assert fits, line
        refused += not fits
    assert matched > 20 and refused > 500


@pytest.mark.parametrize("case", ["no events", "empty log", "only a torn line", "no status"])
def test_rows_match_for_damaged_and_empty_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    rd = tmp_path / case.replace(" ", "-")
    rd.mkdir()
    (rd / "run.toml").write_text(TOML)
    if case == "empty log":
        (rd / "events.jsonl").write_bytes(b"")
    elif case == "only a torn line":
        (rd / "events.jsonl").write_bytes(b'{"t": 1.0, "type": "train_')
    elif case == "no status":
        write(tmp_path / "tmp", attempt(1, 9, t0=1000.0))
        shutil.move(tmp_path / "tmp" / "events.jsonl", rd / "events.jsonl")
    if case != "no status":
        write_status(rd, RunStatus(run_id=rd.name, state="failed", message="boom"))
    same(rd)
    assert_rows_match(rd, monkeypatch)


def assert_rows_match(rd: Path, monkeypatch: pytest.MonkeyPatch) -> RunSummary:
    tally_module._cursors.clear()
    fast = summarize(rd, now=NOW)
    with monkeypatch.context() as patch:
        patch.setattr(runs_module, "tally_events", full_parse)
        slow = summarize(rd, now=NOW)
    assert fast.to_dict() == slow.to_dict()
    return fast


def test_rows_of_resumed_and_failed_runs_match(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failed = write(
        tmp_path / "failed",
        [*attempt(1, 12, t0=1000.0), RunFinished(state="failed", step=12, message="oom", t=1013)],
    )
    write_status(failed, RunStatus(run_id="failed", state="failed", message="oom", step=12))
    summary = assert_rows_match(failed, monkeypatch)
    assert summary.state == "failed" and summary.best_eval_loss is not None
    resumed = write(
        tmp_path / "resumed", attempt(1, 12, t0=1000.0) + attempt(6, 20, t0=2000.0, resumed=5)
    )
    summary = assert_rows_match(resumed, monkeypatch)  # no status: the events tell the state
    assert summary.step == 20 and summary.state == "interrupted"


def test_appending_after_a_first_read_matches_a_full_read(tmp_path: Path) -> None:
    """The incremental read goes through the same pieces: appended runs of lines, and a resume
    appended later that cuts counted steps (which starts the read over)."""
    rd = write(tmp_path / "live", attempt(1, 10, t0=1000.0))
    tally_module._cursors.clear()
    tally_events(rd / "events.jsonl")
    with EventWriter(rd) as writer:
        for event in attempt(11, 15, t0=1000.0)[1:]:
            writer.write(event)
    assert tally_events(rd / "events.jsonl") == full_parse(rd / "events.jsonl")
    with EventWriter(rd) as writer:
        for event in attempt(9, 12, t0=3000.0, resumed=8):
            writer.write(event)
    after = tally_events(rd / "events.jsonl")
    assert after == full_parse(rd / "events.jsonl")
    assert after.latest_log is not None and after.latest_log.step == 12
    assert after == same(rd)


def test_the_event_reader_gives_the_events_of_a_full_decode(tmp_path: Path) -> None:
    """`EventReader` builds writer-form lines from their match: the same events, skipped-line
    notes and line count as decoding every line, read whole or in pieces as a log grows."""
    log = TrainLog(step=4, loss=2.5, total_steps=40, t=1004.0).to_dict()
    extra = {
        5: (json.dumps({**log, "loss": -1.0}) + "\n").encode(),
        9: b"\n",
        14: (json.dumps({**log, "loss": 3}) + "\n").encode(),  # an int where a float goes
        20: b'{"t": 1.0, "type": "train_lo\n',
    }
    events = [*attempt(1, 12, t0=1000.0), *attempt(6, 20, t0=2000.0, resumed=5)]
    rd = write(tmp_path / "reader", events, extra=extra)
    data = (rd / "events.jsonl").read_bytes()
    expected_skipped = SkippedLines()
    lines = data.rstrip(b"\n").split(b"\n")
    expected = decode_lines(lines, 1, expected_skipped)
    whole = EventReader(rd)
    assert whole.read_new() == expected
    assert whole.skipped == expected_skipped and whole.bad_lines == 2  # -1 and the cut line
    # the same log grown a few lines at a time, cut mid-line
    (tmp_path / "grown").mkdir()
    grown, got = EventReader(tmp_path / "grown"), []
    for start in range(0, len(data), 997):
        with open(tmp_path / "grown" / "events.jsonl", "ab") as handle:
            handle.write(data[start : start + 997])
        got.extend(grown.read_new())
    assert got == expected and grown.skipped == expected_skipped
