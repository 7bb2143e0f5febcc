"""Are the plan's training time and peak memory what the run then takes? The CPU demos, planned and run.

Runs ``affiner demo chat`` and ``affiner demo classify`` headless, as a user would (fresh run
folders, the machine's own CPU), and holds what the plan said before the run (its total for
the steps the run will take, and its step time) against what the run then measured (the
training time from the worker's first step to its last, and the median logged step), and the plan's peak memory against the worker's peak resident memory. The
ratios are measured over planned; the bars are within ±30% for time (`BAR`) and ±10% for
memory (`MEMORY_BAR`).

    PYTHONPATH=. python bench/demo_time.py [--json] [--out DIR] [--only chat|classify]

The machine should be quiet: a second job on two cores doubles every step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("results")
DEMOS = ("classify", "chat")
#: measured over planned training time must lie within 1 ± BAR
BAR = 0.30
#: measured over planned peak memory must lie within 1 ± MEMORY_BAR
MEMORY_BAR = 0.10
GIB = 1024**3
AFFINER = [sys.executable, "-c", "import sys; from affiner.tui.cli import main; sys.exit(main())"]


def run_demo(key: str, workdir: Path) -> dict:
    """One headless demo in `workdir`; its summary JSON plus the command's wall time."""
    summary = workdir / f"{key}.json"
    cmd = [*AFFINER, "demo", key, "--headless", "--no-samples", "--json", str(summary)]
    cmd += ["--runs-dir", str(workdir / "runs")]
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    wall = time.monotonic() - started
    if proc.returncode != 0 or not summary.exists():
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
        return {"demo": key, "failed": tail}
    data = json.loads(summary.read_text())
    return score(data) | {
        "metric": data.get("metric"),
        "before": data.get("before"),
        "after": data.get("after"),
        "wall_seconds": round(wall, 1),
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }


def score(data: dict) -> dict:
    """Planned against measured for one demo summary (`affiner demo --json`)."""
    planned, measured = data.get("planned_train_seconds"), data.get("train_seconds")
    ratio = measured / planned if planned and measured else None
    step_ratio = None
    if data.get("planned_step_seconds") and data.get("measured_step_seconds"):
        step_ratio = data["measured_step_seconds"] / data["planned_step_seconds"]
    peak_ratio = None
    if data.get("planned_peak_bytes") and data.get("measured_peak_bytes"):
        peak_ratio = data["measured_peak_bytes"] / data["planned_peak_bytes"]
    return {
        "demo": data["demo"],
        "state": data["state"],
        "steps": data["steps"],
        "planned_steps": data.get("planned_steps"),
        "planned_train_seconds": planned,
        "train_seconds": measured,
        "ratio": ratio,
        "planned_step_seconds": data.get("planned_step_seconds"),
        "measured_step_seconds": data.get("measured_step_seconds"),
        "step_ratio": step_ratio,
        "within_bar": ratio is not None and abs(ratio - 1) <= BAR,
        "planned_peak_bytes": data.get("planned_peak_bytes"),
        "measured_peak_bytes": data.get("measured_peak_bytes"),
        "peak_ratio": peak_ratio,
        "peak_within_bar": peak_ratio is not None and abs(peak_ratio - 1) <= MEMORY_BAR,
    }


def _s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _r(value: float | None) -> str:
    return "n/a" if value is None else f"x{value:.2f}"


def _gib(value: int | None) -> str:
    return "n/a" if not value else f"{value / GIB:.2f}"


def table(result: dict) -> str:
    lines = [
        "| demo | steps (planned) | planned s | measured s | measured/planned | "
        "step planned s | step measured s | step ratio | within ±30% | "
        "peak planned GiB | peak measured GiB | peak ratio | within ±10% |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in result["demos"]:
        if "failed" in row:
            lines.append(f"| {row['demo']} | failed: {' / '.join(row['failed'])} |")
            continue
        lines.append(
            f"| {row['demo']} | {row['steps']} ({row['planned_steps']}) | "
            f"{_s(row['planned_train_seconds'])} | {_s(row['train_seconds'])} | "
            f"{_r(row['ratio'])} | {row['planned_step_seconds'] or 0:.3f} | "
            f"{row['measured_step_seconds'] or 0:.3f} | {_r(row['step_ratio'])} | "
            f"{'yes' if row['within_bar'] else 'NO'} | "
            f"{_gib(row.get('planned_peak_bytes'))} | {_gib(row.get('measured_peak_bytes'))} | "
            f"{_r(row.get('peak_ratio'))} | {'yes' if row.get('peak_within_bar') else 'NO'} |"
        )
    return "\n".join(lines)


README_BEGIN, README_END = "<!-- demo-table:begin -->", "<!-- demo-table:end -->"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s" if minutes else f"{rest} s"


def _held_out(row: dict) -> str:
    """``accuracy 0.48 → 0.80, F1 0.48 → 0.79`` or ``loss 3.26 → 2.03 (−38%)``."""
    before, after = row.get("before") or {}, row.get("after") or {}
    if row.get("metric") == "accuracy":
        parts = [
            f"{name} {before[key]:.2f} → {after[key]:.2f}"
            for key, name in (("accuracy", "accuracy"), ("f1", "F1"))
            if before.get(key) is not None and after.get(key) is not None
        ]
        return ", ".join(parts) or "n/a"
    if before.get("loss") is None or after.get("loss") is None:
        return "n/a"
    change = after["loss"] / before["loss"] - 1
    return f"loss {before['loss']:.2f} → {after['loss']:.2f} ({change:+.0%})".replace("-", "−")


def readme_table(result: dict) -> str:
    """The README's demo table: what a user waits for and what comes out, and where it was
    measured (the machine, its load average before and after, the date)."""
    rows = [r for r in result["demos"] if "failed" not in r]
    loads = ", ".join(f"{r['demo']} {r['load_before']} → {r['load_after']}" for r in rows)
    lines = [
        f"Measured on {result['machine']}, {result['date']}, load average {loads} "
        "(`bench/demo_time.py --readme` writes this table):",
        "",
        "| task | time (training) | held-out result |",
        "| --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| `{row['demo']}` | {_duration(row['wall_seconds'])} "
            f"({_duration(row['train_seconds'])}) | {_held_out(row)} |"
        )
    return "\n".join(lines)


def write_readme(readme: Path, table_text: str) -> None:
    """Replace the block between the demo-table markers of `readme` with `table_text`."""
    text = readme.read_text("utf-8")
    start, end = text.find(README_BEGIN), text.find(README_END)
    if start < 0 or end < start:
        raise SystemExit(f"{readme}: no {README_BEGIN} ... {README_END} block to rewrite")
    head, tail = text[: start + len(README_BEGIN)], text[end:]
    readme.write_text(f"{head}\n{table_text}\n{tail}", "utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--out", type=Path, help="write demo_time_cpu.json/.md into DIR")
    parser.add_argument("--only", choices=DEMOS, help="run one demo")
    parser.add_argument(
        "--readme", action="store_true", help="rewrite README.md's demo table with the result"
    )
    parser.add_argument("--workdir", type=Path, help="keep the demos' runs here")
    args = parser.parse_args(argv)
    keys = [args.only] if args.only else DEMOS
    if args.workdir:  # kept: the runs, their adapters and events stay for a closer look
        args.workdir.mkdir(parents=True, exist_ok=True)
        rows = [run_demo(key, args.workdir) for key in keys]
    else:
        with tempfile.TemporaryDirectory(prefix="affiner-demo-time-") as tmp:
            rows = [run_demo(key, Path(tmp)) for key in keys]
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} logical cores, {platform.system()}",
        "date": time.strftime("%Y-%m-%d"),
        "bar": f"measured training time within ±{BAR:.0%} of the plan's, "
        f"peak memory within ±{MEMORY_BAR:.0%}",
        "demos": rows,
        "all_within_bar": all(r.get("within_bar") and r.get("peak_within_bar") for r in rows),
    }
    text = table(result)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "demo_time_cpu.json").write_text(json.dumps(result, indent=2) + "\n")
        cmd = "PYTHONPATH=. python bench/demo_time.py --out bench/results"
        (args.out / "demo_time_cpu.md").write_text(
            f"# CPU demos: planned against measured training time and peak memory\n\n"
            f"`{cmd}`\n\n{text}\n"
        )
    if args.readme:
        write_readme(Path(__file__).resolve().parent.parent / "README.md", readme_table(result))
    print(json.dumps(result, indent=2) if args.json else text)
    return 0 if result["all_within_bar"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
