"""A run's event log folded incrementally: what `affiner.runner.run.runs.summarize` reads, without re-reading.

The TUI's runs screen (and a ``watch affiner runs`` loop) summarise every run again and again, and a
long run's ``events.jsonl`` holds tens of thousands of lines. So a module-level cache keeps,
per events file, its identity (device and inode), the offset just past its last complete
line, its first bytes and the bytes just before that offset, and the folded state
(`EventTally`); the next call reads only what was appended since.

It starts over from the first byte when the file shrank, changed inode, or its first bytes or
those before the offset changed (a rewritten or replaced log; a run folder deleted and made
again, whose new log may get the old inode number, starts with a new ``run_started`` time), and when a new ``run_started`` resumes from
a step earlier than events already counted (the resume rule of `affiner.runner.run.events` drops those,
see `affiner.runner.run.events.effective_events`). A torn last line (a writer mid-line) is not consumed:
the offset stays after the last newline, and the line is read whole on a later call.

Folding the effective events in order gives the same figures as a full read, because every
figure here is a left fold (last, count, max, strict minimum); tests compare the two.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

from affiner.runner.run.events import (
    FILE_WARNINGS,
    LOG_SKIPPED,
    Checkpoint,
    EvalResult,
    Event,
    RunFinished,
    RunStarted,
    SkippedLines,
    TrainLog,
    Warning_,
    decode_lines,
    effective_events,
    has_class_metrics,
)

#: Bytes kept from the start and from just before the read offset, to notice a log rewritten
#: in place or replaced by one that reuses the inode number.
TAIL_BYTES = 64
#: Event logs whose tallies are kept (the least recently read is dropped past this).
MAX_CACHED_LOGS = 1024


@dataclass
class EventTally:
    """What `summarize` needs from an event log, folded one event at a time (`absorb`).

    Folding the effective events (`affiner.runner.run.events.effective_events`) in order gives the same
    figures as reading the whole list, which is what lets the log be read incrementally.
    """

    first_started: RunStarted | None = None
    last_started: RunStarted | None = None
    latest_log: TrainLog | None = None
    last_loss: float | None = None
    best_eval: EvalResult | None = None
    class_metrics: bool = False
    #: Warnings in the log; one about the log's own files counts once per code, as a screen
    #: keeps one of each (see `warnings`).
    logged_warnings: int = 0
    file_codes: tuple[str, ...] = ()
    checkpoint_step: int | None = None
    #: The last ``run_finished`` of the latest attempt (since the last ``run_started``).
    finished: RunFinished | None = None
    #: Time of the last event; None before the first.
    last_t: float | None = None
    #: Highest step among counted events: a resume from before it drops some of them.
    max_step: int | None = None
    #: Lines that did not fit the schema, skipped (they make one warning more).
    skipped: SkippedLines = field(default_factory=SkippedLines)
    #: Complete lines read so far (what numbers the next one).
    lines: int = 0

    @property
    def warnings(self) -> int:
        """The warnings a screen lists: each logged one, and one for all the skipped lines."""
        skip = 1 if self.skipped.count and LOG_SKIPPED not in self.file_codes else 0
        return self.logged_warnings + skip

    def absorb(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.first_started = self.first_started or event
            self.last_started, self.finished = event, None
        elif isinstance(event, TrainLog):
            self.latest_log = event
            if event.loss is not None:
                self.last_loss = event.loss
        elif isinstance(event, EvalResult):
            # Strictly lower, as `min` keeps the first of equal losses.
            if event.loss is not None and (
                self.best_eval is None or event.loss < self.best_eval.loss  # type: ignore[operator]
            ):
                self.best_eval = event
            self.class_metrics = self.class_metrics or has_class_metrics(event)
        elif isinstance(event, Warning_):
            if event.code not in FILE_WARNINGS:
                self.logged_warnings += 1
            elif event.code not in self.file_codes:
                self.file_codes += (event.code,)
                self.logged_warnings += 1
        elif isinstance(event, Checkpoint):
            if self.checkpoint_step is None or event.step > self.checkpoint_step:
                self.checkpoint_step = event.step
        elif isinstance(event, RunFinished):
            self.finished = event
        step = getattr(event, "step", None)
        if isinstance(event, (TrainLog, EvalResult, Warning_, Checkpoint)) and isinstance(
            step, int
        ):
            self.max_step = step if self.max_step is None else max(self.max_step, step)
        self.last_t = event.t

    def cuts(self, event: Event) -> bool:
        """The event resumes from a step before counted ones: the tally must be rebuilt."""
        return (
            isinstance(event, RunStarted)
            and event.resumed_from_step is not None
            and self.max_step is not None
            and self.max_step > event.resumed_from_step
        )


@dataclass
class _LogCursor:
    """How far one events file has been read, and the tally of what was read."""

    device: int
    inode: int
    offset: int = 0
    head: bytes = b""
    tail: bytes = b""
    tally: EventTally = field(default_factory=EventTally)


_cursors: dict[str, _LogCursor] = {}
_cursors_lock = threading.Lock()


def _parse_lines(data: bytes, tally: EventTally) -> list[Event]:
    """Events from complete lines, numbered on from `tally`'s count; blank, non-JSON, unknown
    and schema-breaking lines are skipped as `EventReader` skips them, and noted in the tally."""
    lines = data.split(b"\n")
    events = decode_lines(lines, tally.lines + 1, tally.skipped)
    tally.lines += len(lines)
    return events


def _read_on(cursor: _LogCursor, handle: BinaryIO) -> bool:
    """Fold the lines appended since `cursor`; False when the file is not the one it read."""
    handle.seek(0)
    if handle.read(len(cursor.head)) != cursor.head:
        return False
    handle.seek(cursor.offset - len(cursor.tail))
    data = handle.read()
    if not data.startswith(cursor.tail):
        return False
    complete, newline, _torn = data[len(cursor.tail) :].rpartition(b"\n")
    if not newline:
        return True
    # a new object: a tally handed out earlier stays as it was
    tally = replace(cursor.tally, skipped=cursor.tally.skipped.copy())
    for event in _parse_lines(complete, tally):
        if tally.cuts(event):
            return False
        tally.absorb(event)
    cursor.tally = tally
    cursor.offset += len(complete) + 1
    cursor.tail = (cursor.tail + complete + b"\n")[-TAIL_BYTES:]
    if len(cursor.head) < TAIL_BYTES:
        cursor.head = (cursor.head + complete + b"\n")[:TAIL_BYTES]
    return True


def _read_all(cursor: _LogCursor, handle: BinaryIO) -> None:
    handle.seek(0)
    complete, newline, _torn = handle.read().rpartition(b"\n")
    cursor.offset, cursor.head, cursor.tail, cursor.tally = 0, b"", b"", EventTally()
    if not newline:
        return
    for event in effective_events(_parse_lines(complete, cursor.tally)):
        cursor.tally.absorb(event)
    cursor.offset = len(complete) + 1
    cursor.head = (complete + b"\n")[:TAIL_BYTES]
    cursor.tail = complete[-(TAIL_BYTES - 1) :] + b"\n"


def tally_events(path: Path) -> EventTally:
    """The folded events of one ``events.jsonl``, reading only what was appended since last time.

    Thread-safe (the TUI summarises from a worker thread). The returned tally is shared with
    the cache: read it, do not change it.
    """
    key = os.fspath(path)
    with _cursors_lock:
        try:
            handle = open(path, "rb")  # noqa: SIM115 - closed below
        except OSError:
            _cursors.pop(key, None)
            return EventTally()
        with handle:
            stat = os.fstat(handle.fileno())
            cursor = _cursors.pop(key, None)
            same_file = (
                cursor is not None
                and (cursor.device, cursor.inode) == (stat.st_dev, stat.st_ino)
                and stat.st_size >= cursor.offset
            )
            if cursor is None or not same_file or not _read_on(cursor, handle):
                cursor = _LogCursor(device=stat.st_dev, inode=stat.st_ino)
                _read_all(cursor, handle)
        _cursors[key] = cursor  # (re-inserted: the dict's order is least recently used first)
        while len(_cursors) > MAX_CACHED_LOGS:
            del _cursors[next(iter(_cursors))]
        return cursor.tally
