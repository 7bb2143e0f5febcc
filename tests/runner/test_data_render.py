"""Rendering with a real (tiny) tokenizer: loss exactly on the tokens each format learns from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from affiner.runner.config.schema import RunConfig
from affiner.runner.data.prepare import DataError, prepare_data, render_example
from affiner.runner.data.render import IGNORE, encode_causal
from tests.tiny_models import build_tokenizer, write_jsonl

CHAT = {
    "messages": [
        {"role": "system", "content": "be kind"},
        {"role": "user", "content": "what is your name"},
        {"role": "assistant", "content": "my name is affiner"},
        {"role": "user", "content": "how are you"},
        {"role": "assistant", "content": "I am fine"},
    ]
}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return build_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def plain_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tok = build_tokenizer(tmp_path_factory.mktemp("plain"))
    tok.chat_template = None
    return tok


class SlowTokenizer:
    """The tokenizer without offsets, as a slow (Python) tokenizer would be."""

    is_fast = False

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, text: str, **kwargs: Any) -> Any:
        kwargs.pop("return_offsets_mapping", None)
        return self.inner(text, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def learned_text(tokenizer: Any, labels: list[int]) -> str:
    return tokenizer.decode([t for t in labels if t != IGNORE])


def learned_runs(tokenizer: Any, labels: list[int]) -> list[str]:
    """Each contiguous run of loss-carrying tokens, decoded."""
    runs, current = [], []
    for token in [*labels, IGNORE]:
        if token != IGNORE:
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    return runs


def test_chat_loss_is_on_assistant_turns_only(tokenizer: Any) -> None:
    shown = render_example(CHAT, "chat", tokenizer, 512)
    assert shown.text.startswith("<|im_start|>system\nbe kind<|im_end|>")
    assert learned_runs(tokenizer, shown.labels) == [
        "my name is affiner<|im_end|>",
        "I am fine<|im_end|>",
    ]
    assert (
        "".join(t for t, loss in shown.tokens if loss)
        == "my name is affiner<|im_end|>I am fine<|im_end|>"
    )
    assert "".join(t for t, _ in shown.tokens) == shown.text  # the tokens are the whole text
    assert (
        shown.input_ids[-1] != tokenizer.eos_token_id
    )  # the template ends turns itself: no extra EOS


def test_sharegpt_renders_like_messages(tokenizer: Any) -> None:
    share = {
        "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "good day"}]
    }
    assert (
        learned_text(tokenizer, render_example(share, "chat", tokenizer, 512).labels)
        == "good day<|im_end|>"
    )


def test_chat_without_a_template_uses_the_plain_one(plain_tokenizer: Any) -> None:
    shown = render_example(CHAT, "chat", plain_tokenizer, 512)
    assert shown.text.startswith(
        "### System:\nbe kind\n\n### User:\nwhat is your name\n\n### Assistant:\n"
    )
    assert learned_runs(plain_tokenizer, shown.labels) == [
        "my name is affiner<|im_end|>",
        "I am fine<|im_end|>",
    ]


@pytest.mark.parametrize(
    ("row", "fmt", "learned"),
    [
        (
            {"instruction": "tell me a story", "input": "the sea", "output": "the sun rises"},
            "instruction",
            "the sun rises<|im_end|>",
        ),
        (
            {"prompt": "the cat sat on", "completion": " a mat"},
            "prompt_completion",
            " a mat<|im_end|>",
        ),
        ({"text": "the dog ran to the park"}, "text", "the dog ran to the park<|im_end|>"),
    ],
)
def test_loss_on_output_completion_and_all_text(
    tokenizer: Any, row: dict, fmt: str, learned: str
) -> None:
    shown = render_example(row, fmt, tokenizer, 512)
    assert learned_runs(tokenizer, shown.labels) == [learned]
    if fmt == "text":  # the other formats go through the chat template, which ends turns itself
        assert shown.input_ids[-1] == tokenizer.eos_token_id


def test_instruction_without_a_template_uses_the_plain_one(plain_tokenizer: Any) -> None:
    row = {"instruction": "tell me", "input": "", "output": "a story"}
    shown = render_example(row, "instruction", plain_tokenizer, 512)
    assert shown.text == "### User:\ntell me\n\n### Assistant:\na story<|im_end|>\n\n"
    assert learned_runs(plain_tokenizer, shown.labels) == ["a story<|im_end|>"]


@pytest.mark.parametrize("fmt", ["chat", "instruction"])
def test_a_tokenizer_without_offsets_gives_the_same_mask(tokenizer: Any, fmt: str) -> None:
    row = CHAT if fmt == "chat" else {"instruction": "tell me", "input": "", "output": "a story"}
    normal = {"messages": row["messages"]} if fmt == "chat" else row
    fast = encode_causal(normal, fmt, tokenizer, 512)
    slow = encode_causal(normal, fmt, SlowTokenizer(tokenizer), 512)
    assert (slow.input_ids, slow.labels) == (fast.input_ids, fast.labels)


def test_truncation_is_counted(tokenizer: Any) -> None:
    shown = render_example({"text": "the cat sat on a mat " * 10}, "text", tokenizer, 8)
    assert shown.truncated and len(shown.input_ids) == 8 and shown.length > 8


def test_classification_gives_the_class_id(tokenizer: Any) -> None:
    shown = render_example(
        {"text": "great film", "label": "good"},
        "classification",
        tokenizer,
        64,
        labels=["bad", "good"],
    )
    assert shown.labels == 1 and shown.label == "good" and not any(loss for _, loss in shown.tokens)


def test_render_example_refuses_a_bad_row(tokenizer: Any) -> None:
    with pytest.raises(DataError, match="no assistant turn"):
        render_example({"messages": [{"role": "user", "content": "hi"}]}, "chat", tokenizer, 64)


def test_prepare_data_builds_datasets_and_a_report(tmp_path: Path, tokenizer: Any) -> None:
    rows = [
        {"instruction": f"say {w}", "output": f"{w} is a good word"}
        for w in ("cat", "dog", "sun", "sea", "mat")
    ]
    rows.append(
        {"instruction": "tell me a story about the sea " * 12, "output": "no"}
    )  # prompt longer than max_seq_len
    write_jsonl(tmp_path / "train.jsonl", rows * 1)
    write_jsonl(tmp_path / "eval.jsonl", [{"instruction": "say hi", "output": "hi"}, rows[0]])
    cfg = RunConfig()
    cfg.data.train, cfg.data.eval = "train.jsonl", "eval.jsonl"
    cfg.data.max_seq_len, cfg.data.max_dropped_fraction = 48, 0.5
    prepared = prepare_data(cfg, tokenizer, base_dir=tmp_path)
    report = prepared.report
    assert (report.train_rows, report.eval_rows, report.leaked, report.format) == (
        5,
        1,
        1,
        "instruction",
    )
    assert report.dropped == 1 and "no token is left to learn from" in report.dropped_examples[0]
    assert report.dropped_examples[0].startswith(str(tmp_path / "train.jsonl") + ":6")
    assert report.train_tokens.count == 5 and report.train_tokens.truncated == 0
    assert set(prepared.train.column_names) == {"input_ids", "attention_mask", "labels"}
    first = prepared.train[0]
    assert learned_text(tokenizer, first["labels"]) == "cat is a good word<|im_end|>"
    assert len(first["input_ids"]) == len(first["labels"]) == len(first["attention_mask"])
    assert report.to_json()["train_tokens"]["count"] == 5 and report.summary_lines()


def test_prepare_data_for_classification(tmp_path: Path, tokenizer: Any) -> None:
    write_jsonl(
        tmp_path / "d.jsonl",
        [{"text": f"film {i} was great", "label": ["bad", "good"][i % 2]} for i in range(20)],
    )
    cfg = RunConfig()
    cfg.model.task, cfg.data.train, cfg.data.eval_fraction = (
        "classification",
        str(tmp_path / "d.jsonl"),
        0.25,
    )
    prepared = prepare_data(cfg, tokenizer)
    assert (
        prepared.labels == ["bad", "good"] and len(prepared.train) == 15 and len(prepared.eval) == 5
    )
    assert all(isinstance(label, int) for label in prepared.train["labels"])


def test_a_template_that_rewrites_history_falls_back_to_finding_the_answer(tmp_path: Path) -> None:
    tok = build_tokenizer(tmp_path / "odd")
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{% if loop.last %} [END]{% endif %}\n"
        "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
    )
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "good day"},
                        {"role": "user", "content": "and you"}, {"role": "assistant", "content": "fine"}]}  # fmt: skip
    shown = render_example(row, "chat", tok, 512)
    assert learned_runs(tok, shown.labels) == [
        "good day",
        "fine",
        "<|im_end|>",
    ]  # EOS appended: the template has none


def test_token_stats_for_loaded_rows(tmp_path: Path, tokenizer: Any) -> None:
    from affiner.runner.config.schema import DataSection
    from affiner.runner.data.prepare import load_rows, token_stats_for

    write_jsonl(tmp_path / "t.jsonl", [{"text": "the cat " * n} for n in range(1, 11)])
    loaded = load_rows(DataSection(train=str(tmp_path / "t.jsonl"), eval_fraction=0.2))
    train, evals = token_stats_for(loaded, tokenizer, max_seq_len=12)
    assert (train.count, evals.count) == (8, 2)
    lengths = [len(tokenizer(e.data["text"])["input_ids"]) + 1 for e in loaded.train]  # + EOS
    assert train.max == max(lengths) and train.truncated == sum(n > 12 for n in lengths)
