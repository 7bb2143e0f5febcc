"""A training step exactly as affiner's runner takes it, for the peak-memory benches.

The planner predicts the peak of the runner's recipe, so the benches measure that recipe and
not a simplified one: the model is saved once with random weights and loaded back through
`affiner.runner.training.modeling.load_model` (dtype by method, bitsandbytes quantization placed at load, peft
LoRA on all linear layers, freezing all but the last blocks), and each step follows the HF
Trainer's: forward and loss under autocast, backward outside it, gradient clipping at 1.0, fused
AdamW (`affiner.runner.training.setup` maps ``adamw`` to ``adamw_torch_fused``), gradients set to None.

Phases are marked with ``torch.profiler.record_function`` (``affiner.forward``,
``affiner.backward``, ``affiner.step``) so that a memory timeline can say when its peak happened;
without an active profiler the marks cost nothing.

Only the benches and their tests import this module; it needs torch, transformers and peft.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from affiner.planner.settings import TrainSettings
from affiner.runner.config import MethodSection, ModelSection, RunConfig, TrainingSection
from affiner.runner.training import load_model, resolve_precision

PHASES = ("affiner.forward", "affiner.backward", "affiner.step")


@dataclass(frozen=True)
class Cell:
    """One point of a bench matrix: a model, a method and a batch shape.

    Attributes:
        model: the name of a config in the bench's model table.
        method: ``full``, ``freeze``, ``lora``, ``qlora`` or ``lora8``.
        seq, batch: tokens per row and rows per micro-batch.
        checkpointing: gradient checkpointing (non-reentrant, as the runner asks for it).
        precision: the runner's ``[training].precision`` (``bf16`` is mixed: fp32 masters).
        padded: give the batch a padding mask with one half-padded row.
        attention: the attention implementation (``sdpa``; ``eager`` for models without SDPA).
    """

    model: str
    method: str
    seq: int
    batch: int
    checkpointing: bool
    precision: str = "bf16"
    padded: bool = False
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    trainable_layers: int = 2
    attention: str = "sdpa"

    @property
    def key(self) -> str:
        """A stable name for the cell, used to resume a bench that was cut off."""
        ckpt = "ckpt" if self.checkpointing else "nockpt"
        pad = "-padded" if self.padded else ""
        return f"{self.model}/{self.method}/{self.precision}/s{self.seq}/b{self.batch}/{ckpt}{pad}"

    @property
    def load_key(self) -> tuple[Any, ...]:
        """What the loaded model depends on: cells equal in it can share one load."""
        return (
            self.model,
            self.method,
            self.precision,
            self.lora_rank,
            self.lora_alpha,
            self.lora_dropout,
            self.trainable_layers,
        )

    def settings(self) -> TrainSettings:
        """The planner's view of this cell."""
        return TrainSettings(
            method=self.method,
            precision=self.precision,
            micro_batch=self.batch,
            seq_len=self.seq,
            gradient_checkpointing=self.checkpointing,
            padded=self.padded,
            attention=self.attention,
            lora_rank=self.lora_rank,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            trainable_layers=self.trainable_layers,
        )

    def run_config(self, folder: Path, device: str) -> RunConfig:
        """The ``run.toml`` the runner would get for this cell (checkpointing is set later)."""
        quantization = {"qlora": "nf4", "lora8": "int8"}.get(self.method, "none")
        return RunConfig(
            model=ModelSection(name_or_path=str(folder), attn_implementation=self.attention),
            method=MethodSection(
                name=self.method,
                quantization=quantization,
                lora_rank=self.lora_rank,
                lora_alpha=self.lora_alpha,
                lora_dropout=self.lora_dropout,
                trainable_layers=self.trainable_layers,
            ),
            training=TrainingSection(
                precision=self.precision, device=device, micro_batch=self.batch
            ),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "model": self.model,
            "method": self.method,
            "precision": self.precision,
            "seq": self.seq,
            "batch": self.batch,
            "checkpointing": self.checkpointing,
            "padded": self.padded,
        }


def save_random_model(config: dict[str, Any], folder: Path, *, device: str = "cpu") -> None:
    """Write a causal LM with random weights from a config dict (bf16 safetensors, no download).

    Built on `device` (a GPU initialises an 8B model in seconds, a CPU in minutes), saved once
    per model and loaded back by every cell, as a user's checkpoint would be.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(config)
    model_type = cfg.pop("model_type")
    hf_config = AutoConfig.for_model(model_type, **cfg)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    del model
    release(device)


def load_for(cell: Cell, folder: Path, device: str):
    """The cell's model through the runner's own loading code, on `device`, ready to train."""
    cfg = cell.run_config(folder, device)
    precision = resolve_precision(cell.precision, device)
    loaded = load_model(cfg, SimpleNamespace(pad_token_id=0), device=device, precision=precision)
    model = loaded.model
    if not loaded.quantized:
        model = model.to(device)  # the Trainer moves the model; quantized ones are placed at load
    model.config.use_cache = False
    model.train()
    return model


def set_checkpointing(model, on: bool) -> None:
    """Turn gradient checkpointing on or off as the Trainer does (non-reentrant)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if on:
        kwargs = {"use_reentrant": False}
        if hasattr(base, "activation_checkpointing_enable"):  # the transformers 5 name
            base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        if not all(p.requires_grad for p in base.get_input_embeddings().parameters()):
            base.enable_input_require_grads()
    else:
        if hasattr(base, "activation_checkpointing_disable"):
            base.activation_checkpointing_disable()
        else:
            base.gradient_checkpointing_disable()


def make_batch(vocab: int, cell: Cell, device: str) -> dict[str, torch.Tensor]:
    """Random token ids with labels (and a padding mask with one half-padded row if asked)."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (cell.batch, cell.seq), generator=gen)
    batch = {"input_ids": ids, "labels": ids.clone()}
    if cell.padded:
        mask = torch.ones_like(ids)
        mask[0, cell.seq // 2 :] = 0
        batch["attention_mask"] = mask
        batch["labels"][0, cell.seq // 2 :] = -100
    return {k: v.to(device) for k, v in batch.items()}


def train_steps(
    model,
    batch: dict[str, torch.Tensor],
    cell: Cell,
    *,
    steps: int = 3,
    after_phase: Callable[[str, int], None] | None = None,
) -> None:
    """`steps` optimizer steps of the Trainer's loop; everything it allocated is freed after.

    `after_phase(phase, step)` is called when each phase ends (``forward``, ``backward``,
    ``step``; steps count from 1), so that a meter can read and reset the device's peak there.
    """
    device = batch["input_ids"].device.type
    precision = resolve_precision(cell.precision, device)
    mixed = precision.bf16 or precision.fp16
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=True)
    done = after_phase or (lambda phase, step: None)
    for step in range(1, steps + 1):
        with (
            torch.profiler.record_function(PHASES[0]),
            torch.autocast(device, dtype=precision.compute_dtype, enabled=mixed),
        ):
            loss = model(**batch).loss
        done("forward", step)
        with torch.profiler.record_function(PHASES[1]):
            loss.backward()
        del loss
        done("backward", step)
        with torch.profiler.record_function(PHASES[2]):
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        done("step", step)
    del optimizer, params


def release(device: str) -> None:
    """Give freed memory back so that the next measurement starts from the model alone."""
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
