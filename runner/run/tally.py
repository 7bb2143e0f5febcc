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

A first read (a fresh ``affiner runs``) meets whole logs, nearly all ``train_log`` and ``system``
lines. Those in the writer's own form are recognised by one pattern
(`affiner.runner.run.canonical_lines`) instead of being decoded: of a run of them only their
steps are read, and only the lines whose figures survive the fold (the last log, the last one
with a loss, the last line) are decoded whole. Every other line is decoded as `EventReader`
decodes it, in order, so skipped lines are counted and numbered as a full read counts them.
"""

from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, TypeAlias

from affiner.runner.run.canonical_lines import event_lines_pattern, iter_block
from affiner.runner.run.events import (
    FILE_WARNINGS,
    LOG_SKIPPED,
    Checkpoint,
    EvalResult,
    Event,
    Progress,
    RunFinished,
    RunStarted,
    SkippedLines,
    SystemSample,
    TrainLog,
    Warning_,
    decode_lines,
    dropped_by_resume,
    has_class_metrics,
    parse_event,
    resume_step,
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
            # Strictly lower, as `min` keeps the first of equal losses. Step 0 is the base
            # model before training ([eval].at_start): a score, but not the run's best.
            if (
                event.loss is not None
                and event.step > 0
                and (self.best_eval is None or event.loss < self.best_eval.loss)  # type: ignore[operator]
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


#: Train logs, system samples, progress and checkpoints as the writer writes them (most of a
#: log): their step and loss are read from the match, and a line is decoded only when its
#: figures are kept.
_WRITER_LINES = event_lines_pattern(
    (TrainLog, SystemSample, Progress, Checkpoint), captured=("t", "step", "loss")
)

#: Consecutive lines in the writer's form, as matches of `_WRITER_LINES`.
_Matches: TypeAlias = list[re.Match[bytes]]
#: A block of lines in order: decoded events, and runs of lines left as matches.
_Piece: TypeAlias = Event | _Matches


def _pieces(data: bytes, tally: EventTally) -> list[_Piece]:
    """The complete lines of `data` (no trailing newline), numbered on from `tally`'s count.

    Runs of lines in the writer's form stay matches; the lines between them are decoded as
    `EventReader` decodes them (blank, non-JSON, unknown and schema-breaking lines skipped
    and noted in the tally), block by block in order, which numbers and notes them exactly
    as one pass over every line would.
    """
    pieces: list[_Piece] = []
    number = tally.lines + 1
    run: _Matches = []
    for item in iter_block(_WRITER_LINES, data) if _WRITER_LINES is not None else (data,):
        if isinstance(item, bytes):
            if run:
                pieces.append(run)
                run = []
            lines = item.split(b"\n")
            pieces.extend(decode_lines(lines, number, tally.skipped))
            number += len(lines)
        else:
            run.append(item)
            number += 1
    if run:
        pieces.append(run)
    tally.lines = number - 1
    return pieces


def _step(match: re.Match[bytes]) -> int:
    return int(match[f"{match.lastgroup}_step"])


def _decoded(match: re.Match[bytes]) -> Event:
    """The event of a line in the writer's form: the schema accepts whatever the pattern does."""
    event = parse_event(json.loads(match[match.lastgroup or 0]))
    assert event is not None  # (a known type: the pattern names it)
    return event


def _absorb_run(tally: EventTally, run: _Matches) -> re.Match[bytes] | None:
    """Fold a run of writer-form lines as folding each of them would; return its last train log.

    A train log sets the latest log, the last loss (when it has one), the highest step and the
    time; a checkpoint the newest checkpoint step, the highest step and the time; a system
    sample or a progress event only the time. Those are read from the matched text as the
    schema would read them (``float``/``int`` of the JSON number); the latest log itself is an
    event the caller decodes once, from the last run that has one (`_fold`).
    """
    top: int | None = None
    saved: int | None = None
    last_log: re.Match[bytes] | None = None
    loss = b"null"
    for match in run:
        kind = match.lastgroup
        if kind == TrainLog.type:
            step = int(match["train_log_step"])
            last_log = match
            if match["train_log_loss"] != b"null":
                loss = match["train_log_loss"]
        elif kind == Checkpoint.type:
            step = int(match["checkpoint_step"])
            saved = step if saved is None or step > saved else saved
        else:
            continue
        top = step if top is None or step > top else top
    if loss != b"null":
        tally.last_loss = float(loss)
    if top is not None:
        tally.max_step = top if tally.max_step is None else max(tally.max_step, top)
    if saved is not None and (tally.checkpoint_step is None or saved > tally.checkpoint_step):
        tally.checkpoint_step = saved
    last = run[-1]
    tally.last_t = float(last[f"{last.lastgroup}_t"])
    return last_log


def _fold(tally: EventTally, pieces: list[_Piece], *, stop_at_cut: bool = False) -> bool:
    """Fold `pieces` into `tally` in order, as folding every event would.

    The newest train log of the writer's form is decoded once, at the end, unless an event
    decoded the ordinary way came after it (it is then the latest log itself).

    Args:
        stop_at_cut: give up, returning False, at a ``run_started`` that resumes from before
            events already counted (`EventTally.cuts`): the log must be read from the start.
    """
    pending: re.Match[bytes] | None = None
    for piece in pieces:
        if isinstance(piece, list):
            pending = _absorb_run(tally, piece) or pending
            continue
        if stop_at_cut and tally.cuts(piece):
            return False
        if isinstance(piece, TrainLog):
            pending = None
        tally.absorb(piece)
    if pending is not None:
        latest = _decoded(pending)
        assert isinstance(latest, TrainLog)  # (the pattern's train_log branch matched it)
        tally.latest_log = latest
    return True


def _effective(pieces: list[_Piece]) -> list[_Piece]:
    """`affiner.runner.run.events.effective_events` over pieces.

    An event is dropped when some later ``run_started`` resumes from a step it names a cut for
    (`dropped_by_resume`); a step greater than the lowest later resume step is exactly that, so
    one walk from the end, keeping that lowest step, decides every line.
    """
    kept: list[_Piece] = []
    lowest: int | None = None  # the lowest resume step after the piece at hand
    for piece in reversed(pieces):
        if isinstance(piece, list):
            if lowest is not None:
                limit = lowest
                piece = [match for match in piece if _step(match) <= limit]
            if piece:
                kept.append(piece)
            continue
        if lowest is None or not dropped_by_resume(piece, lowest):
            kept.append(piece)
        cut = resume_step(piece)
        if cut is not None:
            lowest = cut if lowest is None else min(lowest, cut)
    kept.reverse()
    return kept


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
    if not _fold(tally, _pieces(complete, tally), stop_at_cut=True):
        return False
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
    _fold(cursor.tally, _effective(_pieces(complete, cursor.tally)))
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
