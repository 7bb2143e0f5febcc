"""A model of SmolLM2-135M's exact shape, built here with random weights, for benches that
measure speed and memory where the real weights are not (a GPU machine that holds only this
repository: nothing can be downloaded there, and the chat demo's model is provisioned from a
registry package on the user's machine).

Throughput and memory depend on the shape (layers, widths, heads, the vocabulary the head
projects onto), not on the weights' values, so the numbers it gives are SmolLM2-135M's. What it
cannot give is a meaningful loss: its held-out losses compare the ways trained from the same
random start with each other, nothing more.

The tokenizer is a byte-level BPE trained with ``tokenizers`` on the rows the bench trains on,
with ChatML special tokens at the ids SmolLM2's config names (0 ``<|endoftext|>``, 1
``<|im_start|>``, 2 ``<|im_end|>``) and a plain ChatML chat template. Its vocabulary is
smaller than the head's 49,152 rows (a few thousand merges is all the rows hold); the head
keeps its full width, which is what the logits' memory and time depend on.

Nothing here imports torch at module level; `build_shape_model` does, when it is called.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

#: SmolLM2-135M-Instruct's config.json, the numbers that decide its shape and its tokens' ids
#: (134,515,008 parameters, the input embedding tied to the head).
SMOLLM2_135M: dict[str, Any] = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "hidden_act": "silu",
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
    "tie_word_embeddings": True,
    "vocab_size": 49152,
    "attention_bias": False,
    "mlp_bias": False,
    "unk_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
}

#: Special tokens in id order: their ids are the config's unk, bos and eos/pad ids.
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

#: ChatML: each message between ``<|im_start|>role`` and ``<|im_end|>``; the generation prompt
#: opens an assistant turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def row_texts(paths: Iterable[str | Path]) -> Iterator[str]:
    """Every message's text in chat-format JSONL files (what the tokenizer learns from)."""
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    for message in json.loads(line).get("messages", []):
                        yield str(message.get("content", ""))


def train_tokenizer(folder: Path, texts: Iterable[str]) -> Any:
    """A byte-level BPE tokenizer trained on `texts`, saved in `folder` as a transformers one.

    Byte-level, so any text encodes (no unknown tokens); the ChatML specials first, so their
    ids are the ones `SMOLLM2_135M` names.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=SMOLLM2_135M["vocab_size"],
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token=SPECIAL_TOKENS[0],
        bos_token=SPECIAL_TOKENS[1],
        eos_token=SPECIAL_TOKENS[2],
        pad_token=SPECIAL_TOKENS[2],
    )
    fast.chat_template = CHAT_TEMPLATE
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(folder)
    return fast


def build_shape_model(folder: Path, texts: Iterable[str]) -> Path:
    """`folder` holding a SmolLM2-135M-shaped LlamaForCausalLM (random weights, seed 0, bf16
    safetensors like the real checkpoint) and a tokenizer trained on `texts`.

    A folder that already holds both is reused: the bench's ways and repeats all load the same
    weights, which is what makes their held-out losses comparable.
    """
    if (folder / "model.safetensors").exists() and (folder / "tokenizer.json").exists():
        return folder
    from bench.step_recipe import save_random_model

    train_tokenizer(folder, texts)
    save_random_model(SMOLLM2_135M, folder)
    return folder
