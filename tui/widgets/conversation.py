"""The assistant's conversation: a scrolling column of messages, affiner's and the user's.

Messages are Markdown; richer answers (plan bars, a histogram, an example) are widgets
mounted in the same column, so the conversation reads top to bottom like a chat log.
"""

from __future__ import annotations

from textual.containers import VerticalScroll
from textual.widget import Widget
from textual.widgets import Markdown


class Message(Markdown):
    """One message; the role (``affiner``, ``user``, ``error``) is a CSS class."""

    DEFAULT_CSS = """
    Message {
        margin: 0 0 1 0;
        padding: 0 1;
        background: $surface;
    }
    Message.-user {
        margin-left: 8;
        background: $primary-background;
        color: $text;
    }
    Message.-error {
        border-left: thick $error;
    }
    """

    def __init__(self, text: str, role: str = "affiner") -> None:
        super().__init__(text, classes=f"-{role}")
        self.role = role


class Conversation(VerticalScroll, can_focus=False):
    """The message column. New messages scroll it to the end."""

    DEFAULT_CSS = """
    Conversation {
        height: 1fr;
        padding: 0 1;
        scrollbar-size-vertical: 1;
    }
    """

    def say(self, text: str, role: str = "affiner") -> Message:
        """Append a Markdown message and scroll to it."""
        message = Message(text, role)
        self.show(message)
        return message

    def show(self, widget: Widget) -> Widget:
        """Append any widget (plan bars, histogram…) as a message of its own."""
        self.mount(widget)
        self.call_after_refresh(self.scroll_end, animate=False)
        return widget

    @property
    def messages(self) -> list[Message]:
        return list(self.query(Message))
