"""Plain-words reasons: why a plan was (not) chosen, with sizes as people read them ("14.2 GiB").

Figures are written by `affiner.planner.units`, the one formatter for memory and time.
"""

from __future__ import annotations

from affiner.planner.units import format_bytes

METHOD_NAMES = {
    "full": "full fine-tuning",
    "freeze": "layer-wise freeze",
    "lora": "LoRA",
    "qlora": "QLoRA",
    "lora8": "8-bit LoRA",
}


def miss(method: str, needs: int, have: int) -> str:
    """Why a method does not fit: what it needs, by how much that is too much, and what is usable."""
    over = format_bytes(max(needs - have, 0))
    return f"{METHOD_NAMES[method]} needs {format_bytes(needs)}, {over} more than the {format_bytes(have)} usable"


def fits(method: str, needs: int, have: int) -> str:
    return f"{METHOD_NAMES[method]} needs {format_bytes(needs)} of the {format_bytes(have)} usable ({needs / have:.0%})"


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
    return f"largest part: {words[name]} ({format_bytes(value)})"
