"""Exact memory measurements on small models, the ground truth the planner's formulas answer to.

Each helper builds a model from a config with random weights (nothing is downloaded), then
measures one thing exactly:

- `param_bytes` / `grad_bytes` / `optimizer_bytes`: bytes of the tensors themselves, each
  storage counted once (tied matrices, views).
- `saved_for_backward`: bytes autograd keeps for the backward pass of one forward, caught with
  `torch.autograd.graph.saved_tensors_hooks`. Tensors are de-duplicated by storage (views of one
  tensor count once) and parameters saved by reference are left out, as are the copies of
  them that autocast makes (those are weight copies, reported apart). Under gradient
  checkpointing the checkpointed blocks hide what they save behind their own hooks; what they
  keep is their inputs, which a forward pre-hook on each block records.

Only the bench and the tests import this module; it needs torch and transformers.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch

#: Tiny shapes per family: small enough to run a step in milliseconds on two CPU cores, with
#: every structural feature of the family switched on (GQA, tied/untied heads, biases...).
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "llama": dict(
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    ),
    "mistral": dict(
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=3,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=512,
        max_position_embeddings=512,
        sliding_window=None,
    ),
    "mixtral": dict(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        vocab_size=512,
        max_position_embeddings=512,
        sliding_window=None,
    ),
    "qwen2": dict(
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    ),
    "gemma": dict(
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=32,
        vocab_size=512,
        max_position_embeddings=512,
        hidden_activation="gelu_pytorch_tanh",
    ),
    "gemma2": dict(
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=512,
        max_position_embeddings=512,
        sliding_window=4096,
    ),
    "phi3": dict(
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=512,
        max_position_embeddings=512,
        pad_token_id=0,
    ),
    "gpt2": dict(n_embd=64, n_layer=3, n_head=4, vocab_size=512, n_positions=512),
    "gpt_neox": dict(
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=4,
        vocab_size=512,
        max_position_embeddings=512,
        rotary_pct=0.25,
    ),
    "falcon": dict(
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_kv_heads=1,
        vocab_size=512,
        new_decoder_architecture=False,
        multi_query=True,
        parallel_attn=True,
        alibi=False,
        bias=False,
    ),
    "opt": dict(
        hidden_size=64,
        ffn_dim=256,
        num_hidden_layers=3,
        num_attention_heads=4,
        vocab_size=512,
        max_position_embeddings=512,
        word_embed_proj_dim=64,
        dropout=0.0,
        attention_dropout=0.0,
    ),
    "bert": dict(
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=4,
        vocab_size=512,
        max_position_embeddings=512,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        # The probe builds the masked-LM class (a vocabulary head and a loss, as in
        # fine-tuning); say so, or the planner counts the bare encoder.
        architectures=["BertForMaskedLM"],
    ),
}


def tiny_config(model_type: str, **overrides: Any) -> dict[str, Any]:
    """The config dict of a tiny `model_type` model (``model_type`` key included)."""
    base = copy.deepcopy(TINY_CONFIGS[model_type])
    base.update(overrides)
    base["model_type"] = model_type
    return base


def build_model(
    config: dict[str, Any],
    *,
    dtype: torch.dtype = torch.float32,
    attn: str = "sdpa",
    seed: int = 0,
    device: str = "cpu",
):
    """A transformers model with random weights from a config dict (no download, no remote code).

    Decoders get their causal-LM class, encoders (bert) their masked-LM class, so that every
    model ends in a vocabulary-sized head and a loss, as in fine-tuning.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

    cfg = dict(config)
    model_type = cfg.pop("model_type")
    hf_config = AutoConfig.for_model(model_type, **cfg)
    hf_config._attn_implementation = attn
    torch.manual_seed(seed)
    auto = AutoModelForMaskedLM if model_type == "bert" else AutoModelForCausalLM
    model = auto.from_config(hf_config, attn_implementation=attn, dtype=dtype)
    return model.to(device)


def _storages(tensors) -> dict[int, int]:
    out: dict[int, int] = {}
    for t in tensors:
        if t is None:
            continue
        storage = t.untyped_storage()
        out[storage.data_ptr()] = storage.nbytes()
    return out


def param_bytes(model) -> int:
    """Bytes of every parameter and buffer-free weight, each storage once (tied weights once)."""
    return sum(_storages(model.parameters()).values())


def grad_bytes(model) -> int:
    """Bytes of the gradients present now, each storage once."""
    return sum(_storages(p.grad for p in model.parameters() if p.grad is not None).values())


def optimizer_bytes(optimizer) -> int:
    """Bytes of every tensor in the optimizer's state (moments, step counters, block constants)."""
    tensors = []
    for state in optimizer.state.values():
        for value in state.values():
            if torch.is_tensor(value):
                tensors.append(value)
    return sum(_storages(tensors).values())


@dataclass
class SavedReport:
    """What one forward pass keeps for backward.

    Attributes:
        activations: bytes of saved tensors other than the logits path.
        logits: bytes of saved tensors whose last dimension is the vocabulary (the loss path).
        weight_copies: bytes of saved tensors shaped like a parameter but not one (autocast copies).
        checkpoint_inputs: bytes of checkpointed blocks' inputs (0 without checkpointing).
        items: (shape, dtype, bytes) of every counted storage, for reading.
    """

    activations: int = 0
    logits: int = 0
    weight_copies: int = 0
    checkpoint_inputs: int = 0
    items: list[tuple[tuple[int, ...], str, int, str]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.activations + self.logits + self.checkpoint_inputs


def decoder_layers(model):
    """The list of transformer blocks of a transformers model (the modules checkpointing wraps)."""
    for name in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
        obj = model
        try:
            for part in name.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return list(obj)
    for module in model.modules():
        if module.__class__.__name__.endswith("Encoder") and hasattr(module, "layer"):
            return list(module.layer)
    raise ValueError(f"no transformer blocks found in {type(model).__name__}")


def saved_for_backward(
    model, batch: dict[str, torch.Tensor], *, autocast_dtype=None
) -> SavedReport:
    """Run one forward with the loss and measure what autograd keeps for backward.

    Args:
        model: a transformers model in train mode.
        batch: ``input_ids``, ``labels`` and optionally ``attention_mask``.
        autocast_dtype: run under ``torch.autocast`` with this dtype (mixed precision).

    Returns:
        A `SavedReport`. The forward is followed by a backward so that nothing leaks.
    """
    vocab = model.config.vocab_size
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    param_shapes = {tuple(p.shape) for p in model.parameters() if p.dim() == 2}
    param_shapes |= {tuple(reversed(s)) for s in param_shapes}
    seen: dict[int, tuple[tuple[int, ...], str, int]] = {}
    kept: list[torch.Tensor] = []

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in params and ptr not in seen and storage.nbytes() > 0:
            seen[ptr] = (tuple(t.shape), str(t.dtype).replace("torch.", ""), storage.nbytes())
            kept.append(t)
        return t

    checkpoint_inputs: dict[int, int] = {}
    handles = []
    flag = (
        "is_activation_checkpointing"
        if hasattr(type(model), "is_activation_checkpointing")
        else "is_gradient_checkpointing"
    )
    if getattr(model, flag, False):

        def pre_hook(module, args, kwargs):
            hidden = args[0] if args else kwargs.get("hidden_states")
            storage = hidden.untyped_storage()
            checkpoint_inputs[storage.data_ptr()] = storage.nbytes()

        handles = [
            layer.register_forward_pre_hook(pre_hook, with_kwargs=True)
            for layer in decoder_layers(model)
        ]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            if autocast_dtype is not None:
                with torch.autocast(batch["input_ids"].device.type, dtype=autocast_dtype):
                    out = model(**batch)
            else:
                out = model(**batch)
        loss = out.loss
    finally:
        for handle in handles:
            handle.remove()
    report = SavedReport()
    for ptr, (shape, dtype, nbytes) in seen.items():
        if shape and shape[-1] == vocab and ptr not in checkpoint_inputs:
            kind = "logits"
            report.logits += nbytes
        elif autocast_dtype is not None and shape in param_shapes:
            kind = "weight"
            report.weight_copies += nbytes
        elif ptr in checkpoint_inputs:
            continue
        else:
            kind = "activation"
            report.activations += nbytes
        report.items.append((shape, dtype, nbytes, kind))
    report.checkpoint_inputs = sum(checkpoint_inputs.values())
    kept.clear()
    del out
    loss.backward()
    model.zero_grad(set_to_none=True)
    return report


def make_batch(vocab: int, batch: int, seq: int, *, padded: bool = False, seed: int = 0):
    """Random token ids with labels; `padded` adds an attention mask with one padded row."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, seq), generator=gen)
    out = {"input_ids": ids, "labels": ids.clone()}
    if padded:
        mask = torch.ones(batch, seq, dtype=torch.long)
        mask[0, seq // 2 :] = 0
        out["attention_mask"] = mask
        out["labels"][0, seq // 2 :] = -100
    return out
