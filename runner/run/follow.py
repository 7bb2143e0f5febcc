"""``affiner train --foreground``: follow a run as plain text lines, for CI logs and scripts.

The worker's ``train.log`` holds what libraries print (warnings, a traceback); the progress
itself is in ``events.jsonl``. Following a run interleaves both: new log bytes as they are,
and each event as one readable line (``step 12/40 loss 2.3140 lr 1.0e-02 …``). No colours,
no cursor movement, so the output reads the same in a terminal, a file or a CI job.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import TextIO

from affiner.planner.units import format_bytes, format_duration
from affiner.runner.run.events import (
    Checkpoint,
    Error,
    EvalResult,
    Event,
    EventReader,
    Preflight,
    Progress,
    RunFinished,
    RunStarted,
    TrainLog,
    Warning_,
)
from affiner.runner.run.phases import phase_words
from affiner.runner.run.process import send_signal
from affiner.runner.run.rundir import RunDir


def event_line(event: Event) -> str | None:
    """One line describing `event` for a text log; None for events not worth a line (samples)."""
    if isinstance(event, RunStarted):
        resumed = (
            f", resumed from step {event.resumed_from_step}"
            if event.resumed_from_step is not None
            else ""
        )
        return (
            f"[affiner] started: {event.method} on {event.device or 'auto'}, "
            f"{event.total_steps} steps, {event.train_rows} training rows{resumed}"
        )
    if isinstance(event, TrainLog):
        parts = [
            f"step {event.step}/{event.total_steps}" if event.total_steps else f"step {event.step}"
        ]
        parts.append(f"epoch {event.epoch:.2f}")
        if event.loss is not None:
            parts.append(f"loss {event.loss:.4f}")
        if event.learning_rate is not None:
            parts.append(f"lr {event.learning_rate:.1e}")
        if event.tokens_per_second is not None:
            parts.append(f"{event.tokens_per_second:,.0f} tok/s")
        if event.eta_seconds is not None:
            parts.append(f"ETA {format_duration(event.eta_seconds)}")
        return "[affiner] " + "  ".join(parts)
    if isinstance(event, EvalResult):
        parts = [f"eval at step {event.step}"]
        for name in ("loss", "perplexity", "accuracy", "f1"):
            value = getattr(event, name)
            if value is not None:
                parts.append(f"{name} {value:.4f}")
        return "[affiner] " + "  ".join(parts)
    if isinstance(event, Checkpoint):
        kind = "best model" if event.best else "checkpoint"
        return f"[affiner] {kind} saved at step {event.step}: {event.path}"
    if isinstance(event, Warning_):
        action = f" ({event.action})" if event.action and event.action != "none" else ""
        return f"[affiner] WARNING {event.code}: {event.message}{action}"
    if isinstance(event, Error):
        return f"[affiner] ERROR {event.code}: {event.message}"
    if isinstance(event, Preflight):
        return (
            f"[affiner] pre-flight: peak {format_bytes(event.measured_peak_bytes)} "
            f"(predicted {format_bytes(event.predicted_peak_bytes)}), "
            f"{format_duration(event.measured_step_seconds)}/step"
            + (f", adjusted to micro_batch {event.micro_batch}" if event.adjusted else "")
        )
    if isinstance(event, Progress):
        return _progress_line(event)
    if isinstance(event, RunFinished):
        best = (
            f", best eval loss {event.best_eval_loss:.4f}"
            if event.best_eval_loss is not None
            else ""
        )
        return f"[affiner] {event.state} at step {event.step}{best}. {event.message}".rstrip()
    return None


def _progress_line(event: Progress) -> str | None:
    """A silent phase when it opens and when its count completes; the throttled events in
    between would only repeat it (``affiner attach`` shows the count as it goes)."""
    what, unit = phase_words(event.phase, event.step)
    counted = " ".join(str(part) for part in (event.total, unit) if part)
    if event.total > 0 and event.done >= event.total:
        return f"[affiner] {what}: {event.done} of {counted}"
    if event.done <= 1:
        return f"[affiner] {what}" + (f" ({counted})" if event.total > 0 else "")
    return None


class Follower:
    """Copies new ``train.log`` bytes and new events (as lines) to `out`, from now on."""

    def __init__(self, run_dir: RunDir, out: TextIO) -> None:
        self.run_dir = run_dir
        self.out = out
        self.log_offset = run_dir.log.stat().st_size if run_dir.log.exists() else 0
        self.events = EventReader(run_dir.path)
        self.events.read_new()  # an earlier attempt's events (a resume) were shown back then
        self._skipped = self.events.skipped.count

    def pump(self) -> None:
        """Copy what is new; lines of the log that do not fit the schema are skipped, and said
        in one warning line each time more of them were."""
        self.log_offset = _copy_new(self.run_dir.log, self.log_offset, self.out)
        events = self.events.read_new()
        skipped = self.events.skipped
        if skipped.count != self._skipped:
            self._skipped = skipped.count
            warning = skipped.warning()
            events += [warning] if warning is not None else []
        for event in events:
            line = event_line(event)
            if line:
                self.out.write(line + "\n")
        self.out.flush()


def follow_worker(run_dir: RunDir, child: subprocess.Popen[bytes], *, follower: Follower) -> int:
    """Follow the worker until it exits; return its exit code.

    Make the `follower` before starting the worker, so no early event is missed.

    Ctrl-C asks the run to stop (SIGTERM: it saves a checkpoint and ends ``stopped``) and keeps
    following until it has; a second Ctrl-C leaves it stopping on its own.
    """
    out = follower.out
    interrupts = 0
    while True:
        try:
            follower.pump()
            if child.poll() is not None:
                follower.pump()
                return child.returncode
            time.sleep(0.2)
        except KeyboardInterrupt:
            interrupts += 1
            if interrupts > 1:
                out.write(f"\naffiner: left run {run_dir.run_id} stopping on its own\n")
                return 130
            out.write(
                "\naffiner: stopping the run (it saves a checkpoint first; Ctrl-C again to leave it)\n"
            )
            send_signal(child.pid, signal.SIGTERM)


def _copy_new(path: Path, offset: int, out: TextIO) -> int:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except FileNotFoundError:
        return offset
    if data:
        out.write(data.decode("utf-8", errors="replace"))
    return offset + len(data)
