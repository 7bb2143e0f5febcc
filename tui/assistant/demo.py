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
            "batch": cfg.training.micro_batch,
        },
    }
