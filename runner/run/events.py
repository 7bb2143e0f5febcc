"""The run directory's event log and status file: the one contract between training and screens.

The training process appends one JSON object per line to ``events.jsonl`` and rewrites
``status.json`` atomically; the TUI, ``affiner attach`` and ``affiner runs`` only read them.
Both sides import this module, so the schema is written down exactly once.

Every event has ``t`` (unix time, float) and ``type``; the other fields depend on the type
and are listed on the dataclasses below. Readers ignore fields they do not know, so adding a
field never breaks an older screen. A field they know is checked against its declared type and
range (`affiner.runner.run.schema`: a step is a whole number, a loss finite and not negative)
where the line is parsed, and a line that does not fit is skipped and counted, never raised:
every consumer downstream handles only values of the declared types. A torn last line (a
crash mid-write) is ended by the next `EventWriter` before it appends, with a ``log_repaired``
warning, so the next event is never glued onto it and lost.

Resuming: a run continued from a checkpoint appends to the same ``events.jsonl``; nothing is
ever truncated or rewritten. The resumed attempt starts with a ``run_started`` event whose
``resumed_from_step`` is N, the step of the checkpoint it continues from. Events written
before that marker with a ``step`` greater than N describe training the checkpoint does not
hold (it is done again, and logged again, after the marker), and an earlier ``run_finished``
no longer ends the run. Readers apply that rule with `effective_events`, which gives one
sequence with no step logged twice and none missing, however the earlier attempt ended
(``kill -9`` included).

This module must stay light: no torch, no transformers, no textual.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from affiner.runner.run.canonical_lines import iter_block, writer_form
from affiner.runner.run.schema import (
    RATIO,
    SIGNED,
    UNBOUNDED,
    UNIX_TIME,
    SchemaError,
    check_fields,
    choices,
    field_problems,
)

EVENTS_FILE = "events.jsonl"
STATUS_FILE = "status.json"

#: States a run can be in; the last three are final.
RUN_STATES = ("starting", "running", "finished", "failed", "stopped")
FINAL_STATES = ("finished", "failed", "stopped")

#: Warning codes about the run folder's own files, not the training (see `Warning_`).
#: `EventWriter` ended a torn last line before appending (a crash or a full disk cut a write).
LOG_REPAIRED = "log_repaired"
#: A reader skipped lines of ``events.jsonl`` that are not events of the schema (one warning).
LOG_SKIPPED = "log_skipped"
#: A reader ignored values of ``status.json`` that do not fit the schema (one warning).
STATUS_SKIPPED = "status_skipped"
#: The codes above: a reader keeps one warning of each, the latest, however often it is given.
FILE_WARNINGS = (LOG_REPAIRED, LOG_SKIPPED, STATUS_SKIPPED)


#: Every event class by its ``type``: each subclass of `Event` enters itself when defined.
EVENT_TYPES: dict[str, type[Event]] = {}


@dataclass
class Event:
    """Base of every event. `t` is filled in when the event is written if left at 0."""

    type: ClassVar[str] = "event"
    t: float = field(default=0.0, kw_only=True, metadata=UNIX_TIME)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        EVENT_TYPES[cls.type] = cls

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["type"] = self.type
        return data


@dataclass
class RunStarted(Event):
    """The training process is up and knows what it will do."""

    type: ClassVar[str] = "run_started"
    run_id: str = ""
    pid: int = 0
    model: str = ""
    method: str = ""
    device: str = ""
    total_steps: int = 0
    epochs: float = 0.0
    train_rows: int = 0
    eval_rows: int = 0
    resumed_from_step: int | None = None
    predicted_peak_bytes: int | None = None
    predicted_step_seconds: float | None = None
    num_gpus: int = 1
    #: How batches were made (`affiner.runner.training.batching`): packed rows or padded ones.
    packing: bool | None = None
    #: ``liger`` (fused linear cross-entropy) or ``torch``.
    loss_kernel: str | None = None
    #: torch's loss from the logits of the loss-carrying positions only (``logits_to_keep``).
    loss_positions: bool | None = None
    #: Processes over all nodes (``[distributed]``; 1 for a single-process run), the nodes
    #: they run on, and how they share the model (``ddp``, ``fsdp``, ``zero2``, ``zero3``;
    #: None for a single process).
    world_size: int = 1
    nodes: int = 1
    strategy: str | None = None

    @property
    def batching_words(self) -> str:
        """``packed batches`` / ``padded batches``, and ``fused loss`` or ``logits at loss
        tokens only``; empty for older logs."""
        words = []
        if self.packing is not None:
            words.append("packed batches" if self.packing else "padded batches")
        if self.loss_kernel == "liger":
            words.append("fused loss")
        elif self.loss_positions:
            words.append("logits at loss tokens only")
        return ", ".join(words)


@dataclass
class TrainLog(Event):
    """A training log line (every `logging_steps` optimizer steps)."""

    type: ClassVar[str] = "train_log"
    step: int = 0
    epoch: float = 0.0
    loss: float | None = None
    learning_rate: float | None = None
    grad_norm: float | None = None
    tokens_per_second: float | None = None
    samples_per_second: float | None = None
    eta_seconds: float | None = None
    total_steps: int = 0


@dataclass
class EvalResult(Event):
    """An evaluation on held-out data. Classification metrics are None for language modelling."""

    type: ClassVar[str] = "eval"
    step: int = 0
    epoch: float = 0.0
    loss: float | None = None
    perplexity: float | None = field(default=None, metadata=UNBOUNDED)
    accuracy: float | None = field(default=None, metadata=RATIO)
    precision: float | None = field(default=None, metadata=RATIO)
    recall: float | None = field(default=None, metadata=RATIO)
    f1: float | None = field(default=None, metadata=RATIO)
    runtime_seconds: float | None = None
    extra: dict[str, float] = field(default_factory=dict, metadata=SIGNED)


#: Scores only a classification head reports (fields of `EvalResult`); a run that logs any of
#: them is not a language model.
CLASS_METRICS = ("accuracy", "precision", "recall", "f1")


def has_class_metrics(event: EvalResult) -> bool:
    """The evaluation carries accuracy/precision/recall/F1: a classification head's."""
    return any(getattr(event, name) is not None for name in CLASS_METRICS)


@dataclass
class GpuSample:
    """One GPU's reading inside a `SystemSample`."""

    index: int
    memory_used: int | None = None
    memory_total: int | None = None
    utilization_percent: int | None = None
    temperature_c: int | None = None
    power_w: float | None = None


@dataclass
class SystemSample(Event):
    """Every few seconds: device memory (NVML and torch's allocator), host RAM and CPU."""

    type: ClassVar[str] = "system"
    step: int = 0
    gpus: list[GpuSample] = field(default_factory=list)
    torch_allocated: int | None = None
    torch_reserved: int | None = None
    torch_peak: int | None = None
    ram_used: int | None = None
    ram_total: int | None = None
    process_rss: int | None = None
    process_peak_rss: int | None = None
    cpu_percent: float | None = None
    #: this process's share of one core, in percent (over 100 on several cores), and the
    #: machine's logical cores: with `cpu_percent` (the whole machine's), what others use
    process_cpu_percent: float | None = None
    cpu_count: int | None = None
    #: In a multi-process run, the process this reading is of (its rank over all nodes) and
    #: the node it runs on; `gpus` then holds that rank's own GPU. None: a single process.
    rank: int | None = None
    node: int | None = None


@dataclass
class Checkpoint(Event):
    """A checkpoint was written. `best` marks the one with the lowest eval loss so far."""

    type: ClassVar[str] = "checkpoint"
    step: int = 0
    path: str = ""
    best: bool = False
    eval_loss: float | None = None


@dataclass
class Warning_(Event):
    """Something the user should see. `code` is machine-readable; `action` suggests a next step.

    Codes in use: ``overfitting``, ``nan_loss``, ``oom``, ``dropped_rows``, ``leakage``,
    ``truncation``, ``preflight_adjusted``, ``slow``, ``early_stopping``, ``gpu`` (which GPU a
    single-process run keeps to), ``precision``, ``no_checkpoint``; and about the run folder's
    files (`FILE_WARNINGS`): ``log_repaired`` (written to the log), ``log_skipped`` and
    ``status_skipped`` (made by readers, never written).
    """

    type: ClassVar[str] = "warning"
    code: str = ""
    message: str = ""
    step: int | None = None
    action: str | None = None


@dataclass
class Error(Event):
    """The run cannot go on. `message` is for people; the traceback, if any, is in train.log."""

    type: ClassVar[str] = "error"
    code: str = ""
    message: str = ""
    step: int | None = None


@dataclass
class Preflight(Event):
    """Measured peak memory and step time beside the planner's prediction."""

    type: ClassVar[str] = "preflight"
    device: str = ""
    measured_peak_bytes: int = 0
    predicted_peak_bytes: int | None = None
    measured_step_seconds: float = 0.0
    predicted_step_seconds: float | None = None
    eval_peak_bytes: int | None = None
    save_ok: bool = True
    micro_batch: int = 1
    grad_accum: int = 1
    adjusted: bool = False
    seq_len: int = 0
    notes: list[str] = field(default_factory=list)
    #: The batch the check started from, before any out-of-memory halving (None: older logs).
    from_micro_batch: int | None = None
    from_grad_accum: int | None = None
    #: A multi-process check: each rank's measured peak, by rank (`measured_peak_bytes` is
    #: the largest); empty for a single process.
    rank_peaks: list[int] = field(default_factory=list)


@dataclass
class Progress(Event):
    """A phase that logs nothing for minutes, `done` of `total` (an eval's batches; 0 of 0 when
    nothing is counted, as for a save). It is open until the next event that is not progress,
    a system sample or a warning (an ``eval`` ends an evaluation, a ``checkpoint`` a save)."""

    type: ClassVar[str] = "progress"
    step: int = 0
    phase: str = ""
    done: int = 0
    total: int = 0


@dataclass
class RunFinished(Event):
    """The last event of a run, whatever its end."""

    type: ClassVar[str] = "run_finished"
    state: str = field(default="finished", metadata=choices(*FINAL_STATES))
    step: int = 0
    train_seconds: float | None = None
    best_checkpoint: str | None = None
    best_eval_loss: float | None = None
    output_dir: str | None = None
    message: str = ""


def parse_event(data: Any) -> Event | None:
    """The event a decoded line describes, every field checked against the schema
    (`affiner.runner.run.schema`); None for a type this reader does not know.

    Unknown fields are dropped and unknown types give None, so a newer writer never breaks an
    older reader; a known field of the wrong type or range is an error, so no consumer ever
    sees ``"step": "12"`` or a negative loss.

    Raises:
        SchemaError: not an object, no ``type``, or a field that does not fit.
    """
    if not isinstance(data, dict):
        raise SchemaError("not a JSON object", field="")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise SchemaError("no event 'type'", field="type")
    cls = EVENT_TYPES.get(kind)
    if cls is None:
        return None
    return cls(**check_fields(cls, data))


def event_from_dict(data: dict[str, Any]) -> Event | None:
    """`parse_event`, with None for a line that does not fit as well as for an unknown type."""
    try:
        return parse_event(data)
    except SchemaError:
        return None


class EventWriter:
    """Appends events to ``events.jsonl``, one flushed line each, healing a torn last line first.

    Only rank 0 of a multi-process run should own a writer. Each line is written with a
    single ``write`` call on a file opened in append mode, so a reader never sees two
    events interleaved, and a crash can only tear the last line. A lock makes one writer
    safe to share between threads (the training loop and the system sampler).

    A torn last line (``kill -9`` or a full disk in the middle of a write) has no newline, so a
    plain append would glue the next event onto it and both would be lost: a resumed attempt's
    ``run_started`` vanished that way, and with it the resume rule. So before its first append,
    and again after a write that failed, the writer ends such a line with a newline (readers then
    skip the fragment as one bad line) and records a ``log_repaired`` warning with its size.
    """

    def __init__(self, run_dir: str | os.PathLike[str], *, fsync: bool = False) -> None:
        self.path = Path(run_dir) / EVENTS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self._lock = threading.Lock()
        # unbuffered: every line goes to the file in one write, or the failure is seen at once
        self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 - owned by the writer
        self._check_tail = True
        #: Bytes of torn lines this writer ended (0 when the log was whole).
        self.repaired_bytes = 0

    def write(self, event: Event) -> dict[str, Any]:
        """Append `event` as one line and return what was written.

        Raises:
            ValueError: a field is NaN or infinite (JSON has neither); nothing is written.
            OSError: the write failed (a full disk); the next write heals what it left.
        """
        if not event.t:
            event.t = time.time()
        data = event.to_dict()
        line = _encode(data)
        with self._lock:
            head = self._heal() if self._check_tail else b""
            self._append(head + line)
        return data

    def _heal(self) -> bytes:
        """What to write before the next line: nothing, or a newline that ends a torn last line
        and the ``log_repaired`` warning that says so."""
        torn = _torn_tail_bytes(self.path)
        if not torn:
            return b""
        self.repaired_bytes += torn
        warning = Warning_(
            code=LOG_REPAIRED,
            message=(
                f"the last line of {EVENTS_FILE} was cut short ({torn} bytes without an end: a "
                "write interrupted by a crash, a kill or a full disk); it was ended here so the "
                "next event stays whole, and readers skip the cut line"
            ),
            t=time.time(),
        )
        return b"\n" + _encode(warning.to_dict())

    def _append(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                written = self._file.write(view)
                view = view[written or 0 :]
            if self._fsync:
                os.fsync(self._file.fileno())
        except OSError:
            self._check_tail = True  # a part may be on disk: end it before the next line
            raise
        self._check_tail = False

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.close()

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _encode(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, allow_nan=False, default=_json_default) + "\n").encode("utf-8")


def _torn_tail_bytes(path: Path, chunk: int = 65536) -> int:
    """How many bytes follow the log's last newline: a line cut short (0 when it ends whole)."""
    try:
        with open(path, "rb") as handle:
            end = pos = handle.seek(0, os.SEEK_END)
            while pos > 0:
                start = max(0, pos - chunk)
                handle.seek(start)
                newline = handle.read(pos - start).rfind(b"\n")
                if newline >= 0:
                    return end - (start + newline + 1)
                pos = start
            return end
    except OSError:
        return 0  # unreadable: the append will say what is wrong


def _json_default(value: Any) -> Any:
    """Make numpy/torch scalars and paths serialisable (anything else becomes its ``str``).

    NaN and infinity are not turned into strings: a scalar becomes a Python float, and the
    writer's ``allow_nan=False`` then raises ValueError before anything is written, so a log
    never holds bare NaN. Pass figures through `clean_number` (NaN/inf to None) first.
    """
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    item = getattr(value, "item", None)
    if callable(item):
        return item()
    return str(value)


def clean_number(value: float | None) -> float | None:
    """JSON has no NaN or infinity: map them to None so a line always parses."""
    if value is None:
        return None
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        return None
    return value


@dataclass
class SkippedLines:
    """The lines of an event log a reader left out, and why: what its one warning says.

    Attributes:
        count: lines skipped (not JSON, not an object, or a field that does not fit).
        reasons: how many lines each reason covers (``not JSON``, ``a bad 'step'``).
        first_line: the first skipped line's number in the file (1-based), and
        first_detail: what was wrong with it, in full.
    """

    count: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    first_line: int | None = None
    first_detail: str = ""

    def note(self, line: int, reason: str, detail: str = "") -> None:
        self.count += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        if self.first_line is None:
            self.first_line, self.first_detail = line, detail or reason

    def copy(self) -> SkippedLines:
        return SkippedLines(self.count, dict(self.reasons), self.first_line, self.first_detail)

    def warning(self) -> Warning_ | None:
        """The one warning about every line skipped so far (None when none was)."""
        if not self.count:
            return None
        lines, were = ("line", "was") if self.count == 1 else ("lines", "were")
        why = ", ".join(f"{n} {reason}" for reason, n in self.reasons.items())
        return Warning_(
            code=LOG_SKIPPED,
            message=(
                f"{self.count} {lines} of {EVENTS_FILE} {were} skipped ({why}; first at line "
                f"{self.first_line}: {self.first_detail}); the rest of the run is shown"
            ),
            action=f"the run's other events are unaffected; look at that line of {EVENTS_FILE} "
            "if a figure seems missing",
            t=time.time(),
        )


def decode_lines(lines: Sequence[bytes], first_line: int, skipped: SkippedLines) -> list[Event]:
    """The events in complete `lines` (numbered from `first_line`); what does not fit is noted
    in `skipped` and left out, and nothing in a line can make this raise.

    Blank lines and events of a type this reader does not know are left out silently. A line
    that is not JSON right before a ``log_repaired`` warning is the torn line that warning
    reports: it is not counted twice.
    """
    events: list[Event] = []
    torn: int | None = None  # a line that was not JSON, waiting to see what follows it
    for number, raw in enumerate(lines, start=first_line):
        if not raw.strip():
            continue
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):  # (deeply nested JSON raises RecursionError)
            if torn is not None:
                skipped.note(torn, "not JSON")
            torn = number
            continue
        try:
            event = parse_event(data)
        except SchemaError as exc:
            event = None
            reason = f"with a bad {exc.field!r}" if exc.field else str(exc)
            skipped.note(number, reason, str(exc))
        repaired = isinstance(event, Warning_) and event.code == LOG_REPAIRED
        if torn is not None and not repaired:
            skipped.note(torn, "not JSON")
        torn = None
        if event is not None:
            events.append(event)
    if torn is not None:
        skipped.note(torn, "not JSON")
    return events


#: Train logs, system samples and progress lines as `EventWriter` writes them: built from the
#: matched text instead of decoded (`affiner.runner.run.canonical_lines`), the same events.
_WRITER_FORM = writer_form((TrainLog, SystemSample, Progress))


def decode_block(data: bytes, first_line: int, skipped: SkippedLines) -> tuple[list[Event], int]:
    """`decode_lines` over the complete lines of `data` (no trailing newline), and their count.

    The same events and the same notes in `skipped`, faster: lines in the writer's own form
    (most of a log) are built from a pattern's match (a long run's first read took ~70 us a
    line, now a few), the others are decoded by `decode_lines` in order, a stretch at a time.
    """
    if _WRITER_FORM is None:
        lines = data.split(b"\n")
        return decode_lines(lines, first_line, skipped), len(lines)
    events: list[Event] = []
    number = first_line
    run: list[Any] = []
    for item in iter_block(_WRITER_FORM.pattern, data):
        if not isinstance(item, bytes):
            run.append(item)
            continue
        if run:
            events.extend(_WRITER_FORM.events(run))
            number += len(run)
            run = []
        lines = item.split(b"\n")
        events.extend(decode_lines(lines, number, skipped))
        number += len(lines)
    if run:
        events.extend(_WRITER_FORM.events(run))
        number += len(run)
    return events, number - first_line


class EventReader:
    """Reads an event log incrementally, tolerating a torn last line and lines that do not fit.

    `read_new()` returns the events appended since the last call. Bytes after the last
    newline are kept for the next call, so a line the writer is halfway through is never
    parsed early. A line that is not JSON (a crash mid-write, then a restart) or does not fit
    the schema (`parse_event`) is skipped rather than raised, and counted in `skipped`, whose
    `SkippedLines.warning` is the one warning a screen shows about them.
    """

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.path = Path(run_dir) / EVENTS_FILE
        self.offset = 0
        self.skipped = SkippedLines()
        self._lines = 0
        self._pending = b""

    @property
    def bad_lines(self) -> int:
        """How many lines were skipped so far."""
        return self.skipped.count

    def read_new(self) -> list[Event]:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except OSError:  # missing, or not a readable file (a folder in its place)
            return []
        if not data:
            return []
        self.offset += len(data)
        buffer = self._pending + data
        complete, newline, self._pending = buffer.rpartition(b"\n")
        if not newline:
            return []
        events, count = decode_block(complete, self._lines + 1, self.skipped)
        self._lines += count
        return events


def read_events(run_dir: str | os.PathLike[str]) -> list[Event]:
    """Every complete event of a run, in order (a torn last line is left out)."""
    return EventReader(run_dir).read_new()


def resume_step(event: Event) -> int | None:
    """N when `event` is the ``run_started`` of an attempt resumed from checkpoint step N, else None."""
    return event.resumed_from_step if isinstance(event, RunStarted) else None


def dropped_by_resume(event: Event, resumed_from_step: int) -> bool:
    """The resume rule for one event written before a resume from step `resumed_from_step`.

    Dropped: every ``run_finished`` (it no longer ends the run), and any event whose ``step``
    is greater than the step resumed from (training the checkpoint does not hold, done and
    logged again by the resumed attempt): train logs, evaluations, progress, system samples,
    warnings, errors and checkpoints alike. Events without a step (``run_started``, ``preflight``, a
    warning given before training) are kept.
    """
    if isinstance(event, RunFinished):
        return True
    step = getattr(event, "step", None)
    return isinstance(step, int) and step > resumed_from_step


def effective_events(events: list[Event]) -> list[Event]:
    """The run's history with the resume rule applied (see the module docstring).

    At each ``run_started`` with ``resumed_from_step`` N, the events kept so far that
    `dropped_by_resume` names are dropped. The input is not modified.
    """
    kept: list[Event] = []
    for event in events:
        cut = resume_step(event)
        if cut is not None:
            kept = [e for e in kept if not dropped_by_resume(e, cut)]
        kept.append(event)
    return kept


def iter_event_dicts(run_dir: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Every complete event as a plain dict, unknown types included (for tools and tests)."""
    path = Path(run_dir) / EVENTS_FILE
    if not path.exists():
        return
    with open(path, "rb") as handle:
        for raw in handle:
            if not raw.endswith(b"\n"):
                return
            try:
                data = json.loads(raw)
            except ValueError:
                continue
            if isinstance(data, dict):
                yield data


@dataclass
class RunStatus:
    """``status.json``: the state of a run at a glance, rewritten atomically.

    Attributes:
        run_id: the run folder's name.
        pid: the training process (None before it starts).
        state: one of `RUN_STATES`.
        step, total_steps, epoch: progress.
        updated, started: unix times of the last write and of the run's start.
        best_eval_loss: lowest eval loss so far.
        message: a short line for people (why it failed, how it ended).
    """

    run_id: str
    state: str = field(default="starting", metadata=choices(*RUN_STATES))
    pid: int | None = None
    step: int = 0
    total_steps: int = 0
    epoch: float = 0.0
    updated: float = field(default=0.0, metadata=UNIX_TIME)
    started: float = field(default=0.0, metadata=UNIX_TIME)
    best_eval_loss: float | None = None
    message: str = ""

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


def write_status(
    run_dir: str | os.PathLike[str], status: RunStatus, *, durable: bool = True
) -> None:
    """Replace ``status.json`` atomically: readers see the old file or the new one, never half.

    `durable` also waits for the disk (fsync). A state a run ends in must survive a power cut;
    the rewrite after every training log need not (the next one follows in seconds, and a
    crashed process loses nothing the kernel already holds), and an fsync per log can cost a
    fast GPU step several percent on a busy disk.
    """
    run_dir = Path(run_dir)
    status.updated = time.time()
    payload = json.dumps(asdict(status), indent=2, default=_json_default) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=".status.", suffix=".tmp", dir=run_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(payload)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, run_dir / STATUS_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class StatusRead:
    """``status.json`` as read: the status (None when there is none to use) and what was wrong.

    Attributes:
        status: the run's status; a value that did not fit the schema took its default.
        problems: one line per value ignored (or why the whole file was), for `warning`.
    """

    status: RunStatus | None
    problems: list[str] = field(default_factory=list)

    def warning(self) -> Warning_ | None:
        """The one warning about this file (None when it was whole or absent)."""
        if not self.problems:
            return None
        return Warning_(
            code=STATUS_SKIPPED,
            message=f"{STATUS_FILE} does not fit its schema, so a part was ignored: "
            + "; ".join(self.problems),
            action="the worker rewrites it as it goes; the run's events still tell its progress",
            t=time.time(),
        )


def read_status_report(run_dir: str | os.PathLike[str]) -> StatusRead:
    """Read ``status.json`` checking every value (see `affiner.runner.run.schema`); never raises.

    A missing or unreadable file is no status and no problem (the run may not have one yet). A
    file that is not a JSON object gives no status and says so. A value of the wrong type or
    range (``"step": "12"``, a negative loss, an unknown state) is dropped, with its default in its
    place, so the good ones (the worker's pid above all) still count; a bad ``run_id`` becomes
    the folder's name.
    """
    path = Path(run_dir) / STATUS_FILE
    try:
        raw = path.read_bytes()
    except OSError:
        return StatusRead(None)
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return StatusRead(None, ["it is not JSON"])
    if not isinstance(data, dict):
        return StatusRead(None, ["it is not a JSON object"])
    if "run_id" not in data:
        return StatusRead(None, ["it has no 'run_id'"])
    kwargs, problems = field_problems(RunStatus, data)
    kwargs.setdefault("run_id", Path(run_dir).name)
    return StatusRead(RunStatus(**kwargs), problems)


def read_status(run_dir: str | os.PathLike[str]) -> RunStatus | None:
    """The run's status, or None when there is none yet (or it cannot be used); values that
    do not fit the schema read as their defaults (`read_status_report` says which)."""
    return read_status_report(run_dir).status
