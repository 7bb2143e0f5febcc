"""Tail a run folder: new events, new lines of train.log and status changes.

`RunWatcher.poll()` reads only the bytes appended since the last call (the event log through
`affiner.runner.run.events.EventReader`, which keeps a torn last line for later), so it is cheap to call
every half second. `watch_run()` is the loop a thread worker runs: it checks the worker's
cancellation between reads and hands each non-empty batch to a callback that posts a
message, so the thread never touches a widget.

The training process owns the folder; nothing here writes to it. Quitting the TUI cancels
the worker and leaves training running; opening the run again reads its whole history.

Lines of the event log, or values of ``status.json``, that do not fit the schema are skipped
by the readers; each poll that finds more of them adds the one warning about each file
(``log_skipped``, ``status_skipped``) to its events, and the history keeps the latest of each.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from affiner.runner.run import (
    INTERRUPTED,
    LIVE_STATES,
    Event,
    EventReader,
    RunDir,
    RunStatus,
    SkippedLines,
    StatusRead,
    Warning_,
    effective_events,
    read_status_report,
)

#: On first open, at most this much of the end of train.log is read.
LOG_TAIL_BYTES = 64 * 1024
#: Lines of train.log a batch carries at most (the screen keeps its own tail).
LOG_TAIL_LINES = 200


@dataclass
class WatchBatch:
    """What changed in a run folder since the previous poll."""

    events: list[Event] = field(default_factory=list)
    log_lines: list[str] = field(default_factory=list)
    status: RunStatus | None = None
    state: str | None = None
    first: bool = False

    def __bool__(self) -> bool:
        return bool(
            self.events
            or self.log_lines
            or self.status is not None
            or self.state is not None
            or self.first
        )


class RunWatcher:
    """Incremental reader of one run folder (not thread-safe: one watcher per thread)."""

    def __init__(
        self,
        run_dir: str | os.PathLike[str] | RunDir,
        *,
        alive: Callable[[int | None, Path], bool] | None = None,
    ) -> None:
        self.run = run_dir if isinstance(run_dir, RunDir) else RunDir(Path(run_dir))
        self._alive = alive
        self._status: RunStatus | None = None
        self._state: str | None = None
        self._events = EventReader(self.run.path)
        self._log_offset: int | None = None
        self._log_pending = b""
        self._status_key: tuple[object, ...] | None = None
        self._file_warnings = FileWarnings()
        self._status_read: StatusRead | None = None
        self._polled = False

    @property
    def bad_lines(self) -> int:
        """Lines of events.jsonl that were skipped: not JSON (a crash mid-write), or not fitting
        the schema."""
        return self._events.bad_lines

    def poll(self) -> WatchBatch:
        first = not self._polled
        self._polled = True
        events = self._events.read_new()
        if first:
            # A resumed run's first attempt logged steps it later redid: show them once.
            events = effective_events(events)
        status = self._read_status()
        events.extend(self._file_warnings.news(self._events.skipped, self._status_read))
        return WatchBatch(
            events=events,
            log_lines=self._read_log(),
            status=status,
            state=self._read_state(),
            first=first,
        )

    def _read_state(self) -> str | None:
        """The state to show, when it changed: the status's, unless its process is gone.

        A status left at ``running`` by a process that was killed (``kill -9``, the OOM
        killer, a reboot) would otherwise look alive forever.
        """
        status = self._status
        if status is None:
            return None
        state = status.state
        alive = self._alive
        if (
            state in LIVE_STATES
            and alive is not None
            and status.pid
            and not alive(status.pid, self.run.path)
        ):
            state = INTERRUPTED
        if state == self._state:
            return None
        self._state = state
        return state

    def _read_status(self) -> RunStatus | None:
        self._status_read = report = read_status_report(self.run.path)
        status = report.status
        if status is None:
            return None
        key = (status.state, status.step, status.pid, status.best_eval_loss, status.message)
        if key == self._status_key:
            return None
        self._status_key = key
        self._status = status
        return status

    def _read_log(self) -> list[str]:
        path = self.run.log
        try:
            size = path.stat().st_size
        except OSError:
            return []
        if self._log_offset is None:
            self._log_offset = max(0, size - LOG_TAIL_BYTES)
            skip_partial = self._log_offset > 0
        else:
            skip_partial = False
            if size < self._log_offset:  # truncated or replaced: start again
                self._log_offset, self._log_pending = 0, b""
        if size == self._log_offset:
            return []
        try:
            with open(path, "rb") as handle:
                handle.seek(self._log_offset)
                data = handle.read(size - self._log_offset)
        except OSError:
            return []
        self._log_offset += len(data)
        buffer = self._log_pending + data
        complete, newline, self._log_pending = buffer.rpartition(b"\n")
        if not newline:
            return []
        lines = complete.decode("utf-8", errors="replace").split("\n")
        if skip_partial:
            lines = lines[1:]
        # Progress bars rewrite one line with carriage returns: keep what is left visible.
        return [line.rsplit("\r", 1)[-1].rstrip() for line in lines][-LOG_TAIL_LINES:]


class FileWarnings:
    """The one warning about each run file's skipped content, given again only when it grew.

    The readers skip what does not fit the schema (`affiner.runner.run.EventReader.skipped`,
    `affiner.runner.run.read_status_report`); this turns that into ``log_skipped`` and
    ``status_skipped`` warnings for a history to fold, without repeating one every poll.
    """

    def __init__(self) -> None:
        self._skipped = 0
        self._problems: list[str] = []

    def news(self, skipped: SkippedLines, status: StatusRead | None) -> list[Warning_]:
        found: list[Warning_] = []
        if skipped.count != self._skipped:
            self._skipped = skipped.count
            warning = skipped.warning()
            if warning is not None:
                found.append(warning)
        problems = status.problems if status is not None else []
        if problems != self._problems:
            self._problems = problems
            warning = status.warning() if status is not None else None
            if warning is not None:
                found.append(warning)
        return found


def watch_run(
    run_dir: str | os.PathLike[str] | RunDir,
    deliver: Callable[[WatchBatch], object],
    is_cancelled: Callable[[], bool],
    *,
    interval: float = 0.5,
    alive: Callable[[int | None, Path], bool] | None = None,
    sleep: Callable[[float], object] = time.sleep,
) -> None:
    """Poll a run folder until cancelled, delivering each non-empty batch.

    The wait is cut into short naps so a cancelled worker ends within a tenth of a second;
    a run that has ended is polled four times less often (it may be resumed).
    """
    watcher = RunWatcher(run_dir, alive=alive)
    final = False
    while not is_cancelled():
        batch = watcher.poll()
        if batch:
            if batch.state is not None:
                final = batch.state not in LIVE_STATES
            deliver(batch)
        waited, wait = 0.0, interval * (4 if final else 1)
        while waited < wait and not is_cancelled():
            nap = min(0.1, wait - waited)
            sleep(nap)
            waited += nap
