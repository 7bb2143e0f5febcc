"""Is this exception an out-of-memory error? One answer for the pre-flight, the run and the benches.

Out of memory does not always arrive as ``torch.OutOfMemoryError``: a kernel or cuBLAS failing to
allocate raises a plain RuntimeError, and gradient checkpointing or the Trainer may wrap the
original error in another. Every caller that gives out-of-memory advice asks here.

The run's own back-off lives here too (`OomBackoff`): on an out-of-memory in training,
evaluation or saving the recipe halves the micro-batch and doubles gradient accumulation (the
effective batch stays the same), writes the new batch into ``run.toml`` (`write_batch`), and
goes on from the last checkpoint in the same process; after `MAX_BACKOFFS` it gives up with what
to change.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: Lower-case fragments of out-of-memory messages: the caching allocator ("CUDA out of
#: memory. Tried to allocate"), a kernel or cudaMalloc outside it ("CUDA error: out of
#: memory"), cuBLAS/cuDNN workspaces, and the CPU allocator.
OOM_TEXTS = (
    "out of memory",
    "cublas_status_alloc_failed",
    "cudnn_status_alloc_failed",
    "can't allocate memory",
)


def is_oom(exc: BaseException) -> bool:
    """True for an out-of-memory error, also when another exception wraps it."""
    import torch

    oom_types = tuple(
        t
        for t in (
            getattr(torch, "OutOfMemoryError", None),
            getattr(torch.cuda, "OutOfMemoryError", None),
        )
        if isinstance(t, type)
    )
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, oom_types):
            return True
        text = str(current).lower()
        if any(fragment in text for fragment in OOM_TEXTS):
            return True
        current = current.__cause__ or current.__context__
    return False


#: Out-of-memory back-offs a run makes before it gives up (each halves the micro-batch).
MAX_BACKOFFS = 2


@dataclass(frozen=True)
class BatchShape:
    """How an optimizer step's examples are split: ``micro_batch`` per pass, ``grad_accum`` passes."""

    micro_batch: int
    grad_accum: int

    def halved(self) -> BatchShape:
        """Half the micro-batch, twice the accumulation: the same effective batch, less memory."""
        return BatchShape(self.micro_batch // 2, self.grad_accum * 2)

    def __str__(self) -> str:
        return f"micro_batch {self.micro_batch} x grad_accum {self.grad_accum}"


@dataclass(frozen=True)
class OomAt:
    """Where an out-of-memory struck: the phase (`affiner.runner.run.phases`), the step, the first line."""

    phase: str
    step: int
    detail: str = ""

    def words(self) -> str:
        """``in training step 7`` (the step being taken), ``while evaluating at step 8``."""
        from affiner.runner.run.phases import TRAIN, phase_words

        if self.phase == TRAIN:
            return f"in training step {self.step + 1}"
        return f"while {phase_words(self.phase, self.step)[0]}"


@dataclass
class OomBackoff:
    """The run's out-of-memory back-off: halve the micro-batch, at most `limit` times.

    Attributes:
        start: the batch the run started with (what `give_up` tells the user to change).
        current: the batch in use now.
        done: back-offs made so far.
        limit: back-offs allowed (`MAX_BACKOFFS`).
    """

    start: BatchShape
    current: BatchShape
    done: int = 0
    limit: int = MAX_BACKOFFS

    @classmethod
    def starting_at(cls, micro_batch: int, grad_accum: int) -> OomBackoff:
        shape = BatchShape(int(micro_batch), int(grad_accum))
        return cls(start=shape, current=shape)

    def next(self) -> BatchShape | None:
        """The batch to try after an out-of-memory; None when the limit is reached or micro is 1."""
        if self.done >= self.limit or self.current.micro_batch <= 1:
            return None
        self.current = self.current.halved()
        self.done += 1
        return self.current

    def message(self, oom: OomAt, old: BatchShape, resumed_from: int) -> str:
        """The warning for one back-off: what ran out, the old and new batch, where it goes on."""
        where = (
            f"from the checkpoint at step {resumed_from}"
            if resumed_from
            else "from step 0 (no checkpoint yet)"
        )
        return (
            f"Out of memory {oom.words()} with {old}: continuing {where} with {self.current} "
            f"(the same effective batch; back-off {self.done} of {self.limit}, written to run.toml)."
        )

    def give_up(self, oom: OomAt) -> str:
        """The error once backing off is no longer possible: what to change in ``run.toml``."""
        tried = f"{self.start} → {self.current}" if self.done else str(self.current)
        return (
            f"Out of memory {oom.words()} after {self.done} back-off(s) ({tried}). "
            "In run.toml: shorten [data].max_seq_len, set [training].gradient_checkpointing = true, "
            'or use [method].name = "qlora"; `affiner preflight run.toml` measures what fits.'
        )


def free_accelerator_memory() -> None:
    """Collect the dropped model and trainer, and hand the CUDA allocator's cache back."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def write_batch(run_dir: str | os.PathLike[str], shape: BatchShape) -> None:
    """Write `shape` into the run's ``run.toml`` (atomically; raw TOML, so paths stay as written).

    ``run.toml`` is the one place a run's settings live, so a later ``affiner train --resume``
    (a new process) starts from the batch that fits without anything else to consult.
    """
    from affiner.runner.config import config_from_dict, read_raw_config, save_config

    path = Path(run_dir) / "run.toml"
    if not path.exists():
        return
    data = read_raw_config(path)
    training = data.setdefault("training", {})
    training["micro_batch"], training["grad_accum"] = shape.micro_batch, shape.grad_accum
    save_config(config_from_dict(data, source=str(path)), path)
