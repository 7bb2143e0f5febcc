"""The models and cells of the peak-memory bench: small shapes for the CPU, real ones for a GPU.

Memory depends on shapes, not on weights, so every model here is a config that
`bench.step_recipe.save_random_model` fills with random weights: nothing is downloaded.
"""

from __future__ import annotations

from typing import Any

from affiner.planner.hardware import DeviceTarget
from bench.step_recipe import Cell

#: The CPU as the planner sees it when it plans a CPU run (its RAM is not the question here).
CPU_TARGET = DeviceTarget(
    kind="cpu",
    name="CPU",
    source="cpu",
    memory_total=1 << 34,
    memory_free=1 << 34,
    bf16=True,
    fp16=False,
)

_SMALL = dict(
    hidden_size=256,
    intermediate_size=704,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=2,
    vocab_size=8192,
    max_position_embeddings=1024,
)
#: Small decoders of the families people fine-tune most: GQA with an untied head (llama), tied
#: embeddings (qwen2), a wide head_dim, GeLU and one KV head (gemma), fused projections (phi3),
#: Conv1D blocks with biases and dropout (gpt2), fused 3-D experts (mixtral), soft-capped eager
#: attention with four norms a block (gemma2), partial rotary and parallel residuals (gpt_neox),
#: multi-query attention through SDPA's math kernel (falcon), learned positions and ReLU (opt).
SMALL_CONFIGS: dict[str, dict[str, Any]] = {
    "llama": {"model_type": "llama", **_SMALL, "tie_word_embeddings": False},
    "qwen2": {"model_type": "qwen2", **_SMALL, "tie_word_embeddings": True},
    "gemma": {
        "model_type": "gemma",
        **_SMALL,
        "num_key_value_heads": 1,
        "head_dim": 64,
        "hidden_activation": "gelu_pytorch_tanh",
    },
    "phi3": {"model_type": "phi3", **_SMALL, "num_key_value_heads": 8, "pad_token_id": 0},
    "gpt2": {
        "model_type": "gpt2",
        "n_embd": 256,
        "n_layer": 4,
        "n_head": 8,
        "vocab_size": 8192,
        "n_positions": 1024,
    },
    "mixtral": {
        "model_type": "mixtral",
        **_SMALL,
        "intermediate_size": 352,
        "num_local_experts": 4,
        "num_experts_per_tok": 2,
        "sliding_window": None,
    },
    "gemma2": {"model_type": "gemma2", **_SMALL, "head_dim": 32, "sliding_window": 4096},
    "gpt_neox": {
        "model_type": "gpt_neox",
        "hidden_size": 256,
        "intermediate_size": 1024,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "vocab_size": 8192,
        "max_position_embeddings": 1024,
        "rotary_pct": 0.25,
    },
    "falcon": {
        "model_type": "falcon",
        "hidden_size": 256,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_kv_heads": 1,
        "vocab_size": 8192,
        "new_decoder_architecture": False,
        "multi_query": True,
        "parallel_attn": True,
        "alibi": False,
        "bias": False,
    },
    "opt": {
        "model_type": "opt",
        "hidden_size": 256,
        "ffn_dim": 1024,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "vocab_size": 8192,
        "max_position_embeddings": 1024,
        "word_embed_proj_dim": 256,
    },
}
#: Models whose attention has no SDPA path in transformers 5.
EAGER_ONLY = {"gemma2"}
#: Models bitsandbytes cannot quantize (old Falcon's custom linear class): the loader refuses
#: QLoRA for them, so the bench does not plan it.
NOT_QUANTIZABLE = {"falcon"}

#: The shapes of the issue's GPU matrix, from the published configs: ~0.5B and ~1.5B with tied
#: embeddings and a 152k vocabulary, and an 8B with an untied 128k head.
SHAPE_CONFIGS: dict[str, dict[str, Any]] = {
    "qwen2-0.5b": {
        "model_type": "qwen2",
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": True,
        "rope_theta": 1000000.0,
    },
    "qwen2-1.5b": {
        "model_type": "qwen2",
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": True,
        "rope_theta": 1000000.0,
    },
    "llama3-8b": {
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "max_position_embeddings": 8192,
        "tie_word_embeddings": False,
        "rope_theta": 500000.0,
    },
}


def cpu_cells(models: tuple[str, ...]) -> list[Cell]:
    """Every method at mixed bf16 with and without checkpointing, full fp32, a padded batch,
    and a batch short enough for the end of backward or the optimizer step to be the peak."""
    cells = []
    for model in models:
        # peft adapts fused experts only without dropout (planned so by the planner too)
        like = {
            "attention": "eager" if model in EAGER_ONLY else "sdpa",
            "lora_dropout": 0.0 if model == "mixtral" else 0.05,
        }
        methods = ("full", "freeze", "lora") + (() if model in NOT_QUANTIZABLE else ("qlora",))
        for method in methods:
            for ckpt in (False, True):
                cells.append(Cell(model, method, seq=256, batch=2, checkpointing=ckpt, **like))
        cells.append(Cell(model, "full", 256, 2, checkpointing=False, precision="fp32", **like))
        cells.append(Cell(model, "lora", 256, 2, checkpointing=False, padded=True, **like))
        cells.append(Cell(model, "full", seq=16, batch=1, checkpointing=False, **like))
    return cells


def cuda_cells(models: tuple[str, ...]) -> list[Cell]:
    """The issue's matrix: methods × sequence 512/2048 × batch 1/4 × checkpointing, mixed bf16.

    A batch of 4 carries a padding mask with one half-padded row, as real batches do.
    """
    return [
        Cell(model, method, seq=seq, batch=batch, checkpointing=ckpt, padded=batch > 1)
        for model in models
        for method in ("full", "freeze", "lora", "qlora")
        for seq in (512, 2048)
        for batch in (1, 4)
        for ckpt in (False, True)
    ]
