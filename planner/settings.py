"""`TrainSettings`: one concrete way to train, the input of the memory and time models.

Methods, quantizations, precisions and optimizers are spelled as ``run.toml`` spells them
(`affiner.planner.vocabulary`), so a planned candidate turns into a ``run.toml`` without
translation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

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
#: How the loss is computed once resolved: torch's cross-entropy over the full logits, or
#: liger-kernel's fused linear cross-entropy (CUDA only), which never holds them.
LOSS_KERNELS = ("torch", "liger")
#: What run.toml's ``[training].loss_kernel`` may say: ``auto`` resolves to one of `LOSS_KERNELS`.
LOSS_KERNEL_SETTINGS = ("auto", "liger", "torch")
LossKernel = Literal["torch", "liger"]


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
        num_gpus: devices the run is spread over, over all nodes (processes per node times
            `nodes`); the memory of each device depends on this total.
        nodes: machines the devices are on; only the communication between them (its link)
            depends on it, the memory does not.
        sharding: ``none``/``ddp`` (replicas), ``fsdp``/``zero3`` (shard everything),
            ``zero2`` (shard gradients and optimizer state).
        packing: a micro-batch's rows are joined into one padding-free row whose position ids
            restart per example (transformers' ``DataCollatorWithFlattening``): it costs its
            real tokens (`micro_batch_tokens`), not rows x `seq_len`, and attention runs over
            the whole pack. Not `padded`: a pack has no padding, though sdpa and eager still
            see a block-diagonal mask when it holds more than one example.
        loss_kernel: ``torch`` (the full tokens x vocabulary logits, upcast to fp32) or
            ``liger`` (fused linear cross-entropy, chunk by chunk: no full logits).
        longest_rows: the data's longest rows in tokens, longest first (as many as the largest
            micro-batch); a pack is planned as the `micro_batch` longest of them. Empty when
            the data is unknown: every row is then planned at `seq_len`.
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
    nodes: int = 1
    sharding: str = "none"
    packing: bool = False
    loss_kernel: LossKernel = "torch"
    longest_rows: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        checks = (
            ("method", self.method, METHODS),
            ("precision", self.precision, PRECISIONS),
            ("quantization", self.quantization, QUANTIZATIONS),
            ("optimizer", self.optimizer, OPTIMIZERS),
            ("attention", self.attention, ATTENTIONS),
            ("sharding", self.sharding, SHARDINGS),
            ("loss_kernel", self.loss_kernel, LOSS_KERNELS),
        )
        for key, value, allowed in checks:
            if value not in allowed:
                raise AffinerError(
                    f"unknown {key} {value!r}",
                    hint=f"use one of: {', '.join(allowed)}",
                    where=f"settings.{key}",
                )
        for key in ("micro_batch", "seq_len", "grad_accum", "num_gpus", "nodes"):
            if getattr(self, key) < 1:
                raise AffinerError(
                    f"{key} must be at least 1, got {getattr(self, key)}", where=f"settings.{key}"
                )
        if self.num_gpus % self.nodes:
            raise AffinerError(
                f"{self.num_gpus} GPUs cannot be spread evenly over {self.nodes} nodes",
                hint="every node runs the same number of processes",
                where="settings.nodes",
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
    def micro_batch_tokens(self) -> int:
        """Tokens in the largest micro-batch one device runs.

        Padded, every row is planned at `seq_len` (today's figure). Packed, the worst pack is
        the `micro_batch` longest rows of the data, each cut at `seq_len`; with no lengths
        known it is `micro_batch` full rows, the most a pack can hold.
        """
        if not self.packing or not self.longest_rows:
            return self.micro_batch * self.seq_len
        return sum(min(n, self.seq_len) for n in self.longest_rows[: self.micro_batch])

    @property
    def pack_examples(self) -> int:
        """Examples in the largest pack (1 when not packed): above 1, sdpa and eager get a mask."""
        if not self.packing:
            return 1
        if self.longest_rows:
            return max(1, min(self.micro_batch, len(self.longest_rows)))
        return self.micro_batch

    @property
    def masked_pack(self) -> bool:
        """A pack whose attention goes through a (tokens x tokens) block-diagonal mask.

        transformers builds it from the restarting position ids for sdpa and eager; torch's
        SDPA turns the bool mask into one of the query's dtype at every layer and keeps it for
        backward, and takes no grouped-query shortcut with a mask. FlashAttention's varlen
        kernels need no mask.
        """
        return self.pack_examples > 1 and self.attention != "flash_attention_2"

    @property
    def gpus_per_node(self) -> int:
        """Devices (processes) on each node."""
        return self.num_gpus // self.nodes

    @property
    def effective_batch(self) -> int:
        return self.micro_batch * self.grad_accum * self.num_gpus

    def with_(self, **changes: Any) -> TrainSettings:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["lora_targets"] = list(self.lora_targets)
        data["longest_rows"] = list(self.longest_rows)
        data["effective_quantization"] = self.effective_quantization
        return data
