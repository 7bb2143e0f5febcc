"""The head projects only the positions the loss reads, and the loss is the model's own.

fp32 on the CPU with the tiny Llama and the runner's chat encoding (loss on assistant turns
only): a batch through `LossPositions` and `CountingTrainer.compute_loss` gives the loss and the
gradients the model's full-logits loss gives, packed or padded, with or without the Trainer's
``num_items_in_batch``; and a run says it computed its loss that way.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from affiner.runner.training.batching import LossPositions, build_collator, decide_batching
from affiner.runner.training.callbacks import CountingTrainer
from tests.runner.test_packing import _config, _features, _model, _tokenizer
from tests.train_helpers import events_of, make_run, of_type


def _trainer(accepts_loss_kwargs: bool = True) -> CountingTrainer:
    """compute_loss reads only these attributes; a whole Trainer is not needed to call it."""
    trainer = CountingTrainer.__new__(CountingTrainer)
    trainer.packing = True
    trainer.model_accepts_loss_kwargs = accepts_loss_kwargs
    trainer.args = SimpleNamespace(average_tokens_across_devices=False)
    return trainer


def _grads(model) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("packing", [True, False], ids=["packed", "padded"])
def test_the_kept_logits_loss_and_gradients_are_the_full_logits_ones(
    tiny_llama: Path, packing: bool
) -> None:
    tokenizer = _tokenizer(tiny_llama)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    features = _features(tokenizer)
    cfg = _config()
    full = build_collator(cfg, tokenizer, "cpu", packing=packing)([dict(f) for f in features])
    kept = build_collator(cfg, tokenizer, "cpu", packing=packing, loss_positions=True)(
        [dict(f) for f in features]
    )
    positions = kept["logits_to_keep"]
    counted = full["labels"][:, 1:].ne(-100).any(0)
    assert 0 < positions.numel() == int(counted.sum()) < full["labels"].shape[1] - 1

    model = _model(tiny_llama)
    expected = model(**full, use_cache=False).loss
    expected.backward()
    want = _grads(model)
    model.zero_grad()
    got = _trainer().compute_loss(model, dict(kept))
    got.backward()
    assert torch.allclose(got, expected, rtol=1e-6, atol=1e-7)
    for a, b in zip(_grads(model), want, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)

    # the Trainer's count of the accumulated batch's tokens divides the sum, as the model does
    items = torch.tensor(3 * int(full["labels"][:, 1:].ne(-100).sum()))
    model.zero_grad()
    scaled = _trainer().compute_loss(model, dict(kept), num_items_in_batch=items)
    own = model(**full, use_cache=False, num_items_in_batch=items).loss
    assert torch.allclose(scaled, own, rtol=1e-6)
    # a model that takes no loss kwargs gets a batch mean; the Trainer divides it itself
    mean = _trainer(accepts_loss_kwargs=False).compute_loss(
        model, dict(kept), num_items_in_batch=items
    )
    assert torch.allclose(mean, expected.detach(), rtol=1e-6)


def test_a_batch_without_loss_tokens_keeps_every_logit(tiny_llama: Path) -> None:
    tokenizer = _tokenizer(tiny_llama)
    features = [{**f, "labels": [-100] * len(f["labels"])} for f in _features(tokenizer)]
    batch = LossPositions(build_collator(_config(), tokenizer, "cpu", packing=True))(features)
    assert "logits_to_keep" not in batch


def test_a_run_keeps_only_the_loss_logits_and_says_so(tiny_llama: Path, tmp_path: Path) -> None:
    model = _model(tiny_llama)
    assert decide_batching(_config(), model, "cpu").loss_positions
    assert not decide_batching(_config("classification"), model, "cpu").loss_positions
    model.config.output_router_logits = True  # an MoE's own loss adds its router's balance term
    assert not decide_batching(_config(), model, "cpu").loss_positions
    rd = make_run(tmp_path, tiny_llama, training={"max_steps": 2, "logging_steps": 1})
    from affiner.runner.train import run_training

    assert run_training(rd.path) == 0
    started = of_type(events_of(rd), "run_started")[0]
    logs = of_type(events_of(rd), "train_log")
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in logs) and logs
    assert started["loss_kernel"] == "torch" and started["loss_positions"] is True
    from affiner.runner.run.events import RunStarted

    words = RunStarted(packing=True, loss_kernel="torch", loss_positions=True).batching_words
    assert words == "packed batches, logits at loss tokens only"
