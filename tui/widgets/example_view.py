"""One training example exactly as the model will see it, with the loss-carrying tokens marked.

The text comes through the chat template (or the plain-text format) token by token; tokens
the model is trained to predict are shown bright and underlined, the context it only reads
is dimmed. This is the check people otherwise do by hand in a notebook: is the prompt
masked, is the end-of-turn token trained on, did the template put the roles where expected.

A classifier's loss is on its label, not on any token: the view then says so and names the
label instead of counting "0 of N tokens" (every token is input to the head).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual.widget import Widget

LOSS_STYLE = "bold green underline"
CONTEXT_STYLE = "dim"


@dataclass(frozen=True)
class Shown:
    """What the view draws: the tokens with their loss flags, and a classifier's label.

    Attributes:
        pieces: ``(token text, carries loss)`` in order.
        label: the class name a classification row trains its head on; None for a
            causal-LM row, whose loss is on the flagged tokens.
    """

    pieces: list[tuple[str, bool]]
    label: str | None = None


def _pairs(seq: Any) -> list[tuple[str, bool]] | None:
    """`seq` as ``(text, flag)`` pairs when it is a sequence of pairs, else None."""
    if isinstance(seq, str) or not isinstance(seq, Sequence):
        return None
    out: list[tuple[str, bool]] = []
    for item in seq:
        if isinstance(item, str) or not isinstance(item, Sequence) or len(item) != 2:
            return None
        out.append((str(item[0]), bool(item[1])))
    return out


def shown_of(example: Any) -> Shown:
    """What to draw of `affiner.runner.data.prepare.render_example`'s `RenderedExample`.

    Accepts the pairs themselves, an object whose ``tokens`` are the pairs (a
    `RenderedExample`: its ``tokens`` is ``[(token text, carries_loss), ...]``), or one with
    ``tokens`` and a parallel ``loss_mask``; ``text`` alone has no marks. A classification
    example (``format == "classification"``) keeps its ``label``.
    """
    pairs = _pairs(example)
    if pairs is not None:
        return Shown(pairs)
    label = (
        getattr(example, "label", None)
        if getattr(example, "format", "") == "classification"
        else None
    )
    tokens = getattr(example, "tokens", None)
    pairs = _pairs(tokens) if tokens is not None else None
    if pairs is None and tokens is not None:
        flags = getattr(example, "loss_mask", None)
        if flags is not None:
            pairs = [(str(t), bool(f)) for t, f in zip(tokens, flags, strict=False)]
    if pairs is None:
        pairs = [(str(getattr(example, "text", example)), False)]
    return Shown(pairs, label)


def pieces_of(example: Any) -> list[tuple[str, bool]]:
    """``(token text, carries loss)`` pairs of `example` (see `shown_of`)."""
    return shown_of(example).pieces


def loss_line(shown: Shown) -> str:
    """The count under the example: how many tokens carry loss, or where a classifier's is."""
    if shown.label is not None:
        return (
            f"{len(shown.pieces)} tokens, all read as input; the loss is on the label "
            f"“{shown.label}”, through the classification head."
        )
    trained = sum(1 for _, flag in shown.pieces if flag)
    return f"{trained} of {len(shown.pieces)} tokens carry loss"


def render_example(example: Shown | Sequence[tuple[str, bool]], max_chars: int = 1200) -> Text:
    """The example as Rich Text: loss tokens highlighted, context dimmed, long ones cut."""
    shown = example if isinstance(example, Shown) else Shown(list(example))
    text = Text()
    count = 0
    for piece, carries_loss in shown.pieces:
        if count + len(piece) > max_chars:
            text.append(" … (cut for display)", style="italic")
            break
        text.append(piece, style=LOSS_STYLE if carries_loss else CONTEXT_STYLE)
        count += len(piece)
    text.append(f"\n\n{loss_line(shown)}", style="bold")
    if shown.label is None:
        text.append(" ")
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

    def __init__(self, example: Any, title: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shown = shown_of(example)
        self.pieces = self.shown.pieces
        self.border_title = title or "one example, as the model sees it"

    def get_content_height(self, container: Any, viewport: Any, width: int) -> int:
        return len(render_example(self.shown).wrap(self.app.console, max(1, width)))

    def render(self) -> Text:
        return render_example(self.shown)
