"""What the ranks of a multi-process run must do together (`affiner.runner.rank` is one rank).

Each rank trains with the same recipe as a single process (`affiner.runner.train`); rank 0
alone writes the run's files. Two things need every rank at once, so they are collectives at a
step's end:

- a stop (`StopAgreement`): a signal reaches the ranks at different moments, but they must
  save the same checkpoint and stop after the same step, or one waits forever for the others;
- memory (`RankMemory`): each rank's own reading reaches rank 0, which writes it as a
  ``system`` event tagged with the rank and node (across nodes too: no shared folder needed).
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from affiner.runner.run import EventWriter
from affiner.runner.training.sampler import _Nvml, own_gpu, take_sample

__all__ = ["RankMemory", "StopAgreement", "gather_objects"]


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
    """At each logging step's end, every rank learns whether any rank was asked to stop.

    One all-reduce of a single number. Reading its result waits for the GPU, so it is asked
    only at the steps whose loss the Trainer reads on the host anyway (every
    ``logging_steps``, and the last): no extra host sync in the training loop, and a stop
    lands at most `logging_steps` steps later. It must run before `EventCallback`, which turns
    the agreed request into "save a checkpoint, then stop", identically on every rank.
    """

    def __init__(self, stop: Any) -> None:
        self.stop = stop
        stop.alone = False  # from now on a signal only asks; the ranks decide here, together

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        import torch
        import torch.distributed as dist

        if not dist.is_initialized():
            return control
        every = max(1, int(getattr(args, "logging_steps", 1) or 1))
        if state.global_step % every and state.global_step < state.max_steps:
            return control  # asked at logging steps only: their loss is read on the host anyway
        asked = self.stop.signalled or self.stop.requested
        flag = torch.tensor([1.0 if asked else 0.0], device=_collective_device())
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        agreed = flag.item() > 0
        if agreed and not self.stop.signal_name:
            self.stop.signal_name = "SIGTERM (sent to another rank)"
        self.stop.requested = agreed
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
            sample.gpus = own_gpu(self._nvml, device)
        return sample

    def close(self) -> None:
        if self._nvml is not None:
            self._nvml.close()
            self._nvml = None
