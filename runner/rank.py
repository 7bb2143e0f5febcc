"""One rank of a multi-process run: ``python -m affiner.runner.worker RUN --rank``.

``accelerate launch`` starts one per process (`affiner.runner.run.supervise` watches them).
A rank records itself in ``ranks/rank-N.json`` as it starts and again as it ends (how, at which
step, why), sends its output to ``ranks/rank-N.log`` (rank 0 keeps ``train.log``), dies with
its launcher, and otherwise trains exactly as a single process does (`run_training`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from affiner.runner.run import RunDir
from affiner.runner.run.distributed import RankRecord, rank_log, this_rank, write_rank_record

__all__ = ["run_rank"]


def run_rank(run_dir: Path, *, resume: bool, preflight: Callable[[], int] | None = None) -> int:
    """Train as one rank: record it, send its output to its log, train, record how it ended.

    With `preflight` (the worker's pre-flight check), the rank measures instead of training:
    every rank takes part, rank 0 records the result.
    """
    from affiner.runner.training.callbacks import StopRequest

    if preflight is None:  # a check stops at once on a signal; training keeps the request
        # a stop the supervisor passes on as soon as this rank is recorded is kept, not fatal
        StopRequest.catch_early()
    rd = RunDir(run_dir)
    record = this_rank()
    if record.rank != 0:
        _output_to(rank_log(rd, record.rank))
    _die_with_parent()
    write_rank_record(rd, record)
    code: int | None = None
    try:
        if preflight is not None:
            code = preflight()
            return code
        from affiner.runner.train import run_training

        code = run_training(
            run_dir, resume=resume, callbacks=[], on_end=lambda r: _ended(r, record)
        )
        # torchrun takes any other exit code for a failure and kills the ranks still working
        # (rank 0 writing the model card); the record keeps the stop (3) for the supervisor
        return 0 if code == 3 else code
    finally:
        record.ended, record.exit_code = time.time(), code if code is not None else 1
        if code is None:
            record.reason = record.reason or "crashed before training could say why (see its log)"
        with contextlib.suppress(OSError):
            write_rank_record(rd, record)
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
            sys.stderr.flush()


def _ended(run: Any, record: RankRecord) -> None:
    """What the recipe knows at its end: the step reached and, for a failure, why."""
    record.step = int(getattr(run, "step", 0) or 0)
    record.reason = str(getattr(run, "end_reason", "") or "")


def _output_to(path: Path) -> None:
    """Point this process's stdout and stderr (the descriptors, so C++ warnings too) at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    os.write(
        fd, f"\n=== {stamp} rank {os.environ.get('RANK', '?')} on {socket.gethostname()}\n".encode()
    )
    for stream, target in ((sys.stdout, 1), (sys.stderr, 2)):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
        os.dup2(fd, target)
    os.close(fd)


def _die_with_parent() -> None:
    """Be killed when the launcher dies (Linux): torchrun starts each rank in its own session,
    so a ``kill -9`` of the run's process group would otherwise leave the ranks training,
    unwatched, holding their GPUs."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the request took hold
        os._exit(1)
