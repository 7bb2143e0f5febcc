"""A run's history as the monitor draws it, folded from its events one batch at a time.

The monitor never re-reads a run from the start: `RunHistory.add()` takes each new batch
of events and keeps the series (loss, learning rate, memory, throughput), the progress, the
evaluations and the warnings. It is plain Python, so it is tested without a screen.

A resumed run writes a second ``run_started`` with ``resumed_from_step``. What the earlier
attempt logged after that step is dropped, as the resumed run logs it again: the history
keeps the events it folded, and when a resume drops some of them it folds again what
`affiner.runner.run.effective_events` keeps. So the monitor and ``affiner attach`` show the
steps, evaluations, warnings and memory samples ``affiner runs`` counts, by the same rule.

Between training logs a run can go quiet for minutes (the base model's evaluation, a mid-run
evaluation, a checkpoint). ``progress`` events name such a phase and count it;
`RunHistory.phase_line` turns the open one into "evaluating the base model · 41 of 200
batches · ~1 min left", counting down with the clock between events.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, replace

from affiner.planner.units import format_duration
from affiner.runner.run import (
    BASE_EVAL,
    EVAL,
    FILE_WARNINGS,
    NOT_STEPS,
    SAVE,
    Checkpoint,
    Error,
    EvalResult,
    Event,
    Preflight,
    Progress,
    RunFinished,
    RunStarted,
    SystemSample,
    TrainLog,
    Warning_,
    dropped_by_resume,
    effective_events,
    phase_words,
    resume_step,
    step_gap,
)
from affiner.tui.live.ranks import (
    RankReading,
    layout_words,
    memory_of,
    rank_label,
    rank_memory,
)

Point = tuple[float, float]

#: How many recent steps the measured step time is the median of.
RECENT_STEPS = 5
#: Warning codes shown in the prominent banner rather than only listed.
SERIOUS_WARNINGS = ("overfitting", "nan_loss", "oom")

#: Phases that are evaluations: the last one's length foretells the next one's.
EVAL_PHASES = (BASE_EVAL, EVAL)


@dataclass
class MemorySeries:
    """One device's memory over time: (step, bytes used), and its capacity when known."""

    label: str
    points: list[Point] = field(default_factory=list)
    total: int | None = None

    @property
    def latest(self) -> int | None:
        return int(self.points[-1][1]) if self.points else None


@dataclass
class RunHistory:
    """Everything the monitor shows about one run, built from its events."""

    run_id: str = ""
    model: str = ""
    method: str = ""
    device: str = ""
    total_steps: int = 0
    epochs: float = 0.0
    step: int = 0
    epoch: float = 0.0
    eta_seconds: float | None = None
    #: when the ETA above was logged (the ETA counts down from there between log lines)
    eta_logged_at: float | None = None
    train_loss: list[Point] = field(default_factory=list)
    eval_loss: list[Point] = field(default_factory=list)
    learning_rate: list[Point] = field(default_factory=list)
    tokens_per_second: list[Point] = field(default_factory=list)
    evals: list[EvalResult] = field(default_factory=list)
    memory: dict[str, MemorySeries] = field(default_factory=dict)
    predicted_peak_bytes: int | None = None
    measured_peak_bytes: int | None = None
    #: the run's layout (`RunStarted.world_size`, `.nodes`, `.strategy`): 1, 1, None for a
    #: single process
    world_size: int = 1
    nodes: int = 1
    strategy: str | None = None
    #: a multi-process run's latest ``system`` event of each rank, by rank (empty otherwise)
    rank_samples: dict[int, SystemSample] = field(default_factory=dict)
    #: the GPU index each rank reported as its own (see `_own_gpu`)
    rank_gpu: dict[int, int] = field(default_factory=dict)
    #: the highest memory each rank reported over the run, by rank (`ranks.memory_of`'s
    #: figure: what a summary at the end calls the rank's peak)
    rank_peak_bytes: dict[int, int] = field(default_factory=dict)
    #: each rank's peak as a multi-process pre-flight measured it, by rank (empty otherwise)
    preflight_rank_peaks: list[int] = field(default_factory=list)
    warnings: list[Warning_] = field(default_factory=list)
    errors: list[Error] = field(default_factory=list)
    best_checkpoint: Checkpoint | None = None
    finished: RunFinished | None = None
    on_gpu: bool = False
    #: the step time the run was planned at, and where it comes from (``plan`` or
    #: ``pre-flight``: a measured figure replaces the plan's)
    planned_step_seconds: float | None = None
    planned_step_source: str = "plan"
    #: seconds per step between recent consecutive training logs (gaps with an evaluation,
    #: a checkpoint or a restart left out: they are not steps)
    step_seconds_recent: list[float] = field(default_factory=list)
    last_sample: SystemSample | None = None
    #: the open silent phase's first and latest ``progress`` events (None when none is open)
    phase_first: Progress | None = None
    phase_latest: Progress | None = None
    #: how long the last finished phase of each kind took (``eval`` for both evaluations):
    #: the next one's expected length, before it has a pace of its own
    phase_seconds: dict[str, float] = field(default_factory=dict)
    _last_log: TrainLog | None = field(default=None, repr=False, compare=False)
    #: The effective events folded so far, kept to fold again when a resume drops some.
    _events: list[Event] = field(default_factory=list, repr=False, compare=False)

    def add(self, events: Iterable[Event]) -> None:
        """Fold a batch of events into the history, in order."""
        for event in events:
            cut = resume_step(event)
            if cut is not None and any(dropped_by_resume(e, cut) for e in self._events):
                self._fold_again(effective_events([*self._events, event]))
            else:
                self._fold(event)

    def _fold(self, event: Event) -> None:
        self._events.append(event)
        if isinstance(event, NOT_STEPS):  # the next log's gap holds more than steps
            self._last_log = None
        if isinstance(event, Progress):
            self._progress(event)
        elif not isinstance(event, (SystemSample, Warning_)):
            self._close_phase(event)  # the run moved on: whatever was silent has ended
        handler = _HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event)

    def _fold_again(self, events: list[Event]) -> None:
        """Start over from `events` (already effective), keeping the run id given at creation."""
        fresh = RunHistory(run_id=self.run_id)
        for event in events:
            fresh._fold(event)
        for name in (f.name for f in fields(self)):
            setattr(self, name, getattr(fresh, name))

    # -- derived values -------------------------------------------------------------------

    @property
    def progress(self) -> float | None:
        """Share of the optimizer steps done, 0..1 (None when the total is not known yet)."""
        if self.total_steps <= 0:
            return None
        return min(1.0, self.step / self.total_steps)

    @property
    def best_eval(self) -> EvalResult | None:
        scored = [e for e in self.evals if e.loss is not None]
        return min(scored, key=lambda e: e.loss or 0.0) if scored else None

    def eta_at(self, now: float) -> float | None:
        """The logged ETA counted down by the time since it was logged (never below 0).

        The worker's ETA already counts the evaluations still to come, so it keeps counting
        down through one; while a phase is open it never falls below what that phase still
        needs, as the run cannot end before the phase does.
        """
        if self.eta_seconds is None:
            return None
        eta = self.eta_seconds
        if self.eta_logged_at is not None:
            eta = max(0.0, eta - max(0.0, now - self.eta_logged_at))
        left = self.phase_left(now)
        return max(eta, left) if left is not None else eta

    def eta_text(self, now: float) -> str:
        """``ETA 4 min``, counting down between log lines; ``ETA overdue`` with the time since
        the last log once the countdown has run out while steps remain (a stalled run, or one
        that slowed down since it last logged)."""
        eta = self.eta_at(now)
        if eta is None:
            return f"ETA {format_duration(None)}"
        if eta == 0 and self.eta_logged_at is not None and self.step < self.total_steps:
            if self.phase_latest is not None:  # not stalled: in a phase that overran its guess
                return "ETA known once this phase ends"
            return f"ETA overdue ({format_duration(now - self.eta_logged_at)} since the last log)"
        return f"ETA {format_duration(eta)}"

    def phase_left(self, now: float) -> float | None:
        """Seconds the open phase still needs at `now` (0 once its time is up), None when unknown.

        The pace is the phase's own, from its first progress event to its latest; before it has
        one, a phase is expected to last as long as the previous one of its kind did.
        """
        first, latest = self.phase_first, self.phase_latest
        if first is None or latest is None:
            return None
        done, total = _count(latest)
        first_done, _ = _count(first)
        if total > 0 and done > first_done and latest.t > first.t:
            rate = (done - first_done) / (latest.t - first.t)
            left = (total - done) / rate - (now - latest.t)
        elif _kind(first) in self.phase_seconds:
            left = self.phase_seconds[_kind(first)] - (now - first.t)
        else:
            return None
        return max(0.0, left)

    def phase_line(self, now: float) -> str:
        """The open silent phase in words with a countdown; "" when no phase is open.

        ``evaluating the base model · 41 of 200 batches · ~1 min left``; with nothing to count
        or no pace yet, the time it has taken (``saving the checkpoint of step 100 · 4.2 s so
        far``); ``finishing`` once the countdown has run out. A run that ends logs an event
        that closes its phase, but one killed mid-phase cannot: show the line while the run
        is live only.
        """
        first, latest = self.phase_first, self.phase_latest
        if first is None or latest is None:
            return ""
        what, unit = phase_words(_phase(latest), latest.step)
        parts = [what]
        done, total = _count(latest)
        unit = f" {unit}" if unit else ""
        if total > 0:
            parts.append(f"{done} of {total}{unit}")
        elif done > 0:
            parts.append(f"{done}{unit}")
        left = self.phase_left(now)
        if left is None:
            parts.append(f"{format_duration(max(0.0, now - first.t))} so far")
        elif left > 0:
            parts.append(f"~{format_duration(left)} left")
        else:
            parts.append("finishing")
        return " · ".join(parts)

    @property
    def step_seconds(self) -> float | None:
        """The median of the last few measured steps (None before two logs)."""
        recent = self.step_seconds_recent[-RECENT_STEPS:]
        return statistics.median(recent) if recent else None

    @property
    def overfitting(self) -> Warning_ | None:
        """The latest overfitting warning, unless the run has ended since."""
        if self.finished is not None:
            return None
        found = [w for w in self.warnings if w.code == "overfitting"]
        return found[-1] if found else None

    @property
    def serious_warnings(self) -> list[Warning_]:
        return [w for w in self.warnings if w.code in SERIOUS_WARNINGS]

    # -- handlers -------------------------------------------------------------------------

    def _started(self, event: RunStarted) -> None:
        self.run_id = event.run_id or self.run_id
        self.model = event.model or self.model
        self.method = event.method or self.method
        self.device = event.device or self.device
        self.total_steps = event.total_steps or self.total_steps
        self.epochs = event.epochs or self.epochs
        if event.predicted_peak_bytes:
            self.predicted_peak_bytes = event.predicted_peak_bytes
        self.world_size = max(1, event.world_size or 1)
        self.nodes = max(1, event.nodes or 1)
        self.strategy = event.strategy if self.world_size > 1 else None
        if event.predicted_step_seconds and self.planned_step_source == "plan":
            self.planned_step_seconds = event.predicted_step_seconds
        self.finished = None
        if event.resumed_from_step is not None:  # the checkpoint holds this many steps
            self.step = max(self.step, event.resumed_from_step)

    def _train_log(self, event: TrainLog) -> None:
        self.step = max(self.step, event.step)
        self.epoch = event.epoch or self.epoch
        if event.total_steps:
            self.total_steps = event.total_steps
        self.eta_seconds = event.eta_seconds
        self.eta_logged_at = event.t or None
        gap = step_gap(self._last_log, event)
        if gap is not None:
            self.step_seconds_recent.append(gap[0])
            del self.step_seconds_recent[:-RECENT_STEPS]
        self._last_log = event
        _append(self.train_loss, event.step, event.loss)
        _append(self.learning_rate, event.step, event.learning_rate)
        _append(self.tokens_per_second, event.step, event.tokens_per_second)

    def _progress(self, event: Progress) -> None:
        # The same phase goes on while its name stays and its count does not go back; its step
        # may move (the pre-flight's training phase counts micro-batches across its steps).
        latest = self.phase_latest
        same = (
            latest is not None
            and _phase(latest) == _phase(event)
            and _count(event)[0] >= _count(latest)[0]
        )
        if not same:
            self.phase_first = event
        self.phase_latest = event

    def _close_phase(self, event: Event) -> None:
        first = self.phase_first
        if first is None:
            return
        took = event.t - first.t if event.t and first.t else None
        if isinstance(event, EvalResult) and event.runtime_seconds:
            took = event.runtime_seconds  # the Trainer's timing, from before the first batch
        # only the event that ends a phase of its kind times it (a log after an evaluation
        # that wrote no result would add training to its length)
        closer = _CLOSERS.get(_kind(first))
        if took is not None and took > 0 and (closer is None or isinstance(event, closer)):
            self.phase_seconds[_kind(first)] = took
        self.phase_first = self.phase_latest = None

    @property
    def eval_seconds(self) -> float | None:
        """How long the last finished evaluation took (None before one)."""
        return self.phase_seconds.get(EVAL)

    def _eval(self, event: EvalResult) -> None:
        self.evals.append(event)
        _append(self.eval_loss, event.step, event.loss)

    def _system(self, event: SystemSample) -> None:
        if event.rank is not None:
            self._rank_system(event)
            return
        self.last_sample = event
        step = float(event.step)
        if event.gpus:
            self.on_gpu = True
            for gpu in event.gpus:
                if gpu.memory_used is None:
                    continue
                series = self.memory.setdefault(
                    f"GPU {gpu.index}", MemorySeries(f"GPU {gpu.index}")
                )
                series.points.append((step, float(gpu.memory_used)))
                series.total = gpu.memory_total or series.total
        elif event.ram_used is not None:
            used = event.process_rss if event.process_rss is not None else event.ram_used
            label = "RAM (process)" if event.process_rss is not None else "RAM"
            series = self.memory.setdefault(label, MemorySeries(label))
            series.points.append((step, float(used)))
            series.total = event.ram_total or series.total
        peak = event.torch_peak or event.process_peak_rss
        if peak:
            self.measured_peak_bytes = max(self.measured_peak_bytes or 0, peak)

    def _rank_system(self, event: SystemSample) -> None:
        """One rank's reading: its own series (``rank 1``), never mixed into another's.

        Rank 0 writes every rank's samples one after another: folded into one "GPU 0" or
        "RAM (process)" series, two ranks' readings would zigzag between them.
        """
        rank = int(event.rank or 0)
        event = self._own_gpu(rank, event)
        self.rank_samples[rank] = event
        figure, _source = memory_of(event)
        if figure is not None:
            self.rank_peak_bytes[rank] = max(self.rank_peak_bytes.get(rank, 0), figure)
        if rank == 0 or self.last_sample is None:
            self.last_sample = event  # the machine's CPU use, for the drift's likely cause
        label = rank_label(rank, event.node, self.nodes)
        if event.gpus:
            self.on_gpu = True
            gpu = event.gpus[0]
            used, total = gpu.memory_used, gpu.memory_total
        else:
            used = event.process_rss if event.process_rss is not None else event.ram_used
            total = event.ram_total
        if used is not None:
            series = self.memory.setdefault(label, MemorySeries(label))
            series.points.append((float(event.step), float(used)))
            series.total = total or series.total
        peak = event.torch_peak or event.process_peak_rss
        if peak:
            self.measured_peak_bytes = max(self.measured_peak_bytes or 0, peak)

    def _own_gpu(self, rank: int, event: SystemSample) -> SystemSample:
        """The sample with the rank's own GPU only.

        A rank's reading sent at a training log holds its own GPU alone, and that is what is
        remembered; rank 0's periodic sampler may list every GPU NVML sees, and then the one
        remembered is kept (none while it is not known yet), so no rank shows another's GPU.
        """
        if len(event.gpus) == 1:
            self.rank_gpu[rank] = event.gpus[0].index
            return event
        if not event.gpus:
            return event
        known = self.rank_gpu.get(rank)
        own = [gpu for gpu in event.gpus if gpu.index == known]
        return replace(event, gpus=own)

    @property
    def ranks(self) -> list[RankReading]:
        """Each rank's latest memory, by rank (empty for a single-process run)."""
        return rank_memory(self.rank_samples, self.nodes)

    @property
    def layout(self) -> str:
        """``2 processes · ddp`` (nodes when more than one); "" for a single process."""
        return layout_words(self.world_size, self.nodes, self.strategy)

    def _preflight(self, event: Preflight) -> None:
        if event.measured_step_seconds:
            self.planned_step_seconds = event.measured_step_seconds
            self.planned_step_source = "pre-flight"
        if event.predicted_peak_bytes:
            self.predicted_peak_bytes = event.predicted_peak_bytes
        if event.measured_peak_bytes:
            self.measured_peak_bytes = max(self.measured_peak_bytes or 0, event.measured_peak_bytes)
        if event.rank_peaks:
            self.preflight_rank_peaks = list(event.rank_peaks)

    def _checkpoint(self, event: Checkpoint) -> None:
        if event.best:
            self.best_checkpoint = event

    def _warning(self, event: Warning_) -> None:
        if event.code in FILE_WARNINGS:  # one of each about the run folder's files: the latest
            self.warnings = [w for w in self.warnings if w.code != event.code]
        self.warnings.append(event)

    def _error(self, event: Error) -> None:
        self.errors.append(event)

    def _finished(self, event: RunFinished) -> None:
        self.finished = event
        self.step = max(self.step, event.step)
        self.eta_seconds = None


_HANDLERS = {
    RunStarted: RunHistory._started,
    TrainLog: RunHistory._train_log,
    EvalResult: RunHistory._eval,
    SystemSample: RunHistory._system,
    Preflight: RunHistory._preflight,
    Checkpoint: RunHistory._checkpoint,
    Warning_: RunHistory._warning,
    Error: RunHistory._error,
    RunFinished: RunHistory._finished,
}


def _phase(event: Progress) -> str:
    return str(event.phase or "")


#: The event that ends a phase of each kind when it goes as it should.
_CLOSERS: dict[str, type[Event]] = {EVAL: EvalResult, SAVE: Checkpoint}


def _kind(event: Progress) -> str:
    """What a phase's length foretells: an evaluation another evaluation's, else its own kind's."""
    return EVAL if _phase(event) in EVAL_PHASES else _phase(event)


def _count(event: Progress) -> tuple[int, int]:
    """A progress event's (done, total), 0 for what it does not carry."""
    return int(event.done or 0), int(event.total or 0)


def _append(series: list[Point], step: int, value: float | None) -> None:
    if value is None or not math.isfinite(value):
        return
    series.append((float(step), float(value)))


def smooth(points: Sequence[Point], weight: float) -> list[Point]:
    """Exponential moving average with TensorBoard's debiasing (the first points are not
    dragged towards zero). ``weight`` 0 returns the points unchanged."""
    if weight <= 0 or not points:
        return list(points)
    out: list[Point] = []
    average = 0.0
    for count, (x, y) in enumerate(points, start=1):
        average = average * weight + (1 - weight) * y
        out.append((x, average / (1 - weight**count)))
    return out


def downsample(points: Sequence[Point], width: int) -> list[Point]:
    """At most ``width`` points: each bucket of neighbours becomes its mean.

    A plot a few dozen cells wide cannot show 50,000 steps; averaging buckets keeps the
    trend (unlike taking every n-th point, which keeps noise) and the last point is kept
    exactly so the curve ends where the run is.
    """
    if width <= 0 or len(points) <= width:
        return list(points)
    size = len(points) / width
    out: list[Point] = []
    for bucket in range(width):
        chunk = points[int(bucket * size) : int((bucket + 1) * size)]
        if chunk:
            out.append(
                (sum(p[0] for p in chunk) / len(chunk), sum(p[1] for p in chunk) / len(chunk))
            )
    out[-1] = points[-1]
    return out


def downsample_extremes(points: Sequence[Point], width: int) -> list[Point]:
    """At most ``2 * width + 2`` points that keep every bucket's lowest and highest value.

    What a plot must never hide is a spike (a loss that jumped, a memory peak): averaging a
    bucket flattens it. Here each of ``width`` buckets of neighbours gives its minimum and its
    maximum, in step order, as the points they are; the first and the last point are always
    kept, so the curve starts and ends where the run did. A series that fits (``2 * width``
    points or fewer) comes back unchanged.
    """
    if not points:
        return []
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    return extremes(xs, ys, width)


def extremes(xs: Sequence[float], ys: Sequence[float], width: int) -> list[Point]:
    """`downsample_extremes` over a series held as two lists (what `SmoothedCurve` keeps).

    The buckets are scanned with the built-in ``min``/``max``/``index`` on list slices, which
    run in C: 200,000 points take a few milliseconds, against a Python loop's tens.
    """
    n = len(ys)
    if width <= 0 or n <= 2 * width:
        return list(zip(xs, ys, strict=True))
    size = n / width
    out: list[Point] = []
    for bucket in range(width):
        lo = int(bucket * size)
        hi = n if bucket == width - 1 else int((bucket + 1) * size)
        if hi <= lo:
            continue
        chunk = ys[lo:hi]
        low = chunk.index(min(chunk))
        high = chunk.index(max(chunk))
        for k in (low, high) if low <= high else (high, low):
            _keep(out, (xs[lo + k], chunk[k]))
    return _with_ends(out, xs, ys)


def _keep(out: list[Point], point: Point) -> None:
    """Append `point` unless it repeats the last one (a bucket's min and max can coincide)."""
    if not out or out[-1] != point:
        out.append(point)


def _with_ends(out: list[Point], xs: Sequence[float], ys: Sequence[float]) -> list[Point]:
    """`out` starting and ending where the series does, so a curve never loses its ends."""
    first, last = (xs[0], ys[0]), (xs[-1], ys[-1])
    if out[0] != first:
        out.insert(0, first)
    if out[-1] != last:
        out.append(last)
    return out


#: Points per block whose lowest and highest point `SmoothedCurve` keeps as it grows.
BLOCK = 64


class SmoothedCurve:
    """A curve as a plot draws it, kept between redraws and extended by the points added since.

    The monitor redraws on every batch, and at 200,000 logged steps smoothing the whole curve
    again (a Python loop) took 200 ms, four times the refresh budget, and scanning it for each
    column's extremes another 20 ms. So the curve is kept: the moving average is a left fold,
    and carrying its state on from the last point smoothed gives exactly the floats `smooth`
    gives (weight 0 keeps the points as they are); and every `BLOCK` points keep their lowest
    and highest one, so the columns' extremes come from the blocks (a few thousand values)
    instead of every point. The curve starts over when the weight changes or the points are not
    the ones seen before plus more (fewer of them, or a different first or last one: a resume
    folded the history again).
    """

    def __init__(self) -> None:
        self.weight: float | None = None
        self.xs: list[float] = []
        self.ys: list[float] = []
        self._first: Point | None = None
        self._last: Point | None = None
        self._average = 0.0
        # per block of BLOCK points: the lowest and highest value and where they are
        self._low: list[float] = []
        self._low_at: list[int] = []
        self._high: list[float] = []
        self._high_at: list[int] = []

    def update(self, points: Sequence[Point], weight: float) -> tuple[list[float], list[float]]:
        """The smoothed curve of `points` as (xs, ys); only the new points cost anything."""
        done = len(self.ys)
        if (
            weight != self.weight
            or len(points) < done
            or (done and (points[0] != self._first or points[done - 1] != self._last))
        ):
            self.__init__()  # type: ignore[misc]
            self.weight, done = weight, 0
        if len(points) == done:
            return self.xs, self.ys
        xs, ys = self.xs, self.ys
        if weight <= 0:
            for x, y in points[done:]:
                xs.append(x)
                ys.append(y)
        else:
            average = self._average
            for count, (x, y) in enumerate(points[done:], start=done + 1):
                average = average * weight + (1 - weight) * y
                xs.append(x)
                ys.append(average / (1 - weight**count))
            self._average = average
        self._first, self._last = points[0], points[-1]
        self._blocks(done)
        return xs, ys

    def _blocks(self, done: int) -> None:
        """Bring the block extremes up to date from point `done` (its block is redone)."""
        ys = self.ys
        block = done // BLOCK
        for lst in (self._low, self._low_at, self._high, self._high_at):
            del lst[block:]
        for lo in range(block * BLOCK, len(ys), BLOCK):
            chunk = ys[lo : lo + BLOCK]
            low, high = min(chunk), max(chunk)
            self._low.append(low)
            self._low_at.append(lo + chunk.index(low))
            self._high.append(high)
            self._high_at.append(lo + chunk.index(high))

    def shown(self, width: int) -> list[Point]:
        """The curve at ``width`` columns: `extremes` of it, the same guarantees, from blocks.

        Each column is a run of whole blocks; its lowest and highest point are its blocks'
        lowest and highest, so no extreme is lost. A curve with fewer blocks than columns is
        scanned point by point (it is short).
        """
        xs, ys = self.xs, self.ys
        blocks = len(self._low)
        if width <= 0 or len(ys) <= 2 * width or blocks < 2 * width:
            return extremes(xs, ys, width)
        size = blocks / width
        out: list[Point] = []
        for bucket in range(width):
            lo = int(bucket * size)
            hi = blocks if bucket == width - 1 else int((bucket + 1) * size)
            if hi <= lo:
                continue
            lows, highs = self._low[lo:hi], self._high[lo:hi]
            low = self._low_at[lo + lows.index(min(lows))]
            high = self._high_at[lo + highs.index(max(highs))]
            for k in (low, high) if low <= high else (high, low):
                _keep(out, (xs[k], ys[k]))
        return _with_ends(out, xs, ys)
