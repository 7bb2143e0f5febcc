"""Issue 16 point 5: a conversation that ends on a user turn is trimmed to its last assistant
reply, counted and reported; one without any assistant turn is still a row problem."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from affiner.runner.config import DataSection
from affiner.runner.config.schema import RunConfig
from affiner.runner.data import load_rows, prepare_data, render_example
from affiner.runner.data.notices import loading_warnings
from affiner.runner.data.render import IGNORE
from affiner.runner.run.validate import check_data
from tests.tiny_models import build_tokenizer, write_jsonl


def turn(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


ANSWERED = [turn("user", "what is your name"), turn("assistant", "my name is affiner")]
SHAREGPT = [("human", "good day"), ("gpt", "hi"), ("human", "bye"), ("human", "bye?")]
ROWS = [
    # line 1: trimmed
    {"messages": [*ANSWERED, turn("user", "and how are you")]},
    {"messages": [turn("user", "tell me a story"), turn("assistant", "the sun rises")]},
    # line 3: no assistant turn at all, nothing to learn: dropped
    {"messages": [turn("user", "hello there")]},
    # line 4: ShareGPT, two unanswered turns: trimmed
    {"conversations": [{"from": who, "value": text} for who, text in SHAREGPT]},
    # line 5: trimmed, then a duplicate of line 1
    {"messages": [*ANSWERED, turn("user", "a question never answered")]},
    *({"messages": [turn("user", f"say {w}"), turn("assistant", w)]} for w in "abcdefghijklmnop"),
]


@pytest.fixture
def train(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "train.jsonl", ROWS)


def section(train: Path) -> DataSection:
    return DataSection(train=str(train), eval_fraction=0.0, max_dropped_fraction=0.2)


@pytest.mark.parametrize("keep_rows", [True, False])
def test_trailing_turns_are_trimmed_and_counted(train: Path, keep_rows: bool) -> None:
    loaded = load_rows(section(train), keep_rows=keep_rows)
    assert loaded.trimmed == 3
    assert loaded.trimmed_examples == [f"{train}:1", f"{train}:4", f"{train}:5"]
    # the conversation without any assistant turn is still left out, with its reason
    assert [(d.where, d.kind) for d in loaded.dropped] == [
        (
            f"{train}:3",
            "the conversation has no assistant turn, so there is nothing to learn from it",
        )
    ]
    # lines 1 and 5 are the same conversation once trimmed
    assert loaded.duplicates_removed["train"] == 1 and len(loaded.train) == len(ROWS) - 2
    if keep_rows:
        first, fourth = loaded.train[0].data["messages"], loaded.train[2].data["messages"]
        assert first == ANSWERED
        assert fourth == [turn("user", "good day"), turn("assistant", "hi")]
        assert all(e.data["messages"][-1]["role"] == "assistant" for e in loaded.train)


def test_the_user_is_told_before_the_run_and_in_its_warnings(train: Path) -> None:
    loaded = load_rows(section(train))
    [warning] = [w for w in loading_warnings(loaded) if w.code == "trailing_user_turn"]
    assert warning.message == (
        "3 conversations ended on a user (or tool) turn with no reply after it, nothing to learn "
        f"from; trimmed to their last assistant reply ({train}:1, {train}:4, {train}:5)."
    )
    # the pre-launch check (`affiner train`, `affiner preflight`) prints the same sentence
    cfg = RunConfig()
    cfg.data = section(train)
    assert f"{warning.message} ({warning.action})" in check_data(cfg)


def test_one_trimmed_conversation_is_worded_in_the_singular(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "one.jsonl", [ROWS[0], ROWS[1]])
    [warning] = [
        w for w in loading_warnings(load_rows(section(path))) if w.code == "trailing_user_turn"
    ]
    assert warning.message.startswith("1 conversation ended on a user (or tool) turn")
    assert "trimmed to its last assistant reply" in warning.message


def test_a_conversation_that_ends_on_its_reply_is_not_counted(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "fine.jsonl", ROWS[5:])
    loaded = load_rows(section(path))
    assert loaded.trimmed == 0 and loaded.trimmed_examples == []
    assert not [w for w in loading_warnings(loaded) if w.code == "trailing_user_turn"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return build_tokenizer(tmp_path_factory.mktemp("tok"))


def test_training_never_sees_the_unanswered_turn(train: Path, tokenizer: Any) -> None:
    cfg = RunConfig()
    cfg.data = section(train)
    prepared = prepare_data(cfg, tokenizer)
    report = prepared.report
    assert report.trimmed == 3
    assert any("trimmed to their last assistant reply" in line for line in report.summary_lines())
    assert "trailing_user_turn" in {w.code for w in report.warnings}  # the worker's warning events
    first = prepared.train[0]
    text = tokenizer.decode(first["input_ids"])
    assert "and how are you" not in text
    learned = [t for t in first["labels"] if t != IGNORE]
    assert tokenizer.decode(learned) == "my name is affiner<|im_end|>"


def test_the_preview_shows_the_trimmed_conversation(tokenizer: Any) -> None:
    shown = render_example(ROWS[0], "chat", tokenizer, 128)
    assert "and how are you" not in shown.text and shown.text.rstrip().endswith("<|im_end|>")
