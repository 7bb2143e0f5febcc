"""The run directory's event log and status file: the one contract between training and screens.

The training process appends one JSON object per line to ``events.jsonl`` and rewrites
``status.json`` atomically; the TUI, ``affiner attach`` and ``affiner runs`` only read them.
Both sides import this module, so the schema is written down exactly once.

Every event has ``t`` (unix time, float) and ``type``; the other fields depend on the type
and are listed on the dataclasses below. Readers ignore fields they do not know, so adding a
field never breaks an older screen.

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
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

EVENTS_FILE = "events.jsonl"
STATUS_FILE = "status.json"

#: States a run can be in; the last three are final.
RUN_STATES = ("starting", "running", "finished", "failed", "stopped")
FINAL_STATES = ("finished", "failed", "stopped")


#: Every event class by its ``type``: each subclass of `Event` enters itself when defined.
EVENT_TYPES: dict[str, type[Event]] = {}


@dataclass
class Event:
    """Base of every event. `t` is filled in when the event is written if left at 0."""

    type: ClassVar[str] = "event"
    t: float = field(default=0.0, kw_only=True)

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
    perplexity: float | None = None
    accuracy: float | None = None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    runtime_seconds: float | None = None
    extra: dict[str, float] = field(default_factory=dict)


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
    single-process run keeps to), ``precision``, ``no_checkpoint``.
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
    state: str = "finished"
    step: int = 0
    train_seconds: float | None = None
    best_checkpoint: str | None = None
    best_eval_loss: float | None = None
    output_dir: str | None = None
    message: str = ""


def event_from_dict(data: dict[str, Any]) -> Event | None:
    """The event a decoded line describes, None for an unknown type; unknown fields are
    dropped, so a newer writer never breaks an older reader."""
    cls = EVENT_TYPES.get(str(data.get("type", "")))
    if cls is None:
        return None
    known = {f.name for f in fields(cls)}
    kwargs = {k: v for k, v in data.items() if k in known}
    if cls is SystemSample and isinstance(kwargs.get("gpus"), list):
        gpu_known = {f.name for f in fields(GpuSample)}
        kwargs["gpus"] = [
            GpuSample(**{k: v for k, v in g.items() if k in gpu_known})
            for g in kwargs["gpus"]
            if isinstance(g, dict) and "index" in g
        ]
    try:
        return cls(**kwargs)
    except TypeError:
        return None


class EventWriter:
    """Appends events to ``events.jsonl``, one flushed line each.

    Only rank 0 of a multi-process run should own a writer. Each line is written with a
    single ``write`` call on a file opened in append mode, so a reader never sees two
    events interleaved, and a crash can only tear the last line. A lock makes one writer
    safe to share between threads (the training loop and the system sampler).
    """

    def __init__(self, run_dir: str | os.PathLike[str], *, fsync: bool = False) -> None:
        self.path = Path(run_dir) / EVENTS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self._lock = threading.Lock()
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - owned by the writer

    def write(self, event: Event) -> dict[str, Any]:
        """Append `event` as one line and return what was written.

        Raises:
            ValueError: a field is NaN or infinite (JSON has neither); nothing is written.
        """
        if not event.t:
            event.t = time.time()
        data = event.to_dict()
        line = json.dumps(data, allow_nan=False, default=_json_default) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()
            if self._fsync:
                os.fsync(self._file.fileno())
        return data

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.close()

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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


class EventReader:
    """Reads an event log incrementally, tolerating a torn (half-written) last line.

    `read_new()` returns the events appended since the last call. Bytes after the last
    newline are kept for the next call, so a line the writer is halfway through is never
    parsed early, and a line that is not JSON (a crash mid-write, then a restart) is
    counted in `bad_lines` and skipped rather than raised.
    """

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.path = Path(run_dir) / EVENTS_FILE
        self.offset = 0
        self.bad_lines = 0
        self._pending = b""

    def read_new(self) -> list[Event]:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        if not data:
            return []
        self.offset += len(data)
        buffer = self._pending + data
        complete, newline, self._pending = buffer.rpartition(b"\n")
        if not newline:
            return []
        parsed = (self._parse(raw) for raw in complete.split(b"\n"))
        return [event for event in parsed if event is not None]

    def _parse(self, raw: bytes) -> Event | None:
        if not raw.strip():
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            self.bad_lines += 1
            return None
        return event_from_dict(data)


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
    state: str = "starting"
    pid: int | None = None
    step: int = 0
    total_steps: int = 0
    epoch: float = 0.0
    updated: float = 0.0
    started: float = 0.0
    best_eval_loss: float | None = None
    message: str = ""

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


def write_status(run_dir: str | os.PathLike[str], status: RunStatus) -> None:
    """Replace ``status.json`` atomically: readers see the old file or the new one, never half."""
    run_dir = Path(run_dir)
    status.updated = time.time()
    payload = json.dumps(asdict(status), indent=2, default=_json_default) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=".status.", suffix=".tmp", dir=run_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, run_dir / STATUS_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_status(run_dir: str | os.PathLike[str]) -> RunStatus | None:
    """The run's status, or None when there is none yet (or it cannot be read)."""
    path = Path(run_dir) / STATUS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or "run_id" not in data:
        return None
    known = {f.name for f in fields(RunStatus)}
    return RunStatus(**{k: v for k, v in data.items() if k in known})
