"""Errors that are the user's to fix: shown as a clear message, never as a traceback.

Every front end (CLI, TUI) catches `AffinerError` and prints `str(error)`; anything else is
a bug and keeps its traceback.
"""

from __future__ import annotations


class AffinerError(Exception):
    """A mistake in input or environment that the user can fix.

    Args:
        message: what went wrong, in plain words.
        hint: what to do about it (printed on its own line).
        where: the file (and line) or setting at fault, e.g. ``data/train.jsonl:17`` or ``[method].lora_rank``.
    """

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None, where: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.where = where

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text
