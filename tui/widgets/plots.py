"""Curves drawn with plotext: the loss plot (train and eval) and the memory history.

Both keep their data in plain lists and redraw from them on every change and resize:
``clear_data`` → ``plot`` → ``refresh``. Long histories are averaged down to the plot's
width first, since a 70-cell plot cannot show 50,000 steps and plotext slows with points.
"""

from __future__ import annotations

from collections.abc import Sequence

from textual_plotext import PlotextPlot

from affiner.planner.units import GIB
from affiner.tui.live import Point, downsample, smooth

#: Colours that read on dark and light backgrounds alike.
CURVE_COLORS = ("cyan", "orange", "magenta", "green", "blue", "red")


class LossPlot(PlotextPlot):
    """Training loss (optionally smoothed) and evaluation loss against the optimizer step.

    Extra named curves (``set_curves``) overlay several runs for comparison.
    """

    DEFAULT_CSS = """
    LossPlot { height: 1fr; min-height: 6; }
    """

    def __init__(self, title: str = "loss", **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.title = title
        self.smoothing = 0.6
        self.train: list[Point] = []
        self.eval: list[Point] = []
        self.curves: list[tuple[str, list[Point]]] = []

    def set_losses(self, train: Sequence[Point], eval: Sequence[Point]) -> None:
        self.train, self.eval, self.curves = list(train), list(eval), []
        self.replot()

    def set_curves(self, curves: Sequence[tuple[str, Sequence[Point]]]) -> None:
        """Show one train-loss curve per run instead of a single run's train/eval pair."""
        self.train, self.eval = [], []
        self.curves = [(label, list(points)) for label, points in curves]
        self.replot()

    def set_smoothing(self, weight: float) -> None:
        self.smoothing = weight
        self.replot()

    def shown_train(self) -> list[Point]:
        """The train curve as drawn: smoothed, then averaged down to the plot's width."""
        return downsample(smooth(self.train, self.smoothing), self._width())

    def _width(self) -> int:
        return max(10, self.size.width - 10) if self.size.width else 200

    def on_resize(self) -> None:
        self.replot()

    def replot(self) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title(self.title)
        plt.xlabel("step")
        width = self._width()
        drawn = False
        if self.curves:
            for number, (label, points) in enumerate(self.curves):
                shown = downsample(smooth(points, self.smoothing), width)
                if shown:
                    _line(plt, shown, label, CURVE_COLORS[number % len(CURVE_COLORS)])
                    drawn = True
        else:
            train = self.shown_train()
            if train:
                label = "train (smoothed)" if self.smoothing > 0 else "train"
                _line(plt, train, label, CURVE_COLORS[0])
                drawn = True
            if self.eval:
                _line(plt, downsample(self.eval, width), "eval", CURVE_COLORS[1])
                drawn = True
        if not drawn:
            plt.title(f"{self.title}: no points yet")
        self.refresh()


class MemoryPlot(PlotextPlot):
    """Device memory per GPU (or RAM on CPU) over the run, with the planner's predicted peak."""

    DEFAULT_CSS = """
    MemoryPlot { height: 1fr; min-height: 6; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.series: list[tuple[str, list[Point]]] = []
        self.predicted_peak: int | None = None
        self.capacity: int | None = None
        self.title = "memory (GiB)"

    def set_series(
        self,
        series: Sequence[tuple[str, Sequence[Point]]],
        *,
        predicted_peak: int | None,
        capacity: int | None = None,
        title: str = "memory (GiB)",
    ) -> None:
        self.series = [(label, list(points)) for label, points in series]
        self.predicted_peak, self.capacity, self.title = predicted_peak, capacity, title
        self.replot()

    def on_resize(self) -> None:
        self.replot()

    def replot(self) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title(self.title)
        plt.xlabel("step")
        width = max(10, self.size.width - 10) if self.size.width else 200
        drawn = False
        xs: list[float] = []
        for number, (label, points) in enumerate(self.series):
            if points:
                shown = [(x, y / GIB) for x, y in downsample(points, width)]
                _line(plt, shown, label, CURVE_COLORS[number % len(CURVE_COLORS)])
                xs += [shown[0][0], shown[-1][0]]
                drawn = True
        if self.predicted_peak:
            # A flat two-point line rather than hline: it gets a legend entry that says what it is.
            ends = [min(xs), max(xs)] if xs else [0.0, 1.0]
            peak = self.predicted_peak / GIB
            plt.plot(ends, [peak, peak], label="predicted peak", color="red", marker="braille")
        if drawn:
            plt.ylim(0, None)
        if not drawn:
            plt.title(f"{self.title}: no samples yet")
        self.refresh()


def _line(plt: object, points: Sequence[Point], label: str, color: str) -> None:
    xs, ys = zip(*points, strict=True)
    plt.plot(xs, ys, label=label, color=color, marker="braille")  # type: ignore[attr-defined]
