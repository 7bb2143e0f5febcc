"""Data formats: which one a data set is in, and whether each row really is in it.

Formats (``[data].format``; ``auto`` detects from the columns, after ``[data].columns`` renames):

==================  ==========================================  =======================
format              fields                                      loss on
==================  ==========================================  =======================
text                ``text``                                    every token
instruction         ``instruction``, ``output``; optional       ``output``
                    ``input``, ``system`` (Alpaca)
chat                ``messages``: [{role, content}], or         assistant turns
                    ShareGPT ``conversations``: [{from, value}]
prompt_completion   ``prompt``, ``completion``                  ``completion``
classification      ``text``, ``label`` (text or integer)       (a class id)
==================  ==========================================  =======================

A row that does not fit raises `RowProblem` with a sentence saying what was expected; the
loader counts it as dropped with its ``file:line``. Normalized rows carry only canonical fields.
A conversation's turns after its last assistant reply (an unanswered user turn) are trimmed
(`chat_messages`); the loader counts the conversations trimmed.
"""

from __future__ import annotations

import re
from typing import Any

from affiner.runner.data.files import DataError

FORMAT_FIELDS = {
    "text": "text",
    "instruction": "instruction and output (input and system optional)",
    "chat": "messages (a list of {role, content}) or conversations (ShareGPT {from, value})",
    "prompt_completion": "prompt and completion",
    "classification": "text and label",
}
ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "system": "system",
    "tool": "tool",
    "function": "tool",
    "observation": "tool",
}
# Column names people often use, and the rename that makes them canonical (for hints only).
ALIASES = {
    "response": "output",
    "answer": "output",
    "target": "label",
    "question": "instruction",
    "query": "instruction",
    "context": "input",
    "sentence": "text",
    "review": "text",
    "content": "text",
    "document": "text",
    "sentiment": "label",
    "class": "label",
    "labels": "label",
    "category": "label",
    "conversation": "messages",
    "dialog": "messages",
}


# Whole numbers as `int` reads them, ASCII digits only ("²".isdigit() is true, int("²") fails).
_WHOLE_NUMBER = re.compile(r"-?[0-9]+")


class RowProblem(ValueError):
    """Why one row does not fit its format (the loader adds the file:line).

    Args:
        message: the reason, with its particulars (``turn 3 (user) is empty``).
        kind: the reason without them (``an empty turn``), so alike rows are counted together;
            by default the message up to its first parenthesis.
    """

    def __init__(self, message: str, *, kind: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind or message.split(" (")[0]


def rename_columns(values: Any, columns: dict[str, str]) -> Any:
    """`values` with ``[data].columns`` applied: canonical name ← the user's column."""
    if not columns or not isinstance(values, dict):
        return values
    renamed = dict(values)
    for canonical, source in columns.items():
        if source in values:
            renamed[canonical] = values[source]
            if source != canonical:
                renamed.pop(source, None)
    return renamed


def detect_format(keys: set[str], task: str, *, source: str = "data") -> str:
    """The format implied by the columns `keys` (after renames), or `DataError` with a way out."""
    if keys & {"messages", "conversations"}:
        fmt = "chat"
    elif {"instruction", "output"} <= keys:
        fmt = "instruction"
    elif {"prompt", "completion"} <= keys:
        fmt = "prompt_completion"
    elif {"text", "label"} <= keys and task == "classification":
        fmt = "classification"
    elif "text" in keys:
        fmt = "text"
    else:
        fmt = ""
    if task == "classification" and fmt != "classification":
        raise DataError(
            f"a classification model needs 'text' and 'label' columns; found {sorted(keys)}",
            where=source,
            hint=_rename_hint(keys)
            or 'rename with [data].columns = {text = "your_text", label = "your_label"}',
        )
    if not fmt:
        formats = "; ".join(f"{name}: {fields}" for name, fields in FORMAT_FIELDS.items())
        raise DataError(
            f"cannot tell the data format from the columns {sorted(keys)}",
            where=source,
            hint=(_rename_hint(keys) + ". " if _rename_hint(keys) else "")
            + f"formats and their columns: {formats}",
        )
    return fmt


def _rename_hint(keys: set[str]) -> str:
    renames = [
        f'{ALIASES[k]} = "{k}"' for k in sorted(keys) if k in ALIASES and ALIASES[k] not in keys
    ]
    return f"set [data].columns = {{{', '.join(renames)}}}" if renames else ""


def _kind(value: Any) -> str:
    names = {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        list: "a list",
        dict: "an object",
    }
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _text(row: dict[str, Any], name: str, *, required: bool = True) -> str:
    if name not in row or row[name] is None:
        if required:
            raise RowProblem(f"missing field {name!r}")
        return ""
    value = row[name]
    if not isinstance(value, str):
        raise RowProblem(f"field {name!r} must be text, got {_kind(value)} ({str(value)[:40]!r})")
    if required and not value.strip():
        raise RowProblem(f"field {name!r} is empty")
    return value


def normalize_row(values: Any, fmt: str) -> dict[str, Any]:
    """The canonical row for `values` in format `fmt`, or `RowProblem` saying what is wrong."""
    _expect_object(values, fmt)
    if fmt == "text":
        return {"text": _text(values, "text")}
    if fmt == "instruction":
        row = {
            "instruction": _text(values, "instruction"),
            "input": _text(values, "input", required=False),
        }
        row["output"] = _text(values, "output")
        system = _text(values, "system", required=False)
        if system.strip():
            row["system"] = system
        return row
    if fmt == "prompt_completion":
        return {"prompt": _text(values, "prompt"), "completion": _text(values, "completion")}
    if fmt == "classification":
        label = values.get("label")
        if label is None or (isinstance(label, str) and not label.strip()):
            raise RowProblem(
                "missing field 'label'" if "label" not in values else "field 'label' is empty"
            )
        if isinstance(label, bool) or not isinstance(label, (str, int)):
            raise RowProblem(
                f"field 'label' must be text or a whole number, got {_kind(label)} ({label!r})"
            )
        return {
            "text": _text(values, "text"),
            "label": label.strip() if isinstance(label, str) else label,
        }
    if fmt == "chat":
        return {"messages": chat_messages(values)[0]}
    raise RowProblem(f"unknown format {fmt!r}")


def chat_messages(values: Any) -> tuple[list[dict[str, str]], int]:
    """A chat row's turns, checked and ending on its last assistant reply; and how many turns
    after that reply were left out.

    A conversation logged as it happened often ends on the user's last message, which nobody
    answered: there is nothing to learn from it, and kept it would teach the model to read a
    question and stop. So the turns after the last assistant reply are trimmed (every turn is
    still checked first, so a malformed one is reported, not silently cut away). A conversation
    with no assistant turn at all has nothing to learn from and stays a row problem.
    """
    _expect_object(values, "chat")
    messages = _messages(values)
    last = max(i for i, message in enumerate(messages) if message["role"] == "assistant")
    return messages[: last + 1], len(messages) - last - 1


def _expect_object(values: Any, fmt: str) -> None:
    if not isinstance(values, dict):
        raise RowProblem(f"expected an object with {FORMAT_FIELDS[fmt]}, got {_kind(values)}")


def _messages(values: dict[str, Any]) -> list[dict[str, str]]:
    sharegpt = "messages" not in values and "conversations" in values
    turns = values.get("conversations" if sharegpt else "messages")
    field = "conversations" if sharegpt else "messages"
    if turns is None:
        raise RowProblem("missing field 'messages' (or ShareGPT 'conversations')")
    if not isinstance(turns, list) or not turns:
        raise RowProblem(f"field {field!r} must be a non-empty list of turns, got {_kind(turns)}")
    role_key, content_key = ("from", "value") if sharegpt else ("role", "content")
    messages = []
    for number, turn in enumerate(turns, start=1):
        if not isinstance(turn, dict):
            raise RowProblem(
                f"turn {number} must be an object with {role_key!r} and {content_key!r}, got {_kind(turn)}",
                kind="a turn that is not an object",
            )
        if sharegpt and "from" not in turn and "role" in turn:  # mixed spellings happen in the wild
            role_key, content_key = "role", "content"
        raw_role = turn.get(role_key)
        role = SHAREGPT_ROLES.get(str(raw_role).lower()) if sharegpt else raw_role
        if raw_role is None:
            raise RowProblem(
                f"turn {number} has no {role_key!r}", kind=f"a turn without {role_key!r}"
            )
        if role not in ROLES:
            allowed = ", ".join(sorted(SHAREGPT_ROLES)) if sharegpt else ", ".join(ROLES)
            raise RowProblem(
                f"turn {number} has unknown role {str(raw_role)[:40]!r} (allowed: {allowed})",
                kind="a turn with an unknown role",
            )
        content = turn.get(content_key)
        if not isinstance(content, str):
            raise RowProblem(
                f"turn {number} ({role}) {content_key!r} must be text, got {_kind(content)}",
                kind=f"a turn whose {content_key!r} is not text",
            )
        if role != "tool" and not content.strip():
            raise RowProblem(f"turn {number} ({role}) is empty", kind="an empty turn")
        if role == "system" and number != 1:
            raise RowProblem(
                f"turn {number} is a system message; only the first turn may be one",
                kind="a system message after the first turn",
            )
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in messages):
        raise RowProblem(
            "the conversation has no assistant turn, so there is nothing to learn from it"
        )
    return messages


def label_name(label: str | int, labels: list[str]) -> str:
    """The class name for a raw label: an int (or digit string) indexes `labels` when it is not itself a name."""
    text = str(label)
    if not labels or text in labels:
        return text
    if isinstance(label, int) or _WHOLE_NUMBER.fullmatch(text):
        index = int(text)
        if 0 <= index < len(labels):
            return labels[index]
    raise RowProblem(
        f"unknown label {label if isinstance(label, int) else repr(text[:40])} "
        f"(known: {', '.join(labels[:12])}{'…' if len(labels) > 12 else ''})",
        kind="an unknown label",
    )


def sort_labels(names: set[str]) -> list[str]:
    """Class names in id order: numerically when they are all whole numbers, else alphabetically."""
    if names and all(_WHOLE_NUMBER.fullmatch(n) for n in names):
        return sorted(names, key=int)
    return sorted(names)
