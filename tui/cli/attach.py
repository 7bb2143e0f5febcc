"""``affiner attach``: follow one run in a plain rich Live view, for any terminal and any SSH.

The view only reads the run folder (events through `affiner.runner.run.events.EventReader`, folded by
`affiner.tui.live.history.RunHistory`; the state from ``status.json`` and the worker's pid), so
Ctrl-C detaches without touching the run. It ends by itself when the run reaches a final
state; on a run that has already ended it prints the summary once.

A phase that logs nothing for minutes (the base model's evaluation, a mid-run one, a save)
shows as its own line with a countdown (`RunHistory.phase_line`). When the output is not a
terminal (a pipe, a file, a CI log), a live view would print nothing until the end, so
`attach` writes `PlainLines` instead: one flushed line per log, evaluation, warning and drift,
and per phase when it opens and at each tenth of its count; the summary closes it.

A multi-process run (``[distributed]``) says its layout (``2 processes · ddp``, in the plain
start line ``2×ddp``), each rank's memory while it runs, and each rank's peak beside the
per-GPU prediction in the summary at the end; a single-process run prints what it always did.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from affiner.planner.units import format_bytes, format_bytes_of, format_duration
from affiner.runner.run import (
    CLASS_METRICS,
    RESUMABLE_STATES,
    UNKNOWN,
    Error,
    EvalResult,
    Event,
    EventReader,
    RunDir,
    RunStarted,
    TrainLog,
    Warning_,
    derive_state,
    is_language_model,
    is_worker_of,
    latest_checkpoint,
    model_label,
    read_status_report,
    run_task,
)
from affiner.tui.cli.states import STATE_STYLES
from affiner.tui.live import FileWarnings, RunHistory, downsample, drifts, layout_short
from affiner.tui.live.ranks import rank_label

SPARK_CHARS = "▁▂▃▄▅▆▇█"
#: Evaluations shown in the table (the newest; the best is always kept).
EVAL_ROWS = 6
#: Lines of train.log shown when a run failed.
LOG_TAIL_LINES = 8
#: A counted phase gets a plain line each time it passes another tenth of its count.
PLAIN_PHASE_STEPS = 10


def sparkline(values: Sequence[float], width: int = 32) -> str:
    """A one-line trend of `values` in block characters, downsampled to `width`."""
    if not values:
        return ""
    points = downsample([(float(i), float(v)) for i, v in enumerate(values)], width)
    ys = [y for _, y in points]
    low, high = min(ys), max(ys)
    span = high - low
    if span <= 0:
        return SPARK_CHARS[len(SPARK_CHARS) // 2] * len(ys)
    top = len(SPARK_CHARS) - 1
    return "".join(SPARK_CHARS[round((y - low) / span * top)] for y in ys)


def trend(values: Sequence[float]) -> str:
    """``falling`` / ``rising`` / ``flat``: the last third of the recent values against the first."""
    recent = list(values[-60:])
    if len(recent) < 3:
        return ""
    third = max(1, len(recent) // 3)
    head = sum(recent[:third]) / third
    tail = sum(recent[-third:]) / third
    scale = max(abs(head), 1e-12)
    change = (tail - head) / scale
    if change < -0.02:
        return "falling"
    if change > 0.02:
        return "rising"
    return "flat"


class AttachView:
    """The state of one followed run and its rendering; `poll()` reads what is new."""

    def __init__(self, run_dir: RunDir) -> None:
        self.run_dir = run_dir
        self.reader = EventReader(run_dir.path)
        self.history = RunHistory(run_id=run_dir.run_id)
        self.state = UNKNOWN
        self.pid: int | None = None
        self.message = ""
        self.started: float | None = None
        self._seen_start = False
        #: The events the last `poll` read (what `PlainLines` writes lines for).
        self.new_events: list[Event] = []
        #: From run.toml; "" lets the evaluations say whether perplexity means anything.
        self.task = run_task(run_dir)
        self._file_warnings = FileWarnings()
        self._labels: list[str] = []

    def poll(self, now: float | None = None) -> str:
        """Read new events and the status; return the run's state.

        What the readers skipped (lines of the log, values of ``status.json`` that do not fit
        the schema) comes in as one warning per file, with the events.
        """
        events = self.reader.read_new()
        report = read_status_report(self.run_dir.path)
        events += self._file_warnings.news(self.reader.skipped, report)
        self.new_events = events
        if any(e.type == "run_started" for e in events):
            self._seen_start = True
        self.history.add(events)
        status = report.status
        self.pid = status.pid if status else None
        alive = is_worker_of(self.pid, self.run_dir.path)
        self.state = derive_state(status, self._seen_start, self.history.finished, alive, now)
        if status is not None:
            self.started = status.started or self.started
            self.message = status.message
            if status.total_steps and not self.history.total_steps:
                self.history.total_steps = status.total_steps
            self.history.step = max(self.history.step, status.step)
        if self.history.finished is not None:
            self.message = self.message or self.history.finished.message
        return self.state

    @property
    def ended(self) -> bool:
        """Nothing more will happen without a resume: final, interrupted, or not a run at all."""
        return self.state not in ("starting", "running")

    # -- rendering ------------------------------------------------------------------------

    def render(self, now: float | None = None) -> RenderableType:
        now = time.time() if now is None else now
        parts: list[RenderableType] = [self._header(now)]
        if self.history.evals:
            parts.append(self._eval_table())
        warnings = self._warnings()
        if warnings is not None:
            parts.append(warnings)
        if self.ended:
            parts.append(self._ending())
        else:
            parts.append(
                Text(
                    f"Ctrl-C detaches (the run keeps going) · affiner stop {self.run_dir.run_id}",
                    style="dim",
                )
            )
        return Group(*parts)

    def _header(self, now: float) -> Panel:
        h = self.history
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column()
        what = " · ".join(x for x in (model_label(h.model), h.method, h.device) if x)
        if what:
            grid.add_row("model", Text(what))  # (Text: names from the run folder are not markup)
        if h.layout:
            grid.add_row("layout", Text(h.layout))
        labels = self.class_names()
        if labels:
            grid.add_row("classes", Text(", ".join(labels)))
        grid.add_row("progress", self._progress_line(now))
        phase = h.phase_line(now) if not self.ended else ""
        if phase:
            grid.add_row("now", Text(phase, style="cyan"))
        if h.train_loss:
            losses = [y for _, y in h.train_loss]
            line = Text(f"{losses[-1]:.4f}  ")
            line.append(sparkline(losses, 32), style="cyan")
            direction = trend(losses)
            if direction:
                style = {"falling": "green", "rising": "red"}.get(direction, "dim")
                line.append(f"  {direction}", style=style)
            grid.add_row("loss", line)
        rates = []
        if h.tokens_per_second:
            rates.append(f"{h.tokens_per_second[-1][1]:,.0f} tokens/s")
        if h.learning_rate:
            rates.append(f"lr {h.learning_rate[-1][1]:.2e}")
        if rates:
            grid.add_row("speed", "  ".join(rates))
        memory = self._memory_line()
        if memory:
            grid.add_row("memory", memory)
        ranks = rank_peaks_text(h, latest=True)
        if ranks.plain and not self.ended:
            grid.add_row("ranks", ranks)
        if self.message and not self.ended:
            grid.add_row("status", Text(self.message))
        state = Text(self.state, style=STATE_STYLES.get(self.state, ""))
        if self.pid and not self.ended:
            state.append(f" (pid {self.pid})", style="dim")
        title = Text.assemble(("run ", "bold"), (self.run_dir.run_id, "bold"), "  ", state)
        return Panel(
            grid, title=title, title_align="left", border_style=STATE_STYLES.get(self.state, "")
        )

    def class_names(self) -> list[str]:
        """A classifier's class names from the run's ``run.toml`` (the worker writes the ones
        it detects there once it has read the data, so they are read again until found)."""
        if self._labels or self.task not in ("classification", ""):
            return self._labels
        from affiner.runner.config import read_raw_config

        try:
            data = read_raw_config(self.run_dir.config).get("data")
        except (OSError, ValueError):
            return []
        labels = data.get("labels") if isinstance(data, dict) else None
        if isinstance(labels, list) and all(isinstance(name, str) for name in labels):
            self._labels = list(labels)
        return self._labels

    def _progress_line(self, now: float) -> RenderableType:
        h = self.history
        line = Table.grid(padding=(0, 1))
        line.add_column(width=24)
        line.add_column()
        total = h.total_steps or None
        bar = ProgressBar(
            total=total, completed=h.step, width=24, pulse=total is None and not self.ended
        )
        bits = [f"step {h.step}/{h.total_steps}" if total else f"step {h.step}"]
        if h.progress is not None:
            bits.append(f"{h.progress:.0%}")
        if h.epoch:  # (the planned epochs are not shown: max_steps may end the run sooner)
            bits.append(f"epoch {h.epoch:.2f}")
        if not self.ended and h.eta_seconds is not None:
            bits.append(h.eta_text(now))
        if self.started and not self.ended:
            bits.append(f"elapsed {format_duration(now - self.started)}")
        line.add_row(bar, "  ".join(bits))
        return line

    def _memory_line(self) -> str:
        h = self.history
        parts = []
        if not h.rank_samples:  # a multi-process run's ranks have their own row
            for series in h.memory.values():
                parts.append(f"{series.label} {format_bytes_of(series.latest, series.total)}")
        if h.measured_peak_bytes:
            peak = f"peak {format_bytes(h.measured_peak_bytes)}"
            if h.predicted_peak_bytes:
                per = f" {_per(h)}" if h.world_size > 1 else ""
                peak += f" (predicted {format_bytes(h.predicted_peak_bytes)}{per})"
            parts.append(peak)
        return "  ".join(parts)

    def _eval_table(self) -> Table:
        evals = self.history.evals
        best = self.history.best_eval
        shown = evals[-EVAL_ROWS:]
        if best is not None and best not in shown:
            shown = [best, *shown[1:]]
        table = Table(title="evaluations", title_justify="left", expand=False)
        table.add_column("step", justify="right")
        table.add_column("epoch", justify="right")
        table.add_column("eval loss", justify="right")
        # Perplexity for language models; a classification head's loss has none, and its
        # run shows accuracy, precision, recall and F1 instead.
        names = ("perplexity",) if is_language_model(evals, self.task) else ()
        names += CLASS_METRICS
        extra = [n for n in names if any(getattr(e, n) is not None for e in evals)]
        for name in extra:
            table.add_column(name, justify="right")
        for ev in shown:
            mark = " ★" if ev is best else ""
            loss = f"{ev.loss:.4f}{mark}" if ev.loss is not None else "N/A"
            cells = [str(ev.step), f"{ev.epoch:.2f}", loss]
            for name in extra:
                value = getattr(ev, name)
                cells.append("N/A" if value is None else f"{value:.4g}")
            table.add_row(*cells, style="green" if ev is best else None)
        return table

    def _warnings(self) -> RenderableType | None:
        h = self.history
        drifted = drifts(h) if not self.ended else []
        if not h.warnings and not h.errors and not drifted:
            return None
        lines = Text()
        for err in h.errors:
            lines.append(f"error {err.code}: {err.message}\n", style="bold red")
        for drift in drifted:
            lines.append(f"drift: {drift.text}\n", style="bold yellow")
        seen: set[tuple[str, str]] = set()
        for warning in h.warnings:
            key = (warning.code, warning.message)
            if key in seen:
                continue
            seen.add(key)
            serious = warning.code in ("overfitting", "nan_loss", "oom")
            at = f" (step {warning.step})" if warning.step is not None else ""
            lines.append(
                f"{warning.code}{at}: {warning.message}", style="bold red" if serious else "yellow"
            )
            if warning.action:
                lines.append(f"\n  → {warning.action}", style="italic")
            lines.append("\n")
        lines.rstrip()
        count = len(seen) + len(drifted)
        title = f"{count} warning{'s' if count != 1 else ''}" if count else "errors"
        style = "red" if h.errors or h.serious_warnings else "yellow"
        return Panel(lines, title=title, title_align="left", border_style=style)

    def _ending(self) -> RenderableType:
        h = self.history
        rid = self.run_dir.run_id
        text = Text()
        finished = h.finished
        if self.state == "finished":
            text.append("finished", style="bold green")
            if finished is not None and finished.train_seconds:
                text.append(f" in {format_duration(finished.train_seconds)}")
            if h.train_loss:
                text.append(f" · final train loss {h.train_loss[-1][1]:.4f}")
            if h.layout:
                text.append(f" · {h.layout}")
            best = h.best_eval
            if best is not None and best.loss is not None:
                text.append(f" · best eval loss {best.loss:.4f} at step {best.step}")
            output = (finished.output_dir if finished else None) or (
                str(self.run_dir.adapter) if self.run_dir.adapter.exists() else None
            )
            if output:
                text.append(f"\noutput  {output}")
            best_ckpt = (finished.best_checkpoint if finished else None) or (
                h.best_checkpoint.path if h.best_checkpoint else None
            )
            if best_ckpt:
                text.append(f"\nbest checkpoint  {best_ckpt}")
            self._rank_peaks(text)
        else:
            text.append(self.state, style=STATE_STYLES.get(self.state, ""))
            if self.message:
                text.append(f": {self.message}")
            if self.state == "failed":
                tail = _log_tail(self.run_dir, LOG_TAIL_LINES)
                if tail:
                    text.append(f"\nlast lines of {self.run_dir.log}:\n", style="dim")
                    text.append(tail, style="dim")
            self._rank_peaks(text)
            if self.state in RESUMABLE_STATES:
                ckpt = latest_checkpoint(self.run_dir)
                where = f"from step {ckpt[0]}" if ckpt else "from scratch (no checkpoint yet)"
                text.append(f"\nresume {where}: affiner train --resume {rid}")
        return Panel(
            text, title="result", title_align="left", border_style=STATE_STYLES.get(self.state, "")
        )

    def _rank_peaks(self, text: Text) -> None:
        """A multi-process run's summary line: each rank's peak beside the per-GPU plan."""
        peaks = rank_peaks_text(self.history, latest=False)
        if not peaks.plain:
            return
        h = self.history
        plan = (
            f" (predicted {format_bytes(h.predicted_peak_bytes)} {_per(h)})"
            if h.predicted_peak_bytes
            else ""
        )
        text.append(f"\npeak memory per rank{plan}:\n  ")
        text.append_text(peaks)


def _per(h: RunHistory) -> str:
    """What the planner's peak is of: one GPU, or one process on the CPU."""
    return "per GPU" if h.on_gpu else "per process"


def rank_peaks_text(h: RunHistory, *, latest: bool) -> Text:
    """``rank 0 1.50 GiB · rank 1 2.60 GiB ⚠``: each rank's memory, the one past the plan marked.

    Args:
        h: the run so far.
        latest: each rank's latest figure (a live view), else the highest it reported (the
            summary at the end); a run that logged no rank samples falls back to the
            pre-flight's per-rank peaks. Empty for a single-process run.
    """
    if latest:
        figures = {r.rank: r.used_bytes for r in h.ranks}
    else:
        figures = dict(h.rank_peak_bytes) or dict(enumerate(h.preflight_rank_peaks))
    known = {rank: value for rank, value in figures.items() if value is not None}
    text = Text()
    if not known:
        return text
    predicted = h.predicted_peak_bytes
    top = max(known, key=lambda rank: (known[rank], -rank))
    for number, rank in enumerate(sorted(figures)):
        if number:
            text.append(" · ")
        sample = h.rank_samples.get(rank)
        label = rank_label(rank, sample.node if sample is not None else None, h.nodes)
        over = rank == top and predicted is not None and known[rank] > predicted
        text.append(f"{label} {format_bytes(figures[rank])}", style="bold red" if over else "")
        if over:
            text.append(" ⚠ past the plan", style="bold red")
    return text


class PlainLines:
    """`AttachView`'s news as plain lines, for output that is not a terminal.

    `lines()` gives what the last poll brought: the start, each training log (step, loss, ETA),
    evaluation, warning and error, each drift once, and the open silent phase when it opens
    and each time its count passes another tenth (`PLAIN_PHASE_STEPS`).
    """

    def __init__(self, view: AttachView) -> None:
        self.view = view
        self._phase: tuple[str, int] | None = None
        self._tenth = -1
        self._drifts: set[str] = set()

    def lines(self, now: float) -> list[str]:
        h = self.view.history
        out = [line for e in self.view.new_events if (line := _event_line(e, h)) is not None]
        for drift in drifts(h) if not self.view.ended else []:
            if drift.code not in self._drifts:
                self._drifts.add(drift.code)
                out.append(f"drift: {drift.text}")
        latest = h.phase_latest
        if latest is None:
            self._phase = None
            return out
        key = (str(getattr(latest, "phase", "")), int(getattr(latest, "step", 0)))
        done, total = int(getattr(latest, "done", 0)), int(getattr(latest, "total", 0))
        tenth = done * PLAIN_PHASE_STEPS // total if total > 0 else 0
        if key != self._phase or tenth > self._tenth:
            self._phase, self._tenth = key, tenth
            out.append(h.phase_line(now))
        return out


def _event_line(event: Event, h: RunHistory) -> str | None:
    """One plain line for an event worth one; None for the rest (samples, progress...)."""
    if isinstance(event, RunStarted):
        batches = f", {event.batching_words}" if event.batching_words else ""
        layout = layout_short(event.world_size, event.strategy)
        nodes = f" on {event.nodes} nodes" if layout and event.nodes > 1 else ""
        layout = f" ({layout}{nodes})" if layout else ""
        return (
            f"started: {event.method} on {event.device or 'auto'}{layout}, "
            f"{event.total_steps} steps{batches}"
        )
    if isinstance(event, TrainLog):
        total = event.total_steps or h.total_steps
        parts = [f"step {event.step}/{total}" if total else f"step {event.step}"]
        if event.loss is not None:
            parts.append(f"loss {event.loss:.4f}")
        if event.eta_seconds is not None:
            parts.append(f"ETA {format_duration(event.eta_seconds)}")
        return " · ".join(parts)
    if isinstance(event, EvalResult):
        who = "the base model" if event.step == 0 else f"step {event.step}"
        parts = [f"eval of {who}"]
        if event.loss is not None:
            parts.append(f"eval loss {event.loss:.4f}")
        scores = [(n, getattr(event, n)) for n in CLASS_METRICS if getattr(event, n) is not None]
        if not scores and event.perplexity is not None:  # a class head's loss has none
            scores = [("perplexity", event.perplexity)]
        parts.extend(f"{name} {value:.4f}" for name, value in scores)
        return " · ".join(parts)
    if isinstance(event, Warning_):
        return f"warning {event.code}: {event.message}"
    if isinstance(event, Error):
        return f"error {event.code}: {event.message}"
    return None


def _log_tail(run_dir: RunDir, lines: int) -> str:
    try:
        with open(run_dir.log, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - 16384))
            data = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(data.rstrip().splitlines()[-lines:])


def exit_code_for(state: str) -> int:
    """0 when the run finished or was stopped on purpose, 1 when it failed or was interrupted."""
    return 0 if state in ("finished", "stopped", "starting", "running") else 1


def attach(
    run_dir: RunDir,
    *,
    console: Console | None = None,
    poll_seconds: float = 0.5,
    max_seconds: float | None = None,
) -> int:
    """Follow `run_dir` until it ends (or Ctrl-C, or `max_seconds`); return an exit code.

    Returns:
        `exit_code_for` the state the run was left in; 0 when detached from a live run.
    """
    from rich.live import Live

    console = console or Console()
    view = AttachView(run_dir)
    view.poll()
    if view.ended:
        console.print(view.render())
        return exit_code_for(view.state)
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    if not console.is_terminal:
        return _attach_plain(view, console, poll_seconds, deadline)
    try:
        with Live(view.render(), console=console, refresh_per_second=4, transient=False) as live:
            while not view.ended:
                if deadline is not None and time.monotonic() >= deadline:
                    break
                time.sleep(poll_seconds)
                view.poll()
                live.update(view.render())
    except KeyboardInterrupt:
        console.print(_detached(run_dir.run_id), markup=False)
        return 0
    return exit_code_for(view.state)


def _detached(run_id: str) -> str:
    return (
        f"detached; run {run_id} keeps going. "
        f"`affiner attach {run_id}` to come back, `affiner stop {run_id}` to stop it."
    )


def _attach_plain(
    view: AttachView, console: Console, poll_seconds: float, deadline: float | None
) -> int:
    """`attach` for a pipe or a file: flushed plain lines as the run goes, then the summary."""
    plain = PlainLines(view)
    try:
        while True:
            for line in plain.lines(time.time()):
                console.print(line, markup=False, highlight=False, soft_wrap=True)
            if view.ended or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(poll_seconds)
            view.poll()
    except KeyboardInterrupt:
        console.print(_detached(view.run_dir.run_id), markup=False)
        return 0
    if view.ended:
        console.print(view.render())
    return exit_code_for(view.state)
