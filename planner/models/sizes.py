"""A bare size ("7B", "0.5b", "8x7B") turned into a representative Llama-style shape.

People often plan before they have picked a checkpoint: "will a 7B fit on my 24 GiB card?".
Memory depends on the shape, not just the count (vocabulary, grouped-query heads and MLP
width move the activations), so a size maps to the shape of a well-known model of that
size, counted exactly. Sizes between the table's rows get a shape scaled from the nearest
row. The spec's ``name`` says it is representative, and ``source`` is ``size``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from affiner.planner.errors import AffinerError
from affiner.planner.models.shapes import spec_from_config
from affiner.planner.models.spec import ModelSpec

_SIZE = re.compile(
    r"^\s*(?:(?P<experts>\d+)\s*[x×]\s*)?(?P<number>\d+(?:\.\d+)?|\.\d+)\s*(?P<unit>[kmbt])\s*$",
    re.IGNORECASE,
)
_UNITS = {"k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}
#: A table row is used as is when the asked size is within this ratio of its nominal size.
_SNAP = 1.15
EXAMPLES = "135M, 0.5B, 1.5B, 7B, 70B or 8x7B (a mixture of 8 experts of 7B)"


@dataclass(frozen=True)
class SizeShape:
    """One row of the table: a well-known model's shape, in Llama terms."""

    billions: float
    like: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool
    max_positions: int

    def config(self, **extra: Any) -> dict[str, Any]:
        """A Llama ``config.json`` for this shape (Mixtral when `extra` adds experts)."""
        return {
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            "hidden_size": self.hidden,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.hidden // self.heads,
            "intermediate_size": self.intermediate,
            "vocab_size": self.vocab,
            "tie_word_embeddings": self.tied,
            "max_position_embeddings": self.max_positions,
            "hidden_act": "silu",
        } | extra


#: Representative dense shapes, smallest first.
SHAPES: tuple[SizeShape, ...] = (
    SizeShape(0.135, "SmolLM2-135M", 576, 30, 9, 3, 1536, 49152, True, 8192),
    SizeShape(0.5, "Qwen2.5-0.5B", 896, 24, 14, 2, 4864, 151936, True, 32768),
    SizeShape(1, "Llama-3.2-1B", 2048, 16, 32, 8, 8192, 128256, True, 131072),
    SizeShape(1.5, "Qwen2.5-1.5B", 1536, 28, 12, 2, 8960, 151936, True, 32768),
    SizeShape(3, "Llama-3.2-3B", 3072, 28, 24, 8, 8192, 128256, True, 131072),
    SizeShape(7, "Llama-2-7B", 4096, 32, 32, 32, 11008, 32000, False, 4096),
    SizeShape(8, "Llama-3.1-8B", 4096, 32, 32, 8, 14336, 128256, False, 131072),
    SizeShape(13, "Llama-2-13B", 5120, 40, 40, 40, 13824, 32000, False, 4096),
    SizeShape(14, "Qwen2.5-14B", 5120, 48, 40, 8, 13824, 152064, False, 32768),
    SizeShape(32, "Qwen2.5-32B", 5120, 64, 40, 8, 27648, 152064, False, 32768),
    SizeShape(34, "CodeLlama-34B", 8192, 48, 64, 8, 22016, 32000, False, 16384),
    SizeShape(70, "Llama-3.1-70B", 8192, 80, 64, 8, 28672, 128256, False, 131072),
    SizeShape(405, "Llama-3.1-405B", 16384, 126, 128, 8, 53248, 128256, False, 131072),
)

#: Mixtures of experts people name by "experts x expert size": (experts, billions) → shape.
MOE_SHAPES: dict[tuple[int, float], SizeShape] = {
    (8, 7): SizeShape(7, "Mixtral-8x7B", 4096, 32, 32, 8, 14336, 32000, False, 32768),
    (8, 22): SizeShape(22, "Mixtral-8x22B", 6144, 56, 48, 8, 16384, 32768, False, 65536),
}


def parse_size(text: str) -> tuple[int, float]:
    """``"8x7B"`` → ``(8, 7e9)``; ``"1.5b"`` → ``(0, 1.5e9)``. None-free: raises on anything else."""
    match = _SIZE.match(text or "")
    if not match:
        raise AffinerError(
            f"{text!r} is not a model size",
            hint=f"write a size such as {EXAMPLES}, or pass a model folder, a config.json or a hub id",
        )
    params = float(match["number"]) * _UNITS[match["unit"].lower()]
    experts = int(match["experts"] or 0)
    if experts == 1:
        experts = 0
    if params < 1e6 or params > 5e12:
        raise AffinerError(
            f"{text!r} is outside the sizes affiner can plan for (1M to 5T parameters)",
            hint=f"write a size such as {EXAMPLES}",
        )
    return experts, params


def is_size(text: str) -> bool:
    """Whether `text` reads as a size (used to tell sizes from folder names and hub ids)."""
    return bool(_SIZE.match(text or ""))


def _nearest(billions: float) -> SizeShape:
    return min(SHAPES, key=lambda row: abs(math.log(billions / row.billions)))


def _scaled(row: SizeShape, target: float) -> SizeShape:
    """A shape of about `target` parameters, keeping `row`'s proportions.

    Width grows with the cube root of the ratio (as in published families) in whole heads of
    the row's head size; depth is then chosen to land as close to the target as whole layers can.
    """
    head_dim = row.hidden // row.heads
    factor = (target / (row.billions * 1e9)) ** (1 / 3)
    heads = row.hidden * factor / head_dim
    step = 8 if heads >= 32 else 4 if heads >= 8 else 1  # head counts real models use
    heads = max(step, round(heads / step) * step)
    hidden = heads * head_dim
    # Keep the row's attention style: multi-head stays multi-head, grouped-query keeps its
    # key/value head count (or the largest count that divides the new head count).
    kv_heads = heads if row.kv_heads == row.heads else math.gcd(heads, row.kv_heads)
    intermediate = max(256, round(row.intermediate / row.hidden * hidden / 256) * 256)
    per_layer = (
        2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim + 3 * hidden * intermediate
    )
    embeddings = row.vocab * hidden * (1 if row.tied else 2)
    layers = max(1, round((target - embeddings) / per_layer))
    return SizeShape(
        target / 1e9,
        f"{row.like}, rescaled",
        hidden,
        layers,
        heads,
        kv_heads,
        intermediate,
        row.vocab,
        row.tied,
        row.max_positions,
    )


def _label(params: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6)):
        if params >= scale:
            return f"{params / scale:g}{unit}"
    return f"{params:g}"


def shape_for(params: float) -> tuple[SizeShape, bool]:
    """The dense shape for a parameter count, and whether it is a table row (not rescaled)."""
    billions = params / 1e9
    row = _nearest(billions)
    if 1 / _SNAP <= billions / row.billions <= _SNAP:
        return row, True
    return _scaled(row, params), False


def spec_from_size(text: str) -> ModelSpec:
    """A representative `ModelSpec` for a size such as ``7B``, ``0.5b``, ``135M`` or ``8x7B``.

    Raises:
        AffinerError: the text is not a size, with examples of ones that are.
    """
    experts, params = parse_size(text)
    label = text.strip()
    if experts:
        billions = params / 1e9
        row = MOE_SHAPES.get((experts, billions))
        if row is None:
            row, _ = shape_for(params)
        top_k = min(2, experts)
        config = row.config(
            model_type="mixtral",
            architectures=["MixtralForCausalLM"],
            num_local_experts=experts,
            num_experts_per_tok=top_k,
        )
        like = (
            row.like if (experts, billions) in MOE_SHAPES else f"{row.like} with {experts} experts"
        )
        description = (
            f"{label}: representative mixture-of-experts shape like {like}, top-{top_k} routing"
        )
    else:
        row, exact = shape_for(params)
        config = row.config()
        if exact:
            description = f"{label}: representative Llama-style shape like {row.like}"
        else:
            description = (
                f"{label}: representative Llama-style shape ({row.like} to about {_label(params)})"
            )
    return spec_from_config(config, name=description, source="size")
