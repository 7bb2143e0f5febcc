"""The one vocabulary: the words a run is described in, and the defaults that go with them.

A method, a quantization, a precision and an optimizer are named in ``run.toml``, so
``run.toml``'s spellings are the vocabulary: the planner plans in them (a plan becomes a
``run.toml`` without any mapping), ``run.toml`` validation allows exactly them, and the CLI's
``choices`` and the assistant's phrases map onto them. The learning rate each method starts
from and what ``precision = "auto"`` becomes are rules about these words, so they live here
too. Each was written in several rooms before and the copies disagreed (three learning-rate
tables, three readings of ``auto``); the planner is the lowest room, so the runner and the TUI
import them from here.

Pure Python, no torch: importing it costs nothing.
"""

from __future__ import annotations

from typing import Literal, get_args

#: How the model is adapted: every weight, the last blocks, or a LoRA adapter on a 16-bit,
#: 4-bit (``qlora``) or 8-bit (``lora8``) base.
Method = Literal["full", "freeze", "lora", "qlora", "lora8"]
METHODS: tuple[Method, ...] = get_args(Method)
#: The methods that train a LoRA adapter on a frozen base.
LORA_METHODS: tuple[Method, ...] = ("lora", "qlora", "lora8")
#: The methods that train the base weights themselves (which therefore cannot be quantized).
BASE_WEIGHT_METHODS: tuple[Method, ...] = ("full", "freeze")
#: The methods whose base is quantized by bitsandbytes.
QUANTIZED_METHODS: tuple[Method, ...] = ("qlora", "lora8")

#: How the base weights are stored; ``none`` means "as the method implies".
Quantization = Literal["none", "nf4", "fp4", "int8"]
QUANTIZATIONS: tuple[Quantization, ...] = get_args(Quantization)
FOUR_BIT: tuple[Quantization, ...] = ("nf4", "fp4")
#: The storage a quantized method means when ``quantization`` is left at ``none``.
IMPLIED_QUANTIZATION: dict[str, Quantization] = {"qlora": "nf4", "lora8": "int8"}

#: What a run computes in. ``bf16``/``fp16``: mixed precision as the HF Trainer does it (fp32
#: weights, autocast); ``bf16-pure``: the model itself is held in bf16 (no fp32 master copy).
Precision = Literal["fp32", "bf16", "fp16", "bf16-pure"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
#: What ``[training].precision`` accepts: a precision, or ``auto`` (`resolve_auto_precision`).
PrecisionSetting = Literal["auto", "fp32", "bf16", "fp16", "bf16-pure"]
PRECISION_SETTINGS: tuple[PrecisionSetting, ...] = get_args(PrecisionSetting)
#: The precisions that run under autocast (fp32 master weights, half-precision matmuls).
MIXED_PRECISIONS: tuple[Precision, ...] = ("bf16", "fp16")

Optimizer = Literal["adamw", "adamw8bit", "paged_adamw8bit", "sgd", "adafactor"]
OPTIMIZERS: tuple[Optimizer, ...] = get_args(Optimizer)
#: The optimizers whose state bitsandbytes keeps in 8 bits.
EIGHT_BIT_OPTIMIZERS: tuple[Optimizer, ...] = ("adamw8bit", "paged_adamw8bit")

#: What a run trains (run.toml's ``[model].task``): a classifier has a class head, not a
#: vocabulary head, and so no vocabulary-sized logits.
TASKS = ("causal_lm", "classification")

#: The learning rate a run starts from when none is given: updating the base weights wants a
#: rate about ten times lower than an adapter does, and freeze (few layers) sits in between.
LEARNING_RATES: dict[Method, float] = {
    "full": 2e-5,
    "freeze": 5e-5,
    "lora": 2e-4,
    "qlora": 2e-4,
    "lora8": 2e-4,
}


def default_learning_rate(method: str) -> float:
    """The learning rate `method` starts from (the LoRA rate for a name validation refuses)."""
    return LEARNING_RATES.get(method, LEARNING_RATES["lora"])


def effective_quantization(method: str, quantization: str) -> str:
    """The base weights' storage: ``qlora`` means nf4 and ``lora8`` int8 unless stated."""
    if quantization != "none":
        return quantization
    return IMPLIED_QUANTIZATION.get(method, "none")


def resolve_auto_precision(requested: str, *, gpu: bool, bf16: bool, fp16: bool = True) -> str:
    """What `requested` means on a device: ``auto`` becomes a precision, anything else stays.

    ``auto`` is bf16 on a GPU with native bf16, else fp16 on a GPU that has it, else fp32; on
    a CPU it is fp32 (mixed bf16 on a CPU is rarely faster and changes the numbers). The
    planner asks with what the device target says, the training process with what torch
    reports.

    Args:
        requested: a `PRECISION_SETTINGS` word.
        gpu: the run is on a GPU.
        bf16: the device computes bf16 natively (not emulated).
        fp16: the device computes fp16 (a GPU).
    """
    if requested != "auto":
        return requested
    if not gpu:
        return "fp32"
    if bf16:
        return "bf16"
    return "fp16" if fp16 else "fp32"
