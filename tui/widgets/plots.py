"""Curves drawn with plotext: the loss plot (train and eval) and the memory history.

Both keep their data in plain lists and redraw from them on every change and resize:
``clear_data`` → ``plot`` → ``refresh``. Long histories are brought down to the plot's
width first, since a 70-cell plot cannot show 200,000 steps and plotext slows with points:
each column keeps its lowest and highest point (`downsample_extremes`), so a loss spike or a
memory peak is never averaged away, and the first and last points stay where they are. The
train curve's smoothing is kept between redraws (`SmoothedCurve`) and extended by the new
points only, so a refresh costs what the plot's width does, not what the run's length does.

The title and the legend sit on a line of their own above the plot area (`LegendPlot`):
plotext draws its legend inside the canvas, over whatever curve passes the top-left corner,
and on an 80x24 terminal that was the RAM line and the predicted peak. The x axis counts
optimizer steps, so its ticks are whole numbers, and a plot with one point (or none) still
gets a sensible range instead of plotext's −1 to 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from plotext._dict import color_codes
from plotext._utility import colors_to_ansi
from rich.color import Color
from rich.style import Style
from rich.text import Text
from textual.app import RenderResult
from textual_plotext import PlotextPlot

from affiner.planner.units import GIB
from affiner.tui.live import Point, smooth
from affiner.tui.live.history import SmoothedCurve, downsample_extremes

#: Colours that read on dark and light backgrounds alike.
CURVE_COLORS = ("cyan", "orange", "magenta", "green", "blue", "red")
#: The glyph the legend shows for a braille line, a scatter of dots and a flat mark.
LINE_GLYPH, DOT_GLYPH, FLAT_GLYPH = "⠤⠤", "●", "──"
#: Plot heights from which the x axis is labelled "step" (below, the row goes to the data).
ROOM_FOR_XLABEL = 14
#: Cells the y-axis labels and the frame take from a plot's width (what is left is data).
AXIS_CELLS = 10


@dataclass(frozen=True)
class LegendItem:
    """One entry of a legend: the glyph drawn, what it is, and its plotext colour name."""

    glyph: str
    label: str
    color: str


def legend_lines(title: str, items: Sequence[LegendItem], width: int) -> list[Text]:
    """The title and the legend packed into as few lines of ``width`` cells as they fit in.

    Each entry keeps its glyph and label together; the glyph is coloured like its curve and
    the label is plain, so the legend still reads with NO_COLOR.
    """
    parts = [Text(title, style="bold")]
    for item in items:
        part = Text(item.glyph + " ", style=_rich_style(item.color))
        part.append(item.label)
        parts.append(part)
    lines: list[Text] = []
    line = Text()
    for part in parts:
        if line.cell_len and width and line.cell_len + 2 + part.cell_len > width:
            lines.append(line)
            line = Text()
        if line.cell_len:
            line.append("  ")
        line.append_text(part)
    lines.append(line)
    for text in lines:
        text.truncate(max(1, width) if width else text.cell_len)
    return lines


#: The rich style of each plotext (foreground, style, background) triple met so far.
_CELL_STYLES: dict[tuple[object, ...], Style | None] = {}


def canvas_text(figure: Any) -> Text:
    """A plotext figure built straight into a rich `Text`, equal to ``Text.from_ansi(build())``.

    plotext writes its canvas as an ANSI string and rich parses it back, cell by cell: at
    160x48 that round trip was two thirds of a monitor refresh, and it does not depend on how
    many points are drawn. Here the figure's matrix (a marker and three colours per cell) is
    read directly; each run of cells of one colour becomes one span, with the style rich's
    own ANSI decoder gives that colour (worked out once per colour and kept), so the text is
    the same, span for span (a test compares them). It reads plotext's private matrix; where
    a plotext has none of that shape, the ANSI round trip is taken instead.
    """
    try:
        if figure.monitor.fast_plot:
            raise AttributeError("fast_plot")  # plotext then builds no matrix to read
        figure._set_sizes()
        figure._build_matrix()
        matrix = figure.monitor.matrix
        rows = matrix.Rows
    except AttributeError:  # another plotext's insides: its own (slower) way, the same text
        return Text.from_ansi(figure.build())
    text = Text()
    append = text.append
    markers, fore, style, back = matrix.marker, matrix.fullground, matrix.style, matrix.background
    for row in rows[::-1]:
        marks, f_row, s_row, b_row = markers[row], fore[row], style[row], back[row]
        start, cols = 0, len(marks)
        while start < cols:
            colors = (f_row[start], s_row[start], b_row[start])
            end = start + 1
            while (
                end < cols
                and f_row[end] == colors[0]
                and s_row[end] == colors[1]
                and (b_row[end] == colors[2])
            ):
                end += 1
            append("".join(marks[start:end]), _cell_style(colors))
            start = end
        append("\n")
    return text


def _cell_style(colors: tuple[Any, Any, Any]) -> Style | None:
    key = tuple(tuple(c) if isinstance(c, list) else c for c in colors)
    if key not in _CELL_STYLES:
        probe = Text.from_ansi(colors_to_ansi(*colors) + "x")
        _CELL_STYLES[key] = probe.spans[0].style if probe.spans else None  # type: ignore[assignment]
    return _CELL_STYLES[key]


def _rich_style(plotext_color: str) -> Style:
    code = color_codes.get(plotext_color)
    return Style(color=Color.from_ansi(code)) if code is not None else Style()


def step_limits(xs: Sequence[float], total_steps: int = 0) -> tuple[float, float]:
    """The x range for curves over optimizer steps.

    The points' own range, widened when it is empty or a single step (plotext would draw −1
    to 1): then from 0 to the run's planned steps, or to ten steps past the point.
    """
    if not xs:
        return 0.0, float(max(total_steps, 10))
    lo, hi = min(xs), max(xs)
    if hi - lo >= 1:
        return lo, hi
    lo = min(0.0, lo)
    return lo, max(float(total_steps), hi + 10.0, lo + 10.0)


def step_ticks(lo: float, hi: float, most: int) -> list[int]:
    """Whole-number ticks at a round spacing (1, 2 or 5 × 10ⁿ), at most ``most`` of them."""
    most = max(2, most)
    for power in range(0, 12):
        for factor in (1, 2, 5):
            spacing = factor * 10**power
            first, last = math.ceil(lo / spacing), math.floor(hi / spacing)
            if last - first + 1 <= most:
                return [n * spacing for n in range(first, last + 1)]
    return [int(lo), int(hi)]


def tick_label(step: int) -> str:
    """``950``, ``12k``, ``1.5k``: short enough that five labels fit under a 40-cell plot."""
    if abs(step) < 10_000:
        return str(step)
    thousands = step / 1000
    return f"{thousands:.0f}k" if thousands == int(thousands) else f"{thousands:.1f}k"


class LegendPlot(PlotextPlot):
    """A plotext plot with its title and legend on lines above the plot area.

    Subclasses fill `legend` and `heading` in `replot`; when `waiting` is set the plot area
    shows that sentence instead of an empty frame (a run that has not logged yet).
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.heading = ""
        self.legend: list[LegendItem] = []
        self.waiting = ""
        #: bumped by every replot: the text drawn last is reused until then (see `render`)
        self._version = 0
        self._drawn: tuple[tuple[object, ...], Text] | None = None
        self._given: object = None

    def _same_as_before(self, given: object) -> bool:
        """Whether the data given now is what was given last (then there is nothing to redraw).

        The monitor hands both plots the history on every batch of events, and most batches
        change one of them: training logs come every step, memory samples every few seconds.
        Building a plotext canvas is most of a refresh, so a plot whose data did not change
        keeps what it drew.
        """
        if given == self._given:
            return True
        self._given = given
        return False

    def header(self) -> list[Text]:
        """The lines above the plot (what tests read as the legend)."""
        return legend_lines(self.heading, self.legend, self.size.width)

    def render(self) -> RenderResult:
        """The header and the plot, built again only after a replot, a resize or a new theme."""
        key = (self._version, self.size.width, self.size.height, self.app.theme)
        if self._drawn is None or self._drawn[0] != key:
            self._drawn = (key, self._build_text())
        return self._drawn[1].copy()

    def _build_text(self) -> Text:
        width, height = self.size.width, self.size.height
        header = self.header()
        if self.waiting:
            body = Text(f"  {self.waiting}", style="italic")
            gap = max(0, (height - len(header) - 1) // 2)
            return Text("\n").join([*header, *[Text()] * gap, body])
        plot_height = max(1, height - len(header))
        self._plot.plotsize(width, plot_height)
        self._plot._set_size(width, plot_height)
        self._plot.theme(self._get_plotext_theme_name(self.app.theme))
        return Text("\n").join([*header, canvas_text(self._plot)])

    def _width(self) -> int:
        return max(10, self.size.width - AXIS_CELLS) if self.size.width else 200

    def _step_axis(self, xs: Sequence[float], total_steps: int) -> None:
        lo, hi = step_limits(xs, total_steps)
        ticks = step_ticks(lo, hi, max(2, self._width() // 7))
        plt = self.plt
        plt.xlim(lo, hi)
        plt.xticks(ticks, [tick_label(t) for t in ticks])
        if self.size.height >= ROOM_FOR_XLABEL:
            plt.xlabel("step")


class LossPlot(LegendPlot):
    """Training loss (optionally smoothed) and evaluation loss against the optimizer step.

    Extra named curves (``set_curves``) overlay several runs for comparison; that view keeps
    plotext's own title and legend (the runs screen draws it), the single-run view puts them
    above the plot.
    """

    DEFAULT_CSS = """
    LossPlot { height: 1fr; min-height: 6; }
    """

    def __init__(self, title: str = "loss", **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.title = title
        self.smoothing = 0.6
        self.total_steps = 0
        self.train: list[Point] = []
        self.eval: list[Point] = []
        self.curves: list[tuple[str, list[Point]]] = []
        self._smoothed = SmoothedCurve()

    def set_losses(
        self, train: Sequence[Point], eval: Sequence[Point], *, total_steps: int = 0
    ) -> None:
        # the history's own lists, not copies: at 200,000 steps a copy was a third of a refresh;
        # the widget only reads them, on the screen's thread, and the history only appends
        train, eval = _as_list(train), _as_list(eval)
        if self._same_as_before(("run", _given(train), _given(eval), total_steps)):
            return
        self.train, self.eval, self.curves = train, eval, []
        self.total_steps = total_steps
        self.replot()

    def set_curves(self, curves: Sequence[tuple[str, Sequence[Point]]]) -> None:
        """Show one train-loss curve per run instead of a single run's train/eval pair."""
        self.train, self.eval = [], []
        self.curves = [(label, list(points)) for label, points in curves]
        self._given = None
        self.replot()

    def set_smoothing(self, weight: float) -> None:
        self.smoothing = weight
        self.replot()

    def shown_train(self) -> list[Point]:
        """The train curve as drawn: smoothed, then each column's extremes at the plot's width
        (two points a column: the braille line has two dots across a cell)."""
        self._smoothed.update(self.train, self.smoothing)
        return self._smoothed.shown(self._width())

    def on_resize(self) -> None:
        self.replot()

    def render(self) -> RenderResult:
        if self.curves:
            return PlotextPlot.render(self)
        return super().render()

    def replot(self) -> None:
        self._version += 1
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        if self.curves:
            self._replot_curves()
        else:
            self._replot_run()
        self.refresh()

    def _replot_curves(self) -> None:
        plt = self.plt
        plt.title(self.title)
        plt.xlabel("step")
        width = self._width()
        drawn = False
        for number, (label, points) in enumerate(self.curves):
            shown = downsample_extremes(smooth(points, self.smoothing), width)
            if shown:
                _line(plt, shown, CURVE_COLORS[number % len(CURVE_COLORS)], label)
                drawn = True
        if not drawn:
            plt.title(f"{self.title}: no points yet")

    def _replot_run(self) -> None:
        self.heading = self.title
        self.legend = []
        train = self.shown_train()
        evals = downsample_extremes(self.eval, self._width())
        self.waiting = "" if train or evals else "waiting for the first training log"
        if train:
            label = "train (smoothed)" if self.smoothing > 0 else "train"
            _line(self.plt, train, CURVE_COLORS[0])
            self.legend.append(LegendItem(LINE_GLYPH, label, CURVE_COLORS[0]))
        if evals:
            xs, ys = zip(*evals, strict=True)
            self.plt.scatter(xs, ys, color=CURVE_COLORS[1], marker=DOT_GLYPH)
            self.legend.append(LegendItem(DOT_GLYPH, "eval", CURVE_COLORS[1]))
        points = train + evals
        if points:
            self._step_axis([x for x, _ in points], self.total_steps)
            lo, hi = _padded(min(y for _, y in points), max(y for _, y in points))
            self.plt.ylim(lo, hi)


class MemoryPlot(LegendPlot):
    """Device memory per GPU (or the process's RAM on the CPU) over the run, and the planner's
    predicted peak as a flat line to hold it against."""

    DEFAULT_CSS = """
    MemoryPlot { height: 1fr; min-height: 6; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.series: list[tuple[str, list[Point]]] = []
        self.predicted_peak: int | None = None
        self.capacity: int | None = None
        self.total_steps = 0
        self.title = "memory (GiB)"
        self.peak_label = "predicted peak"
        self._curves: dict[str, SmoothedCurve] = {}

    def _curve(self, label: str, points: list[Point]) -> SmoothedCurve:
        """The series kept between redraws (its column extremes read from blocks)."""
        curve = self._curves.setdefault(label, SmoothedCurve())
        curve.update(points, 0.0)
        return curve

    def set_series(
        self,
        series: Sequence[tuple[str, Sequence[Point]]],
        *,
        predicted_peak: int | None,
        capacity: int | None = None,
        title: str = "memory (GiB)",
        total_steps: int = 0,
        peak_label: str = "predicted peak",
    ) -> None:
        """Draw `series` against `predicted_peak`; `peak_label` names that line in the legend
        (``predicted per GPU`` when each curve is one rank of a multi-process run)."""
        kept = [(label, _as_list(points)) for label, points in series]
        given = (
            [(label, _given(p)) for label, p in kept],
            predicted_peak,
            capacity,
            title,
            peak_label,
        )
        if self._same_as_before((*given, total_steps)):
            return
        self.series = kept
        self.predicted_peak, self.capacity, self.title = predicted_peak, capacity, title
        self.total_steps, self.peak_label = total_steps, peak_label
        self.replot()

    def on_resize(self) -> None:
        self.replot()

    def replot(self) -> None:
        self._version += 1
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        self.heading, self.legend = self.title, []
        width = self._width()
        drawn = [
            (label, [(x, y / GIB) for x, y in self._curve(label, points).shown(width)])
            for label, points in self.series
            if points
        ]
        xs = [x for _, shown in drawn for x, _ in shown]
        self.waiting = "" if xs else "waiting for the first memory sample"
        if not xs:
            self.refresh()
            return
        lo, hi = step_limits(xs, self.total_steps)
        top = max(y for _, shown in drawn for _, y in shown)
        if self.predicted_peak:
            # First, so a curve crossing it is drawn over it; a flat line rather than hline,
            # so it has a legend entry.
            peak = self.predicted_peak / GIB
            plt.plot([lo, hi], [peak, peak], color="red", marker=FLAT_GLYPH[0])
            top = max(top, peak)
        for number, (label, shown) in enumerate(drawn):
            color = CURVE_COLORS[number % len(CURVE_COLORS)]
            _line(plt, shown, color)
            if len(drawn) > 1:  # one line needs no name: the title says what it is
                self.legend.append(LegendItem(LINE_GLYPH, label, color))
        if self.predicted_peak:
            self.legend.append(LegendItem(FLAT_GLYPH, self.peak_label, "red"))
        self._step_axis(xs, self.total_steps)
        # headroom above the highest line, so neither it nor the peak runs along the frame
        plt.ylim(0, top * 1.1 or 1.0)
        self.refresh()


def _given(points: list[Point]) -> tuple[object, ...]:
    """What tells a series given again from a changed one: the list itself (a resume folds the
    history into new lists), its length and its last point (the history only appends)."""
    return (id(points), len(points), points[-1] if points else None)


def _as_list(points: Sequence[Point]) -> list[Point]:
    return points if isinstance(points, list) else list(points)


def _padded(lo: float, hi: float) -> tuple[float, float]:
    """A y range a little wider than the data, so no curve runs along the frame."""
    pad = (hi - lo) * 0.08 or max(abs(hi) * 0.05, 0.05)
    return lo - pad, hi + pad


def _line(plt: object, points: Sequence[Point], color: str, label: str | None = None) -> None:
    xs, ys = zip(*points, strict=True)
    plt.plot(xs, ys, label=label, color=color, marker="braille")  # type: ignore[attr-defined]
