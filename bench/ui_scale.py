"""The UI at scale: the monitor at 200,000 logged steps, ``affiner runs`` over 200 run folders.

Issue 14, point 6. The bars: the monitor redraws a 200,000-step run in under 50 ms a refresh,
and ``affiner runs`` lists 200 run folders in under 1 s. Everything is built here, in a temp
folder, the way the worker writes it: real event types from `affiner.runner.run.events`,
appended with `EventWriter`, ``status.json`` through `write_status`. Nothing is trained.

What is timed, each against a baseline measured in the same run:

1. The monitor. `RunHistory` folding every event of the 200k-step log (read once, as the
   watcher's first batch; then a small appended batch read incrementally, which must cost what
   the batch costs, not what the file does), and one redraw of the loss and memory plots at
   the width of a 160x48 terminal inside a headless app (`App.run_test`): the curve as drawn
   (smoothed, downsampled to min/max per column) against the same plot fed every point.
2. ``affiner runs`` over 200 folders: `cmd_runs` in-process (cold caches, then warm), and as
   a subprocess from a cold interpreter, against ``python -c pass``.
3. The runs screen's refresh: `list_runs` + `build_rows` (the worker's whole job), first
   read and again with nothing changed, against the first read.

No timed assertions live in the tests (house rule); this is where the bars are checked.

    PYTHONPATH=. python bench/ui_scale.py [--json] [--out bench/results]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

from affiner.runner.run.events import (
    Checkpoint,
    EvalResult,
    EventWriter,
    Progress,
    RunFinished,
    RunStarted,
    RunStatus,
    SystemSample,
    TrainLog,
    write_status,
)

#: The monitor's bar: one refresh of a 200,000-step run.
MONITOR_BAR_MS = 50.0
#: ``affiner runs`` over `RUN_FOLDERS` folders.
RUNS_BAR_S = 1.0
MONITOR_STEPS = 200_000
RUN_FOLDERS = 200
#: Steps each of the 200 folders logs, in turn: a demo-sized run, a short one, a longer one.
FOLDER_STEPS = (50, 250, 1000)
RUN_TOML = (
    '[model]\nname_or_path = "/models/SmolLM2-135M"\n\n[method]\nname = "lora"\n\n'
    '[training]\nepochs = 1\nmicro_batch = 4\n\n[data]\ntrain = "chat.jsonl"\n'
)
GIB = 1024**3


def write_run(
    root: Path, run_id: str, steps: int, *, t0: float, sample_every: int = 10, eval_every: int = 0
) -> Path:
    """One finished run folder with `steps` training logs, as the worker writes it."""
    path = root / run_id
    path.mkdir(parents=True)
    (path / "run.toml").write_text(RUN_TOML, encoding="utf-8")
    eval_every = eval_every or max(1, steps // 10)
    t = t0
    with EventWriter(path) as writer:
        writer.write(
            RunStarted(
                run_id=run_id,
                pid=1,
                model="SmolLM2-135M",
                method="lora",
                device="cpu",
                total_steps=steps,
                epochs=1.0,
                predicted_peak_bytes=3 * GIB,
                predicted_step_seconds=0.5,
                t=t,
            )
        )
        for step in range(1, steps + 1):
            t += 0.5
            # a decaying loss with noise and a rare spike: extremes a plot must not lose
            loss = 2.0 + 1.5 * math.exp(-step / (steps / 4)) + 0.1 * math.sin(step * 1.7)
            if step % 9973 == 0:
                loss += 3.0
            writer.write(
                TrainLog(
                    step=step,
                    epoch=step / steps,
                    loss=loss,
                    learning_rate=2e-4 * (1 - step / steps),
                    grad_norm=1.0,
                    tokens_per_second=900.0 + (step % 50),
                    eta_seconds=(steps - step) * 0.5,
                    total_steps=steps,
                    t=t,
                )
            )
            if step % sample_every == 0:
                rss = int((2.0 + 0.2 * math.sin(step / 500)) * GIB)
                writer.write(
                    SystemSample(
                        step=step,
                        ram_used=8 * GIB,
                        ram_total=32 * GIB,
                        process_rss=rss,
                        process_peak_rss=rss,
                        cpu_percent=90.0,
                        t=t,
                    )
                )
            if step % eval_every == 0:
                writer.write(Progress(phase="eval", step=step, done=1, total=2, t=t))
                writer.write(EvalResult(step=step, epoch=step / steps, loss=loss + 0.05, t=t))
                writer.write(Checkpoint(step=step, path=f"checkpoints/checkpoint-{step}", t=t))
        writer.write(RunFinished(state="finished", step=steps, message="done", t=t))
    write_status(
        path,
        RunStatus(
            run_id=run_id,
            state="finished",
            pid=None,
            step=steps,
            total_steps=steps,
            epoch=1.0,
            started=t0,
            updated=t,
            message="done",
        ),
    )
    return path


def build_folders(root: Path, count: int = RUN_FOLDERS) -> list[Path]:
    """`count` finished runs of mixed lengths under `root`."""
    t0 = 1.7e9
    return [
        write_run(
            root,
            f"2026110{number % 9 + 1}-{number:06d}-lora-smollm2-{number:04x}",
            FOLDER_STEPS[number % len(FOLDER_STEPS)],
            t0=t0 + number * 3600,
        )
        for number in range(count)
    ]


def best_ms(fn: Callable[[], object], repeat: int = 5) -> float:
    """The fastest of `repeat` calls, in milliseconds (the least disturbed by the machine)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return min(times)


# -- 1. the monitor ---------------------------------------------------------------------------


def bench_monitor(
    root: Path,
    steps: int = MONITOR_STEPS,
    size: tuple[int, int] = (160, 48),
    profile: bool = False,
) -> dict[str, Any]:
    """Fold a `steps`-step log into `RunHistory`, then time the monitor's refresh in an app."""
    from affiner.runner.run import EventReader, TrainLog
    from affiner.tui.live import RunHistory, downsample, smooth

    start = time.perf_counter()
    path = write_run(root, "monitor-200k", steps, t0=1.7e9, eval_every=1000)
    built_s = time.perf_counter() - start
    reader = EventReader(path)
    start = time.perf_counter()
    events = reader.read_new()
    read_s = time.perf_counter() - start
    history = RunHistory()
    start = time.perf_counter()
    history.add(events)
    fold_s = time.perf_counter() - start
    # an appended batch, as the watcher delivers it: its cost is the batch's, not the file's
    with EventWriter(path) as writer:
        for step in range(steps + 1, steps + 51):
            writer.write(TrainLog(step=step, loss=2.0, total_steps=steps, t=1.8e9))
    start = time.perf_counter()
    more = reader.read_new()
    history.add(more)
    append_ms = (time.perf_counter() - start) * 1000
    result: dict[str, Any] = {
        "steps": steps,
        "events": len(events),
        "file_mib": round(path.joinpath("events.jsonl").stat().st_size / 2**20, 1),
        "build_s": round(built_s, 2),
        "first_read_s": round(read_s, 2),
        "first_read_us_per_event": round(read_s / len(events) * 1e6, 1),
        "fold_s": round(fold_s, 2),
        "fold_us_per_event": round(fold_s / len(events) * 1e6, 1),
        "append_50_steps_ms": round(append_ms, 2),
        "appended_events": len(more),
    }
    result.update(asyncio.run(_monitor_refresh(path, history, size, profile)))
    # the path before this change, on the same data: the whole curve smoothed again and
    # averaged per column on every refresh
    width = size[0] // 2 - 10
    result["old_curve_path_ms"] = round(
        best_ms(lambda: downsample(smooth(history.train_loss, 0.6), width)), 2
    )
    return result


async def _monitor_refresh(
    path: Path, history: Any, size: tuple[int, int], profile: bool = False
) -> dict[str, Any]:
    steps = history.total_steps
    """One refresh of the real `MonitorScreen` (data in, both plots built), in a headless app."""
    from types import SimpleNamespace

    from textual.app import App

    from affiner.runner.run import SystemSample, TrainLog
    from affiner.tui.live import RunHistory, smooth
    from affiner.tui.screens.monitor import MonitorScreen
    from affiner.tui.widgets.plots import LossPlot, MemoryPlot

    services = SimpleNamespace(clock=time.time, run_poll_seconds=3600.0)
    css = Path(__file__).resolve().parent.parent / "tui" / "app.tcss"

    class BenchApp(App[None]):
        CSS_PATH = str(css)

        def on_mount(self) -> None:
            self.push_screen(MonitorScreen(services, None))

    app = BenchApp()
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, MonitorScreen)
        screen.run_dir = path
        screen.history = history
        loss, memory = screen.query_one(LossPlot), screen.query_one(MemoryPlot)

        step = [history.step]

        def batch(sample: bool) -> list[Any]:
            step[0] += 1
            events: list[Any] = [TrainLog(step=step[0], loss=2.0, total_steps=steps, t=2e9)]
            if sample:
                events.append(SystemSample(step=step[0], ram_total=32 * GIB, process_rss=GIB))
            return events

        def refresh(sample: bool = False) -> None:
            # what a batch of events costs the screen: folded, every panel given the history,
            # then what the compositor asks of the plots (a plot whose data did not change
            # keeps its text)
            history.add(batch(sample))
            screen._draw()
            loss.render()
            memory.render()

        def full_render() -> None:  # both canvases built, whatever changed
            loss._build_text()
            memory._build_text()

        first = best_ms(refresh, repeat=1)  # the first draw smooths the whole curve once
        await pilot.pause()  # the layout, now that the screen has a run: the plots' real size
        await pilot.pause()
        versions = (loss._version, memory._version)
        warm = best_ms(refresh, repeat=7)
        replots = (loss._version - versions[0], memory._version - versions[1])
        both = best_ms(lambda: refresh(True), repeat=7)
        drawn = len(loss.shown_train())

        def all_points() -> None:  # the baseline: the same plot fed every point
            plt = loss.plt
            plt.clear_data()
            plt.clear_figure()
            xs, ys = zip(*smooth(history.train_loss, 0.6), strict=True)
            plt.plot(xs, ys, marker="braille")
            loss._build_text()

        baseline = best_ms(all_points, repeat=1)
        loss.replot()
        plot_width = loss.size.width
        draw_ms = best_ms(screen._draw, repeat=7)
        render_ms = best_ms(full_render, repeat=7)
        # the floor: the same screen and canvases with a 10-step run (plotext's cost per cell,
        # which no run length changes)
        tiny = RunHistory()
        tiny.add([e for e in history._events[:40] if not isinstance(e, TrainLog) or e.step <= 10])
        screen.history = tiny
        screen._draw()
        empty_ms = best_ms(full_render, repeat=7)
        screen.history = history
        screen._draw()
        if profile:
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            profiler.runcall(refresh)
            pstats.Stats(profiler).sort_stats("cumtime").print_stats(25)
    return {
        "size": f"{size[0]}x{size[1]}",
        "plot_width_cells": plot_width,
        "points_drawn": drawn,
        "refresh_first_ms": round(first, 2),
        "refresh_ms": round(warm, 2),
        "replots_in_7_log_refreshes": replots,
        "refresh_log_and_sample_ms": round(both, 2),
        "refresh_draw_ms": round(draw_ms, 2),
        "both_canvases_ms": round(render_ms, 2),
        "ten_step_canvases_ms": round(empty_ms, 2),
        "all_points_plot_ms": round(baseline, 2),
        "bar_ms": MONITOR_BAR_MS,
        "meets_bar": both < MONITOR_BAR_MS,
    }


# -- 2. affiner runs, and 3. the runs screen's refresh ----------------------------------------


def _forget_caches() -> None:
    """Empty this process's caches of run folders, so the next read is a first read (cold)."""
    from affiner.runner.run import runs, tally

    tally._cursors.clear()
    runs._PARSED.clear()
    from affiner.tui.screens import run_facts

    run_facts._TABLES.clear()


def bench_runs(root: Path) -> dict[str, Any]:
    """``affiner runs`` over the folders under `root`: in-process (cold, warm), subprocess."""
    from affiner.tui.cli import main

    os.environ["AFFINER_RUNS"] = str(root)

    def cmd(*extra: str) -> None:
        with redirect_stdout(io.StringIO()):
            main(["runs", *extra])

    _forget_caches()
    start = time.perf_counter()
    cmd()
    cold_s = time.perf_counter() - start
    warm_ms = best_ms(cmd, repeat=3)
    json_warm_ms = best_ms(lambda: cmd("--json"), repeat=3)
    env = {**os.environ, "AFFINER_RUNS": str(root), "COLUMNS": "120"}

    def child(args: list[str]) -> float:
        start = time.perf_counter()
        subprocess.run(args, env=env, check=True, capture_output=True)
        return time.perf_counter() - start

    bare_s = min(child([sys.executable, "-c", "pass"]) for _ in range(3))
    runs = [sys.executable, "-c", "from affiner.tui.cli import main; main(['runs'])"]
    sub_s = child(runs)  # every child is cold: caches live in the process
    sub_json_s = child([*runs[:2], "from affiner.tui.cli import main; main(['runs', '--json'])"])
    events = sum(
        (p / "events.jsonl").read_bytes().count(b"\n") for p in root.iterdir() if p.is_dir()
    )
    return {
        "folders": sum(1 for p in root.iterdir() if p.is_dir()),
        "event_lines": events,
        "in_process_cold_s": round(cold_s, 3),
        "in_process_cold_us_per_line": round(cold_s / events * 1e6, 1),
        "in_process_warm_ms": round(warm_ms, 1),
        "in_process_warm_json_ms": round(json_warm_ms, 1),
        "subprocess_cold_s": round(sub_s, 3),
        "subprocess_cold_json_s": round(sub_json_s, 3),
        "python_pass_s": round(bare_s, 3),
        "bar_s": RUNS_BAR_S,
        "cold_meets_bar": sub_s < RUNS_BAR_S,
        "warm_meets_bar": warm_ms / 1000 < RUNS_BAR_S,
    }


def bench_runs_screen(root: Path) -> dict[str, Any]:
    """The runs screen's worker job (`list_runs`, short ids, `build_rows`): first, then again."""
    from affiner.runner.run import list_runs
    from affiner.tui.screens.run_facts import FactsCache, short_ids
    from affiner.tui.screens.runs_columns import build_rows

    cache = FactsCache()

    def refresh() -> object:
        summaries = list_runs(root)
        names = [p.name for p in root.iterdir() if p.is_dir()]
        return build_rows(summaries, short_ids([s.run_id for s in summaries], names), cache)

    _forget_caches()
    first_ms = best_ms(refresh, repeat=1)
    again_ms = best_ms(refresh, repeat=5)
    return {
        "first_refresh_ms": round(first_ms, 1),
        "refresh_ms": round(again_ms, 1),
        "refresh_vs_first": round(again_ms / first_ms, 4),
        "every_s": 5.0,
    }


# -- the report ---------------------------------------------------------------------------------


def table(result: dict[str, Any]) -> str:
    """A markdown table of what was measured, against the bars."""
    m, r, s = result["monitor"], result["runs"], result["runs_screen"]
    rows = [
        ("what", "measured", "baseline (same run)", "bar"),
        ("---", "---", "---", "---"),
        (
            f"monitor refresh, {m['steps']:,} steps, {m['size']} (draw + both plots)",
            f"{m['refresh_ms']} ms a log; {m['refresh_log_and_sample_ms']} ms a log and a "
            f"memory sample ({m['points_drawn']} points drawn)",
            f"every point plotted: {m['all_points_plot_ms']:.0f} ms; "
            f"old curve path alone: {m['old_curve_path_ms']} ms",
            f"< {MONITOR_BAR_MS:.0f} ms: {'yes' if m['meets_bar'] else 'no'}",
        ),
        (
            "  panels given the history / both canvases built",
            f"{m['refresh_draw_ms']} / {m['both_canvases_ms']} ms",
            f"same canvases, a 10-step run: {m['ten_step_canvases_ms']} ms",
            "",
        ),
        (
            "monitor, 80x24",
            f"{result['monitor_80x24']['refresh_ms']} ms",
            "",
            f"< {MONITOR_BAR_MS:.0f} ms: {'yes' if result['monitor_80x24']['meets_bar'] else 'no'}",
        ),
        (
            f"monitor first read of {m['events']:,} events ({m['file_mib']} MiB)",
            f"{m['first_read_s']} s ({m['first_read_us_per_event']} us/event) "
            f"+ fold {m['fold_s']} s",
            f"50 appended steps: {m['append_50_steps_ms']} ms",
            "linear",
        ),
        (
            f"`affiner runs`, {r['folders']} folders, {r['event_lines']:,} lines, subprocess",
            f"{r['subprocess_cold_s']} s (--json {r['subprocess_cold_json_s']} s)",
            f"python -c pass: {r['python_pass_s']} s",
            f"< {RUNS_BAR_S:.0f} s: {'yes' if r['cold_meets_bar'] else 'no'}",
        ),
        (
            "`affiner runs` in-process: cold / warm / warm --json",
            f"{r['in_process_cold_s']} s / {r['in_process_warm_ms']} ms / "
            f"{r['in_process_warm_json_ms']} ms",
            f"{r['in_process_cold_us_per_line']} us per event line cold",
            f"warm < {RUNS_BAR_S:.0f} s: {'yes' if r['warm_meets_bar'] else 'no'}",
        ),
        (
            "runs screen refresh (list + rows), again / first",
            f"{s['refresh_ms']} ms",
            f"first: {s['first_refresh_ms']} ms (x{s['refresh_vs_first']})",
            f"every {s['every_s']:.0f} s",
        ),
    ]
    return "\n".join("| " + " | ".join(str(c) for c in row) + " |" for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--out", type=Path, help="write ui_scale_cpu.json/.md here")
    parser.add_argument("--steps", type=int, default=MONITOR_STEPS)
    parser.add_argument("--folders", type=int, default=RUN_FOLDERS)
    args = parser.parse_args(argv)
    result: dict[str, Any] = {
        "machine": f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at start",
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    with tempfile.TemporaryDirectory(prefix="ui-scale-") as tmp:
        base = Path(tmp)
        result["monitor"] = bench_monitor(base / "monitor", args.steps)
        small = bench_monitor(base / "monitor-small", min(args.steps, 20_000), size=(80, 24))
        result["monitor_80x24"] = {
            k: small[k] for k in ("steps", "refresh_ms", "points_drawn", "meets_bar")
        }
        start = time.perf_counter()
        build_folders(base / "runs", args.folders)
        result["folders_build_s"] = round(time.perf_counter() - start, 1)
        result["runs_screen"] = bench_runs_screen(base / "runs")
        result["runs"] = bench_runs(base / "runs")
    result["load_at_end"] = round(os.getloadavg()[0], 1)
    text = table(result)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "ui_scale_cpu.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / "ui_scale_cpu.md").write_text(
            f"# UI at scale ({result['when']}, {result['machine']})\n\n{text}\n"
        )
    print(json.dumps(result, indent=2) if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
