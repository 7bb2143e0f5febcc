"""The demo's data summary shows an example that says what the data is like, not its first row."""

from __future__ import annotations

from affiner.runner.demo.tasks import representative_row


def _chat(user: str, assistant: str) -> dict:
    return {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    }


def test_a_one_word_answer_is_not_the_example() -> None:
    rows = [
        _chat("how far is the sun", "it"),
        _chat("electricity", "Electricity is food for robots."),
        _chat("what do robots eat?", "robots eat electricity and data all day"),
        _chat("are you alive?", "no, I am a program that answers"),
        _chat("who are you?", "a bot"),
    ]
    shown = representative_row(rows, lambda r: r["messages"][1]["content"])
    assert shown["messages"][0]["content"].endswith("?")
    assert len(shown["messages"][1]["content"].split()) >= 4
    assert shown is rows[2]  # the answer nearest the median length; a tie goes to the earlier row


def test_without_any_sentence_the_median_row_is_shown() -> None:
    rows = [{"text": w, "label": "x"} for w in ("a", "b c", "d e f")]
    assert representative_row(rows, lambda r: r["text"]) in rows
