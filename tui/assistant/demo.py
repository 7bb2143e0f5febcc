"""The assistant's starting point for a demo: its model, data and settings already filled in.

The app opened by ``affiner demo`` and the one a user opens with ``demo classify`` in the
assistant start from the same preset, so both walk through the same run.
"""

from __future__ import annotations

from typing import Any


def assistant_preset(prepared: Any) -> dict[str, Any]:
    """What the assistant is pre-filled with: the demo's model, data and settings."""
    cfg = prepared.config
    return {
        "default_model": str(prepared.model_path),
        "default_data": str(prepared.data.train),
        "default_eval": str(prepared.data.eval),
        "settings": {
            # The presets' learning rates were measured with LoRA; full fine-tuning at the
            # same rate would wreck the model, so the demo keeps the method it was tuned for.
            "method": cfg.method.name,
            "epochs": cfg.training.epochs,
            "learning_rate": cfg.training.learning_rate,
            "lora_rank": cfg.method.lora_rank,
            "seq_len": cfg.data.max_seq_len,
            "seq_len_set": True,  # the preset's length, not one to take from the data
            "batch": cfg.training.micro_batch,
            # stated as a user would type them, so every plan models them and the user may
            # still change them in the app
            "stated": demo_stated(cfg),
        },
        "recipe": demo_recipe(cfg),
    }


def demo_stated(cfg: Any) -> dict[str, Any]:
    """The demo's planned settings beyond the knobs: LoRA targets and dropout, CPU precision."""
    targets = cfg.method.target_modules
    stated: dict[str, Any] = {
        "lora_targets": (targets,) if isinstance(targets, str) else tuple(targets),
        "lora_dropout": cfg.method.lora_dropout,
    }
    if cfg.training.device == "cpu":
        stated["precision"] = cfg.training.precision
    return stated


def demo_recipe(cfg: Any) -> dict[str, Any]:
    """The rest of the demo's run.toml, as ``section__key`` overrides of a planned config.

    The assistant's settings cover what a user tunes (method, epochs, learning rate, rank,
    sequence, batch); these are the ones the demo fixes besides, so the app runs the run.toml
    ``affiner demo --headless`` runs and both report the same before → after: the schedule,
    the evaluation cadence and the step-0 evaluation, the label
    order (a classifier's head is read in it), the device, and no second pre-flight.
    """
    t, e = cfg.training, cfg.eval
    recipe: dict[str, Any] = {
        "training__lr_scheduler": t.lr_scheduler,
        "training__warmup_ratio": t.warmup_ratio,
        "training__logging_steps": t.logging_steps,
        "training__max_steps": t.max_steps,
        "training__preflight": t.preflight,
        "training__seed": t.seed,
        "eval__every_steps": e.every_steps,
        "eval__at_start": e.at_start,
        "data__labels": list(cfg.data.labels),
        "data__seed": cfg.data.seed,
        "checkpoint__keep_last": cfg.checkpoint.keep_last,
    }
    if t.device == "cpu":
        recipe["training__device"] = "cpu"
    return recipe
