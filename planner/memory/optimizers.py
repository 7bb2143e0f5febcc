"""Optimizer state bytes per trainable parameter, as each implementation allocates them.

- ``adamw`` (torch's fused AdamW, the Trainer's ``adamw_torch_fused``): ``exp_avg`` and ``exp_avg_sq`` in the parameter's
  dtype (fp32 master weights: 8 bytes a parameter; a pure-bf16 model: 4) plus a scalar step.
- ``adamw8bit`` / ``paged_adamw8bit`` (bitsandbytes): two uint8 states plus one fp32 absmax
  per block of 256 values, for tensors of at least 4096 elements; smaller tensors keep fp32
  states. The paged variant lives in CUDA unified memory and can spill to host RAM.
- ``sgd`` with momentum: one buffer in the parameter's dtype.
- ``adafactor`` (transformers): for a matrix, fp32 row and column second-moment factors; for a
  vector the full fp32 second moment; no first moment (``beta1=None``).
"""

from __future__ import annotations

from collections.abc import Iterable

BNB_BLOCK = 256
BNB_MIN_8BIT = 4096


def optimizer_bytes(optimizer: str, shapes: Iterable[tuple[int, ...]], *, param_bytes: int) -> int:
    """State bytes for trainable tensors of `shapes` held in `param_bytes`-byte dtype."""
    total = 0
    for shape in shapes:
        n = 1
        for dim in shape:
            n *= dim
        if optimizer == "adamw":
            total += 2 * n * param_bytes + 4
        elif optimizer in ("adamw8bit", "paged_adamw8bit"):
            if n >= BNB_MIN_8BIT:
                total += 2 * n + 2 * (-(-n // BNB_BLOCK)) * 4 + 4
            else:
                total += 2 * n * 4 + 4
        elif optimizer == "sgd":
            total += n * param_bytes
        elif optimizer == "adafactor":
            if len(shape) >= 2:
                rows = n // shape[-1]
                total += (rows + shape[-1] * (n // (shape[-1] * shape[-2]))) * 4 + 8
            else:
                total += n * 4 + 8
        else:
            raise ValueError(f"unknown optimizer {optimizer!r}")
    return total


def step_transient(optimizer: str, largest_tensor: int, total: int, *, param_bytes: int) -> int:
    """Scratch memory during ``optimizer.step()``.

    The runner maps ``adamw`` to the Trainer's ``adamw_torch_fused``: one kernel updates every
    tensor in place (the multi-tensor ``adamw_torch`` would add a temporary the size of all
    second moments). bitsandbytes' 8-bit kernels update block by block in place; Adafactor
    makes fp32 copies of one tensor's update and parameter.
    """
    if optimizer == "adafactor":
        return largest_tensor * 4 * 2
    return 0
