"""Folding a trained LoRA adapter into its base: what ``[output].merge`` and ``affiner export`` share.

A quantized base (QLoRA's 4-bit, LoRA on an 8-bit base) cannot hold merged weights: its
linear layers are bitsandbytes' packed ones, and folding a float update into them either
fails or rounds it away. So the base is loaded again unquantized, in the run's compute dtype
(bf16 or fp16 on a GPU), and the saved adapter is applied to it before merging. A LoRA model
trained on an unquantized base can be merged as it is, in memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from affiner.runner.config import RunConfig
from affiner.runner.training.modeling import Precision, load_model


def merge_adapter(
    cfg: RunConfig,
    adapter_dir: str | Path,
    tokenizer: Any,
    *,
    device: str,
    precision: Precision,
    labels: list[str] | None = None,
    trained: Any = None,
) -> nn.Module:
    """The base with the adapter folded in, as a plain transformers model.

    Args:
        cfg: the run configuration (its base model, task and trust_remote_code).
        adapter_dir: a saved peft adapter (``adapter/``, ``checkpoints/best/``, a checkpoint).
        tokenizer: the run's tokenizer (its pad token is copied into the model config).
        device, precision: where and in what dtype the base is loaded.
        labels: class names in id order, for a classifier (its head's size).
        trained: the trained peft model still in memory, merged directly when its base is
            not quantized; None loads the base unquantized and applies `adapter_dir` to it.
    """
    if trained is None:
        from peft import PeftModel

        base = load_model(
            cfg, tokenizer, device=device, precision=precision, labels=labels, apply_method=False
        )
        trained = PeftModel.from_pretrained(base.model, str(adapter_dir))
    return trained.merge_and_unload()


def save_merged(model: nn.Module, tokenizer: Any, folder: str | Path) -> Path:
    """Save merged weights (safetensors) and the tokenizer beside them, so the folder loads alone."""
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return Path(folder)
