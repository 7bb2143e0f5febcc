"""The maximum length a plan takes from the data when the user states none.

A fixed default (512) is wrong both ways: Rotten Tomatoes' snippets are at most 72 tokens,
so 512 plans (and, padded, computes) seven times the memory and time the data needs; long
documents are cut at 512 without a word. When the data's token lengths are known, the plan's
max length is its 99th percentile rounded up to a multiple of `LENGTH_MULTIPLE`: one row in a
hundred may be cut, which keeps a stray giant row from setting the whole run's memory.
It is capped by the model's context window and by what fits the device, and the plan says
which in one sentence (`DataLength.why`). A length the user states is never replaced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: Lengths are rounded up to a multiple of this: fp16/bf16 and int8 kernels want dimensions
#: that divide by 8 or 16, and it leaves a few tokens of room for what a count may miss (a
#: chat template's markers) while wasting at most 15 tokens a row.
LENGTH_MULTIPLE = 16

#: The share of rows a length chosen from the data keeps whole.
KEPT_PERCENTILE = 99


def round_up_length(tokens: int, multiple: int = LENGTH_MULTIPLE) -> int:
    """`tokens` rounded up to a multiple of `multiple` (at least one multiple)."""
    return max(multiple, -(-max(0, tokens) // multiple) * multiple)


def round_down_length(tokens: int, multiple: int = LENGTH_MULTIPLE) -> int:
    """`tokens` rounded down to a multiple of `multiple`, or `tokens` itself below one."""
    return tokens if tokens < multiple else tokens // multiple * multiple


@dataclass(frozen=True)
class DataLength:
    """The max length chosen from the data, and why.

    Attributes:
        seq_len: the length to plan and train with.
        p99: the data's 99th-percentile row, in tokens.
        capped_by: ``window`` (the model reads no more), ``memory`` (longer does not fit) or
            None (the data's own length).
        why: the sentence the plan shows: ``max length 80: the data's p99 is 72 tokens``.
    """

    seq_len: int
    p99: int
    capped_by: Literal["window", "memory"] | None = None
    why: str = ""


def length_from_data(
    p99: int,
    *,
    window: int | None = None,
    fits: int | None = None,
    device: str = "this device",
) -> DataLength:
    """The max length for data whose 99th-percentile row is `p99` tokens.

    Args:
        p99: the data's 99th-percentile length in tokens (before truncation).
        window: the model's context window (``max_position_embeddings``), when known.
        fits: the longest sequence the device fits for the chosen method, when the length
            from the data does not fit.
        device: the device's name, for the sentence.
    """
    wanted = round_up_length(p99)
    seq_len, capped = wanted, None
    if window and seq_len > window:
        seq_len, capped = window, "window"
    if fits is not None and 0 < fits < seq_len:
        seq_len, capped = round_down_length(fits), "memory"
    because = f"the data's p99 is {p99} tokens"
    if capped == "window":
        why = f"max length {seq_len}: {because}, but the model reads at most {window}"
    elif capped == "memory":
        why = f"max length {seq_len}: {because}, but a longer one does not fit on {device}"
    else:
        why = f"max length {seq_len}: {because} (rounded up to a multiple of {LENGTH_MULTIPLE})"
    return DataLength(seq_len=seq_len, p99=p99, capped_by=capped, why=why)


def nearest_rank(lengths: list[int], q: float = KEPT_PERCENTILE) -> int:
    """The `q`-th percentile of `lengths` by nearest rank: a length some row really has."""
    ordered = sorted(lengths)
    if not ordered:
        return 0
    rank = max(1, -(-int(q * len(ordered)) // 100))
    return ordered[min(rank, len(ordered)) - 1]
