"""The assistant's conversation: a scrolling column of messages, affiner's and the user's.

Messages are Markdown; richer answers (plan bars, a histogram, an example) are widgets
mounted in the same column, so the conversation reads top to bottom like a chat log.
"""

from __future__ import annotations

from textual import events
from textual.containers import VerticalScroll
from textual.geometry import Size
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
    """The message column. New messages scroll it to the end, and it stays there.

    A Markdown message lays itself out a refresh or two after it is mounted, so the column
    keeps growing after the scroll that followed the mount; scrolling once would leave the
    newest lines below the fold. The column therefore *follows* its end: every growth scrolls
    it down again, until the user scrolls up to read (then nothing moves under them), and
    following resumes once they are back at the bottom or a new message arrives.
    """

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

    following: bool = True
    """Whether growth scrolls the column down (false while the user reads further up)."""

    def show(self, widget: Widget) -> Widget:
        """Append any widget (plan bars, histogram…) as a message of its own."""
        self.mount(widget)
        self.following = True
        self.call_after_refresh(self.scroll_end, animate=False)
        return widget

    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        if new >= self.max_scroll_y:
            self.following = True
        elif new < old:  # only the user scrolls up; growth never does
            self.following = False

    def watch_virtual_size(self, size: Size) -> None:
        """Growth of the content scrolls down again (a full layout sets the size this way)."""
        if self.following:
            self.scroll_end(animate=False)

    def on_resize(self, event: events.Resize) -> None:
        """The same after a scroll-only reflow, which sets the size without calling the watcher
        above and posts a resize instead."""
        if self.following:
            self.scroll_end(animate=False)

    @property
    def messages(self) -> list[Message]:
        return list(self.query(Message))
