"""Is this exception an out-of-memory error? One answer for the pre-flight, the run and the benches.

Out of memory does not always arrive as ``torch.OutOfMemoryError``: a kernel or cuBLAS failing to
allocate raises a plain RuntimeError, and gradient checkpointing or the Trainer may wrap the
original error in another. Every caller that gives out-of-memory advice asks here.
"""

from __future__ import annotations

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
