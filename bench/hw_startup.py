"""How long ``affiner hw --json`` takes from a cold interpreter, against bare Python.

``affiner hw --json`` is what scripts and shell prompts call, so it must answer in well under
a second and must not import torch, transformers or Textual. Each run is a fresh
subprocess (``python -m affiner hw --json``); the baseline is ``python -c pass`` measured in the
same session, interleaved with the command so both see the same machine load. One more run
with ``-X importtime`` lists which heavy modules got imported (the answer must be none).

    PYTHONPATH=. python bench/hw_startup.py [--runs N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "textual", "peft", "bitsandbytes", "datasets", "accelerate")
COMMAND = [sys.executable, "-m", "affiner", "hw", "--json"]
BASELINE = [sys.executable, "-c", "pass"]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")


def wall_time(argv: list[str]) -> float:
    """Seconds from spawn to exit; the command must succeed."""
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, env=_env(), cwd=REPO, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr.decode()}")
    return elapsed


def heavy_imports() -> list[str]:
    """Heavy top-level packages the command imports, read from ``-X importtime``."""
    argv = [sys.executable, "-X", "importtime", *COMMAND[1:]]
    done = subprocess.run(argv, capture_output=True, text=True, env=_env(), cwd=REPO, check=True)
    names = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    return sorted(name for name in names if name.split(".")[0] in HEAVY and "." not in name)


def _summary(samples: list[float]) -> dict[str, float]:
    return {
        "median_s": round(statistics.median(samples), 4),
        "min_s": round(min(samples), 4),
        "max_s": round(max(samples), 4),
    }


def measure(runs: int) -> dict[str, object]:
    wall_time(COMMAND)  # warm the file cache once; not counted
    command: list[float] = []
    baseline: list[float] = []
    for _ in range(runs):
        baseline.append(wall_time(BASELINE))
        command.append(wall_time(COMMAND))
    cmd, base = _summary(command), _summary(baseline)
    return {
        "command": " ".join(["python", *COMMAND[1:]]),
        "baseline": "python -c pass",
        "runs": runs,
        "hw_json": cmd,
        "python_baseline": base,
        "ratio_median": round(cmd["median_s"] / base["median_s"], 2),
        "overhead_median_s": round(cmd["median_s"] - base["median_s"], 4),
        "under_1s": cmd["max_s"] < 1.0,
        "heavy_modules_imported": heavy_imports(),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }


def print_table(result: dict[str, object]) -> None:
    rows = [("python -c pass", result["python_baseline"]), ("affiner hw --json", result["hw_json"])]
    print(f"{'':<20}{'median':>10}{'min':>10}{'max':>10}   ({result['runs']} runs each)")
    for label, stats in rows:
        assert isinstance(stats, dict)
        print(
            f"{label:<20}{stats['median_s']:>9.3f}s{stats['min_s']:>9.3f}s{stats['max_s']:>9.3f}s"
        )
    print(
        f"hw --json / baseline: {result['ratio_median']}x (median), "
        f"+{result['overhead_median_s']:.3f}s; under 1 s: {result['under_1s']}"
    )
    heavy = result["heavy_modules_imported"]
    print(f"heavy modules imported: {', '.join(heavy) if heavy else 'none'}")  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="fresh processes per command")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    result = measure(max(1, args.runs))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0 if result["under_1s"] and not result["heavy_modules_imported"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
