"""Bytes of model weights as they sit in memory: plain dtypes and bitsandbytes' quantized forms.

The quantized layouts follow bitsandbytes 0.50 (`Params4bit`, `QuantState`, `Int8Params`):

- 4-bit NF4/FP4: two weights per byte, plus one fp32 absmax per block of 64 weights. With
  double quantization the absmax values are themselves stored as uint8, with one fp32 scale
  per 256 of them, a 256-entry fp32 code book and one fp32 offset per layer.
- LLM.int8: one int8 byte per weight plus one fp32 scale per output row (``SCB``).

Only the linear layers of the blocks are quantized (fused mixture-of-experts weights are not
``nn.Linear`` and stay as they are); embeddings, the LM head (transformers
keeps the output embedding in full precision) and norms are not. They stay in the dtype the
base loads in (the compute dtype): the runner's `prepare_quantized_base` skips the fp32 cast
of peft's ``prepare_model_for_kbit_training`` (peft 0.21, ``utils/other.py``), which would
double them for parts that are frozen anyway.
"""

from __future__ import annotations

from affiner.planner.models import ModelSpec

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1}
NF4_BLOCK = 64
DQ_BLOCK = 256
CODE_BYTES = 256 * 4
NF4_MAP_BYTES = 16 * 4


def nf4_bytes(in_features: int, out_features: int, *, double_quant: bool) -> int:
    """Bytes of one 4-bit (NF4 or FP4) linear weight as bitsandbytes stores it."""
    n = in_features * out_features
    packed = (n + 1) // 2
    blocks = -(-n // NF4_BLOCK)
    if not double_quant:
        return packed + blocks * 4 + NF4_MAP_BYTES
    blocks2 = -(-blocks // DQ_BLOCK)
    return packed + blocks + blocks2 * 4 + CODE_BYTES + 4 + NF4_MAP_BYTES


def int8_bytes(in_features: int, out_features: int) -> int:
    """Bytes of one LLM.int8 linear weight: int8 values and an fp32 scale per output row."""
    return in_features * out_features + out_features * 4


def quantizable_params(spec: ModelSpec) -> int:
    """Parameters in the blocks' linear layers (what bitsandbytes replaces), biases excluded.

    Fused 3-D expert weights are parameters of a mixture block, not ``nn.Linear`` layers:
    bitsandbytes leaves them alone, so a QLoRA mixture keeps its experts at full size (in the
    dtype the base loads in).
    """
    return sum(t.in_features * t.out_features * t.count for t in quantized_targets(spec))


def quantized_targets(spec: ModelSpec) -> list:
    """The linear layers bitsandbytes replaces: every LoRA target but fused experts."""
    return [t for t in spec.lora_targets if t.kind != "expert"]


def quantized_linear_bytes(spec: ModelSpec, quantization: str, *, double_quant: bool) -> int:
    """Bytes of all quantizable linear weights under `quantization` (``nf4``, ``fp4``, ``int8``)."""
    total = 0
    for target in quantized_targets(spec):
        if quantization in ("nf4", "fp4"):
            total += target.count * nf4_bytes(
                target.in_features, target.out_features, double_quant=double_quant
            )
        else:
            total += target.count * int8_bytes(target.in_features, target.out_features)
    return total


def weight_bytes(
    spec: ModelSpec, *, param_dtype: str, quantization: str = "none", double_quant: bool = True
) -> dict[str, int]:
    """Bytes of the base model's weights, split into quantized linears and the rest.

    Args:
        param_dtype: the dtype unquantized parameters are held in (``fp32`` for mixed precision
            with fp32 master weights, ``bf16`` for a model loaded in bf16).
        quantization: ``none``, ``nf4``, ``fp4`` or ``int8``.

    Returns:
        ``{"quantized": ..., "unquantized": ...}``.
    """
    if quantization == "none":
        return {"quantized": 0, "unquantized": spec.params_total * DTYPE_BYTES[param_dtype]}
    linear_params = quantizable_params(spec)
    biases = sum(t.out_features * t.count for t in quantized_targets(spec) if t.bias)
    rest = spec.params_total - linear_params - biases
    return {
        "quantized": quantized_linear_bytes(spec, quantization, double_quant=double_quant),
        # held as loaded (not upcast to fp32 as peft's k-bit preparation would)
        "unquantized": (rest + biases) * DTYPE_BYTES[param_dtype],
    }
