"""Predicted saved-for-backward bytes against what autograd really keeps, on tiny models.

Each case builds a tiny model of one family on the CPU (random weights) and catches every
saved tensor with `saved_tensors_hooks` (bench/memory_probe.py); parameters, gradients and
optimizer state are measured exactly after one AdamW step.
"""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

CASES = [
    ("llama", "full", {}),
    ("llama", "lora", {}),
    ("llama", "freeze", {}),
    ("qwen2", "lora", {}),
    ("mistral", "full", {}),
    ("gemma", "full", {}),
    ("llama", "full", {"checkpointing": True}),
    ("llama", "full", {"padded": True}),
    ("gpt2", "full", {}),
    ("opt", "lora", {}),
    ("phi3", "full", {}),
    ("mixtral", "lora", {}),
    # SDPA's math kernel (falcon's multi-query heads) against transformers' eager attention
    ("falcon", "freeze", {}),
    ("gemma2", "lora", {}),
    ("bert", "freeze", {}),
]


@pytest.mark.parametrize(("family", "method", "extra"), CASES)
def test_components_within_five_percent(family: str, method: str, extra: dict) -> None:
    from bench.memory_accuracy import cpu_cell

    row = cpu_cell(family, method, batch=2, seq=24, **extra)
    for component, error in row["error"].items():
        assert abs(error) <= 0.05, (
            component,
            row["measured"][component],
            row["predicted"][component],
        )
