"""The UI at scale (issue 14, point 6): what the fast paths must keep, proved without timings.

The timings live in ``bench/ui_scale.py`` (house rule: no timed assertions here). These tests
prove that the monitor's downsampling keeps every column's extremes and the first and last
point, that the kept-between-redraws curve is exactly the curve computed from scratch, that
the plot drawn without plotext's ANSI round trip is the same text, and that the runs list's
caches give what a fresh read gives, a changed file included.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import plotext
import pytest
from rich.text import Text

from affiner.runner.run.events import RunStatus, TrainLog, write_status
from affiner.tui.live import RunHistory, downsample, smooth
from affiner.tui.live.history import BLOCK, SmoothedCurve, downsample_extremes, extremes
from affiner.tui.screens.run_facts import FactsCache, RunSettings, short_ids
from affiner.tui.widgets.plots import canvas_text

Point = tuple[float, float]


def noisy(count: int, seed: int = 3) -> list[Point]:
    """A decaying, noisy loss with two spikes and a dip, like a long run's."""
    rng = random.Random(seed)
    points = [(float(s), 2 + math.exp(-s / 500) + rng.uniform(-0.1, 0.1)) for s in range(count)]
    for at, jump in ((count // 3, 5.0), (count // 2, -1.5), (max(0, count - 7), 4.0)):
        if points:
            points[at] = (points[at][0], points[at][1] + jump)
    return points


def buckets(points: list[Point], width: int) -> list[list[Point]]:
    size = len(points) / width
    return [
        points[int(b * size) : len(points) if b == width - 1 else int((b + 1) * size)]
        for b in range(width)
    ]


# -- downsampling ---------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 7, 120, 121, 1000, 20_001])
def test_downsampling_keeps_each_columns_extremes_and_the_ends(count: int) -> None:
    points = noisy(count)
    width = 60
    shown = downsample_extremes(points, width)
    if count <= 2 * width:  # it fits: the points themselves
        assert shown == points
        return
    assert len(shown) <= 2 * width + 2
    assert shown[0] == points[0] and shown[-1] == points[-1]
    assert set(shown) <= set(points)  # real points, not averages
    assert [x for x, _ in shown] == sorted(x for x, _ in shown)  # in step order
    for chunk in buckets(points, width):
        assert min(chunk, key=lambda p: p[1]) in shown
        assert max(chunk, key=lambda p: p[1]) in shown
    ys = [y for _, y in points]
    assert min(y for _, y in shown) == min(ys) and max(y for _, y in shown) == max(ys)


def test_averaging_would_lose_the_spike_the_extremes_keep() -> None:
    """Why the plots changed: the mean per column flattens a one-step spike."""
    points = noisy(20_000)
    top = max(y for _, y in points)
    assert max(y for _, y in downsample(points, 60)) < top - 3  # the old path
    assert max(y for _, y in downsample_extremes(points, 60)) == top


def test_extremes_of_empty_and_zero_width() -> None:
    assert downsample_extremes([], 10) == []
    points = noisy(50)
    assert downsample_extremes(points, 0) == points


# -- the curve kept between redraws ---------------------------------------------------------


@pytest.mark.parametrize("weight", [0.0, 0.6, 0.9])
def test_the_kept_curve_equals_smoothing_from_scratch(weight: float) -> None:
    """Extended batch by batch, as the monitor redraws: exactly `smooth`'s floats."""
    points = noisy(5_000)
    curve = SmoothedCurve()
    for end in (1, 2, 50, 51, 700, 3_000, 5_000, 5_000):
        xs, ys = curve.update(points[:end], weight)
        assert list(zip(xs, ys, strict=True)) == smooth(points[:end], weight)


def test_the_kept_curve_starts_over_when_the_points_are_not_the_same_plus_more() -> None:
    points = noisy(3_000)
    curve = SmoothedCurve()
    curve.update(points, 0.6)
    assert curve.update(points, 0.9)[1] == [y for _, y in smooth(points, 0.9)]  # new weight
    resumed = points[:1_000] + [(x, y + 1.0) for x, y in points[1_000:2_000]]
    assert curve.update(resumed, 0.9)[1] == [y for _, y in smooth(resumed, 0.9)]  # shorter
    changed_end = [*resumed[:-1], (resumed[-1][0], 9.0)]
    got = curve.update(changed_end, 0.9)[1]
    assert got == [y for _, y in smooth(changed_end, 0.9)]  # same length, other last point


@pytest.mark.parametrize("count", [100, 200, 7_000, 30_003])
def test_the_kept_curves_columns_keep_the_extremes_from_its_blocks(count: int) -> None:
    points = noisy(count)
    curve = SmoothedCurve()
    for end in range(count // 3, count + 1, max(1, count // 3)):  # grown in batches
        curve.update(points[:end], 0.0)
    curve.update(points, 0.0)
    width = 40
    shown = curve.shown(width)
    if count <= 2 * width * BLOCK:  # few blocks: the plain scan, the same answer
        assert shown == extremes([x for x, _ in points], [y for _, y in points], width)
    assert len(shown) <= 2 * width + 2
    assert shown[0] == points[0] and shown[-1] == points[-1]
    assert set(shown) <= set(points)
    ys = [y for _, y in points]
    assert min(y for _, y in shown) == min(ys) and max(y for _, y in shown) == max(ys)
    blocks = [points[i : i + BLOCK] for i in range(0, count, BLOCK)]
    per_column = len(blocks) / width
    for b in range(width):  # each column: its whole blocks' lowest and highest point
        lo, hi = int(b * per_column), int((b + 1) * per_column) if b < width - 1 else len(blocks)
        chunk = [p for block in blocks[lo:hi] for p in block]
        if chunk and count > 2 * width * BLOCK:
            assert min(chunk, key=lambda p: p[1]) in shown
            assert max(chunk, key=lambda p: p[1]) in shown


def test_history_read_in_batches_equals_one_read() -> None:
    """The watcher delivers a long log in batches: folding them is folding it once."""
    logs = [TrainLog(step=s, loss=2 + math.sin(s), total_steps=3_000) for s in range(1, 3_001)]
    whole, batched = RunHistory(), RunHistory()
    whole.add(logs)
    for start in range(0, len(logs), 250):
        batched.add(logs[start : start + 250])
    assert batched.train_loss == whole.train_loss and batched.step == whole.step == 3_000


# -- the plot's text ------------------------------------------------------------------------


def test_the_canvas_read_from_the_matrix_is_plotexts_own_text() -> None:
    figure = plotext._core._figure
    plotext.clear_figure()
    plotext.plotsize(70, 18)
    points = downsample_extremes(noisy(4_000), 60)
    plotext.plot([x for x, _ in points], [y for _, y in points], color="cyan", marker="braille")
    plotext.scatter([100.0, 2_000.0], [2.5, 2.2], color="orange", marker="●")
    plotext.plot([0.0, 4_000.0], [4.0, 4.0], color="red", marker="─")
    plotext.xlabel("step")
    plotext.theme("dark")
    expected = Text.from_ansi(figure.build())
    got = canvas_text(figure)
    assert got.plain == expected.plain
    assert got.spans == expected.spans
    plotext.clear_figure()


# -- the runs list ----------------------------------------------------------------------------


def test_short_ids_by_lookup_equal_the_scan() -> None:
    """The same rule as before (exactly one folder starts or ends with the tail), by lookup."""
    ids = [f"2026110{n % 3}-1200{n % 5}-lora-smollm2-{n % 7:04x}" for n in range(40)]
    ids = sorted(set(ids))
    names = [*ids, ".staging-lora-smollm2-0003", "0005-other"]

    def scan(run_id: str) -> str:
        parts = run_id.split("-")
        everyone = set(names)
        for count in range(1, len(parts)):
            tail = "-".join(parts[-count:])
            if len(tail) >= 4 and [
                n for n in everyone if n.startswith(tail) or n.endswith(tail)
            ] == [run_id]:
                return tail
        return run_id

    assert short_ids(ids, names) == {run_id: scan(run_id) for run_id in ids}


def test_settings_and_status_caches_see_a_rewrite_of_the_same_size(tmp_path: Path) -> None:
    """Keyed on the bytes: a file rewritten at once with the same length is read again."""
    from affiner.runner.run.runs import summarize

    run = tmp_path / "20261201-000000-lora-a-0001"
    run.mkdir()
    (run / "run.toml").write_text('[method]\nname = "lora"\n', encoding="utf-8")
    write_status(run, RunStatus(run_id=run.name, state="stopped", step=5, message="aaaa"))
    assert RunSettings.read(run).method == "lora"  # type: ignore[union-attr]
    assert summarize(run).message == "aaaa"
    (run / "run.toml").write_text('[method]\nname = "full"\n', encoding="utf-8")
    status = json.loads((run / "status.json").read_text())
    status["message"] = "bbbb"
    (run / "status.json").write_text(json.dumps(status))
    assert RunSettings.read(run).method == "full"  # type: ignore[union-attr]
    assert summarize(run).message == "bbbb" and summarize(run).method == "full"
    (run / "run.toml").write_text("not toml [", encoding="utf-8")
    assert RunSettings.read(run) is None and summarize(run).method == ""


def test_facts_cache_reads_on_and_starts_over_when_the_log_shrinks(tmp_path: Path) -> None:
    from affiner.runner.run.events import EventWriter

    run = tmp_path / "r"
    with EventWriter(run) as writer:
        for step in (1, 2, 3):
            writer.write(TrainLog(step=step, loss=1.0 + step))
    cache = FactsCache()
    assert cache.read(run, lambda f: len(f.history.train_loss)) == 3
    assert cache.read(run, lambda f: len(f.history.train_loss)) == 3  # nothing new
    with EventWriter(run) as writer:
        writer.write(TrainLog(step=4, loss=9.0))
    assert cache.read(run, lambda f: f.final_train_loss) == 9.0
    (run / "events.jsonl").write_bytes(b"")
    with EventWriter(run) as writer:
        writer.write(TrainLog(step=1, loss=0.5))
    assert cache.read(run, lambda f: f.train_curve) == [(1.0, 0.5)]
