"""The detached training process: ``python -m affiner.runner.worker RUN_DIR [--resume] [--preflight-only]``.

`affiner.runner.run.launch` starts this in its own session with stdout/stderr going to ``train.log``;
everything a screen needs comes out through the run folder (``events.jsonl``, ``status.json``).

Exit codes:
    0  finished (early stopping included), or the pre-flight check succeeded
    1  failed: NaN/inf loss, out of memory, or a crash (traceback in train.log)
    2  the configuration or data cannot be used; nothing was trained
    3  stopped on SIGTERM/SIGINT after saving a checkpoint; resume with --resume
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from affiner.planner.errors import AffinerError
from affiner.planner.units import format_bytes, format_duration


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m affiner.runner.worker",
        description="Train one affiner run folder in this process.",
    )
    parser.add_argument("run_dir", help="the run folder (holds run.toml)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    parser.add_argument(
        "--preflight-only",
        action="store_true",
        help="measure peak memory and step time, write them to the run, and exit",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run_dir = Path(args.run_dir).expanduser().resolve()
    if not (run_dir / "run.toml").exists():
        print(f"error: {run_dir}: no run.toml in this folder", file=sys.stderr)
        return 2
    if args.preflight_only:
        return _preflight(run_dir)
    from affiner.runner.train import run_training

    return run_training(run_dir, resume=args.resume)


def _preflight(run_dir: Path) -> int:
    from affiner.runner.config import load_config
    from affiner.runner.run import RunDir
    from affiner.runner.training import run_preflight

    try:
        event = run_preflight(load_config(run_dir / "run.toml"), run_dir=RunDir(run_dir))
    except AffinerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"pre-flight on {event.device}: peak {format_bytes(event.measured_peak_bytes)}, "
        f"{format_duration(event.measured_step_seconds)}/step "
        f"at micro_batch {event.micro_batch} x grad_accum {event.grad_accum}"
        + (" (adjusted)" if event.adjusted else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
