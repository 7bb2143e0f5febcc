"""Messages the TUI's workers and screens send each other: small dataclasses.

Worker threads never touch widgets; they post one of these and a handler on the event
loop does the drawing. A message that only carries the latest value of something (a
hardware reading, a run's status) sets `can_replace`, so a newer one supersedes a queued
older one instead of piling up behind a slow screen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textual.message import Message

from affiner.planner.hardware import DeviceTarget, HardwareReport, HostLoad


@dataclass
class HardwareRead(Message):
    """A fresh hardware report and the host's load (or the reason either could not be read).

    The two are read in the same poll but fail apart: a refused load reading leaves the
    report shown, and the other way round.
    """

    report: HardwareReport | None
    error: str | None = None
    load: HostLoad | None = None
    load_error: str | None = None

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, HardwareRead)


@dataclass
class RunBatch(Message):
    """What a run folder gained since the last read: events, log lines, maybe a new status.

    Events are never replaceable: each batch carries points the loss plot needs.
    """

    run_dir: Path
    events: list[Any] = field(default_factory=list)
    log_lines: list[str] = field(default_factory=list)
    status: Any | None = None
    state: str | None = None
    first: bool = False


@dataclass
class WatchFailed(Message):
    """The run folder could not be read (deleted, permissions): shown, never raised."""

    run_dir: Path
    error: str


@dataclass
class RunsListed(Message):
    """Every run under the runs root, newest first (the runs screen's periodic refresh)."""

    rows: list[Any]

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, RunsListed)


@dataclass
class PlanTargetChanged(Message):
    """The device plans are made for changed (None: this machine's own device).

    The app sets `AffinerApp.plan_target` and sends this to every screen, so the assistant
    re-plans "as if" for the chosen catalog GPU.
    """

    target: DeviceTarget | None

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, PlanTargetChanged)
