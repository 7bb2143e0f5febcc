"""Plain-words reasons: sizes people read ("14.2 GB"), durations, and why a plan was (not) chosen."""

from __future__ import annotations

GB = 1e9

METHOD_NAMES = {
    "full": "full fine-tuning",
    "freeze": "layer-wise freeze",
    "lora": "LoRA",
    "qlora": "QLoRA",
    "lora8": "8-bit LoRA",
}


def gb(nbytes: int | float) -> str:
    """Bytes as decimal gigabytes, the unit GPU spec sheets and `nvidia-smi` users think in."""
    value = nbytes / GB
    if value >= 100:
        return f"{value:.0f} GB"
    if value >= 10:
        return f"{value:.1f} GB"
    return f"{value:.2f} GB"


def duration(seconds: float | None) -> str:
    """Seconds as ``850 ms``, ``42 s``, ``3 min``, ``5.2 h`` or ``2.1 days``."""
    if seconds is None:
        return "unknown"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 90:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def miss(method: str, needs: int, have: int) -> str:
    """Why a method does not fit, with both numbers."""
    return f"{METHOD_NAMES[method]} needs {gb(needs)}; you have {gb(have)} usable"


def fits(method: str, needs: int, have: int) -> str:
    return f"{METHOD_NAMES[method]} needs {gb(needs)} of the {gb(have)} usable ({needs / have:.0%})"


def largest_part(breakdown: dict[str, int]) -> str:
    """Names the biggest memory term, the one worth attacking first."""
    name, value = max(
        ((k, v) for k, v in breakdown.items() if k != "overhead"), key=lambda kv: kv[1]
    )
    words = {
        "weights": "the weights",
        "gradients": "the gradients",
        "optimizer": "the optimizer state",
        "activations": "activations saved for backward",
        "logits": "the vocabulary-sized logits and loss",
    }
    return f"largest part: {words[name]} ({gb(value)})"
