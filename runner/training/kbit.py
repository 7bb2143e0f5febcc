"""A quantized base's preparation for LoRA, and bitsandbytes' quirks the runner works around
(its logging on CUDA and its CPU repack).

All concern quantized (k-bit) bases only, which is why they live apart from the loading code
in `affiner.runner.training.modeling` that calls them. Importing this module does not import bitsandbytes.
"""

from __future__ import annotations

import logging

from torch import nn


class _OncePerMessage(logging.Filter):
    """Let each distinct message through once."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


#: bitsandbytes' logger that warns on every 8-bit matmul with a non-fp16 input.
INT8_LOGGER = "bitsandbytes.autograd._functions"


def quiet_int8_cast_warning() -> None:
    """Say "inputs will be cast ... to float16" once, not on every 8-bit layer of every step.

    On CUDA, ``MatMul8bitLt.forward`` logs that warning each call when its input is bf16/fp32
    (bitsandbytes ``autograd/_functions.py``); under bf16 autocast that is every 8-bit
    linear layer of every forward, which would fill ``train.log``.
    """
    logger = logging.getLogger(INT8_LOGGER)
    if not any(isinstance(f, _OncePerMessage) for f in logger.filters):
        logger.addFilter(_OncePerMessage())


def prepare_quantized_base(model: nn.Module, *, gradient_checkpointing: bool) -> nn.Module:
    """Freeze a 4-bit or 8-bit base for LoRA, leaving its unquantized parts in the compute dtype.

    This is peft's ``prepare_model_for_kbit_training`` (peft 0.21, ``utils/other.py``) less
    its first step, which casts every fp16/bf16 parameter that is not 4-bit (the embeddings,
    the LM head, the norms and the biases) to fp32. Those stay frozen, so fp32 buys them
    nothing: it doubles their bytes, and an fp32 embedding output makes the whole residual
    stream fp32, which costs a quantized base more activation memory per row than LoRA on a
    16-bit base (issue 11). The adapters still train in fp32: peft casts them itself, and
    mixed precision keeps fp32 masters for what trains. The rest is what peft does with
    non-reentrant checkpointing: every base parameter frozen and checkpointing switched on
    (its input-gradient hook is needed only by the reentrant kind).
    """
    for param in model.parameters():
        param.requires_grad = False
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def disable_cpu_inference_repack(model: nn.Module) -> int:
    """Keep bitsandbytes 4-bit layers trainable after an evaluation on a CPU.

    On CPUs with AVX512-BF16, ``Linear4bit.forward`` in eval mode with an input that needs no
    gradient repacks its weight into an inference layout, permanently. Every later forward,
    training included, then runs ``gemv_4bit``, which has no autograd: the base layer's output
    is detached and LoRA gradients that should flow through it are silently lost. We switch the
    per-module flag that allows the repack off, and undo a repack that already happened (a
    pre-flight evaluation, say). Returns the number of 4-bit layers seen.
    """
    try:
        import bitsandbytes as bnb
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse
    except ImportError:
        return 0
    count = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            count += 1
            module.support_avx512bf16_for_cpu = False
            state = getattr(module.weight, "quant_state", None)
            if state is not None and getattr(state, "packing_format_for_cpu", False):
                module.weight.data, state = _convert_weight_packed_for_cpu_inverse(
                    module.weight.data, state
                )
                module.weight.quant_state = state
                module.quant_state = state
    return count


def count_repacked(model: nn.Module) -> int:
    """How many 4-bit layers hold their weight in the CPU inference layout (0 is healthy)."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    return sum(
        1
        for module in model.modules()
        if isinstance(module, bnb.nn.Linear4bit)
        and getattr(getattr(module.weight, "quant_state", None), "packing_format_for_cpu", False)
    )


def quantized_layer_count(model: nn.Module) -> int:
    """How many layers bitsandbytes replaced (4-bit or 8-bit); 0 means the base was not quantized.

    transformers swaps only the linear classes it knows: a model whose projections are a custom
    class (old Falcon's ``FalconLinear``) loads "quantized" with every weight at full size.
    """
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    kinds = (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    return sum(1 for module in model.modules() if isinstance(module, kinds))
