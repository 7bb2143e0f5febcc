"""How long ``python -m affiner`` takes to draw its first screen in a real terminal, against a bare
Textual app measured the same way in the same session.

Each run starts a fresh process in a detached tmux session at 80x24 (the size of a default
SSH terminal) and polls ``capture-pane`` every 10 ms until a known string is on the screen:
the footer of the assistant for affiner, "hello" for the baseline, a Textual app that shows
one Static. Runs alternate between the two so both see the same machine load. The difference
is what affiner itself costs on top of starting Textual. The bar: under 1.5 s wall.

    PYTHONPATH=. python bench/tui_startup.py [--runs N] [--json] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.tmux_driver import TmuxSession, app_env, tmux_available  # noqa: E402

BAR_SECONDS = 1.5
MARKER = "Assist"  # the assistant screen's footer: the first screen is drawn
HELLO_APP = (
    "from textual.app import App\n"
    "from textual.widgets import Static\n"
    "class Hello(App):\n"
    "    def compose(self):\n"
    "        yield Static('hello')\n"
    "Hello().run()\n"
)


def _env(runs_dir: str) -> dict[str, str]:
    return app_env(str(REPO), AFFINER_RUNS=runs_dir)


def time_to_screen(argv: list[str], marker: str, env: dict[str, str]) -> float:
    """Seconds from starting the tmux session to ``marker`` appearing on its screen."""
    with TmuxSession(argv, env=env, cwd=str(REPO)) as term:
        return term.wait_for(marker, timeout=30, poll=0.01)


def _summary(samples: list[float]) -> dict[str, float]:
    return {
        "median_s": round(statistics.median(samples), 4),
        "min_s": round(min(samples), 4),
        "max_s": round(max(samples), 4),
    }


def measure(runs: int) -> dict[str, object]:
    app_argv = [sys.executable, "-m", "affiner"]
    hello_argv = [sys.executable, "-c", HELLO_APP]
    with tempfile.TemporaryDirectory() as runs_dir:
        env = _env(runs_dir)
        time_to_screen(app_argv, MARKER, env)  # warm the file cache once; not counted
        app: list[float] = []
        hello: list[float] = []
        for _ in range(runs):
            hello.append(time_to_screen(hello_argv, "hello", env))
            app.append(time_to_screen(app_argv, MARKER, env))
    first, base = _summary(app), _summary(hello)
    return {
        "command": "python -m affiner (80x24 tmux, until the assistant's footer is drawn)",
        "baseline": "bare Textual app showing 'hello' (80x24 tmux)",
        "runs": runs,
        "first_screen": first,
        "textual_baseline": base,
        "ratio_median": round(first["median_s"] / base["median_s"], 2),
        "overhead_median_s": round(first["median_s"] - base["median_s"], 4),
        "bar_s": BAR_SECONDS,
        "under_bar": first["median_s"] < BAR_SECONDS,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }


def print_table(result: dict[str, object]) -> None:
    rows = [
        ("bare Textual app", result["textual_baseline"]),
        ("affiner first screen", result["first_screen"]),
    ]
    print(
        f"{'':<22}{'median':>10}{'min':>10}{'max':>10}   ({result['runs']} runs each, tmux 80x24)"
    )
    for label, stats in rows:
        assert isinstance(stats, dict)
        print(
            f"{label:<22}{stats['median_s']:>9.3f}s{stats['min_s']:>9.3f}s{stats['max_s']:>9.3f}s"
        )
    print(
        f"affiner / baseline: {result['ratio_median']}x (median), "
        f"+{result['overhead_median_s']:.3f}s; under {BAR_SECONDS} s: {result['under_bar']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="launches of each program")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--out", type=Path, help="also write the JSON result to this file")
    args = parser.parse_args(argv)
    if not tmux_available():
        print("tui_startup: tmux is not installed", file=sys.stderr)
        return 2
    result = measure(max(1, args.runs))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0 if result["under_bar"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
