"""One training example exactly as the model will see it, with the loss-carrying tokens marked.

The text comes through the chat template (or the plain-text format) token by token; tokens
the model is trained to predict are shown bright and underlined, the context it only reads
is dimmed. This is the check people otherwise do by hand in a notebook: is the prompt
masked, is the end-of-turn token trained on, did the template put the roles where expected.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.text import Text
from textual.widget import Widget

LOSS_STYLE = "bold green underline"
CONTEXT_STYLE = "dim"


def pieces_of(example: Any) -> list[tuple[str, bool]]:
    """``(token text, carries loss)`` pairs from `affiner.runner.data.prepare.render_example`'s result.

    Accepts the pairs themselves, or an object with ``tokens`` and one of ``loss_mask`` /
    ``carries_loss`` / ``labels_mask`` (parallel sequences), or ``text`` alone (no marks).
    """
    if isinstance(example, Sequence) and not isinstance(example, str):
        return [(str(t), bool(flag)) for t, flag in example]
    pairs = getattr(example, "pieces", None)
    if pairs is not None:
        return [(str(t), bool(flag)) for t, flag in pairs]
    tokens = getattr(example, "tokens", None)
    for name in ("loss_mask", "carries_loss", "labels_mask", "trained"):
        flags = getattr(example, name, None)
        if tokens is not None and flags is not None:
            return [(str(t), bool(f)) for t, f in zip(tokens, flags, strict=False)]
    return [(str(getattr(example, "text", example)), False)]


def render_example(pieces: Sequence[tuple[str, bool]], max_chars: int = 1200) -> Text:
    """The example as Rich Text: loss tokens highlighted, context dimmed, long ones cut."""
    text = Text()
    shown = 0
    for piece, carries_loss in pieces:
        if shown + len(piece) > max_chars:
            text.append(" … (cut for display)", style="italic")
            break
        text.append(piece, style=LOSS_STYLE if carries_loss else CONTEXT_STYLE)
        shown += len(piece)
    trained = sum(1 for _, flag in pieces if flag)
    text.append(f"\n\n{trained} of {len(pieces)} tokens carry loss ", style="bold")
    text.append("(underlined)", style=LOSS_STYLE)
    text.append("; the rest is context the model reads but is not trained to write.")
    return text


class ExampleView(Widget):
    """A rendered training example (see the module docstring)."""

    DEFAULT_CSS = """
    ExampleView {
        height: auto;
        padding: 0 1;
        margin: 0 0 1 0;
        border: round $accent;
    }
    """

    def __init__(self, example: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pieces = pieces_of(example)
        self.border_title = "one example, as the model sees it"

    def get_content_height(self, container: Any, viewport: Any, width: int) -> int:
        return len(render_example(self.pieces).wrap(self.app.console, max(1, width)))

    def render(self) -> Text:
        return render_example(self.pieces)
