"""How micro-batches are made and how the loss is computed: packing, length grouping, loss kernel.

A padded batch spends compute on padding: eight chat rows of 40 to 120 tokens padded to 120 are
a third padding. Packing (transformers' ``DataCollatorWithFlattening``) joins a micro-batch's
rows into one row with no padding and position ids that restart at each example; transformers'
mask builder turns those restarts into a block-diagonal mask (sdpa, eager) or variable-length
kernels (FlashAttention), so each example attends only to itself and its loss is the one it has
alone. That holds only for models whose attention reads the position ids that way and only
without a KV cache, so the run checks it on the loaded model (`packing_is_exact`: one packed
pair against the same two rows alone) instead of trusting a list of families.

Where packing does not apply (a classification head scores each row; a model whose attention
would mix the examples), batches are padded to their longest row and grouped by length
(``train_sampling_strategy="group_by_length"``), which leaves little padding to pay for.

The loss kernel: liger-kernel's fused linear cross-entropy computes the loss chunk by chunk
from the last hidden states without ever holding the (tokens x vocabulary) logits; its kernels
are Triton's, so CUDA only. transformers' Trainer applies it (``use_liger_kernel``); only that
kernel is turned on, the rest of the model stays as the base library computes it.

With torch's loss, the vocabulary head runs only where a label counts. A chat row's loss is on
its assistant turns alone, yet the plain recipe projects every position onto the whole
vocabulary (49,152 entries for SmolLM2: the head is a fifth of the model's matmuls per token)
and then throws most of those logits away. transformers' causal LMs take ``logits_to_keep`` as
a tensor of positions; the collator lists the positions whose next token carries loss
(`LossPositions`, on the host, so no step waits on the device to find them) and the Trainer's
loss is computed from those logits alone — the same sum over the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.util import find_spec
from typing import Any

from affiner.planner.errors import AffinerError
from affiner.runner.config import RunConfig

#: The liger kernels the run turns on: the fused loss alone (the issue it solves is the logits).
LIGER_CONFIG = {
    "fused_linear_cross_entropy": True,
    "cross_entropy": False,
    "rope": False,
    "rms_norm": False,
    "swiglu": False,
    "geglu": False,
    "layer_norm": False,
}


class BatchingError(AffinerError):
    """A stated packing or loss-kernel setting that cannot work with this model or device."""

    exit_code = 2


@dataclass(frozen=True)
class Batching:
    """What the run decided, with the reason for anything it did not do as the default says.

    Attributes:
        packing: micro-batches are flattened (no padding) rather than padded.
        loss_kernel: ``liger`` (fused linear cross-entropy) or ``torch``.
        notes: one line per fallback from a default (never from a stated setting).
    """

    packing: bool
    loss_kernel: str
    notes: tuple[str, ...] = field(default_factory=tuple)
    loss_positions: bool = False

    @property
    def words(self) -> str:
        """How batches are made, for the event log and the model card."""
        batches = "packed (padding-free)" if self.packing else "padded, grouped by length"
        loss = "fused linear cross-entropy (liger)" if self.loss_kernel == "liger" else "torch"
        if self.loss_positions:
            loss += ", logits at loss tokens only"
        return f"batches {batches}; loss {loss}"


def decide_batching(cfg: RunConfig, model: Any, device: str) -> Batching:
    """Resolve ``[training].packing`` and ``loss_kernel`` for the loaded `model` on `device`.

    Raises:
        BatchingError: a stated setting cannot hold (``packing = true`` for a model whose
            attention would mix packed examples; ``loss_kernel = "liger"`` for a model family
            liger-kernel does not know).
    """
    notes: list[str] = []
    t = cfg.training
    causal = cfg.model.task != "classification"
    packing = False
    if causal and t.packing is not False:
        exact, why = packing_is_exact(model)
        if exact:
            packing = True
        elif t.packing:
            raise BatchingError(
                f"packing would let the examples of a batch see each other in this model: {why}",
                hint="set [training].packing = false (padded batches, grouped by length), or "
                'use attn_implementation = "sdpa" or "flash_attention_2"',
                where="[training].packing",
            )
        else:
            notes.append(f"batches are padded instead of packed: {why}")
    loss_kernel = "torch"
    if causal and device == "cuda" and t.loss_kernel in ("auto", "liger"):
        problem = liger_unsupported(model)
        if problem is None:
            loss_kernel = "liger"
        elif t.loss_kernel == "liger":
            raise BatchingError(
                f"liger's fused cross-entropy cannot run: {problem}",
                hint='set [training].loss_kernel = "auto" or "torch"',
                where="[training].loss_kernel",
            )
        elif find_spec("liger_kernel") is not None:
            notes.append(f"the loss is torch's: {problem}")
    positions = causal and loss_kernel == "torch" and keeps_chosen_logits(model)
    return Batching(
        packing=packing, loss_kernel=loss_kernel, notes=tuple(notes), loss_positions=positions
    )


def keeps_chosen_logits(model: Any) -> bool:
    """Whether the causal LM's forward takes ``logits_to_keep`` (positions as a tensor) and its
    loss is the cross-entropy alone: a mixture of experts asked for its router logits adds a
    load-balancing term to the loss it computes, which a loss computed outside would drop."""
    import inspect

    base = getattr(model, "get_base_model", lambda: model)()
    if getattr(getattr(base, "config", None), "output_router_logits", False):
        return False
    try:
        return "logits_to_keep" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


class LossPositions:
    """Wraps a causal-LM collator: each batch also says which positions' logits the loss needs.

    Position ``p`` predicts token ``p + 1``, so it is kept when any row's label at ``p + 1``
    counts (is not -100). Worked out here, on the host, from the labels the batch already has.
    A batch with no loss token keeps every position (its loss is the model's own, as before).
    """

    def __init__(self, collator: Any) -> None:
        self.collator = collator

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(features)
        labels = batch.get("labels")
        if labels is not None and labels.dim() == 2 and labels.shape[1] > 1:
            counted = labels[:, 1:].ne(-100).any(dim=0)
            if bool(counted.any()):
                batch["logits_to_keep"] = counted.nonzero().flatten()
        return batch


def kept_logits_loss(
    logits: Any, labels: Any, positions: Any, num_items_in_batch: Any = None
) -> Any:
    """Cross-entropy of the logits kept at `positions` against the labels one step on.

    The sum over counted tokens, divided by `num_items_in_batch` when the Trainer gives one
    (the counted tokens of the whole accumulated batch, as the model's own loss divides) or
    else by this batch's counted tokens: the model's own loss, term for term.
    """
    import torch.nn.functional as F

    targets = labels[:, positions + 1].to(logits.device)
    summed = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=-100,
        reduction="sum",
    )
    if num_items_in_batch is not None:
        return summed / num_items_in_batch
    return summed / targets.ne(-100).sum()


def packing_is_exact(model: Any, *, lengths: tuple[int, int] = (5, 7)) -> tuple[bool, str]:
    """Whether a packed pair of rows gives each row the logits it has alone; with the reason if not.

    Two short rows of token ids go through the model once joined (position ids restarting at
    the second, no attention mask, no cache) and once each on its own; in eval mode and without
    gradients, so dropout and memory do not come into it. A model that mixed the rows would
    differ by whole units in the second row's logits; rounding differs by far less.
    """
    import torch

    base = getattr(model, "get_base_model", lambda: model)()
    config = getattr(base, "config", None)
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    if vocab < 4:
        return False, "the model has no vocabulary to test with"
    device = next(base.parameters()).device
    generator = torch.Generator().manual_seed(0)
    rows = [torch.randint(3, vocab, (1, n), generator=generator).to(device) for n in lengths]
    packed = torch.cat(rows, dim=1)
    positions = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0).to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            alone = [model(input_ids=row, use_cache=False).logits.float() for row in rows]
            together = model(input_ids=packed, position_ids=positions, use_cache=False)
    except Exception as exc:  # a model that will not take position ids this way cannot pack
        return False, f"a packed forward pass failed ({type(exc).__name__}: {exc})"
    finally:
        model.train(was_training)
    joined = together.logits.float()[0]
    expected = torch.cat([logits[0] for logits in alone])
    scale = expected.abs().max().clamp_min(1e-6)
    error = float((joined - expected).abs().max() / scale)
    tolerance = 1e-3 if expected.dtype == torch.float32 and _weights_fp32(base) else 5e-2
    if error <= tolerance:
        return True, ""
    attention = getattr(config, "_attn_implementation", None) or "its attention"
    return False, (
        f"{type(base).__name__} with {attention} does not keep packed examples apart "
        f"(a packed pair's logits differ from the rows alone by {error:.0%})"
    )


def _weights_fp32(model: Any) -> bool:
    import torch

    return all(p.dtype == torch.float32 for p in list(model.parameters())[:4])


def liger_unsupported(model: Any) -> str | None:
    """Why liger-kernel cannot fuse this model's loss, or None when it can."""
    if find_spec("liger_kernel") is None:
        return 'liger-kernel is not installed (pip install "affiner[liger]")'
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    base = getattr(model, "get_base_model", lambda: model)()
    model_type = getattr(getattr(base, "config", None), "model_type", None)
    if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        return f"liger-kernel has no fused loss for the {model_type!r} model family"
    return None


def build_collator(
    cfg: RunConfig,
    tokenizer: Any,
    device: str,
    *,
    packing: bool = False,
    loss_positions: bool = False,
) -> Any:
    """The collator for `packing`: flattened rows, or each batch padded to its longest row;
    with `loss_positions`, each batch also lists the positions the loss reads (`LossPositions`).

    Padded labels are -100 (no loss on padding); a flattened batch marks each example's first
    label -100 so no example learns to predict the next one's first token. On a GPU, padded
    lengths are rounded up to a multiple of 8 for tensor-core-friendly shapes.
    """
    collator = _collator(cfg, tokenizer, device, packing)
    causal = cfg.model.task != "classification"
    return LossPositions(collator) if loss_positions and causal else collator


def _collator(cfg: RunConfig, tokenizer: Any, device: str, packing: bool) -> Any:
    from transformers import (
        DataCollatorForSeq2Seq,
        DataCollatorWithFlattening,
        DataCollatorWithPadding,
    )

    multiple = 8 if device == "cuda" else None
    if cfg.model.task == "classification":
        return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=multiple)
    if packing:
        # FlashAttention's variable-length kernels take the boundaries as cumulative lengths;
        # handing them over saves each layer working them out from the position ids again
        flash = cfg.model.attn_implementation.startswith("flash_attention")
        return DataCollatorWithFlattening(
            return_position_ids=True, separator_id=-100, return_flash_attn_kwargs=flash
        )
    return DataCollatorForSeq2Seq(
        tokenizer, label_pad_token_id=-100, pad_to_multiple_of=multiple, padding=True
    )


def trainer_arguments(batching: Batching) -> dict[str, Any]:
    """The TrainingArguments that carry `batching`: sampling order and the loss kernel."""
    kwargs: dict[str, Any] = {
        # packed rows cost their real tokens in any order; padded ones cost the longest row
        "train_sampling_strategy": "random" if batching.packing else "group_by_length",
    }
    if batching.loss_kernel == "liger":
        kwargs["use_liger_kernel"] = True
        kwargs["liger_kernel_config"] = dict(LIGER_CONFIG)
    return kwargs
