"""The detached training process: ``python -m affiner.runner.worker RUN_DIR [--resume] [--preflight-only]``.

`affiner.runner.run.launch` starts this in its own session with stdout/stderr going to ``train.log``;
everything a screen needs comes out through the run folder (``events.jsonl``, ``status.json``).

Exit codes:
    0  finished (early stopping included), or the pre-flight check succeeded
    1  failed: NaN/inf loss, out of memory, or a crash (traceback in train.log)
    2  the configuration or data cannot be used, or another process holds the run folder;
       nothing was trained
    3  stopped on SIGTERM/SIGINT after saving a checkpoint; resume with --resume

A failed pre-flight (1 or 2) also writes an ``error`` event: its caller reads the reason there.

With ``[distributed]`` asking for several processes the worker trains nothing itself: it
supervises ``accelerate launch`` (`affiner.runner.run.supervise`), whose ranks are this module
again with ``--rank`` (`affiner.runner.rank`), and exits with the codes above for the whole run.

The worker holds the run folder's lock (`affiner.runner.run.lock`) for its whole life: the one
its launcher took and handed down, or one it takes itself when started by hand. While another
worker holds it, this one writes nothing to the folder and exits with 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from affiner.planner.errors import AffinerError
from affiner.planner.units import format_bytes, format_duration

if TYPE_CHECKING:
    from affiner.runner.run import RunDir
    from affiner.runner.run.lock import Purpose, RunLock


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
    parser.add_argument(
        "--rank",
        action="store_true",
        help="one rank of a multi-process run, started by accelerate launch (the run's own "
        "worker supervises the ranks and holds the run folder)",
    )
    parser.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="with --preflight-only: stop as on Ctrl-C when stdin closes (the caller has gone)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.exit_with_parent and not args.preflight_only:
        parser.error("--exit-with-parent goes with --preflight-only")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run_dir = Path(args.run_dir).expanduser().resolve()
    if not (run_dir / "run.toml").exists():
        print(f"error: {run_dir}: no run.toml in this folder", file=sys.stderr)
        return 2
    if args.rank:
        from affiner.runner.rank import run_rank

        return run_rank(
            run_dir,
            resume=args.resume,
            preflight=(lambda: _preflight(run_dir)) if args.preflight_only else None,
        )
    purpose = "preflight" if args.preflight_only else "resume" if args.resume else "train"
    try:
        lock = _hold_run_lock(run_dir, purpose)
    except AffinerError as exc:  # another worker has the folder: write nothing into it
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.preflight_only and args.exit_with_parent:
            _exit_when_stdin_closes()
        if _distributed(run_dir):  # the ranks measure or train; this process watches them
            from affiner.runner.run.supervise import supervise

            return supervise(run_dir, resume=args.resume, preflight=args.preflight_only)
        if args.preflight_only:
            return _preflight(run_dir)
        from affiner.runner.train import run_training

        return run_training(run_dir, resume=args.resume)
    finally:
        if lock is not None:
            lock.release()


def _distributed(run_dir: Path) -> bool:
    """``[distributed]`` asks for several processes (a run.toml that does not load is left to
    the training recipe, which says why in the run's events)."""
    from affiner.runner.config import load_config

    try:
        return load_config(run_dir / "run.toml").distributed.enabled
    except AffinerError:
        return False


def _hold_run_lock(run_dir: Path, purpose: Purpose) -> RunLock | None:
    """The run folder's lock, held from here until the process ends (None where the file system
    cannot lock). Only rank 0 of a multi-process run holds it: the other ranks are the same run.

    Raises:
        RunBusy: another worker holds it.
    """
    from affiner.runner.run.lock import LOCK_FD_ENV, adopt

    if int(os.environ.get("RANK", "0") or 0) != 0:
        os.environ.pop(LOCK_FD_ENV, None)
        return None
    return adopt(run_dir, purpose=purpose)


def _preflight(run_dir: Path) -> int:
    from affiner.runner.config import load_config
    from affiner.runner.run import RunDir

    rd = RunDir(run_dir)
    try:
        from affiner.runner.training import run_preflight

        event = run_preflight(load_config(rd.config), run_dir=rd)
    except AffinerError as exc:
        return _preflight_failed(rd, "config", str(exc), 2)
    except Exception as exc:
        traceback.print_exc()  # stderr is the run's train.log
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        message = f"The pre-flight check crashed: {type(exc).__name__}: {first}"
        return _preflight_failed(rd, "crash", message + " (traceback in train.log)", 1)
    print(
        f"pre-flight on {event.device}: peak {format_bytes(event.measured_peak_bytes)}, "
        f"{format_duration(event.measured_step_seconds)}/step "
        f"at micro_batch {event.micro_batch} x grad_accum {event.grad_accum}"
        + (" (adjusted)" if event.adjusted else "")
    )
    return 0


def _preflight_failed(rd: RunDir, code: str, message: str, exit_code: int) -> int:
    """Say why in the run folder (an ``error`` event, what the caller reads) and on stderr."""
    from affiner.runner.run import Error, EventWriter

    if int(os.environ.get("RANK", "0") or 0) == 0:  # one writer per run: rank 0
        with EventWriter(rd.path) as writer:
            writer.write(Error(code=code, message=message))
    print(f"error: {message}", file=sys.stderr)
    return exit_code


def _exit_when_stdin_closes(grace: float = 60.0) -> None:
    """Behave as on Ctrl-C once stdin ends: the caller holds the pipe's other end until it exits.

    SIGINT lets the pre-flight leave through its ``finally`` blocks (its temporary checkpoint
    is removed); a process still there `grace` seconds later exits outright. SIGINT is also
    how the caller stops it, so it is made to raise KeyboardInterrupt even when this process
    inherited it ignored (a non-interactive shell ignores SIGINT in background jobs).
    """
    import _thread
    import signal
    import threading
    import time

    signal.signal(signal.SIGINT, signal.default_int_handler)

    def watch() -> None:
        try:
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        _thread.interrupt_main(signal.SIGINT)
        time.sleep(grace)
        os._exit(1)

    threading.Thread(target=watch, name="affiner-parent-watch", daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
