"""One rank of a multi-process run: its record, its log, and what the ranks must agree on.

``accelerate launch`` starts ``python -m affiner.runner.worker RUN --rank`` once per process
(`affiner.runner.run.supervise` watches them). Each rank trains with the same recipe as a
single process (`affiner.runner.train.run_training`); rank 0 alone writes the run's files.
Two things need every rank at once, so they are collectives at a step's end:

- a stop (`StopAgreement`): a signal reaches the ranks at different moments, but they must
  save the same checkpoint and stop after the same step, or one waits forever for the others;
- memory (`RankMemory`): each rank's own reading reaches rank 0, which writes it as a
  ``system`` event tagged with the rank and node (across nodes too: no shared folder needed).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from affiner.runner.run import EventWriter, RunDir
from affiner.runner.run.distributed import (
    RankRecord,
    rank_log,
    this_rank,
    write_rank_record,
)
from affiner.runner.training.sampler import _Nvml, _try, nvml_handle_for_torch_device, take_sample

__all__ = ["RankMemory", "StopAgreement", "gather_objects", "run_rank"]


def run_rank(run_dir: Path, *, resume: bool) -> int:
    """Train as one rank: record it, send its output to its log, train, record how it ended."""
    rd = RunDir(run_dir)
    record = this_rank()
    if record.rank != 0:
        _output_to(rank_log(rd, record.rank))
    _die_with_parent()
    write_rank_record(rd, record)
    code: int | None = None
    try:
        from affiner.runner.train import run_training

        code = run_training(
            run_dir, resume=resume, callbacks=[], on_end=lambda r: _ended(r, record)
        )
        return code
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


def _collective_device() -> Any:
    """Where a collective's tensor must live: the GPU for NCCL, the CPU for gloo."""
    import torch
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_objects(value: Any) -> list[Any]:
    """`value` from every rank, by rank (just ``[value]`` outside a process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


class StopAgreement(TrainerCallback):
    """At each step's end, every rank learns whether any rank was asked to stop.

    One all-reduce of a single number per optimizer step (the Trainer's own gradient
    all-reduce moves millions). It must run before `EventCallback`, which turns the agreed
    request into "save a checkpoint, then stop", identically on every rank.
    """

    def __init__(self, stop: Any) -> None:
        self.stop = stop

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        import torch
        import torch.distributed as dist

        if not dist.is_initialized():
            return control
        flag = torch.tensor([1.0 if self.stop.requested else 0.0], device=_collective_device())
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() > 0 and not self.stop.requested:
            self.stop.requested = True
            self.stop.signal_name = "SIGTERM (sent to another rank)"
        return control


class RankMemory(TrainerCallback):
    """At every training log, each rank's memory reaches rank 0 as a tagged ``system`` event.

    Args:
        writer: rank 0's event writer (None on the others).
        node: this rank's node.
        step: the current optimizer step.
    """

    def __init__(self, writer: EventWriter | None, node: int) -> None:
        self.writer = writer
        self.node = node
        self._nvml: _Nvml | None = None

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> Any:
        if not logs or "loss" not in logs:
            return control  # evaluations and the summary are not steps of the curve
        sample = self._sample(int(state.global_step))
        samples = gather_objects(sample)
        if self.writer is not None and state.is_world_process_zero:
            for rank, reading in enumerate(samples):
                if reading is not None:
                    reading.rank = rank
                    reading.t = 0.0
                    self.writer.write(reading)
        return control

    def _sample(self, step: int) -> Any:
        """This rank's reading: its own GPU only, its allocator, its process."""
        import torch

        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        if cuda and self._nvml is None:
            self._nvml = _Nvml()
        device = torch.cuda.current_device() if cuda else None
        sample = take_sample(None, step, device)
        sample.node = self.node
        if cuda and self._nvml is not None and self._nvml.module is not None:
            sample.gpus = _own_gpu(self._nvml, device)
        return sample

    def close(self) -> None:
        if self._nvml is not None:
            self._nvml.close()
            self._nvml = None


def _own_gpu(nvml: _Nvml, device: int) -> list[Any]:
    """NVML's reading of the GPU torch calls `device` (matched by UUID), as a one-item list."""
    nv = nvml.module
    handle = _try(lambda: nvml_handle_for_torch_device(nv, device), None)
    if handle is None:
        return []
    uuid = _try(lambda: nv.nvmlDeviceGetUUID(handle), None)
    readings = nvml.sample()
    for index, other in enumerate(nvml.handles):
        if uuid is not None and _try(lambda h=other: nv.nvmlDeviceGetUUID(h), None) == uuid:
            return [readings[index]] if index < len(readings) else []
    return []
