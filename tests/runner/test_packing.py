"""Packing is exact: a packed batch trains and evaluates as the same rows padded would.

fp32 on the CPU with the tiny Llama (sdpa), rows of different lengths whose labels carry loss
only on the assistant turns (the runner's own chat encoding). A packed micro-batch must give
every example the loss it has alone, the same gradients as the padded batch, and the same eval
loss; and a model family that would mix packed examples is found out before training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from affiner.runner.config.schema import RunConfig
from affiner.runner.data.render import encode_causal
from affiner.runner.training.batching import (
    BatchingError,
    build_collator,
    decide_batching,
    packing_is_exact,
    trainer_arguments,
)
from tests.train_helpers import events_of, make_run, of_type

CHATS = [
    ("what is the sun", "the sun is a star and it is far away from the earth"),
    ("name a colour", "red"),
    ("tell me about cats and dogs", "a cat sat on a mat and the dog ran to the park"),
    ("hello", "hello there, my name is affiner and I answer questions"),
    ("where does the sun rise", "in the east"),
]


def _tokenizer(model: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model)


def _features(tokenizer: Any) -> list[dict[str, list[int]]]:
    rows = []
    for user, assistant in CHATS:
        row = {
            "messages": [
                {"role": "user", "content": user},
                {"role": "assistant", "content": assistant},
            ]
        }
        encoded = encode_causal(row, "chat", tokenizer, max_seq_len=64)
        rows.append({"input_ids": encoded.input_ids, "labels": encoded.labels})
    assert len({len(r["input_ids"]) for r in rows}) > 2, "rows of different lengths"
    return rows


def _config(task: str = "causal_lm", packing: bool | None = None) -> RunConfig:
    cfg = RunConfig()
    cfg.model.task = task
    cfg.training.packing = packing
    return cfg


def _model(path: Path) -> Any:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    # random weights with a wide spread: logits that differ clearly between contexts
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


def _token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy of next-token prediction, -100 where no loss (shifted as HF does)."""
    shifted = labels[..., 1:]
    loss = torch.nn.functional.cross_entropy(
        logits[..., :-1, :].reshape(-1, logits.shape[-1]),
        shifted.reshape(-1),
        ignore_index=-100,
        reduction="none",
    )
    return loss.view(shifted.shape)


def test_packed_batch_gives_each_example_its_own_loss_and_the_padded_gradients(
    tiny_llama: Path,
) -> None:
    tokenizer = _tokenizer(tiny_llama)
    features = _features(tokenizer)
    model = _model(tiny_llama)
    packed = build_collator(_config(), tokenizer, "cpu", packing=True)([dict(f) for f in features])
    padded = build_collator(_config(), tokenizer, "cpu", packing=False)([dict(f) for f in features])
    assert "attention_mask" not in packed and packed["input_ids"].shape[0] == 1
    assert packed["input_ids"].shape[1] == sum(len(f["input_ids"]) for f in features)

    # per-example losses: the packed row cut at the boundaries, against each row alone
    with torch.no_grad():
        logits = model(**{k: v for k, v in packed.items() if k != "labels"}, use_cache=False).logits
    start = 0
    for feature in features:
        end = start + len(feature["input_ids"])
        labels = torch.tensor(feature["labels"])
        inside = _token_losses(logits[0, start:end], labels)
        with torch.no_grad():
            alone_logits = model(input_ids=torch.tensor([feature["input_ids"]])).logits[0]
        alone = _token_losses(alone_logits, labels)
        keep = labels[1:] != -100
        assert keep.any()
        torch.testing.assert_close(inside[keep], alone[keep], rtol=1e-5, atol=1e-5)
        start = end

    # gradients of the batch loss (mean over the loss tokens), packed against padded
    def grads(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        out = model(**batch, use_cache=False)
        out.loss.backward()
        return out.loss.detach(), [p.grad.clone() for p in model.parameters()]

    loss_packed, grads_packed = grads(packed)
    loss_padded, grads_padded = grads(padded)
    torch.testing.assert_close(loss_packed, loss_padded, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads_packed, grads_padded, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_the_loss_mask_survives_packing(tiny_llama: Path) -> None:
    tokenizer = _tokenizer(tiny_llama)
    features = _features(tokenizer)
    packed = build_collator(_config(), tokenizer, "cpu", packing=True)([dict(f) for f in features])
    expected: list[int] = []
    for feature in features:  # each example's first label is dropped: nothing predicts it
        expected += [-100, *feature["labels"][1:]]
    assert packed["labels"][0].tolist() == expected
    # the tokens that carry loss are the assistant turns' and nothing else
    loss_tokens = sum(sum(1 for t in f["labels"][1:] if t != -100) for f in features)
    assert int(packed["labels"].ne(-100).sum()) == loss_tokens
    assert loss_tokens < sum(len(f["input_ids"]) for f in features) // 2 + 40  # prompts masked
    positions = packed["position_ids"][0].tolist()
    assert [i for i, p in enumerate(positions) if p == 0] == [
        sum(len(f["input_ids"]) for f in features[:k]) for k in range(len(features))
    ]


def test_eval_loss_of_a_packed_run_equals_the_unpacked_eval_loss(
    tiny_llama: Path, tmp_path: Path
) -> None:
    from datasets import Dataset
    from transformers import TrainingArguments

    from affiner.runner.training.callbacks import CountingTrainer

    tokenizer = _tokenizer(tiny_llama)
    features = _features(tokenizer)
    data = Dataset.from_list(features + features[:2])  # 7 rows: the last batch of 3 is short
    model = _model(tiny_llama)
    losses = {}
    for packing in (True, False):
        args = TrainingArguments(
            output_dir=str(tmp_path / str(packing)),
            per_device_eval_batch_size=3,
            use_cpu=True,
            report_to="none",
            prediction_loss_only=True,
            **trainer_arguments(decide_batching(_config(packing=packing), model, "cpu")),
        )
        trainer = CountingTrainer(
            model=model,
            args=args,
            eval_dataset=data,
            data_collator=build_collator(_config(), tokenizer, "cpu", packing=packing),
            packing=packing,
            causal_lm=True,
        )
        losses[packing] = trainer.evaluate()["eval_loss"]
    # and both are the mean over every held-out loss token, however the rows were batched
    with torch.no_grad():
        total, count = 0.0, 0
        for feature in features + features[:2]:
            labels = torch.tensor(feature["labels"])
            logits = model(input_ids=torch.tensor([feature["input_ids"]])).logits[0]
            token_losses = _token_losses(logits, labels)[labels[1:] != -100]
            total, count = total + float(token_losses.sum()), count + token_losses.numel()
    assert losses[True] == pytest.approx(losses[False], rel=1e-6)
    assert losses[True] == pytest.approx(total / count, rel=1e-5)


def test_the_check_finds_a_model_whose_attention_would_mix_packed_rows() -> None:
    from transformers import AutoModelForCausalLM, LlamaConfig, OPTConfig

    small = {"vocab_size": 96, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4}
    llama = AutoModelForCausalLM.from_config(
        LlamaConfig(**small, intermediate_size=64, num_key_value_heads=2)
    )
    assert packing_is_exact(llama) == (True, "")
    # OPT's learned positions are offset from the position ids: packed rows see wrong positions
    opt = AutoModelForCausalLM.from_config(
        OPTConfig(**small, ffn_dim=64, word_embed_proj_dim=32, max_position_embeddings=64)
    )
    exact, why = packing_is_exact(opt)
    assert not exact and "OPTForCausalLM" in why

    left_out = decide_batching(_config(), opt, "cpu")
    assert not left_out.packing and "padded instead of packed" in left_out.notes[0]
    assert trainer_arguments(left_out)["train_sampling_strategy"] == "group_by_length"
    with pytest.raises(BatchingError) as stated:
        decide_batching(_config(packing=True), opt, "cpu")
    assert "packing = false" in (stated.value.hint or "")
    assert decide_batching(_config(), llama, "cpu").packing
    assert not decide_batching(_config(packing=False), llama, "cpu").packing
    assert decide_batching(_config(), llama, "cpu").loss_kernel == "torch"  # no liger on a CPU


def test_a_run_packs_by_default_and_counts_its_real_tokens(
    tiny_llama: Path, tmp_path: Path
) -> None:
    from affiner.runner.train import run_training

    rows = [
        {"messages": [{"role": "user", "content": u}, {"role": "assistant", "content": a}]}
        for u, a in CHATS * 8
    ]
    rd = make_run(tmp_path, tiny_llama, rows=rows, training={"max_steps": 6})
    assert run_training(rd.path) == 0
    events = events_of(rd)
    started = of_type(events, "run_started")[0]
    assert started["packing"] is True and started["loss_kernel"] == "torch"
    logs = [e for e in of_type(events, "train_log") if e.get("tokens_per_second")]
    assert logs, "a packed batch has no attention mask; its tokens must still be counted"
    assert of_type(events, "eval") and of_type(events, "eval")[-1]["loss"] > 0


def test_the_run_log_says_how_batches_were_made() -> None:
    from affiner.runner.run.events import RunStarted
    from affiner.tui.widgets.run_log import event_line

    packed = RunStarted(
        method="lora", device="cpu", total_steps=9, packing=True, loss_kernel="torch"
    )
    assert event_line(packed) == "started: lora on cpu · 9 steps · packed batches"
    fused = RunStarted(
        method="lora", device="cuda", total_steps=9, packing=False, loss_kernel="liger"
    )
    assert event_line(fused).endswith("· padded batches, fused loss")
    older = RunStarted(method="lora", device="cpu", total_steps=9)  # a log from before packing
    assert event_line(older) == "started: lora on cpu · 9 steps"
