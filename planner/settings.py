"""`TrainSettings`: one concrete way to train, the input of the memory and time models.

Methods, quantizations, precisions and optimizers are spelled as ``run.toml`` spells them
(`affiner.planner.vocabulary`), so a planned candidate turns into a ``run.toml`` without
translation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from affiner.planner.errors import AffinerError
from affiner.planner.vocabulary import (
    LORA_METHODS,
    METHODS,
    OPTIMIZERS,
    PRECISIONS,
    QUANTIZATIONS,
    Method,
    Optimizer,
    Precision,
    Quantization,
    effective_quantization,
)

ATTENTIONS = ("sdpa", "eager", "flash_attention_2")
SHARDINGS = ("none", "ddp", "fsdp", "zero2", "zero3")
ALL_LINEAR = ("all-linear",)


@dataclass(frozen=True)
class TrainSettings:
    """How one run trains: method, numerics, batch shape and parallelism.

    Attributes:
        method: ``full``, ``freeze``, ``lora``, ``qlora`` or ``lora8``.
        precision: one of `PRECISIONS`.
        quantization: base-weight storage; ``none`` means "as the method implies"
            (`effective_quantization`).
        double_quant: QLoRA's quantized block constants.
        optimizer: one of `OPTIMIZERS`.
        micro_batch: sequences per forward pass per device.
        seq_len: tokens per sequence (the padded length the batch is planned for).
        grad_accum: micro-batches per optimizer step.
        gradient_checkpointing: recompute each block in backward instead of keeping it.
        attention: ``sdpa`` (default), ``eager`` or ``flash_attention_2``.
        padded: the batch carries a padding mask (variable-length rows). SDPA then cannot use
            its native grouped-query path and keeps a mask per layer.
        lora_rank, lora_alpha, lora_dropout: LoRA's hyper-parameters.
        lora_targets: module names LoRA wraps, or ``("all-linear",)``.
        trainable_layers: blocks left trainable by ``freeze`` (the last ones), with the head.
        num_gpus: devices the run is spread over.
        sharding: ``none``/``ddp`` (replicas), ``fsdp``/``zero3`` (shard everything),
            ``zero2`` (shard gradients and optimizer state).
    """

    method: Method = "lora"
    precision: Precision = "bf16"
    quantization: Quantization = "none"
    double_quant: bool = True
    optimizer: Optimizer = "adamw"
    micro_batch: int = 1
    seq_len: int = 512
    grad_accum: int = 1
    gradient_checkpointing: bool = False
    attention: str = "sdpa"
    padded: bool = False
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = field(default=ALL_LINEAR)
    trainable_layers: int = 2
    num_gpus: int = 1
    sharding: str = "none"

    def __post_init__(self) -> None:
        checks = (
            ("method", self.method, METHODS),
            ("precision", self.precision, PRECISIONS),
            ("quantization", self.quantization, QUANTIZATIONS),
            ("optimizer", self.optimizer, OPTIMIZERS),
            ("attention", self.attention, ATTENTIONS),
            ("sharding", self.sharding, SHARDINGS),
        )
        for key, value, allowed in checks:
            if value not in allowed:
                raise AffinerError(
                    f"unknown {key} {value!r}",
                    hint=f"use one of: {', '.join(allowed)}",
                    where=f"settings.{key}",
                )
        for key in ("micro_batch", "seq_len", "grad_accum", "num_gpus"):
            if getattr(self, key) < 1:
                raise AffinerError(
                    f"{key} must be at least 1, got {getattr(self, key)}", where=f"settings.{key}"
                )
        if self.uses_lora and self.lora_rank < 1:
            raise AffinerError("lora_rank must be at least 1", where="settings.lora_rank")

    @property
    def uses_lora(self) -> bool:
        return self.method in LORA_METHODS

    @property
    def effective_quantization(self) -> str:
        """The base weights' storage: ``qlora`` means nf4 and ``lora8`` int8 unless stated."""
        return effective_quantization(self.method, self.quantization)

    @property
    def compute_dtype(self) -> str:
        """The dtype matmuls and saved activations use: ``fp32``, ``bf16`` or ``fp16``."""
        return {"fp32": "fp32", "bf16": "bf16", "fp16": "fp16", "bf16-pure": "bf16"}[self.precision]

    @property
    def tokens_per_step(self) -> int:
        """Tokens in one optimizer step on all devices."""
        return self.micro_batch * self.seq_len * self.grad_accum * self.num_gpus

    @property
    def effective_batch(self) -> int:
        return self.micro_batch * self.grad_accum * self.num_gpus

    def with_(self, **changes: Any) -> TrainSettings:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["lora_targets"] = list(self.lora_targets)
        data["effective_quantization"] = self.effective_quantization
        return data
