"""The pre-flight check as a child process, so the caller never holds torch, a model or a GPU.

The check itself (`affiner.runner.training.run_preflight`) loads the model and times a few real
steps. Run inside the TUI it would leave torch, the model's memory and a CUDA context (0.4-0.5
GiB of the GPU the plan counted as free) in the TUI for the rest of its life, and pinning one
GPU would rewrite ``CUDA_VISIBLE_DEVICES`` for every run the TUI starts afterwards. So
`run_preflight_process` writes the configuration into a temporary run folder outside the runs
root (a pre-flight is not a run), starts ``python -m affiner.runner.worker FOLDER
--preflight-only --exit-with-parent`` in its own session and reads the outcome back from the
folder, as every reader of a run does: a ``preflight`` event on success, an ``error`` event
(the child's `AffinerError` in words, or what crashed) on failure.

The child dies with the check: `cancelled` (polled while it runs) or an exception in the
caller (Ctrl-C) stops it, SIGINT to its process group first so it cleans its temporary
checkpoint up, SIGKILL after `STOP_GRACE_SECONDS`; if the caller dies outright (SIGKILL, a
dropped SSH session) the pipe on the child's stdin closes and ``--exit-with-parent`` ends it.

While the child works, the poll also reads its ``progress`` events (the phases below, written by
`affiner.runner.training.preflight`) and hands the caller a `PreflightProgress` on every poll:
what it is doing, how far, how long it has taken and, once steps have been timed, how long the
steps still need at the pace measured so far.
"""

from __future__ import annotations

import copy
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from affiner.planner.errors import AffinerError
from affiner.runner.config import RunConfig, resolve_paths, save_config, validate_config
from affiner.runner.config.io import check_for_this_machine
from affiner.runner.run.diskspace import DiskFullError, free_bytes, is_disk_full
from affiner.runner.run.events import Error, EventReader, Preflight, Progress, read_events
from affiner.runner.run.launch import child_env
from affiner.runner.run.phases import PREFLIGHT_LOAD, PREFLIGHT_START, PREFLIGHT_TRAIN
from affiner.runner.run.process import (
    exit_words,
    spawn_detached,
    stop_process_group,
    worker_argv,
)
from affiner.runner.run.rundir import RunDir

#: Seconds a stopped pre-flight gets to leave (and remove its temporary checkpoint) before SIGKILL.
STOP_GRACE_SECONDS = 5.0


@dataclass(frozen=True)
class PreflightProgress:
    """How far a running pre-flight has got, as its caller reads it.

    Attributes:
        phase: `PREFLIGHT_START`, `_LOAD`, `_TRAIN`, `_EVAL` or `_SAVE`.
        done, total: micro-batches timed of those it will time (`PREFLIGHT_TRAIN`; 0 otherwise).
        steps_done, steps: optimizer steps finished, of those it will time (`PREFLIGHT_TRAIN`; 0 otherwise).
        elapsed: seconds since the child started.
        in_phase: seconds the current phase has lasted.
        left: seconds the timed steps still need at the pace measured so far, None before
            one has been measured (or outside `PREFLIGHT_TRAIN`). The evaluation batch and the save that
            follow are not in it.
    """

    phase: str
    done: int = 0
    total: int = 0
    steps_done: int = 0
    steps: int = 0
    elapsed: float = 0.0
    in_phase: float = 0.0
    left: float | None = None


class _ProgressReader:
    """Turns the child's ``progress`` events into `PreflightProgress` (see the module docstring)."""

    def __init__(self, folder: Path, started: float, accum: int) -> None:
        self._reader = EventReader(folder)
        self._accum = max(1, accum)  # micro-batches a step; learnt from the first step's end
        self._started = started  # time.time() when the child started
        self._phase: Progress | None = None  # the latest progress event
        self._phase_since = started
        self._pace_from: Progress | None = None  # first event after the warm-up step

    def read(self, now: float) -> PreflightProgress:
        for event in self._reader.read_new():
            if not isinstance(event, Progress):
                continue
            if self._phase is None or event.phase != self._phase.phase:
                self._phase_since = event.t or now
            if event.phase == PREFLIGHT_LOAD:  # a new attempt (after an out-of-memory): a new pace
                self._pace_from = None
            if event.phase == PREFLIGHT_TRAIN and event.step >= 1 and self._pace_from is None:
                self._pace_from = event  # written at the step's end: done is one step's worth
                self._accum = max(1, event.done // event.step)
            self._phase = event
        latest = self._phase
        if latest is None:
            return PreflightProgress(
                PREFLIGHT_START, elapsed=now - self._started, in_phase=now - self._started
            )
        left = None
        first = self._pace_from
        if latest.phase == PREFLIGHT_TRAIN and first is not None and latest.done > first.done:
            pace = (latest.t - first.t) / (latest.done - first.done)
            # counted from the latest event, so the figure counts down between events
            left = max(0.0, pace * (latest.total - latest.done) - (now - latest.t))
        return PreflightProgress(
            latest.phase,
            done=latest.done,
            total=latest.total,
            steps_done=latest.step,
            steps=latest.total // self._accum if latest.phase == PREFLIGHT_TRAIN else 0,
            elapsed=now - self._started,
            in_phase=now - self._phase_since,
            left=left,
        )


def run_preflight_process(
    cfg: RunConfig,
    *,
    cancelled: Callable[[], bool] | None = None,
    progress: Callable[[PreflightProgress], None] | None = None,
    poll_seconds: float = 0.2,
    python: str | None = None,
) -> Preflight:
    """Measure peak memory and step time for `cfg` in a child process and return its event.

    Args:
        cfg: the run configuration; relative paths are read from the current folder. It is not
            changed: the event carries the batch that fits (``micro_batch``, ``grad_accum``,
            ``adjusted``) and the measured figures.
        cancelled: polled every `poll_seconds` while the child runs; when it returns True the
            child is stopped and `AffinerError` raised (a TUI passes its worker's
            ``is_cancelled``).
        progress: called on every poll with how far the child has got (`PreflightProgress`),
            in the calling thread (none by default).
        python: the interpreter for the child (default this one).

    Raises:
        AffinerError: the configuration is invalid, the child reported an error (its words,
            never a traceback; a crash's traceback stays in the kept folder's ``train.log``),
            it died without saying why, or the check was cancelled.
    """
    own = copy.deepcopy(cfg)
    resolve_paths(own, Path.cwd())
    validate_config(own, where="run configuration")
    check_for_this_machine(own, where="run configuration")  # the GPUs a layout needs are here
    # the model's config is read before a child loads anything: remote code, a config naming
    # only its model_type, a missing folder are said in words here (data stays the worker's:
    # the pre-flight reads only the rows it times)
    from affiner.runner.run.validate import check_model

    check_model(own)
    try:
        rd = RunDir(Path(tempfile.mkdtemp(prefix="affiner-preflight-")))
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        raise _no_room(tempfile.gettempdir()) from exc
    keep = False
    try:
        try:
            save_config(own, rd.config)
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            raise _no_room(rd.path) from exc
        listener = progress
        accum = int(own.training.grad_accum or 1)  # the progress reader's first guess
        code = _run_child(rd, cancelled or (lambda: False), listener, accum, poll_seconds, python)
        events = read_events(rd.path)
        measured = [e for e in events if isinstance(e, Preflight)]
        if code == 0 and measured:
            return measured[-1]
        errors = [e for e in events if isinstance(e, Error)]
        # A configuration or data problem (exit 2) is said in full by its message; for a
        # crash or a kill, the log is the only trace, so the folder is kept.
        keep = code != 2
        hint = f"the pre-flight's log is {rd.log}" if keep else None
        if errors:
            raise AffinerError(errors[-1].message, hint=hint)
        raise AffinerError(f"the pre-flight process {exit_words(code)} without a result", hint=hint)
    finally:
        if not keep:
            shutil.rmtree(rd.path, ignore_errors=True)


def _no_room(where: str | Path) -> DiskFullError:
    """A full temporary disk, said plainly: the check's folder lives there."""
    return DiskFullError(where, None, free_bytes(where), "the pre-flight's temporary folder")


def _run_child(
    rd: RunDir,
    cancelled: Callable[[], bool],
    progress: Callable[[PreflightProgress], None] | None,
    accum: int,
    poll_seconds: float,
    python: str | None,
) -> int:
    """Start the child, wait for it while polling `cancelled`; stop it if anything interrupts."""
    argv = worker_argv(rd.path, "--preflight-only", "--exit-with-parent", python=python)
    with open(rd.log, "ab") as log:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        log.write(f"=== {stamp} affiner: {shlex.join(argv)}\n".encode())
    child = spawn_detached(
        argv, log_path=rd.log, cwd=rd.path, env=child_env(), stdin=subprocess.PIPE
    )
    reader = _ProgressReader(rd.path, time.time(), accum) if progress is not None else None
    try:
        while True:
            try:
                return child.wait(timeout=poll_seconds)
            except subprocess.TimeoutExpired:
                pass
            if reader is not None and progress is not None:
                progress(reader.read(time.time()))
            if cancelled():
                raise AffinerError("the pre-flight check was cancelled")
    finally:
        if child.poll() is None:
            stop_process_group(child, STOP_GRACE_SECONDS)
        if child.stdin is not None:
            child.stdin.close()


def peak_basis(device: str) -> str:
    """What a pre-flight's peak measures on `device` (``cpu`` or a GPU's name), in words: the
    process's resident memory on a CPU; on a GPU what the device needs, torch's reserved peak
    plus the CUDA context, the basis of the plan's ``peak_bytes``."""
    if device == "cpu":
        return "process resident memory"
    return "device: torch reserved + CUDA context"
