"""The conversation stays at its end while it grows, and leaves a reader who scrolled up alone.

A Markdown message lays itself out after the scroll that followed its mount; before the column
followed its end, the newest lines of a long answer could stay below the fold.
"""

from __future__ import annotations

from textual.app import App, ComposeResult
from textual.widgets import Static

from affiner.tui.widgets.conversation import Conversation
from tests.tui_pilot import wait_for


class Talk(App):
    def compose(self) -> ComposeResult:
        yield Conversation()


def long_text(lines: int) -> str:
    return "\n\n".join(f"line {n} of a long answer" for n in range(lines))


async def test_a_message_that_grows_after_mounting_stays_in_view() -> None:
    app = Talk()
    async with app.run_test(size=(60, 12)) as pilot:
        talk = app.query_one(Conversation)
        talk.say("hello")
        grower = talk.show(Static("short"))
        await pilot.pause()
        grower.update(long_text(20))  # grows after the mount's scroll already happened
        await wait_for(pilot, lambda: talk.max_scroll_y > 10 and talk.scroll_y == talk.max_scroll_y)


async def test_reading_further_up_is_not_interrupted_until_a_new_message() -> None:
    app = Talk()
    async with app.run_test(size=(60, 12)) as pilot:
        talk = app.query_one(Conversation)
        grower = talk.show(Static(long_text(20)))
        await wait_for(pilot, lambda: talk.max_scroll_y > 0 and talk.scroll_y == talk.max_scroll_y)
        talk.scroll_home(animate=False)
        await wait_for(pilot, lambda: talk.scroll_y == 0)
        assert not talk.following
        grower.update(long_text(30))
        await wait_for(pilot, lambda: talk.max_scroll_y > 30)
        await pilot.pause()
        assert talk.scroll_y == 0  # the reader stays where they were
        talk.say("a new message")
        await wait_for(pilot, lambda: talk.scroll_y == talk.max_scroll_y)
        assert talk.following
