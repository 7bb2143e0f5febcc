"""Issue 16 point 1: a model is trained on the prompts it will be served.

For each conversational format (chat messages, prompt/completion, instruction), one row goes
through the training path (`prepare_data`: the file read, the format detected, the row
tokenized with its loss mask) and the same user text goes through the playground's path
(`ChatSession.encode`, what `ChatSession.stream` and the chat process feed `generate`). The
training tokens before the first loss-carrying token must be exactly the inference prompt, and
the loss must sit on the reply alone. Once with a tokenizer that has a chat template, once with
one that has none (affiner's plain ``### User:`` layout on both sides).
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Any

import pytest

from affiner.runner.config.schema import RunConfig
from affiner.runner.data.prepare import prepare_data
from affiner.runner.data.render import IGNORE, encode_causal, prompt_ids
from affiner.runner.inference import ChatSession
from tests.tiny_models import build_tokenizer, write_jsonl

QUESTION = "what is your name"
ANSWER = "my name is affiner"
SYSTEM = "be kind"


@pytest.fixture(scope="module")
def plain_model(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama saved without a chat template, as a base model without one is."""
    folder = tmp_path_factory.mktemp("plain-llama") / "model"
    shutil.copytree(tiny_llama, folder, ignore=shutil.ignore_patterns("chat_template.jinja"))
    return folder


@pytest.fixture(scope="module", params=["template", "plain"])
def session(request: pytest.FixtureRequest, tiny_llama: Path, plain_model: Path) -> ChatSession:
    """The playground's session on the base model, loaded once per tokenizer kind."""
    folder = tiny_llama if request.param == "template" else plain_model
    loaded = ChatSession(folder, None, device="cpu").load()
    assert bool(loaded.tokenizer.chat_template) is (request.param == "template")
    return loaded


def write_data(folder: Path, fmt: str) -> tuple[str, list[dict[str, str]]]:
    """A training file of `fmt` whose first row is QUESTION → ANSWER, and the conversation the
    playground sends for it (what a user types, in the turns the row implies)."""
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "prompt_completion":
        path = folder / "train.csv"
        with path.open("w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out)
            writer.writerow(["prompt", "completion"])
            writer.writerow([QUESTION, ANSWER])
            writer.writerow(["how are you", "I am fine"])
        return str(path), [{"role": "user", "content": QUESTION}]
    if fmt == "instruction":
        rows = [
            {"instruction": QUESTION, "input": "", "output": ANSWER, "system": SYSTEM},
            {"instruction": "how are you", "input": "", "output": "I am fine"},
        ]
        asked = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
        return str(write_jsonl(folder / "train.jsonl", rows)), asked
    rows = [
        {"messages": [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWER}]},
        {"messages": [{"role": "user", "content": "how are you"}, {"role": "assistant", "content": "I am fine"}]},
    ]  # fmt: skip
    return str(write_jsonl(folder / "train.jsonl", rows)), [{"role": "user", "content": QUESTION}]


def first_training_example(train: str, tokenizer: Any) -> tuple[list[int], list[int]]:
    cfg = RunConfig()
    cfg.data.train, cfg.data.eval_fraction, cfg.data.max_seq_len = train, 0.0, 128
    prepared = prepare_data(cfg, tokenizer)
    return prepared.train[0]["input_ids"], prepared.train[0]["labels"]


def split_at_loss(ids: list[int], labels: list[int]) -> tuple[list[int], list[int]]:
    """The tokens before the first one that carries loss, and the loss-carrying tokens."""
    start = next(i for i, label in enumerate(labels) if label != IGNORE)
    return ids[:start], [label for label in labels if label != IGNORE]


@pytest.mark.parametrize("fmt", ["chat", "prompt_completion", "instruction"])
def test_training_prompt_tokens_are_the_inference_prompt(
    session: ChatSession, fmt: str, tmp_path: Path
) -> None:
    tokenizer = session.tokenizer
    train, asked = write_data(tmp_path / fmt, fmt)
    ids, labels = first_training_example(train, tokenizer)
    prompt, learned = split_at_loss(ids, labels)

    served = session.encode(asked)["input_ids"][0].tolist()
    assert prompt == served, (tokenizer.decode(prompt), tokenizer.decode(served))
    # loss on the reply and its end-of-turn token only
    assert tokenizer.decode(learned) == ANSWER + tokenizer.eos_token
    # and the reply follows the prompt directly: nothing between them is left untrained
    assert ids[len(prompt) : len(prompt) + len(learned)] == learned


def test_the_plain_layout_is_one_for_every_format(plain_model: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(plain_model)
    pc = encode_causal(
        {"prompt": QUESTION, "completion": ANSWER}, "prompt_completion", tokenizer, 128
    )
    ins = encode_causal(
        {"instruction": QUESTION, "input": "", "output": ANSWER}, "instruction", tokenizer, 128
    )
    chat = encode_causal({"messages": [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWER}]}, "chat", tokenizer, 128)  # fmt: skip
    assert (
        pc.text
        == ins.text
        == chat.text
        == (f"### User:\n{QUESTION}\n\n### Assistant:\n{ANSWER}<|im_end|>\n\n")
    )
    assert pc.input_ids == ins.input_ids == chat.input_ids


def test_a_later_turn_is_asked_with_the_history_training_saw(session: ChatSession) -> None:
    """The second reply of a conversation: the playground resends the first exchange."""
    messages = [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": ANSWER},
        {"role": "user", "content": "how are you"},
        {"role": "assistant", "content": "I am fine"},
    ]
    encoded = encode_causal({"messages": messages}, "chat", session.tokenizer, 128)
    served = session.encode(messages[:3])["input_ids"][0].tolist()
    assert encoded.input_ids[: len(served)] == served
    assert encoded.loss_mask[len(served)] and not any(
        encoded.loss_mask[len(served) - 3 : len(served)]
    )


def test_a_tokenizer_that_appends_eos_is_not_asked_to_stop(tmp_path: Path) -> None:
    """Some tokenizers add BOS and EOS around every text: the prompt keeps the BOS training
    starts with, and leaves out the EOS, which training has only after the whole example."""
    from tokenizers import processors

    tokenizer = build_tokenizer(tmp_path / "tok")
    tokenizer.chat_template = None
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A <|im_end|>", special_tokens=[("<s>", bos), ("<|im_end|>", eos)]
    )
    row = {"prompt": QUESTION, "completion": ANSWER}
    encoded = encode_causal(row, "prompt_completion", tokenizer, 128)
    asked = prompt_ids([{"role": "user", "content": QUESTION}], tokenizer)
    assert asked[0] == bos and asked[-1] != eos
    assert encoded.input_ids[: len(asked)] == asked and encoded.loss_mask[len(asked)]
