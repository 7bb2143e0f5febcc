"""What each run is doing, read from its folder: the data behind ``affiner runs`` and the TUI's list.

A run folder is the only source (see `affiner.runner.run.rundir`): ``status.json`` for the state the worker
last wrote, ``events.jsonl`` for what happened, ``run.toml`` for what was asked. Nothing here
talks to the training process, so summarising is safe from any terminal, at any time.

One state is derived rather than written: a status that says ``starting`` or ``running``
whose process is gone (``kill -9``, the OOM killer, a reboot) becomes ``interrupted``, so the
user knows the run will not finish by itself and can be resumed from its last checkpoint.
When the run's last ``system`` sample shows its memory close to the machine's
(`likely_out_of_memory`), the message says so: ``killed (likely out of memory: peak RSS 22.1
GiB of 23.4 GiB)``. The kernel's out-of-memory killer sends SIGKILL, which leaves no trace in
the run's own files, so the sample is the only witness a reader has.

`summarize` is called again and again (the TUI's runs screen, a ``watch affiner runs`` loop), and a
long run's ``events.jsonl`` holds tens of thousands of lines, so the event log is not re-read
each time: `affiner.runner.run.tally` keeps, per events file, how far it was read and the folded
state `summarize` needs, and the next call reads only the bytes appended since. ``status.json``
and ``run.toml`` are small but parsing and checking them was most of a warm refresh over 200
folders, so their parsed form is kept too, keyed on the file's exact bytes (`_by_content`):
a changed file is always parsed again, however fast it was rewritten.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from affiner.planner.errors import AffinerError
from affiner.planner.units import format_bytes
from affiner.runner.config import read_raw_config
from affiner.runner.run.checkpoints import latest_checkpoint
from affiner.runner.run.events import (
    FINAL_STATES,
    STATUS_FILE,
    EvalResult,
    Event,
    RunFinished,
    RunStarted,
    RunStatus,
    SystemSample,
    event_from_dict,
    has_class_metrics,
    read_status,
)
from affiner.runner.run.process import is_worker_of
from affiner.runner.run.rundir import RunDir, find_run, list_run_dirs, model_name, runs_root
from affiner.runner.run.tally import tally_events

#: A derived state: the status says the run is live but its process is gone.
INTERRUPTED = "interrupted"
#: A folder without a readable status and without events that say how it ended.
UNKNOWN = "unknown"
#: States in which a worker process should be alive.
LIVE_STATES = ("starting", "running")
#: States after which a run can be resumed: its worker is gone and it did not finish.
RESUMABLE_STATES = ("stopped", "failed", INTERRUPTED)
#: A ``starting`` status with no pid yet is given this long before it counts as interrupted
#: (the launcher writes the pid right after the spawn, so only a crash leaves it empty).
STARTING_GRACE_SECONDS = 120.0
#: A worker gone without a final state is taken for one the kernel killed for memory when its
#: last sample showed its peak resident memory at this share of the machine's memory ...
NEAR_FULL_PROCESS = 0.8
#: ... or the machine's memory in use (the worker's and everyone else's) at this share.
NEAR_FULL_MACHINE = 0.9
#: Bytes read from the end of ``events.jsonl`` to find the last ``system`` sample (one every 5 s,
#: a few hundred bytes each: the last one is always within the last few events).
SAMPLE_TAIL_BYTES = 256 * 1024


@dataclass
class RunSummary:
    """One run at a glance.

    Attributes:
        run_id: the folder's name.
        path: the run folder.
        state: one of `affiner.runner.run.events.RUN_STATES`, or ``interrupted`` / ``unknown`` (see module doc).
        pid: the worker's pid from ``status.json``; pid_alive: whether that pid is this run's worker now.
        model, method: from ``run.toml`` (model shown by its folder name when it is a path).
        step, total_steps, progress: optimizer steps done, planned, and their ratio (None when unknown).
        epoch: fractional epoch of the last log.
        task: ``causal_lm`` or ``classification``, from ``run.toml``, else from the evaluations
            (classification scores mean classification); empty when neither tells.
        best_eval_loss: lowest eval loss seen; best_metric_name/best_metric: the headline metric
            at that evaluation (accuracy or F1 for classification, perplexity for language models).
        started, updated: unix times.
        message: the status's message, or the last error, or how the run ended.
        warnings: how many warnings the run logged.
        last_loss, eta_seconds: from the last training log.
        last_checkpoint_step: the newest checkpoint on disk (what a resume starts from).
    """

    run_id: str
    path: Path
    state: str
    pid: int | None = None
    pid_alive: bool = False
    model: str = ""
    method: str = ""
    task: str = ""
    step: int = 0
    total_steps: int = 0
    progress: float | None = None
    epoch: float = 0.0
    best_eval_loss: float | None = None
    best_metric_name: str | None = None
    best_metric: float | None = None
    started: float | None = None
    updated: float | None = None
    message: str = ""
    warnings: int = 0
    last_loss: float | None = None
    eta_seconds: float | None = None
    last_checkpoint_step: int | None = None

    @property
    def final(self) -> bool:
        """The run ended by itself or was stopped: nothing more will happen without a resume."""
        return self.state in FINAL_STATES

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        return data


def _as_rundir(run_dir: RunDir | str | os.PathLike[str]) -> RunDir:
    return run_dir if isinstance(run_dir, RunDir) else RunDir(Path(run_dir))


#: Parsed small files by path: (their bytes, what parsing them gave). Bounded: see `_by_content`.
_PARSED: dict[tuple[str, Path], tuple[bytes, Any]] = {}
#: Files whose parse is kept (past this the cache starts over; a runs root rarely holds more).
MAX_PARSED = 4096


def _by_content(kind: str, path: Path, parse: Any) -> Any:
    """``parse(path)``, or what it gave last time when the file's bytes are the same.

    Keyed on the bytes, not the modification time: a file rewritten within the clock's tick
    with the same size would look unchanged by its time. Reading a few hundred bytes is cheap;
    parsing TOML and checking JSON against the schema is what cost. A failure to parse (a
    ValueError) is kept as well and raised again; a file that cannot be read is not kept.
    """
    try:
        raw = path.read_bytes()
    except OSError:
        return parse(path)
    hit = _PARSED.get((kind, path))
    if hit is None or hit[0] != raw:
        try:
            value: Any = parse(path)
        except ValueError as error:
            value = error
        if len(_PARSED) >= MAX_PARSED:
            _PARSED.clear()
        hit = _PARSED[(kind, path)] = (raw, value)
    if isinstance(hit[1], ValueError):
        raise hit[1]
    return hit[1]


def cached_raw_config(path: Path) -> dict[str, Any]:
    """`read_raw_config`, parsed again only when the file's bytes changed (do not modify it)."""
    return _by_content("toml", path, read_raw_config)  # type: ignore[no-any-return]


def _read_status(run_dir: Path) -> RunStatus | None:
    """`read_status`, checked again only when ``status.json``'s bytes changed."""
    return _by_content("status", run_dir / STATUS_FILE, lambda _path: read_status(run_dir))  # type: ignore[no-any-return]


def _read_config_labels(path: Path) -> tuple[str, str, str]:
    """Model, method and task from ``run.toml`` without validating it (a summary never fails).

    The task is empty unless the file names one of ``causal_lm`` / ``classification``.
    """
    try:
        data = cached_raw_config(path)
    except (OSError, ValueError):
        return "", "", ""
    model_section = data.get("model") if isinstance(data.get("model"), dict) else {}
    method_section = data.get("method") if isinstance(data.get("method"), dict) else {}
    task = str(model_section.get("task", ""))
    return (
        model_label(str(model_section.get("name_or_path", ""))),
        str(method_section.get("name", "")),
        task if task in ("causal_lm", "classification") else "",
    )


def run_task(run_dir: RunDir | str | os.PathLike[str]) -> str:
    """The task ``run.toml`` names (``causal_lm`` / ``classification``), or "" when it names none."""
    return _read_config_labels(_as_rundir(run_dir).config)[2]


def is_language_model(evals: list[EvalResult], task: str | None = None) -> bool:
    """Whether perplexity means anything for a run: its task, else what its evaluations hold.

    Perplexity is exp(loss) of next-token prediction; for a classification head's
    cross-entropy it is a number without a meaning, so screens show it only when this is True.

    Args:
        evals: the run's evaluations (read only when `task` is not known).
        task: ``causal_lm`` or ``classification`` from the run's config; empty or None when
            unknown, and then a run is a language model unless an evaluation has
            classification scores (every classification run logs accuracy).
    """
    if task:
        return task == "causal_lm"
    return not any(has_class_metrics(event) for event in evals)


def model_label(name_or_path: str) -> str:
    """A short name for a model: a hub id as written, a folder by the name the run id gives it
    (`model_name`: an offline model's key, never a generic ``model`` or a cache's hash)."""
    if not name_or_path:
        return ""
    path = Path(name_or_path)
    if path.is_absolute() or name_or_path.startswith((".", "~")) or path.exists():
        return model_name(name_or_path)
    return name_or_path


def last_attempt(events: list[Event]) -> list[Event]:
    """The events since the last ``run_started`` (a resumed run starts a new attempt)."""
    for index in range(len(events) - 1, -1, -1):
        if isinstance(events[index], RunStarted):
            return events[index:]
    return events


def summarize(run_dir: RunDir | str | os.PathLike[str], *, now: float | None = None) -> RunSummary:
    """Summarise one run folder. Never raises for a damaged folder: it reports what it can.

    The event log is read incrementally (see the module docstring); the status, config and
    checkpoints are read each time, as they are small and change in place.
    """
    rd = _as_rundir(run_dir)
    now = time.time() if now is None else now
    status = _read_status(rd.path)
    tally = tally_events(rd.events)
    model, method, task = _read_config_labels(rd.config)

    summary = RunSummary(run_id=rd.run_id, path=rd.path, state=UNKNOWN, model=model, method=method)
    started = tally.last_started
    if tally.first_started is not None and started is not None:
        summary.started = tally.first_started.t or None
        summary.total_steps = started.total_steps
        summary.model = summary.model or model_label(started.model)
        summary.method = summary.method or started.method

    latest = tally.latest_log
    if latest is not None:
        summary.step, summary.epoch = latest.step, latest.epoch
        summary.total_steps = latest.total_steps or summary.total_steps
        summary.last_loss = tally.last_loss
        summary.eta_seconds = latest.eta_seconds
    if task:
        summary.task = task
    elif tally.best_eval is not None or tally.class_metrics:
        summary.task = "classification" if tally.class_metrics else "causal_lm"
    _fill_best_eval(summary, tally.best_eval, language_model=summary.task != "classification")
    summary.warnings = tally.warnings
    ckpt = latest_checkpoint(rd)
    summary.last_checkpoint_step = tally.checkpoint_step if ckpt is None else ckpt[0]

    finished = tally.finished
    if status is not None:
        summary.pid = status.pid
        summary.step = max(summary.step, status.step)
        summary.total_steps = status.total_steps or summary.total_steps
        summary.epoch = max(summary.epoch, status.epoch)
        summary.started = status.started or summary.started
        summary.updated = status.updated or None
        summary.message = status.message
        if summary.best_eval_loss is None:
            summary.best_eval_loss = status.best_eval_loss
    elif started is not None:
        summary.pid = started.pid or None
    summary.pid_alive = is_worker_of(summary.pid, rd.path)
    summary.state = derive_state(status, started is not None, finished, summary.pid_alive, now)
    if finished is not None:
        summary.message = summary.message or finished.message
    if summary.state == UNKNOWN and status is None:
        summary.message = summary.message or "no status.json and no events in the run folder"
    if summary.updated is None:
        summary.updated = tally.last_t if tally.last_t is not None else _mtime(rd.path)
    if summary.total_steps:
        summary.progress = min(1.0, summary.step / summary.total_steps)
    if summary.state == INTERRUPTED and not summary.message.startswith(("interrupted", "killed")):
        summary.message = _interrupted_message(summary, last_system_sample(rd.events))
    return summary


def derive_state(
    status: RunStatus | None,
    has_started: bool,
    finished: RunFinished | None,
    alive: bool,
    now: float | None = None,
) -> str:
    """The state to show. A final status wins; a live one needs its process; else the events say.

    Args:
        status: ``status.json`` (None when missing).
        has_started: the event log holds a ``run_started``.
        finished: the ``run_finished`` event of the latest attempt, if any.
        alive: the status's pid is this run's worker (`affiner.runner.run.process.is_worker_of`).
        now: the time to judge a fresh ``starting`` status by.
    """
    now = time.time() if now is None else now
    if status is not None and status.state not in LIVE_STATES:
        return status.state
    if alive:
        return status.state if status is not None else "running"
    if finished is not None and (status is None or finished.t >= (status.updated or 0.0) - 1.0):
        # The worker logged its end but died before rewriting status.json. (A status written
        # after that event belongs to a relaunch that has not logged anything yet.)
        return finished.state
    if status is not None:
        fresh = now - (status.updated or 0.0) < STARTING_GRACE_SECONDS
        if status.state == "starting" and not status.pid and fresh:
            return "starting"
        return INTERRUPTED
    return INTERRUPTED if has_started else UNKNOWN


def _interrupted_message(summary: RunSummary, sample: SystemSample | None = None) -> str:
    where = (
        f"resume from the checkpoint at step {summary.last_checkpoint_step}"
        if summary.last_checkpoint_step is not None
        else "no checkpoint yet, so a resume starts from scratch"
    )
    killed = likely_out_of_memory(sample)
    if killed:
        return (
            f"{killed}: the training process is gone without a final state ({where}; lower "
            "[training].micro_batch or [data].max_seq_len first, or free memory)"
        )
    return f"interrupted: the training process is gone without a final state ({where})"


def likely_out_of_memory(sample: SystemSample | None) -> str | None:
    """``killed (likely out of memory: peak RSS X of Y)`` when `sample` shows memory near full.

    Near full: the worker's peak resident memory at `NEAR_FULL_PROCESS` of the machine's, or
    the machine's memory in use at `NEAR_FULL_MACHINE`. None otherwise, or without a sample.
    """
    if sample is None:
        return None
    total = _positive(sample.ram_total)
    if total is None:
        return None
    rss = (_positive(sample.process_rss), _positive(sample.process_peak_rss))
    peak = max((v for v in rss if v is not None), default=0.0)
    used = _positive(sample.ram_used)
    machine_full = used is not None and used >= NEAR_FULL_MACHINE * total
    if not peak or (peak < NEAR_FULL_PROCESS * total and not machine_full):
        return None
    return f"killed (likely out of memory: peak RSS {format_bytes(peak)} of {format_bytes(total)})"


def _positive(value: object) -> float | None:
    """A byte count from a sample, None unless it is a positive number (never a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) and number > 0 else None


def last_system_sample(events: Path) -> SystemSample | None:
    """The newest ``system`` event in the last `SAMPLE_TAIL_BYTES` of an event log, or None.

    Never raises: a missing or damaged log, or a line that is not a valid sample, gives None
    or is passed over.
    """
    try:
        with open(events, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - SAMPLE_TAIL_BYTES))
            tail = handle.read()
    except OSError:
        return None
    for raw in reversed(tail.split(b"\n")):
        if b'"system"' not in raw:
            continue
        try:
            data = json.loads(raw)
        except ValueError:
            continue
        if isinstance(data, dict) and data.get("type") == SystemSample.type:
            try:
                event = event_from_dict(data)
            except Exception:  # a reader never raises on file content
                continue
            if isinstance(event, SystemSample):
                return event
    return None


def _fill_best_eval(summary: RunSummary, best: EvalResult | None, *, language_model: bool) -> None:
    """The lowest-loss evaluation's loss and headline score (never perplexity for classification)."""
    if best is None:
        return
    summary.best_eval_loss = best.loss
    names = ("accuracy", "f1", "perplexity") if language_model else ("accuracy", "f1")
    for name in names:
        value = getattr(best, name)
        if value is not None:
            summary.best_metric_name, summary.best_metric = name, value
            return


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def list_runs(root: str | os.PathLike[str] | None = None) -> list[RunSummary]:
    """Every run under the runs root, newest first (by start time, then folder name)."""
    # Hidden folders are run folders still being written by the launcher (never listed).
    summaries = [summarize(rd) for rd in list_run_dirs(root) if not rd.run_id.startswith(".")]
    summaries.sort(key=lambda s: (s.started or s.updated or 0.0, s.run_id), reverse=True)
    return summaries


def resolve_run(ref: str, root: str | os.PathLike[str] | None = None) -> RunDir:
    """Turn a run reference (path, id, unique id prefix or suffix) into its folder, or explain.

    Raises:
        AffinerError: nothing matches (the message lists recent runs) or several do (it lists them).
    """
    ref = ref.strip()
    if not ref:
        raise AffinerError("no run given", hint="pass a run id from `affiner runs`")
    base = runs_root(root)
    as_path = Path(ref).expanduser()
    if os.sep in ref or ref.startswith((".", "~")):
        if (as_path / "run.toml").exists() or (as_path / "events.jsonl").exists():
            return RunDir(as_path.resolve())
        if as_path.is_dir():
            raise AffinerError(
                f"{ref} is a folder but not a run folder (it has no run.toml or events.jsonl)",
                hint="pass a run folder, or a run id from `affiner runs`",
            )
    found = find_run(ref, root)
    if found is not None:
        return found
    matches = sorted(
        p.name
        for p in (base.iterdir() if base.is_dir() else [])
        if p.is_dir() and (p.name.startswith(ref) or p.name.endswith(ref))
    )
    if len(matches) > 1:
        shown = "\n    ".join(matches[:10])
        raise AffinerError(
            f"run reference {ref!r} matches {len(matches)} runs:\n    {shown}",
            hint="give more of the id",
        )
    recent = [rd.run_id for rd in list_run_dirs(root) if not rd.run_id.startswith(".")][:5]
    listing = ("recent runs:\n    " + "\n    ".join(recent)) if recent else f"no runs in {base}"
    raise AffinerError(
        f"no run matches {ref!r} in {base}",
        hint=f"{listing}\n  (`affiner runs` lists them; --runs-dir or $AFFINER_RUNS picks another root)",
    )
