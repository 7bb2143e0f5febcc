"""From ``run.toml`` to the Trainer's arguments (shared by training and pre-flight); the collator
is `affiner.runner.training.batching`'s.

Names are mapped to transformers 5: ``eval_strategy``, ``use_cpu``, ``warmup_steps`` (a float
below 1 is a ratio of the total steps), and optimizer names (``adamw`` → ``adamw_torch_fused``, the Trainer's own
default since torch 2.8: one fused kernel, faster than the multi-tensor loop and without its
full-size temporary; ``adamw8bit`` → ``adamw_bnb_8bit``, ``paged_adamw8bit`` → ``paged_adamw_8bit``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from affiner.runner.config import RunConfig
from affiner.runner.training.batching import build_collator
from affiner.runner.training.modeling import Precision

__all__ = [
    "OPTIMIZERS",
    "build_collator",
    "build_training_args",
    "dataloader_workers",
    "world_size",
]

OPTIMIZERS = {
    "adamw": "adamw_torch_fused",
    "adamw8bit": "adamw_bnb_8bit",
    "paged_adamw8bit": "paged_adamw_8bit",
    "sgd": "sgd",
    "adafactor": "adafactor",
}


def world_size() -> int:
    """Processes in this run (torchrun/accelerate set WORLD_SIZE; 1 otherwise)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def dataloader_workers() -> int:
    """Data is tokenized up front, so workers only collate: none on small machines."""
    cpus = os.cpu_count() or 1
    return 0 if cpus <= 4 else min(4, cpus // 4)


def build_training_args(
    cfg: RunConfig,
    *,
    output_dir: Path,
    device: str,
    precision: Precision,
    has_eval: bool,
    **overrides: Any,
) -> Any:
    """TrainingArguments for this run; `overrides` replace any argument (pre-flight uses it)."""
    from transformers import TrainingArguments

    t, ev, ck = cfg.training, cfg.eval, cfg.checkpoint
    classification = cfg.model.task == "classification"
    if not has_eval:
        eval_kwargs: dict[str, Any] = {"eval_strategy": "no"}
    elif ev.every_steps > 0:
        eval_kwargs = {"eval_strategy": "steps", "eval_steps": ev.every_steps}
    else:
        eval_kwargs = {"eval_strategy": "epoch"}
    if ck.every_steps > 0:
        save_kwargs: dict[str, Any] = {"save_strategy": "steps", "save_steps": ck.every_steps}
    else:
        save_kwargs = {"save_strategy": "epoch"}
    distributed = world_size() > 1
    kwargs: dict[str, Any] = {
        "output_dir": str(output_dir),
        "num_train_epochs": t.epochs,
        "max_steps": t.max_steps if t.max_steps > 0 else -1,
        "per_device_train_batch_size": t.micro_batch,
        "per_device_eval_batch_size": t.micro_batch,
        "gradient_accumulation_steps": t.grad_accum,
        "learning_rate": t.learning_rate,
        "lr_scheduler_type": t.lr_scheduler,
        "warmup_steps": float(t.warmup_ratio),
        "weight_decay": t.weight_decay,
        "max_grad_norm": t.max_grad_norm,
        "optim": OPTIMIZERS[t.optimizer],
        "bf16": precision.bf16,
        "fp16": precision.fp16,
        "use_cpu": device == "cpu",
        **_checkpointing_kwargs(TrainingArguments, bool(t.gradient_checkpointing)),
        "logging_strategy": "steps",
        "logging_steps": max(1, t.logging_steps),
        "logging_first_step": True,
        "logging_nan_inf_filter": False,  # a NaN must reach the callback, not be averaged away
        "save_total_limit": max(1, ck.keep_last),
        "seed": t.seed,
        "data_seed": cfg.data.seed,
        "report_to": "none",
        "disable_tqdm": True,
        "log_level": "warning",
        "dataloader_num_workers": dataloader_workers(),
        "dataloader_pin_memory": device == "cuda",
        "prediction_loss_only": not classification,
        "restore_callback_states_from_checkpoint": False,
        **eval_kwargs,
        **save_kwargs,
    }
    if distributed:
        kwargs.update(strategy_kwargs(cfg, device))
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def strategy_kwargs(cfg: RunConfig, device: str) -> dict[str, Any]:
    """The Trainer's arguments for ``[distributed]``: the strategy, the backend, the timeout.

    FSDP2 and ZeRO are the Trainer's own integrations (it builds accelerate's plugin from
    them); DDP is what it does with several processes and neither. Gloo on the CPU (NCCL is
    CUDA's). ``ddp_timeout`` is the collective timeout: a rank that waits longer for the others
    fails with the reason, instead of hanging.
    """
    from affiner.runner.run.distributed import deepspeed_config, fsdp_config

    d = cfg.distributed
    out: dict[str, Any] = {"ddp_timeout": max(1, round(d.timeout_minutes * 60))}
    if device == "cpu":
        out["ddp_backend"] = "gloo"
    if d.strategy == "ddp":
        out["ddp_find_unused_parameters"] = False
    elif d.strategy == "fsdp":
        out["fsdp"] = True
        out["fsdp_config"] = fsdp_config()
    else:
        out["deepspeed"] = deepspeed_config(3 if d.strategy == "zero3" else 2)
    return out


def _checkpointing_kwargs(args_class: Any, enabled: bool) -> dict[str, Any]:
    """Activation (gradient) checkpointing, non-reentrant, under the name this transformers uses.

    transformers 5.2x renamed ``gradient_checkpointing*`` to ``activation_checkpointing*`` and
    warns on the old names; earlier 5.x releases know only the old ones.
    """
    fields = getattr(args_class, "__dataclass_fields__", {})
    name = (
        "activation_checkpointing"
        if "activation_checkpointing" in fields
        else "gradient_checkpointing"
    )
    return {name: enabled, f"{name}_kwargs": {"use_reentrant": False} if enabled else None}
